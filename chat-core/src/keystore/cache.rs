//! A bounded cache of unwrapped keys.

use std::{
    fmt,
    hash::Hash,
    mem,
    sync::{Arc, Mutex, MutexGuard},
};

use foldhash::HashMap;
use zeroize::ZeroizeOnDrop;

/// Unwrapped keys in memory, at most `capacity` of them, so that sending
/// and reading history do not unwrap a key (an AES-GCM open, and an HKDF
/// for user keys) per message, nor keep every key ever used.
///
/// Used for [`UserKey`](crate::crypto::UserKey)s by [`UserId`](crate::UserId)
/// and [`DataKey`](crate::crypto::DataKey)s by
/// [`DataKeyScope`](crate::crypto::DataKeyScope); only for values that wipe
/// themselves when dropped (`V: ZeroizeOnDrop`).
///
/// # Eviction: two generations
///
/// Entries go into a young generation of `capacity / 2`. When it is full
/// it becomes the old generation, and the old one is dropped whole. A hit
/// in the old generation moves the entry back to the young one. So a key
/// in use stays; one unused for `capacity / 2` insertions goes. This is
/// close to LRU with O(1) work and no per-entry bookkeeping.
///
/// An evicted key is wiped when its last holder drops it: the cache
/// hands out `Arc`s, and a caller sealing with a key keeps it alive until
/// done. Evicted generations are dropped after the lock is released.
///
/// Erasing a user must also [`remove`](KeyCache::remove) their user key and
/// [`remove_where`](KeyCache::remove_where) their data keys from every
/// cache, or they stay readable in memory until evicted.
pub struct KeyCache<K, V> {
    generation: usize,
    state: Mutex<Generations<K, V>>,
}

struct Generations<K, V> {
    young: HashMap<K, Arc<V>>,
    old: HashMap<K, Arc<V>>,
}

/// What [`KeyCache::admit`] pushed out: a whole generation, or the value
/// an entry replaced; dropped by the caller once the lock is released.
type Evicted<K, V> = (Option<HashMap<K, Arc<V>>>, Option<Arc<V>>);

impl<K: Eq + Hash + Clone, V: ZeroizeOnDrop> KeyCache<K, V> {
    /// A cache holding at most `capacity` keys (at least 2).
    pub fn new(capacity: usize) -> Self {
        Self {
            generation: (capacity / 2).max(1),
            state: Mutex::new(Generations {
                young: HashMap::default(),
                old: HashMap::default(),
            }),
        }
    }

    /// The most keys the cache holds at once.
    pub fn capacity(&self) -> usize {
        2 * self.generation
    }

    /// The key cached under `key`, if any; marks it as recently used.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        let mut state = self.lock();
        if let Some(value) = state.young.get(key) {
            return Some(Arc::clone(value));
        }
        let (key, value) = state.old.remove_entry(key)?;
        let evicted = self.admit(&mut state, key, Arc::clone(&value));
        drop(state);
        drop(evicted);
        Some(value)
    }

    /// Caches `value` under `key` (replacing what was there) and returns it
    /// shared.
    pub fn insert(&self, key: K, value: V) -> Arc<V> {
        let value = Arc::new(value);
        let mut state = self.lock();
        let replaced = state.old.remove(&key);
        let evicted = self.admit(&mut state, key, Arc::clone(&value));
        drop(state);
        drop((replaced, evicted));
        value
    }

    /// Drops the key cached under `key`; returns whether there was one.
    pub fn remove(&self, key: &K) -> bool {
        let mut state = self.lock();
        let young = state.young.remove(key);
        let old = state.old.remove(key);
        drop(state);
        young.is_some() || old.is_some()
    }

    /// Drops every key whose cache key matches `pred` (e.g. every data key
    /// of an erased sender); returns how many.
    pub fn remove_where(&self, mut pred: impl FnMut(&K) -> bool) -> usize {
        let mut removed = Vec::new();
        let mut guard = self.lock();
        let state = &mut *guard;
        for generation in [&mut state.young, &mut state.old] {
            let matching: Vec<K> = generation.keys().filter(|k| pred(k)).cloned().collect();
            removed.extend(matching.iter().filter_map(|k| generation.remove(k)));
        }
        drop(guard);
        removed.len()
    }

    /// Drops every key.
    pub fn clear(&self) {
        let mut state = self.lock();
        let young = mem::take(&mut state.young);
        let old = mem::take(&mut state.old);
        drop(state);
        drop((young, old));
    }

    /// How many keys are cached.
    pub fn len(&self) -> usize {
        let state = self.lock();
        state.young.len() + state.old.len()
    }

    /// Whether no key is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Puts an entry into the young generation, turning a full young
    /// generation into the old one first; returns what fell out, for the
    /// caller to drop outside the lock.
    fn admit(&self, state: &mut Generations<K, V>, key: K, value: Arc<V>) -> Evicted<K, V> {
        let full = state.young.len() >= self.generation && !state.young.contains_key(&key);
        let evicted = full.then(|| {
            let young = mem::take(&mut state.young);
            mem::replace(&mut state.old, young)
        });
        let replaced = state.young.insert(key, value);
        (evicted, replaced)
    }

    fn lock(&self) -> MutexGuard<'_, Generations<K, V>> {
        // No method panics half-way through a change, so the maps behind a
        // poisoned lock are consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<K, V> fmt::Debug for KeyCache<K, V> {
    /// Sizes only: never the keys.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (young, old) = match self.state.lock() {
            Ok(state) => (state.young.len(), state.old.len()),
            Err(poisoned) => {
                let state = poisoned.into_inner();
                (state.young.len(), state.old.len())
            }
        };
        f.debug_struct("KeyCache")
            .field("len", &(young + old))
            .field("capacity", &(2 * self.generation))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A value that counts its drops.
    struct Probe(Arc<AtomicUsize>);

    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl ZeroizeOnDrop for Probe {}

    fn probes() -> (Arc<AtomicUsize>, impl Fn() -> Probe) {
        let drops = Arc::new(AtomicUsize::new(0));
        let make = {
            let drops = Arc::clone(&drops);
            move || Probe(Arc::clone(&drops))
        };
        (drops, make)
    }

    #[test]
    fn hits_and_misses() {
        let (_, probe) = probes();
        let cache = KeyCache::new(4);
        assert!(cache.get(&1).is_none());
        let inserted = cache.insert(1, probe());
        let got = cache.get(&1).expect("cached");
        assert!(Arc::ptr_eq(&inserted, &got));
        assert_eq!(cache.len(), 1);
        assert!(!cache.is_empty());
    }

    #[test]
    fn never_holds_more_than_its_capacity_and_drops_what_it_evicts() {
        let (drops, probe) = probes();
        let cache = KeyCache::new(10);
        assert_eq!(cache.capacity(), 10);
        for i in 0..1_000 {
            drop(cache.insert(i, probe()));
            assert!(cache.len() <= 10, "{} keys after {i} inserts", cache.len());
        }
        assert_eq!(drops.load(Ordering::SeqCst) + cache.len(), 1_000);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(drops.load(Ordering::SeqCst), 1_000, "clear drops every key");
    }

    #[test]
    fn keys_in_use_stay() {
        let (_, probe) = probes();
        let cache = KeyCache::new(8);
        cache.insert("hot", probe());
        for i in 0..100 {
            cache.insert(if i % 2 == 0 { "a" } else { "b" }, probe());
            cache.insert(["c", "d", "e", "f", "g"][i % 5], probe());
            assert!(cache.get(&"hot").is_some(), "evicted after {i} rounds");
        }
    }

    #[test]
    fn unused_keys_go_after_a_generation() {
        let (_, probe) = probes();
        let cache = KeyCache::new(4);
        cache.insert(0, probe());
        for i in 1..=4 {
            cache.insert(i, probe());
        }
        assert!(cache.get(&0).is_none(), "0 outlived two generations");
        assert!(cache.get(&4).is_some());
    }

    #[test]
    fn a_key_held_outside_is_dropped_by_its_last_holder() {
        let (drops, probe) = probes();
        let cache = KeyCache::new(2);
        let held = cache.insert(0, probe());
        cache.insert(1, probe());
        cache.insert(2, probe());
        assert!(cache.get(&0).is_none(), "evicted");
        assert_eq!(drops.load(Ordering::SeqCst), 0, "still in use");
        drop(held);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn remove_and_remove_where_drop_keys() {
        let (drops, probe) = probes();
        let cache = KeyCache::new(100);
        for i in 0..10 {
            cache.insert(i, probe());
        }
        assert!(cache.remove(&3));
        assert!(!cache.remove(&3));
        assert_eq!(cache.remove_where(|k| k % 2 == 0), 5);
        assert_eq!(cache.len(), 4);
        assert_eq!(drops.load(Ordering::SeqCst), 6);
        assert!(cache.get(&1).is_some() && cache.get(&4).is_none());
    }

    #[test]
    fn replacing_a_key_drops_the_old_value() {
        let (drops, probe) = probes();
        let cache = KeyCache::new(4);
        cache.insert(1, probe());
        cache.insert(1, probe());
        assert_eq!(cache.len(), 1);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn tiny_capacities_hold_two() {
        let (_, probe) = probes();
        for capacity in [0, 1, 2, 3] {
            let cache = KeyCache::new(capacity);
            assert_eq!(cache.capacity(), 2.max(capacity / 2 * 2));
            for i in 0..10 {
                cache.insert(i, probe());
            }
            assert!(cache.len() <= cache.capacity());
            assert!(cache.get(&9).is_some());
        }
    }

    #[test]
    fn shared_between_threads() {
        let (_, probe) = probes();
        let cache = Arc::new(KeyCache::new(16));
        let probe = Arc::new(probe);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let cache = Arc::clone(&cache);
                let probe = Arc::clone(&probe);
                std::thread::spawn(move || {
                    for i in 0..1_000 {
                        let k = (t * 7 + i) % 40;
                        if cache.get(&k).is_none() {
                            cache.insert(k, probe());
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no panic");
        }
        assert!(cache.len() <= 16);
    }

    #[test]
    fn debug_shows_sizes_only() {
        let cache: KeyCache<&str, crate::crypto::DataKey> = KeyCache::new(4);
        cache.insert("k", crate::crypto::DataKey::generate().expect("key"));
        assert_eq!(format!("{cache:?}"), "KeyCache { len: 1, capacity: 4 }");
    }
}

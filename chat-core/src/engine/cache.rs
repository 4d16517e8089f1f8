//! The chats that hot commands (send, receipts, typing) need, kept between
//! commands so that they read nothing from the store.
//!
//! Only this engine changes what is cached here when it is the only node
//! (see [`Bus::single_node`](crate::Bus::single_node)); every change of a
//! chat's membership, roles or a participant's settings, and every block,
//! invalidates it. A cluster does not cache: another node may change a chat
//! at any time. What a cached chat is used for never decides durability:
//! the store checks membership again when it stores a message.

// foldhash: looked up on every send; keys are server-made chat ids.
use foldhash::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::model::{Chat, ChatId, UserId};

/// A chat as cached, with what the send path derives from it.
#[derive(Debug)]
pub(super) struct Cached {
    pub(super) chat: Chat,
    /// The chat's participants, shared by every typing event. (Changes of
    /// the log go to the members the store returns with them instead.)
    pub(super) members: Arc<[UserId]>,
    /// In a direct chat: one side blocks the other.
    pub(super) blocked: bool,
}

impl Cached {
    pub(super) fn new(chat: Chat, blocked: bool) -> Self {
        Self {
            members: chat.member_ids().into(),
            chat,
            blocked,
        }
    }
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<ChatId, Arc<Cached>>,
    /// Bumped by every invalidation, so that a fill that read the store
    /// before an invalidation cannot put a stale chat back after it.
    epoch: u64,
}

#[derive(Debug)]
pub(super) struct ChatCache {
    entries: Mutex<Entries>,
    capacity: usize,
}

impl ChatCache {
    /// A cache of at most `capacity` chats; 0 caches nothing.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(Entries::default()),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached chat, or the epoch to pass to [`ChatCache::fill`] after
    /// reading it from the store.
    pub(super) fn get(&self, chat_id: ChatId) -> Result<Arc<Cached>, u64> {
        let entries = self.lock();
        entries.map.get(&chat_id).cloned().ok_or(entries.epoch)
    }

    /// The epoch now, for a fill after a read that bypassed the cache.
    pub(super) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Caches `cached` unless something was invalidated since `epoch`.
    pub(super) fn fill(&self, cached: Arc<Cached>, epoch: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.epoch != epoch {
            return;
        }
        if entries.map.len() >= self.capacity {
            // Any entry will do: a miss costs one read, and chats that are
            // busy come back at once.
            if let Some(victim) = entries.map.keys().next().copied() {
                entries.map.remove(&victim);
            }
        }
        entries.map.insert(cached.chat.id, cached);
    }

    /// Forgets `chat_id` (its membership or settings changed).
    pub(super) fn invalidate(&self, chat_id: ChatId) {
        let mut entries = self.lock();
        entries.epoch += 1;
        entries.map.remove(&chat_id);
    }

    /// Forgets every chat (a block changed, which may concern any direct
    /// chat of the two users).
    pub(super) fn clear(&self) {
        let mut entries = self.lock();
        entries.epoch += 1;
        entries.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{ChatKind, Encryption, Timestamp},
        store::NewChat,
    };

    fn chat() -> Arc<Cached> {
        let new = NewChat {
            id: ChatId::new(),
            kind: ChatKind::Group,
            name: Some("g".into()),
            description: None,
            avatar_url: None,
            encryption: Encryption::AtRest,
            participants: Vec::new(),
            created_at: Timestamp::from_millis(0),
        };
        Arc::new(Cached::new(new.into_chat(), false))
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = ChatCache::new(8);
        let c = chat();
        let id = c.chat.id;
        let epoch = cache.get(id).unwrap_err();
        cache.invalidate(id);
        cache.fill(c.clone(), epoch);
        assert!(cache.get(id).is_err());
        let epoch = cache.get(id).unwrap_err();
        cache.fill(c, epoch);
        assert!(cache.get(id).is_ok());
        cache.clear();
        assert!(cache.get(id).is_err());
    }

    #[test]
    fn capacity_bounds_the_cache() {
        let cache = ChatCache::new(2);
        for _ in 0..10 {
            let epoch = cache.get(ChatId::new()).unwrap_err();
            cache.fill(chat(), epoch);
        }
        assert_eq!(cache.lock().map.len(), 2);
        let off = ChatCache::new(0);
        let c = chat();
        let id = c.chat.id;
        off.fill(c, 0);
        assert!(off.get(id).is_err());
    }
}

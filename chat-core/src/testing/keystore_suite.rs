//! The [`KeyStore`] conformance cases: one function per rule of the
//! trait's contract.
//!
//! Every function takes a fresh, empty key store and panics with a message
//! naming the broken rule. The records stored are real (wrapped under a
//! master key made per case), though a key store never decrypts them.

use std::{fmt::Debug, sync::Arc};

use tokio::sync::Barrier;

use crate::{
    crypto::{DataKey, DataKeyScope, KeyCheck, KeyEpoch, MasterKey, UserKey, WrappedUserKey},
    error::Result,
    keystore::{DataKeyRecord, KeyStore},
    model::{ChatId, Timestamp, UserId},
};

crate::keystore_conformance_tests!(@list names);

// --- helpers -------------------------------------------------------------

#[track_caller]
fn user(name: &str) -> UserId {
    UserId::new(name).unwrap_or_else(|e| panic!("bad user id in the suite: {e}"))
}

#[track_caller]
fn ok<T>(result: Result<T>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: expected success, got {e:?}"))
}

#[track_caller]
fn same<T: PartialEq + Debug>(got: T, want: T, rule: &str) {
    assert_eq!(got, want, "{rule}");
}

/// Makes the records the cases store.
struct Records {
    master: MasterKey,
}

impl Records {
    fn new() -> Self {
        Self {
            master: MasterKey::generate().unwrap_or_else(|e| panic!("master key: {e}")),
        }
    }

    /// A fresh wrapped key for `user`: every call gives different bytes.
    fn key(&self, user: &UserId) -> WrappedUserKey {
        UserKey::generate()
            .and_then(|key| self.master.wrap_user_key(user, &key))
            .unwrap_or_else(|e| panic!("wrap a user key: {e}"))
    }

    /// A fresh key check: every call gives different bytes.
    fn check(&self) -> KeyCheck {
        self.master
            .seal_check()
            .unwrap_or_else(|e| panic!("seal a check: {e}"))
    }
}

async fn get(store: &Arc<dyn KeyStore>, u: &UserId) -> Option<WrappedUserKey> {
    ok(store.get_user_key(u).await, "get_user_key")
}

async fn put(store: &Arc<dyn KeyStore>, u: &UserId, key: &WrappedUserKey) -> WrappedUserKey {
    ok(
        store.put_user_key_if_absent(u, key.clone()).await,
        "put_user_key_if_absent",
    )
}

async fn listed(store: &Arc<dyn KeyStore>, after: Option<&UserId>, limit: usize) -> Vec<UserId> {
    let page = ok(store.list_user_keys(after, limit).await, "list_user_keys");
    page.into_iter().map(|(u, _)| u).collect()
}

// --- user keys -------------------------------------------------------------

/// A user nobody stored a key for has none.
pub async fn user_key_is_none_until_put(store: Arc<dyn KeyStore>) {
    same(
        get(&store, &user("alice")).await,
        None,
        "an unknown user has no key",
    );
    same(
        listed(&store, None, 10).await,
        vec![],
        "an empty store lists no one",
    );
}

/// `put_user_key_if_absent` stores the key of a user who has none, and
/// returns it.
pub async fn put_if_absent_stores_the_key(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let key = records.key(&alice);
    same(
        put(&store, &alice, &key).await,
        key.clone(),
        "put returns the key it stored",
    );
    same(
        get(&store, &alice).await,
        Some(key),
        "get returns the stored key",
    );
}

/// A second `put_user_key_if_absent` changes nothing and returns the first
/// key.
pub async fn put_if_absent_keeps_the_first_key(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let first = records.key(&alice);
    put(&store, &alice, &first).await;
    let second = records.key(&alice);
    same(
        put(&store, &alice, &second).await,
        first.clone(),
        "a put for a user with a key returns the existing key",
    );
    same(
        get(&store, &alice).await,
        Some(first),
        "the first key stays",
    );
}

/// Records come back byte for byte, for ids of every allowed character and
/// of the longest allowed length.
pub async fn keys_round_trip_byte_exact(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let long = "x".repeat(UserId::MAX_LEN);
    for name in ["a", "A.b_c:d@e-f0", long.as_str()] {
        let u = user(name);
        let key = records.key(&u);
        put(&store, &u, &key).await;
        let back = get(&store, &u)
            .await
            .unwrap_or_else(|| panic!("{name}: key lost"));
        same(
            back.as_bytes(),
            key.as_bytes(),
            "stored bytes come back unchanged",
        );
        let unwrapped = records.master.unwrap_user_key(&u, &back);
        assert!(
            unwrapped.is_ok(),
            "{name}: the stored key no longer unwraps"
        );
    }
}

/// Each user has their own key; changing one touches no other.
pub async fn keys_are_kept_per_user(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let (alice, bob) = (user("alice"), user("bob"));
    let (a, b) = (records.key(&alice), records.key(&bob));
    put(&store, &alice, &a).await;
    put(&store, &bob, &b).await;
    ok(store.delete_user_key(&alice).await, "delete_user_key");
    same(
        get(&store, &bob).await,
        Some(b),
        "deleting one user's key keeps another's",
    );
}

/// `replace_user_key` swaps a key that is the given current one.
pub async fn replace_swaps_when_current_matches(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let old = records.key(&alice);
    put(&store, &alice, &old).await;
    let new = records.key(&alice);
    let swapped = ok(
        store.replace_user_key(&alice, &old, new.clone()).await,
        "replace",
    );
    assert!(swapped, "replacing the current key must succeed");
    same(
        get(&store, &alice).await,
        Some(new),
        "the key is the new one after a replace",
    );
}

/// `replace_user_key` with a current key that is no longer the stored one
/// changes nothing: a concurrent change is never lost.
pub async fn replace_refuses_a_stale_current(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let stale = records.key(&alice);
    let stored = records.key(&alice);
    put(&store, &alice, &stored).await;
    let swapped = ok(
        store
            .replace_user_key(&alice, &stale, records.key(&alice))
            .await,
        "replace",
    );
    assert!(!swapped, "a replace with a stale current key must fail");
    same(
        get(&store, &alice).await,
        Some(stored),
        "a failed replace changes nothing",
    );
}

/// `replace_user_key` of a user without a key fails and creates none.
pub async fn replace_never_creates_a_key(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let swapped = ok(
        store
            .replace_user_key(&alice, &records.key(&alice), records.key(&alice))
            .await,
        "replace",
    );
    assert!(!swapped, "replacing a missing key must fail");
    same(
        get(&store, &alice).await,
        None,
        "a failed replace creates nothing",
    );
}

/// `delete_user_key` removes the key for good: not read, not listed.
pub async fn delete_removes_the_key(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    put(&store, &alice, &records.key(&alice)).await;
    assert!(
        ok(store.delete_user_key(&alice).await, "delete_user_key"),
        "deleting an existing key must report it"
    );
    same(get(&store, &alice).await, None, "a deleted key is not read");
    same(
        listed(&store, None, 10).await,
        vec![],
        "a deleted key is not listed",
    );
}

/// Deleting a key that does not exist reports `false`.
pub async fn delete_of_a_missing_key_is_false(store: Arc<dyn KeyStore>) {
    let deleted = ok(
        store.delete_user_key(&user("ghost")).await,
        "delete_user_key",
    );
    assert!(!deleted, "deleting a missing key must report false");
}

/// After a deletion, `put_user_key_if_absent` stores the new key.
pub async fn put_after_delete_stores_a_new_key(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let old = records.key(&alice);
    put(&store, &alice, &old).await;
    ok(store.delete_user_key(&alice).await, "delete_user_key");
    let new = records.key(&alice);
    same(
        put(&store, &alice, &new).await,
        new.clone(),
        "a deleted user gets the new key",
    );
    same(
        get(&store, &alice).await,
        Some(new),
        "the new key is stored",
    );
}

/// Listing pages through users in ascending byte order of their ids,
/// whatever the backend's collation would say.
pub async fn list_pages_in_byte_order_of_user_ids(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let names = [
        "bob", "alice", "Zed", "_under", "alice.b", "alice1", "-dash", "0zero", ":colon", "@at",
        "alice",
    ];
    for name in names {
        let u = user(name);
        put(&store, &u, &records.key(&u)).await;
    }
    let mut want: Vec<UserId> = names.iter().map(|n| user(n)).collect();
    want.sort();
    want.dedup();
    same(
        listed(&store, None, 100).await,
        want.clone(),
        "one listing, in byte order",
    );

    let mut paged = Vec::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = listed(&store, after.as_ref(), 3).await;
        assert!(page.len() <= 3, "a page holds at most `limit` users");
        let Some(last) = page.last().cloned() else {
            break;
        };
        paged.extend(page);
        after = Some(last);
    }
    same(paged, want, "pages of 3 list everyone once, in byte order");
}

/// Listing after a user who has no key starts after where they would be.
pub async fn list_starts_after_a_missing_user(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    for name in ["a", "c", "e"] {
        let u = user(name);
        put(&store, &u, &records.key(&u)).await;
    }
    same(
        listed(&store, Some(&user("b")), 10).await,
        vec![user("c"), user("e")],
        "a listing after a missing user starts at the next one",
    );
    same(
        listed(&store, Some(&user("e")), 10).await,
        vec![],
        "nothing after the last",
    );
}

/// A limit of zero lists no one.
pub async fn list_with_limit_zero_is_empty(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    put(&store, &alice, &records.key(&alice)).await;
    same(
        listed(&store, None, 0).await,
        vec![],
        "limit 0 lists no one",
    );
}

// --- the key check -------------------------------------------------------------

/// A store holds no check until one is put.
pub async fn check_is_none_until_put(store: Arc<dyn KeyStore>) {
    same(
        ok(store.get_check().await, "get_check"),
        None,
        "a new store has no check",
    );
}

/// `put_check_if_absent` stores the first check and keeps it.
pub async fn put_check_if_absent_keeps_the_first(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let first = records.check();
    same(
        ok(
            store.put_check_if_absent(first.clone()).await,
            "put_check_if_absent",
        ),
        first.clone(),
        "the first put stores its check",
    );
    same(
        ok(
            store.put_check_if_absent(records.check()).await,
            "put_check_if_absent",
        ),
        first.clone(),
        "a second put returns the existing check",
    );
    same(
        ok(store.get_check().await, "get_check"),
        Some(first),
        "the first check stays",
    );
}

/// `replace_check` swaps only the current check, and never creates one.
pub async fn replace_check_is_compare_and_swap(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let (old, new) = (records.check(), records.check());
    let swapped = ok(
        store.replace_check(&old, new.clone()).await,
        "replace_check",
    );
    assert!(!swapped, "replacing a missing check must fail");
    same(
        ok(store.get_check().await, "get_check"),
        None,
        "and create nothing",
    );

    ok(
        store.put_check_if_absent(old.clone()).await,
        "put_check_if_absent",
    );
    let stale = records.check();
    let swapped = ok(
        store.replace_check(&stale, records.check()).await,
        "replace_check",
    );
    assert!(!swapped, "a replace with a stale current check must fail");
    let swapped = ok(
        store.replace_check(&old, new.clone()).await,
        "replace_check",
    );
    assert!(swapped, "replacing the current check must succeed");
    same(
        ok(store.get_check().await, "get_check"),
        Some(new),
        "the check is the new one",
    );
}

// --- concurrency -------------------------------------------------------------

const RACERS: usize = 16;

/// Racing first uses of one user store one key, and every racer is told
/// which.
pub async fn concurrent_puts_store_one_key(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier, alice) = (Arc::clone(&store), Arc::clone(&barrier), alice.clone());
            let key = records.key(&alice);
            tokio::spawn(async move {
                barrier.wait().await;
                ok(store.put_user_key_if_absent(&alice, key).await, "put")
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.push(task.await.unwrap_or_else(|e| panic!("racer: {e}")));
    }
    let stored = get(&store, &alice).await;
    for w in winners {
        same(
            Some(w),
            stored.clone(),
            "every racer gets the one stored key",
        );
    }
}

/// Racing replaces from the same current key: exactly one wins.
pub async fn concurrent_replaces_have_one_winner(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let alice = user("alice");
    let current = records.key(&alice);
    put(&store, &alice, &current).await;
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier, alice) = (Arc::clone(&store), Arc::clone(&barrier), alice.clone());
            let (current, new) = (current.clone(), records.key(&alice));
            tokio::spawn(async move {
                barrier.wait().await;
                let won = ok(
                    store.replace_user_key(&alice, &current, new.clone()).await,
                    "replace",
                );
                won.then_some(new)
            })
        })
        .collect();
    let mut won = Vec::new();
    for task in tasks {
        won.extend(task.await.unwrap_or_else(|e| panic!("racer: {e}")));
    }
    same(won.len(), 1, "exactly one of the racing replaces succeeds");
    same(
        get(&store, &alice).await,
        won.pop(),
        "the winner's key is stored",
    );
}

/// Racing first starts seal one check, and every racer is told which.
pub async fn concurrent_check_puts_store_one(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let (store, barrier, check) =
                (Arc::clone(&store), Arc::clone(&barrier), records.check());
            tokio::spawn(async move {
                barrier.wait().await;
                ok(
                    store.put_check_if_absent(check).await,
                    "put_check_if_absent",
                )
            })
        })
        .collect();
    let mut winners = Vec::new();
    for task in tasks {
        winners.push(task.await.unwrap_or_else(|e| panic!("racer: {e}")));
    }
    let stored = ok(store.get_check().await, "get_check");
    for w in winners {
        same(
            Some(w),
            stored.clone(),
            "every racer gets the one stored check",
        );
    }
}

// --- data keys -----------------------------------------------------------

/// A fresh data key record of `sender` in `chat` for `epoch`.
fn data_key(chat: ChatId, sender: &UserId, epoch: u32, at: i64) -> DataKeyRecord {
    let epoch = KeyEpoch::new(epoch);
    let scope = DataKeyScope::new(chat, sender.clone(), epoch);
    let key = UserKey::generate()
        .and_then(|user_key| user_key.wrap_data_key(&scope, &DataKey::generate()?))
        .unwrap_or_else(|e| panic!("wrap a data key: {e}"));
    DataKeyRecord {
        epoch,
        key,
        created_at: Timestamp::from_millis(at),
    }
}

/// A data key is written once per (chat, sender, epoch): the first record
/// wins, byte for byte, and reads return it.
pub async fn data_keys_are_written_once_per_epoch(store: Arc<dyn KeyStore>) {
    let (chat, ann) = (ChatId::new(), user("ann"));
    let first = data_key(chat, &ann, 1, 1_000);
    let won = ok(
        store
            .put_data_key_if_absent(chat, &ann, first.clone())
            .await,
        "put_data_key_if_absent",
    );
    same(
        won,
        first.clone(),
        "the first data key of an epoch is stored",
    );
    let second = data_key(chat, &ann, 1, 2_000);
    let kept = ok(
        store.put_data_key_if_absent(chat, &ann, second).await,
        "put_data_key_if_absent",
    );
    same(
        kept,
        first.clone(),
        "a second key for the same epoch returns the first",
    );
    let read = ok(
        store.get_data_key(chat, &ann, KeyEpoch::new(1)).await,
        "get_data_key",
    );
    same(read, Some(first), "the stored record reads back byte-exact");
    let other_epoch = ok(
        store.get_data_key(chat, &ann, KeyEpoch::new(2)).await,
        "get_data_key",
    );
    same(other_epoch, None, "another epoch has no key yet");
    let other_chat = ok(
        store
            .get_data_key(ChatId::new(), &ann, KeyEpoch::new(1))
            .await,
        "get_data_key",
    );
    same(other_chat, None, "keys are per chat");
}

/// The latest data key of a sender in a chat is the one with the highest
/// epoch, whatever order they were written in; other senders and chats do
/// not count.
pub async fn latest_data_key_is_the_highest_epoch_of_that_sender(store: Arc<dyn KeyStore>) {
    let (chat, ann, bob) = (ChatId::new(), user("ann"), user("bob"));
    let none = ok(store.latest_data_key(chat, &ann).await, "latest_data_key");
    same(none, None, "no key before the first epoch");
    for epoch in [2, 10, 1] {
        let record = data_key(chat, &ann, epoch, i64::from(epoch) * 1_000);
        ok(
            store.put_data_key_if_absent(chat, &ann, record).await,
            "put_data_key_if_absent",
        );
    }
    ok(
        store
            .put_data_key_if_absent(chat, &bob, data_key(chat, &bob, 99, 5))
            .await,
        "put_data_key_if_absent",
    );
    let other_chat = ChatId::new();
    ok(
        store
            .put_data_key_if_absent(other_chat, &ann, data_key(other_chat, &ann, 50, 5))
            .await,
        "put_data_key_if_absent",
    );
    let latest = ok(store.latest_data_key(chat, &ann).await, "latest_data_key")
        .unwrap_or_else(|| panic!("ann has data keys in the chat"));
    same(
        latest.epoch,
        KeyEpoch::new(10),
        "the highest epoch (not the last written)",
    );
    same(
        latest.created_at,
        Timestamp::from_millis(10_000),
        "with its own start time",
    );
}

/// Shredding a user leaves their data keys (useless without the user key)
/// so that their epochs are never reused.
pub async fn data_keys_outlive_their_user_key(store: Arc<dyn KeyStore>) {
    let records = Records::new();
    let (chat, ann) = (ChatId::new(), user("ann"));
    put(&store, &ann, &records.key(&ann)).await;
    let record = data_key(chat, &ann, 3, 1);
    ok(
        store
            .put_data_key_if_absent(chat, &ann, record.clone())
            .await,
        "put_data_key_if_absent",
    );
    assert!(ok(store.delete_user_key(&ann).await, "delete_user_key"));
    same(get(&store, &ann).await, None, "the user key is gone");
    let latest = ok(store.latest_data_key(chat, &ann).await, "latest_data_key");
    same(latest, Some(record), "the data key and its epoch stay");
}

//! In-memory [`KeyStore`]: the reference implementation, for tests and
//! for embedders whose messages do not outlive the process either.

use std::{
    collections::BTreeMap,
    fmt,
    ops::Bound,
    sync::{Mutex, MutexGuard},
};

use async_trait::async_trait;

use super::{DataKeyRecord, KeyStore};
use crate::{
    crypto::{KeyCheck, KeyEpoch, WrappedUserKey},
    error::Result,
    model::{ChatId, UserId},
};

/// A [`KeyStore`] that keeps everything in memory, behind one lock.
///
/// Nothing survives the process, so neither does anything sealed under
/// its keys: pair it only with a store that forgets too
/// ([`MemoryStore`](crate::MemoryStore)).
#[derive(Default)]
pub struct MemoryKeyStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// In `UserId` order, which is byte order: the order of listing.
    users: BTreeMap<UserId, WrappedUserKey>,
    /// By (chat, sender, epoch): a chat's keys of one sender are adjacent,
    /// in epoch order.
    data_keys: BTreeMap<(ChatId, UserId, KeyEpoch), DataKeyRecord>,
    check: Option<KeyCheck>,
}

impl MemoryKeyStore {
    /// An empty key store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // No method panics while holding the lock half-way through a
        // change, so the state behind a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for MemoryKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryKeyStore")
            .field("users", &state.users.len())
            .field("check", &state.check.is_some())
            .finish()
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn get_user_key(&self, user: &UserId) -> Result<Option<WrappedUserKey>> {
        Ok(self.lock().users.get(user).cloned())
    }

    async fn put_user_key_if_absent(
        &self,
        user: &UserId,
        key: WrappedUserKey,
    ) -> Result<WrappedUserKey> {
        Ok(self.lock().users.entry(user.clone()).or_insert(key).clone())
    }

    async fn replace_user_key(
        &self,
        user: &UserId,
        current: &WrappedUserKey,
        new: WrappedUserKey,
    ) -> Result<bool> {
        Ok(swap_if(self.lock().users.get_mut(user), current, new))
    }

    async fn delete_user_key(&self, user: &UserId) -> Result<bool> {
        // The record holds ciphertext only; the key it wraps was never
        // here in the clear.
        Ok(self.lock().users.remove(user).is_some())
    }

    async fn put_data_key_if_absent(
        &self,
        chat: ChatId,
        sender: &UserId,
        record: DataKeyRecord,
    ) -> Result<DataKeyRecord> {
        Ok(self
            .lock()
            .data_keys
            .entry((chat, sender.clone(), record.epoch))
            .or_insert(record)
            .clone())
    }

    async fn get_data_key(
        &self,
        chat: ChatId,
        sender: &UserId,
        epoch: KeyEpoch,
    ) -> Result<Option<DataKeyRecord>> {
        Ok(self
            .lock()
            .data_keys
            .get(&(chat, sender.clone(), epoch))
            .cloned())
    }

    async fn latest_data_key(
        &self,
        chat: ChatId,
        sender: &UserId,
    ) -> Result<Option<DataKeyRecord>> {
        let state = self.lock();
        let from = (chat, sender.clone(), KeyEpoch::new(0));
        Ok(state
            .data_keys
            .range(from..)
            .take_while(|((c, s, _), _)| *c == chat && s == sender)
            .last()
            .map(|(_, record)| record.clone()))
    }

    async fn list_user_keys(
        &self,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, WrappedUserKey)>> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(self
            .lock()
            .users
            .range::<UserId, _>((start, Bound::Unbounded))
            .take(limit)
            .map(|(user, key)| (user.clone(), key.clone()))
            .collect())
    }

    async fn get_check(&self) -> Result<Option<KeyCheck>> {
        Ok(self.lock().check.clone())
    }

    async fn put_check_if_absent(&self, check: KeyCheck) -> Result<KeyCheck> {
        Ok(self.lock().check.get_or_insert(check).clone())
    }

    async fn replace_check(&self, current: &KeyCheck, new: KeyCheck) -> Result<bool> {
        Ok(swap_if(self.lock().check.as_mut(), current, new))
    }
}

/// Compare and swap: replaces `*slot` by `new` if it equals `current`.
fn swap_if<T: PartialEq>(slot: Option<&mut T>, current: &T, new: T) -> bool {
    match slot {
        Some(value) if *value == *current => {
            *value = new;
            true
        }
        _ => false,
    }
}

//! The [`KeyStore`] trait: where wrapped user keys live, apart from the
//! messages; and the [`KeyCache`] of unwrapped keys.
//!
//! The key store is what makes erasure reach old copies of the message
//! store: a user's [`UserKey`] exists only here (wrapped by the
//! [`MasterKey`]), so deleting it ([`KeyStore::delete_user_key`]) leaves
//! every copy of that user's ciphertext (free pages, WAL, dead tuples, a
//! backup of the message database) unreadable. It must therefore be a
//! separate database (its own SQLite file, its own PostgreSQL database or
//! schema), backed up separately and with short retention.
//!
//! [`KeyStoreExt`] has the flows built on the trait: a user's key on first
//! use, the start-up check of the master key, and master-key rotation.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::{
    crypto::{CryptoError, KeyCheck, KeyEpoch, MasterKey, UserKey, WrappedDataKey, WrappedUserKey},
    error::{Error, Result},
    model::{ChatId, Timestamp, UserId},
};

mod cache;
mod keyring;
mod memory;

pub use cache::KeyCache;
pub use keyring::{Keyring, KeyringConfig, Opened, SealedBody};
pub use memory::MemoryKeyStore;

/// Durable storage of wrapped user keys, and of the key check that tells
/// whether a master key is the right one.
///
/// A key store keeps opaque records; it never sees a key in the clear and
/// needs no master key. The engine does the cryptography.
///
/// # Contract
///
/// - **One key per user.** A user has at most one [`WrappedUserKey`].
///   [`put_user_key_if_absent`](KeyStore::put_user_key_if_absent) stores
///   the given key only if the user has none, and returns the user's key
///   after the call: the given one if it was stored, the existing one if
///   not. Concurrent calls for one user, on any number of nodes, store
///   exactly one key and all return it.
/// - **Compare and swap.** [`replace_user_key`](KeyStore::replace_user_key)
///   and [`replace_check`](KeyStore::replace_check) change a record only if
///   it is byte for byte the `current` one given, atomically, and say
///   whether they did; a missing record is never created by them. So a
///   concurrent change (another rotation, a deletion, a re-creation) is
///   never overwritten unseen.
/// - **Deletion is final.** After
///   [`delete_user_key`](KeyStore::delete_user_key) returns, no read
///   returns the deleted key, and the store keeps no copy of it that it can
///   avoid keeping: a SQLite store enables `secure_delete` and checkpoints
///   its WAL, a PostgreSQL store vacuums the table, so that the key's bytes
///   do not linger in the key store's own files. A later
///   `put_user_key_if_absent` stores a new, different key; content sealed
///   under the deleted one stays unreadable.
/// - **Listing** returns users in ascending byte order of their ids (the
///   order of [`UserId`]'s `Ord`; PostgreSQL needs `COLLATE "C"` or
///   `bytea`), strictly after `after`, at most `limit` of them.
/// - **Byte-exact.** Records come back exactly as stored.
/// - **Durability.** When a call returns `Ok`, its change is durable.
/// - **Data keys** are one record per (chat, sender, epoch), written once
///   ([`put_data_key_if_absent`](KeyStore::put_data_key_if_absent), with
///   the same winner rule as user keys: two nodes starting the same epoch
///   agree on one key). [`latest_data_key`](KeyStore::latest_data_key) is
///   the one with the highest epoch. They are useless without their
///   sender's user key, and [`delete_user_key`](KeyStore::delete_user_key)
///   leaves them: the epochs they record keep a sender who is erased and
///   comes back from ever sealing again under an epoch number that old
///   content used.
/// - **The key check** is one record per key store, with the same
///   put-if-absent and compare-and-swap rules as user keys.
/// - Errors: a backend failure, or a stored record that is not a valid
///   one, is [`Error::Backend`]. A missing user or
///   check is `None`/`false`, not an error.
///
/// The conformance suite in `chat_core::testing::keystore_suite` (feature
/// `testing`) checks all of this; every key store runs it against its real
/// backend with `keystore_conformance_tests!`.
///
/// # Example
///
/// ```
/// use chat_core::{
///     UserId,
///     crypto::MasterKey,
///     keystore::{KeyStore, KeyStoreExt, MemoryKeyStore},
/// };
/// use std::sync::Arc;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> chat_core::Result<()> {
/// let keys: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::new());
/// let master = MasterKey::generate()?;
/// keys.verify_master_key(&master).await?; // at start
///
/// let alice = UserId::new("alice")?;
/// let key = keys.user_key(&master, &alice).await?; // made on first use
/// assert_eq!(keys.user_key(&master, &alice).await?.id(), key.id());
///
/// assert!(keys.delete_user_key(&alice).await?); // crypto-shredding
/// assert!(keys.get_user_key(&alice).await?.is_none());
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait KeyStore: Debug + Send + Sync + 'static {
    // --- user keys -------------------------------------------------------

    /// `user`'s wrapped key, if they have one.
    async fn get_user_key(&self, user: &UserId) -> Result<Option<WrappedUserKey>>;

    /// Stores `key` as `user`'s if they have none; returns the key `user`
    /// has after the call (equal to `key` if this call stored it).
    async fn put_user_key_if_absent(
        &self,
        user: &UserId,
        key: WrappedUserKey,
    ) -> Result<WrappedUserKey>;

    /// Replaces `user`'s key by `new` if it is `current`; returns whether it
    /// did (`false` if the key changed meanwhile, or is gone).
    async fn replace_user_key(
        &self,
        user: &UserId,
        current: &WrappedUserKey,
        new: WrappedUserKey,
    ) -> Result<bool>;

    /// Deletes `user`'s key for good (crypto-shredding); returns whether
    /// there was one. The user's data keys stay (see the contract).
    async fn delete_user_key(&self, user: &UserId) -> Result<bool>;

    /// Up to `limit` users with their keys, in ascending byte order of
    /// user id, starting after `after` (from the first if `None`): the
    /// pages of a master-key rotation.
    async fn list_user_keys(
        &self,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, WrappedUserKey)>>;

    // --- data keys -------------------------------------------------------

    /// Stores `record` as the data key of `sender` in `chat` for
    /// `record.epoch` if there is none; returns the record stored after the
    /// call (equal to `record` if this call stored it).
    async fn put_data_key_if_absent(
        &self,
        chat: ChatId,
        sender: &UserId,
        record: DataKeyRecord,
    ) -> Result<DataKeyRecord>;

    /// The data key of `sender` in `chat` for `epoch`, if any.
    async fn get_data_key(
        &self,
        chat: ChatId,
        sender: &UserId,
        epoch: KeyEpoch,
    ) -> Result<Option<DataKeyRecord>>;

    /// The data key of `sender` in `chat` with the highest epoch, if any:
    /// where a node that just started continues.
    async fn latest_data_key(&self, chat: ChatId, sender: &UserId)
    -> Result<Option<DataKeyRecord>>;

    // --- the key check ---------------------------------------------------

    /// The key check, if one was stored.
    async fn get_check(&self) -> Result<Option<KeyCheck>>;

    /// Stores `check` if there is none; returns the check stored after the
    /// call (equal to `check` if this call stored it).
    async fn put_check_if_absent(&self, check: KeyCheck) -> Result<KeyCheck>;

    /// Replaces the check by `new` if it is `current`; returns whether it
    /// did.
    async fn replace_check(&self, current: &KeyCheck, new: KeyCheck) -> Result<bool>;
}

/// One wrapped data key, as the key store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKeyRecord {
    /// The epoch it seals.
    pub epoch: KeyEpoch,
    /// The key, wrapped by its sender's user key.
    pub key: WrappedDataKey,
    /// When the epoch began (for [`EpochPolicy`](crate::crypto::EpochPolicy)).
    pub created_at: Timestamp,
}

/// What [`KeyStoreExt::rotate_master_key`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rotation {
    /// User keys re-wrapped from the old master key to the new one.
    pub rewrapped: u64,
    /// User keys already under the new master key (an earlier, interrupted
    /// run, or a concurrent one).
    pub already_rotated: u64,
    /// User keys deleted while the rotation ran.
    pub vanished: u64,
    /// Users whose key could not be re-wrapped (wrapped under a third key,
    /// or altered), left as they are: the old key is still needed, or the
    /// key is lost.
    pub unreadable: Vec<UserId>,
}

/// How often [`KeyStoreExt::rotate_master_key`] retries one user whose key
/// keeps changing under it.
const ROTATION_RETRIES: usize = 8;

/// The flows of the engine and the server over a [`KeyStore`], for every
/// key store (blanket implementation).
#[async_trait]
pub trait KeyStoreExt: KeyStore {
    /// `user`'s key, unwrapped; made and stored on first use (if two
    /// nodes race, both get the one stored first).
    ///
    /// For the write path only: it makes a new key for a user whose key was
    /// shredded. Readers use [`KeyStore::get_user_key`], so that reading an
    /// erased user's messages never makes a key (`None` means erased).
    async fn user_key(&self, master: &MasterKey, user: &UserId) -> Result<UserKey> {
        if let Some(stored) = self.get_user_key(user).await? {
            return Ok(master.unwrap_user_key(user, &stored)?);
        }
        let key = UserKey::generate()?;
        let ours = master.wrap_user_key(user, &key)?;
        let stored = self.put_user_key_if_absent(user, ours.clone()).await?;
        if stored == ours {
            Ok(key)
        } else {
            Ok(master.unwrap_user_key(user, &stored)?)
        }
    }

    /// Checks at start that `master` is the key this key store was sealed
    /// with; on first use, seals the check with it.
    ///
    /// Fails with the [`CryptoError::KeyMismatch`] (naming both key ids) as
    /// source if another key sealed the check, or, for a store without a
    /// check, wrapped its first user key; nothing is changed then.
    async fn verify_master_key(&self, master: &MasterKey) -> Result<()> {
        let check = match self.get_check().await? {
            Some(check) => check,
            None => {
                // A store from before the check: its keys say which master
                // key it belongs to.
                let first = self.list_user_keys(None, 1).await?.pop();
                let first = first.map(|(_, key)| key.key_id());
                if let Some(found) = first.filter(|id| *id != master.id()) {
                    return Err(CryptoError::KeyMismatch {
                        expected: master.id(),
                        found,
                    }
                    .into());
                }
                self.put_check_if_absent(master.seal_check()?).await?
            }
        };
        Ok(master.verify_check(&check)?)
    }

    /// Re-wraps every user key from `old` to `new`, `page_size` users at a
    /// time, without touching data keys or messages; afterwards `old` is no
    /// longer needed.
    ///
    /// The key check moves to `new` first, so a server restarted with `old`
    /// during or after the rotation refuses to start. Each key is swapped
    /// with [`KeyStore::replace_user_key`], so keys deleted or made
    /// meanwhile are never overwritten. Safe to run again: a rotation that
    /// was interrupted resumes (keys already under `new` are skipped).
    /// Servers should be stopped while it runs; a server still holding
    /// `old` would wrap new users' keys under it (running the rotation
    /// again catches them).
    async fn rotate_master_key(
        &self,
        old: &MasterKey,
        new: &MasterKey,
        page_size: usize,
    ) -> Result<Rotation> {
        if old.id() == new.id() {
            return Err(Error::invalid("the new master key is the old one"));
        }
        move_check(self, old, new).await?;
        let mut rotation = Rotation::default();
        let mut after: Option<UserId> = None;
        loop {
            let page = self
                .list_user_keys(after.as_ref(), page_size.max(1))
                .await?;
            let Some((last, _)) = page.last() else {
                return Ok(rotation);
            };
            after = Some(last.clone());
            for (user, wrapped) in page {
                rotate_user_key(self, old, new, &user, wrapped, &mut rotation).await?;
            }
        }
    }
}

#[async_trait]
impl<T: KeyStore + ?Sized> KeyStoreExt for T {}

/// The first step of [`KeyStoreExt::rotate_master_key`]: the key check
/// from `old` to `new` (or already there).
async fn move_check<S: KeyStore + ?Sized>(
    store: &S,
    old: &MasterKey,
    new: &MasterKey,
) -> Result<()> {
    let Some(check) = store.get_check().await? else {
        let stored = store.put_check_if_absent(new.seal_check()?).await?;
        return Ok(new.verify_check(&stored)?);
    };
    if new.verify_check(&check).is_ok() {
        return Ok(());
    }
    old.verify_check(&check)?;
    if store.replace_check(&check, new.seal_check()?).await? {
        Ok(())
    } else {
        Err(Error::conflict(
            "the key check changed while the rotation started; run it again",
        ))
    }
}

/// One user's step of [`KeyStoreExt::rotate_master_key`].
async fn rotate_user_key<S: KeyStore + ?Sized>(
    store: &S,
    old: &MasterKey,
    new: &MasterKey,
    user: &UserId,
    mut current: WrappedUserKey,
    rotation: &mut Rotation,
) -> Result<()> {
    for _ in 0..ROTATION_RETRIES {
        if current.key_id() == new.id() {
            rotation.already_rotated += 1;
            return Ok(());
        }
        let key = match old.unwrap_user_key(user, &current) {
            Ok(key) => key,
            Err(CryptoError::Decrypt | CryptoError::KeyMismatch { .. }) => {
                rotation.unreadable.push(user.clone());
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let rewrapped = new.wrap_user_key(user, &key)?;
        if store.replace_user_key(user, &current, rewrapped).await? {
            rotation.rewrapped += 1;
            return Ok(());
        }
        match store.get_user_key(user).await? {
            Some(now) => current = now,
            None => {
                rotation.vanished += 1;
                return Ok(());
            }
        }
    }
    Err(Error::conflict(format!(
        "{user}'s key kept changing during the rotation; run it again"
    )))
}

#[cfg(test)]
mod tests;

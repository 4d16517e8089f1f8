//! [`Keyring`]: sealing and opening message bodies with the keys of a
//! [`KeyStore`], as the engine will for chats encrypted at rest.
//!
//! It holds the master key, caches unwrapped user and data keys (bounded),
//! and decides the epoch each (chat, sender) seals in: a new data key after
//! [`EpochPolicy::max_messages`] bodies or [`EpochPolicy::max_age`], old
//! epochs still open. Reading never makes a key: a sender whose user key
//! was shredded reads as [`Opened::Erased`].
//!
//! # Erasure elsewhere
//!
//! A user key may be destroyed by another node, or by an operator's
//! command, while this keyring holds it unwrapped. So a cached user key is
//! trusted for [`KeyringConfig::recheck_after`] only: then the key store
//! is asked again, and if the key is gone (or was replaced) every key of
//! that user held here is forgotten, data keys included. Data keys are
//! used only while their sender's user key is trusted. An erasure thus
//! reaches every node within that bound, without a message between them.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use zeroize::{ZeroizeOnDrop, Zeroizing};

use super::{DataKeyRecord, KeyCache, KeyStore, KeyStoreExt};
use crate::{
    clock::Clock,
    crypto::{
        Aad, CryptoError, DataKey, DataKeyOpener, DataKeyScope, EpochPolicy, KeyEpoch, MasterKey,
        UserKey, sealed_epoch,
    },
    error::{Error, Result},
    model::{ChatId, MessageId, Timestamp, UserId},
};

/// How a [`Keyring`] rotates and caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyringConfig {
    /// When a (chat, sender) starts a new epoch.
    pub epochs: EpochPolicy,
    /// Unwrapped keys kept in memory, of each kind (user keys, data keys).
    pub cached_keys: usize,
    /// How long a cached user key is used before the key store is asked
    /// whether it still exists: the longest an erasure made elsewhere
    /// leaves that user's content readable on this node (zero: ask on
    /// every use).
    pub recheck_after: Duration,
}

impl KeyringConfig {
    /// The default [`KeyringConfig::recheck_after`]: one minute.
    pub const DEFAULT_RECHECK_AFTER: Duration = Duration::from_secs(60);
}

impl Default for KeyringConfig {
    fn default() -> Self {
        Self {
            epochs: EpochPolicy::default(),
            cached_keys: 10_000,
            recheck_after: Self::DEFAULT_RECHECK_AFTER,
        }
    }
}

/// A user key in the cache, and when the key store last confirmed it.
struct Checked {
    key: UserKey,
    at: Timestamp,
}

// The user key wipes itself when dropped; the time is not secret.
impl ZeroizeOnDrop for Checked {}

/// What opening a sealed body gave.
pub enum Opened {
    /// The text.
    Text(Zeroizing<String>),
    /// The sender was erased: their user key is gone, and with it every
    /// way to read what they sent. Shown as a placeholder, not an error.
    Erased,
    /// The sealed bytes do not open (altered, truncated, moved from another
    /// message, or their data key is missing): an error for this content
    /// alone, logged here.
    Damaged,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the text.
        match self {
            Self::Text(_) => f.write_str("Text(..)"),
            Self::Erased => f.write_str("Erased"),
            Self::Damaged => f.write_str("Damaged"),
        }
    }
}

/// One body for [`Keyring::open_bodies`].
#[derive(Debug, Clone, Copy)]
pub struct SealedBody<'a> {
    /// The chat it was sent in.
    pub chat: ChatId,
    /// Its sender.
    pub sender: &'a UserId,
    /// The message.
    pub message: MessageId,
    /// What [`Keyring::seal_body`] made.
    pub sealed: &'a [u8],
}

/// Content that does not open: logged here (never the content), and
/// [`Opened::Damaged`].
fn damaged(chat: ChatId, message: MessageId, error: &dyn fmt::Display) -> Opened {
    tracing::error!(%chat, %message, error = %error, "stored content does not open");
    Opened::Damaged
}

/// A key of one page of [`Keyring::open_bodies`].
enum PageKey {
    // Boxed: the expanded key schedule is about 1 KiB.
    Open(Box<DataKeyOpener>),
    Erased,
    Damaged(String),
}

/// What [`Keyring::opening_key`] found.
enum Opening {
    Key(Arc<DataKey>),
    /// The sender's user key is gone, or is not the one that wrapped it.
    Erased,
    /// The data key is missing or does not unwrap.
    Damaged(String),
}

/// Where one (chat, sender) seals now.
#[derive(Debug, Clone, Copy)]
struct Current {
    epoch: KeyEpoch,
    /// Bodies sealed in this epoch by this node since it started (a node
    /// that restarts counts from zero; the age bound still holds).
    sealed: u64,
    started_at: Timestamp,
}

/// Seals and opens message bodies with the keys of a [`KeyStore`]: it holds
/// the master key, caches unwrapped user and data keys (bounded, user keys
/// rechecked after [`KeyringConfig::recheck_after`]), and starts a new
/// epoch per (chat, sender) as its [`EpochPolicy`] says.
pub struct Keyring {
    master: MasterKey,
    store: Arc<dyn KeyStore>,
    clock: Arc<dyn Clock>,
    config: KeyringConfig,
    user_keys: KeyCache<UserId, Checked>,
    data_keys: KeyCache<DataKeyScope, DataKey>,
    current: Mutex<HashMap<(ChatId, UserId), Current>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("master", &self.master)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// A keyring over `store` with `master`; fails, changing nothing, if
    /// `master` is not the key `store` was sealed with.
    pub async fn new(
        master: MasterKey,
        store: Arc<dyn KeyStore>,
        clock: Arc<dyn Clock>,
        config: KeyringConfig,
    ) -> Result<Self> {
        store.verify_master_key(&master).await?;
        Ok(Self {
            master,
            store,
            clock,
            user_keys: KeyCache::new(config.cached_keys),
            data_keys: KeyCache::new(config.cached_keys),
            config,
            current: Mutex::new(HashMap::new()),
        })
    }

    /// Seals the body of `message`, sent by `sender` in `chat`.
    pub async fn seal_body(
        &self,
        chat: ChatId,
        sender: &UserId,
        message: MessageId,
        text: &str,
    ) -> Result<Vec<u8>> {
        self.seal(Aad::body, chat, sender, message, text).await
    }

    /// Seals a report's copy of `message` (sent by `sender` in `chat`), as
    /// evidence that outlives an edit or deletion of the message but not
    /// the erasure of its sender.
    pub async fn seal_snapshot(
        &self,
        chat: ChatId,
        sender: &UserId,
        message: MessageId,
        text: &str,
    ) -> Result<Vec<u8>> {
        self.seal(Aad::report_snapshot, chat, sender, message, text)
            .await
    }

    /// Opens the body of `message`, sealed by [`Keyring::seal_body`]: the
    /// text, [`Opened::Erased`] for an erased sender, [`Opened::Damaged`]
    /// for content that does not open as this message's body (altered, or
    /// moved from another message, chat or sender). An error only when the
    /// key store cannot be read.
    pub async fn open_body(
        &self,
        chat: ChatId,
        sender: &UserId,
        message: MessageId,
        sealed: &[u8],
    ) -> Result<Opened> {
        self.open(Aad::body, chat, sender, message, sealed).await
    }

    /// Opens a report's copy sealed by [`Keyring::seal_snapshot`], as
    /// [`Keyring::open_body`] does.
    pub async fn open_snapshot(
        &self,
        chat: ChatId,
        sender: &UserId,
        message: MessageId,
        sealed: &[u8],
    ) -> Result<Opened> {
        self.open(Aad::report_snapshot, chat, sender, message, sealed)
            .await
    }

    /// Opens many bodies at once (a history or sync page), as
    /// [`Keyring::open_body`] each: every (chat, sender, epoch) key is
    /// looked up once for the whole page, not once per message.
    pub async fn open_bodies(&self, bodies: &[SealedBody<'_>]) -> Result<Vec<Opened>> {
        // Per (chat, sender, epoch) of the page: the key, expanded once.
        let mut keys: Vec<(DataKeyScope, PageKey)> = Vec::new();
        let mut out = Vec::with_capacity(bodies.len());
        for body in bodies {
            let epoch = match sealed_epoch(body.sealed) {
                Ok(epoch) => epoch,
                Err(e) => {
                    out.push(damaged(body.chat, body.message, &e));
                    continue;
                }
            };
            let found = keys.iter().position(|(scope, _)| {
                scope.epoch == epoch && scope.chat == body.chat && scope.sender == *body.sender
            });
            let index = match found {
                Some(index) => index,
                None => {
                    let scope = DataKeyScope::new(body.chat, body.sender.clone(), epoch);
                    let opening = match self.opening_key(&scope).await? {
                        Opening::Key(key) => PageKey::Open(Box::new(key.opener())),
                        Opening::Erased => PageKey::Erased,
                        Opening::Damaged(why) => PageKey::Damaged(why),
                    };
                    keys.push((scope, opening));
                    keys.len() - 1
                }
            };
            let (scope, opening) = &keys[index];
            out.push(match opening {
                PageKey::Open(key) => {
                    match key.open_text(&Aad::body(scope, body.message), body.sealed) {
                        Ok(text) => Opened::Text(text),
                        Err(e) => damaged(body.chat, body.message, &e),
                    }
                }
                PageKey::Erased => Opened::Erased,
                PageKey::Damaged(why) => damaged(body.chat, body.message, why),
            });
        }
        Ok(out)
    }

    async fn seal(
        &self,
        aad: fn(&DataKeyScope, MessageId) -> Aad,
        chat: ChatId,
        sender: &UserId,
        message: MessageId,
        text: &str,
    ) -> Result<Vec<u8>> {
        let (scope, key) = self.sealing_key(chat, sender).await?;
        Ok(key.seal(&aad(&scope, message), text.as_bytes())?)
    }

    async fn open(
        &self,
        aad: fn(&DataKeyScope, MessageId) -> Aad,
        chat: ChatId,
        sender: &UserId,
        message: MessageId,
        sealed: &[u8],
    ) -> Result<Opened> {
        let epoch = match sealed_epoch(sealed) {
            Ok(epoch) => epoch,
            Err(e) => return Ok(damaged(chat, message, &e)),
        };
        let scope = DataKeyScope::new(chat, sender.clone(), epoch);
        let key = match self.opening_key(&scope).await? {
            Opening::Key(key) => key,
            Opening::Erased => return Ok(Opened::Erased),
            Opening::Damaged(why) => return Ok(damaged(chat, message, &why)),
        };
        match key.open_text(&aad(&scope, message), sealed) {
            Ok(text) => Ok(Opened::Text(text)),
            Err(e) => Ok(damaged(chat, message, &e)),
        }
    }

    /// Crypto-shredding: destroys `user`'s key in the key store and forgets
    /// every key of theirs this node holds. Returns whether there was one.
    ///
    /// Other nodes (and other keyrings over the same key store) stop using
    /// what they cached within [`KeyringConfig::recheck_after`].
    pub async fn erase_user(&self, user: &UserId) -> Result<bool> {
        let existed = self.store.delete_user_key(user).await?;
        self.forget_user(user);
        Ok(existed)
    }

    /// Forgets every key of `user` held in memory (after an erasure on
    /// another node).
    pub fn forget_user(&self, user: &UserId) {
        self.user_keys.remove(user);
        self.data_keys.remove_where(|scope| scope.sender == *user);
        self.lock().retain(|(_, sender), _| sender != user);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ChatId, UserId), Current>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes sure the key `sender` will seal with in `chat` is at hand: a
    /// new sender's (or a new epoch's) keys are made and durably stored
    /// here, by the caller, so that sealing in the store's write lane
    /// finds them cached instead of waiting for the key store there. Costs
    /// a cache lookup when the key is at hand already.
    pub async fn prepare_sealing(&self, chat: ChatId, sender: &UserId) -> Result<()> {
        self.sealing_key_counted(chat, sender, false)
            .await
            .map(|_| ())
    }

    /// The key with which `sender`'s upload to `chat` is sealed now (the
    /// key of their messages there, so that erasing them shreds both), and
    /// its scope; counts as one body sealed.
    pub async fn media_sealing_key(
        &self,
        chat: ChatId,
        sender: &UserId,
    ) -> Result<(DataKeyScope, Arc<DataKey>)> {
        self.sealing_key(chat, sender).await
    }

    /// The key that opens an upload sealed under `scope`: `None` when its
    /// uploader was erased; an error when the key store cannot be read or
    /// the key is missing or damaged.
    pub async fn media_opening_key(&self, scope: &DataKeyScope) -> Result<Option<Arc<DataKey>>> {
        match self.opening_key(scope).await? {
            Opening::Key(key) => Ok(Some(key)),
            Opening::Erased => Ok(None),
            Opening::Damaged(why) => Err(Error::backend(why)),
        }
    }

    /// The data key `sender` seals with in `chat` now, starting a new epoch
    /// when the policy says so; counts one body sealed.
    async fn sealing_key(
        &self,
        chat: ChatId,
        sender: &UserId,
    ) -> Result<(DataKeyScope, Arc<DataKey>)> {
        self.sealing_key_counted(chat, sender, true).await
    }

    async fn sealing_key_counted(
        &self,
        chat: ChatId,
        sender: &UserId,
        count: bool,
    ) -> Result<(DataKeyScope, Arc<DataKey>)> {
        let now = self.clock.now();
        let slot = (chat, sender.clone());
        let known = self.lock().get(&slot).copied();
        let current = match known {
            Some(current) => Some(current),
            None => self
                .store
                .latest_data_key(chat, sender)
                .await?
                .map(|record| Current {
                    epoch: record.epoch,
                    sealed: 0,
                    started_at: record.created_at,
                }),
        };
        let due = current.is_none_or(|c| self.config.epochs.is_due(c.sealed, c.started_at, now));
        let (scope, key, started_at) = match current {
            Some(c) if !due => {
                let scope = DataKeyScope::new(chat, sender.clone(), c.epoch);
                match self.opening_key(&scope).await? {
                    Opening::Key(key) => (scope, key, c.started_at),
                    // Wrapped by a user key that is gone (the sender was
                    // erased and came back), or unusable: never seal under
                    // that epoch again, start the next one.
                    Opening::Erased | Opening::Damaged(_) => {
                        self.start_epoch(chat, sender, current, now).await?
                    }
                }
            }
            _ => self.start_epoch(chat, sender, current, now).await?,
        };
        let mut map = self.lock();
        // Bounded like the key caches: one entry per active (chat, sender).
        if map.len() >= self.config.cached_keys && !map.contains_key(&slot) {
            map.clear();
        }
        let entry = map.entry(slot).or_insert(Current {
            epoch: scope.epoch,
            sealed: 0,
            started_at,
        });
        if entry.epoch != scope.epoch {
            *entry = Current {
                epoch: scope.epoch,
                sealed: 0,
                started_at,
            };
        }
        if count {
            entry.sealed += 1;
        }
        Ok((scope, key))
    }

    /// Makes the data key of the epoch after `current` (the first if none)
    /// and stores it; if another node stored one for that epoch first,
    /// uses that one.
    async fn start_epoch(
        &self,
        chat: ChatId,
        sender: &UserId,
        current: Option<Current>,
        now: Timestamp,
    ) -> Result<(DataKeyScope, Arc<DataKey>, Timestamp)> {
        let epoch = match current {
            None => KeyEpoch::FIRST,
            Some(c) => c
                .epoch
                .next()
                .ok_or_else(|| Error::backend("data key epochs exhausted"))?,
        };
        let scope = DataKeyScope::new(chat, sender.clone(), epoch);
        let user_key = match self.user_key(sender, true).await? {
            Found::Trusted(key) | Found::Replaced(key) => key,
            Found::None => return Err(Error::backend("the key store made no user key")),
        };
        let key = DataKey::generate()?;
        let ours = DataKeyRecord {
            epoch,
            key: user_key.key.wrap_data_key(&scope, &key)?,
            created_at: now,
        };
        let stored = self
            .store
            .put_data_key_if_absent(chat, sender, ours.clone())
            .await?;
        let key = if stored == ours {
            key
        } else {
            user_key.key.unwrap_data_key(&scope, &stored.key)?
        };
        let key = self.data_keys.insert(scope.clone(), key);
        Ok((scope, key, stored.created_at))
    }

    /// The unwrapped data key of `scope`, or why there is none; an error
    /// only when the key store cannot be read.
    async fn opening_key(&self, scope: &DataKeyScope) -> Result<Opening> {
        if let Some(key) = self.data_keys.get(scope) {
            // Usable while its sender's user key is: that is what tells
            // whether the sender was erased since it was unwrapped.
            match self.user_key(&scope.sender, false).await? {
                Found::Trusted(_) => return Ok(Opening::Key(key)),
                Found::None => return Ok(Opening::Erased),
                // Forgotten with the old user key: unwrap again below.
                Found::Replaced(_) => {}
            }
        }
        let Some(record) = self
            .store
            .get_data_key(scope.chat, &scope.sender, scope.epoch)
            .await?
        else {
            return Ok(Opening::Damaged(format!(
                "no data key for epoch {} of this sender in this chat",
                scope.epoch
            )));
        };
        let user_key = match self.user_key(&scope.sender, false).await? {
            Found::Trusted(key) | Found::Replaced(key) => key,
            Found::None => return Ok(Opening::Erased),
        };
        match user_key.key.unwrap_data_key(scope, &record.key) {
            Ok(key) => Ok(Opening::Key(self.data_keys.insert(scope.clone(), key))),
            Err(CryptoError::KeyMismatch { .. }) => Ok(Opening::Erased),
            Err(e) => Ok(Opening::Damaged(format!("a data key does not unwrap: {e}"))),
        }
    }

    /// `user`'s key, from the cache while it is trusted (see the [module
    /// docs](self)), else from the key store; made there on first use if
    /// `create`. Finding the key gone or replaced forgets every key of
    /// `user` held here, data keys included.
    async fn user_key(&self, user: &UserId, create: bool) -> Result<Found> {
        let now = self.clock.now();
        let cached = self.user_keys.get(user);
        if let Some(cached) = &cached {
            // A clock that stepped back (a negative age) counts as stale:
            // asking again is always safe.
            let age_ms = now.as_millis().saturating_sub(cached.at.as_millis());
            let fresh = u64::try_from(age_ms)
                .is_ok_and(|age| Duration::from_millis(age) < self.config.recheck_after);
            if fresh {
                return Ok(Found::Trusted(Arc::clone(cached)));
            }
        }
        let found = if create {
            Some(self.store.user_key(&self.master, user).await?)
        } else {
            match self.store.get_user_key(user).await? {
                Some(wrapped) => Some(self.master.unwrap_user_key(user, &wrapped)?),
                None => None,
            }
        };
        let replaced = match (&cached, &found) {
            (Some(old), Some(new)) => old.key.id() != new.id(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if replaced {
            tracing::info!(user = %user, "a user key was erased elsewhere; forgetting it here");
            self.forget_user(user);
        }
        Ok(match found {
            None => Found::None,
            Some(key) => {
                let key = self
                    .user_keys
                    .insert(user.clone(), Checked { key, at: now });
                if replaced {
                    Found::Replaced(key)
                } else {
                    Found::Trusted(key)
                }
            }
        })
    }
}

/// What [`Keyring::user_key`] found.
enum Found {
    /// The key, as cached or read: data keys cached for it are good.
    Trusted(Arc<Checked>),
    /// A different key than the one cached: every key of the user held
    /// here was forgotten.
    Replaced(Arc<Checked>),
    /// No key (never made, or erased).
    None,
}

#[cfg(test)]
mod tests;

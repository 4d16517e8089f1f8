//! [`ChatEngine`]: the single place where every rule lives.
//!
//! Every operation takes the acting user ([`Actor`]) and checks what that
//! user may do; transports only authenticate and translate. Changes of a
//! chat's log go through write lanes (see `writer`) that batch them into one
//! [`Store::apply`] (group commit) and publish their events in commit order,
//! so that every connection sees a chat's events in `updated_seq` order.

mod audit;
mod cache;
mod chats;
mod checkins;
mod crisis;
mod erasure;
mod export;
mod groups;
mod media;
mod messages;
mod mls;
mod moderation;
mod presence;
mod retention;
mod stats;
mod sync;
pub(crate) mod validate;
mod writer;

use std::{sync::Arc, time::Duration};

use serde::Serialize;

pub use self::{
    audit::{AuditPage, MAX_AUDIT_PAGE},
    chats::{ChatPage, ChatUpdate, NewGroup, Opened},
    checkins::{CheckinResults, GivenAnswer, MAX_OPTION_CHARS, MAX_PROMPT_CHARS, NewCheckin},
    erasure::{Erasure, Kept, Removed},
    export::{ExportStream, MAX_EXPORTS},
    media::{ByteRange, Download, MediaConfig, Served, Upload},
    messages::{HistoryPage, HistoryRequest, Receipt, SYSTEM_REPORTER, SendMessage},
    mls::MlsCommitRequest,
    moderation::{ModerationAction, PrivacyPatch},
    presence::Session,
    retention::{MAX_RETENTION_SECS, MIN_RETENTION_SECS, RETENTION_SWEEP_MAX},
    stats::{DayStats, FirstReply, MAX_STATS_DAYS, Stats, WeekStats},
    sync::{SyncChat, SyncResult},
};
use self::{
    cache::ChatCache,
    media::MediaParts,
    presence::{Presence, Typing},
    writer::Writer,
};
use crate::{
    bus::{Action, Audience, Bus, Delivery, LocalBus},
    clock::{Clock, SystemClock},
    error::{Error, Result},
    hooks::{AllowAll, ContactPolicy, MessageHook, Notifier},
    hub::Hub,
    keystore::Keyring,
    mls::MlsDelivery,
    model::*,
    store::{EncryptedStore, Store},
};
// `tests` finds these through `use super::*`; the code here that used them
// moved to the area modules.
#[cfg(test)]
use {
    crate::store::{
        Change, ChatListQuery, GroupPatch, HistoryQuery, NewChat, ReportQuery, ReportResolution,
    },
    std::collections::HashSet,
};

/// Who performs an operation: an authenticated user, possibly an admin of
/// the whole service (the token's `role: "admin"` claim).
///
/// Transports build actors with [`ChatEngine::authorize`], which refuses
/// suspended users. [`Actor::user`] skips that check, for embedders that
/// vouch for their users themselves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Actor {
    /// The user.
    pub user_id: UserId,
    /// Whether they may use the moderation API.
    pub admin: bool,
}

impl Actor {
    /// A regular user.
    pub fn user(user_id: UserId) -> Self {
        Self {
            user_id,
            admin: false,
        }
    }

    /// A service admin.
    pub fn admin(user_id: UserId) -> Self {
        Self {
            user_id,
            admin: true,
        }
    }
}

/// Limits and timings of the engine. Every limit is on something a client
/// controls, so that no client can grow the server's memory without bound.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// Longest text, in Unicode scalar values after trimming.
    pub max_text_chars: usize,
    /// Longest content of an E2EE message (opaque ciphertext), in bytes.
    pub max_ciphertext_bytes: usize,
    /// Most participants of a group, creator included.
    pub max_group_members: usize,
    /// Most live connections of one user on one node.
    pub max_connections_per_user: usize,
    /// Most chats open (`join_chat`) on one connection.
    pub max_open_chats: usize,
    /// Most distinct emoji on one message.
    pub max_reactions_per_message: usize,
    /// Most cursors in one `sync`.
    pub max_sync_cursors: usize,
    /// Changes per chat in one `sync` page.
    pub sync_page: usize,
    /// Chats in one `sync` page.
    pub sync_chats_page: usize,
    /// About how many bytes one `sync` page may take (at least one chat).
    pub sync_page_bytes: usize,
    /// Messages in a `join_chat` answer.
    pub join_history: usize,
    /// Typing expires after this long without a new `typing_start`.
    pub typing_ttl: Duration,
    /// A user goes offline this long after their last connection closed.
    pub presence_grace: Duration,
    /// Parallel write lanes (a chat always uses the same lane).
    pub write_lanes: usize,
    /// Most changes in one store batch.
    pub write_batch: usize,
    /// Most changes waiting per lane before senders wait.
    pub write_queue: usize,
    /// Most groups one user may be a member of; adding them to one more is
    /// a `conflict`.
    pub max_groups_per_user: usize,
    /// Most chats kept in memory for sends, receipts and typing (0: none).
    /// Only used with a single-node bus; see [`Bus::single_node`].
    pub chat_cache: usize,
    /// How much of a text message's start its push notifications carry
    /// ([`Notification::preview`](crate::hooks::Notification::preview)), in
    /// Unicode scalar values. 0 (the default): none, so no message text
    /// leaves the server through a [`Notifier`]. Never for `e2ee` chats.
    pub push_preview_chars: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_text_chars: 8192,
            max_ciphertext_bytes: 60 * 1024,
            max_group_members: 256,
            max_groups_per_user: 1000,
            max_connections_per_user: 16,
            max_open_chats: 128,
            max_reactions_per_message: 32,
            max_sync_cursors: 1000,
            sync_page: 100,
            sync_chats_page: 100,
            sync_page_bytes: 512 * 1024,
            join_history: 50,
            typing_ttl: Duration::from_secs(6),
            presence_grace: Duration::from_secs(2),
            write_lanes: 1,
            write_batch: 512,
            write_queue: 8192,
            chat_cache: 10_000,
            push_preview_chars: 0,
        }
    }
}

/// Builds a [`ChatEngine`]; see [`ChatEngine::builder`].
#[derive(Debug)]
pub struct EngineBuilder {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    policy: Arc<dyn ContactPolicy>,
    hooks: Vec<Arc<dyn MessageHook>>,
    notifier: Option<Arc<dyn Notifier>>,
    crisis: Option<Arc<crate::care::CrisisConfig>>,
    keyring: Option<Arc<Keyring>>,
    mls: Option<Arc<dyn MlsDelivery>>,
    media: Option<(Arc<dyn crate::MediaStore>, MediaConfig)>,
    config: EngineConfig,
}

impl EngineBuilder {
    /// The bus between nodes (default: [`LocalBus`], a single node).
    pub fn bus(mut self, bus: Arc<dyn Bus>) -> Self {
        self.bus = bus;
        self
    }

    /// The clock for timestamps (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Who may open direct chats with whom (default: everyone).
    pub fn contact_policy(mut self, policy: Arc<dyn ContactPolicy>) -> Self {
        self.policy = policy;
        self
    }

    /// Adds a hook that runs before every message is stored.
    pub fn hook(mut self, hook: Arc<dyn MessageHook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Push notifications for recipients with no live connection.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifier = Some(notifier);
        self
    }

    /// Crisis escalation (PROTOCOL.md 5.3): a message or edit of an
    /// at-rest chat whose text matches one of the phrases is flagged for
    /// admins, responders get `crisis_alert` (and the notifier its
    /// [`crisis_alert`](Notifier::crisis_alert)), and the sender
    /// `support_resources`, after it is stored.
    pub fn crisis(mut self, crisis: crate::care::CrisisConfig) -> Self {
        self.crisis = Some(Arc::new(crisis));
        self
    }

    /// Encrypts message content at rest with `keyring`: the store is
    /// wrapped in an [`EncryptedStore`], and
    /// [`ChatEngine::erase_user_keys`] destroys keys in the keyring's key
    /// store.
    pub fn encrypt_at_rest(mut self, keyring: Arc<Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Enables `e2ee` chats: `mls` parses and checks what clients send for
    /// MLS (the engine keeps the key package directory and the order of
    /// commits). Without it, the MLS commands are refused.
    pub fn mls(mut self, mls: Arc<dyn MlsDelivery>) -> Self {
        self.mls = Some(mls);
        self
    }

    /// Enables uploads: their bytes go to `store` (see
    /// [`ObjectMediaStore`](crate::media::ObjectMediaStore)), with the
    /// limits of `config`. Without it, uploads are refused.
    pub fn media(mut self, store: Arc<dyn crate::MediaStore>, config: MediaConfig) -> Self {
        self.media = Some((store, config));
        self
    }

    /// Limits and timings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the engine's write lanes and attaches the hub to the bus.
    /// Must be called within a Tokio runtime.
    pub async fn build(self) -> Result<ChatEngine> {
        let hub = Arc::new(Hub::new());
        let encrypted = self
            .keyring
            .map(|keyring| Arc::new(EncryptedStore::new(self.store.clone(), keyring)));
        let store = match &encrypted {
            Some(encrypted) => Arc::clone(encrypted) as Arc<dyn Store>,
            None => self.store,
        };
        let mut attached = None;
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<Inner>| {
            attached = Some(Arc::new(EngineSink {
                hub: hub.clone(),
                engine: weak.clone(),
            }));
            let cache_capacity = if self.bus.single_node() {
                self.config.chat_cache
            } else {
                0
            };
            Inner {
                writer: Writer::start(weak.clone(), &self.config),
                chats: ChatCache::new(cache_capacity),
                store,
                encrypted,
                mls: self.mls,
                media: self
                    .media
                    .map(|(store, config)| MediaParts::new(store, config)),
                exports: Default::default(),
                bus: self.bus,
                clock: self.clock,
                policy: self.policy,
                hooks: self.hooks,
                notifier: self.notifier,
                crisis: self.crisis,
                presence: Presence::default(),
                typing: Typing::default(),
                config: self.config,
                hub,
                retention_cursor: std::sync::Mutex::new(None),
            }
        });
        if let Some(sink) = attached {
            inner.bus.attach(sink).await?;
        }
        Ok(ChatEngine { inner })
    }
}

/// What the bus delivers into: the hub for events, the engine for presence
/// that expired on another node.
#[derive(Debug)]
struct EngineSink {
    hub: Arc<Hub>,
    engine: std::sync::Weak<Inner>,
}

impl crate::bus::DeliverySink for EngineSink {
    fn deliver(&self, delivery: &Delivery) {
        self.hub.deliver(delivery);
    }

    fn users_went_offline(&self, users: Vec<UserId>) {
        let Some(inner) = self.engine.upgrade() else {
            return;
        };
        let engine = ChatEngine { inner };
        tokio::spawn(async move {
            for user in users {
                engine.expired_offline(&user).await;
            }
        });
    }
}

/// The chat engine. Cheap to clone; all clones share one state.
#[derive(Debug, Clone)]
pub struct ChatEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    /// The same store, when it encrypts at rest (for erasure and sealing
    /// existing content).
    encrypted: Option<Arc<EncryptedStore>>,
    mls: Option<Arc<dyn MlsDelivery>>,
    media: Option<MediaParts>,
    /// Users whose data export runs now (see `ChatEngine::export`).
    exports: std::sync::Mutex<std::collections::HashSet<UserId>>,
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    clock: Arc<dyn Clock>,
    policy: Arc<dyn ContactPolicy>,
    hooks: Vec<Arc<dyn MessageHook>>,
    notifier: Option<Arc<dyn Notifier>>,
    crisis: Option<Arc<crate::care::CrisisConfig>>,
    config: EngineConfig,
    writer: Writer,
    chats: ChatCache,
    presence: Presence,
    typing: Typing,
    /// Where the next [`ChatEngine::sweep_retention`] goes on: after this
    /// chat (`None`: from the first).
    retention_cursor: std::sync::Mutex<Option<ChatId>>,
}

impl ChatEngine {
    /// Starts building an engine over `store`.
    pub fn builder(store: Arc<dyn Store>) -> EngineBuilder {
        EngineBuilder {
            store,
            bus: Arc::new(LocalBus::new()),
            clock: Arc::new(SystemClock),
            policy: Arc::new(AllowAll),
            hooks: Vec::new(),
            notifier: None,
            crisis: None,
            keyring: None,
            mls: None,
            media: None,
            config: EngineConfig::default(),
        }
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Counters of this node's live connections (events queued, slow
    /// consumers closed), for metrics. The store and the hub themselves are
    /// not handed out: every read and write goes through the engine's
    /// rules, whatever the transport.
    pub fn hub_stats(&self) -> &crate::hub::HubStats {
        self.inner.hub.stats()
    }

    /// How many live connections this node holds.
    pub fn connection_count(&self) -> usize {
        self.inner.hub.total_connections()
    }

    fn now(&self) -> Timestamp {
        self.inner.clock.now()
    }

    /// Finishes queued writes, closes live connections and stops the write
    /// lanes. Operations after this fail with [`Error::ShuttingDown`].
    pub async fn shutdown(&self) {
        self.inner.writer.shutdown().await;
        self.inner
            .hub
            .close_all(crate::transport::CLOSE_GOING_AWAY, "server shutting down");
    }

    /// Whether the engine can serve: the store answers a read, and every
    /// write lane is running. Transports expose it as their health check.
    pub async fn health(&self) -> Health {
        let store = match self.inner.store.get_chat(ChatId::new()).await {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        let lanes = self.inner.writer.healthy();
        Health {
            ok: store.is_none() && lanes,
            store_error: store,
            lanes_running: lanes,
        }
    }

    /// The actor for an authenticated user; refuses suspended users.
    pub async fn authorize(&self, user_id: UserId, admin: bool) -> Result<Actor> {
        if let Some(record) = self.inner.store.get_user(&user_id).await? {
            if record.is_suspended(self.now()) {
                return Err(Error::forbidden("this account is suspended"));
            }
        }
        Ok(Actor { user_id, admin })
    }

    async fn publish(&self, audience: Audience, action: Action) {
        if let Err(e) = self.inner.bus.publish(Delivery { audience, action }).await {
            tracing::warn!(error = %e, "bus publish failed; clients catch up with sync");
        }
    }
}

/// The answer of [`ChatEngine::health`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Everything works.
    pub ok: bool,
    /// Why the store's read failed, if it did.
    pub store_error: Option<String>,
    /// Every write lane is running.
    pub lanes_running: bool,
}

fn unexpected() -> Error {
    Error::backend("the store answered a change with the wrong kind of result")
}

#[cfg(test)]
mod tests;

//! [`ChatEngine`]: the single place where every rule lives.
//!
//! Every operation takes the acting user ([`Actor`]) and checks what that
//! user may do; transports only authenticate and translate. Changes of a
//! chat's log go through write lanes (see `writer`) that batch them into one
//! [`Store::apply`] (group commit) and publish their events in commit order,
//! so that every connection sees a chat's events in `updated_seq` order.

mod cache;
mod presence;
mod validate;
mod writer;

use bytes::Bytes;
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use self::presence::Session;
use self::{
    cache::{Cached, ChatCache},
    presence::{Presence, Typing},
    validate::*,
    writer::{EventKind, Fanout, Writer},
};
use crate::{
    bus::{Action, Audience, Bus, Delivery, LocalBus},
    clock::{Clock, SystemClock},
    error::{Error, Result},
    hooks::{AllowAll, ContactPolicy, HookContext, HookDecision, MessageHook, Notifier},
    hub::Hub,
    model::*,
    protocol::ServerEvent,
    store::{
        Change, ChatListQuery, GroupPatch, HistoryQuery, NewChat, NewMessage, ReportResolution,
        Store,
    },
    transport::CLOSE_SUSPENDED,
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

    /// Limits and timings.
    pub fn config(mut self, config: EngineConfig) -> Self {
        self.config = config;
        self
    }

    /// Starts the engine's write lanes and attaches the hub to the bus.
    /// Must be called within a Tokio runtime.
    pub async fn build(self) -> Result<ChatEngine> {
        let hub = Arc::new(Hub::new());
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
                store: self.store,
                bus: self.bus,
                clock: self.clock,
                policy: self.policy,
                hooks: self.hooks,
                notifier: self.notifier,
                presence: Presence::default(),
                typing: Typing::default(),
                config: self.config,
                hub,
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
    bus: Arc<dyn Bus>,
    hub: Arc<Hub>,
    clock: Arc<dyn Clock>,
    policy: Arc<dyn ContactPolicy>,
    hooks: Vec<Arc<dyn MessageHook>>,
    notifier: Option<Arc<dyn Notifier>>,
    config: EngineConfig,
    writer: Writer,
    chats: ChatCache,
    presence: Presence,
    typing: Typing,
}

/// A message to send (`send_message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Where.
    pub chat_id: ChatId,
    /// The sender's idempotency key, 1..=64 characters.
    pub client_msg_id: String,
    /// Kind; `text` when absent.
    #[serde(rename = "type", default)]
    pub kind: Option<MessageType>,
    /// Text, caption, or E2EE ciphertext.
    #[serde(default)]
    pub content: Option<String>,
    /// An upload of the sender to this chat, for image/voice/file.
    #[serde(default)]
    pub media_id: Option<MediaId>,
    /// The message this one answers.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
}

impl SendMessage {
    /// A text message.
    pub fn text(
        chat_id: ChatId,
        client_msg_id: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Self {
            chat_id,
            client_msg_id: client_msg_id.into(),
            kind: Some(MessageType::Text),
            content: Some(content.into()),
            media_id: None,
            reply_to: None,
        }
    }
}

/// A group to create (`create_group`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewGroup {
    /// Its name, 1..=100 characters.
    pub name: String,
    /// Its description.
    #[serde(default)]
    pub description: Option<String>,
    /// Its avatar (http or https URL).
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Members besides the creator (who becomes admin); may be empty.
    pub member_ids: Vec<UserId>,
    /// Encryption mode, fixed at creation.
    #[serde(default)]
    pub encryption: Encryption,
}

/// A created or found chat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Opened {
    /// The chat as the actor sees it.
    pub chat: ChatView,
    /// Whether it was created now (`false`: it existed).
    pub created: bool,
}

/// One page of the chat list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatPage {
    /// Most recent activity first.
    pub chats: Vec<ChatView>,
    /// Where the next page starts, if there may be one.
    pub next: Option<(Timestamp, ChatId)>,
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Whether older messages exist beyond this page.
    pub has_more: bool,
}

/// Paging of [`ChatEngine::history`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// Only messages older than this seq.
    #[serde(default)]
    pub before_seq: Option<u64>,
    /// Only messages newer than this seq.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// 1..=200; 50 when absent.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One chat in a `sync` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncChat {
    /// The chat now.
    pub chat: ChatView,
    /// Messages with `updated_seq` above the cursor, ascending.
    pub changes: Vec<Message>,
    /// Whether more changes follow (sync again from the last `updated_seq`).
    pub has_more: bool,
}

/// The answer to `sync`: one page of the user's chats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncResult {
    /// The chats of this page, with their changes.
    pub chats: Vec<SyncChat>,
    /// Chats the client had cursors for that the user is no longer in
    /// (on the first page).
    pub removed_chat_ids: Vec<ChatId>,
    /// Where the next page starts (`sync` again with `after: next`);
    /// `null` on the last page.
    pub next: Option<String>,
}

/// Parses the `next` of a sync page: `<last_activity millis>.<chat id>`.
fn parse_sync_cursor(text: &str) -> Result<(Timestamp, ChatId)> {
    let bad = || Error::invalid("after must be the next of an earlier sync page");
    let (at, id) = text.split_once('.').ok_or_else(bad)?;
    let at = at.parse::<i64>().map_err(|_| bad())?;
    let id = id.parse::<ChatId>().map_err(|_| bad())?;
    Ok((Timestamp::from_millis(at), id))
}

/// About how many bytes a chat and its changes take in a sync answer, to
/// bound a page without encoding it twice.
fn approx_size(chat: &Chat, changes: &[Message]) -> usize {
    let participants = chat.participants.len() * 160;
    let messages: usize = changes
        .iter()
        .map(|m| 300 + m.content.as_ref().map_or(0, String::len))
        .sum();
    400 + participants + messages
}

/// Receipt kinds of [`ChatEngine::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Reached a device.
    Delivered,
    /// Read (implies delivered).
    Read,
}

/// Changes of [`ChatEngine::set_privacy`]; absent fields stay as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyPatch {
    /// Send read receipts to others.
    #[serde(default)]
    pub read_receipts: Option<bool>,
    /// Send typing to others.
    #[serde(default)]
    pub typing: Option<bool>,
    /// Send presence to others.
    #[serde(default)]
    pub presence: Option<bool>,
}

const HISTORY_DEFAULT: usize = 50;
const HISTORY_MAX: usize = 200;
/// The reporter of reports filed by hooks.
pub const SYSTEM_REPORTER: &str = "system";

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
            config: EngineConfig::default(),
        }
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The store, for reads an embedder needs beyond the engine's API.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// This node's hub of live connections.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
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

    // --- reading chats ---------------------------------------------------

    /// A chat the actor takes part in; anything else is `NotFound`.
    async fn chat_of(&self, actor: &Actor, chat_id: ChatId) -> Result<Chat> {
        match self.inner.store.get_chat(chat_id).await? {
            Some(chat) if chat.participant(&actor.user_id).is_some() => Ok(chat),
            _ => Err(Error::not_found("chat not found")),
        }
    }

    /// The chat, if the actor is a participant, from the cache when it is
    /// there; with whether one side of a direct chat blocks the other.
    async fn cached_chat(&self, actor: &Actor, chat_id: ChatId) -> Result<Arc<Cached>> {
        let cache = &self.inner.chats;
        let epoch = match cache.get(chat_id) {
            Ok(cached) if cached.chat.participant(&actor.user_id).is_some() => return Ok(cached),
            // Not a member as far as the cache knows: the store decides.
            Ok(_) => cache.epoch(),
            Err(epoch) => epoch,
        };
        let chat = self.chat_of(actor, chat_id).await?;
        let blocked = match (chat.kind, &chat.participants[..]) {
            (ChatKind::Direct, [a, b]) => {
                self.inner
                    .store
                    .is_blocked_either(&a.user_id, &b.user_id)
                    .await?
            }
            _ => false,
        };
        let cached = Arc::new(Cached::new(chat, blocked));
        cache.fill(cached.clone(), epoch);
        Ok(cached)
    }

    /// A message the actor may see, with its chat.
    async fn message_of(&self, actor: &Actor, message_id: MessageId) -> Result<(Chat, Message)> {
        let not_found = || Error::not_found("message not found");
        let message = self
            .inner
            .store
            .get_message(message_id)
            .await?
            .ok_or_else(not_found)?;
        let chat = self
            .chat_of(actor, message.chat_id)
            .await
            .map_err(|_| not_found())?;
        let visible_from = chat
            .participant(&actor.user_id)
            .map_or(u64::MAX, |p| p.visible_from_seq);
        if message.seq < visible_from {
            return Err(not_found());
        }
        Ok((chat, message))
    }

    async fn view(&self, chat: Chat, user: &UserId) -> Result<ChatView> {
        let read = chat.participant(user).map_or(chat.last_seq, |p| p.read_seq);
        let unread_count = if read >= chat.last_seq {
            0
        } else {
            self.inner.store.unread_count(chat.id, user, read).await?
        };
        let muted_until = chat.participant(user).and_then(|p| p.settings.muted_until);
        Ok(ChatView {
            chat,
            unread_count,
            muted_until,
        })
    }

    /// A chat as the actor sees it.
    pub async fn get_chat(&self, actor: &Actor, chat_id: ChatId) -> Result<ChatView> {
        let chat = self.chat_of(actor, chat_id).await?;
        self.view(chat, &actor.user_id).await
    }

    /// The actor's chats, most recent activity first, without the ones
    /// they hid (until those have new activity); `next` continues the list.
    pub async fn list_chats(&self, actor: &Actor, query: ChatListQuery) -> Result<ChatPage> {
        let limit = query.limit.clamp(1, HISTORY_MAX);
        let me = &actor.user_id;
        let mut out = Vec::with_capacity(limit);
        let mut after = query.after;
        loop {
            let batch = self
                .inner
                .store
                .list_chats(me, ChatListQuery { after, limit })
                .await?;
            let exhausted = batch.len() < limit;
            for chat in batch {
                after = Some((chat.last_activity, chat.id));
                let hidden = chat
                    .participant(me)
                    .and_then(|p| p.settings.hidden_seq)
                    .is_some_and(|h| chat.last_seq <= h);
                if !hidden {
                    out.push(self.view(chat, me).await?);
                    if out.len() == limit {
                        return Ok(ChatPage {
                            chats: out,
                            next: after,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(ChatPage {
                    chats: out,
                    next: None,
                });
            }
        }
    }

    /// Mutes push notifications of a chat for the actor until `until`
    /// (`None` unmutes).
    pub async fn set_muted(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        until: Option<Timestamp>,
    ) -> Result<ChatView> {
        let mut chat = self.chat_of(actor, chat_id).await?;
        let me = &actor.user_id;
        let mut settings = chat.participant(me).map(|p| p.settings).unwrap_or_default();
        settings.muted_until = until;
        self.save_settings(chat_id, me, settings).await?;
        if let Some(p) = chat.participants.iter_mut().find(|p| &p.user_id == me) {
            p.settings = settings;
        }
        self.view(chat, me).await
    }

    /// Hides a chat from the actor's chat list until it has new activity.
    /// Membership and history stay.
    pub async fn hide_chat(&self, actor: &Actor, chat_id: ChatId) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        let me = &actor.user_id;
        let mut settings = chat.participant(me).map(|p| p.settings).unwrap_or_default();
        settings.hidden_seq = Some(chat.last_seq);
        self.save_settings(chat_id, me, settings).await
    }

    /// Stores a participant's own settings of a chat and forgets the cached
    /// chat, whose mute list sends use.
    async fn save_settings(
        &self,
        chat_id: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> Result<()> {
        self.inner
            .store
            .set_participant_settings(chat_id, user, settings)
            .await?;
        self.inner.chats.invalidate(chat_id);
        Ok(())
    }

    /// A message the actor may see.
    pub async fn get_message(&self, actor: &Actor, message_id: MessageId) -> Result<Message> {
        Ok(self.message_of(actor, message_id).await?.1)
    }

    /// A page of a chat's history, newest first.
    pub async fn history(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        req: HistoryRequest,
    ) -> Result<HistoryPage> {
        let chat = self.chat_of(actor, chat_id).await?;
        let limit = match req.limit {
            None => HISTORY_DEFAULT,
            Some(n @ 1..=200) => n as usize,
            Some(n) => return Err(Error::invalid(format!("limit must be 1..=200, got {n}"))),
        };
        let from_seq = chat
            .participant(&actor.user_id)
            .map_or(0, |p| p.visible_from_seq);
        let mut messages = self
            .inner
            .store
            .history(
                chat_id,
                HistoryQuery {
                    before_seq: req.before_seq,
                    after_seq: req.after_seq,
                    from_seq,
                    limit: limit + 1,
                },
            )
            .await?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok(HistoryPage { messages, has_more })
    }

    /// Every change the actor's devices missed: for each of the actor's
    /// chats, the messages with `updated_seq` above the client's cursor (all
    /// of them for chats the client has no cursor for), in pages. The
    /// first page of [`sync_from`](Self::sync_from).
    pub async fn sync(&self, actor: &Actor, cursors: &HashMap<ChatId, u64>) -> Result<SyncResult> {
        self.sync_from(actor, cursors, None).await
    }

    /// One page of `sync`: the chats after `after` (the `next` of the page
    /// before; `None` for the first), most recent activity first, as many
    /// as fit in [`EngineConfig::sync_chats_page`] chats and about
    /// [`EngineConfig::sync_page_bytes`] bytes (at least one chat), each
    /// with at most [`EngineConfig::sync_page`] changes. `next` is set
    /// while more chats follow. `removed_chat_ids` comes with the first
    /// page. A chat whose activity moves it ahead of the cursor between
    /// pages is not missed: the connection receives its new events live,
    /// and the next sync from the start brings it.
    pub async fn sync_from(
        &self,
        actor: &Actor,
        cursors: &HashMap<ChatId, u64>,
        after: Option<&str>,
    ) -> Result<SyncResult> {
        let config = &self.inner.config;
        let max = config.max_sync_cursors;
        if cursors.len() > max {
            return Err(Error::invalid(format!("at most {max} cursors per sync")));
        }
        let after = after.map(parse_sync_cursor).transpose()?;
        let removed_chat_ids = match after {
            None if !cursors.is_empty() => self.removed_chats(actor, cursors).await?,
            _ => Vec::new(),
        };
        let me = &actor.user_id;
        let (page_chats, page_bytes) = (config.sync_chats_page.max(1), config.sync_page_bytes);
        let batch = self
            .inner
            .store
            .list_chats(
                me,
                ChatListQuery {
                    after,
                    limit: page_chats + 1,
                },
            )
            .await?;
        let fetched = batch.len().min(page_chats);
        let more = batch.len() > page_chats;
        let mut out = Vec::with_capacity(fetched);
        let mut bytes = 0usize;
        let mut last = None;
        for chat in batch.into_iter().take(page_chats) {
            if !out.is_empty() && bytes >= page_bytes {
                break;
            }
            last = Some((chat.last_activity, chat.id));
            let cursor = cursors.get(&chat.id).copied().unwrap_or(0);
            let from_seq = chat.participant(me).map_or(0, |p| p.visible_from_seq);
            let (changes, has_more) = if cursor >= chat.last_seq {
                (Vec::new(), false)
            } else {
                let mut changes = self
                    .inner
                    .store
                    .changes(chat.id, cursor, from_seq, config.sync_page + 1)
                    .await?;
                let has_more = changes.len() > config.sync_page;
                changes.truncate(config.sync_page);
                (changes, has_more)
            };
            bytes += approx_size(&chat, &changes);
            out.push(SyncChat {
                chat: self.view(chat, me).await?,
                changes,
                has_more,
            });
        }
        let next = if more || out.len() < fetched {
            last.map(|(at, id)| format!("{}.{id}", at.as_millis()))
        } else {
            None
        };
        Ok(SyncResult {
            chats: out,
            removed_chat_ids,
            next,
        })
    }

    /// The chats of `cursors` the actor no longer takes part in.
    async fn removed_chats(
        &self,
        actor: &Actor,
        cursors: &HashMap<ChatId, u64>,
    ) -> Result<Vec<ChatId>> {
        let mut seen = HashSet::with_capacity(cursors.len());
        let mut after = None;
        loop {
            let batch = self
                .inner
                .store
                .list_chats(&actor.user_id, ChatListQuery { after, limit: 500 })
                .await?;
            let Some(last) = batch.last() else { break };
            after = Some((last.last_activity, last.id));
            let done = batch.len() < 500;
            seen.extend(batch.into_iter().map(|c| c.id));
            if done {
                break;
            }
        }
        let mut removed: Vec<ChatId> = cursors
            .keys()
            .filter(|id| !seen.contains(id))
            .copied()
            .collect();
        removed.sort();
        Ok(removed)
    }

    // --- creating chats --------------------------------------------------

    /// Opens the direct chat of the actor and `other`: the existing one, or
    /// a new one if the contact policy and blocks allow it.
    pub async fn create_direct(
        &self,
        actor: &Actor,
        other: &UserId,
        encryption: Encryption,
    ) -> Result<Opened> {
        let me = &actor.user_id;
        if me == other {
            return Err(Error::invalid("a direct chat needs another user"));
        }
        let store = &self.inner.store;
        if let Some(chat) = store.find_direct_chat(me, other).await? {
            return Ok(Opened {
                chat: self.view(chat, me).await?,
                created: false,
            });
        }
        if !self.inner.policy.may_open_direct(me, other).await? {
            return Err(Error::forbidden("you may not open a chat with this user"));
        }
        if store.is_blocked_either(me, other).await? {
            return Err(Error::forbidden("you may not open a chat with this user"));
        }
        let (chat, created) = store
            .create_chat(NewChat {
                id: ChatId::new(),
                kind: ChatKind::Direct,
                name: None,
                description: None,
                avatar_url: None,
                encryption,
                participants: vec![(me.clone(), Role::Member), (other.clone(), Role::Member)],
                created_at: self.now(),
            })
            .await?;
        if created {
            self.announce_chat(&chat).await;
        }
        Ok(Opened {
            chat: self.view(chat, me).await?,
            created,
        })
    }

    /// Creates a group; the creator becomes its admin, the others members.
    pub async fn create_group(&self, actor: &Actor, group: NewGroup) -> Result<ChatView> {
        let me = &actor.user_id;
        let name = group_name(&group.name)?;
        let description =
            optional_text("description", group.description.as_deref(), MAX_DESCRIPTION)?;
        let avatar_url = optional_url(group.avatar_url.as_deref())?;
        let max = self.inner.config.max_group_members;
        // Refused before any work on the list: a client controls its length.
        if group.member_ids.len() >= max.saturating_mul(2) {
            return Err(Error::invalid(format!("a group has at most {max} members")));
        }
        let mut seen = HashSet::with_capacity(group.member_ids.len() + 1);
        seen.insert(me.clone());
        let mut members: Vec<(UserId, Role)> = vec![(me.clone(), Role::Admin)];
        for m in group.member_ids {
            if seen.insert(m.clone()) {
                members.push((m, Role::Member));
            }
        }
        if members.len() > max {
            return Err(Error::invalid(format!("a group has at most {max} members")));
        }
        for (m, _) in &members {
            self.room_for_group(m).await?;
        }
        for (m, _) in &members[1..] {
            self.may_add(me, m).await?;
        }
        let (chat, _) = self
            .inner
            .store
            .create_chat(NewChat {
                id: ChatId::new(),
                kind: ChatKind::Group,
                name: Some(name),
                description,
                avatar_url,
                encryption: group.encryption,
                participants: members,
                created_at: self.now(),
            })
            .await?;
        self.announce_chat(&chat).await;
        self.view(chat, me).await
    }

    /// Refuses to put `user` into one more group once they are in
    /// `max_groups_per_user`. Checked before the change is queued, so two
    /// additions racing may pass it together: the cap bounds what one user
    /// can be made to receive, and a few over it do no harm.
    async fn room_for_group(&self, user: &UserId) -> Result<()> {
        let max = self.inner.config.max_groups_per_user;
        if self.inner.store.group_count(user).await? >= max as u64 {
            return Err(Error::conflict(format!(
                "{user} is in {max} groups already, the most one user may join"
            )));
        }
        Ok(())
    }

    async fn may_add(&self, actor: &UserId, member: &UserId) -> Result<()> {
        if !self.inner.policy.may_add_to_group(actor, member).await?
            || self.inner.store.is_blocked_either(actor, member).await?
        {
            return Err(Error::forbidden(format!(
                "you may not add {member} to a group"
            )));
        }
        Ok(())
    }

    async fn announce_chat(&self, chat: &Chat) {
        let frame = ServerEvent::ChatCreated(ChatView {
            chat: chat.clone(),
            unread_count: 0,
            muted_until: None,
        })
        .to_frame();
        self.publish(Audience::users(chat.member_ids()), Action::Frame(frame))
            .await;
    }

    async fn publish(&self, audience: Audience, action: Action) {
        if let Err(e) = self.inner.bus.publish(Delivery { audience, action }).await {
            tracing::warn!(error = %e, "bus publish failed; clients catch up with sync");
        }
    }

    // --- messages --------------------------------------------------------

    /// Sends a message. Returns once it is durably stored (and fanned out);
    /// a retry with the same `client_msg_id` returns the stored message and
    /// notifies nobody again.
    pub async fn send(&self, actor: &Actor, req: SendMessage) -> Result<Message> {
        self.send_framed(actor, req)
            .await
            .map(|(message, _frame)| message)
    }

    /// [`send`](Self::send), with the `message_received` frame the message
    /// was published as (`None` for a retry): the protocol's ack reuses it.
    pub(crate) async fn send_framed(
        &self,
        actor: &Actor,
        req: SendMessage,
    ) -> Result<(Message, Option<Bytes>)> {
        client_msg_id(&req.client_msg_id)?;
        let cached = self.cached_chat(actor, req.chat_id).await?;
        let (chat_id, client_id) = (req.chat_id, req.client_msg_id.clone());
        // With hooks, a retry is answered before they run, so that their
        // side effects (a report, an escalation) happen once per message.
        // Without hooks a send reads nothing: the store answers retries.
        if !self.inner.hooks.is_empty() {
            if let Some(stored) = self.stored_retry(actor, chat_id, &client_id).await? {
                return Ok((stored, None));
            }
        }
        let refused = match self.post(actor, &cached, req).await {
            Ok(posted) => return Ok(posted),
            Err(e) => e,
        };
        // A retry of a stored message gets that message even when something
        // would refuse it now (a block, a hook, an edit of its text): its
        // first ack was lost, not the message. Looked up only when refusing.
        match self.stored_retry(actor, chat_id, &client_id).await {
            Ok(Some(existing)) => Ok((existing, None)),
            Err(e @ Error::Conflict(_)) => Err(e),
            Ok(None) | Err(_) => Err(refused),
        }
    }

    /// The message the actor stored under `client_id`, if any; `conflict`
    /// if it is in another chat than `chat_id`.
    async fn stored_retry(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        client_id: &str,
    ) -> Result<Option<Message>> {
        match self
            .inner
            .store
            .find_by_client_id(&actor.user_id, client_id)
            .await?
        {
            Some(stored) if stored.chat_id != chat_id => Err(Error::conflict(
                "client_msg_id was already used in another chat",
            )),
            stored => Ok(stored),
        }
    }

    async fn post(
        &self,
        actor: &Actor,
        cached: &Cached,
        req: SendMessage,
    ) -> Result<(Message, Option<Bytes>)> {
        let me = &actor.user_id;
        let chat_id = req.chat_id;
        let chat = &cached.chat;
        let store = &self.inner.store;
        let kind = req.kind.unwrap_or(MessageType::Text);
        let content = match (kind, req.content.as_deref()) {
            (MessageType::System, _) => {
                return Err(Error::invalid("clients cannot send system messages"));
            }
            (MessageType::Text, None) => {
                return Err(Error::invalid("content is required for text messages"));
            }
            (_, None) => None,
            (_, Some(c)) => Some(self.content(chat.encryption, c)?),
        };
        let media = match (kind.has_media(), req.media_id) {
            (false, Some(_)) => {
                return Err(Error::invalid("media_id needs type image, voice or file"));
            }
            (true, None) => {
                return Err(Error::invalid(format!(
                    "a {} message needs media_id",
                    kind.as_str()
                )));
            }
            (false, None) => None,
            (true, Some(id)) => match store.get_media(id).await? {
                Some(record) if record.uploader_id == *me && record.chat_id == chat_id => {
                    Some(MediaRef::for_record(&record))
                }
                _ => return Err(Error::not_found("media not found")),
            },
        };
        if let Some(reply_to) = req.reply_to {
            let visible_from = chat.participant(me).map_or(0, |p| p.visible_from_seq);
            match store.get_message(reply_to).await? {
                Some(m) if m.chat_id == chat_id && m.seq >= visible_from => {}
                _ => return Err(Error::not_found("reply_to message not found in this chat")),
            }
        }
        if cached.blocked {
            return Err(Error::forbidden("you cannot write to this user"));
        }
        let flag = self.run_hooks(chat, me, kind, content.as_deref()).await?;
        let new = NewMessage {
            id: MessageId::new(),
            chat_id,
            sender_id: me.clone(),
            kind,
            content,
            media,
            reply_to: req.reply_to,
            client_msg_id: Some(req.client_msg_id),
            system: None,
            created_at: self.now(),
        };
        let done = self
            .inner
            .writer
            .submit_framed(Change::Post(new), Fanout::new(EventKind::Post), None)
            .await?;
        let crate::store::Applied::Posted { message, duplicate } = done.applied else {
            return Err(unexpected());
        };
        if !duplicate {
            if let Some(reason) = flag {
                self.file_hook_report(&message, reason).await;
            }
            self.stop_typing(cached, me).await;
        }
        Ok((message, done.frame))
    }

    fn content(&self, encryption: Encryption, content: &str) -> Result<String> {
        match encryption {
            Encryption::AtRest => text(content, self.inner.config.max_text_chars),
            Encryption::E2ee => ciphertext(content, self.inner.config.max_ciphertext_bytes),
        }
    }

    /// Runs the hooks; `Some(reason)` if one flagged the message.
    async fn run_hooks(
        &self,
        chat: &Chat,
        sender: &UserId,
        kind: MessageType,
        content: Option<&str>,
    ) -> Result<Option<String>> {
        let ctx = HookContext {
            chat_id: chat.id,
            chat_kind: chat.kind,
            encryption: chat.encryption,
            sender_id: sender,
            kind,
            content,
        };
        let mut flag = None;
        for hook in &self.inner.hooks {
            match hook.before_store(&ctx).await? {
                HookDecision::Allow => {}
                HookDecision::Reject { reason } => return Err(Error::Forbidden(reason)),
                HookDecision::Flag { reason } => {
                    flag.get_or_insert(reason);
                }
            }
        }
        Ok(flag)
    }

    async fn file_hook_report(&self, message: &Message, reason: String) {
        let Ok(reporter) = UserId::new(SYSTEM_REPORTER) else {
            return;
        };
        let report = Report::open(reporter, message, reason, self.now());
        if let Err(e) = self.inner.store.insert_report(report).await {
            tracing::error!(error = %e, message_id = %message.id, "failed to file a hook's report");
        }
    }

    /// Edits the text of the actor's own message.
    pub async fn edit(
        &self,
        actor: &Actor,
        message_id: MessageId,
        content: &str,
    ) -> Result<Message> {
        let (chat, message) = self.message_of(actor, message_id).await?;
        if message.sender_id != actor.user_id {
            return Err(Error::forbidden("only the sender may edit a message"));
        }
        if message.kind == MessageType::System {
            return Err(Error::invalid("system messages cannot be edited"));
        }
        if message.deleted {
            return Err(Error::conflict("the message was deleted"));
        }
        let content = self.content(chat.encryption, content)?;
        let change = Change::Edit {
            chat_id: chat.id,
            message_id,
            content,
            at: self.now(),
        };
        self.updated(change, Fanout::new(EventKind::Edit)).await
    }

    /// Deletes a message (leaves a tombstone): the sender, or a group's
    /// admins and moderators.
    pub async fn delete(&self, actor: &Actor, message_id: MessageId) -> Result<Message> {
        let (chat, message) = self.message_of(actor, message_id).await?;
        let role = chat.participant(&actor.user_id).map(|p| p.role);
        let moderates =
            chat.kind == ChatKind::Group && matches!(role, Some(Role::Admin | Role::Moderator));
        if message.sender_id != actor.user_id && !moderates {
            return Err(Error::forbidden(
                "only the sender or a group admin or moderator may delete it",
            ));
        }
        if message.kind == MessageType::System {
            return Err(Error::invalid("system messages cannot be deleted"));
        }
        if message.deleted {
            return Ok(message);
        }
        let change = Change::Delete {
            chat_id: chat.id,
            message_id,
            at: self.now(),
        };
        self.updated(change, Fanout::new(EventKind::Delete)).await
    }

    /// Adds the actor's reaction `emoji` to a message (nothing changes if
    /// it is there).
    pub async fn react(
        &self,
        actor: &Actor,
        message_id: MessageId,
        emoji: &str,
    ) -> Result<Message> {
        self.set_reaction(actor, message_id, emoji, true).await
    }

    /// Removes the actor's reaction `emoji` from a message (nothing changes
    /// if it is not there).
    pub async fn unreact(
        &self,
        actor: &Actor,
        message_id: MessageId,
        emoji: &str,
    ) -> Result<Message> {
        self.set_reaction(actor, message_id, emoji, false).await
    }

    async fn set_reaction(
        &self,
        actor: &Actor,
        message_id: MessageId,
        emoji: &str,
        add: bool,
    ) -> Result<Message> {
        emoji_ok(emoji)?;
        let (chat, message) = self.message_of(actor, message_id).await?;
        if message.kind == MessageType::System {
            return Err(Error::invalid("system messages take no reactions"));
        }
        if message.deleted {
            return Err(Error::conflict("the message was deleted"));
        }
        let change = Change::React {
            chat_id: chat.id,
            message_id,
            user_id: actor.user_id.clone(),
            emoji: emoji.to_owned(),
            add,
            max_distinct: self.inner.config.max_reactions_per_message,
            at: self.now(),
        };
        let kind = EventKind::React {
            user_id: actor.user_id.clone(),
            emoji: emoji.to_owned(),
            add,
        };
        self.updated(change, Fanout::new(kind)).await
    }

    async fn updated(&self, change: Change, fanout: Fanout) -> Result<Message> {
        match self.inner.writer.submit(change, fanout).await? {
            crate::store::Applied::Updated { message, .. } => Ok(message),
            _ => Err(unexpected()),
        }
    }

    /// Moves the actor's delivered or read watermark of a chat forward.
    pub async fn mark(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        receipt: Receipt,
        up_to_seq: u64,
    ) -> Result<()> {
        // A non-member gets `not_found` here without queueing anything; the
        // store checks membership again at commit.
        self.cached_chat(actor, chat_id).await?;
        let (delivered_up_to, read_up_to) = match receipt {
            Receipt::Delivered => (up_to_seq, 0),
            Receipt::Read => (up_to_seq, up_to_seq),
        };
        let privacy = self.privacy_of(&actor.user_id).await?;
        let change = Change::Mark {
            chat_id,
            user_id: actor.user_id.clone(),
            delivered_up_to,
            read_up_to,
        };
        let kind = EventKind::Mark {
            chat_id,
            user_id: actor.user_id.clone(),
        };
        let mut fanout = Fanout::new(kind);
        if !privacy.read_receipts {
            fanout.private_reads_of = Some(actor.user_id.clone());
        }
        self.inner.writer.submit(change, fanout).await?;
        Ok(())
    }

    async fn privacy_of(&self, user: &UserId) -> Result<Privacy> {
        Ok(self
            .inner
            .store
            .get_user(user)
            .await?
            .map(|r| r.privacy)
            .unwrap_or_default())
    }

    // --- groups ----------------------------------------------------------

    fn group_role(chat: &Chat, user: &UserId) -> Result<Role> {
        if chat.kind != ChatKind::Group {
            return Err(Error::invalid("this is not a group"));
        }
        chat.participant(user)
            .map(|p| p.role)
            .ok_or_else(|| Error::not_found("chat not found"))
    }

    /// Adds a participant: admins add with any role, moderators members.
    pub async fn add_participant(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
        role: Role,
    ) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        match (Self::group_role(&chat, &actor.user_id)?, role) {
            (Role::Admin, _) | (Role::Moderator, Role::Member) => {}
            (Role::Moderator, _) => {
                return Err(Error::forbidden("moderators may only add members"));
            }
            (Role::Member, _) => {
                return Err(Error::forbidden(
                    "only admins and moderators may add participants",
                ));
            }
        }
        if chat.participant(user).is_some() {
            return Err(Error::conflict(format!("{user} is already a participant")));
        }
        self.may_add(&actor.user_id, user).await?;
        self.room_for_group(user).await?;
        let change = Change::AddParticipant {
            chat_id,
            user_id: user.clone(),
            role,
            by: actor.user_id.clone(),
            max_participants: self.inner.config.max_group_members,
            at: self.now(),
        };
        // Admins add with any role, moderators members: checked again at
        // commit, where a change committed meanwhile may have removed or
        // demoted the actor.
        let needs = if role == Role::Member {
            Role::Moderator
        } else {
            Role::Admin
        };
        self.membership(change.authorized(&actor.user_id, needs))
            .await?;
        Ok(())
    }

    /// Removes a participant: admins anyone, moderators members, anyone
    /// themselves (leaving). When the last admin leaves, the longest-standing
    /// moderator, else member, becomes admin, so that no group is orphaned.
    pub async fn remove_participant(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
    ) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        let my_role = Self::group_role(&chat, &actor.user_id)?;
        let target = chat
            .participant(user)
            .ok_or_else(|| Error::not_found(format!("{user} is not a participant")))?;
        let allowed = user == &actor.user_id
            || my_role == Role::Admin
            || (my_role == Role::Moderator && target.role == Role::Member);
        if !allowed {
            return Err(Error::forbidden("you may not remove this participant"));
        }
        let change = Change::RemoveParticipant {
            chat_id,
            user_id: user.clone(),
            by: actor.user_id.clone(),
            at: self.now(),
        };
        // Leaving needs no role; removing someone else needs the actor's
        // role to hold when the removal commits.
        let change = if user == &actor.user_id {
            change
        } else if target.role == Role::Member {
            change.authorized(&actor.user_id, Role::Moderator)
        } else {
            change.authorized(&actor.user_id, Role::Admin)
        };
        // The heir is chosen and promoted by the store at commit, in the
        // same batch as the removal: two admins leaving at once cannot
        // leave the group without one, and nothing comes between.
        let ensure = Change::EnsureAdmin {
            chat_id,
            by: actor.user_id.clone(),
            at: self.now(),
        };
        self.inner
            .writer
            .submit_framed(change, Fanout::new(EventKind::Membership), Some(ensure))
            .await?;
        Ok(())
    }

    /// Applies a membership change or group update through the chat's lane.
    async fn membership(&self, change: Change) -> Result<crate::store::Applied> {
        self.inner
            .writer
            .submit(change, Fanout::new(EventKind::Membership))
            .await
    }

    /// Changes a participant's role (admins only). The last admin cannot
    /// step down while others remain.
    pub async fn set_role(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        user: &UserId,
        role: Role,
    ) -> Result<()> {
        let chat = self.chat_of(actor, chat_id).await?;
        if Self::group_role(&chat, &actor.user_id)? != Role::Admin {
            return Err(Error::forbidden("only admins may change roles"));
        }
        let target = chat
            .participant(user)
            .ok_or_else(|| Error::not_found(format!("{user} is not a participant")))?;
        // The store checks this again at commit, where two admins demoting
        // each other at once cannot both pass.
        if target.role == Role::Admin && crate::store::demotes_last_admin(&chat, user, role) {
            return Err(Error::conflict(
                "a group needs an admin; make someone else admin first",
            ));
        }
        let change = Change::SetRole {
            chat_id,
            user_id: user.clone(),
            role,
            by: actor.user_id.clone(),
            at: self.now(),
        };
        self.membership(change.authorized(&actor.user_id, Role::Admin))
            .await?;
        Ok(())
    }

    /// Changes a group's name, description or avatar (admins only).
    pub async fn update_group(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        patch: GroupPatch,
    ) -> Result<ChatView> {
        let chat = self.chat_of(actor, chat_id).await?;
        if Self::group_role(&chat, &actor.user_id)? != Role::Admin {
            return Err(Error::forbidden("only admins may update the group"));
        }
        let patch = GroupPatch {
            name: patch.name.as_deref().map(group_name).transpose()?,
            description: match patch.description.as_deref() {
                None => None,
                Some(d) => Some(
                    optional_text("description", Some(d), MAX_DESCRIPTION)?.unwrap_or_default(),
                ),
            },
            avatar_url: match patch.avatar_url.as_deref() {
                None => None,
                Some(u) => Some(optional_url(Some(u))?.unwrap_or_default()),
            },
        };
        if patch.is_empty() {
            return Err(Error::invalid(
                "nothing to update: give name, description or avatar_url",
            ));
        }
        let change = Change::UpdateGroup {
            chat_id,
            patch,
            by: actor.user_id.clone(),
            at: self.now(),
        };
        match self
            .membership(change.authorized(&actor.user_id, Role::Admin))
            .await?
        {
            crate::store::Applied::Membership { chat, .. } => self.view(chat, &actor.user_id).await,
            _ => Err(unexpected()),
        }
    }

    // --- safety ----------------------------------------------------------

    /// Blocks `other` for the actor: no direct chat with them, no signal of
    /// theirs in it, no presence either way.
    pub async fn block(&self, actor: &Actor, other: &UserId) -> Result<()> {
        self.set_block(actor, other, true).await
    }

    /// Lifts the actor's block of `other`.
    pub async fn unblock(&self, actor: &Actor, other: &UserId) -> Result<()> {
        self.set_block(actor, other, false).await
    }

    async fn set_block(&self, actor: &Actor, other: &UserId, on: bool) -> Result<()> {
        if other == &actor.user_id {
            return Err(Error::invalid("you cannot block yourself"));
        }
        self.inner
            .store
            .set_block(&actor.user_id, other, on)
            .await?;
        // Which direct chat of the two is cached is not worth a lookup:
        // blocks are rare.
        self.inner.chats.clear();
        Ok(())
    }

    /// The users the actor has blocked.
    pub async fn blocked_users(&self, actor: &Actor) -> Result<Vec<UserId>> {
        self.inner.store.blocked_by_user(&actor.user_id).await
    }

    /// Reports a message the actor can see; reporting the same message again
    /// returns the open report.
    pub async fn report(
        &self,
        actor: &Actor,
        message_id: MessageId,
        reason: &str,
    ) -> Result<ReportId> {
        let reason = optional_text("reason", Some(reason), MAX_REASON)?
            .ok_or_else(|| Error::invalid("reason is required"))?;
        let (_, message) = self.message_of(actor, message_id).await?;
        let report = Report::open(actor.user_id.clone(), &message, reason, self.now());
        Ok(self.inner.store.insert_report(report).await?.id)
    }

    /// Changes what the actor lets others see; returns the settings now.
    pub async fn set_privacy(&self, actor: &Actor, patch: PrivacyPatch) -> Result<Privacy> {
        let mut privacy = self.privacy_of(&actor.user_id).await?;
        if let Some(v) = patch.read_receipts {
            privacy.read_receipts = v;
        }
        if let Some(v) = patch.typing {
            privacy.typing = v;
        }
        if let Some(v) = patch.presence {
            privacy.presence = v;
        }
        self.inner
            .store
            .set_privacy(&actor.user_id, privacy)
            .await?;
        Ok(privacy)
    }

    // --- moderation (service admins) -------------------------------------

    fn require_admin(actor: &Actor) -> Result<()> {
        if actor.admin {
            Ok(())
        } else {
            Err(Error::forbidden("admins only"))
        }
    }

    /// Suspends `user` until `until` (forever if `None`) and closes their
    /// live connections on every node.
    pub async fn suspend(
        &self,
        actor: &Actor,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> Result<()> {
        Self::require_admin(actor)?;
        let until = until.unwrap_or(Timestamp::FOREVER);
        self.inner.store.set_suspension(user, Some(until)).await?;
        let action = Action::Disconnect {
            code: CLOSE_SUSPENDED,
            reason: "account suspended".to_owned(),
        };
        self.publish(Audience::users(vec![user.clone()]), action)
            .await;
        Ok(())
    }

    /// Lifts a suspension.
    pub async fn unsuspend(&self, actor: &Actor, user: &UserId) -> Result<()> {
        Self::require_admin(actor)?;
        self.inner.store.set_suspension(user, None).await
    }

    /// Reports in the moderation queue.
    pub async fn list_reports(
        &self,
        actor: &Actor,
        status: Option<ReportStatus>,
        limit: usize,
    ) -> Result<Vec<Report>> {
        Self::require_admin(actor)?;
        self.inner
            .store
            .list_reports(status, limit.clamp(1, 500))
            .await
    }

    /// Closes a report: dismisses it, or deletes the reported message, or
    /// suspends its sender (forever, or until `until`), and records who
    /// decided and why.
    pub async fn resolve_report(
        &self,
        actor: &Actor,
        id: ReportId,
        action: ModerationAction,
        note: Option<String>,
    ) -> Result<Report> {
        Self::require_admin(actor)?;
        let note = optional_text("note", note.as_deref(), MAX_REASON)?;
        let report = self
            .inner
            .store
            .get_report(id)
            .await?
            .ok_or_else(|| Error::not_found("report not found"))?;
        if report.status != ReportStatus::Open {
            return Err(Error::conflict("the report is closed already"));
        }
        let status = match action {
            ModerationAction::Dismiss => ReportStatus::Dismissed,
            ModerationAction::DeleteMessage => {
                self.moderator_delete(actor, report.message_id).await?;
                ReportStatus::Resolved
            }
            ModerationAction::SuspendUser { until } => {
                self.suspend(actor, &report.reported_user_id, until).await?;
                ReportStatus::Resolved
            }
        };
        tracing::info!(admin = %actor.user_id, report = %id, ?action, "report resolved");
        self.inner
            .store
            .resolve_report(ReportResolution {
                id,
                status,
                by: actor.user_id.clone(),
                note,
                at: self.now(),
            })
            .await
    }

    /// Deletes any message (service admins), leaving a tombstone.
    pub async fn moderator_delete(&self, actor: &Actor, message_id: MessageId) -> Result<Message> {
        Self::require_admin(actor)?;
        let message = self
            .inner
            .store
            .get_message(message_id)
            .await?
            .ok_or_else(|| Error::not_found("message not found"))?;
        let chat = self
            .inner
            .store
            .get_chat(message.chat_id)
            .await?
            .ok_or_else(|| Error::not_found("message not found"))?;
        if message.deleted {
            return Ok(message);
        }
        let change = Change::Delete {
            chat_id: chat.id,
            message_id,
            at: self.now(),
        };
        self.updated(change, Fanout::new(EventKind::Delete)).await
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

/// What an admin does about a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum ModerationAction {
    /// Nothing to do.
    Dismiss,
    /// Delete the reported message.
    DeleteMessage,
    /// Suspend the reported message's sender.
    SuspendUser {
        /// Until when; forever if absent.
        #[serde(default)]
        until: Option<Timestamp>,
    },
}

fn unexpected() -> Error {
    Error::backend("the store answered a change with the wrong kind of result")
}

#[cfg(test)]
mod tests;

//! Live connections ([`Session`]), presence and typing.
//!
//! A user is online while at least one of their connections is live, unless
//! they said `user_offline`. Going offline waits `presence_grace` so that a
//! reconnect does not flap. Presence goes only to users who share a chat
//! with the user, never across a block, and not at all if the user turned
//! presence off. Typing is never stored and expires after `typing_ttl`.

// foldhash for the long-lived maps: typing and presence are looked up per
// event, keyed by authenticated user ids and server-made chat ids.
use foldhash::HashMap;
use std::{
    collections::{HashSet, hash_map::Entry},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use tokio::time::Instant;

use super::{Actor, ChatEngine, cache::Cached};
use crate::{
    bus::{Action, Audience},
    error::Result,
    hub::Conn,
    model::{ChatId, ChatView, ConnectionId, DeviceId, Message, Timestamp, UserId},
    protocol::{PresenceEntry, ServerEvent},
    store::HistoryQuery,
    transport::Transport,
};

/// Most contacts listed in one `presence_update`.
const MAX_PRESENCE_SNAPSHOT: usize = 1000;

#[derive(Debug, Default)]
pub(super) struct Presence {
    users: tokio::sync::Mutex<HashMap<UserId, UserPresence>>,
}

#[derive(Debug, Default)]
struct UserPresence {
    /// Live connections on this node.
    local: usize,
    /// Bumped by every connect, so a pending offline knows it is stale.
    generation: u64,
    /// Whether this node told the bus it holds the user.
    on_bus: bool,
    /// The user said `user_offline`.
    away: bool,
}

#[derive(Debug, Default)]
pub(super) struct Typing {
    active: std::sync::Mutex<HashMap<(ChatId, UserId), Instant>>,
}

impl Typing {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(ChatId, UserId), Instant>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One live, authenticated connection. Closing it (or dropping it) updates
/// presence; its commands go through [`dispatch_text`](crate::protocol::dispatch_text)
/// or the methods here and on [`ChatEngine`].
#[derive(Debug)]
pub struct Session {
    engine: ChatEngine,
    conn: Arc<Conn>,
    actor: Actor,
    closed: AtomicBool,
}

impl ChatEngine {
    /// Registers a live connection of `actor`'s `device` whose outgoing
    /// frames go to `transport`. Sends it a `presence_update` and tells the
    /// user's contacts that the user came online (if they were offline).
    pub async fn connect(
        &self,
        actor: Actor,
        device: DeviceId,
        transport: Arc<dyn Transport>,
    ) -> Result<Session> {
        let max = self.inner.config.max_connections_per_user;
        let (conn, _) = self
            .inner
            .hub
            .register(actor.user_id.clone(), device, transport, max)?;
        let session = Session {
            engine: self.clone(),
            conn,
            actor,
            closed: AtomicBool::new(false),
        };
        let user = &session.actor.user_id;
        let came_online = {
            let mut users = self.inner.presence.users.lock().await;
            let state = users.entry(user.clone()).or_default();
            state.local += 1;
            state.generation += 1;
            let mut came_online = false;
            if !state.on_bus {
                state.on_bus = true;
                came_online = self
                    .inner
                    .bus
                    .user_connected(user)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "bus presence failed");
                        true
                    });
            }
            came_online && !state.away
        };
        if came_online {
            self.announce(user, true, None).await;
        }
        let users = self.presence_snapshot(user).await?;
        session
            .conn
            .send(ServerEvent::PresenceUpdate { users }.to_frame());
        Ok(session)
    }

    async fn disconnect(&self, conn: &Conn) {
        self.inner.hub.unregister(conn);
        let user = conn.user_id.clone();
        let generation = {
            let mut users = self.inner.presence.users.lock().await;
            let Some(state) = users.get_mut(&user) else {
                return;
            };
            state.local = state.local.saturating_sub(1);
            if state.local > 0 {
                return;
            }
            state.generation
        };
        let engine = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(engine.inner.config.presence_grace).await;
            engine.went_offline(&user, generation).await;
        });
    }

    async fn went_offline(&self, user: &UserId, generation: u64) {
        let mut users = self.inner.presence.users.lock().await;
        let away = match users.get(user) {
            Some(s) if s.local == 0 && s.generation == generation => s.away,
            _ => return,
        };
        users.remove(user);
        let offline = self
            .inner
            .bus
            .user_disconnected(user)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "bus presence failed");
                true
            });
        drop(users);
        if !offline {
            return;
        }
        let now = self.now();
        if let Err(e) = self.inner.store.set_last_seen(user, now).await {
            tracing::warn!(error = %e, "failed to store last_seen");
        }
        if !away {
            self.announce(user, false, Some(now)).await;
        }
    }

    /// A user's node died: they are offline everywhere, so store last_seen
    /// and tell their contacts, as if their last connection had closed.
    pub(super) async fn expired_offline(&self, user: &UserId) {
        let now = self.now();
        if let Err(e) = self.inner.store.set_last_seen(user, now).await {
            tracing::warn!(error = %e, "failed to store last_seen");
        }
        self.announce(user, false, Some(now)).await;
    }

    /// `user_online` / `user_offline`: an explicit status; connections still
    /// receive events either way.
    async fn set_status(&self, user: &UserId, online: bool) -> Result<()> {
        let changed = {
            let mut users = self.inner.presence.users.lock().await;
            let Some(state) = users.get_mut(user) else {
                return Ok(());
            };
            let changed = state.away == online;
            state.away = !online;
            changed
        };
        if !changed {
            return Ok(());
        }
        if online {
            self.announce(user, true, None).await;
        } else {
            let now = self.now();
            self.inner.store.set_last_seen(user, now).await?;
            self.announce(user, false, Some(now)).await;
        }
        Ok(())
    }

    /// The users who may see `user`'s presence: everyone sharing a chat,
    /// minus blocks either way.
    async fn contacts(&self, user: &UserId) -> Result<Vec<UserId>> {
        let store = &self.inner.store;
        let mut hidden: HashSet<UserId> = store.blocked_by_user(user).await?.into_iter().collect();
        hidden.extend(store.blockers_of(user).await?);
        let mut contacts = store.co_members(user).await?;
        contacts.retain(|u| !hidden.contains(u));
        Ok(contacts)
    }

    async fn announce(&self, user: &UserId, online: bool, last_seen: Option<Timestamp>) {
        let result: Result<()> = async {
            if !self.privacy_of(user).await?.presence {
                return Ok(());
            }
            let contacts = self.contacts(user).await?;
            if contacts.is_empty() {
                return Ok(());
            }
            let event = if online {
                ServerEvent::UserOnline {
                    user_id: user.clone(),
                }
            } else {
                ServerEvent::UserOffline {
                    user_id: user.clone(),
                    last_seen,
                }
            };
            self.publish(Audience::users(contacts), Action::Frame(event.to_frame()))
                .await;
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, %user, "presence announcement failed");
        }
    }

    async fn presence_snapshot(&self, user: &UserId) -> Result<Vec<PresenceEntry>> {
        let mut contacts = self.contacts(user).await?;
        contacts.truncate(MAX_PRESENCE_SNAPSHOT);
        let online = self.inner.bus.online(&contacts).await?;
        let away: HashSet<UserId> = {
            let users = self.inner.presence.users.lock().await;
            contacts
                .iter()
                .filter(|c| users.get(*c).is_some_and(|s| s.away))
                .cloned()
                .collect()
        };
        let mut out = Vec::with_capacity(contacts.len());
        for (user_id, online) in contacts.into_iter().zip(online) {
            let record = self.inner.store.get_user(&user_id).await?;
            let visible = record.as_ref().is_none_or(|r| r.privacy.presence);
            out.push(PresenceEntry {
                online: visible && online && !away.contains(&user_id),
                last_seen: record.and_then(|r| r.last_seen).filter(|_| visible),
                user_id,
            });
        }
        Ok(out)
    }

    // --- typing ------------------------------------------------------------

    async fn typing(&self, actor: &Actor, chat_id: ChatId, start: bool) -> Result<()> {
        let cached = self.cached_chat(actor, chat_id).await?;
        let user = &actor.user_id;
        if !start {
            self.stop_typing(&cached, user).await;
            return Ok(());
        }
        if !self.privacy_of(user).await?.typing {
            return Ok(());
        }
        let key = (chat_id, user.clone());
        let deadline = Instant::now() + self.inner.config.typing_ttl;
        let started = match self.inner.typing.lock().entry(key.clone()) {
            Entry::Occupied(mut e) => {
                e.insert(deadline);
                false
            }
            Entry::Vacant(e) => {
                e.insert(deadline);
                true
            }
        };
        if started {
            let event = ServerEvent::UserTyping {
                chat_id,
                user_id: user.clone(),
            };
            self.publish(
                typing_audience(&cached, user),
                Action::Frame(event.to_frame()),
            )
            .await;
            let engine = self.clone();
            let cached = cached.clone();
            tokio::spawn(async move { engine.expire_typing(cached, key, deadline).await });
        }
        Ok(())
    }

    /// Waits until the typing entry's deadline passes without renewal.
    async fn expire_typing(
        &self,
        cached: Arc<Cached>,
        key: (ChatId, UserId),
        mut deadline: Instant,
    ) {
        loop {
            tokio::time::sleep_until(deadline).await;
            let mut active = self.inner.typing.lock();
            match active.get(&key) {
                Some(d) if *d > Instant::now() => deadline = *d,
                Some(_) => {
                    active.remove(&key);
                    break;
                }
                None => return,
            }
        }
        self.publish_stopped(&cached, &key.1).await;
    }

    /// Ends `user`'s typing in the chat, if they were typing (also when
    /// they send a message there).
    pub(super) async fn stop_typing(&self, cached: &Cached, user: &UserId) {
        let was_typing = self
            .inner
            .typing
            .lock()
            .remove(&(cached.chat.id, user.clone()))
            .is_some();
        if was_typing {
            self.publish_stopped(cached, user).await;
        }
    }

    async fn publish_stopped(&self, cached: &Cached, user: &UserId) {
        let event = ServerEvent::UserStoppedTyping {
            chat_id: cached.chat.id,
            user_id: user.clone(),
        };
        self.publish(
            typing_audience(cached, user),
            Action::Frame(event.to_frame()),
        )
        .await;
    }
}

/// The cached member list, shared rather than copied for every event.
fn typing_audience(cached: &Cached, typist: &UserId) -> Audience {
    Audience {
        users: cached.members.clone(),
        except_user: Some(typist.clone()),
        chat_open: Some(cached.chat.id),
    }
}

impl Session {
    /// Who is connected.
    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    /// The connected user.
    pub fn user_id(&self) -> &UserId {
        &self.actor.user_id
    }

    /// The connected device.
    pub fn device_id(&self) -> &DeviceId {
        &self.conn.device_id
    }

    /// This connection's id.
    pub fn connection_id(&self) -> ConnectionId {
        self.conn.id
    }

    /// The engine this session belongs to.
    pub fn engine(&self) -> &ChatEngine {
        &self.engine
    }

    /// Queues a frame on this connection only.
    pub fn send(&self, frame: Bytes) {
        self.conn.send(frame);
    }

    /// `join_chat`: opens the chat on this connection (typing events) and
    /// returns it with its last messages, oldest first.
    pub async fn join_chat(&self, chat_id: ChatId) -> Result<(ChatView, Vec<Message>)> {
        let engine = &self.engine;
        let chat = engine.chat_of(&self.actor, chat_id).await?;
        engine
            .inner
            .hub
            .open_chat(&self.conn, chat_id, engine.inner.config.max_open_chats)?;
        let from_seq = chat
            .participant(self.user_id())
            .map_or(0, |p| p.visible_from_seq);
        let query = HistoryQuery {
            before_seq: None,
            after_seq: None,
            from_seq,
            limit: engine.inner.config.join_history,
        };
        let mut messages = engine.inner.store.history(chat_id, query).await?;
        messages.reverse();
        Ok((engine.view(chat, self.user_id()).await?, messages))
    }

    /// `leave_chat`: closes the chat on this connection; membership stays.
    pub fn leave_chat(&self, chat_id: ChatId) {
        self.engine.inner.hub.close_chat(&self.conn, chat_id);
    }

    /// `typing_start` (`true`) / `typing_stop`.
    pub async fn typing(&self, chat_id: ChatId, start: bool) -> Result<()> {
        self.engine.typing(&self.actor, chat_id, start).await
    }

    /// `user_online` (`true`) / `user_offline`.
    pub async fn set_status(&self, online: bool) -> Result<()> {
        self.engine.set_status(&self.actor.user_id, online).await
    }

    /// Unregisters the connection; the user goes offline after the grace
    /// period if it was their last.
    pub async fn close(self) {
        self.closed.store(true, Ordering::SeqCst);
        self.engine.disconnect(&self.conn).await;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // A session dropped without `close` (a transport task that panicked
        // or was cancelled) must still leave presence right.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let engine = self.engine.clone();
            let conn = self.conn.clone();
            handle.spawn(async move { engine.disconnect(&conn).await });
        } else {
            self.engine.inner.hub.unregister(&self.conn);
        }
    }
}

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
        Arc, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::time::Instant;

use super::{Actor, ChatEngine, cache::Cached};
use crate::{
    bus::{Action, Audience},
    error::Result,
    event::{Frame, PresenceEntry, ServerEvent},
    hub::Conn,
    model::{ChatId, ChatView, ConnectionId, DeviceId, Message, Timestamp, UserId},
    store::HistoryQuery,
    transport::Transport,
};

/// Most contacts listed in one `presence_update`.
const MAX_PRESENCE_SNAPSHOT: usize = 1000;

// How presence stays right without a node-wide lock held across I/O.
//
// Two locks, never one inside the other's await:
//
// - `Presence::users`, a std mutex over the in-memory bookkeeping (live
//   connection count, generation, `away`). Held for a few map operations,
//   never across an `.await`, so a slow bus or store cannot hold it.
// - One `tokio::sync::Mutex<BusState>` per user (`UserPresence::bus`), held
//   across that user's bus call (`user_connected` / `user_disconnected`) and
//   the announcement that follows it. It serializes the presence
//   transitions of one user on this node and nothing else: a stalled bus
//   call for alice delays alice's next connect (which must wait to be
//   ordered after it), never bob's.
//
// The std mutex may be taken while the user's async mutex is held; the
// async mutex is only ever awaited with no std guard alive.
//
// Invariants the code relies on:
//
// 1. The bus hears a user's calls from this node in the order the node made
//    its decisions: every `user_connected` / `user_disconnected` is made
//    holding the user's async mutex, and `on_bus` (inside it) says what the
//    bus was last told. A connect that finds `on_bus` set does not call the
//    bus (each node tells the bus once), but it still waits for the mutex,
//    so that when `connect` returns the bus has been told, as before.
// 2. Generations come from one node-wide counter, so a value is never
//    reused, even after an entry is removed and created again: a pending
//    offline that sees its generation still current knows no connect came
//    since it was scheduled, and that the entry is the one it scheduled on.
// 3. An entry is removed only by `went_offline`, as the last thing it does
//    holding the entry's async mutex (after its bus call and announcement),
//    when no connection is live and no connect came since. A connect
//    bumps `local` before it takes the mutex, so the entry whose mutex it
//    waits for cannot be removed under it; a connect that comes after the
//    removal creates a fresh entry with a fresh mutex, and nobody holds the
//    old one for a bus call any more (stale offlines re-check their
//    generation first and leave).
// 4. Announcements of one user leave this node in the order of the bus
//    calls: each is published before the mutex is released.
//
// Interleavings:
//
// - Two connects of a user race: both bump `local` and the generation under
//   the std mutex; the first to take the async mutex finds `on_bus` unset,
//   sets it, calls `user_connected` and announces; the second finds it set
//   and only waits. One bus call, at most one `user_online`.
// - A connect while a pending offline waits for the async mutex (or its
//   grace sleep): the connect bumps the generation, so the offline re-checks
//   under the mutex, sees a newer generation and does nothing. No bus call,
//   no announcement: a reconnect within the grace period does not flap.
// - A connect while `user_disconnected` is in flight (or the `user_offline`
//   announcement after it): the offline committed (cleared `on_bus`) before
//   the call, so the connect waits for the mutex; the offline finishes its
//   call and its announcement, keeps the entry (the generation moved) and
//   releases; the connect then finds `on_bus` unset, calls `user_connected`
//   and announces `user_online`. Contacts see offline then online, in that
//   order, and the bus ends with the user registered. (Before, both
//   announcements ran after the node-wide lock was released and could
//   cross, leaving contacts seeing the user offline.)
// - A connect whose future is dropped (its session's drop schedules an
//   offline as usual): dropped before the mutex, it never set `on_bus`, so
//   the offline makes no bus call and announces nothing; dropped during
//   `user_connected`, `on_bus` is already set, so the offline still tells
//   the bus the user left.
#[derive(Debug, Default)]
pub(super) struct Presence {
    users: std::sync::Mutex<Users>,
}

#[derive(Debug, Default)]
struct Users {
    map: HashMap<UserId, UserPresence>,
    /// The last generation handed out (node-wide, see invariant 2).
    generation: u64,
}

#[derive(Debug, Default)]
struct UserPresence {
    /// Live connections on this node.
    local: usize,
    /// Set by every connect, so a pending offline knows it is stale.
    generation: u64,
    /// The user said `user_offline`.
    away: bool,
    /// Serializes this user's bus calls and announcements on this node.
    bus: Arc<tokio::sync::Mutex<BusState>>,
}

/// What this node told the bus about one user; behind the user's async
/// mutex.
#[derive(Debug, Default)]
struct BusState {
    /// Whether this node told (or is telling) the bus it holds the user.
    on_bus: bool,
}

impl Presence {
    fn lock(&self) -> MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bus mutex of `user` if `generation` is still theirs and none of
    /// their connections is live.
    fn pending_offline(
        &self,
        user: &UserId,
        generation: u64,
    ) -> Option<Arc<tokio::sync::Mutex<BusState>>> {
        let users = self.lock();
        users
            .map
            .get(user)
            .filter(|s| s.local == 0 && s.generation == generation)
            .map(|s| s.bus.clone())
    }
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
        let presence = &self.inner.presence;
        // Count the connection first: from here on a pending offline of an
        // earlier generation is stale (invariant 2), and the entry stays
        // until this connection closes (invariant 3).
        let bus_lock = {
            let mut users = presence.lock();
            users.generation += 1;
            let generation = users.generation;
            let state = users.map.entry(user.clone()).or_default();
            state.local += 1;
            state.generation = generation;
            state.bus.clone()
        };
        {
            // Waits behind an in-flight bus call of this user only.
            let mut bus_state = bus_lock.lock().await;
            if !bus_state.on_bus {
                // Set before the call: if this future is dropped during it,
                // the offline that follows still tells the bus.
                bus_state.on_bus = true;
                let came_online = self
                    .inner
                    .bus
                    .user_connected(user)
                    .await
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "bus presence failed");
                        true
                    });
                let away = presence.lock().map.get(user).is_some_and(|s| s.away);
                if came_online && !away {
                    // Still holding the user's mutex (invariant 4).
                    self.announce(user, true, None).await;
                }
            }
        }
        // A session of the stats (PROTOCOL.md 5.5). Analytics never cost a
        // connection: a store that cannot count it is logged, not fatal.
        if let Err(e) = self.inner.store.record_session(user, self.now()).await {
            tracing::warn!(error = %e, "could not count the session");
        }
        let users = self.presence_snapshot(user).await?;
        session.conn.send(ServerEvent::PresenceUpdate { users });
        // A crisis responder gets the alerts no admin has closed yet.
        if let Some(alerts) = self.pending_alerts(user).await {
            for alert in alerts {
                session.conn.send(ServerEvent::CrisisAlert(alert));
            }
        }
        Ok(session)
    }

    async fn disconnect(&self, conn: &Conn) {
        self.inner.hub.unregister(conn);
        let user = conn.user_id.clone();
        let generation = {
            let mut users = self.inner.presence.lock();
            let Some(state) = users.map.get_mut(&user) else {
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
        let presence = &self.inner.presence;
        let Some(bus_lock) = presence.pending_offline(user, generation) else {
            return;
        };
        let mut bus_state = bus_lock.lock().await;
        // Re-check now that no other transition of the user is in flight: a
        // connect that came while we waited moved the generation.
        let away = {
            let mut users = presence.lock();
            match users.map.get_mut(user) {
                Some(s) if s.local == 0 && s.generation == generation => {
                    // Committed to offline. A connect from here on is a new
                    // session: it starts present, as it would have after
                    // the entry's removal.
                    std::mem::take(&mut s.away)
                }
                _ => return,
            }
        };
        let offline = if std::mem::take(&mut bus_state.on_bus) {
            self.inner
                .bus
                .user_disconnected(user)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "bus presence failed");
                    true
                })
        } else {
            // This node never told the bus about this session.
            false
        };
        if offline {
            // Still holding the user's mutex: a reconnect's `user_online`
            // goes out after this `user_offline` (invariant 4).
            let now = self.now();
            if let Err(e) = self.inner.store.set_last_seen(user, now).await {
                tracing::warn!(error = %e, "failed to store last_seen");
            }
            if !away {
                self.announce(user, false, Some(now)).await;
            }
        }
        // Forget the user, last and still under the mutex (invariant 3),
        // unless a connect came meanwhile: it is waiting for `bus_lock` and
        // will tell the bus again.
        {
            let mut users = presence.lock();
            if users
                .map
                .get(user)
                .is_some_and(|s| s.local == 0 && s.generation == generation)
            {
                users.map.remove(user);
            }
        }
        drop(bus_state);
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
        let presence = &self.inner.presence;
        let Some(bus_lock) = presence.lock().map.get(user).map(|s| s.bus.clone()) else {
            return Ok(());
        };
        // The user's mutex orders this announcement with those of connects
        // and offlines of the same user (invariant 4).
        let _bus_state = bus_lock.lock().await;
        let changed = {
            let mut users = presence.lock();
            // The entry is another one only if the asking connection closed
            // meanwhile (a live one keeps it, invariant 3): nothing to do.
            let Some(state) = users
                .map
                .get_mut(user)
                .filter(|s| Arc::ptr_eq(&s.bus, &bus_lock))
            else {
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
            self.publish(Audience::users(contacts), Action::Event(event.encode()))
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
            let users = self.inner.presence.lock();
            contacts
                .iter()
                .filter(|c| users.map.get(*c).is_some_and(|s| s.away))
                .cloned()
                .collect()
        };
        // Every entry needs the contact's privacy (and last_seen), which
        // only the store has: one batch read for all of them.
        let records = self.inner.store.get_users(&contacts).await?;
        let out = contacts
            .into_iter()
            .zip(online)
            .zip(records)
            .map(|((user_id, online), record)| {
                let visible = record.as_ref().is_none_or(|r| r.privacy.presence);
                PresenceEntry {
                    online: visible && online && !away.contains(&user_id),
                    last_seen: record.and_then(|r| r.last_seen).filter(|_| visible),
                    user_id,
                }
            })
            .collect();
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
        // Across a block in a direct chat, typing reaches nobody: a block
        // stops every signal of one side to the other.
        if cached.blocked || !self.privacy_of(user).await?.typing {
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
                Action::Event(event.encode()),
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
        self.publish(typing_audience(cached, user), Action::Event(event.encode()))
            .await;
    }
}

/// The cached member list, shared rather than copied for every event.
fn typing_audience(cached: &Cached, typist: &UserId) -> Audience {
    Audience {
        users: cached.members.clone(),
        except_user: Some(typist.clone()),
        chat_open: Some(cached.chat.id),
        device: None,
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

    /// Queues an event or a reply on this connection only.
    pub fn send(&self, frame: impl Into<Frame>) {
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

    /// `typing_start` in a chat.
    pub async fn start_typing(&self, chat_id: ChatId) -> Result<()> {
        self.engine.typing(&self.actor, chat_id, true).await
    }

    /// `typing_stop` in a chat.
    pub async fn stop_typing(&self, chat_id: ChatId) -> Result<()> {
        self.engine.typing(&self.actor, chat_id, false).await
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

#[cfg(test)]
mod tests {
    //! Presence under a slow bus: one user's stalled bus call must not hold
    //! up anyone else, and must keep that user's own transitions in order.

    use std::{
        sync::{Mutex, atomic::AtomicBool},
        time::Duration,
    };

    use serde_json::Value;
    use tokio::sync::Notify;

    use super::*;
    use crate::{
        Encryption, MemoryStore, Store,
        bus::{Bus, Delivery, DeliverySink, LocalBus},
        transport::{Outbox, outbox},
    };

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    /// A [`LocalBus`] whose presence calls for one user can be held until
    /// the test releases them, like a Redis round trip that stalls.
    #[derive(Debug)]
    struct StallBus {
        inner: LocalBus,
        user: UserId,
        stall_connected: AtomicBool,
        stall_disconnected: AtomicBool,
        /// Signalled when a stalled call starts.
        entered: Notify,
        /// Lets one stalled call go on.
        release: Notify,
        /// Every presence call, in order: `+user` / `-user`.
        calls: Mutex<Vec<String>>,
    }

    impl StallBus {
        fn new(user: &str) -> Arc<Self> {
            Arc::new(Self {
                inner: LocalBus::new(),
                user: uid(user),
                stall_connected: AtomicBool::new(false),
                stall_disconnected: AtomicBool::new(false),
                entered: Notify::new(),
                release: Notify::new(),
                calls: Mutex::new(Vec::new()),
            })
        }

        async fn gate(&self, user: &UserId, stall: &AtomicBool, sign: char) {
            self.calls.lock().unwrap().push(format!("{sign}{user}"));
            if *user == self.user && stall.load(Ordering::SeqCst) {
                self.entered.notify_one();
                self.release.notified().await;
            }
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    #[async_trait::async_trait]
    impl Bus for StallBus {
        async fn attach(&self, sink: Arc<dyn DeliverySink>) -> Result<()> {
            self.inner.attach(sink).await
        }

        async fn publish(&self, delivery: Delivery) -> Result<()> {
            self.inner.publish(delivery).await
        }

        async fn user_connected(&self, user: &UserId) -> Result<bool> {
            self.gate(user, &self.stall_connected, '+').await;
            self.inner.user_connected(user).await
        }

        async fn user_disconnected(&self, user: &UserId) -> Result<bool> {
            self.gate(user, &self.stall_disconnected, '-').await;
            self.inner.user_disconnected(user).await
        }

        async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
            self.inner.online(users).await
        }

        fn single_node(&self) -> bool {
            self.inner.single_node()
        }
    }

    async fn engine(bus: Arc<StallBus>) -> (ChatEngine, Arc<MemoryStore>) {
        let store = Arc::new(MemoryStore::new());
        let engine = ChatEngine::builder(store.clone())
            .bus(bus)
            .build()
            .await
            .unwrap();
        (engine, store)
    }

    async fn direct(engine: &ChatEngine, a: &str, b: &str) {
        engine
            .create_direct(&Actor::user(uid(a)), &uid(b), Encryption::AtRest)
            .await
            .unwrap();
    }

    async fn connect(engine: &ChatEngine, user: &str, device: &str) -> (Session, Outbox) {
        let (tx, out) = outbox(256);
        let session = engine
            .connect(
                Actor::user(uid(user)),
                DeviceId::new(device).unwrap(),
                Arc::new(tx),
            )
            .await
            .unwrap();
        (session, out)
    }

    /// Every frame queued on `out` now.
    fn frames(out: &mut Outbox) -> Vec<Value> {
        let mut v = Vec::new();
        while let Some(f) = out.try_next_frame() {
            v.push(serde_json::from_slice(&f.encode(crate::event::Framing::Json)).unwrap());
        }
        v
    }

    /// `(type, user_id)` of the presence events queued on `out`.
    fn presence_events(out: &mut Outbox) -> Vec<(String, String)> {
        frames(out)
            .into_iter()
            .filter(|f| f["type"] == "user_online" || f["type"] == "user_offline")
            .map(|f| {
                (
                    f["type"].as_str().unwrap().to_owned(),
                    f["data"]["user_id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Lets spawned tasks run as far as they can (virtual time).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_bus_call_does_not_block_another_users_connect() {
        let bus = StallBus::new("alice");
        let (e, _) = engine(bus.clone()).await;
        direct(&e, "alice", "bob").await;
        bus.stall_connected.store(true, Ordering::SeqCst);
        let alice = tokio::spawn({
            let e = e.clone();
            async move { connect(&e, "alice", "phone").await }
        });
        bus.entered.notified().await; // alice's user_connected is in flight
        // With the clock paused, a connect that waits for alice's call
        // leaves the runtime idle, so the timeout fires at once.
        let (_bob, mut bob_out) =
            tokio::time::timeout(Duration::from_secs(1), connect(&e, "bob", "phone"))
                .await
                .expect("bob's connect waited for alice's stalled bus call");
        assert!(!alice.is_finished(), "alice's connect waits for the bus");
        let snapshot = &frames(&mut bob_out)[0];
        assert_eq!(snapshot["type"], "presence_update");
        assert_eq!(snapshot["data"]["users"][0]["online"], false);

        bus.release.notify_one();
        let (_alice, _) = tokio::time::timeout(Duration::from_secs(1), alice)
            .await
            .expect("alice's connect completes once the bus answers")
            .unwrap();
        assert_eq!(
            presence_events(&mut bob_out),
            [("user_online".to_owned(), "alice".to_owned())]
        );
        assert_eq!(bus.calls(), ["+alice", "+bob"]);
    }

    #[tokio::test(start_paused = true)]
    async fn racing_connects_of_one_user_tell_the_bus_once() {
        let bus = StallBus::new("alice");
        let (e, _) = engine(bus.clone()).await;
        direct(&e, "alice", "bob").await;
        let (_bob, mut bob_out) = connect(&e, "bob", "phone").await;
        frames(&mut bob_out);
        bus.stall_connected.store(true, Ordering::SeqCst);
        let first = tokio::spawn({
            let e = e.clone();
            async move { connect(&e, "alice", "phone").await }
        });
        bus.entered.notified().await;
        let second = tokio::spawn({
            let e = e.clone();
            async move { connect(&e, "alice", "tablet").await }
        });
        settle().await;
        assert!(
            !second.is_finished(),
            "a connect returns only once the bus knows the user"
        );
        bus.release.notify_one();
        let _first = first.await.unwrap();
        let _second = second.await.unwrap();
        assert_eq!(bus.calls(), ["+bob", "+alice"], "one bus call per node");
        assert_eq!(
            presence_events(&mut bob_out),
            [("user_online".to_owned(), "alice".to_owned())],
            "announced once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_during_the_offline_bus_call_ends_online_in_order() {
        let bus = StallBus::new("alice");
        let (e, _) = engine(bus.clone()).await;
        direct(&e, "alice", "bob").await;
        let (_bob, mut bob_out) = connect(&e, "bob", "phone").await;
        let (alice, _) = connect(&e, "alice", "phone").await;
        frames(&mut bob_out);
        bus.stall_disconnected.store(true, Ordering::SeqCst);
        alice.close().await;
        // The grace period passes; the offline's bus call stalls.
        tokio::time::timeout(Duration::from_secs(10), bus.entered.notified())
            .await
            .expect("the offline calls the bus after the grace period");
        let again = tokio::spawn({
            let e = e.clone();
            async move { connect(&e, "alice", "phone").await }
        });
        settle().await;
        assert!(
            !again.is_finished(),
            "the reconnect is ordered after the pending offline"
        );
        // Meanwhile other users connect freely.
        let (_carol, _) = tokio::time::timeout(Duration::from_secs(1), connect(&e, "carol", "x"))
            .await
            .expect("carol's connect waited for alice's stalled bus call");
        bus.release.notify_one();
        let (_alice, _) = again.await.unwrap();
        assert_eq!(
            bus.calls(),
            ["+bob", "+alice", "-alice", "+carol", "+alice"]
        );
        assert_eq!(
            presence_events(&mut bob_out),
            [
                ("user_offline".to_owned(), "alice".to_owned()),
                ("user_online".to_owned(), "alice".to_owned()),
            ],
            "offline, then online, never the other way round"
        );
        assert_eq!(bus.inner.online(&[uid("alice")]).await.unwrap(), [true]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_within_the_grace_period_makes_no_bus_call() {
        let bus = StallBus::new("alice");
        let (e, _) = engine(bus.clone()).await;
        direct(&e, "alice", "bob").await;
        let (_bob, mut bob_out) = connect(&e, "bob", "phone").await;
        let (alice, _) = connect(&e, "alice", "phone").await;
        frames(&mut bob_out);
        alice.close().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_alice, _) = connect(&e, "alice", "phone").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(bus.calls(), ["+bob", "+alice"]);
        assert!(presence_events(&mut bob_out).is_empty(), "no flapping");
    }

    #[tokio::test(start_paused = true)]
    async fn the_snapshot_keeps_each_contacts_own_state() {
        // More contacts than reads in flight, so that order matters.
        let bus = StallBus::new("nobody");
        let (e, store) = engine(bus).await;
        let n = 25;
        let mut live = Vec::new();
        for i in 0..n {
            let u = format!("u{i:02}");
            direct(&e, "alice", &u).await;
            match i % 3 {
                0 => live.push(connect(&e, &u, "x").await),
                1 => store
                    .set_last_seen(&uid(&u), Timestamp::from_millis(1_000 + i as i64))
                    .await
                    .unwrap(),
                _ => {}
            }
        }
        let (_alice, mut out) = connect(&e, "alice", "x").await;
        let snapshot = &frames(&mut out)[0];
        let users = snapshot["data"]["users"].as_array().unwrap();
        assert_eq!(users.len(), n);
        for entry in users {
            let u = entry["user_id"].as_str().unwrap();
            let i: usize = u[1..].parse().unwrap();
            assert_eq!(entry["online"], i % 3 == 0, "{entry}");
            assert_eq!(entry["last_seen"].is_string(), i % 3 == 1, "{entry}");
        }
    }
}

//! The [`Bus`] trait: events and presence between server nodes, and
//! [`LocalBus`] for a single node.

use foldhash::HashMap;
use std::{
    fmt::Debug,
    sync::{Arc, Mutex, OnceLock},
};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    error::Result,
    event::Event,
    model::{ChatId, DeviceId, UserId},
};

/// Who receives a [`Delivery`] on each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audience {
    /// Every live connection of these users...
    ///
    /// Shared: a chat's member list goes to every message's fan-out
    /// without being copied.
    pub users: Arc<[UserId]>,
    /// ...except those of this user (the typist of a typing event)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_user: Option<UserId>,
    /// ...and only connections that have this chat open (typing)...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_open: Option<ChatId>,
    /// ...and only connections of this device (`key_packages_low`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
}

impl Audience {
    /// Every connection of `users`.
    pub fn users(users: impl Into<Arc<[UserId]>>) -> Self {
        Self {
            users: users.into(),
            except_user: None,
            chat_open: None,
            device: None,
        }
    }
}

/// What happens to each connection of the audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// Send this event (encoded once, shared by all). Named `Frame` on the
    /// bus, as it was when events were plain frames.
    #[serde(rename = "Frame")]
    Event(Event),
    /// The user left the chat: forget that connections have it open.
    CloseChat(ChatId),
    /// Close the connections (e.g. the user was suspended).
    Disconnect {
        /// WebSocket close code.
        code: u16,
        /// Why.
        reason: String,
    },
}

/// One thing to do for the live connections of some users, wherever they
/// are connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// Who.
    pub audience: Audience,
    /// What.
    pub action: Action,
}

/// Receives the deliveries a [`Bus`] brings to this node (the
/// [`Hub`](crate::hub::Hub) implements it).
pub trait DeliverySink: Debug + Send + Sync + 'static {
    /// Hands `delivery` to this node's live connections. Must not block.
    fn deliver(&self, delivery: &Delivery);

    /// The bus found that these users went offline everywhere without a
    /// [`Bus::user_disconnected`] (their node died and its presence
    /// expired). Called on one surviving node per user, which announces
    /// `user_offline` to their contacts. Must not block.
    fn users_went_offline(&self, users: Vec<UserId>) {
        let _ = users;
    }
}

/// Publish/subscribe between server nodes, and cluster-wide presence.
///
/// # Contract
///
/// - After [`Bus::attach`], every [`Bus::publish`]ed delivery reaches the
///   sink of every node that has [`Bus::user_connected`] one of its audience
///   (and not [`Bus::user_disconnected`] since), exactly once per node,
///   including the publishing node.
/// - Deliveries published by one task reach each node in the order they
///   were published.
/// - `user_connected` / `user_disconnected` are called by a node when its
///   first connection of a user opens and (after a grace period) when its
///   last one closed; they return whether the user thereby came online or
///   went offline across the whole cluster. A node that dies stops counting
///   after a bounded time (Redis: a TTL refreshed by a heartbeat).
/// - When a node dies, its users go offline within a bounded time (Redis: a
///   TTL refreshed by a heartbeat); a surviving node then calls
///   [`DeliverySink::users_went_offline`] once for them.
/// - A bus that loses its backend keeps serving the local node, logs, and
///   reconnects; it never panics. Clients catch up with `sync`.
#[async_trait]
pub trait Bus: Debug + Send + Sync + 'static {
    /// Starts delivering to `sink`. Called once, by the engine.
    async fn attach(&self, sink: Arc<dyn DeliverySink>) -> Result<()>;

    /// Sends `delivery` to every node concerned.
    async fn publish(&self, delivery: Delivery) -> Result<()>;

    /// This node now holds a connection of `user`; returns whether the user
    /// was offline on every node before.
    async fn user_connected(&self, user: &UserId) -> Result<bool>;

    /// This node holds no connection of `user` any more; returns whether the
    /// user is now offline on every node.
    async fn user_disconnected(&self, user: &UserId) -> Result<bool>;

    /// Whether each of `users` has a live connection on some node. An
    /// explicit `user_offline` status does not change it (the engine never
    /// tells the bus about it): push goes only to users with no connection.
    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>>;

    /// Whether this bus serves a single node, so that no other engine
    /// changes the chats of the store. The engine then keeps the chats that
    /// sends need in memory instead of reading them for every message. A
    /// bus between nodes keeps the default, `false`.
    fn single_node(&self) -> bool {
        false
    }
}

/// The [`Bus`] of a single node: deliveries go straight to the local hub.
#[derive(Debug, Default)]
pub struct LocalBus {
    sink: OnceLock<Arc<dyn DeliverySink>>,
    online: Mutex<HashMap<UserId, ()>>,
}

impl LocalBus {
    /// A bus for one node.
    pub fn new() -> Self {
        Self::default()
    }

    fn online_set(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, ()>> {
        self.online.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn attach(&self, sink: Arc<dyn DeliverySink>) -> Result<()> {
        self.sink
            .set(sink)
            .map_err(|_| crate::Error::conflict("a sink is attached already"))
    }

    async fn publish(&self, delivery: Delivery) -> Result<()> {
        if let Some(sink) = self.sink.get() {
            sink.deliver(&delivery);
        }
        Ok(())
    }

    async fn user_connected(&self, user: &UserId) -> Result<bool> {
        Ok(self.online_set().insert(user.clone(), ()).is_none())
    }

    async fn user_disconnected(&self, user: &UserId) -> Result<bool> {
        Ok(self.online_set().remove(user).is_some())
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
        let set = self.online_set();
        Ok(users.iter().map(|u| set.contains_key(u)).collect())
    }

    fn single_node(&self) -> bool {
        true
    }
}

//! Local fan-out: the registry of this node's live connections.
//!
//! An event is encoded once into an [`Event`](crate::event::Event) and the
//! same bytes are queued on every recipient connection. Queues are bounded by the transport; a
//! connection whose queue is full is closed with
//! [`CLOSE_TOO_SLOW`] rather than
//! buffered without bound: the client reconnects and calls `sync`.

// foldhash, not SipHash: these maps are looked up for every recipient of
// every event, and their keys are authenticated user ids and server-made
// chat ids, not strings a client picks to collide (foldhash still seeds
// each map at random).
use foldhash::{HashMap, HashSet};
use std::sync::{
    Arc, Mutex, RwLock,
    atomic::{AtomicU64, Ordering},
};

use crate::{
    bus::{Action, Delivery, DeliverySink},
    error::{Error, Result},
    event::Frame,
    model::{ChatId, ConnectionId, DeviceId, UserId},
    transport::{CLOSE_TOO_SLOW, SendError, Transport},
};

/// One live connection as the hub knows it.
#[derive(Debug)]
pub struct Conn {
    /// Unique across nodes.
    pub id: ConnectionId,
    /// The authenticated user.
    pub user_id: UserId,
    /// The user's device.
    pub device_id: DeviceId,
    transport: Arc<dyn Transport>,
    /// Chats open on this connection (`join_chat`), for typing events.
    open: Mutex<HashSet<ChatId>>,
}

impl Conn {
    /// Queues an event or reply on this connection only; a full queue
    /// closes it.
    pub fn send(&self, frame: impl Into<Frame>) {
        if let Err(SendError::Full) = self.transport.try_send(frame.into()) {
            self.transport.close(CLOSE_TOO_SLOW, "outgoing queue full");
        }
    }

    /// Closes the connection now, dropping what is still queued on it (a
    /// suspended user).
    pub fn close(&self, code: u16, reason: &str) {
        self.transport.close(code, reason);
    }

    /// Closes the connection once the frames already queued on it are
    /// written (a server going away).
    pub fn close_after_queued(&self, code: u16, reason: &str) {
        self.transport.close_after_queued(code, reason);
    }

    fn open_chats(&self) -> std::sync::MutexGuard<'_, HashSet<ChatId>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `chat` is open on this connection.
    pub fn has_open(&self, chat: ChatId) -> bool {
        self.open_chats().contains(&chat)
    }
}

/// Counters of the hub, for metrics.
#[derive(Debug, Default)]
pub struct HubStats {
    /// Frames queued on connections.
    pub frames_queued: AtomicU64,
    /// Connections closed because their queue was full.
    pub slow_closed: AtomicU64,
}

/// The registry of this node's live connections, by user.
#[derive(Debug, Default)]
pub struct Hub {
    users: RwLock<HashMap<UserId, Vec<Arc<Conn>>>>,
    stats: HubStats,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &HubStats {
        &self.stats
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<UserId, Vec<Arc<Conn>>>> {
        self.users.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<UserId, Vec<Arc<Conn>>>> {
        self.users.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection unless its user has `max_per_user` already;
    /// returns the connection and how many the user has now.
    pub fn register(
        &self,
        user_id: UserId,
        device_id: DeviceId,
        transport: Arc<dyn Transport>,
        max_per_user: usize,
    ) -> Result<(Arc<Conn>, usize)> {
        let mut users = self.write();
        let conns = users.entry(user_id.clone()).or_default();
        if conns.len() >= max_per_user {
            return Err(Error::conflict(format!(
                "at most {max_per_user} connections per user"
            )));
        }
        let conn = Arc::new(Conn {
            id: ConnectionId::new(),
            user_id,
            device_id,
            transport,
            open: Mutex::new(HashSet::default()),
        });
        conns.push(conn.clone());
        Ok((conn, conns.len()))
    }

    /// Removes a connection; returns how many its user has left.
    pub fn unregister(&self, conn: &Conn) -> usize {
        let mut users = self.write();
        let Some(conns) = users.get_mut(&conn.user_id) else {
            return 0;
        };
        conns.retain(|c| c.id != conn.id);
        let left = conns.len();
        if left == 0 {
            users.remove(&conn.user_id);
        }
        left
    }

    /// How many connections `user` has on this node.
    pub fn connection_count(&self, user: &UserId) -> usize {
        self.read().get(user).map_or(0, Vec::len)
    }

    /// How many connections this node holds.
    pub fn total_connections(&self) -> usize {
        self.read().values().map(Vec::len).sum()
    }

    /// Marks `chat` open on `conn` unless it has `max_open` open already.
    pub fn open_chat(&self, conn: &Conn, chat: ChatId, max_open: usize) -> Result<()> {
        let mut open = conn.open_chats();
        if !open.contains(&chat) && open.len() >= max_open {
            return Err(Error::invalid(format!(
                "at most {max_open} chats can be open on one connection; leave_chat first"
            )));
        }
        open.insert(chat);
        Ok(())
    }

    /// Marks `chat` closed on `conn`.
    pub fn close_chat(&self, conn: &Conn, chat: ChatId) {
        conn.open_chats().remove(&chat);
    }

    /// Closes every connection (shutdown), each once the frames already
    /// queued on it are written: the ack or event of a change that just
    /// committed still reaches its client before the close.
    pub fn close_all(&self, code: u16, reason: &str) {
        for conn in self.read().values().flatten() {
            conn.close_after_queued(code, reason);
        }
    }
}

impl DeliverySink for Hub {
    fn deliver(&self, delivery: &Delivery) {
        let users = self.read();
        let audience = &delivery.audience;
        // Counted once per delivery: both cores would otherwise fight over
        // the counter's cache line once per recipient.
        let mut queued = 0;
        for user in audience.users.iter() {
            if audience.except_user.as_ref() == Some(user) {
                continue;
            }
            let Some(conns) = users.get(user) else {
                continue;
            };
            for conn in conns {
                if let Some(chat) = audience.chat_open {
                    if !conn.has_open(chat) {
                        continue;
                    }
                }
                if audience
                    .device
                    .as_ref()
                    .is_some_and(|d| *d != conn.device_id)
                {
                    continue;
                }
                match &delivery.action {
                    Action::Event(event) => {
                        match conn.transport.try_send(Frame::Event(event.clone())) {
                            Ok(()) => queued += 1,
                            Err(SendError::Full) => {
                                self.stats.slow_closed.fetch_add(1, Ordering::Relaxed);
                                conn.transport.close(CLOSE_TOO_SLOW, "outgoing queue full");
                            }
                            Err(SendError::Closed) => {}
                        }
                    }
                    Action::CloseChat(chat) => self.close_chat(conn, *chat),
                    Action::Disconnect { code, reason } => conn.close(*code, reason),
                }
            }
        }
        if queued > 0 {
            self.stats
                .frames_queued
                .fetch_add(queued, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        error::ErrorCode,
        event::{ErrorBody, ServerEvent},
        transport::{CLOSE_GOING_AWAY, CLOSE_SUSPENDED, Outgoing, outbox},
    };

    /// A distinguishable frame.
    fn f(text: &str) -> Frame {
        ServerEvent::Error(ErrorBody {
            code: ErrorCode::Internal,
            message: text.into(),
        })
        .into()
    }

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[tokio::test]
    async fn close_all_writes_the_queued_frames_before_the_close() {
        let hub = Hub::new();
        let (transport, mut out) = outbox(8);
        let (conn, _) = hub
            .register(
                user("alice"),
                DeviceId::default_device(),
                Arc::new(transport),
                4,
            )
            .unwrap();
        // The ack of a command that committed right before the shutdown.
        conn.send(f("ack"));
        hub.close_all(CLOSE_GOING_AWAY, "server shutting down");
        assert_eq!(
            out.next().await,
            Some(Outgoing::Frame(f("ack"))),
            "the queued ack goes out first"
        );
        assert_eq!(
            out.next().await,
            Some(Outgoing::Close(
                CLOSE_GOING_AWAY,
                "server shutting down".into()
            ))
        );
    }

    #[tokio::test]
    async fn a_suspension_closes_at_once() {
        let hub = Hub::new();
        let (transport, mut out) = outbox(8);
        let (conn, _) = hub
            .register(
                user("mallory"),
                DeviceId::default_device(),
                Arc::new(transport),
                4,
            )
            .unwrap();
        conn.send(f("event"));
        conn.close(CLOSE_SUSPENDED, "suspended");
        assert_eq!(
            out.next().await,
            Some(Outgoing::Close(CLOSE_SUSPENDED, "suspended".into()))
        );
    }
}

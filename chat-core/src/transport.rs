//! The [`Transport`] trait: how a transport's live connections receive
//! events from the [`Hub`](crate::hub::Hub), and a bounded queue that
//! implements it.

use std::{
    fmt::Debug,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    task::Poll,
};

use futures::task::AtomicWaker;
use tokio::sync::mpsc;

use crate::event::Frame;

/// Close code: the connection's outgoing queue was full.
pub const CLOSE_TOO_SLOW: u16 = 4008;
/// Close code: authentication failed or expired.
pub const CLOSE_AUTH_FAILED: u16 = 4001;
/// Close code: the user was suspended by a moderator.
pub const CLOSE_SUSPENDED: u16 = 4003;
/// Close code: the server is shutting down.
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// The queue is full: the client is too slow.
    Full,
    /// The connection is gone.
    Closed,
}

/// The outgoing half of one live connection, as the hub sees it.
///
/// Each transport (`/ws`, and later Socket.IO) registers its connections
/// with the engine through this trait. The hub never waits on a
/// connection: [`Transport::try_send`] queues or fails at once.
///
/// # Contract
///
/// - `try_send` never blocks; frames queued by one caller are sent in the
///   order they were queued.
/// - [`SendError::Full`] means the client cannot keep up; the hub then
///   calls [`Transport::close`] with [`CLOSE_TOO_SLOW`] and the client
///   recovers with `sync`.
/// - [`Transport::close`] is urgent: frames still queued may be dropped (a
///   client too slow for its backlog, a suspended user).
///   [`Transport::close_after_queued`] writes every frame queued before it,
///   then closes (a server going away: the ack of a command that just
///   committed must still reach the client).
/// - Closing is idempotent, the first close requested wins; frames queued
///   after it are dropped.
pub trait Transport: Debug + Send + Sync + 'static {
    /// Queues one event or reply without waiting; the transport frames it
    /// for its wire when it writes it.
    fn try_send(&self, frame: Frame) -> Result<(), SendError>;

    /// Asks the transport to close the connection with `code` and `reason`
    /// now, without waiting for the frames still queued.
    fn close(&self, code: u16, reason: &str);

    /// Asks the transport to close the connection with `code` and `reason`
    /// once every frame queued so far is written.
    ///
    /// The default is [`Transport::close`], which is right for a transport
    /// that writes each frame before `try_send` returns; a transport that
    /// queues frames must override it.
    fn close_after_queued(&self, code: u16, reason: &str) {
        self.close(code, reason);
    }
}

/// What a transport's writer task takes from an [`Outbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// An event or reply to write.
    Frame(Frame),
    /// Close the connection with this code and reason, then stop.
    Close(u16, String),
}

/// The sending half of a bounded outgoing queue: a ready-made
/// [`Transport`] for transports that run one writer task per connection.
#[derive(Debug, Clone)]
pub struct QueueTransport {
    tx: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
}

/// The receiving half of a bounded outgoing queue; see [`outbox`].
#[derive(Debug)]
pub struct Outbox {
    rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    closing: AtomicBool,
    close: Mutex<Option<Closing>>,
    /// Wakes the writer for a close while it waits for frames. An atomic
    /// waker rather than a `Notify`: the writer waits once per burst of
    /// frames, and registering with a `Notify` takes a lock every time.
    waker: AtomicWaker,
}

#[derive(Debug, Clone)]
struct Closing {
    code: u16,
    reason: String,
    /// Close before writing what is queued (a client too slow for its
    /// backlog), rather than after it (a last event, then the close).
    urgent: bool,
}

/// A bounded outgoing queue of `capacity` frames: hand the
/// [`QueueTransport`] to the engine and drain the [`Outbox`] into the socket.
pub fn outbox(capacity: usize) -> (QueueTransport, Outbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let shared = Arc::new(Shared::default());
    (
        QueueTransport {
            tx,
            shared: shared.clone(),
        },
        Outbox { rx, shared },
    )
}

impl Transport for QueueTransport {
    fn try_send(&self, frame: Frame) -> Result<(), SendError> {
        if self.shared.closing.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        self.tx.try_send(frame).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Closed,
        })
    }

    /// Closes before writing what is queued; see
    /// [`QueueTransport::close_after_queued`].
    fn close(&self, code: u16, reason: &str) {
        self.request_close(code, reason, true);
    }

    /// Closes the connection once the frames queued so far are written: for
    /// a last event that explains the close (`authentication_error` before
    /// 4001), and for a server going away (1001), so that the ack of a
    /// command that just committed is not lost. Frames queued after it are
    /// dropped; the first close requested wins.
    fn close_after_queued(&self, code: u16, reason: &str) {
        self.request_close(code, reason, false);
    }
}

impl QueueTransport {
    fn request_close(&self, code: u16, reason: &str, urgent: bool) {
        let mut slot = self.shared.close.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Closing {
                code,
                reason: reason.to_owned(),
                urgent,
            });
            self.shared.closing.store(true, Ordering::Release);
            self.shared.waker.wake();
        }
    }
}

impl Outbox {
    /// The next thing to do: a frame to write, or a close. `None` when every
    /// sender is gone.
    pub async fn next(&mut self) -> Option<Outgoing> {
        std::future::poll_fn(|cx| {
            // Registered before looking, so that a close requested after
            // the look wakes this writer.
            self.shared.waker.register(cx.waker());
            let close = self.take_close();
            if let Some(close) = close.as_ref().filter(|c| c.urgent) {
                return Poll::Ready(Some(Outgoing::Close(close.code, close.reason.clone())));
            }
            match (self.rx.poll_recv(cx), close) {
                (Poll::Ready(Some(frame)), _) => Poll::Ready(Some(Outgoing::Frame(frame))),
                // Nothing left before a close that waited for the queue.
                (_, Some(close)) => Poll::Ready(Some(Outgoing::Close(close.code, close.reason))),
                (Poll::Ready(None), None) => Poll::Ready(None),
                (Poll::Pending, None) => Poll::Pending,
            }
        })
        .await
    }

    /// Frames that are queued right now, without waiting (for batching
    /// writes). Stops at a close that does not wait for the queue.
    pub fn try_next_frame(&mut self) -> Option<Frame> {
        if self.take_close().is_some_and(|c| c.urgent) {
            return None;
        }
        self.rx.try_recv().ok()
    }

    fn take_close(&self) -> Option<Closing> {
        if !self.shared.closing.load(Ordering::Acquire) {
            return None;
        }
        self.shared
            .close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::event::{ErrorBody, ServerEvent};

    /// A distinguishable frame.
    fn f(text: &str) -> Frame {
        ServerEvent::Error(ErrorBody {
            code: ErrorCode::Internal,
            message: text.into(),
        })
        .into()
    }

    #[tokio::test]
    async fn full_queue_reports_full_and_close_wins() {
        let (t, mut out) = outbox(2);
        assert_eq!(t.try_send(f("1")), Ok(()));
        assert_eq!(t.try_send(f("2")), Ok(()));
        assert_eq!(t.try_send(f("3")), Err(SendError::Full));
        assert_eq!(out.next().await, Some(Outgoing::Frame(f("1"))));
        t.close(CLOSE_TOO_SLOW, "too slow");
        t.close(1000, "ignored: first close wins");
        assert_eq!(
            out.next().await,
            Some(Outgoing::Close(CLOSE_TOO_SLOW, "too slow".into()))
        );
        assert_eq!(t.try_send(f("4")), Err(SendError::Closed));
    }

    #[tokio::test]
    async fn a_going_away_close_through_the_trait_waits_for_the_queue() {
        let (t, mut out) = outbox(4);
        let t: Arc<dyn Transport> = Arc::new(t);
        assert_eq!(t.try_send(f("ack")), Ok(()));
        t.close_after_queued(CLOSE_GOING_AWAY, "server shutting down");
        assert_eq!(out.next().await, Some(Outgoing::Frame(f("ack"))));
        assert_eq!(
            out.next().await,
            Some(Outgoing::Close(
                CLOSE_GOING_AWAY,
                "server shutting down".into()
            ))
        );
    }

    #[tokio::test]
    async fn a_close_after_queued_frames_comes_after_them() {
        let (t, mut out) = outbox(4);
        assert_eq!(t.try_send(f("last words")), Ok(()));
        t.close_after_queued(4001, "token expired");
        assert_eq!(t.try_send(f("late")), Err(SendError::Closed));
        t.close(CLOSE_TOO_SLOW, "ignored: first close wins");
        assert_eq!(out.next().await, Some(Outgoing::Frame(f("last words"))));
        assert_eq!(out.try_next_frame(), None);
        assert_eq!(
            out.next().await,
            Some(Outgoing::Close(4001, "token expired".into()))
        );
    }
}

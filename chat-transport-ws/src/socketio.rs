//! The `/socket.io/` endpoint (PROTOCOL.md 5.6): socket.io-client v4
//! (Engine.IO 4, Socket.IO 5; polling, then the WebSocket upgrade) on
//! `socketioxide`, glued to chat-core's connection driver exactly as `/ws`
//! is. The driver runs every rule, limit and event; this module only
//! translates:
//!
//! - the handshake's `auth: {token}` is verified in the namespace's connect
//!   middleware (a refusal is the client's `connect_error`, whose `message`
//!   starts with the error code: `authentication_error: ...`);
//! - `socket.emit(type, data, ack)` becomes the command frame
//!   `{"type", "id", "data"}` (an `id` only when the client wants an ack),
//!   queued for the driver in the order the packets arrived;
//! - the driver's frames go back as the ack (`{"ok": true, "data"}` or
//!   `{"ok": false, "error": {code, message}}`) or as the event `type`
//!   with its `data`. Frames are encoded once by the engine for every
//!   recipient; here they are only scanned (the `data` is borrowed as raw
//!   JSON and copied into the packet, never parsed into a value and
//!   serialized again);
//! - a close becomes the event `closing` `{code, reason}` (the code `/ws`
//!   would close with), then a server-side disconnect.
//!
//! Limits: packets are bounded by the `/ws` frame limit, the outgoing
//! queue by the driver's (a full queue is a slow consumer: disconnected
//! and counted, as `/ws` closes with 4008), commands waiting for the driver
//! by [`INBOUND_QUEUE`], sockets by the server's connection slots, and an
//! Engine.IO session that does not join the namespace lives at most the
//! authentication timeout.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use chat_core::{
    Error, metrics as m,
    protocol::{Auth, Credentials, Inbound, Outbound},
};
use futures::{Sink, Stream};
use serde::{Deserialize, Serialize, de};
use serde_json::value::RawValue;
use socketioxide::{
    ParserConfig, SendError, SocketError, SocketIo, TransportType,
    adapter::LocalAdapter,
    extract::{AckSender, SocketRef, State, TryData},
    handler::{ConnectHandler, FromMessageParts, Value},
    layer::SocketIoLayer,
    socket::{DisconnectReason, Socket},
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::AppState;

/// Commands of one socket that may wait for the driver, which runs them
/// one at a time. A client that has more in flight gets `rate_limited`
/// for the next ones (Socket.IO pushes packets; there is no socket to stop
/// reading).
pub const INBOUND_QUEUE: usize = 64;

/// Gauge by `transport` (`polling`, `websocket`): live Socket.IO
/// connections; a connection moves from `polling` to `websocket` when it
/// upgrades.
pub const SOCKETIO_CONNECTIONS: &str = "chat_socketio_connections";

/// Room for a packet's Socket.IO and Engine.IO framing (the event name, an
/// ack id) around a command of the `/ws` frame limit.
const PACKET_OVERHEAD: usize = 1024;

/// How often the socket tells the driver it is alive: Engine.IO runs its
/// own heartbeat (and closes a silent client), which the driver does not
/// see.
const LIVENESS: Duration = Duration::from_secs(20);

/// The Socket.IO layer for `state`'s driver, with the namespace `/`
/// registered; the router serves it at `/socket.io/`.
pub(crate) fn layer(state: &AppState) -> SocketIoLayer<LocalAdapter> {
    let driver = state.driver.config();
    let max_packet = state.config.max_frame_bytes + PACKET_OVERHEAD;
    // Commands are JSON: binary attachments are refused by the driver, so
    // one of a command's size is all a packet may bring (socketioxide
    // would buffer 10 MB of them per socket by default).
    let parser = ParserConfig::common()
        .max_incoming_binary_buf_size(state.config.max_frame_bytes)
        .max_incoming_binaries(1)
        .packet_completion_timeout(Duration::from_secs(5));
    let (layer, io) = SocketIo::builder()
        .with_parser(parser)
        .with_state(state.clone())
        .ping_interval(Duration::from_secs(25))
        .ping_timeout(Duration::from_secs(20))
        // An Engine.IO session that never joins the namespace (no or a bad
        // token) goes after this long.
        .connect_timeout(driver.auth_timeout)
        .max_payload(u64::try_from(max_packet).unwrap_or(u64::MAX))
        .ws_max_message_size(max_packet)
        .ws_max_frame_size(max_packet)
        .max_buffer_size(driver.outgoing_queue)
        .build_layer();
    io.ns("/", on_connect.with(authenticate));
    layer
}

/// The handshake's `auth` object.
#[derive(Debug, Deserialize)]
struct HandshakeAuth {
    token: Option<String>,
}

/// Why a connection is refused: the client's `connect_error` message,
/// `<code>: <message>`.
#[derive(Debug)]
struct Refused(String);

impl Refused {
    fn new(code: &str, message: &str) -> Self {
        Self(format!("{code}: {message}"))
    }

    fn error(e: &Error) -> Self {
        Self::new(e.code().as_str(), &e.public_message())
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The connect middleware: the origin, the token, the connect rate limit
/// and a connection slot, before the client is told it is connected. The
/// socket's handlers are registered here too, so that no packet comes
/// before them.
async fn authenticate(
    s: SocketRef,
    TryData(auth): TryData<HandshakeAuth>,
    State(app): State<AppState>,
) -> Result<(), Refused> {
    if !app.config.request_origin_allowed(&s.req_parts().headers) {
        return Err(Refused::new("forbidden", "origin not allowed"));
    }
    let token = auth.ok().and_then(|a| a.token).unwrap_or_default();
    if token.is_empty() {
        return Err(Refused::new("authentication_error", "missing token"));
    }
    let credentials = app
        .driver
        .authenticate(&token)
        .map_err(|e| Refused::new("authentication_error", &e.public_message()))?;
    // A suspended user is turned away here, with what `/ws` sends in its
    // `authentication_error` event before closing with 4003.
    match app
        .engine
        .authorize(credentials.user_id.clone(), credentials.admin)
        .await
    {
        Ok(_) => {}
        Err(Error::Forbidden(why)) => return Err(Refused::new("authentication_error", &why)),
        Err(e) => return Err(Refused::new("authentication_error", &e.public_message())),
    }
    app.driver
        .check_connect(&credentials.user_id)
        .map_err(|e| Refused::error(&e))?;
    let permit = app.connections.clone().try_acquire_owned().map_err(|_| {
        Refused::error(&Error::conflict(
            "the server holds all the connections it can",
        ))
    })?;
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let conn = Arc::new(SioConn {
        inbound: Mutex::new(Some(tx)),
        acks: Mutex::new(HashMap::new()),
        start: Mutex::new(Some(Start {
            credentials,
            permit,
            rx,
        })),
        max_command: app.config.max_frame_bytes,
        websocket: AtomicBool::new(false),
        counted: AtomicBool::new(false),
    });
    s.extensions.insert(conn);
    s.on_fallback(async |_: Enqueued| {});
    s.on_disconnect(async |s: SocketRef, _reason: DisconnectReason| {
        if let Some(conn) = s.extensions.get::<Arc<SioConn>>() {
            conn.disconnected();
        }
    });
    Ok(())
}

/// Runs the driver for an accepted socket.
async fn on_connect(s: SocketRef, State(app): State<AppState>) {
    let Some(conn) = s.extensions.get::<Arc<SioConn>>() else {
        return;
    };
    let Some(Start {
        credentials,
        permit,
        rx,
    }) = lock(&conn.start).take()
    else {
        return;
    };
    conn.count(&s);
    let sink = SioSink {
        socket: s.clone(),
        conn: conn.clone(),
        slow: false,
    };
    let stream = InboundStream {
        rx,
        beat: tokio::time::interval_at(tokio::time::Instant::now() + LIVENESS, LIVENESS),
    };
    let driver = app.driver.clone();
    // Tracked: a graceful shutdown waits for the connection to close.
    tokio::spawn(app.tasks.track_future(async move {
        let _permit = permit;
        Box::pin(driver.run(Auth::Verified(credentials), sink, stream)).await;
    }));
}

/// What the connect handler takes over from the middleware.
struct Start {
    credentials: Credentials,
    permit: OwnedSemaphorePermit,
    rx: mpsc::Receiver<Inbound>,
}

/// One socket's glue, shared by its handlers and its driver.
struct SioConn {
    /// Commands to the driver; dropped when the socket disconnects, which
    /// ends the driver's stream.
    inbound: Mutex<Option<mpsc::Sender<Inbound>>>,
    /// The ack callbacks of commands the driver has not answered yet, by
    /// the `id` given to the driver.
    acks: Mutex<HashMap<String, AckSender>>,
    start: Mutex<Option<Start>>,
    /// The `/ws` frame limit, for one command.
    max_command: usize,
    /// The transport counted in [`SOCKETIO_CONNECTIONS`].
    websocket: AtomicBool,
    /// Whether the socket is counted (and must be uncounted once).
    counted: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; if something did, what the
    // lock guards (a map, an option) is still whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn transport_label(websocket: bool) -> &'static str {
    if websocket { "websocket" } else { "polling" }
}

impl SioConn {
    fn count(&self, s: &Socket<LocalAdapter>) {
        let websocket = s.transport_type() == TransportType::Websocket;
        self.websocket.store(websocket, Ordering::Relaxed);
        self.counted.store(true, Ordering::Relaxed);
        metrics::gauge!(SOCKETIO_CONNECTIONS, "transport" => transport_label(websocket))
            .increment(1);
    }

    /// Moves the socket's count to `websocket` once it upgraded.
    fn observe_transport(&self, s: &Socket<LocalAdapter>) {
        let websocket = s.transport_type() == TransportType::Websocket;
        if self.counted.load(Ordering::Relaxed)
            && self.websocket.swap(websocket, Ordering::Relaxed) != websocket
        {
            metrics::gauge!(SOCKETIO_CONNECTIONS, "transport" => transport_label(!websocket))
                .decrement(1);
            metrics::gauge!(SOCKETIO_CONNECTIONS, "transport" => transport_label(websocket))
                .increment(1);
        }
    }

    fn disconnected(&self) {
        lock(&self.inbound).take();
        lock(&self.acks).clear();
        // A socket refused after the middleware never started.
        lock(&self.start).take();
        if self.counted.swap(false, Ordering::Relaxed) {
            let websocket = self.websocket.load(Ordering::Relaxed);
            metrics::gauge!(SOCKETIO_CONNECTIONS, "transport" => transport_label(websocket))
                .decrement(1);
        }
    }

    /// Queues one command for the driver, or answers it at once when it
    /// cannot wait.
    fn enqueue(&self, event: &str, data: &RawValue, ack: Option<(i64, AckSender)>) {
        let Some(tx) = lock(&self.inbound).clone() else {
            return;
        };
        if data.get().len() > self.max_command {
            let _ = tx.try_send(Inbound::TooLarge);
            return;
        }
        let id = ack.as_ref().map(|(n, _)| format!("a{n}"));
        let frame = match serde_json::to_string(&Command {
            kind: event,
            id: id.as_deref(),
            data,
        }) {
            Ok(frame) => frame,
            Err(_) => return,
        };
        if let (Some(id), Some((_, ack))) = (&id, ack) {
            lock(&self.acks).insert(id.clone(), ack);
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(Inbound::Text(frame)) {
            metrics::counter!(m::RATE_LIMITED).increment(1);
            if let Some(ack) = id.and_then(|id| lock(&self.acks).remove(&id)) {
                let error = Error::RateLimited {
                    retry_after: Duration::from_millis(100),
                };
                let _ = ack.send(&Reply::Error {
                    ok: false,
                    error: ErrorBody {
                        code: error.code().as_str(),
                        message: &error.public_message(),
                    },
                });
            }
        }
    }
}

/// A command frame for the driver.
#[derive(Serialize)]
struct Command<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    data: &'a RawValue,
}

/// The ack callback's one argument.
#[derive(Serialize)]
#[serde(untagged)]
enum Reply<'a> {
    Ok { ok: bool, data: &'a RawValue },
    Error { ok: bool, error: ErrorBody<'a> },
    RawError { ok: bool, error: &'a RawValue },
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

/// A packet's `["event", data, ...]`: the name and the first argument,
/// borrowed as raw JSON (`null` when there is none); further arguments
/// are ignored.
struct Packet(String, Box<RawValue>);

impl<'de> Deserialize<'de> for Packet {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> de::Visitor<'de> for Visit {
            type Value = Packet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[event, ...args]")
            }
            fn visit_seq<S: de::SeqAccess<'de>>(self, mut seq: S) -> Result<Packet, S::Error> {
                let event: String = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let data = match seq.next_element::<Box<RawValue>>()? {
                    Some(data) => data,
                    None => RawValue::from_string("null".to_owned()).map_err(de::Error::custom)?,
                };
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(Packet(event, data))
            }
        }
        d.deserialize_seq(Visit)
    }
}

/// The catch-all handler's extractor. It runs as the packet is read, in
/// the order packets arrive (socketioxide runs each handler on a task of
/// its own, so the work cannot wait for the handler), and queues the
/// command for the driver.
struct Enqueued;

#[derive(Debug)]
struct NotQueued;

impl fmt::Display for NotQueued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a command")
    }
}

impl std::error::Error for NotQueued {}

impl FromMessageParts<LocalAdapter> for Enqueued {
    type Error = NotQueued;

    fn from_message_parts(
        s: &Arc<Socket<LocalAdapter>>,
        v: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, NotQueued> {
        let conn = s.extensions.get::<Arc<SioConn>>().ok_or(NotQueued)?;
        conn.observe_transport(s);
        let text = v.as_str().ok_or(NotQueued)?;
        let Ok(Packet(event, data)) = serde_json::from_str(text.as_str()) else {
            return Err(NotQueued);
        };
        let ack = match ack_id {
            Some(n) => {
                let Ok(ack) = AckSender::from_message_parts(s, v, ack_id);
                Some((*n, ack))
            }
            None => None,
        };
        conn.enqueue(&event, &data, ack);
        Ok(Enqueued)
    }
}

/// The driver's inbound side: the queued commands, and a sign of life
/// every [`LIVENESS`] while the socket is connected. Ends when the socket
/// disconnects.
struct InboundStream {
    rx: mpsc::Receiver<Inbound>,
    beat: tokio::time::Interval,
}

impl Stream for InboundStream {
    type Item = Inbound;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Inbound>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(item) => Poll::Ready(item),
            Poll::Pending => match self.beat.poll_tick(cx) {
                Poll::Ready(_) => Poll::Ready(Some(Inbound::Heartbeat)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// A driver frame, scanned: its type, its request id, its data as raw
/// JSON.
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// The socket was closed, or could not keep up.
#[derive(Debug)]
struct Gone;

/// The driver's outbound side: each frame becomes an ack or an event.
/// Emitting queues the packet on the socket (never waits); a full queue is
/// a slow consumer.
struct SioSink {
    socket: SocketRef,
    conn: Arc<SioConn>,
    slow: bool,
}

impl SioSink {
    fn write(&mut self, frame: &[u8]) -> Result<(), Gone> {
        let Ok(frame) = serde_json::from_slice::<Frame<'_>>(frame) else {
            // The driver writes only frames it encoded itself.
            tracing::warn!("a frame the Socket.IO glue cannot read");
            return Ok(());
        };
        let null = RawValue::NULL;
        let data = frame.data.unwrap_or(null);
        let ack = match (&*frame.kind, &frame.id) {
            ("ack" | "error", Some(id)) => lock(&self.conn.acks).remove(&**id),
            _ => None,
        };
        let sent = match (ack, &*frame.kind) {
            (Some(ack), "ack") => ack.send(&Reply::Ok { ok: true, data }),
            (Some(ack), _) => ack.send(&Reply::RawError {
                ok: false,
                error: data,
            }),
            // An answer nobody asked for.
            (None, "ack") => Ok(()),
            (None, kind) => self.socket.emit(kind, data),
        };
        match sent {
            Ok(()) => Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                // As `/ws` closes a client that does not read with 4008.
                self.slow = true;
                metrics::counter!(m::SLOW_CLOSED).increment(1);
                tracing::info!("socket.io client too slow: disconnecting");
                let _ = self.socket.clone().disconnect();
                Err(Gone)
            }
            Err(SendError::Socket(_)) => Err(Gone),
            Err(SendError::Serialize(e)) => {
                tracing::warn!(error = %e, "socket.io packet not encoded");
                Ok(())
            }
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        #[derive(Serialize)]
        struct Closing<'a> {
            code: u16,
            reason: &'a str,
        }
        // The client closed: nothing to tell it.
        if code != 1000 && !self.slow {
            let _ = self.socket.emit("closing", &Closing { code, reason });
        }
        let _ = self.socket.clone().disconnect();
    }
}

impl Sink<Outbound> for SioSink {
    type Error = Gone;

    fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(mut self: Pin<&mut Self>, item: Outbound) -> Result<(), Gone> {
        match item {
            Outbound::Text(frame) => self.write(&frame),
            // Engine.IO has its own heartbeat: a chance to see the upgrade.
            Outbound::Ping => {
                let Self { socket, conn, .. } = &*self;
                conn.observe_transport(socket);
                Ok(())
            }
            Outbound::Close(close) => {
                self.close(close.reason.code(), &close.message);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Gone>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(text: &str) -> Option<(String, String)> {
        serde_json::from_str::<Packet>(text)
            .ok()
            .map(|Packet(event, data)| (event, data.get().to_owned()))
    }

    #[test]
    fn a_packet_is_its_name_and_first_argument_verbatim() {
        let p = |e: &str, d: &str| Some((e.to_owned(), d.to_owned()));
        assert_eq!(
            packet(r#"["send_message",{"chat_id":"c","content":"a \"b\""}]"#),
            p("send_message", r#"{"chat_id":"c","content":"a \"b\""}"#)
        );
        assert_eq!(packet(r#"["ping"]"#), p("ping", "null"));
        assert_eq!(packet(r#"["x",1,2,3]"#), p("x", "1"));
        assert_eq!(packet(r#"[]"#), None);
        assert_eq!(packet(r#"[1,{}]"#), None);
        assert_eq!(packet(r#"{"type":"x"}"#), None);
    }

    #[test]
    fn a_driver_frame_is_scanned_without_a_value_tree() {
        let frame: Frame<'_> =
            serde_json::from_str(r#"{"type":"ack","id":"a7","data":{"message":{"seq":3}}}"#)
                .expect("frame");
        assert_eq!((&*frame.kind, frame.id.as_deref()), ("ack", Some("a7")));
        assert_eq!(
            frame.data.map(RawValue::get),
            Some(r#"{"message":{"seq":3}}"#)
        );
        let event: Frame<'_> =
            serde_json::from_str(r#"{"type":"user_typing","data":{"chat_id":"c"}}"#)
                .expect("event");
        assert_eq!((&*event.kind, event.id), ("user_typing", None));
    }

    #[test]
    fn commands_for_the_driver_are_its_frames() {
        let data = RawValue::from_string(r#"{"chat_id":"c"}"#.to_owned()).expect("raw");
        let frame = serde_json::to_string(&Command {
            kind: "typing_start",
            id: Some("a1"),
            data: &data,
        })
        .expect("json");
        assert_eq!(
            frame,
            r#"{"type":"typing_start","id":"a1","data":{"chat_id":"c"}}"#
        );
        let odd = serde_json::to_string(&Command {
            kind: "a\"b",
            id: None,
            data: &data,
        })
        .expect("json");
        assert_eq!(odd, r#"{"type":"a\"b","data":{"chat_id":"c"}}"#);
    }
}

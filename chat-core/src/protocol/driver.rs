//! The connection driver: one live connection of any transport, from its
//! first frame to its close.
//!
//! A transport turns its socket into a [`Stream`] of [`Inbound`] frames and
//! a [`Sink`] of [`Outbound`] ones, and hands both to [`Driver::run`]. The
//! driver does everything else the same way for every transport:
//! authentication (the first frame, or credentials the transport verified
//! at its handshake), the authentication deadline, closing when the token
//! expires, rate limits per [`CommandClass`], running commands one at a time
//! in the order they arrive, answering each with its ack or error in order,
//! writing the events the hub queues for the connection, heartbeats, the idle
//! timeout, and closing with a typed [`CloseReason`] that the transport maps
//! to its own close (a WebSocket close code, a TCP shutdown...).
//!
//! ```text
//!  transport ── Inbound ──▶ Driver::run ── commands ──▶ ChatEngine
//!  transport ◀── Outbound ── writer task ◀── Outbox ◀── Hub (events)
//! ```

use std::{
    fmt::Debug,
    pin::pin,
    sync::Arc,
    time::{Duration, SystemTime},
};

use bytes::Bytes;
use futures::{Sink, SinkExt, Stream, StreamExt};
use serde::Serialize;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{
    commands::{ClientCommand, parse_request},
    dispatch::execute,
};
use crate::{
    engine::{ChatEngine, Session},
    error::{Error, Result},
    event::{AckData, Frame, Framing, ServerEvent},
    limits::{CommandClass, Limiter, RateLimits},
    metrics as m,
    model::{DeviceId, UserId},
    transport::{
        CLOSE_AUTH_FAILED, CLOSE_GOING_AWAY, CLOSE_SUSPENDED, CLOSE_TOO_SLOW, Outbox, Outgoing,
        Transport, outbox,
    },
};

/// One frame from the client, as the transport received it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Inbound {
    /// A text frame: one command.
    Text(String),
    /// A binary frame (refused with `bad_request`).
    Binary,
    /// A sign of life that carries no command (a WebSocket ping or pong):
    /// it only keeps the connection from being idle.
    Heartbeat,
    /// The transport refused a frame over its size limit; the connection
    /// closes with [`CloseReason::TooLarge`].
    TooLarge,
    /// The client closed the connection (a WebSocket close frame). The
    /// driver answers with [`CloseReason::Normal`] and stops.
    Close,
}

/// What the driver asks the transport to write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outbound {
    /// A text frame, already framed for [`DriverConfig::framing`].
    Text(Bytes),
    /// A heartbeat (a WebSocket ping), every [`DriverConfig::ping_interval`].
    Ping,
    /// Close the connection, then nothing more is written.
    Close(Close),
}

/// Why a connection closes, and the text that goes with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Close {
    /// Why.
    pub reason: CloseReason,
    /// A short human-readable explanation (a WebSocket close reason).
    pub message: String,
}

/// Why the server closes a connection. Each maps to a WebSocket close code
/// ([`CloseReason::code`]); other transports map them as they can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// 1000: the answer to the client's own close.
    Normal,
    /// 1001: the server is shutting down, or the connection was idle.
    GoingAway,
    /// 1008: refused by policy (too many connections of the user).
    Policy,
    /// 1009: a frame was larger than allowed.
    TooLarge,
    /// 1013: refused by the connect rate limit; try again later.
    TryAgainLater,
    /// 4001: authentication failed, timed out, or the token expired.
    AuthFailed,
    /// 4003: the user is suspended.
    Suspended,
    /// 4008: the client did not read its events fast enough.
    TooSlow,
    /// Any other code a [`Transport::close`] was asked for.
    Other(u16),
}

/// Close code: policy violation (e.g. too many connections).
const CLOSE_POLICY: u16 = 1008;
/// Close code: a message was larger than allowed.
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: try again later (IANA registry, RFC 6455 section 11.7).
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

impl CloseReason {
    /// The WebSocket close code.
    pub const fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => CLOSE_GOING_AWAY,
            Self::Policy => CLOSE_POLICY,
            Self::TooLarge => CLOSE_TOO_BIG,
            Self::TryAgainLater => CLOSE_TRY_AGAIN_LATER,
            Self::AuthFailed => CLOSE_AUTH_FAILED,
            Self::Suspended => CLOSE_SUSPENDED,
            Self::TooSlow => CLOSE_TOO_SLOW,
            Self::Other(code) => code,
        }
    }

    /// The reason of a WebSocket close code.
    pub const fn from_code(code: u16) -> Self {
        match code {
            1000 => Self::Normal,
            CLOSE_GOING_AWAY => Self::GoingAway,
            CLOSE_POLICY => Self::Policy,
            CLOSE_TOO_BIG => Self::TooLarge,
            CLOSE_TRY_AGAIN_LATER => Self::TryAgainLater,
            CLOSE_AUTH_FAILED => Self::AuthFailed,
            CLOSE_SUSPENDED => Self::Suspended,
            CLOSE_TOO_SLOW => Self::TooSlow,
            code => Self::Other(code),
        }
    }
}

/// Who a valid token names, as an [`Authenticator`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user_id: UserId,
    /// Their device.
    pub device_id: DeviceId,
    /// Whether the token grants the moderation API.
    pub admin: bool,
    /// When the token stops verifying (its expiry plus the authenticator's
    /// clock leeway): the connection closes then with
    /// [`CloseReason::AuthFailed`]. `None`: never.
    pub valid_until: Option<SystemTime>,
}

/// Verifies the token of an `authenticate` frame (a JWT in `chat-server`).
pub trait Authenticator: Debug + Send + Sync + 'static {
    /// The credentials `token` proves, or why it does not.
    fn authenticate(&self, token: &str) -> Result<Credentials>;
}

/// How a connection authenticates.
#[derive(Debug)]
pub enum Auth {
    /// The first frame must be `authenticate`, within
    /// [`DriverConfig::auth_timeout`].
    FirstFrame,
    /// The transport verified a token at its handshake and took the
    /// connect rate limit ([`Driver::check_connect`]).
    Verified(Credentials),
    /// The transport's handshake carried a token that did not verify: the
    /// client gets `authentication_error` and [`CloseReason::AuthFailed`].
    Failed(Error),
}

/// The settings of the driver, the same for every connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DriverConfig {
    /// How long a connection may take to `authenticate` (10 s).
    pub auth_timeout: Duration,
    /// A connection that sent nothing (no frame, no heartbeat) for this
    /// long is closed with [`CloseReason::GoingAway`] (75 s).
    pub idle_timeout: Duration,
    /// How often to send [`Outbound::Ping`] (25 s); `None` for transports
    /// with their own heartbeat.
    pub ping_interval: Option<Duration>,
    /// Frames that may wait for one connection before it counts as too
    /// slow and closes with [`CloseReason::TooSlow`] (1024).
    pub outgoing_queue: usize,
    /// How events and replies are framed (JSON).
    pub framing: Framing,
    /// The budgets of each command class, per user and node.
    pub rate_limits: RateLimits,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            auth_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(75),
            ping_interval: Some(Duration::from_secs(25)),
            outgoing_queue: 1024,
            framing: Framing::Json,
            rate_limits: RateLimits::default(),
        }
    }
}

/// Runs live connections against one engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Driver {
    inner: Arc<DriverInner>,
}

#[derive(Debug)]
struct DriverInner {
    engine: ChatEngine,
    authenticator: Arc<dyn Authenticator>,
    limiter: Limiter,
    config: DriverConfig,
    shutdown: CancellationToken,
}

/// How long a connection the server is closing waits for the client to
/// close its side before it gives up on it. RFC 6455 sets no figure (Node's
/// `ws` waits 30 s); this matches how long a graceful shutdown waits for
/// connections, and the connection only holds its slot meanwhile.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Most frames queued at once that go out before one flush.
const BURST_FRAMES: usize = 64;

/// A token valid for longer than this gets no expiry timer: the connection
/// will not live that long, and an instant that far ahead may not be
/// representable.
const NO_EXPIRY_TIMER_BEYOND: Duration = Duration::from_secs(30 * 365 * 86_400);

impl Driver {
    /// A driver for `engine`, verifying tokens with `authenticator`.
    pub fn new(
        engine: ChatEngine,
        authenticator: Arc<dyn Authenticator>,
        config: DriverConfig,
    ) -> Self {
        Self {
            inner: Arc::new(DriverInner {
                engine,
                authenticator,
                limiter: Limiter::new(config.rate_limits),
                config,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &ChatEngine {
        &self.inner.engine
    }

    /// The settings.
    pub fn config(&self) -> &DriverConfig {
        &self.inner.config
    }

    /// The token buckets (the HTTP API takes from the same ones).
    pub fn limiter(&self) -> &Limiter {
        &self.inner.limiter
    }

    /// Verifies a token given at a transport's handshake.
    pub fn authenticate(&self, token: &str) -> Result<Credentials> {
        self.inner.authenticator.authenticate(token)
    }

    /// Takes a token of `user`'s connect budget; `rate_limited` if empty.
    /// Transports that authenticate at their handshake call it before
    /// accepting, [`Driver::run`] calls it for a first-frame `authenticate`.
    pub fn check_connect(&self, user: &UserId) -> Result<()> {
        self.inner.limiter.check_connect(user).map_err(|wait| {
            metrics::counter!(m::RATE_LIMITED).increment(1);
            Error::RateLimited { retry_after: wait }
        })
    }

    /// Closes every connection this driver runs, each after the frames
    /// already queued on it (the ack of a command that just committed), with
    /// [`CloseReason::GoingAway`]; connections that start afterwards are
    /// closed at once.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Whether [`Driver::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Runs one connection until it closes. `sink` is written by a task of
    /// its own (events go out while a command runs), so it must be `'static`.
    pub async fn run<Si, St>(&self, auth: Auth, sink: Si, stream: St)
    where
        Si: Sink<Outbound> + Send + Unpin + 'static,
        St: Stream<Item = Inbound> + Send + Unpin,
    {
        let mut conn = Conn {
            driver: self,
            sink,
            stream,
        };
        let credentials = match auth {
            Auth::Verified(credentials) => credentials,
            Auth::Failed(e) => {
                let message = e.public_message();
                return conn.auth_failed(&message, CloseReason::AuthFailed).await;
            }
            Auth::FirstFrame => match Box::pin(conn.authenticate_first()).await {
                Some(credentials) => credentials,
                None => return,
            },
        };
        Box::pin(conn.serve(credentials)).await;
    }
}

/// One connection being run.
struct Conn<'a, Si, St> {
    driver: &'a Driver,
    sink: Si,
    stream: St,
}

impl<Si, St> Conn<'_, Si, St>
where
    Si: Sink<Outbound> + Send + Unpin + 'static,
    St: Stream<Item = Inbound> + Send + Unpin,
{
    fn framing(&self) -> Framing {
        self.driver.inner.config.framing
    }

    /// Writes one frame straight to the sink (before the session exists).
    async fn write(&mut self, frame: Frame) -> bool {
        let text = frame.into_wire(self.framing());
        self.sink.send(Outbound::Text(text)).await.is_ok()
    }

    /// Sends the close and completes the closing handshake.
    async fn close(&mut self, reason: CloseReason, message: &str) {
        let close = Close {
            reason,
            message: message.to_owned(),
        };
        if self.sink.send(Outbound::Close(close)).await.is_err() {
            tracing::debug!("close not sent");
        }
        if self.sink.close().await.is_err() {
            tracing::debug!("close handshake incomplete");
        }
        await_client_close(&mut self.stream).await;
    }

    /// Turns away a connection that has no session: `frame`, then the close.
    async fn reject(&mut self, frame: Frame, reason: CloseReason, message: &str) {
        self.write(frame).await;
        self.close(reason, message).await;
    }

    async fn auth_failed(&mut self, message: &str, reason: CloseReason) {
        let event = ServerEvent::AuthenticationError {
            message: message.to_owned(),
        };
        self.reject(event.into(), reason, message).await;
    }

    /// Waits for an `authenticate` frame; answers anything else with
    /// `unauthenticated`. `None`: the connection is over.
    async fn authenticate_first(&mut self) -> Option<Credentials> {
        let deadline = Instant::now() + self.driver.inner.config.auth_timeout;
        loop {
            let inbound = tokio::select! {
                inbound = self.stream.next() => inbound,
                () = sleep_until(deadline) => {
                    self.auth_failed("authentication timed out", CloseReason::AuthFailed).await;
                    return None;
                }
            };
            let text = match inbound {
                Some(Inbound::Text(text)) => text,
                Some(Inbound::Binary) => {
                    self.write(Frame::error(None, &binary_refused())).await;
                    continue;
                }
                Some(Inbound::Heartbeat) => continue,
                Some(Inbound::TooLarge) => {
                    self.close(CloseReason::TooLarge, "message too big").await;
                    return None;
                }
                Some(Inbound::Close) => {
                    self.close(CloseReason::Normal, "").await;
                    return None;
                }
                None => return None,
            };
            let request = match parse_request(&text) {
                Ok(request) => request,
                Err(parse) => {
                    // Only a malformed `authenticate` is worth a detailed
                    // answer; anything else is refused for what it is: early.
                    let error = match parse.kind.as_deref() {
                        Some("authenticate") | None => parse.error,
                        Some(_) => early(),
                    };
                    self.write(Frame::error(parse.id, &error)).await;
                    continue;
                }
            };
            let ClientCommand::Authenticate { token } = request.command else {
                self.write(Frame::error(request.id, &early())).await;
                continue;
            };
            let credentials = match self.driver.authenticate(&token) {
                Ok(credentials) => credentials,
                Err(e) => {
                    let message = e.public_message();
                    self.auth_failed(&message, CloseReason::AuthFailed).await;
                    return None;
                }
            };
            if let Err(e) = self.driver.check_connect(&credentials.user_id) {
                // Refused as any rate-limited command is, then closed with
                // "try again later": the token is fine, so not 4001.
                self.write(rate_limit_exceeded(&e, "authenticate")).await;
                m::error(e.code());
                let message = e.public_message();
                self.reject(
                    Frame::error(request.id, &e),
                    CloseReason::TryAgainLater,
                    &message,
                )
                .await;
                return None;
            }
            if let Some(id) = request.id {
                #[derive(Serialize)]
                struct Authenticated<'a> {
                    user_id: &'a UserId,
                    device_id: &'a DeviceId,
                }
                let data = AckData::encode(&Authenticated {
                    user_id: &credentials.user_id,
                    device_id: &credentials.device_id,
                });
                if let Some(ack) = Frame::answer(Some(id), data) {
                    self.write(ack).await;
                }
            }
            return Some(credentials);
        }
    }

    /// The authenticated part of the connection's life.
    async fn serve(self, credentials: Credentials) {
        let Conn {
            driver,
            sink,
            mut stream,
        } = self;
        let inner = &driver.inner;
        // Until the session exists, frames go straight to the sink.
        let mut pending = Conn {
            driver,
            sink,
            stream: &mut stream,
        };
        let engine = &inner.engine;
        let actor = match engine
            .authorize(credentials.user_id.clone(), credentials.admin)
            .await
        {
            Ok(actor) => actor,
            Err(Error::Forbidden(why)) => {
                return pending.auth_failed(&why, CloseReason::Suspended).await;
            }
            Err(e) => {
                let message = e.public_message();
                return pending.auth_failed(&message, CloseReason::AuthFailed).await;
            }
        };
        let (transport, out) = outbox(inner.config.outgoing_queue);
        let transport = Arc::new(transport);
        let session =
            match Box::pin(engine.connect(actor, credentials.device_id.clone(), transport.clone()))
                .await
            {
                Ok(session) => session,
                Err(e) => {
                    let message = e.public_message();
                    return pending
                        .reject(Frame::error(None, &e), CloseReason::Policy, &message)
                        .await;
                }
            };
        let gauge = ConnectionGauge::open();
        tracing::info!(user = %credentials.user_id, device = %credentials.device_id, conn = %session.connection_id(), "connection open");
        // The writer drains the outgoing queue into the sink and pings; the
        // reader (this task) runs commands one at a time, so that one
        // client's messages are stored in the order it sent them.
        let mut writer = tokio::spawn(write_loop(
            pending.sink,
            out,
            inner.config.framing,
            inner.config.ping_interval,
        ));
        let expiry = expiry_deadline(credentials.valid_until, SystemTime::now(), Instant::now());
        let idle = inner.config.idle_timeout;
        let mut last_heard = Instant::now();
        // Both timers live as long as the connection: the idle one is pushed
        // back only when it fires early, not on every frame.
        let mut idle_timer = pin!(sleep_until(last_heard + idle));
        // Without a deadline the branch is disabled and the timer never
        // polled.
        let mut expiry_timer = pin!(sleep_until(expiry.unwrap_or(last_heard)));
        let mut shutdown = pin!(inner.shutdown.cancelled());
        // Whether the client's side is over (its close, the end of the
        // stream); if not, the server is the one closing.
        let mut client_done = false;
        let reason = loop {
            tokio::select! {
                inbound = stream.next() => {
                    last_heard = Instant::now();
                    match inbound {
                        // Boxed: a command's future is large and lives only
                        // while it runs, instead of in every idle connection.
                        Some(Inbound::Text(text)) => Box::pin(handle_text(driver, &session, &text)).await,
                        Some(Inbound::Binary) => session.send(Frame::error(None, &binary_refused())),
                        Some(Inbound::Heartbeat) => {}
                        Some(Inbound::Close) => {
                            // Answer the closing handshake (the writer sends
                            // the close and stops).
                            transport.close(CloseReason::Normal.code(), "");
                            client_done = true;
                            break "client closed";
                        }
                        Some(Inbound::TooLarge) => {
                            transport.close(CLOSE_TOO_BIG, "message too big");
                            break "message too big";
                        }
                        None => {
                            client_done = true;
                            break "client went away";
                        }
                    }
                }
                () = &mut idle_timer => {
                    if last_heard + idle > Instant::now() {
                        idle_timer.as_mut().reset(last_heard + idle);
                        continue;
                    }
                    // Going away: what is queued goes out first.
                    transport.close_after_queued(CLOSE_GOING_AWAY, "idle");
                    break "idle";
                }
                () = &mut expiry_timer, if expiry.is_some() => {
                    session.send(ServerEvent::AuthenticationError { message: "token expired".into() });
                    transport.close_after_queued(CLOSE_AUTH_FAILED, "token expired");
                    break "token expired";
                }
                () = &mut shutdown => {
                    // After the frames already queued: the ack of the command
                    // that just committed must reach the client before 1001.
                    transport.close_after_queued(CLOSE_GOING_AWAY, "server shutting down");
                    break "server shutting down";
                }
                done = &mut writer => {
                    break match done {
                        Ok(reason) => reason,
                        Err(_) => "writer failed",
                    };
                }
            }
        };
        let conn = session.connection_id();
        let user = session.user_id().clone();
        Box::pin(session.close()).await;
        // Let the writer flush what is queued (the close above).
        if !writer.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
            writer.abort();
        }
        drop(gauge);
        tracing::info!(%user, %conn, %reason, "connection closed");
        if !client_done {
            await_client_close(&mut stream).await;
        }
    }
}

/// Drains `out` into `sink` and pings; returns why it stopped.
async fn write_loop<Si>(
    mut sink: Si,
    mut out: Outbox,
    framing: Framing,
    ping_every: Option<Duration>,
) -> &'static str
where
    Si: Sink<Outbound> + Send + Unpin,
{
    // One timer for the connection's life, re-armed after each ping: the
    // writer wakes for every burst of frames, and a timer made anew each
    // time would be registered with the runtime each time.
    let period = ping_every.unwrap_or(Duration::MAX);
    let mut ping = pin!(sleep_until(
        Instant::now()
            .checked_add(period)
            .unwrap_or_else(far_future)
    ));
    loop {
        tokio::select! {
            item = out.next() => match item {
                Some(Outgoing::Frame(frame)) => {
                    if !send_burst(&mut sink, &mut out, frame, framing).await {
                        return "write failed";
                    }
                }
                Some(Outgoing::Close(code, message)) => {
                    let close = Close { reason: CloseReason::from_code(code), message };
                    if sink.send(Outbound::Close(close)).await.is_err() {
                        tracing::debug!("close not sent");
                    }
                    // Completes the closing handshake: flushes what the
                    // transport queued (a close reply).
                    if sink.close().await.is_err() {
                        tracing::debug!("close handshake incomplete");
                    }
                    return "closed by the server";
                }
                None => return "closed",
            },
            () = &mut ping, if ping_every.is_some() => {
                ping.as_mut().reset(Instant::now().checked_add(period).unwrap_or_else(far_future));
                if sink.send(Outbound::Ping).await.is_err() {
                    return "ping failed";
                }
            }
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + NO_EXPIRY_TIMER_BEYOND
}

/// Writes `first` and whatever else is queued right now, then flushes once:
/// a burst of fan-out costs one write to the socket instead of one per
/// frame, and a frame never waits for a later one.
async fn send_burst<Si>(sink: &mut Si, out: &mut Outbox, first: Frame, framing: Framing) -> bool
where
    Si: Sink<Outbound> + Unpin,
{
    let mut next = Some(first);
    let mut fed = 0;
    while let Some(frame) = next.take() {
        if sink
            .feed(Outbound::Text(frame.into_wire(framing)))
            .await
            .is_err()
        {
            return false;
        }
        fed += 1;
        if fed < BURST_FRAMES {
            next = out.try_next_frame();
        }
    }
    sink.flush().await.is_ok()
}

/// Completes a closing handshake the server started: reads and drops what
/// the client still sends, until its close or the end of the stream, for at
/// most [`CLOSE_LINGER`].
///
/// Dropping a WebSocket at once would answer the client's next write (a
/// pong, a command already in flight) with a TCP reset, and the client's
/// stack may then report the reset before the close frame it has not read
/// yet: the client would never learn the close code that says why.
async fn await_client_close<St>(stream: &mut St)
where
    St: Stream<Item = Inbound> + Unpin,
{
    let drain = async {
        while let Some(inbound) = stream.next().await {
            if inbound == Inbound::Close {
                break;
            }
        }
    };
    if tokio::time::timeout(CLOSE_LINGER, drain).await.is_err() {
        tracing::debug!("client did not answer the close");
    }
}

/// Runs one text frame of an authenticated connection: parse, rate limit,
/// execute, answer.
async fn handle_text(driver: &Driver, session: &Session, text: &str) {
    let request = match parse_request(text) {
        Ok(request) => request,
        Err(parse) => {
            m::error(parse.error.code());
            session.send(Frame::error(parse.id, &parse.error));
            return;
        }
    };
    let class = CommandClass::of(&request.command);
    if let Err(wait) = driver.inner.limiter.check(session.user_id(), class) {
        metrics::counter!(m::RATE_LIMITED).increment(1);
        let e = Error::RateLimited { retry_after: wait };
        session.send(rate_limit_exceeded(&e, &request.kind));
        m::error(e.code());
        session.send(Frame::error(request.id, &e));
        return;
    }
    let started = std::time::Instant::now();
    let kind = request.kind;
    m::command(&kind);
    let sending = matches!(request.command, ClientCommand::SendMessage(_));
    let outcome = execute(session, request.command).await;
    match &outcome {
        Ok(_) if sending => {
            metrics::counter!(m::MESSAGES_STORED).increment(1);
            metrics::histogram!(m::SEND_ACK_SECONDS).record(started.elapsed().as_secs_f64());
        }
        Ok(_) => {}
        Err(e) => m::error(e.code()),
    }
    if let Some(answer) = Frame::answer(request.id, outcome) {
        session.send(answer);
    }
}

/// `rate_limit_exceeded` for a command refused with `error`.
fn rate_limit_exceeded(error: &Error, command: &str) -> Frame {
    let wait = match error {
        Error::RateLimited { retry_after } => *retry_after,
        _ => Duration::ZERO,
    };
    ServerEvent::RateLimitExceeded {
        // At least 1: "retry after 0 ms" would invite a busy loop.
        retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
        command: command.to_owned(),
    }
    .into()
}

fn binary_refused() -> Error {
    Error::invalid("binary frames are not accepted; send JSON text")
}

fn early() -> Error {
    Error::Unauthenticated("authenticate first".into())
}

/// When a connection whose token verifies until `valid_until` must close,
/// on the runtime's clock, given the wall clock and the runtime's clock now.
/// `None`: no expiry timer (no expiry, or decades away, or past what the
/// clocks can represent). Never overflows.
fn expiry_deadline(
    valid_until: Option<SystemTime>,
    now: SystemTime,
    now_instant: Instant,
) -> Option<Instant> {
    let left = valid_until?.duration_since(now).unwrap_or(Duration::ZERO);
    if left > NO_EXPIRY_TIMER_BEYOND {
        return None;
    }
    now_instant.checked_add(left)
}

/// Counts one live connection in the `chat_connections` gauge for as long
/// as it is alive: dropped on every way out of the connection's task, an
/// early return or a panic included, so the gauge never counts a
/// connection that is gone.
#[derive(Debug)]
struct ConnectionGauge(());

impl ConnectionGauge {
    fn open() -> Self {
        metrics::gauge!(m::CONNECTIONS).increment(1.0);
        Self(())
    }
}

impl Drop for ConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(m::CONNECTIONS).decrement(1.0);
    }
}

#[cfg(test)]
mod tests;

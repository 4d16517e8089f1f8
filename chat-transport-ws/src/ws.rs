//! The `/ws` endpoint: authentication, the command loop, outgoing queue,
//! heartbeats.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use axum::{
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket},
    },
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use chat_core::{
    Error, Result, Session,
    protocol::{ClientCommand, ServerEvent, ack_frame, error_frame, execute, parse_request},
    transport::{
        CLOSE_AUTH_FAILED, CLOSE_GOING_AWAY, CLOSE_SUSPENDED, Outbox, Outgoing, Transport, outbox,
    },
};
use futures::{
    SinkExt, StreamExt,
    stream::{SplitSink, SplitStream},
};
use serde::Deserialize;
use tokio::time::{Instant, sleep_until};

use crate::{AppState, auth::Identity, http::ApiError, limits::CommandClass, metrics as m};

/// Close code: a message was larger than allowed.
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: policy violation (e.g. too many connections).
const CLOSE_POLICY: u16 = 1008;
/// Close code: try again later (IANA registry, RFC 6455 section 11.7): a
/// connection refused by the per-user connect rate limit after a
/// first-frame `authenticate`.
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;

#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
}

pub(crate) async fn upgrade(
    State(app): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| app.config.origin_allowed(o));
        if !allowed {
            return ApiError(Error::forbidden("origin not allowed")).into_response();
        }
    }
    let Ok(permit) = app.connections.clone().try_acquire_owned() else {
        return ApiError(Error::conflict(
            "the server holds all the connections it can",
        ))
        .into_response();
    };
    let token = crate::http::bearer(&headers)
        .map(str::to_owned)
        .or(query.token);
    // A token at upgrade is verified here, so that a user over the connect
    // rate limit is refused before the upgrade (429 `rate_limited` with
    // `Retry-After`). An invalid token is still refused after the upgrade,
    // with `authentication_error` and 4001, as PROTOCOL.md says.
    let credentials = token.map(|token| app.verifier.verify(&token));
    if let Some(Ok(identity)) = &credentials {
        if let Err(retry_after) = app.limiter.check_connect(&identity.user_id) {
            metrics::counter!(m::RATE_LIMITED).increment(1);
            return ApiError(Error::RateLimited { retry_after }).into_response();
        }
    }
    let max = app.config.max_frame_bytes;
    // tungstenite preallocates a 128 KiB read buffer per connection; chat
    // frames are small, and the buffer grows for a large one. 1 KiB keeps
    // an idle connection cheap.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            connection(app, socket, credentials).await;
        })
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// How long a connection the server is closing waits for the client's close
/// frame before it drops the socket. RFC 6455 sets no figure (Node's `ws`
/// waits 30 s); this matches how long a graceful shutdown waits for
/// connections, and the connection only holds its slot meanwhile.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// A serialized event as a text frame; `None` if it is not UTF-8 (never
/// for frames the engine built).
fn text_frame(frame: Bytes) -> Option<Message> {
    Utf8Bytes::try_from(frame).ok().map(Message::Text)
}

async fn send_text(sink: &mut Sink, frame: Bytes) -> bool {
    match text_frame(frame) {
        Some(message) => sink.send(message).await.is_ok(),
        None => false,
    }
}

/// Most frames queued at once that go out in one flush.
const BURST_FRAMES: usize = 64;

/// Writes `first` and whatever else is queued right now, then flushes once:
/// a burst of fan-out costs one write to the socket instead of one per frame,
/// and a frame never waits for a later one.
async fn send_burst(sink: &mut Sink, out: &mut Outbox, first: Bytes) -> bool {
    let mut next = Some(first);
    let mut fed = 0;
    while let Some(frame) = next.take() {
        let Some(message) = text_frame(frame) else {
            return false;
        };
        if sink.feed(message).await.is_err() {
            return false;
        }
        fed += 1;
        if fed < BURST_FRAMES {
            next = out.try_next_frame();
        }
    }
    sink.flush().await.is_ok()
}

async fn close(sink: &mut Sink, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    };
    if let Err(e) = sink.send(Message::Close(Some(frame))).await {
        tracing::debug!(error = %e, "close frame not sent");
    }
    // Completes the closing handshake: flushes a close reply the socket
    // queued for a client's close.
    if let Err(e) = sink.close().await {
        tracing::debug!(error = %e, "close handshake incomplete");
    }
}

/// Completes a closing handshake the server started (its close frame is
/// sent): reads and drops what the client still sends, until the client's
/// close frame or the end of the stream, for at most [`CLOSE_LINGER`].
///
/// Dropping the socket at once would answer the client's next write (a
/// pong, a command already in flight) with a TCP reset, and the client's
/// stack may then report the reset before the close frame it has not read
/// yet: the client would never learn the close code that says why.
async fn await_client_close(stream: &mut Stream) {
    let drain = async {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    };
    if tokio::time::timeout(CLOSE_LINGER, drain).await.is_err() {
        tracing::debug!("client did not answer the close frame");
    }
}

/// Turns away a connection that has no session (both halves are still
/// here): sends `frame`, then closes and completes the handshake.
async fn reject(sink: &mut Sink, stream: &mut Stream, frame: Bytes, code: u16, reason: &str) {
    send_text(sink, frame).await;
    close(sink, code, reason).await;
    await_client_close(stream).await;
}

async fn auth_failed(sink: &mut Sink, stream: &mut Stream, message: &str, code: u16) {
    let event = ServerEvent::AuthenticationError {
        message: message.to_owned(),
    };
    reject(sink, stream, event.to_frame(), code, message).await;
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

/// A token valid for longer than this gets no expiry timer: the
/// connection will not live that long, and an instant that far ahead may
/// not be representable.
const NO_EXPIRY_TIMER_BEYOND: Duration = Duration::from_secs(30 * 365 * 86_400);

/// When a connection whose token verifies until `valid_until` (its `exp`
/// plus the verifier's leeway, see [`crate::auth::Verifier::valid_until`])
/// must close, on the runtime's clock, given the wall clock and the
/// runtime's clock now. `None`: no expiry timer (the token is valid for
/// decades, or past what the clocks can represent). Never overflows.
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

/// A connection, past the upgrade. `credentials`: the verification of the
/// token given at upgrade (rate limited already), or `None` if there was
/// none and the first frame must `authenticate`.
async fn connection(app: AppState, socket: WebSocket, credentials: Option<Result<Identity>>) {
    let (mut sink, mut stream) = socket.split();
    let identity = match credentials {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => {
            let message = e.public_message();
            return auth_failed(&mut sink, &mut stream, &message, CLOSE_AUTH_FAILED).await;
        }
        None => match Box::pin(authenticate_first(&app, &mut sink, &mut stream)).await {
            Some(identity) => identity,
            None => return,
        },
    };
    let actor = match app
        .engine
        .authorize(identity.user_id.clone(), identity.admin)
        .await
    {
        Ok(actor) => actor,
        Err(Error::Forbidden(why)) => {
            return auth_failed(&mut sink, &mut stream, &why, CLOSE_SUSPENDED).await;
        }
        Err(e) => {
            let message = e.public_message();
            return auth_failed(&mut sink, &mut stream, &message, CLOSE_AUTH_FAILED).await;
        }
    };
    let (transport, mut out) = outbox(app.config.outgoing_queue);
    let transport = Arc::new(transport);
    let session = match Box::pin(app.engine.connect(
        actor,
        identity.device_id.clone(),
        transport.clone(),
    ))
    .await
    {
        Ok(session) => session,
        Err(e) => {
            let frame = error_frame(None, &e);
            return reject(
                &mut sink,
                &mut stream,
                frame,
                CLOSE_POLICY,
                &e.public_message(),
            )
            .await;
        }
    };
    let gauge = ConnectionGauge::open();
    tracing::info!(user = %identity.user_id, device = %identity.device_id, conn = %session.connection_id(), "connection open");

    // The writer drains the outgoing queue into the socket and pings; the
    // reader (this task) runs commands one at a time, so that one client's
    // messages are stored in the order it sent them.
    let ping_every = app.config.ping_interval;
    let mut writer = tokio::spawn(async move {
        // One timer for the connection's life, re-armed after each ping:
        // the writer wakes for every burst of frames, and a timer made anew
        // each time would be registered with the runtime each time.
        let ping = tokio::time::sleep(ping_every);
        tokio::pin!(ping);
        loop {
            tokio::select! {
                item = out.next() => match item {
                    Some(Outgoing::Frame(frame)) => {
                        if !send_burst(&mut sink, &mut out, frame).await {
                            return "write failed".to_owned();
                        }
                    }
                    Some(Outgoing::Close(code, reason)) => {
                        close(&mut sink, code, &reason).await;
                        return reason;
                    }
                    None => return "closed".to_owned(),
                },
                () = &mut ping => {
                    ping.as_mut().reset(Instant::now() + ping_every);
                    if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                        return "ping failed".to_owned();
                    }
                }
            }
        }
    });

    // Closed when the token stops verifying: at `exp` plus the leeway, as
    // verification itself decides.
    let expiry = expiry_deadline(
        app.verifier.valid_until(identity.expires_at),
        SystemTime::now(),
        Instant::now(),
    );
    let idle = app.config.idle_timeout;
    let mut last_heard = Instant::now();
    let mut shutdown = app.shutdown.clone();
    // Both timers live as long as the connection: the idle one is pushed
    // back only when it fires early, not on every frame.
    let idle_timer = sleep_until(last_heard + idle);
    // Without a deadline the branch is disabled and the timer never polled.
    let expiry_timer = sleep_until(expiry.unwrap_or(last_heard));
    tokio::pin!(idle_timer, expiry_timer);
    // Whether the client's side of the stream is over (its close frame, the
    // end, an error); if not, the server is the one closing.
    let mut client_done = false;
    let reason = loop {
        tokio::select! {
            msg = stream.next() => {
                last_heard = Instant::now();
                match msg {
                    // Boxed: a command's future is large and lives only
                    // while it runs, instead of in every idle connection.
                    Some(Ok(Message::Text(text))) => Box::pin(handle_text(&app, &session, &text)).await,
                    Some(Ok(Message::Binary(_))) => {
                        session.send(error_frame(None, &Error::invalid("binary frames are not accepted; send JSON text")));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) => {
                        // Answer the closing handshake (the writer sends
                        // the close frame and stops).
                        transport.close(1000, "");
                        client_done = true;
                        break "client closed".to_owned();
                    }
                    None => {
                        client_done = true;
                        break "client went away".to_owned();
                    }
                    Some(Err(e)) => {
                        let text = e.to_string().to_ascii_lowercase();
                        let too_big = text.contains("too long") || text.contains("capacity");
                        if too_big {
                            transport.close(CLOSE_TOO_BIG, "message too big");
                            break "message too big".to_owned();
                        }
                        client_done = true;
                        break format!("read error: {e}");
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
                break "idle".to_owned();
            }
            () = &mut expiry_timer, if expiry.is_some() => {
                session.send(ServerEvent::AuthenticationError { message: "token expired".into() }.to_frame());
                transport.close_after_queued(CLOSE_AUTH_FAILED, "token expired");
                break "token expired".to_owned();
            }
            _ = stopped(&mut shutdown) => {
                // After the frames already queued: the ack of the command
                // that just committed must reach the client before 1001.
                transport.close_after_queued(CLOSE_GOING_AWAY, "server shutting down");
                break "server shutting down".to_owned();
            }
            done = &mut writer => {
                break done.unwrap_or_else(|e| format!("writer failed: {e}"));
            }
        }
    };
    let conn = session.connection_id();
    let user = session.user_id().clone();
    Box::pin(session.close()).await;
    // Let the writer flush what is queued (the close frame above).
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

/// Waits for an `authenticate` frame; answers anything else with
/// `unauthenticated`.
async fn authenticate_first(
    app: &AppState,
    sink: &mut Sink,
    stream: &mut Stream,
) -> Option<Identity> {
    let deadline = Instant::now() + app.config.auth_timeout;
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = sleep_until(deadline) => {
                auth_failed(sink, stream, "authentication timed out", CLOSE_AUTH_FAILED).await;
                return None;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Binary(_))) => {
                let e = Error::invalid("binary frames are not accepted; send JSON text");
                send_text(sink, error_frame(None, &e)).await;
                continue;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            _ => return None,
        };
        match parse_request(&text) {
            Ok(req) => match req.command {
                ClientCommand::Authenticate { token } => match app.verifier.verify(&token) {
                    Ok(identity) => {
                        if let Err(wait) = app.limiter.check_connect(&identity.user_id) {
                            connect_rate_limited(sink, stream, req.id.as_deref(), wait).await;
                            return None;
                        }
                        if let Some(id) = req.id {
                            let data = serde_json::json!({
                                "user_id": identity.user_id,
                                "device_id": identity.device_id,
                            });
                            send_text(sink, ack_frame(&id, &data)).await;
                        }
                        return Some(identity);
                    }
                    Err(e) => {
                        auth_failed(sink, stream, &e.public_message(), CLOSE_AUTH_FAILED).await;
                        return None;
                    }
                },
                _ => {
                    let e = Error::Unauthenticated("authenticate first".into());
                    send_text(sink, error_frame(req.id.as_deref(), &e)).await;
                }
            },
            Err(parse) => {
                // Only a malformed `authenticate` is worth a detailed
                // answer; anything else is refused for what it is: early.
                let error = match parse.kind.as_deref() {
                    Some("authenticate") | None => parse.error,
                    Some(_) => Error::Unauthenticated("authenticate first".into()),
                };
                send_text(sink, error_frame(parse.id.as_deref(), &error)).await;
            }
        }
    }
}

/// Refuses a first-frame `authenticate` over the per-user connect rate
/// limit as any rate-limited command is refused (`rate_limit_exceeded`,
/// then `error` `rate_limited` answering its id), then closes with 1013
/// (try again later): the token is fine, so not 4001.
async fn connect_rate_limited(
    sink: &mut Sink,
    stream: &mut Stream,
    id: Option<&str>,
    wait: Duration,
) {
    metrics::counter!(m::RATE_LIMITED).increment(1);
    let event = ServerEvent::RateLimitExceeded {
        retry_after_ms: retry_after_ms(wait),
        command: "authenticate".to_owned(),
    };
    send_text(sink, event.to_frame()).await;
    let e = Error::RateLimited { retry_after: wait };
    m::error(e.code());
    let message = e.public_message();
    reject(
        sink,
        stream,
        error_frame(id, &e),
        CLOSE_TRY_AGAIN_LATER,
        &message,
    )
    .await;
}

/// A wait as the `retry_after_ms` of `rate_limit_exceeded`: at least 1.
fn retry_after_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1)
}

async fn handle_text(app: &AppState, session: &Session, text: &str) {
    let req = match parse_request(text) {
        Ok(req) => req,
        Err(parse) => {
            m::error(parse.error.code());
            session.send(error_frame(parse.id.as_deref(), &parse.error));
            return;
        }
    };
    if let Err(wait) = app
        .limiter
        .check(session.user_id(), CommandClass::of(&req.kind))
    {
        metrics::counter!(m::RATE_LIMITED).increment(1);
        let event = ServerEvent::RateLimitExceeded {
            retry_after_ms: retry_after_ms(wait),
            command: req.kind.clone(),
        };
        session.send(event.to_frame());
        let e = Error::RateLimited { retry_after: wait };
        m::error(e.code());
        session.send(error_frame(req.id.as_deref(), &e));
        return;
    }
    let started = std::time::Instant::now();
    let kind = req.kind;
    m::command(&kind);
    match execute(session, req.command).await {
        Ok(data) => {
            if kind == "send_message" {
                metrics::counter!(m::MESSAGES_STORED).increment(1);
                metrics::histogram!(m::SEND_ACK_SECONDS).record(started.elapsed().as_secs_f64());
            }
            if let Some(id) = req.id {
                session.send(data.ack_frame(&id));
            }
        }
        Err(e) => {
            m::error(e.code());
            session.send(error_frame(req.id.as_deref(), &e));
        }
    }
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is dropped here, before any other await.
    let _ = rx.wait_for(|stop| *stop).await.is_ok();
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicU64, Ordering},
        time::UNIX_EPOCH,
    };

    use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, SharedString, Unit};

    use super::*;
    use crate::auth::{AuthConfig, Verifier};

    #[test]
    fn the_expiry_deadline_is_exp_plus_the_leeway() {
        let verifier = Verifier::new(&AuthConfig::hs256("k")).unwrap();
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = Instant::now();
        // exp 10 s ahead, 30 s of leeway: closed 40 s from now.
        assert_eq!(
            expiry_deadline(verifier.valid_until(1_000_010), now, at),
            Some(at + Duration::from_secs(40))
        );
        // Expired 10 s ago, still within the leeway: 20 s left.
        assert_eq!(
            expiry_deadline(verifier.valid_until(999_990), now, at),
            Some(at + Duration::from_secs(20))
        );
        // Past the leeway: at once.
        assert_eq!(
            expiry_deadline(verifier.valid_until(999_000), now, at),
            Some(at)
        );
    }

    #[test]
    fn a_far_exp_means_no_timer_and_no_overflow() {
        let verifier = Verifier::new(&AuthConfig::hs256("k")).unwrap();
        let now = SystemTime::now();
        let at = Instant::now();
        for exp in [u64::MAX, u64::MAX - 30, 1 << 62, i64::MAX as u64, 1 << 40] {
            assert_eq!(
                expiry_deadline(verifier.valid_until(exp), now, at),
                None,
                "{exp}"
            );
        }
        assert_eq!(expiry_deadline(None, now, at), None);
    }

    /// A recorder whose gauges all share one value.
    #[derive(Debug, Default)]
    struct OneGauge(Arc<AtomicU64>);

    impl OneGauge {
        fn value(&self) -> f64 {
            f64::from_bits(self.0.load(Ordering::SeqCst))
        }
    }

    impl metrics::Recorder for OneGauge {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            assert_eq!(key.name(), m::CONNECTIONS);
            Gauge::from_arc(self.0.clone())
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn the_connection_gauge_goes_down_when_the_task_panics() {
        let recorder = OneGauge::default();
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            runtime.block_on(async {
                let open = ConnectionGauge::open();
                assert_eq!(recorder.value(), 1.0);
                let task = tokio::spawn(async {
                    let _gauge = ConnectionGauge::open();
                    tokio::task::yield_now().await;
                    panic!("a connection task fails");
                });
                assert!(task.await.unwrap_err().is_panic());
                assert_eq!(recorder.value(), 1.0, "only the live one counts");
                drop(open);
            });
        });
        assert_eq!(recorder.value(), 0.0);
    }
}

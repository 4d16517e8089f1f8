//! The `/ws` endpoint: authentication, the command loop, outgoing queue,
//! heartbeats.

use std::{sync::Arc, time::Duration};

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
    Error, Session,
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

use crate::{
    AppState,
    auth::{Identity, unix_now},
    http::ApiError,
    limits::CommandClass,
    metrics as m,
};

/// Close code: a message was larger than allowed.
const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: policy violation (e.g. too many connections).
const CLOSE_POLICY: u16 = 1008;

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
            connection(app, socket, token).await;
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

async fn connection(app: AppState, socket: WebSocket, token: Option<String>) {
    let (mut sink, mut stream) = socket.split();
    let identity = match token {
        Some(token) => match app.verifier.verify(&token) {
            Ok(identity) => identity,
            Err(e) => {
                let message = e.public_message();
                return auth_failed(&mut sink, &mut stream, &message, CLOSE_AUTH_FAILED).await;
            }
        },
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
    metrics::gauge!(m::CONNECTIONS).increment(1.0);
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

    let expiry =
        Instant::now() + Duration::from_secs(identity.expires_at.saturating_sub(unix_now()));
    let idle = app.config.idle_timeout;
    let mut last_heard = Instant::now();
    let mut shutdown = app.shutdown.clone();
    // Both timers live as long as the connection: the idle one is pushed
    // back only when it fires early, not on every frame.
    let idle_timer = sleep_until(last_heard + idle);
    let expiry_timer = sleep_until(expiry);
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
                transport.close(CLOSE_GOING_AWAY, "idle");
                break "idle".to_owned();
            }
            () = &mut expiry_timer => {
                session.send(ServerEvent::AuthenticationError { message: "token expired".into() }.to_frame());
                transport.close_after_queued(CLOSE_AUTH_FAILED, "token expired");
                break "token expired".to_owned();
            }
            _ = stopped(&mut shutdown) => {
                transport.close(CLOSE_GOING_AWAY, "server shutting down");
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
    metrics::gauge!(m::CONNECTIONS).decrement(1.0);
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
        let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        let event = ServerEvent::RateLimitExceeded {
            retry_after_ms,
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

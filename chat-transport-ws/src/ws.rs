//! The `/ws` endpoint: the upgrade (origin, connection slots, a token in
//! the request), then socket glue around chat-core's connection driver,
//! which runs everything else.

use axum::{
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, Utf8Bytes},
    },
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use chat_core::{
    Error,
    protocol::{Auth, Inbound, Outbound},
};
use std::{
    pin::Pin,
    task::{Context, Poll},
};

use futures::{Sink, Stream, StreamExt, future::ready};
use serde::Deserialize;

use crate::{AppState, http::ApiError};

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
    if !app.config.request_origin_allowed(&headers) {
        return ApiError(Error::forbidden("origin not allowed")).into_response();
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
    // with `authentication_error` and 4001, as `docs/protocol.md` says.
    let auth = match token.map(|token| app.driver.authenticate(&token)) {
        None => Auth::FirstFrame,
        Some(Err(e)) => Auth::Failed(e),
        Some(Ok(credentials)) => {
            if let Err(e) = app.driver.check_connect(&credentials.user_id) {
                return ApiError(e).into_response();
            }
            Auth::Verified(credentials)
        }
    };
    let max = app.config.max_frame_bytes;
    let tracker = app.tasks.clone();
    // tungstenite preallocates a 128 KiB read buffer per connection; chat
    // frames are small, and the buffer grows for a large one. 1 KiB keeps
    // an idle connection cheap.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| {
            // Tracked: a graceful shutdown waits for the connection to
            // finish closing.
            tracker.track_future(async move {
                let _permit = permit;
                let (sink, stream) = socket.split();
                Box::pin(app.driver.run(auth, outbound(sink), inbound(stream))).await;
            })
        })
}

/// The socket's messages as the driver reads them. The stream ends at a
/// read error; a message over the size limit is [`Inbound::TooLarge`].
fn inbound(
    stream: impl Stream<Item = Result<Message, axum::Error>> + Send + Unpin,
) -> impl Stream<Item = Inbound> + Send + Unpin {
    stream.scan((), |(), message| {
        ready(match message {
            Ok(Message::Text(text)) => Some(Inbound::Text(text.as_str().to_owned())),
            Ok(Message::Binary(_)) => Some(Inbound::Binary),
            Ok(Message::Ping(_) | Message::Pong(_)) => Some(Inbound::Heartbeat),
            Ok(Message::Close(_)) => Some(Inbound::Close),
            Err(e) if too_large(&e) => Some(Inbound::TooLarge),
            Err(_) => None,
        })
    })
}

/// Whether a read failed because a message or frame was over the limit:
/// tungstenite's capacity error, found by its type (axum wraps it).
fn too_large(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|inner| inner.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// The socket as the driver writes it: each [`Outbound`] becomes one
/// WebSocket message. A direct adapter rather than `SinkExt::with`, which
/// would wrap every frame of the fan-out in a future of its own.
fn outbound<S>(sink: S) -> WsSink<S>
where
    S: Sink<Message, Error = axum::Error> + Send + Unpin + 'static,
{
    WsSink(sink)
}

/// See [`outbound`].
struct WsSink<S>(S);

impl<S> Sink<Outbound> for WsSink<S>
where
    S: Sink<Message, Error = axum::Error> + Unpin,
{
    type Error = axum::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: Outbound) -> Result<(), Self::Error> {
        let message = match item {
            // Frames are made of serde_json's output: always UTF-8.
            Outbound::Text(text) => {
                Message::Text(Utf8Bytes::try_from(text).map_err(axum::Error::new)?)
            }
            Outbound::Ping => Message::Ping(Bytes::new()),
            Outbound::Close(close) => Message::Close(Some(CloseFrame {
                code: close.reason.code(),
                reason: Utf8Bytes::from(close.message),
            })),
            // A kind of output this transport does not know: nothing on the
            // wire is better than a wrong frame.
            _ => return Ok(()),
        };
        Pin::new(&mut self.0).start_send(message)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}

//! WebSocket protocol, HTTP API and JWT authentication for the chat engine,
//! on axum.
//!
//! This crate translates: it authenticates connections and requests, limits
//! what clients can make the server do, and turns frames and HTTP calls into
//! [`ChatEngine`] calls through [`chat_core::protocol`]. It holds no chat
//! rule of its own.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`auth`] | JWT verification (one algorithm, `exp` required) |
//! | `ws` | `GET /ws`: authentication, command loop, outgoing queue, heartbeats |
//! | `http` | the HTTP API of PROTOCOL.md section 4 |
//! | [`limits`] | per-user token buckets per command class, and for connects |
//! | [`metrics`] | metric names |
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use chat_core::{ChatEngine, MemoryStore};
//! use chat_transport_ws::{WsConfig, auth::AuthConfig, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = ChatEngine::builder(Arc::new(MemoryStore::new())).build().await?;
//! let config = WsConfig::new(AuthConfig::hs256("a long random secret"));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! // Serves until `stop` is sent or dropped (the server wires SIGTERM here).
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! serve(listener, engine, config, async { let _ = stopped.await; }).await?;
//! # drop(stop);
//! # Ok(())
//! # }
//! ```

pub mod auth;
mod config;
mod http;
pub mod limits;
pub mod metrics;
mod ws;

use std::{future::Future, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post, put},
};
pub use chat_core;
use chat_core::{ChatEngine, Result};
pub use config::{MetricsRenderer, WsConfig};
pub use http::ApiError;
use tokio::{net::TcpListener, sync::watch};

use crate::{auth::Verifier, limits::Limiter};

/// What every handler shares.
#[derive(Debug, Clone)]
struct AppState {
    engine: ChatEngine,
    config: Arc<WsConfig>,
    verifier: Arc<Verifier>,
    limiter: Limiter,
    connections: Arc<tokio::sync::Semaphore>,
    shutdown: watch::Receiver<bool>,
}

/// The routes of PROTOCOL.md: `/ws`, the HTTP API, `/healthz`, `/metrics`
/// and, in dev mode, `/dev/token`.
fn router(state: AppState) -> Router {
    use http::*;
    let body_limit = state.config.max_body_bytes;
    let api = Router::new()
        .route("/chat/sessions", get(list_sessions).post(open_direct))
        .route(
            "/chat/sessions/{id}",
            get(get_session).put(update_session).delete(leave_session),
        )
        .route("/chat/sessions/{id}/messages", get(session_messages))
        .route("/chat/upload/{id}", post(not_implemented))
        .route("/chat/media/{id}", get(not_implemented))
        .route(
            "/chat/messages/{id}",
            get(get_message).put(edit_message).delete(delete_message),
        )
        .route("/chat/messages/{id}/read", post(read_up_to))
        .route("/chat/messages/{id}/report", post(report_message))
        .route("/chat/groups", post(create_group))
        .route("/chat/groups/{id}", put(update_group))
        .route("/chat/groups/{id}/invite", post(invite))
        .route(
            "/chat/groups/{id}/participants/{uid}",
            axum::routing::delete(remove_participant),
        )
        .route("/chat/sync", get(sync))
        .route("/chat/blocks", get(list_blocks))
        .route("/chat/blocks/{user_id}", post(block).delete(unblock))
        .route("/users/me/export", get(not_implemented))
        .route("/users/me", axum::routing::delete(not_implemented))
        .route("/users/me/privacy", put(set_privacy))
        .route("/admin/reports", get(list_reports))
        .route("/admin/reports/{id}/resolve", post(resolve_report))
        .route("/admin/users/{id}/suspend", post(suspend).delete(unsuspend))
        .method_not_allowed_fallback(http::wrong_method);
    Router::new()
        .route("/ws", get(ws::upgrade))
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/dev/token", get(dev_token))
        .fallback(http::no_route)
        .method_not_allowed_fallback(http::wrong_method)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Serves the protocol on `listener` until `shutdown` completes, then stops
/// gracefully: no new connections, live connections closed with 1001 after
/// their current command and the frames already queued for them (that
/// command's ack), queued writes committed (the engine's lanes are drained),
/// and returns.
///
/// The caller owns the listener (tests bind `127.0.0.1:0`).
pub async fn serve(
    listener: TcpListener,
    engine: ChatEngine,
    config: WsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let verifier = Arc::new(Verifier::new(&config.auth)?);
    let limiter = Limiter::new(config.rate_limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState {
        connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
        engine: engine.clone(),
        config: Arc::new(config),
        verifier,
        limiter: limiter.clone(),
        shutdown: stop_rx,
    };
    let connections = state.connections.clone();
    let max_connections = state.config.max_connections;
    let janitor = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limiter.forget_idle();
        }
    });
    let app = router(state);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: closing connections");
        let _ = stop_tx.send(true);
    };
    // Without TCP_NODELAY, a second small frame written before the client
    // acknowledges the first (an ack right after a message_received) waits
    // for the client's delayed ACK: ~40 ms on Linux.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    });
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(signal)
        .await;
    // Upgraded WebSocket connections outlive axum's own bookkeeping: wait
    // until each has closed (they were told to), at most a few seconds.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while connections.available_permits() < max_connections
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    janitor.abort();
    engine.shutdown().await;
    tracing::info!("shut down");
    served.map_err(chat_core::Error::backend)
}

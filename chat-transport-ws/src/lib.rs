//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`auth`] | JWT verification (one algorithm, `exp` required) |
//! | `ws` | `GET /ws`: the upgrade, then socket glue around chat-core's [connection driver](chat_core::protocol::driver) |
//! | `socketio` | `/socket.io/` (cargo feature `socketio`): socket.io-client v4 on the same driver |
//! | `http` | the HTTP API of `docs/protocol.md` section 4 |
//! | `server` | the accept loop of [`serve`]: header read timeout, graceful shutdown |
//!
//! Rate limits ([`limits`]) and metric names ([`metrics`]) are chat-core's,
//! re-exported here: every transport enforces and counts the same ones.
//! The protocol itself is described for client authors in the repository's
//! `docs/protocol.md`.
//!
//! # Serving
//!
//! [`serve`] runs the whole server on a listener:
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
//! serve(listener, engine.clone(), config, async { let _ = stopped.await; }).await?;
//! // The engine is the caller's: drain its write lanes once serving stopped.
//! engine.shutdown().await;
//! # drop(stop);
//! # Ok(())
//! # }
//! ```
//!
//! # Embedding
//!
//! [`router`] gives the same routes as an [`axum::Router`] to nest in an
//! application's own:
//!
//! ```
//! use std::sync::Arc;
//! use axum::{Router, routing::get};
//! use chat_core::{ChatEngine, MemoryStore};
//! use chat_transport_ws::{WsConfig, auth::AuthConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = ChatEngine::builder(Arc::new(MemoryStore::new())).build().await?;
//! let chat = chat_transport_ws::router(engine.clone(), WsConfig::new(AuthConfig::hs256("secret")))?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "my app" }))
//!     .nest("/chat", chat); // /chat/ws, /chat/api/v1/..., /chat/healthz
//! # let _ = app;
//! // On shutdown, `engine.shutdown()` closes the chat connections (1001)
//! // after what is queued for them, and drains the write lanes.
//! engine.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod auth;
mod config;
mod http;
mod server;
#[cfg(feature = "socketio")]
pub mod socketio;
mod ws;

pub use chat_core::{limits, metrics};

use std::{future::Future, sync::Arc};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    routing::{get, post, put},
};
pub use chat_core;
use chat_core::{ChatEngine, Result, protocol::Driver};
pub use config::{MetricsRenderer, WsConfig};
pub use http::ApiError;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::auth::Verifier;

/// What every handler shares.
#[derive(Debug, Clone)]
struct AppState {
    engine: ChatEngine,
    config: Arc<WsConfig>,
    verifier: Arc<Verifier>,
    /// Runs the WebSocket connections.
    driver: Driver,
    /// Live WebSocket connections, at most `max_connections`.
    connections: Arc<tokio::sync::Semaphore>,
    /// Connection tasks, which outlive the HTTP request that upgraded them:
    /// a graceful shutdown waits for them.
    tasks: TaskTracker,
}

impl AppState {
    fn new(engine: ChatEngine, config: WsConfig) -> Result<Self> {
        let verifier = Arc::new(Verifier::new(&config.auth)?);
        let driver = Driver::new(engine.clone(), verifier.clone(), config.driver());
        Ok(Self {
            connections: Arc::new(tokio::sync::Semaphore::new(config.max_connections)),
            engine,
            config: Arc::new(config),
            verifier,
            driver,
            tasks: TaskTracker::new(),
        })
    }
}

/// The routes of `docs/protocol.md` (`/ws`, the HTTP API under `/api/v1`,
/// `/healthz`, `/metrics` and, in dev mode, `/dev/token`) as a router to
/// nest in an application's own; see the [crate docs](crate#embedding).
///
/// Fails if the authentication configuration does not load (a PEM key
/// that does not parse). The request limits of [`WsConfig`]
/// (`max_uri_bytes`, `max_header_bytes`, bodies) apply; the header read
/// timeout is a property of the server, which the application runs.
pub fn router(engine: ChatEngine, config: WsConfig) -> Result<Router> {
    Ok(routes(AppState::new(engine, config)?))
}

fn routes(state: AppState) -> Router {
    use http::*;
    let body_limit = state.config.max_body_bytes;
    let upload_limit = http::upload_body_limit(&state);
    let api = Router::new()
        .route("/chat/sessions", get(list_sessions).post(open_direct))
        .route(
            "/chat/sessions/{id}",
            get(get_session).put(update_session).delete(leave_session),
        )
        .route("/chat/sessions/{id}/messages", get(session_messages))
        .route(
            "/chat/upload/{id}",
            post(upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/chat/media/{id}", get(download))
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
        .route("/users/me/export", get(export))
        .route("/users/me", axum::routing::delete(erase_me))
        .route("/admin/users/{id}", axum::routing::delete(erase_user))
        .route("/users/me/privacy", put(set_privacy))
        .route("/admin/audit", get(audit_log))
        .route("/admin/stats", get(stats))
        .route("/admin/reports", get(list_reports))
        .route("/admin/reports/{id}/resolve", post(resolve_report))
        .route("/admin/users/{id}/suspend", post(suspend).delete(unsuspend))
        .route("/mls/key-packages", post(publish_key_packages))
        .route("/mls/key-packages/claim", post(claim_key_packages))
        .method_not_allowed_fallback(http::wrong_method);
    let router = Router::new()
        .route("/ws", get(ws::upgrade))
        .nest("/api/v1", api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/dev/token", get(dev_token))
        .fallback(http::no_route)
        .method_not_allowed_fallback(http::wrong_method)
        .layer(DefaultBodyLimit::max(body_limit));
    // `/socket.io/` is answered by its layer before routing; the request
    // limits below wrap it too.
    #[cfg(feature = "socketio")]
    let router = router.layer(socketio::layer(&state));
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            http::request_limits,
        ))
        .with_state(state)
}

/// Serves the protocol on `listener` until `shutdown` completes, then stops
/// gracefully: no new connections or requests, HTTP requests in flight
/// answered, WebSocket connections closed with 1001 after their current
/// command and the frames already queued for them (that command's ack), and
/// returns once they are closed (at most a few seconds).
///
/// The engine is the caller's and is not shut down here: other transports
/// may still use it. Call [`ChatEngine::shutdown`] afterwards to drain its
/// write lanes (the example server does).
///
/// The caller owns the listener (tests bind `127.0.0.1:0`).
pub async fn serve(
    listener: TcpListener,
    engine: ChatEngine,
    config: WsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(listener, engine, config, Router::new(), shutdown).await
}

/// [`serve`], with the application's own routes (`chat-server` adds its
/// web client at `/`) merged into the protocol's. They must not overlap
/// the protocol's paths; requests that match neither get the protocol's
/// `not_found`.
pub async fn serve_with(
    listener: TcpListener,
    engine: ChatEngine,
    config: WsConfig,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = AppState::new(engine, config)?;
    let (driver, tasks) = (state.driver.clone(), state.tasks.clone());
    let header_read_timeout = state.config.header_read_timeout;
    let app = routes(state).merge(extra);
    let shutdown = async move {
        shutdown.await;
        tracing::info!("shutting down: closing connections");
        driver.shutdown();
    };
    let served = server::run(listener, app, header_read_timeout, shutdown).await;
    // Upgraded WebSocket connections outlive the HTTP connections that
    // carried them: wait until each has closed (they were told to).
    tasks.close();
    if tokio::time::timeout(server::DRAIN, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(left = tasks.len(), "connections still open after the drain");
    }
    tracing::info!("stopped serving");
    served.map_err(chat_core::Error::backend)
}

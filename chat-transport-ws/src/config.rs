//! Configuration of the transport.

use std::{sync::Arc, time::Duration};

use chat_core::{event::Framing, limits::RateLimits, protocol::DriverConfig};

use crate::auth::AuthConfig;

/// Renders the metrics page (`/metrics`); the server installs a Prometheus
/// recorder and hands its renderer here.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Everything the WebSocket and HTTP endpoints need besides the engine.
#[derive(Clone)]
#[non_exhaustive]
pub struct WsConfig {
    /// How tokens are verified.
    pub auth: AuthConfig,
    /// Browser origins allowed to connect (`Origin` header). A request
    /// without `Origin` is a non-browser client and is allowed; `"*"`
    /// allows every origin.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message, in bytes (larger: close 1009).
    pub max_frame_bytes: usize,
    /// Largest JSON body of an HTTP request, in bytes.
    pub max_body_bytes: usize,
    /// Frames queued per connection before it counts as too slow (4008).
    pub outgoing_queue: usize,
    /// Time to authenticate after the upgrade.
    pub auth_timeout: Duration,
    /// Interval of WebSocket pings.
    pub ping_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long is
    /// dropped.
    pub idle_timeout: Duration,
    /// Most live WebSocket connections of this node.
    pub max_connections: usize,
    /// Per-user budgets: commands by class, and opening connections.
    pub rate_limits: RateLimits,
    /// In `--dev` mode, the HS256 secret with which `GET /dev/token` signs.
    pub dev_token_secret: Option<Vec<u8>>,
    /// Renders `/metrics`; `None` answers 404.
    pub metrics: Option<MetricsRenderer>,
    /// A client that has not sent a request's whole header section this
    /// long after connecting (or after its previous request) is
    /// disconnected: connections that trickle headers in cannot hold
    /// sockets open for free. Only [`serve`](crate::serve) applies it; an
    /// application that nests [`router`](crate::router) sets its own.
    pub header_read_timeout: Duration,
    /// Longest request target (path and query), in bytes: longer ones get
    /// 414 with the error body.
    pub max_uri_bytes: usize,
    /// Largest header section (names and values), in bytes: larger ones get
    /// 431 with the error body.
    pub max_header_bytes: usize,
}

impl std::fmt::Debug for WsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsConfig")
            .field("auth", &self.auth)
            .field("allowed_origins", &self.allowed_origins)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("outgoing_queue", &self.outgoing_queue)
            .field("max_connections", &self.max_connections)
            .field("rate_limits", &self.rate_limits)
            .field("dev_tokens", &self.dev_token_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl WsConfig {
    /// Defaults around an authentication configuration.
    pub fn new(auth: AuthConfig) -> Self {
        Self {
            auth,
            allowed_origins: Vec::new(),
            max_frame_bytes: 64 * 1024,
            max_body_bytes: 256 * 1024,
            outgoing_queue: 1024,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(75),
            max_connections: 50_000,
            rate_limits: RateLimits::default(),
            dev_token_secret: None,
            metrics: None,
            header_read_timeout: Duration::from_secs(10),
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
        }
    }

    /// The connection driver's settings.
    pub fn driver(&self) -> DriverConfig {
        let mut driver = DriverConfig::default();
        driver.auth_timeout = self.auth_timeout;
        driver.idle_timeout = self.idle_timeout;
        driver.ping_interval = Some(self.ping_interval);
        driver.outgoing_queue = self.outgoing_queue;
        driver.framing = Framing::Json;
        driver.rate_limits = self.rate_limits;
        driver
    }

    /// Whether a browser page from the request's `Origin` may connect:
    /// pages this server serves itself (the origin's host is the request's
    /// `Host`), and the configured origins. A request without `Origin` is
    /// not from a browser page and is allowed.
    pub(crate) fn request_origin_allowed(&self, headers: &axum::http::HeaderMap) -> bool {
        use axum::http::header;
        let Some(origin) = headers.get(header::ORIGIN) else {
            return true;
        };
        let Ok(origin) = origin.to_str() else {
            return false;
        };
        let own = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .is_some_and(|host| {
                origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
            });
        own || self.origin_allowed(origin)
    }

    /// Whether a browser from `origin` may connect.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allowed_origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin.trim_end_matches('/')))
    }
}

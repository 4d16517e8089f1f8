//! Shared by the integration tests: where Redis is, whether it answers, and
//! per-test key prefixes that are deleted afterwards.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use chat_bus_redis::{
    RedisBus, RedisBusConfig,
    fred::{
        prelude::{ClientInterface, ClientLike, Config, LuaInterface},
        types::{Builder, client::ClientPauseKind},
    },
};
use chat_core::{
    Bus, UserId,
    bus::{Action, Audience, Delivery},
    testing::RecordingSink,
};

/// The TTL of test clusters: short, so node death shows within seconds.
pub const TTL: Duration = Duration::from_secs(2);

/// `REDIS_URL`, or the standard local Redis.
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether an unreachable service must fail the tests (CI) rather than
/// skip them.
pub fn services_required() -> bool {
    std::env::var("CHAT_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// A short-lived plain client, or `None` if Redis does not answer.
async fn client(url: &str) -> Option<chat_bus_redis::fred::prelude::Client> {
    let config = Config::from_url(url).ok()?;
    let mut builder = Builder::from_config(config);
    builder.with_connection_config(|c| c.connection_timeout = Duration::from_secs(2));
    let client = builder.build().ok()?;
    let up = tokio::time::timeout(Duration::from_secs(3), async {
        client.init().await.ok()?;
        client.ping::<String>(None).await.ok()
    })
    .await
    .ok()
    .flatten()
    .is_some();
    up.then_some(client)
}

/// Logs to the test's output when `RUST_LOG` asks for it
/// (`RUST_LOG=chat_bus_redis=debug cargo test -- --nocapture`).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Whether the test can run: true if Redis answers; otherwise fails the test
/// when services are required, or says loudly that it is skipped.
pub async fn redis_available(test: &str) -> bool {
    init_logs();
    let url = redis_url();
    if let Some(c) = client(&url).await {
        let _ = c.quit().await;
        return true;
    }
    if services_required() {
        panic!(
            "Redis unreachable at {url} and CHAT_REQUIRE_SERVICES=1: start Redis (or set \
             REDIS_URL) to run {test}"
        );
    }
    eprintln!(
        "SKIPPED: Redis unreachable at {url} ({test}); set CHAT_REQUIRE_SERVICES=1 to fail instead"
    );
    false
}

/// A key prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("chat-bus-test:{}", ulid::Ulid::new())
}

/// Runs `script` with `keys` and `args` on the test Redis.
pub async fn eval(
    script: &str,
    keys: Vec<String>,
    args: Vec<String>,
) -> chat_bus_redis::fred::types::Value {
    let Some(c) = client(&redis_url()).await else {
        panic!("Redis went away during the test");
    };
    let value = match c.eval(script, keys, args).await {
        Ok(v) => v,
        Err(e) => panic!("EVAL failed: {e}"),
    };
    let _ = c.quit().await;
    value
}

/// Deletes every key under `prefix`.
pub async fn delete_prefix(prefix: &str) {
    let script = "local n = 0 \
        for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) n = n + 1 end \
        return n";
    if let Some(c) = client(&redis_url()).await {
        let _ = c
            .eval::<i64, _, _, _>(script, Vec::<String>::new(), vec![format!("{prefix}:*")])
            .await;
        let _ = c.quit().await;
    }
}

/// A test's key prefix, whose keys are deleted when it is dropped, even if
/// the test panicked. Declare it before the buses, so that they are dropped
/// first.
pub struct Prefix(pub String);

impl Prefix {
    /// A fresh prefix.
    pub fn new() -> Self {
        Self(unique_prefix())
    }
}

impl std::ops::Deref for Prefix {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        // Drop cannot await: clean up on a runtime of its own.
        let cleanup = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(delete_prefix(&prefix));
            }
        });
        let _ = cleanup.join();
    }
}

/// The config of test node `name` in the cluster of `prefix`.
pub fn config(prefix: &str, name: &str) -> RedisBusConfig {
    RedisBusConfig::default()
        .key_prefix(prefix)
        .node_id(name)
        .presence_ttl(TTL)
}

/// Node `name` of the cluster of `prefix`, ready.
pub async fn node(prefix: &str, name: &str) -> Arc<RedisBus> {
    node_at(&redis_url(), config(prefix, name)).await
}

/// A node with `config` on the Redis at `url`, ready.
pub async fn node_at(url: &str, config: RedisBusConfig) -> Arc<RedisBus> {
    let name = config.node_id.clone();
    let bus = match RedisBus::connect(url, config).await {
        Ok(bus) => bus,
        Err(e) => panic!("RedisBus::connect: {e}"),
    };
    assert!(bus.is_ready(), "{name} did not join the cluster: {bus:?}");
    Arc::new(bus)
}

/// `node` as the trait object the engine holds.
pub fn dyn_bus(bus: Arc<RedisBus>) -> Arc<dyn Bus> {
    bus
}

/// A free loopback port with nothing listening on it.
pub fn free_port() -> u16 {
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("bind: {e}"),
    };
    match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => panic!("local_addr: {e}"),
    }
}

/// A `redis-server` of the test's own, on a free loopback port: for tests
/// that stop, restart or pause Redis without disturbing the shared one.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on `port`, or returns `None` if `redis-server` is not
    /// installed.
    pub async fn start(port: u16) -> Option<Self> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let redis = Self {
            port,
            child: Some(child),
        };
        let url = redis.url();
        let up = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(up.is_ok(), "private redis-server did not come up at {url}");
        Some(redis)
    }

    /// Starts one on a free port; if `redis-server` is not installed, fails
    /// the test when services are required, or says it is skipped.
    pub async fn start_or_skip(test: &str) -> Option<Self> {
        init_logs();
        if let Some(redis) = Self::start(free_port()).await {
            return Some(redis);
        }
        if services_required() {
            panic!("redis-server is not installed and CHAT_REQUIRE_SERVICES=1 ({test})");
        }
        eprintln!("SKIPPED: redis-server not installed ({test})");
        None
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `CLIENT PAUSE <pause> WRITE` on the Redis at `url`: for that long, every
/// client's scripts and writes wait (reads and pub/sub delivery go on).
pub async fn pause_writes(url: &str, pause: Duration) {
    let Some(c) = client(url).await else {
        panic!("Redis at {url} does not answer");
    };
    let ms = i64::try_from(pause.as_millis()).unwrap_or(i64::MAX);
    if let Err(e) = c.client_pause(ms, Some(ClientPauseKind::Write)).await {
        panic!("CLIENT PAUSE: {e}");
    }
    // QUIT is not a write: it is not paused.
    let _ = c.quit().await;
}

/// A user id that must parse.
pub fn user(name: &str) -> UserId {
    match UserId::new(name) {
        Ok(u) => u,
        Err(e) => panic!("{e}"),
    }
}

/// A delivery of a small JSON frame to `users`.
pub fn frame(users: &[&UserId], text: &str) -> Delivery {
    Delivery {
        audience: Audience::users(users.iter().map(|u| (*u).clone()).collect::<Vec<_>>()),
        action: Action::Event(
            chat_core::event::Event::from_frame(Bytes::from(format!(
                r#"{{"type":"test","data":{{"text":"{text}"}}}}"#
            )))
            .expect("an event frame"),
        ),
    }
}

/// Attaches a recording sink to `bus`.
pub async fn attach(bus: &Arc<RedisBus>) -> Arc<RecordingSink> {
    let sink = RecordingSink::new();
    if let Err(e) = bus.attach(sink.clone()).await {
        panic!("attach: {e}");
    }
    sink
}

//! Test harness: runs the real `chat-server` binary on a free loopback port
//! with a fresh SQLite database, and talks to it over WebSocket and HTTP the
//! way a client that only knows PROTOCOL.md would.
#![allow(dead_code)]

#[allow(dead_code)] // not every test binary drives MLS devices
pub(crate) mod e2ee;

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::{TcpSocket, TcpStream},
    process::{Child, Command},
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{self, Message, client::IntoClientRequest, http::HeaderValue},
};

/// The HS256 secret every test server is started with.
pub(crate) const SECRET: &str = "integration-test-secret-0123456789abcdef0123456789";
/// The master key of every test server (32 bytes, base64).
pub(crate) const MASTER_KEY: &str = "dGVzdC1tYXN0ZXIta2V5LW9mLTMyLWJ5dGVzLWxvbmc=";
/// How long any expected frame or event may take.
pub(crate) const WAIT: Duration = Duration::from_secs(5);
/// How long we watch for an event that must not come.
pub(crate) const QUIET: Duration = Duration::from_millis(400);

/// Rate limits high enough never to trigger, for tests that send a lot.
pub(crate) const UNLIMITED: &str = "[rate_limits]
write = { per_second = 100000, burst = 100000 }
typing = { per_second = 100000, burst = 100000 }
other = { per_second = 100000, burst = 100000 }
";

pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A process-unique string with a prefix (client_msg_ids, names).
pub(crate) fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------- tokens

/// Default claims for `user`: `sub` and an `exp` one hour ahead.
pub(crate) fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": now() + 3600})
}

/// Signs `claims` with `alg` and `key`.
pub(crate) fn sign_with(alg: Algorithm, key: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(key))
        .expect("sign token")
}

/// Signs `claims` with HS256 and [`SECRET`].
pub(crate) fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, SECRET.as_bytes(), claims)
}

/// A valid token for `user`.
pub(crate) fn token(user: &str) -> String {
    sign(&claims(user))
}

/// A valid token for `user` with `role: "admin"`.
pub(crate) fn admin_token(user: &str) -> String {
    let mut c = claims(user);
    c["role"] = json!("admin");
    sign(&c)
}

/// A valid token for `user` on device `device`.
pub(crate) fn device_token(user: &str, device: &str) -> String {
    let mut c = claims(user);
    c["device"] = json!(device);
    sign(&c)
}

/// An unsigned token (`alg: none`, empty signature).
pub(crate) fn unsigned_token(claims: &Value) -> String {
    let header = json!({"alg": "none", "typ": "JWT"});
    format!(
        "{}.{}.",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

pub(crate) fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub(crate) fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---------------------------------------------------------------- server

/// A running `chat-server` process, killed on drop.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    child: Child,
    dir: Arc<tempfile::TempDir>,
    config: Option<PathBuf>,
    dev: bool,
    http: reqwest::Client,
}

impl Server {
    /// A server with the default settings.
    pub(crate) async fn start() -> Self {
        Self::launch(Arc::new(tempfile::tempdir().expect("tempdir")), None, false).await
    }

    /// A server in `--dev` mode without `CHAT_JWT_SECRET`.
    pub(crate) async fn start_dev() -> Self {
        Self::launch(Arc::new(tempfile::tempdir().expect("tempdir")), None, true).await
    }

    /// A server in `--dev` mode with `toml` as its `--config` file.
    #[allow(dead_code)]
    pub(crate) async fn start_dev_with_config(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.toml");
        std::fs::write(&path, toml).expect("write config");
        Self::launch_with(Arc::new(dir), Some(path), true, &[]).await
    }

    /// A server with `toml` as its `--config` file.
    pub(crate) async fn with_config(toml: &str) -> Self {
        Self::with_config_env(toml, &[]).await
    }

    /// A server with `toml` as its `--config` file and these environment
    /// variables set too.
    pub(crate) async fn with_config_env(toml: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.toml");
        std::fs::write(&path, toml).expect("write config");
        Self::launch_with(Arc::new(dir), Some(path), false, env).await
    }

    /// The command line a test server runs with (without spawning it).
    pub(crate) fn command(db: &std::path::Path, config: Option<&std::path::Path>) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.arg("--bind").arg("127.0.0.1:0").arg("--sqlite").arg(db);
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        for var in [
            "CHAT_BIND",
            "CHAT_SQLITE",
            "CHAT_POSTGRES_URL",
            "CHAT_REDIS_URL",
            "CHAT_MEDIA_DIR",
            "CHAT_CONFIG",
            "CHAT_MASTER_KEY",
            "CHAT_ALLOWED_ORIGINS",
            "CHAT_WEBHOOK_SECRET",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("CHAT_JWT_SECRET", SECRET)
            .env("CHAT_MASTER_KEY", MASTER_KEY)
            .env(
                "RUST_LOG",
                std::env::var("CHAT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    async fn launch(dir: Arc<tempfile::TempDir>, config: Option<PathBuf>, dev: bool) -> Self {
        Self::launch_with(dir, config, dev, &[]).await
    }

    /// A server with the default settings on the files of `dir`, with
    /// these environment variables set too.
    pub(crate) async fn start_in_with(dir: Arc<tempfile::TempDir>, env: &[(&str, &str)]) -> Self {
        Self::launch_with(dir, None, false, env).await
    }

    async fn launch_with(
        dir: Arc<tempfile::TempDir>,
        config: Option<PathBuf>,
        dev: bool,
        env: &[(&str, &str)],
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("server.log"))
            .expect("open server log");
        let mut cmd = Self::command(&dir.path().join("chat.db"), config.as_deref());
        cmd.stderr(Stdio::from(log)).envs(env.iter().copied());
        if dev {
            cmd.arg("--dev").env_remove("CHAT_JWT_SECRET");
        }
        let mut child = cmd.spawn().expect("spawn chat-server");
        let stdout = child.stdout.take().expect("stdout");
        let addr = wait_listening(stdout, &dir.path().join("server.log")).await;
        Self {
            addr,
            child,
            dir,
            config,
            dev,
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }

    /// Kills the process and returns its directory (database, key store),
    /// which stays until the last handle is dropped.
    pub(crate) async fn stop(mut self) -> Arc<tempfile::TempDir> {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        self.dir.clone()
    }

    /// A server with the default settings on the files of `dir` (from
    /// [`Server::stop`]).
    pub(crate) async fn start_in(dir: Arc<tempfile::TempDir>) -> Self {
        Self::launch(dir, None, false).await
    }

    /// Kills the process (if still running) and starts a new one on the
    /// same database file and config.
    pub(crate) async fn restart(mut self) -> Self {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(WAIT, self.child.wait()).await;
        Self::launch(self.dir.clone(), self.config.clone(), self.dev).await
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("server still running")
    }

    /// Sends `signal` (e.g. "KILL", "TERM") with kill(1).
    pub(crate) fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the process to exit.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("server did not exit within {within:?}"))
            .expect("wait for server")
    }

    /// The directory holding the server's database, key store and log.
    pub(crate) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    // ------------------------------------------------------------ websocket

    /// Connects with `Authorization: Bearer` for `user` and makes sure the
    /// connection is registered (a `ping` round trip).
    pub(crate) async fn ws(&self, user: &str) -> Ws {
        self.ws_token(user, &token(user)).await
    }

    /// Connects with `Authorization: Bearer <token>`, then `ping`.
    pub(crate) async fn ws_token(&self, user: &str, token: &str) -> Ws {
        let mut ws = self
            .connect(user, Auth::Header(token), &[])
            .await
            .unwrap_or_else(|e| panic!("upgrade for {user} refused: {e}"));
        ws.ok("ping", json!({})).await;
        ws
    }

    /// Opens a WebSocket with the given authentication, nothing more.
    pub(crate) async fn connect(
        &self,
        user: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
    ) -> Result<Ws, tungstenite::Error> {
        self.connect_with(user, auth, headers, None).await
    }

    /// Like [`Server::connect`], with a small socket receive buffer if
    /// `recv_buffer` is set (a client that does not read fills up sooner).
    pub(crate) async fn connect_with(
        &self,
        user: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> Result<Ws, tungstenite::Error> {
        let url = match auth {
            Auth::Query(t) => format!("{}?token={}", self.ws_url(), urlencode(t)),
            _ => self.ws_url(),
        };
        let mut req = url.into_client_request()?;
        if let Auth::Header(t) = auth {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
            );
        }
        for (k, v) in headers {
            req.headers_mut().insert(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let socket = TcpSocket::new_v4().expect("socket");
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
        }
        let tcp = tokio::time::timeout(WAIT, socket.connect(self.addr))
            .await
            .expect("TCP connect timed out")
            .expect("TCP connect");
        let (stream, _resp) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .expect("WebSocket handshake timed out")?;
        Ok(Ws::new(user, stream))
    }

    // ------------------------------------------------------------ http

    /// An HTTP call with an optional bearer token and JSON body.
    pub(crate) async fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        Resp::read(
            tokio::time::timeout(WAIT, req.send())
                .await
                .expect("HTTP timed out")
                .expect("HTTP"),
        )
        .await
    }

    /// An HTTP call with a raw body and content type.
    pub(crate) async fn http_raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, self.url(path))
            .header("content-type", content_type)
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Resp::read(
            tokio::time::timeout(WAIT, req.send())
                .await
                .expect("HTTP timed out")
                .expect("HTTP"),
        )
        .await
    }

    pub(crate) async fn get(&self, path: &str, user: &str) -> Resp {
        self.http("GET", path, Some(&token(user)), None).await
    }

    pub(crate) async fn post(&self, path: &str, user: &str, body: Value) -> Resp {
        self.http("POST", path, Some(&token(user)), Some(body))
            .await
    }

    pub(crate) async fn put(&self, path: &str, user: &str, body: Value) -> Resp {
        self.http("PUT", path, Some(&token(user)), Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str, user: &str) -> Resp {
        self.http("DELETE", path, Some(&token(user)), None).await
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            eprintln!("---- server log tail ({}) ----\n{tail}\n----", self.addr);
        }
    }
}

pub(crate) async fn wait_listening(
    stdout: tokio::process::ChildStdout,
    log: &std::path::Path,
) -> SocketAddr {
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.trim().strip_prefix("listening on http://") {
                return Some(
                    rest.parse::<SocketAddr>()
                        .expect("address in the listening line"),
                );
            }
        }
        None
    })
    .await;
    let addr = match found {
        Ok(Some(addr)) => addr,
        Ok(None) => panic!(
            "chat-server exited before `listening on http://ADDR`; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
        Err(_) => panic!("chat-server did not print `listening on http://ADDR` within 30 s"),
    };
    // Keep draining stdout so the server never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    addr
}

/// An HTTP response with its JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) text: String,
    pub(crate) body: Value,
}

impl Resp {
    async fn read(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.expect("HTTP body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            text,
            body,
        }
    }

    /// Asserts the status and returns the JSON body.
    #[track_caller]
    pub(crate) fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "unexpected HTTP status; body: {}",
            self.text
        );
        &self.body
    }

    /// Asserts an error response `{code, message}` with this status and code.
    #[track_caller]
    pub(crate) fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status, status,
            "unexpected HTTP status; body: {}",
            self.text
        );
        assert_eq!(
            self.body["code"], code,
            "unexpected error code; body: {}",
            self.text
        );
        assert!(
            self.body["message"].is_string(),
            "error without message: {}",
            self.text
        );
    }
}

// ---------------------------------------------------------------- ws client

/// How a WebSocket authenticates at upgrade time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth<'a> {
    Header(&'a str),
    Query(&'a str),
    /// No credentials at upgrade (first-frame `authenticate` or none).
    None,
}

/// An error reply: `(code, message)`.
pub(crate) type Reply = Result<Value, (String, String)>;

/// A WebSocket client that keeps the frames it has read but not yet consumed.
pub(crate) struct Ws {
    pub(crate) user: String,
    stream: WsStream,
    pending: VecDeque<Value>,
    /// `Some(code)` once the server closed (code `None` if it closed without one).
    closed: Option<Option<u16>>,
    /// Every frame ever received, for diagnostics.
    pub(crate) log: Vec<String>,
}

impl Ws {
    fn new(user: &str, stream: WsStream) -> Self {
        Self {
            user: user.to_owned(),
            stream,
            pending: VecDeque::new(),
            closed: None,
            log: Vec::new(),
        }
    }

    pub(crate) fn into_stream(self) -> WsStream {
        self.stream
    }

    fn recent(&self) -> String {
        let from = self.log.len().saturating_sub(12);
        self.log[from..].join("\n  ")
    }

    pub(crate) async fn send_raw(&mut self, msg: Message) {
        tokio::time::timeout(WAIT, self.stream.send(msg))
            .await
            .expect("send timed out")
            .expect("send frame");
    }

    pub(crate) async fn send_json(&mut self, frame: &Value) {
        self.send_raw(Message::text(frame.to_string())).await;
    }

    /// Sends a command with a fresh id, returns the id.
    pub(crate) async fn send_cmd(&mut self, ty: &str, data: Value) -> String {
        let id = unique("r");
        self.send_json(&json!({"type": ty, "id": id, "data": data}))
            .await;
        id
    }

    /// Reads the next JSON frame before `deadline`; `None` on timeout or close.
    async fn read(&mut self, deadline: Instant) -> Option<Value> {
        if self.closed.is_some() {
            return None;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let next = match tokio::time::timeout(left, self.stream.next()).await {
                Err(_) => return None,
                Ok(n) => n,
            };
            match next {
                Some(Ok(Message::Text(t))) => {
                    self.log.push(t.to_string());
                    let v: Value = serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t}"));
                    return Some(v);
                }
                Some(Ok(Message::Binary(b))) => {
                    panic!("unexpected binary frame of {} bytes", b.len())
                }
                Some(Ok(Message::Close(frame))) => {
                    let code = frame.map(|f| u16::from(f.code));
                    self.log.push(format!("<close {code:?}>"));
                    self.closed = Some(code);
                    return None;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    self.log.push(format!("<error {e}>"));
                    self.closed = Some(None);
                    return None;
                }
                None => {
                    self.log.push("<end>".into());
                    self.closed = Some(None);
                    return None;
                }
            }
        }
    }

    /// Waits for the reply (ack or error) to request `id`, buffering
    /// everything else.
    pub(crate) async fn reply(&mut self, id: &str) -> Reply {
        let take = |f: &Value| f["id"] == id && (f["type"] == "ack" || f["type"] == "error");
        if let Some(pos) = self.pending.iter().position(take) {
            return to_reply(self.pending.remove(pos).unwrap());
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.read(deadline).await {
                Some(f) if take(&f) => return to_reply(f),
                Some(f) => self.pending.push_back(f),
                None => panic!(
                    "[{}] no reply to request {id} (closed: {:?}); recent frames:\n  {}",
                    self.user,
                    self.closed,
                    self.recent()
                ),
            }
        }
    }

    /// Sends a command and waits for its reply.
    pub(crate) async fn request(&mut self, ty: &str, data: Value) -> Reply {
        let id = self.send_cmd(ty, data).await;
        self.reply(&id).await
    }

    /// Sends a command and returns its ack data; panics on an error reply.
    pub(crate) async fn ok(&mut self, ty: &str, data: Value) -> Value {
        match self.request(ty, data.clone()).await {
            Ok(v) => v,
            Err((code, msg)) => panic!("[{}] {ty} {data} failed: {code}: {msg}", self.user),
        }
    }

    /// Sends a command that must fail; returns the error code.
    pub(crate) async fn err(&mut self, ty: &str, data: Value) -> String {
        match self.request(ty, data.clone()).await {
            Ok(v) => panic!(
                "[{}] {ty} {data} should have failed, got ack {v}",
                self.user
            ),
            Err((code, _)) => code,
        }
    }

    /// The next frame satisfying `pred` (buffered or new) within `within`.
    pub(crate) async fn frame_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return self.pending.remove(pos);
        }
        let deadline = Instant::now() + within;
        loop {
            match self.read(deadline).await {
                Some(f) if pred(&f) => return Some(f),
                Some(f) => self.pending.push_back(f),
                None => return None,
            }
        }
    }

    /// The data of the next event `ty` satisfying `pred`, within `within`.
    pub(crate) async fn event_within(
        &mut self,
        ty: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        self.frame_within(within, |f| {
            f["type"] == ty && f.get("id").is_none() && pred(&f["data"])
        })
        .await
        .map(|f| f["data"].clone())
    }

    /// The data of the next event `ty`; panics after [`WAIT`].
    pub(crate) async fn event(&mut self, ty: &str) -> Value {
        self.event_where(ty, |_| true).await
    }

    /// The data of the next event `ty` satisfying `pred`; panics after [`WAIT`].
    pub(crate) async fn event_where(&mut self, ty: &str, pred: impl Fn(&Value) -> bool) -> Value {
        match self.event_within(ty, WAIT, pred).await {
            Some(v) => v,
            None => panic!(
                "[{}] no `{ty}` event within {WAIT:?} (closed: {:?}); recent frames:\n  {}",
                self.user,
                self.closed,
                self.recent()
            ),
        }
    }

    /// Asserts that no event `ty` satisfying `pred` arrives (or is buffered)
    /// within `window`.
    pub(crate) async fn no_event_where(
        &mut self,
        ty: &str,
        window: Duration,
        pred: impl Fn(&Value) -> bool,
    ) {
        if let Some(f) = self.event_within(ty, window, pred).await {
            panic!("[{}] unexpected `{ty}` event: {f}", self.user);
        }
    }

    /// Asserts that no event `ty` arrives (or is buffered) within `window`.
    pub(crate) async fn no_event(&mut self, ty: &str, window: Duration) {
        self.no_event_where(ty, window, |_| true).await;
    }

    /// Drops every buffered frame.
    pub(crate) fn clear(&mut self) {
        self.pending.clear();
    }

    /// Buffered frames (not yet consumed).
    pub(crate) fn pending(&self) -> impl Iterator<Item = &Value> {
        self.pending.iter()
    }

    /// Reads until the server closes; returns the close code, or `None` if
    /// the connection ended without a close frame. Panics after `within`.
    pub(crate) async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = Instant::now() + within;
        while self.closed.is_none() {
            match self.read(deadline).await {
                Some(f) => self.pending.push_back(f),
                None if self.closed.is_none() => panic!(
                    "[{}] connection still open after {within:?}; recent frames:\n  {}",
                    self.user,
                    self.recent()
                ),
                None => {}
            }
        }
        self.closed.unwrap()
    }

    /// Whether the server has closed the connection (as far as read so far).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    // ------------------------------------------------------------ shortcuts

    /// `create_direct` with `other`; returns the chat.
    pub(crate) async fn direct(&mut self, other: &str) -> Value {
        self.ok("create_direct", json!({"user_id": other})).await["chat"].clone()
    }

    /// `create_group`; returns the chat.
    pub(crate) async fn group(&mut self, name: &str, members: &[&str]) -> Value {
        self.ok("create_group", json!({"name": name, "member_ids": members}))
            .await["chat"]
            .clone()
    }

    /// `send_message` of a text; returns the message.
    pub(crate) async fn send(&mut self, chat_id: &str, text: &str) -> Value {
        self.ok(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": unique("c"), "content": text}),
        )
        .await["message"]
            .clone()
    }

    /// `history` of a chat; returns `(messages, has_more)`.
    pub(crate) async fn history(&mut self, chat_id: &str, extra: Value) -> (Vec<Value>, bool) {
        let mut data = json!({"chat_id": chat_id});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                data[k] = v;
            }
        }
        let ack = self.ok("history", data).await;
        let messages = ack["messages"]
            .as_array()
            .expect("history messages")
            .clone();
        (
            messages,
            ack["has_more"].as_bool().expect("history has_more"),
        )
    }

    /// `sync` with these cursors; returns the ack.
    pub(crate) async fn sync(&mut self, cursors: Value) -> Value {
        self.ok("sync", json!({"cursors": cursors})).await
    }

    /// Sends a close frame and drops the connection without waiting for
    /// the server's reply.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.stream.close(Some(normal_close()))).await;
    }

    /// Sends a close frame; returns the close code the server answers with
    /// within `within` (`None` if it ended the connection without one).
    pub(crate) async fn close_handshake(&mut self, within: Duration) -> Option<u16> {
        let _ = tokio::time::timeout(WAIT, self.stream.close(Some(normal_close()))).await;
        self.close_code(within).await
    }
}

fn normal_close() -> tungstenite::protocol::CloseFrame {
    tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }
}

fn to_reply(f: Value) -> Reply {
    if f["type"] == "ack" {
        Ok(f["data"].clone())
    } else {
        Err((
            f["data"]["code"].as_str().unwrap_or("<no code>").to_owned(),
            f["data"]["message"].as_str().unwrap_or("").to_owned(),
        ))
    }
}

// ---------------------------------------------------------------- json helpers

/// The string field `key` of `v`.
#[track_caller]
pub(crate) fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string `{key}` in {v}"))
}

/// The integer field `key` of `v`.
#[track_caller]
pub(crate) fn n(v: &Value, key: &str) -> i64 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer `{key}` in {v}"))
}

/// The participant entry of `user` in a chat object.
#[track_caller]
pub(crate) fn participant<'a>(chat: &'a Value, user: &str) -> &'a Value {
    chat["participants"]
        .as_array()
        .unwrap_or_else(|| panic!("chat without participants: {chat}"))
        .iter()
        .find(|p| p["user_id"] == user)
        .unwrap_or_else(|| panic!("{user} is not a participant of {chat}"))
}

/// The user ids of a chat's participants, sorted.
pub(crate) fn participant_ids(chat: &Value) -> Vec<String> {
    let mut ids: Vec<String> = chat["participants"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["user_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// The entry of `chat_id` in a sync result.
#[track_caller]
pub(crate) fn sync_entry<'a>(sync: &'a Value, chat_id: &str) -> &'a Value {
    sync["chats"]
        .as_array()
        .unwrap_or_else(|| panic!("sync without chats: {sync}"))
        .iter()
        .find(|c| c["chat"]["id"] == chat_id)
        .unwrap_or_else(|| panic!("chat {chat_id} missing from sync: {sync}"))
}

/// Whether a reactions object is empty (absent, null or `{}`).
pub(crate) fn no_reactions(message: &Value) -> bool {
    match &message["reactions"] {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        _ => false,
    }
}

/// Whether `v` is an RFC 3339 timestamp string (`2026-11-23T20:00:00.123Z`).
pub(crate) fn is_timestamp(v: &Value) -> bool {
    let Some(t) = v.as_str() else { return false };
    let b = t.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && (t.ends_with('Z') || t[19..].contains('+') || t[19..].contains('-'))
}

/// Asserts the shape of a fresh (never changed) text message.
#[track_caller]
pub(crate) fn check_new_text(m: &Value, chat_id: &str, sender: &str, content: &str) {
    assert!(m["id"].as_str().is_some_and(|id| !id.is_empty()), "id: {m}");
    assert_eq!(m["chat_id"], chat_id, "chat_id: {m}");
    assert!(m["seq"].as_i64().is_some_and(|seq| seq > 0), "seq: {m}");
    assert_eq!(
        m["updated_seq"], m["seq"],
        "updated_seq of an unchanged message: {m}"
    );
    assert_eq!(m["sender_id"], sender, "sender_id: {m}");
    assert_eq!(m["type"], "text", "type: {m}");
    assert_eq!(m["content"], content, "content: {m}");
    assert!(m["media"].is_null(), "media: {m}");
    assert!(
        m.get("reply_to").is_some(),
        "reply_to must be present (null): {m}"
    );
    assert!(is_timestamp(&m["created_at"]), "created_at: {m}");
    assert!(m["edited_at"].is_null(), "edited_at: {m}");
    assert_eq!(m["deleted"], false, "deleted: {m}");
    assert!(no_reactions(m), "reactions: {m}");
}

/// Asserts the shape of a chat object.
#[track_caller]
pub(crate) fn check_chat(chat: &Value, ty: &str) {
    assert!(
        chat["id"].as_str().is_some_and(|id| !id.is_empty()),
        "id: {chat}"
    );
    assert_eq!(chat["type"], ty, "type: {chat}");
    for key in ["name", "description", "avatar_url"] {
        assert!(chat.get(key).is_some(), "`{key}` must be present: {chat}");
    }
    assert!(
        chat["encryption"] == "at_rest" || chat["encryption"] == "e2ee",
        "encryption: {chat}"
    );
    assert!(
        chat["last_seq"].is_i64() || chat["last_seq"].is_u64(),
        "last_seq: {chat}"
    );
    assert!(
        is_timestamp(&chat["last_activity"]),
        "last_activity: {chat}"
    );
    assert!(is_timestamp(&chat["created_at"]), "created_at: {chat}");
    assert!(chat["unread_count"].is_u64(), "unread_count: {chat}");
    let ps = chat["participants"]
        .as_array()
        .unwrap_or_else(|| panic!("participants: {chat}"));
    for p in ps {
        assert!(p["user_id"].is_string(), "participant user_id: {p}");
        assert!(
            ["admin", "moderator", "member"].contains(&p["role"].as_str().unwrap_or("")),
            "participant role: {p}"
        );
        assert!(is_timestamp(&p["joined_at"]), "participant joined_at: {p}");
        assert!(
            p["delivered_seq"].is_u64(),
            "participant delivered_seq: {p}"
        );
        assert!(p["read_seq"].is_u64(), "participant read_seq: {p}");
    }
}

/// Every byte of every file in a server's directory (database, WAL, key
/// store), the log aside: where plaintext must not be.
#[allow(dead_code)] // not every test binary looks
pub(crate) fn stored_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the server's directory") {
        let path = entry.expect("an entry").path();
        if path.is_file() && !path.ends_with("server.log") {
            bytes.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    bytes
}

/// Whether `needle` occurs in `haystack`.
#[allow(dead_code)]
pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A multipart body of one `file` field, and its Content-Type.
#[allow(dead_code)]
pub(crate) fn multipart(name: &str, content_type: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----chat-test-boundary-7d3f";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// `POST /api/v1/chat/upload/:chat` of `bytes` as `user`, claiming `claimed`.
#[allow(dead_code)]
pub(crate) async fn upload_as(
    server: &Server,
    user: &str,
    chat: &str,
    name: &str,
    claimed: &str,
    bytes: &[u8],
) -> Resp {
    let (content_type, body) = multipart(name, claimed, bytes);
    server
        .http_raw(
            "POST",
            &format!("/api/v1/chat/upload/{chat}"),
            Some(&token(user)),
            &content_type,
            body,
        )
        .await
}

/// The Node.js test folder `tests/<folder>`, with its packages installed
/// (`npm ci` when `node_modules/<package>` is missing), or `None` when
/// Node.js (or another program the test needs, `needs`) is not on this
/// machine: the test is then skipped, unless `CHAT_REQUIRE_SERVICES` is set.
#[allow(dead_code)]
pub(crate) fn node_tests(
    folder: &str,
    package: &str,
    needs: &[&str],
) -> Option<std::path::PathBuf> {
    let runs = |program: &str| {
        std::process::Command::new(program)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let missing: Vec<&str> = std::iter::once("node")
        .chain(needs.iter().copied())
        .filter(|p| !(runs(p) || std::path::Path::new(p).exists()))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var_os("CHAT_REQUIRE_SERVICES").is_none(),
            "{missing:?} needed by tests/{folder} (CHAT_REQUIRE_SERVICES is set)"
        );
        eprintln!("skipped: {missing:?} not found");
        return None;
    }
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(folder);
    if !dir.join("node_modules").join(package).exists() {
        let installed = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(installed.success(), "npm ci in {}", dir.display());
    }
    Some(dir)
}

/// Runs a `node --test` file of `dir` against `server` with `env`; fails
/// with its report and the server's log unless every test passed.
#[allow(dead_code)]
pub(crate) async fn node_test(
    dir: &std::path::Path,
    file: &str,
    server: &Server,
    env: &[(&str, &str)],
) {
    let run = tokio::process::Command::new("node")
        .args([
            "--experimental-websocket",
            "--no-warnings",
            "--test",
            "--test-reporter=spec",
            file,
        ])
        .current_dir(dir)
        .env("CHAT_URL", server.url(""))
        .envs(env.iter().copied())
        .output()
        .await
        .expect("node");
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "{file} failed:\n{out}\n{err}\n--- server log ---\n{}",
        server.log()
    );
    eprintln!("{out}");
}

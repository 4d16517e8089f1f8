//! The driver over channels, no socket: the client writes [`Inbound`]
//! frames into one channel and reads [`Outbound`] ones from another (the
//! pattern of axum's `testing-websockets` example). Time is paused, so the
//! deadlines run in virtual time.

use std::time::UNIX_EPOCH;

use futures::channel::mpsc;
use serde_json::{Value, json};

use super::*;
use crate::{
    Actor, MemoryStore, SendMessage,
    engine::EngineConfig,
    limits::Rate,
    model::{ChatId, Encryption},
};

/// Tokens are `<user>`, `<user>:admin` or `<user>:exp=<unix seconds>`;
/// `bad` does not verify.
#[derive(Debug)]
struct Tokens;

impl Authenticator for Tokens {
    fn authenticate(&self, token: &str) -> Result<Credentials> {
        if token == "bad" {
            return Err(Error::Unauthenticated("invalid token".into()));
        }
        let (user, rest) = token.split_once(':').unwrap_or((token, ""));
        let valid_until = rest
            .strip_prefix("exp=")
            .and_then(|s| s.parse().ok())
            .map(|secs| UNIX_EPOCH + Duration::from_secs(secs));
        Ok(Credentials {
            user_id: UserId::new(user)?,
            device_id: DeviceId::default_device(),
            admin: rest == "admin",
            valid_until,
        })
    }
}

async fn engine() -> ChatEngine {
    let config = EngineConfig {
        max_connections_per_user: 2,
        ..EngineConfig::default()
    };
    ChatEngine::builder(Arc::new(MemoryStore::new()))
        .config(config)
        .build()
        .await
        .expect("an engine")
}

fn driver_with(engine: &ChatEngine, config: DriverConfig) -> Driver {
    Driver::new(engine.clone(), Arc::new(Tokens), config)
}

/// The default settings with `rate_limits`.
fn limited(rate_limits: RateLimits) -> DriverConfig {
    DriverConfig {
        rate_limits,
        ..DriverConfig::default()
    }
}

fn driver(engine: &ChatEngine) -> Driver {
    driver_with(engine, DriverConfig::default())
}

/// The client's end of a connection the driver runs.
struct Client {
    tx: mpsc::UnboundedSender<Inbound>,
    rx: mpsc::UnboundedReceiver<Outbound>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    fn start(driver: &Driver, auth: Auth) -> Self {
        let (tx, inbound) = mpsc::unbounded();
        let (outbound, rx) = mpsc::unbounded();
        let driver = driver.clone();
        let task = tokio::spawn(async move { driver.run(auth, outbound, inbound).await });
        Self { tx, rx, task }
    }

    /// Connected and authenticated with a first frame; the
    /// `presence_update` is read.
    async fn connect(driver: &Driver, token: &str) -> Self {
        let mut client = Self::start(driver, Auth::FirstFrame);
        client.send(json!({"type": "authenticate", "id": "auth", "data": {"token": token}}));
        let ack = client.frame().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(client.frame().await["type"], "presence_update");
        client
    }

    fn send(&self, frame: Value) {
        self.inbound(Inbound::Text(frame.to_string()));
    }

    fn inbound(&self, inbound: Inbound) {
        self.tx.unbounded_send(inbound).expect("the driver reads");
    }

    /// The next thing the driver writes, within a virtual minute.
    async fn next(&mut self) -> Option<Outbound> {
        tokio::time::timeout(Duration::from_secs(60), self.rx.next())
            .await
            .expect("the driver writes within a minute")
    }

    /// The next text frame as JSON, skipping pings.
    async fn frame(&mut self) -> Value {
        loop {
            match self.next().await {
                Some(Outbound::Text(text)) => {
                    return serde_json::from_slice(&text).expect("frames are JSON");
                }
                Some(Outbound::Ping) => {}
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The close the driver ends with, after any frames (returned).
    async fn closed(&mut self) -> (CloseReason, Vec<Value>) {
        let mut frames = Vec::new();
        loop {
            match self.next().await {
                Some(Outbound::Text(text)) => {
                    frames.push(serde_json::from_slice(&text).expect("frames are JSON"));
                }
                Some(Outbound::Ping) => {}
                Some(Outbound::Close(close)) => return (close.reason, frames),
                None => panic!("the stream ended without a close; frames: {frames:?}"),
            }
        }
    }

    /// Sends a command with an id and returns its answer.
    async fn command(&mut self, id: &str, kind: &str, data: Value) -> Value {
        self.send(json!({"type": kind, "id": id, "data": data}));
        loop {
            let frame = self.frame().await;
            if frame["id"] == id {
                return frame;
            }
        }
    }

    /// Closes from the client's side, as a WebSocket client does.
    async fn hang_up(mut self) {
        self.inbound(Inbound::Close);
        assert_eq!(self.closed().await.0, CloseReason::Normal);
        self.finish().await;
    }

    /// Lets the driver finish (the client answers the close by hanging up).
    async fn finish(self) {
        drop(self.tx);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the driver stops")
            .expect("the driver does not panic");
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_frame_authenticates_and_commands_are_answered_in_order() {
    let engine = engine().await;
    let driver = driver(&engine);
    let mut client = Client::start(&driver, Auth::FirstFrame);
    client.send(json!({"type": "authenticate", "id": "a", "data": {"token": "alice"}}));
    let ack = client.frame().await;
    assert_eq!(
        ack,
        json!({"type": "ack", "id": "a", "data": {"user_id": "alice", "device_id": "default"}})
    );
    assert_eq!(client.frame().await["type"], "presence_update");
    for i in 0..5 {
        client.send(json!({"type": "ping", "id": format!("p{i}"), "data": {}}));
    }
    client.send(json!({"type": "nonsense", "id": "x", "data": {}}));
    for i in 0..5 {
        assert_eq!(
            client.frame().await,
            json!({"type": "ack", "id": format!("p{i}"), "data": {}})
        );
    }
    let error = client.frame().await;
    assert_eq!(
        (&error["type"], &error["id"]),
        (&json!("error"), &json!("x"))
    );
    assert_eq!(error["data"]["code"], "bad_request");
    // A send is acked with the stored message, and bob gets the event.
    let mut bob = Client::connect(&driver, "bob").await;
    let chat = engine
        .create_direct(
            &Actor::user(UserId::new("alice").expect("an id")),
            &UserId::new("bob").expect("an id"),
            Encryption::AtRest,
        )
        .await
        .expect("a chat")
        .chat
        .chat
        .id;
    let sent = client
        .command(
            "s",
            "send_message",
            json!({"chat_id": chat, "client_msg_id": "c-1", "content": "hi"}),
        )
        .await;
    assert_eq!(sent["data"]["message"]["content"], "hi", "{sent}");
    let received = loop {
        let frame = bob.frame().await;
        if frame["type"] == "message_received" {
            break frame;
        }
    };
    assert_eq!(received["data"], sent["data"]["message"]);
    client.hang_up().await;
}

#[tokio::test(start_paused = true)]
async fn before_authentication_only_authenticate_is_accepted() {
    let engine = engine().await;
    let driver = driver(&engine);
    let mut client = Client::start(&driver, Auth::FirstFrame);
    client.send(json!({"type": "send_message", "id": "1", "data": {}}));
    let early = client.frame().await;
    assert_eq!(early["id"], "1");
    assert_eq!(early["data"]["code"], "unauthenticated");
    client.inbound(Inbound::Binary);
    assert_eq!(client.frame().await["data"]["code"], "bad_request");
    client.send(json!({"type": "authenticate", "id": "2", "data": {}}));
    let malformed = client.frame().await;
    assert_eq!(malformed["id"], "2");
    assert_eq!(malformed["data"]["code"], "bad_request");
    client.send(json!({"type": "authenticate", "data": {"token": "bad"}}));
    let (reason, frames) = client.closed().await;
    assert_eq!(reason, CloseReason::AuthFailed);
    assert_eq!(frames[0]["type"], "authentication_error");
    client.finish().await;
}

#[tokio::test(start_paused = true)]
async fn no_authentication_within_the_deadline_closes_with_4001() {
    let engine = engine().await;
    let driver = driver(&engine);
    let mut client = Client::start(&driver, Auth::FirstFrame);
    client.inbound(Inbound::Heartbeat);
    let started = Instant::now();
    let (reason, frames) = client.closed().await;
    assert_eq!(reason.code(), 4001);
    assert_eq!(frames[0]["data"]["message"], "authentication timed out");
    assert!(started.elapsed() >= Duration::from_secs(10));
    client.finish().await;
}

#[tokio::test(start_paused = true)]
async fn credentials_from_the_handshake_skip_the_first_frame() {
    let engine = engine().await;
    let driver = driver(&engine);
    let credentials = Tokens.authenticate("carol").expect("valid");
    let mut client = Client::start(&driver, Auth::Verified(credentials));
    assert_eq!(client.frame().await["type"], "presence_update");
    let ack = client.command("1", "ping", json!({})).await;
    assert_eq!(ack["type"], "ack");
    // A token that failed at the handshake is refused after it.
    let mut refused = Client::start(
        &driver,
        Auth::Failed(Error::Unauthenticated("token expired".into())),
    );
    let (reason, frames) = refused.closed().await;
    assert_eq!(reason, CloseReason::AuthFailed);
    assert_eq!(frames[0]["type"], "authentication_error");
    let message = frames[0]["data"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("token expired"), "{message}");
    refused.finish().await;
    client.hang_up().await;
}

#[tokio::test(start_paused = true)]
async fn the_connection_closes_when_the_token_expires() {
    let engine = engine().await;
    let driver = driver(&engine);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 30;
    let mut client = Client::connect(&driver, &format!("dave:exp={exp}")).await;
    let started = Instant::now();
    // Commands go on until then.
    assert_eq!(client.command("1", "ping", json!({})).await["type"], "ack");
    let (reason, frames) = client.closed().await;
    assert_eq!(reason, CloseReason::AuthFailed);
    assert_eq!(
        frames.last().expect("an event")["type"],
        "authentication_error"
    );
    assert_eq!(
        frames.last().expect("an event")["data"]["message"],
        "token expired"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(28) && waited <= Duration::from_secs(31),
        "{waited:?}"
    );
    client.finish().await;
}

#[tokio::test(start_paused = true)]
async fn rate_limits_are_keyed_by_the_command() {
    let engine = engine().await;
    let driver = driver_with(
        &engine,
        limited(RateLimits {
            write: Rate {
                per_second: 1,
                burst: 2,
            },
            ..RateLimits::unlimited()
        }),
    );
    let mut client = Client::connect(&driver, "erin").await;
    let chat = ChatId::new();
    for id in ["1", "2"] {
        let answer = client
            .command(id, "delete_message", json!({"message_id": chat}))
            .await;
        // Executed (and refused by the engine: there is no such message).
        assert_eq!(answer["data"]["code"], "not_found", "{answer}");
    }
    client.send(json!({"type": "block_user", "id": "3", "data": {"user_id": "frank"}}));
    let event = client.frame().await;
    assert_eq!(event["type"], "rate_limit_exceeded");
    assert_eq!(event["data"]["command"], "block_user");
    assert!(event["data"]["retry_after_ms"].as_u64() >= Some(1));
    let refused = client.frame().await;
    assert_eq!(refused["id"], "3");
    assert_eq!(refused["data"]["code"], "rate_limited");
    // Other classes keep their own budget.
    assert_eq!(client.command("4", "ping", json!({})).await["type"], "ack");
    assert!(
        engine
            .blocked_users(&Actor::user(UserId::new("erin").expect("an id")))
            .await
            .expect("blocks")
            .is_empty(),
        "a refused command changes nothing"
    );
    client.hang_up().await;
}

#[tokio::test(start_paused = true)]
async fn a_first_frame_over_the_connect_limit_closes_with_1013() {
    let engine = engine().await;
    let driver = driver_with(
        &engine,
        limited(RateLimits {
            connect: Rate {
                per_second: 1,
                burst: 1,
            },
            ..RateLimits::unlimited()
        }),
    );
    let first = Client::connect(&driver, "gus").await;
    let mut second = Client::start(&driver, Auth::FirstFrame);
    second.send(json!({"type": "authenticate", "id": "a", "data": {"token": "gus"}}));
    let (reason, frames) = second.closed().await;
    assert_eq!(reason, CloseReason::TryAgainLater);
    assert_eq!(reason.code(), 1013);
    assert_eq!(frames[0]["type"], "rate_limit_exceeded");
    assert_eq!(frames[0]["data"]["command"], "authenticate");
    assert_eq!(frames[1]["id"], "a");
    assert_eq!(frames[1]["data"]["code"], "rate_limited");
    second.finish().await;
    first.finish().await;
}

#[tokio::test(start_paused = true)]
async fn suspended_users_and_extra_connections_are_refused() {
    let engine = engine().await;
    let driver = driver(&engine);
    let admin = Actor::admin(UserId::new("root").expect("an id"));
    let mallory = UserId::new("mallory").expect("an id");
    // Suspended while connected: closed at once with 4003.
    let mut live = Client::connect(&driver, "mallory").await;
    engine
        .suspend(&admin, &mallory, None)
        .await
        .expect("suspended");
    assert_eq!(live.closed().await.0, CloseReason::Suspended);
    live.finish().await;
    // And refused when connecting again.
    let mut again = Client::start(&driver, Auth::FirstFrame);
    again.send(json!({"type": "authenticate", "data": {"token": "mallory"}}));
    let (reason, frames) = again.closed().await;
    assert_eq!(reason.code(), 4003);
    assert_eq!(
        frames.last().expect("an event")["type"],
        "authentication_error"
    );
    again.finish().await;
    // Two connections per user in this engine: the third gets 1008.
    let one = Client::connect(&driver, "nina").await;
    let two = Client::connect(&driver, "nina").await;
    let mut three = Client::start(&driver, Auth::FirstFrame);
    three.send(json!({"type": "authenticate", "data": {"token": "nina"}}));
    let (reason, frames) = three.closed().await;
    assert_eq!(reason, CloseReason::Policy);
    assert_eq!(frames.last().expect("an error")["data"]["code"], "conflict");
    three.finish().await;
    one.finish().await;
    two.finish().await;
}

#[tokio::test(start_paused = true)]
async fn an_oversized_frame_closes_with_1009() {
    let engine = engine().await;
    let driver = driver(&engine);
    let mut client = Client::connect(&driver, "olga").await;
    client.inbound(Inbound::TooLarge);
    let (reason, _) = client.closed().await;
    assert_eq!(reason.code(), 1009);
    client.finish().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_with_1001_after_the_queued_ack() {
    let engine = engine().await;
    let driver = driver(&engine);
    let mut client = Client::connect(&driver, "pia").await;
    client.send(json!({"type": "ping", "id": "last", "data": {}}));
    // Let the command run before the shutdown.
    tokio::time::sleep(Duration::from_millis(10)).await;
    driver.shutdown();
    let (reason, frames) = client.closed().await;
    assert_eq!(reason, CloseReason::GoingAway);
    assert_eq!(
        frames,
        vec![json!({"type": "ack", "id": "last", "data": {}})]
    );
    client.finish().await;
}

#[tokio::test(start_paused = true)]
async fn idle_connections_close_and_heartbeats_keep_them_open() {
    let engine = engine().await;
    let config = DriverConfig {
        idle_timeout: Duration::from_secs(30),
        ping_interval: Some(Duration::from_secs(10)),
        ..DriverConfig::default()
    };
    let driver = driver_with(&engine, config);
    let mut client = Client::connect(&driver, "quinn").await;
    let started = Instant::now();
    // Pings go out every 10 s; answering them keeps the connection.
    for _ in 0..4 {
        assert_eq!(client.next().await, Some(Outbound::Ping));
        client.inbound(Inbound::Heartbeat);
    }
    // Then silence: closed 30 s after the last heartbeat.
    let (reason, _) = client.closed().await;
    assert_eq!(reason, CloseReason::GoingAway);
    assert!(started.elapsed() >= Duration::from_secs(70));
    client.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_closed_as_too_slow() {
    let engine = engine().await;
    let config = DriverConfig {
        outgoing_queue: 4,
        ..DriverConfig::default()
    };
    let driver = driver_with(&engine, config);
    // The sink never takes a frame: everything stays in the outgoing queue.
    let (tx, inbound) = mpsc::unbounded::<Inbound>();
    let (outbound, mut rx) = mpsc::channel::<Outbound>(0);
    let task = {
        let driver = driver.clone();
        tokio::spawn(async move { driver.run(Auth::FirstFrame, outbound, inbound).await })
    };
    let auth = json!({"type": "authenticate", "data": {"token": "rita"}});
    tx.unbounded_send(Inbound::Text(auth.to_string()))
        .expect("the driver reads");
    tokio::time::sleep(Duration::from_millis(10)).await;
    for i in 0..20 {
        let ping = json!({"type": "ping", "id": i.to_string(), "data": {}});
        if tx.unbounded_send(Inbound::Text(ping.to_string())).is_err() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Reading now: what was written before the queue filled, then 4008.
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(60), rx.next()).await {
            Ok(Some(Outbound::Close(close))) => break close,
            Ok(Some(_)) => {}
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(close.reason, CloseReason::TooSlow);
    drop(tx);
    drop(rx);
    task.await.expect("no panic");
}

#[test]
fn close_reasons_map_to_their_codes_and_back() {
    for (reason, code) in [
        (CloseReason::Normal, 1000),
        (CloseReason::GoingAway, 1001),
        (CloseReason::Policy, 1008),
        (CloseReason::TooLarge, 1009),
        (CloseReason::TryAgainLater, 1013),
        (CloseReason::AuthFailed, 4001),
        (CloseReason::Suspended, 4003),
        (CloseReason::TooSlow, 4008),
        (CloseReason::Other(4999), 4999),
    ] {
        assert_eq!(reason.code(), code);
        assert_eq!(CloseReason::from_code(code), reason);
    }
}

#[test]
fn the_expiry_deadline_is_when_the_token_stops_verifying() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let at = Instant::now();
    assert_eq!(
        expiry_deadline(Some(now + Duration::from_secs(40)), now, at),
        Some(at + Duration::from_secs(40))
    );
    // Already past: at once.
    assert_eq!(
        expiry_deadline(Some(now - Duration::from_secs(5)), now, at),
        Some(at)
    );
    // Decades away, or never: no timer, no overflow.
    let far = now + Duration::from_secs(1 << 40);
    assert_eq!(expiry_deadline(Some(far), now, at), None);
    assert_eq!(expiry_deadline(None, now, at), None);
}

#[tokio::test(start_paused = true)]
async fn a_send_through_the_engine_reaches_a_driven_connection() {
    // The driver is one connection among the engine's: an embedder's own
    // call reaches it like any other event.
    let engine = engine().await;
    let driver = driver(&engine);
    let mut sam = Client::connect(&driver, "sam").await;
    let tom = Actor::user(UserId::new("tom").expect("an id"));
    let chat = engine
        .create_direct(
            &tom,
            &UserId::new("sam").expect("an id"),
            Encryption::AtRest,
        )
        .await
        .expect("a chat")
        .chat
        .chat
        .id;
    engine
        .send(&tom, SendMessage::text(chat, "c-1", "hello"))
        .await
        .expect("sent");
    let received = loop {
        let frame = sam.frame().await;
        if frame["type"] == "message_received" {
            break frame;
        }
    };
    assert_eq!(received["data"]["content"], "hello");
    sam.hang_up().await;
}

//! The life of a connection: token expiry with the verifier's leeway, the
//! `chat_connections` gauge, the per-user connect rate limit, and what a
//! graceful shutdown still delivers.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

/// The value of the `chat_connections` gauge (0 when not reported yet).
async fn connections_gauge(server: &Server) -> f64 {
    let resp = server.http("GET", "/metrics", None, None).await;
    assert_eq!(resp.status, 200, "{}", resp.text);
    resp.text
        .lines()
        .find_map(|line| line.strip_prefix("chat_connections "))
        .map_or(0.0, |v| v.trim().parse().expect("gauge value"))
}

/// Waits until the gauge reads `want`; panics with what it read after [`WAIT`].
async fn gauge_settles_at(server: &Server, want: f64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = connections_gauge(server).await;
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "chat_connections is {got}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ------------------------------------------------------------ token expiry

#[tokio::test]
async fn a_token_expired_within_the_leeway_is_not_closed_at_once() {
    let server = Server::start().await;
    // Verification accepts it (exp + leeway is 25 s ahead): the connection
    // must not be closed as expired right after it opened.
    let t = sign(&json!({"sub": "alice", "exp": now() - 5}));
    let mut ws = server.ws_token("alice", &t).await;
    ws.no_event("authentication_error", Duration::from_secs(2))
        .await;
    assert!(!ws.is_closed(), "{:?}", ws.log);
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn a_token_that_expires_at_u64_max_is_served_and_counted_right() {
    let server = Server::start().await;
    let forever = sign(&json!({"sub": "alice", "exp": u64::MAX}));
    // The expiry timer must not overflow (it used to panic the task).
    let mut ws = server.ws_token("alice", &forever).await;
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    let mut first_frame = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    let ack = first_frame
        .ok("authenticate", json!({"token": forever}))
        .await;
    assert_eq!(ack["user_id"], "alice");
    assert_eq!(first_frame.ok("ping", json!({})).await, json!({}));
    gauge_settles_at(&server, 2.0).await;

    assert_eq!(ws.close_handshake(WAIT).await, Some(1000));
    assert_eq!(first_frame.close_handshake(WAIT).await, Some(1000));
    gauge_settles_at(&server, 0.0).await;
}

// ------------------------------------------------------------ config file

#[tokio::test]
async fn a_rate_limits_table_with_one_class_is_accepted() {
    // Every key of `[rate_limits]` is optional (README).
    let server =
        Server::with_config("[rate_limits]\ntyping = { per_second = 1, burst = 1 }\n").await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    alice.ok("typing_start", json!({"chat_id": chat_id})).await;
    assert_eq!(
        alice.err("typing_start", json!({"chat_id": chat_id})).await,
        "rate_limited"
    );
    // The classes left out keep their defaults (write: burst 60).
    for i in 0..10 {
        alice.send(chat_id, &format!("m{i}")).await;
    }
}

// ------------------------------------------------------------ connect rate limit

fn connect_limit(burst: u32) -> String {
    format!("[rate_limits]\nconnect = {{ per_second = 1, burst = {burst} }}\n")
}

/// Asserts a refused upgrade: 429 with `Retry-After` and `{code, message}`.
fn assert_429(result: Result<Ws, tungstenite::Error>) {
    match result {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let retry: u64 = resp
                .headers()
                .get("retry-after")
                .expect("Retry-After")
                .to_str()
                .unwrap()
                .parse()
                .expect("Retry-After in seconds");
            assert!((1..=2).contains(&retry), "Retry-After: {retry}");
            let body: Value =
                serde_json::from_slice(resp.body().as_deref().expect("a body")).expect("JSON");
            assert_eq!(body["code"], "rate_limited", "{body}");
            assert!(body["message"].is_string(), "{body}");
        }
        Err(e) => panic!("expected an HTTP 429 refusal, got {e}"),
        Ok(_) => panic!("the upgrade went through past the connect rate limit"),
    }
}

#[tokio::test]
async fn reconnecting_in_a_loop_is_refused_with_429_before_the_upgrade() {
    let server = Server::with_config(&connect_limit(3)).await;
    let t = token("alice");
    for _ in 0..3 {
        let ws = server.ws_token("alice", &t).await;
        ws.close().await;
    }
    assert_429(server.connect("alice", Auth::Header(&t), &[]).await);
    assert_429(server.connect("alice", Auth::Query(&t), &[]).await);
    // Per user: someone else connects.
    let mut bob = server.ws("bob").await;
    assert_eq!(bob.ok("ping", json!({})).await, json!({}));
    // An invalid token is still refused after the upgrade, as before.
    let mut bad = server
        .connect("alice", Auth::Header("not.a.jwt"), &[])
        .await
        .expect("upgrade");
    bad.event("authentication_error").await;
    assert_eq!(bad.close_code(WAIT).await, Some(4001));
    // The bucket refills (1 per second).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut again = server.ws_token("alice", &t).await;
    assert_eq!(again.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn a_first_frame_authenticate_past_the_connect_limit_is_refused() {
    let server = Server::with_config(&connect_limit(1)).await;
    let t = token("alice");
    let mut first = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    first.ok("authenticate", json!({"token": t})).await;

    let mut second = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade: the user is known only from the first frame");
    let id = second.send_cmd("authenticate", json!({"token": t})).await;
    match second.reply(&id).await {
        Err((code, _)) => assert_eq!(code, "rate_limited"),
        Ok(ack) => panic!("authenticate past the connect limit acked: {ack}"),
    }
    let event = second.event("rate_limit_exceeded").await;
    assert_eq!(event["command"], "authenticate", "{event}");
    let retry = event["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1000).contains(&retry), "{event}");
    assert_eq!(second.close_code(WAIT).await, Some(1013));
    // The first connection is unaffected.
    assert_eq!(first.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn by_default_every_device_of_a_user_can_connect_at_once() {
    // After a restart all of a user's devices (at most 16 by default)
    // reconnect together: the default connect burst lets them.
    let server = Server::start().await;
    let mut devices = Vec::new();
    for d in 0..16 {
        let t = device_token("alice", &format!("device-{d}"));
        devices.push(server.ws_token("alice", &t).await);
    }
    for ws in &mut devices {
        assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    }
}

// ------------------------------------------------------------ shutdown

/// Every message of `chat_id` as `client_msg_id -> seq`, through history pages.
async fn stored(ws: &mut Ws, chat_id: &str) -> HashMap<String, i64> {
    let mut found = HashMap::new();
    let mut before: Option<i64> = None;
    loop {
        let extra = match before {
            Some(seq) => json!({"limit": 200, "before_seq": seq}),
            None => json!({"limit": 200}),
        };
        let (messages, has_more) = ws.history(chat_id, extra).await;
        for m in &messages {
            if let Some(c) = m["client_msg_id"].as_str() {
                found.insert(c.to_owned(), n(m, "seq"));
            }
        }
        match messages.last() {
            Some(last) if has_more => before = Some(n(last, "seq")),
            _ => return found,
        }
    }
}

#[tokio::test]
async fn shutdown_delivers_the_ack_of_every_stored_message_before_1001() {
    let mut server = Server::with_config(UNLIMITED).await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id").to_owned();

    // A stream of sends, the server stopped in the middle of it: the
    // command running when the stop arrives completes, and its ack must
    // reach the client before the close (it used to be dropped by a close
    // that jumped the queue).
    const SENDS: usize = 3000;
    let (mut tx, mut rx) = alice.into_stream().split();
    let writer = {
        let chat_id = chat_id.clone();
        tokio::spawn(async move {
            for i in 0..SENDS {
                let frame = json!({"type": "send_message", "id": format!("r{i}"),
                    "data": {"chat_id": chat_id, "client_msg_id": format!("c{i}"), "content": "x"}});
                if tx.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
            tx
        })
    };
    let mut acked = HashSet::new();
    let mut signalled = false;
    let close_code = loop {
        let next = tokio::time::timeout(Duration::from_secs(15), rx.next())
            .await
            .expect("the server closes within 15 s");
        match next {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).expect("JSON");
                if frame["type"] == "ack" {
                    let c = frame["data"]["message"]["client_msg_id"]
                        .as_str()
                        .expect("client_msg_id")
                        .to_owned();
                    acked.insert(c);
                    if !signalled && acked.len() >= 20 {
                        server.signal("TERM");
                        signalled = true;
                    }
                } else {
                    assert_ne!(frame["type"], "error", "{frame}");
                }
            }
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(close_code, Some(1001));
    // Answer the close, so that the server need not wait for it.
    if let Ok(mut tx) = writer.await {
        let _ = tokio::time::timeout(WAIT, tx.close()).await;
    }
    assert!(
        acked.len() < SENDS,
        "the shutdown came after every send: nothing was tested"
    );
    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    let server = server.restart().await;
    let mut alice = server.ws("alice").await;
    let stored = stored(&mut alice, &chat_id).await;
    let unacked: Vec<&String> = stored.keys().filter(|c| !acked.contains(*c)).collect();
    assert!(
        unacked.is_empty(),
        "stored but never acked: {unacked:?} ({} stored, {} acked)",
        stored.len(),
        acked.len()
    );
    assert!(
        acked.iter().all(|c| stored.contains_key(c)),
        "acked but lost"
    );
}

/// Writes `request` raw on a new TCP connection and reads what comes back
/// until the server closes or `within` passes.
async fn raw_exchange(server: &Server, request: &[u8], within: Duration) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connects");
    tcp.write_all(request).await.expect("writes");
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(within, tcp.read_to_end(&mut answer))
        .await
        .is_ok();
    (String::from_utf8_lossy(&answer).into_owned(), closed)
}

#[tokio::test]
async fn oversized_request_lines_and_headers_get_the_error_body() {
    let server = Server::start().await;
    let long_path = format!("/api/v1/chat/sessions?x={}", "a".repeat(9 * 1024));
    let resp = server.http("GET", &long_path, None, None).await;
    resp.expect_error(414, "too_large");
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nX-More: {}\r\n\r\n",
        "b".repeat(20 * 1024),
        "c".repeat(20 * 1024)
    );
    let (answer, _) = raw_exchange(&server, request.as_bytes(), WAIT).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer}");
    // Within the limits, the same request is served.
    let (answer, _) = raw_exchange(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        WAIT,
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_disconnected() {
    let server = Server::with_config("header_read_timeout_secs = 1\n").await;
    // Half a request line, then nothing: closed after the timeout, with
    // nothing served.
    let started = tokio::time::Instant::now();
    let (answer, closed) = raw_exchange(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost:",
        Duration::from_secs(10),
    )
    .await;
    assert!(closed, "the server closed the connection");
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(!answer.contains("200"), "{answer}");
    // A prompt client is unaffected.
    server.http("GET", "/healthz", None, None).await.expect(200);
}

//! Limits: rate limits over WebSocket and HTTP, frame size, slow
//! consumers, configured text and group limits, allowed origins.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

fn limits(write: (u32, u32), typing: (u32, u32), other: (u32, u32)) -> String {
    format!(
        "[rate_limits]\nwrite = {{ per_second = {}, burst = {} }}\ntyping = {{ per_second = {}, burst = {} }}\nother = {{ per_second = {}, burst = {} }}\n",
        write.0, write.1, typing.0, typing.1, other.0, other.1
    )
}

const BIG: (u32, u32) = (100_000, 100_000);

/// Sends `ty` with a fresh id and expects `rate_limit_exceeded` plus an
/// `error` `rate_limited` for it; returns `retry_after_ms`.
async fn expect_rate_limited(ws: &mut Ws, ty: &str, data: Value) -> u64 {
    let id = ws.send_cmd(ty, data).await;
    let reply = ws.reply(&id).await;
    assert_eq!(
        reply.as_ref().map_err(|e| e.0.as_str()),
        Err("rate_limited"),
        "{ty} should be rate limited"
    );
    let ev = ws.event("rate_limit_exceeded").await;
    assert_eq!(ev["command"], ty, "{ev}");
    let retry = ev["retry_after_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("retry_after_ms: {ev}"));
    assert!(retry > 0 && retry <= 2000, "{ev}");
    retry
}

#[tokio::test]
async fn write_commands_are_rate_limited_and_not_executed() {
    let server = Server::with_config(&limits((1, 2), BIG, BIG)).await;
    let mut bob = server.ws("bob").await;
    let mut alice = server.ws("alice").await;
    let chat = bob.direct("alice").await;
    let chat_id = s(&chat, "id");
    alice.send(chat_id, "one").await;
    alice.send(chat_id, "two").await;
    let retry = expect_rate_limited(
        &mut alice,
        "send_message",
        json!({"chat_id": chat_id, "client_msg_id": "limited", "content": "three"}),
    )
    .await;
    bob.no_event_where("message_received", QUIET, |m| {
        m["client_msg_id"] == "limited"
    })
    .await;
    let (messages, _) = bob.history(chat_id, json!({})).await;
    assert!(
        !messages.iter().any(|m| m["client_msg_id"] == "limited"),
        "a rate-limited command must not run: {messages:?}"
    );
    // Limits are per user: bob still has a token left.
    bob.send(chat_id, "bob is fine").await;
    // Once the bucket refills, alice may write again.
    tokio::time::sleep(Duration::from_millis(retry + 50)).await;
    alice.send(chat_id, "four").await;
}

#[tokio::test]
async fn typing_is_rate_limited() {
    let server = Server::with_config(&limits(BIG, (1, 2), BIG)).await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    alice.ok("typing_start", json!({"chat_id": chat_id})).await;
    alice.ok("typing_stop", json!({"chat_id": chat_id})).await;
    expect_rate_limited(&mut alice, "typing_start", json!({"chat_id": chat_id})).await;
    // Other classes are unaffected.
    alice.send(chat_id, "still writing").await;
}

#[tokio::test]
async fn other_commands_are_rate_limited() {
    let server = Server::with_config(&limits(BIG, BIG, (1, 3))).await;
    let mut alice = server.ws("alice").await;
    // `Server::ws` already spent one `ping`; one or two more may pass,
    // but within the burst the fourth cannot.
    let mut limited = false;
    for _ in 0..3 {
        let id = alice.send_cmd("ping", json!({})).await;
        if let Err((code, _)) = alice.reply(&id).await {
            assert_eq!(code, "rate_limited");
            let ev = alice.event("rate_limit_exceeded").await;
            assert_eq!(ev["command"], "ping");
            limited = true;
            break;
        }
    }
    assert!(limited, "4 pings with burst 3 and 1/s must hit the limit");
}

#[tokio::test]
async fn http_rate_limit_is_429_with_retry_after() {
    let server = Server::with_config(&limits((1, 2), BIG, BIG)).await;
    let group = json!({"name": "g", "member_ids": ["bob"]});
    server
        .post("/api/v1/chat/groups", "alice", group.clone())
        .await
        .expect(201);
    server
        .post("/api/v1/chat/groups", "alice", group.clone())
        .await
        .expect(201);
    let r = server
        .post("/api/v1/chat/groups", "alice", group.clone())
        .await;
    r.expect_error(429, "rate_limited");
    let retry = r
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("429 without Retry-After: {:?}", r.headers))
        .to_str()
        .unwrap()
        .parse::<u64>()
        .expect("Retry-After in whole seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    // Someone else is not limited.
    server
        .post(
            "/api/v1/chat/groups",
            "bob",
            json!({"name": "h", "member_ids": ["alice"]}),
        )
        .await
        .expect(201);
}

#[tokio::test]
async fn frame_over_64_kib_closes_with_1009() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    // Just under the limit: answered, connection lives.
    let pad = "p".repeat(60 * 1024);
    let _ = ws.request("ping", json!({"pad": pad})).await;
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    let pad = "p".repeat(70 * 1024);
    ws.send_raw(Message::text(
        json!({"type": "ping", "id": "big", "data": {"pad": pad}}).to_string(),
    ))
    .await;
    assert_eq!(ws.close_code(WAIT).await, Some(1009), "{:?}", ws.log);
}

#[tokio::test]
async fn slow_consumer_is_closed_with_4008_and_sync_recovers_everything() {
    let config = format!("outgoing_queue = 16\nsqlite_synchronous = \"off\"\n{UNLIMITED}");
    let server = Server::with_config(&config).await;
    let mut alice = server.ws("alice").await;
    // Bob's socket has a tiny receive buffer and he stops reading after setup.
    let mut bob = server
        .connect_with("bob", Auth::Header(&token("bob")), &[], Some(4096))
        .await
        .expect("upgrade");
    bob.ok("ping", json!({})).await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id").to_owned();
    let cursor = n(&chat, "last_seq");

    // ~20 MB of message_received frames for bob (32 KiB each).
    let text = "😀".repeat(8192);
    let mut acked: Vec<Value> = Vec::new();
    for _ in 0..20 {
        let mut ids = Vec::new();
        for _ in 0..30 {
            ids.push(
                alice
                    .send_cmd(
                        "send_message",
                        json!({"chat_id": chat_id, "client_msg_id": unique("flood"), "content": text}),
                    )
                    .await,
            );
        }
        for id in &ids {
            let ack = alice.reply(id).await.expect("flood message acked");
            acked.push(ack["message"].clone());
        }
        alice.clear();
        alice.log.clear();
    }

    // Bob finally reads: what was buffered, then the close.
    let code = bob.close_code(Duration::from_secs(30)).await;
    let received = bob
        .pending()
        .filter(|f| f["type"] == "message_received")
        .count();
    bob.log.retain(|l| l.len() < 200);
    assert_eq!(
        code,
        Some(4008),
        "received {received} of {} messages, then: {:?}",
        acked.len(),
        bob.log
    );
    assert!(received < acked.len(), "bob was closed yet got everything?");

    // Reconnect and sync from the old cursor: nothing is lost.
    let mut bob = server.ws("bob").await;
    let mut seen = std::collections::HashSet::new();
    let mut cursor = cursor;
    for _ in 0..1000 {
        let ack = bob.sync(json!({&chat_id: cursor})).await;
        let entry = sync_entry(&ack, &chat_id);
        let changes = entry["changes"].as_array().expect("changes");
        for c in changes {
            assert!(
                n(c, "updated_seq") > cursor,
                "change not after cursor: {}",
                c["id"]
            );
            seen.insert(s(c, "id").to_owned());
        }
        if entry["has_more"] != true {
            break;
        }
        assert!(!changes.is_empty(), "has_more with an empty page");
        cursor = n(changes.last().unwrap(), "updated_seq");
    }
    let missing = acked.iter().filter(|m| !seen.contains(s(m, "id"))).count();
    assert_eq!(
        missing,
        0,
        "sync lost {missing} of {} acked messages",
        acked.len()
    );
}

#[tokio::test]
async fn configured_max_text_chars_is_enforced() {
    let server = Server::with_config("[limits]\nmax_text_chars = 10\n").await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    alice.send(chat_id, "0123456789").await;
    assert_eq!(
        alice
            .err(
                "send_message",
                json!({"chat_id": chat_id, "client_msg_id": "long", "content": "0123456789a"})
            )
            .await,
        "bad_request"
    );
}

#[tokio::test]
async fn configured_max_group_members_is_enforced() {
    let server = Server::with_config("[limits]\nmax_group_members = 3\n").await;
    let mut alice = server.ws("alice").await;
    assert_eq!(
        alice
            .err(
                "create_group",
                json!({"name": "big", "member_ids": ["b", "c", "d"]})
            )
            .await,
        "bad_request"
    );
    let chat = alice.group("small", &["b", "c"]).await;
    let code = alice
        .err(
            "add_participant",
            json!({"chat_id": chat["id"], "user_id": "d"}),
        )
        .await;
    assert!(code == "bad_request" || code == "conflict", "{code}");
}

#[tokio::test]
async fn only_allowed_origins_may_connect() {
    let server = Server::with_config("allowed_origins = [\"https://good.example\"]\n").await;
    let t = token("alice");
    match server
        .connect(
            "alice",
            Auth::Header(&t),
            &[("origin", "https://evil.example")],
        )
        .await
    {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 403),
        Err(e) => panic!("expected an HTTP 403 refusal, got {e}"),
        Ok(_) => panic!("a foreign origin was allowed to connect"),
    }
    let mut ws = server
        .connect(
            "alice",
            Auth::Header(&t),
            &[("origin", "https://good.example")],
        )
        .await
        .expect("allowed origin");
    ws.ok("ping", json!({})).await;
    // The server's own pages (its web client) are always allowed.
    let own = server.url("");
    let mut ws = server
        .connect("alice", Auth::Header(&t), &[("origin", own.as_str())])
        .await
        .expect("the server's own origin");
    ws.ok("ping", json!({})).await;
    let mut ws = server
        .connect("alice", Auth::Header(&t), &[])
        .await
        .expect("no origin");
    ws.ok("ping", json!({})).await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected_while_silent() {
    let server = Server::with_config("ping_interval_secs = 1\nidle_timeout_secs = 3\n").await;
    let mut ws = server.ws("alice").await;
    // The client sends no command for longer than the idle timeout; reading
    // answers the server's pings with pongs, which count as heard.
    ws.no_event("message_received", Duration::from_secs(5))
        .await;
    assert!(!ws.is_closed());
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn a_client_that_goes_silent_is_closed_as_idle() {
    let server = Server::with_config("ping_interval_secs = 1\nidle_timeout_secs = 2\n").await;
    let mut ws = server.ws("alice").await;
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    // Not reading: no pong goes back, so the server hears nothing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The client reads only now: pongs to the pings queued meanwhile go out
    // first, then it reads the close frame the server sent long ago. The
    // server waits for the client's close, or those pongs would draw a TCP
    // reset that can hide the close code.
    let code = ws.close_code(Duration::from_secs(5)).await;
    assert_eq!(code, Some(1001), "{:?}", ws.log);
    assert!(server.log().contains("reason=idle"), "{}", server.log());
}

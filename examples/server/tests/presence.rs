//! Presence, typing, privacy and blocking.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

/// Creates the direct chat `a`-`b` over REST (no WebSocket needed).
async fn direct(server: &Server, a: &str, b: &str) -> String {
    let r = server
        .post("/api/v1/chat/sessions", a, json!({"user_id": b}))
        .await;
    assert!(
        r.status == 201 || r.status == 200,
        "create direct: {} {}",
        r.status,
        r.text
    );
    s(&r.body, "id").to_owned()
}

fn presence_of<'a>(update: &'a Value, user: &str) -> Option<&'a Value> {
    update["users"]
        .as_array()?
        .iter()
        .find(|u| u["user_id"] == user)
}

#[tokio::test]
async fn presence_update_is_sent_once_after_authentication() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    direct(&server, "alice", "dave").await;
    let _bob = server.ws("bob").await;
    let _carol = server.ws("carol").await;

    let mut alice = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    alice
        .ok("authenticate", json!({"token": token("alice")}))
        .await;
    let update = alice.event("presence_update").await;
    let bob = presence_of(&update, "bob").unwrap_or_else(|| panic!("bob missing: {update}"));
    assert_eq!(bob["online"], true, "{update}");
    assert!(bob.get("last_seen").is_some(), "{update}");
    let dave =
        presence_of(&update, "dave").unwrap_or_else(|| panic!("dave (offline) missing: {update}"));
    assert_eq!(dave["online"], false, "{update}");
    assert!(
        presence_of(&update, "carol").is_none(),
        "carol shares no chat: {update}"
    );
    assert!(
        presence_of(&update, "alice").is_none(),
        "not about oneself: {update}"
    );
    alice.no_event("presence_update", QUIET).await;
}

#[tokio::test]
async fn presence_update_also_follows_header_authentication() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let _bob = server.ws("bob").await;
    let mut alice = server.ws("alice").await;
    let update = alice.event("presence_update").await;
    assert_eq!(
        presence_of(&update, "bob").map(|b| &b["online"]),
        Some(&json!(true)),
        "{update}"
    );
}

#[tokio::test]
async fn user_online_reaches_chat_partners_only() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let _alice = server.ws("alice").await;
    assert_eq!(bob.event("user_online").await, json!({"user_id": "alice"}));
    carol.no_event("user_online", QUIET).await;
}

#[tokio::test]
async fn user_offline_comes_after_the_grace_period() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let alice = server.ws("alice").await;
    bob.event("user_online").await;
    let closed = Instant::now();
    drop(alice);
    let ev = bob.event("user_offline").await;
    let after = closed.elapsed();
    assert_eq!(ev["user_id"], "alice");
    assert!(is_timestamp(&ev["last_seen"]), "{ev}");
    assert!(
        after >= Duration::from_millis(1500),
        "user_offline {ev} came {after:?} after the close; the grace is 2 s"
    );
    carol.no_event("user_offline", Duration::ZERO).await;
}

#[tokio::test]
async fn reconnecting_within_the_grace_period_is_silent() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let mut bob = server.ws("bob").await;
    let alice = server.ws("alice").await;
    bob.event("user_online").await;
    let closed = Instant::now();
    drop(alice);
    let _alice = server.ws("alice").await;
    let back = closed.elapsed();
    if let Some(ev) = bob
        .event_within("user_offline", Duration::from_secs(3), |_| true)
        .await
    {
        panic!(
            "alice was back {back:?} after closing, yet bob got user_offline {ev} {:?} after the close",
            closed.elapsed()
        );
    }
    bob.no_event("user_online", Duration::ZERO).await;
}

#[tokio::test]
async fn a_second_connection_keeps_the_user_online() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let mut bob = server.ws("bob").await;
    let a1 = server.ws("alice").await;
    let _a2 = server.ws("alice").await;
    bob.event("user_online").await;
    drop(a1);
    bob.no_event("user_offline", Duration::from_secs(3)).await;
    bob.no_event("user_online", Duration::ZERO).await;
}

#[tokio::test]
async fn explicit_user_offline_and_user_online_commands() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let mut alice = server.ws("alice").await;
    bob.event("user_online").await;

    assert_eq!(alice.ok("user_offline", json!({})).await, json!({}));
    let ev = bob.event("user_offline").await;
    assert_eq!(ev["user_id"], "alice");
    assert!(is_timestamp(&ev["last_seen"]), "{ev}");
    assert_eq!(alice.ok("user_online", json!({})).await, json!({}));
    assert_eq!(bob.event("user_online").await, json!({"user_id": "alice"}));
    carol.no_event("user_offline", QUIET).await;
    carol.no_event("user_online", Duration::ZERO).await;
    // The connection still counts: alice still receives messages.
    let chat = bob.direct("alice").await;
    let m = bob.send(s(&chat, "id"), "you there?").await;
    alice
        .event_where("message_received", |e| e["id"] == m["id"])
        .await;
}

#[tokio::test]
async fn blocking_hides_presence_both_ways_until_unblocked() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let mut bob = server.ws("bob").await;
    assert_eq!(
        bob.ok("block_user", json!({"user_id": "alice"})).await,
        json!({})
    );
    let listed = server.get("/api/v1/chat/blocks", "bob").await;
    assert_eq!(listed.expect(200)["blocked"], json!(["alice"]));

    // alice comes online: bob (blocking her) is not told.
    let mut alice = server.ws("alice").await;
    bob.no_event("user_online", QUIET).await;
    // bob comes online on a second connection... he is already online;
    // instead, a fresh user dave shows that events do flow.
    direct(&server, "bob", "dave").await;
    let _dave = server.ws("dave").await;
    bob.event_where("user_online", |e| e["user_id"] == "dave")
        .await;
    // alice (blocked by bob) is not told about bob's explicit status either.
    bob.ok("user_offline", json!({})).await;
    bob.ok("user_online", json!({})).await;
    alice
        .no_event_where("user_online", QUIET, |e| e["user_id"] == "bob")
        .await;
    alice
        .no_event_where("user_offline", Duration::ZERO, |e| e["user_id"] == "bob")
        .await;

    assert_eq!(
        bob.ok("unblock_user", json!({"user_id": "alice"})).await,
        json!({})
    );
    let listed = server.get("/api/v1/chat/blocks", "bob").await;
    assert_eq!(listed.expect(200)["blocked"], json!([]));
    alice.ok("user_offline", json!({})).await;
    bob.event_where("user_offline", |e| e["user_id"] == "alice")
        .await;
    alice.ok("user_online", json!({})).await;
    bob.event_where("user_online", |e| e["user_id"] == "alice")
        .await;
}

#[tokio::test]
async fn set_privacy_returns_the_settings_and_keeps_unset_ones() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let ack = alice.ok("set_privacy", json!({"typing": false})).await;
    assert_eq!(
        ack["privacy"],
        json!({"read_receipts": true, "typing": false, "presence": true, "mood_sharing": false}),
        "{ack}"
    );
    let ack = alice.ok("set_privacy", json!({"presence": false})).await;
    assert_eq!(
        ack["privacy"],
        json!({"read_receipts": true, "typing": false, "presence": false, "mood_sharing": false}),
        "{ack}"
    );
    let ack = alice.ok("set_privacy", json!({})).await;
    assert_eq!(ack["privacy"]["presence"], false);
    assert_eq!(
        alice.err("set_privacy", json!({"typing": "no"})).await,
        "bad_request"
    );
}

#[tokio::test]
async fn presence_privacy_hides_the_user_from_others() {
    let server = Server::start().await;
    direct(&server, "alice", "bob").await;
    let mut alice = server.ws("alice").await;
    alice.ok("set_privacy", json!({"presence": false})).await;
    let mut bob = server.ws("bob").await;
    let update = bob.event("presence_update").await;
    if let Some(a) = presence_of(&update, "alice") {
        assert_ne!(a["online"], true, "alice hides her presence: {update}");
    }
    alice.ok("user_offline", json!({})).await;
    alice.ok("user_online", json!({})).await;
    bob.no_event_where("user_online", QUIET, |e| e["user_id"] == "alice")
        .await;
    bob.no_event_where("user_offline", Duration::ZERO, |e| e["user_id"] == "alice")
        .await;
}

/// alice, bob and carol in a group; alice and bob have it open.
async fn typing_setup(server: &Server) -> (String, Ws, Ws, Ws) {
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let carol = server.ws("carol").await;
    let chat = alice.group("typists", &["bob", "carol"]).await;
    let chat_id = s(&chat, "id").to_owned();
    alice.ok("join_chat", json!({"chat_id": chat_id})).await;
    bob.ok("join_chat", json!({"chat_id": chat_id})).await;
    (chat_id, alice, bob, carol)
}

#[tokio::test]
async fn typing_reaches_those_with_the_chat_open_but_not_the_typist() {
    let server = Server::start().await;
    let (chat_id, mut alice, mut bob, mut carol) = typing_setup(&server).await;
    assert_eq!(
        alice.ok("typing_start", json!({"chat_id": chat_id})).await,
        json!({})
    );
    assert_eq!(
        bob.event("user_typing").await,
        json!({"chat_id": chat_id, "user_id": "alice"})
    );
    assert_eq!(
        alice.ok("typing_stop", json!({"chat_id": chat_id})).await,
        json!({})
    );
    assert_eq!(
        bob.event("user_stopped_typing").await,
        json!({"chat_id": chat_id, "user_id": "alice"})
    );
    alice.no_event("user_typing", QUIET).await;
    alice.no_event("user_stopped_typing", Duration::ZERO).await;
    carol.no_event("user_typing", Duration::ZERO).await;
    carol.no_event("user_stopped_typing", Duration::ZERO).await;
}

#[tokio::test]
async fn typing_expires_after_6_seconds() {
    let server = Server::start().await;
    let (chat_id, mut alice, mut bob, _carol) = typing_setup(&server).await;
    alice.ok("typing_start", json!({"chat_id": chat_id})).await;
    let started = Instant::now();
    bob.event("user_typing").await;
    let ev = bob
        .event_within("user_stopped_typing", Duration::from_secs(10), |_| true)
        .await
        .expect("typing expires");
    let after = started.elapsed();
    assert_eq!(ev, json!({"chat_id": chat_id, "user_id": "alice"}));
    assert!(
        after >= Duration::from_millis(5500) && after <= Duration::from_millis(8500),
        "typing expired after {after:?}, expected about 6 s"
    );
}

#[tokio::test]
async fn leave_chat_stops_typing_events_but_not_messages() {
    let server = Server::start().await;
    let (chat_id, mut alice, mut bob, _carol) = typing_setup(&server).await;
    assert_eq!(
        bob.ok("leave_chat", json!({"chat_id": chat_id})).await,
        json!({})
    );
    alice.ok("typing_start", json!({"chat_id": chat_id})).await;
    bob.no_event("user_typing", QUIET).await;
    let m = alice.send(&chat_id, "still a member").await;
    bob.event_where("message_received", |e| e["id"] == m["id"])
        .await;
}

#[tokio::test]
async fn typing_privacy_silences_the_user() {
    let server = Server::start().await;
    let (chat_id, mut alice, mut bob, _carol) = typing_setup(&server).await;
    alice.ok("set_privacy", json!({"typing": false})).await;
    alice.ok("typing_start", json!({"chat_id": chat_id})).await;
    bob.no_event("user_typing", QUIET).await;
    // Bob still shares his.
    bob.ok("typing_start", json!({"chat_id": chat_id})).await;
    assert_eq!(alice.event("user_typing").await["user_id"], "bob");
}

#[tokio::test]
async fn read_receipt_privacy_hides_reads_from_others_but_not_own_devices() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws_token("bob", &device_token("bob", "phone")).await;
    let mut bob2 = server.ws_token("bob", &device_token("bob", "laptop")).await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let m = alice.send(chat_id, "read me").await;
    bob.ok("set_privacy", json!({"read_receipts": false})).await;
    bob.ok(
        "mark_as_read",
        json!({"chat_id": chat_id, "up_to_seq": m["seq"]}),
    )
    .await;
    let ev = bob2.event("message_read").await;
    assert_eq!(ev["user_id"], "bob");
    alice.no_event("message_read", QUIET).await;
}

//! Retention ("disappearing messages") seen from a client: who may set it,
//! what everyone is told, what the chat object says. The server cannot be
//! fast-forwarded, so the sweep itself (old messages become tombstones,
//! their uploads go) is tested at the engine level, in chat-core.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn group_admins_set_retention_and_everyone_is_told() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let mut dave = server.ws("dave").await;
    let chat = alice.group("care team", &["bob", "carol"]).await;
    let chat_id = s(&chat, "id").to_owned();
    assert_eq!(chat["retention_secs"], Value::Null, "kept forever at first");
    alice
        .ok(
            "set_role",
            json!({"chat_id": chat_id, "user_id": "carol", "role": "moderator"}),
        )
        .await;
    let before = alice.send(&chat_id, "before the retention").await;
    for ws in [&mut alice, &mut bob, &mut carol, &mut dave] {
        ws.clear();
    }

    // Members and moderators may not; an outsider does not see the group;
    // the value is required, null or 3600..=31536000 seconds.
    for (who, seconds, code) in [
        ("bob", json!(3600), "forbidden"),
        ("carol", json!(3600), "forbidden"),
        ("dave", json!(3600), "not_found"),
        ("alice", json!(0), "bad_request"),
        ("alice", json!(3599), "bad_request"),
        ("alice", json!(31_536_001), "bad_request"),
        ("alice", json!(-3600), "bad_request"),
        ("alice", json!("an hour"), "bad_request"),
    ] {
        let ws = match who {
            "bob" => &mut bob,
            "carol" => &mut carol,
            "dave" => &mut dave,
            _ => &mut alice,
        };
        let data = json!({"chat_id": chat_id, "seconds": seconds});
        assert_eq!(ws.err("set_retention", data).await, code, "{who} {seconds}");
    }
    assert_eq!(
        alice
            .err("set_retention", json!({"chat_id": chat_id}))
            .await,
        "bad_request",
        "a missing seconds is not \"forever\""
    );

    let ack = alice
        .ok(
            "set_retention",
            json!({"chat_id": chat_id, "seconds": 3600}),
        )
        .await;
    let view = &ack["chat"];
    check_chat(view, "group");
    assert_eq!(view["retention_secs"], 3600);
    for ws in [&mut alice, &mut bob, &mut carol] {
        let note = ws
            .event_where("message_received", |m| {
                m["system"]["event"] == "retention_changed"
            })
            .await;
        assert_eq!(note["chat_id"], chat_id);
        assert_eq!(note["sender_id"], "alice");
        assert_eq!(
            note["system"],
            json!({"event": "retention_changed", "seconds": 3600})
        );
        let updated = ws
            .event_where("chat_updated", |c| c["retention_secs"] == 3600)
            .await;
        assert_eq!(updated["id"], chat_id);
    }
    dave.no_event("chat_updated", QUIET).await;

    // The change is in the log; nothing younger than the retention goes.
    let (history, _) = bob.history(&chat_id, json!({})).await;
    assert!(
        history
            .iter()
            .any(|m| m["system"]["event"] == "retention_changed"),
        "{history:?}"
    );
    let kept = history
        .iter()
        .find(|m| m["id"] == before["id"])
        .expect("the earlier message");
    assert_eq!(kept["content"], "before the retention");
    let chats = server.get("/api/v1/chat/sessions", "carol").await;
    let listed = chats.expect(200)["chats"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["id"] == chat_id).cloned())
        .expect("the group in carol's list");
    assert_eq!(listed["retention_secs"], 3600);

    // null keeps messages forever again.
    let ack = alice
        .ok(
            "set_retention",
            json!({"chat_id": chat_id, "seconds": null}),
        )
        .await;
    assert_eq!(ack["chat"]["retention_secs"], Value::Null);
    let note = bob
        .event_where("message_received", |m| {
            m["system"]["event"] == "retention_changed"
        })
        .await;
    assert_eq!(
        note["system"],
        json!({"event": "retention_changed", "seconds": null})
    );
}

#[tokio::test]
async fn either_side_of_a_direct_chat_sets_retention() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id").to_owned();
    alice.clear();
    bob.clear();
    let ack = bob
        .ok(
            "set_retention",
            json!({"chat_id": chat_id, "seconds": 31_536_000}),
        )
        .await;
    assert_eq!(ack["chat"]["retention_secs"], 31_536_000);
    let updated = alice
        .event_where("chat_updated", |c| c["id"] == chat_id)
        .await;
    assert_eq!(updated["retention_secs"], 31_536_000);
    let ack = alice
        .ok(
            "set_retention",
            json!({"chat_id": chat_id, "seconds": 86_400}),
        )
        .await;
    assert_eq!(ack["chat"]["retention_secs"], 86_400);
    let session = server
        .get(&format!("/api/v1/chat/sessions/{chat_id}"), "bob")
        .await;
    assert_eq!(session.expect(200)["retention_secs"], 86_400);
}

#[tokio::test]
async fn the_rest_chat_settings_take_retention_for_those_who_may_set_it() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.group("circle", &["bob"]).await;
    let path = format!("/api/v1/chat/sessions/{}", s(&chat, "id"));
    server
        .put(&path, "bob", json!({"retention_secs": 3600}))
        .await
        .expect_error(403, "forbidden");
    server
        .put(&path, "alice", json!({"retention_secs": 59}))
        .await
        .expect_error(400, "bad_request");
    let put = server
        .put(&path, "alice", json!({"retention_secs": 7200}))
        .await;
    assert_eq!(put.expect(200)["retention_secs"], 7200);
    let updated = bob
        .event_where("chat_updated", |c| c["retention_secs"] == 7200)
        .await;
    assert_eq!(updated["id"], chat["id"]);
    let put = server
        .put(&path, "alice", json!({"retention_secs": null}))
        .await;
    assert_eq!(put.expect(200)["retention_secs"], Value::Null);
    // Left out, it stays as it is.
    let put = server.put(&path, "alice", json!({"name": "renamed"})).await;
    assert_eq!(put.expect(200)["retention_secs"], Value::Null);
    alice.clear();
}

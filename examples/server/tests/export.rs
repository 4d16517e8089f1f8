//! The GDPR export over HTTP: one streamed JSON document with the caller's
//! own messages (decrypted from the at-rest store), nobody else's.

mod common;

use common::*;
use serde_json::{Value, json};

const EXPORT: &str = "/api/v1/users/me/export";

/// Every message of the export, over all chats.
fn messages(doc: &Value) -> Vec<&Value> {
    doc["chats"]
        .as_array()
        .expect("chats")
        .iter()
        .flat_map(|c| c["messages"].as_array().expect("messages"))
        .collect()
}

#[tokio::test]
async fn export_holds_the_users_messages_and_nobody_elses() {
    let server = Server::start().await;
    let mut alice = server.ws("exp-alice").await;
    let mut bob = server.ws("exp-bob").await;
    let direct = alice.direct("exp-bob").await;
    let direct_id = s(&direct, "id").to_owned();
    let group = alice.group("exp-group", &["exp-bob"]).await;
    let group_id = s(&group, "id").to_owned();
    let mine = unique("alice-says");
    let theirs = unique("bob-says");
    let mut sent = Vec::new();
    for chat in [&direct_id, &group_id] {
        for i in 0..3 {
            sent.push(alice.send(chat, &format!("{mine} {i}")).await);
        }
        bob.send(chat, &theirs).await;
    }
    let bobs = bob.send(&direct_id, &theirs).await;
    alice
        .ok("react", json!({"message_id": bobs["id"], "emoji": "👍"}))
        .await;
    server
        .post(
            &format!("/api/v1/chat/blocks/{}", "exp-dave"),
            "exp-alice",
            json!({}),
        )
        .await
        .expect(200);

    let r = server.get(EXPORT, "exp-alice").await;
    let doc = r.expect(200);
    assert_eq!(
        r.headers["content-type"], "application/json",
        "{:?}",
        r.headers
    );
    assert_eq!(r.headers["cache-control"], "no-store");
    let disposition = r.headers["content-disposition"].to_str().unwrap();
    assert!(
        disposition.starts_with("attachment; filename=\"export-exp-alice.json\""),
        "{disposition}"
    );
    assert_eq!(doc["user_id"], "exp-alice");
    assert_eq!(doc["blocked"], json!(["exp-dave"]));
    assert!(doc["privacy"].is_object());
    let exported = messages(doc);
    assert!(exported.iter().all(|m| m["sender_id"] == "exp-alice"));
    let texts: Vec<&str> = exported
        .iter()
        .filter(|m| m["type"] == "text")
        .map(|m| m["content"].as_str().expect("decrypted content"))
        .collect();
    assert_eq!(texts.len(), 6, "{texts:?}");
    assert!(texts.iter().all(|t| t.starts_with(&mine)), "{texts:?}");
    assert!(!r.text.contains(&theirs), "bob's messages are his data");
    for m in &sent {
        assert!(exported.iter().any(|e| e["id"] == m["id"]));
    }
    let direct_chat = doc["chats"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == direct_id.as_str())
        .expect("the direct chat");
    assert_eq!(
        direct_chat["reactions"],
        json!([{"message_id": bobs["id"], "emoji": "👍"}])
    );

    // Bob's has his, not alice's.
    let r = server.get(EXPORT, "exp-bob").await;
    let doc = r.expect(200);
    assert_eq!(
        messages(doc).iter().filter(|m| m["type"] == "text").count(),
        3
    );
    assert!(!r.text.contains(&mine));

    server
        .http("GET", EXPORT, None, None)
        .await
        .expect_error(401, "unauthenticated");
}

#[tokio::test]
async fn export_keeps_what_the_user_sent_in_chats_they_left() {
    let server = Server::start().await;
    let mut ann = server.ws("exl-ann").await;
    let group = ann.group("exl-group", &["exl-bob"]).await;
    let group_id = s(&group, "id").to_owned();
    let words = unique("said-before-leaving");
    let sent = ann.send(&group_id, &words).await;
    server
        .delete(&format!("/api/v1/chat/sessions/{group_id}"), "exl-ann")
        .await
        .expect(200);

    let r = server.get(EXPORT, "exl-ann").await;
    let doc = r.expect(200);
    assert!(
        messages(doc).is_empty(),
        "the group is not among her chats: {doc}"
    );
    let left = doc["messages_in_left_chats"].as_array().expect("an array");
    assert_eq!(left.len(), 1, "{doc}");
    assert_eq!(left[0]["id"], sent["id"]);
    assert_eq!(left[0]["content"], words.as_str(), "decrypted");
}

//! The GDPR export: one JSON document, read page by page, with exactly the
//! user's own messages and what else the engine holds about them.

use bytes::Bytes;
use futures::StreamExt;

use super::*;

/// Posts `n` texts, `senders` taking turns.
async fn post(store: &MemoryStore, chat: ChatId, senders: &[&str], n: usize) {
    post_texts(
        store,
        chat,
        senders,
        n,
        Timestamp::from_millis(1_795_464_000_000),
    )
    .await;
}

async fn export(engine: &ChatEngine, who: &str) -> (Value, usize) {
    let chunks: Vec<Bytes> = engine
        .export(&actor(who))
        .unwrap()
        .map(|chunk| chunk.unwrap())
        .collect()
        .await;
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let doc = serde_json::from_slice(&whole)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&whole)));
    (doc, chunks.len())
}

#[tokio::test]
async fn exports_run_one_per_user_and_a_few_per_node() {
    let e = engine().await;
    let first = e.export(&actor("alice")).unwrap();
    assert_eq!(
        code(e.export(&actor("alice")).map(|_| ())),
        C::RateLimited,
        "a second export of the same user"
    );
    let others: Vec<_> = (1..MAX_EXPORTS)
        .map(|i| e.export(&actor(&format!("u{i}"))).unwrap())
        .collect();
    assert_eq!(
        code(e.export(&actor("zed")).map(|_| ())),
        C::RateLimited,
        "the node's exports are all taken"
    );
    // Finished or abandoned, a slot is free again.
    let chunks: Vec<_> = first.collect().await;
    assert!(chunks.iter().all(|c| c.is_ok()));
    drop(others);
    let again = e.export(&actor("alice")).unwrap();
    let zed = e.export(&actor("zed")).unwrap();
    drop((again, zed));
}

#[tokio::test]
async fn export_holds_exactly_the_users_data_across_pages() {
    let (e, store) = engine_with(EngineConfig::default()).await;
    let with_bob = direct(&e, "alice", "bob").await;
    let g = group(&e, "alice", &["bob", "cat"]).await;
    // 300 of alice's among bob's in one chat, 150 among cat's in the group:
    // several history windows each.
    post(&store, with_bob, &["alice", "alice", "alice", "bob"], 400).await;
    post(&store, g, &["alice", "cat"], 300).await;
    // More chats than one chat page, one message of alice in each.
    for i in 0..105 {
        let chat = direct(&e, "alice", &format!("u{i}")).await;
        send(&e, "alice", chat, &format!("c{i}"), &format!("hello u{i}"))
            .await
            .unwrap();
    }
    // A chat alice is not in.
    let others = direct(&e, "bob", "cat").await;
    send(&e, "bob", others, "x", "not alice's").await.unwrap();

    // An image of alice.
    let upload = image_upload("alice", with_bob);
    store.insert_media(upload.clone()).await.unwrap();
    let image = SendMessage {
        chat_id: with_bob,
        client_msg_id: "img".into(),
        kind: Some(MessageType::Image),
        content: Some("a caption".into()),
        media_id: Some(upload.id),
        reply_to: None,
        resource: None,
    };
    let image = e.send(&actor("alice"), image).await.unwrap();
    e.react(&actor("bob"), image.id, "👍").await.unwrap();
    // Alice reacts to bob's message; bob reports hers, she reports his.
    let bobs = send(&e, "bob", with_bob, "b", "bob's").await.unwrap();
    e.react(&actor("alice"), bobs.id, "❤️").await.unwrap();
    e.report(&actor("alice"), bobs.id, "rude").await.unwrap();
    e.report(&actor("bob"), image.id, "spam").await.unwrap();
    e.block(&actor("alice"), &uid("dave")).await.unwrap();
    e.set_privacy(
        &actor("alice"),
        PrivacyPatch {
            read_receipts: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    let (doc, chunks) = export(&e, "alice").await;
    assert!(chunks > 1, "a large export comes in several pieces");
    assert_eq!(doc["user_id"], "alice");
    assert!(doc["exported_at"].is_string());
    assert_eq!(doc["privacy"]["read_receipts"], false);
    assert_eq!(doc["blocked"], serde_json::json!(["dave"]));
    assert_eq!(doc["key_packages"], serde_json::json!([]));
    let reports = doc["reports_filed"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0]["message_id"], bobs.id.to_string());
    assert_eq!(reports[0]["reason"], "rude");
    assert!(reports[0].get("content").is_none(), "no evidence snapshot");

    let chats = doc["chats"].as_array().unwrap();
    assert_eq!(chats.len(), 107, "every chat of alice once, no other");
    let ids: HashSet<&str> = chats.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 107);
    assert!(!ids.contains(others.to_string().as_str()));
    let mut texts = 0;
    for chat in chats {
        assert!(chat["receipts"]["read_seq"].is_u64(), "{chat}");
        assert!(chat["participants"].is_array());
        let messages = chat["messages"].as_array().unwrap();
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "oldest first");
        for m in messages {
            assert_eq!(m["sender_id"], "alice", "{m}");
            if m["type"] == "text" {
                texts += 1;
            }
        }
    }
    assert_eq!(texts, 300 + 150 + 105);

    let chat = |id: ChatId| {
        chats
            .iter()
            .find(|c| c["id"] == id.to_string())
            .unwrap()
            .clone()
    };
    let direct_chat = chat(with_bob);
    let image_json = direct_chat["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == image.id.to_string())
        .unwrap()
        .clone();
    assert_eq!(
        image_json["media"]["url"],
        format!("/api/v1/chat/media/{}", upload.id)
    );
    assert_eq!(image_json["content"], "a caption");
    assert_eq!(image_json["reactions"]["👍"], serde_json::json!(["bob"]));
    assert_eq!(
        direct_chat["reactions"],
        serde_json::json!([{"message_id": bobs.id, "emoji": "❤️"}])
    );
    assert_eq!(chat(g)["messages"].as_array().unwrap().len() as u64, {
        // 150 texts, and the system message of the group's creation.
        let system = chat(g)["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["type"] == "system")
            .count() as u64;
        150 + system
    });

    // Bob's export has his messages, not alice's.
    let (doc, _) = export(&e, "bob").await;
    let bob_messages: Vec<&Value> = doc["chats"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["messages"].as_array().unwrap())
        .collect();
    assert!(bob_messages.iter().all(|m| m["sender_id"] == "bob"));
    assert_eq!(
        bob_messages.iter().filter(|m| m["type"] == "text").count(),
        100 + 1 + 1
    );
    assert_eq!(doc["reports_filed"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn export_lists_the_key_packages_nobody_claimed() {
    let e = mls_engine(None).await;
    let (alice, phone) = (actor("alice"), DeviceId::new("phone").unwrap());
    e.publish_key_packages(&alice, &phone, kp("alice", "phone", 2), None)
        .await
        .unwrap();
    e.claim_key_packages(&actor("bob"), &[uid("alice")])
        .await
        .unwrap();
    let (doc, _) = export(&e, "alice").await;
    let listed = doc["key_packages"].as_array().expect("key packages");
    assert_eq!(listed.len(), 1, "one was claimed: {doc}");
    assert_eq!(listed[0]["device_id"], "phone");
    assert_eq!(listed[0]["last_resort"], false);
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(listed[0]["key_package"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes, b"kp:alice/phone");
    let (doc, _) = export(&e, "bob").await;
    assert_eq!(doc["key_packages"], serde_json::json!([]));
}

//! Messages over WebSocket: send, idempotency, validation, edit, delete,
//! receipts, reactions, history, join/leave, direct chats, envelope errors.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn ping_acks_empty_object() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn create_direct_returns_chat_and_notifies_both_once() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;

    let chat = alice.direct("bob").await;
    check_chat(&chat, "direct");
    assert_eq!(participant_ids(&chat), ["alice", "bob"]);
    assert_eq!(chat["encryption"], "at_rest");
    assert!(chat["name"].is_null(), "{chat}");
    let id = s(&chat, "id").to_owned();

    let ev = bob.event("chat_created").await;
    assert_eq!(ev["id"], id.as_str());
    check_chat(&ev, "direct");
    let ev = alice.event("chat_created").await;
    assert_eq!(ev["id"], id.as_str());
    carol.no_event("chat_created", QUIET).await;

    // Asking again (from either side) returns the same chat, nobody is told twice.
    let again = alice.direct("bob").await;
    assert_eq!(again["id"], id.as_str());
    let from_bob = bob.direct("alice").await;
    assert_eq!(from_bob["id"], id.as_str());
    bob.no_event("chat_created", QUIET).await;
    alice.no_event("chat_created", Duration::ZERO).await;
}

#[tokio::test]
async fn create_direct_with_e2ee_and_bad_encryption() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let ack = alice
        .ok(
            "create_direct",
            json!({"user_id": "bob", "encryption": "e2ee"}),
        )
        .await;
    assert_eq!(ack["chat"]["encryption"], "e2ee");
    assert_eq!(
        alice
            .err(
                "create_direct",
                json!({"user_id": "carol", "encryption": "rot13"})
            )
            .await,
        "bad_request"
    );
    assert_eq!(
        alice
            .err("create_direct", json!({"user_id": "not a valid id!"}))
            .await,
        "bad_request"
    );
}

#[tokio::test]
async fn send_message_acks_the_stored_message() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let ack = alice
        .ok(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "c-9f3", "type": "text", "content": "hello"}),
        )
        .await;
    let m = &ack["message"];
    check_new_text(m, chat_id, "alice", "hello");
    assert_eq!(m["client_msg_id"], "c-9f3");
    assert!(m["reply_to"].is_null());
}

#[tokio::test]
async fn message_received_reaches_every_connection_of_every_participant() {
    let server = Server::start().await;
    let mut a1 = server
        .ws_token("alice", &device_token("alice", "phone"))
        .await;
    let mut a2 = server
        .ws_token("alice", &device_token("alice", "laptop"))
        .await;
    let mut b1 = server.ws("bob").await;
    let mut b2 = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let chat = a1.direct("bob").await;
    let chat_id = s(&chat, "id");

    let m = a1.send(chat_id, "to everyone").await;
    for ws in [&mut a1, &mut a2, &mut b1, &mut b2] {
        let ev = ws
            .event_where("message_received", |e| e["id"] == m["id"])
            .await;
        assert_eq!(ev, m, "the event carries the message as acked");
    }
    carol.no_event("message_received", QUIET).await;
    // Exactly once per connection.
    for ws in [&mut a1, &mut a2, &mut b1, &mut b2] {
        ws.no_event("message_received", Duration::from_millis(100))
            .await;
    }
}

#[tokio::test]
async fn resending_a_client_msg_id_returns_the_original_and_notifies_nobody_twice() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let data = json!({"chat_id": chat_id, "client_msg_id": "dup-1", "content": "once"});
    let first = alice.ok("send_message", data.clone()).await["message"].clone();
    bob.event_where("message_received", |e| e["id"] == first["id"])
        .await;

    let second = alice.ok("send_message", data).await["message"].clone();
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["seq"], first["seq"]);
    // Even with different content, it is the same message.
    let third = alice
        .ok(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "dup-1", "content": "changed"}),
        )
        .await["message"]
        .clone();
    assert_eq!(third["id"], first["id"]);
    assert_eq!(third["content"], "once");
    bob.no_event("message_received", QUIET).await;
    let (messages, _) = bob.history(chat_id, json!({})).await;
    let copies = messages
        .iter()
        .filter(|m| m["client_msg_id"] == "dup-1")
        .count();
    assert_eq!(copies, 1, "{messages:?}");
}

#[tokio::test]
async fn send_message_requires_a_valid_client_msg_id() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    for bad in [
        json!({"chat_id": chat_id, "content": "no id"}),
        json!({"chat_id": chat_id, "client_msg_id": "", "content": "empty id"}),
        json!({"chat_id": chat_id, "client_msg_id": "x".repeat(65), "content": "long id"}),
    ] {
        assert_eq!(
            alice.err("send_message", bad.clone()).await,
            "bad_request",
            "{bad}"
        );
    }
    let m = alice
        .ok(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "y".repeat(64), "content": "ok"}),
        )
        .await;
    assert_eq!(m["message"]["client_msg_id"], "y".repeat(64));
}

#[tokio::test]
async fn text_length_is_1_to_8192_scalar_values_after_trimming() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let send = |content: String| json!({"chat_id": chat_id, "client_msg_id": unique("c"), "content": content});

    // 8192 two-byte characters are fine; so is padding that trims away.
    let max = "é".repeat(8192);
    let m = alice.ok("send_message", send(max.clone())).await;
    assert_eq!(
        m["message"]["content"].as_str().map(|c| c.chars().count()),
        Some(8192)
    );
    alice
        .ok("send_message", send(format!("  {}  ", "x".repeat(8192))))
        .await;

    for bad in [
        "é".repeat(8193),
        String::new(),
        "   \n\t  ".to_owned(),
        "😀".repeat(8193),
    ] {
        let len = bad.chars().count();
        assert_eq!(
            alice.err("send_message", send(bad)).await,
            "bad_request",
            "text of {len} chars"
        );
    }
    // And a text message without content at all.
    assert_eq!(
        alice
            .err(
                "send_message",
                json!({"chat_id": chat_id, "client_msg_id": unique("c"), "type": "text"})
            )
            .await,
        "bad_request"
    );
}

#[tokio::test]
async fn control_characters_are_refused_but_newline_and_tab_are_fine() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let send = |content: &str| json!({"chat_id": chat_id, "client_msg_id": unique("c"), "content": content});
    for bad in [
        "bell\u{7}",
        "nul\u{0}here",
        "esc\u{1b}[31m",
        "del\u{7f}",
        "cr\rlf",
    ] {
        assert_eq!(
            alice.err("send_message", send(bad)).await,
            "bad_request",
            "{bad:?}"
        );
    }
    let m = alice.ok("send_message", send("line 1\nline\t2")).await;
    assert_eq!(m["message"]["content"], "line 1\nline\t2");
}

#[tokio::test]
async fn media_types_require_a_media_id() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    for ty in ["image", "voice", "file"] {
        let code = alice
            .err(
                "send_message",
                json!({"chat_id": chat_id, "client_msg_id": unique("c"), "type": ty}),
            )
            .await;
        assert_eq!(code, "bad_request", "{ty} without media_id");
    }
    let code = alice
        .err(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": unique("c"), "type": "hologram", "content": "x"}),
        )
        .await;
    assert_eq!(code, "bad_request", "unknown message type");
}

#[tokio::test]
async fn reply_to_is_echoed() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let first = alice.send(chat_id, "question").await;
    let reply = bob
        .ok(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "r1", "content": "answer", "reply_to": first["id"]}),
        )
        .await["message"]
        .clone();
    assert_eq!(reply["reply_to"], first["id"]);
    let ev = alice
        .event_where("message_received", |e| e["id"] == reply["id"])
        .await;
    assert_eq!(ev["reply_to"], first["id"]);
}

#[tokio::test]
async fn sending_to_an_unknown_or_foreign_chat_is_not_found() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut mallory = server.ws("mallory").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let send =
        |chat: &str| json!({"chat_id": chat, "client_msg_id": unique("c"), "content": "psst"});
    assert_eq!(
        mallory.err("send_message", send(chat_id)).await,
        "not_found"
    );
    assert_eq!(
        alice
            .err("send_message", send("01J00000000000000000000000"))
            .await,
        "not_found"
    );
    // The outsider sees nothing of the chat either.
    assert_eq!(
        mallory.err("join_chat", json!({"chat_id": chat_id})).await,
        "not_found"
    );
    assert_eq!(
        mallory.err("history", json!({"chat_id": chat_id})).await,
        "not_found"
    );
    assert_eq!(
        mallory
            .err("mark_as_read", json!({"chat_id": chat_id, "up_to_seq": 1}))
            .await,
        "not_found"
    );
    assert_eq!(
        mallory
            .err("typing_start", json!({"chat_id": chat_id}))
            .await,
        "not_found"
    );
}

#[tokio::test]
async fn outsiders_get_not_found_for_messages() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut mallory = server.ws("mallory").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "private").await;
    let mid = s(&m, "id");
    assert_eq!(
        mallory
            .err("edit_message", json!({"message_id": mid, "content": "x"}))
            .await,
        "not_found"
    );
    assert_eq!(
        mallory
            .err("delete_message", json!({"message_id": mid}))
            .await,
        "not_found"
    );
    assert_eq!(
        mallory
            .err("react", json!({"message_id": mid, "emoji": "👍"}))
            .await,
        "not_found"
    );
    assert_eq!(
        mallory
            .err("unreact", json!({"message_id": mid, "emoji": "👍"}))
            .await,
        "not_found"
    );
    assert_eq!(
        mallory
            .err("report", json!({"message_id": mid, "reason": "spam"}))
            .await,
        "not_found"
    );
    assert_eq!(
        alice
            .err(
                "edit_message",
                json!({"message_id": "01J00000000000000000000000", "content": "x"})
            )
            .await,
        "not_found"
    );
}

#[tokio::test]
async fn seq_and_ids_increase_with_every_message() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let mut last_seq = n(&chat, "last_seq");
    let mut last_id = String::new();
    for i in 0..5 {
        let m = alice.send(chat_id, &format!("m{i}")).await;
        assert!(n(&m, "seq") > last_seq, "seq must grow: {m}");
        assert!(
            s(&m, "id") > last_id.as_str(),
            "ids are time-ordered: {m} after {last_id}"
        );
        last_seq = n(&m, "seq");
        last_id = s(&m, "id").to_owned();
    }
    let joined = alice.ok("join_chat", json!({"chat_id": chat_id})).await;
    assert_eq!(n(&joined["chat"], "last_seq"), last_seq);
}

#[tokio::test]
async fn events_of_a_chat_arrive_in_seq_order() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = alice
            .send_cmd(
                "send_message",
                json!({"chat_id": chat_id, "client_msg_id": unique("c"), "content": format!("burst {i}")}),
            )
            .await;
        ids.push(id);
    }
    for id in &ids {
        alice.reply(id).await.expect("send acked");
    }
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        let ev = bob.event("message_received").await;
        seqs.push(n(&ev, "seq"));
    }
    let mut sorted = seqs.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        seqs, sorted,
        "message_received out of seq order or duplicated"
    );
}

#[tokio::test]
async fn edit_message_updates_and_notifies_participants() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "helo").await;
    let edited = alice
        .ok(
            "edit_message",
            json!({"message_id": m["id"], "content": "hello"}),
        )
        .await["message"]
        .clone();
    assert_eq!(edited["id"], m["id"]);
    assert_eq!(edited["content"], "hello");
    assert_eq!(edited["seq"], m["seq"], "seq is the creation seq");
    assert!(n(&edited, "updated_seq") > n(&m, "seq"), "{edited}");
    assert!(is_timestamp(&edited["edited_at"]), "{edited}");

    for ws in [&mut alice, &mut bob] {
        let ev = ws
            .event_where("message_edited", |e| e["id"] == m["id"])
            .await;
        assert_eq!(ev["content"], "hello");
        assert_eq!(ev["updated_seq"], edited["updated_seq"]);
    }
    carol.no_event("message_edited", QUIET).await;
}

#[tokio::test]
async fn only_the_sender_may_edit() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "mine").await;
    assert_eq!(
        bob.err(
            "edit_message",
            json!({"message_id": m["id"], "content": "yours"})
        )
        .await,
        "forbidden"
    );
    assert_eq!(
        alice
            .err(
                "edit_message",
                json!({"message_id": m["id"], "content": ""})
            )
            .await,
        "bad_request"
    );
    assert_eq!(
        alice
            .err("edit_message", json!({"message_id": m["id"]}))
            .await,
        "bad_request"
    );
}

#[tokio::test]
async fn editing_a_deleted_message_is_a_conflict() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "soon gone").await;
    alice
        .ok("delete_message", json!({"message_id": m["id"]}))
        .await;
    assert_eq!(
        alice
            .err(
                "edit_message",
                json!({"message_id": m["id"], "content": "back"})
            )
            .await,
        "conflict"
    );
}

#[tokio::test]
async fn delete_message_tombstones_and_notifies_participants() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let m = alice.send(chat_id, "oops").await;
    let ack = alice
        .ok("delete_message", json!({"message_id": m["id"]}))
        .await;
    assert_eq!(ack, json!({"message_id": m["id"]}));

    for ws in [&mut alice, &mut bob] {
        let ev = ws
            .event_where("message_deleted", |e| e["message_id"] == m["id"])
            .await;
        assert_eq!(ev["chat_id"], chat_id);
        assert_eq!(ev["seq"], m["seq"]);
        assert!(n(&ev, "updated_seq") > n(&m, "seq"), "{ev}");
    }
    carol.no_event("message_deleted", QUIET).await;

    let (messages, _) = bob.history(chat_id, json!({})).await;
    let gone = messages
        .iter()
        .find(|x| x["id"] == m["id"])
        .expect("deleted message stays as a tombstone");
    assert_eq!(gone["deleted"], true);
    assert!(gone["content"].is_null(), "{gone}");
}

#[tokio::test]
async fn only_the_sender_may_delete_in_a_direct_chat() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "mine").await;
    assert_eq!(
        bob.err("delete_message", json!({"message_id": m["id"]}))
            .await,
        "forbidden"
    );
    assert_eq!(bob.err("delete_message", json!({})).await, "bad_request");
}

#[tokio::test]
async fn mark_delivered_notifies_participants_and_moves_delivered_seq() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let m = alice.send(chat_id, "got it?").await;
    let seq = n(&m, "seq");
    assert_eq!(
        bob.ok(
            "mark_delivered",
            json!({"chat_id": chat_id, "up_to_seq": seq})
        )
        .await,
        json!({})
    );
    let ev = alice.event("message_delivered").await;
    assert_eq!(
        ev,
        json!({"chat_id": chat_id, "user_id": "bob", "up_to_seq": seq})
    );
    carol.no_event("message_delivered", QUIET).await;

    let joined = alice.ok("join_chat", json!({"chat_id": chat_id})).await;
    let p = participant(&joined["chat"], "bob");
    assert_eq!(n(p, "delivered_seq"), seq);
}

#[tokio::test]
async fn mark_as_read_notifies_participants_and_implies_delivered() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    alice.send(chat_id, "one").await;
    let m2 = alice.send(chat_id, "two").await;
    let seq = n(&m2, "seq");
    assert_eq!(
        bob.ok(
            "mark_as_read",
            json!({"chat_id": chat_id, "up_to_seq": seq})
        )
        .await,
        json!({})
    );
    let ev = alice.event("message_read").await;
    assert_eq!(
        ev,
        json!({"chat_id": chat_id, "user_id": "bob", "up_to_seq": seq})
    );
    carol.no_event("message_read", QUIET).await;

    let joined = bob.ok("join_chat", json!({"chat_id": chat_id})).await;
    let p = participant(&joined["chat"], "bob");
    assert_eq!(n(p, "read_seq"), seq);
    assert_eq!(n(p, "delivered_seq"), seq, "read implies delivered");
    assert_eq!(joined["chat"]["unread_count"], 0);
}

#[tokio::test]
async fn unread_count_counts_other_peoples_messages_after_read_seq() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let chat = alice.group("team", &["bob", "carol"]).await;
    let chat_id = s(&chat, "id");
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(n(&alice.send(chat_id, &format!("a{i}")).await, "seq"));
    }
    // A group update writes a system message; system messages never count.
    alice
        .ok(
            "update_group",
            json!({"chat_id": chat_id, "name": "team 2"}),
        )
        .await;
    carol.send(chat_id, "carol's").await;

    let c = bob.ok("join_chat", json!({"chat_id": chat_id})).await["chat"].clone();
    assert_eq!(c["unread_count"], 4, "3 from alice, 1 from carol: {c}");
    let c = alice.ok("join_chat", json!({"chat_id": chat_id})).await["chat"].clone();
    assert_eq!(
        c["unread_count"], 1,
        "only carol's message counts for alice: {c}"
    );

    bob.ok(
        "mark_as_read",
        json!({"chat_id": chat_id, "up_to_seq": seqs[1]}),
    )
    .await;
    let c = bob.ok("join_chat", json!({"chat_id": chat_id})).await["chat"].clone();
    assert_eq!(c["unread_count"], 2, "{c}");
}

#[tokio::test]
async fn react_and_unreact_notify_participants_and_move_updated_seq() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let m = alice.send(chat_id, "nice").await;
    let mid = s(&m, "id");

    let reacted = bob
        .ok("react", json!({"message_id": mid, "emoji": "👍"}))
        .await["message"]
        .clone();
    assert_eq!(reacted["reactions"], json!({"👍": ["bob"]}));
    assert!(
        n(&reacted, "updated_seq") > n(&m, "updated_seq"),
        "{reacted}"
    );
    for ws in [&mut alice, &mut bob] {
        let ev = ws.event("reaction_added").await;
        assert_eq!(
            ev,
            json!({"chat_id": chat_id, "message_id": mid, "user_id": "bob", "emoji": "👍",
                   "updated_seq": reacted["updated_seq"]})
        );
    }
    carol.no_event("reaction_added", QUIET).await;

    // A second identical reaction does not add a second entry.
    if let Ok(again) = bob
        .request("react", json!({"message_id": mid, "emoji": "👍"}))
        .await
    {
        assert_eq!(again["message"]["reactions"], json!({"👍": ["bob"]}));
    }
    let both = alice
        .ok("react", json!({"message_id": mid, "emoji": "👍"}))
        .await["message"]
        .clone();
    let mut users: Vec<&str> = both["reactions"]["👍"]
        .as_array()
        .expect("reactions")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);

    let removed = bob
        .ok("unreact", json!({"message_id": mid, "emoji": "👍"}))
        .await["message"]
        .clone();
    assert_eq!(removed["reactions"], json!({"👍": ["alice"]}));
    assert!(n(&removed, "updated_seq") > n(&both, "updated_seq"));
    for ws in [&mut alice, &mut bob] {
        let ev = ws.event("reaction_removed").await;
        assert_eq!(
            ev,
            json!({"chat_id": chat_id, "message_id": mid, "user_id": "bob", "emoji": "👍",
                   "updated_seq": removed["updated_seq"]})
        );
    }
    carol.no_event("reaction_removed", QUIET).await;
    let last = alice
        .ok("unreact", json!({"message_id": mid, "emoji": "👍"}))
        .await["message"]
        .clone();
    assert!(no_reactions(&last), "{last}");
}

#[tokio::test]
async fn at_most_32_distinct_emoji_per_message() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "react to me").await;
    for i in 0..32u32 {
        let emoji = char::from_u32(0x1F600 + i).unwrap().to_string();
        alice
            .ok("react", json!({"message_id": m["id"], "emoji": emoji}))
            .await;
    }
    let emoji = char::from_u32(0x1F600 + 32).unwrap().to_string();
    assert_eq!(
        alice
            .err("react", json!({"message_id": m["id"], "emoji": emoji}))
            .await,
        "conflict"
    );
}

#[tokio::test]
async fn history_is_newest_first_and_pages_with_before_seq() {
    let server = Server::with_config(UNLIMITED).await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let mut seqs = Vec::new();
    for i in 0..60 {
        seqs.push(n(&alice.send(chat_id, &format!("h{i}")).await, "seq"));
    }
    let (page, more) = alice.history(chat_id, json!({})).await;
    assert_eq!(page.len(), 50, "default limit is 50");
    assert!(more);
    let got: Vec<i64> = page.iter().map(|m| n(m, "seq")).collect();
    let want: Vec<i64> = seqs.iter().rev().take(50).copied().collect();
    assert_eq!(got, want, "newest first");

    let oldest = *got.last().unwrap();
    let (rest, more) = alice
        .history(chat_id, json!({"before_seq": oldest, "limit": 200}))
        .await;
    assert!(!more, "nothing older after this page");
    let rest_seqs: Vec<i64> = rest
        .iter()
        .filter(|m| m["type"] != "system")
        .map(|m| n(m, "seq"))
        .collect();
    let want: Vec<i64> = seqs.iter().rev().skip(50).copied().collect();
    assert_eq!(rest_seqs, want);
    assert!(rest.iter().all(|m| n(m, "seq") < oldest));

    let (small, more) = alice.history(chat_id, json!({"limit": 3})).await;
    assert_eq!(small.len(), 3);
    assert!(more);
    assert_eq!(n(&small[0], "seq"), *seqs.last().unwrap());
}

#[tokio::test]
async fn history_limit_must_be_1_to_200() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    alice.send(chat_id, "x").await;
    for limit in [0, 201, -1] {
        assert_eq!(
            alice
                .err("history", json!({"chat_id": chat_id, "limit": limit}))
                .await,
            "bad_request",
            "limit {limit}"
        );
    }
    let (page, more) = alice.history(chat_id, json!({"limit": 200})).await;
    assert!(!page.is_empty());
    assert!(!more);
    let (page, _) = alice.history(chat_id, json!({"limit": 1})).await;
    assert_eq!(page.len(), 1);
}

#[tokio::test]
async fn join_chat_returns_the_chat_and_the_last_50_messages_oldest_first() {
    let server = Server::with_config(UNLIMITED).await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    let mut seqs = Vec::new();
    for i in 0..60 {
        seqs.push(n(&alice.send(chat_id, &format!("j{i}")).await, "seq"));
    }
    let ack = bob.ok("join_chat", json!({"chat_id": chat_id})).await;
    check_chat(&ack["chat"], "direct");
    assert_eq!(ack["chat"]["id"], chat_id);
    assert_eq!(n(&ack["chat"], "last_seq"), *seqs.last().unwrap());
    let got: Vec<i64> = ack["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| n(m, "seq"))
        .collect();
    assert_eq!(got, seqs[10..].to_vec(), "last 50, ascending seq");
    assert_eq!(ack["messages"][49]["content"], "j59");
}

#[tokio::test]
async fn join_and_leave_unknown_chat_and_leave_ack() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    assert_eq!(
        alice
            .err(
                "join_chat",
                json!({"chat_id": "01J00000000000000000000000"})
            )
            .await,
        "not_found"
    );
    assert_eq!(alice.err("join_chat", json!({})).await, "bad_request");
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    alice.ok("join_chat", json!({"chat_id": chat_id})).await;
    assert_eq!(
        alice.ok("leave_chat", json!({"chat_id": chat_id})).await,
        json!({})
    );
    // Membership is unchanged: messages still arrive and can be sent.
    let m = alice.send(chat_id, "still here").await;
    alice
        .event_where("message_received", |e| e["id"] == m["id"])
        .await;
}

#[tokio::test]
async fn report_command_returns_a_report_id_that_admins_see() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "rude words").await;
    let ack = bob
        .ok("report", json!({"message_id": m["id"], "reason": "abuse"}))
        .await;
    let report_id = s(&ack, "report_id").to_owned();
    assert!(!report_id.is_empty());
    let list = server
        .http(
            "GET",
            "/api/v1/admin/reports",
            Some(&admin_token("root")),
            None,
        )
        .await;
    let body = list.expect(200);
    let reports = body["reports"].as_array().expect("reports");
    assert!(
        reports
            .iter()
            .any(|r| r["id"] == report_id.as_str() || r["report_id"] == report_id.as_str()),
        "{body}"
    );
    assert_eq!(
        bob.err("report", json!({"message_id": m["id"]})).await,
        "bad_request"
    );
}

// ------------------------------------------------------------ envelope

#[tokio::test]
async fn unknown_command_type_is_bad_request_and_connection_lives() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    assert_eq!(ws.err("launch_rockets", json!({})).await, "bad_request");
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn malformed_json_is_an_error_and_connection_lives() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    ws.send_raw(Message::text("{\"type\": \"ping\", \"id\": \"x\", "))
        .await;
    let ev = ws.event("error").await;
    assert_eq!(ev["code"], "bad_request", "{ev}");
    ws.send_raw(Message::text("[1, 2, 3]")).await;
    let ev = ws.event("error").await;
    assert_eq!(ev["code"], "bad_request", "{ev}");
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn missing_fields_are_bad_request_and_connection_lives() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    assert_eq!(ws.err("create_direct", json!({})).await, "bad_request");
    assert_eq!(
        ws.err(
            "send_message",
            json!({"client_msg_id": "c", "content": "x"})
        )
        .await,
        "bad_request"
    );
    assert_eq!(
        ws.err("mark_as_read", json!({"chat_id": "x"})).await,
        "bad_request"
    );
    assert_eq!(
        ws.err("create_direct", json!({"user_id": 42})).await,
        "bad_request",
        "wrong field type"
    );
    // A command without data at all.
    ws.send_json(&json!({"type": "create_direct", "id": "nodata"}))
        .await;
    assert_eq!(ws.reply("nodata").await.unwrap_err().0, "bad_request");
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn binary_frames_are_refused_with_bad_request() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    ws.send_raw(Message::binary(
        b"{\"type\":\"ping\",\"id\":\"b\",\"data\":{}}".to_vec(),
    ))
    .await;
    let ev = ws.event("error").await;
    assert_eq!(ev["code"], "bad_request", "{ev}");
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn request_id_longer_than_64_chars_is_refused() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    ws.send_json(&json!({"type": "ping", "id": "i".repeat(65), "data": {}}))
        .await;
    let f = ws
        .frame_within(WAIT, |f| f["type"] == "error" || f["type"] == "ack")
        .await
        .expect("an answer");
    assert_eq!(f["type"], "error", "{f}");
    assert_eq!(f["data"]["code"], "bad_request", "{f}");
    // 64 is fine.
    ws.send_json(&json!({"type": "ping", "id": "i".repeat(64), "data": {}}))
        .await;
    assert_eq!(ws.reply(&"i".repeat(64)).await, Ok(json!({})));
}

#[tokio::test]
async fn commands_without_id_run_but_are_not_answered_and_ids_are_answered_once() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");
    alice
        .send_json(&json!({"type": "send_message",
                            "data": {"chat_id": chat_id, "client_msg_id": "noid", "content": "fire and forget"}}))
        .await;
    let ev = bob.event("message_received").await;
    assert_eq!(ev["client_msg_id"], "noid");
    alice
        .event_where("message_received", |e| e["client_msg_id"] == "noid")
        .await;

    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(alice.send_cmd("ping", json!({})).await);
    }
    for id in &ids {
        assert_eq!(alice.reply(id).await, Ok(json!({})));
    }
    // Nothing else comes: no ack for the id-less send, no second ack.
    let extra = alice
        .frame_within(QUIET, |f| f["type"] == "ack" || f["type"] == "error")
        .await;
    assert!(extra.is_none(), "unexpected extra answer: {extra:?}");
}

#[tokio::test]
async fn events_carry_no_id() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let chat = alice.direct("bob").await;
    let m = alice.send(s(&chat, "id"), "hi").await;
    bob.event_where("message_received", |e| e["id"] == m["id"])
        .await;
    let events: Vec<String> = bob
        .log
        .iter()
        .filter(|f| !f.contains("\"type\":\"ack\""))
        .cloned()
        .collect();
    for raw in events {
        let Ok(f) = serde_json::from_str::<Value>(&raw) else {
            continue;
        };
        if f["type"] != "ack" && f["type"] != "error" {
            assert!(f.get("id").is_none(), "event with an id: {raw}");
        }
    }
}

#[tokio::test]
async fn client_close_is_answered_with_a_close_frame() {
    let server = Server::start().await;
    let mut ws = server.ws("alice").await;
    let start = std::time::Instant::now();
    let code = ws.close_handshake(Duration::from_secs(5)).await;
    let after = start.elapsed();
    assert_eq!(
        code,
        Some(1000),
        "server answered our close after {after:?} with {:?}",
        ws.log
    );
    assert!(
        after < Duration::from_secs(1),
        "close answered after {after:?}"
    );
}

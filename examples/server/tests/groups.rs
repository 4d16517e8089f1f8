//! Groups: creation, membership, roles, updates, and who hears about it.

mod common;

use common::*;
use serde_json::{Value, json};

/// alice (admin) with bob and carol; every one of them connected, plus
/// `dave` (connected, outside the group). Pending events are cleared.
async fn team(server: &Server) -> (Value, Ws, Ws, Ws, Ws) {
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let dave = server.ws("dave").await;
    let chat = alice.group("team", &["bob", "carol"]).await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        ws.event_where("chat_created", |c| c["id"] == chat["id"])
            .await;
        ws.clear();
    }
    (chat, alice, bob, carol, dave)
}

fn system_count(messages: &[Value]) -> usize {
    messages.iter().filter(|m| m["type"] == "system").count()
}

#[tokio::test]
async fn create_group_sets_roles_and_notifies_every_member() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let mut dave = server.ws("dave").await;
    let ack = alice
        .ok(
            "create_group",
            json!({"name": "Hikers", "description": "Sunday walks", "avatar_url": "https://example.invalid/a.png",
                   "member_ids": ["bob", "carol"]}),
        )
        .await;
    let chat = &ack["chat"];
    check_chat(chat, "group");
    assert_eq!(chat["name"], "Hikers");
    assert_eq!(chat["description"], "Sunday walks");
    assert_eq!(chat["avatar_url"], "https://example.invalid/a.png");
    assert_eq!(chat["encryption"], "at_rest");
    assert_eq!(participant_ids(chat), ["alice", "bob", "carol"]);
    assert_eq!(participant(chat, "alice")["role"], "admin");
    assert_eq!(participant(chat, "bob")["role"], "member");
    assert_eq!(participant(chat, "carol")["role"], "member");

    for ws in [&mut alice, &mut bob, &mut carol] {
        let ev = ws.event("chat_created").await;
        assert_eq!(ev["id"], chat["id"]);
        assert_eq!(ev["name"], "Hikers");
        check_chat(&ev, "group");
    }
    dave.no_event("chat_created", QUIET).await;
}

#[tokio::test]
async fn create_group_with_e2ee() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let ack = alice
        .ok(
            "create_group",
            json!({"name": "secret", "member_ids": ["bob"], "encryption": "e2ee"}),
        )
        .await;
    assert_eq!(ack["chat"]["encryption"], "e2ee");
}

#[tokio::test]
async fn create_group_validates_its_fields() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    assert_eq!(
        alice
            .err("create_group", json!({"member_ids": ["bob"]}))
            .await,
        "bad_request",
        "no name"
    );
    assert_eq!(
        alice
            .err(
                "create_group",
                json!({"name": "x", "member_ids": ["not valid!"]})
            )
            .await,
        "bad_request",
        "invalid member id"
    );
    assert_eq!(
        alice
            .err(
                "create_group",
                json!({"name": "x", "member_ids": ["bob"], "encryption": "weird"})
            )
            .await,
        "bad_request",
        "invalid encryption"
    );
}

#[tokio::test]
async fn create_group_requires_member_ids() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    assert_eq!(
        alice.err("create_group", json!({"name": "x"})).await,
        "bad_request",
        "member_ids is not optional in PROTOCOL.md"
    );
}

#[tokio::test]
async fn add_participant_notifies_participants_and_the_added_user() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, mut dave) = team(&server).await;
    let mut eve = server.ws("eve").await;
    let chat_id = s(&chat, "id");
    let (before, _) = alice.history(chat_id, json!({})).await;

    assert_eq!(
        alice
            .ok(
                "add_participant",
                json!({"chat_id": chat_id, "user_id": "dave"})
            )
            .await,
        json!({})
    );
    let expected = json!({"chat_id": chat_id, "user_id": "dave", "role": "member"});
    for ws in [&mut alice, &mut bob, &mut carol, &mut dave] {
        assert_eq!(
            ws.event("participant_added").await,
            expected,
            "[{}]",
            ws.user
        );
    }
    let created = dave.event("chat_created").await;
    assert_eq!(created["id"], chat_id);
    assert!(participant_ids(&created).contains(&"dave".to_owned()));
    eve.no_event("participant_added", QUIET).await;
    alice
        .no_event("chat_created", std::time::Duration::ZERO)
        .await;

    // Dave is in: he can read and write.
    let m = dave.send(chat_id, "hi all").await;
    bob.event_where("message_received", |e| e["id"] == m["id"])
        .await;
    // And the change is written to the chat as a system message.
    let (after, _) = alice.history(chat_id, json!({})).await;
    assert!(system_count(&after) > system_count(&before), "{after:?}");
}

#[tokio::test]
async fn admin_may_add_with_any_role() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, _carol, _dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    alice
        .ok(
            "add_participant",
            json!({"chat_id": chat_id, "user_id": "dave", "role": "admin"}),
        )
        .await;
    let ev = bob.event("participant_added").await;
    assert_eq!(ev["role"], "admin");
    alice
        .ok(
            "add_participant",
            json!({"chat_id": chat_id, "user_id": "erin", "role": "moderator"}),
        )
        .await;
    let c = alice.ok("join_chat", json!({"chat_id": chat_id})).await["chat"].clone();
    assert_eq!(participant(&c, "dave")["role"], "admin");
    assert_eq!(participant(&c, "erin")["role"], "moderator");
    assert_eq!(
        alice
            .err(
                "add_participant",
                json!({"chat_id": chat_id, "user_id": "frank", "role": "emperor"})
            )
            .await,
        "bad_request"
    );
}

#[tokio::test]
async fn members_may_not_add_and_moderators_only_add_members() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, _dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    assert_eq!(
        bob.err(
            "add_participant",
            json!({"chat_id": chat_id, "user_id": "dave"})
        )
        .await,
        "forbidden"
    );
    alice
        .ok(
            "set_role",
            json!({"chat_id": chat_id, "user_id": "carol", "role": "moderator"}),
        )
        .await;
    assert_eq!(
        carol
            .ok(
                "add_participant",
                json!({"chat_id": chat_id, "user_id": "dave", "role": "member"})
            )
            .await,
        json!({})
    );
    assert_eq!(
        carol
            .err(
                "add_participant",
                json!({"chat_id": chat_id, "user_id": "erin", "role": "admin"})
            )
            .await,
        "forbidden"
    );
    assert_eq!(
        carol
            .err(
                "add_participant",
                json!({"chat_id": chat_id, "user_id": "erin", "role": "moderator"})
            )
            .await,
        "forbidden"
    );
}

#[tokio::test]
async fn adding_someone_already_in_is_a_conflict() {
    let server = Server::start().await;
    let (chat, mut alice, _bob, _carol, _dave) = team(&server).await;
    assert_eq!(
        alice
            .err(
                "add_participant",
                json!({"chat_id": chat["id"], "user_id": "bob"})
            )
            .await,
        "conflict"
    );
}

#[tokio::test]
async fn outsiders_get_not_found_for_group_commands() {
    let server = Server::start().await;
    let (chat, _alice, _bob, _carol, mut dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    for (ty, data) in [
        (
            "add_participant",
            json!({"chat_id": chat_id, "user_id": "dave"}),
        ),
        (
            "remove_participant",
            json!({"chat_id": chat_id, "user_id": "bob"}),
        ),
        (
            "update_group",
            json!({"chat_id": chat_id, "name": "mine now"}),
        ),
        (
            "set_role",
            json!({"chat_id": chat_id, "user_id": "dave", "role": "admin"}),
        ),
        ("join_chat", json!({"chat_id": chat_id})),
        ("sync", json!({"cursors": {chat_id: 0}})),
    ] {
        if ty == "sync" {
            // sync does not fail, but must not reveal the chat.
            let ack = dave.ok(ty, data).await;
            let leaked = ack["chats"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["chat"]["id"] == chat_id);
            assert!(!leaked, "sync leaked a foreign chat: {ack}");
            continue;
        }
        assert_eq!(dave.err(ty, data).await, "not_found", "{ty}");
    }
    assert_eq!(
        dave.err(
            "add_participant",
            json!({"chat_id": "01J00000000000000000000000", "user_id": "x"})
        )
        .await,
        "not_found"
    );
}

#[tokio::test]
async fn remove_participant_notifies_participants_and_the_removed_user() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, mut dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    assert_eq!(
        alice
            .ok(
                "remove_participant",
                json!({"chat_id": chat_id, "user_id": "carol"})
            )
            .await,
        json!({})
    );
    let expected = json!({"chat_id": chat_id, "user_id": "carol"});
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            ws.event("participant_removed").await,
            expected,
            "[{}]",
            ws.user
        );
    }
    dave.no_event("participant_removed", QUIET).await;

    // Carol is out: no more messages, and the chat is now hidden from her.
    let m = alice.send(chat_id, "after carol left").await;
    bob.event_where("message_received", |e| e["id"] == m["id"])
        .await;
    carol.no_event("message_received", QUIET).await;
    assert_eq!(
        carol.err("history", json!({"chat_id": chat_id})).await,
        "not_found"
    );
    assert_eq!(
        carol
            .err(
                "send_message",
                json!({"chat_id": chat_id, "client_msg_id": "late", "content": "hello?"})
            )
            .await,
        "not_found"
    );
}

#[tokio::test]
async fn leaving_a_group_by_removing_oneself() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, _dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    assert_eq!(
        bob.ok(
            "remove_participant",
            json!({"chat_id": chat_id, "user_id": "bob"})
        )
        .await,
        json!({})
    );
    let expected = json!({"chat_id": chat_id, "user_id": "bob"});
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(
            ws.event("participant_removed").await,
            expected,
            "[{}]",
            ws.user
        );
    }
    let c = alice.ok("join_chat", json!({"chat_id": chat_id})).await["chat"].clone();
    assert_eq!(participant_ids(&c), ["alice", "carol"]);
}

#[tokio::test]
async fn who_may_remove_whom() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, _dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    // A member may not remove another member.
    assert_eq!(
        bob.err(
            "remove_participant",
            json!({"chat_id": chat_id, "user_id": "carol"})
        )
        .await,
        "forbidden"
    );
    alice
        .ok(
            "add_participant",
            json!({"chat_id": chat_id, "user_id": "dave"}),
        )
        .await;
    alice
        .ok(
            "set_role",
            json!({"chat_id": chat_id, "user_id": "carol", "role": "moderator"}),
        )
        .await;
    alice
        .ok(
            "add_participant",
            json!({"chat_id": chat_id, "user_id": "erin", "role": "moderator"}),
        )
        .await;
    // A moderator may remove members, not admins nor other moderators.
    assert_eq!(
        carol
            .err(
                "remove_participant",
                json!({"chat_id": chat_id, "user_id": "alice"})
            )
            .await,
        "forbidden"
    );
    assert_eq!(
        carol
            .err(
                "remove_participant",
                json!({"chat_id": chat_id, "user_id": "erin"})
            )
            .await,
        "forbidden"
    );
    assert_eq!(
        carol
            .ok(
                "remove_participant",
                json!({"chat_id": chat_id, "user_id": "dave"})
            )
            .await,
        json!({})
    );
    // An admin may remove anyone.
    assert_eq!(
        alice
            .ok(
                "remove_participant",
                json!({"chat_id": chat_id, "user_id": "erin"})
            )
            .await,
        json!({})
    );
}

#[tokio::test]
async fn update_group_is_for_admins_and_notifies_participants() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, mut dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    let (before, _) = alice.history(chat_id, json!({})).await;
    let ack = alice
        .ok(
            "update_group",
            json!({"chat_id": chat_id, "name": "Team B", "description": "new", "avatar_url": "https://example.invalid/b.png"}),
        )
        .await;
    let updated = &ack["chat"];
    assert_eq!(updated["id"], chat_id);
    assert_eq!(updated["name"], "Team B");
    assert_eq!(updated["description"], "new");
    assert_eq!(updated["avatar_url"], "https://example.invalid/b.png");
    for ws in [&mut alice, &mut bob, &mut carol] {
        let ev = ws.event("chat_updated").await;
        assert_eq!(ev["id"], chat_id);
        assert_eq!(ev["name"], "Team B");
    }
    dave.no_event("chat_updated", QUIET).await;
    assert_eq!(
        bob.err("update_group", json!({"chat_id": chat_id, "name": "Bob's"}))
            .await,
        "forbidden"
    );
    // Only the given fields change.
    let ack = alice
        .ok(
            "update_group",
            json!({"chat_id": chat_id, "description": "newer"}),
        )
        .await;
    assert_eq!(ack["chat"]["name"], "Team B");
    assert_eq!(ack["chat"]["description"], "newer");
    let (after, _) = alice.history(chat_id, json!({})).await;
    assert!(
        system_count(&after) > system_count(&before),
        "update is a system message"
    );
}

#[tokio::test]
async fn set_role_is_for_admins() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, _carol, _dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    assert_eq!(
        alice
            .ok(
                "set_role",
                json!({"chat_id": chat_id, "user_id": "bob", "role": "moderator"})
            )
            .await,
        json!({})
    );
    let c = alice.ok("join_chat", json!({"chat_id": chat_id})).await["chat"].clone();
    assert_eq!(participant(&c, "bob")["role"], "moderator");
    assert_eq!(
        bob.err(
            "set_role",
            json!({"chat_id": chat_id, "user_id": "carol", "role": "moderator"})
        )
        .await,
        "forbidden",
        "a moderator is not an admin"
    );
    assert_eq!(
        alice
            .err(
                "set_role",
                json!({"chat_id": chat_id, "user_id": "bob", "role": "king"})
            )
            .await,
        "bad_request"
    );
    alice
        .ok(
            "set_role",
            json!({"chat_id": chat_id, "user_id": "bob", "role": "admin"}),
        )
        .await;
    let c = bob.ok("join_chat", json!({"chat_id": chat_id})).await["chat"].clone();
    assert_eq!(participant(&c, "bob")["role"], "admin");
}

#[tokio::test]
async fn admins_and_moderators_may_delete_others_messages_members_may_not() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, _dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    let m1 = bob.send(chat_id, "one").await;
    let m2 = bob.send(chat_id, "two").await;
    let m3 = alice.send(chat_id, "three").await;
    assert_eq!(
        carol
            .err("delete_message", json!({"message_id": m1["id"]}))
            .await,
        "forbidden"
    );
    assert_eq!(
        alice
            .ok("delete_message", json!({"message_id": m1["id"]}))
            .await,
        json!({"message_id": m1["id"]})
    );
    carol
        .event_where("message_deleted", |e| e["message_id"] == m1["id"])
        .await;
    alice
        .ok(
            "set_role",
            json!({"chat_id": chat_id, "user_id": "carol", "role": "moderator"}),
        )
        .await;
    assert_eq!(
        carol
            .ok("delete_message", json!({"message_id": m2["id"]}))
            .await,
        json!({"message_id": m2["id"]})
    );
    bob.event_where("message_deleted", |e| e["message_id"] == m2["id"])
        .await;
    // Editing stays the sender's privilege, whatever the role.
    assert_eq!(
        carol
            .err(
                "edit_message",
                json!({"message_id": m3["id"], "content": "x"})
            )
            .await,
        "forbidden"
    );
}

#[tokio::test]
async fn system_messages_record_membership_changes() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, _carol, _dave) = team(&server).await;
    let chat_id = s(&chat, "id");
    let (before, _) = bob.history(chat_id, json!({})).await;
    alice
        .ok(
            "add_participant",
            json!({"chat_id": chat_id, "user_id": "dave"}),
        )
        .await;
    alice
        .ok(
            "remove_participant",
            json!({"chat_id": chat_id, "user_id": "carol"}),
        )
        .await;
    alice
        .ok(
            "update_group",
            json!({"chat_id": chat_id, "name": "renamed"}),
        )
        .await;
    let (after, _) = bob.history(chat_id, json!({})).await;
    let new_system: Vec<&Value> = after
        .iter()
        .filter(|m| m["type"] == "system" && !before.iter().any(|b| b["id"] == m["id"]))
        .collect();
    assert_eq!(new_system.len(), 3, "{after:?}");
    for m in new_system {
        assert!(n(m, "seq") > 0);
        assert_eq!(m["chat_id"], chat_id);
    }
}

#[tokio::test]
async fn a_muted_member_cannot_send_until_lifted_and_everyone_is_told() {
    let server = Server::start().await;
    let (chat, mut alice, mut bob, mut carol, mut dave) = team(&server).await;
    let chat_id = s(&chat, "id").to_owned();
    alice
        .ok(
            "set_role",
            json!({"chat_id": chat_id, "user_id": "carol", "role": "moderator"}),
        )
        .await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        ws.clear();
    }
    // A member may not mute; a moderator may not mute the admin; `until`
    // must be a time; an outsider does not see the group.
    let far = json!("2099-01-01T00:00:00Z");
    for (who, target, until, code) in [
        ("bob", "carol", far.clone(), "forbidden"),
        ("carol", "alice", far.clone(), "forbidden"),
        ("carol", "bob", json!("next week"), "bad_request"),
        ("dave", "bob", Value::Null, "not_found"),
    ] {
        let ws = match who {
            "bob" => &mut bob,
            "carol" => &mut carol,
            _ => &mut dave,
        };
        let data = json!({"chat_id": chat_id, "user_id": target, "until": until});
        assert_eq!(ws.err("mute_participant", data).await, code, "{who}");
    }
    carol
        .ok(
            "mute_participant",
            json!({"chat_id": chat_id, "user_id": "bob", "until": "2099-01-01T00:00:00Z"}),
        )
        .await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        let e = ws.event("participant_updated").await;
        assert_eq!(
            e,
            json!({"chat_id": chat_id, "user_id": "bob", "role": "member",
                   "muted_until": "2099-01-01T00:00:00.000Z"})
        );
    }
    dave.no_event("participant_updated", QUIET).await;
    assert_eq!(
        bob.err(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "m1", "content": "let me talk"}),
        )
        .await,
        "forbidden"
    );
    // Reading, typing and reacting stay open to a muted member.
    let sent = alice.send(&chat_id, "we hear you later").await;
    bob.ok(
        "mark_as_read",
        json!({"chat_id": chat_id, "up_to_seq": sent["seq"]}),
    )
    .await;
    bob.ok("react", json!({"message_id": sent["id"], "emoji": "🙏"}))
        .await;
    alice
        .ok(
            "mute_participant",
            json!({"chat_id": chat_id, "user_id": "bob", "until": null}),
        )
        .await;
    let e = bob.event("participant_updated").await;
    assert_eq!(e["muted_until"], Value::Null);
    bob.ok(
        "send_message",
        json!({"chat_id": chat_id, "client_msg_id": "m2", "content": "thank you"}),
    )
    .await;
}

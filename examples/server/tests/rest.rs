//! The HTTP API: every route, its status and shape, and the WebSocket
//! events REST mutations emit.

mod common;

use common::*;
use serde_json::{Value, json};

const NONE_ID: &str = "01J00000000000000000000000";

async fn create_direct(server: &Server, a: &str, b: &str) -> Value {
    let r = server
        .post("/api/v1/chat/sessions", a, json!({"user_id": b}))
        .await;
    assert!(
        r.status == 201 || r.status == 200,
        "{} {}",
        r.status,
        r.text
    );
    r.body.clone()
}

async fn create_group(server: &Server, admin: &str, name: &str, members: &[&str]) -> Value {
    server
        .post(
            "/api/v1/chat/groups",
            admin,
            json!({"name": name, "member_ids": members}),
        )
        .await
        .expect(201)
        .clone()
}

#[tokio::test]
async fn healthz_answers_ok_without_auth() {
    let server = Server::start().await;
    let r = server.http("GET", "/healthz", None, None).await;
    assert_eq!(r.expect(200), &json!({"status": "ok"}));
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_chat_connections() {
    let server = Server::start().await;
    let _ws = server.ws("alice").await;
    let r = server.http("GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "content-type {ct}");
    assert!(r.text.contains("chat_connections"), "{}", r.text);
    // Prometheus text: `name{labels} value` or `name value` lines, `#` comments.
    for line in r
        .text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "not a sample line: {line}"
        );
    }
}

#[tokio::test]
async fn api_calls_need_a_valid_token() {
    let server = Server::start().await;
    let expired = sign(&json!({"sub": "alice", "exp": now() - 3600}));
    let none = unsigned_token(&claims("alice"));
    for path in [
        "/api/v1/chat/sessions",
        "/api/v1/chat/blocks",
        "/api/v1/admin/reports",
    ] {
        server
            .http("GET", path, None, None)
            .await
            .expect_error(401, "unauthenticated");
        for bad in [expired.as_str(), none.as_str(), "garbage"] {
            server
                .http("GET", path, Some(bad), None)
                .await
                .expect_error(401, "unauthenticated");
        }
    }
    server
        .http(
            "POST",
            "/api/v1/chat/sessions",
            None,
            Some(json!({"user_id": "bob"})),
        )
        .await
        .expect_error(401, "unauthenticated");
}

#[tokio::test]
async fn post_sessions_creates_a_direct_chat_once() {
    let server = Server::start().await;
    let mut bob = server.ws("bob").await;
    let mut alice = server.ws("alice").await;
    let r = server
        .post("/api/v1/chat/sessions", "alice", json!({"user_id": "bob"}))
        .await;
    let chat = r.expect(201).clone();
    check_chat(&chat, "direct");
    assert_eq!(participant_ids(&chat), ["alice", "bob"]);
    assert_eq!(bob.event("chat_created").await["id"], chat["id"]);
    assert_eq!(alice.event("chat_created").await["id"], chat["id"]);

    let r = server
        .post("/api/v1/chat/sessions", "alice", json!({"user_id": "bob"}))
        .await;
    assert_eq!(r.expect(200)["id"], chat["id"]);
    let r = server
        .post("/api/v1/chat/sessions", "bob", json!({"user_id": "alice"}))
        .await;
    assert_eq!(r.expect(200)["id"], chat["id"]);
    bob.no_event("chat_created", QUIET).await;

    server
        .post("/api/v1/chat/sessions", "alice", json!({}))
        .await
        .expect_error(400, "bad_request");
    server
        .post(
            "/api/v1/chat/sessions",
            "alice",
            json!({"user_id": "no spaces allowed"}),
        )
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn get_sessions_lists_most_recent_first_and_pages() {
    let server = Server::start().await;
    let with_bob = create_direct(&server, "alice", "bob").await;
    let with_carol = create_direct(&server, "alice", "carol").await;
    let group = create_group(&server, "alice", "g", &["dave"]).await;
    let _other = create_direct(&server, "erin", "frank").await;
    // Activity in the oldest chat makes it the most recent.
    let mut alice = server.ws("alice").await;
    alice.send(s(&with_bob, "id"), "bump").await;

    let r = server.get("/api/v1/chat/sessions", "alice").await;
    let body = r.expect(200);
    assert!(body["next_cursor"].is_null(), "{body}");
    let chats = body["chats"].as_array().expect("chats");
    let ids: Vec<&Value> = chats.iter().map(|c| &c["id"]).collect();
    assert_eq!(
        ids,
        [&with_bob["id"], &group["id"], &with_carol["id"]],
        "{body}"
    );
    for c in chats {
        check_chat(c, c["type"].as_str().unwrap_or("?"));
    }

    let r = server.get("/api/v1/chat/sessions?limit=2", "alice").await;
    let page1 = r.expect(200).clone();
    assert_eq!(page1["chats"].as_array().map(Vec::len), Some(2), "{page1}");
    let cursor = page1["next_cursor"]
        .as_str()
        .expect("a next_cursor")
        .to_owned();
    let r = server
        .get(
            &format!(
                "/api/v1/chat/sessions?limit=2&cursor={}",
                urlencode(&cursor)
            ),
            "alice",
        )
        .await;
    let page2 = r.expect(200);
    assert_eq!(page2["chats"].as_array().map(Vec::len), Some(1), "{page2}");
    assert!(page2["next_cursor"].is_null(), "{page2}");
    assert_eq!(page2["chats"][0]["id"], with_carol["id"]);

    server
        .get("/api/v1/chat/sessions?limit=abc", "alice")
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn get_session_is_for_participants_only() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let path = format!("/api/v1/chat/sessions/{}", s(&chat, "id"));
    let r = server.get(&path, "bob").await;
    let got = r.expect(200);
    check_chat(got, "direct");
    assert_eq!(got["id"], chat["id"]);
    server
        .get(&path, "mallory")
        .await
        .expect_error(404, "not_found");
    server
        .get(&format!("/api/v1/chat/sessions/{NONE_ID}"), "alice")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn put_session_settings_and_group_fields() {
    let server = Server::start().await;
    let direct = create_direct(&server, "alice", "bob").await;
    let r = server
        .put(
            &format!("/api/v1/chat/sessions/{}", s(&direct, "id")),
            "bob",
            json!({"muted_until": "2031-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(r.expect(200)["id"], direct["id"]);

    let group = create_group(&server, "alice", "before", &["bob"]).await;
    let mut bob = server.ws("bob").await;
    let path = format!("/api/v1/chat/sessions/{}", s(&group, "id"));
    let r = server.put(&path, "alice", json!({"name": "after"})).await;
    assert_eq!(r.expect(200)["name"], "after");
    let ev = bob.event("chat_updated").await;
    assert_eq!(ev["id"], group["id"]);
    assert_eq!(ev["name"], "after");
    server
        .put(&path, "bob", json!({"name": "bob's"}))
        .await
        .expect_error(403, "forbidden");
    server
        .put(&path, "mallory", json!({"muted_until": null}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn delete_session_leaves_a_group() {
    let server = Server::start().await;
    let group = create_group(&server, "alice", "g", &["bob", "carol"]).await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let path = format!("/api/v1/chat/sessions/{}", s(&group, "id"));
    assert_eq!(server.delete(&path, "bob").await.expect(200), &json!({}));
    let expected = json!({"chat_id": group["id"], "user_id": "bob"});
    assert_eq!(alice.event("participant_removed").await, expected);
    assert_eq!(bob.event("participant_removed").await, expected);
    server
        .get(&path, "bob")
        .await
        .expect_error(404, "not_found");
    let r = server.get(&path, "alice").await;
    assert_eq!(participant_ids(r.expect(200)), ["alice", "carol"]);
}

#[tokio::test]
async fn delete_session_hides_a_direct_chat() {
    let server = Server::start().await;
    let direct = create_direct(&server, "alice", "bob").await;
    let other = create_direct(&server, "alice", "carol").await;
    let path = format!("/api/v1/chat/sessions/{}", s(&direct, "id"));
    assert_eq!(server.delete(&path, "alice").await.expect(200), &json!({}));
    let list = server.get("/api/v1/chat/sessions", "alice").await;
    let ids: Vec<Value> = list.expect(200)["chats"]
        .as_array()
        .expect("chats")
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [other["id"].clone()], "the hidden chat is not listed");
    // Bob still has it.
    let list = server.get("/api/v1/chat/sessions", "bob").await;
    assert_eq!(list.expect(200)["chats"][0]["id"], direct["id"]);
}

#[tokio::test]
async fn get_session_messages_pages_both_ways() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let chat_id = s(&chat, "id");
    let mut alice = server.ws("alice").await;
    let mut seqs = Vec::new();
    for i in 0..10 {
        seqs.push(n(&alice.send(chat_id, &format!("m{i}")).await, "seq"));
    }
    let base = format!("/api/v1/chat/sessions/{chat_id}/messages");
    let r = server.get(&base, "bob").await;
    let body = r.expect(200);
    assert_eq!(body["has_more"], false, "{body}");
    let got: Vec<i64> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["type"] != "system")
        .map(|m| n(m, "seq"))
        .collect();
    let newest_first: Vec<i64> = seqs.iter().rev().copied().collect();
    assert_eq!(got, newest_first);

    let r = server.get(&format!("{base}?limit=3"), "bob").await;
    let body = r.expect(200);
    assert_eq!(body["has_more"], true);
    let got: Vec<i64> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| n(m, "seq"))
        .collect();
    assert_eq!(got, newest_first[..3]);

    let r = server
        .get(&format!("{base}?before_seq={}&limit=2", seqs[5]), "bob")
        .await;
    let got: Vec<i64> = r.expect(200)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| n(m, "seq"))
        .collect();
    assert_eq!(got, [seqs[4], seqs[3]]);

    let r = server
        .get(&format!("{base}?after_seq={}", seqs[6]), "bob")
        .await;
    let mut got: Vec<i64> = r.expect(200)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| n(m, "seq"))
        .collect();
    got.sort_unstable();
    assert_eq!(got, seqs[7..]);

    server
        .get(&base, "mallory")
        .await
        .expect_error(404, "not_found");
    server
        .get(&format!("{base}?limit=0"), "bob")
        .await
        .expect_error(400, "bad_request");
    server
        .get(&format!("{base}?limit=201"), "bob")
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn get_message_is_for_participants_only() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let mut alice = server.ws("alice").await;
    let m = alice.send(s(&chat, "id"), "look").await;
    let path = format!("/api/v1/chat/messages/{}", s(&m, "id"));
    assert_eq!(server.get(&path, "bob").await.expect(200), &m);
    server
        .get(&path, "mallory")
        .await
        .expect_error(404, "not_found");
    server
        .get(&format!("/api/v1/chat/messages/{NONE_ID}"), "bob")
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn put_message_edits_and_emits_message_edited() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let m = alice.send(s(&chat, "id"), "typo").await;
    let path = format!("/api/v1/chat/messages/{}", s(&m, "id"));
    let r = server
        .put(&path, "alice", json!({"content": "fixed"}))
        .await;
    let edited = r.expect(200).clone();
    assert_eq!(edited["content"], "fixed");
    assert!(is_timestamp(&edited["edited_at"]));
    assert!(n(&edited, "updated_seq") > n(&m, "seq"));
    for ws in [&mut alice, &mut bob] {
        let ev = ws.event("message_edited").await;
        assert_eq!(ev, edited);
    }
    server
        .put(&path, "bob", json!({"content": "bob was here"}))
        .await
        .expect_error(403, "forbidden");
    server
        .put(&path, "alice", json!({"content": ""}))
        .await
        .expect_error(400, "bad_request");
    server
        .put(&path, "mallory", json!({"content": "x"}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn delete_message_returns_its_id_and_emits_message_deleted() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let m = alice.send(s(&chat, "id"), "regret").await;
    let path = format!("/api/v1/chat/messages/{}", s(&m, "id"));
    server
        .delete(&path, "bob")
        .await
        .expect_error(403, "forbidden");
    server
        .delete(&path, "mallory")
        .await
        .expect_error(404, "not_found");
    let r = server.delete(&path, "alice").await;
    assert_eq!(r.expect(200), &json!({"message_id": m["id"]}));
    let ev = bob.event("message_deleted").await;
    assert_eq!(ev["chat_id"], chat["id"]);
    assert_eq!(ev["message_id"], m["id"]);
    assert_eq!(ev["seq"], m["seq"]);
    alice.event("message_deleted").await;
    let got = server.get(&path, "bob").await;
    let got = got.expect(200);
    assert_eq!(got["deleted"], true);
    assert!(got["content"].is_null());
    // Editing it now is a conflict.
    server
        .put(&path, "alice", json!({"content": "undo"}))
        .await
        .expect_error(409, "conflict");
}

#[tokio::test]
async fn post_message_read_marks_read_and_emits_message_read() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let chat_id = s(&chat, "id");
    let mut alice = server.ws("alice").await;
    let _m1 = alice.send(chat_id, "one").await;
    let m2 = alice.send(chat_id, "two").await;
    let r = server
        .post(
            &format!("/api/v1/chat/messages/{}/read", s(&m2, "id")),
            "bob",
            json!({}),
        )
        .await;
    assert_eq!(r.expect(200), &json!({}));
    let ev = alice.event("message_read").await;
    assert_eq!(
        ev,
        json!({"chat_id": chat_id, "user_id": "bob", "up_to_seq": m2["seq"]})
    );
    let got = server
        .get(&format!("/api/v1/chat/sessions/{chat_id}"), "bob")
        .await;
    let got = got.expect(200);
    assert_eq!(participant(got, "bob")["read_seq"], m2["seq"]);
    assert_eq!(got["unread_count"], 0);
    server
        .post(
            &format!("/api/v1/chat/messages/{}/read", s(&m2, "id")),
            "mallory",
            json!({}),
        )
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn post_groups_creates_and_emits_chat_created() {
    let server = Server::start().await;
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let r = server
        .post(
            "/api/v1/chat/groups",
            "alice",
            json!({"name": "REST group", "description": "d", "member_ids": ["bob"]}),
        )
        .await;
    let chat = r.expect(201).clone();
    check_chat(&chat, "group");
    assert_eq!(chat["name"], "REST group");
    assert_eq!(participant(&chat, "alice")["role"], "admin");
    assert_eq!(participant(&chat, "bob")["role"], "member");
    assert_eq!(bob.event("chat_created").await["id"], chat["id"]);
    carol.no_event("chat_created", QUIET).await;
    server
        .post(
            "/api/v1/chat/groups",
            "alice",
            json!({"member_ids": ["bob"]}),
        )
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn invite_adds_a_participant_with_events() {
    let server = Server::start().await;
    let group = create_group(&server, "alice", "g", &["bob"]).await;
    let gid = s(&group, "id");
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    let path = format!("/api/v1/chat/groups/{gid}/invite");
    let r = server
        .post(&path, "alice", json!({"user_id": "carol"}))
        .await;
    assert_eq!(r.expect(200), &json!({}));
    let expected = json!({"chat_id": gid, "user_id": "carol", "role": "member"});
    assert_eq!(bob.event("participant_added").await, expected);
    assert_eq!(carol.event("participant_added").await, expected);
    assert_eq!(carol.event("chat_created").await["id"], gid);

    server
        .post(
            &path,
            "alice",
            json!({"user_id": "dave", "role": "moderator"}),
        )
        .await
        .expect(200);
    assert_eq!(bob.event("participant_added").await["role"], "moderator");
    server
        .post(&path, "bob", json!({"user_id": "erin"}))
        .await
        .expect_error(403, "forbidden");
    server
        .post(&path, "mallory", json!({"user_id": "erin"}))
        .await
        .expect_error(404, "not_found");
    server
        .post(&path, "alice", json!({"user_id": "bob"}))
        .await
        .expect_error(409, "conflict");
    server
        .post(&path, "alice", json!({}))
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn delete_participant_removes_with_events() {
    let server = Server::start().await;
    let group = create_group(&server, "alice", "g", &["bob", "carol"]).await;
    let gid = s(&group, "id");
    let mut bob = server.ws("bob").await;
    let mut carol = server.ws("carol").await;
    server
        .delete(
            &format!("/api/v1/chat/groups/{gid}/participants/carol"),
            "bob",
        )
        .await
        .expect_error(403, "forbidden");
    let r = server
        .delete(
            &format!("/api/v1/chat/groups/{gid}/participants/carol"),
            "alice",
        )
        .await;
    assert_eq!(r.expect(200), &json!({}));
    let expected = json!({"chat_id": gid, "user_id": "carol"});
    assert_eq!(bob.event("participant_removed").await, expected);
    assert_eq!(carol.event("participant_removed").await, expected);
    server
        .delete(
            &format!("/api/v1/chat/groups/{gid}/participants/bob"),
            "mallory",
        )
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn put_group_updates_with_chat_updated() {
    let server = Server::start().await;
    let group = create_group(&server, "alice", "old", &["bob"]).await;
    let gid = s(&group, "id");
    let mut bob = server.ws("bob").await;
    let path = format!("/api/v1/chat/groups/{gid}");
    let r = server
        .put(
            &path,
            "alice",
            json!({"name": "new", "avatar_url": "https://example.invalid/x.png"}),
        )
        .await;
    let chat = r.expect(200).clone();
    assert_eq!(chat["name"], "new");
    assert_eq!(chat["avatar_url"], "https://example.invalid/x.png");
    let ev = bob.event("chat_updated").await;
    assert_eq!(ev["name"], "new");
    server
        .put(&path, "bob", json!({"name": "mine"}))
        .await
        .expect_error(403, "forbidden");
    server
        .put(&path, "mallory", json!({"name": "mine"}))
        .await
        .expect_error(404, "not_found");
}

#[tokio::test]
async fn get_sync_matches_the_websocket_sync() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let chat_id = s(&chat, "id");
    let mut alice = server.ws("alice").await;
    let m1 = alice.send(chat_id, "one").await;
    let m2 = alice.send(chat_id, "two").await;

    let r = server
        .get(
            &format!("/api/v1/chat/sync?cursors={}", urlencode("{}")),
            "bob",
        )
        .await;
    let all = r.expect(200).clone();
    assert!(all["removed_chat_ids"].is_array(), "{all}");
    let entry = sync_entry(&all, chat_id);
    check_chat(&entry["chat"], "direct");
    let ids: Vec<&Value> = entry["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert!(
        ids.contains(&&m1["id"]) && ids.contains(&&m2["id"]),
        "{entry}"
    );

    let cursors = json!({chat_id: m1["seq"]}).to_string();
    let r = server
        .get(
            &format!("/api/v1/chat/sync?cursors={}", urlencode(&cursors)),
            "bob",
        )
        .await;
    let rest = r.expect(200).clone();
    let entry = sync_entry(&rest, chat_id);
    let changes = entry["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{entry}");
    assert_eq!(changes[0], m2);
    assert_eq!(entry["has_more"], false);

    let mut bob = server.ws("bob").await;
    let ws = bob.sync(json!({chat_id: m1["seq"]})).await;
    let ws_entry = sync_entry(&ws, chat_id);
    assert_eq!(ws_entry["changes"], entry["changes"]);
    assert_eq!(ws_entry["has_more"], entry["has_more"]);
    assert_eq!(ws["removed_chat_ids"], rest["removed_chat_ids"]);

    server
        .get("/api/v1/chat/sync?cursors=not-json", "bob")
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn blocks_are_added_listed_and_removed() {
    let server = Server::start().await;
    assert_eq!(
        server.get("/api/v1/chat/blocks", "alice").await.expect(200),
        &json!({"blocked": []})
    );
    assert_eq!(
        server
            .post("/api/v1/chat/blocks/mallory", "alice", json!({}))
            .await
            .expect(200),
        &json!({})
    );
    server
        .post("/api/v1/chat/blocks/spammer", "alice", json!({}))
        .await
        .expect(200);
    let r = server.get("/api/v1/chat/blocks", "alice").await;
    let mut blocked: Vec<String> = r.expect(200)["blocked"]
        .as_array()
        .expect("blocked")
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    blocked.sort();
    assert_eq!(blocked, ["mallory", "spammer"]);
    // Someone else's list is their own.
    assert_eq!(
        server.get("/api/v1/chat/blocks", "bob").await.expect(200),
        &json!({"blocked": []})
    );
    assert_eq!(
        server
            .delete("/api/v1/chat/blocks/mallory", "alice")
            .await
            .expect(200),
        &json!({})
    );
    assert_eq!(
        server.get("/api/v1/chat/blocks", "alice").await.expect(200),
        &json!({"blocked": ["spammer"]})
    );
    server
        .post("/api/v1/chat/blocks/not%20valid", "alice", json!({}))
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn reports_are_filed_listed_and_dismissed() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let mut alice = server.ws("alice").await;
    let m = alice.send(s(&chat, "id"), "buy cheap watches").await;
    let report_path = format!("/api/v1/chat/messages/{}/report", s(&m, "id"));
    let r = server
        .post(&report_path, "bob", json!({"reason": "spam"}))
        .await;
    let report_id = s(r.expect(201), "report_id").to_owned();
    server
        .post(&report_path, "mallory", json!({"reason": "spam"}))
        .await
        .expect_error(404, "not_found");
    server
        .post(&report_path, "bob", json!({}))
        .await
        .expect_error(400, "bad_request");

    let admin = admin_token("root");
    let find = |body: &Value| {
        body["reports"]
            .as_array()
            .expect("reports")
            .iter()
            .any(|r| r["id"] == report_id.as_str() || r["report_id"] == report_id.as_str())
    };
    // Non-admins may not look.
    server
        .get("/api/v1/admin/reports", "bob")
        .await
        .expect_error(403, "forbidden");
    let r = server
        .http("GET", "/api/v1/admin/reports", Some(&admin), None)
        .await;
    assert!(find(r.expect(200)), "open by default: {}", r.text);
    // The evidence, as PROTOCOL.md 5.2 shapes it, survives an edit.
    alice
        .ok(
            "edit_message",
            json!({"message_id": m["id"], "content": "nothing to see"}),
        )
        .await;
    let r = server
        .http("GET", "/api/v1/admin/reports", Some(&admin), None)
        .await;
    let entry = r.expect(200)["reports"]
        .as_array()
        .expect("reports")
        .iter()
        .find(|e| e["id"] == report_id.as_str())
        .cloned()
        .expect("the report");
    assert_eq!(
        entry["snapshot"],
        json!({"message": {"id": m["id"], "chat_id": chat["id"], "sender_id": "alice",
                           "type": "text", "content": "buy cheap watches", "media": null}}),
        "{entry}"
    );
    let r = server
        .http(
            "GET",
            "/api/v1/admin/reports?status=open",
            Some(&admin),
            None,
        )
        .await;
    assert!(find(r.expect(200)), "{}", r.text);

    // Filters: each one that does not match empties the list.
    let chat_id = s(&chat, "id");
    for (query, listed) in [
        (format!("chat_id={chat_id}"), true),
        (format!("chat_id={NONE_ID}"), false),
        ("reporter_id=bob".to_owned(), true),
        ("reporter_id=alice".to_owned(), false),
        ("reported_user_id=alice".to_owned(), true),
        ("reported_user_id=bob".to_owned(), false),
        (format!("cursor={report_id}"), false),
    ] {
        let r = server
            .http(
                "GET",
                &format!("/api/v1/admin/reports?{query}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(find(r.expect(200)), listed, "{query}: {}", r.text);
    }
    for bad in [
        "chat_id=nope",
        "limit=0",
        "limit=501",
        "cursor=x",
        "reporter_id=a%20b",
    ] {
        server
            .http(
                "GET",
                &format!("/api/v1/admin/reports?{bad}"),
                Some(&admin),
                None,
            )
            .await
            .expect_error(400, "bad_request");
    }

    let resolve = format!("/api/v1/admin/reports/{report_id}/resolve");
    server
        .http(
            "POST",
            &resolve,
            Some(&token("bob")),
            Some(json!({"action": "dismiss"})),
        )
        .await
        .expect_error(403, "forbidden");
    server
        .http(
            "POST",
            &resolve,
            Some(&admin),
            Some(json!({"action": "explode"})),
        )
        .await
        .expect_error(400, "bad_request");
    let r = server
        .http(
            "POST",
            &resolve,
            Some(&admin),
            Some(json!({"action": "dismiss", "note": "harmless"})),
        )
        .await;
    let report = r.expect(200);
    assert!(
        report["id"] == report_id.as_str() || report["report_id"] == report_id.as_str(),
        "{report}"
    );
    assert_eq!(report["status"], "dismissed", "{report}");

    for (status, listed) in [
        ("open", false),
        ("dismissed", true),
        ("all", true),
        ("resolved", false),
    ] {
        let r = server
            .http(
                "GET",
                &format!("/api/v1/admin/reports?status={status}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(find(r.expect(200)), listed, "status={status}: {}", r.text);
    }
    server
        .http(
            "POST",
            &resolve,
            Some(&admin),
            Some(json!({"action": "dismiss"})),
        )
        .await
        .expect_error(409, "conflict");
    server
        .http(
            "POST",
            &format!("/api/v1/admin/reports/{NONE_ID}/resolve"),
            Some(&admin),
            Some(json!({"action": "dismiss"})),
        )
        .await
        .expect_error(404, "not_found");
    server
        .http(
            "GET",
            "/api/v1/admin/reports?status=bogus",
            Some(&admin),
            None,
        )
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn resolving_a_report_by_deleting_the_message_emits_message_deleted() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let m = alice.send(s(&chat, "id"), "offensive").await;
    let r = server
        .post(
            &format!("/api/v1/chat/messages/{}/report", s(&m, "id")),
            "bob",
            json!({"reason": "abuse"}),
        )
        .await;
    let report_id = s(r.expect(201), "report_id").to_owned();
    let r = server
        .http(
            "POST",
            &format!("/api/v1/admin/reports/{report_id}/resolve"),
            Some(&admin_token("root")),
            Some(json!({"action": "delete_message"})),
        )
        .await;
    assert_eq!(r.expect(200)["status"], "resolved", "{}", r.text);
    for ws in [&mut alice, &mut bob] {
        let ev = ws.event("message_deleted").await;
        assert_eq!(ev["message_id"], m["id"]);
    }
    let got = server
        .get(&format!("/api/v1/chat/messages/{}", s(&m, "id")), "bob")
        .await;
    assert_eq!(got.expect(200)["deleted"], true);
}

#[tokio::test]
async fn resolving_a_report_by_suspending_the_sender() {
    let server = Server::start().await;
    let chat = create_direct(&server, "mallory", "bob").await;
    let mut mallory = server.ws("mallory").await;
    let m = mallory.send(s(&chat, "id"), "scam link").await;
    let r = server
        .post(
            &format!("/api/v1/chat/messages/{}/report", s(&m, "id")),
            "bob",
            json!({"reason": "scam"}),
        )
        .await;
    let report_id = s(r.expect(201), "report_id").to_owned();
    let r = server
        .http(
            "POST",
            &format!("/api/v1/admin/reports/{report_id}/resolve"),
            Some(&admin_token("root")),
            Some(json!({"action": "suspend_user", "note": "scammer"})),
        )
        .await;
    assert_eq!(r.expect(200)["status"], "resolved", "{}", r.text);
    let mut again = server
        .connect("mallory", Auth::Header(&token("mallory")), &[])
        .await
        .expect("upgrade");
    assert_eq!(again.close_code(WAIT).await, Some(4003), "{:?}", again.log);
}

#[tokio::test]
async fn admin_suspension_routes_are_for_admins() {
    let server = Server::start().await;
    let admin = admin_token("root");
    server
        .http(
            "POST",
            "/api/v1/admin/users/mallory/suspend",
            Some(&token("bob")),
            Some(json!({})),
        )
        .await
        .expect_error(403, "forbidden");
    let r = server
        .http(
            "POST",
            "/api/v1/admin/users/mallory/suspend",
            Some(&admin),
            Some(json!({"until": "2099-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.expect(200), &json!({}));
    server
        .http(
            "DELETE",
            "/api/v1/admin/users/mallory/suspend",
            Some(&token("bob")),
            None,
        )
        .await
        .expect_error(403, "forbidden");
    let r = server
        .http(
            "DELETE",
            "/api/v1/admin/users/mallory/suspend",
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.expect(200), &json!({}));
}

#[tokio::test]
async fn media_routes_check_their_input() {
    let server = Server::start().await;
    let chat = create_direct(&server, "alice", "bob").await;
    let t = token("alice");
    // Plain text is not on the allowlist, whatever the client calls it.
    let upload = server
        .http_raw(
            "POST",
            &format!("/api/v1/chat/upload/{}", s(&chat, "id")),
            Some(&t),
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XyZ--\r\n".to_vec(),
        )
        .await;
    upload.expect_error(415, "unsupported_media_type");
    // Not multipart at all.
    server
        .http(
            "POST",
            &format!("/api/v1/chat/upload/{}", s(&chat, "id")),
            Some(&t),
            Some(json!({"file": "x"})),
        )
        .await
        .expect_error(400, "bad_request");
    server
        .http("GET", "/api/v1/chat/media/some-media-id", Some(&t), None)
        .await
        .expect_error(400, "bad_request");
    server
        .http(
            "GET",
            "/api/v1/chat/media/01JAAAAAAAAAAAAAAAAAAAAAAA",
            Some(&t),
            None,
        )
        .await
        .expect_error(404, "not_found");
    server
        .http(
            "GET",
            "/api/v1/chat/media/01JAAAAAAAAAAAAAAAAAAAAAAA",
            None,
            None,
        )
        .await
        .expect_error(401, "unauthenticated");
}

#[tokio::test]
async fn malformed_json_body_is_400() {
    let server = Server::start().await;
    let t = token("alice");
    server
        .http_raw(
            "POST",
            "/api/v1/chat/groups",
            Some(&t),
            "application/json",
            b"{\"name\": ".to_vec(),
        )
        .await
        .expect_error(400, "bad_request");
    server
        .http_raw(
            "POST",
            "/api/v1/chat/groups",
            Some(&t),
            "application/json",
            b"[1, 2]".to_vec(),
        )
        .await
        .expect_error(400, "bad_request");
}

#[tokio::test]
async fn non_json_content_type_is_415() {
    let server = Server::start().await;
    server
        .http_raw(
            "POST",
            "/api/v1/chat/groups",
            Some(&token("alice")),
            "text/plain",
            br#"{"name": "x", "member_ids": ["bob"]}"#.to_vec(),
        )
        .await
        .expect_error(415, "unsupported_media_type");
}

/// POSTs `body` over a raw socket, writing and reading at the same time: a
/// server may answer 413 and close before the whole body is written.
async fn raw_post(server: &Server, path: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_ok() {
            let _ = wr.write_all(&body).await;
        }
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let _ = tokio::time::timeout(WAIT, async {
        while let Ok(k) = rd.read(&mut chunk).await {
            if k == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..k]);
        }
    })
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let json = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => serde_json::from_str(&text[a..=b]).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (status, json)
}

#[tokio::test]
async fn oversized_body_is_413() {
    let server = Server::start().await;
    let huge = format!(
        r#"{{"name": "x", "member_ids": ["bob"], "description": "{}"}}"#,
        "a".repeat(4 << 20)
    );
    let (status, body) = raw_post(
        &server,
        "/api/v1/chat/groups",
        &token("alice"),
        huge.into_bytes(),
    )
    .await;
    assert_eq!(
        (status, &body["code"]),
        (413, &json!("too_large")),
        "{body}"
    );
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let server = Server::start().await;
    let r = server.get("/api/v1/chat/nowhere", "alice").await;
    assert_eq!(r.status, 404, "{}", r.text);
}

/// Unknown routes and wrong methods answer with the protocol's error body,
/// like every other error, not an empty one.
#[tokio::test]
async fn unknown_routes_and_methods_answer_with_an_error_body() {
    let server = Server::start().await;
    let r = server.get("/api/v1/no/such/route", "alice").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body["code"], "not_found", "{}", r.text);
    let r = server.get("/nothing-here", "alice").await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = server.delete("/api/v1/chat/sync", "alice").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.body["code"], "bad_request", "{}", r.text);
    let r = server.post("/healthz", "alice", json!({})).await;
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (405, Some("bad_request"))
    );
}

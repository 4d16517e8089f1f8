//! The moderation audit log, black-box: moderation over `/ws` and HTTP,
//! then `GET /api/v1/admin/audit` lists each action once, newest first,
//! pages with its cursor, filters, and is for admins only.

mod common;

use common::*;
use serde_json::{Value, json};

/// `GET /api/v1/admin/audit` with `query` as root; the body.
async fn audit(server: &Server, query: &str) -> Value {
    let path = format!("/api/v1/admin/audit{query}");
    let r = server
        .http("GET", &path, Some(&admin_token("root")), None)
        .await;
    r.expect(200).clone()
}

fn entries(page: &Value) -> &Vec<Value> {
    page["entries"].as_array().expect("entries")
}

/// `(action, actor_id, target_type, target_id)` of each entry.
fn summary(page: &Value) -> Vec<(String, String, String, String)> {
    entries(page)
        .iter()
        .map(|e| {
            (
                s(e, "action").to_owned(),
                s(e, "actor_id").to_owned(),
                s(e, "target_type").to_owned(),
                s(e, "target_id").to_owned(),
            )
        })
        .collect()
}

fn row(
    action: &str,
    actor: &str,
    target_type: &str,
    target: &str,
) -> (String, String, String, String) {
    (
        action.to_owned(),
        actor.to_owned(),
        target_type.to_owned(),
        target.to_owned(),
    )
}

#[tokio::test]
async fn moderation_over_ws_and_http_is_audited_once_each() {
    let server = Server::start().await;
    let admin = admin_token("root");
    let mut ann = server.ws("ann").await;
    let mut bob = server.ws("bob").await;
    let mut cat = server.ws("cat").await;
    let chat = ann.group("support", &["bob", "cat", "dan", "eve"]).await;
    let chat_id = s(&chat, "id").to_owned();
    let mut expected = Vec::new();

    // Group admins and moderators, over /ws and HTTP.
    ann.ok(
        "set_role",
        json!({"chat_id": chat_id, "user_id": "bob", "role": "moderator"}),
    )
    .await;
    expected.push(row("set_role", "ann", "user", "bob"));
    ann.ok("update_group", json!({"chat_id": chat_id, "name": "peers"}))
        .await;
    expected.push(row("update_group", "ann", "chat", &chat_id));
    let group_path = format!("/api/v1/chat/groups/{chat_id}");
    server
        .put(&group_path, "ann", json!({"description": "weekly"}))
        .await
        .expect(200);
    expected.push(row("update_group", "ann", "chat", &chat_id));
    bob.ok(
        "remove_participant",
        json!({"chat_id": chat_id, "user_id": "dan"}),
    )
    .await;
    expected.push(row("remove_participant", "bob", "user", "dan"));
    let m1 = s(&cat.send(&chat_id, "one").await, "id").to_owned();
    bob.ok("delete_message", json!({"message_id": m1})).await;
    expected.push(row("delete_message", "bob", "message", &m1));
    let m2 = s(&cat.send(&chat_id, "two").await, "id").to_owned();
    server
        .delete(&format!("/api/v1/chat/messages/{m2}"), "ann")
        .await
        .expect(200);
    expected.push(row("delete_message", "ann", "message", &m2));

    // Not moderation: deleting one's own message, leaving.
    let own = s(&cat.send(&chat_id, "mine").await, "id").to_owned();
    cat.ok("delete_message", json!({"message_id": own})).await;
    server
        .delete(&format!("/api/v1/chat/sessions/{chat_id}"), "eve")
        .await
        .expect(200);

    // Service admins: a report resolved by deleting, a suspension.
    let m3 = s(&cat.send(&chat_id, "three").await, "id").to_owned();
    let r = server
        .post(
            &format!("/api/v1/chat/messages/{m3}/report"),
            "ann",
            json!({"reason": "spam"}),
        )
        .await;
    let report_id = s(r.expect(201), "report_id").to_owned();
    server
        .http(
            "POST",
            &format!("/api/v1/admin/reports/{report_id}/resolve"),
            Some(&admin),
            Some(json!({"action": "delete_message", "note": "spam link"})),
        )
        .await
        .expect(200);
    expected.push(row("delete_message", "root", "message", &m3));
    expected.push(row("resolve_report", "root", "report", &report_id));
    let suspend = "/api/v1/admin/users/dan/suspend";
    let until = json!({"until": "2099-01-01T00:00:00Z"});
    server
        .http("POST", suspend, Some(&admin), Some(until))
        .await
        .expect(200);
    expected.push(row("suspend_user", "root", "user", "dan"));
    server
        .http("DELETE", suspend, Some(&admin), None)
        .await
        .expect(200);
    expected.push(row("unsuspend_user", "root", "user", "dan"));
    bob.ok(
        "mute_participant",
        json!({"chat_id": chat_id, "user_id": "cat", "until": "2099-01-01T00:00:00Z"}),
    )
    .await;
    expected.push(row("mute_participant", "bob", "user", "cat"));
    expected.reverse();

    let page = audit(&server, "").await;
    assert_eq!(summary(&page), expected, "each action once, newest first");
    assert!(page["next_cursor"].is_null(), "{page}");
    for e in entries(&page) {
        assert!(is_timestamp(&e["at"]), "{e}");
        let in_chat = e["target_type"] != "user"
            || e["action"] == "set_role"
            || e["action"] == "remove_participant"
            || e["action"] == "mute_participant";
        assert_eq!(e["chat_id"] == chat_id.as_str(), in_chat, "{e}");
        assert!(e.get("note").is_some(), "note is always present: {e}");
    }
    let mute = &entries(&page)[0];
    assert_eq!(mute["note"], "until 2099-01-01T00:00:00.000Z", "{mute}");
    let resolve = &entries(&page)[3];
    assert_eq!(resolve["note"], "spam link", "{resolve}");
    let set_role = &entries(&page)[10];
    assert_eq!(set_role["note"], "moderator", "{set_role}");

    // Paging: every entry once, in order; only full pages have a cursor.
    let mut seen = Vec::new();
    let mut query = "?limit=3".to_owned();
    loop {
        let p = audit(&server, &query).await;
        let n = entries(&p).len();
        assert!(n <= 3, "{p}");
        seen.extend(summary(&p));
        match p["next_cursor"].as_str() {
            Some(cursor) => {
                assert_eq!(n, 3, "a cursor only after a full page: {p}");
                assert_eq!(cursor, s(entries(&p).last().expect("last"), "id"));
                query = format!("?limit=3&cursor={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(seen, expected, "pages neither repeat nor skip");

    // Filters, alone and together.
    let deletions = audit(&server, "?action=delete_message").await;
    assert_eq!(entries(&deletions).len(), 3, "{deletions}");
    let by_bob = audit(&server, "?actor_id=bob").await;
    let bobs: Vec<_> = expected.iter().filter(|e| e.1 == "bob").cloned().collect();
    assert_eq!(summary(&by_bob), bobs);
    let anns_updates = audit(&server, "?actor_id=ann&action=update_group&limit=1").await;
    assert_eq!(summary(&anns_updates), expected[8..9].to_vec());
    assert!(anns_updates["next_cursor"].is_string(), "{anns_updates}");
}

#[tokio::test]
async fn the_audit_log_is_for_admins_and_checks_its_query() {
    let server = Server::start().await;
    server
        .get("/api/v1/admin/audit", "bob")
        .await
        .expect_error(403, "forbidden");
    let admin = admin_token("root");
    for query in [
        "?action=explode",
        "?cursor=nope",
        "?limit=0",
        "?limit=201",
        "?limit=many",
        "?actor_id=not%20a%20user",
    ] {
        server
            .http(
                "GET",
                &format!("/api/v1/admin/audit{query}"),
                Some(&admin),
                None,
            )
            .await
            .expect_error(400, "bad_request");
    }
    let empty = audit(&server, "?limit=200").await;
    assert_eq!(empty, json!({"entries": [], "next_cursor": null}));
}

//! Erasure (GDPR) over real sockets: `DELETE /api/v1/users/me` and its
//! admin twin (PROTOCOL.md 5.2). A unique marker sent before the erasure
//! is in none of the server's files afterwards (database, WAL, media
//! directory), a copy of the database taken before no longer opens the
//! user's messages, the others see tombstones, evidence of open reports is
//! held until they are resolved, and the id is a new user afterwards.

mod common;

use std::{path::Path, sync::Arc};

use chat_core::testing::media as fixtures;
use common::*;
use serde_json::{Value, json};

/// Every byte of every file under `dir`, the server's log left out.
fn bytes_under(dir: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("a directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if !path.ends_with("server.log") {
                bytes.extend(std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    bytes
}

/// A copy of the message database (not the key store, which is backed up
/// apart) in a new directory.
fn backup_of(dir: &Path) -> Arc<tempfile::TempDir> {
    let backup = Arc::new(tempfile::tempdir().expect("tempdir"));
    for entry in std::fs::read_dir(dir).expect("the server's files") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().expect("a name").to_string_lossy();
        if name.starts_with("chat.db") && !name.starts_with("chat.db.keys") {
            std::fs::copy(&path, backup.path().join(name.as_ref())).expect("copy");
        }
    }
    backup
}

/// The entry of `list` (a JSON array) with `id`.
fn entry_of(list: &Value, id: &Value) -> Value {
    list.as_array()
        .expect("an array")
        .iter()
        .find(|r| r["id"] == *id)
        .unwrap_or_else(|| panic!("{id} in {list}"))
        .clone()
}

fn by_id<'a>(messages: &'a [Value], id: &Value) -> &'a Value {
    messages
        .iter()
        .find(|m| m["id"] == *id)
        .unwrap_or_else(|| panic!("message {id} in {messages:?}"))
}

#[tokio::test]
async fn erasure_leaves_no_trace_of_the_user_and_frees_the_id() {
    let server = Server::start().await;
    let marker = unique("marker-9e4f");
    let mut ann = server.ws("er-ann").await;
    let mut bob = server.ws("er-bob").await;
    let direct = ann.direct("er-bob").await;
    let direct_id = s(&direct, "id").to_owned();
    let group = ann.group("er-circle", &["er-bob", "er-cat"]).await;
    let group_id = s(&group, "id").to_owned();
    let in_direct = ann
        .send(&direct_id, &format!("{marker} I feel unsafe"))
        .await;
    let in_group = ann.send(&group_id, &format!("{marker} hello circle")).await;
    let pdf = fixtures::pdf_padded(100_000, &marker);
    // In the name too: a record's metadata (name, size, type) is plaintext
    // in the database until the record goes.
    let name = format!("{marker}.pdf");
    let upload = upload_as(&server, "er-ann", &group_id, &name, "application/pdf", &pdf).await;
    let media_id = upload.expect(201)["media"]["id"].clone();
    let file = ann
        .ok(
            "send_message",
            json!({"chat_id": group_id, "client_msg_id": "er-file", "type": "file",
                   "media_id": media_id}),
        )
        .await["message"]
        .clone();
    let bobs = bob.send(&group_id, "welcome").await;
    ann.ok("react", json!({"message_id": bobs["id"], "emoji": "🌱"}))
        .await;
    server
        .post("/api/v1/chat/blocks/er-eve", "er-ann", json!({}))
        .await
        .expect(200);
    let before = backup_of(server.dir());
    bob.clear();

    let r = server.delete("/api/v1/users/me", "er-ann").await;
    let done = r.expect(200);
    assert_eq!(
        done["removed"],
        json!({"messages": 3, "media": 1, "reactions": 1, "memberships": 2, "blocks": 1,
               "keys": 1, "key_packages": 0, "reports_filed": 0, "report_snapshots": 0,
               "audit_entries": 0, "checkin_answers": 0}),
        "{done}"
    );
    assert_eq!(done["kept"], json!({"reports_on_hold": 0}));
    assert_eq!(
        ann.close_code(WAIT).await,
        Some(4003),
        "her connection closes"
    );

    // Bob sees it happen, and his history keeps tombstones in place.
    bob.event_where("message_deleted", |e| e["message_id"] == in_direct["id"])
        .await;
    bob.event_where("participant_removed", |e| {
        e["chat_id"] == group_id.as_str() && e["user_id"] == "er-ann"
    })
    .await;
    let (history, _) = bob.history(&group_id, json!({})).await;
    for sent in [&in_group, &file] {
        let tomb = by_id(&history, &sent["id"]);
        assert_eq!(tomb["deleted"], true, "{tomb}");
        assert!(
            tomb["content"].is_null() && tomb["media"].is_null(),
            "{tomb}"
        );
        assert!(s(tomb, "sender_id").starts_with("erased-"), "{tomb}");
    }
    assert!(
        by_id(&history, &bobs["id"])["reactions"]
            .as_object()
            .is_none_or(|r| r.is_empty())
    );
    let r = server
        .get(
            &format!("/api/v1/chat/media/{}", media_id.as_str().expect("an id")),
            "er-bob",
        )
        .await;
    assert_eq!(r.status, 404, "the upload is gone");

    // The marker is nowhere on disk: database, WAL, media directory.
    let on_disk = bytes_under(server.dir());
    assert!(!on_disk.is_empty());
    assert!(
        !contains(&on_disk, marker.as_bytes()),
        "the marker is on disk"
    );

    // The id is a new, empty user.
    let mut ann = server.ws("er-ann").await;
    let r = server.get("/api/v1/chat/sessions", "er-ann").await;
    let chats = r.expect(200);
    assert!(
        !r.text.contains(&direct_id) && !r.text.contains(&group_id),
        "{chats}"
    );
    let again = ann.direct("er-bob").await;
    assert_ne!(s(&again, "id"), direct_id, "a new direct chat");
    let r = server.get("/api/v1/users/me/export", "er-ann").await;
    assert!(!r.text.contains(&marker));
    assert_eq!(r.expect(200)["blocked"], json!([]));
    drop((ann, bob));

    // A copy of the database from before the erasure, read with today's key
    // store: her message does not open any more.
    let keys = server.dir().join("chat.db.keys");
    let old = Server::start_in_with(
        before.clone(),
        &[("CHAT_KEY_STORE", keys.to_str().expect("a utf-8 path"))],
    )
    .await;
    let mut bob = old.ws("er-bob").await;
    let (history, _) = bob.history(&direct_id, json!({})).await;
    let copy = by_id(&history, &in_direct["id"]);
    assert!(copy["content"].is_null(), "{copy}");
    assert_eq!(copy["unreadable"], "erased");
    // The copy holds her words only sealed; only the upload's file name is
    // plaintext there (metadata, see README's security model).
    let copy = bytes_under(before.path());
    assert!(!contains(&copy, format!("{marker} I feel").as_bytes()));
    assert!(!contains(&copy, format!("{marker} hello").as_bytes()));
}

#[tokio::test]
async fn evidence_of_open_reports_is_held_until_resolved() {
    let server = Server::start().await;
    let admin = admin_token("root");
    let mut ann = server.ws("ho-ann").await;
    let mut bob = server.ws("ho-bob").await;
    let group = ann.group("ho-circle", &["ho-bob", "ho-cat"]).await;
    let group_id = s(&group, "id").to_owned();
    let threat = ann.send(&group_id, "you will regret this").await;
    let insult = ann.send(&group_id, "an old insult").await;
    let report = |message: &Value, by: &str| {
        let path = format!(
            "/api/v1/chat/messages/{}/report",
            message["id"].as_str().expect("an id")
        );
        let by = by.to_owned();
        let server = &server;
        async move {
            server
                .post(&path, &by, json!({"reason": "not ok"}))
                .await
                .expect(201)["report_id"]
                .clone()
        }
    };
    let held = report(&threat, "ho-bob").await;
    let closed = report(&insult, "ho-cat").await;
    let resolve = |id: &Value| {
        let path = format!(
            "/api/v1/admin/reports/{}/resolve",
            id.as_str().expect("an id")
        );
        let (server, admin) = (&server, admin.clone());
        async move {
            server
                .http(
                    "POST",
                    &path,
                    Some(&admin),
                    Some(json!({"action": "dismiss"})),
                )
                .await
        }
    };
    resolve(&closed).await.expect(200);
    bob.clear();

    // Bad input changes nothing: a user erasing someone else, an unknown id.
    let r = server
        .http(
            "DELETE",
            "/api/v1/admin/users/ho-ann",
            Some(&token("ho-bob")),
            None,
        )
        .await;
    r.expect_error(403, "forbidden");
    let r = server
        .http(
            "DELETE",
            "/api/v1/admin/users/ho-nobody",
            Some(&admin),
            None,
        )
        .await;
    r.expect_error(404, "not_found");
    ann.send(&group_id, "still here").await;

    let r = server
        .http("DELETE", "/api/v1/admin/users/ho-ann", Some(&admin), None)
        .await;
    let done = r.expect(200);
    assert_eq!(done["kept"], json!({"reports_on_hold": 1}), "{done}");
    assert_eq!(done["removed"]["report_snapshots"], 1, "{done}");
    assert_eq!(done["removed"]["messages"], 3, "{done}");

    let reports = |status: &str| {
        let path = format!("/api/v1/admin/reports?status={status}");
        let (server, admin) = (&server, admin.clone());
        async move {
            server
                .http("GET", &path, Some(&admin), None)
                .await
                .expect(200)["reports"]
                .clone()
        }
    };
    let open = reports("open").await;
    let entry = entry_of(&open, &held);
    assert_eq!(entry["legal_hold"], true);
    let snapshot = &entry["snapshot"]["message"];
    assert_eq!(snapshot["content"], "you will regret this", "{entry}");
    assert!(s(snapshot, "sender_id").starts_with("erased-"), "{entry}");
    assert!(!entry.to_string().contains("ho-ann"), "{entry}");
    let gone = reports("dismissed").await;
    let gone = entry_of(&gone, &closed);
    assert!(gone["snapshot"].is_null(), "{gone}");

    resolve(&held).await.expect(200);
    let after = reports("dismissed").await;
    let after = entry_of(&after, &held);
    assert!(after["snapshot"].is_null(), "the hold ended: {after}");

    // The audit log names a pseudonym, never her.
    let r = server
        .http("GET", "/api/v1/admin/audit?limit=100", Some(&admin), None)
        .await;
    let audit = r.expect(200);
    assert!(!r.text.contains("ho-ann"), "{audit}");
    let erasures: Vec<&Value> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|e| e["action"] == "erase_user")
        .collect();
    assert_eq!(erasures.len(), 1, "{audit}");
    assert_eq!(erasures[0]["actor_id"], "root");
    assert!(s(erasures[0], "target_id").starts_with("erased-"));
}

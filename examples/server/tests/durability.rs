//! Catching up with `sync`, surviving `kill -9`, stopping on SIGTERM.

mod common;

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn ids(changes: &[Value]) -> Vec<String> {
    changes.iter().map(|c| s(c, "id").to_owned()).collect()
}

#[tokio::test]
async fn offline_user_catches_up_with_sync() {
    let server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let mut carol = server.ws("carol").await;
    let mut bob = server.ws("bob").await;
    let g = alice.group("G", &["bob", "carol"]).await;
    let g2 = alice.group("G2", &["bob"]).await;
    let d = alice.direct("bob").await;
    let (g, g2, d) = (
        s(&g, "id").to_owned(),
        s(&g2, "id").to_owned(),
        s(&d, "id").to_owned(),
    );
    let old1 = alice.send(&g, "to be edited").await;
    let old2 = alice.send(&g, "to be deleted").await;
    let old3 = alice.send(&g, "to be liked").await;

    // Bob is up to date, then goes offline.
    let first = bob.sync(json!({})).await;
    let cursor = |chat: &str| n(&sync_entry(&first, chat)["chat"], "last_seq");
    let (cg, cg2, cd) = (cursor(&g), cursor(&g2), cursor(&d));
    bob.close().await;

    alice
        .ok(
            "edit_message",
            json!({"message_id": old1["id"], "content": "edited"}),
        )
        .await;
    alice
        .ok("delete_message", json!({"message_id": old2["id"]}))
        .await;
    carol
        .ok("react", json!({"message_id": old3["id"], "emoji": "👍"}))
        .await;
    let new1 = alice.send(&g, "new one").await;
    let new2 = carol.send(&g, "new two").await;
    alice
        .ok("add_participant", json!({"chat_id": g, "user_id": "dave"}))
        .await;
    alice
        .ok("update_group", json!({"chat_id": g, "name": "renamed"}))
        .await;
    alice
        .ok(
            "remove_participant",
            json!({"chat_id": g2, "user_id": "bob"}),
        )
        .await;
    let in_d = alice.send(&d, "direct while away").await;
    let d2 = carol.direct("bob").await;
    let d2 = s(&d2, "id").to_owned();
    let in_d2 = carol.send(&d2, "hi bob, new chat").await;

    let mut bob = server.ws("bob").await;
    let sync = bob.sync(json!({&g: cg, &g2: cg2, &d: cd})).await;

    // Every chat of the user is listed; the one he left is in removed_chat_ids.
    let listed: HashSet<&str> = sync["chats"]
        .as_array()
        .expect("chats")
        .iter()
        .map(|c| s(&c["chat"], "id"))
        .collect();
    assert_eq!(
        listed,
        HashSet::from([g.as_str(), d.as_str(), d2.as_str()]),
        "{sync}"
    );
    assert_eq!(sync["removed_chat_ids"], json!([g2]), "{sync}");

    let eg = sync_entry(&sync, &g);
    assert_eq!(eg["chat"]["name"], "renamed");
    assert!(participant_ids(&eg["chat"]).contains(&"dave".to_owned()));
    assert_eq!(eg["has_more"], false);
    let changes = eg["changes"].as_array().expect("changes").clone();
    let seqs: Vec<i64> = changes.iter().map(|c| n(c, "updated_seq")).collect();
    assert!(
        seqs.iter().all(|&u| u > cg),
        "all changes after the cursor: {seqs:?}"
    );
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "ascending updated_seq: {seqs:?}"
    );
    let changed = ids(&changes);
    let unique: HashSet<&String> = changed.iter().collect();
    assert_eq!(
        unique.len(),
        changed.len(),
        "each message once, in its latest state"
    );
    let get = |m: &Value| {
        changes
            .iter()
            .find(|c| c["id"] == m["id"])
            .unwrap_or_else(|| panic!("{} missing from {changes:?}", m["id"]))
            .clone()
    };
    let e1 = get(&old1);
    assert_eq!(e1["content"], "edited");
    assert!(is_timestamp(&e1["edited_at"]));
    let e2 = get(&old2);
    assert_eq!(e2["deleted"], true);
    assert!(e2["content"].is_null());
    assert_eq!(get(&old3)["reactions"], json!({"👍": ["carol"]}));
    assert_eq!(get(&new1)["content"], "new one");
    assert_eq!(get(&new2)["content"], "new two");
    let system = changes.iter().filter(|c| c["type"] == "system").count();
    assert!(
        system >= 2,
        "the add and the rename are system messages: {changes:?}"
    );

    let ed = sync_entry(&sync, &d);
    assert_eq!(ids(ed["changes"].as_array().unwrap()), [s(&in_d, "id")]);
    let ed2 = sync_entry(&sync, &d2);
    assert!(
        ids(ed2["changes"].as_array().unwrap()).contains(&s(&in_d2, "id").to_owned()),
        "a chat absent from cursors comes with all its changes: {ed2}"
    );
}

#[tokio::test]
async fn sync_lists_every_chat_and_pages_large_backlogs() {
    let server = Server::with_config(UNLIMITED).await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let quiet = alice.group("quiet", &["bob"]).await;
    let busy = alice.direct("bob").await;
    let busy_id = s(&busy, "id").to_owned();
    let mut sent = Vec::new();
    for i in 0..250 {
        let id = alice
            .send_cmd(
                "send_message",
                json!({"chat_id": busy_id, "client_msg_id": format!("bulk-{i}"), "content": format!("bulk {i}")}),
            )
            .await;
        sent.push(id);
    }
    let mut acked = Vec::new();
    for id in &sent {
        acked.push(alice.reply(id).await.expect("acked")["message"]["id"].clone());
    }
    let quiet_seq = n(
        &bob.ok("join_chat", json!({"chat_id": quiet["id"]})).await["chat"],
        "last_seq",
    );

    // The quiet chat is up to date but still listed.
    let first = bob
        .sync(json!({quiet["id"].as_str().unwrap(): quiet_seq}))
        .await;
    let eq = sync_entry(&first, s(&quiet, "id"));
    assert_eq!(eq["changes"], json!([]));
    assert_eq!(eq["has_more"], false);
    assert!(first["removed_chat_ids"].is_array(), "{first}");

    // The busy chat was absent from the cursors: all its changes, paged.
    let mut seen: Vec<Value> = Vec::new();
    let mut entry = sync_entry(&first, &busy_id).clone();
    for _ in 0..300 {
        let changes = entry["changes"].as_array().expect("changes").clone();
        seen.extend(changes.iter().map(|c| c["id"].clone()));
        if entry["has_more"] != true {
            break;
        }
        let cursor = n(
            changes.last().expect("has_more with no changes"),
            "updated_seq",
        );
        let next = bob.sync(json!({&busy_id: cursor})).await;
        entry = sync_entry(&next, &busy_id).clone();
    }
    let seen_set: HashSet<&Value> = seen.iter().collect();
    assert_eq!(seen_set.len(), seen.len(), "no change twice across pages");
    for id in &acked {
        assert!(seen_set.contains(id), "{id} missing from the paged sync");
    }
}

#[tokio::test]
async fn acked_messages_survive_kill_9() {
    let server = Server::with_config(UNLIMITED).await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id").to_owned();
    let (mut tx, mut rx) = alice.into_stream().split();

    let writer = {
        let chat_id = chat_id.clone();
        tokio::spawn(async move {
            for i in 0..20_000 {
                let frame = json!({"type": "send_message", "id": format!("k-{i}"),
                                   "data": {"chat_id": chat_id, "client_msg_id": format!("k-{i}"), "content": format!("burst {i}")}});
                if tx.send(Message::text(frame.to_string())).await.is_err() {
                    break;
                }
            }
        })
    };

    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let next = match tokio::time::timeout(left, rx.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => break,
            Err(_) => panic!(
                "burst did not finish within 30 s ({} acked, killed: {killed})",
                acked.len()
            ),
        };
        if let Message::Text(t) = next {
            let f: Value = serde_json::from_str(&t).expect("JSON frame");
            if f["type"] == "ack" && f["data"]["message"].is_object() {
                let m = &f["data"]["message"];
                acked.insert(s(m, "id").to_owned(), n(m, "seq"));
            } else if f["type"] == "error" {
                panic!("send failed during the burst: {f}");
            }
        }
        if !killed && acked.len() >= 300 {
            server.signal("KILL");
            killed = true;
        }
    }
    assert!(
        killed,
        "the server closed before 300 acks ({} acked)",
        acked.len()
    );
    writer.abort();

    let server = server.restart().await;
    let mut alice = server.ws("alice").await;
    let mut stored: HashMap<String, i64> = HashMap::new();
    let mut before: Option<i64> = None;
    loop {
        let mut q = json!({"limit": 200});
        if let Some(b) = before {
            q["before_seq"] = json!(b);
        }
        let (page, more) = alice.history(&chat_id, q).await;
        for m in &page {
            let seq = n(m, "seq");
            assert!(
                stored.insert(s(m, "id").to_owned(), seq).is_none(),
                "duplicate {m}"
            );
        }
        if !more || page.is_empty() {
            break;
        }
        before = Some(n(page.last().unwrap(), "seq"));
    }
    let mut lost = Vec::new();
    for (id, seq) in &acked {
        match stored.get(id) {
            Some(s) if s == seq => {}
            other => lost.push(format!("{id}: acked seq {seq}, stored {other:?}")),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acked messages lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    let seqs: HashSet<i64> = stored.values().copied().collect();
    assert_eq!(seqs.len(), stored.len(), "seqs are unique");
}

#[tokio::test]
async fn sigterm_closes_connections_with_1001_exits_0_and_keeps_data() {
    let mut server = Server::start().await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id").to_owned();
    let m = alice.send(&chat_id, "before shutdown").await;
    server.signal("TERM");
    assert_eq!(
        alice.close_code(Duration::from_secs(10)).await,
        Some(1001),
        "{:?}",
        alice.log
    );
    let status = server.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "exit status {status:?}");

    let server = server.restart().await;
    let mut alice = server.ws("alice").await;
    let (messages, _) = alice.history(&chat_id, json!({})).await;
    let found = messages
        .iter()
        .find(|x| x["id"] == m["id"])
        .expect("message kept");
    assert_eq!(found["seq"], m["seq"]);
    assert_eq!(found["content"], "before shutdown");
}

//! Encryption at rest, black-box: what participants read and what the
//! database files hold, and the master key the server insists on.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;

#[tokio::test]
async fn participants_read_what_the_database_files_do_not_hold() {
    let server = Server::start().await;
    let mut alice = server.ws("enc-alice").await;
    let mut bob = server.ws("enc-bob").await;
    let chat = alice.direct("enc-bob").await;
    let chat_id = chat["id"].as_str().expect("a chat id").to_owned();
    let marker = unique("marker-8e1f");
    let sent = alice
        .send(&chat_id, &format!("I feel {marker} today"))
        .await;
    assert_eq!(sent["content"], format!("I feel {marker} today"));
    let received = bob.event("message_received").await;
    assert_eq!(received["content"], format!("I feel {marker} today"));
    let edited = unique("edited-5c2b");
    let message_id = sent["id"].as_str().expect("an id").to_owned();
    alice
        .ok(
            "edit_message",
            serde_json::json!({"message_id": message_id, "content": edited}),
        )
        .await;
    let (history, _) = bob.history(&chat_id, serde_json::json!({})).await;
    assert_eq!(history.last().expect("the message")["content"], edited);
    let files = stored_bytes(server.dir());
    assert!(!files.is_empty());
    assert!(
        !contains(&files, marker.as_bytes()),
        "the message text is in the database files"
    );
    assert!(
        !contains(&files, edited.as_bytes()),
        "the edited text is in the database files"
    );
    // And it reads back after a restart, with the same master key.
    let server = server.restart().await;
    let mut bob = server.ws("enc-bob").await;
    let (history, _) = bob.history(&chat_id, serde_json::json!({})).await;
    assert_eq!(history.last().expect("the message")["content"], edited);
}

/// Runs the server binary on `dir`'s database until it exits (it should
/// refuse to start), with `master_key` (or none).
async fn refused(dir: &std::path::Path, master_key: Option<&str>) -> (i32, String) {
    let mut cmd = Server::command(&dir.join("chat.db"), None);
    cmd.env_remove("CHAT_MASTER_KEY").stderr(Stdio::piped());
    if let Some(key) = master_key {
        cmd.env("CHAT_MASTER_KEY", key);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the server exits")
        .expect("it runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_or_wrong_master_key_is_refused_and_changes_nothing() {
    let server = Server::start().await;
    let mut alice = server.ws("key-alice").await;
    let chat = alice.direct("key-bob").await;
    let chat_id = chat["id"].as_str().expect("a chat id").to_owned();
    alice.send(&chat_id, "before").await;
    drop(alice);
    let kept = server.stop().await;
    let dir = kept.path();
    let (code, stderr) = refused(dir, None).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no master key"), "{stderr}");
    // 32 bytes, but not the key this store was created with.
    let other = "YW5vdGhlci1tYXN0ZXIta2V5LW9mLTMyLWJ5dGVzISE=";
    let (code, stderr) = refused(dir, Some(other)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not open"), "{stderr}");
    let (code, stderr) = refused(dir, Some("not base64 at all")).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not valid"), "{stderr}");
    // Nothing changed: the right key still reads the message.
    let server = Server::start_in(kept).await;
    let mut alice = server.ws("key-alice").await;
    let (history, _) = alice.history(&chat_id, serde_json::json!({})).await;
    assert_eq!(history.last().expect("the message")["content"], "before");
}

#[tokio::test]
async fn the_master_key_rotates_without_touching_messages() {
    let server = Server::start().await;
    let mut alice = server.ws("rot-alice").await;
    let chat = alice.direct("rot-bob").await;
    let chat_id = chat["id"].as_str().expect("a chat id").to_owned();
    alice.send(&chat_id, "before the rotation").await;
    drop(alice);
    let kept = server.stop().await;
    let dir = kept.path();
    let new_key = "cm90YXRlZC1tYXN0ZXIta2V5LW9mLTMyLWJ5dGVzISE=";
    let key_file = dir.join("new.key");
    std::fs::write(&key_file, new_key).expect("write the new key");
    let rotate = |current: &'static str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
        cmd.arg("rotate-master-key")
            .arg("--new-key-file")
            .arg(&key_file)
            .arg("--sqlite")
            .arg(dir.join("chat.db"))
            .env_remove("CHAT_CONFIG")
            .env("CHAT_MASTER_KEY", current)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let out = tokio::time::timeout(Duration::from_secs(20), rotate(MASTER_KEY).output())
        .await
        .expect("the rotation finishes")
        .expect("it runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("re-wrapped"), "{stdout}");
    // Running it again is harmless (an interrupted rotation finishes so).
    let again = tokio::time::timeout(Duration::from_secs(20), rotate(MASTER_KEY).output())
        .await
        .expect("the rotation finishes")
        .expect("it runs");
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The old key no longer opens the key store; the new one reads every
    // message, which were not touched.
    let (code, stderr) = refused(dir, Some(MASTER_KEY)).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("does not open"), "{stderr}");
    let server = Server::start_in_with(kept, &[("CHAT_MASTER_KEY", new_key)]).await;
    let mut alice = server.ws("rot-alice").await;
    let (history, _) = alice.history(&chat_id, serde_json::json!({})).await;
    assert_eq!(
        history.last().expect("the message")["content"],
        "before the rotation"
    );
}

/// Runs `chat-server <args>` on the files of `dir` to completion; returns
/// (success, stdout + stderr).
async fn command(dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
    cmd.args(args)
        .arg("--sqlite")
        .arg(dir.join("chat.db"))
        .env_remove("CHAT_CONFIG")
        .env_remove("CHAT_KEY_STORE")
        .env("CHAT_MASTER_KEY", MASTER_KEY)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("the command finishes")
        .expect("it runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Stops the server gracefully (SIGTERM: the database is checkpointed and
/// closed) and returns its directory.
async fn stop_gracefully(mut server: Server) -> std::sync::Arc<tempfile::TempDir> {
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "{status:?}\n{}", server.log());
    server.stop().await
}

fn content_of<'a>(history: &'a [serde_json::Value], id: &str) -> &'a serde_json::Value {
    history
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("message {id} in {history:?}"))
}

#[tokio::test]
async fn an_erased_user_stays_erased_in_an_old_copy_of_the_database() {
    let server = Server::start().await;
    let mut ann = server.ws("shred-ann").await;
    let mut bob = server.ws("shred-bob").await;
    let chat = ann.direct("shred-bob").await;
    let chat_id = chat["id"].as_str().expect("a chat id").to_owned();
    let from_ann = ann.send(&chat_id, "ann: I told no one else this").await;
    let from_bob = bob.send(&chat_id, "bob: thank you for trusting me").await;
    drop((ann, bob));
    let live = stop_gracefully(server).await;

    // A backup of the message database, taken before the erasure (the key
    // store is not in it: it is backed up separately).
    let backup = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    for entry in std::fs::read_dir(live.path()).expect("the server's files") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        if name.starts_with("chat.db") && !name.starts_with("chat.db.keys") {
            std::fs::copy(&path, backup.path().join(&name)).expect("copy");
        }
    }

    let (ok, out) = command(live.path(), &["erase-user-keys", "shred-ann"]).await;
    assert!(
        ok && out.contains("destroyed the key of shred-ann"),
        "{out}"
    );
    let (ok, out) = command(live.path(), &["erase-user-keys", "shred-ann"]).await;
    assert!(ok && out.contains("had no key"), "{out}");

    // The old copy, read with today's key store: Ann's message is an
    // explicit placeholder, Bob's still reads.
    let keys = live.path().join("chat.db.keys");
    let old = Server::start_in_with(
        backup.clone(),
        &[("CHAT_KEY_STORE", keys.to_str().expect("a utf-8 path"))],
    )
    .await;
    let mut bob = old.ws("shred-bob").await;
    let (history, _) = bob.history(&chat_id, serde_json::json!({})).await;
    let ann_id = from_ann["id"].as_str().expect("an id");
    let bob_id = from_bob["id"].as_str().expect("an id");
    assert_eq!(
        content_of(&history, ann_id)["content"],
        serde_json::Value::Null
    );
    assert_eq!(content_of(&history, ann_id)["unreadable"], "erased");
    assert_eq!(
        content_of(&history, bob_id)["content"],
        "bob: thank you for trusting me"
    );
    assert!(content_of(&history, bob_id).get("unreadable").is_none());
    assert!(!contains(&stored_bytes(backup.path()), b"told no one"));
    drop(bob);
    drop(old);

    // The live database reads the same.
    let server = Server::start_in(live).await;
    let mut bob = server.ws("shred-bob").await;
    let (history, _) = bob.history(&chat_id, serde_json::json!({})).await;
    assert_eq!(content_of(&history, ann_id)["unreadable"], "erased");
    assert_eq!(
        content_of(&history, bob_id)["content"],
        "bob: thank you for trusting me"
    );
}

#[tokio::test]
async fn content_written_before_encryption_is_sealed_at_start() {
    use chat_core::{
        ChatId, ChatKind, Encryption, MessageId, MessageType, Role, Timestamp, UserId,
        store::{Change, NewChat, NewMessage, Store},
    };
    // A database as a server without encryption at rest left it.
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let marker = unique("legacy-4b7d");
    let chat_id = ChatId::new();
    {
        let store =
            chat_store_sqlite::SqliteStore::open(dir.path().join("chat.db")).expect("a database");
        let (ann, bob) = (
            UserId::new("old-ann").expect("an id"),
            UserId::new("old-bob").expect("an id"),
        );
        store
            .create_chat(NewChat {
                id: chat_id,
                kind: ChatKind::Group,
                encryption: Encryption::AtRest,
                name: Some("old group".into()),
                description: None,
                avatar_url: None,
                created_at: Timestamp::from_millis(1_000),
                participants: vec![(ann.clone(), Role::Admin), (bob, Role::Member)],
            })
            .await
            .expect("a chat");
        let posts = (0..1200)
            .map(|i| {
                Change::Post(NewMessage {
                    mls: None,
                    id: MessageId::new(),
                    chat_id,
                    sender_id: ann.clone(),
                    kind: MessageType::Text,
                    content: Some(format!("{marker} number {i}")),
                    media: None,
                    reply_to: None,
                    client_msg_id: Some(format!("legacy-{i}")),
                    system: None,
                    created_at: Timestamp::from_millis(2_000 + i),
                })
            })
            .collect();
        for result in store.apply(posts).await {
            result.expect("stored");
        }
        store.close().await.expect("closed");
    }
    assert!(contains(&stored_bytes(dir.path()), marker.as_bytes()));

    let server = Server::start_in(dir.clone()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !server
        .log()
        .contains("content written before encryption at rest is sealed")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "sealing did not finish: {}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(server.log().contains("sealed=1200"), "{}", server.log());
    // Participants read it as before.
    let mut bob = server.ws("old-bob").await;
    let (history, _) = bob
        .history(&chat_id.to_string(), serde_json::json!({"limit": 3}))
        .await;
    let newest = format!("{marker} number 1199");
    assert!(
        history.iter().any(|m| m["content"] == newest.as_str()),
        "{history:?}"
    );
    drop(bob);
    let dir = stop_gracefully(server).await;
    assert!(
        !contains(&stored_bytes(dir.path()), marker.as_bytes()),
        "plaintext left in the database files after sealing"
    );
    // The next start has nothing to do; the command says so too.
    let (ok, out) = command(dir.path(), &["seal-existing"]).await;
    assert!(ok && out.contains("nothing to do"), "{out}");
    let (ok, out) = command(dir.path(), &["seal-existing", "--from-start"]).await;
    assert!(ok && out.contains("sealed 0 of 1200"), "{out}");
}

#[tokio::test]
async fn a_damaged_body_is_an_error_for_that_message_alone() {
    use chat_core::store::{Store, TextReplacement, TextTable};
    let server = Server::start().await;
    let mut ann = server.ws("bit-ann").await;
    let chat = ann.direct("bit-bob").await;
    let chat_id = chat["id"].as_str().expect("a chat id").to_owned();
    let first = ann.send(&chat_id, "first").await;
    ann.send(&chat_id, "second").await;
    drop(ann);
    let dir = stop_gracefully(server).await;
    {
        // One bit of the first body flipped in the stored ciphertext.
        let store =
            chat_store_sqlite::SqliteStore::open(dir.path().join("chat.db")).expect("the database");
        let texts = store
            .stored_texts(TextTable::Messages, None, 10)
            .await
            .expect("a read");
        let text = texts
            .iter()
            .find(|t| t.row == first["id"].as_str().expect("an id"))
            .expect("the first body");
        let mut bytes = text.text.clone().into_bytes();
        // A letter in the middle of the base64: one bit of the ciphertext.
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).expect("ascii");
        let replaced = store
            .replace_texts(vec![TextReplacement {
                table: TextTable::Messages,
                row: text.row.clone(),
                old: text.text.clone(),
                new: flipped,
            }])
            .await
            .expect("replaced");
        assert_eq!(replaced, 1);
        store.close().await.expect("closed");
    }
    let server = Server::start_in(dir).await;
    let mut bob = server.ws("bit-bob").await;
    let (history, _) = bob.history(&chat_id, serde_json::json!({})).await;
    let id = first["id"].as_str().expect("an id");
    assert_eq!(content_of(&history, id)["unreadable"], "damaged");
    assert_eq!(content_of(&history, id)["content"], serde_json::Value::Null);
    assert!(
        history
            .iter()
            .any(|m| m["content"] == "second" && m.get("unreadable").is_none())
    );
    // The server goes on: a new message reads.
    let sent = bob.send(&chat_id, "still here").await;
    assert_eq!(sent["content"], "still here");
    assert!(server.log().contains("stored content does not open"));
}

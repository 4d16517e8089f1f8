//! Encryption at rest, black-box: what participants read and what the
//! database files hold, and the master key the server insists on.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;

/// Every byte of every file in `dir` (database, WAL, key store).
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read the server's directory") {
        let path = entry.expect("an entry").path();
        if path.is_file() && !path.ends_with("server.log") {
            bytes.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
    bytes
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

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
    let files = all_bytes(server.dir());
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

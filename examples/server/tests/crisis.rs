//! Care features over real sockets, on one node: the `[[hooks]]` word
//! filter, crisis flags in the admin's report queue, alerts waiting for a
//! responder who was offline, and configuration the server refuses.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

const CONFIG: &str = r#"
[crisis]
phrases = ["want to die", "kill myself"]
responders = ["counselor"]
resources = [{ title = "Crisis line", url = "https://example.org/help", phone = "988" }]

[[hooks]]
kind = "word_filter"
action = "reject"
words = ["buy pills"]
reason = "selling is not allowed here"

[[hooks]]
kind = "word_filter"
action = "flag"
words = ["meet alone"]
"#;

#[tokio::test]
async fn word_filters_reject_or_flag_and_crisis_flags_wait_for_responders() {
    let server = Server::with_config(CONFIG).await;
    let admin = admin_token("root");
    let mut ann = server.ws("ann").await;
    let chat = ann.group("circle", &["bob"]).await;
    let chat_id = s(&chat, "id").to_owned();

    // Rejected: the sender's reason, nothing stored.
    let err = ann
        .err(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "r-1", "content": "BUY PILLS here"}),
        )
        .await;
    assert_eq!(err, "forbidden");
    let (history, _) = ann.history(&chat_id, json!({})).await;
    assert!(history.iter().all(|m| m["content"] != "BUY PILLS here"));

    // Flagged: delivered, and in the report queue for admins.
    let flagged = ann.send(&chat_id, "let us meet alone").await;
    // A crisis phrase: delivered, flagged, and the sender shown help.
    let crisis = ann.send(&chat_id, "sometimes i want to die").await;
    ann.event("support_resources").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = server
        .http(
            "GET",
            "/api/v1/admin/reports?status=open",
            Some(&admin),
            None,
        )
        .await;
    let reports = r.expect(200)["reports"].clone();
    let reason_of = |id: &serde_json::Value| {
        reports
            .as_array()
            .expect("reports")
            .iter()
            .find(|r| r["message_id"] == *id)
            .map(|r| (r["reporter_id"].clone(), r["reason"].clone()))
    };
    assert_eq!(
        reason_of(&flagged["id"]),
        Some((json!("system"), json!("word filter: meet alone")))
    );
    assert_eq!(
        reason_of(&crisis["id"]),
        Some((json!("system"), json!("crisis: want to die")))
    );

    // The responder was offline: the open alert waits for them.
    let mut counselor = server.ws("counselor").await;
    let alert = counselor.event("crisis_alert").await;
    assert_eq!(alert["message_id"], crisis["id"]);
    assert_eq!(alert["matched"], "want to die");
    assert_eq!(alert["sender_id"], "ann");
}

#[tokio::test]
async fn bad_care_settings_stop_the_server_at_start() {
    for (toml, says) in [
        ("[crisis]\nphrases = []\n", "crisis.phrases"),
        (
            "[crisis]\nphrases = [\"x y\"]\nresources = [{ title = \"t\", url = \"http://plain.example\" }]\n",
            "https",
        ),
        ("[crisis]\nphrases = [\"!!!\"]\n", "phrase"),
        (
            "[[hooks]]\nkind = \"word_filter\"\naction = \"ban\"\nwords = [\"x\"]\n",
            "expected `reject` or `flag`",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.toml");
        std::fs::write(&path, toml).expect("write config");
        let out = tokio::time::timeout(
            WAIT,
            Server::command(&dir.path().join("chat.db"), Some(&path))
                .stderr(std::process::Stdio::piped())
                .output(),
        )
        .await
        .expect("the server exits")
        .expect("it runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}: started");
        assert!(err.contains(says), "{toml}: {err}");
    }
}

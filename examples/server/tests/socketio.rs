//! `/socket.io/` (PROTOCOL.md 5.6), black-box with the real client: the
//! Node.js test in `tests/socketio/` drives socket.io-client v4 (pinned by
//! its `package-lock.json`) against a fresh server. It needs Node.js 20
//! and the packages (`npm ci` there; `.ci/run` does it, and this test does
//! when they are missing).

mod common;

use common::*;

/// Write budgets small enough for the flood in the test to go over.
const LIMITS: &str = "[rate_limits]
write = { per_second = 10, burst = 30 }
typing = { per_second = 100, burst = 100 }
other = { per_second = 1000, burst = 1000 }
";

#[tokio::test]
async fn socket_io_clients_connect_unchanged() {
    let Some(dir) = node_tests("socketio", "socket.io-client", &[]) else {
        return;
    };
    let server = Server::with_config(LIMITS).await;
    let tokens: serde_json::Map<String, serde_json::Value> =
        ["ann", "bob", "cat", "dan", "eve", "flo"]
            .iter()
            .map(|u| ((*u).to_owned(), token(u).into()))
            .collect();
    let bad = sign_with(
        jsonwebtoken::Algorithm::HS256,
        b"another-secret-another-secret-another-secret",
        &claims("ann"),
    );
    let tokens = serde_json::Value::Object(tokens).to_string();
    let admin = admin_token("root");
    let env = [
        ("TOKENS", tokens.as_str()),
        ("BAD_TOKEN", bad.as_str()),
        ("ADMIN_TOKEN", admin.as_str()),
    ];
    node_test(&dir, "socketio.test.mjs", &server, &env).await;

    // README's example, as written.
    let example = tokio::process::Command::new("node")
        .arg("readme-example.mjs")
        .current_dir(&dir)
        .env("CHAT_URL", server.url(""))
        .env("CHAT_TOKEN", token("readme-alice"))
        .output()
        .await
        .expect("node");
    let out = String::from_utf8_lossy(&example.stdout);
    assert!(
        example.status.success()
            && out.contains("readme-alice: hi bob")
            && out.contains("stored as #"),
        "README's Socket.IO example:\n{out}\n{}",
        String::from_utf8_lossy(&example.stderr)
    );
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README");
    let code = std::fs::read_to_string(dir.join("readme-example.mjs")).expect("example");
    let body: String = code.lines().skip(2).collect::<Vec<_>>().join("\n");
    assert!(
        readme.contains(&body),
        "README shows tests/socketio/readme-example.mjs from its third line on"
    );
}

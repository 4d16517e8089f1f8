//! `/socket.io/` (PROTOCOL.md 5.6), black-box with the real client: the
//! Node.js test in `tests/socketio/` drives socket.io-client v4 (pinned by
//! its `package-lock.json`) against a fresh server. It needs Node.js 20
//! and the packages (`npm ci` there; `.ci/run` does it, and this test does
//! when they are missing).

mod common;

use std::{path::PathBuf, process::Command as StdCommand};

use common::*;

/// Write budgets small enough for the flood in the test to go over.
const LIMITS: &str = "[rate_limits]
write = { per_second = 10, burst = 30 }
typing = { per_second = 100, burst = 100 }
other = { per_second = 1000, burst = 1000 }
";

fn node_available() -> bool {
    StdCommand::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn socket_io_clients_connect_unchanged() {
    if !node_available() {
        assert!(
            std::env::var_os("CHAT_REQUIRE_SERVICES").is_none(),
            "Node.js is required for the Socket.IO test (CHAT_REQUIRE_SERVICES is set)"
        );
        eprintln!("skipped: no Node.js");
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/socketio");
    if !dir.join("node_modules/socket.io-client").exists() {
        let installed = StdCommand::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm");
        assert!(installed.success(), "npm ci in {}", dir.display());
    }
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
    let run = tokio::process::Command::new("node")
        .args([
            "--experimental-websocket",
            "--no-warnings",
            "--test",
            "--test-reporter=spec",
            "socketio.test.mjs",
        ])
        .current_dir(&dir)
        .env("CHAT_URL", server.url(""))
        .env("TOKENS", serde_json::Value::Object(tokens).to_string())
        .env("BAD_TOKEN", bad)
        .env("ADMIN_TOKEN", admin_token("root"))
        .output()
        .await
        .expect("node");
    let out = String::from_utf8_lossy(&run.stdout);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the Socket.IO test failed:\n{out}\n{err}\n--- server log ---\n{}",
        server.log()
    );
    eprintln!("{out}");

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

//! The binary's command line: `token`, `--dev`, and the secret requirement.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use serde_json::json;

/// Runs `chat-server <args>` to completion with `secret` (or none).
async fn run(args: &[&str], secret: Option<&str>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"));
    cmd.args(args)
        .env_remove("CHAT_JWT_SECRET")
        .env_remove("CHAT_CONFIG")
        .env_remove("CHAT_BIND")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(secret) = secret {
        cmd.env("CHAT_JWT_SECRET", secret);
    }
    tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .expect("chat-server did not finish")
        .expect("run chat-server")
}

#[tokio::test]
async fn token_subcommand_prints_tokens_the_server_accepts() {
    let server = Server::start().await;
    let out = run(&["token", "alice"], Some(SECRET)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let alice = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(alice.split('.').count(), 3, "a JWT: {alice}");
    let mut ws = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    let ack = ws.ok("authenticate", json!({"token": alice})).await;
    assert_eq!(ack["user_id"], "alice");
    // Not an admin.
    server
        .http("GET", "/api/v1/admin/reports", Some(&alice), None)
        .await
        .expect_error(403, "forbidden");

    let out = run(&["token", "root", "--admin", "--ttl", "90s"], Some(SECRET)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    server
        .http("GET", "/api/v1/admin/reports", Some(&root), None)
        .await
        .expect(200);
}

#[tokio::test]
async fn token_subcommand_needs_the_secret() {
    let out = run(&["token", "alice"], None).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "printed a token without a secret");
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let out = run(
        &["--bind", "127.0.0.1:0", "--sqlite", db.to_str().unwrap()],
        None,
    )
    .await;
    assert!(!out.status.success(), "started without CHAT_JWT_SECRET");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening on"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[tokio::test]
async fn dev_mode_hands_out_tokens() {
    let server = Server::start_dev().await;
    let r = server
        .http("GET", "/dev/token?user=alice", None, None)
        .await;
    let body = r.expect(200).clone();
    assert_eq!(body["user_id"], "alice");
    let t = s(&body, "token").to_owned();
    let mut ws = server.ws_token("alice", &t).await;
    ws.ok("ping", json!({})).await;
    // Our own secret means nothing to it.
    server
        .http("GET", "/api/v1/chat/sessions", Some(&token("alice")), None)
        .await
        .expect_error(401, "unauthenticated");

    let r = server
        .http("GET", "/dev/token?user=root&admin=true", None, None)
        .await;
    let admin = s(r.expect(200), "token").to_owned();
    server
        .http("GET", "/api/v1/admin/reports", Some(&admin), None)
        .await
        .expect(200);
    server
        .http("GET", "/api/v1/admin/reports", Some(&t), None)
        .await
        .expect_error(403, "forbidden");
}

#[tokio::test]
async fn dev_token_route_is_absent_without_dev() {
    let server = Server::start().await;
    let r = server
        .http("GET", "/dev/token?user=alice", None, None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
}

#[tokio::test]
async fn serve_subcommand_reads_the_environment_twins() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("env.db");
    let config = dir.path().join("env.toml");
    std::fs::write(&config, "outgoing_queue = 64\n").unwrap();
    let log = dir.path().join("server.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .arg("serve")
        .env("CHAT_BIND", "127.0.0.1:0")
        .env("CHAT_SQLITE", &db)
        .env("CHAT_CONFIG", &config)
        .env("CHAT_JWT_SECRET", SECRET)
        .env("CHAT_MASTER_KEY", MASTER_KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let addr = wait_listening(child.stdout.take().unwrap(), &log).await;
    assert_ne!(addr.port(), 0);
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
    assert!(db.exists(), "CHAT_SQLITE was not used");
    child.kill().await.unwrap();
}

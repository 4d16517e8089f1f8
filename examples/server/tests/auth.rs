//! Authentication: the three ways in, refused tokens, the 10 s deadline,
//! commands before authentication, suspended users.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

#[tokio::test]
async fn header_auth_is_accepted() {
    let server = Server::start().await;
    let mut ws = server
        .connect("alice", Auth::Header(&token("alice")), &[])
        .await
        .expect("upgrade with a bearer header");
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    // The connection acts as alice.
    let chat = ws.direct("bob").await;
    assert!(
        participant_ids(&chat).contains(&"alice".to_owned()),
        "{chat}"
    );
}

#[tokio::test]
async fn query_token_auth_is_accepted() {
    let server = Server::start().await;
    let mut ws = server
        .connect("alice", Auth::Query(&token("alice")), &[])
        .await
        .expect("upgrade with ?token=");
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    let chat = ws.direct("bob").await;
    assert_eq!(participant_ids(&chat), ["alice", "bob"]);
}

#[tokio::test]
async fn first_frame_auth_is_accepted_with_user_and_default_device() {
    let server = Server::start().await;
    let mut ws = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    let ack = ws
        .ok("authenticate", json!({"token": token("alice")}))
        .await;
    assert_eq!(ack, json!({"user_id": "alice", "device_id": "default"}));
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn authenticate_reports_the_device_claim() {
    let server = Server::start().await;
    let mut ws = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    let ack = ws
        .ok(
            "authenticate",
            json!({"token": device_token("alice", "phone-1")}),
        )
        .await;
    assert_eq!(ack["user_id"], "alice");
    assert_eq!(ack["device_id"], "phone-1");
}

#[tokio::test]
async fn commands_before_authentication_are_unauthenticated() {
    let server = Server::start().await;
    let mut ws = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    assert_eq!(ws.err("ping", json!({})).await, "unauthenticated");
    assert_eq!(
        ws.err(
            "send_message",
            json!({"chat_id": "01J00000000000000000000000", "client_msg_id": "c1", "content": "hi"})
        )
        .await,
        "unauthenticated"
    );
    assert_eq!(
        ws.err("create_direct", json!({"user_id": "bob"})).await,
        "unauthenticated"
    );
    // The connection is still usable: authenticating now works.
    let ack = ws
        .ok("authenticate", json!({"token": token("alice")}))
        .await;
    assert_eq!(ack["user_id"], "alice");
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn malformed_commands_before_authentication_are_unauthenticated_too() {
    let server = Server::start().await;
    let mut ws = server
        .connect("alice", Auth::None, &[])
        .await
        .expect("upgrade");
    // Whatever the data, an unauthenticated connection learns nothing but
    // that it must authenticate.
    assert_eq!(
        ws.err("send_message", json!({"chat_id": "x", "content": "hi"}))
            .await,
        "unauthenticated"
    );
    assert_eq!(ws.err("history", json!({})).await, "unauthenticated");
}

#[tokio::test]
async fn no_authentication_within_10s_closes_with_4001() {
    let server = Server::start().await;
    let mut ws = server
        .connect("anon", Auth::None, &[])
        .await
        .expect("upgrade");
    let start = Instant::now();
    let ev = ws
        .event_within("authentication_error", Duration::from_secs(14), |_| true)
        .await
        .expect("authentication_error within 14 s");
    let elapsed = start.elapsed();
    assert!(ev["message"].is_string(), "{ev}");
    assert!(
        elapsed >= Duration::from_secs(8),
        "closed after {elapsed:?}, before the 10 s deadline"
    );
    assert_eq!(ws.close_code(WAIT).await, Some(4001));
}

/// First-frame authentication with `token` is refused with
/// `authentication_error` and close 4001.
async fn assert_first_frame_refused(token: &str) {
    let server = Server::start().await;
    let mut ws = server
        .connect("someone", Auth::None, &[])
        .await
        .expect("upgrade");
    ws.send_json(&json!({"type": "authenticate", "id": "auth-1", "data": {"token": token}}))
        .await;
    let ev = ws.event("authentication_error").await;
    assert!(ev["message"].is_string(), "{ev}");
    assert_eq!(ws.close_code(WAIT).await, Some(4001));
    // It never acked.
    assert!(
        !ws.pending().any(|f| f["type"] == "ack"),
        "refused token was acked: {:?}",
        ws.log
    );
}

/// Header authentication with `token`: either the upgrade is refused, or
/// the connection gets `authentication_error` and close 4001; it never
/// works.
async fn assert_header_refused(token: &str) {
    let server = Server::start().await;
    let mut ws = server
        .connect("someone", Auth::Header(token), &[])
        .await
        .expect("the upgrade happens; the refusal is an authentication_error");
    let ev = ws.event("authentication_error").await;
    assert!(ev["message"].is_string(), "{ev}");
    assert_eq!(ws.close_code(WAIT).await, Some(4001));
}

#[tokio::test]
async fn expired_token_is_refused() {
    let t = sign(&json!({"sub": "alice", "exp": now() - 3600}));
    assert_first_frame_refused(&t).await;
}

#[tokio::test]
async fn expired_token_in_header_is_refused_with_4001() {
    let t = sign(&json!({"sub": "alice", "exp": now() - 3600}));
    assert_header_refused(&t).await;
}

#[tokio::test]
async fn wrong_key_in_query_is_refused_with_4001() {
    let t = sign_with(
        Algorithm::HS256,
        b"not-the-server-secret-at-all-0123456789",
        &claims("alice"),
    );
    let server = Server::start().await;
    let mut ws = server
        .connect("someone", Auth::Query(&t), &[])
        .await
        .expect("upgrade");
    ws.event("authentication_error").await;
    assert_eq!(ws.close_code(WAIT).await, Some(4001));
}

#[tokio::test]
async fn token_signed_with_another_key_is_refused() {
    let t = sign_with(
        Algorithm::HS256,
        b"not-the-server-secret-at-all-0123456789",
        &claims("alice"),
    );
    assert_first_frame_refused(&t).await;
}

#[tokio::test]
async fn token_with_another_algorithm_is_refused() {
    // Same secret, HS512 instead of the configured HS256.
    let t = sign_with(Algorithm::HS512, SECRET.as_bytes(), &claims("alice"));
    assert_first_frame_refused(&t).await;
}

#[tokio::test]
async fn token_with_alg_none_is_refused() {
    assert_first_frame_refused(&unsigned_token(&claims("alice"))).await;
}

#[tokio::test]
async fn token_without_sub_is_refused() {
    assert_first_frame_refused(&sign(&json!({"exp": now() + 3600}))).await;
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    assert_first_frame_refused(&sign(&json!({"sub": "alice"}))).await;
}

#[tokio::test]
async fn token_with_invalid_sub_is_refused() {
    assert_first_frame_refused(&sign(&json!({"sub": "alice smith!", "exp": now() + 3600}))).await;
}

#[tokio::test]
async fn token_with_overlong_sub_is_refused() {
    let sub = "a".repeat(129);
    assert_first_frame_refused(&sign(&json!({"sub": sub, "exp": now() + 3600}))).await;
}

#[tokio::test]
async fn malformed_token_is_refused() {
    assert_first_frame_refused("this.is-not-a.jwt").await;
}

#[tokio::test]
async fn sub_with_all_allowed_characters_is_accepted() {
    let server = Server::start().await;
    let user = "A-z_0.9:x@y";
    let mut ws = server
        .connect(user, Auth::None, &[])
        .await
        .expect("upgrade");
    let ack = ws.ok("authenticate", json!({"token": token(user)})).await;
    assert_eq!(ack["user_id"], user);
    let long = "u".repeat(128);
    let mut ws = server
        .connect(&long, Auth::None, &[])
        .await
        .expect("upgrade");
    let ack = ws.ok("authenticate", json!({"token": token(&long)})).await;
    assert_eq!(ack["user_id"], Value::String(long));
}

#[tokio::test]
async fn suspended_user_is_closed_with_4003_and_can_return_when_lifted() {
    let server = Server::start().await;
    let admin = admin_token("moderator");
    server
        .http(
            "POST",
            "/api/v1/admin/users/mallory/suspend",
            Some(&admin),
            Some(json!({})),
        )
        .await
        .expect(200);
    let mut ws = server
        .connect("mallory", Auth::Header(&token("mallory")), &[])
        .await
        .expect("upgrade");
    assert_eq!(
        ws.close_code(WAIT).await,
        Some(4003),
        "frames: {:?}",
        ws.log
    );

    server
        .http(
            "DELETE",
            "/api/v1/admin/users/mallory/suspend",
            Some(&admin),
            None,
        )
        .await
        .expect(200);
    let mut ws = server.ws("mallory").await;
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
}

#[tokio::test]
async fn suspending_a_connected_user_closes_the_connection_with_4003() {
    let server = Server::start().await;
    let mut ws = server.ws("mallory").await;
    server
        .http(
            "POST",
            "/api/v1/admin/users/mallory/suspend",
            Some(&admin_token("moderator")),
            Some(json!({})),
        )
        .await
        .expect(200);
    assert_eq!(
        ws.close_code(WAIT).await,
        Some(4003),
        "frames: {:?}",
        ws.log
    );
}

#[tokio::test]
async fn a_token_that_expires_during_the_connection_closes_it_with_4001() {
    let server = Server::start().await;
    // Verification allows 30 s of leeway past `exp`, and so does the
    // connection: this token stops verifying about 2 s from now.
    let t = sign(&json!({"sub": "alice", "exp": now() + 2 - 30}));
    let mut ws = server.ws_token("alice", &t).await;
    assert_eq!(ws.ok("ping", json!({})).await, json!({}));
    let event = ws
        .event_within("authentication_error", Duration::from_secs(6), |_| true)
        .await;
    assert_eq!(
        event.expect("authentication_error")["message"],
        "token expired"
    );
    assert_eq!(ws.close_code(Duration::from_secs(5)).await, Some(4001));
}

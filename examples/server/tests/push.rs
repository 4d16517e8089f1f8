//! Push notifications by webhook (PROTOCOL.md 5.4), seen from the host
//! app's side: a small HTTP server in the test receives the POSTs.

mod common;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

/// The secret the test servers sign with.
const HOOK_SECRET: &str = "webhook-test-secret";

/// What the webhook answers to one POST.
#[derive(Debug, Clone, Copy)]
enum Answer {
    Status(u16),
    /// Never answers (the server's request timeout ends it).
    Hang,
}

/// One POST the webhook received.
#[derive(Debug, Clone)]
struct Post {
    body: Bytes,
    json: Value,
    signature: String,
    delivery: String,
    content_type: String,
}

#[derive(Debug)]
struct HookState {
    posts: mpsc::UnboundedSender<Post>,
    /// Answers to give, in order; then `otherwise`.
    script: Mutex<VecDeque<Answer>>,
    otherwise: Answer,
}

/// The host app's webhook: records every POST, answers as scripted.
struct Hook {
    url: String,
    posts: mpsc::UnboundedReceiver<Post>,
}

impl Hook {
    /// A webhook that answers 200.
    async fn start() -> Self {
        Self::answering(&[], Answer::Status(200)).await
    }

    /// A webhook that gives `first` answers, then always `otherwise`.
    async fn answering(first: &[Answer], otherwise: Answer) -> Self {
        let (tx, posts) = mpsc::unbounded_channel();
        let state = Arc::new(HookState {
            posts: tx,
            script: Mutex::new(first.iter().copied().collect()),
            otherwise,
        });
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind webhook");
        let addr = listener.local_addr().expect("webhook address");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}/hook?token=t0"),
            posts,
        }
    }

    /// The next POST, within `within`.
    async fn next_within(&mut self, within: Duration) -> Post {
        tokio::time::timeout(within, self.posts.recv())
            .await
            .expect("no POST reached the webhook in time")
            .expect("webhook stopped")
    }

    async fn next(&mut self) -> Post {
        self.next_within(WAIT).await
    }

    /// Every POST that arrives within `window`.
    async fn all_within(&mut self, window: Duration) -> Vec<Post> {
        let deadline = tokio::time::Instant::now() + window;
        let mut posts = Vec::new();
        while let Ok(Some(post)) = tokio::time::timeout_at(deadline, self.posts.recv()).await {
            posts.push(post);
        }
        posts
    }
}

async fn receive(
    State(state): State<Arc<HookState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = state.posts.send(Post {
        json,
        signature: header("x-chat-signature"),
        delivery: header("x-chat-delivery"),
        content_type: header("content-type"),
        body,
    });
    let answer = state
        .script
        .lock()
        .expect("script")
        .pop_front()
        .unwrap_or(state.otherwise);
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).expect("status"),
        Answer::Hang => std::future::pending().await,
    }
}

/// `sha256=<hex>` of `body` under `secret`, as the receiver computes it.
fn expected_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A config with the webhook, windows of `batch_ms`, and `extra` keys of
/// `[notifications]`.
fn config(hook: &Hook, batch_ms: u64, extra: &str) -> String {
    let url = &hook.url;
    format!(
        "{UNLIMITED}\n[notifications]\nwebhook_url = \"{url}\"\nsecret = \"{HOOK_SECRET}\"\n\
         batch_ms = {batch_ms}\n{extra}\n"
    )
}

/// Sends `texts` to `chat_id` without waiting between them; returns the
/// messages in order.
async fn send_all(ws: &mut Ws, chat_id: &str, texts: &[&str]) -> Vec<Value> {
    let mut ids = Vec::new();
    for text in texts {
        let data = json!({"chat_id": chat_id, "client_msg_id": unique("c"), "content": text});
        ids.push(ws.send_cmd("send_message", data).await);
    }
    let mut messages = Vec::new();
    for id in ids {
        let ack = ws.reply(&id).await.expect("send acknowledged");
        messages.push(ack["message"].clone());
    }
    messages
}

fn for_user<'a>(posts: &'a [Post], user: &str) -> Vec<&'a Post> {
    posts.iter().filter(|p| p.json["user_id"] == user).collect()
}

#[tokio::test]
async fn three_messages_to_an_offline_user_make_one_signed_post() {
    let mut hook = Hook::start().await;
    let server = Server::with_config(&config(&hook, 1000, "")).await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    let chat_id = s(&chat, "id");

    let sent = Instant::now();
    let messages = send_all(&mut alice, chat_id, &["one", "two", "three"]).await;
    let post = hook.next().await;
    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "the window is batch_ms long, not {waited:?}"
    );

    assert_eq!(post.content_type, "application/json");
    assert_eq!(post.signature, expected_signature(HOOK_SECRET, &post.body));
    assert!(!post.delivery.is_empty(), "X-Chat-Delivery is set");
    assert_eq!(
        post.json,
        json!({
            "user_id": "bob",
            "notifications": [{
                "chat_id": chat_id,
                "count": 3,
                "latest": {
                    "message_id": messages[2]["id"],
                    "sender_id": "alice",
                    "type": "text",
                    "preview": null,
                },
            }],
        }),
        "exactly the contract's fields; no preview unless configured"
    );
    let more = hook.all_within(Duration::from_millis(1500)).await;
    assert!(more.is_empty(), "one POST per window: {more:?}");

    // A new window after the first one closed, with its own delivery id.
    alice.send(chat_id, "four").await;
    let next = hook.next().await;
    assert_eq!(next.json["notifications"][0]["count"], 1);
    assert_ne!(next.delivery, post.delivery);
}

#[tokio::test]
async fn a_connected_user_gets_none_even_after_user_offline() {
    let mut hook = Hook::start().await;
    let server = Server::with_config(&config(&hook, 200, "")).await;
    let mut alice = server.ws("alice").await;
    let mut bob = server.ws("bob").await;
    let with_bob = alice.direct("bob").await;
    let with_carol = alice.direct("carol").await;

    alice.send(s(&with_bob, "id"), "you are online").await;
    bob.ok("user_offline", json!({})).await;
    alice.send(s(&with_bob, "id"), "still connected").await;
    // carol has no connection: her POST comes, bob's never does.
    alice.send(s(&with_carol, "id"), "you are offline").await;
    let posts = hook.all_within(Duration::from_millis(1500)).await;
    assert_eq!(for_user(&posts, "carol").len(), 1, "{posts:?}");
    assert!(for_user(&posts, "bob").is_empty(), "{posts:?}");
}

#[tokio::test]
async fn a_failed_post_is_retried_with_the_same_delivery_id() {
    let mut hook = Hook::answering(&[Answer::Status(500)], Answer::Status(200)).await;
    let server = Server::with_config(&config(&hook, 200, "")).await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    alice.send(s(&chat, "id"), "are you there?").await;

    let first = hook.next().await;
    let retried = Instant::now();
    let second = hook.next().await;
    let pause = retried.elapsed();
    assert_eq!(second.delivery, first.delivery, "at least once, same id");
    assert_eq!(second.body, first.body, "the same body");
    assert_eq!(
        second.signature,
        expected_signature(HOOK_SECRET, &second.body)
    );
    assert!(
        pause <= Duration::from_secs(2),
        "the first retry comes after about half a second, not {pause:?}"
    );
    assert!(hook.all_within(Duration::from_millis(800)).await.is_empty());

    let metrics = server.http("GET", "/metrics", None, None).await.text;
    for line in ["chat_push_failed_total 1", "chat_push_sent_total 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

#[tokio::test]
async fn previews_when_configured_never_for_e2ee() {
    let mut hook = Hook::start().await;
    // The secret from the environment wins over the file's.
    let server = Server::with_config_env(
        &config(&hook, 200, "preview_chars = 5"),
        &[("CHAT_WEBHOOK_SECRET", "from-the-environment")],
    )
    .await;
    let mut alice = server.ws("alice").await;
    let plain = alice.direct("bob").await;
    let sealed = alice
        .ok(
            "create_direct",
            json!({"user_id": "carol", "encryption": "e2ee"}),
        )
        .await["chat"]
        .clone();
    alice
        .send(s(&plain, "id"), "héllo wörld, how are you?")
        .await;
    alice.send(s(&sealed, "id"), "Y2lwaGVydGV4dA==").await;

    let posts = hook.all_within(Duration::from_millis(1500)).await;
    let bob = for_user(&posts, "bob");
    let carol = for_user(&posts, "carol");
    assert_eq!((bob.len(), carol.len()), (1, 1), "{posts:?}");
    assert_eq!(
        bob[0].json["notifications"][0]["latest"]["preview"], "héllo",
        "the first preview_chars Unicode scalar values"
    );
    assert_eq!(
        carol[0].json["notifications"][0]["latest"]["preview"],
        Value::Null,
        "e2ee: never"
    );
    for post in posts {
        assert_eq!(
            post.signature,
            expected_signature("from-the-environment", &post.body)
        );
    }
}

#[tokio::test]
async fn muted_chats_are_left_out() {
    let mut hook = Hook::start().await;
    let server = Server::with_config(&config(&hook, 300, "")).await;
    let mut alice = server.ws("alice").await;
    let direct = alice.direct("bob").await;
    let group = alice.group("team", &["bob"]).await;
    // bob mutes the direct chat over HTTP: no live connection for him.
    server
        .put(
            &format!("/api/v1/chat/sessions/{}", s(&direct, "id")),
            "bob",
            json!({"muted_until": "2999-01-01T00:00:00Z"}),
        )
        .await
        .expect(200);

    alice.send(s(&direct, "id"), "muted").await;
    alice.send(s(&group, "id"), "not muted").await;
    let post = hook.next().await;
    assert_eq!(post.json["user_id"], "bob");
    let notifications = post.json["notifications"].as_array().expect("a list");
    assert_eq!(notifications.len(), 1, "{notifications:?}");
    assert_eq!(notifications[0]["chat_id"], s(&group, "id"));
    assert_eq!(notifications[0]["count"], 1);
}

#[tokio::test]
async fn sends_never_wait_for_a_hanging_webhook() {
    let mut hook = Hook::answering(&[], Answer::Hang).await;
    let server = Server::with_config(&config(&hook, 100, "request_timeout_secs = 60")).await;
    let mut alice = server.ws("alice").await;
    // More offline recipients than the sender has POSTs in flight.
    let members: Vec<String> = (0..24).map(|i| format!("offline-{i}")).collect();
    let member_refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let group = alice.group("crowd", &member_refs).await;
    let group_id = s(&group, "id");

    alice.send(group_id, "first").await;
    hook.next().await; // the webhook now hangs on it, and on the rest
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut slowest = Duration::ZERO;
    for i in 0..10 {
        let started = Instant::now();
        alice.send(group_id, &format!("message {i}")).await;
        slowest = slowest.max(started.elapsed());
    }
    eprintln!("slowest ack while the webhook hangs: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(1),
        "a send waited for the webhook: {slowest:?}"
    );
}

#[tokio::test]
async fn a_stopping_server_hands_over_its_open_windows() {
    let mut hook = Hook::start().await;
    let mut server = Server::with_config(&config(&hook, 60_000, "")).await;
    let mut alice = server.ws("alice").await;
    let chat = alice.direct("bob").await;
    alice.send(s(&chat, "id"), "before the restart").await;
    alice.close().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The window would close in a minute; the server sends it now.
    server.signal("TERM");
    let post = hook.next().await;
    assert_eq!(post.json["user_id"], "bob");
    assert_eq!(post.json["notifications"][0]["count"], 1);
    assert!(server.wait_exit(WAIT).await.success());
}

#[tokio::test]
async fn crisis_alerts_and_shared_moods_reach_the_webhook_signed() {
    let mut hook = Hook::start().await;
    let toml = format!(
        "{}\n[crisis]\nphrases = [\"want to die\"]\nresponders = [\"pc-counselor\"]\n",
        config(&hook, 60_000, "")
    );
    let server = Server::with_config(&toml).await;
    let mut ann = server.ws("pc-ann").await;
    let mut bob = server.ws("pc-bob").await;
    let group = ann.group("pc-circle", &["pc-bob", "pc-cat"]).await;
    let chat_id = s(&group, "id").to_owned();

    // The alert goes out at once (not in a push window), signed.
    let sent = bob.send(&chat_id, "some days I want to die").await;
    let post = hook.next().await;
    assert_eq!(
        post.json,
        json!({"type": "crisis_alert", "chat_id": chat_id, "message_id": sent["id"],
               "sender_id": "pc-bob", "matched": "want to die", "at": sent["created_at"]})
    );
    assert_eq!(post.signature, expected_signature(HOOK_SECRET, &post.body));
    assert!(!post.delivery.is_empty());

    // Mood answers: only from users who opted in.
    let mood = ann
        .ok(
            "create_checkin",
            json!({"chat_id": chat_id, "client_msg_id": "m-1", "kind": "mood",
                   "prompt": "How are you?"}),
        )
        .await["message"]
        .clone();
    let mut cat = server.ws("pc-cat").await;
    cat.ok(
        "answer_checkin",
        json!({"message_id": mood["id"], "option": 0}),
    )
    .await;
    bob.ok("set_privacy", json!({"mood_sharing": true})).await;
    bob.ok(
        "answer_checkin",
        json!({"message_id": mood["id"], "option": 1}),
    )
    .await;
    let post = hook.next().await;
    assert_eq!(post.json["type"], "mood");
    assert_eq!(post.json["user_id"], "pc-bob");
    assert_eq!(post.json["chat_id"], chat_id.as_str());
    assert_eq!(post.json["value"], 2);
    assert!(post.json["at"].is_string());
    let more = hook.all_within(QUIET).await;
    assert!(
        more.iter().all(|p| p.json["type"] != "mood"),
        "cat did not opt in: {:?}",
        more.iter().map(|p| &p.json).collect::<Vec<_>>()
    );
}

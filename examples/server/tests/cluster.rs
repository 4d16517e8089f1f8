//! Two `chat-server` nodes over one PostgreSQL database and one Redis:
//! users on different nodes talk, one node is killed with SIGKILL, its user
//! reconnects to the other node and loses nothing, and the peer sees them
//! go offline within the presence TTL.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn required() -> bool {
    std::env::var("CHAT_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

fn psql(url: &str, sql: &str) -> Result<(), String> {
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A fresh database, dropped on drop.
struct Database {
    name: String,
    admin: String,
}

impl Database {
    fn create() -> Option<Self> {
        let admin = std::env::var("DATABASE_URL").unwrap_or_else(|_| ADMIN_URL.to_owned());
        let name = format!("chat_cluster_{}", unique("t").replace('-', "_"));
        match psql(&admin, &format!("CREATE DATABASE {name}")) {
            Ok(()) => Some(Self { name, admin }),
            Err(e) if required() => {
                panic!("PostgreSQL unreachable at {admin} (CHAT_REQUIRE_SERVICES=1): {e}")
            }
            Err(e) => {
                eprintln!("SKIPPED: PostgreSQL unreachable at {admin}: {e}");
                None
            }
        }
    }

    fn url(&self) -> String {
        match self.admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.name),
            None => self.admin.clone(),
        }
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn redis_url() -> Option<String> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    let addr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    match std::net::TcpStream::connect_timeout(
        &addr
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 6379).into()),
        Duration::from_secs(2),
    ) {
        Ok(_) => Some(url),
        Err(e) if required() => panic!("Redis unreachable at {url} (CHAT_REQUIRE_SERVICES=1): {e}"),
        Err(e) => {
            eprintln!("SKIPPED: Redis unreachable at {url}: {e}");
            None
        }
    }
}

/// `pg_dump` of the test database, as text.
fn pg_dump(db: &Database) -> String {
    let dump = std::process::Command::new("pg_dump")
        .arg(db.url())
        .output()
        .expect("run pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    String::from_utf8_lossy(&dump.stdout).into_owned()
}

fn cursor_of(sync: &Value, chat_id: &str) -> u64 {
    sync_entry(sync, chat_id)["changes"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|m| m["updated_seq"].as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_chats_and_survive_a_killed_node() {
    let Some(db) = Database::create() else { return };
    let Some(redis) = redis_url() else { return };
    let ttl = 3;
    let config = format!(
        "postgres = \"{}\"\nredis = \"{redis}\"\npresence_ttl_secs = {ttl}\nredis_key_prefix = \"{}\"\n",
        db.url(),
        unique("chat:test")
    );
    let node1 = Server::with_config(&config).await;
    let node2 = Server::with_config(&config).await;

    // A direct chat made on node 1 over HTTP is visible on node 2.
    let created = node1
        .post("/api/v1/chat/sessions", "alice", json!({"user_id": "bob"}))
        .await;
    assert_eq!(created.status, 201);
    let chat_id = s(&created.body, "id").to_owned();

    let mut bob = node2.ws("bob").await;
    let mut alice = node1.ws("alice").await;
    // Presence crosses nodes.
    bob.event_where("user_online", |e| e["user_id"] == "alice")
        .await;

    // Messages both ways.
    let m1 = alice.send(&chat_id, "hello from node 1").await;
    let got = bob
        .event_where("message_received", |e| e["id"] == m1["id"])
        .await;
    assert_eq!(got["content"], "hello from node 1");
    let m2 = bob.send(&chat_id, "hello from node 2").await;
    alice
        .event_where("message_received", |e| e["id"] == m2["id"])
        .await;

    // Receipts.
    bob.ok(
        "mark_as_read",
        json!({"chat_id": chat_id, "up_to_seq": m1["seq"]}),
    )
    .await;
    let read = alice
        .event_where("message_read", |e| e["user_id"] == "bob")
        .await;
    assert_eq!(read["up_to_seq"], m1["seq"]);

    // Typing reaches a chat open on the other node.
    alice.ok("join_chat", json!({"chat_id": chat_id})).await;
    bob.ok("join_chat", json!({"chat_id": chat_id})).await;
    alice.ok("typing_start", json!({"chat_id": chat_id})).await;
    bob.event_where("user_typing", |e| e["user_id"] == "alice")
        .await;

    // A burst right before node 1 dies: every acked message must survive.
    let mut acked = vec![m1["id"].clone(), m2["id"].clone()];
    for i in 0..20 {
        acked.push(alice.send(&chat_id, &format!("burst {i}")).await["id"].clone());
    }
    node1.signal("KILL");

    // Bob sees Alice go offline within the TTL (plus the heartbeat period
    // and the time to notice).
    let off = bob
        .event_within("user_offline", Duration::from_secs(ttl * 2 + 4), |e| {
            e["user_id"] == "alice"
        })
        .await;
    assert!(
        off.is_some(),
        "bob must see alice go offline after node 1 died"
    );

    // Alice reconnects to node 2 and catches up with sync: nothing lost.
    let mut alice = node2.ws("alice").await;
    let synced = alice.sync(json!({})).await;
    let changes = sync_entry(&synced, &chat_id)["changes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ids: Vec<Value> = changes.iter().map(|m| m["id"].clone()).collect();
    for id in &acked {
        assert!(ids.contains(id), "acked message {id} lost; have {ids:?}");
    }
    let seqs: Vec<u64> = changes.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seqs ascend: {seqs:?}"
    );

    // And the conversation goes on on node 2.
    let cursor = cursor_of(&synced, &chat_id);
    let m3 = bob.send(&chat_id, "welcome back").await;
    alice
        .event_where("message_received", |e| e["id"] == m3["id"])
        .await;
    let again = alice.sync(json!({ chat_id.clone(): cursor })).await;
    assert_eq!(
        cursor_of(&again, &chat_id),
        m3["updated_seq"].as_u64().unwrap_or(0)
    );
    drop(node2);
}

/// Encryption at rest on PostgreSQL: a marker sent and edited through the
/// server reads back for the participants and is nowhere in `pg_dump` of
/// the database (messages, and the key store's schema beside them).
#[tokio::test]
async fn message_content_is_not_in_pg_dump() {
    let Some(db) = Database::create() else { return };
    let config = format!("postgres = \"{}\"\n", db.url());
    let server = Server::with_config(&config).await;
    let mut alice = server.ws("dump-alice").await;
    let mut bob = server.ws("dump-bob").await;
    let chat = alice.direct("dump-bob").await;
    let chat_id = s(&chat, "id").to_owned();
    let marker = unique("marker-3d9a");
    let sent = alice.send(&chat_id, &format!("between us: {marker}")).await;
    let received = bob
        .event_where("message_received", |e| e["id"] == sent["id"])
        .await;
    assert_eq!(received["content"], format!("between us: {marker}"));
    let edited = unique("edited-77e0");
    alice
        .ok(
            "edit_message",
            json!({"message_id": sent["id"], "content": edited}),
        )
        .await;
    let (history, _) = bob.history(&chat_id, json!({})).await;
    assert_eq!(history.last().expect("the message")["content"], edited);
    let dump = pg_dump(&db);
    assert!(
        dump.contains("chat_keys"),
        "the key store is in the dump too"
    );
    assert!(!dump.contains(&marker), "the message text is in pg_dump");
    assert!(!dump.contains(&edited), "the edited text is in pg_dump");
}

/// End-to-end encrypted across two nodes on PostgreSQL and Redis: key
/// packages published on one node are claimed on the other, the group's
/// commits are ordered by the shared database, messages cross nodes, and
/// neither the plaintext nor anything that decrypts it is in `pg_dump`.
#[tokio::test]
async fn e2ee_across_two_nodes_leaves_no_plaintext_in_pg_dump() {
    use common::e2ee::{Person, e2ee_group};
    let Some(db) = Database::create() else { return };
    let Some(redis) = redis_url() else { return };
    let config = format!(
        "postgres = \"{}\"\nredis = \"{redis}\"\nredis_key_prefix = \"{}\"\n",
        db.url(),
        unique("chat:e2ee")
    );
    let node1 = Server::with_config(&config).await;
    let node2 = Server::with_config(&config).await;
    let mut alice = Person::connect(&node1, "pg-e2ee-alice").await;
    let mut bob = Person::connect(&node2, "pg-e2ee-bob").await;
    bob.publish(3).await;
    let chat = e2ee_group(&mut alice, &mut [&mut bob]).await;
    let marker = unique("pg-e2ee-marker-51c0");
    alice.send(&chat, &format!("across nodes: {marker}")).await;
    assert_eq!(bob.receive(&chat).await, format!("across nodes: {marker}"));
    bob.send(&chat, "and back").await;
    assert_eq!(alice.receive(&chat).await, "and back");
    let dump = pg_dump(&db);
    assert!(dump.contains("mls_groups"), "the dump holds the MLS tables");
    assert!(!dump.contains(&marker), "the plaintext is in pg_dump");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspension_on_one_node_takes_effect_on_every_node() {
    let Some(db) = Database::create() else { return };
    let Some(redis) = redis_url() else { return };
    let config = format!(
        "postgres = \"{}\"\nredis = \"{redis}\"\nredis_key_prefix = \"{}\"\n",
        db.url(),
        unique("chat:test")
    );
    let node1 = Server::with_config(&config).await;
    let node2 = Server::with_config(&config).await;
    let mut mallory = node2.ws("mallory").await;
    assert_eq!(mallory.ok("ping", json!({})).await, json!({}));
    let admin = admin_token("root");
    let suspend = "/api/v1/admin/users/mallory/suspend";
    node1
        .http("POST", suspend, Some(&admin), Some(json!({})))
        .await
        .expect(200);
    // Connected on the other node: closed at once.
    assert_eq!(
        mallory.close_code(WAIT).await,
        Some(4003),
        "{:?}",
        mallory.log
    );
    // New connections and requests on either node are refused.
    for node in [&node1, &node2] {
        let mut again = node
            .connect("mallory", Auth::Header(&token("mallory")), &[])
            .await
            .expect("upgrade");
        assert_eq!(again.close_code(WAIT).await, Some(4003), "{:?}", again.log);
        node.get("/api/v1/chat/sessions", "mallory")
            .await
            .expect_error(403, "forbidden");
    }
    // Lifted on node 2, welcome back on node 1.
    node2
        .http("DELETE", suspend, Some(&admin), None)
        .await
        .expect(200);
    let mut back = node1.ws("mallory").await;
    assert_eq!(back.ok("ping", json!({})).await, json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crisis_alert_reaches_a_responder_on_the_other_node_and_nobody_else() {
    let Some(db) = Database::create() else { return };
    let Some(redis) = redis_url() else { return };
    let config = format!(
        "postgres = \"{}\"\nredis = \"{redis}\"\nredis_key_prefix = \"{}\"\n\n\
         [crisis]\nphrases = [\"want to die\"]\nresponders = [\"counselor\"]\n\
         resources = [{{ title = \"Crisis line\", url = \"https://example.org/help\", phone = \"988\" }}]\n",
        db.url(),
        unique("chat:test")
    );
    let node1 = Server::with_config(&config).await;
    let node2 = Server::with_config(&config).await;
    let mut counselor = node2.ws("counselor").await;
    let mut ann = node1.ws("ann").await;
    let mut bob = node2.ws("bob").await;
    let chat = ann.direct("bob").await;
    let chat_id = s(&chat, "id").to_owned();

    let sent = ann
        .ok(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "c-1", "content": "WANT to díe"}),
        )
        .await["message"]
        .clone();
    let alert = counselor.event("crisis_alert").await;
    assert_eq!(
        alert,
        json!({"chat_id": chat_id, "message_id": sent["id"], "sender_id": "ann",
               "matched": "want to die", "at": sent["created_at"]})
    );
    let help = ann.event("support_resources").await;
    assert_eq!(help["message_id"], sent["id"]);
    assert_eq!(
        help["resources"],
        json!([{"title": "Crisis line", "url": "https://example.org/help", "phone": "988"}])
    );
    // Bob reads the message as any other, and nothing of the alert.
    bob.event_where("message_received", |e| e["id"] == sent["id"])
        .await;

    // A retry alerts nobody again; a near miss does not match.
    ann.ok(
        "send_message",
        json!({"chat_id": chat_id, "client_msg_id": "c-1", "content": "WANT to díe"}),
    )
    .await;
    ann.send(&chat_id, "I want to dieter").await;
    counselor.no_event("crisis_alert", QUIET).await;
    ann.no_event("support_resources", QUIET).await;
    for kind in ["crisis_alert", "support_resources"] {
        bob.no_event(kind, QUIET).await;
    }
}

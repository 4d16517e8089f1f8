//! What the conformance suite cannot see from one store: several nodes
//! (stores with pools of their own) writing one database at once, the races
//! that the unique indexes decide, and the bulk path of `apply` against the
//! per-change path.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chat_core::{
    Chat, ChatId, ChatKind, Encryption, Error as CoreError, MediaId, MediaRef, Message, MessageId,
    MessageType, Role, Store, Timestamp, UserId,
    store::{Applied, Change, Committed, HistoryQuery, NewChat, NewMessage},
};
use chat_store_postgres::{
    PostgresConfig, PostgresStore,
    sqlx::{self, Connection, PgConnection},
};
use tokio::sync::Barrier;

use crate::common::{TestDb, small_pool};

const T0: i64 = 1_795_464_000_000;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(T0 + secs * 1_000)
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap_or_else(|e| panic!("bad user id {name}: {e}"))
}

fn text(chat: ChatId, sender: &UserId, cid: &str, body: &str, secs: i64) -> NewMessage {
    NewMessage {
        mls: None,
        id: MessageId::new(),
        chat_id: chat,
        sender_id: sender.clone(),
        kind: MessageType::Text,
        content: Some(body.to_owned()),
        media: None,
        reply_to: None,
        client_msg_id: Some(cid.to_owned()),
        system: None,
        created_at: at(secs),
    }
}

fn group(id: ChatId, members: &[&UserId]) -> NewChat {
    NewChat {
        id,
        kind: ChatKind::Group,
        name: Some("group".to_owned()),
        description: None,
        avatar_url: None,
        encryption: Encryption::AtRest,
        participants: members
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let role = if i == 0 { Role::Admin } else { Role::Member };
                ((*u).clone(), role)
            })
            .collect(),
        created_at: at(0),
    }
}

async fn create(store: &dyn Store, chat: NewChat) -> Chat {
    match store.create_chat(chat).await {
        Ok((chat, true)) => chat,
        other => panic!("create_chat: expected a new chat, got {other:?}"),
    }
}

fn posted(result: chat_core::Result<Committed>, what: &str) -> (Message, bool) {
    match result.map(|c| c.applied) {
        Ok(Applied::Posted { message, duplicate }) => (message, duplicate),
        other => panic!("{what}: expected Applied::Posted, got {other:?}"),
    }
}

async fn last_seq(store: &dyn Store, chat: ChatId) -> u64 {
    match store.get_chat(chat).await {
        Ok(Some(c)) => c.last_seq,
        other => panic!("get_chat: {other:?}"),
    }
}

async fn history(store: &dyn Store, chat: ChatId) -> Vec<Message> {
    let all = HistoryQuery {
        before_seq: None,
        after_seq: None,
        from_seq: 0,
        limit: 100_000,
    };
    store
        .history(chat, all)
        .await
        .unwrap_or_else(|e| panic!("history: {e}"))
}

/// Two nodes on one fresh database.
async fn two_nodes(config: PostgresConfig) -> Option<(TestDb, [Arc<PostgresStore>; 2])> {
    let db = TestDb::create().await?;
    let a = Arc::new(db.store(config.clone()).await);
    let b = Arc::new(db.store(config).await);
    Some((db, [a, b]))
}

/// Awaits every task, re-raising the first panic.
async fn join_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => match e.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(e) => panic!("a task failed: {e}"),
            },
        }
    }
    out
}

/// Posts from two nodes into one chat, some one per `apply` and some in
/// batches of five (the bulk path), take the seqs 1..=n exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_posting_into_one_chat_take_gap_free_seqs() {
    const TASKS: usize = 16;
    const ROUNDS: usize = 10;
    const BATCH: usize = 5;
    let Some((_db, nodes)) = two_nodes(small_pool()).await else {
        return;
    };
    let users: Vec<UserId> = (0..TASKS).map(|i| user(&format!("u{i:02}"))).collect();
    let refs: Vec<&UserId> = users.iter().collect();
    let chat = create(&*nodes[0], group(ChatId::new(), &refs)).await;
    let barrier = Arc::new(Barrier::new(TASKS));
    let mut handles = Vec::new();
    for (t, sender) in users.into_iter().enumerate() {
        let node = Arc::clone(&nodes[t % 2]);
        let barrier = Arc::clone(&barrier);
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut mine = Vec::new();
            for r in 0..ROUNDS {
                // Odd tasks post in batches, even ones one by one.
                let n = if t % 2 == 1 { BATCH } else { 1 };
                let batch: Vec<Change> = (0..n)
                    .map(|i| {
                        let cid = format!("t{t}-{r}-{i}");
                        Change::Post(text(chat.id, &sender, &cid, "hi", 1))
                    })
                    .collect();
                for result in node.apply(batch).await {
                    let (m, dup) = posted(result, "a concurrent post");
                    assert!(!dup);
                    mine.push(m.seq);
                }
            }
            assert!(
                mine.windows(2).all(|w| w[0] < w[1]),
                "one caller's posts take growing seqs: {mine:?}"
            );
            mine
        }));
    }
    let mut seqs: Vec<u64> = join_all(handles).await.into_iter().flatten().collect();
    seqs.sort_unstable();
    let total = u64::try_from(seqs.len()).unwrap_or_default();
    assert_eq!(
        total,
        u64::try_from(TASKS / 2 * ROUNDS * (1 + BATCH)).unwrap_or(0)
    );
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "gap-free, each once");
    for node in &nodes {
        assert_eq!(last_seq(&**node, chat.id).await, total);
        let stored: Vec<u64> = history(&**node, chat.id)
            .await
            .iter()
            .map(|m| m.seq)
            .collect();
        assert_eq!(stored, (1..=total).rev().collect::<Vec<_>>());
    }
    assert!(
        nodes[1].stats().bulk_posts > 0,
        "the batches took the bulk path: {:?}",
        nodes[1].stats()
    );
}

/// The same `(sender, client_msg_id)` posted at once through two nodes,
/// many racers per round: one message is stored, everyone gets it, one
/// racer sees `duplicate: false`, one seq is taken per round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_on_two_nodes_store_one_message() {
    const ROUNDS: usize = 8;
    const RACERS: usize = 12;
    let Some((_db, nodes)) = two_nodes(small_pool()).await else {
        return;
    };
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = create(&*nodes[0], group(ChatId::new(), &[&alice, &bob])).await;
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(RACERS));
        let cid = format!("retry-{round}");
        let mut handles = Vec::new();
        for r in 0..RACERS {
            let node = Arc::clone(&nodes[r % 2]);
            let barrier = Arc::clone(&barrier);
            let new = text(chat.id, &alice, &cid, &format!("attempt {r}"), 1);
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut results = node.apply(vec![Change::Post(new)]).await;
                posted(results.remove(0), "a racing retry")
            }));
        }
        let results = join_all(handles).await;
        let winner = &results[0].0;
        assert!(results.iter().all(|(m, _)| m == winner), "round {round}");
        assert_eq!(results.iter().filter(|(_, dup)| !dup).count(), 1);
        assert_eq!(winner.seq, u64::try_from(round + 1).unwrap_or_default());
    }
    let rounds = u64::try_from(ROUNDS).unwrap_or_default();
    for node in &nodes {
        assert_eq!(last_seq(&**node, chat.id).await, rounds);
        assert_eq!(history(&**node, chat.id).await.len(), ROUNDS);
    }
}

/// A second connection plays another node in the middle of a transaction:
/// it has inserted `(alice, key)` into `chat` and not committed yet.
async fn uncommitted_post(db: &TestDb, chat: ChatId, key: &str, seq: i64) -> PgConnection {
    let mut other = PgConnection::connect(&db.url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    sqlx::raw_sql("BEGIN")
        .execute(&mut other)
        .await
        .unwrap_or_else(|e| panic!("BEGIN: {e}"));
    sqlx::query(
        "INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, content, \
           client_msg_id, created_at) VALUES ($1, $2, $3, $3, 'alice', 'text', 'theirs', $4, $5)",
    )
    .bind(MessageId::new().to_string())
    .bind(chat.to_string())
    .bind(seq)
    .bind(key)
    .bind(T0)
    .execute(&mut other)
    .await
    .unwrap_or_else(|e| panic!("the other node's insert: {e}"));
    other
}

/// Waits until some backend waits for a lock (our insert, on the other
/// node's uncommitted key), so that the race is certain.
async fn until_blocked(db: &TestDb) {
    let mut admin = PgConnection::connect(&db.url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("pg_stat_activity: {e}"));
        if waiting > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the post never waited for the key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The race the look-up cannot see: another node commits the same key
/// between our look-up and our insert. The insert waits for it, finds the
/// key taken, rolls back to its savepoint (giving the seq back) and returns
/// the other node's message as a duplicate; in another chat, a `Conflict`.
/// With and without the bulk path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_committed_by_another_node_mid_post_is_answered_from_the_store() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let store = Arc::new(db.store(small_pool()).await);
    let (alice, bob) = (user("alice"), user("bob"));
    let here = create(&*store, group(ChatId::new(), &[&alice, &bob])).await;
    let there = create(&*store, group(ChatId::new(), &[&alice, &bob])).await;

    // Same chat, a single post: a duplicate, and no seq taken.
    let mut other = uncommitted_post(&db, here.id, "k-1", 100).await;
    let post = {
        let store = Arc::clone(&store);
        let new = text(here.id, &alice, "k-1", "mine", 1);
        tokio::spawn(async move { store.apply(vec![Change::Post(new)]).await })
    };
    until_blocked(&db).await;
    sqlx::raw_sql("COMMIT")
        .execute(&mut other)
        .await
        .unwrap_or_else(|e| panic!("COMMIT: {e}"));
    let mut results = join_all(vec![post]).await.remove(0);
    let (message, duplicate) = posted(results.remove(0), "the post that lost the race");
    assert!(duplicate, "the other node's message is the original");
    assert_eq!(
        (message.seq, message.content.as_deref()),
        (100, Some("theirs"))
    );
    assert_eq!(last_seq(&*store, here.id).await, 0, "no seq taken");

    // Another chat, in a batch of posts (the bulk path): the bulk insert
    // collides, the run goes through the per-change path, where the post
    // of the taken key is a Conflict and the others are stored.
    let mut other = uncommitted_post(&db, there.id, "k-2", 100).await;
    let batch = vec![
        Change::Post(text(here.id, &bob, "b-1", "one", 2)),
        Change::Post(text(here.id, &alice, "k-2", "two", 3)),
        Change::Post(text(here.id, &bob, "b-2", "three", 4)),
    ];
    let post = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.apply(batch).await })
    };
    until_blocked(&db).await;
    sqlx::raw_sql("COMMIT")
        .execute(&mut other)
        .await
        .unwrap_or_else(|e| panic!("COMMIT: {e}"));
    let results = join_all(vec![post]).await.remove(0);
    assert_eq!(results.len(), 3);
    let mut results = results.into_iter();
    let (one, _) = posted(results.next().unwrap_or_else(|| panic!("result 0")), "b-1");
    assert!(
        matches!(results.next(), Some(Err(CoreError::Conflict(_)))),
        "a key used in another chat is a Conflict"
    );
    let (three, _) = posted(results.next().unwrap_or_else(|| panic!("result 2")), "b-2");
    assert_eq!((one.seq, three.seq), (1, 2), "the failed post took no seq");
    assert_eq!(last_seq(&*store, here.id).await, 2);
    let stats = store.stats();
    assert_eq!(
        (stats.bulk_runs, stats.fallback_runs),
        (0, 1),
        "the collision sent the run to the per-change path: {stats:?}"
    );
}

/// The outcomes of a batch, comparable across databases (errors by code).
fn outcomes(
    results: Vec<chat_core::Result<Committed>>,
) -> Vec<Result<Applied, chat_core::ErrorCode>> {
    results
        .into_iter()
        .map(|r| r.map(|c| c.applied).map_err(|e| e.code()))
        .collect()
}

/// The same batches applied with and without the bulk path give the same
/// results and leave the same state; the bulk store used the bulk path for
/// the batches that allow it and fell back for the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_and_per_change_paths_agree() {
    let Some(bulk_db) = TestDb::create().await else {
        return;
    };
    let Some(plain_db) = TestDb::create().await else {
        return;
    };
    let bulk = bulk_db.store(small_pool()).await;
    let plain = per_change_store(&plain_db).await;
    let stores: [&dyn Store; 2] = [&bulk, &plain];

    let [alice, bob, carol, mallory] = ["alice", "bob", "carol", "mallory"].map(user);
    let (c1, c2, c3) = (ChatId::new(), ChatId::new(), ChatId::new());
    for s in stores {
        create(s, group(c1, &[&alice, &bob])).await;
        create(s, group(c2, &[&bob, &carol])).await;
        create(s, group(c3, &[&alice, &carol])).await;
    }
    let media = MediaRef {
        id: MediaId::new(),
        mime: "image/png".to_owned(),
        size: 1234,
        url: "/m/1".to_owned(),
        thumbnail_url: Some("/m/1?thumbnail=true".to_owned()),
        duration_ms: None,
        width: Some(64),
        height: Some(48),
        name: None,
    };
    let first = text(c1, &alice, "a-1", "first", 1);
    let system = NewMessage {
        mls: None,
        id: MessageId::new(),
        chat_id: c2,
        sender_id: mallory.clone(),
        kind: MessageType::System,
        content: None,
        media: None,
        reply_to: None,
        client_msg_id: None,
        system: Some(chat_core::SystemEvent::ParticipantRemoved {
            user_id: carol.clone(),
        }),
        created_at: at(3),
    };

    // 1: every post can be stored: interleaved chats, a system post by a
    // non-participant, replies to earlier posts of the run, media.
    let clean = vec![
        Change::Post(first.clone()),
        Change::Post(text(c2, &bob, "b-1", "hello", 2)),
        Change::Post(system),
        Change::Post(NewMessage {
            reply_to: Some(first.id),
            media: Some(media.clone()),
            ..text(c1, &bob, "b-2", "re", 4)
        }),
        Change::Post(text(c3, &carol, "c-1", "x", 5)),
        Change::Post(text(c1, &alice, "a-2", "again", 6)),
    ];
    // 2: posts that fail or are duplicates, among good ones, then changes
    // that are not posts, then another clean run.
    let mixed = vec![
        Change::Post(text(c1, &bob, "b-3", "fine", 10)),
        Change::Post(text(c1, &mallory, "m-1", "not a member", 11)),
        Change::Post(text(c1, &alice, "a-1", "retry", 12)),
        Change::Post(text(c3, &alice, "a-2", "key of another chat", 13)),
        Change::Post(text(ChatId::new(), &alice, "a-3", "no such chat", 14)),
        Change::Post(NewMessage {
            reply_to: Some(MessageId::new()),
            ..text(c2, &carol, "c-2", "reply to nothing", 15)
        }),
        Change::Post(NewMessage {
            id: first.id,
            ..text(c2, &carol, "c-3", "id reused", 16)
        }),
        Change::Post(text(c1, &bob, "b-4", "dup in run", 17)),
        Change::Post(text(c1, &bob, "b-4", "dup in run", 18)),
        Change::Edit {
            chat_id: c1,
            message_id: first.id,
            content: "edited".to_owned(),
            at: at(19),
        },
        Change::Mark {
            chat_id: c1,
            user_id: bob.clone(),
            delivered_up_to: 100,
            read_up_to: 2,
            at: at(20),
        },
        Change::Post(text(c2, &carol, "c-4", "after", 20)),
        Change::Post(NewMessage {
            reply_to: Some(first.id),
            ..text(c1, &alice, "a-4", "re first", 21)
        }),
    ];
    for (i, batch) in [clean, mixed].into_iter().enumerate() {
        let a = outcomes(bulk.apply(batch.clone()).await);
        let b = outcomes(plain.apply(batch).await);
        assert_eq!(
            a, b,
            "batch {i}: the bulk path must give what the per-change path gives"
        );
    }
    for chat in [c1, c2, c3] {
        assert_eq!(
            history(&bulk, chat).await,
            history(&plain, chat).await,
            "same history of {chat:?}"
        );
        let (x, y) = (bulk.get_chat(chat).await, plain.get_chat(chat).await);
        assert_eq!(
            x.unwrap_or_else(|e| panic!("{e}")),
            y.unwrap_or_else(|e| panic!("{e}")),
            "same chat {chat:?}"
        );
    }
    let (b, p) = (bulk.stats(), plain.stats());
    assert_eq!(
        (b.bulk_runs, b.bulk_posts, b.fallback_runs),
        (2, 8, 1),
        "runs 1 and 3 in bulk, run 2 per change: {b:?}"
    );
    assert_eq!((p.bulk_runs, p.fallback_runs), (0, 0), "{p:?}");
}

async fn per_change_store(db: &TestDb) -> PostgresStore {
    db.store(PostgresConfig {
        bulk_posts: false,
        ..small_pool()
    })
    .await
}

/// Nothing about a test database outlives it: the fixture's guard drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_databases_are_dropped() {
    let Some(db) = TestDb::create().await else {
        return;
    };
    let name = db.name().to_owned();
    let store = db.store(small_pool()).await;
    let alice = user("alice");
    create(&store, group(ChatId::new(), &[&alice])).await;
    // The store keeps its connections; the drop must end them.
    drop(db);
    let mut admin = PgConnection::connect(&common::admin_url())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .unwrap_or_else(|e| panic!("pg_database: {e}"));
    assert_eq!(left, 0, "{name} must be dropped");
}

/// Audience at commit across nodes: posts in batches on one node race the
/// removal of a member and the addition of another on the other node; every
/// post's members have the removed member exactly when the post was logged
/// before the removal, and the added one exactly when logged after the
/// addition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_agree_on_the_members_of_every_change() {
    const ROUNDS: i64 = 8;
    const POSTS: usize = 6;
    let Some((_db, nodes)) = two_nodes(small_pool()).await else {
        return;
    };
    let (alice, bob, carol, nora) = (user("alice"), user("bob"), user("carol"), user("nora"));
    for round in 0..ROUNDS {
        let chat = create(&*nodes[0], group(ChatId::new(), &[&alice, &bob, &carol])).await;
        let barrier = Arc::new(Barrier::new(3));
        let posts = {
            let (node, carol, barrier) = (Arc::clone(&nodes[1]), carol.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut out = Vec::new();
                for i in 0..POSTS {
                    // Pairs of posts per batch, so that the bulk path runs too.
                    let batch = (0..2)
                        .map(|j| {
                            let cid = format!("r{round}-{i}-{j}");
                            Change::Post(text(chat.id, &carol, &cid, "racing", round))
                        })
                        .collect();
                    out.extend(node.apply(batch).await);
                }
                out
            })
        };
        let membership = {
            let (node, alice, bob, nora) = (
                Arc::clone(&nodes[0]),
                alice.clone(),
                bob.clone(),
                nora.clone(),
            );
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let remove = Change::RemoveParticipant {
                    chat_id: chat.id,
                    user_id: bob,
                    by: alice.clone(),
                    at: at(round),
                };
                let add = Change::AddParticipant {
                    chat_id: chat.id,
                    user_id: nora,
                    role: Role::Member,
                    by: alice,
                    max_participants: 10,
                    at: at(round),
                };
                let mut seqs = Vec::new();
                for change in [remove, add] {
                    let mut out = node.apply(vec![change]).await;
                    match out.pop().map(|r| r.map(|c| c.applied)) {
                        Some(Ok(Applied::Membership {
                            message: Some(m), ..
                        })) => seqs.push(m.seq),
                        other => panic!("a membership change: {other:?}"),
                    }
                }
                seqs
            })
        };
        barrier.wait().await;
        let mut joined = join_all(vec![membership]).await;
        let (removed_at, added_at) = (joined[0][0], joined[0][1]);
        joined.clear();
        for result in join_all(vec![posts]).await.remove(0) {
            let committed = result.unwrap_or_else(|e| panic!("a racing post: {e}"));
            let seq = match &committed.applied {
                Applied::Posted { message, .. } => message.seq,
                other => panic!("not a post: {other:?}"),
            };
            assert_eq!(
                committed.members.contains(&bob),
                seq < removed_at,
                "round {round}: post {seq}, bob removed at {removed_at}"
            );
            assert_eq!(
                committed.members.contains(&nora),
                seq > added_at,
                "round {round}: post {seq}, nora added at {added_at}"
            );
        }
    }
}

/// Claimers on two nodes at once never get the same key package: each
/// claim deletes the row it hands out, skipping rows another claim holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_claimed_on_two_nodes_are_never_shared() {
    const PACKAGES: usize = 60;
    let Some((_db, nodes)) = two_nodes(small_pool()).await else {
        return;
    };
    let (alice, phone) = (
        user("alice"),
        chat_core::DeviceId::new("phone").expect("an id"),
    );
    let packages: Vec<Vec<u8>> = (0..PACKAGES)
        .map(|i| format!("kp-{i}").into_bytes())
        .collect();
    nodes[0]
        .publish_key_packages(&alice, &phone, packages, None, at(1))
        .await
        .expect("published");
    let barrier = Arc::new(Barrier::new(6));
    let tasks = (0..6)
        .map(|i| {
            let (node, barrier, alice) = (nodes[i % 2].clone(), barrier.clone(), alice.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let mut got = Vec::new();
                for _ in 0..PACKAGES / 6 {
                    let claimed = node
                        .claim_key_packages(std::slice::from_ref(&alice))
                        .await
                        .expect("a claim");
                    got.extend(claimed.into_iter().map(|c| c.key_package));
                }
                got
            })
        })
        .collect();
    let all: Vec<Vec<u8>> = join_all(tasks).await.into_iter().flatten().collect();
    let distinct: std::collections::HashSet<&Vec<u8>> = all.iter().collect();
    assert_eq!(all.len(), PACKAGES, "every claim got one");
    assert_eq!(distinct.len(), PACKAGES, "none was handed out twice");
}

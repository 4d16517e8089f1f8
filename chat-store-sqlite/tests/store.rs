//! Tests of what is particular to the SQLite store: sequencing under group
//! commit, savepoint isolation of failing changes, reopening.

use std::{collections::BTreeMap, sync::Arc};

use chat_core::{
    ChatId, ChatKind, Error, MessageId, MessageType, Role, Store, Timestamp, UserId,
    store::{Applied, Change, Committed, HistoryQuery, NewChat, NewMessage},
};
use chat_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap_or_else(|e| panic!("{e}"))
}

fn open(dir: &TempDir, config: SqliteConfig) -> Result<SqliteStore, chat_store_sqlite::Error> {
    SqliteStore::open_with(dir.path().join("chat.db"), config)
}

fn fast() -> SqliteConfig {
    SqliteConfig {
        synchronous: Synchronous::Off,
        ..SqliteConfig::default()
    }
}

async fn group(store: &dyn Store, members: &[&UserId]) -> chat_core::Result<ChatId> {
    let (chat, _) = store
        .create_chat(NewChat {
            id: ChatId::new(),
            kind: ChatKind::Group,
            name: Some("g".into()),
            description: None,
            avatar_url: None,
            encryption: Default::default(),
            participants: members
                .iter()
                .map(|u| ((*u).clone(), Role::Member))
                .collect(),
            created_at: Timestamp::now(),
        })
        .await?;
    Ok(chat.id)
}

fn text(chat: ChatId, sender: &UserId, client_id: Option<&str>, body: &str) -> NewMessage {
    NewMessage {
        mls: None,
        id: MessageId::new(),
        chat_id: chat,
        sender_id: sender.clone(),
        kind: MessageType::Text,
        content: Some(body.into()),
        media: None,
        reply_to: None,
        client_msg_id: client_id.map(Into::into),
        system: None,
        created_at: Timestamp::now(),
    }
}

fn posted(r: chat_core::Result<Committed>) -> chat_core::Result<(chat_core::Message, bool)> {
    match r?.applied {
        Applied::Posted { message, duplicate } => Ok((message, duplicate)),
        other => panic!("not a post: {other:?}"),
    }
}

async fn post1(store: &dyn Store, m: NewMessage) -> chat_core::Result<(chat_core::Message, bool)> {
    let mut out = store.apply(vec![Change::Post(m)]).await;
    assert_eq!(out.len(), 1);
    posted(out.remove(0))
}

#[tokio::test]
async fn seqs_are_sequential_and_shared_by_every_kind_of_change() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir, fast())?;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(&store, &[&alice]).await?;

    let (m1, _) = post1(&store, text(chat, &alice, Some("a"), "one")).await?;
    assert_eq!((m1.seq, m1.updated_seq), (1, 1));
    let out = store
        .apply(vec![
            Change::Edit {
                chat_id: chat,
                message_id: m1.id,
                content: "uno".into(),
                at: Timestamp::now(),
            },
            Change::AddParticipant {
                chat_id: chat,
                user_id: bob.clone(),
                role: Role::Member,
                by: alice.clone(),
                max_participants: 10,
                at: Timestamp::now(),
            },
            Change::Post(text(chat, &bob, Some("b"), "two")),
        ])
        .await;
    let mut out = out.into_iter();
    let Some(Ok(Applied::Updated { message, changed })) = out.next().map(|r| r.map(|c| c.applied))
    else {
        panic!("edit failed")
    };
    assert!(changed);
    assert_eq!((message.seq, message.updated_seq), (1, 2));
    let Some(Ok(Applied::Membership {
        chat: after,
        message: Some(system),
    })) = out.next().map(|r| r.map(|c| c.applied))
    else {
        panic!("add failed")
    };
    assert_eq!(system.seq, 3);
    let bob_p = after.participant(&bob).ok_or("bob missing")?;
    assert_eq!(
        (bob_p.visible_from_seq, bob_p.read_seq, bob_p.delivered_seq),
        (3, 3, 3)
    );
    let (m2, _) = posted(out.next().ok_or("missing")?)?;
    assert_eq!(m2.seq, 4);

    let stored = store.get_chat(chat).await?.ok_or("chat missing")?;
    assert_eq!(stored.last_seq, 4);
    assert_eq!(stored, {
        let mut c = after.clone();
        c.last_seq = 4;
        c.last_activity = m2.created_at;
        c
    });
    let changes = store.changes(chat, 0, 0, 100).await?;
    let updated: Vec<u64> = changes.iter().map(|m| m.updated_seq).collect();
    assert_eq!(updated, vec![2, 3, 4]);
    Ok(())
}

#[tokio::test]
async fn a_failing_change_leaves_no_trace_and_the_others_commit() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir, fast())?;
    let alice = user("alice");
    let chat = group(&store, &[&alice]).await?;
    let (m1, _) = post1(&store, text(chat, &alice, Some("1"), "one")).await?;

    // The second post reuses m1's id: it takes a seq, then its insert hits
    // the primary key, so its savepoint must roll back the seq as well.
    let mut clash = text(chat, &alice, Some("2"), "two");
    clash.id = m1.id;
    let out = store
        .apply(vec![
            Change::Post(text(chat, &alice, Some("3"), "three")),
            Change::Post(clash),
            Change::Edit {
                chat_id: chat,
                message_id: MessageId::new(),
                content: "x".into(),
                at: Timestamp::now(),
            },
            Change::Post(text(chat, &alice, Some("4"), "four")),
        ])
        .await;
    let [three, clash, edit, four]: [_; 4] = out.try_into().map_err(|_| "4 results")?;
    assert_eq!(posted(three)?.0.seq, 2);
    assert!(matches!(clash, Err(Error::Conflict(_))), "{clash:?}");
    assert!(matches!(edit, Err(Error::NotFound(_))), "{edit:?}");
    assert_eq!(posted(four)?.0.seq, 3);

    let log = store
        .history(
            chat,
            HistoryQuery {
                before_seq: None,
                after_seq: None,
                from_seq: 0,
                limit: 100,
            },
        )
        .await?;
    let seqs: Vec<u64> = log.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![3, 2, 1]);
    assert_eq!(store.get_chat(chat).await?.ok_or("gone")?.last_seq, 3);
    assert!(store.find_by_client_id(&alice, "2").await?.is_none());
    Ok(())
}

#[tokio::test]
async fn retries_are_idempotent_also_when_they_race() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(open(&dir, fast())?);
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(&*store, &[&alice, &bob]).await?;
    let other = group(&*store, &[&alice]).await?;

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (store, alice) = (store.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            post1(&*store, text(chat, &alice, Some("same"), "hi")).await
        }));
    }
    let mut ids = Vec::new();
    let mut fresh = 0;
    for t in tasks {
        let (m, duplicate) = t.await??;
        fresh += usize::from(!duplicate);
        ids.push(m.id);
    }
    assert_eq!(fresh, 1);
    ids.dedup();
    assert_eq!(ids.len(), 1);
    assert_eq!(store.get_chat(chat).await?.ok_or("gone")?.last_seq, 1);

    // The same key from another sender is another message.
    let (b, dup) = post1(&*store, text(chat, &bob, Some("same"), "yo")).await?;
    assert!(!dup);
    assert_eq!(b.seq, 2);
    // The same key in another chat is a conflict.
    let err = post1(&*store, text(other, &alice, Some("same"), "x")).await;
    assert!(matches!(err, Err(Error::Conflict(_))), "{err:?}");
    Ok(())
}

/// Refusals and retries right after a post into the same chat, and a post
/// after another change moved the counter.
#[tokio::test]
async fn a_post_after_another_is_checked_like_the_first() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir, fast())?;
    let (alice, mallory) = (user("alice"), user("mallory"));
    let chat = group(&store, &[&alice]).await?;
    let (m1, _) = post1(&store, text(chat, &alice, Some("1"), "one")).await?;
    assert_eq!(m1.seq, 1);

    // Not a participant, right after a post into the chat.
    let err = post1(&store, text(chat, &mallory, Some("m"), "let me in")).await;
    assert!(matches!(err, Err(Error::NotFound(_))), "{err:?}");
    // A retry, right after its own post: the stored message again.
    let (again, duplicate) = post1(&store, text(chat, &alice, Some("1"), "one")).await?;
    assert!(duplicate);
    assert_eq!(again.id, m1.id);
    // A system message needs no participant.
    let mut system = text(chat, &mallory, None, "notice");
    system.kind = MessageType::System;
    let (notice, _) = post1(&store, system).await?;
    assert_eq!(notice.seq, 2);
    // A change in between moves the counter.
    let out = store
        .apply(vec![Change::Edit {
            chat_id: chat,
            message_id: m1.id,
            content: "uno".into(),
            at: Timestamp::now(),
        }])
        .await;
    assert!(matches!(
        out.as_slice(),
        [Ok(Committed {
            applied: Applied::Updated { .. },
            ..
        })]
    ));
    let (m2, _) = post1(&store, text(chat, &alice, Some("2"), "two")).await?;
    assert_eq!(m2.seq, 4);
    assert_eq!(store.get_chat(chat).await?.ok_or("gone")?.last_seq, 4);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_posts_into_many_chats_get_gap_free_seqs() -> TestResult {
    const CHATS: usize = 8;
    const TASKS: usize = 64;
    const POSTS: usize = 25;
    let dir = tempfile::tempdir()?;
    // Durable settings: this is the group commit as it runs in production.
    let store = Arc::new(open(
        &dir,
        SqliteConfig {
            batch_max: 64,
            ..SqliteConfig::default()
        },
    )?);
    let alice = user("alice");
    let mut chats = Vec::new();
    for _ in 0..CHATS {
        chats.push(group(&*store, &[&alice]).await?);
    }
    let chats = Arc::new(chats);

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (store, alice, chats) = (store.clone(), alice.clone(), chats.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..POSTS {
                let chat = chats[(t + i) % CHATS];
                let cid = format!("{t}-{i}");
                // Some tasks send two changes per apply.
                let mut changes = vec![Change::Post(text(chat, &alice, Some(&cid), "m"))];
                if t % 4 == 0 {
                    let cid = format!("{t}-{i}-b");
                    changes.push(Change::Post(text(chat, &alice, Some(&cid), "m")));
                }
                // Some calls fail, in the middle of everyone else's group:
                // they must fail alone, and take no seq.
                if t % 4 == 1 {
                    let bad = store
                        .apply(vec![Change::Edit {
                            chat_id: chat,
                            message_id: MessageId::new(),
                            content: "x".into(),
                            at: Timestamp::now(),
                        }])
                        .await;
                    assert!(
                        matches!(bad.as_slice(), [Err(Error::NotFound(_))]),
                        "{bad:?}"
                    );
                }
                for r in store.apply(changes).await {
                    let (m, dup) = posted(r)?;
                    assert!(!dup);
                    acked.push((m.chat_id, m.seq, m.id));
                }
            }
            Ok::<_, Error>(acked)
        }));
    }
    let mut by_chat: BTreeMap<ChatId, Vec<(u64, MessageId)>> = BTreeMap::new();
    for t in tasks {
        for (chat, seq, id) in t.await?? {
            by_chat.entry(chat).or_default().push((seq, id));
        }
    }
    let mut total = 0;
    for (chat, mut acked) in by_chat {
        acked.sort();
        let seqs: Vec<u64> = acked.iter().map(|(s, _)| *s).collect();
        let expected: Vec<u64> = (1..=acked.len() as u64).collect();
        assert_eq!(seqs, expected, "chat {chat}");
        let stored = store
            .history(
                chat,
                HistoryQuery {
                    before_seq: None,
                    after_seq: None,
                    from_seq: 0,
                    limit: usize::MAX,
                },
            )
            .await?;
        let mut stored: Vec<(u64, MessageId)> = stored.iter().map(|m| (m.seq, m.id)).collect();
        stored.sort();
        assert_eq!(stored, acked);
        total += acked.len();
    }
    assert_eq!(total, TASKS * POSTS + TASKS / 4 * POSTS);
    // The calls were grouped: fewer commits than calls.
    let stats = store.stats();
    assert_eq!(stats.failed, 0);
    assert!(stats.commits < stats.jobs, "{stats:?}");
    eprintln!("{stats:?}");
    Ok(())
}

#[tokio::test]
async fn data_survives_close_and_reopen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let alice = user("alice");
    let store = open(&dir, SqliteConfig::default())?;
    let chat = group(&store, &[&alice]).await?;
    let (m, _) = post1(&store, text(chat, &alice, Some("k"), "kept")).await?;
    store.set_block(&alice, &user("mallory"), true).await?;
    store.close().await?;

    let store = open(&dir, SqliteConfig::default())?;
    assert_eq!(store.get_message(m.id).await?, Some(m.clone()));
    assert_eq!(store.blocked_by_user(&alice).await?, vec![user("mallory")]);
    let (next, _) = post1(&store, text(chat, &alice, Some("k2"), "next")).await?;
    assert_eq!(next.seq, 2);
    // Dropping (rather than closing) also lets queued writes finish.
    drop(store);
    let store = open(&dir, SqliteConfig::default())?;
    assert_eq!(store.get_chat(chat).await?.ok_or("gone")?.last_seq, 2);
    Ok(())
}

#[tokio::test]
async fn direct_chats_are_unique_per_pair() -> TestResult {
    let dir = tempfile::tempdir()?;
    let store = open(&dir, fast())?;
    let (a, b) = (user("a"), user("b"));
    let new = |first: &UserId, second: &UserId| NewChat {
        id: ChatId::new(),
        kind: ChatKind::Direct,
        name: None,
        description: None,
        avatar_url: None,
        encryption: Default::default(),
        participants: vec![
            (first.clone(), Role::Member),
            (second.clone(), Role::Member),
        ],
        created_at: Timestamp::now(),
    };
    let (c1, created) = store.create_chat(new(&a, &b)).await?;
    assert!(created);
    let (c2, created) = store.create_chat(new(&b, &a)).await?;
    assert!(!created);
    assert_eq!(c1, c2);
    assert_eq!(store.find_direct_chat(&b, &a).await?, Some(c1));
    let same = store.create_chat(new(&a, &a)).await;
    assert!(matches!(same, Err(Error::InvalidInput(_))), "{same:?}");
    Ok(())
}

#[test]
fn an_in_memory_database_is_refused() {
    let err = SqliteStore::open(":memory:");
    assert!(
        matches!(err, Err(chat_store_sqlite::Error::NotWal(_))),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_wal_is_checkpointed_after_checkpoint_pages() -> TestResult {
    async fn wal_bytes_after_posts(
        checkpoint_pages: u32,
    ) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let store = open(
            &dir,
            SqliteConfig {
                checkpoint_pages,
                ..fast()
            },
        )?;
        let alice = user("alice");
        let chat = group(&store, &[&alice]).await?;
        for i in 0..200 {
            post1(&store, text(chat, &alice, Some(&format!("k{i}")), "hello")).await?;
        }
        let wal = std::fs::metadata(dir.path().join("chat.db-wal"))?.len();
        store.close().await?;
        Ok(wal)
    }
    // 200 commits of a page or more each: a WAL checkpointed every 8
    // pages starts over and stays short; one never checkpointed holds
    // every commit.
    let short = wal_bytes_after_posts(8).await?;
    let long = wal_bytes_after_posts(100_000).await?;
    assert!(short * 10 < long, "WAL of {short} bytes vs {long}");
    Ok(())
}

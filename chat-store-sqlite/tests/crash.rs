//! An acknowledged write survives `kill -9`.
//!
//! The test runs its own binary again as a child (selected by an
//! environment variable) that posts messages from several tasks and prints
//! one line per acknowledged post. The parent kills it with SIGKILL in the
//! middle of that, reopens the database and checks that every acknowledged
//! message is there, with its seq, and that the log has no gaps.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
    sync::{Arc, mpsc},
    time::Duration,
};

use chat_core::{
    ChatId, ChatKind, MessageId, MessageType, Role, Store, Timestamp, UserId,
    store::{Applied, Change, HistoryQuery, NewChat, NewMessage},
};
use chat_store_sqlite::SqliteStore;

/// Set in the child: the database path.
const CHILD_DB: &str = "CHAT_STORE_SQLITE_CRASH_CHILD_DB";
/// Acknowledgements the parent waits for before it kills the child.
const ACKS: usize = 300;
const TEST_NAME: &str = "acknowledged_writes_survive_kill_9";

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[test]
fn acknowledged_writes_survive_kill_9() -> TestResult {
    match std::env::var(CHILD_DB) {
        Ok(path) => child(&path),
        Err(_) => parent(),
    }
}

/// Posts forever from several tasks into one chat; prints `CHAT <id>`, then
/// `ACK <seq> <message id>` for every post whose `apply` returned `Ok`.
fn child(path: &str) -> TestResult {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = Arc::new(SqliteStore::open(path)?);
        let alice = UserId::new("alice")?;
        let (chat, _) = store
            .create_chat(NewChat {
                id: ChatId::new(),
                kind: ChatKind::Group,
                name: Some("crash".into()),
                description: None,
                avatar_url: None,
                encryption: Default::default(),
                participants: vec![(alice.clone(), Role::Admin)],
                created_at: Timestamp::now(),
            })
            .await?;
        emit(&format!("CHAT {}", chat.id))?;
        let mut tasks = Vec::new();
        for t in 0..8 {
            let (store, alice) = (store.clone(), alice.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let post = Change::Post(NewMessage {
                        mls: None,
                        id: MessageId::new(),
                        chat_id: chat.id,
                        sender_id: alice.clone(),
                        kind: MessageType::Text,
                        content: Some(format!("message {i} of task {t}")),
                        media: None,
                        reply_to: None,
                        client_msg_id: Some(format!("{t}-{i}")),
                        system: None,
                        created_at: Timestamp::now(),
                    });
                    for result in store.apply(vec![post]).await {
                        if let Applied::Posted { message, .. } = result?.applied {
                            emit(&format!("ACK {} {}", message.seq, message.id))?;
                        }
                    }
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    })
}

fn emit(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

fn parent() -> TestResult {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("crash.db");
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_DB, &db)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;

    // Read on a thread so that a stuck child fails the test instead of
    // hanging it.
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut chat: Option<ChatId> = None;
    let mut acked: Vec<(u64, MessageId)> = Vec::new();
    while acked.len() < ACKS {
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(e) => {
                let _ = child.kill();
                return Err(format!(
                    "child stopped acknowledging after {} acks: {e}",
                    acked.len()
                )
                .into());
            }
        };
        // The harness prints "test <name> ... " without a newline before
        // the child's first line, so look for the markers anywhere.
        let start = ["CHAT ", "ACK "]
            .iter()
            .filter_map(|marker| line.find(marker))
            .min()
            .unwrap_or(line.len());
        let mut words = line[start..].split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("CHAT"), Some(id), None) => chat = Some(id.parse()?),
            (Some("ACK"), Some(seq), Some(id)) => acked.push((seq.parse()?, id.parse()?)),
            _ => {} // the test harness's own output
        }
    }
    child.kill()?; // SIGKILL
    let status = child.wait()?;
    assert!(!status.success(), "the child was killed: {status:?}");
    drop(rx);
    let _ = reader.join();

    let chat = chat.ok_or("the child never announced its chat")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = SqliteStore::open(&db)?;
        for (seq, id) in &acked {
            let message = store
                .get_message(*id)
                .await?
                .ok_or_else(|| format!("acknowledged message {id} (seq {seq}) is lost"))?;
            assert_eq!(message.seq, *seq, "message {id}");
            assert_eq!(message.chat_id, chat);
        }
        let last_seq = store.get_chat(chat).await?.ok_or("chat lost")?.last_seq;
        let log = store
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
        let mut seqs: Vec<u64> = log.iter().map(|m| m.seq).collect();
        seqs.reverse();
        let expected: Vec<u64> = (1..=last_seq).collect();
        assert_eq!(seqs, expected, "the log has gaps");
        assert!(last_seq >= ACKS as u64);
        eprintln!(
            "{} acknowledged, {} stored when the child was killed",
            acked.len(),
            last_seq
        );
        Ok(())
    })
}

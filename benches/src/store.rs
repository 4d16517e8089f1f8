//! SQLite store appends (1,000 concurrent senders, group commit) against a
//! raw rusqlite loop inserting identical rows in batches, in the same run
//! and on the same kind of file, so that the ratio is the figure.

use std::{sync::Arc, time::Instant};

use chat_core::{
    ChatId, ChatKind, MessageId, MessageType, Role, Store, Timestamp, UserId,
    store::{Change, NewChat, NewMessage},
};
use chat_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use clap::Args;
use rusqlite::params;

use crate::Error;

/// `chat-bench store`
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// Messages to store in each of the two runs.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Concurrent senders (each one apply call per message).
    #[arg(long, default_value_t = 1000)]
    senders: usize,
    /// Rows per transaction in the raw loop.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// `full` or `normal`.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The result of one comparison.
#[derive(Debug, serde::Serialize)]
pub(crate) struct StoreReport {
    /// Messages per second through `Store::apply` from concurrent senders.
    pub(crate) store_msgs_per_sec: f64,
    /// Rows per second of the raw batched insert loop.
    pub(crate) raw_rows_per_sec: f64,
    /// store / raw.
    pub(crate) ratio: f64,
    /// Commits the store made (group commit: far fewer than messages).
    pub(crate) store_commits: u64,
}

pub(crate) async fn run(args: StoreArgs) -> Result<(), Error> {
    let synchronous = match args.synchronous.as_str() {
        "full" => Synchronous::Full,
        "normal" => Synchronous::Normal,
        other => return Err(format!("--synchronous full|normal, not {other}").into()),
    };
    let report = compare(
        args.messages,
        args.senders,
        args.batch,
        synchronous,
        args.message_bytes,
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "SQLite store vs raw rusqlite ({} messages, synchronous={})",
            args.messages, args.synchronous
        );
        println!(
            "  store, {} concurrent senders: {:>10.0} msg/s ({} commits)",
            args.senders, report.store_msgs_per_sec, report.store_commits
        );
        println!(
            "  raw rusqlite, batches of {}:  {:>10.0} rows/s",
            args.batch, report.raw_rows_per_sec
        );
        println!("  ratio store/raw:               {:>10.2}", report.ratio);
    }
    Ok(())
}

fn user(i: usize) -> Result<UserId, Error> {
    Ok(UserId::new(format!("u{i}"))?)
}

/// Stores `messages` through the store from `senders` concurrent tasks,
/// then the same number of identical rows with a raw loop; both on fresh
/// files with the store's own schema.
pub(crate) async fn compare(
    messages: usize,
    senders: usize,
    batch: usize,
    synchronous: Synchronous,
    message_bytes: usize,
) -> Result<StoreReport, Error> {
    let dir = tempfile::tempdir()?;
    let text = "x".repeat(message_bytes);
    let senders = senders.max(1);

    // --- the store: one direct chat per sender, so that chats do not
    // serialize on one counter row more than real traffic would.
    let config = SqliteConfig {
        synchronous,
        ..SqliteConfig::default()
    };
    let store = Arc::new(SqliteStore::open_with(
        dir.path().join("store.db"),
        config.clone(),
    )?);
    let mut chats = Vec::with_capacity(senders);
    for i in 0..senders {
        let (chat, _) = store
            .create_chat(NewChat {
                id: ChatId::new(),
                kind: ChatKind::Direct,
                name: None,
                description: None,
                avatar_url: None,
                encryption: Default::default(),
                participants: vec![
                    (user(2 * i)?, Role::Member),
                    (user(2 * i + 1)?, Role::Member),
                ],
                created_at: Timestamp::now(),
            })
            .await?;
        chats.push(chat.id);
    }
    let per_sender = messages / senders;
    let commits_before = store.stats().commits;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(senders);
    for (i, chat_id) in chats.iter().copied().enumerate() {
        let store = store.clone();
        let text = text.clone();
        let sender = user(2 * i)?;
        tasks.push(tokio::spawn(async move {
            for n in 0..per_sender {
                let change = Change::Post(NewMessage {
                    mls: None,
                    id: MessageId::new(),
                    chat_id,
                    sender_id: sender.clone(),
                    kind: MessageType::Text,
                    content: Some(text.clone()),
                    media: None,
                    reply_to: None,
                    client_msg_id: Some(format!("c{n}")),
                    system: None,
                    created_at: Timestamp::now(),
                });
                let mut results = store.apply(vec![change]).await;
                if let Some(Err(e)) = results.pop() {
                    return Err(e.to_string());
                }
            }
            Ok(())
        }));
    }
    for task in tasks {
        task.await?
            .map_err(|e| format!("store append failed: {e}"))?;
    }
    let store_elapsed = started.elapsed();
    let stored = per_sender * senders;
    let store_commits = store.stats().commits - commits_before;
    drop(store);

    // --- the raw loop: identical rows into a database with the store's
    // schema, prepared statement, `batch` rows per transaction.
    let raw_path = dir.path().join("raw.db");
    drop(SqliteStore::open_with(&raw_path, config)?);
    let mut conn = rusqlite::Connection::open(&raw_path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(
        None,
        "synchronous",
        match synchronous {
            Synchronous::Full => "FULL",
            _ => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // The store's checkpoint interval, so that both write the same way.
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        SqliteConfig::default().checkpoint_pages,
    )?;
    // The same page cache as the store's writer.
    conn.pragma_update(
        None,
        "cache_size",
        -i64::from(SqliteConfig::default().writer_cache_kib),
    )?;
    let chat_ids: Vec<String> = chats.iter().map(ToString::to_string).collect();
    for id in &chat_ids {
        conn.execute(
            "INSERT INTO chats (id, kind, encryption, last_activity, created_at) \
             VALUES (?1, 'direct', 'at_rest', 0, 0)",
            [id],
        )?;
    }
    let started = Instant::now();
    let mut written = 0usize;
    while written < stored {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, content, media, \
                 reply_to, client_msg_id, created_at, edited_at, deleted, system) \
                 VALUES (?1, ?2, ?3, ?3, ?4, 'text', ?5, NULL, NULL, ?6, ?7, NULL, 0, NULL)",
            )?;
            for k in written..(written + batch).min(stored) {
                let sender = k % senders;
                let seq = (k / senders + 1) as i64;
                insert.execute(params![
                    MessageId::new().to_string(),
                    chat_ids[sender],
                    seq,
                    format!("u{}", 2 * sender),
                    text,
                    format!("c{k}"),
                    Timestamp::now().as_millis(),
                ])?;
            }
        }
        tx.commit()?;
        written = (written + batch).min(stored);
    }
    let raw_elapsed = started.elapsed();

    let store_msgs_per_sec = stored as f64 / store_elapsed.as_secs_f64();
    let raw_rows_per_sec = stored as f64 / raw_elapsed.as_secs_f64();
    Ok(StoreReport {
        store_msgs_per_sec,
        raw_rows_per_sec,
        ratio: store_msgs_per_sec / raw_rows_per_sec,
        store_commits,
    })
}

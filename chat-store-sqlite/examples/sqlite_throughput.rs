//! Rough write throughput of the group commit: N concurrent single-message
//! `apply` calls against a temp-file database with `synchronous=FULL`.
//!
//! Run with: `cargo run --release -p chat-store-sqlite --example sqlite_throughput [N]`

use std::{sync::Arc, time::Instant};

use chat_core::{
    ChatId, ChatKind, MessageId, MessageType, Role, Store, Timestamp, UserId,
    store::{Change, NewChat, NewMessage},
};
use chat_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let n: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1000,
    };
    for synchronous in [Synchronous::Full, Synchronous::Normal] {
        let dir = tempfile::tempdir()?;
        let config = SqliteConfig {
            synchronous,
            ..SqliteConfig::default()
        };
        let store = Arc::new(SqliteStore::open_with(dir.path().join("bench.db"), config)?);
        let alice = UserId::new("alice")?;
        let mut chats = Vec::new();
        for _ in 0..10 {
            let (chat, _) = store
                .create_chat(NewChat {
                    id: ChatId::new(),
                    kind: ChatKind::Group,
                    name: Some("bench".into()),
                    description: None,
                    avatar_url: None,
                    encryption: Default::default(),
                    participants: vec![(alice.clone(), Role::Member)],
                    created_at: Timestamp::now(),
                })
                .await?;
            chats.push(chat.id);
        }
        let before = store.stats();
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(n);
        for i in 0..n {
            let (store, alice) = (store.clone(), alice.clone());
            let chat = chats[i % chats.len()];
            tasks.push(tokio::spawn(async move {
                let post = Change::Post(NewMessage {
                    mls: None,
                    id: MessageId::new(),
                    chat_id: chat,
                    sender_id: alice,
                    kind: MessageType::Text,
                    content: Some(format!("message {i}")),
                    media: None,
                    reply_to: None,
                    client_msg_id: Some(format!("c-{i}")),
                    system: None,
                    created_at: Timestamp::now(),
                });
                store.apply(vec![post]).await.into_iter().all(|r| r.is_ok())
            }));
        }
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await?);
        }
        let elapsed = start.elapsed();
        let after = store.stats();
        println!(
            "synchronous={synchronous:?}: {ok}/{n} messages in {elapsed:.2?}: {:.0} messages/s, \
             {} commits ({:.1} messages per commit)",
            ok as f64 / elapsed.as_secs_f64(),
            after.commits - before.commits,
            (after.changes - before.changes) as f64
                / (after.commits - before.commits).max(1) as f64,
        );
    }
    Ok(())
}

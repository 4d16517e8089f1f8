//! Rough write throughput against a real PostgreSQL: N concurrent
//! single-post `apply` calls (into 1 and into 10 chats), and one `apply` of
//! a batch of N posts with and without the bulk path.
//!
//! Works in a scratch database that it creates next to `DATABASE_URL`'s
//! (default `postgres://postgres@127.0.0.1:5432/postgres`) and drops after.
//!
//! Run with: `cargo run --release -p chat-store-postgres --example postgres_throughput [N]`

use std::{sync::Arc, time::Instant};

use chat_core::{
    ChatId, ChatKind, MessageId, MessageType, Role, Store, Timestamp, UserId,
    store::{Change, NewChat, NewMessage},
};
use chat_store_postgres::{
    PostgresConfig, PostgresStore,
    sqlx::{self, AssertSqlSafe, Connection, PgConnection},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn post(chat: ChatId, sender: &UserId, i: usize) -> Change {
    Change::Post(NewMessage {
        mls: None,
        id: MessageId::new(),
        chat_id: chat,
        sender_id: sender.clone(),
        kind: MessageType::Text,
        content: Some(format!("message {i}")),
        media: None,
        reply_to: None,
        client_msg_id: Some(format!("c-{}", MessageId::new())),
        system: None,
        created_at: Timestamp::now(),
    })
}

async fn chats(store: &PostgresStore, alice: &UserId, n: usize) -> Result<Vec<ChatId>, BoxError> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
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
        out.push(chat.id);
    }
    Ok(out)
}

async fn concurrent(
    store: &Arc<PostgresStore>,
    alice: &UserId,
    n: usize,
    chat_count: usize,
) -> Result<(), BoxError> {
    let chats = chats(store, alice, chat_count).await?;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (store, alice) = (Arc::clone(store), alice.clone());
        let chat = chats[i % chats.len()];
        tasks.push(tokio::spawn(async move {
            store
                .apply(vec![post(chat, &alice, i)])
                .await
                .into_iter()
                .all(|r| r.is_ok())
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await?);
    }
    let elapsed = start.elapsed();
    println!(
        "{n} concurrent single-post applies into {chat_count} chat(s): {ok} ok in \
         {elapsed:.2?}: {:.0} posts/s",
        ok as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

async fn one_batch(store: &PostgresStore, alice: &UserId, n: usize) -> Result<(), BoxError> {
    let chats = chats(store, alice, 10).await?;
    let batch: Vec<Change> = (0..n)
        .map(|i| post(chats[i % chats.len()], alice, i))
        .collect();
    let start = Instant::now();
    let ok = store
        .apply(batch)
        .await
        .into_iter()
        .filter(|r| r.is_ok())
        .count();
    let elapsed = start.elapsed();
    println!(
        "one batch of {n} posts into 10 chats, bulk_posts={}: {ok} ok in {elapsed:.2?}: \
         {:.0} posts/s",
        store.config().bulk_posts,
        ok as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let n: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 1000,
    };
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let name = format!(
        "chat_bench_{}",
        ulid::Ulid::new().to_string().to_lowercase()
    );
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let base = admin_url.split('?').next().unwrap_or_default();
    let url = match base.rsplit_once('/') {
        Some((root, _)) => format!("{root}/{name}"),
        None => return Err("DATABASE_URL has no database path".into()),
    };

    let result = async {
        let alice = UserId::new("alice")?;
        let store = Arc::new(PostgresStore::connect(&url).await?);
        store.migrate().await?;
        concurrent(&store, &alice, n, 1).await?;
        concurrent(&store, &alice, n, 10).await?;
        concurrent(&store, &alice, n, 100).await?;
        one_batch(&store, &alice, n).await?;
        let per_change = PostgresStore::connect_with(
            &url,
            PostgresConfig {
                bulk_posts: false,
                ..PostgresConfig::default()
            },
        )
        .await?;
        one_batch(&per_change, &alice, n).await?;
        println!("stats of the bulk store: {:?}", store.stats());
        store.close().await;
        per_change.close().await;
        Ok::<_, BoxError>(())
    }
    .await;

    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    result
}

//! Run with: cargo bench -p chat-bench --bench receipts
//!
//! The receipt path on the embedded SQLite store (without fsync): a direct chat where one
//! side sends a 100-byte text and the other marks it read (`mark_as_read`,
//! which also delivers it), next to the send alone as the same run's
//! baseline. Since the analytics, a mark also records the first delivery
//! and read times of the messages it covers; comparing the ratio
//! `(send + mark) / send` before and after that change measures what it
//! costs, independently of how fast the machine is that day.

use std::sync::Arc;

use chat_core::{Actor, ChatEngine, Encryption, Receipt, SendMessage};
use chat_store_sqlite::{SqliteConfig, SqliteStore, Synchronous};
use common::{bench_sends, drained_sessions, uid};
use criterion::{Criterion, criterion_group, criterion_main};

// Not every bench uses every helper.
#[allow(dead_code)]
mod common;

fn receipts(c: &mut Criterion) {
    let rt = common::runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    // Without fsync: a mark is one commit before and after the change (the
    // receipt rows ride in its transaction), so the disk's flush time,
    // large and noisy here, would only hide the difference measured.
    let config = SqliteConfig {
        synchronous: Synchronous::Off,
        ..SqliteConfig::default()
    };
    let store = SqliteStore::open_with(dir.path().join("bench.db"), config).expect("store");
    let (engine, chat, drains) = rt.block_on(async {
        let engine = ChatEngine::builder(Arc::new(store))
            .build()
            .await
            .expect("engine");
        let chat = engine
            .create_direct(&Actor::user(uid(0)), &uid(1), Encryption::AtRest)
            .await
            .expect("direct chat")
            .chat
            .chat
            .id;
        let drains = drained_sessions(&engine, 2).await;
        (engine, chat, drains)
    });

    let mut group = c.benchmark_group("receipts_sqlite");
    bench_sends(&mut group, &rt, &engine, chat, "send".into());
    let mut n = 0u64;
    group.bench_function("send_then_mark_read", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let engine = engine.clone();
            // Not the baseline's ids: those are taken.
            let msg = SendMessage::text(chat, format!("m{n}"), "x".repeat(100));
            async move {
                let sent = engine.send(&Actor::user(uid(0)), msg).await.expect("send");
                engine
                    .mark(&Actor::user(uid(1)), chat, Receipt::Read, sent.seq)
                    .await
                    .expect("mark");
            }
        })
    });
    group.finish();
    for d in drains {
        d.abort();
    }
}

criterion_group!(benches, receipts);
criterion_main!(benches);

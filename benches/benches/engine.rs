//! Run with: cargo bench -p chat-bench --bench engine
//!
//! The engine's send path on the in-memory store (validation, write lane,
//! fan-out to live sessions), plain and with encryption at rest side by
//! side; history pages plain and encrypted (every body opened); and event
//! serialization for fan-out.

use std::sync::Arc;

use chat_core::event::Framing;
use chat_core::{
    Actor, ChatEngine, MemoryStore, SendMessage,
    clock::SystemClock,
    crypto::MasterKey,
    engine::HistoryRequest,
    keystore::{Keyring, KeyringConfig, MemoryKeyStore},
    protocol::ServerEvent,
};
use common::{group_of, uid};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

mod common;

/// An engine on the memory store; with `encrypted`, content is sealed at
/// rest under a memory key store.
async fn engine(encrypted: bool) -> ChatEngine {
    let mut builder = ChatEngine::builder(Arc::new(MemoryStore::new()));
    if encrypted {
        let keyring = Keyring::new(
            MasterKey::generate().expect("a key"),
            Arc::new(MemoryKeyStore::new()),
            Arc::new(SystemClock),
            KeyringConfig::default(),
        )
        .await
        .expect("a keyring");
        builder = builder.encrypt_at_rest(Arc::new(keyring));
    }
    builder.build().await.expect("engine")
}

fn mode(encrypted: bool) -> &'static str {
    if encrypted { "encrypted" } else { "plain" }
}

fn send_path(c: &mut Criterion) {
    let rt = common::runtime();
    let mut group = c.benchmark_group("engine_send");
    for (members, encrypted) in [(2usize, false), (2, true), (50, false), (50, true)] {
        let (engine, chat, drains) = rt.block_on(async {
            let engine = engine(encrypted).await;
            let chat = group_of(&engine, members).await;
            // Every member is connected; drainers keep their queues empty.
            let drains = common::drained_sessions(&engine, members).await;
            (engine, chat, drains)
        });
        let name = format!("members_{members}_{}", mode(encrypted));
        common::bench_sends(&mut group, &rt, &engine, chat, name);
        for d in drains {
            d.abort();
        }
    }
    group.finish();
}

fn serialization(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let message = rt.block_on(async {
        let engine = ChatEngine::builder(Arc::new(MemoryStore::new()))
            .build()
            .await
            .expect("engine");
        let chat = engine
            .create_direct(&Actor::user(uid(0)), &uid(1), Default::default())
            .await
            .expect("chat")
            .chat
            .chat
            .id;
        engine
            .send(
                &Actor::user(uid(0)),
                SendMessage::text(chat, "c", "x".repeat(100)),
            )
            .await
            .expect("send")
    });
    let mut group = c.benchmark_group("fanout_serialization");
    group.throughput(Throughput::Elements(1));
    group.bench_function("message_received_once", |b| {
        b.iter_batched(
            || ServerEvent::MessageReceived(message.clone()),
            |event| event.encode(),
            BatchSize::SmallInput,
        )
    });
    // The encoded event is shared per recipient and framed for `/ws`
    // without a copy: a reference count per recipient, not a serialization.
    group.throughput(Throughput::Elements(50));
    group.bench_function("frame_shared_by_50_recipients", |b| {
        let event = ServerEvent::MessageReceived(message.clone()).encode();
        b.iter(|| {
            let copies: Vec<bytes::Bytes> = (0..50)
                .map(|_| chat_core::event::Frame::Event(event.clone()).encode(Framing::Json))
                .collect();
            std::hint::black_box(copies)
        })
    });
    group.finish();
}

/// A history page of 50 messages of 100 bytes, from ten senders: with
/// encryption at rest every body is opened on the way out.
fn history_page(c: &mut Criterion) {
    let rt = common::runtime();
    let mut group = c.benchmark_group("engine_history_50");
    group.throughput(Throughput::Elements(50));
    for encrypted in [false, true] {
        let (engine, chat) = rt.block_on(async {
            let engine = engine(encrypted).await;
            let chat = group_of(&engine, 10).await;
            for n in 0..200 {
                let msg = SendMessage::text(chat, format!("c{n}"), "x".repeat(100));
                engine
                    .send(&Actor::user(uid(n % 10)), msg)
                    .await
                    .expect("send");
            }
            (engine, chat)
        });
        group.bench_function(mode(encrypted), |b| {
            b.to_async(&rt).iter(|| {
                let engine = engine.clone();
                async move {
                    let page = engine
                        .history(&Actor::user(uid(1)), chat, HistoryRequest::default())
                        .await
                        .expect("history");
                    assert_eq!(page.messages.len(), 50);
                    page
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, send_path, history_page, serialization);
criterion_main!(benches);

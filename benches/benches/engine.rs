//! Run with: cargo bench -p chat-bench --bench engine
//!
//! The engine's send path on the in-memory store (validation, write lane,
//! fan-out to live sessions), and event serialization for fan-out.

use std::sync::Arc;

use chat_core::event::Framing;
use chat_core::{
    Actor, ChatEngine, DeviceId, MemoryStore, NewGroup, SendMessage, UserId,
    protocol::ServerEvent,
    transport::{Outgoing, outbox},
};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

fn uid(i: usize) -> UserId {
    UserId::new(format!("u{i}")).expect("valid id")
}

fn send_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("engine_send");
    for members in [2usize, 50] {
        let (engine, chat, drains) = rt.block_on(async {
            let engine = ChatEngine::builder(Arc::new(MemoryStore::new()))
                .build()
                .await
                .expect("engine");
            let others = (1..members).map(uid).collect();
            let chat = engine
                .create_group(
                    &Actor::user(uid(0)),
                    NewGroup {
                        name: "bench".into(),
                        member_ids: others,
                        ..Default::default()
                    },
                )
                .await
                .expect("group")
                .chat
                .id;
            // Every member is connected; drainers keep their queues empty.
            let mut drains = Vec::new();
            for i in 0..members {
                let (tx, mut out) = outbox(1 << 16);
                let session = engine
                    .connect(
                        Actor::user(uid(i)),
                        DeviceId::default_device(),
                        Arc::new(tx),
                    )
                    .await
                    .expect("connect");
                drains.push(tokio::spawn(async move {
                    let _session = session;
                    while let Some(Outgoing::Frame(_)) = out.next().await {}
                }));
            }
            (engine, chat, drains)
        });
        group.throughput(Throughput::Elements(1));
        let mut n = 0u64;
        group.bench_function(format!("members_{members}"), |b| {
            b.to_async(&rt).iter(|| {
                n += 1;
                let engine = engine.clone();
                let msg = SendMessage::text(chat, format!("c{n}"), "x".repeat(100));
                async move { engine.send(&Actor::user(uid(0)), msg).await.expect("send") }
            })
        });
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

criterion_group!(benches, send_path, serialization);
criterion_main!(benches);

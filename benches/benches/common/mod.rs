//! What the criterion benches share: user ids, groups, and live sessions
//! whose queues are drained so that fan-out never stalls.

use std::sync::Arc;

use chat_core::{
    Actor, ChatEngine, ChatId, DeviceId, NewGroup, SendMessage, UserId,
    transport::{Outgoing, outbox},
};
use criterion::{Throughput, measurement::WallTime};
use tokio::task::JoinHandle;

/// The runtime every bench runs its engine on: two workers, as the
/// machine has two cores.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// User `i`.
pub(crate) fn uid(i: usize) -> UserId {
    UserId::new(format!("u{i}")).expect("valid id")
}

/// A group of users 0..`members`, created by user 0.
pub(crate) async fn group_of(engine: &ChatEngine, members: usize) -> ChatId {
    let others = (1..members).map(uid).collect();
    engine
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
        .id
}

/// Connects users 0..`members`, each with a task that drains their
/// queue; abort the tasks to close the sessions.
pub(crate) async fn drained_sessions(engine: &ChatEngine, members: usize) -> Vec<JoinHandle<()>> {
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
    drains
}

/// Benchmarks `name`: user 0 sends 100-byte texts to `chat`, one after the
/// other, each with a new `client_msg_id`.
pub(crate) fn bench_sends(
    group: &mut criterion::BenchmarkGroup<'_, WallTime>,
    rt: &tokio::runtime::Runtime,
    engine: &ChatEngine,
    chat: ChatId,
    name: String,
) {
    let mut n = 0u64;
    group.throughput(Throughput::Elements(1));
    group.bench_function(name, |b| {
        b.to_async(rt).iter(|| {
            n += 1;
            let engine = engine.clone();
            let msg = SendMessage::text(chat, format!("c{n}"), "x".repeat(100));
            async move { engine.send(&Actor::user(uid(0)), msg).await.expect("send") }
        })
    });
}

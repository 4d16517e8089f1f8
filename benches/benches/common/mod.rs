//! What the criterion benches share: user ids, groups, and live sessions
//! whose queues are drained so that fan-out never stalls.

use std::sync::Arc;

use chat_core::{
    Actor, ChatEngine, ChatId, DeviceId, NewGroup, UserId,
    transport::{Outgoing, outbox},
};
use tokio::task::JoinHandle;

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

//! Cases of MLS commits: a total order of epochs per chat, the commit on
//! its log entry, and the group as the delivery service follows it.

use std::sync::Arc;

use super::*;
use crate::{
    model::{DeviceId, MlsCommitRecord},
    store::MlsGroupRecord,
};

fn group_at(epoch: u64, members: &[(&UserId, &str)]) -> MlsGroupRecord {
    MlsGroupRecord {
        epoch,
        members: members
            .iter()
            .map(|(u, d)| ((*u).clone(), DeviceId::new(*d).expect("a device id")))
            .collect(),
        state: format!("state at {epoch}").into_bytes(),
    }
}

fn commit_message(chat: ChatId, by: &UserId, epoch: u64, at: Timestamp) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        chat_id: chat,
        sender_id: by.clone(),
        kind: MessageType::MlsCommit,
        content: None,
        media: None,
        reply_to: None,
        client_msg_id: None,
        system: None,
        mls: Some(MlsCommitRecord {
            epoch,
            commit: format!("commit for {epoch}"),
            welcome: (epoch == 0).then(|| "welcome".to_owned()),
        }),
        created_at: at,
    }
}

fn mls_commit(chat: ChatId, by: &UserId, expected: Option<u64>, group: MlsGroupRecord) -> Change {
    let epoch = expected.unwrap_or(0);
    Change::MlsCommit {
        expected_epoch: expected,
        group,
        message: commit_message(chat, by, epoch, at(10 + epoch as i64)),
        membership: None,
    }
}

/// A commit is accepted only for the chat's current epoch (none before the
/// first): its log entry carries it, and the group moves on in the same
/// transaction; any other epoch is a conflict that writes nothing.
pub async fn mls_commits_take_the_current_epoch_only(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    assert_eq!(ok(s.get_mls_group(chat.id).await, "get_mls_group"), None);
    let first = group_at(1, &[(&alice, "phone"), (&bob, "laptop")]);
    let (message, _) = posted(
        apply_one(s, mls_commit(chat.id, &alice, None, first.clone())).await,
        "the first commit",
    );
    assert_eq!(message.kind, MessageType::MlsCommit);
    assert_eq!(message.mls.as_ref().map(|m| m.epoch), Some(0));
    assert_eq!(
        some(
            ok(s.get_message(message.id).await, "get_message"),
            "the commit"
        )
        .mls,
        message.mls,
        "the commit round-trips on its log entry"
    );
    assert_eq!(
        ok(s.get_mls_group(chat.id).await, "get_mls_group"),
        Some(first)
    );
    let last_seq = some(ok(s.get_chat(chat.id).await, "get_chat"), "chat").last_seq;
    for expected in [None, Some(0), Some(2)] {
        conflict(
            apply_one(s, mls_commit(chat.id, &bob, expected, group_at(9, &[]))).await,
            "a commit for another epoch",
        );
    }
    assert_eq!(
        some(ok(s.get_chat(chat.id).await, "get_chat"), "chat").last_seq,
        last_seq,
        "refused commits write nothing"
    );
    let second = group_at(2, &[(&alice, "phone")]);
    posted(
        apply_one(s, mls_commit(chat.id, &bob, Some(1), second.clone())).await,
        "the commit for epoch 1",
    );
    assert_eq!(
        ok(s.get_mls_group(chat.id).await, "get_mls_group"),
        Some(second)
    );
}

/// Concurrent commits for the same epoch: exactly one is accepted.
pub async fn concurrent_mls_commits_for_one_epoch_accept_one(store: Arc<dyn Store>) {
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(&*store, &[&alice, &bob], at(0)).await;
    posted(
        apply_one(&*store, mls_commit(chat.id, &alice, None, group_at(1, &[]))).await,
        "the first commit",
    );
    let barrier = Arc::new(Barrier::new(6));
    let tasks: Vec<JoinHandle<bool>> = (0..6)
        .map(|i| {
            let (store, barrier) = (store.clone(), barrier.clone());
            let by = if i % 2 == 0 {
                alice.clone()
            } else {
                bob.clone()
            };
            tokio::spawn(async move {
                barrier.wait().await;
                let change = mls_commit(chat.id, &by, Some(1), group_at(2, &[]));
                apply_one(&*store, change).await.is_ok()
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        if ok(task.await.map_err(Error::backend), "a committer") {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1, "one commit per epoch");
    assert_eq!(
        ok(store.get_mls_group(chat.id).await, "get_mls_group").map(|g| g.epoch),
        Some(2)
    );
}

/// A commit that carries a membership change applies both or neither:
/// the system message first, the commit right behind it.
pub async fn mls_commit_with_membership_is_one_change(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    posted(
        apply_one(s, mls_commit(chat.id, &alice, None, group_at(1, &[]))).await,
        "the first commit",
    );
    let with_carol = |expected| Change::MlsCommit {
        expected_epoch: expected,
        group: group_at(2, &[(&alice, "phone"), (&carol, "phone")]),
        message: commit_message(chat.id, &alice, 1, at(20)),
        membership: Some(Box::new(add(chat.id, &carol, Role::Member, &alice, at(20)))),
    };
    conflict(
        apply_one(s, with_carol(Some(0))).await,
        "a stale commit with a membership change",
    );
    let after = some(ok(s.get_chat(chat.id).await, "get_chat"), "chat");
    assert!(
        after.participant(&carol).is_none(),
        "the membership change went with the refused commit"
    );
    match ok(
        apply_one(s, with_carol(Some(1))).await,
        "the commit with carol",
    ) {
        Applied::MlsMembership {
            chat: after,
            message,
            commit,
        } => {
            assert!(after.participant(&carol).is_some());
            let system = some(message, "the system message");
            assert!(system.seq < commit.seq, "the system message comes first");
            assert_eq!(commit.kind, MessageType::MlsCommit);
            assert_eq!(after.last_seq, commit.seq);
        }
        other => panic!("expected Applied::MlsMembership, got {other:?}"),
    }
    assert_eq!(
        ok(s.get_mls_group(chat.id).await, "get_mls_group").map(|g| g.epoch),
        Some(2)
    );
}

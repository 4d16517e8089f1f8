//! Cases of "Audience at commit" and of the groups-keep-an-admin rule:
//! every applied change comes back with the members it must reach.

use std::sync::Arc;

use super::*;
use crate::store::{Committed, Members};

/// Applies `changes` as one batch; every result must be `Ok`.
async fn commit_all(store: &dyn Store, changes: Vec<Change>, what: &str) -> Vec<Committed> {
    let n = changes.len();
    let results = store.apply(changes).await;
    assert_eq!(results.len(), n, "{what}: one result per change");
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| ok(r, &format!("{what}: change {i}")))
        .collect()
}

fn users(members: &Members) -> Vec<UserId> {
    members.users.to_vec()
}

/// In one batch, [remove bob, post, mark, edit]: bob is in none of the
/// audiences after his removal; the removal itself returns the members
/// after it.
pub async fn batch_remove_then_post_never_addresses_the_removed(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
    let first = post(s, text(chat.id, &carol, "c-0", "before", at(1))).await;
    let out = commit_all(
        s,
        vec![
            Change::Post(text(chat.id, &carol, "c-1", "still there", at(2))),
            remove(chat.id, &bob, &alice, at(3)),
            Change::Post(text(chat.id, &carol, "c-2", "after", at(4))),
            mark(chat.id, &carol, 4, 4),
            edit(chat.id, first.id, "edited after", at(5)),
        ],
        "[post, remove bob, post, mark, edit]",
    )
    .await;
    assert_eq!(
        users(&out[0].members),
        vec![alice.clone(), bob.clone(), carol.clone()],
        "a post before the removal reaches bob"
    );
    for (i, what) in [
        (1, "the removal"),
        (2, "a post"),
        (3, "a mark"),
        (4, "an edit"),
    ] {
        assert_eq!(
            users(&out[i].members),
            vec![alice.clone(), carol.clone()],
            "{what} after bob's removal in the same batch must not address him"
        );
    }
}

/// In one batch, [add nora, post]: the post addresses nora.
pub async fn batch_add_then_post_addresses_the_added(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, nora) = (user("alice"), user("bob"), user("nora"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    let out = commit_all(
        s,
        vec![
            Change::Post(text(chat.id, &bob, "b-1", "before", at(1))),
            add(chat.id, &nora, Role::Member, &alice, at(2)),
            Change::Post(text(chat.id, &bob, "b-2", "after", at(3))),
        ],
        "[post, add nora, post]",
    )
    .await;
    assert!(
        !out[0].members.contains(&nora),
        "a post before nora's addition does not reach her"
    );
    assert_eq!(
        users(&out[1].members),
        vec![alice.clone(), bob.clone(), nora.clone()]
    );
    assert_eq!(
        users(&out[2].members),
        vec![alice, bob, nora],
        "a post after nora's addition in the same batch must address her"
    );
}

/// Mutes and blocks are as of the change: a block between the pair of a
/// direct chat marks its audience `blocked` from the next change on, and
/// lifting it clears that; a mute shows in the next change's members.
pub async fn audience_follows_mutes_and_blocks(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = direct(s, &alice, &bob, at(0)).await;
    let out = commit_all(
        s,
        vec![Change::Post(text(chat.id, &alice, "a-1", "hi", at(1)))],
        "a first post",
    )
    .await;
    assert!(!out[0].members.blocked, "no block yet");
    assert!(out[0].members.muted.is_empty(), "no mute yet");

    ok(s.set_block(&bob, &alice, true).await, "bob blocks alice");
    let out = commit_all(s, vec![mark(chat.id, &alice, 1, 1)], "a mark").await;
    assert!(
        out[0].members.blocked,
        "a change after a block in a direct chat must say so"
    );
    ok(s.set_block(&bob, &alice, false).await, "bob unblocks alice");
    let settings = ParticipantSettings {
        muted_until: Some(at(1_000)),
        hidden_seq: None,
    };
    ok(
        s.set_participant_settings(chat.id, &bob, settings).await,
        "bob mutes",
    );
    let out = commit_all(
        s,
        vec![Change::Post(text(
            chat.id,
            &alice,
            "a-2",
            "hi again",
            at(2),
        ))],
        "a post",
    )
    .await;
    assert!(!out[0].members.blocked, "the block was lifted");
    assert_eq!(out[0].members.muted, vec![(bob.clone(), at(1_000))]);
    assert!(out[0].members.is_muted(&bob, at(3)));
    assert!(!out[0].members.is_muted(&bob, at(1_001)));

    let g = group(s, &[&alice, &bob], at(3)).await;
    ok(
        s.set_block(&bob, &alice, true).await,
        "bob blocks alice again",
    );
    let out = commit_all(
        s,
        vec![Change::Post(text(g.id, &alice, "a-3", "in a group", at(4)))],
        "a group post",
    )
    .await;
    assert!(
        !out[0].members.blocked,
        "blocks concern direct chats only; a group's audience is never blocked"
    );
}

/// Demoting a group's only admin is a `Conflict`; `EnsureAdmin` behind the
/// removal of the last admin promotes the longest-standing moderator, else
/// the longest-standing member, and changes nothing while an admin remains.
pub async fn groups_keep_an_admin(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol, dave) = (user("alice"), user("bob"), user("carol"), user("dave"));
    let chat = group(s, &[&alice, &bob, &carol, &dave], at(0)).await;
    conflict(
        apply_one(s, set_role(chat.id, &alice, Role::Member, &alice, at(1))).await,
        "demoting the only admin",
    );
    assert_eq!(
        last_seq(s, chat.id).await,
        0,
        "a refused demotion takes no seq"
    );
    let ensure = |at| Change::EnsureAdmin {
        chat_id: chat.id,
        by: alice.clone(),
        at,
    };
    let (_, message) = membership(apply_one(s, ensure(at(1))).await, "ensure with an admin");
    assert!(message.is_none(), "an admin is there: nothing changes");

    ok(
        apply_one(s, set_role(chat.id, &carol, Role::Moderator, &alice, at(2))).await,
        "carol becomes moderator",
    );
    let out = commit_all(
        s,
        vec![remove(chat.id, &alice, &alice, at(3)), ensure(at(3))],
        "[alice leaves, ensure admin]",
    )
    .await;
    let Applied::Membership {
        chat: after,
        message: Some(message),
    } = &out[1].applied
    else {
        panic!("the last admin left: EnsureAdmin must promote an heir");
    };
    assert_eq!(
        message.system,
        Some(SystemEvent::RoleChanged {
            user_id: carol.clone(),
            role: Role::Admin
        }),
        "the longest-standing moderator is the heir, recorded as a role change"
    );
    assert_eq!(message.seq, 3, "right behind the removal (seq 2)");
    assert_eq!(participant(after, &carol).role, Role::Admin);

    // Two admins: one may step down, not both.
    ok(
        apply_one(s, set_role(chat.id, &dave, Role::Admin, &carol, at(4))).await,
        "dave becomes admin",
    );
    ok(
        apply_one(s, set_role(chat.id, &carol, Role::Member, &carol, at(5))).await,
        "carol steps down while dave is admin",
    );
    conflict(
        apply_one(s, set_role(chat.id, &dave, Role::Member, &dave, at(6))).await,
        "dave, now the only admin, steps down",
    );

    // No moderator left: the longest-standing member inherits.
    let out = commit_all(
        s,
        vec![remove(chat.id, &dave, &dave, at(7)), ensure(at(7))],
        "[dave leaves, ensure admin]",
    )
    .await;
    let (after, _) = membership(Ok(out[1].applied.clone()), "the heir");
    assert_eq!(
        participant(&after, &bob).role,
        Role::Admin,
        "bob, the longest-standing member, inherits"
    );
}

/// `group_count` counts the groups of a user, not their direct chats.
pub async fn group_count_counts_groups_only(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    assert_eq!(ok(s.group_count(&alice).await, "group_count"), 0);
    direct(s, &alice, &bob, at(0)).await;
    group(s, &[&alice, &bob], at(1)).await;
    let g = group(s, &[&bob, &alice], at(2)).await;
    assert_eq!(ok(s.group_count(&alice).await, "group_count"), 2);
    ok(
        apply_one(s, remove(g.id, &alice, &alice, at(3))).await,
        "alice leaves",
    );
    assert_eq!(ok(s.group_count(&alice).await, "group_count"), 1);
}

/// Posts racing a removal from other tasks (other connections, on
/// PostgreSQL): each post's audience has bob exactly when it was logged
/// before his removal.
pub async fn concurrent_posts_see_members_at_commit(store: Arc<dyn Store>) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    for round in 0..5 {
        let chat = group(&*store, &[&alice, &bob, &carol], at(round)).await;
        let barrier = Arc::new(Barrier::new(9));
        let mut handles = Vec::new();
        for i in 0..8 {
            let (s, carol, barrier) = (store.clone(), carol.clone(), barrier.clone());
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let id = format!("r{round}-{i}");
                let new = text(chat.id, &carol, &id, "racing", at(round));
                let mut out = s.apply(vec![Change::Post(new)]).await;
                some(out.pop(), "one result")
            }));
        }
        barrier.wait().await;
        let removal = apply_one(&*store, remove(chat.id, &bob, &alice, at(round))).await;
        let (_, message) = membership(removal, "removing bob");
        let removed_at = some(message, "the removal's system message").seq;
        for result in join_all(handles).await {
            let committed = ok(result, "a racing post");
            let (message, _) = posted(Ok(committed.applied.clone()), "a racing post");
            assert_eq!(
                committed.members.contains(&bob),
                message.seq < removed_at,
                "round {round}: a post with seq {} (removal at {removed_at}) must address \
                 bob exactly when it came first",
                message.seq
            );
        }
    }
}

/// An `Authorized` change applies only while its author holds the role at
/// commit: an admin who left earlier in the same batch can no longer add
/// anyone, a member cannot act as a moderator, and a refusal writes
/// nothing.
pub async fn authorized_changes_need_the_role_at_commit(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob, carol, nora) = (user("alice"), user("bob"), user("carol"), user("nora"));
    let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
    let forbidden = |r: Result<Applied>, what: &str| match r {
        Err(Error::Forbidden(_)) => {}
        other => panic!("{what}: expected Forbidden, got {other:?}"),
    };
    let add_nora = |by: &UserId, at| add(chat.id, &nora, Role::Member, by, at);
    forbidden(
        apply_one(s, add_nora(&bob, at(1)).authorized(&bob, Role::Moderator)).await,
        "a member adding as if a moderator",
    );
    assert_eq!(last_seq(s, chat.id).await, 0, "a refusal takes no seq");
    let results = s
        .apply(vec![
            remove(chat.id, &alice, &alice, at(2)),
            Change::EnsureAdmin {
                chat_id: chat.id,
                by: alice.clone(),
                at: at(2),
            },
            add_nora(&alice, at(3)).authorized(&alice, Role::Admin),
        ])
        .await;
    assert_eq!(results.len(), 3);
    let mut results = results.into_iter().map(|r| r.map(|c| c.applied));
    ok(some(results.next(), "result 0"), "alice leaves");
    ok(some(results.next(), "result 1"), "bob inherits");
    forbidden(
        some(results.next(), "result 2"),
        "an addition by an admin who left earlier in the batch",
    );
    let after = get_chat(s, chat.id).await;
    assert!(after.participant(&nora).is_none(), "nora was not added");
    assert_eq!(participant(&after, &bob).role, Role::Admin);
    let (after, _) = membership(
        apply_one(s, add_nora(&bob, at(4)).authorized(&bob, Role::Admin)).await,
        "the new admin adds nora",
    );
    assert!(after.participant(&nora).is_some());
}

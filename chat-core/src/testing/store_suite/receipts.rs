//! Cases of watermarks (`Mark`) and unread counts.

use std::sync::Arc;

use super::*;

// --- watermarks ------------------------------------------------------

/// Marks move watermarks forward only, report which moved, take no seq
/// and touch no one else's watermarks; `read_up_to` 0 leaves the read
/// watermark.
pub async fn mark_moves_watermarks_forward_only(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    for i in 1..=5 {
        post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
    }
    let steps = [
        ((3, 1), (3, 1, true, true), "a first mark"),
        (
            (2, 0),
            (3, 1, false, false),
            "a mark behind both watermarks",
        ),
        ((3, 1), (3, 1, false, false), "the same mark again"),
        (
            (4, 0),
            (4, 1, true, false),
            "delivered only (read 0 is no change)",
        ),
        ((0, 2), (4, 2, false, true), "read only, behind delivered"),
        ((1, 1), (4, 2, false, false), "a mark behind both, again"),
    ];
    for ((d, r), expected, what) in steps {
        let result = marked(apply_one(s, mark(chat.id, &bob, d, r)).await, what);
        assert_eq!(
            result, expected,
            "{what}: Mark({d}, {r}) must give (delivered, read, delivered_moved, read_moved)"
        );
        let c = get_chat(s, chat.id).await;
        let p = participant(&c, &bob);
        assert_eq!((p.delivered_seq, p.read_seq), (expected.0, expected.1));
        assert_eq!(
            (c.last_seq, c.last_activity),
            (5, at(5)),
            "a mark takes no seq"
        );
        let a = participant(&c, &alice);
        assert_eq!(
            (a.delivered_seq, a.read_seq),
            (0, 0),
            "others' watermarks stay"
        );
    }
}

/// Marks are clamped to the chat's `last_seq`.
pub async fn mark_clamps_to_last_seq(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    assert_eq!(
        marked(
            apply_one(s, mark(chat.id, &bob, 10, 10)).await,
            "mark in empty chat"
        ),
        (0, 0, false, false),
        "in an empty chat watermarks stay at 0"
    );
    for i in 1..=5 {
        post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
    }
    assert_eq!(
        marked(
            apply_one(s, mark(chat.id, &bob, 100, 0)).await,
            "mark beyond"
        ),
        (5, 0, true, false),
        "delivered must be clamped to last_seq"
    );
    assert_eq!(
        marked(
            apply_one(s, mark(chat.id, &bob, 100, 100)).await,
            "mark beyond"
        ),
        (5, 5, false, true),
        "read must be clamped to last_seq"
    );
    post(s, text(chat.id, &alice, "c-6", "msg", at(6))).await;
    assert_eq!(
        marked(
            apply_one(s, mark(chat.id, &bob, u64::MAX, u64::MAX)).await,
            "mark max"
        ),
        (6, 6, true, true)
    );
    let c = get_chat(s, chat.id).await;
    let p = participant(&c, &bob);
    assert_eq!((p.delivered_seq, p.read_seq, c.last_seq), (6, 6, 6));
}

/// Reading implies delivery: `delivered_seq >= read_seq` always.
pub async fn mark_read_implies_delivered(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    for i in 1..=5 {
        post(s, text(chat.id, &alice, &format!("c-{i}"), "msg", at(i))).await;
    }
    assert_eq!(
        marked(apply_one(s, mark(chat.id, &bob, 0, 3)).await, "read 3"),
        (3, 3, true, true),
        "reading up to 3 must deliver up to 3"
    );
    assert_eq!(
        marked(apply_one(s, mark(chat.id, &bob, 2, 4)).await, "read 4"),
        (4, 4, true, true),
        "reading past delivered must move delivered too"
    );
    let c = get_chat(s, chat.id).await;
    let p = participant(&c, &bob);
    assert_eq!((p.delivered_seq, p.read_seq), (4, 4));
}

/// A mark for someone not (or no longer) in the chat is `NotFound`.
pub async fn mark_by_non_participant_is_not_found(store: Arc<dyn Store>) {
    let s = &*store;
    let (alice, bob) = (user("alice"), user("bob"));
    let chat = group(s, &[&alice, &bob], at(0)).await;
    post(s, text(chat.id, &alice, "c-1", "msg", at(1))).await;
    not_found(
        apply_one(s, mark(chat.id, &user("mallory"), 1, 1)).await,
        "a mark by a non-participant",
    );
    membership(
        apply_one(s, remove(chat.id, &bob, &bob, at(2))).await,
        "bob leaves",
    );
    not_found(
        apply_one(s, mark(chat.id, &bob, 2, 2)).await,
        "a mark by a former participant",
    );
    assert_eq!(last_seq(s, chat.id).await, 2);
}

// --- reads -------------------------------------------------------------

/// `unread_count` counts messages with `seq > after_seq` that are not
/// the user's own, not `system` and not deleted; edits add nothing.
pub async fn unread_count_counts_visible_messages_from_others(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave] = ["alice", "bob", "carol", "dave"].map(user);
    let chat = group(s, &[&alice, &bob, &carol], at(0)).await;
    let a1 = post(s, text(chat.id, &alice, "a-1", "1", at(1))).await; // 1
    post(s, text(chat.id, &alice, "a-2", "2", at(2))).await; // 2
    post(s, text(chat.id, &bob, "b-1", "3", at(3))).await; // 3
    let b2 = post(s, text(chat.id, &bob, "b-2", "4", at(4))).await; // 4
    post(s, text(chat.id, &bob, "b-3", "5", at(5))).await; // 5
    membership(
        apply_one(s, add(chat.id, &dave, Role::Member, &bob, at(6))).await,
        "bob adds dave",
    ); // 6, system
    post(s, text(chat.id, &carol, "c-1", "7", at(7))).await; // 7
    updated(
        apply_one(s, delete(chat.id, b2.id, at(8))).await,
        "delete seq 4",
    ); // 8
    updated(
        apply_one(s, edit(chat.id, a1.id, "1!", at(9))).await,
        "edit seq 1",
    ); // 9

    let chat_id = chat.id;
    let count = |who: &UserId, after: u64| {
        let who = who.clone();
        async move { ok(s.unread_count(chat_id, &who, after).await, "unread_count") }
    };
    let cases = [
        (
            &alice,
            0,
            3,
            "bob's 3 and 5, carol's 7 (own, system, deleted excluded)",
        ),
        (&alice, 3, 2, "seq 5 and 7"),
        (&alice, 5, 1, "seq 7"),
        (
            &alice,
            7,
            0,
            "nothing after 7: edits and deletions are not new",
        ),
        (&bob, 0, 3, "alice's 1 and 2, carol's 7"),
        (&bob, 2, 1, "carol's 7"),
        (&carol, 0, 4, "alice's 1, 2 and bob's 3, 5"),
        (&dave, 6, 1, "carol's 7"),
        (&alice, 100, 0, "after the end"),
    ];
    for (who, after, expected, what) in cases {
        assert_eq!(
            count(who, after).await,
            expected,
            "unread_count({who}, after {after}) must be {expected}: {what}"
        );
    }
}

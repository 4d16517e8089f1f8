//! Cases of the analytics counts (`record_session`, receipt times and
//! `stats`).

use std::sync::Arc;

use super::*;
use crate::store::{DAY_MS, DayCounts, StatsRows, WeekCounts, week_of_day};

/// The suite's first day (T0 is a Monday, 20:00 UTC).
fn day0() -> i64 {
    T0.div_euclid(DAY_MS)
}

fn ms(t: Timestamp, plus_ms: i64) -> Timestamp {
    Timestamp::from_millis(t.as_millis() + plus_ms)
}

fn mark_at(chat: ChatId, user: &UserId, delivered: u64, read: u64, at: Timestamp) -> Change {
    Change::Mark {
        chat_id: chat,
        user_id: user.clone(),
        delivered_up_to: delivered,
        read_up_to: read,
        at,
    }
}

/// Applies a mark; returns when the messages it delivered first were
/// created, sorted.
async fn first_delivered(store: &dyn Store, change: Change, what: &str) -> Vec<Timestamp> {
    match ok(apply_one(store, change).await, what) {
        Applied::Marked {
            mut first_delivered,
            ..
        } => {
            first_delivered.sort();
            first_delivered
        }
        other => panic!("{what}: expected Applied::Marked, got {other:?}"),
    }
}

async fn stats(store: &dyn Store, from: i64, to: i64) -> StatsRows {
    let mut rows = ok(store.stats(from, to).await, "stats");
    rows.first_replies_ms.sort_unstable();
    // Days with nothing may or may not be listed.
    rows.days
        .retain(|d| d.messages + d.active_users + d.new_chats > 0);
    rows.weeks.retain(|w| w.active_chats > 0);
    rows
}

/// Counted messages, active users (senders and session holders), sessions
/// and new chats per UTC day; system messages do not count; erasing a
/// user's rows keeps their sessions counted under the pseudonym.
pub async fn stats_count_days_users_and_sessions(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave, erin, frank] =
        ["alice", "bob", "carol", "dave", "erin", "frank"].map(user);
    let day = day0();
    // Monday: a group, two texts and a system message; alice connects
    // twice, erin once (without sending anything).
    let g = group(s, &[&alice, &bob], at(0)).await;
    post(s, text(g.id, &alice, "a1", "one", at(1))).await;
    post(s, text(g.id, &bob, "b1", "two", at(60))).await;
    let event = SystemEvent::ParticipantRemoved {
        user_id: bob.clone(),
    };
    post(s, system(g.id, &alice, event, at(61))).await;
    for (who, t) in [(&alice, at(0)), (&alice, at(5)), (&erin, at(30))] {
        ok(s.record_session(who, t).await, "record_session");
    }
    // Tuesday: a direct chat; alice and carol write.
    let d = direct(s, &carol, &dave, at(86_400)).await;
    post(s, text(g.id, &alice, "a2", "three", at(86_400))).await;
    post(s, text(d.id, &carol, "c1", "four", at(86_410))).await;
    // Wednesday, outside the period: frank connects, dave writes.
    ok(
        s.record_session(&frank, at(2 * 86_400)).await,
        "record_session",
    );
    post(s, text(d.id, &dave, "d1", "five", at(2 * 86_400))).await;

    let expected = StatsRows {
        days: vec![
            DayCounts {
                day,
                messages: 2,
                active_users: 3,
                new_chats: 1,
            },
            DayCounts {
                day: day + 1,
                messages: 2,
                active_users: 2,
                new_chats: 1,
            },
        ],
        messages: 4,
        active_users: 4,
        sessions: 3,
        delivered_within_1s: 0,
        read_within_24h: 0,
        // dave's answer, on Wednesday, times carol's direct chat.
        first_replies_ms: vec![(2 * 86_400 - 86_410) * 1000],
        unanswered: 0,
        weeks: vec![WeekCounts {
            week: week_of_day(day),
            active_chats: 2,
            retained: 0,
        }],
    };
    assert_eq!(
        stats(s, day, day + 1).await,
        expected,
        "Monday and Tuesday: (messages, active users, new chats) per day, \
         sessions, and carol's direct chat answered the day after"
    );
    let pseudonym = user("erased-alice");
    ok(
        s.erase_user_rows(&alice, &pseudonym).await,
        "erase_user_rows",
    );
    assert_eq!(
        stats(s, day, day + 1).await,
        expected,
        "an erased user's messages and sessions still count, under the pseudonym"
    );
}

/// A message's first receipt by another member is timed once (its
/// creation time returned to the engine); a read implies the delivery;
/// the sender's own marks, system messages and messages older than 24 h
/// at the mark are not timed; 1 s and 24 h count inclusively.
pub async fn receipts_time_first_delivery_and_read(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(user);
    let g = group(s, &[&alice, &bob, &carol], at(0)).await;
    let m1 = post(s, text(g.id, &alice, "m1", "1", at(10))).await;
    let m2 = post(s, text(g.id, &bob, "m2", "2", at(30))).await;
    let m3 = post(s, text(g.id, &alice, "m3", "3", at(31))).await;
    post(s, text(g.id, &alice, "m4", "4", at(40))).await;
    let event = SystemEvent::ParticipantRemoved {
        user_id: carol.clone(),
    };
    post(s, system(g.id, &alice, event, at(45))).await;
    let m5 = post(s, text(g.id, &alice, "m5", "5", at(50))).await;
    let steps = [
        (
            mark_at(g.id, &bob, 1, 0, ms(at(10), 1000)),
            vec![m1.created_at],
            "bob's device confirms m1 exactly 1 s after it",
        ),
        (
            mark_at(g.id, &carol, 1, 0, at(20)),
            vec![],
            "a second member's receipt of m1 is not its first",
        ),
        (
            mark_at(g.id, &alice, 3, 3, at(32)),
            vec![m2.created_at],
            "alice reads m2 2 s after it (not m3: her own)",
        ),
        (
            mark_at(g.id, &bob, 3, 0, ms(at(31), 1001)),
            vec![m3.created_at],
            "bob's device confirms m3 1.001 s after it",
        ),
        (
            mark_at(g.id, &bob, 4, 4, ms(at(40), DAY_MS + 1)),
            vec![],
            "bob reads up to m4 24 h and 1 ms after it: nothing timed",
        ),
        (
            mark_at(g.id, &bob, 6, 6, ms(at(50), DAY_MS)),
            vec![m5.created_at],
            "bob reads m5 exactly 24 h after it (the system message between is not timed)",
        ),
    ];
    for (change, expected, what) in steps {
        assert_eq!(first_delivered(s, change, what).await, expected, "{what}");
    }
    let rows = stats(s, day0(), day0()).await;
    assert_eq!(
        (
            rows.messages,
            rows.delivered_within_1s,
            rows.read_within_24h
        ),
        (5, 1, 2),
        "(messages, delivered within 1 s: m1, read within 24 h: m2 and m5)"
    );
}

/// First replies are timed in direct chats whose first counted message is
/// in the period (the reply may come later); group chats and chats that
/// began before do not count; weekly retention counts the chats active in
/// each week of the period and, of those, the ones active the week after.
pub async fn stats_time_first_replies_and_weekly_retention(store: Arc<dyn Store>) {
    let s = &*store;
    let [alice, bob, carol, dave, erin, frank, gina, hal] = [
        "alice", "bob", "carol", "dave", "erin", "frank", "gina", "hal",
    ]
    .map(user);
    let week = 7 * 86_400;
    // alice and bob: a system message, two of alice's, bob answers 60 s
    // after her first; alice writes again the next week.
    let ab = direct(s, &alice, &bob, at(0)).await;
    let event = SystemEvent::ParticipantAdded {
        user_id: bob.clone(),
        role: Role::Member,
    };
    post(s, system(ab.id, &bob, event, at(1))).await;
    post(s, text(ab.id, &alice, "a1", "hi", at(100))).await;
    post(s, text(ab.id, &alice, "a2", "there?", at(110))).await;
    post(s, text(ab.id, &bob, "b1", "yes", at(160))).await;
    post(s, text(ab.id, &alice, "a3", "next week", at(week))).await;
    // carol and dave: no reply.
    let cd = direct(s, &carol, &dave, at(0)).await;
    post(s, text(cd.id, &carol, "c1", "hello", at(200))).await;
    // erin and frank began the day before.
    let ef = direct(s, &erin, &frank, at(-86_400)).await;
    post(s, text(ef.id, &erin, "e1", "yesterday", at(-86_400))).await;
    post(s, text(ef.id, &frank, "f1", "today", at(10))).await;
    // gina and hal: hal's reply comes a week later.
    let gh = direct(s, &gina, &hal, at(0)).await;
    post(s, text(gh.id, &gina, "g1", "hey", at(300))).await;
    post(s, text(gh.id, &hal, "h1", "sorry, late", at(300 + week))).await;
    // A group: replies there are not timed.
    let g = group(s, &[&alice, &carol], at(0)).await;
    post(s, text(g.id, &alice, "a4", "group", at(400))).await;
    post(s, text(g.id, &carol, "c2", "reply", at(401))).await;

    let rows = stats(s, day0(), day0()).await;
    assert_eq!(
        (rows.first_replies_ms, rows.unanswered),
        (vec![60_000, 1000 * week as u64], 1),
        "first replies: alice-bob after 60 s, gina-hal after a week; carol-dave unanswered"
    );
    assert_eq!(
        rows.weeks,
        vec![WeekCounts {
            week: week_of_day(day0()),
            active_chats: 5,
            retained: 2,
        }],
        "five chats active in the week, alice-bob and gina-hal again the week after"
    );
}

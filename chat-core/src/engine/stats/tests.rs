//! The stats of a scripted stretch of traffic, on a clock the test moves,
//! checked number by number against what the script did.

use std::{sync::Arc, time::Duration};

use super::super::tests::{Client, actor, clocked_engine, direct, group, send, uid};
use super::*;
use crate::{
    ErrorCode,
    clock::ManualClock,
    engine::Receipt,
    model::{ChatId, Timestamp},
};

/// Monday 2026-11-23 00:00 UTC, the first day of ISO week 2026-W48.
const MONDAY: i64 = 1_795_392_000_000;

const HOUR: u64 = 3600;

fn admin() -> Actor {
    Actor::admin(uid("root"))
}

async fn engine() -> (ChatEngine, Arc<ManualClock>) {
    clocked_engine(MONDAY).await
}

/// Sets the clock to `secs` after Monday 00:00.
fn at(clock: &ManualClock, secs: u64) {
    clock.set(Timestamp::from_millis(MONDAY + secs as i64 * 1000));
}

async fn mark(e: &ChatEngine, who: &str, chat: ChatId, receipt: Receipt, seq: u64) {
    e.mark(&actor(who), chat, receipt, seq).await.unwrap();
}

/// Two days of traffic, and one message a week later. Returns the engine
/// and the clients it keeps connected (their sessions are the script's).
async fn scripted() -> (ChatEngine, Vec<Client>) {
    let (e, clock) = engine().await;
    let mut clients = Vec::new();
    // Monday 09:00: alice and bob connect (2 sessions) and open a direct
    // chat; bob's device confirms alice's "hi" after 0.5 s and he answers
    // 30 s after it; alice reads the answer 30 s after that (its first
    // receipt: not within 1 s). Her read covers her own message too,
    // which times nothing.
    at(&clock, 9 * HOUR);
    clients.push(Client::connect(&e, "alice").await);
    clients.push(Client::connect(&e, "bob").await);
    let ab = direct(&e, "alice", "bob").await;
    let hi = send(&e, "alice", ab, "a1", "hi").await.unwrap();
    clock.advance(Duration::from_millis(500));
    mark(&e, "bob", ab, Receipt::Delivered, hi.seq).await;
    at(&clock, 9 * HOUR + 30);
    let answer = send(&e, "bob", ab, "b1", "hello").await.unwrap();
    at(&clock, 9 * HOUR + 60);
    mark(&e, "alice", ab, Receipt::Read, answer.seq).await;
    // Monday 10:00: carol's group (its system messages do not count);
    // alice reads carol's message 22 h later, on Tuesday.
    at(&clock, 10 * HOUR);
    let support = group(&e, "carol", &["alice", "dave"]).await;
    let g1 = send(&e, "carol", support, "c1", "welcome").await.unwrap();
    // Tuesday 08:00.
    at(&clock, 32 * HOUR);
    mark(&e, "alice", support, Receipt::Read, g1.seq).await;
    // Tuesday 12:00: dave connects twice; carol writes to him, his device
    // confirms exactly 1 s later, he answers after 2 minutes.
    at(&clock, 36 * HOUR);
    clients.push(Client::connect(&e, "dave").await);
    clients.push(Client::connect(&e, "dave").await);
    let cd = direct(&e, "carol", "dave").await;
    let to_dave = send(&e, "carol", cd, "c2", "how are you?").await.unwrap();
    clock.advance(Duration::from_secs(1));
    mark(&e, "dave", cd, Receipt::Delivered, to_dave.seq).await;
    at(&clock, 36 * HOUR + 120);
    send(&e, "dave", cd, "d1", "better").await.unwrap();
    // Tuesday 13:00: erin writes to frank, who never answers.
    at(&clock, 37 * HOUR);
    let ef = direct(&e, "erin", "frank").await;
    send(&e, "erin", ef, "e1", "hey").await.unwrap();
    // Wednesday 10:00: bob reads alice's "hi", 25 h after it: too late.
    at(&clock, 49 * HOUR);
    mark(&e, "bob", ab, Receipt::Read, hi.seq).await;
    // Next Monday (2026-W49): alice writes again, so the direct chat is
    // retained from W48 to W49.
    at(&clock, 7 * 24 * HOUR + 9 * HOUR);
    send(&e, "alice", ab, "a2", "see you").await.unwrap();
    (e, clients)
}

fn day(date: &str, messages: u64, active_users: u64, new_chats: u64) -> DayStats {
    DayStats {
        date: date.into(),
        messages,
        active_users,
        new_chats,
    }
}

fn week(name: &str, active_chats: u64, retained: u64) -> WeekStats {
    WeekStats {
        week: name.into(),
        active_chats,
        retained,
    }
}

/// The script, counted: Monday has alice's, bob's and carol's messages
/// (active: alice, bob, carol) and two new chats; Tuesday carol's, dave's
/// and erin's (active: carol, dave, erin) and two new chats. Five users,
/// four sessions, six messages; replies after 30 s and 120 s, erin
/// unanswered; delivered within 1 s: "hi" (0.5 s) and carol's to dave
/// (exactly 1 s); read within 24 h: bob's answer and carol's welcome.
#[tokio::test]
async fn stats_match_a_scripted_stretch_of_traffic() {
    let (e, _clients) = scripted().await;
    let stats = e
        .stats(&admin(), Some("2026-11-23"), Some("2026-11-24"))
        .await
        .unwrap();
    let expected = Stats {
        from: "2026-11-23".into(),
        to: "2026-11-24".into(),
        days: vec![day("2026-11-23", 3, 3, 2), day("2026-11-24", 3, 3, 2)],
        messages: 6,
        active_users: 5,
        sessions: 4,
        messages_per_active_user: Some(6.0 / 5.0),
        messages_per_session: Some(6.0 / 4.0),
        first_reply_secs: FirstReply {
            median: Some(30.0),
            p95: Some(120.0),
            answered: 2,
            unanswered: 1,
        },
        delivered_within_1s: Some(2.0 / 6.0),
        read_within_24h: Some(2.0 / 6.0),
        weekly_retention: vec![week("2026-W48", 4, 1)],
    };
    assert_eq!(stats, expected);

    // The week after: one message, no sessions, no new chats, nothing
    // after it yet; days without traffic are listed with zeros.
    let next = e
        .stats(&admin(), Some("2026-11-29"), Some("2026-12-01"))
        .await
        .unwrap();
    assert_eq!(
        next.days,
        vec![
            day("2026-11-29", 0, 0, 0),
            day("2026-11-30", 1, 1, 0),
            day("2026-12-01", 0, 0, 0),
        ]
    );
    assert_eq!(
        next.weekly_retention,
        vec![week("2026-W48", 4, 1), week("2026-W49", 1, 0)]
    );
    assert_eq!(
        (next.messages_per_session, next.first_reply_secs.median),
        (None, None),
        "no sessions and no new direct chats: nothing to divide by"
    );
}

/// Erasing a user changes no count: their messages stay as tombstones and
/// their sessions under the pseudonym.
#[tokio::test]
async fn erasure_leaves_the_counts_as_they_were() {
    let (e, _clients) = scripted().await;
    let before = e
        .stats(&admin(), Some("2026-11-23"), Some("2026-11-30"))
        .await
        .unwrap();
    e.erase_user(&admin(), &uid("bob")).await.unwrap();
    let after = e
        .stats(&admin(), Some("2026-11-23"), Some("2026-11-30"))
        .await
        .unwrap();
    assert_eq!(after, before);
}

#[tokio::test]
async fn only_admins_with_a_valid_period_get_stats() {
    let (e, _clients) = scripted().await;
    let refused = [
        (
            actor("alice"),
            "2026-11-23",
            "2026-11-24",
            ErrorCode::Forbidden,
        ),
        (admin(), "2026-11-24", "2026-11-23", ErrorCode::BadRequest),
        (admin(), "2026-11-23", "2027-11-24", ErrorCode::BadRequest),
        (admin(), "2026-11-23", "2026-11-31", ErrorCode::BadRequest),
        (admin(), "23/11/2026", "2026-11-24", ErrorCode::BadRequest),
        (admin(), "2026-1-23", "2026-11-24", ErrorCode::BadRequest),
        (admin(), "1969-12-31", "1970-01-01", ErrorCode::BadRequest),
    ];
    for (who, from, to, code) in refused {
        let got = e
            .stats(&who, Some(from), Some(to))
            .await
            .map(|_| ())
            .unwrap_err()
            .code();
        assert_eq!(got, code, "{from}..{to} by {}", who.user_id);
    }
    // Without a period: the week up to today (the clock's: 2026-11-30).
    let week = e.stats(&admin(), None, None).await.unwrap();
    assert_eq!(
        (week.from.as_str(), week.to.as_str()),
        ("2026-11-24", "2026-11-30")
    );
    // 366 days are allowed.
    let year = e
        .stats(&admin(), Some("2026-11-23"), Some("2027-11-23"))
        .await
        .unwrap();
    assert_eq!(year.days.len(), 366);
}

#[test]
fn percentiles_are_nearest_rank() {
    let ms: Vec<u64> = (1..=20).map(|s| s * 1000).collect();
    assert_eq!(percentile(&ms, 50), Some(10.0));
    assert_eq!(percentile(&ms, 95), Some(19.0));
    assert_eq!(percentile(&ms[..1], 95), Some(1.0));
    assert_eq!(percentile(&[], 50), None);
}

#[test]
fn weeks_are_named_as_iso_weeks() {
    // 2026-11-23 is day 20780, a Monday; 2021-01-03 (a Sunday) belongs
    // to 2020-W53.
    assert_eq!(iso_week(week_of_day(20_780)), "2026-W48");
    assert_eq!(iso_week(week_of_day(20_786)), "2026-W48");
    assert_eq!(iso_week(week_of_day(20_787)), "2026-W49");
    assert_eq!(iso_week(week_of_day(18_630)), "2020-W53");
    assert_eq!(
        date_of(parse_day("2026-11-23", "from").unwrap()).to_string(),
        "2026-11-23"
    );
}

//! Analytics, black-box (PROTOCOL.md 5.5): a scripted day of traffic over
//! real sockets on a fresh server, then `GET /api/v1/admin/stats` counts
//! exactly that; the delivery-latency histogram counts the same receipts;
//! the endpoint is for admins only and refuses bad periods.

mod common;

use chat_core::Timestamp;
use common::*;
use serde_json::{Value, json};

/// `YYYY-MM-DD` (UTC) of now plus `days`.
fn date(days: i64) -> String {
    let t = Timestamp::from_millis(Timestamp::now().as_millis() + days * 86_400_000);
    t.to_string()[..10].to_owned()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is a count: {v}"))
}

fn f(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is a number: {v}"))
}

#[tokio::test]
async fn stats_match_a_scripted_day_of_traffic_exactly() {
    let server = Server::with_config(UNLIMITED).await;
    // Sessions: ann, bob, and cat twice.
    let mut ann = server.ws("st-ann").await;
    let mut bob = server.ws("st-bob").await;
    let mut cat = server.ws("st-cat").await;
    let _cat_phone = server.ws("st-cat").await;

    // A direct chat: ann writes three messages (one of them sent twice
    // with the same client_msg_id: stored once); bob's device confirms
    // each as it arrives and he reads two; he answers once.
    let chat = ann.direct("st-bob").await;
    let direct = s(&chat, "id").to_owned();
    let mut first_id = Value::Null;
    for (i, cid) in ["st-1", "st-2", "st-3", "st-1"].iter().enumerate() {
        let sent = ann
            .ok(
                "send_message",
                json!({"chat_id": direct, "client_msg_id": cid, "content": format!("hi {i}")}),
            )
            .await;
        if i == 0 {
            first_id = sent["message"]["id"].clone();
        }
        if i == 3 {
            assert_eq!(
                sent["message"]["id"], first_id,
                "the retry is the same message"
            );
            continue;
        }
        let seq = sent["message"]["seq"].clone();
        bob.event_where("message_received", |e| e["seq"] == seq)
            .await;
        bob.ok(
            "mark_delivered",
            json!({"chat_id": direct, "up_to_seq": seq}),
        )
        .await;
    }
    bob.ok("mark_as_read", json!({"chat_id": direct, "up_to_seq": 2}))
        .await;
    bob.send(&direct, "hello ann").await;

    // A group (its system messages are not counted): cat writes once and
    // nobody confirms it.
    let group = cat.group("st-circle", &["st-ann", "st-bob"]).await;
    cat.send(s(&group, "id"), "welcome").await;

    let path = format!("/api/v1/admin/stats?from={}&to={}", date(-1), date(1));
    let stats = server
        .http("GET", &path, Some(&admin_token("root")), None)
        .await
        .expect(200)
        .clone();

    // Five messages (ann 3, bob 1, cat 1), three active users, four
    // sessions, two new chats; bob's device confirmed ann's three within
    // a second, he read two of them; his answer is the direct chat's
    // first reply.
    assert_eq!(
        (s(&stats, "from"), s(&stats, "to")),
        (&*date(-1), &*date(1))
    );
    let days = stats["days"].as_array().expect("days");
    assert_eq!(days.len(), 3, "every day of the period: {stats}");
    let sum = |key: &str| days.iter().map(|d| n(d, key)).sum::<u64>();
    assert_eq!((sum("messages"), sum("new_chats")), (5, 2), "{stats}");
    assert_eq!(
        (
            n(&stats, "messages"),
            n(&stats, "active_users"),
            n(&stats, "sessions")
        ),
        (5, 3, 4),
        "{stats}"
    );
    assert_eq!(f(&stats, "messages_per_active_user"), 5.0 / 3.0);
    assert_eq!(f(&stats, "messages_per_session"), 5.0 / 4.0);
    assert_eq!(f(&stats, "delivered_within_1s"), 3.0 / 5.0);
    assert_eq!(f(&stats, "read_within_24h"), 2.0 / 5.0);
    let replies = &stats["first_reply_secs"];
    assert_eq!((n(replies, "answered"), n(replies, "unanswered")), (1, 0));
    let median = f(replies, "median");
    assert!((0.0..30.0).contains(&median), "{replies}");
    assert_eq!(
        f(replies, "p95"),
        median,
        "one reply: both percentiles are it"
    );
    let busy: Vec<&Value> = days.iter().filter(|d| n(d, "messages") > 0).collect();
    if busy.len() == 1 {
        // Not straddling midnight: the day holds everything.
        assert_eq!(
            (
                n(busy[0], "messages"),
                n(busy[0], "active_users"),
                n(busy[0], "new_chats")
            ),
            (5, 3, 2)
        );
        let weeks = stats["weekly_retention"].as_array().expect("weeks");
        let active: Vec<(u64, u64)> = weeks
            .iter()
            .map(|w| (n(w, "active_chats"), n(w, "retained")))
            .filter(|(a, _)| *a > 0)
            .collect();
        assert_eq!(active, [(2, 0)], "{weeks:?}");
        assert!(weeks.iter().all(|w| {
            let name = s(w, "week");
            name.len() == 8 && &name[4..6] == "-W"
        }));
    }
    // Counts only: nothing names a user, chat or message.
    let text = stats.to_string();
    for id in ["st-ann", "st-bob", "st-cat", &direct, s(&group, "id")] {
        assert!(!text.contains(id), "{id} in {text}");
    }

    // The live counterpart: one delivery latency per first receipt.
    let metrics = server.http("GET", "/metrics", None, None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l == "chat_delivery_latency_seconds_count 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn stats_are_for_admins_with_a_valid_period() {
    let server = Server::start().await;
    let today = date(0);
    server
        .http("GET", "/api/v1/admin/stats", Some(&token("st-eve")), None)
        .await
        .expect_error(403, "forbidden");
    for query in [
        format!("from={today}&to={}", date(-1)),
        format!("from={}&to={today}", date(-400)),
        "from=2026-02-30&to=2026-03-01".to_owned(),
        "from=yesterday".to_owned(),
    ] {
        server
            .http(
                "GET",
                &format!("/api/v1/admin/stats?{query}"),
                Some(&admin_token("root")),
                None,
            )
            .await
            .expect_error(400, "bad_request");
    }
    // Without a period: the last seven days, today included, all zero.
    let week = server
        .http(
            "GET",
            "/api/v1/admin/stats",
            Some(&admin_token("root")),
            None,
        )
        .await
        .expect(200)
        .clone();
    assert_eq!((s(&week, "from"), s(&week, "to")), (&*date(-6), &*today));
    assert_eq!(week["days"].as_array().map(Vec::len), Some(7));
    assert_eq!(week["messages"], 0);
    assert_eq!(
        week["delivered_within_1s"],
        Value::Null,
        "nothing to divide by"
    );
}

//! Check-ins, mood check-ins and resource messages over real sockets
//! (PROTOCOL.md 5.3): who may post, answer and read results, what the
//! poster and the others see, and the rules on bad input.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn a_checkin_is_answered_privately_and_counted_for_the_poster() {
    let server = Server::start().await;
    let mut ann = server.ws("ci-ann").await;
    let mut bob = server.ws("ci-bob").await;
    let mut cat = server.ws("ci-cat").await;
    let group = ann.group("ci-circle", &["ci-bob", "ci-cat"]).await;
    let chat_id = s(&group, "id").to_owned();

    // Members do not post check-ins.
    let err = bob
        .err(
            "create_checkin",
            json!({"chat_id": chat_id, "client_msg_id": "b-1", "prompt": "?",
                   "options": ["a", "b"]}),
        )
        .await;
    assert_eq!(err, "forbidden");
    let created = ann
        .ok(
            "create_checkin",
            json!({"chat_id": chat_id, "client_msg_id": "q-1",
                   "prompt": "How are you holding up?", "options": ["ok", "low", "need help"],
                   "anonymous": false}),
        )
        .await;
    let message = created["message"].clone();
    assert_eq!(message["type"], "checkin");
    assert!(message["content"].is_null());
    assert_eq!(
        message["checkin"],
        json!({"kind": "poll", "prompt": "How are you holding up?",
               "options": ["ok", "low", "need help"], "anonymous": false, "closes_at": null})
    );
    let seen = bob
        .event_where("message_received", |e| e["id"] == message["id"])
        .await;
    assert_eq!(seen["checkin"]["options"][2], "need help");

    // Answers: bad option, the poster, then bob and cat; bob changes his.
    let id = message["id"].clone();
    assert_eq!(
        bob.err("answer_checkin", json!({"message_id": id, "option": 3}))
            .await,
        "bad_request"
    );
    assert_eq!(
        ann.err("answer_checkin", json!({"message_id": id, "option": 0}))
            .await,
        "forbidden"
    );
    bob.ok("answer_checkin", json!({"message_id": id, "option": 1}))
        .await;
    cat.ok("answer_checkin", json!({"message_id": id, "option": 0}))
        .await;
    bob.ok("answer_checkin", json!({"message_id": id, "option": 2}))
        .await;
    let counts = ann
        .event_where("checkin_answered", |e| {
            e["total"] == 2 && e["counts"][2] == 1
        })
        .await;
    assert_eq!(
        counts,
        json!({"chat_id": chat_id, "message_id": id, "counts": [1, 0, 1], "total": 2})
    );
    for member in [&mut bob, &mut cat] {
        member.no_event("checkin_answered", QUIET).await;
    }

    let results = ann.ok("checkin_results", json!({"message_id": id})).await;
    assert_eq!(results["counts"], json!([1, 0, 1]));
    assert_eq!(results["total"], 2);
    let mut answers: Vec<(String, u64)> = results["answers"]
        .as_array()
        .expect("answers")
        .iter()
        .map(|a| {
            (
                s(a, "user_id").to_owned(),
                a["option"].as_u64().expect("option"),
            )
        })
        .collect();
    answers.sort();
    assert_eq!(answers, [("ci-bob".into(), 2), ("ci-cat".into(), 0)]);
    assert_eq!(
        cat.err("checkin_results", json!({"message_id": id})).await,
        "forbidden"
    );

    // Bob's answer is in his export.
    let r = server.get("/api/v1/users/me/export", "ci-bob").await;
    let doc = r.expect(200);
    let given: Vec<&Value> = doc["checkin_answers"]
        .as_array()
        .expect("checkin_answers")
        .iter()
        .filter(|a| a["message_id"] == id)
        .collect();
    assert_eq!(given.len(), 1, "{doc}");
    assert_eq!(given[0]["option"], 2);
}

#[tokio::test]
async fn anonymous_and_mood_checkins_and_resources() {
    let server = Server::start().await;
    let mut ann = server.ws("mo-ann").await;
    let mut bob = server.ws("mo-bob").await;
    let direct = ann.direct("mo-bob").await;
    let chat_id = s(&direct, "id").to_owned();
    let mood = bob
        .ok(
            "create_checkin",
            json!({"chat_id": chat_id, "client_msg_id": "m-1", "kind": "mood",
                   "prompt": "How do you feel today?", "anonymous": true}),
        )
        .await["message"]
        .clone();
    assert_eq!(mood["checkin"]["options"], json!(["1", "2", "3", "4", "5"]));
    ann.ok(
        "answer_checkin",
        json!({"message_id": mood["id"], "option": 3}),
    )
    .await;
    let results = bob
        .ok("checkin_results", json!({"message_id": mood["id"]}))
        .await;
    assert_eq!(results["answers"], Value::Null, "anonymous: {results}");
    assert_eq!(results["counts"], json!([0, 0, 0, 1, 0]));

    // A mood check-in takes no options; options need 2..=10.
    for bad in [
        json!({"chat_id": chat_id, "client_msg_id": "m-2", "kind": "mood", "prompt": "?",
               "options": ["a", "b"]}),
        json!({"chat_id": chat_id, "client_msg_id": "m-3", "prompt": "?", "options": ["a"]}),
        json!({"chat_id": chat_id, "client_msg_id": "m-4", "prompt": "", "options": ["a", "b"]}),
    ] {
        assert_eq!(bob.err("create_checkin", bad).await, "bad_request");
    }

    // Resources: https only, lengths checked, content null.
    let sent = ann
        .ok(
            "send_message",
            json!({"chat_id": chat_id, "client_msg_id": "r-1", "type": "resource",
                   "resource": {"title": "Grounding exercise",
                                "url": "https://example.org/grounding"}}),
        )
        .await["message"]
        .clone();
    assert_eq!(sent["type"], "resource");
    assert!(sent["content"].is_null());
    assert_eq!(
        sent["resource"],
        json!({"title": "Grounding exercise", "url": "https://example.org/grounding",
               "summary": null})
    );
    let got = bob
        .event_where("message_received", |e| e["id"] == sent["id"])
        .await;
    assert_eq!(got["resource"], sent["resource"]);
    for (cid, resource) in [
        ("r-2", json!({"title": "x", "url": "http://example.org"})),
        ("r-3", json!({"title": "x", "url": "javascript:alert(1)"})),
        ("r-4", json!({"title": "", "url": "https://example.org"})),
        (
            "r-5",
            json!({"title": "x", "url": "https://example.org", "summary": "s".repeat(1001)}),
        ),
    ] {
        let err = ann
            .err(
                "send_message",
                json!({"chat_id": chat_id, "client_msg_id": cid, "type": "resource",
                       "resource": resource}),
            )
            .await;
        assert_eq!(err, "bad_request", "{cid}");
    }
}

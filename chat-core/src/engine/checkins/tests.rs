//! Check-ins, mood check-ins and resource messages through the engine.

use std::sync::{Arc, Mutex};

use super::super::tests::{Client, actor, direct, group, uid};
use super::*;
use crate::{
    ErrorCode,
    engine::{PrivacyPatch, SendMessage},
    hooks::{Notification, Notifier},
    memory::MemoryStore,
    model::Resource,
};

fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    r.unwrap_err().code()
}

fn poll(chat: ChatId, cid: &str) -> NewCheckin {
    NewCheckin {
        chat_id: chat,
        client_msg_id: cid.into(),
        prompt: "How was today's session?".into(),
        options: Some(vec!["good".into(), "hard".into(), "skip".into()]),
        anonymous: None,
        closes_at: None,
        kind: None,
    }
}

#[derive(Debug, Default)]
struct Moods(Mutex<Vec<MoodSignal>>);

#[async_trait::async_trait]
impl Notifier for Moods {
    async fn notify(&self, _batch: Vec<Notification>) -> Result<()> {
        Ok(())
    }
    async fn mood(&self, signal: &MoodSignal) -> Result<()> {
        self.0.lock().unwrap().push(signal.clone());
        Ok(())
    }
}

async fn engine() -> (ChatEngine, Arc<Moods>) {
    let moods = Arc::new(Moods::default());
    let e = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .notifier(moods.clone())
        .build()
        .await
        .unwrap();
    (e, moods)
}

/// A poster who left the chat gets no more counts, and no results.
#[tokio::test]
async fn a_poster_who_left_learns_nothing_more() {
    let (e, _) = engine().await;
    let g = group(&e, "ann", &["bob", "cat"]).await;
    let q = e.create_checkin(&actor("ann"), poll(g, "q")).await.unwrap();
    e.answer_checkin(&actor("bob"), q.id, 0).await.unwrap();
    let mut ann = Client::connect(&e, "ann").await;
    e.remove_participant(&actor("ann"), g, &uid("ann"))
        .await
        .unwrap();
    ann.next_of("participant_removed").await;
    e.answer_checkin(&actor("cat"), q.id, 1).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!ann.types().iter().any(|t| t == "checkin_answered"));
    assert_eq!(
        code(e.checkin_results(&actor("ann"), q.id).await),
        ErrorCode::NotFound
    );
}

#[tokio::test]
async fn checkins_follow_the_rules_of_who_posts_answers_and_reads() {
    let (e, _) = engine().await;
    let g = group(&e, "ann", &["bob", "cat", "dan"]).await;
    e.set_role(&actor("ann"), g, &uid("bob"), Role::Moderator)
        .await
        .unwrap();
    // Members do not post check-ins; moderators and admins do.
    assert_eq!(
        code(e.create_checkin(&actor("cat"), poll(g, "x")).await),
        ErrorCode::Forbidden
    );
    let mut bob = Client::connect(&e, "bob").await;
    let mut cat = Client::connect(&e, "cat").await;
    let q = e
        .create_checkin(&actor("bob"), poll(g, "q1"))
        .await
        .unwrap();
    assert_eq!(q.kind, MessageType::Checkin);
    assert_eq!(q.content, None);
    let checkin = q.checkin.clone().unwrap();
    assert_eq!(checkin.options.len(), 3);
    assert_eq!(
        cat.next_of("message_received").await["checkin"]["prompt"],
        checkin.prompt
    );
    // Idempotent per client_msg_id.
    let again = e
        .create_checkin(&actor("bob"), poll(g, "q1"))
        .await
        .unwrap();
    assert_eq!(again.id, q.id);

    // Answers: not the poster, an option in range, changeable.
    assert_eq!(
        code(e.answer_checkin(&actor("bob"), q.id, 0).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(e.answer_checkin(&actor("cat"), q.id, 3).await),
        ErrorCode::BadRequest
    );
    e.answer_checkin(&actor("cat"), q.id, 0).await.unwrap();
    e.answer_checkin(&actor("dan"), q.id, 1).await.unwrap();
    e.answer_checkin(&actor("cat"), q.id, 1).await.unwrap();
    let mut last = serde_json::Value::Null;
    for _ in 0..3 {
        last = bob.next_of("checkin_answered").await;
    }
    assert_eq!(last["counts"], serde_json::json!([0, 2, 0]));
    assert_eq!(last["total"], 2);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!cat.types().iter().any(|t| t == "checkin_answered"));

    // Results: the poster and admins; members never.
    let results = e.checkin_results(&actor("bob"), q.id).await.unwrap();
    assert_eq!(results.counts, [0, 2, 0]);
    assert_eq!(results.answers.as_ref().map(Vec::len), Some(2));
    e.checkin_results(&actor("ann"), q.id).await.unwrap();
    assert_eq!(
        code(e.checkin_results(&actor("cat"), q.id).await),
        ErrorCode::Forbidden
    );
    // Outsiders see nothing of it.
    assert_eq!(
        code(e.answer_checkin(&actor("zed"), q.id, 0).await),
        ErrorCode::NotFound
    );

    // Anonymous: counts only, for the poster too.
    let mut anon = poll(g, "q2");
    anon.anonymous = Some(true);
    let a = e.create_checkin(&actor("ann"), anon).await.unwrap();
    e.answer_checkin(&actor("cat"), a.id, 2).await.unwrap();
    let results = e.checkin_results(&actor("ann"), a.id).await.unwrap();
    assert_eq!((results.total, results.answers), (1, None));
}

#[tokio::test]
async fn closed_checkins_refuse_answers_and_bad_input_changes_nothing() {
    let (e, _) = engine().await;
    let chat = direct(&e, "ann", "bob").await;
    let mut bad = poll(chat, "b1");
    bad.options = Some(vec!["only one".into()]);
    assert_eq!(
        code(e.create_checkin(&actor("ann"), bad).await),
        ErrorCode::BadRequest
    );
    let mut bad = poll(chat, "b2");
    bad.prompt = "  ".into();
    assert_eq!(
        code(e.create_checkin(&actor("ann"), bad).await),
        ErrorCode::BadRequest
    );
    let mut bad = poll(chat, "b3");
    bad.closes_at = Some(Timestamp::from_millis(1));
    assert_eq!(
        code(e.create_checkin(&actor("ann"), bad).await),
        ErrorCode::BadRequest
    );
    let mut mood = poll(chat, "b4");
    mood.kind = Some(CheckinKind::Mood);
    assert_eq!(
        code(e.create_checkin(&actor("ann"), mood).await),
        ErrorCode::BadRequest,
        "a mood check-in takes no options"
    );
    let history = e
        .history(&actor("ann"), chat, Default::default())
        .await
        .unwrap();
    assert!(
        history
            .messages
            .iter()
            .all(|m| m.kind != MessageType::Checkin)
    );

    // Either side of a direct chat posts one; it closes.
    let mut soon = poll(chat, "c1");
    soon.closes_at = Some(Timestamp::from_millis(e.now().as_millis() + 50));
    let q = e.create_checkin(&actor("bob"), soon).await.unwrap();
    e.answer_checkin(&actor("ann"), q.id, 0).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    assert_eq!(
        code(e.answer_checkin(&actor("ann"), q.id, 1).await),
        ErrorCode::Conflict
    );
    // Only through create_checkin.
    let mut fake = SendMessage::text(chat, "f1", "x");
    fake.kind = Some(MessageType::Checkin);
    assert_eq!(
        code(e.send(&actor("ann"), fake).await),
        ErrorCode::BadRequest
    );
}

#[tokio::test]
async fn mood_answers_reach_the_notifier_only_for_users_who_opted_in() {
    let (e, moods) = engine().await;
    let g = group(&e, "ann", &["bob", "cat"]).await;
    let mut mood = poll(g, "m1");
    mood.options = None;
    mood.kind = Some(CheckinKind::Mood);
    let q = e.create_checkin(&actor("ann"), mood).await.unwrap();
    assert_eq!(q.checkin.unwrap().options, ["1", "2", "3", "4", "5"]);
    let opt_in = PrivacyPatch {
        mood_sharing: Some(true),
        ..Default::default()
    };
    e.set_privacy(&actor("bob"), opt_in).await.unwrap();
    e.answer_checkin(&actor("bob"), q.id, 3).await.unwrap();
    e.answer_checkin(&actor("cat"), q.id, 0).await.unwrap();
    let shared = moods.0.lock().unwrap().clone();
    assert_eq!(shared.len(), 1, "cat did not opt in: {shared:?}");
    assert_eq!((shared[0].user_id.as_str(), shared[0].value), ("bob", 4));
    assert_eq!(shared[0].chat_id, g);
}

#[tokio::test]
async fn resources_are_https_links_with_checked_lengths() {
    let (e, _) = engine().await;
    let chat = direct(&e, "ann", "bob").await;
    let ann = actor("ann");
    let send = |cid: &str, resource: Resource| {
        let mut m = SendMessage::text(chat, cid, "");
        m.kind = Some(MessageType::Resource);
        m.content = None;
        m.resource = Some(resource);
        e.send(&ann, m)
    };
    let ok = Resource {
        title: "Breathing exercise".into(),
        url: "https://example.org/breathe?x=1".into(),
        summary: None,
    };
    let sent = send("r1", ok.clone()).await.unwrap();
    assert_eq!(
        (sent.content.clone(), sent.resource.clone()),
        (None, Some(ok.clone()))
    );
    for (cid, bad) in [
        (
            "r2",
            Resource {
                url: "http://example.org".into(),
                ..ok.clone()
            },
        ),
        (
            "r3",
            Resource {
                url: "javascript:alert(1)".into(),
                ..ok.clone()
            },
        ),
        (
            "r4",
            Resource {
                url: "https://".into(),
                ..ok.clone()
            },
        ),
        (
            "r5",
            Resource {
                title: String::new(),
                ..ok.clone()
            },
        ),
        (
            "r6",
            Resource {
                title: "t".repeat(201),
                ..ok.clone()
            },
        ),
        (
            "r7",
            Resource {
                summary: Some("s".repeat(1001)),
                ..ok.clone()
            },
        ),
        (
            "r8",
            Resource {
                url: format!("https://example.org/{}", "a".repeat(2048)),
                ..ok.clone()
            },
        ),
    ] {
        assert_eq!(code(send(cid, bad).await), ErrorCode::BadRequest, "{cid}");
    }
    // 200 characters of any script are fine.
    send(
        "r9",
        Resource {
            title: "é".repeat(200),
            ..ok.clone()
        },
    )
    .await
    .unwrap();
}

//! Cases of check-in answers, and of check-in and resource messages
//! round-tripping their payload.

use std::sync::Arc;

use super::*;
use crate::{
    model::{Checkin, CheckinKind, Resource},
    store::CheckinAnswer,
};

fn answer(message: &Message, user: &UserId, option: u32, secs: i64) -> CheckinAnswer {
    CheckinAnswer {
        message_id: message.id,
        chat_id: message.chat_id,
        user_id: user.clone(),
        option,
        at: at(secs),
    }
}

/// One answer per user and check-in, the latest kept in the place of the
/// first; listed per check-in and per user.
pub async fn checkin_answers_are_one_per_user(store: Arc<dyn Store>) {
    let s = &*store;
    let (ann, bob, cat) = (user("ann"), user("bob"), user("cat"));
    let g = group(s, &[&ann, &bob, &cat], at(0)).await;
    let q1 = post(s, text(g.id, &ann, "q1", "{}", at(1))).await;
    let q2 = post(s, text(g.id, &ann, "q2", "{}", at(1))).await;
    for a in [
        answer(&q1, &bob, 0, 2),
        answer(&q1, &cat, 1, 3),
        answer(&q1, &bob, 2, 4),
        answer(&q2, &bob, 1, 5),
    ] {
        ok(s.answer_checkin(a).await, "answer_checkin");
    }
    assert_eq!(
        ok(s.checkin_answers(q1.id).await, "checkin_answers"),
        [answer(&q1, &bob, 2, 4), answer(&q1, &cat, 1, 3)],
        "bob's changed answer keeps his place"
    );
    let bobs = ok(s.answers_by_user(&bob, None, 10).await, "answers_by_user");
    assert_eq!(bobs, [answer(&q1, &bob, 2, 4), answer(&q2, &bob, 1, 5)]);
    let after = ok(
        s.answers_by_user(&bob, Some(q1.id), 10).await,
        "answers_by_user",
    );
    assert_eq!(after, [answer(&q2, &bob, 1, 5)]);
    assert_eq!(
        ok(s.answers_by_user(&bob, None, 1).await, "answers_by_user").len(),
        1
    );
}

/// A check-in's and a resource's payload, posted as content, come back in
/// their fields with `content` empty.
pub async fn checkin_and_resource_messages_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let ann = user("ann");
    let g = group(s, &[&ann], at(0)).await;
    let checkin = Checkin {
        kind: CheckinKind::Mood,
        prompt: "How are you today?".into(),
        options: (1..=5).map(|i| i.to_string()).collect(),
        anonymous: true,
        closes_at: Some(at(100)),
    };
    let mut new = text(g.id, &ann, "c1", "", at(1));
    new.kind = MessageType::Checkin;
    new.content = Some(ok(
        serde_json::to_string(&checkin).map_err(Error::backend),
        "json",
    ));
    let posted = post(s, new).await;
    let stored = get_message(s, posted.id).await;
    for m in [&posted, &stored] {
        assert_eq!(m.content, None);
        assert_eq!(m.checkin.as_ref(), Some(&checkin));
    }
    let resource = Resource {
        title: "Breathing exercise".into(),
        url: "https://example.org/breathe".into(),
        summary: None,
    };
    let mut new = text(g.id, &ann, "r1", "", at(2));
    new.kind = MessageType::Resource;
    new.content = Some(ok(
        serde_json::to_string(&resource).map_err(Error::backend),
        "json",
    ));
    post(s, new).await;
    let page = ok(s.history(g.id, all_history()).await, "history");
    let shared = some(
        page.iter().find(|m| m.kind == MessageType::Resource),
        "the resource",
    );
    assert_eq!(
        (shared.content.clone(), shared.resource.clone()),
        (None, Some(resource))
    );
}

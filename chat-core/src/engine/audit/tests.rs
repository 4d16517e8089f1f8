//! Every moderation action leaves exactly one audit entry with the right
//! fields; what is no moderation leaves none; only admins read the log.

use std::{sync::Arc, time::Duration};

use super::*;
use crate::{
    ErrorCode,
    clock::ManualClock,
    engine::{ModerationAction, NewGroup, SendMessage},
    model::{Encryption, MessageId, Role, Timestamp, UserId},
    store::GroupPatch,
};

fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn user(s: &str) -> Actor {
    Actor::user(uid(s))
}

fn root() -> Actor {
    Actor::admin(uid("root"))
}

const T0_MS: i64 = 1_795_464_000_000;

async fn engine() -> (ChatEngine, Arc<ManualClock>) {
    super::super::tests::clocked_engine(T0_MS).await
}

async fn send(e: &ChatEngine, who: &str, chat: ChatId, cid: &str) -> MessageId {
    e.send(&user(who), SendMessage::text(chat, cid, "text"))
        .await
        .unwrap()
        .id
}

/// The whole log, newest first.
async fn log(e: &ChatEngine) -> Vec<AuditEntry> {
    let query = AuditQuery {
        limit: MAX_AUDIT_PAGE,
        ..AuditQuery::default()
    };
    e.audit_log(&root(), query).await.unwrap().entries
}

/// What an entry says, apart from its id and time.
type Said = (
    String,
    AuditAction,
    AuditTarget,
    String,
    Option<ChatId>,
    Option<String>,
);

fn said(e: &AuditEntry) -> Said {
    (
        e.actor_id.to_string(),
        e.action,
        e.target_type,
        e.target_id.clone(),
        e.chat_id,
        e.note.clone(),
    )
}

fn expect(
    actor: &str,
    action: AuditAction,
    target: AuditTarget,
    id: impl Display,
    chat: Option<ChatId>,
    note: Option<&str>,
) -> Said {
    (
        actor.to_owned(),
        action,
        target,
        id.to_string(),
        chat,
        note.map(str::to_owned),
    )
}

#[tokio::test]
async fn every_moderation_action_is_audited_once() {
    use AuditAction as A;
    use AuditTarget as T;
    let (e, clock) = engine().await;
    let g = NewGroup {
        name: "support".into(),
        member_ids: ["bob", "cat", "dan", "eve"].map(uid).to_vec(),
        ..Default::default()
    };
    let chat = e.create_group(&user("ann"), g).await.unwrap().chat.id;
    let group = Some(chat);
    let mut expected = Vec::new();

    // Group admins and moderators, on others.
    e.set_role(&user("ann"), chat, &uid("bob"), Role::Moderator)
        .await
        .unwrap();
    expected.push(expect(
        "ann",
        A::SetRole,
        T::User,
        "bob",
        group,
        Some("moderator"),
    ));
    let patch = GroupPatch {
        name: Some("peers".into()),
        avatar_url: Some("https://example.org/a.png".into()),
        ..GroupPatch::default()
    };
    e.update_group(&user("ann"), chat, patch).await.unwrap();
    expected.push(expect(
        "ann",
        A::UpdateGroup,
        T::Chat,
        chat,
        group,
        Some("name, avatar_url"),
    ));
    e.remove_participant(&user("bob"), chat, &uid("dan"))
        .await
        .unwrap();
    expected.push(expect(
        "bob",
        A::RemoveParticipant,
        T::User,
        "dan",
        group,
        None,
    ));
    let m1 = send(&e, "cat", chat, "m1").await;
    e.delete(&user("bob"), m1).await.unwrap();
    expected.push(expect("bob", A::DeleteMessage, T::Message, m1, group, None));
    // Deleting it again changes nothing and records nothing.
    e.delete(&user("ann"), m1).await.unwrap();
    e.moderator_delete(&root(), m1).await.unwrap();

    // Not moderation: one's own message, leaving, one's own settings.
    let own = send(&e, "cat", chat, "own").await;
    e.delete(&user("cat"), own).await.unwrap();
    e.leave(&user("eve"), chat).await.unwrap();
    e.remove_participant(&user("bob"), chat, &uid("bob"))
        .await
        .unwrap();

    // Service admins.
    let m2 = send(&e, "cat", chat, "m2").await;
    e.moderator_delete(&root(), m2).await.unwrap();
    expected.push(expect(
        "root",
        A::DeleteMessage,
        T::Message,
        m2,
        group,
        None,
    ));
    let until = Timestamp::from_millis(T0_MS + 3_600_000);
    e.suspend(&root(), &uid("dan"), Some(until)).await.unwrap();
    let note = format!("until {until}");
    expected.push(expect(
        "root",
        A::SuspendUser,
        T::User,
        "dan",
        None,
        Some(&note),
    ));
    e.unsuspend(&root(), &uid("dan")).await.unwrap();
    expected.push(expect("root", A::UnsuspendUser, T::User, "dan", None, None));

    // Reports: the resolution, and what it did, once each.
    let m3 = send(&e, "cat", chat, "m3").await;
    let r1 = e.report(&user("ann"), m3, "spam").await.unwrap();
    e.resolve_report(
        &root(),
        r1,
        ModerationAction::DeleteMessage,
        Some("spam".into()),
    )
    .await
    .unwrap();
    let via = format!("report {r1}");
    expected.push(expect(
        "root",
        A::DeleteMessage,
        T::Message,
        m3,
        group,
        Some(&via),
    ));
    expected.push(expect(
        "root",
        A::ResolveReport,
        T::Report,
        r1,
        group,
        Some("spam"),
    ));
    let m5 = send(&e, "ann", chat, "m5").await;
    let r3 = e.report(&user("cat"), m5, "rude").await.unwrap();
    e.resolve_report(&root(), r3, ModerationAction::Dismiss, Some("fine".into()))
        .await
        .unwrap();
    expected.push(expect(
        "root",
        A::ResolveReport,
        T::Report,
        r3,
        group,
        Some("fine"),
    ));
    let m4 = send(&e, "cat", chat, "m4").await;
    let r2 = e.report(&user("ann"), m4, "abuse").await.unwrap();
    let suspend = ModerationAction::SuspendUser { until: None };
    e.resolve_report(&root(), r2, suspend, None).await.unwrap();
    let via = format!("report {r2}, until {}", Timestamp::FOREVER);
    expected.push(expect(
        "root",
        A::SuspendUser,
        T::User,
        "cat",
        None,
        Some(&via),
    ));
    expected.push(expect("root", A::ResolveReport, T::Report, r2, group, None));

    // Refused actions record nothing.
    let refused = e
        .set_role(&user("cat"), chat, &uid("ann"), Role::Member)
        .await;
    assert!(refused.is_err());
    assert!(e.suspend(&user("ann"), &uid("cat"), None).await.is_err());

    clock.advance(Duration::from_secs(1));
    let entries = log(&e).await;
    let mut newest_first = expected;
    newest_first.reverse();
    assert_eq!(
        entries.iter().map(said).collect::<Vec<_>>(),
        newest_first,
        "each action once, newest first"
    );
    assert!(entries.windows(2).all(|w| w[0].id > w[1].id), "ids descend");
    assert!(
        entries.iter().all(|en| en.at.as_millis() == T0_MS),
        "stamped by the clock"
    );
}

#[tokio::test]
async fn the_log_is_for_admins_pages_and_filters() {
    let (e, _) = engine().await;
    let mut suspended = Vec::new();
    for i in 0..5 {
        let who = uid(&format!("u{i}"));
        e.suspend(&root(), &who, None).await.unwrap();
        e.unsuspend(&root(), &who).await.unwrap();
        suspended.push(who.to_string());
    }
    let page = |before, limit, action| AuditQuery {
        before,
        limit,
        actor: None,
        action,
    };
    assert_eq!(
        e.audit_log(&user("ann"), AuditQuery::default())
            .await
            .unwrap_err()
            .code(),
        ErrorCode::Forbidden
    );
    for limit in [0, MAX_AUDIT_PAGE + 1] {
        let refused = e.audit_log(&root(), page(None, limit, None)).await;
        assert_eq!(refused.unwrap_err().code(), ErrorCode::BadRequest);
    }

    // Pages of two suspensions: full pages carry a cursor, the last not.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = e
            .audit_log(&root(), page(cursor, 2, Some(AuditAction::SuspendUser)))
            .await
            .unwrap();
        assert_eq!(p.next_cursor.is_some(), p.entries.len() == 2);
        seen.extend(p.entries.iter().map(|en| en.target_id.clone()));
        cursor = p.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    suspended.reverse();
    assert_eq!(seen, suspended, "every suspension once, newest first");

    let by_root = AuditQuery {
        actor: Some(uid("root")),
        ..AuditQuery::default()
    };
    assert_eq!(
        e.audit_log(&root(), by_root).await.unwrap().entries.len(),
        10
    );
    let by_ann = AuditQuery {
        actor: Some(uid("ann")),
        ..AuditQuery::default()
    };
    let none = e.audit_log(&root(), by_ann).await.unwrap();
    assert!(none.entries.is_empty() && none.next_cursor.is_none());
}

#[tokio::test]
async fn direct_chats_have_no_moderators_to_audit() {
    let (e, _) = engine().await;
    let chat = e
        .create_direct(&user("ann"), &uid("bob"), Encryption::AtRest)
        .await
        .unwrap()
        .chat
        .chat
        .id;
    let m = send(&e, "ann", chat, "m").await;
    assert!(e.delete(&user("bob"), m).await.is_err());
    e.delete(&user("ann"), m).await.unwrap();
    assert!(log(&e).await.is_empty());
}

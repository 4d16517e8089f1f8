//! Cases of the moderation audit log: append-only, newest first, paged
//! with a cursor, filtered, and pseudonymized on erasure.

use std::sync::Arc;

use super::*;
use crate::{
    model::{AuditAction, AuditEntry, AuditId, AuditTarget},
    store::AuditQuery,
};

/// An entry of `actor` doing `action` to the user `target`, at `secs`.
fn entry(actor: &str, action: AuditAction, target: &str, secs: i64) -> AuditEntry {
    AuditEntry {
        id: AuditId::new(),
        at: at(secs),
        actor_id: user(actor),
        action,
        target_type: AuditTarget::User,
        target_id: target.to_owned(),
        chat_id: None,
        note: None,
    }
}

async fn append_all(s: &dyn Store, entries: &[AuditEntry]) {
    for e in entries {
        ok(s.append_audit(e.clone()).await, "append_audit");
    }
}

/// A query of the whole log (of what the cases append).
fn whole_log() -> AuditQuery {
    AuditQuery {
        limit: 100,
        ..AuditQuery::default()
    }
}

async fn list(s: &dyn Store, query: AuditQuery) -> Vec<AuditEntry> {
    ok(s.list_audit(query).await, "list_audit")
}

/// Every page of `query` (its `limit` per page), following the cursor
/// until a page comes back short, concatenated.
async fn all_pages(s: &dyn Store, mut query: AuditQuery) -> Vec<AuditEntry> {
    let mut out = Vec::new();
    loop {
        let page = list(s, query.clone()).await;
        assert!(page.len() <= query.limit, "a page holds at most limit");
        let full = page.len() == query.limit;
        query.before = page.last().map(|e| e.id);
        out.extend(page);
        if !full {
            return out;
        }
    }
}

fn ids(entries: &[AuditEntry]) -> Vec<AuditId> {
    entries.iter().map(|e| e.id).collect()
}

/// Every field of every action and target type comes back as appended;
/// an id appended twice is a `Conflict` that changes nothing.
pub async fn audit_entries_round_trip(store: Arc<dyn Store>) {
    let s = &*store;
    let targets = [
        AuditTarget::User,
        AuditTarget::Message,
        AuditTarget::Report,
        AuditTarget::Chat,
    ];
    let mut appended = Vec::new();
    for (i, &action) in AuditAction::ALL.iter().enumerate() {
        let target = targets[i % targets.len()];
        let target_id = match target {
            AuditTarget::User => "bob".to_owned(),
            AuditTarget::Message => MessageId::new().to_string(),
            AuditTarget::Report => ReportId::new().to_string(),
            AuditTarget::Chat => ChatId::new().to_string(),
        };
        let with_extras = i % 2 == 0;
        appended.push(AuditEntry {
            id: AuditId::new(),
            at: at(i as i64),
            actor_id: user("admin"),
            action,
            target_type: target,
            target_id,
            chat_id: with_extras.then(ChatId::new),
            note: with_extras.then(|| format!("note {i}: \"quoted\", ünïcödé")),
        });
    }
    append_all(s, &appended).await;
    let read = list(s, whole_log()).await;
    let mut expected = appended.clone();
    expected.reverse();
    assert_eq!(
        read, expected,
        "entries come back as appended, newest first"
    );

    let mut again = appended[0].clone();
    again.note = Some("rewritten".to_owned());
    conflict(s.append_audit(again).await, "append_audit of a stored id");
    let read = list(s, whole_log()).await;
    assert_eq!(read, expected, "a refused append changes nothing");
}

/// Pages follow the cursor newest first, each at most `limit` long,
/// neither repeating nor skipping an entry.
pub async fn audit_pages_newest_first_without_gaps(store: Arc<dyn Store>) {
    let s = &*store;
    let appended: Vec<AuditEntry> = (0..7)
        .map(|i| entry("admin", AuditAction::SuspendUser, "bob", i))
        .collect();
    append_all(s, &appended).await;
    let mut newest_first = ids(&appended);
    newest_first.reverse();

    for limit in [1, 2, 3, 7, 10] {
        let query = AuditQuery {
            limit,
            ..AuditQuery::default()
        };
        let first = list(s, query.clone()).await;
        assert_eq!(
            ids(&first),
            newest_first[..limit.min(7)],
            "the first page of {limit}"
        );
        let paged = all_pages(s, query).await;
        assert_eq!(ids(&paged), newest_first, "every page of {limit}");
    }

    // A cursor that is no entry's id still pages by time.
    let between = AuditId::new();
    let later = entry("admin", AuditAction::SuspendUser, "bob", 8);
    append_all(s, std::slice::from_ref(&later)).await;
    let older = list(
        s,
        AuditQuery {
            before: Some(between),
            ..whole_log()
        },
    )
    .await;
    assert_eq!(ids(&older), newest_first, "entries older than the cursor");
    assert!(
        list(
            s,
            AuditQuery {
                before: Some(appended[0].id),
                ..whole_log()
            }
        )
        .await
        .is_empty(),
        "nothing is older than the oldest"
    );
}

/// `actor` and `action` filter, alone and together, and page like the
/// whole log.
pub async fn audit_filters_by_actor_and_action(store: Arc<dyn Store>) {
    let s = &*store;
    let actions = [
        AuditAction::SuspendUser,
        AuditAction::DeleteMessage,
        AuditAction::SetRole,
    ];
    let actors = ["ann", "ben"];
    let mut appended = Vec::new();
    for i in 0..12 {
        appended.push(entry(
            actors[i % 2],
            actions[i % 3],
            "carol",
            i64::try_from(i).unwrap_or(0),
        ));
    }
    append_all(s, &appended).await;

    let cases = [
        (Some("ann"), None),
        (Some("ben"), None),
        (None, Some(AuditAction::DeleteMessage)),
        (Some("ann"), Some(AuditAction::SetRole)),
        (Some("ben"), Some(AuditAction::SetRole)),
        (Some("nobody"), None),
        (None, Some(AuditAction::EraseUser)),
    ];
    for (actor, action) in cases {
        let expected: Vec<AuditId> = appended
            .iter()
            .rev()
            .filter(|e| actor.is_none_or(|a| e.actor_id.as_str() == a))
            .filter(|e| action.is_none_or(|a| e.action == a))
            .map(|e| e.id)
            .collect();
        let query = AuditQuery {
            before: None,
            limit: 100,
            actor: actor.map(user),
            action,
        };
        let what = format!("actor {actor:?}, action {action:?}");
        assert_eq!(ids(&list(s, query.clone()).await), expected, "{what}");
        let paged = all_pages(
            s,
            AuditQuery {
                limit: 1,
                ..query.clone()
            },
        )
        .await;
        assert_eq!(ids(&paged), expected, "{what}, one per page");
        let two = list(s, AuditQuery { limit: 2, ..query }).await;
        assert_eq!(
            ids(&two),
            expected[..expected.len().min(2)],
            "{what}, limit"
        );
    }
}

/// Pseudonymizing a user replaces them as actor and as the target of
/// `user` entries, nowhere else, and counts the entries changed.
pub async fn pseudonymize_audit_replaces_the_user_only(store: Arc<dyn Store>) {
    let s = &*store;
    let mut appended = vec![
        entry("alice", AuditAction::SuspendUser, "bob", 1),
        entry("bob", AuditAction::SuspendUser, "alice", 2),
        entry("alice", AuditAction::SetRole, "alice", 3),
        entry("bob", AuditAction::DeleteMessage, "alice", 4),
        entry("carol", AuditAction::UnsuspendUser, "bob", 5),
        entry("alicia", AuditAction::UnsuspendUser, "alicia", 6),
    ];
    // A target that is not a user is never a user's id, whatever it reads.
    appended[3].target_type = AuditTarget::Message;
    append_all(s, &appended).await;
    let pseudonym = user("erased-01");
    let changed = ok(
        s.pseudonymize_audit(&user("alice"), &pseudonym).await,
        "pseudonymize_audit",
    );
    assert_eq!(changed, 3, "three entries name alice as actor or user");

    let mut expected = appended.clone();
    expected[0].actor_id = pseudonym.clone();
    expected[1].target_id = pseudonym.to_string();
    expected[2].actor_id = pseudonym.clone();
    expected[2].target_id = pseudonym.to_string();
    expected.reverse();
    let all = whole_log();
    assert_eq!(
        list(s, all.clone()).await,
        expected,
        "only alice is replaced"
    );
    let by_alice = AuditQuery {
        actor: Some(user("alice")),
        ..all.clone()
    };
    assert!(list(s, by_alice).await.is_empty(), "alice acts nowhere");
    let by_pseudonym = AuditQuery {
        actor: Some(pseudonym.clone()),
        ..all
    };
    assert_eq!(list(s, by_pseudonym).await.len(), 2, "the pseudonym acts");
    assert_eq!(
        ok(
            s.pseudonymize_audit(&user("alice"), &pseudonym).await,
            "pseudonymize_audit again"
        ),
        0,
        "nothing is left to change"
    );
}

//! The rules of erasure, on the memory store, an in-memory media store and
//! an in-memory key store.

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, stream};

use super::super::tests::{actor, direct, uid};
use super::*;
use crate::{
    ErrorCode,
    clock::SystemClock,
    crypto::MasterKey,
    engine::{HistoryRequest, MediaConfig, ModerationAction, NewGroup, SendMessage, Upload},
    keystore::{Keyring, KeyringConfig, MemoryKeyStore},
    media::ObjectMediaStore,
    memory::MemoryStore,
    model::{ChatId, Encryption, MessageId, MessageType, Role},
    store::{AuditQuery, Store},
    testing::media as fixtures,
};

fn admin() -> Actor {
    Actor::admin(uid("root"))
}

struct Setup {
    engine: ChatEngine,
    store: Arc<MemoryStore>,
    keyring: Arc<Keyring>,
}

async fn setup() -> Setup {
    let store = Arc::new(MemoryStore::new());
    let keyring = Arc::new(
        Keyring::new(
            MasterKey::generate().unwrap(),
            Arc::new(MemoryKeyStore::new()),
            Arc::new(SystemClock),
            KeyringConfig::default(),
        )
        .await
        .unwrap(),
    );
    let engine = ChatEngine::builder(store.clone())
        .media(Arc::new(ObjectMediaStore::memory()), MediaConfig::default())
        .encrypt_at_rest(keyring.clone())
        .build()
        .await
        .unwrap();
    Setup {
        engine,
        store,
        keyring,
    }
}

async fn text(e: &ChatEngine, who: &str, chat: ChatId, cid: &str, body: &str) -> MessageId {
    e.send(&actor(who), SendMessage::text(chat, cid, body))
        .await
        .unwrap()
        .id
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    r.unwrap_err().code()
}

/// Ann (admin of a group with Bob and Cat, and in a direct chat with
/// Bob) sends, uploads, reacts, blocks, is reported and audited, then
/// erases herself.
#[tokio::test]
async fn erasure_removes_the_user_and_keeps_only_held_evidence() {
    let Setup {
        engine: e,
        store,
        keyring,
    } = setup().await;
    let pair = direct(&e, "ann", "bob").await;
    let group = NewGroup {
        name: "circle".into(),
        description: None,
        avatar_url: None,
        member_ids: vec![uid("bob"), uid("cat")],
        encryption: Encryption::AtRest,
    };
    let group = e.create_group(&actor("ann"), group).await.unwrap().chat.id;
    let secret = text(&e, "ann", pair, "a1", "marker-7c1 I feel unsafe").await;
    let threat = text(&e, "ann", group, "a2", "you will regret this").await;
    let old = text(&e, "ann", group, "a3", "an old insult").await;
    let upload = Upload::new(stream::iter([Ok(Bytes::from(fixtures::png(8, 8)))]).boxed());
    let image = e.upload(&actor("ann"), group, upload).await.unwrap();
    let photo = SendMessage {
        chat_id: group,
        client_msg_id: "a4".into(),
        kind: Some(MessageType::Image),
        content: None,
        media_id: Some(image.id),
        reply_to: None,
        resource: None,
    };
    e.send(&actor("ann"), photo).await.unwrap();
    let bobs = text(&e, "bob", group, "b1", "hello all").await;
    e.react(&actor("ann"), bobs, "👍").await.unwrap();
    e.react(&actor("cat"), bobs, "👍").await.unwrap();
    e.block(&actor("ann"), &uid("cat")).await.unwrap();
    e.block(&actor("cat"), &uid("ann")).await.unwrap();
    let patch = crate::engine::PrivacyPatch {
        presence: Some(false),
        ..Default::default()
    };
    e.set_privacy(&actor("ann"), patch).await.unwrap();
    let held = e.report(&actor("bob"), threat, "threat").await.unwrap();
    let closed = e.report(&actor("cat"), old, "insult").await.unwrap();
    e.resolve_report(&admin(), closed, ModerationAction::Dismiss, None)
        .await
        .unwrap();
    let filed = e.report(&actor("ann"), bobs, "spam").await.unwrap();
    e.suspend(&admin(), &uid("ann"), Some(Timestamp::from_millis(1)))
        .await
        .unwrap();

    let done = e.erase_user(&actor("ann"), &uid("ann")).await.unwrap();
    assert_eq!(
        done.removed,
        Removed {
            messages: 4,
            media: 1,
            reactions: 1,
            memberships: 2,
            blocks: 1,
            keys: 1,
            key_packages: 0,
            reports_filed: 1,
            report_snapshots: 1,
            // The suspension.
            audit_entries: 1,
            checkin_answers: 0,
        }
    );
    assert_eq!(done.kept, Kept { reports_on_hold: 1 });

    // For the others: tombstones under a pseudonym, in place.
    let page = e
        .history(&actor("bob"), group, HistoryRequest::default())
        .await
        .unwrap();
    let by_id = |id| page.messages.iter().find(|m| m.id == id).unwrap();
    let tomb = by_id(threat);
    assert!(tomb.deleted && tomb.content.is_none());
    assert!(tomb.sender_id.as_str().starts_with("erased-"), "{tomb:?}");
    assert!(by_id(bobs).reactions.get("👍").unwrap() == &vec![uid("cat")]);
    let view = e.get_chat(&actor("bob"), group).await.unwrap();
    assert!(view.chat.participant(&uid("ann")).is_none());
    assert!(
        view.chat.participants.iter().any(|p| p.role == Role::Admin),
        "the group got an heir"
    );
    let dm = e
        .history(&actor("bob"), pair, HistoryRequest::default())
        .await
        .unwrap();
    assert!(dm.messages.iter().all(|m| m.id != secret || m.deleted));
    assert!(
        store.get_media(image.id).await.unwrap().is_none(),
        "the upload is gone"
    );

    // Nothing of Ann's is left: no record, no block, no chat.
    assert_eq!(store.get_user(&uid("ann")).await.unwrap(), None);
    assert!(store.blocked_by_user(&uid("ann")).await.unwrap().is_empty());
    assert_eq!(
        store.blocked_by_user(&uid("cat")).await.unwrap(),
        [uid("ann")],
        "Cat's block protects Cat, and stays"
    );
    let audit = e.audit_log(&admin(), AuditQuery::default()).await.unwrap();
    assert!(
        audit
            .entries
            .iter()
            .all(|a| a.actor_id != uid("ann") && a.target_id != "ann"),
        "{audit:?}"
    );
    assert!(
        audit
            .entries
            .iter()
            .any(|a| a.action == AuditAction::EraseUser && a.target_id.starts_with("erased-"))
    );
    let filed = store.get_report(filed).await.unwrap().unwrap();
    assert!(filed.reason.is_empty() && filed.reporter_id != uid("ann"));

    // Evidence: the open report keeps its snapshot, readable, on hold; the
    // closed one lost it.
    let reports = e
        .list_reports(&admin(), ReportQuery::new(10))
        .await
        .unwrap();
    let report = |id| reports.iter().find(|r| r.id == id).unwrap().clone();
    let on_hold = report(held);
    assert!(on_hold.legal_hold);
    assert_eq!(on_hold.content.as_deref(), Some("you will regret this"));
    let pseudonym = on_hold.reported_user_id.clone();
    assert_ne!(pseudonym, uid("ann"));
    assert_eq!(report(closed).content, None);
    assert!(report(closed).view().snapshot.is_none());

    // Resolving it ends the hold: the snapshot and its key go.
    let resolved = e
        .resolve_report(&admin(), held, ModerationAction::Dismiss, None)
        .await
        .unwrap();
    assert_eq!(resolved.content, None);
    assert!(resolved.view().snapshot.is_none());
    assert!(
        !keyring.erase_user(&pseudonym).await.unwrap(),
        "the pseudonym's key is gone already"
    );

    // Erasing again finds nothing more (but its own audit entry).
    let again = e.erase_user(&actor("ann"), &uid("ann")).await.unwrap();
    assert_eq!(again.removed.messages + again.removed.memberships, 0);
    assert_eq!(again.kept.reports_on_hold, 0);

    // The id is a new, empty user: the same client_msg_id is a new
    // message, in a new direct chat with Bob.
    let fresh = direct(&e, "ann", "bob").await;
    assert_ne!(fresh, pair);
    let new = text(&e, "ann", fresh, "a1", "hi again").await;
    assert_ne!(new, secret);
    let mine = e
        .list_chats(
            &actor("ann"),
            crate::store::ChatListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(mine.chats.len(), 1);
}

#[tokio::test]
async fn only_admins_erase_others_and_unknown_users_are_not_found() {
    let Setup { engine: e, .. } = setup().await;
    let chat = direct(&e, "ann", "bob").await;
    text(&e, "ann", chat, "a1", "hi").await;
    assert_eq!(
        code(e.erase_user(&actor("bob"), &uid("ann")).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(e.erase_user(&admin(), &uid("nobody")).await),
        ErrorCode::NotFound
    );
    // Refused: nothing changed, Ann is not even suspended.
    e.authorize(uid("ann"), false).await.unwrap();
    text(&e, "ann", chat, "a2", "still here").await;

    let done = e.erase_user(&admin(), &uid("ann")).await.unwrap();
    assert_eq!((done.removed.messages, done.removed.memberships), (2, 1));
    // A user with nothing stored may erase themselves: nothing to remove.
    let empty = e.erase_user(&actor("zed"), &uid("zed")).await.unwrap();
    assert_eq!(empty.removed, Removed::default());
}

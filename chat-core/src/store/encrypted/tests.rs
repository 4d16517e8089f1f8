//! What the wrapped store holds, and what readers get back when content
//! does not open.

use super::*;
use crate::{
    MemoryStore,
    clock::SystemClock,
    crypto::MasterKey,
    keystore::{KeyringConfig, MemoryKeyStore},
    model::{ChatKind, Encryption, MessageType, ReportStatus},
    store::NewMessage,
};

fn uid(s: &str) -> UserId {
    UserId::new(s).expect("a valid id")
}

struct Setup {
    inner: Arc<MemoryStore>,
    store: EncryptedStore,
    chat: ChatId,
}

async fn setup() -> Setup {
    let keyring = Keyring::new(
        MasterKey::generate().expect("a key"),
        Arc::new(MemoryKeyStore::new()),
        Arc::new(SystemClock),
        KeyringConfig::default(),
    )
    .await
    .expect("a keyring");
    let inner = Arc::new(MemoryStore::new());
    let store = EncryptedStore::new(inner.clone(), Arc::new(keyring));
    let (chat, _) = store
        .create_chat(NewChat {
            id: ChatId::new(),
            kind: ChatKind::Group,
            encryption: Encryption::AtRest,
            name: Some("circle".into()),
            description: None,
            avatar_url: None,
            created_at: Timestamp::from_millis(1_000),
            participants: vec![
                (uid("ann"), crate::model::Role::Admin),
                (uid("bob"), crate::model::Role::Member),
            ],
        })
        .await
        .expect("a chat");
    Setup {
        inner,
        store,
        chat: chat.id,
    }
}

/// The chat's last messages, through the encrypted store.
async fn page(s: &Setup) -> Vec<Message> {
    let query = HistoryQuery {
        before_seq: None,
        after_seq: None,
        from_seq: 0,
        limit: 10,
    };
    s.store
        .history(s.chat, query)
        .await
        .expect("the page reads")
}

/// A text message by `sender` in the setup's chat.
fn new_text(s: &Setup, sender: &str, text: &str) -> NewMessage {
    NewMessage {
        mls: None,
        id: MessageId::new(),
        chat_id: s.chat,
        sender_id: uid(sender),
        kind: MessageType::Text,
        content: Some(text.into()),
        media: None,
        reply_to: None,
        client_msg_id: Some(format!("c-{}", MessageId::new())),
        system: None,
        created_at: Timestamp::from_millis(2_000),
    }
}

async fn post(s: &Setup, sender: &str, text: &str) -> Message {
    let new = new_text(s, sender, text);
    let mut results = s.store.apply(vec![Change::Post(new)]).await;
    match results.pop() {
        Some(Ok(Committed {
            applied: Applied::Posted { message, .. },
            ..
        })) => message,
        other => panic!("expected a post, got {other:?}"),
    }
}

#[tokio::test]
async fn the_wrapped_store_holds_only_ciphertext() {
    let s = setup().await;
    let posted = post(&s, "ann", "the marker 7f3a9c").await;
    assert_eq!(posted.content.as_deref(), Some("the marker 7f3a9c"));
    let raw = s
        .inner
        .get_message(posted.id)
        .await
        .expect("a read")
        .expect("the message");
    let stored = raw.content.unwrap_or_default();
    assert!(stored.starts_with(SEALED), "{stored}");
    assert!(!stored.contains("7f3a9c"));
    let read = s.store.get_message(posted.id).await.expect("a read");
    assert_eq!(
        read.and_then(|m| m.content).as_deref(),
        Some("the marker 7f3a9c")
    );
    // An edit is sealed the same way.
    let edit = Change::Edit {
        chat_id: s.chat,
        message_id: posted.id,
        content: "edited 0c41".into(),
        at: Timestamp::from_millis(3_000),
    };
    let result = s.store.apply(vec![edit]).await.pop();
    assert!(matches!(result, Some(Ok(_))), "{result:?}");
    let raw = s.inner.get_message(posted.id).await.expect("a read");
    assert!(
        !raw.and_then(|m| m.content)
            .unwrap_or_default()
            .contains("0c41")
    );
    let history = page(&s).await;
    assert_eq!(history[0].content.as_deref(), Some("edited 0c41"));
}

#[tokio::test]
async fn an_erased_sender_reads_as_erased_and_others_still_read() {
    let s = setup().await;
    let from_ann = post(&s, "ann", "ann writes").await;
    let from_bob = post(&s, "bob", "bob writes").await;
    assert!(
        s.store
            .keyring()
            .erase_user(&uid("ann"))
            .await
            .expect("erased")
    );
    let ann = s
        .store
        .get_message(from_ann.id)
        .await
        .expect("a read")
        .expect("kept");
    assert_eq!(ann.content, None);
    assert_eq!(ann.unreadable, Some(Unreadable::Erased));
    let bob = s
        .store
        .get_message(from_bob.id)
        .await
        .expect("a read")
        .expect("kept");
    assert_eq!(bob.content.as_deref(), Some("bob writes"));
    assert_eq!(bob.unreadable, None);
    // The same through a page, where keys are looked up once per sender.
    let history = page(&s).await;
    let of = |id| history.iter().find(|m| m.id == id).expect("kept");
    assert_eq!(of(from_ann.id).unreadable, Some(Unreadable::Erased));
    assert_eq!(of(from_bob.id).content.as_deref(), Some("bob writes"));
}

#[tokio::test]
async fn a_damaged_body_fails_that_message_alone() {
    let s = setup().await;
    let first = post(&s, "ann", "first").await;
    post(&s, "ann", "second").await;
    // Damage the first body as stored: sealed bytes from another message.
    let other = post(&s, "ann", "third").await;
    let raw_other = s
        .inner
        .get_message(other.id)
        .await
        .expect("a read")
        .and_then(|m| m.content)
        .expect("content");
    let swap = Change::Edit {
        chat_id: s.chat,
        message_id: first.id,
        content: "placeholder".into(),
        at: Timestamp::from_millis(4_000),
    };
    // Through the inner store: a body copied from another row.
    let swap = match swap {
        Change::Edit {
            chat_id,
            message_id,
            at,
            ..
        } => Change::Edit {
            chat_id,
            message_id,
            content: raw_other,
            at,
        },
        other => other,
    };
    assert!(matches!(s.inner.apply(vec![swap]).await.pop(), Some(Ok(_))));
    let history = page(&s).await;
    let damaged = history.iter().find(|m| m.id == first.id).expect("kept");
    assert_eq!(damaged.unreadable, Some(Unreadable::Damaged));
    assert_eq!(damaged.content, None);
    assert!(
        history
            .iter()
            .filter(|m| m.id != first.id)
            .all(|m| m.unreadable.is_none() && m.content.is_some()),
        "the others read"
    );
}

/// Posts straight into the inner store: content as an older server wrote
/// it, in plaintext.
async fn post_plain(s: &Setup, sender: &str, text: &str) -> MessageId {
    let new = new_text(s, sender, text);
    let id = new.id;
    let result = s.inner.apply(vec![Change::Post(new)]).await.pop();
    assert!(matches!(result, Some(Ok(_))), "{result:?}");
    id
}

async fn raw_content(s: &Setup, id: MessageId) -> String {
    s.inner
        .get_message(id)
        .await
        .expect("a read")
        .and_then(|m| m.content)
        .unwrap_or_default()
}

#[tokio::test]
async fn existing_plaintext_is_sealed_in_resumable_batches() {
    let s = setup().await;
    let mut plain = Vec::new();
    for i in 0..7 {
        plain.push(
            post_plain(
                &s,
                if i % 2 == 0 { "ann" } else { "bob" },
                &format!("old {i}"),
            )
            .await,
        );
    }
    let already = post(&s, "ann", "new, sealed on the way in").await;
    // A report snapshot written before encryption, too.
    let report = Report {
        id: ReportId::new(),
        reporter_id: uid("bob"),
        chat_id: s.chat,
        message_id: plain[0],
        reported_user_id: uid("ann"),
        reason: "harassment".into(),
        content: Some("old 0".into()),
        kind: Default::default(),
        media: None,
        status: ReportStatus::Open,
        created_at: Timestamp::from_millis(2_500),
        resolved_at: None,
        resolved_by: None,
        resolution_note: None,
        legal_hold: false,
    };
    s.inner.insert_report(report.clone()).await.expect("stored");
    let before = raw_content(&s, already.id).await;

    // Readers see legacy plaintext as it is, before and after.
    let history = page(&s).await;
    assert!(
        history
            .iter()
            .any(|m| m.content.as_deref() == Some("old 3"))
    );

    // A first run that stops after one batch (as a crash would): resumed
    // from the saved position, nothing sealed twice, nothing missed.
    let texts = s
        .inner
        .stored_texts(TextTable::Messages, None, 3)
        .await
        .expect("a read");
    assert_eq!(texts.len(), 3);
    s.inner
        .set_meta(MIGRATION_AT, &format!("messages:{}", texts[2].row))
        .await
        .expect("saved");
    // (The three rows before the saved position stay plaintext in this
    // staged crash; a `from_start` run below picks them up.)
    let done = s.store.seal_existing(2, false).await.expect("sealed");
    assert_eq!(
        done.sealed,
        4 + 1,
        "four messages after the position, one report"
    );
    assert_eq!(
        raw_content(&s, already.id).await,
        before,
        "sealed rows untouched"
    );
    let again = s.store.seal_existing(2, false).await.expect("no-op");
    assert!(again.already_done);
    let rest = s.store.seal_existing(2, true).await.expect("sealed");
    assert_eq!(rest.sealed, 3);
    assert_eq!(rest.scanned, 8 + 1);

    for (i, id) in plain.iter().enumerate() {
        let raw = raw_content(&s, *id).await;
        assert!(raw.starts_with(SEALED), "message {i} sealed: {raw}");
    }
    let history = page(&s).await;
    for i in 0..7 {
        let text = format!("old {i}");
        assert!(
            history
                .iter()
                .any(|m| m.content.as_deref() == Some(text.as_str()))
        );
    }
    let raw = s
        .inner
        .get_report(report.id)
        .await
        .expect("a read")
        .expect("kept");
    assert!(raw.content.unwrap_or_default().starts_with(SEALED));
    let opened = s
        .store
        .get_report(report.id)
        .await
        .expect("a read")
        .expect("kept");
    assert_eq!(opened.content.as_deref(), Some("old 0"));
}

#[tokio::test]
async fn a_row_changed_since_it_was_read_keeps_its_new_content() {
    let s = setup().await;
    let id = post_plain(&s, "ann", "old text").await;
    let sealed_edit = "\u{1}v1:not-really".to_string();
    let replaced = s
        .inner
        .replace_texts(vec![TextReplacement {
            table: TextTable::Messages,
            row: id.to_string(),
            old: "something else".into(),
            new: sealed_edit,
        }])
        .await
        .expect("replaced");
    assert_eq!(replaced, 0, "the row does not hold `old`");
    assert_eq!(raw_content(&s, id).await, "old text");
}

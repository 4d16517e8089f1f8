//! What the wrapped store holds, and what readers get back when content
//! does not open.

use super::*;
use crate::{
    MemoryStore,
    clock::SystemClock,
    crypto::MasterKey,
    keystore::{KeyringConfig, MemoryKeyStore},
    model::{ChatKind, Encryption, MessageType},
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

async fn post(s: &Setup, sender: &str, text: &str) -> Message {
    let new = NewMessage {
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
    };
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

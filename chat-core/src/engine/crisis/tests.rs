//! Crisis escalation through the engine: who gets what, once, and never
//! for e2ee chats.

use std::{sync::Arc, time::Duration};

use super::super::tests::{Client, actor, direct, group, send, uid};
use super::*;
use crate::{
    care::SupportResource,
    engine::Actor,
    memory::MemoryStore,
    model::{ChatId, Encryption, MessageId},
};

fn crisis() -> CrisisConfig {
    CrisisConfig::new(
        &["want to die", "kill myself"],
        vec![uid("counselor")],
        vec![SupportResource {
            title: "Crisis line".into(),
            url: Some("https://example.org/help".into()),
            phone: Some("988".into()),
        }],
    )
    .unwrap()
}

async fn engine() -> ChatEngine {
    ChatEngine::builder(Arc::new(MemoryStore::new()))
        .crisis(crisis())
        .build()
        .await
        .unwrap()
}

/// The open crisis flags in the report queue: (message, reason).
async fn flags(e: &ChatEngine) -> Vec<(MessageId, String)> {
    let reports = e
        .list_reports(&Actor::admin(uid("root")), ReportQuery::new(50))
        .await
        .unwrap();
    reports
        .into_iter()
        .map(|r| (r.message_id, r.reason))
        .collect()
}

#[tokio::test]
async fn a_matching_message_alerts_responders_and_shows_the_sender_help_only() {
    let e = engine().await;
    let chat = group(&e, "ann", &["bob"]).await;
    let mut counselor = Client::connect(&e, "counselor").await;
    let mut ann = Client::connect(&e, "ann").await;
    let mut bob = Client::connect(&e, "bob").await;
    let m = send(&e, "ann", chat, "c1", "Sometimes I WANT to díe.")
        .await
        .unwrap();

    let alert = counselor.next_of("crisis_alert").await;
    assert_eq!(alert["chat_id"], chat.to_string());
    assert_eq!(alert["message_id"], m.id.to_string());
    assert_eq!(alert["sender_id"], "ann");
    assert_eq!(alert["matched"], "want to die");
    let help = ann.next_of("support_resources").await;
    assert_eq!(help["message_id"], m.id.to_string());
    assert_eq!(help["resources"][0]["phone"], "988");
    // Bob gets the message as any other, and nothing else of it.
    assert_eq!(
        bob.next_of("message_received").await["id"],
        m.id.to_string()
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    let others = bob.types();
    assert!(
        !others
            .iter()
            .any(|t| t == "crisis_alert" || t == "support_resources"),
        "{others:?}"
    );
    assert_eq!(flags(&e).await, [(m.id, "crisis: want to die".to_owned())]);

    // A retry of the stored message alerts nobody again.
    let again = send(&e, "ann", chat, "c1", "Sometimes I WANT to díe.")
        .await
        .unwrap();
    assert_eq!(again.id, m.id);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!counselor.types().iter().any(|t| t == "crisis_alert"));
    assert_eq!(flags(&e).await.len(), 1);

    // Near misses do not match; an edit that matches does.
    let calm = send(&e, "ann", chat, "c2", "I want to diet").await.unwrap();
    e.edit(&actor("ann"), calm.id, "I could kill myself")
        .await
        .unwrap();
    let alert = counselor.next_of("crisis_alert").await;
    assert_eq!(
        (alert["message_id"].clone(), alert["matched"].clone()),
        (calm.id.to_string().into(), "kill myself".into())
    );
}

#[tokio::test]
async fn a_responder_who_connects_later_gets_the_open_alerts() {
    let e = engine().await;
    let chat = direct(&e, "ann", "bob").await;
    let m = send(&e, "ann", chat, "c1", "i want to die").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut counselor = Client::connect(&e, "counselor").await;
    let alert = counselor.next_of("crisis_alert").await;
    assert_eq!(alert["message_id"], m.id.to_string());
    assert_eq!(alert["matched"], "want to die");
    // Others connecting get none.
    let mut bob = Client::connect(&e, "bob").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!bob.types().iter().any(|t| t == "crisis_alert"));
}

#[tokio::test]
async fn e2ee_chats_and_engines_without_crisis_settings_are_not_scanned() {
    let plain = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .build()
        .await
        .unwrap();
    let chat: ChatId = direct(&plain, "ann", "bob").await;
    send(&plain, "ann", chat, "c1", "i want to die")
        .await
        .unwrap();
    assert!(flags(&plain).await.is_empty());

    let e = engine().await;
    let m = Message {
        mls: None,
        id: MessageId::new(),
        chat_id: chat,
        seq: 1,
        updated_seq: 1,
        sender_id: uid("ann"),
        kind: crate::model::MessageType::Text,
        content: Some("want to die".into()),
        media: None,
        reply_to: None,
        client_msg_id: None,
        created_at: e.now(),
        edited_at: None,
        deleted: false,
        reactions: Default::default(),
        system: None,
        unreadable: None,
        checkin: None,
        resource: None,
    };
    assert_eq!(e.crisis_match(Encryption::E2ee, &m), None);
    assert_eq!(
        e.crisis_match(Encryption::AtRest, &m).as_deref(),
        Some("want to die")
    );
}

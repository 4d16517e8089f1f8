//! The keyring over a memory key store, on a manual clock.

use std::time::Duration;

use super::*;
use crate::{clock::ManualClock, keystore::MemoryKeyStore};

fn uid(s: &str) -> UserId {
    UserId::new(s).expect("a valid id")
}

struct Setup {
    store: Arc<MemoryKeyStore>,
    clock: Arc<ManualClock>,
    keyring: Keyring,
}

async fn setup(epochs: EpochPolicy) -> Setup {
    let store = Arc::new(MemoryKeyStore::new());
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_800_000_000_000)));
    let config = KeyringConfig {
        epochs,
        cached_keys: 100,
    };
    let master = MasterKey::generate().expect("a master key");
    let keyring = Keyring::new(master, store.clone(), clock.clone(), config)
        .await
        .expect("a keyring");
    Setup {
        store,
        clock,
        keyring,
    }
}

fn text(opened: Opened) -> String {
    match opened {
        Opened::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn a_body_opens_only_as_the_message_it_was_sealed_for() {
    let s = setup(EpochPolicy::default()).await;
    let (chat, ann, message) = (ChatId::new(), uid("ann"), MessageId::new());
    let sealed = s
        .keyring
        .seal_body(chat, &ann, message, "I have not slept in days")
        .await
        .expect("sealed");
    assert!(
        !String::from_utf8_lossy(&sealed).contains("slept"),
        "no plaintext in the sealed bytes"
    );
    let opened = s.keyring.open_body(chat, &ann, message, &sealed).await;
    assert_eq!(text(opened.expect("opens")), "I have not slept in days");
    // Another message, chat or sender: damaged, not the text.
    let damaged = |opened: Result<Opened>| matches!(opened, Ok(Opened::Damaged));
    let k = &s.keyring;
    assert!(damaged(
        k.open_body(chat, &ann, MessageId::new(), &sealed).await
    ));
    assert!(damaged(
        k.open_body(ChatId::new(), &ann, message, &sealed).await
    ));
    assert!(damaged(
        k.open_body(chat, &uid("bob"), message, &sealed).await
    ));
    // A report's copy is not a body.
    assert!(damaged(k.open_snapshot(chat, &ann, message, &sealed).await));
    // A flipped bit or a truncation: damaged, for that message alone.
    let mut flipped = sealed.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(damaged(k.open_body(chat, &ann, message, &flipped).await));
    assert!(damaged(
        k.open_body(chat, &ann, message, &sealed[..5]).await
    ));
}

#[tokio::test]
async fn epochs_rotate_by_count_and_age_and_old_ones_still_open() {
    let policy = EpochPolicy {
        max_messages: 3,
        max_age: Duration::from_secs(3600),
    };
    let s = setup(policy).await;
    let (chat, ann) = (ChatId::new(), uid("ann"));
    let mut sealed = Vec::new();
    for i in 0..7 {
        let message = MessageId::new();
        let body = s
            .keyring
            .seal_body(chat, &ann, message, &format!("message {i}"))
            .await
            .expect("sealed");
        sealed.push((message, body));
    }
    let epochs: Vec<u32> = sealed
        .iter()
        .map(|(_, b)| sealed_epoch(b).expect("an epoch").get())
        .collect();
    assert_eq!(epochs, [1, 1, 1, 2, 2, 2, 3], "a new epoch every 3 bodies");
    s.clock.advance(Duration::from_secs(3601));
    let later = s
        .keyring
        .seal_body(chat, &ann, MessageId::new(), "an hour later")
        .await
        .expect("sealed");
    assert_eq!(
        sealed_epoch(&later).expect("an epoch").get(),
        4,
        "and after max_age"
    );
    for (i, (message, body)) in sealed.iter().enumerate() {
        let opened = s.keyring.open_body(chat, &ann, *message, body).await;
        assert_eq!(
            text(opened.expect("old epochs open")),
            format!("message {i}")
        );
    }
}

#[tokio::test]
async fn a_restarted_node_continues_the_stored_epoch() {
    let s = setup(EpochPolicy::default()).await;
    let (chat, ann, message) = (ChatId::new(), uid("ann"), MessageId::new());
    let first = s
        .keyring
        .seal_body(chat, &ann, message, "before the restart")
        .await
        .expect("sealed");
    // Another keyring on the same key store and master key: a new node, or
    // this one after a restart. (The master key is cloned through base64,
    // as a server reads it from its configuration.)
    let master = MasterKey::from_base64(&s.keyring.master.to_base64()).expect("the same key");
    let again = Keyring::new(
        master,
        s.store.clone(),
        s.clock.clone(),
        KeyringConfig::default(),
    )
    .await
    .expect("a keyring");
    let second = again
        .seal_body(chat, &ann, MessageId::new(), "after")
        .await
        .expect("sealed");
    assert_eq!(sealed_epoch(&second).ok(), sealed_epoch(&first).ok());
    let opened = again.open_body(chat, &ann, message, &first).await;
    assert_eq!(text(opened.expect("opens")), "before the restart");
    // A wrong master key is refused at start.
    let wrong = MasterKey::generate().expect("a key");
    assert!(
        Keyring::new(
            wrong,
            s.store.clone(),
            s.clock.clone(),
            KeyringConfig::default()
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn erasing_a_sender_makes_their_bodies_erased_and_only_theirs() {
    let s = setup(EpochPolicy::default()).await;
    let (chat, ann, bob) = (ChatId::new(), uid("ann"), uid("bob"));
    let (m1, m2) = (MessageId::new(), MessageId::new());
    let from_ann = s
        .keyring
        .seal_body(chat, &ann, m1, "ann's secret")
        .await
        .expect("sealed");
    let from_bob = s
        .keyring
        .seal_body(chat, &bob, m2, "bob's words")
        .await
        .expect("sealed");
    assert!(s.keyring.erase_user(&ann).await.expect("erased"));
    assert!(matches!(
        s.keyring.open_body(chat, &ann, m1, &from_ann).await,
        Ok(Opened::Erased)
    ));
    let opened = s.keyring.open_body(chat, &bob, m2, &from_bob).await;
    assert_eq!(text(opened.expect("opens")), "bob's words");
    // Ann comes back: a new key and a new epoch, never the old epoch's
    // number; her old bodies stay erased.
    let m3 = MessageId::new();
    let again = s
        .keyring
        .seal_body(chat, &ann, m3, "new start")
        .await
        .expect("sealed");
    assert!(sealed_epoch(&again).expect("an epoch") > sealed_epoch(&from_ann).expect("an epoch"));
    assert_eq!(
        text(
            s.keyring
                .open_body(chat, &ann, m3, &again)
                .await
                .expect("opens")
        ),
        "new start"
    );
    assert!(matches!(
        s.keyring.open_body(chat, &ann, m1, &from_ann).await,
        Ok(Opened::Erased)
    ));
}

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
        ..KeyringConfig::default()
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

/// Another keyring on the same key store and master key: another node, or
/// this one after a restart. (The master key is cloned through base64, as
/// a server reads it from its configuration.)
async fn another_node(s: &Setup) -> Keyring {
    let master = MasterKey::from_base64(&s.keyring.master.to_base64()).expect("the same key");
    Keyring::new(
        master,
        s.store.clone(),
        s.clock.clone(),
        KeyringConfig::default(),
    )
    .await
    .expect("a keyring")
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
    // A restarted node.
    let again = another_node(&s).await;
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

#[tokio::test]
async fn an_erasure_on_another_node_reaches_this_one_within_the_recheck_bound() {
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
    // Both opened once, so their keys sit in this node's caches.
    assert!(matches!(
        s.keyring.open_body(chat, &ann, m1, &from_ann).await,
        Ok(Opened::Text(_))
    ));
    // Another node erases Ann.
    let other = another_node(&s).await;
    assert!(other.erase_user(&ann).await.expect("erased"));
    // Within the bound this node may still read from its cache; past it,
    // it asks the key store, finds the key gone and forgets it.
    s.clock
        .advance(KeyringConfig::DEFAULT_RECHECK_AFTER + Duration::from_millis(1));
    assert!(matches!(
        s.keyring.open_body(chat, &ann, m1, &from_ann).await,
        Ok(Opened::Erased)
    ));
    let opened = s.keyring.open_body(chat, &bob, m2, &from_bob).await;
    assert_eq!(text(opened.expect("opens")), "bob's words");
    // Ann comes back and writes from this node: a new key, a new epoch,
    // readable on both nodes; her old body stays erased on both.
    let m3 = MessageId::new();
    let again = s
        .keyring
        .seal_body(chat, &ann, m3, "new start")
        .await
        .expect("sealed");
    for node in [&s.keyring, &other] {
        let opened = node.open_body(chat, &ann, m3, &again).await;
        assert_eq!(text(opened.expect("opens")), "new start");
        assert!(matches!(
            node.open_body(chat, &ann, m1, &from_ann).await,
            Ok(Opened::Erased)
        ));
    }
}

#[tokio::test]
async fn a_key_replaced_elsewhere_drops_the_data_keys_it_unwrapped() {
    let s = setup(EpochPolicy::default()).await;
    let (chat, ann) = (ChatId::new(), uid("ann"));
    let m1 = MessageId::new();
    let old = s
        .keyring
        .seal_body(chat, &ann, m1, "before")
        .await
        .expect("sealed");
    // Erased and back again on another node before this one rechecked:
    // the key store now holds a different key for Ann.
    let other = another_node(&s).await;
    other.erase_user(&ann).await.expect("erased");
    let m2 = MessageId::new();
    let new = other
        .seal_body(chat, &ann, m2, "after")
        .await
        .expect("sealed");
    s.clock
        .advance(KeyringConfig::DEFAULT_RECHECK_AFTER + Duration::from_millis(1));
    // This node must not keep sealing under the epoch of the erased key.
    let m3 = MessageId::new();
    let sealed_here = s
        .keyring
        .seal_body(chat, &ann, m3, "from here")
        .await
        .expect("sealed");
    assert!(sealed_epoch(&sealed_here).expect("an epoch") > sealed_epoch(&old).expect("an epoch"));
    for node in [&s.keyring, &other] {
        assert!(matches!(
            node.open_body(chat, &ann, m1, &old).await,
            Ok(Opened::Erased)
        ));
        let opened = node.open_body(chat, &ann, m2, &new).await;
        assert_eq!(text(opened.expect("opens")), "after");
        let opened = node.open_body(chat, &ann, m3, &sealed_here).await;
        assert_eq!(text(opened.expect("opens")), "from here");
    }
}

#[tokio::test]
async fn preparing_makes_the_keys_without_counting_a_body() {
    let policy = EpochPolicy {
        max_messages: 1,
        max_age: Duration::from_secs(3600),
    };
    let s = setup(policy).await;
    let (chat, ann) = (ChatId::new(), uid("ann"));
    s.keyring
        .prepare_sealing(chat, &ann)
        .await
        .expect("prepared");
    assert!(
        s.store
            .latest_data_key(chat, &ann)
            .await
            .expect("a read")
            .is_some(),
        "the first key is made and stored when preparing"
    );
    s.keyring
        .prepare_sealing(chat, &ann)
        .await
        .expect("prepared");
    let first = s
        .keyring
        .seal_body(chat, &ann, MessageId::new(), "one")
        .await
        .expect("sealed");
    assert_eq!(
        sealed_epoch(&first).ok(),
        Some(KeyEpoch::FIRST),
        "preparing counts nothing"
    );
    let second = s
        .keyring
        .seal_body(chat, &ann, MessageId::new(), "two")
        .await
        .expect("sealed");
    assert!(sealed_epoch(&second).expect("an epoch") > KeyEpoch::FIRST);
}

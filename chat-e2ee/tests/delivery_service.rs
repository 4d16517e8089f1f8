//! The delivery-service checks, and the scenarios where the server's
//! verdict matters: the test passes bytes through a `PublicGroupState` as
//! the server would.

mod common;

use chat_e2ee::ds::{self, DsError, MessageKind, PublicGroupState};
use chat_e2ee::{E2eeError, Processed};
use common::{CHAT, add, application, assert_reads, device, ids, key_package};

#[test]
fn concurrent_commits_loser_discards_catches_up_and_retries() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    let (mut carol, _) = device("carol", "phone");
    alice.create_group(CHAT).expect("create group");
    let mut server = PublicGroupState::from_group_info(&alice.group_info(CHAT).expect("info"))
        .expect("server state");
    let first = add(&mut alice, &mut [&mut bob]);
    server.apply_commit(&first.commit).expect("server applies");

    // Both commit at epoch 1; the server takes Alice's first.
    let from_alice = alice.self_update(CHAT).expect("alice commits");
    let from_bob = bob
        .add_members(CHAT, &[key_package(&mut carol)])
        .expect("bob commits");
    assert_eq!((from_alice.epoch, from_bob.epoch), (1, 1));
    assert!(matches!(
        alice.encrypt(CHAT, b"wait"),
        Err(E2eeError::PendingCommit)
    ));
    server.apply_commit(&from_alice.commit).expect("accepted");
    assert_eq!(
        server.apply_commit(&from_bob.commit),
        Err(DsError::WrongEpoch {
            expected: 2,
            found: 1
        })
    );
    alice.merge_pending_commit(CHAT).expect("merge");

    // Bob was refused: discard, catch up, retry.
    bob.discard_pending_commit(CHAT).expect("discard");
    assert!(matches!(
        bob.discard_pending_commit(CHAT),
        Err(E2eeError::NoPendingCommit)
    ));
    assert_eq!(
        bob.process(CHAT, &from_alice.commit).expect("catch up"),
        Processed::Commit {
            epoch: 2,
            removed_self: false
        }
    );
    let retry = bob
        .add_members(CHAT, &[key_package(&mut carol)])
        .expect("retry");
    assert_eq!(retry.epoch, 2);
    let effect = server.apply_commit(&retry.commit).expect("accepted");
    assert_eq!(effect.added, ids(&[("carol", "phone")]));
    bob.merge_pending_commit(CHAT).expect("merge");
    alice.process(CHAT, &retry.commit).expect("alice follows");
    carol
        .join(retry.welcome.as_deref().expect("welcome"))
        .expect("carol joins");

    assert_eq!(alice.epoch(CHAT).expect("epoch"), 3);
    assert_eq!(server.epoch(), 3);
    let m = carol.encrypt(CHAT, b"all in sync").expect("encrypt");
    assert_reads(&mut alice, &m, &carol, b"all in sync");
    assert_reads(&mut bob, &m, &carol, b"all in sync");
}

#[test]
fn last_resort_key_package_is_stable_and_reusable() {
    let (mut alice, _) = device("alice", "phone");
    let (mut carol, _) = device("carol", "phone");
    let last_resort = carol.last_resort_key_package().expect("last resort");
    assert_eq!(carol.last_resort_key_package().expect("again"), last_resort);
    let valid = ds::validate_key_package(&last_resort).expect("valid");
    assert!(valid.last_resort);
    assert!(
        !ds::validate_key_package(&key_package(&mut carol))
            .expect("valid")
            .last_resort
    );

    // Two chats add Carol from the same last-resort package.
    for chat in [b"chat-one".as_slice(), b"chat-two".as_slice()] {
        alice.create_group(chat).expect("create group");
        let bundle = alice
            .add_members(chat, std::slice::from_ref(&last_resort))
            .expect("add");
        alice.merge_pending_commit(chat).expect("merge");
        assert_eq!(
            carol
                .join(bundle.welcome.as_deref().expect("welcome"))
                .expect("join"),
            chat
        );
        let m = alice.encrypt(chat, b"hi").expect("encrypt");
        let (_, _, plaintext) = application(carol.process(chat, &m).expect("read"));
        assert_eq!(plaintext, b"hi");
    }
    let mut groups = carol.group_ids();
    groups.sort();
    assert_eq!(groups, vec![b"chat-one".to_vec(), b"chat-two".to_vec()]);
}

#[test]
fn key_packages_report_the_identity_they_claim() {
    // Mallory makes a device that claims to be Bob's: the key package is
    // valid MLS and reports "bob", so the server, seeing Mallory upload it,
    // refuses it.
    let (mut mallory_as_bob, _) = device("bob", "phone");
    let forged = key_package(&mut mallory_as_bob);
    let valid = ds::validate_key_package(&forged).expect("parses and verifies");
    assert_eq!(
        (valid.user_id.as_str(), valid.device_id.as_str()),
        ("bob", "phone")
    );
    assert_eq!(valid.bytes, forged);
    assert_eq!(valid.signature_key, mallory_as_bob.signature_public_key());

    // A bare KeyPackage (the MLSMessage minus its 4-byte header) is
    // accepted too, and by add_members as well.
    let bare = forged[4..].to_vec();
    let valid_bare = ds::validate_key_package(&bare).expect("bare key package");
    assert_eq!(valid_bare.user_id, "bob");
    assert_eq!(valid_bare.bytes, bare);
    let (mut alice, _) = device("alice", "phone");
    alice.create_group(CHAT).expect("create group");
    let bundle = alice.add_members(CHAT, &[bare]).expect("add from bare");
    alice.merge_pending_commit(CHAT).expect("merge");
    mallory_as_bob
        .join(bundle.welcome.as_deref().expect("welcome"))
        .expect("join");

    // Garbage, truncation and a broken signature are refused.
    assert!(matches!(
        ds::validate_key_package(b"garbage"),
        Err(DsError::Invalid(_))
    ));
    assert!(ds::validate_key_package(&forged[..forged.len() - 10]).is_err());
    let mut broken = forged.clone();
    let last = broken.len() - 1;
    broken[last] ^= 0x01;
    assert!(matches!(
        ds::validate_key_package(&broken),
        Err(DsError::Invalid(_))
    ));
    // Other MLS messages are not key packages.
    let m = alice.encrypt(CHAT, b"x").expect("encrypt");
    assert!(ds::validate_key_package(&m).is_err());
}

#[test]
fn public_group_state_follows_commits() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    let (mut carol, _) = device("carol", "phone");
    alice.create_group(CHAT).expect("create group");
    let mut server = PublicGroupState::from_group_info(&alice.group_info(CHAT).expect("info"))
        .expect("from group info");
    assert_eq!(server.group_id(), CHAT);
    assert_eq!(server.epoch(), 0);
    assert_eq!(server.members(), ids(&[("alice", "phone")]));

    // Add Bob and Carol.
    let kps = vec![key_package(&mut bob), key_package(&mut carol)];
    let addition = alice.add_members(CHAT, &kps).expect("add");
    let checked = server.check_commit(&addition.commit).expect("check");
    assert_eq!(server.epoch(), 0, "check does not apply");
    let effect = server.apply_commit(&addition.commit).expect("apply");
    assert_eq!(checked, effect);
    assert_eq!(effect.epoch_before, 0);
    assert_eq!(effect.committer, ("alice".to_owned(), "phone".to_owned()));
    assert_eq!(effect.added, ids(&[("bob", "phone"), ("carol", "phone")]));
    assert_eq!(
        effect.added_signature_keys,
        vec![
            bob.signature_public_key().to_vec(),
            carol.signature_public_key().to_vec()
        ]
    );
    assert!(effect.removed.is_empty());
    alice.merge_pending_commit(CHAT).expect("merge");
    let welcome = addition.welcome.expect("welcome");
    bob.join(&welcome).expect("bob joins");
    carol.join(&welcome).expect("carol joins");
    assert_eq!(server.epoch(), 1);
    assert_eq!(server.members(), alice.members(CHAT).expect("members"));

    // The state survives a round trip through the server's database.
    let blob = server.to_bytes();
    let mut server = PublicGroupState::from_bytes(&blob).expect("from bytes");
    assert_eq!(server.to_bytes(), blob);
    assert_eq!(server.epoch(), 1);
    assert!(matches!(
        PublicGroupState::from_bytes(&blob[..blob.len() - 1]),
        Err(DsError::Corrupt(_))
    ));

    // Bob rotates his keys.
    let update = bob.self_update(CHAT).expect("update");
    let effect = server.apply_commit(&update.commit).expect("apply");
    assert_eq!(effect.committer, ("bob".to_owned(), "phone".to_owned()));
    assert!(effect.updated_self);
    assert!(effect.added.is_empty() && effect.removed.is_empty());
    bob.merge_pending_commit(CHAT).expect("merge");
    alice.process(CHAT, &update.commit).expect("alice follows");
    carol.process(CHAT, &update.commit).expect("carol follows");

    // A stale commit, made at epoch 2 but arriving after another one.
    let stale = carol.self_update(CHAT).expect("carol commits");
    let removal = alice.remove_members(CHAT, "carol").expect("remove");
    let effect = server.apply_commit(&removal.commit).expect("apply");
    assert_eq!(effect.epoch_before, 2);
    assert_eq!(effect.removed, ids(&[("carol", "phone")]));
    assert!(effect.added.is_empty());
    assert_eq!(
        server.check_commit(&stale.commit),
        Err(DsError::WrongEpoch {
            expected: 3,
            found: 2
        })
    );
    alice.merge_pending_commit(CHAT).expect("merge");
    assert_eq!(
        server.members(),
        ids(&[("alice", "phone"), ("bob", "phone")])
    );
    assert_eq!(server.members(), alice.members(CHAT).expect("members"));

    // Application messages are not commits; their header tells the epoch.
    let m = alice.encrypt(CHAT, b"hello").expect("encrypt");
    assert_eq!(server.check_commit(&m), Err(DsError::NotACommit));
    let info = ds::inspect_message(&m).expect("inspect");
    assert_eq!(
        info,
        ds::MessageInfo {
            group_id: CHAT.to_vec(),
            epoch: 3,
            kind: MessageKind::Application,
            encrypted: true,
        }
    );
    let info = ds::inspect_message(&removal.commit).expect("inspect");
    assert_eq!((info.kind, info.encrypted), (MessageKind::Commit, false));
    assert!(matches!(
        server.check_commit(b"garbage"),
        Err(DsError::Invalid(_))
    ));
    assert_eq!(server.epoch(), 3, "refusals change nothing");
}

#[test]
fn public_group_state_refuses_a_commit_for_another_group() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    alice.create_group(CHAT).expect("create group");
    alice.create_group(b"other").expect("create other");
    let server =
        PublicGroupState::from_group_info(&alice.group_info(CHAT).expect("info")).expect("state");
    let other = alice
        .add_members(b"other", &[key_package(&mut bob)])
        .expect("add");
    assert!(matches!(
        server.check_commit(&other.commit),
        Err(DsError::Invalid(_))
    ));
    assert!(matches!(
        PublicGroupState::from_group_info(b"garbage"),
        Err(DsError::Invalid(_))
    ));
}

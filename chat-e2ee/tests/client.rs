//! Client scenarios, in process: the test plays the delivery service by
//! passing bytes between devices.

mod common;

use std::time::Duration;

use chat_e2ee::{
    Device, E2eeError, MemoryDeviceStore, Processed, RotationPolicy, SqliteDeviceStore,
};
use common::{CHAT, add, assert_reads, device, ids, key_package};

#[test]
fn two_devices_exchange_messages() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    alice.create_group(CHAT).expect("create group");
    assert_eq!(alice.epoch(CHAT).expect("epoch"), 0);

    let bundle = add(&mut alice, &mut [&mut bob]);
    assert_eq!(bundle.epoch, 0, "the commit applies to epoch 0");
    assert!(bundle.group_info.is_some());
    assert_eq!(alice.epoch(CHAT).expect("epoch"), 1);
    assert_eq!(bob.epoch(CHAT).expect("epoch"), 1);
    let members = ids(&[("alice", "phone"), ("bob", "phone")]);
    assert_eq!(alice.members(CHAT).expect("members"), members);
    assert_eq!(bob.members(CHAT).expect("members"), members);

    let hello = alice.encrypt(CHAT, b"hello bob").expect("encrypt");
    assert_reads(&mut bob, &hello, &alice, b"hello bob");
    let reply = bob.encrypt(CHAT, b"hi alice").expect("encrypt");
    assert_reads(&mut alice, &reply, &bob, b"hi alice");
    // Several in a row, both ways.
    for i in 0..5u8 {
        let m = alice.encrypt(CHAT, &[i]).expect("encrypt");
        assert_reads(&mut bob, &m, &alice, &[i]);
    }
}

#[test]
fn three_devices_of_two_users_all_read_each_other() {
    let (mut phone, _) = device("alice", "phone");
    let (mut laptop, _) = device("alice", "laptop");
    let (mut bob, _) = device("bob", "phone");
    phone.create_group(CHAT).expect("create group");
    add(&mut phone, &mut [&mut laptop, &mut bob]);
    let members = ids(&[("alice", "phone"), ("alice", "laptop"), ("bob", "phone")]);
    for d in [&phone, &laptop, &bob] {
        assert_eq!(d.members(CHAT).expect("members"), members);
    }

    let from_phone = phone.encrypt(CHAT, b"from phone").expect("encrypt");
    assert_reads(&mut laptop, &from_phone, &phone, b"from phone");
    assert_reads(&mut bob, &from_phone, &phone, b"from phone");
    let from_laptop = laptop.encrypt(CHAT, b"from laptop").expect("encrypt");
    assert_reads(&mut phone, &from_laptop, &laptop, b"from laptop");
    assert_reads(&mut bob, &from_laptop, &laptop, b"from laptop");
    let from_bob = bob.encrypt(CHAT, b"from bob").expect("encrypt");
    assert_reads(&mut phone, &from_bob, &bob, b"from bob");
    assert_reads(&mut laptop, &from_bob, &bob, b"from bob");
}

#[test]
fn removed_device_learns_it_and_cannot_read_on() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    let (mut carol, carol_store) = device("carol", "phone");
    alice.create_group(CHAT).expect("create group");
    add(&mut alice, &mut [&mut bob, &mut carol]);

    let removal = alice.remove_members(CHAT, "carol").expect("remove");
    assert_eq!(removal.epoch, 1);
    assert!(removal.welcome.is_none());
    alice.merge_pending_commit(CHAT).expect("merge");
    assert_eq!(
        bob.process(CHAT, &removal.commit).expect("bob processes"),
        Processed::Commit {
            epoch: 2,
            removed_self: false
        }
    );
    assert_eq!(
        carol
            .process(CHAT, &removal.commit)
            .expect("carol processes"),
        Processed::Commit {
            epoch: 2,
            removed_self: true
        }
    );
    let members = ids(&[("alice", "phone"), ("bob", "phone")]);
    assert_eq!(alice.members(CHAT).expect("members"), members);
    assert_eq!(bob.members(CHAT).expect("members"), members);

    let secret = alice.encrypt(CHAT, b"carol is gone").expect("encrypt");
    assert_reads(&mut bob, &secret, &alice, b"carol is gone");
    let before = carol_store.entries();
    let writes = carol_store.writes();
    assert!(matches!(
        carol.process(CHAT, &secret),
        Err(E2eeError::Evicted)
    ));
    assert!(matches!(
        carol.encrypt(CHAT, b"still here?"),
        Err(E2eeError::Evicted)
    ));
    assert_eq!(carol_store.entries(), before, "state unchanged");
    assert_eq!(carol_store.writes(), writes, "nothing written");

    // Carol forgets the chat; she can be added back later with a new key
    // package, and then reads again.
    carol.forget_group(CHAT).expect("forget");
    assert!(matches!(carol.epoch(CHAT), Err(E2eeError::UnknownGroup)));
    let readd = alice
        .add_members(CHAT, &[key_package(&mut carol)])
        .expect("re-add");
    alice.merge_pending_commit(CHAT).expect("merge");
    bob.process(CHAT, &readd.commit).expect("bob processes");
    carol
        .join(readd.welcome.as_deref().expect("welcome"))
        .expect("carol joins again");
    let welcome_back = alice.encrypt(CHAT, b"welcome back").expect("encrypt");
    assert_reads(&mut carol, &welcome_back, &alice, b"welcome back");
}

#[test]
fn removed_device_added_back_without_forgetting_replaces_the_old_group() {
    let (mut alice, _) = device("alice", "phone");
    let (mut carol, _) = device("carol", "phone");
    alice.create_group(CHAT).expect("create group");
    add(&mut alice, &mut [&mut carol]);
    let removal = alice.remove_device(CHAT, "carol", "phone").expect("remove");
    alice.merge_pending_commit(CHAT).expect("merge");
    carol.process(CHAT, &removal.commit).expect("process");
    add(&mut alice, &mut [&mut carol]);
    let m = alice.encrypt(CHAT, b"again").expect("encrypt");
    assert_reads(&mut carol, &m, &alice, b"again");
}

#[test]
fn late_joiner_cannot_read_earlier_messages() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    let (mut dave, dave_store) = device("dave", "phone");
    alice.create_group(CHAT).expect("create group");
    add(&mut alice, &mut [&mut bob]);
    let early = alice.encrypt(CHAT, b"before dave").expect("encrypt");
    assert_reads(&mut bob, &early, &alice, b"before dave");

    let addition = add(&mut alice, &mut [&mut dave]);
    bob.process(CHAT, &addition.commit).expect("bob processes");
    let writes = dave_store.writes();
    assert!(matches!(
        dave.process(CHAT, &early),
        Err(E2eeError::WrongEpoch {
            expected: 2,
            found: 1
        })
    ));
    assert_eq!(dave_store.writes(), writes);

    let later = bob.encrypt(CHAT, b"hi dave").expect("encrypt");
    assert_reads(&mut dave, &later, &bob, b"hi dave");
    assert_reads(&mut alice, &later, &bob, b"hi dave");
}

#[test]
fn tampered_ciphertext_fails_and_changes_nothing() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, bob_store) = device("bob", "phone");
    alice.create_group(CHAT).expect("create group");
    add(&mut alice, &mut [&mut bob]);
    let message = alice.encrypt(CHAT, b"do not touch").expect("encrypt");

    let before = bob_store.entries();
    let writes = bob_store.writes();
    let mut tampered = message.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    assert!(matches!(
        bob.process(CHAT, &tampered),
        Err(E2eeError::Decrypt(_))
    ));
    // Garbage and truncations fail as well, each without a trace.
    assert!(matches!(
        bob.process(CHAT, b"not mls at all"),
        Err(E2eeError::InvalidMessage(_))
    ));
    assert!(bob.process(CHAT, &message[..message.len() / 2]).is_err());
    assert!(matches!(
        bob.process(b"another chat", &message),
        Err(E2eeError::InvalidMessage(_))
    ));
    assert_eq!(bob_store.entries(), before, "state unchanged");
    assert_eq!(bob_store.writes(), writes, "nothing written");

    assert_reads(&mut bob, &message, &alice, b"do not touch");
    // And a replay of it is refused (its key is used up).
    assert!(bob.process(CHAT, &message).is_err());
}

#[test]
fn nothing_leaves_the_device_unless_its_state_is_written() {
    let (mut alice, alice_store) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    alice.create_group(CHAT).expect("create group");
    add(&mut alice, &mut [&mut bob]);

    alice_store.fail_writes(true);
    assert!(matches!(
        alice.encrypt(CHAT, b"lost"),
        Err(E2eeError::Storage(_))
    ));
    assert!(matches!(
        alice.self_update(CHAT),
        Err(E2eeError::Storage(_))
    ));
    assert!(
        !alice.has_pending_commit(CHAT).expect("pending?"),
        "the failed commit was rolled back"
    );
    alice_store.fail_writes(false);

    // A restart from the store sees exactly what the live device sees.
    drop(alice);
    let mut alice = Device::open(alice_store.clone()).expect("reopen");
    let m = alice.encrypt(CHAT, b"kept").expect("encrypt");
    assert_reads(&mut bob, &m, &alice, b"kept");
    let reply = bob.encrypt(CHAT, b"got it").expect("encrypt");
    alice_store.fail_writes(true);
    assert!(matches!(
        alice.process(CHAT, &reply),
        Err(E2eeError::Storage(_))
    ));
    alice_store.fail_writes(false);
    assert_reads(&mut alice, &reply, &bob, b"got it");
}

#[test]
fn own_echoes_are_ignored() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    alice.create_group(CHAT).expect("create group");
    let addition = add(&mut alice, &mut [&mut bob]);
    assert_eq!(
        alice
            .process(CHAT, &addition.commit)
            .expect("own merged commit"),
        Processed::Ignored
    );
    let m = alice.encrypt(CHAT, b"echo").expect("encrypt");
    assert_eq!(
        alice.process(CHAT, &m).expect("own message"),
        Processed::Ignored
    );
    let update = alice.self_update(CHAT).expect("commit");
    assert_eq!(
        alice
            .process(CHAT, &update.commit)
            .expect("own pending commit"),
        Processed::Ignored
    );
    assert!(alice.has_pending_commit(CHAT).expect("still pending"));
}

#[test]
fn removing_own_user_keeps_this_device() {
    let (mut phone, _) = device("alice", "phone");
    let (mut laptop, _) = device("alice", "laptop");
    let (mut bob, _) = device("bob", "phone");
    phone.create_group(CHAT).expect("create group");
    add(&mut phone, &mut [&mut laptop, &mut bob]);
    assert!(matches!(
        phone.remove_device(CHAT, "alice", "phone"),
        Err(E2eeError::NotAMember)
    ));
    assert!(matches!(
        phone.remove_members(CHAT, "nobody"),
        Err(E2eeError::NotAMember)
    ));
    let removal = phone.remove_members(CHAT, "alice").expect("remove");
    phone.merge_pending_commit(CHAT).expect("merge");
    assert_eq!(
        phone.members(CHAT).expect("members"),
        ids(&[("alice", "phone"), ("bob", "phone")])
    );
    assert!(matches!(
        laptop.process(CHAT, &removal.commit).expect("laptop"),
        Processed::Commit {
            removed_self: true,
            ..
        }
    ));
}

#[test]
fn misuse_is_refused_with_typed_errors() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    assert!(matches!(
        alice.encrypt(CHAT, b"x"),
        Err(E2eeError::UnknownGroup)
    ));
    alice.create_group(CHAT).expect("create group");
    assert!(matches!(
        alice.create_group(CHAT),
        Err(E2eeError::GroupExists)
    ));
    assert!(matches!(
        alice.merge_pending_commit(CHAT),
        Err(E2eeError::NoPendingCommit)
    ));
    assert!(matches!(
        alice.add_members(CHAT, &[b"garbage".to_vec()]),
        Err(E2eeError::InvalidKeyPackage(_))
    ));
    assert!(matches!(
        alice.add_members(CHAT, &[]),
        Err(E2eeError::InvalidKeyPackage(_))
    ));
    let kp = key_package(&mut bob);
    assert!(matches!(
        alice.add_members(CHAT, &[kp.clone(), kp.clone()]),
        Err(E2eeError::InvalidKeyPackage(_))
    ));
    add(&mut alice, &mut [&mut bob]);
    // Bob again, from a new key package: already a member.
    assert!(matches!(
        alice.add_members(CHAT, &[key_package(&mut bob)]),
        Err(E2eeError::InvalidKeyPackage(_))
    ));
    // A welcome is not a group message, and a used one-shot key package
    // cannot join twice.
    let (mut carol, _) = device("carol", "phone");
    let bundle = alice
        .add_members(CHAT, &[key_package(&mut carol)])
        .expect("add");
    let welcome = bundle.welcome.expect("welcome");
    assert!(matches!(
        carol.process(CHAT, &welcome),
        Err(E2eeError::InvalidMessage(_))
    ));
    assert!(matches!(
        bob.join(&welcome),
        Err(E2eeError::InvalidMessage(_))
    ));
    assert!(matches!(
        Device::create("al/ice", "phone", MemoryDeviceStore::new()),
        Err(E2eeError::InvalidCredential)
    ));
    assert!(matches!(
        Device::open(MemoryDeviceStore::new()),
        Err(E2eeError::NoDevice)
    ));
}

#[test]
fn a_store_holds_one_device_and_restores_it() {
    let store = MemoryDeviceStore::new();
    let device = Device::create("alice", "phone", store.clone()).expect("create");
    let key = device.signature_public_key().to_vec();
    assert!(matches!(
        Device::create("bob", "phone", store.clone()),
        Err(E2eeError::DeviceExists)
    ));
    drop(device);
    let device = Device::open(store).expect("open");
    assert_eq!((device.user_id(), device.device_id()), ("alice", "phone"));
    assert_eq!(device.signature_public_key(), key);
}

#[test]
fn sqlite_device_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alice.db");
    let mut alice = Device::create(
        "alice",
        "phone",
        SqliteDeviceStore::open(&path).expect("open"),
    )
    .expect("create");
    let (mut bob, _) = device("bob", "phone");
    alice.create_group(CHAT).expect("create group");
    add(&mut alice, &mut [&mut bob]);
    let before = alice.encrypt(CHAT, b"before restart").expect("encrypt");
    assert_reads(&mut bob, &before, &alice, b"before restart");
    let last_resort = alice.last_resort_key_package().expect("last resort");
    drop(alice);

    let mut alice =
        Device::open(SqliteDeviceStore::open(&path).expect("reopen")).expect("open device");
    assert_eq!((alice.user_id(), alice.device_id()), ("alice", "phone"));
    assert_eq!(alice.epoch(CHAT).expect("epoch"), 1);
    assert_eq!(
        alice.last_resort_key_package().expect("last resort"),
        last_resort
    );
    let from_bob = bob.encrypt(CHAT, b"after restart").expect("encrypt");
    assert_reads(&mut alice, &from_bob, &bob, b"after restart");
    let from_alice = alice.encrypt(CHAT, b"still me").expect("encrypt");
    assert_reads(&mut bob, &from_alice, &alice, b"still me");

    // Commits too: a key rotation after the restart.
    let update = alice.self_update(CHAT).expect("update");
    alice.merge_pending_commit(CHAT).expect("merge");
    bob.process(CHAT, &update.commit).expect("bob follows");
    let m = alice.encrypt(CHAT, b"new keys").expect("encrypt");
    assert_reads(&mut bob, &m, &alice, b"new keys");

    // The rotation counters were persisted with the rest.
    alice.set_rotation_policy(RotationPolicy {
        max_messages: 2,
        max_age: Duration::from_secs(3600),
    });
    assert!(!alice.needs_self_update(CHAT));
    drop(alice);
    let mut alice = Device::open(SqliteDeviceStore::open(&path).expect("reopen")).expect("open");
    alice.set_rotation_policy(RotationPolicy {
        max_messages: 2,
        max_age: Duration::from_secs(3600),
    });
    alice.encrypt(CHAT, b"second").expect("encrypt");
    assert!(alice.needs_self_update(CHAT));
}

#[test]
fn self_update_policy_triggers_after_max_messages() {
    let (mut alice, _) = device("alice", "phone");
    let (mut bob, _) = device("bob", "phone");
    alice.create_group(CHAT).expect("create group");
    add(&mut alice, &mut [&mut bob]);
    assert_eq!(alice.rotation_policy(), RotationPolicy::default());
    assert_eq!(RotationPolicy::default().max_messages, 100);
    alice.set_rotation_policy(RotationPolicy {
        max_messages: 3,
        max_age: Duration::from_secs(3600),
    });
    for i in 0..3u8 {
        assert!(!alice.needs_self_update(CHAT), "after {i} messages");
        let m = alice.encrypt(CHAT, &[i]).expect("encrypt");
        bob.process(CHAT, &m).expect("bob reads");
    }
    assert!(alice.needs_self_update(CHAT));
    // Bob's own counter is untouched by what he received.
    bob.set_rotation_policy(alice.rotation_policy());
    assert!(!bob.needs_self_update(CHAT));

    let update = alice.self_update(CHAT).expect("rotate");
    alice.merge_pending_commit(CHAT).expect("merge");
    assert!(!alice.needs_self_update(CHAT), "new epoch, counter reset");
    bob.process(CHAT, &update.commit).expect("bob follows");

    // An epoch older than max_age asks for rotation too.
    alice.set_rotation_policy(RotationPolicy {
        max_messages: 100,
        max_age: Duration::ZERO,
    });
    assert!(alice.needs_self_update(CHAT));
    assert!(!alice.needs_self_update(b"unknown chat"));
}

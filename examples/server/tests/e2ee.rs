//! End-to-end encrypted chats through the real server: `chat-e2ee`
//! devices publish and claim key packages, create the MLS group with the
//! chat's first commit, and exchange messages the server only relays.

mod common;

use chat_e2ee::{Device, MemoryDeviceStore};
use common::{e2ee::*, *};
use serde_json::json;

#[tokio::test]
async fn two_devices_chat_end_to_end_through_the_server() {
    let server = Server::start().await;
    let mut alice = Person::connect(&server, "mls-alice").await;
    let mut bob = Person::connect(&server, "mls-bob").await;
    assert_eq!(bob.publish(3).await["available"], 3);

    let chat = e2ee_group(&mut alice, &mut [&mut bob]).await;
    let group = chat.as_bytes();
    assert_eq!(bob.device.epoch(group).expect("joined"), 1);

    let marker = unique("e2ee-marker-6d1f");
    alice.send(&chat, &format!("alice says {marker}")).await;
    assert_eq!(bob.receive(&chat).await, format!("alice says {marker}"));
    bob.send(&chat, "bob answers").await;
    assert_eq!(alice.receive(&chat).await, "bob answers");

    // A commit for an epoch the group has passed is refused; the device
    // discards it, and a fresh one for the current epoch goes through.
    let update = alice.device.self_update(group).expect("an update");
    let stale = alice
        .ws
        .err(
            "mls_commit",
            json!({"chat_id": chat, "epoch": 0, "commit": b64(&update.commit)}),
        )
        .await;
    assert_eq!(stale, "conflict");
    let acked = alice
        .ws
        .ok(
            "mls_commit",
            json!({"chat_id": chat, "epoch": update.epoch, "commit": b64(&update.commit)}),
        )
        .await;
    assert_eq!(acked["epoch"], 2);
    alice.device.merge_pending_commit(group).expect("merged");
    bob.follow_commit(&chat).await;
    alice.send(&chat, "after the rotation").await;
    assert_eq!(bob.receive(&chat).await, "after the rotation");

    // The server holds ciphertext only.
    assert!(
        !contains(&stored_bytes(server.dir()), marker.as_bytes()),
        "the plaintext is in the server's files"
    );
}

#[tokio::test]
async fn key_packages_with_another_users_credential_are_refused() {
    let server = Server::start().await;
    let mut mallory = Person::connect(&server, "kp-mallory").await;
    // A device that claims to be someone else.
    let mut forger =
        Device::create("kp-victim", "phone", MemoryDeviceStore::new()).expect("a device");
    let forged = b64(&forger.generate_key_packages(1).expect("a package")[0]);
    let code = mallory
        .ws
        .err("publish_key_packages", json!({"key_packages": [forged]}))
        .await;
    assert_eq!(code, "forbidden");
    let code = mallory
        .ws
        .err(
            "publish_key_packages",
            json!({"key_packages": [b64(b"not a key package")]}),
        )
        .await;
    assert_eq!(code, "bad_request");
    // Its own are taken, and each is handed out once.
    assert_eq!(mallory.publish(2).await["available"], 2);
    let mut other = Person::connect(&server, "kp-other").await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let claimed = other
            .ws
            .ok("claim_key_packages", json!({"user_ids": ["kp-mallory"]}))
            .await;
        seen.push((
            claimed["devices"][0]["key_package"].clone(),
            claimed["devices"][0]["last_resort"].clone(),
        ));
    }
    assert_ne!(seen[0].0, seen[1].0, "never the same one twice");
    assert_eq!(seen[2].1, true, "then the last-resort one");
    let _ = other.device.user_id();
}

#[tokio::test]
async fn a_removed_member_reads_nothing_sent_after_the_removal() {
    let server = Server::start().await;
    let mut alice = Person::connect(&server, "rm-alice").await;
    let mut bob = Person::connect(&server, "rm-bob").await;
    let mut carol = Person::connect(&server, "rm-carol").await;
    bob.publish(2).await;
    carol.publish(2).await;
    let chat = e2ee_group(&mut alice, &mut [&mut bob, &mut carol]).await;
    // Three devices of three users read each other.
    alice.send(&chat, "hello both").await;
    assert_eq!(bob.receive(&chat).await, "hello both");
    assert_eq!(carol.receive(&chat).await, "hello both");
    carol.send(&chat, "hi from carol").await;
    assert_eq!(alice.receive(&chat).await, "hi from carol");
    assert_eq!(bob.receive(&chat).await, "hi from carol");

    // Carol is removed from the chat: until her device leaves the MLS group
    // nothing can be sent there, so nothing is ever encrypted to her.
    alice
        .ws
        .ok(
            "remove_participant",
            json!({"chat_id": chat, "user_id": "rm-carol"}),
        )
        .await;
    let sealed = alice
        .device
        .encrypt(chat.as_bytes(), b"too early")
        .expect("encrypted");
    let refused = alice
        .ws
        .err(
            "send_message",
            json!({"chat_id": chat, "client_msg_id": unique("e2"), "content": b64(&sealed)}),
        )
        .await;
    assert_eq!(refused, "conflict");
    // Bob cannot read "too early" either way: it never went out; the
    // commit that removes Carol's device moves everyone on.
    let removal = alice
        .device
        .remove_members(chat.as_bytes(), "rm-carol")
        .expect("a commit");
    alice
        .ws
        .ok(
            "mls_commit",
            json!({"chat_id": chat, "epoch": removal.epoch, "commit": b64(&removal.commit)}),
        )
        .await;
    alice
        .device
        .merge_pending_commit(chat.as_bytes())
        .expect("merged");
    bob.follow_commit(&chat).await;
    let after = alice.send(&chat, "carol is gone").await;
    assert_eq!(bob.receive(&chat).await, "carol is gone");
    // The server sends Carol nothing of it; handed the ciphertext anyway,
    // her device cannot read it.
    let after_id = after["message"]["id"].clone();
    assert!(
        carol
            .ws
            .event_within("message_received", QUIET, |m| m["id"] == after_id)
            .await
            .is_none(),
        "a removed member gets nothing sent after"
    );
    let ciphertext = unb64(&after["message"]["content"]);
    assert!(
        carol.device.process(chat.as_bytes(), &ciphertext).is_err(),
        "a removed member's device cannot decrypt what was sent after"
    );
}

#[tokio::test]
async fn membership_changes_carry_their_commit_and_a_late_joiner_reads_nothing_earlier() {
    let server = Server::start().await;
    let mut alice = Person::connect(&server, "mc-alice").await;
    let mut bob = Person::connect(&server, "mc-bob").await;
    let mut dave = Person::connect(&server, "mc-dave").await;
    bob.publish(2).await;
    dave.publish(2).await;
    let chat = e2ee_group(&mut alice, &mut [&mut bob]).await;
    let before = alice.send(&chat, "before dave").await;
    assert_eq!(bob.receive(&chat).await, "before dave");

    // Dave is added with the commit that adds his device, in one change.
    let claimed = alice
        .ws
        .ok("claim_key_packages", json!({"user_ids": ["mc-dave"]}))
        .await;
    let package = unb64(&claimed["devices"][0]["key_package"]);
    let add = alice
        .device
        .add_members(chat.as_bytes(), &[package])
        .expect("a commit");
    let acked = alice
        .ws
        .ok(
            "add_participant",
            json!({
                "chat_id": chat, "user_id": "mc-dave",
                "epoch": add.epoch, "commit": b64(&add.commit),
                "welcome": add.welcome.as_deref().map(b64),
            }),
        )
        .await;
    assert_eq!(acked["epoch"], add.epoch + 1);
    alice
        .device
        .merge_pending_commit(chat.as_bytes())
        .expect("merged");
    bob.follow_commit(&chat).await;
    dave.follow_commit(&chat).await;
    alice.send(&chat, "welcome dave").await;
    assert_eq!(dave.receive(&chat).await, "welcome dave");
    assert_eq!(bob.receive(&chat).await, "welcome dave");
    // What was sent before he joined does not decrypt on his device.
    let earlier = unb64(&before["message"]["content"]);
    assert!(dave.device.process(chat.as_bytes(), &earlier).is_err());

    // Bob is removed with the commit that removes his device: sending goes
    // on at once, and he reads nothing after.
    let removal = alice
        .device
        .remove_members(chat.as_bytes(), "mc-bob")
        .expect("a commit");
    alice
        .ws
        .ok(
            "remove_participant",
            // PROTOCOL.md's form: the commit alone, its epoch the chat's.
            json!({"chat_id": chat, "user_id": "mc-bob", "commit": b64(&removal.commit)}),
        )
        .await;
    alice
        .device
        .merge_pending_commit(chat.as_bytes())
        .expect("merged");
    dave.follow_commit(&chat).await;
    let after = alice.send(&chat, "bob is gone").await;
    assert_eq!(dave.receive(&chat).await, "bob is gone");
    assert!(
        bob.device
            .process(chat.as_bytes(), &unb64(&after["message"]["content"]))
            .is_err(),
        "a removed member's device cannot decrypt what was sent after"
    );
}

#[tokio::test]
async fn a_commit_that_lost_its_epoch_is_refused_and_the_device_recovers() {
    let server = Server::start().await;
    let mut alice = Person::connect(&server, "race-alice").await;
    let mut bob = Person::connect(&server, "race-bob").await;
    bob.publish(2).await;
    let chat = e2ee_group(&mut alice, &mut [&mut bob]).await;
    let group = chat.as_bytes();
    // Both rotate their keys at the same epoch; Bob's commit lands first.
    let from_alice = alice.device.self_update(group).expect("a commit");
    let from_bob = bob.device.self_update(group).expect("a commit");
    let commit = |bundle: &chat_e2ee::CommitBundle| json!({"chat_id": chat, "epoch": bundle.epoch, "commit": b64(&bundle.commit)});
    bob.ws.ok("mls_commit", commit(&from_bob)).await;
    bob.device.merge_pending_commit(group).expect("merged");
    assert_eq!(
        alice.ws.err("mls_commit", commit(&from_alice)).await,
        "conflict"
    );
    // Alice drops hers, processes Bob's from the log, and tries again.
    alice
        .device
        .discard_pending_commit(group)
        .expect("discarded");
    alice.follow_commit(&chat).await;
    let retry = alice.device.self_update(group).expect("a commit");
    let acked = alice.ws.ok("mls_commit", commit(&retry)).await;
    assert_eq!(acked["epoch"], retry.epoch + 1);
    alice.device.merge_pending_commit(group).expect("merged");
    bob.follow_commit(&chat).await;
    alice.send(&chat, "in step again").await;
    assert_eq!(bob.receive(&chat).await, "in step again");
}

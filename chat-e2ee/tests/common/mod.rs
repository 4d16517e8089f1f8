//! Helpers shared by the integration tests: devices on memory stores, and
//! the test playing the delivery service by passing bytes around.

// Each test crate uses its own subset of these.
#![allow(dead_code)]

use chat_e2ee::{CommitBundle, Device, MemoryDeviceStore, Processed};

pub(crate) const CHAT: &[u8] = b"01J9Z3QH8X6V4T2R0P8N6M4K2J";

pub(crate) fn device(user: &str, device_id: &str) -> (Device, MemoryDeviceStore) {
    let store = MemoryDeviceStore::new();
    let device = Device::create(user, device_id, store.clone()).expect("create device");
    (device, store)
}

pub(crate) fn key_package(device: &mut Device) -> Vec<u8> {
    device
        .generate_key_packages(1)
        .expect("key package")
        .pop()
        .expect("one key package")
}

/// `creator` adds `joiners` (one commit), the server accepts, the creator
/// merges and every joiner joins from the welcome.
pub(crate) fn add(creator: &mut Device, joiners: &mut [&mut Device]) -> CommitBundle {
    let key_packages: Vec<Vec<u8>> = joiners.iter_mut().map(|d| key_package(d)).collect();
    let bundle = creator.add_members(CHAT, &key_packages).expect("add");
    creator.merge_pending_commit(CHAT).expect("merge");
    let welcome = bundle.welcome.clone().expect("welcome");
    for joiner in joiners.iter_mut() {
        assert_eq!(joiner.join(&welcome).expect("join"), CHAT);
    }
    bundle
}

pub(crate) fn application(processed: Processed) -> (String, String, Vec<u8>) {
    match processed {
        Processed::Application {
            sender_user,
            sender_device,
            plaintext,
        } => (sender_user, sender_device, plaintext),
        other => panic!("expected an application message, got {other:?}"),
    }
}

/// `to` decrypts `ciphertext` and it came from `from` with `text`.
pub(crate) fn assert_reads(to: &mut Device, ciphertext: &[u8], from: &Device, text: &[u8]) {
    let (user, device, plaintext) = application(to.process(CHAT, ciphertext).expect("process"));
    assert_eq!(
        (user.as_str(), device.as_str()),
        (from.user_id(), from.device_id())
    );
    assert_eq!(plaintext, text);
}

pub(crate) fn ids(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(u, d)| (u.to_string(), d.to_string()))
        .collect()
}

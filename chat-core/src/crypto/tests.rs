//! Tests of the crypto module: the primitive against published vectors,
//! the envelope against known answers computed apart from this code, and
//! the properties the design relies on (binding, tamper evidence, no
//! panics, no leaks).

use std::time::Duration;

use aes_gcm::{Aes256Gcm, KeyInit, aead::AeadInPlace};
use proptest::prelude::*;
use ulid::Ulid;
use zeroize::ZeroizeOnDrop;

use super::{
    Aad, CryptoError, DataKey, DataKeyScope, EpochPolicy, KeyCheck, KeyEpoch, MasterKey, Purpose,
    UserKey, WrappedDataKey, WrappedUserKey, keys::testing, sealed_epoch,
};
use crate::{
    error::{Error, ErrorCode},
    model::{ChatId, MediaId, MessageId, Timestamp, UserId},
};

// --- helpers -----------------------------------------------------------------

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
        .collect()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn range(from: u8, len: u8) -> Vec<u8> {
    (from..from + len).collect()
}

fn user(name: &str) -> UserId {
    UserId::new(name).expect("valid user id")
}

fn nonce() -> [u8; 12] {
    std::array::from_fn(|i| 0xa0 + i as u8)
}

/// The fixed ids of the known-answer tests.
fn kat_scope() -> DataKeyScope {
    let chat = ChatId::from_ulid(Ulid(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10));
    DataKeyScope::new(chat, user("alice"), KeyEpoch::new(7))
}

fn kat_message() -> MessageId {
    MessageId::from_ulid(Ulid(0x1112_1314_1516_1718_191a_1b1c_1d1e_1f20))
}

fn scope() -> DataKeyScope {
    DataKeyScope::new(ChatId::new(), user("alice"), KeyEpoch::FIRST)
}

#[track_caller]
fn assert_decrypt_error<T: std::fmt::Debug>(result: Result<T, CryptoError>, what: &str) {
    match result {
        Err(CryptoError::Decrypt) => {}
        other => panic!("{what}: expected CryptoError::Decrypt, got {other:?}"),
    }
}

// --- the primitive -------------------------------------------------------------

/// The GCM specification's test case 16 (McGrew & Viega, "The Galois/Counter
/// Mode of Operation", also in NIST's GCM test vectors): AES-256, a 96-bit
/// IV, 60 bytes of plaintext and 20 bytes of associated data, neither a
/// whole number of blocks. Run through the same `aes-gcm` calls the
/// envelope makes, so the primitive is wired as the standard says.
#[test]
fn gcm_spec_test_case_16() {
    let key = hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
    let iv = hex("cafebabefacedbaddecaf888");
    let plaintext = hex(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    );
    let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let ciphertext = hex(
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
         8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
    );
    let tag = hex("76fc6ece0f4e1768cddf8853bb2d551b");

    let cipher = Aes256Gcm::new_from_slice(&key).expect("32-byte key");
    let iv: [u8; 12] = iv.try_into().expect("12-byte iv");
    let mut buf = plaintext.clone();
    let got_tag = cipher
        .encrypt_in_place_detached((&iv).into(), &aad, &mut buf)
        .expect("encrypt");
    assert_eq!(to_hex(&buf), to_hex(&ciphertext), "ciphertext");
    assert_eq!(to_hex(&got_tag), to_hex(&tag), "tag");

    cipher
        .decrypt_in_place_detached((&iv).into(), &aad, &mut buf, &got_tag)
        .expect("decrypt");
    assert_eq!(buf, plaintext);

    let mut bad_tag = got_tag;
    bad_tag[15] ^= 1;
    let mut buf = ciphertext.clone();
    assert!(
        cipher
            .decrypt_in_place_detached((&iv).into(), &aad, &mut buf, &bad_tag)
            .is_err()
    );
    assert_eq!(
        buf, ciphertext,
        "nothing is decrypted before the tag checks"
    );
}

/// The GCM specification's test case 13: AES-256, all-zero key and IV,
/// nothing to encrypt or authenticate; the tag alone.
#[test]
fn gcm_spec_test_case_13() {
    let cipher = Aes256Gcm::new(&[0u8; 32].into());
    let tag = cipher
        .encrypt_in_place_detached(&[0u8; 12].into(), &[], &mut [])
        .expect("encrypt");
    assert_eq!(to_hex(&tag), "530f8afbc74536b9a963b4f1c4cb738b");
}

// --- known answers ---------------------------------------------------------------
//
// The expected bytes were computed from the format in the module docs with
// Python's `cryptography` package (AESGCM, HKDF-SHA256), not with this code:
// `known_answers.py` beside this file. A change to any of them is a change
// of the stored format, and needs a new format version.

#[test]
fn known_answer_sealed_body() {
    let key = DataKey::from_bytes(&range(0x00, 32)).expect("key");
    let aad = Aad::body(&kat_scope(), kat_message());
    let sealed = testing::seal_with_nonce(&key, &aad, &nonce(), b"hello, world").expect("seal");
    assert_eq!(
        to_hex(&sealed),
        "010300000007a0a1a2a3a4a5a6a7a8a9aaab8e7d10412ae722c80d17ebb7419ac4c9a0f4548b412c5b4bf19db359"
    );
    assert_eq!(
        &*key.open_text(&aad, &sealed).expect("open"),
        "hello, world"
    );
    assert_eq!(sealed_epoch(&sealed).expect("epoch"), KeyEpoch::new(7));
}

#[test]
fn known_answer_wrapped_data_key() {
    let user_key = UserKey::from_bytes(&range(0x20, 32)).expect("user key");
    assert_eq!(user_key.id().to_string(), "83cf634aeff8c22e", "user key id");
    let data_key = DataKey::from_bytes(&range(0x00, 32)).expect("data key");
    let wrapped = testing::wrap_data_key_with_nonce(&user_key, &kat_scope(), &data_key, &nonce())
        .expect("wrap");
    assert_eq!(
        to_hex(wrapped.as_bytes()),
        "010283cf634aeff8c22ea0a1a2a3a4a5a6a7a8a9aaab4fe804ad546bb8ece8ae20a34756c2ed97d5\
         e7a18c56b04438ea4ee2f30b3678d90248cd50a5d44893a8c395f0332eb5"
    );
    let unwrapped = user_key
        .unwrap_data_key(&kat_scope(), &wrapped)
        .expect("unwrap");
    assert_eq!(
        testing::data_key_bytes(&unwrapped).to_vec(),
        range(0x00, 32)
    );
}

#[test]
fn known_answer_wrapped_user_key() {
    let master = MasterKey::from_bytes(&range(0x40, 32)).expect("master key");
    assert_eq!(master.id().to_string(), "8772d86a95e11aac", "master key id");
    let user_key = UserKey::from_bytes(&range(0x20, 32)).expect("user key");
    let alice = user("alice");
    let wrapped =
        testing::wrap_user_key_with_nonce(&master, &alice, &user_key, &nonce()).expect("wrap");
    assert_eq!(
        to_hex(wrapped.as_bytes()),
        "01018772d86a95e11aaca0a1a2a3a4a5a6a7a8a9aaab3d9ce076cf40d10c49df0bd091ccdad777e4\
         d41220a0100150185debc08b53f7b8658dea29966f90fc4f32ca4b39f4bf"
    );
    let unwrapped = master.unwrap_user_key(&alice, &wrapped).expect("unwrap");
    assert_eq!(unwrapped.id(), user_key.id());
    assert_eq!(
        testing::user_key_bytes(&unwrapped).to_vec(),
        range(0x20, 32)
    );
}

#[test]
fn master_key_base64_round_trips() {
    let text = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";
    let master = MasterKey::from_base64(text).expect("valid key");
    assert_eq!(master.id().to_string(), "8772d86a95e11aac");
    assert_eq!(master.to_base64().as_str(), text);
    // A key file's final newline, and indentation, are not part of the key.
    let padded = format!("  {text}\n");
    assert_eq!(
        MasterKey::from_base64(&padded).expect("trimmed").id(),
        master.id()
    );

    let fresh = MasterKey::generate().expect("generate");
    let again = MasterKey::from_base64(&fresh.to_base64()).expect("decode");
    assert_eq!(again.id(), fresh.id());
}

#[test]
fn bad_master_keys_are_refused_without_quoting_them() {
    let good = "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=";
    let cases = [
        ("", "44 characters, got 0"),
        (&good[..43], "44 characters, got 43"),
        ("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8=QUFB", "got 48"),
        (
            "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8!",
            "not standard base64",
        ),
        ("QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdX-8=", "URL-safe"),
        // 44 characters that decode to 33 bytes.
        (
            "QEFCQ0RFRkdISUpLTE1OT1BRUlNUVVZXWFlaW1xdXl8A",
            "32 bytes, got 33",
        ),
    ];
    for (input, want) in cases {
        match MasterKey::from_base64(input) {
            Err(CryptoError::InvalidKey(msg)) => {
                assert!(msg.contains(want), "{input:?}: {msg:?} should say {want:?}");
                if input.len() > 8 {
                    assert!(
                        !msg.contains(&input[..8]),
                        "the message quotes the key: {msg}"
                    );
                }
            }
            other => panic!("{input:?}: expected InvalidKey, got {other:?}"),
        }
    }
    for len in [0, 16, 31, 33, 64] {
        assert!(
            matches!(
                MasterKey::from_bytes(&vec![7; len]),
                Err(CryptoError::InvalidKey(_))
            ),
            "a {len}-byte master key"
        );
        assert!(matches!(
            UserKey::from_bytes(&vec![7; len]),
            Err(CryptoError::InvalidKey(_))
        ));
        assert!(matches!(
            DataKey::from_bytes(&vec![7; len]),
            Err(CryptoError::InvalidKey(_))
        ));
    }
}

// --- round trips ----------------------------------------------------------------

#[test]
fn the_whole_hierarchy_round_trips() {
    let master = MasterKey::generate().expect("master");
    let bob = user("bob");
    let user_key = UserKey::generate().expect("user key");
    let wrapped_user = master
        .wrap_user_key(&bob, &user_key)
        .expect("wrap user key");
    assert_eq!(wrapped_user.as_bytes().len(), 70);
    assert_eq!(wrapped_user.key_id(), master.id());

    let scope = DataKeyScope::new(ChatId::new(), bob.clone(), KeyEpoch::FIRST);
    let data_key = DataKey::generate().expect("data key");
    let wrapped_data = user_key
        .wrap_data_key(&scope, &data_key)
        .expect("wrap data key");
    assert_eq!(wrapped_data.as_bytes().len(), 70);
    assert_eq!(wrapped_data.key_id(), user_key.id());

    let message = MessageId::new();
    let sealed = data_key
        .seal(&Aad::body(&scope, message), "héllo 👋".as_bytes())
        .expect("seal");
    assert_eq!(sealed.len(), 34 + "héllo 👋".len());

    // Everything from the stored bytes and the master key alone.
    let wrapped_user = WrappedUserKey::from_bytes(wrapped_user.into_bytes()).expect("stored");
    let wrapped_data = WrappedDataKey::from_bytes(wrapped_data.into_bytes()).expect("stored");
    let user_key = master
        .unwrap_user_key(&bob, &wrapped_user)
        .expect("unwrap user key");
    let epoch = sealed_epoch(&sealed).expect("epoch");
    let scope = DataKeyScope::new(scope.chat, bob, epoch);
    let data_key = user_key
        .unwrap_data_key(&scope, &wrapped_data)
        .expect("unwrap data key");
    let text = data_key
        .open_text(&Aad::body(&scope, message), &sealed)
        .expect("open");
    assert_eq!(&*text, "héllo 👋");
}

#[test]
fn every_purpose_round_trips_empty_and_large_content() {
    let key = DataKey::generate().expect("key");
    let scope = scope();
    let media = MediaId::new();
    let message = MessageId::new();
    let aads = [
        Aad::body(&scope, message),
        Aad::edit(&scope, message),
        Aad::report_snapshot(&scope, message),
        Aad::media(&scope, media),
        Aad::media_thumbnail(&scope, media),
    ];
    let large: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
    for aad in &aads {
        for plaintext in [&b""[..], &large[..]] {
            let sealed = key.seal(aad, plaintext).expect("seal");
            assert_eq!(sealed.len(), plaintext.len() + 34);
            assert_eq!(key.open(aad, &sealed).expect("open").as_slice(), plaintext);
        }
    }
}

#[test]
fn two_seals_use_different_nonces() {
    let key = DataKey::generate().expect("key");
    let aad = Aad::body(&scope(), MessageId::new());
    let a = key.seal(&aad, b"same text").expect("seal");
    let b = key.seal(&aad, b"same text").expect("seal");
    assert_ne!(a[6..18], b[6..18], "nonces repeat");
    assert_ne!(a, b);

    let master = MasterKey::generate().expect("master");
    let user_key = UserKey::generate().expect("user key");
    let alice = user("alice");
    let w1 = master.wrap_user_key(&alice, &user_key).expect("wrap");
    let w2 = master.wrap_user_key(&alice, &user_key).expect("wrap");
    assert_ne!(w1, w2, "wrapping twice gives two records");
    assert_ne!(
        master.seal_check().expect("check"),
        master.seal_check().expect("check")
    );
}

#[test]
fn text_that_is_not_utf8_is_an_error() {
    let key = DataKey::generate().expect("key");
    let aad = Aad::body(&scope(), MessageId::new());
    let sealed = key.seal(&aad, &[0xff, 0xfe]).expect("seal");
    assert!(matches!(
        key.open_text(&aad, &sealed),
        Err(CryptoError::NotUtf8)
    ));
}

// --- binding -----------------------------------------------------------------

/// Sealed content opens only with every field of its `Aad` as sealed.
#[test]
fn every_aad_field_is_bound() {
    let key = DataKey::generate().expect("key");
    let scope = scope();
    let message = MessageId::new();
    let aad = Aad::body(&scope, message);
    let sealed = key.seal(&aad, b"for alice's eyes").expect("seal");

    let other_chat = DataKeyScope::new(ChatId::new(), scope.sender.clone(), scope.epoch);
    let other_sender = DataKeyScope::new(scope.chat, user("mallory"), scope.epoch);
    let other_epoch = DataKeyScope::new(scope.chat, scope.sender.clone(), KeyEpoch::new(2));
    let changed = [
        ("message", Aad::body(&scope, MessageId::new())),
        ("chat", Aad::body(&other_chat, message)),
        ("sender", Aad::body(&other_sender, message)),
        ("epoch", Aad::body(&other_epoch, message)),
        ("purpose edit", Aad::edit(&scope, message)),
        ("purpose report", Aad::report_snapshot(&scope, message)),
        (
            "purpose media",
            Aad::new(Purpose::Media, &scope, message.ulid()),
        ),
        (
            "purpose thumbnail",
            Aad::new(Purpose::MediaThumbnail, &scope, message.ulid()),
        ),
    ];
    for (what, other) in changed {
        assert_ne!(other, aad, "{what}");
        assert_decrypt_error(key.open(&other, &sealed), what);
    }
    assert_eq!(
        key.open(&aad, &sealed).expect("open").as_slice(),
        b"for alice's eyes"
    );
}

/// A user id's length is encoded, so fields cannot slide into each other.
#[test]
fn user_ids_are_length_prefixed() {
    let key = DataKey::generate().expect("key");
    let chat = ChatId::new();
    let message = MessageId::new();
    let a = DataKeyScope::new(chat, user("ab"), KeyEpoch::FIRST);
    let b = DataKeyScope::new(chat, user("a"), KeyEpoch::FIRST);
    let sealed = key.seal(&Aad::body(&a, message), b"x").expect("seal");
    assert_decrypt_error(
        key.open(&Aad::body(&b, message), &sealed),
        "shorter user id",
    );
}

#[test]
fn wrong_keys_are_refused() {
    let key = DataKey::generate().expect("key");
    let aad = Aad::body(&scope(), MessageId::new());
    let sealed = key.seal(&aad, b"secret").expect("seal");
    let other = DataKey::generate().expect("other key");
    assert_decrypt_error(other.open(&aad, &sealed), "another data key");

    // Another user key: its id is not the one the wrapped key names.
    let scope = scope();
    let user_key = UserKey::generate().expect("user key");
    let wrapped = user_key.wrap_data_key(&scope, &key).expect("wrap");
    let other_user_key = UserKey::generate().expect("other user key");
    match other_user_key.unwrap_data_key(&scope, &wrapped) {
        Err(CryptoError::KeyMismatch { expected, found }) => {
            assert_eq!(expected, other_user_key.id());
            assert_eq!(found, user_key.id());
        }
        other => panic!("expected KeyMismatch, got {other:?}"),
    }

    // Another master key, likewise.
    let master = MasterKey::generate().expect("master");
    let alice = user("alice");
    let wrapped = master.wrap_user_key(&alice, &user_key).expect("wrap");
    let other_master = MasterKey::generate().expect("other master");
    assert!(matches!(
        other_master.unwrap_user_key(&alice, &wrapped),
        Err(CryptoError::KeyMismatch { .. })
    ));
}

/// A header rewritten to name the key trying to open it gets past the id
/// check, and fails decryption.
#[test]
fn forged_key_ids_fail_to_decrypt() {
    let master = MasterKey::generate().expect("master");
    let other = MasterKey::generate().expect("other master");
    let alice = user("alice");
    let user_key = UserKey::generate().expect("user key");
    let mut bytes = master
        .wrap_user_key(&alice, &user_key)
        .expect("wrap")
        .into_bytes();
    bytes[2..10].copy_from_slice(other.id().as_bytes());
    let forged = WrappedUserKey::from_bytes(bytes).expect("well-formed");
    assert_decrypt_error(other.unwrap_user_key(&alice, &forged), "forged master id");

    let data_key = DataKey::generate().expect("data key");
    let scope = scope();
    let other_user_key = UserKey::generate().expect("other user key");
    let mut bytes = user_key
        .wrap_data_key(&scope, &data_key)
        .expect("wrap")
        .into_bytes();
    bytes[2..10].copy_from_slice(other_user_key.id().as_bytes());
    let forged = WrappedDataKey::from_bytes(bytes).expect("well-formed");
    assert_decrypt_error(
        other_user_key.unwrap_data_key(&scope, &forged),
        "forged user key id",
    );
}

#[test]
fn wrapped_keys_are_bound_to_their_user_and_scope() {
    let master = MasterKey::generate().expect("master");
    let user_key = UserKey::generate().expect("user key");
    let alice = user("alice");
    let wrapped = master.wrap_user_key(&alice, &user_key).expect("wrap");
    assert_decrypt_error(
        master.unwrap_user_key(&user("bob"), &wrapped),
        "a user key moved to another user",
    );

    let data_key = DataKey::generate().expect("data key");
    let scope = scope();
    let wrapped = user_key.wrap_data_key(&scope, &data_key).expect("wrap");
    let moved = [
        (
            "chat",
            DataKeyScope::new(ChatId::new(), scope.sender.clone(), scope.epoch),
        ),
        (
            "sender",
            DataKeyScope::new(scope.chat, user("bob"), scope.epoch),
        ),
        (
            "epoch",
            DataKeyScope::new(scope.chat, scope.sender.clone(), KeyEpoch::new(9)),
        ),
    ];
    for (what, other) in moved {
        assert_decrypt_error(user_key.unwrap_data_key(&other, &wrapped), what);
    }
    let unwrapped = user_key.unwrap_data_key(&scope, &wrapped).expect("unwrap");
    assert_eq!(
        testing::data_key_bytes(&unwrapped),
        testing::data_key_bytes(&data_key)
    );
}

// --- tampering and malformed input --------------------------------------------

/// Every single-bit change of a record, and every truncation, is an error:
/// never a panic, never other content.
#[test]
fn flipped_bits_and_truncations_are_errors() {
    let key = DataKey::generate().expect("key");
    let aad = Aad::body(&scope(), MessageId::new());
    let sealed = key.seal(&aad, b"twenty-odd bytes of text").expect("seal");
    for i in 0..sealed.len() * 8 {
        let mut bad = sealed.clone();
        bad[i / 8] ^= 1 << (i % 8);
        assert!(key.open(&aad, &bad).is_err(), "bit {i} flipped");
    }
    for len in 0..sealed.len() {
        assert!(
            key.open(&aad, &sealed[..len]).is_err(),
            "cut to {len} bytes"
        );
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert!(key.open(&aad, &longer).is_err(), "a byte appended");

    let master = MasterKey::generate().expect("master");
    let alice = user("alice");
    let user_key = UserKey::generate().expect("user key");
    let wrapped = master.wrap_user_key(&alice, &user_key).expect("wrap");
    for i in 0..wrapped.as_bytes().len() * 8 {
        let mut bad = wrapped.as_bytes().to_vec();
        bad[i / 8] ^= 1 << (i % 8);
        let opened =
            WrappedUserKey::from_bytes(bad).and_then(|w| master.unwrap_user_key(&alice, &w));
        assert!(opened.is_err(), "bit {i} of a wrapped user key flipped");
    }

    let check = master.seal_check().expect("check");
    for i in 0..check.as_bytes().len() * 8 {
        let mut bad = check.as_bytes().to_vec();
        bad[i / 8] ^= 1 << (i % 8);
        let verified = KeyCheck::from_bytes(bad).and_then(|c| master.verify_check(&c));
        assert!(verified.is_err(), "bit {i} of a key check flipped");
    }
}

#[test]
fn malformed_records_are_format_errors() {
    let master = MasterKey::generate().expect("master");
    let user_key = UserKey::generate().expect("user key");
    let wrapped = master
        .wrap_user_key(&user("alice"), &user_key)
        .expect("wrap")
        .into_bytes();

    let format_error = |r: Result<_, CryptoError>, what: &str| match r {
        Err(CryptoError::Format { .. }) => {}
        other => panic!("{what}: expected a Format error, got {other:?}"),
    };
    format_error(WrappedUserKey::from_bytes(Vec::new()).map(|_| ()), "empty");
    format_error(
        WrappedDataKey::from_bytes(wrapped.clone()).map(|_| ()),
        "a user key as a data key",
    );
    format_error(
        KeyCheck::from_bytes(wrapped.clone()).map(|_| ()),
        "a user key as a check",
    );
    let mut v2 = wrapped.clone();
    v2[0] = 2;
    format_error(
        WrappedUserKey::from_bytes(v2).map(|_| ()),
        "an unknown version",
    );
    format_error(
        sealed_epoch(&wrapped).map(|_| ()),
        "a user key as sealed content",
    );

    let key = DataKey::generate().expect("key");
    format_error(
        key.open(&Aad::body(&scope(), MessageId::new()), &wrapped)
            .map(|_| ()),
        "open",
    );

    let Err(e) = WrappedUserKey::from_bytes(vec![1, 1, 0]) else {
        panic!("three bytes are no wrapped key");
    };
    assert_eq!(e.to_string(), "malformed wrapped user key: too short");
}

// --- key check ---------------------------------------------------------------

#[test]
fn key_check_tells_the_right_master_key() {
    let master = MasterKey::generate().expect("master");
    let check = master.seal_check().expect("check");
    assert_eq!(check.key_id(), master.id());
    master.verify_check(&check).expect("own check");

    let stored = KeyCheck::from_bytes(check.as_bytes().to_vec()).expect("stored");
    master.verify_check(&stored).expect("stored check");

    let other = MasterKey::generate().expect("other");
    match other.verify_check(&check) {
        Err(e @ CryptoError::KeyMismatch { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&master.id().to_string()), "{msg}");
            assert!(msg.contains(&other.id().to_string()), "{msg}");
        }
        r => panic!("expected KeyMismatch, got {r:?}"),
    }
}

// --- secrets -------------------------------------------------------------------

#[test]
fn keys_wipe_themselves() {
    fn zeroize_on_drop<T: ZeroizeOnDrop>() {}
    zeroize_on_drop::<MasterKey>();
    zeroize_on_drop::<UserKey>();
    zeroize_on_drop::<DataKey>();
    assert_eq!(testing::wiped_secret(), [0u8; 32], "Drop leaves zeros");
}

#[test]
fn debug_output_shows_no_key_bytes() {
    let bytes = range(0x40, 32);
    let master = MasterKey::from_bytes(&bytes).expect("master");
    let user_key = UserKey::from_bytes(&bytes).expect("user key");
    let data_key = DataKey::from_bytes(&bytes).expect("data key");
    let printed = [
        format!("{master:?}"),
        format!("{master:#?}"),
        format!("{user_key:?}"),
        format!("{data_key:?}"),
    ];
    let as_hex = to_hex(&bytes);
    let as_list = format!("{bytes:?}");
    for p in &printed {
        assert!(
            !p.contains(&as_hex[..8]) && !p.contains(&as_list[..12]),
            "{p}"
        );
        assert!(!p.contains("64, 65, 66"), "{p}");
    }
    assert_eq!(
        printed[0],
        format!("MasterKey {{ id: KeyId({}), .. }}", master.id())
    );
    assert_eq!(printed[3], "DataKey { .. }");
}

#[test]
fn crypto_errors_are_internal_errors_that_say_nothing_secret() {
    let key = DataKey::generate().expect("key");
    let aad = Aad::body(&scope(), MessageId::new());
    let mut sealed = key.seal(&aad, b"my secret diagnosis").expect("seal");
    let last = sealed.len() - 1;
    sealed[last] ^= 1;
    let e = key.open(&aad, &sealed).expect_err("tampered");
    let text = e.to_string();
    assert!(!text.contains("diagnosis"));
    let e: Error = e.into();
    assert_eq!(e.code(), ErrorCode::Internal);
    assert_eq!(e.public_message(), "internal error");
    let source = std::error::Error::source(&e).expect("the crypto error is the source");
    assert!(source.downcast_ref::<CryptoError>().is_some());
}

// --- epochs --------------------------------------------------------------------

#[test]
fn epoch_policy_defaults() {
    let policy = EpochPolicy::default();
    assert_eq!(policy.max_messages, 10_000);
    assert_eq!(policy.max_age, Duration::from_secs(7 * 24 * 3600));
}

#[test]
fn new_epoch_is_due_by_count_or_by_age() {
    let policy = EpochPolicy {
        max_messages: 3,
        max_age: Duration::from_secs(60),
    };
    let t0 = Timestamp::from_millis(1_795_464_000_000);
    assert!(!policy.is_due(0, t0, t0));
    assert!(!policy.is_due(2, t0, t0.plus(Duration::from_millis(59_999))));
    assert!(policy.is_due(3, t0, t0), "by count");
    assert!(
        policy.is_due(0, t0, t0.plus(Duration::from_secs(60))),
        "by age"
    );
    assert!(
        !policy.is_due(0, t0, Timestamp::from_millis(t0.as_millis() - 3_600_000)),
        "a clock that stepped back is no age"
    );
    let every_message = EpochPolicy {
        max_messages: 0,
        max_age: Duration::ZERO,
    };
    assert!(every_message.is_due(0, t0, t0));
}

#[test]
fn epochs_count_up_and_stop_at_the_end() {
    assert_eq!(KeyEpoch::FIRST.get(), 1);
    assert_eq!(KeyEpoch::FIRST.next(), Some(KeyEpoch::new(2)));
    assert_eq!(KeyEpoch::new(u32::MAX).next(), None);
}

// --- properties ------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sealed_content_round_trips_and_any_flip_fails(
        plaintext in proptest::collection::vec(any::<u8>(), 0..512),
        sender in "[a-z0-9_.:@-]{1,128}",
        epoch in any::<u32>(),
        flip in any::<proptest::sample::Index>(),
        bit in 0u8..8,
    ) {
        let key = DataKey::generate().expect("key");
        let scope = DataKeyScope::new(ChatId::new(), user(&sender), KeyEpoch::new(epoch));
        let aad = Aad::body(&scope, MessageId::new());
        let sealed = key.seal(&aad, &plaintext).expect("seal");
        prop_assert_eq!(sealed_epoch(&sealed).expect("epoch").get(), epoch);
        let opened = key.open(&aad, &sealed).expect("open");
        prop_assert_eq!(opened.as_slice(), &plaintext[..]);

        let mut bad = sealed.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 1 << bit;
        prop_assert!(key.open(&aad, &bad).is_err());
    }
}

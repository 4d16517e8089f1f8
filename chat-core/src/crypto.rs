//! Encryption at rest: keys, wrapping, sealing message content, and when
//! to start a new key epoch (`docs/DESIGN.md`, "Encryption", mode `at_rest`).
//!
//! This module is the library the engine and the stores build on; it does
//! no I/O and holds no state. Where the wrapped keys live is the
//! [`KeyStore`](crate::keystore::KeyStore)'s business.
//!
//! # Key hierarchy
//!
//! ```text
//! MasterKey            from configuration (CHAT_MASTER_KEY, a key file)
//!  └─ wraps UserKey     one per user, kept in the key store (crypto-shredding
//!      │                deletes it there)
//!      └─ wraps DataKey one per (chat, sender, epoch); the wrapped form may
//!          │            sit beside the messages: without the user key it is
//!          │            useless
//!          └─ seals     message bodies, edits, report snapshots, media
//! ```
//!
//! Every layer is AES-256-GCM (`aes-gcm`, no hand-written primitive) under
//! a random 96-bit nonce, with associated data that names what is
//! protected: the user a user key belongs to; the chat, sender and epoch of
//! a data key; the purpose, chat, message (or media object), sender and
//! epoch of a sealed body. A record copied to another user, chat, row or
//! epoch therefore fails to decrypt ([`CryptoError::Decrypt`]).
//!
//! # Derived keys (HKDF-SHA256)
//!
//! The two key-encryption keys, [`MasterKey`] and [`UserKey`], are never
//! used directly as AES keys. Each is only the input keying material of
//! HKDF-SHA256 (RFC 5869; no salt, which RFC 5869 allows for keys that are
//! already uniformly random), expanded with fixed `info` strings into:
//!
//! - a wrapping key (`info` = `chat-engine master-key wrap v1` or
//!   `chat-engine user-key wrap v1`);
//! - for the master key only, a key-check key (`chat-engine master-key
//!   check v1`), so the check record shares no AES key with the wrapped
//!   user keys;
//! - a [`KeyId`]: 8 bytes (`chat-engine master-key id v1` /
//!   `chat-engine user-key id v1`), a public fingerprint that each wrapped
//!   record carries in its header. It lets the server say *which* key a
//!   record needs (a wrong master key, an interrupted rotation, a user key
//!   that was shredded and made anew) without trying to decrypt, and
//!   without revealing anything usable about the key.
//!
//! This costs one HKDF (a few microseconds) when such a key is made or
//! unwrapped, which the [`KeyCache`](crate::keystore::KeyCache) makes rare.
//!
//! A [`DataKey`] is used directly, without per-purpose subkeys, on purpose:
//! sealing and opening are on the send and history paths, where an HKDF per
//! body would cost more than the AES-GCM itself; the purpose is already
//! bound by the associated data, whose encoding is unambiguous (fixed-width
//! fields, length-prefixed user ids), so a body cannot pass for an edit or
//! a media object either way; and a data key seals at most
//! [`EpochPolicy::max_messages`] bodies (plus edits), orders of magnitude
//! under the 2^32 messages NIST SP 800-38D allows under one key with random
//! nonces.
//!
//! # Byte formats
//!
//! Every record starts with a header that says what it is; the header is
//! also part of the associated data, so changing it fails decryption.
//! Integers are big-endian.
//!
//! | record | header | then |
//! |---|---|---|
//! | [`WrappedUserKey`] (70 bytes) | version `1`, kind `1`, master [`KeyId`] (8) | nonce (12), ciphertext (32), tag (16) |
//! | [`WrappedDataKey`] (70 bytes) | version `1`, kind `2`, user [`KeyId`] (8) | nonce (12), ciphertext (32), tag (16) |
//! | sealed content (34 + n bytes) | version `1`, kind `3`, [`KeyEpoch`] (4) | nonce (12), ciphertext (n), tag (16) |
//! | [`KeyCheck`] (62 bytes) | version `1`, kind `4`, master [`KeyId`] (8) | nonce (12), ciphertext (24), tag (16) |
//!
//! The associated data is the header, then a label and the fields that
//! bind the record:
//!
//! | record | label | fields |
//! |---|---|---|
//! | user key | `chat-engine user-key v1` | user id |
//! | data key | `chat-engine data-key v1` | chat id, sender id, epoch |
//! | sealed | `chat-engine sealed v1` | [`Purpose`] (1), chat id, object id (message or media), sender id |
//! | key check | `chat-engine key-check v1` | |
//!
//! Chat, message and media ids are their 16 ULID bytes; a user id is its
//! length (8 bytes) and its UTF-8 bytes; an epoch is 4 bytes.
//!
//! # Secrets
//!
//! Key bytes live in one heap allocation per key (moving a key moves a
//! pointer, not the bytes) and are wiped when the key is dropped
//! ([`ZeroizeOnDrop`](zeroize::ZeroizeOnDrop)); opened plaintext comes back
//! in [`Zeroizing`] buffers. No key type implements `Clone`, and their
//! `Debug` shows the [`KeyId`] at most. Errors never carry key material or
//! plaintext.

use std::fmt;

use zeroize::Zeroizing;

use crate::error::Error;

mod envelope;
mod epoch;
mod keys;
#[cfg(test)]
mod tests;

pub use envelope::{
    Aad, DataKeyScope, KeyCheck, Purpose, SEALED_OVERHEAD, WrappedDataKey, WrappedUserKey,
    sealed_epoch,
};
pub use epoch::{EpochPolicy, KeyEpoch};
pub use keys::{DataKey, DataKeyOpener, KEY_LEN, MasterKey, UserKey};

/// What went wrong in the crypto module.
///
/// Messages name the kind of record and the problem, never key bytes or
/// plaintext, so they can go to logs as they are. Converted into
/// [`Error::Backend`] (a server fault, `internal` on the wire) where the
/// engine's `Result` is needed; the `CryptoError` stays its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// Authentication failed: the wrong key, or the record (or its
    /// associated data: user, chat, message, sender, epoch, purpose) was
    /// altered or moved. Deliberately says no more.
    #[error("decryption failed: wrong key, or the record was altered or moved")]
    Decrypt,
    /// The record was wrapped under another key than the one given, as its
    /// header says: a wrong master key, a user key that was shredded (and
    /// perhaps made anew), or a master-key rotation that did not finish.
    #[error("the record was wrapped under key {found}, not under the given key {expected}")]
    KeyMismatch {
        /// The id of the key that was given.
        expected: KeyId,
        /// The id of the key the record names.
        found: KeyId,
    },
    /// The bytes are not a record of the expected kind (too short, an
    /// unknown version, another kind of record).
    #[error("malformed {what}: {problem}")]
    Format {
        /// The kind of record expected.
        what: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Key material given from outside (configuration, a key file) is
    /// unusable: wrong length or encoding. Says so without quoting it.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The plaintext is longer than AES-GCM can seal under one nonce
    /// (2^36 - 32 bytes).
    #[error("the plaintext is too large to encrypt")]
    TooLarge,
    /// Opened content was expected to be UTF-8 text and is not.
    #[error("the decrypted content is not UTF-8 text")]
    NotUtf8,
    /// The operating system's random number generator failed; nothing was
    /// encrypted or generated.
    #[error("the system random number generator failed: {0}")]
    Random(#[source] getrandom::Error),
    /// Key derivation refused its input (a bug: the lengths are fixed).
    #[error("key derivation failed")]
    Derive,
}

impl From<CryptoError> for Error {
    fn from(e: CryptoError) -> Self {
        Error::backend(e)
    }
}

/// The public fingerprint of a [`MasterKey`] or [`UserKey`]: 8 bytes derived
/// from the key with HKDF-SHA256 (see the module docs).
///
/// Wrapped records carry the id of the key that wrapped them, so a server
/// can tell "wrong key" and "shredded key" from "tampered" before
/// decrypting, and name the key in its message. It reveals nothing usable
/// about the key, and is no proof of it: only decryption is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The id's bytes, as records store them.
    pub fn as_bytes(&self) -> &[u8; 8] {
        &self.0
    }

    /// An id from its stored bytes.
    pub fn from_bytes(bytes: [u8; 8]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for KeyId {
    /// Lowercase hex, 16 characters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// Opened content that must be text (a message body), as a wiped-on-drop
/// `String`: the buffer is reused, not copied.
fn into_text(mut plaintext: Zeroizing<Vec<u8>>) -> Result<Zeroizing<String>, CryptoError> {
    match String::from_utf8(std::mem::take(&mut *plaintext)) {
        Ok(text) => Ok(Zeroizing::new(text)),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            Err(CryptoError::NotUtf8)
        }
    }
}

//! End-to-end encrypted chats with MLS (RFC 9420, through openmls): the
//! client side ([`Device`]) and the checks the server runs as the delivery
//! service ([`ds`]).
//!
//! # Model
//!
//! * A **device** ([`Device`]) is one installation of one user: it owns an
//!   Ed25519 signature key pair and an MLS BasicCredential whose identity is
//!   `"<user_id>/<device_id>"` (see [`identity`] and [`parse_identity`]).
//!   Every device is its own MLS member (its own leaf), so a user with two
//!   devices occupies two leaves of each of its chats.
//! * A **chat** is an MLS group whose group id is the chat id's bytes (the
//!   caller passes an opaque id, e.g. a ULID string's bytes). Groups are kept
//!   in a plain ciphersuite: [`CIPHERSUITE`], the only one this crate speaks.
//! * The **store** ([`DeviceStore`]) holds the device's whole MLS state as a
//!   key-value map: identity, signature key pair, key package private keys,
//!   every group's tree, epoch secrets and ratchets. [`MemoryDeviceStore`]
//!   is for tests, [`SqliteDeviceStore`] for real devices.
//! * The **server** is the MLS delivery service: it orders handshake
//!   messages per group, so exactly one commit wins each epoch. It keeps a
//!   public view of each group ([`ds::PublicGroupState`]) to check that a
//!   commit is for the current epoch and to learn which devices it adds and
//!   removes, and it serves key packages after checking them
//!   ([`ds::validate_key_package`]). It never holds a group secret.
//!
//! # Pending commits
//!
//! An operation that changes membership or keys ([`Device::add_members`],
//! [`Device::remove_members`], [`Device::remove_device`],
//! [`Device::self_update`]) builds a commit and leaves it **pending**: the
//! group stays in its current epoch. The caller sends the commit to the
//! server, then:
//!
//! * the server accepted it: [`Device::merge_pending_commit`] moves the group
//!   to the next epoch (and the welcome, if any, goes to the new members);
//! * the server refused it because another commit won the epoch:
//!   [`Device::discard_pending_commit`], then [`Device::process`] what was
//!   missed (the winning commit among it), then retry the operation.
//!
//! While a commit is pending the device does not encrypt
//! ([`E2eeError::PendingCommit`]): a message sent at the old epoch would
//! reach members after the commit moved them on, and they could no longer
//! read it.
//!
//! # Persistence rule
//!
//! **Group state is written before a ciphertext leaves the device.** Every
//! operation runs on an in-memory copy of the state; when it succeeds, the
//! entries it changed are written through [`DeviceStore::apply`] in one
//! atomic transaction, and only then are the ciphertext, commit or
//! plaintext returned. If the write fails, the in-memory state is put back
//! as it was and the operation returns [`E2eeError::Storage`], handing out
//! nothing: a ciphertext whose ratchet step was not saved could otherwise
//! be followed, after a crash, by a second ciphertext under the same key.
//! An operation that fails for any other reason (a tampered message, a
//! message for another epoch, an unknown group) changes nothing either, in
//! memory or on disk.
//!
//! The price: each operation copies the device's whole state map (to diff
//! and roll back) and loads the group from it. That is linear in the
//! state of all the device's groups, which suits a client with tens of
//! chats, not a device in thousands of large groups.
//!
//! # Trust
//!
//! Credentials are BasicCredentials: nothing but the server's checks binds
//! `"<user>/<device>"` to a signature key (see [`ds`] for what it checks).
//! Members refuse commits that let a member change its identity or key, but
//! they trust the server to serve each device's genuine key package; a
//! malicious server could only be caught by comparing
//! [`Device::signature_public_key`] out of band, which this crate leaves to
//! the application.
//!
//! # Wire conventions
//!
//! This crate deals in raw bytes (`Vec<u8>`); the protocol carries them as
//! standard base64, which is the caller's job.
//!
//! * **Key packages**: the TLS encoding of an `MLSMessage` carrying the
//!   `KeyPackage` (wire format `mls_key_package`). Readers
//!   ([`Device::add_members`], [`ds::validate_key_package`]) also accept a
//!   bare TLS-encoded `KeyPackage`. Each device has one reusable
//!   **last-resort** key package (LastResort extension,
//!   [`Device::last_resort_key_package`]) for when its one-shot ones run out.
//! * **Welcome**: TLS encoding of `MLSMessage(welcome)`. Groups carry the
//!   ratchet tree extension in their GroupInfo and Welcome, so a joiner needs
//!   nothing but the welcome.
//! * **GroupInfo**: TLS encoding of `MLSMessage(group_info)`, with the
//!   ratchet tree extension ([`CommitBundle::group_info`],
//!   [`Device::group_info`]).
//! * **Commits**: `MLSMessage` carrying a `PublicMessage`. Handshake
//!   messages go out in plaintext (outgoing wire format policy "always
//!   plaintext", incoming "mixed") so the server can check them; they are
//!   signed by the committer, and nothing in them is secret.
//! * **Application messages**: `MLSMessage` carrying a `PrivateMessage`.
//!
//! # Versions
//!
//! openmls is pinned exactly (`=0.9.2`): its storage format (what a device
//! keeps between runs, and what [`ds::PublicGroupState::to_bytes`] holds)
//! can change between pre-1.0 releases, so an upgrade needs a migration.

mod device;
pub mod ds;
mod error;
mod store;
mod wire;

pub use device::{CommitBundle, Device, Processed, RotationPolicy};
pub use error::E2eeError;
pub use store::{Change, DeviceStore, Entry, MemoryDeviceStore, SqliteDeviceStore, StoreError};

use openmls::prelude::Ciphersuite;

/// The one MLS ciphersuite this crate creates and accepts: X25519, AES-128-GCM,
/// SHA-256, Ed25519.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The credential identity of a device: `"<user_id>/<device_id>"` as UTF-8.
///
/// Returns `None` if either id is empty or contains `'/'` (the separator
/// must stay unambiguous).
pub fn identity(user_id: &str, device_id: &str) -> Option<Vec<u8>> {
    if !valid_id(user_id) || !valid_id(device_id) {
        return None;
    }
    Some(format!("{user_id}/{device_id}").into_bytes())
}

/// Splits a credential identity `"<user_id>/<device_id>"` into its two ids.
///
/// Returns `None` unless the bytes are UTF-8 with exactly one `'/'` and both
/// sides non-empty.
pub fn parse_identity(identity: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(identity).ok()?;
    let (user_id, device_id) = text.split_once('/')?;
    if !valid_id(user_id) || !valid_id(device_id) {
        return None;
    }
    Some((user_id.to_owned(), device_id.to_owned()))
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && !id.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_round_trips() {
        let id = identity("alice", "phone").expect("valid ids");
        assert_eq!(id, b"alice/phone");
        assert_eq!(
            parse_identity(&id),
            Some(("alice".to_owned(), "phone".to_owned()))
        );
    }

    #[test]
    fn identity_refuses_ambiguous_ids() {
        assert_eq!(identity("a/b", "c"), None);
        assert_eq!(identity("", "c"), None);
        assert_eq!(identity("a", ""), None);
        assert_eq!(parse_identity(b"a/b/c"), None);
        assert_eq!(parse_identity(b"ab"), None);
        assert_eq!(parse_identity(b"/b"), None);
        assert_eq!(parse_identity(b"a/"), None);
        assert_eq!(parse_identity(&[0xff, b'/', b'a']), None);
    }
}

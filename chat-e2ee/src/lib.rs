//! End-to-end encrypted chats with MLS (RFC 9420, through openmls).
//!
//! This first part holds the device identity format and the store a device
//! keeps its MLS state in; the device itself and the delivery-service
//! checks follow.
//!
//! A device's credential is an MLS BasicCredential whose identity is
//! `"<user_id>/<device_id>"` (see [`identity`] and [`parse_identity`]).

mod store;

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

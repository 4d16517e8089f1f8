//! The server's part of end-to-end encrypted (`e2ee`) chats: MLS
//! (RFC 9420), where the server is the *delivery service*. Clients hold
//! every secret; the server keeps each device's key packages and hands
//! each out once, and (with the commit machinery) orders handshake
//! messages per chat.
//!
//! The engine never parses MLS itself: an [`MlsDelivery`] given to
//! [`EngineBuilder::mls`](crate::engine::EngineBuilder::mls) does
//! (`chat-e2ee`'s `ds` module, over openmls, in `chat-server`). Without
//! one, the MLS commands answer `bad_request`.

use std::fmt::Debug;

use crate::{
    error::Result,
    model::{DeviceId, UserId},
};

/// Most key packages one device keeps on the server (the last-resort one
/// aside): publishing beyond it is refused, so that no client grows the
/// store without bound. Clients keep about this many and top up on
/// `key_packages_low`.
pub const MAX_KEY_PACKAGES_PER_DEVICE: u64 = 100;

/// Largest key package accepted, in bytes (TLS encoding). One of the
/// project's ciphersuite is about 300 bytes; extensions may add some.
pub const MAX_KEY_PACKAGE_BYTES: usize = 8 * 1024;

/// Most key packages in one `publish_key_packages`.
pub const MAX_KEY_PACKAGES_PER_PUBLISH: usize = 100;

/// Below this many key packages left, a device gets `key_packages_low`.
pub const KEY_PACKAGES_LOW: u64 = 10;

/// Most users in one `claim_key_packages`.
pub const MAX_CLAIM_USERS: usize = 256;

/// What the delivery service learns from a key package (nothing secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPackageInfo {
    /// The user its credential names.
    pub user_id: UserId,
    /// The device its credential names.
    pub device_id: DeviceId,
    /// Whether it is marked last resort (reusable).
    pub last_resort: bool,
}

/// Parses and checks what clients send for MLS; see the [module
/// docs](self).
pub trait MlsDelivery: Debug + Send + Sync + 'static {
    /// Checks a key package as published (its signature, ciphersuite and
    /// lifetime) and says whose it is. Anything else: an
    /// [`Error::InvalidInput`](crate::Error::InvalidInput).
    fn inspect_key_package(&self, bytes: &[u8]) -> Result<KeyPackageInfo>;
}

/// One device's key package, handed out by
/// [`Store::claim_key_packages`](crate::store::Store::claim_key_packages).
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    /// Whose.
    pub user_id: UserId,
    /// Which device.
    pub device_id: DeviceId,
    /// The key package, as published.
    pub key_package: Vec<u8>,
    /// Whether it is the device's last-resort one (none other was left).
    pub last_resort: bool,
    /// Key packages the device has left (the last-resort one not counted).
    pub remaining: u64,
}

impl Debug for ClaimedKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedKeyPackage")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("bytes", &self.key_package.len())
            .field("last_resort", &self.last_resort)
            .field("remaining", &self.remaining)
            .finish()
    }
}

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
    model::{ChatId, DeviceId, UserId},
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
    /// The public signature key its credential is bound to: the server
    /// pins the first one a device publishes, and a commit may add the
    /// device only with that key.
    pub signature_key: Vec<u8>,
}

/// Largest MLS object in `mls_commit` (commit, welcome or group info),
/// in bytes.
pub const MAX_MLS_OBJECT_BYTES: usize = 256 * 1024;

/// A device: its user and device ids.
pub type MlsDevice = (UserId, DeviceId);

/// A chat's group as the delivery service sees it (nothing secret).
#[derive(Clone, PartialEq, Eq)]
pub struct MlsGroupView {
    /// The epoch.
    pub epoch: u64,
    /// The devices in it.
    pub members: Vec<MlsDevice>,
    /// The public state to keep, opaque to the engine.
    pub state: Vec<u8>,
}

impl Debug for MlsGroupView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsGroupView")
            .field("epoch", &self.epoch)
            .field("members", &self.members)
            .finish_non_exhaustive()
    }
}

/// What a commit does, as [`MlsDelivery::apply_commit`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlsCommitView {
    /// The device that made it.
    pub committer: MlsDevice,
    /// Devices it adds.
    pub added: Vec<MlsDevice>,
    /// The signature keys of the devices it adds, in the order of `added`.
    pub added_signature_keys: Vec<Vec<u8>>,
    /// Devices it removes.
    pub removed: Vec<MlsDevice>,
    /// The group after it.
    pub group: MlsGroupView,
}

/// Parses and checks what clients send for MLS; see the [module
/// docs](self). Every refusal of client input is an
/// [`Error::InvalidInput`](crate::Error::InvalidInput), a commit for
/// another epoch a [`Error::Conflict`](crate::Error::Conflict).
pub trait MlsDelivery: Debug + Send + Sync + 'static {
    /// Checks a key package as published (its signature, ciphersuite and
    /// lifetime) and says whose it is.
    fn inspect_key_package(&self, bytes: &[u8]) -> Result<KeyPackageInfo>;

    /// The group described by `group_info` (with its ratchet tree), which
    /// the first commit of `chat` carries: the state to check that commit
    /// against. Its group id must be `chat`'s (the UTF-8 of the chat id).
    fn group_from_info(&self, chat: ChatId, group_info: &[u8]) -> Result<MlsGroupView>;

    /// The group id and epoch of an application message (an `MLSMessage`
    /// carrying a `PrivateMessage`), from its public header; anything else
    /// is refused. Nothing is decrypted or verified: only members can.
    fn inspect_application(&self, message: &[u8]) -> Result<(Vec<u8>, u64)>;

    /// Checks `commit` (a `PublicMessage`) against the group's public
    /// `state`: its signature, that it is for the state's epoch, the tree
    /// it leads to; returns what it does and the group after it.
    fn apply_commit(&self, state: &[u8], commit: &[u8]) -> Result<MlsCommitView>;
}

/// A key package a device published and nobody claimed yet, as
/// [`Store::key_packages_of`](crate::store::Store::key_packages_of) lists
/// it (for the user's data export).
#[derive(Clone, PartialEq, Eq)]
pub struct PublishedKeyPackage {
    /// Which device.
    pub device_id: DeviceId,
    /// The key package, as published.
    pub key_package: Vec<u8>,
    /// Whether it is the device's last-resort one.
    pub last_resort: bool,
}

impl Debug for PublishedKeyPackage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedKeyPackage")
            .field("device_id", &self.device_id)
            .field("bytes", &self.key_package.len())
            .field("last_resort", &self.last_resort)
            .finish()
    }
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

//! The client's error type.

use crate::store::StoreError;

/// Everything a [`Device`](crate::Device) operation can fail with.
///
/// Messages carry openmls' own error text, which names the failed check and
/// never key material or plaintext.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum E2eeError {
    /// The device holds no group with this id (never joined, or forgotten).
    #[error("unknown group")]
    UnknownGroup,
    /// A group with this id already exists on this device.
    #[error("group already exists")]
    GroupExists,
    /// The bytes are not an MLS message of the expected kind, or belong to
    /// another group.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The message could not be decrypted (tampered, or keys this device
    /// does not have).
    #[error("decryption failed: {0}")]
    Decrypt(String),
    /// The message decrypted or parsed but failed MLS validation (bad
    /// signature, invalid commit, ...).
    #[error("processing failed: {0}")]
    ProcessFailed(String),
    /// The message is for another epoch than the group's current one: an
    /// older one (its keys are gone, for forward secrecy) or a newer one
    /// (commits were missed: process them first).
    #[error("message for epoch {found}, group is at epoch {expected}")]
    WrongEpoch {
        /// The group's current epoch on this device.
        expected: u64,
        /// The epoch the message was made for.
        found: u64,
    },
    /// A key package failed to parse or verify, or uses another ciphersuite.
    #[error("invalid key package: {0}")]
    InvalidKeyPackage(String),
    /// A credential's identity is not `"<user_id>/<device_id>"`, or a member
    /// tried to change its identity or signature key.
    #[error("invalid credential")]
    InvalidCredential,
    /// The operation needs no pending commit, and there is one: merge or
    /// discard it first.
    #[error("a commit is pending")]
    PendingCommit,
    /// There is no pending commit to merge or discard.
    #[error("no pending commit")]
    NoPendingCommit,
    /// A proposal received from another member is pending, and MLS forbids
    /// encrypting until a commit covers it ([`Device::self_update`] commits
    /// pending proposals).
    ///
    /// [`Device::self_update`]: crate::Device::self_update
    #[error("proposals are pending")]
    PendingProposals,
    /// No member matches the user or device to remove.
    #[error("not a member")]
    NotAMember,
    /// This device was removed from the group: it can no longer send or
    /// receive in it.
    #[error("removed from the group")]
    Evicted,
    /// The store already holds a device ([`Device::create`] on a used store).
    ///
    /// [`Device::create`]: crate::Device::create
    #[error("the store already holds a device")]
    DeviceExists,
    /// The store holds no device ([`Device::open`] on an empty store).
    ///
    /// [`Device::open`]: crate::Device::open
    #[error("the store holds no device")]
    NoDevice,
    /// Reading or writing the device store failed; the operation changed
    /// nothing and handed nothing out.
    #[error("storage: {0}")]
    Storage(String),
    /// Any other failure inside openmls.
    #[error("mls: {0}")]
    Mls(String),
}

impl From<StoreError> for E2eeError {
    fn from(e: StoreError) -> Self {
        E2eeError::Storage(e.to_string())
    }
}

/// Maps any openmls error into [`E2eeError::Mls`] by its text.
pub(crate) fn mls(e: impl std::fmt::Display) -> E2eeError {
    E2eeError::Mls(e.to_string())
}

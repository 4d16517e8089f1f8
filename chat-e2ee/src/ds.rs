//! What the server checks as the MLS delivery service. No secrets involved:
//! everything here works on public MLS data (key packages, GroupInfo,
//! plaintext commits).
//!
//! # What the server does with it
//!
//! * **Key packages.** On upload, [`validate_key_package`]; the server then
//!   checks that the `(user_id, device_id)` it reports is the authenticated
//!   uploader's (a credential names whoever its maker chose: the check is
//!   what binds it), and may pin the device's [`ValidKeyPackage::signature_key`]
//!   (first key seen for a device wins).
//! * **Group creation.** The creator sends [`Device::group_info`]; the
//!   server builds [`PublicGroupState::from_group_info`] and checks that its
//!   [`group_id`](PublicGroupState::group_id) is the chat id and that
//!   [`members`](PublicGroupState::members) is exactly the creator's device.
//! * **Commits.** [`PublicGroupState::apply_commit`] (or
//!   [`check_commit`](PublicGroupState::check_commit) first) refuses
//!   anything but a plaintext commit for the current epoch
//!   ([`DsError::WrongEpoch`] means: conflict, the client must catch up and
//!   retry), verifies it against the group's public state, and reports its
//!   [`CommitEffect`]. **The server must still check itself** that:
//!   - [`CommitEffect::committer`] is the authenticated sender device, and
//!     that device may make this change (chat rights);
//!   - [`CommitEffect::added`] and [`CommitEffect::removed`] are exactly the
//!     membership change the request declared (e.g. "add user X" adds X's
//!     devices and nobody else, "remove user Y" removes all of Y's);
//!   - each added device's key is the one it pinned for that device
//!     ([`CommitEffect::added_signature_keys`]), so a member cannot add a
//!     leaf it made itself under someone else's name;
//!   - the welcome goes to the added devices only.
//!
//!   Identity changes are refused here already: a commit that changes a
//!   member's credential or signature key is [`DsError::Invalid`].
//! * **Application messages.** [`inspect_message`] gives the epoch of a
//!   `PrivateMessage`; the server should refuse one whose epoch is not the
//!   group's current one (the sender is behind: it catches up and
//!   re-encrypts), since members that moved on can no longer decrypt it.
//!
//! [`Device::group_info`]: crate::Device::group_info

use std::fmt;

use openmls::prelude::{
    ContentType, GroupId, MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, ProposalStore,
    ProtocolMessage, PublicGroup, Sender, StagedCommit, WireFormat, tls_codec::Deserialize as _,
};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;

use crate::CIPHERSUITE;
use crate::wire::{credential_ids, parse_group_info, same_identity, verify_key_package};

/// Why the delivery service refused something.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DsError {
    /// A commit for another epoch than the group's: another commit won that
    /// epoch (`found < expected`), or the sender is ahead of the server.
    #[error("commit for epoch {found}, group is at epoch {expected}")]
    WrongEpoch {
        /// The group's current epoch.
        expected: u64,
        /// The epoch the commit was made for.
        found: u64,
    },
    /// The message is a valid group message but not a commit.
    #[error("not a commit")]
    NotACommit,
    /// The bytes are not valid (parse, signature, group, ciphersuite,
    /// identity).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A stored [`PublicGroupState`] could not be read back.
    #[error("corrupt group state: {0}")]
    Corrupt(String),
}

/// A key package that parsed, verified and uses [`CIPHERSUITE`].
#[derive(Clone, PartialEq, Eq)]
pub struct ValidKeyPackage {
    /// The user id its credential names (not yet checked against anyone).
    pub user_id: String,
    /// The device id its credential names.
    pub device_id: String,
    /// Whether it carries the LastResort extension (reusable).
    pub last_resort: bool,
    /// The Ed25519 public key the credential is bound to.
    pub signature_key: Vec<u8>,
    /// When it expires (Unix seconds): the server may drop it then.
    pub not_after: u64,
    /// The bytes exactly as given.
    pub bytes: Vec<u8>,
}

impl fmt::Debug for ValidKeyPackage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidKeyPackage")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("last_resort", &self.last_resort)
            .field("not_after", &self.not_after)
            .field("len", &self.bytes.len())
            .finish_non_exhaustive()
    }
}

/// Parses (`MLSMessage(key_package)` or bare `KeyPackage`), verifies
/// (signatures, lifetime, capabilities) and checks the ciphersuite and
/// identity form of a key package.
pub fn validate_key_package(bytes: &[u8]) -> Result<ValidKeyPackage, DsError> {
    let key_package =
        verify_key_package(bytes, &RustCrypto::default()).map_err(DsError::Invalid)?;
    let leaf = key_package.leaf_node();
    let (user_id, device_id) = credential_ids(leaf.credential())
        .ok_or_else(|| DsError::Invalid("credential is not \"<user>/<device>\"".to_owned()))?;
    Ok(ValidKeyPackage {
        user_id,
        device_id,
        last_resort: key_package.last_resort(),
        signature_key: leaf.signature_key().as_slice().to_vec(),
        not_after: key_package.life_time().not_after(),
        bytes: bytes.to_vec(),
    })
}

/// The kind of a group message, as visible without decrypting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// An application message (always a `PrivateMessage`).
    Application,
    /// A standalone proposal (this protocol sends none).
    Proposal,
    /// A commit.
    Commit,
}

/// The public header of a group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageInfo {
    /// The group (chat) id.
    pub group_id: Vec<u8>,
    /// The epoch the message was made in.
    pub epoch: u64,
    /// What it carries.
    pub kind: MessageKind,
    /// Whether it is a `PrivateMessage` (encrypted) rather than a
    /// `PublicMessage`.
    pub encrypted: bool,
}

/// Reads the public header of a group message (`MLSMessage` carrying a
/// `PublicMessage` or `PrivateMessage`), without verifying anything.
pub fn inspect_message(bytes: &[u8]) -> Result<MessageInfo, DsError> {
    let message = parse_protocol(bytes)?;
    let kind = match message.content_type() {
        ContentType::Application => MessageKind::Application,
        ContentType::Proposal => MessageKind::Proposal,
        ContentType::Commit => MessageKind::Commit,
    };
    Ok(MessageInfo {
        group_id: message.group_id().as_slice().to_vec(),
        epoch: message.epoch().as_u64(),
        kind,
        encrypted: message.wire_format() == WireFormat::PrivateMessage,
    })
}

/// What a commit does, as far as the public state shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEffect {
    /// The epoch the commit applies to (the group's epoch before it).
    pub epoch_before: u64,
    /// The device that made (and signed) the commit, as `(user, device)`.
    pub committer: (String, String),
    /// Devices the commit adds, as `(user, device)`.
    pub added: Vec<(String, String)>,
    /// The signature keys of the added devices, in the order of `added`.
    pub added_signature_keys: Vec<Vec<u8>>,
    /// Devices the commit removes, as `(user, device)`.
    pub removed: Vec<(String, String)>,
    /// Whether the committer replaced its own leaf (an update path: fresh
    /// encryption keys). openmls puts one in every commit it makes, so
    /// this is `true` for adds and removes as well as for key rotations.
    pub updated_self: bool,
}

/// The server's public view of one group: its ratchet tree and group
/// context, enough to verify commits and follow membership, and no secret.
pub struct PublicGroupState {
    group: PublicGroup,
    storage: MemoryStorage,
    crypto: RustCrypto,
}

impl fmt::Debug for PublicGroupState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicGroupState")
            .field("epoch", &self.epoch())
            .field("members", &self.members())
            .finish_non_exhaustive()
    }
}

/// Leading bytes of [`PublicGroupState::to_bytes`], with a format version.
const STATE_MAGIC: &[u8] = b"chat-e2ee/public-group/1\n";

impl PublicGroupState {
    /// Builds the view from a GroupInfo (`MLSMessage(group_info)` or bare)
    /// carrying the ratchet tree extension, e.g. [`Device::group_info`] of
    /// the creator. The GroupInfo's signature is verified against the tree.
    ///
    /// [`Device::group_info`]: crate::Device::group_info
    pub fn from_group_info(group_info: &[u8]) -> Result<Self, DsError> {
        let group_info = parse_group_info(group_info).map_err(DsError::Invalid)?;
        if group_info.ciphersuite() != CIPHERSUITE {
            return Err(DsError::Invalid("unsupported ciphersuite".to_owned()));
        }
        let ratchet_tree = group_info
            .extensions()
            .ratchet_tree()
            .ok_or_else(|| DsError::Invalid("group info without ratchet tree".to_owned()))?
            .ratchet_tree()
            .clone();
        let storage = MemoryStorage::default();
        let crypto = RustCrypto::default();
        let (group, _) = PublicGroup::from_external(
            &crypto,
            &storage,
            ratchet_tree,
            group_info,
            ProposalStore::new(),
        )
        .map_err(|e| DsError::Invalid(e.to_string()))?;
        let state = PublicGroupState {
            group,
            storage,
            crypto,
        };
        if state
            .group
            .members()
            .any(|m| credential_ids(&m.credential).is_none())
        {
            return Err(DsError::Invalid(
                "a member's credential is not \"<user>/<device>\"".to_owned(),
            ));
        }
        Ok(state)
    }

    /// The group (chat) id.
    pub fn group_id(&self) -> &[u8] {
        self.group.group_id().as_slice()
    }

    /// The group's current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.group_context().epoch().as_u64()
    }

    /// The members as `(user_id, device_id)`, in leaf order.
    pub fn members(&self) -> Vec<(String, String)> {
        self.group
            .members()
            .filter_map(|member| credential_ids(&member.credential))
            .collect()
    }

    /// The members as `(user_id, device_id, signature_key)`, in leaf order.
    pub fn members_with_keys(&self) -> Vec<(String, String, Vec<u8>)> {
        self.group
            .members()
            .filter_map(|member| {
                let (user, device) = credential_ids(&member.credential)?;
                Some((user, device, member.signature_key))
            })
            .collect()
    }

    /// Verifies a commit (`MLSMessage(PublicMessage)`) against the current
    /// state and reports what it does, without applying it.
    pub fn check_commit(&self, commit: &[u8]) -> Result<CommitEffect, DsError> {
        self.stage(commit).map(|(_, effect)| effect)
    }

    /// Verifies a commit, applies it (the state moves to the next epoch) and
    /// reports what it did. On error the state is unchanged.
    pub fn apply_commit(&mut self, commit: &[u8]) -> Result<CommitEffect, DsError> {
        let (staged, effect) = self.stage(commit)?;
        self.group
            .merge_commit(&self.storage, staged)
            .map_err(|e| DsError::Invalid(e.to_string()))?;
        Ok(effect)
    }

    /// The state as an opaque blob for the server's database; read back
    /// with [`from_bytes`](Self::from_bytes). Tied to the pinned openmls
    /// version's storage format.
    pub fn to_bytes(&self) -> Vec<u8> {
        let values = self
            .storage
            .values
            .read()
            .unwrap_or_else(|e| e.into_inner());
        // Sorted, so equal states give equal blobs.
        let mut entries: Vec<_> = values.iter().collect();
        entries.sort();
        let mut out = STATE_MAGIC.to_vec();
        put_bytes(&mut out, self.group_id());
        out.extend_from_slice(&(entries.len() as u64).to_be_bytes());
        for (key, value) in entries {
            put_bytes(&mut out, key);
            put_bytes(&mut out, value);
        }
        out
    }

    /// Reads back a blob from [`to_bytes`](Self::to_bytes).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DsError> {
        let mut rest = bytes
            .strip_prefix(STATE_MAGIC)
            .ok_or_else(|| DsError::Corrupt("unknown format".to_owned()))?;
        let group_id = take_bytes(&mut rest)?.to_vec();
        let count = u64::from_be_bytes(take_array(&mut rest)?);
        let storage = MemoryStorage::default();
        {
            let mut values = storage.values.write().unwrap_or_else(|e| e.into_inner());
            for _ in 0..count {
                let key = take_bytes(&mut rest)?.to_vec();
                let value = take_bytes(&mut rest)?.to_vec();
                values.insert(key, value);
            }
        }
        if !rest.is_empty() {
            return Err(DsError::Corrupt("trailing bytes".to_owned()));
        }
        let group = PublicGroup::load(&storage, &GroupId::from_slice(&group_id))
            .map_err(|e| DsError::Corrupt(e.to_string()))?
            .ok_or_else(|| DsError::Corrupt("no group in the state".to_owned()))?;
        Ok(PublicGroupState {
            group,
            storage,
            crypto: RustCrypto::default(),
        })
    }

    fn stage(&self, commit: &[u8]) -> Result<(StagedCommit, CommitEffect), DsError> {
        let message = parse_protocol(commit)?;
        if message.content_type() != ContentType::Commit {
            return Err(DsError::NotACommit);
        }
        if message.wire_format() != WireFormat::PublicMessage {
            return Err(DsError::Invalid("commit is not a PublicMessage".to_owned()));
        }
        if message.group_id().as_slice() != self.group_id() {
            return Err(DsError::Invalid("commit for another group".to_owned()));
        }
        let expected = self.epoch();
        let found = message.epoch().as_u64();
        if found != expected {
            return Err(DsError::WrongEpoch { expected, found });
        }
        let processed = self
            .group
            .process_message(&self.crypto, message)
            .map_err(|e| DsError::Invalid(e.to_string()))?;
        let Sender::Member(committer_index) = *processed.sender() else {
            return Err(DsError::Invalid("commit from a non-member".to_owned()));
        };
        let committer = credential_ids(processed.credential())
            .ok_or_else(|| DsError::Invalid("committer credential".to_owned()))?;
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            return Err(DsError::NotACommit);
        };

        let mut added = Vec::new();
        let mut added_signature_keys = Vec::new();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            let ids = credential_ids(leaf.credential()).ok_or_else(|| {
                DsError::Invalid("added credential is not \"<user>/<device>\"".to_owned())
            })?;
            added.push(ids);
            added_signature_keys.push(leaf.signature_key().as_slice().to_vec());
        }
        let mut removed = Vec::new();
        for remove in staged.remove_proposals() {
            let leaf = self
                .group
                .leaf(remove.remove_proposal().removed())
                .ok_or_else(|| DsError::Invalid("removes an empty leaf".to_owned()))?;
            removed.push(
                credential_ids(leaf.credential())
                    .ok_or_else(|| DsError::Invalid("removed credential".to_owned()))?,
            );
        }
        for update in staged.update_proposals() {
            let Sender::Member(index) = *update.sender() else {
                return Err(DsError::Invalid("update from a non-member".to_owned()));
            };
            let old = self
                .group
                .leaf(index)
                .ok_or_else(|| DsError::Invalid("update of an empty leaf".to_owned()))?;
            if !same_identity(old, update.update_proposal().leaf_node()) {
                return Err(DsError::Invalid("an update changes identity".to_owned()));
            }
        }
        let updated_self = match staged.update_path_leaf_node() {
            Some(new_leaf) => {
                let old = self
                    .group
                    .leaf(committer_index)
                    .ok_or_else(|| DsError::Invalid("committer leaf".to_owned()))?;
                if !same_identity(old, new_leaf) {
                    return Err(DsError::Invalid(
                        "the commit changes the committer's identity".to_owned(),
                    ));
                }
                true
            }
            None => false,
        };
        let effect = CommitEffect {
            epoch_before: expected,
            committer,
            added,
            added_signature_keys,
            removed,
            updated_self,
        };
        Ok((*staged, effect))
    }
}

fn parse_protocol(bytes: &[u8]) -> Result<ProtocolMessage, DsError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|_| DsError::Invalid("not an MLS message".to_owned()))?;
    match message.extract() {
        MlsMessageBodyIn::PublicMessage(m) => Ok(m.into()),
        MlsMessageBodyIn::PrivateMessage(m) => Ok(m.into()),
        _ => Err(DsError::NotACommit),
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_array<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], DsError> {
    let (head, tail) = rest
        .split_first_chunk::<N>()
        .ok_or_else(|| DsError::Corrupt("truncated".to_owned()))?;
    *rest = tail;
    Ok(*head)
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], DsError> {
    let len = u64::from_be_bytes(take_array(rest)?);
    let len = usize::try_from(len).map_err(|_| DsError::Corrupt("length".to_owned()))?;
    if rest.len() < len {
        return Err(DsError::Corrupt("truncated".to_owned()));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

//! The client: one device, its groups and its messages.

use std::collections::HashMap;
use std::fmt;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openmls::prelude::{
    BasicCredential, Capabilities, CredentialWithKey, ExtensionType, GroupId, KeyPackage,
    KeyPackageRef, LeafNodeIndex, LeafNodeParameters, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup,
    MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, OpenMlsCrypto,
    OpenMlsProvider, ProcessMessageError, ProcessedMessageContent, ProcessedWelcome, Sender,
    SignatureScheme, StagedCommit, ValidationError, WelcomeError, tls_codec::Deserialize as _,
};
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::storage::StorageProvider as _;
use openmls_traits::types::HashType;
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use zeroize::Zeroize;

use crate::error::{E2eeError, mls};
use crate::store::{Change, DeviceStore};
use crate::wire::{credential_ids, parse_protocol_message, same_identity, verify_key_package};
use crate::{CIPHERSUITE, identity};

/// Keys of this crate's own entries in the state map. openmls' keys start
/// with an upper-case label ("Tree", "KeyPackage", ...) and are looked up
/// exactly, so a lower-case prefix can never collide with them.
const IDENTITY_KEY: &[u8] = b"chat-e2ee/identity";
const LAST_RESORT_KEY: &[u8] = b"chat-e2ee/last-resort";
const GROUP_META_PREFIX: &[u8] = b"chat-e2ee/group/";

/// Format version of [`IdentityRecord`], for a later migration.
const IDENTITY_VERSION: u32 = 1;

/// A last-resort key package is replaced once it has less than this left
/// before it expires: whoever fetched the old one still has that long to use
/// it, and a new one goes out well before the old one stops working.
const LAST_RESORT_RENEW_BEFORE: Duration = Duration::from_secs(28 * 24 * 60 * 60);

/// When a device should rotate its keys in a group with
/// [`Device::self_update`]: after it sent `max_messages` messages in the
/// current epoch, or once the epoch is `max_age` old (as this device saw it:
/// from when it entered the epoch). Rotation bounds how much a stolen key
/// can read (post-compromise security).
///
/// The default is 100 messages or 7 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// Messages this device encrypts in one epoch before it should rotate.
    pub max_messages: u64,
    /// How long an epoch may last before this device should rotate.
    pub max_age: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        RotationPolicy {
            max_messages: 100,
            max_age: Duration::from_secs(7 * 24 * 60 * 60),
        }
    }
}

/// What a commit-making operation produced, for the caller to send to the
/// server. The commit stays pending on this device until
/// [`Device::merge_pending_commit`] or [`Device::discard_pending_commit`].
#[derive(Clone, PartialEq, Eq)]
pub struct CommitBundle {
    /// `MLSMessage(PublicMessage)` carrying the commit, for every member.
    pub commit: Vec<u8>,
    /// `MLSMessage(welcome)` for the devices the commit adds, if any.
    pub welcome: Option<Vec<u8>>,
    /// `MLSMessage(group_info)` of the new epoch, with the ratchet tree
    /// extension: lets the server (re)build its public view of the group.
    pub group_info: Option<Vec<u8>>,
    /// The epoch the commit applies to: the group's epoch before merging.
    /// The server accepts it only if the group is still at this epoch.
    pub epoch: u64,
}

impl fmt::Debug for CommitBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitBundle")
            .field("commit_len", &self.commit.len())
            .field("welcome_len", &self.welcome.as_ref().map(Vec::len))
            .field("group_info_len", &self.group_info.as_ref().map(Vec::len))
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// The outcome of [`Device::process`].
#[derive(Clone, PartialEq, Eq)]
pub enum Processed {
    /// A message from a member, decrypted and authenticated.
    Application {
        /// The sender's user id (from its credential).
        sender_user: String,
        /// The sender's device id (from its credential).
        sender_device: String,
        /// The decrypted message.
        plaintext: Vec<u8>,
    },
    /// Another member's commit, merged: the group moved to `epoch`.
    Commit {
        /// The group's new epoch.
        epoch: u64,
        /// Whether the commit removed this device: the group is then
        /// inactive here (see [`E2eeError::Evicted`]).
        removed_self: bool,
    },
    /// A standalone proposal from a member, stored until a commit covers it.
    /// This protocol sends none (the server refuses them); see
    /// [`E2eeError::PendingProposals`].
    Proposal,
    /// One of this device's own messages echoed back: an application message
    /// of the current epoch (openmls recognises its own sender index), or a
    /// commit this device made (recognised by its hash, pending or merged).
    /// Nothing changed. An own application message from an epoch already
    /// passed cannot be recognised and fails with [`E2eeError::WrongEpoch`]:
    /// the caller had better skip its own echoes by message id.
    Ignored,
}

impl fmt::Debug for Processed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The plaintext is shown by length only.
            Processed::Application {
                sender_user,
                sender_device,
                plaintext,
            } => f
                .debug_struct("Application")
                .field("sender_user", sender_user)
                .field("sender_device", sender_device)
                .field("plaintext_len", &plaintext.len())
                .finish(),
            Processed::Commit {
                epoch,
                removed_self,
            } => f
                .debug_struct("Commit")
                .field("epoch", epoch)
                .field("removed_self", removed_self)
                .finish(),
            Processed::Proposal => f.write_str("Proposal"),
            Processed::Ignored => f.write_str("Ignored"),
        }
    }
}

/// Who this device is, stored so [`Device::open`] can restore it. The private
/// signature key is in openmls' own entry for the key pair.
#[derive(Serialize, Deserialize)]
struct IdentityRecord {
    version: u32,
    user_id: String,
    device_id: String,
    signature_public_key: Vec<u8>,
}

/// This crate's bookkeeping for one group, persisted with the group's state
/// (so the rotation counters survive a restart).
#[derive(Serialize, Deserialize, Default)]
struct GroupMeta {
    /// The epoch the counters below belong to.
    epoch: u64,
    /// Unix seconds when this device entered `epoch`.
    epoch_seen_at: u64,
    /// Application messages this device encrypted in `epoch`.
    sent_in_epoch: u64,
    /// SHA-256 of the last commit this device made in the group, to
    /// recognise its echo.
    own_commit: Option<Vec<u8>>,
}

/// The device's last-resort key package, reused until it nears expiry.
#[derive(Serialize, Deserialize)]
struct LastResortRecord {
    bytes: Vec<u8>,
    not_after: u64,
    hash_ref: KeyPackageRef,
    /// Replaced ones, whose private keys are kept until they expire (someone
    /// may still use them to add this device) and then deleted.
    retired: Vec<(KeyPackageRef, u64)>,
}

/// The openmls provider: RustCrypto, and the in-memory map the device's
/// state lives in between writes to its [`DeviceStore`].
#[derive(Default)]
struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &MemoryStorage {
        &self.storage
    }

    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }

    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}

/// A copy of the state map taken before an operation, to diff against and to
/// put back if the operation fails. Wiped when dropped: it holds keys.
struct Snapshot(HashMap<Vec<u8>, Vec<u8>>);

impl Drop for Snapshot {
    fn drop(&mut self) {
        for value in self.0.values_mut() {
            value.zeroize();
        }
    }
}

/// One device of one user: its identity, its key packages and its MLS
/// groups, persisted in a [`DeviceStore`] (see the crate docs for the model
/// and the persistence rule).
///
/// Methods that change state take `&mut self`; a caller sharing a device
/// between tasks puts it behind a mutex.
pub struct Device {
    provider: Provider,
    store: Box<dyn DeviceStore>,
    signer: SignatureKeyPair,
    credential: CredentialWithKey,
    user_id: String,
    device_id: String,
    policy: RotationPolicy,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No state: it is all key material.
        f.debug_struct("Device")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Creates a new device with a fresh Ed25519 signature key pair, and
    /// writes its identity to `store`, which must be empty.
    ///
    /// Fails with [`E2eeError::InvalidCredential`] if an id is empty or
    /// contains `'/'`, and [`E2eeError::DeviceExists`] if the store is not
    /// empty.
    pub fn create(
        user_id: &str,
        device_id: &str,
        store: impl DeviceStore + 'static,
    ) -> Result<Device, E2eeError> {
        let identity = identity(user_id, device_id).ok_or(E2eeError::InvalidCredential)?;
        if !store.load()?.is_empty() {
            return Err(E2eeError::DeviceExists);
        }
        let signer = SignatureKeyPair::new(SignatureScheme::ED25519).map_err(mls)?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: signer.public().into(),
        };
        let mut device = Device {
            provider: Provider::default(),
            store: Box::new(store),
            signer,
            credential,
            user_id: user_id.to_owned(),
            device_id: device_id.to_owned(),
            policy: RotationPolicy::default(),
        };
        device.transact(|dev| {
            dev.signer.store(dev.provider.storage()).map_err(mls)?;
            dev.put_meta(
                IDENTITY_KEY,
                &IdentityRecord {
                    version: IDENTITY_VERSION,
                    user_id: dev.user_id.clone(),
                    device_id: dev.device_id.clone(),
                    signature_public_key: dev.signer.public().to_vec(),
                },
            )
        })?;
        Ok(device)
    }

    /// Restores the device kept in `store`: identity, key packages, groups
    /// and rotation counters. The rotation policy is the default again (it
    /// is configuration, not state).
    pub fn open(store: impl DeviceStore + 'static) -> Result<Device, E2eeError> {
        let provider = Provider::default();
        {
            let mut values = write_values(&provider.storage);
            values.extend(store.load()?);
        }
        let record: IdentityRecord =
            get_meta(&provider.storage, IDENTITY_KEY)?.ok_or(E2eeError::NoDevice)?;
        if record.version != IDENTITY_VERSION {
            return Err(E2eeError::Storage(format!(
                "unknown identity record version {}",
                record.version
            )));
        }
        let identity =
            identity(&record.user_id, &record.device_id).ok_or(E2eeError::InvalidCredential)?;
        let signer = SignatureKeyPair::read(
            &provider.storage,
            &record.signature_public_key,
            SignatureScheme::ED25519,
        )
        .ok_or_else(|| E2eeError::Storage("the signature key pair is missing".to_owned()))?;
        let credential = CredentialWithKey {
            credential: BasicCredential::new(identity).into(),
            signature_key: signer.public().into(),
        };
        Ok(Device {
            provider,
            store: Box::new(store),
            signer,
            credential,
            user_id: record.user_id,
            device_id: record.device_id,
            policy: RotationPolicy::default(),
        })
    }

    /// This device's user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// This device's device id.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// This device's Ed25519 signature public key: the key its credential is
    /// bound to in every group (the server may pin it per device).
    pub fn signature_public_key(&self) -> &[u8] {
        self.signer.public()
    }

    /// The rotation policy [`needs_self_update`](Self::needs_self_update)
    /// applies.
    pub fn rotation_policy(&self) -> RotationPolicy {
        self.policy
    }

    /// Sets the rotation policy (not persisted: set it again after
    /// [`open`](Self::open)).
    pub fn set_rotation_policy(&mut self, policy: RotationPolicy) {
        self.policy = policy;
    }

    /// Makes `n` one-shot key packages (`MLSMessage(key_package)` each) for
    /// the server to hand out, one per group this device gets added to.
    /// Their private keys are stored until a welcome uses them.
    pub fn generate_key_packages(&mut self, n: usize) -> Result<Vec<Vec<u8>>, E2eeError> {
        self.transact(|dev| {
            (0..n)
                .map(|_| {
                    let bundle = KeyPackage::builder()
                        .leaf_node_capabilities(capabilities())
                        .build(
                            CIPHERSUITE,
                            &dev.provider,
                            &dev.signer,
                            dev.credential.clone(),
                        )
                        .map_err(mls)?;
                    MlsMessageOut::from(bundle.key_package().clone())
                        .to_bytes()
                        .map_err(mls)
                })
                .collect()
        })
    }

    /// This device's last-resort key package (`MLSMessage(key_package)` with
    /// the LastResort extension): the server hands it out when the one-shot
    /// ones have run out, and it may be used any number of times.
    ///
    /// The same bytes come back on every call until the package has less
    /// than four weeks left before it expires; then a new one is made (and
    /// must be published again: call this at start-up and compare).
    /// Replaced packages' keys are kept until they expire, then deleted.
    pub fn last_resort_key_package(&mut self) -> Result<Vec<u8>, E2eeError> {
        self.transact(|dev| {
            let now = now_secs();
            let existing: Option<LastResortRecord> = dev.get_meta(LAST_RESORT_KEY)?;
            if let Some(record) = &existing
                && record.not_after > now.saturating_add(LAST_RESORT_RENEW_BEFORE.as_secs())
            {
                return Ok(record.bytes.clone());
            }
            let bundle = KeyPackage::builder()
                .leaf_node_capabilities(capabilities())
                .mark_as_last_resort()
                .build(
                    CIPHERSUITE,
                    &dev.provider,
                    &dev.signer,
                    dev.credential.clone(),
                )
                .map_err(mls)?;
            let key_package = bundle.key_package();
            let mut retired = Vec::new();
            if let Some(old) = existing {
                retired = old.retired;
                retired.push((old.hash_ref, old.not_after));
            }
            // Expired packages can no longer be used to add this device.
            let mut kept = Vec::with_capacity(retired.len());
            for (hash_ref, not_after) in retired {
                if not_after <= now {
                    dev.provider
                        .storage()
                        .delete_key_package(&hash_ref)
                        .map_err(mls)?;
                } else {
                    kept.push((hash_ref, not_after));
                }
            }
            let record = LastResortRecord {
                bytes: MlsMessageOut::from(key_package.clone())
                    .to_bytes()
                    .map_err(mls)?,
                not_after: key_package.life_time().not_after(),
                hash_ref: key_package.hash_ref(dev.provider.crypto()).map_err(mls)?,
                retired: kept,
            };
            dev.put_meta(LAST_RESORT_KEY, &record)?;
            Ok(record.bytes)
        })
    }

    /// Creates a group with this device as its only member, at epoch 0.
    /// `group_id` is the chat id's bytes.
    ///
    /// Fails with [`E2eeError::GroupExists`] if this device is in a group
    /// with that id (a group it was removed from is replaced).
    pub fn create_group(&mut self, group_id: &[u8]) -> Result<(), E2eeError> {
        self.transact(|dev| {
            let id = GroupId::from_slice(group_id);
            dev.clear_inactive_group(&id)?;
            let group = MlsGroup::builder()
                .with_group_id(id)
                .ciphersuite(CIPHERSUITE)
                .with_wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
                .use_ratchet_tree_extension(true)
                .with_capabilities(capabilities())
                .build(&dev.provider, &dev.signer, dev.credential.clone())
                .map_err(mls)?;
            dev.enter_epoch(group_id, group.epoch().as_u64())
        })
    }

    /// The group's current GroupInfo (`MLSMessage(group_info)` with the
    /// ratchet tree extension), signed by this device: what the server
    /// builds its [`PublicGroupState`](crate::ds::PublicGroupState) from when
    /// the group is created.
    pub fn group_info(&self, group_id: &[u8]) -> Result<Vec<u8>, E2eeError> {
        let group = self.load_group(group_id)?;
        if !group.is_active() {
            return Err(E2eeError::Evicted);
        }
        group
            .export_group_info(self.provider.crypto(), &self.signer, true)
            .map_err(mls)?
            .to_bytes()
            .map_err(mls)
    }

    /// Adds the devices whose key packages are given (either encoding; see
    /// the crate docs). Each key package is verified, must use
    /// [`CIPHERSUITE`] and name a `"<user>/<device>"` not yet in the group.
    /// The commit stays pending.
    pub fn add_members(
        &mut self,
        group_id: &[u8],
        key_packages: &[Vec<u8>],
    ) -> Result<CommitBundle, E2eeError> {
        if key_packages.is_empty() {
            return Err(E2eeError::InvalidKeyPackage("no key package".to_owned()));
        }
        let mut verified = Vec::with_capacity(key_packages.len());
        let mut added = Vec::with_capacity(key_packages.len());
        for bytes in key_packages {
            let key_package = verify_key_package(bytes, self.provider.crypto())
                .map_err(E2eeError::InvalidKeyPackage)?;
            let ids = credential_ids(key_package.leaf_node().credential())
                .ok_or(E2eeError::InvalidCredential)?;
            if added.contains(&ids) {
                return Err(E2eeError::InvalidKeyPackage(format!(
                    "{}/{} given twice",
                    ids.0, ids.1
                )));
            }
            added.push(ids);
            verified.push(key_package);
        }
        self.transact(|dev| {
            let mut group = dev.operational_group(group_id)?;
            for member in group.members() {
                if let Some(ids) = credential_ids(&member.credential)
                    && added.contains(&ids)
                {
                    return Err(E2eeError::InvalidKeyPackage(format!(
                        "{}/{} is already a member",
                        ids.0, ids.1
                    )));
                }
            }
            let epoch = group.epoch().as_u64();
            let (commit, welcome, group_info) = group
                .add_members(&dev.provider, &dev.signer, &verified)
                .map_err(mls)?;
            dev.finish_commit(
                group_id,
                epoch,
                commit,
                Some(welcome),
                group_info.map(MlsMessageOut::from),
            )
        })
    }

    /// Removes every device of `user_id` from the group. When `user_id` is
    /// this device's own user, its other devices are removed and this one
    /// stays (MLS forbids a committer removing itself). The commit stays
    /// pending.
    ///
    /// Fails with [`E2eeError::NotAMember`] if no (other) device of the user
    /// is in the group.
    pub fn remove_members(
        &mut self,
        group_id: &[u8],
        user_id: &str,
    ) -> Result<CommitBundle, E2eeError> {
        self.remove_where(group_id, |user, _| user == user_id)
    }

    /// Removes one device from the group. The commit stays pending.
    ///
    /// Fails with [`E2eeError::NotAMember`] if the device is not in the
    /// group, or if it is this device (MLS forbids a committer removing
    /// itself: another member must remove it).
    pub fn remove_device(
        &mut self,
        group_id: &[u8],
        user_id: &str,
        device_id: &str,
    ) -> Result<CommitBundle, E2eeError> {
        self.remove_where(group_id, |user, device| {
            user == user_id && device == device_id
        })
    }

    /// Rotates this device's keys in the group (a commit with a fresh leaf
    /// and path; it also commits any pending proposals). The commit stays
    /// pending.
    pub fn self_update(&mut self, group_id: &[u8]) -> Result<CommitBundle, E2eeError> {
        self.transact(|dev| {
            let mut group = dev.operational_group(group_id)?;
            let epoch = group.epoch().as_u64();
            let (commit, welcome, group_info) = group
                .self_update(&dev.provider, &dev.signer, LeafNodeParameters::default())
                .map_err(mls)?
                .into_messages();
            dev.finish_commit(group_id, epoch, commit, welcome, group_info)
        })
    }

    /// Merges this device's pending commit, after the server accepted it:
    /// the group moves to the next epoch, which is returned.
    pub fn merge_pending_commit(&mut self, group_id: &[u8]) -> Result<u64, E2eeError> {
        self.transact(|dev| {
            let mut group = dev.load_group(group_id)?;
            if !group.is_active() {
                return Err(E2eeError::Evicted);
            }
            if group.pending_commit().is_none() {
                return Err(E2eeError::NoPendingCommit);
            }
            group.merge_pending_commit(&dev.provider).map_err(mls)?;
            let epoch = group.epoch().as_u64();
            dev.enter_epoch(group_id, epoch)?;
            Ok(epoch)
        })
    }

    /// Drops this device's pending commit, after the server refused it
    /// (another commit won the epoch). The group stays in its epoch; the
    /// caller processes what it missed, then retries.
    pub fn discard_pending_commit(&mut self, group_id: &[u8]) -> Result<(), E2eeError> {
        self.transact(|dev| {
            let mut group = dev.load_group(group_id)?;
            if group.pending_commit().is_none() {
                return Err(E2eeError::NoPendingCommit);
            }
            group
                .clear_pending_commit(dev.provider.storage())
                .map_err(mls)?;
            // The refused commit will not come back: nothing to recognise.
            let mut meta = dev.group_meta(group_id)?;
            meta.own_commit = None;
            dev.put_meta(&meta_key(group_id), &meta)
        })
    }

    /// Whether this device has a commit pending in the group.
    pub fn has_pending_commit(&self, group_id: &[u8]) -> Result<bool, E2eeError> {
        Ok(self.load_group(group_id)?.pending_commit().is_some())
    }

    /// Joins the group a welcome (`MLSMessage(welcome)`) adds this device
    /// to, using the key package it was made for (a one-shot one is then
    /// deleted). Returns the group id, which the caller checks is the chat
    /// the server delivered the welcome for.
    ///
    /// Fails with [`E2eeError::GroupExists`] if this device is already an
    /// active member of that group (a group it was removed from is
    /// replaced: that is being added back).
    pub fn join(&mut self, welcome: &[u8]) -> Result<Vec<u8>, E2eeError> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome)
            .map_err(|_| E2eeError::InvalidMessage("not an MLS message".to_owned()))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err(E2eeError::InvalidMessage("not a welcome".to_owned()));
        };
        self.transact(|dev| {
            let processed =
                ProcessedWelcome::new_from_welcome(&dev.provider, &join_config(), welcome)
                    .map_err(welcome_error)?;
            let id = processed.unverified_group_info().group_id().clone();
            if processed.unverified_group_info().ciphersuite() != CIPHERSUITE {
                return Err(E2eeError::InvalidMessage(
                    "welcome for another ciphersuite".to_owned(),
                ));
            }
            dev.clear_inactive_group(&id)?;
            let staged = processed
                .into_staged_welcome(&dev.provider, None)
                .map_err(welcome_error)?;
            if staged
                .members()
                .any(|member| credential_ids(&member.credential).is_none())
            {
                return Err(E2eeError::InvalidCredential);
            }
            let group = staged.into_group(&dev.provider).map_err(welcome_error)?;
            dev.enter_epoch(id.as_slice(), group.epoch().as_u64())?;
            Ok(id.as_slice().to_vec())
        })
    }

    /// The group's current epoch on this device.
    pub fn epoch(&self, group_id: &[u8]) -> Result<u64, E2eeError> {
        Ok(self.load_group(group_id)?.epoch().as_u64())
    }

    /// The group's members as `(user_id, device_id)`, in leaf order.
    pub fn members(&self, group_id: &[u8]) -> Result<Vec<(String, String)>, E2eeError> {
        Ok(self
            .load_group(group_id)?
            .members()
            .filter_map(|member| credential_ids(&member.credential))
            .collect())
    }

    /// The ids of every group this device holds (including groups it was
    /// removed from and has not forgotten).
    pub fn group_ids(&self) -> Vec<Vec<u8>> {
        read_values(&self.provider.storage)
            .keys()
            .filter_map(|key| key.strip_prefix(GROUP_META_PREFIX))
            .map(<[u8]>::to_vec)
            .collect()
    }

    /// Deletes the group's state from this device: once it was removed, or
    /// to drop a chat locally (the other members count this device in until
    /// one of them removes it).
    pub fn forget_group(&mut self, group_id: &[u8]) -> Result<(), E2eeError> {
        self.transact(|dev| {
            let mut group = dev.load_group(group_id)?;
            group.delete(dev.provider.storage()).map_err(mls)?;
            write_values(&dev.provider.storage).remove(&meta_key(group_id));
            Ok(())
        })
    }

    /// Encrypts `plaintext` for the group: `MLSMessage(PrivateMessage)`.
    /// The ratchet step is persisted before the ciphertext is returned.
    ///
    /// Fails with [`E2eeError::PendingCommit`] while a commit of this device
    /// is pending (the message could arrive after the commit moved everyone
    /// to the next epoch), and [`E2eeError::PendingProposals`] while a
    /// received proposal waits for a commit.
    pub fn encrypt(&mut self, group_id: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, E2eeError> {
        self.transact(|dev| {
            let mut group = dev.operational_group(group_id)?;
            if group.has_pending_proposals() {
                return Err(E2eeError::PendingProposals);
            }
            let message = group
                .create_message(&dev.provider, &dev.signer, plaintext)
                .map_err(mls)?;
            let mut meta = dev.group_meta(group_id)?;
            meta.sent_in_epoch = meta.sent_in_epoch.saturating_add(1);
            dev.put_meta(&meta_key(group_id), &meta)?;
            message.to_bytes().map_err(mls)
        })
    }

    /// Processes a message the server relayed for the group: decrypts an
    /// application message, merges another member's commit, stores a
    /// proposal, or recognises an own echo (see [`Processed`]).
    ///
    /// A message that fails (not MLS, another group, another epoch,
    /// tampered, invalid) returns an error and changes nothing, in memory or
    /// in the store. Commits are checked beyond MLS: every added device must
    /// have a `"<user>/<device>"` identity, and no member may change its
    /// identity or signature key ([`E2eeError::InvalidCredential`]).
    pub fn process(&mut self, group_id: &[u8], message: &[u8]) -> Result<Processed, E2eeError> {
        let protocol_message =
            parse_protocol_message(message).map_err(E2eeError::InvalidMessage)?;
        if protocol_message.group_id().as_slice() != group_id {
            return Err(E2eeError::InvalidMessage(
                "message for another group".to_owned(),
            ));
        }
        self.transact(|dev| {
            let mut group = dev.load_group(group_id)?;
            if !group.is_active() {
                return Err(E2eeError::Evicted);
            }
            let meta = dev.group_meta(group_id)?;
            if meta.own_commit.is_some() && meta.own_commit == Some(dev.hash(message)?) {
                return Ok(Processed::Ignored);
            }
            let expected = group.epoch().as_u64();
            let found = protocol_message.epoch().as_u64();
            if found != expected {
                return Err(E2eeError::WrongEpoch { expected, found });
            }
            let processed = group
                .process_message(&dev.provider, protocol_message)
                .map_err(process_error)?;
            let sender = processed.sender().clone();
            let sender_ids = credential_ids(processed.credential());
            match processed.into_content() {
                ProcessedMessageContent::ApplicationMessage(application) => {
                    let (sender_user, sender_device) =
                        sender_ids.ok_or(E2eeError::InvalidCredential)?;
                    Ok(Processed::Application {
                        sender_user,
                        sender_device,
                        plaintext: application.into_bytes(),
                    })
                }
                ProcessedMessageContent::ProposalMessage(proposal) => {
                    group
                        .store_pending_proposal(dev.provider.storage(), *proposal)
                        .map_err(mls)?;
                    Ok(Processed::Proposal)
                }
                ProcessedMessageContent::ExternalJoinProposalMessage(_) => Err(
                    E2eeError::InvalidMessage("external proposals are not accepted".to_owned()),
                ),
                ProcessedMessageContent::StagedCommitMessage(staged) => {
                    check_identities(&group, &sender, &staged)?;
                    let removed_self = staged.self_removed();
                    group
                        .merge_staged_commit(&dev.provider, *staged)
                        .map_err(mls)?;
                    let epoch = group.epoch().as_u64();
                    dev.enter_epoch(group_id, epoch)?;
                    Ok(Processed::Commit {
                        epoch,
                        removed_self,
                    })
                }
                ProcessedMessageContent::OwnPendingCommit
                | ProcessedMessageContent::OwnPrivateMessage => Ok(Processed::Ignored),
                // Variants of openmls features this crate does not enable
                // (feature unification could bring them in).
                #[allow(unreachable_patterns)]
                _ => Err(E2eeError::InvalidMessage(
                    "unsupported message content".to_owned(),
                )),
            }
        })
    }

    /// Whether this device should rotate its keys in the group
    /// ([`self_update`](Self::self_update)) under its [`RotationPolicy`]:
    /// it encrypted `max_messages` messages in the current epoch, or entered
    /// the epoch `max_age` ago. The counters are persisted, so they carry
    /// over a restart. `false` for a group this device does not hold or was
    /// removed from.
    pub fn needs_self_update(&self, group_id: &[u8]) -> bool {
        let Ok(group) = self.load_group(group_id) else {
            return false;
        };
        if !group.is_active() {
            return false;
        }
        let Ok(meta) = self.group_meta(group_id) else {
            return false;
        };
        if meta.epoch != group.epoch().as_u64() {
            // Counters not yet moved to this epoch: it just started.
            return false;
        }
        meta.sent_in_epoch >= self.policy.max_messages
            || now_secs().saturating_sub(meta.epoch_seen_at) >= self.policy.max_age.as_secs()
    }

    // --- internals ---

    /// Runs `op` on the in-memory state as one unit: on success, writes the
    /// entries it changed through the store before returning its result; on
    /// any failure (of `op` or of the write) puts the state back as it was
    /// and returns the error.
    fn transact<T>(
        &mut self,
        op: impl FnOnce(&mut Self) -> Result<T, E2eeError>,
    ) -> Result<T, E2eeError> {
        let mut before = Snapshot(read_values(&self.provider.storage).clone());
        let outcome = op(self).and_then(|value| {
            self.persist(&before.0)?;
            Ok(value)
        });
        if outcome.is_err() {
            *write_values(&self.provider.storage) = std::mem::take(&mut before.0);
        }
        outcome
    }

    /// Writes every entry that differs from `before` in one `apply`.
    fn persist(&self, before: &HashMap<Vec<u8>, Vec<u8>>) -> Result<(), E2eeError> {
        let mut changes: Vec<Change> = Vec::new();
        {
            let now = read_values(&self.provider.storage);
            for (key, value) in now.iter() {
                if before.get(key) != Some(value) {
                    changes.push((key.clone(), Some(value.clone())));
                }
            }
            for key in before.keys() {
                if !now.contains_key(key) {
                    changes.push((key.clone(), None));
                }
            }
        }
        if changes.is_empty() {
            return Ok(());
        }
        let result = self.store.apply(&changes);
        for (_, value) in &mut changes {
            if let Some(value) = value {
                value.zeroize();
            }
        }
        result.map_err(E2eeError::from)
    }

    fn load_group(&self, group_id: &[u8]) -> Result<MlsGroup, E2eeError> {
        MlsGroup::load(self.provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| E2eeError::Storage(e.to_string()))?
            .ok_or(E2eeError::UnknownGroup)
    }

    /// The group, if this device may commit or encrypt in it: a member, with
    /// no commit pending.
    fn operational_group(&self, group_id: &[u8]) -> Result<MlsGroup, E2eeError> {
        let group = self.load_group(group_id)?;
        if !group.is_active() {
            return Err(E2eeError::Evicted);
        }
        if group.pending_commit().is_some() {
            return Err(E2eeError::PendingCommit);
        }
        Ok(group)
    }

    /// Deletes the group with this id if this device was removed from it,
    /// so it can be created or joined again; refuses if it is active.
    fn clear_inactive_group(&mut self, id: &GroupId) -> Result<(), E2eeError> {
        let existing = MlsGroup::load(self.provider.storage(), id)
            .map_err(|e| E2eeError::Storage(e.to_string()))?;
        if let Some(mut group) = existing {
            if group.is_active() {
                return Err(E2eeError::GroupExists);
            }
            group.delete(self.provider.storage()).map_err(mls)?;
        }
        Ok(())
    }

    fn remove_where(
        &mut self,
        group_id: &[u8],
        matches: impl Fn(&str, &str) -> bool,
    ) -> Result<CommitBundle, E2eeError> {
        self.transact(|dev| {
            let mut group = dev.operational_group(group_id)?;
            let own = group.own_leaf_index();
            let leaves: Vec<LeafNodeIndex> = group
                .members()
                .filter(|member| member.index != own)
                .filter(|member| {
                    credential_ids(&member.credential)
                        .is_some_and(|(user, device)| matches(&user, &device))
                })
                .map(|member| member.index)
                .collect();
            if leaves.is_empty() {
                return Err(E2eeError::NotAMember);
            }
            let epoch = group.epoch().as_u64();
            let (commit, welcome, group_info) = group
                .remove_members(&dev.provider, &dev.signer, &leaves)
                .map_err(mls)?;
            dev.finish_commit(
                group_id,
                epoch,
                commit,
                welcome,
                group_info.map(MlsMessageOut::from),
            )
        })
    }

    /// Encodes a freshly staged commit and remembers its hash.
    fn finish_commit(
        &mut self,
        group_id: &[u8],
        epoch: u64,
        commit: MlsMessageOut,
        welcome: Option<MlsMessageOut>,
        group_info: Option<MlsMessageOut>,
    ) -> Result<CommitBundle, E2eeError> {
        let commit = commit.to_bytes().map_err(mls)?;
        let welcome = welcome.map(|w| w.to_bytes()).transpose().map_err(mls)?;
        let group_info = group_info.map(|g| g.to_bytes()).transpose().map_err(mls)?;
        let mut meta = self.group_meta(group_id)?;
        meta.own_commit = Some(self.hash(&commit)?);
        self.put_meta(&meta_key(group_id), &meta)?;
        Ok(CommitBundle {
            commit,
            welcome,
            group_info,
            epoch,
        })
    }

    /// Resets the rotation counters when the group enters `epoch`.
    fn enter_epoch(&mut self, group_id: &[u8], epoch: u64) -> Result<(), E2eeError> {
        let mut meta = self.group_meta(group_id)?;
        meta.epoch = epoch;
        meta.epoch_seen_at = now_secs();
        meta.sent_in_epoch = 0;
        self.put_meta(&meta_key(group_id), &meta)
    }

    fn group_meta(&self, group_id: &[u8]) -> Result<GroupMeta, E2eeError> {
        Ok(self.get_meta(&meta_key(group_id))?.unwrap_or_default())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, E2eeError> {
        get_meta(&self.provider.storage, key)
    }

    fn put_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), E2eeError> {
        let bytes = serde_json::to_vec(value).map_err(|e| E2eeError::Storage(e.to_string()))?;
        write_values(&self.provider.storage).insert(key.to_vec(), bytes);
        Ok(())
    }

    fn hash(&self, bytes: &[u8]) -> Result<Vec<u8>, E2eeError> {
        self.provider
            .crypto()
            .hash(HashType::Sha2_256, bytes)
            .map_err(mls)
    }
}

fn meta_key(group_id: &[u8]) -> Vec<u8> {
    [GROUP_META_PREFIX, group_id].concat()
}

fn get_meta<T: DeserializeOwned>(
    storage: &MemoryStorage,
    key: &[u8],
) -> Result<Option<T>, E2eeError> {
    read_values(storage)
        .get(key)
        .map(|bytes| serde_json::from_slice(bytes))
        .transpose()
        .map_err(|e| E2eeError::Storage(format!("corrupt record: {e}")))
}

// openmls' MemoryStorage keeps its map behind a std RwLock. A panic while it
// is held can only come from openmls itself mid-write; `transact` then puts
// the whole map back, so a poisoned lock is taken over rather than
// propagated as a second panic.
fn read_values(storage: &MemoryStorage) -> RwLockReadGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
    storage.values.read().unwrap_or_else(|e| e.into_inner())
}

fn write_values(storage: &MemoryStorage) -> RwLockWriteGuard<'_, HashMap<Vec<u8>, Vec<u8>>> {
    storage.values.write().unwrap_or_else(|e| e.into_inner())
}

/// What every leaf of this device advertises: the one ciphersuite it speaks,
/// and the LastResort extension (a key package may only carry extensions its
/// leaf lists, and the same list everywhere keeps the leaves alike).
fn capabilities() -> Capabilities {
    Capabilities::builder()
        .ciphersuites(vec![CIPHERSUITE])
        .extensions(vec![ExtensionType::LastResort])
        .build()
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .build()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Refuses commits that add a device without a `"<user>/<device>"` identity
/// or let a member change its identity or signature key (MLS leaves both
/// checks to the application).
fn check_identities(
    group: &MlsGroup,
    sender: &Sender,
    staged: &StagedCommit,
) -> Result<(), E2eeError> {
    for add in staged.add_proposals() {
        let credential = add.add_proposal().key_package().leaf_node().credential();
        if credential_ids(credential).is_none() {
            return Err(E2eeError::InvalidCredential);
        }
    }
    for update in staged.update_proposals() {
        let Sender::Member(index) = update.sender() else {
            return Err(E2eeError::InvalidCredential);
        };
        let old = group
            .public_group()
            .leaf(*index)
            .ok_or(E2eeError::InvalidCredential)?;
        if !same_identity(old, update.update_proposal().leaf_node()) {
            return Err(E2eeError::InvalidCredential);
        }
    }
    if let Some(new_leaf) = staged.update_path_leaf_node() {
        let Sender::Member(index) = sender else {
            return Err(E2eeError::InvalidMessage(
                "commit from a non-member".to_owned(),
            ));
        };
        let old = group
            .public_group()
            .leaf(*index)
            .ok_or(E2eeError::InvalidCredential)?;
        if !same_identity(old, new_leaf) {
            return Err(E2eeError::InvalidCredential);
        }
    }
    Ok(())
}

fn process_error<E: std::error::Error>(e: ProcessMessageError<E>) -> E2eeError {
    match e {
        ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(e)) => {
            E2eeError::Decrypt(e.to_string())
        }
        ProcessMessageError::ValidationError(
            ValidationError::WrongEpoch | ValidationError::NoPastEpochData,
        ) => E2eeError::ProcessFailed("message for another epoch".to_owned()),
        ProcessMessageError::ValidationError(ValidationError::WrongGroupId) => {
            E2eeError::InvalidMessage("message for another group".to_owned())
        }
        ProcessMessageError::IncompatibleWireFormat => {
            E2eeError::InvalidMessage("handshake message in a forbidden wire format".to_owned())
        }
        other => E2eeError::ProcessFailed(other.to_string()),
    }
}

fn welcome_error<E: std::error::Error>(e: WelcomeError<E>) -> E2eeError {
    match e {
        WelcomeError::NoMatchingKeyPackage | WelcomeError::JoinerSecretNotFound => {
            E2eeError::InvalidMessage("the welcome is not for this device".to_owned())
        }
        WelcomeError::GroupAlreadyExists => E2eeError::GroupExists,
        other => E2eeError::ProcessFailed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryDeviceStore;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn device_is_send_and_sync() {
        assert_send_sync::<Device>();
    }

    fn record(device: &Device) -> LastResortRecord {
        device
            .get_meta(LAST_RESORT_KEY)
            .expect("readable")
            .expect("present")
    }

    /// Rewrites the stored record and persists it, as if time had passed.
    fn set_record(device: &mut Device, record: &LastResortRecord) {
        device
            .transact(|dev| dev.put_meta(LAST_RESORT_KEY, record))
            .expect("write record");
    }

    fn has_key_package(device: &Device, hash_ref: &KeyPackageRef) -> bool {
        let bundle: Option<openmls::prelude::KeyPackageBundle> = device
            .provider
            .storage()
            .key_package(hash_ref)
            .expect("storage");
        bundle.is_some()
    }

    #[test]
    fn last_resort_key_package_is_renewed_near_expiry_and_old_keys_purged() {
        let store = MemoryDeviceStore::new();
        let mut device = Device::create("carol", "phone", store.clone()).expect("create");
        let first = device.last_resort_key_package().expect("first");
        let first_ref = record(&device).hash_ref;
        assert_eq!(device.last_resort_key_package().expect("same"), first);

        // Close to expiry: a new one is made, the old one's keys are kept.
        let mut near = record(&device);
        near.not_after = now_secs() + 60;
        set_record(&mut device, &near);
        let second = device.last_resort_key_package().expect("renewed");
        assert_ne!(second, first);
        let renewed = record(&device);
        assert_eq!(renewed.retired.len(), 1);
        assert!(has_key_package(&device, &first_ref), "old keys kept");

        // Once the old one has expired, the next renewal deletes its keys.
        let mut expired = record(&device);
        expired.retired[0].1 = 1;
        expired.not_after = now_secs() + 60;
        let second_ref = expired.hash_ref.clone();
        set_record(&mut device, &expired);
        let third = device.last_resort_key_package().expect("renewed again");
        assert_ne!(third, second);
        assert!(
            !has_key_package(&device, &first_ref),
            "expired keys deleted"
        );
        assert!(has_key_package(&device, &second_ref), "recent keys kept");
        assert_eq!(record(&device).retired.len(), 1);

        // All of it reached the store.
        drop(device);
        let mut device = Device::open(store).expect("reopen");
        assert_eq!(device.last_resort_key_package().expect("stable"), third);
    }

    /// Bob, running a modified client, makes a commit whose update path
    /// gives his leaf another identity (credential or signature key). Both
    /// the server's public view and Alice refuse it.
    fn forged_update_is_refused(forge: impl FnOnce(&mut Device) -> Vec<u8>) {
        const G: &[u8] = b"chat";
        let mut alice = Device::create("alice", "phone", MemoryDeviceStore::new()).expect("alice");
        let mut bob = Device::create("bob", "phone", MemoryDeviceStore::new()).expect("bob");
        alice.create_group(G).expect("group");
        let mut server =
            crate::ds::PublicGroupState::from_group_info(&alice.group_info(G).expect("info"))
                .expect("server");
        let kp = bob.generate_key_packages(1).expect("kp");
        let addition = alice.add_members(G, &kp).expect("add");
        server.apply_commit(&addition.commit).expect("server");
        alice.merge_pending_commit(G).expect("merge");
        bob.join(addition.welcome.as_deref().expect("welcome"))
            .expect("join");

        let forged = forge(&mut bob);
        assert!(matches!(
            server.check_commit(&forged),
            Err(crate::ds::DsError::Invalid(_))
        ));
        assert!(matches!(
            alice.process(G, &forged),
            Err(E2eeError::InvalidCredential)
        ));
        assert_eq!(alice.epoch(G).expect("epoch"), 1);
    }

    fn forge_commit(
        bob: &mut Device,
        update: impl FnOnce(&mut MlsGroup, &Provider, &SignatureKeyPair) -> MlsMessageOut,
    ) -> Vec<u8> {
        bob.transact(|dev| {
            let mut group = dev.load_group(b"chat")?;
            update(&mut group, &dev.provider, &dev.signer)
                .to_bytes()
                .map_err(mls)
        })
        .expect("forged commit")
    }

    #[test]
    fn a_member_cannot_take_another_name() {
        forged_update_is_refused(|bob| {
            forge_commit(bob, |group, provider, signer| {
                let params = LeafNodeParameters::builder()
                    .with_credential_with_key(CredentialWithKey {
                        credential: BasicCredential::new(b"alice/laptop".to_vec()).into(),
                        signature_key: signer.public().into(),
                    })
                    .build();
                group
                    .self_update(provider, signer, params)
                    .expect("self update")
                    .into_commit()
            })
        });
    }

    #[test]
    fn a_member_cannot_swap_its_signature_key() {
        forged_update_is_refused(|bob| {
            forge_commit(bob, |group, provider, signer| {
                let new_signer = SignatureKeyPair::new(SignatureScheme::ED25519).expect("key");
                new_signer.store(provider.storage()).expect("store");
                let credential_with_key = CredentialWithKey {
                    credential: BasicCredential::new(b"bob/phone".to_vec()).into(),
                    signature_key: new_signer.public().into(),
                };
                let params = LeafNodeParameters::builder()
                    .with_credential_with_key(credential_with_key.clone())
                    .build();
                group
                    .self_update_with_new_signer(
                        provider,
                        signer,
                        openmls::prelude::NewSignerBundle {
                            signer: &new_signer,
                            credential_with_key,
                        },
                        params,
                    )
                    .expect("self update")
                    .into_commit()
            })
        });
    }
}

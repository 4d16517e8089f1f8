//! The delivery service of `e2ee` chats (MLS): the key package directory
//! and the order of commits. See [`crate::mls`].

use std::collections::HashSet;

use base64::Engine as _;

use super::{
    Actor, ChatEngine,
    writer::{EventKind, Fanout},
};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    event::ServerEvent,
    mls::{
        ClaimedKeyPackage, KEY_PACKAGES_LOW, MAX_CLAIM_USERS, MAX_KEY_PACKAGE_BYTES,
        MAX_KEY_PACKAGES_PER_PUBLISH, MAX_MLS_OBJECT_BYTES, MlsCommitView, MlsDelivery, MlsDevice,
    },
    model::{ChatId, DeviceId, Encryption, MessageId, MessageType, MlsCommitRecord, Role, UserId},
    store::{Change, MlsGroupRecord, NewMessage},
};

impl ChatEngine {
    fn mls(&self) -> Result<&dyn MlsDelivery> {
        self.inner.mls.as_deref().ok_or_else(|| {
            Error::invalid("end-to-end encrypted chats are not enabled on this server")
        })
    }

    /// `publish_key_packages`: adds key packages of the actor's `device`
    /// (and replaces its last-resort one); returns how many it now has, the
    /// last-resort one not counted. Each must be a valid key package whose
    /// credential names this user and this device: one that names anyone
    /// else is `forbidden` (a forged credential), and nothing is stored.
    pub async fn publish_key_packages(
        &self,
        actor: &Actor,
        device: &DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<u64> {
        let mls = self.mls()?;
        if packages.len() > MAX_KEY_PACKAGES_PER_PUBLISH {
            return Err(Error::invalid(format!(
                "at most {MAX_KEY_PACKAGES_PER_PUBLISH} key packages at once"
            )));
        }
        if packages.is_empty() && last_resort.is_none() {
            return Err(Error::invalid("no key packages"));
        }
        let mut key: Option<Vec<u8>> = None;
        for package in packages.iter().chain(last_resort.as_ref()) {
            if package.len() > MAX_KEY_PACKAGE_BYTES {
                return Err(Error::invalid(format!(
                    "a key package is at most {MAX_KEY_PACKAGE_BYTES} bytes"
                )));
            }
            let info = mls.inspect_key_package(package)?;
            if info.user_id != actor.user_id || info.device_id != *device {
                return Err(Error::forbidden(
                    "a key package's credential must name your user and this device",
                ));
            }
            match &key {
                Some(k) if *k != info.signature_key => {
                    return Err(Error::forbidden(
                        "a device's key packages all carry its one signature key",
                    ));
                }
                Some(_) => {}
                None => key = Some(info.signature_key),
            }
        }
        // The device's signature key is pinned by its first publish: a key
        // package (or a commit adding the device) with another key is
        // someone else's leaf under this device's name.
        if let Some(key) = key {
            let pinned = self
                .inner
                .store
                .pin_device_key(&actor.user_id, device, key.clone())
                .await?;
            if pinned != key {
                return Err(Error::forbidden(
                    "this device published another signature key before",
                ));
            }
        }
        self.inner
            .store
            .publish_key_packages(&actor.user_id, device, packages, last_resort, self.now())
            .await
    }

    /// `claim_key_packages`: one key package of each device of each of
    /// `users`, to add them to an e2ee chat; each is handed out once (the
    /// device's last-resort one when none is left). Only for users the actor
    /// may talk to: themselves (their other devices), anyone they share a
    /// chat with, or anyone they may open a direct chat with (the contact
    /// policy, and no block either way); anyone else is `forbidden`, so the
    /// directory cannot be drained by strangers. Devices left with fewer
    /// than [`KEY_PACKAGES_LOW`] get `key_packages_low`.
    pub async fn claim_key_packages(
        &self,
        actor: &Actor,
        users: &[UserId],
    ) -> Result<Vec<ClaimedKeyPackage>> {
        self.mls()?;
        if users.is_empty() || users.len() > MAX_CLAIM_USERS {
            return Err(Error::invalid(format!(
                "user_ids must name 1..={MAX_CLAIM_USERS} users"
            )));
        }
        let me = &actor.user_id;
        let mut co_members: Option<HashSet<UserId>> = None;
        for user in users {
            if user == me {
                continue;
            }
            let shared = match &co_members {
                Some(set) => set.contains(user),
                None => {
                    let set: HashSet<UserId> =
                        self.inner.store.co_members(me).await?.into_iter().collect();
                    co_members.insert(set).contains(user)
                }
            };
            let allowed = shared
                || (self.inner.policy.may_open_direct(me, user).await?
                    && !self.inner.store.is_blocked_either(me, user).await?);
            if !allowed {
                return Err(Error::forbidden(format!(
                    "you may not claim key packages of {user}"
                )));
            }
        }
        let claimed = self.inner.store.claim_key_packages(users).await?;
        for c in claimed.iter().filter(|c| c.remaining < KEY_PACKAGES_LOW) {
            let mut audience = Audience::users(vec![c.user_id.clone()]);
            audience.device = Some(c.device_id.clone());
            let event = ServerEvent::KeyPackagesLow {
                available: c.remaining,
            };
            self.publish(audience, Action::Event(event.encode())).await;
        }
        Ok(claimed)
    }
}

/// What `mls_commit` brings.
#[derive(Debug, Clone)]
pub struct MlsCommitRequest {
    /// The chat.
    pub chat_id: ChatId,
    /// The epoch the commit was made for.
    pub epoch: u64,
    /// The commit (an `MLSMessage` carrying a `PublicMessage`).
    pub commit: Vec<u8>,
    /// The welcome of the devices it adds.
    pub welcome: Option<Vec<u8>>,
    /// With a chat's first commit (epoch 0): the new group it starts from,
    /// with its ratchet tree (the server has no state of the chat before).
    pub group_info: Option<Vec<u8>>,
}

impl ChatEngine {
    /// `mls_commit`: orders a commit of an `e2ee` chat. Accepted only for
    /// the chat's current epoch (else `conflict`: the device processes the
    /// commits it missed, in log order, and retries), made by the caller's
    /// own device, and only if it changes the group within what membership
    /// allows: devices it adds belong to participants, devices it removes
    /// belong to users who are no longer participants or to the caller.
    /// The accepted commit is written to the chat's log as an `mls_commit`
    /// message (with the welcome, where added devices find it) and
    /// delivered as `message_received`. Returns the new epoch.
    ///
    /// A chat's first commit (epoch 0) comes with `group_info`: the new
    /// group before it (its id the chat id, the committing device alone in
    /// it), which the server checks the commit against like any other.
    pub async fn mls_commit(
        &self,
        actor: &Actor,
        device: &DeviceId,
        req: MlsCommitRequest,
    ) -> Result<u64> {
        let chat = self.chat_of(actor, req.chat_id).await?;
        let (expected, view) = self.checked_commit(actor, device, &chat, &req).await?;
        let is_participant = |user: &UserId| chat.participant(user).is_some();
        if let Some((user, _)) = view.added.iter().find(|(u, _)| !is_participant(u)) {
            return Err(Error::forbidden(format!(
                "{user} is not a participant of this chat: add_participant adds them"
            )));
        }
        if let Some((user, _)) = view
            .removed
            .iter()
            .find(|(u, _)| is_participant(u) && *u != actor.user_id)
        {
            return Err(Error::forbidden(format!(
                "{user} is a participant: remove_participant removes them"
            )));
        }
        let epoch = view.group.epoch;
        let change = self.commit_change(actor, &req, expected, view.group, None);
        self.inner
            .writer
            .submit(change, Fanout::new(EventKind::Post))
            .await?;
        Ok(epoch)
    }

    /// The epoch of the chat's MLS group, if it has one (participants
    /// only).
    pub async fn mls_epoch(&self, actor: &Actor, chat_id: ChatId) -> Result<Option<u64>> {
        let chat = self.chat_of(actor, chat_id).await?;
        Ok(self
            .inner
            .store
            .get_mls_group(chat.id)
            .await?
            .map(|g| g.epoch))
    }

    /// `add_participant` in an `e2ee` chat with the commit that adds the
    /// user's devices to its MLS group: the commit must add devices of
    /// that user and nothing else, and both are applied in one change.
    /// Returns the new epoch.
    pub async fn add_participant_with_commit(
        &self,
        actor: &Actor,
        device: &DeviceId,
        user: &UserId,
        role: Role,
        req: MlsCommitRequest,
    ) -> Result<u64> {
        let (chat, change) = self.adding(actor, req.chat_id, user, role).await?;
        let (expected, view) = self.checked_commit(actor, device, &chat, &req).await?;
        if view.added.is_empty()
            || view.added.iter().any(|(u, _)| u != user)
            || !view.removed.is_empty()
        {
            return Err(Error::invalid(format!(
                "the commit must add the devices of {user} and change nothing else"
            )));
        }
        let epoch = view.group.epoch;
        let change = self.commit_change(actor, &req, expected, view.group, Some(change));
        self.inner
            .writer
            .submit(change, Fanout::new(EventKind::Membership))
            .await?;
        Ok(epoch)
    }

    /// `remove_participant` in an `e2ee` chat with the commit that removes
    /// every device of the user from its MLS group, applied in one change:
    /// nothing sent after it is encrypted to them. Removing oneself this
    /// way is refused (MLS lets no member commit its own removal: leave
    /// without a commit, and another member commits it). Returns the new
    /// epoch.
    pub async fn remove_participant_with_commit(
        &self,
        actor: &Actor,
        device: &DeviceId,
        user: &UserId,
        req: MlsCommitRequest,
    ) -> Result<u64> {
        if *user == actor.user_id {
            return Err(Error::invalid(
                "leave without a commit: another member commits your removal",
            ));
        }
        let (chat, change, ensure) = self.removing(actor, req.chat_id, user).await?;
        let (expected, view) = self.checked_commit(actor, device, &chat, &req).await?;
        if let Some(group) = self.inner.store.get_mls_group(chat.id).await? {
            let wanted: HashSet<&MlsDevice> =
                group.members.iter().filter(|(u, _)| u == user).collect();
            let removed: HashSet<&MlsDevice> = view.removed.iter().collect();
            if removed != wanted || !view.added.is_empty() {
                return Err(Error::invalid(format!(
                    "the commit must remove every device of {user} and change nothing else"
                )));
            }
        }
        let epoch = view.group.epoch;
        let change = self.commit_change(actor, &req, expected, view.group, Some(change));
        self.inner
            .writer
            .submit_framed(change, Fanout::new(EventKind::Membership), Some(ensure))
            .await?;
        self.audit_removal(actor, chat.id, user).await;
        Ok(epoch)
    }

    /// The checks every commit passes: sizes, an `e2ee` chat, the current
    /// epoch (a chat's first commit: its `group_info`), the group's public
    /// state, and the sending device as committer. Returns the epoch the
    /// store must still find, and what the commit does.
    async fn checked_commit(
        &self,
        actor: &Actor,
        device: &DeviceId,
        chat: &crate::model::Chat,
        req: &MlsCommitRequest,
    ) -> Result<(Option<u64>, MlsCommitView)> {
        let mls = self.mls()?;
        for object in [
            Some(&req.commit),
            req.welcome.as_ref(),
            req.group_info.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if object.len() > MAX_MLS_OBJECT_BYTES {
                return Err(Error::invalid(format!(
                    "an MLS object is at most {MAX_MLS_OBJECT_BYTES} bytes"
                )));
            }
        }
        if chat.encryption != Encryption::E2ee {
            return Err(Error::invalid(
                "MLS commits are for end-to-end encrypted chats",
            ));
        }
        let me = (actor.user_id.clone(), device.clone());
        let current = self.inner.store.get_mls_group(chat.id).await?;
        let state = match &current {
            None => {
                if req.epoch != 0 {
                    return Err(Error::conflict(
                        "the chat has no MLS group yet: its first commit is for epoch 0",
                    ));
                }
                let info = req.group_info.as_deref().ok_or_else(|| {
                    Error::invalid("the first commit of a chat needs the group_info it starts from")
                })?;
                let start = mls.group_from_info(chat.id, info)?;
                if start.epoch != 0 || start.members != [me.clone()] {
                    return Err(Error::invalid(
                        "group_info must describe the new group at epoch 0, holding the \
                         committing device alone",
                    ));
                }
                start.state
            }
            Some(stored) => {
                if req.epoch != stored.epoch {
                    return Err(Error::conflict(format!(
                        "the chat's MLS group is at epoch {}: process the commits you missed \
                         and retry",
                        stored.epoch
                    )));
                }
                stored.state.clone()
            }
        };
        let view = mls.apply_commit(&state, &req.commit)?;
        if view.committer != me {
            return Err(Error::forbidden(
                "a commit must come from the device that sends it",
            ));
        }
        // A device joins only with the key it published: a member cannot
        // add a leaf of its own making under someone else's name.
        let pinned = self.inner.store.device_keys(&view.added).await?;
        for ((device, key), pinned) in view
            .added
            .iter()
            .zip(&view.added_signature_keys)
            .zip(pinned)
        {
            if pinned.as_ref() != Some(key) {
                return Err(Error::forbidden(format!(
                    "{}/{} is added with a key it never published",
                    device.0, device.1
                )));
            }
        }
        Ok((current.map(|g| g.epoch), view))
    }

    /// The change that writes an accepted commit (with the membership
    /// change it goes with).
    fn commit_change(
        &self,
        actor: &Actor,
        req: &MlsCommitRequest,
        expected_epoch: Option<u64>,
        group: crate::mls::MlsGroupView,
        membership: Option<Change>,
    ) -> Change {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let message = NewMessage {
            id: MessageId::new(),
            chat_id: req.chat_id,
            sender_id: actor.user_id.clone(),
            kind: MessageType::MlsCommit,
            content: None,
            media: None,
            reply_to: None,
            client_msg_id: None,
            system: None,
            mls: Some(MlsCommitRecord {
                epoch: req.epoch,
                commit: b64(&req.commit),
                welcome: req.welcome.as_deref().map(b64),
            }),
            created_at: self.now(),
        };
        Change::MlsCommit {
            expected_epoch,
            group: MlsGroupRecord {
                epoch: group.epoch,
                members: group.members,
                state: group.state,
            },
            message,
            membership: membership.map(Box::new),
        }
    }

    /// Refuses an application message of an `e2ee` chat while a user who
    /// left it is still in its MLS group: what it says would reach them.
    /// Also refuses content that is not an application message of the
    /// group's current epoch: the other members have moved on and could not
    /// read it (`conflict`: the sender processes the commits it missed and
    /// encrypts again).
    pub(super) async fn check_mls_members(
        &self,
        chat: &crate::model::Chat,
        content: Option<&str>,
    ) -> Result<()> {
        let Some(mls) = self.inner.mls.as_deref() else {
            return Ok(());
        };
        if chat.encryption != Encryption::E2ee {
            return Ok(());
        }
        let Some(group) = self.inner.store.get_mls_group(chat.id).await? else {
            return Ok(());
        };
        if let Some(content) = content {
            let bytes = crate::protocol::from_base64("content", content)?;
            let (group_id, epoch) = mls.inspect_application(&bytes)?;
            if group_id != chat.id.to_string().as_bytes() {
                return Err(Error::invalid("the message is for another MLS group"));
            }
            if epoch != group.epoch {
                return Err(Error::conflict(format!(
                    "the message was encrypted in epoch {epoch}; the chat's MLS group is at \
                     epoch {}: process the commits you missed and encrypt again",
                    group.epoch
                )));
            }
        }
        if let Some((user, _)) = group
            .members
            .iter()
            .find(|(u, _)| chat.participant(u).is_none())
        {
            return Err(Error::conflict(format!(
                "{user} left this chat but is still in its MLS group: commit their removal first"
            )));
        }
        Ok(())
    }
}

//! The MLS delivery service of `e2ee` chats: chat-core's
//! [`MlsDelivery`] over `chat-e2ee`'s `ds` checks (openmls).

use chat_core::{
    ChatId, DeviceId, Error, Result, UserId,
    mls::{KeyPackageInfo, MlsCommitView, MlsDelivery, MlsDevice, MlsGroupView},
};
use chat_e2ee::ds::{self, DsError, PublicGroupState};

/// [`MlsDelivery`] with openmls: key packages verified, groups followed by
/// their public state, commits verified against it.
#[derive(Debug, Default)]
pub(crate) struct OpenMlsDelivery;

fn refused(e: DsError) -> Error {
    match e {
        DsError::WrongEpoch { expected, found } => Error::conflict(format!(
            "the commit is for epoch {found}, the chat's MLS group is at epoch {expected}: \
             process the commits you missed and retry"
        )),
        DsError::Corrupt(why) => Error::backend(format!("stored MLS group state: {why}")),
        other => Error::invalid(format!("MLS: {other}")),
    }
}

fn device((user, device): (String, String)) -> Result<MlsDevice> {
    Ok((UserId::new(user)?, DeviceId::new(device)?))
}

fn devices(list: Vec<(String, String)>) -> Result<Vec<MlsDevice>> {
    list.into_iter().map(device).collect()
}

fn view(group: &PublicGroupState) -> Result<MlsGroupView> {
    Ok(MlsGroupView {
        epoch: group.epoch(),
        members: devices(group.members())?,
        state: group.to_bytes(),
    })
}

impl MlsDelivery for OpenMlsDelivery {
    fn inspect_key_package(&self, bytes: &[u8]) -> Result<KeyPackageInfo> {
        let valid = ds::validate_key_package(bytes).map_err(refused)?;
        let (user_id, device_id) = device((valid.user_id, valid.device_id))?;
        Ok(KeyPackageInfo {
            user_id,
            device_id,
            last_resort: valid.last_resort,
            signature_key: valid.signature_key,
        })
    }

    fn group_from_info(&self, chat: ChatId, group_info: &[u8]) -> Result<MlsGroupView> {
        let group = PublicGroupState::from_group_info(group_info).map_err(refused)?;
        if group.group_id() != chat.to_string().as_bytes() {
            return Err(Error::invalid(
                "the MLS group id must be the chat id (its text, UTF-8)",
            ));
        }
        view(&group)
    }

    fn inspect_application(&self, message: &[u8]) -> Result<(Vec<u8>, u64)> {
        let info = ds::inspect_message(message).map_err(refused)?;
        if info.kind != ds::MessageKind::Application || !info.encrypted {
            return Err(Error::invalid(
                "e2ee content must be an MLS application message (PrivateMessage)",
            ));
        }
        Ok((info.group_id, info.epoch))
    }

    fn apply_commit(&self, state: &[u8], commit: &[u8]) -> Result<MlsCommitView> {
        let mut group = PublicGroupState::from_bytes(state).map_err(refused)?;
        let effect = group.apply_commit(commit).map_err(refused)?;
        Ok(MlsCommitView {
            committer: device(effect.committer)?,
            added: devices(effect.added)?,
            added_signature_keys: effect.added_signature_keys,
            removed: devices(effect.removed)?,
            group: view(&group)?,
        })
    }
}

//! From a parsed command of an authenticated connection to engine calls.

use serde::Serialize;

use super::commands::{ClientCommand, ParseError, parse_request};
use crate::{
    engine::{HistoryRequest, MlsCommitRequest, Receipt, Session},
    error::{Error, Result},
    event::{AckData, Frame},
    model::{Role, UserId},
    store::GroupPatch,
};

/// Handles one text frame of an authenticated connection: parses it, runs
/// the command, and returns the answer to send back, if any (an `ack` for
/// commands with an `id`, an `error` for any failure).
///
/// No rate limit applies here; the [connection driver](super::driver)
/// limits before it executes.
pub async fn dispatch_text(session: &Session, text: &str) -> Option<Frame> {
    match parse_request(text) {
        Ok(request) => Frame::answer(request.id, execute(session, request.command).await),
        Err(ParseError { id, error, .. }) => Some(Frame::error(id, &error)),
    }
}

fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<AckData> {
    AckData::encode(value)
}

fn field<T: Serialize + ?Sized>(key: &'static str, value: &T) -> Result<AckData> {
    AckData::field(key, value)
}

/// Runs a command; the result is the `data` of its `ack`.
pub async fn execute(session: &Session, command: ClientCommand) -> Result<AckData> {
    let engine = session.engine();
    let actor = session.actor();
    let empty = || Ok(AckData::empty());
    match command {
        ClientCommand::Authenticate { .. } => {
            Err(Error::invalid("this connection is already authenticated"))
        }
        ClientCommand::CreateDirect {
            user_id,
            encryption,
        } => {
            let opened = engine.create_direct(actor, &user_id, encryption).await?;
            field("chat", &opened.chat)
        }
        ClientCommand::CreateGroup(group) => {
            let chat = engine.create_group(actor, group).await?;
            field("chat", &chat)
        }
        ClientCommand::JoinChat { chat_id } => {
            let (chat, messages) = session.join_chat(chat_id).await?;
            #[derive(Serialize)]
            struct Joined<T, M> {
                chat: T,
                messages: M,
            }
            to_value(&Joined { chat, messages })
        }
        ClientCommand::LeaveChat { chat_id } => {
            session.leave_chat(chat_id);
            empty()
        }
        ClientCommand::SendMessage(req) => {
            let (message, event) = engine.send_framed(actor, req).await?;
            match event {
                Some(received) => Ok(AckData::message_of(&received)),
                None => field("message", &message),
            }
        }
        ClientCommand::EditMessage {
            message_id,
            content,
        } => {
            let message = engine.edit(actor, message_id, &content).await?;
            field("message", &message)
        }
        ClientCommand::DeleteMessage { message_id } => {
            engine.delete(actor, message_id).await?;
            field("message_id", &message_id)
        }
        ClientCommand::MarkDelivered { chat_id, up_to_seq } => {
            engine
                .mark(actor, chat_id, Receipt::Delivered, up_to_seq)
                .await?;
            empty()
        }
        ClientCommand::MarkAsRead { chat_id, up_to_seq } => {
            engine
                .mark(actor, chat_id, Receipt::Read, up_to_seq)
                .await?;
            empty()
        }
        ClientCommand::TypingStart { chat_id } => {
            session.start_typing(chat_id).await?;
            empty()
        }
        ClientCommand::TypingStop { chat_id } => {
            session.stop_typing(chat_id).await?;
            empty()
        }
        ClientCommand::UserOnline {} => {
            session.set_status(true).await?;
            empty()
        }
        ClientCommand::UserOffline {} => {
            session.set_status(false).await?;
            empty()
        }
        ClientCommand::AddParticipant {
            chat_id,
            user_id,
            role,
            mls,
        } => {
            let role = role.unwrap_or(Role::Member);
            match carried(session, chat_id, mls).await? {
                None => {
                    engine
                        .add_participant(actor, chat_id, &user_id, role)
                        .await?;
                    empty()
                }
                Some(req) => {
                    let device = session.device_id();
                    let epoch = engine
                        .add_participant_with_commit(actor, device, &user_id, role, req)
                        .await?;
                    field("epoch", &epoch)
                }
            }
        }
        ClientCommand::RemoveParticipant {
            chat_id,
            user_id,
            mls,
        } => match carried(session, chat_id, mls).await? {
            None => {
                engine.remove_participant(actor, chat_id, &user_id).await?;
                empty()
            }
            Some(req) => {
                let device = session.device_id();
                let epoch = engine
                    .remove_participant_with_commit(actor, device, &user_id, req)
                    .await?;
                field("epoch", &epoch)
            }
        },
        ClientCommand::UpdateGroup {
            chat_id,
            name,
            description,
            avatar_url,
        } => {
            let patch = GroupPatch {
                name,
                description,
                avatar_url,
            };
            let chat = engine.update_group(actor, chat_id, patch).await?;
            field("chat", &chat)
        }
        ClientCommand::SetRole {
            chat_id,
            user_id,
            role,
        } => {
            engine.set_role(actor, chat_id, &user_id, role).await?;
            empty()
        }
        ClientCommand::MuteParticipant {
            chat_id,
            user_id,
            until,
        } => {
            let until = until.ok_or_else(|| {
                Error::invalid("until is required: a time, or null to lift the mute")
            })?;
            engine
                .mute_participant(actor, chat_id, &user_id, until)
                .await?;
            empty()
        }
        ClientCommand::SetRetention { chat_id, seconds } => {
            let seconds = seconds.ok_or_else(|| {
                Error::invalid("seconds is required: a number, or null to keep messages forever")
            })?;
            let chat = engine.set_retention(actor, chat_id, seconds).await?;
            field("chat", &chat)
        }
        ClientCommand::CreateCheckin(req) => {
            let message = engine.create_checkin(actor, req).await?;
            field("message", &message)
        }
        ClientCommand::AnswerCheckin { message_id, option } => {
            engine.answer_checkin(actor, message_id, option).await?;
            empty()
        }
        ClientCommand::CheckinResults { message_id } => {
            to_value(&engine.checkin_results(actor, message_id).await?)
        }
        ClientCommand::History {
            chat_id,
            before_seq,
            after_seq,
            limit,
        } => {
            let req = HistoryRequest {
                before_seq,
                after_seq,
                limit,
            };
            to_value(&engine.history(actor, chat_id, req).await?)
        }
        ClientCommand::Sync { cursors, after } => {
            to_value(&engine.sync_from(actor, &cursors, after.as_deref()).await?)
        }
        ClientCommand::React { message_id, emoji } => {
            let message = engine.react(actor, message_id, &emoji).await?;
            field("message", &message)
        }
        ClientCommand::Unreact { message_id, emoji } => {
            let message = engine.unreact(actor, message_id, &emoji).await?;
            field("message", &message)
        }
        ClientCommand::SetPrivacy(patch) => {
            let privacy = engine.set_privacy(actor, patch).await?;
            field("privacy", &privacy)
        }
        ClientCommand::BlockUser { user_id } => {
            engine.block(actor, &user_id).await?;
            empty()
        }
        ClientCommand::UnblockUser { user_id } => {
            engine.unblock(actor, &user_id).await?;
            empty()
        }
        ClientCommand::Report { message_id, reason } => {
            let report_id = engine.report(actor, message_id, &reason).await?;
            field("report_id", &report_id)
        }
        ClientCommand::Ping {} => empty(),
        ClientCommand::PublishKeyPackages {
            key_packages,
            last_resort,
        } => {
            let (packages, last_resort) =
                key_packages_from_base64(&key_packages, last_resort.as_deref())?;
            let available = engine
                .publish_key_packages(actor, session.device_id(), packages, last_resort)
                .await?;
            field("available", &available)
        }
        ClientCommand::MlsCommit {
            chat_id,
            epoch,
            commit,
            welcome,
            group_info,
        } => {
            let req = MlsCommitRequest {
                chat_id,
                epoch,
                commit: from_base64("commit", &commit)?,
                welcome: optional_base64("welcome", welcome.as_deref())?,
                group_info: optional_base64("group_info", group_info.as_deref())?,
            };
            let epoch = engine.mls_commit(actor, session.device_id(), req).await?;
            field("epoch", &epoch)
        }
        ClientCommand::ClaimKeyPackages { user_ids } => {
            let claimed = engine.claim_key_packages(actor, &user_ids).await?;
            field("devices", &ClaimedView::list(&claimed))
        }
    }
}

/// The commit a membership change carries, if any. PROTOCOL.md names
/// `commit` and `welcome`; `epoch` is ours and optional: without it, the
/// commit is taken for the chat's current epoch (the commit names its own
/// epoch, and one made for another is a `conflict` all the same).
async fn carried(
    session: &Session,
    chat_id: crate::model::ChatId,
    mls: super::commands::MlsCarried,
) -> Result<Option<MlsCommitRequest>> {
    let Some(commit) = mls.commit else {
        if mls.welcome.is_some() || mls.epoch.is_some() {
            return Err(Error::invalid("epoch and welcome come with a commit"));
        }
        return Ok(None);
    };
    let epoch = match mls.epoch {
        Some(epoch) => epoch,
        None => session
            .engine()
            .mls_epoch(session.actor(), chat_id)
            .await?
            .unwrap_or(0),
    };
    Ok(Some(MlsCommitRequest {
        chat_id,
        epoch,
        commit: from_base64("commit", &commit)?,
        welcome: optional_base64("welcome", mls.welcome.as_deref())?,
        group_info: None,
    }))
}

/// Standard base64, as MLS objects travel; `what` names the field in the
/// error.
pub fn from_base64(what: &str, text: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|_| Error::invalid(format!("{what} must be standard base64")))
}

/// [`from_base64`] of an optional field.
fn optional_base64(what: &str, text: Option<&str>) -> Result<Option<Vec<u8>>> {
    text.map(|t| from_base64(what, t)).transpose()
}

/// Decoded key packages, and the last-resort one.
pub type KeyPackages = (Vec<Vec<u8>>, Option<Vec<u8>>);

/// The key packages of `publish_key_packages` (and its REST twin), decoded.
pub fn key_packages_from_base64(
    key_packages: &[String],
    last_resort: Option<&str>,
) -> Result<KeyPackages> {
    let packages = key_packages
        .iter()
        .map(|p| from_base64("key_packages", p))
        .collect::<Result<Vec<_>>>()?;
    Ok((packages, optional_base64("last_resort", last_resort)?))
}

/// A claimed key package as the `claim_key_packages` ack (and its REST
/// twin) shows it.
#[derive(Debug, Serialize)]
pub struct ClaimedView<'a> {
    user_id: &'a UserId,
    device_id: &'a crate::model::DeviceId,
    /// Standard base64.
    key_package: String,
    last_resort: bool,
}

impl<'a> ClaimedView<'a> {
    /// The views of `claimed`.
    pub fn list(claimed: &'a [crate::mls::ClaimedKeyPackage]) -> Vec<Self> {
        use base64::Engine as _;
        claimed
            .iter()
            .map(|c| Self {
                user_id: &c.user_id,
                device_id: &c.device_id,
                key_package: base64::engine::general_purpose::STANDARD.encode(&c.key_package),
                last_resort: c.last_resort,
            })
            .collect()
    }
}

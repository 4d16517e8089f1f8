//! From a parsed command of an authenticated connection to engine calls.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Serialize, ser::SerializeMap};

use super::{
    commands::{ClientCommand, ParseError, parse_request},
    events::{ErrorBody, ServerEvent, to_frame},
};
use crate::{
    engine::{HistoryRequest, Receipt, Session},
    error::{Error, Result},
    model::Role,
    store::GroupPatch,
};

#[derive(Serialize)]
struct Reply<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    data: T,
}

/// An `ack` frame answering request `id`.
pub fn ack_frame<T: Serialize + ?Sized>(id: &str, data: &T) -> Bytes {
    to_frame(&Reply {
        kind: "ack",
        id: Some(id),
        data,
    })
}

/// An `error` frame, answering request `id` if there is one.
pub fn error_frame(id: Option<&str>, error: &Error) -> Bytes {
    if let Error::Backend { source } = error {
        tracing::error!(error = %source, "internal error answering a command");
    }
    to_frame(&Reply {
        kind: "error",
        id,
        data: ErrorBody::from(error),
    })
}

/// Handles one text frame of an authenticated connection: parses it, runs
/// the command, and returns the answer to send back, if any (an `ack` for
/// commands with an `id`, an `error` for any failure).
pub async fn dispatch_text(session: &Session, text: &str) -> Option<Bytes> {
    match parse_request(text) {
        Ok(request) => {
            let id = request.id;
            match execute(session, request.command).await {
                Ok(data) => id.map(|id| data.ack_frame(&id)),
                Err(e) => Some(error_frame(id.as_deref(), &e)),
            }
        }
        Err(ParseError { id, error, .. }) => Some(error_frame(id.as_deref(), &error)),
    }
}

/// The `data` of an `ack`, already JSON: written into the frame as it is,
/// without building a tree of values first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckData(Bytes);

impl AckData {
    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Built only from serde_json's output and from parts of frames it
        // wrote, so always UTF-8; an empty string otherwise.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The `ack` frame answering request `id` with this data.
    pub fn ack_frame(&self, id: &str) -> Bytes {
        const HEAD: &[u8] = br#"{"type":"ack","id":"#;
        let mut frame = BytesMut::with_capacity(HEAD.len() + id.len() + self.0.len() + 16);
        frame.put_slice(HEAD);
        let mut writer = (&mut frame).writer();
        // Writing a string into memory cannot fail; should it, the client
        // hears of it rather than getting a broken frame.
        if let Err(e) = serde_json::to_writer(&mut writer, id) {
            return error_frame(Some(id), &Error::backend(e));
        }
        frame.put_slice(br#","data":"#);
        frame.put_slice(&self.0);
        frame.put_u8(b'}');
        frame.freeze()
    }

    /// `{"message": <message>}` from the `message_received` frame the
    /// message was published as: the same JSON, not serialized again.
    fn message_from_frame(frame: &[u8]) -> Option<Self> {
        const KEY: &[u8] = br#"{"message":"#;
        let message = ServerEvent::message_of_received_frame(frame)?;
        let mut data = BytesMut::with_capacity(KEY.len() + message.len() + 1);
        data.put_slice(KEY);
        data.put_slice(message);
        data.put_u8(b'}');
        Some(Self(data.freeze()))
    }
}

fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<AckData> {
    serde_json::to_vec(value)
        .map(|json| AckData(json.into()))
        .map_err(Error::backend)
}

/// `{"<key>": value}`.
struct Field<'a, T: ?Sized>(&'static str, &'a T);

impl<T: Serialize + ?Sized> Serialize for Field<'_, T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(self.0, self.1)?;
        map.end()
    }
}

fn field<T: Serialize + ?Sized>(key: &'static str, value: &T) -> Result<AckData> {
    to_value(&Field(key, value))
}

/// Runs a command; the result is the `data` of its `ack`.
pub async fn execute(session: &Session, command: ClientCommand) -> Result<AckData> {
    let engine = session.engine();
    let actor = session.actor();
    let empty = || to_value(&serde_json::Map::new());
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
            let (message, frame) = engine.send_framed(actor, req).await?;
            match frame.and_then(|f| AckData::message_from_frame(&f)) {
                Some(data) => Ok(data),
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
        } => {
            engine
                .add_participant(actor, chat_id, &user_id, role.unwrap_or(Role::Member))
                .await?;
            empty()
        }
        ClientCommand::RemoveParticipant { chat_id, user_id } => {
            engine.remove_participant(actor, chat_id, &user_id).await?;
            empty()
        }
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
    }
}

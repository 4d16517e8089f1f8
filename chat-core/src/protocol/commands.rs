//! Client-to-server commands.

use std::collections::HashMap;

use serde::Deserialize;

use crate::{
    engine::{NewGroup, PrivacyPatch, SendMessage},
    error::Error,
    model::{ChatId, Encryption, MessageId, Role, UserId},
};

/// A command from a client (PROTOCOL.md, "Commands"), parsed from
/// `{"type": "<name>", "id": "...", "data": {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are documented in PROTOCOL.md
pub enum ClientCommand {
    /// Authenticate with a JWT (handled by the transport).
    Authenticate { token: String },
    /// Open the direct chat with a user.
    CreateDirect {
        user_id: UserId,
        #[serde(default)]
        encryption: Encryption,
    },
    /// Create a group.
    CreateGroup(NewGroup),
    /// Open a chat on this connection.
    JoinChat { chat_id: ChatId },
    /// Close a chat on this connection.
    LeaveChat { chat_id: ChatId },
    /// Send a message.
    SendMessage(SendMessage),
    /// Edit one's message.
    EditMessage {
        message_id: MessageId,
        content: String,
    },
    /// Delete a message.
    DeleteMessage { message_id: MessageId },
    /// Delivered watermark.
    MarkDelivered { chat_id: ChatId, up_to_seq: u64 },
    /// Read watermark.
    MarkAsRead { chat_id: ChatId, up_to_seq: u64 },
    /// Typing started.
    TypingStart { chat_id: ChatId },
    /// Typing stopped.
    TypingStop { chat_id: ChatId },
    /// Explicit online status.
    UserOnline {},
    /// Explicit offline status.
    UserOffline {},
    /// Add a participant to a group.
    AddParticipant {
        chat_id: ChatId,
        user_id: UserId,
        #[serde(default)]
        role: Option<Role>,
    },
    /// Remove a participant (or leave).
    RemoveParticipant { chat_id: ChatId, user_id: UserId },
    /// Update group fields.
    UpdateGroup {
        chat_id: ChatId,
        #[serde(default)]
        name: Option<String>,
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        avatar_url: Option<String>,
    },
    /// Change a participant's role.
    SetRole {
        chat_id: ChatId,
        user_id: UserId,
        role: Role,
    },
    /// A page of history.
    History {
        chat_id: ChatId,
        #[serde(default)]
        before_seq: Option<u64>,
        #[serde(default)]
        after_seq: Option<u64>,
        #[serde(default)]
        limit: Option<u64>,
    },
    /// Catch up after being offline.
    Sync {
        #[serde(default)]
        cursors: HashMap<ChatId, u64>,
    },
    /// Add a reaction.
    React {
        message_id: MessageId,
        emoji: String,
    },
    /// Remove a reaction.
    Unreact {
        message_id: MessageId,
        emoji: String,
    },
    /// Privacy settings.
    SetPrivacy(PrivacyPatch),
    /// Block a user.
    BlockUser { user_id: UserId },
    /// Unblock a user.
    UnblockUser { user_id: UserId },
    /// Report a message.
    Report {
        message_id: MessageId,
        reason: String,
    },
    /// Keep-alive.
    Ping {},
}

/// Longest request `id`, in characters.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// A parsed client frame.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request id, echoed in the answer.
    pub id: Option<String>,
    /// The command's `type` as sent (for rate limits and metrics).
    pub kind: String,
    /// The command.
    pub command: ClientCommand,
}

/// A frame that could not be parsed: the error, and the request id if one
/// could be read, so that the error answers it.
#[derive(Debug)]
pub struct ParseError {
    /// The request id, if the frame had a valid one.
    pub id: Option<String>,
    /// The command's `type`, if the frame had one.
    pub kind: Option<String>,
    /// What is wrong.
    pub error: Error,
}

/// Parses one text frame.
pub fn parse_request(text: &str) -> std::result::Result<Request, ParseError> {
    let fail = |id: Option<String>, msg: String| ParseError {
        id,
        kind: None,
        error: Error::invalid(msg),
    };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| fail(None, format!("malformed JSON: {e}")))?;
    let serde_json::Value::Object(mut obj) = value else {
        return Err(fail(None, "a frame is a JSON object".to_owned()));
    };
    let id = match obj.remove("id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.chars().count() <= MAX_REQUEST_ID_LEN => Some(s),
        Some(_) => {
            return Err(fail(
                None,
                format!("id must be a string of at most {MAX_REQUEST_ID_LEN} characters"),
            ));
        }
    };
    let kind = match obj.remove("type") {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(fail(id, "type is required and must be a string".to_owned())),
    };
    let data = match obj.remove("data") {
        None | Some(serde_json::Value::Null) => serde_json::Value::Object(Default::default()),
        Some(d @ serde_json::Value::Object(_)) => d,
        Some(_) => return Err(fail(id, "data must be an object".to_owned())),
    };
    let tagged = serde_json::json!({ "type": kind, "data": data });
    match ClientCommand::deserialize(tagged) {
        Ok(command) => Ok(Request { id, kind, command }),
        Err(e) => {
            let msg = if e.to_string().starts_with("unknown variant") {
                format!("unknown command type {kind:?}")
            } else {
                format!("invalid {kind}: {e}")
            };
            Err(ParseError {
                kind: Some(kind),
                ..fail(id, msg)
            })
        }
    }
}

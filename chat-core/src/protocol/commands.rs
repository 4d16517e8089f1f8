//! Client-to-server commands.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{error::Category, value::RawValue};

use crate::{
    engine::{NewGroup, PrivacyPatch, SendMessage},
    error::Error,
    model::{ChatId, Encryption, MessageId, Role, Timestamp, UserId},
};

/// A command from a client (`docs/protocol.md`, "Commands"), parsed from
/// `{"type": "<name>", "id": "...", "data": {...}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are documented in `docs/protocol.md`
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
    /// Add a participant to a group (in an e2ee chat, with the commit that
    /// adds their devices).
    AddParticipant {
        chat_id: ChatId,
        user_id: UserId,
        #[serde(default)]
        role: Option<Role>,
        #[serde(flatten)]
        mls: MlsCarried,
    },
    /// Remove a participant, or leave (in an e2ee chat, with the commit
    /// that removes their devices).
    RemoveParticipant {
        chat_id: ChatId,
        user_id: UserId,
        #[serde(flatten)]
        mls: MlsCarried,
    },
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
    MuteParticipant {
        chat_id: ChatId,
        user_id: UserId,
        /// Required; `null` lifts the mute (so a missing field is an
        /// error, not an unmute).
        #[serde(default, deserialize_with = "present")]
        until: Option<Option<Timestamp>>,
    },
    /// Set how long the chat keeps messages.
    SetRetention {
        chat_id: ChatId,
        /// Required; `null` keeps messages forever (so a missing field is
        /// an error, not "forever").
        #[serde(default, deserialize_with = "present")]
        seconds: Option<Option<u64>>,
    },
    /// Post a check-in.
    CreateCheckin(crate::engine::NewCheckin),
    /// Answer a check-in.
    AnswerCheckin { message_id: MessageId, option: u32 },
    /// A check-in's results.
    CheckinResults { message_id: MessageId },
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
        /// The `next` of the previous page.
        #[serde(default)]
        after: Option<String>,
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
    /// Publish this device's MLS key packages (standard base64 each).
    PublishKeyPackages {
        #[serde(default)]
        key_packages: Vec<String>,
        #[serde(default)]
        last_resort: Option<String>,
    },
    /// Claim one key package of each device of these users.
    ClaimKeyPackages { user_ids: Vec<UserId> },
    /// An MLS commit of an e2ee chat (standard base64 each).
    MlsCommit {
        chat_id: ChatId,
        epoch: u64,
        commit: String,
        #[serde(default)]
        welcome: Option<String>,
        #[serde(default)]
        group_info: Option<String>,
    },
}

/// The MLS commit a membership change of an e2ee chat may carry
/// (standard base64).
/// A field that is present (its value may be `null`): `Some(value)`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct MlsCarried {
    /// The epoch the commit was made for.
    #[serde(default)]
    pub epoch: Option<u64>,
    /// The commit.
    #[serde(default)]
    pub commit: Option<String>,
    /// The welcome of the devices it adds.
    #[serde(default)]
    pub welcome: Option<String>,
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

/// A frame's envelope; `data` stays unparsed text until `type` says what
/// it holds.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<serde_json::Value>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// serde_json's message without its " at line L column C": positions in
/// the text rebuilt for the command would only mislead the client.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) if e.line() > 0 => text[..i].to_owned(),
        _ => text,
    }
}

/// Parses one text frame.
///
/// The command is parsed straight from the text, without a tree of JSON
/// values in between: this runs for every frame a client sends.
pub fn parse_request(text: &str) -> std::result::Result<Request, ParseError> {
    let fail = |id: Option<String>, msg: String| ParseError {
        id,
        kind: None,
        error: Error::invalid(msg),
    };
    if !text.trim_start().starts_with('{') {
        // A struct would also accept a JSON array; only objects are frames.
        let msg = match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => "a frame is a JSON object".to_owned(),
            Err(e) => format!("malformed JSON: {e}"),
        };
        return Err(fail(None, msg));
    }
    let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
        let msg = match e.classify() {
            Category::Data => format!("a frame is a JSON object with unique keys: {e}"),
            _ => format!("malformed JSON: {e}"),
        };
        fail(None, msg)
    })?;
    let id = match envelope.id {
        None => None,
        Some(serde_json::Value::String(s)) if s.chars().count() <= MAX_REQUEST_ID_LEN => Some(s),
        Some(_) => {
            return Err(fail(
                None,
                format!("id must be a string of at most {MAX_REQUEST_ID_LEN} characters"),
            ));
        }
    };
    let kind = match envelope.kind {
        Some(serde_json::Value::String(s)) => s,
        _ => return Err(fail(id, "type is required and must be a string".to_owned())),
    };
    let data = match envelope.data {
        None => "{}",
        Some(raw) if raw.get().starts_with('{') => raw.get(),
        Some(_) => return Err(fail(id, "data must be an object".to_owned())),
    };
    // `type` first, so that serde reads `data` straight into the variant
    // instead of buffering it.
    let tagged = match serde_json::to_string(&kind) {
        Ok(kind_json) => format!(r#"{{"type":{kind_json},"data":{data}}}"#),
        Err(e) => return Err(fail(id, format!("invalid type: {e}"))),
    };
    match serde_json::from_str::<ClientCommand>(&tagged) {
        Ok(command) => Ok(Request { id, kind, command }),
        Err(e) => {
            let e = without_position(&e);
            let msg = if e.starts_with("unknown variant") {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> ParseError {
        match parse_request(text) {
            Ok(req) => panic!("{text} was accepted as {:?}", req.command),
            Err(e) => e,
        }
    }

    #[test]
    fn a_command_parses_whatever_the_order_of_its_keys() {
        let chat = ChatId::new();
        let text = format!(
            r#"{{"data":{{"chat_id":"{chat}","client_msg_id":"c1","content":"hi"}},"extra":1,"id":"r1","type":"send_message"}}"#
        );
        let req = parse_request(&text).unwrap();
        assert_eq!(req.id.as_deref(), Some("r1"));
        assert_eq!(req.kind, "send_message");
        let ClientCommand::SendMessage(send) = req.command else {
            panic!("not a send: {:?}", req.command);
        };
        assert_eq!(send.chat_id, chat);
        assert_eq!(send.content.as_deref(), Some("hi"));
        for text in [
            r#"{"type":"ping"}"#,
            r#"{"type":"ping","data":null,"id":null}"#,
        ] {
            let req = parse_request(text).unwrap();
            assert!(matches!(req.command, ClientCommand::Ping {}));
            assert_eq!(req.id, None);
        }
    }

    #[test]
    fn each_kind_of_bad_frame_gets_its_own_error() {
        let cases = [
            ("{not json", None, "malformed JSON"),
            ("[1, 2]", None, "a frame is a JSON object"),
            (r#"{"type":"ping","type":"ping"}"#, None, "duplicate field"),
            (r#"{"id":7,"type":"ping"}"#, None, "id must be a string"),
            (r#"{"id":"r","data":{}}"#, Some("r"), "type is required"),
            (
                r#"{"id":"r","type":"ping","data":[1]}"#,
                Some("r"),
                "data must be an object",
            ),
            (
                r#"{"id":"r","type":"fly"}"#,
                Some("r"),
                "unknown command type \"fly\"",
            ),
        ];
        for (text, id, wanted) in cases {
            let e = refused(text);
            assert_eq!(e.id.as_deref(), id, "{text}");
            assert!(e.error.to_string().contains(wanted), "{text}: {}", e.error);
        }
        let long = format!(r#"{{"id":"{}","type":"ping"}}"#, "x".repeat(65));
        assert!(
            refused(&long)
                .error
                .to_string()
                .contains("id must be a string")
        );
    }

    #[test]
    fn a_bad_field_names_the_command_and_no_position_in_rebuilt_text() {
        let e = refused(r#"{"id":"r","type":"send_message","data":{"content":"hi"}}"#);
        assert_eq!(e.kind.as_deref(), Some("send_message"));
        let msg = e.error.to_string();
        assert!(msg.contains("invalid send_message: missing field"), "{msg}");
        assert!(!msg.contains("line"), "{msg}");
    }
}

//! Server-to-client frames.

use bytes::Bytes;
use serde::Serialize;

use crate::{
    error::{Error, ErrorCode},
    model::{ChatId, ChatView, Message, MessageId, Role, Timestamp, UserId},
};

/// An event from the server to a client (PROTOCOL.md, "Events").
///
/// Serialized as `{"type": "<snake_case name>", "data": {...}}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are documented in PROTOCOL.md
pub enum ServerEvent {
    /// A new message (also the system messages of membership changes).
    MessageReceived(Message),
    /// A message was edited.
    MessageEdited(Message),
    /// A message was deleted.
    MessageDeleted {
        chat_id: ChatId,
        message_id: MessageId,
        seq: u64,
        updated_seq: u64,
    },
    /// A participant's delivered watermark moved.
    MessageDelivered {
        chat_id: ChatId,
        user_id: UserId,
        up_to_seq: u64,
    },
    /// A participant's read watermark moved.
    MessageRead {
        chat_id: ChatId,
        user_id: UserId,
        up_to_seq: u64,
    },
    /// Someone started typing.
    UserTyping { chat_id: ChatId, user_id: UserId },
    /// Someone stopped typing (or their typing expired).
    UserStoppedTyping { chat_id: ChatId, user_id: UserId },
    /// A contact came online.
    UserOnline { user_id: UserId },
    /// A contact went offline.
    UserOffline {
        user_id: UserId,
        last_seen: Option<Timestamp>,
    },
    /// Presence of every contact, once after authentication.
    PresenceUpdate { users: Vec<PresenceEntry> },
    /// A reaction was added.
    ReactionAdded {
        chat_id: ChatId,
        message_id: MessageId,
        user_id: UserId,
        emoji: String,
        updated_seq: u64,
    },
    /// A reaction was removed.
    ReactionRemoved {
        chat_id: ChatId,
        message_id: MessageId,
        user_id: UserId,
        emoji: String,
        updated_seq: u64,
    },
    /// The recipient is a member of a new chat.
    ChatCreated(ChatView),
    /// Someone joined a chat.
    ParticipantAdded {
        chat_id: ChatId,
        user_id: UserId,
        role: Role,
    },
    /// Someone left or was removed.
    ParticipantRemoved { chat_id: ChatId, user_id: UserId },
    /// Group fields or roles changed.
    ChatUpdated(ChatView),
    /// An error not tied to a request id.
    Error(ErrorBody),
    /// Authentication failed; the connection closes.
    AuthenticationError { message: String },
    /// A command was refused by the rate limiter and not executed.
    RateLimitExceeded {
        retry_after_ms: u64,
        command: String,
    },
}

/// One user's presence in a `presence_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PresenceEntry {
    /// Who.
    pub user_id: UserId,
    /// Whether they have a live connection (and let others see it).
    pub online: bool,
    /// When they were last online (`None` if unknown or private).
    pub last_seen: Option<Timestamp>,
}

/// The `data` of an `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
}

impl From<&Error> for ErrorBody {
    fn from(e: &Error) -> Self {
        Self {
            code: e.code(),
            message: e.public_message(),
        }
    }
}

impl ServerEvent {
    /// The event serialized as one text frame.
    pub fn to_frame(&self) -> Bytes {
        to_frame(self)
    }

    /// `message_received` for `message`, serialized from a borrow: the
    /// same frame as `MessageReceived(message.clone()).to_frame()`, without
    /// copying the message first.
    pub(crate) fn message_received_frame(message: &Message) -> Bytes {
        #[derive(Serialize)]
        struct Event<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            data: &'a Message,
        }
        to_frame(&Event {
            kind: "message_received",
            data: message,
        })
    }

    /// The message inside a frame made by
    /// [`message_received_frame`](Self::message_received_frame), as JSON.
    pub(crate) fn message_of_received_frame(frame: &[u8]) -> Option<&[u8]> {
        frame
            .strip_prefix(br#"{"type":"message_received","data":"#.as_slice())?
            .strip_suffix(b"}")
    }
}

/// Serializes a frame. Our types always serialize (string keys, no
/// non-finite floats); should that ever break, the client gets an
/// `internal` error instead of a panic.
pub(crate) fn to_frame<T: Serialize>(value: &T) -> Bytes {
    thread_local! {
        /// Serialization grows its buffer as it goes; one buffer per thread,
        /// kept between frames, saves those reallocations on every event.
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// Larger buffers are not kept, so that one large answer (a sync) does
    /// not hold its memory on the thread for good.
    const KEEP: usize = 16 * 1024;
    BUFFER.with_borrow_mut(|buf| {
        buf.clear();
        let frame = match serde_json::to_writer(&mut *buf, value) {
            // Exactly the frame's size: it may wait in many queues.
            Ok(()) => Bytes::copy_from_slice(buf),
            Err(e) => {
                tracing::error!(error = %e, "failed to serialize a frame");
                Bytes::from_static(
                    br#"{"type":"error","data":{"code":"internal","message":"internal error"}}"#,
                )
            }
        };
        if buf.capacity() > KEEP {
            *buf = Vec::new();
        }
        frame
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChatId, MessageType};

    #[test]
    fn message_received_from_a_borrow_is_the_event_frame() {
        let mut reactions = crate::model::Reactions::new();
        reactions.insert("👍".into(), vec![UserId::new("bob").expect("a valid id")]);
        let message = Message {
            id: MessageId::new(),
            chat_id: ChatId::new(),
            seq: 7,
            updated_seq: 9,
            sender_id: UserId::new("alice").expect("a valid id"),
            kind: MessageType::Text,
            content: Some("a \"quoted\" line\n}".into()),
            media: None,
            reply_to: None,
            client_msg_id: Some("c-1".into()),
            created_at: Timestamp::from_millis(1_795_464_000_123),
            edited_at: None,
            deleted: false,
            reactions,
            system: None,
        };
        let frame = ServerEvent::message_received_frame(&message);
        assert_eq!(
            frame,
            ServerEvent::MessageReceived(message.clone()).to_frame()
        );
        let inner = ServerEvent::message_of_received_frame(&frame).unwrap_or_default();
        let parsed: Message = serde_json::from_slice(inner).expect("the message's JSON");
        assert_eq!(parsed, message);
        assert_eq!(
            ServerEvent::message_of_received_frame(b"{\"type\":\"ack\"}"),
            None
        );
    }
}

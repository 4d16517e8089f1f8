//! What goes out to a client: typed [`ServerEvent`]s, encoded once into a
//! shared [`Event`], and per-request [`Reply`]s; each transport frames them
//! for its wire ([`Framing`]).
//!
//! The engine emits events as typed values and never writes JSON itself:
//! [`Event::encode`] serializes an event's `data` once, and every recipient,
//! on every transport, shares those bytes. A transport turns an [`Event`] or
//! a [`Reply`] into its frame with [`Frame::encode`]: `/ws` sends
//! `{"type": .., "data": ..}`, which is also how events cross the bus
//! between nodes.

use std::{fmt, sync::Arc};

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Deserializer, Serialize, Serializer, ser::SerializeMap};

use crate::{
    error::{Error, ErrorCode},
    model::{ChatId, ChatView, Message, MessageId, Role, Timestamp, UserId},
};

/// An event from the server to a client (`docs/protocol.md`, "Events").
///
/// Serialized as `{"type": "<snake_case name>", "data": {...}}`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are documented in `docs/protocol.md`
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
    ParticipantUpdated {
        chat_id: ChatId,
        user_id: UserId,
        role: Role,
        muted_until: Option<Timestamp>,
    },
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
    /// This device has fewer than 10 MLS key packages left on the server.
    KeyPackagesLow { available: u64 },
    /// To a check-in's poster: the counts after an answer.
    CheckinAnswered {
        chat_id: ChatId,
        message_id: MessageId,
        counts: Vec<u64>,
        total: u64,
    },
    /// To crisis responders: a message matched a crisis phrase.
    CrisisAlert(crate::care::CrisisAlert),
    /// To the sender of a message that matched a crisis phrase (their own
    /// connections only): where to find help.
    SupportResources {
        chat_id: ChatId,
        message_id: MessageId,
        resources: Arc<[crate::care::SupportResource]>,
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

impl ErrorBody {
    /// The body of `error`; an internal error is logged here, where its
    /// detail is dropped from what the client sees.
    pub fn logged(error: &Error) -> Self {
        if let Error::Backend { source } = error {
            tracing::error!(error = %source, "internal error answering a command");
        }
        Self::from(error)
    }
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
    /// The event encoded once, to be shared by all its recipients.
    pub fn encode(&self) -> Event {
        Event::encode(self)
    }
}

/// How a transport frames what goes out (see [`Frame::encode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Framing {
    /// One JSON object per text frame: `{"type": .., "data": ..}` for
    /// events, `{"type": "ack" | "error", "id": .., "data": ..}` for
    /// replies (`/ws`, and line-delimited transports).
    #[default]
    Json,
}

/// A [`ServerEvent`] encoded once: its name and its `data` as JSON, shared
/// (cheap to clone) by every connection it goes to.
///
/// The `/ws` frame is what is encoded; [`Event::data`] is a view into it,
/// so the most common framing costs no copy and other framings reuse the
/// same `data` bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    /// `{"type":"<name>","data":<data>}`, as serde_json writes it.
    frame: Bytes,
    /// Where the name ends in `frame`.
    name_end: usize,
}

/// What precedes an event's name in its frame.
const NAME_AT: &[u8] = br#"{"type":""#;
/// What lies between an event's name and its `data`.
const DATA_AT: &[u8] = br#"","data":"#;

impl Event {
    /// Encodes `event`. Our events always serialize (string keys, no
    /// non-finite floats); should that ever break, the recipients get an
    /// `internal` error event instead of a panic.
    pub fn encode(event: &ServerEvent) -> Self {
        Self::from_frame(to_frame(event)).unwrap_or_else(Self::internal)
    }

    /// `message_received` for `message`, encoded from a borrow (the same
    /// event as `ServerEvent::MessageReceived(message.clone()).encode()`,
    /// without copying the message first).
    pub fn message_received(message: &Message) -> Self {
        #[derive(Serialize)]
        struct Received<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            data: &'a Message,
        }
        let frame = to_frame(&Received {
            kind: "message_received",
            data: message,
        });
        Self::from_frame(frame).unwrap_or_else(Self::internal)
    }

    /// An event from its `/ws` frame (as [`Event::frame`] returns it, or as
    /// it crossed the bus); `None` if it is not shaped as one.
    pub fn from_frame(frame: Bytes) -> Option<Self> {
        let rest = frame.strip_prefix(NAME_AT)?;
        let name_len = rest.iter().position(|&b| b == b'"')?;
        let name = &rest[..name_len];
        // Our event names are snake_case: no escapes to get wrong.
        if name.is_empty() || !name.iter().all(|b| b.is_ascii_lowercase() || *b == b'_') {
            return None;
        }
        let name_end = NAME_AT.len() + name_len;
        let after = &frame[name_end..];
        if !after.starts_with(DATA_AT) || !after.ends_with(b"}") || after.len() <= DATA_AT.len() + 1
        {
            return None;
        }
        Some(Self { frame, name_end })
    }

    fn internal() -> Self {
        tracing::error!("an event did not encode as expected");
        let frame = Bytes::from_static(
            br#"{"type":"error","data":{"code":"internal","message":"internal error"}}"#,
        );
        Self {
            name_end: NAME_AT.len() + "error".len(),
            frame,
        }
    }

    /// The event's name (its `type`), e.g. `message_received`.
    pub fn name(&self) -> &str {
        // Checked to be ASCII when made.
        std::str::from_utf8(&self.frame[NAME_AT.len()..self.name_end]).unwrap_or("error")
    }

    /// The event's `data`, as JSON.
    pub fn data(&self) -> Bytes {
        self.frame
            .slice(self.name_end + DATA_AT.len()..self.frame.len() - 1)
    }

    /// The `/ws` frame: `{"type":"<name>","data":<data>}`.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The event framed for `framing`.
    pub fn encode_for(&self, framing: Framing) -> Bytes {
        match framing {
            Framing::Json => self.frame.clone(),
        }
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name only: data holds message content, which is not logged.
        f.debug_tuple("Event").field(&self.name()).finish()
    }
}

/// Crosses the bus as its `/ws` frame, in a JSON string: the same wire
/// format as before events were typed, so nodes of both versions agree.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(std::str::from_utf8(&self.frame).map_err(serde::ser::Error::custom)?)
    }
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let frame = Bytes::from(String::deserialize(d)?);
        Self::from_frame(frame).ok_or_else(|| serde::de::Error::custom("not an event frame"))
    }
}

/// The `data` of an `ack`, already JSON: written into the reply as it is,
/// without building a tree of values first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckData(Bytes);

impl AckData {
    /// `value`, serialized.
    pub fn encode<T: Serialize + ?Sized>(value: &T) -> crate::Result<Self> {
        serde_json::to_vec(value)
            .map(|json| Self(json.into()))
            .map_err(crate::Error::backend)
    }

    /// `{"<key>": value}`, serialized.
    pub fn field<T: Serialize + ?Sized>(key: &'static str, value: &T) -> crate::Result<Self> {
        /// A one-entry map, without building one.
        struct Field<'a, T: ?Sized>(&'static str, &'a T);

        impl<T: Serialize + ?Sized> Serialize for Field<'_, T> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry(self.0, self.1)?;
                map.end()
            }
        }
        Self::encode(&Field(key, value))
    }

    /// `{}`.
    pub fn empty() -> Self {
        Self(Bytes::from_static(b"{}"))
    }

    /// `{"message": <message>}` from the `message_received` event the
    /// message was published as: its encoded `data`, not serialized again.
    pub fn message_of(received: &Event) -> Self {
        const KEY: &[u8] = br#"{"message":"#;
        let message = received.data();
        let mut data = BytesMut::with_capacity(KEY.len() + message.len() + 1);
        data.put_slice(KEY);
        data.put_slice(&message);
        data.put_u8(b'}');
        Self(data.freeze())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        // Built only from serde_json's output, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The JSON bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

/// The answer to one request that carried an `id`: its ack data, or the
/// error it failed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The request's `id`.
    pub id: String,
    /// `Ok`: the `data` of the `ack`; `Err`: the `data` of the `error`.
    pub outcome: Result<AckData, ErrorBody>,
}

/// One thing queued for a connection, framed by its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// An event (shared with its other recipients).
    Event(Event),
    /// The answer to a request of this connection (boxed: frames wait in
    /// every connection's queue, and events are the common case).
    Reply(Box<Reply>),
}

impl Frame {
    /// The answer to a request: an `ack` or `error` reply if it carried an
    /// `id`; without one, an `error` event on failure and nothing on
    /// success.
    pub fn answer(id: Option<String>, outcome: crate::Result<AckData>) -> Option<Self> {
        let outcome = outcome.map_err(|e| ErrorBody::logged(&e));
        match (id, outcome) {
            (Some(id), outcome) => Some(Self::Reply(Box::new(Reply { id, outcome }))),
            (None, Ok(_)) => None,
            (None, Err(body)) => Some(Self::Event(ServerEvent::Error(body).encode())),
        }
    }

    /// The `error` answering `id` (or an `error` event without one).
    pub fn error(id: Option<String>, error: &crate::Error) -> Self {
        let body = ErrorBody::logged(error);
        match id {
            Some(id) => Self::Reply(Box::new(Reply {
                id,
                outcome: Err(body),
            })),
            None => Self::Event(ServerEvent::Error(body).encode()),
        }
    }

    /// The frame as `framing` puts it on the wire, consuming it: an
    /// event's `/ws` frame is moved out rather than cloned. (Every recipient
    /// holds the same buffer; a clone and a drop would be two more atomic
    /// operations per delivery on a reference count all of them share.)
    pub fn into_wire(self, framing: Framing) -> Bytes {
        match (self, framing) {
            (Self::Event(event), Framing::Json) => event.frame,
            (frame, framing) => frame.encode(framing),
        }
    }

    /// The frame as `framing` puts it on the wire.
    pub fn encode(&self, framing: Framing) -> Bytes {
        match (self, framing) {
            (Self::Event(event), framing) => event.encode_for(framing),
            (Self::Reply(reply), Framing::Json) => json_reply(reply),
        }
    }
}

impl From<Event> for Frame {
    fn from(event: Event) -> Self {
        Self::Event(event)
    }
}

impl From<ServerEvent> for Frame {
    fn from(event: ServerEvent) -> Self {
        Self::Event(event.encode())
    }
}

/// `{"type":"ack","id":<id>,"data":<data>}` or the `error` twin.
fn json_reply(reply: &Reply) -> Bytes {
    let (head, data): (&[u8], Bytes) = match &reply.outcome {
        Ok(data) => (br#"{"type":"ack","id":"#, data.0.clone()),
        Err(body) => match serde_json::to_vec(body) {
            Ok(json) => (br#"{"type":"error","id":"#, json.into()),
            Err(_) => return internal_error_frame(),
        },
    };
    let mut frame = BytesMut::with_capacity(head.len() + reply.id.len() + data.len() + 16);
    frame.put_slice(head);
    // Writing a string into memory cannot fail; should it, the client
    // hears of it rather than getting a broken frame.
    if serde_json::to_writer((&mut frame).writer(), &reply.id).is_err() {
        return internal_error_frame();
    }
    frame.put_slice(br#","data":"#);
    frame.put_slice(&data);
    frame.put_u8(b'}');
    frame.freeze()
}

fn internal_error_frame() -> Bytes {
    Bytes::from_static(br#"{"type":"error","data":{"code":"internal","message":"internal error"}}"#)
}

/// Serializes a frame; an `internal` error frame if it does not serialize.
fn to_frame<T: Serialize>(value: &T) -> Bytes {
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
                internal_error_frame()
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

    fn message() -> Message {
        let mut reactions = crate::model::Reactions::new();
        reactions.insert("👍".into(), vec![UserId::new("bob").expect("a valid id")]);
        Message {
            mls: None,
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
            unreadable: None,
            checkin: None,
            resource: None,
        }
    }

    #[test]
    fn message_received_from_a_borrow_is_the_typed_event() {
        let message = message();
        let event = Event::message_received(&message);
        assert_eq!(
            event,
            ServerEvent::MessageReceived(message.clone()).encode()
        );
        assert_eq!(event.name(), "message_received");
        let parsed: Message = serde_json::from_slice(&event.data()).expect("the message's JSON");
        assert_eq!(parsed, message);
        let ack = AckData::message_of(&event);
        let value: serde_json::Value = serde_json::from_str(ack.as_str()).expect("JSON");
        assert_eq!(
            serde_json::from_value::<Message>(value["message"].clone()).expect("a message"),
            message
        );
    }

    #[test]
    fn every_event_splits_into_name_and_data() {
        let user = UserId::new("u").expect("a valid id");
        let events = [
            ServerEvent::UserOnline {
                user_id: user.clone(),
            },
            ServerEvent::PresenceUpdate { users: vec![] },
            ServerEvent::Error(ErrorBody {
                code: ErrorCode::NotFound,
                message: "no \"such\" chat".into(),
            }),
            ServerEvent::RateLimitExceeded {
                retry_after_ms: 5,
                command: "send_message".into(),
            },
        ];
        for typed in events {
            let event = typed.encode();
            let whole: serde_json::Value =
                serde_json::from_slice(event.frame()).expect("the frame is JSON");
            let data: serde_json::Value =
                serde_json::from_slice(&event.data()).expect("the data is JSON");
            assert_eq!(whole["type"], event.name());
            assert_eq!(whole["data"], data);
            let crossed: Event =
                serde_json::from_str(&serde_json::to_string(&event).expect("serializes"))
                    .expect("deserializes");
            assert_eq!(crossed, event, "the bus keeps events whole");
        }
    }

    #[test]
    fn frames_that_are_not_events_are_refused() {
        for bad in [
            &b"{}"[..],
            br#"{"type":"ack","id":"1","data":{}}"#,
            br#"{"type":"A","data":{}}"#,
            br#"{"type":"x","data":"#,
            br#"{"type":"x\"y","data":{}}"#,
        ] {
            assert_eq!(Event::from_frame(Bytes::copy_from_slice(bad)), None);
        }
    }

    #[test]
    fn replies_frame_as_ack_or_error_with_their_id() {
        let ack = Frame::answer(Some("r-\"1".into()), AckData::field("x", &1)).expect("a reply");
        assert_eq!(
            ack.encode(Framing::Json),
            Bytes::from_static(br#"{"type":"ack","id":"r-\"1","data":{"x":1}}"#)
        );
        let error = Frame::error(Some("r-2".into()), &crate::Error::not_found("no chat"));
        let value: serde_json::Value =
            serde_json::from_slice(&error.encode(Framing::Json)).expect("JSON");
        assert_eq!(value["type"], "error");
        assert_eq!(value["id"], "r-2");
        assert_eq!(value["data"]["code"], "not_found");
        assert_eq!(Frame::answer(None, Ok(AckData::empty())), None);
        let unasked = Frame::answer(None, Err(crate::Error::invalid("bad"))).expect("an event");
        let value: serde_json::Value =
            serde_json::from_slice(&unasked.encode(Framing::Json)).expect("JSON");
        assert_eq!(value["type"], "error");
        assert!(value.get("id").is_none());
    }
}

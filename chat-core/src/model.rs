//! The domain model: identifiers, chats, participants, messages, reports.
//!
//! These types are also the wire objects of `docs/protocol.md`; their serde form is
//! the contract, so field names here are never renamed.

use std::{
    collections::BTreeMap,
    fmt,
    str::FromStr,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::{Generator, Ulid};

use crate::error::{Error, Result};

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Time-ordered (ULID), so sorting by id sorts by creation time.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Ulid);

        impl $name {
            /// A fresh id for the current time, greater than every id this
            /// process made before it.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(next_ulid())
            }

            /// Wraps an existing ULID.
            pub fn from_ulid(ulid: Ulid) -> Self {
                Self(ulid)
            }

            /// The ULID inside.
            pub fn ulid(self) -> Ulid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.array_to_str(&mut [0; ulid::ULID_LEN]))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                Ulid::from_string(s)
                    .map(Self)
                    .map_err(|_| Error::invalid(format!("{} is not a valid {}", Truncated(s), stringify!($name))))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                // Encoded on the stack: `collect_str` would go through the
                // formatting machinery, on every id of every frame.
                s.serialize_str(self.0.array_to_str(&mut [0; ulid::ULID_LEN]))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

ulid_id!(
    /// Identifies a chat.
    ChatId
);
ulid_id!(
    /// Identifies a message.
    MessageId
);
ulid_id!(
    /// Identifies an uploaded media object.
    MediaId
);
ulid_id!(
    /// Identifies a report.
    ReportId
);
ulid_id!(
    /// Identifies one live connection, unique across nodes.
    ConnectionId
);
ulid_id!(
    /// Identifies an entry of the moderation audit log.
    AuditId
);

/// Shows at most 64 characters of untrusted input in an error message.
struct Truncated<'a>(&'a str);

impl fmt::Display for Truncated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.char_indices().nth(64) {
            Some((i, _)) => write!(f, "{:?}...", &self.0[..i]),
            None => write!(f, "{:?}", self.0),
        }
    }
}

fn valid_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '@' | '-')
}

/// The next ULID of this process: ids made within one millisecond (or
/// after the clock stepped back) follow each other instead of being
/// ordered by their random part, so that ids sort in the order they were
/// made, as `docs/protocol.md` promises ("time-ordered").
fn next_ulid() -> Ulid {
    static GENERATOR: Mutex<Generator> = Mutex::new(Generator::new());
    let mut generator = GENERATOR.lock().unwrap_or_else(|e| e.into_inner());
    // Overflow needs 2^80 ids in one millisecond.
    generator.generate().unwrap_or_else(|_| Ulid::new())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $max:expr) => {
        $(#[$doc])*
        ///
        /// Cloning is a reference count, not a copy: ids are cloned into
        /// every fan-out, cache entry and event.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Longest accepted id, in characters.
            pub const MAX_LEN: usize = $max;

            /// Validates and wraps an id: 1..=MAX_LEN characters of
            /// `[A-Za-z0-9_.:@-]`.
            pub fn new(id: impl Into<String>) -> Result<Self> {
                let id = id.into();
                if id.is_empty() || id.len() > Self::MAX_LEN || !id.chars().all(valid_name_char) {
                    return Err(Error::invalid(format!(
                        "{} must be 1..={} characters of [A-Za-z0-9_.:@-], got {}",
                        stringify!($name),
                        Self::MAX_LEN,
                        Truncated(&id)
                    )));
                }
                Ok(Self(id.into()))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            fn from_str(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = Error;

            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = Error;

            fn try_from(s: &str) -> Result<Self> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                Self::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
            }
        }
    };
}

string_id!(
    /// A user: the `sub` claim of the host application's token. The engine
    /// does not own users; any valid id names one.
    UserId,
    128
);
string_id!(
    /// One device of a user (the token's `device` claim).
    DeviceId,
    64
);

impl DeviceId {
    /// The device of a token without a `device` claim.
    pub fn default_device() -> Self {
        Self("default".into())
    }
}

/// A point in time, in milliseconds since the Unix epoch (UTC).
///
/// On the wire it is RFC 3339 with milliseconds: `2026-11-23T20:00:00.123Z`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The end of time, for suspensions without an end.
    pub const FOREVER: Timestamp = Timestamp(253_402_300_799_999); // 9999-12-31T23:59:59.999Z

    /// From milliseconds since the epoch, clamped to years 0..=9999 so that
    /// every timestamp can be formatted.
    pub fn from_millis(ms: i64) -> Self {
        Self(ms.clamp(-62_167_219_200_000, Self::FOREVER.0))
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// The current wall-clock time.
    pub fn now() -> Self {
        Self::from_millis(Utc::now().timestamp_millis())
    }

    /// Parses RFC 3339.
    pub fn parse(s: &str) -> Result<Self> {
        DateTime::parse_from_rfc3339(s)
            .map(|t| Self::from_millis(t.timestamp_millis()))
            .map_err(|_| Error::invalid(format!("{} is not an RFC 3339 timestamp", Truncated(s))))
    }

    /// This time plus `d`.
    pub fn plus(self, d: std::time::Duration) -> Self {
        Self::from_millis(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }
}

impl Timestamp {
    /// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ` into `buf`. Every timestamp has a
    /// four-digit year (see [`Timestamp::from_millis`]), so it always fits.
    fn rfc3339(self, buf: &mut [u8; 24]) -> &str {
        use chrono::{Datelike, Timelike};
        let Some(t) = DateTime::<Utc>::from_timestamp_millis(self.0) else {
            return "";
        };
        // Only ASCII digits and separators are written below.
        let fields: [(usize, u32, usize); 7] = [
            (0, u32::try_from(t.year()).unwrap_or(0), 4),
            (5, t.month(), 2),
            (8, t.day(), 2),
            (11, t.hour(), 2),
            (14, t.minute(), 2),
            (17, t.second(), 2),
            (20, t.timestamp_subsec_millis().min(999), 3),
        ];
        *buf = *b"0000-00-00T00:00:00.000Z";
        for (at, mut value, width) in fields {
            for i in (at..at + width).rev() {
                buf[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        std::str::from_utf8(buf).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rfc3339(&mut [0; 24]) {
            "" => write!(f, "{}ms", self.0),
            text => f.write_str(text),
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.rfc3339(&mut [0; 24]))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Timestamp::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Direct (two people) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    /// A 1:1 chat; there is at most one per pair of users.
    Direct,
    /// A group with roles.
    Group,
}

impl ChatKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatKind::Direct => "direct",
            ChatKind::Group => "group",
        }
    }
}

impl FromStr for ChatKind {
    type Err = Error;

    /// Parses the wire name ([`ChatKind::as_str`]).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "direct" => Ok(ChatKind::Direct),
            "group" => Ok(ChatKind::Group),
            other => Err(Error::invalid(format!(
                "unknown chat kind {}",
                Truncated(other)
            ))),
        }
    }
}

/// How a chat's message bodies are protected; fixed at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    /// The server encrypts bodies under per-chat data keys.
    #[default]
    AtRest,
    /// End to end: the server only relays opaque ciphertext.
    E2ee,
}

impl Encryption {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Encryption::AtRest => "at_rest",
            Encryption::E2ee => "e2ee",
        }
    }
}

impl FromStr for Encryption {
    type Err = Error;

    /// Parses the wire name ([`Encryption::as_str`]).
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "at_rest" => Ok(Encryption::AtRest),
            "e2ee" => Ok(Encryption::E2ee),
            other => Err(Error::invalid(format!(
                "unknown encryption {}",
                Truncated(other)
            ))),
        }
    }
}

/// A participant's role in a group. Direct chats have two `member`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May do everything in the group.
    Admin,
    /// May add and remove members and delete their messages.
    Moderator,
    /// May read and write.
    Member,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Moderator => "moderator",
            Role::Member => "member",
        }
    }
}

impl FromStr for Role {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "admin" => Ok(Role::Admin),
            "moderator" => Ok(Role::Moderator),
            "member" => Ok(Role::Member),
            other => Err(Error::invalid(format!("unknown role {}", Truncated(other)))),
        }
    }
}

/// A user's membership of a chat, with their receipt watermarks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// Who.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
    /// When they joined.
    pub joined_at: Timestamp,
    /// Every message with `seq <= delivered_seq` reached one of their devices.
    pub delivered_seq: u64,
    /// Every message with `seq <= read_seq` was read by them.
    pub read_seq: u64,
    /// The first `seq` they may see: 0 for founding members, the seq of the
    /// system message that added them otherwise, so that a member added to
    /// a support group does not read what was said before they came.
    #[serde(default)]
    pub visible_from_seq: u64,
    /// Muted by a group admin or moderator (`mute_participant`): they may
    /// not send until then. On the wire `muted_until`; not to be confused
    /// with [`ParticipantSettings::muted_until`], their own notifications.
    #[serde(
        rename = "muted_until",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub silenced_until: Option<Timestamp>,
    /// The participant's own settings; never sent to others.
    #[serde(skip)]
    pub settings: ParticipantSettings,
}

/// A participant's own settings of a chat (`PUT /chat/sessions/:id`,
/// `DELETE` of a direct chat).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ParticipantSettings {
    /// No push notifications until then.
    pub muted_until: Option<Timestamp>,
    /// The chat is hidden from the chat list while its `last_seq` is at
    /// most this (a new message brings it back).
    pub hidden_seq: Option<u64>,
}

/// A chat and its participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chat {
    /// Its id.
    pub id: ChatId,
    /// Direct or group.
    #[serde(rename = "type")]
    pub kind: ChatKind,
    /// Group name; `None` for direct chats.
    pub name: Option<String>,
    /// Group description.
    pub description: Option<String>,
    /// Group avatar.
    pub avatar_url: Option<String>,
    /// Fixed at creation.
    pub encryption: Encryption,
    /// The chat's change counter: the seq of its latest change.
    pub last_seq: u64,
    /// When the latest change happened.
    pub last_activity: Timestamp,
    /// When the chat was created.
    pub created_at: Timestamp,
    /// Messages older than this many seconds are removed for everyone
    /// (`set_retention`); `None`: kept forever.
    #[serde(default)]
    pub retention_secs: Option<u64>,
    /// Everyone in it, in joining order.
    pub participants: Vec<Participant>,
}

impl Chat {
    /// The participant record of `user`, if they are in the chat.
    pub fn participant(&self, user: &UserId) -> Option<&Participant> {
        self.participants.iter().find(|p| &p.user_id == user)
    }

    /// The user ids of all participants.
    pub fn member_ids(&self) -> Vec<UserId> {
        self.participants
            .iter()
            .map(|p| p.user_id.clone())
            .collect()
    }
}

/// A chat as one user sees it: with their unread count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatView {
    /// The chat.
    #[serde(flatten)]
    pub chat: Chat,
    /// Non-system, non-deleted messages from others with `seq > read_seq`.
    pub unread_count: u64,
    /// The viewer has muted push notifications of this chat until then.
    #[serde(default)]
    pub muted_until: Option<Timestamp>,
}

/// The kind of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Text.
    #[default]
    Text,
    /// An image upload, with an optional caption.
    Image,
    /// A voice note.
    Voice,
    /// Any other allowed file.
    File,
    /// Written by the engine: membership changes and group updates.
    System,
    /// An accepted MLS commit of an `e2ee` chat (see [`Message::mls`]),
    /// written by the engine for `mls_commit`.
    MlsCommit,
    /// A check-in (see [`Message::checkin`]): a question the chat's
    /// members answer by picking an option.
    Checkin,
    /// A shared resource (see [`Message::resource`]): a titled https link.
    Resource,
}

impl MessageType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Text => "text",
            MessageType::Image => "image",
            MessageType::Voice => "voice",
            MessageType::File => "file",
            MessageType::System => "system",
            MessageType::MlsCommit => "mls_commit",
            MessageType::Checkin => "checkin",
            MessageType::Resource => "resource",
        }
    }

    /// Whether the engine writes messages of this type (`system`,
    /// `mls_commit`): clients cannot send, edit, delete or react to them,
    /// and they raise no push notification.
    pub fn is_engine_written(self) -> bool {
        matches!(self, MessageType::System | MessageType::MlsCommit)
    }

    /// Whether messages of this type carry a media object.
    pub fn has_media(self) -> bool {
        self.media_kind().is_some()
    }

    /// The kind of upload messages of this type carry.
    pub fn media_kind(self) -> Option<MediaKind> {
        match self {
            MessageType::Image => Some(MediaKind::Image),
            MessageType::Voice => Some(MediaKind::Voice),
            MessageType::File => Some(MediaKind::File),
            _ => None,
        }
    }
}

/// What an upload is, found from its bytes: it decides the limits, the
/// processing (images are re-encoded, voice notes timed) and the message
/// type that may carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    /// JPEG, PNG, WebP or GIF.
    Image,
    /// Ogg Opus, MP3, M4A, WAV or WebM audio.
    Voice,
    /// PDF.
    File,
}

impl MediaKind {
    /// The protocol's name: `image`, `voice` or `file` (the message type
    /// that carries it).
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Voice => "voice",
            MediaKind::File => "file",
        }
    }
}

impl FromStr for MediaKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "image" => Ok(MediaKind::Image),
            "voice" => Ok(MediaKind::Voice),
            "file" => Ok(MediaKind::File),
            other => Err(Error::invalid(format!(
                "unknown media kind {}",
                Truncated(other)
            ))),
        }
    }
}

impl FromStr for MessageType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "text" => Ok(MessageType::Text),
            "image" => Ok(MessageType::Image),
            "voice" => Ok(MessageType::Voice),
            "file" => Ok(MessageType::File),
            "system" => Ok(MessageType::System),
            "mls_commit" => Ok(MessageType::MlsCommit),
            "checkin" => Ok(MessageType::Checkin),
            "resource" => Ok(MessageType::Resource),
            other => Err(Error::invalid(format!(
                "unknown message type {}",
                Truncated(other)
            ))),
        }
    }
}

/// The media object attached to a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// The upload's id.
    pub id: MediaId,
    /// The type found from the bytes (after re-encoding, for images), not
    /// the client's claim.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Where participants fetch it (relative to the server's base URL).
    pub url: String,
    /// Where participants fetch its thumbnail, for images.
    pub thumbnail_url: Option<String>,
    /// Length of voice notes.
    pub duration_ms: Option<u64>,
    /// Width of images, in pixels, upright.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height of images, in pixels, upright.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// The sanitized file name of files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl MediaRef {
    /// The reference that messages carry for an upload.
    pub fn for_record(record: &MediaRecord) -> Self {
        let url = format!("/api/v1/chat/media/{}", record.id);
        Self {
            id: record.id,
            mime: record.mime.clone(),
            size: record.size,
            thumbnail_url: record
                .has_thumbnail
                .then(|| format!("{url}?thumbnail=true")),
            url,
            duration_ms: record.duration_ms,
            width: record.width,
            height: record.height,
            name: record.name.clone(),
        }
    }
}

/// What a `system` message records. Membership changes and group updates are
/// written into the chat's log as these, so `sync` brings them to a device
/// that was offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SystemEvent {
    /// `user_id` joined with `role`, added by the message's sender.
    ParticipantAdded {
        /// Who joined.
        user_id: UserId,
        /// With which role.
        role: Role,
    },
    /// `user_id` left or was removed by the message's sender.
    ParticipantRemoved {
        /// Who left.
        user_id: UserId,
    },
    /// `user_id` now has `role`.
    RoleChanged {
        /// Whose role changed.
        user_id: UserId,
        /// The new role.
        role: Role,
    },
    /// The group's name, description or avatar changed.
    GroupUpdated {
        /// The new name, if it changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The new description, if it changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// The new avatar, if it changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        avatar_url: Option<String>,
    },
    /// The chat's retention became `seconds` (`None`: keep forever).
    RetentionChanged {
        /// The new retention, in seconds.
        seconds: Option<u64>,
    },
}

/// The MLS part of an `mls_commit` message: what devices process, in log
/// order, to follow the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MlsCommitRecord {
    /// The epoch the commit applies to (the group is at `epoch + 1` after).
    pub epoch: u64,
    /// The commit (an `MLSMessage` carrying a `PublicMessage`), standard
    /// base64.
    pub commit: String,
    /// The welcome of the members it added, standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<String>,
}

/// Emoji to the users who reacted with it, in the order they reacted.
pub type Reactions = BTreeMap<String, Vec<UserId>>;

/// A message: one entry of its chat's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Unique, time-ordered.
    pub id: MessageId,
    /// The chat it belongs to.
    pub chat_id: ChatId,
    /// The chat's change counter when the message was created.
    pub seq: u64,
    /// The chat's change counter at the message's last change.
    pub updated_seq: u64,
    /// Who wrote it (for system messages: who caused the change).
    pub sender_id: UserId,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Text or caption; `None` when deleted. For E2EE chats opaque ciphertext.
    pub content: Option<String>,
    /// The attached upload.
    pub media: Option<MediaRef>,
    /// The message this one answers, in the same chat.
    pub reply_to: Option<MessageId>,
    /// The sender's idempotency key.
    pub client_msg_id: Option<String>,
    /// When it was stored.
    pub created_at: Timestamp,
    /// When it was last edited.
    pub edited_at: Option<Timestamp>,
    /// A tombstone: content, media and reactions are gone.
    pub deleted: bool,
    /// Reactions by emoji.
    #[serde(default)]
    pub reactions: Reactions,
    /// For `system` messages: what happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemEvent>,
    /// For `mls_commit` messages: the commit, and the welcome of the
    /// members it added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mls: Option<MlsCommitRecord>,
    /// Set (and `content` `None`) when the stored content cannot be read
    /// back: its sender was erased, or it was damaged. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<Unreadable>,
    /// The check-in of a `checkin` message (`content` is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkin: Option<Checkin>,
    /// The resource of a `resource` message (`content` is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource>,
}

impl Message {
    /// Moves the payload of a `checkin` or `resource` message out of
    /// `content`, where stores keep it (so that encryption at rest seals
    /// it as any body), into its field. Content that is not such a payload
    /// (still sealed, or unreadable) stays where it is.
    pub fn unpack(&mut self) {
        let Some(text) = self.content.as_deref() else {
            return;
        };
        match self.kind {
            MessageType::Checkin => {
                if let Ok(checkin) = serde_json::from_str(text) {
                    self.checkin = Some(checkin);
                    self.content = None;
                }
            }
            MessageType::Resource => {
                if let Ok(resource) = serde_json::from_str(text) {
                    self.resource = Some(resource);
                    self.content = None;
                }
            }
            _ => {}
        }
    }
}

/// What a check-in asks (PROTOCOL.md 5.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkin {
    /// `poll` (options of the poster's) or `mood` (a 1..=5 scale).
    #[serde(default)]
    pub kind: CheckinKind,
    /// The question.
    pub prompt: String,
    /// What one may answer (`["1", .., "5"]` for a mood check-in).
    pub options: Vec<String>,
    /// Whether who answered what stays hidden from everyone, the poster
    /// included.
    #[serde(default)]
    pub anonymous: bool,
    /// After this, answers are refused.
    #[serde(default)]
    pub closes_at: Option<Timestamp>,
}

/// The kind of a [`Checkin`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckinKind {
    /// The poster's own options.
    #[default]
    Poll,
    /// How one feels, on a scale of 1 to 5.
    Mood,
}

/// A shared resource (PROTOCOL.md 5.3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// 1..=200 characters.
    pub title: String,
    /// An https URL, at most 2048 bytes.
    pub url: String,
    /// At most 1000 characters; `null` when absent.
    #[serde(default)]
    pub summary: Option<String>,
}

/// Why a message's content cannot be read (see [`Message::unreadable`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Unreadable {
    /// Its sender was erased: the key that sealed it is destroyed, on
    /// purpose, everywhere (crypto-shredding).
    Erased,
    /// The stored bytes do not decrypt (altered or corrupted storage): an
    /// error for this message alone, logged on the server.
    Damaged,
}

/// What a user lets others see about them (`set_privacy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Privacy {
    /// Others see when this user has read their messages.
    pub read_receipts: bool,
    /// Others see when this user types.
    pub typing: bool,
    /// Others see when this user is online, and their last_seen.
    pub presence: bool,
    /// This user's mood check-in answers go to the host app's webhook
    /// (PROTOCOL.md 5.3); off unless they opt in.
    #[serde(default)]
    pub mood_sharing: bool,
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            read_receipts: true,
            typing: true,
            presence: true,
            mood_sharing: false,
        }
    }
}

/// What the engine keeps about a user (who is otherwise the host app's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Who.
    pub user_id: UserId,
    /// When their last connection closed.
    pub last_seen: Option<Timestamp>,
    /// Their privacy settings.
    pub privacy: Privacy,
    /// Suspended by a moderator until this time.
    pub suspended_until: Option<Timestamp>,
}

impl UserRecord {
    /// The record of a user the engine has not stored anything about yet.
    pub fn new(user_id: UserId) -> Self {
        Self {
            user_id,
            last_seen: None,
            privacy: Privacy::default(),
            suspended_until: None,
        }
    }

    /// Whether the user is suspended at `now`.
    pub fn is_suspended(&self, now: Timestamp) -> bool {
        self.suspended_until.is_some_and(|until| until > now)
    }
}

/// Where a report is in the moderation queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportStatus {
    /// Waiting for an admin.
    Open,
    /// An admin acted on it.
    Resolved,
    /// An admin found nothing to do.
    Dismissed,
}

impl ReportStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Open => "open",
            ReportStatus::Resolved => "resolved",
            ReportStatus::Dismissed => "dismissed",
        }
    }
}

impl FromStr for ReportStatus {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "open" => Ok(ReportStatus::Open),
            "resolved" => Ok(ReportStatus::Resolved),
            "dismissed" => Ok(ReportStatus::Dismissed),
            other => Err(Error::invalid(format!(
                "unknown report status {}",
                Truncated(other)
            ))),
        }
    }
}

/// A user's (or a hook's) report of a message, for admins to work through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Its id.
    pub id: ReportId,
    /// Who reported; hooks report as `system`.
    pub reporter_id: UserId,
    /// The chat of the message.
    pub chat_id: ChatId,
    /// The reported message.
    pub message_id: MessageId,
    /// Its sender.
    pub reported_user_id: UserId,
    /// Why.
    pub reason: String,
    /// The message's content when it was reported, so that a later deletion
    /// does not hide the evidence.
    pub content: Option<String>,
    /// The message's type when it was reported.
    #[serde(default, rename = "type")]
    pub kind: MessageType,
    /// The message's media when it was reported (its bytes are kept while
    /// the report is open, even if the message is deleted).
    #[serde(default)]
    pub media: Option<MediaRef>,
    /// Where it is in the queue.
    pub status: ReportStatus,
    /// When it was filed.
    pub created_at: Timestamp,
    /// When an admin closed it.
    pub resolved_at: Option<Timestamp>,
    /// Which admin closed it.
    pub resolved_by: Option<UserId>,
    /// The admin's note.
    pub resolution_note: Option<String>,
    /// Whether the reported message's sender was erased while the report
    /// was open: its snapshot is then kept, under a key of its own, only
    /// until the report is resolved (a legal hold), and destroyed then.
    #[serde(default)]
    pub legal_hold: bool,
}

/// The evidence of a report as the admin API shows it: `{message: {id,
/// chat_id, sender_id, type, content, media}}` as the message was when
/// reported (PROTOCOL.md 5.2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportSnapshot<'a> {
    /// The reported message as it was.
    pub message: SnapshotMessage<'a>,
}

/// The message of a [`ReportSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotMessage<'a> {
    /// Its id.
    pub id: MessageId,
    /// Its chat.
    pub chat_id: ChatId,
    /// Its sender.
    pub sender_id: &'a UserId,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Its text (or ciphertext of an e2ee chat: the reporter's plaintext
    /// travels in the reason).
    pub content: Option<&'a str>,
    /// Its media.
    pub media: Option<&'a MediaRef>,
}

/// A [`Report`] with its [`ReportSnapshot`], as the admin API sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportView<'a> {
    /// The report.
    #[serde(flatten)]
    pub report: &'a Report,
    /// Its evidence; `null` once it was destroyed (its sender erased).
    pub snapshot: Option<ReportSnapshot<'a>>,
}

impl Report {
    /// The report with its evidence, for the admin API.
    pub fn view(&self) -> ReportView<'_> {
        let snapshot = (self.content.is_some() || self.media.is_some()).then_some(ReportSnapshot {
            message: SnapshotMessage {
                id: self.message_id,
                chat_id: self.chat_id,
                sender_id: &self.reported_user_id,
                kind: self.kind,
                content: self.content.as_deref(),
                media: self.media.as_ref(),
            },
        });
        ReportView {
            report: self,
            snapshot,
        }
    }

    /// A new open report of `message`, keeping its content as evidence.
    pub fn open(reporter_id: UserId, message: &Message, reason: String, at: Timestamp) -> Self {
        Self {
            id: ReportId::new(),
            reporter_id,
            chat_id: message.chat_id,
            message_id: message.id,
            reported_user_id: message.sender_id.clone(),
            reason,
            content: message.content.clone(),
            kind: message.kind,
            media: message.media.clone(),
            status: ReportStatus::Open,
            created_at: at,
            resolved_at: None,
            resolved_by: None,
            resolution_note: None,
            legal_hold: false,
        }
    }
}

/// An enum whose values are stored and sent as fixed wire names: the enum
/// with serde's names, `as_str`, `FromStr` (an unknown name is
/// `InvalidInput`) and `ALL`, every value in declaration order.
macro_rules! wire_enum {
    (
        $(#[$doc:meta])* $name:ident, $what:literal,
        { $($(#[$vdoc:meta])* $variant:ident = $wire:literal,)+ }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $wire)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The wire name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = Error;

            #[doc = concat!("Parses the wire name ([`", stringify!($name), "::as_str`]).")]
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($wire => Ok($name::$variant),)+
                    other => Err(Error::invalid(format!(
                        concat!("unknown ", $what, " {}"),
                        Truncated(other)
                    ))),
                }
            }
        }
    };
}

wire_enum!(
    /// What an admin or moderator did, as the audit log records it.
    AuditAction, "audit action",
    {
        /// Muted a participant of a chat.
        MuteParticipant = "mute_participant",
        /// Removed someone else from a group.
        RemoveParticipant = "remove_participant",
        /// Changed a participant's role.
        SetRole = "set_role",
        /// Deleted someone else's message.
        DeleteMessage = "delete_message",
        /// Closed a report.
        ResolveReport = "resolve_report",
        /// Suspended a user.
        SuspendUser = "suspend_user",
        /// Lifted a suspension.
        UnsuspendUser = "unsuspend_user",
        /// Erased a user's data.
        EraseUser = "erase_user",
        /// Changed a chat's retention.
        SetRetention = "set_retention",
        /// Changed a group's name, description or avatar.
        UpdateGroup = "update_group",
    }
);

wire_enum!(
    /// What kind of thing an audited action was done to: the kind of an
    /// [`AuditEntry::target_id`].
    AuditTarget, "audit target type",
    {
        /// A user id.
        User = "user",
        /// A message id.
        Message = "message",
        /// A report id.
        Report = "report",
        /// A chat id.
        Chat = "chat",
    }
);

/// One entry of the moderation audit log: who did what to what, where,
/// when and why. Entries are appended, never changed, except that erasing
/// a user replaces their id with a pseudonym (see
/// [`Store::pseudonymize_audit`](crate::Store::pseudonymize_audit)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Its id; time-ordered, so the log sorts by it.
    pub id: AuditId,
    /// When the action was done.
    pub at: Timestamp,
    /// Who did it.
    pub actor_id: UserId,
    /// What they did.
    pub action: AuditAction,
    /// What kind of thing `target_id` is.
    pub target_type: AuditTarget,
    /// What it was done to: a user, message, report or chat id.
    pub target_id: String,
    /// The chat it happened in, if any.
    pub chat_id: Option<ChatId>,
    /// The moderator's note, or what the engine adds (a new role, until
    /// when a suspension lasts).
    pub note: Option<String>,
}

/// The engine's record of an upload; the bytes live in a [`MediaStore`](crate::MediaStore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Its id.
    pub id: MediaId,
    /// The chat it was uploaded to; only its participants may fetch it.
    pub chat_id: ChatId,
    /// Who uploaded it; only they may attach it to a message.
    pub uploader_id: UserId,
    /// What it is, from its bytes.
    pub kind: MediaKind,
    /// The type found from the bytes (after re-encoding, for images).
    pub mime: String,
    /// Size in bytes of what is served (not of what was uploaded, for
    /// re-encoded images).
    pub size: u64,
    /// Width of images, upright.
    pub width: Option<u32>,
    /// Height of images, upright.
    pub height: Option<u32>,
    /// For voice notes.
    pub duration_ms: Option<u64>,
    /// The sanitized file name, for files.
    pub name: Option<String>,
    /// Whether a thumbnail was made (images).
    pub has_thumbnail: bool,
    /// Whether its bytes are sealed with the uploader's data key (at-rest
    /// encryption), so erasing the uploader's keys makes them unreadable.
    pub sealed: bool,
    /// The message it is attached to; `None` until one is sent with it.
    /// An upload is attached once.
    pub message_id: Option<MessageId>,
    /// When it was uploaded.
    pub created_at: Timestamp,
}

impl MediaRecord {
    /// Where its bytes are in the [`MediaStore`](crate::MediaStore).
    pub fn object_key(&self) -> String {
        format!("{}/{}", self.chat_id, self.id)
    }

    /// Where its thumbnail is, if it has one.
    pub fn thumbnail_key(&self) -> Option<String> {
        self.has_thumbnail
            .then(|| format!("{}/{}.thumb", self.chat_id, self.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_made_in_the_same_millisecond_still_increase() {
        let ids: Vec<MessageId> = (0..10_000).map(|_| MessageId::new()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids out of order");
        // Across id kinds too: one generator for the process.
        let (chat, message) = (ChatId::new(), MessageId::new());
        assert!(chat.ulid() < message.ulid());
    }

    #[test]
    fn user_ids_are_validated() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("a.b:c@d-e_f").is_ok());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a b").is_err());
        assert!(UserId::new("x".repeat(129)).is_err());
        assert!(UserId::new("x".repeat(128)).is_ok());
        assert!(serde_json::from_str::<UserId>("\"bad id\"").is_err());
    }

    #[test]
    fn timestamps_use_rfc3339_millis() {
        let t = Timestamp::from_millis(1_795_464_000_123);
        let s = serde_json::to_string(&t).unwrap_or_default();
        assert_eq!(s, "\"2026-11-23T20:00:00.123Z\"");
        assert_eq!(serde_json::from_str::<Timestamp>(&s).ok(), Some(t));
        assert_eq!(Timestamp::FOREVER.to_string(), "9999-12-31T23:59:59.999Z");
        assert_eq!(
            Timestamp::from_millis(i64::MIN).to_string(),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            Timestamp::from_millis(-1).to_string(),
            "1969-12-31T23:59:59.999Z"
        );
    }

    proptest::proptest! {
        /// The hand-written formatter agrees with chrono's RFC 3339 over
        /// the whole range a timestamp can hold.
        #[test]
        fn timestamps_format_as_chrono_does(ms in -62_167_219_200_000i64..=253_402_300_799_999) {
            let t = Timestamp::from_millis(ms);
            let chrono = DateTime::<Utc>::from_timestamp_millis(ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            proptest::prop_assert_eq!(Some(t.to_string()), chrono);
        }
    }

    /// Every enum stored as text parses back from its wire name, and
    /// refuses anything else.
    #[test]
    fn enum_names_round_trip() {
        fn round_trip<T>(all: &[T], name: fn(T) -> &'static str)
        where
            T: Copy + PartialEq + fmt::Debug + FromStr + Serialize,
        {
            for &v in all {
                assert_eq!(name(v).parse::<T>().ok(), Some(v), "{v:?}");
                let wire = serde_json::to_string(&v).unwrap_or_default();
                assert_eq!(wire, format!("\"{}\"", name(v)), "{v:?}");
            }
            assert!("".parse::<T>().is_err());
            assert!("Nope".parse::<T>().is_err());
        }
        round_trip(&[ChatKind::Direct, ChatKind::Group], ChatKind::as_str);
        round_trip(&[Encryption::AtRest, Encryption::E2ee], Encryption::as_str);
        round_trip(&[Role::Admin, Role::Moderator, Role::Member], Role::as_str);
        round_trip(
            &[
                MessageType::Text,
                MessageType::Image,
                MessageType::Voice,
                MessageType::File,
                MessageType::System,
            ],
            MessageType::as_str,
        );
        round_trip(AuditAction::ALL, AuditAction::as_str);
        round_trip(AuditTarget::ALL, AuditTarget::as_str);
        round_trip(
            &[
                ReportStatus::Open,
                ReportStatus::Resolved,
                ReportStatus::Dismissed,
            ],
            ReportStatus::as_str,
        );
    }

    #[test]
    fn ids_round_trip_and_reject_garbage() {
        let id = ChatId::new();
        let s = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ChatId>(&s).ok(), Some(id));
        assert!("nope".parse::<ChatId>().is_err());
    }
}

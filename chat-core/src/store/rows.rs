//! What the stores share below the [`Store`](super::Store) trait: the
//! mapping between the model and the values a SQL store keeps, and the
//! rules every store applies to the rows a change touches.
//!
//! - **Decoding rows.** [`ChatRow`], [`ParticipantRow`], [`MessageRow`],
//!   [`ReportRow`], [`MediaRow`], [`UserRow`] and [`AuditRow`] hold a row as SQL gives it
//!   (text, `BIGINT`, booleans, JSON as text); each store fills them from
//!   its driver's rows and turns them into model types here, so that every
//!   column is checked the same way. [`fold_reactions`] groups reaction rows
//!   into [`Reactions`]. A value that does not decode is a [`RowError`],
//!   which each store turns into its own error (a corrupt row is a backend
//!   failure, not the caller's).
//! - **Encoding values.** [`sql_u64`], [`sql_limit`] and [`sql_u64_checked`]
//!   turn unsigned values into SQL's signed integers; [`direct_key`] is the
//!   key of a pair's direct chat; [`audit_filter`] is the `WHERE` clause
//!   of an [`AuditQuery`]. Enums are stored as their wire names
//!   (`as_str`, parsed back with `FromStr`).
//! - **Rules of a change.** What an edit ([`edit`]), a deletion
//!   ([`tombstone`]) or a reaction ([`reaction_changes`], [`react`]) does
//!   to the message a store read, when a post is a retry ([`repost`]), who
//!   may join ([`check_can_join`]), that a group keeps an admin
//!   ([`check_keeps_admin`]), how watermarks move ([`Marked`]) and how a
//!   report is closed ([`resolve`]). They fail with the
//!   [`Store`](super::Store) contract's errors, which the stores pass
//!   through unchanged.

use std::{fmt::Display, str::FromStr};

use serde::de::DeserializeOwned;

use super::{Applied, AuditQuery, NewChat, NewMessage, ReportResolution, demotes_last_admin};
use crate::{
    error::{Error, Result},
    model::{
        AuditEntry, Chat, ChatId, ChatKind, MediaId, MediaKind, MediaRecord, Message, Participant,
        ParticipantSettings, Privacy, Reactions, Report, ReportStatus, Role, Timestamp, UserId,
        UserRecord,
    },
};

// --- errors --------------------------------------------------------------

/// A stored value that does not decode as what its column holds.
///
/// Every store converts it into its own error type; the variants match the
/// stores' `Corrupt` and `Json` errors.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The value does not parse as what its column holds.
    #[error("corrupt value in column {column}: {reason}")]
    Corrupt {
        /// The column, as `table.column`.
        column: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// A JSON column (media, system event) does not decode.
    #[error("JSON column: {0}")]
    Json(#[from] serde_json::Error),
}

impl RowError {
    /// The value of `column` is wrong for `reason`.
    pub fn corrupt(column: &'static str, reason: impl Display) -> Self {
        RowError::Corrupt {
            column,
            reason: reason.to_string(),
        }
    }
}

// --- values --------------------------------------------------------------

/// A seq, count or bound as SQL's signed `BIGINT`, saturating: no stored
/// value comes near `i64::MAX`, so a larger bound means "no bound".
pub fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A limit as SQL's signed `BIGINT`, saturating.
pub fn sql_limit(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A caller's value (a media size, a duration) as SQL's signed `BIGINT`;
/// [`Error::InvalidInput`] ("`what` is too large") if it does not fit.
pub fn sql_u64_checked(what: &str, v: u64) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(format!("{what} is too large")))
}

/// A stored `BIGINT` that holds an unsigned value (a seq, a size).
pub fn unsigned(column: &'static str, v: i64) -> Result<u64, RowError> {
    u64::try_from(v).map_err(|e| RowError::corrupt(column, e))
}

/// A key store's `user_keys.wrapped`.
pub fn wrapped_user_key(bytes: Vec<u8>) -> Result<crate::crypto::WrappedUserKey, RowError> {
    crate::crypto::WrappedUserKey::from_bytes(bytes)
        .map_err(|e| RowError::corrupt("user_keys.wrapped", e))
}

/// A key store's `key_check.wrapped`.
pub fn key_check(bytes: Vec<u8>) -> Result<crate::crypto::KeyCheck, RowError> {
    crate::crypto::KeyCheck::from_bytes(bytes)
        .map_err(|e| RowError::corrupt("key_check.wrapped", e))
}

/// A key store's `data_keys` row from `(epoch, wrapped, created_at)`.
pub fn data_key_record(
    (epoch, wrapped, created_at): (i64, Vec<u8>, i64),
) -> Result<crate::keystore::DataKeyRecord, RowError> {
    Ok(crate::keystore::DataKeyRecord {
        epoch: crate::crypto::KeyEpoch::new(
            u32::try_from(epoch).map_err(|e| RowError::corrupt("data_keys.epoch", e))?,
        ),
        key: crate::crypto::WrappedDataKey::from_bytes(wrapped)
            .map_err(|e| RowError::corrupt("data_keys.wrapped", e))?,
        created_at: Timestamp::from_millis(created_at),
    })
}

/// A stored text that holds an id or an enum's wire name.
pub fn parse<T: FromStr>(column: &'static str, s: &str) -> Result<T, RowError>
where
    T::Err: Display,
{
    s.parse().map_err(|e| RowError::corrupt(column, e))
}

/// A stored text that holds a user id.
pub fn user_id(column: &'static str, s: String) -> Result<UserId, RowError> {
    UserId::new(s).map_err(|e| RowError::corrupt(column, e))
}

/// A device id read from `column`.
pub fn device_id(column: &'static str, s: String) -> Result<crate::model::DeviceId, RowError> {
    crate::model::DeviceId::new(s).map_err(|e| RowError::corrupt(column, e))
}

/// A stored JSON text, absent as `None`.
fn json<T: DeserializeOwned>(s: Option<&str>) -> Result<Option<T>, RowError> {
    Ok(s.map(serde_json::from_str).transpose()?)
}

/// The key of the direct chat of the unordered pair `{a, b}`: the same for
/// `(a, b)` and `(b, a)`, so a unique key keeps one direct chat per pair.
pub fn direct_key(a: &UserId, b: &UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    // '/' cannot occur in a user id, so the key is unambiguous.
    format!("{lo}/{hi}")
}

// --- rows ----------------------------------------------------------------

/// A row of `chats`, without its participants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatRow {
    /// `id`, a [`ChatId`].
    pub id: String,
    /// `kind`, a [`ChatKind`]'s wire name.
    pub kind: String,
    /// `name`.
    pub name: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `avatar_url`.
    pub avatar_url: Option<String>,
    /// `encryption`, an [`Encryption`](crate::model::Encryption)'s wire name.
    pub encryption: String,
    /// `last_seq`.
    pub last_seq: i64,
    /// `last_activity`, in milliseconds.
    pub last_activity: i64,
    /// `created_at`, in milliseconds.
    pub created_at: i64,
    /// `retention_secs`.
    pub retention_secs: Option<i64>,
}

impl ChatRow {
    /// The chat, with `participants` (in joining order).
    pub fn into_chat(self, participants: Vec<Participant>) -> Result<Chat, RowError> {
        Ok(Chat {
            id: parse("chats.id", &self.id)?,
            kind: parse("chats.kind", &self.kind)?,
            name: self.name,
            description: self.description,
            avatar_url: self.avatar_url,
            encryption: parse("chats.encryption", &self.encryption)?,
            last_seq: unsigned("chats.last_seq", self.last_seq)?,
            last_activity: Timestamp::from_millis(self.last_activity),
            created_at: Timestamp::from_millis(self.created_at),
            retention_secs: self
                .retention_secs
                .map(|s| unsigned("chats.retention_secs", s))
                .transpose()?,
            participants,
        })
    }
}

/// A row of [`Store::retention_chats`](super::Store::retention_chats):
/// `(id, retention_secs, retention_swept_seq)`.
pub fn retention_chat(
    id: &str,
    seconds: i64,
    swept_seq: i64,
) -> Result<super::RetentionChat, RowError> {
    Ok(super::RetentionChat {
        chat_id: parse("chats.id", id)?,
        seconds: unsigned("chats.retention_secs", seconds)?,
        swept_seq: unsigned("chats.retention_swept_seq", swept_seq)?,
    })
}

/// A message of the log as [`Store::expired_messages`](super::Store::expired_messages)
/// reads it: `(id, seq, sender_id, kind, media, deleted, created_at)`.
pub type LogRow = (String, i64, String, String, Option<String>, bool, i64);

/// What [`Store::expired_messages`](super::Store::expired_messages) returns
/// from the log rows of `chat` after the watermark, in seq order: those
/// before the first one created at or after `before`. Stops reading `rows`
/// there, so a store may hand over a cursor it steps through.
pub fn expired<E: From<RowError>>(
    chat: ChatId,
    rows: impl IntoIterator<Item = Result<LogRow, E>>,
    before: Timestamp,
) -> Result<Vec<super::ExpiredMessage>, E> {
    let mut out = Vec::new();
    for row in rows {
        let (id, seq, sender_id, kind, media, deleted, created_at) = row?;
        if created_at >= before.as_millis() {
            break;
        }
        let row = MessageRow {
            id,
            chat_id: chat.to_string(),
            seq,
            updated_seq: seq,
            sender_id,
            kind,
            media,
            deleted,
            created_at,
            ..MessageRow::default()
        };
        out.push(super::ExpiredMessage::of(
            &row.into_message(Reactions::new())?,
        ));
    }
    Ok(out)
}

/// A row of `participants`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParticipantRow {
    /// `user_id`.
    pub user_id: String,
    /// `role`, a [`Role`]'s wire name.
    pub role: String,
    /// `joined_at`, in milliseconds.
    pub joined_at: i64,
    /// `delivered_seq`.
    pub delivered_seq: i64,
    /// `read_seq`.
    pub read_seq: i64,
    /// `visible_from_seq`.
    pub visible_from_seq: i64,
    /// `muted_until`, in milliseconds.
    pub muted_until: Option<i64>,
    /// `hidden_seq`.
    pub hidden_seq: Option<i64>,
    /// `silenced_until`, in milliseconds: muted by a moderator.
    pub silenced_until: Option<i64>,
}

impl ParticipantRow {
    /// The participant, with their settings.
    pub fn into_participant(self) -> Result<Participant, RowError> {
        Ok(Participant {
            user_id: user_id("participants.user_id", self.user_id)?,
            role: parse("participants.role", &self.role)?,
            joined_at: Timestamp::from_millis(self.joined_at),
            delivered_seq: unsigned("participants.delivered_seq", self.delivered_seq)?,
            read_seq: unsigned("participants.read_seq", self.read_seq)?,
            visible_from_seq: unsigned("participants.visible_from_seq", self.visible_from_seq)?,
            silenced_until: self.silenced_until.map(Timestamp::from_millis),
            settings: ParticipantSettings {
                muted_until: self.muted_until.map(Timestamp::from_millis),
                hidden_seq: self
                    .hidden_seq
                    .map(|s| unsigned("participants.hidden_seq", s))
                    .transpose()?,
            },
        })
    }
}

/// A row of `messages`, without its reactions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageRow {
    /// `id`, a [`MessageId`](crate::model::MessageId).
    pub id: String,
    /// `chat_id`.
    pub chat_id: String,
    /// `seq`.
    pub seq: i64,
    /// `updated_seq`.
    pub updated_seq: i64,
    /// `sender_id`.
    pub sender_id: String,
    /// `kind`, a [`MessageType`](crate::model::MessageType)'s wire name.
    pub kind: String,
    /// `content`.
    pub content: Option<String>,
    /// `media`, a [`MediaRef`](crate::model::MediaRef) as JSON text.
    pub media: Option<String>,
    /// `reply_to`.
    pub reply_to: Option<String>,
    /// `client_msg_id`.
    pub client_msg_id: Option<String>,
    /// `created_at`, in milliseconds.
    pub created_at: i64,
    /// `edited_at`, in milliseconds.
    pub edited_at: Option<i64>,
    /// `deleted`.
    pub deleted: bool,
    /// `system`, a [`SystemEvent`](crate::model::SystemEvent) as JSON text.
    pub system: Option<String>,
    /// `mls`, an [`MlsCommitRecord`](crate::model::MlsCommitRecord) as JSON.
    pub mls: Option<String>,
}

impl MessageRow {
    /// The message, with `reactions` (see [`fold_reactions`]).
    pub fn into_message(self, reactions: Reactions) -> Result<Message, RowError> {
        let mut message = Message {
            mls: json(self.mls.as_deref())?,
            id: parse("messages.id", &self.id)?,
            chat_id: parse("messages.chat_id", &self.chat_id)?,
            seq: unsigned("messages.seq", self.seq)?,
            updated_seq: unsigned("messages.updated_seq", self.updated_seq)?,
            sender_id: user_id("messages.sender_id", self.sender_id)?,
            kind: parse("messages.kind", &self.kind)?,
            content: self.content,
            media: json(self.media.as_deref())?,
            reply_to: self
                .reply_to
                .as_deref()
                .map(|s| parse("messages.reply_to", s))
                .transpose()?,
            client_msg_id: self.client_msg_id,
            created_at: Timestamp::from_millis(self.created_at),
            edited_at: self.edited_at.map(Timestamp::from_millis),
            deleted: self.deleted,
            reactions,
            system: json(self.system.as_deref())?,
            unreadable: None,
            checkin: None,
            resource: None,
        };
        message.unpack();
        Ok(message)
    }
}

/// A message's reactions from its `(emoji, user_id)` rows in the order they
/// were added: each emoji's users in that order.
pub fn fold_reactions(
    rows: impl IntoIterator<Item = (String, String)>,
) -> Result<Reactions, RowError> {
    let mut out = Reactions::new();
    for (emoji, user) in rows {
        out.entry(emoji)
            .or_default()
            .push(user_id("reactions.user_id", user)?);
    }
    Ok(out)
}

/// A stored text as [`Store::stored_texts`](super::Store::stored_texts)
/// selects it: `(id, chat_id, author, message_id, text)`, where the author
/// is a message's `sender_id` or a report's `reported_user_id`, and the
/// message id is the row's own id for messages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TextRow {
    /// The row's id.
    pub row: String,
    /// `chat_id`.
    pub chat_id: String,
    /// The author.
    pub author: String,
    /// The message.
    pub message_id: String,
    /// The text.
    pub text: String,
}

impl std::fmt::Debug for TextRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the text.
        f.debug_struct("TextRow")
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

impl TextRow {
    /// The stored text.
    pub fn into_stored_text(self) -> Result<super::StoredText, RowError> {
        Ok(super::StoredText {
            chat_id: parse("chat_id", &self.chat_id)?,
            author: user_id("author", self.author)?,
            message_id: parse("message_id", &self.message_id)?,
            row: self.row,
            text: self.text,
        })
    }
}

/// A row of `reports`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportRow {
    /// `id`, a [`ReportId`](crate::model::ReportId).
    pub id: String,
    /// `reporter_id`.
    pub reporter_id: String,
    /// `chat_id`.
    pub chat_id: String,
    /// `message_id`.
    pub message_id: String,
    /// `reported_user_id`.
    pub reported_user_id: String,
    /// `reason`.
    pub reason: String,
    /// `content`.
    pub content: Option<String>,
    /// `kind`, the reported message's type (`text` for rows from before
    /// the column).
    pub kind: Option<String>,
    /// `media`, the reported message's [`MediaRef`](crate::model::MediaRef)
    /// as JSON text.
    pub media: Option<String>,
    /// `status`, a [`ReportStatus`]'s wire name.
    pub status: String,
    /// `created_at`, in milliseconds.
    pub created_at: i64,
    /// `resolved_at`, in milliseconds.
    pub resolved_at: Option<i64>,
    /// `resolved_by`.
    pub resolved_by: Option<String>,
    /// `resolution_note`.
    pub resolution_note: Option<String>,
    /// `legal_hold`.
    pub legal_hold: bool,
}

impl ReportRow {
    /// The report.
    pub fn into_report(self) -> Result<Report, RowError> {
        Ok(Report {
            id: parse("reports.id", &self.id)?,
            reporter_id: user_id("reports.reporter_id", self.reporter_id)?,
            chat_id: parse("reports.chat_id", &self.chat_id)?,
            message_id: parse("reports.message_id", &self.message_id)?,
            reported_user_id: user_id("reports.reported_user_id", self.reported_user_id)?,
            reason: self.reason,
            content: self.content,
            kind: self
                .kind
                .as_deref()
                .map(|k| parse("reports.kind", k))
                .transpose()?
                .unwrap_or_default(),
            media: json(self.media.as_deref())?,
            status: parse("reports.status", &self.status)?,
            created_at: Timestamp::from_millis(self.created_at),
            resolved_at: self.resolved_at.map(Timestamp::from_millis),
            resolved_by: self
                .resolved_by
                .map(|u| user_id("reports.resolved_by", u))
                .transpose()?,
            resolution_note: self.resolution_note,
            legal_hold: self.legal_hold,
        })
    }
}

/// A row of `audit_log`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditRow {
    /// `id`, an [`AuditId`](crate::model::AuditId).
    pub id: String,
    /// `at`, in milliseconds.
    pub at: i64,
    /// `actor_id`.
    pub actor_id: String,
    /// `action`, an [`AuditAction`](crate::model::AuditAction)'s wire name.
    pub action: String,
    /// `target_type`, an [`AuditTarget`](crate::model::AuditTarget)'s wire name.
    pub target_type: String,
    /// `target_id`.
    pub target_id: String,
    /// `chat_id`.
    pub chat_id: Option<String>,
    /// `note`.
    pub note: Option<String>,
}

impl AuditRow {
    /// The entry.
    pub fn into_entry(self) -> Result<AuditEntry, RowError> {
        Ok(AuditEntry {
            id: parse("audit_log.id", &self.id)?,
            at: Timestamp::from_millis(self.at),
            actor_id: user_id("audit_log.actor_id", self.actor_id)?,
            action: parse("audit_log.action", &self.action)?,
            target_type: parse("audit_log.target_type", &self.target_type)?,
            target_id: self.target_id,
            chat_id: self
                .chat_id
                .map(|c| parse("audit_log.chat_id", &c))
                .transpose()?,
            note: self.note,
        })
    }
}

/// The `WHERE` clause of `query` over `audit_log` (empty when it has no
/// filter), and its text parameters in order; `placeholder(n)` writes the
/// `n`th parameter (from 1) in the store's syntax (`?1`, `$1`). The limit
/// is the caller's, as parameter `len() + 1`.
pub fn audit_filter(query: &AuditQuery, placeholder: fn(usize) -> String) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut params = Vec::new();
    let mut condition = |column: &str, op: &str, value: String| {
        params.push(value);
        conditions.push(format!("{column} {op} {}", placeholder(params.len())));
    };
    if let Some(before) = query.before {
        condition("id", "<", before.to_string());
    }
    if let Some(actor) = &query.actor {
        condition("actor_id", "=", actor.to_string());
    }
    if let Some(action) = query.action {
        condition("action", "=", action.as_str().to_owned());
    }
    if conditions.is_empty() {
        (String::new(), params)
    } else {
        (format!(" WHERE {}", conditions.join(" AND ")), params)
    }
}

/// A row of `media`, without its id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaRow {
    /// `chat_id`.
    pub chat_id: String,
    /// `uploader_id`.
    pub uploader_id: String,
    /// `kind`: `image`, `voice` or `file` (rows from before the column
    /// have none, and are read from their mime).
    pub kind: Option<String>,
    /// `mime`.
    pub mime: String,
    /// `size`, in bytes.
    pub size: i64,
    /// `width`, in pixels.
    pub width: Option<i64>,
    /// `height`, in pixels.
    pub height: Option<i64>,
    /// `duration_ms`.
    pub duration_ms: Option<i64>,
    /// `name`.
    pub name: Option<String>,
    /// `has_thumbnail`.
    pub has_thumbnail: bool,
    /// `sealed`.
    pub sealed: bool,
    /// `message_id`, the message it is attached to.
    pub message_id: Option<String>,
    /// `created_at`, in milliseconds.
    pub created_at: i64,
}

impl MediaRow {
    /// The record of upload `id`.
    pub fn into_record(self, id: MediaId) -> Result<MediaRecord, RowError> {
        let kind = match self.kind.as_deref() {
            Some(kind) => parse("media.kind", kind)?,
            None if self.mime.starts_with("image/") => MediaKind::Image,
            None if self.mime.starts_with("audio/") => MediaKind::Voice,
            None => MediaKind::File,
        };
        let pixels = |column: &'static str, v: Option<i64>| {
            v.map(|v| u32::try_from(v).map_err(|e| RowError::corrupt(column, e)))
                .transpose()
        };
        Ok(MediaRecord {
            id,
            chat_id: parse("media.chat_id", &self.chat_id)?,
            uploader_id: user_id("media.uploader_id", self.uploader_id)?,
            kind,
            mime: self.mime,
            size: unsigned("media.size", self.size)?,
            width: pixels("media.width", self.width)?,
            height: pixels("media.height", self.height)?,
            duration_ms: self
                .duration_ms
                .map(|d| unsigned("media.duration_ms", d))
                .transpose()?,
            name: self.name,
            has_thumbnail: self.has_thumbnail,
            sealed: self.sealed,
            message_id: self
                .message_id
                .as_deref()
                .map(|m| parse("media.message_id", m))
                .transpose()?,
            created_at: Timestamp::from_millis(self.created_at),
        })
    }
}

/// A row of `users`, without its id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserRow {
    /// `last_seen`, in milliseconds.
    pub last_seen: Option<i64>,
    /// `read_receipts`.
    pub read_receipts: bool,
    /// `typing`.
    pub typing: bool,
    /// `presence`.
    pub presence: bool,
    /// `mood_sharing`.
    pub mood_sharing: bool,
    /// `suspended_until`, in milliseconds.
    pub suspended_until: Option<i64>,
}

impl UserRow {
    /// What is stored about `user`.
    pub fn into_record(self, user: UserId) -> UserRecord {
        UserRecord {
            user_id: user,
            last_seen: self.last_seen.map(Timestamp::from_millis),
            privacy: Privacy {
                read_receipts: self.read_receipts,
                typing: self.typing,
                presence: self.presence,
                mood_sharing: self.mood_sharing,
            },
            suspended_until: self.suspended_until.map(Timestamp::from_millis),
        }
    }
}

// --- rules of a change ---------------------------------------------------

/// The message a change names, if the store found it (`found`) in `chat`;
/// `NotFound` if it does not exist or belongs to another chat.
pub fn message_in_chat(found: Option<Message>, chat: ChatId) -> Result<Message> {
    match found {
        Some(m) if m.chat_id == chat => Ok(m),
        _ => Err(Error::not_found("message not found")),
    }
}

/// `Conflict` if `message` is a tombstone: it can no longer be edited or
/// reacted to.
pub fn check_not_deleted(message: &Message) -> Result<()> {
    if message.deleted {
        return Err(Error::conflict("message was deleted"));
    }
    Ok(())
}

/// What a [`Change::Edit`](super::Change::Edit) taking `seq` does to the
/// message (which [`check_not_deleted`] let through).
pub fn edit(message: &mut Message, content: String, at: Timestamp, seq: u64) {
    message.content = Some(content);
    message.edited_at = Some(at);
    message.updated_seq = seq;
}

/// What a [`Change::Delete`](super::Change::Delete) taking `seq` does to a
/// message that is not deleted yet: it becomes a tombstone, with content,
/// media and reactions gone. `seq`, `created_at`, `edited_at` and the rest
/// stay, so the tombstone keeps its place in the log.
pub fn tombstone(message: &mut Message, seq: u64) {
    message.content = None;
    message.media = None;
    message.reactions.clear();
    message.deleted = true;
    message.updated_seq = seq;
}

/// Whether `user` adding (`add`) or removing their reaction `emoji` would
/// change `message`: `false` if they already have (or have not) reacted so,
/// which takes no seq. `Conflict` for a tombstone, or for a new distinct
/// emoji on a message that has `max_distinct` already.
pub fn reaction_changes(
    message: &Message,
    user: &UserId,
    emoji: &str,
    add: bool,
    max_distinct: usize,
) -> Result<bool> {
    check_not_deleted(message)?;
    let has = message
        .reactions
        .get(emoji)
        .is_some_and(|users| users.contains(user));
    if has == add {
        return Ok(false);
    }
    if add && !message.reactions.contains_key(emoji) && message.reactions.len() >= max_distinct {
        return Err(Error::conflict(format!(
            "a message has at most {max_distinct} distinct reactions"
        )));
    }
    Ok(true)
}

/// What a [`Change::React`](super::Change::React) taking `seq` does to the
/// message, once [`reaction_changes`] said it changes it: `user` is added
/// last among the users of `emoji`, or removed (with the emoji, when it was
/// the last one).
pub fn react(message: &mut Message, user: &UserId, emoji: &str, add: bool, seq: u64) {
    if add {
        message
            .reactions
            .entry(emoji.to_owned())
            .or_default()
            .push(user.clone());
    } else if let Some(users) = message.reactions.get_mut(emoji) {
        users.retain(|u| u != user);
        if users.is_empty() {
            message.reactions.remove(emoji);
        }
    }
    message.updated_seq = seq;
}

/// The answer to posting `new` when its `(sender, client_msg_id)` is stored
/// as `existing`: the stored message, as a duplicate, or `Conflict` if it is
/// in another chat.
pub fn repost(existing: Message, new: &NewMessage) -> Result<Applied> {
    if existing.chat_id != new.chat_id {
        return Err(Error::conflict(
            "client_msg_id was already used in another chat",
        ));
    }
    Ok(Applied::Posted {
        message: existing,
        duplicate: true,
    })
}

/// The two users of a direct chat to create, `None` for a group.
/// `InvalidInput` unless a direct chat has exactly two different users.
pub fn direct_pair(new: &NewChat) -> Result<Option<(&UserId, &UserId)>> {
    match new.kind {
        ChatKind::Group => Ok(None),
        ChatKind::Direct => {
            let [(a, _), (b, _)] = new.participants.as_slice() else {
                return Err(Error::invalid("a direct chat has exactly two participants"));
            };
            if a == b {
                return Err(Error::invalid("a direct chat needs two different users"));
            }
            Ok(Some((a, b)))
        }
    }
}

/// Whether a user may be added to a chat of `count` participants:
/// `Conflict` if they are one `already`, or if the chat has
/// `max_participants`.
pub fn check_can_join(already: bool, count: usize, max_participants: usize) -> Result<()> {
    if already {
        return Err(Error::conflict("already a participant"));
    }
    if count >= max_participants {
        return Err(Error::conflict(format!(
            "the chat is full ({max_participants} participants)"
        )));
    }
    Ok(())
}

/// `Conflict` if giving `user` the role `role` would leave `chat` without
/// an admin (see [`demotes_last_admin`]).
pub fn check_keeps_admin(chat: &Chat, user: &UserId, role: Role) -> Result<()> {
    if demotes_last_admin(chat, user, role) {
        return Err(Error::conflict(
            "a group needs an admin; make someone else admin first",
        ));
    }
    Ok(())
}

/// A participant's watermarks after a [`Change::Mark`](super::Change::Mark):
/// each moves forward only, is clamped to the chat's `last_seq`, and read
/// implies delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// The delivered watermark after the change.
    pub delivered_seq: u64,
    /// The read watermark after the change.
    pub read_seq: u64,
    /// Whether the delivered watermark moved.
    pub delivered_moved: bool,
    /// Whether the read watermark moved.
    pub read_moved: bool,
}

impl Marked {
    /// Moves the watermarks `delivered_was` and `read_was` of a chat whose
    /// counter is at `last_seq` up to `delivered_up_to` and `read_up_to`.
    pub fn new(
        last_seq: u64,
        (delivered_was, read_was): (u64, u64),
        delivered_up_to: u64,
        read_up_to: u64,
    ) -> Self {
        let read = read_was.max(read_up_to.min(last_seq));
        let delivered = delivered_was.max(delivered_up_to.min(last_seq)).max(read);
        Self {
            delivered_seq: delivered,
            read_seq: read,
            delivered_moved: delivered != delivered_was,
            read_moved: read != read_was,
        }
    }

    /// Whether either watermark moved (and needs writing).
    pub fn moved(&self) -> bool {
        self.delivered_moved || self.read_moved
    }
}

impl Marked {
    /// The store's answer: these watermarks, and when the messages this
    /// mark delivered first were created.
    pub fn applied(self, first_delivered: Vec<Timestamp>) -> Applied {
        Applied::Marked {
            delivered_seq: self.delivered_seq,
            read_seq: self.read_seq,
            delivered_moved: self.delivered_moved,
            read_moved: self.read_moved,
            first_delivered,
        }
    }
}

/// `Conflict` unless `report` is open: only an open report can be closed.
pub fn check_open(report: &Report) -> Result<()> {
    if report.status != ReportStatus::Open {
        return Err(Error::conflict("report is not open"));
    }
    Ok(())
}

/// Closes an open `report` as `resolution` says (see [`check_open`]); a
/// report on legal hold loses its snapshot.
pub fn resolve(report: &mut Report, resolution: ReportResolution) -> Result<()> {
    check_open(report)?;
    report.status = resolution.status;
    report.resolved_at = Some(resolution.at);
    report.resolved_by = Some(resolution.by);
    report.resolution_note = resolution.note;
    // A legal hold ends with the report: the erased sender's message goes.
    if report.legal_hold {
        report.content = None;
        report.media = None;
    }
    Ok(())
}

/// The check of [`Change::MlsCommit`](super::Change::MlsCommit): the
/// chat's group must be at `expected` (`None`: no group yet).
pub fn check_mls_epoch(current: Option<u64>, expected: Option<u64>) -> Result<()> {
    if current == expected {
        return Ok(());
    }
    Err(Error::conflict(match current {
        Some(epoch) => format!(
            "the chat's MLS group is at epoch {epoch}: process the commits you missed and retry"
        ),
        None => "the chat has no MLS group yet: its first commit starts at epoch 0".to_owned(),
    }))
}

/// The `members` column of `mls_groups`: `[[user, device], ...]` as JSON.
pub fn mls_members_json(members: &[(UserId, crate::model::DeviceId)]) -> String {
    let pairs: Vec<(&str, &str)> = members
        .iter()
        .map(|(u, d)| (u.as_str(), d.as_str()))
        .collect();
    // Two strings per pair: nothing that fails to serialize.
    serde_json::to_string(&pairs).unwrap_or_else(|_| "[]".to_owned())
}

/// A row of `mls_groups`: `(epoch, members JSON, state)`.
pub fn mls_group(
    epoch: i64,
    members: &str,
    state: Vec<u8>,
) -> Result<super::MlsGroupRecord, RowError> {
    let pairs: Vec<(String, String)> = serde_json::from_str(members)?;
    let members = pairs
        .into_iter()
        .map(|(u, d)| {
            Ok((
                user_id("mls_groups.members", u)?,
                crate::model::DeviceId::new(d)
                    .map_err(|e| RowError::corrupt("mls_groups.members", e))?,
            ))
        })
        .collect::<Result<_, RowError>>()?;
    Ok(super::MlsGroupRecord {
        epoch: unsigned("mls_groups.epoch", epoch)?,
        members,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MessageId, MessageType};

    fn user(name: &str) -> UserId {
        UserId::new(name).unwrap_or_else(|e| panic!("{e}"))
    }

    fn message() -> Message {
        NewMessage {
            mls: None,
            id: MessageId::new(),
            chat_id: ChatId::new(),
            sender_id: user("alice"),
            kind: MessageType::Text,
            content: Some("hi".into()),
            media: None,
            reply_to: None,
            client_msg_id: Some("c1".into()),
            system: None,
            created_at: Timestamp::from_millis(1),
        }
        .into_message(1)
    }

    #[test]
    fn reactions_fold_in_order_and_react_keeps_it() {
        let rows = [("👍", "bob"), ("❤", "carol"), ("👍", "alice")]
            .map(|(e, u)| (e.to_owned(), u.to_owned()));
        let mut m = message();
        m.reactions = fold_reactions(rows).unwrap_or_default();
        assert_eq!(m.reactions["👍"], vec![user("bob"), user("alice")]);

        assert_eq!(
            reaction_changes(&m, &user("bob"), "👍", true, 2).ok(),
            Some(false)
        );
        assert!(reaction_changes(&m, &user("bob"), "🎉", true, 2).is_err());
        assert_eq!(
            reaction_changes(&m, &user("bob"), "❤", true, 2).ok(),
            Some(true)
        );
        react(&mut m, &user("bob"), "❤", true, 7);
        assert_eq!(m.reactions["❤"], vec![user("carol"), user("bob")]);
        assert_eq!(m.updated_seq, 7);

        react(&mut m, &user("carol"), "❤", false, 8);
        react(&mut m, &user("bob"), "❤", false, 9);
        assert!(
            !m.reactions.contains_key("❤"),
            "an emoji without users goes"
        );
        assert!(fold_reactions([("x".to_owned(), "not a user".to_owned())]).is_err());
    }

    #[test]
    fn a_tombstone_keeps_its_place_and_refuses_changes() {
        let mut m = message();
        m.reactions = fold_reactions([("👍".to_owned(), "bob".to_owned())]).unwrap_or_default();
        let before = m.clone();
        tombstone(&mut m, 5);
        assert!(m.deleted && m.content.is_none() && m.media.is_none());
        assert!(m.reactions.is_empty());
        assert_eq!((m.seq, m.updated_seq), (before.seq, 5));
        assert_eq!(m.client_msg_id, before.client_msg_id);
        assert!(check_not_deleted(&m).is_err());
        assert!(reaction_changes(&m, &user("bob"), "👍", true, 9).is_err());
    }

    #[test]
    fn watermarks_move_forward_within_the_log() {
        let m = Marked::new(10, (3, 2), 20, 5);
        assert_eq!((m.delivered_seq, m.read_seq), (10, 5));
        assert!(m.delivered_moved && m.read_moved);
        let m = Marked::new(10, (6, 6), 4, 0);
        assert_eq!((m.delivered_seq, m.read_seq), (6, 6));
        assert!(!m.moved());
        let m = Marked::new(10, (2, 2), 0, 7);
        assert_eq!(
            (m.delivered_seq, m.read_seq),
            (7, 7),
            "read implies delivered"
        );
    }

    #[test]
    fn rows_decode_or_name_the_bad_column() {
        let chat = ChatRow {
            id: ChatId::new().to_string(),
            kind: "group".into(),
            encryption: "e2ee".into(),
            last_seq: 3,
            ..ChatRow::default()
        };
        assert!(chat.clone().into_chat(Vec::new()).is_ok());
        let bad = ChatRow {
            kind: "channel".into(),
            ..chat.clone()
        };
        assert!(matches!(
            bad.into_chat(Vec::new()),
            Err(RowError::Corrupt {
                column: "chats.kind",
                ..
            })
        ));
        let bad = ChatRow {
            last_seq: -1,
            ..chat
        };
        assert!(matches!(
            bad.into_chat(Vec::new()),
            Err(RowError::Corrupt {
                column: "chats.last_seq",
                ..
            })
        ));
        let message = MessageRow {
            id: MessageId::new().to_string(),
            chat_id: ChatId::new().to_string(),
            sender_id: "alice".into(),
            kind: "text".into(),
            media: Some("{".into()),
            ..MessageRow::default()
        };
        assert!(matches!(
            message.into_message(Reactions::new()),
            Err(RowError::Json(_))
        ));
        assert_eq!(
            direct_key(&user("b"), &user("a")),
            direct_key(&user("a"), &user("b"))
        );
    }
}

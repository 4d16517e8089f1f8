//! Queries, and the mapping between rows and model types. Used by the
//! readers and, inside its transaction, by the writer.

use std::str::FromStr;

use chat_core::{
    Chat, ChatId, ChatKind, Encryption, MediaId, MediaRecord, Message, MessageId, Participant,
    ParticipantSettings, Privacy, Reactions, Report, ReportId, ReportStatus, Timestamp, UserId,
    UserRecord,
    store::{ChatListQuery, HistoryQuery},
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::Error;

// --- conversions ---------------------------------------------------------

/// A seq, count or limit as SQLite's signed integer, saturating: no stored
/// value comes near `i64::MAX`, so a larger bound means "no bound".
pub(crate) fn sql_u64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A limit as SQLite's signed integer, saturating.
pub(crate) fn sql_limit(v: usize) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(column: &'static str, v: i64) -> Result<u64, Error> {
    u64::try_from(v).map_err(|e| Error::corrupt(column, e))
}

fn parse<T: FromStr>(column: &'static str, s: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e| Error::corrupt(column, e))
}

fn user(column: &'static str, s: String) -> Result<UserId, Error> {
    UserId::new(s).map_err(|e| Error::corrupt(column, e))
}

fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn chat_kind(s: &str) -> Result<ChatKind, Error> {
    match s {
        "direct" => Ok(ChatKind::Direct),
        "group" => Ok(ChatKind::Group),
        other => Err(Error::corrupt(
            "chats.kind",
            format!("unknown kind {other:?}"),
        )),
    }
}

fn encryption(s: &str) -> Result<Encryption, Error> {
    match s {
        "at_rest" => Ok(Encryption::AtRest),
        "e2ee" => Ok(Encryption::E2ee),
        other => Err(Error::corrupt(
            "chats.encryption",
            format!("unknown encryption {other:?}"),
        )),
    }
}

/// The key of the direct chat of the unordered pair `{a, b}`.
pub(crate) fn direct_key(a: &UserId, b: &UserId) -> String {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    // '/' cannot occur in a user id, so the key is unambiguous.
    format!("{lo}/{hi}")
}

// --- chats ---------------------------------------------------------------

macro_rules! chat_columns {
    () => {
        "c.id, c.kind, c.name, c.description, c.avatar_url, c.encryption, c.last_seq, \
         c.last_activity, c.created_at"
    };
}

struct ChatRow {
    id: String,
    kind: String,
    name: Option<String>,
    description: Option<String>,
    avatar_url: Option<String>,
    encryption: String,
    last_seq: i64,
    last_activity: i64,
    created_at: i64,
}

impl ChatRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            kind: r.get(1)?,
            name: r.get(2)?,
            description: r.get(3)?,
            avatar_url: r.get(4)?,
            encryption: r.get(5)?,
            last_seq: r.get(6)?,
            last_activity: r.get(7)?,
            created_at: r.get(8)?,
        })
    }

    fn into_chat(self, conn: &Connection) -> Result<Chat, Error> {
        let id: ChatId = parse("chats.id", &self.id)?;
        Ok(Chat {
            id,
            kind: chat_kind(&self.kind)?,
            name: self.name,
            description: self.description,
            avatar_url: self.avatar_url,
            encryption: encryption(&self.encryption)?,
            last_seq: unsigned("chats.last_seq", self.last_seq)?,
            last_activity: ts(self.last_activity),
            created_at: ts(self.created_at),
            participants: participants(conn, id)?,
        })
    }
}

fn participants(conn: &Connection, chat: ChatId) -> Result<Vec<Participant>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, role, joined_at, delivered_seq, read_seq, visible_from_seq, \
         muted_until, hidden_seq FROM participants WHERE chat_id = ?1 ORDER BY ordinal",
    )?;
    let rows = stmt.query_map([chat.to_string()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, Option<i64>>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (user_id, role, joined_at, delivered, read, visible, muted_until, hidden_seq) = row?;
        out.push(Participant {
            user_id: user("participants.user_id", user_id)?,
            role: parse("participants.role", &role)?,
            joined_at: ts(joined_at),
            delivered_seq: unsigned("participants.delivered_seq", delivered)?,
            read_seq: unsigned("participants.read_seq", read)?,
            visible_from_seq: unsigned("participants.visible_from_seq", visible)?,
            settings: ParticipantSettings {
                muted_until: muted_until.map(ts),
                hidden_seq: hidden_seq
                    .map(|s| unsigned("participants.hidden_seq", s))
                    .transpose()?,
            },
        });
    }
    Ok(out)
}

/// A chat with its participants in joining order.
pub(crate) fn chat(conn: &Connection, id: ChatId) -> Result<Option<Chat>, Error> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            chat_columns!(),
            " FROM chats c WHERE c.id = ?1"
        ))?
        .query_row([id.to_string()], ChatRow::from_row)
        .optional()?;
    row.map(|r| r.into_chat(conn)).transpose()
}

/// The direct chat of the pair `{a, b}`.
pub(crate) fn direct_chat(
    conn: &Connection,
    a: &UserId,
    b: &UserId,
) -> Result<Option<Chat>, Error> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            chat_columns!(),
            " FROM chats c WHERE c.direct_key = ?1"
        ))?
        .query_row([direct_key(a, b)], ChatRow::from_row)
        .optional()?;
    row.map(|r| r.into_chat(conn)).transpose()
}

/// The chats of `user`, most recent first.
pub(crate) fn list_chats(
    conn: &Connection,
    user: &UserId,
    q: ChatListQuery,
) -> Result<Vec<Chat>, Error> {
    let rows: Vec<ChatRow> = match q.after {
        None => conn
            .prepare_cached(concat!(
                "SELECT ",
                chat_columns!(),
                " FROM participants p JOIN chats c ON c.id = p.chat_id \
                 WHERE p.user_id = ?1 \
                 ORDER BY c.last_activity DESC, c.id DESC LIMIT ?2"
            ))?
            .query_map(
                params![user.as_str(), sql_limit(q.limit)],
                ChatRow::from_row,
            )?
            .collect::<rusqlite::Result<_>>()?,
        Some((activity, id)) => conn
            .prepare_cached(concat!(
                "SELECT ",
                chat_columns!(),
                " FROM participants p JOIN chats c ON c.id = p.chat_id \
                 WHERE p.user_id = ?1 \
                   AND (c.last_activity < ?2 OR (c.last_activity = ?2 AND c.id < ?3)) \
                 ORDER BY c.last_activity DESC, c.id DESC LIMIT ?4"
            ))?
            .query_map(
                params![
                    user.as_str(),
                    activity.as_millis(),
                    id.to_string(),
                    sql_limit(q.limit)
                ],
                ChatRow::from_row,
            )?
            .collect::<rusqlite::Result<_>>()?,
    };
    rows.into_iter().map(|r| r.into_chat(conn)).collect()
}

/// Everyone sharing a chat with `user`, sorted, each once.
pub(crate) fn group_count(conn: &Connection, user: &UserId) -> Result<u64, Error> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM participants p JOIN chats c ON c.id = p.chat_id \
             WHERE p.user_id = ?1 AND c.kind = 'group'",
        )?
        .query_row([user.as_str()], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(crate) fn co_members(conn: &Connection, user: &UserId) -> Result<Vec<UserId>, Error> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT DISTINCT o.user_id FROM participants p \
             JOIN participants o ON o.chat_id = p.chat_id \
             WHERE p.user_id = ?1 AND o.user_id <> ?1 ORDER BY o.user_id",
        )?
        .query_map([user.as_str()], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.into_iter()
        .map(|id| self::user("participants.user_id", id))
        .collect()
}

// --- messages ------------------------------------------------------------

macro_rules! message_columns {
    () => {
        "id, chat_id, seq, updated_seq, sender_id, kind, content, media, reply_to, \
         client_msg_id, created_at, edited_at, deleted, system"
    };
}

struct MessageRow {
    id: String,
    chat_id: String,
    seq: i64,
    updated_seq: i64,
    sender_id: String,
    kind: String,
    content: Option<String>,
    media: Option<String>,
    reply_to: Option<String>,
    client_msg_id: Option<String>,
    created_at: i64,
    edited_at: Option<i64>,
    deleted: bool,
    system: Option<String>,
}

impl MessageRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            chat_id: r.get(1)?,
            seq: r.get(2)?,
            updated_seq: r.get(3)?,
            sender_id: r.get(4)?,
            kind: r.get(5)?,
            content: r.get(6)?,
            media: r.get(7)?,
            reply_to: r.get(8)?,
            client_msg_id: r.get(9)?,
            created_at: r.get(10)?,
            edited_at: r.get(11)?,
            deleted: r.get(12)?,
            system: r.get(13)?,
        })
    }

    fn into_message(self, conn: &Connection) -> Result<Message, Error> {
        let id: MessageId = parse("messages.id", &self.id)?;
        Ok(Message {
            id,
            chat_id: parse("messages.chat_id", &self.chat_id)?,
            seq: unsigned("messages.seq", self.seq)?,
            updated_seq: unsigned("messages.updated_seq", self.updated_seq)?,
            sender_id: user("messages.sender_id", self.sender_id)?,
            kind: parse("messages.kind", &self.kind)?,
            content: self.content,
            media: self
                .media
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
            reply_to: self
                .reply_to
                .as_deref()
                .map(|s| parse("messages.reply_to", s))
                .transpose()?,
            client_msg_id: self.client_msg_id,
            created_at: ts(self.created_at),
            edited_at: self.edited_at.map(ts),
            deleted: self.deleted,
            reactions: reactions(conn, id)?,
            system: self
                .system
                .as_deref()
                .map(serde_json::from_str)
                .transpose()?,
        })
    }
}

fn reactions(conn: &Connection, message: MessageId) -> Result<Reactions, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT emoji, user_id FROM reactions WHERE message_id = ?1 ORDER BY ordinal",
    )?;
    let rows = stmt.query_map([message.to_string()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Reactions::new();
    for row in rows {
        let (emoji, user_id) = row?;
        out.entry(emoji)
            .or_default()
            .push(user("reactions.user_id", user_id)?);
    }
    Ok(out)
}

fn messages(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Message>, Error> {
    let rows: Vec<MessageRow> = conn
        .prepare_cached(sql)?
        .query_map(params, MessageRow::from_row)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(|r| r.into_message(conn)).collect()
}

/// A message by id, with its reactions.
pub(crate) fn message(conn: &Connection, id: MessageId) -> Result<Option<Message>, Error> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = ?1"
        ))?
        .query_row([id.to_string()], MessageRow::from_row)
        .optional()?;
    row.map(|r| r.into_message(conn)).transpose()
}

/// The message `sender` posted with `client_msg_id`.
pub(crate) fn by_client_id(
    conn: &Connection,
    sender: &UserId,
    client_msg_id: &str,
) -> Result<Option<Message>, Error> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2"
        ))?
        .query_row(
            params![sender.as_str(), client_msg_id],
            MessageRow::from_row,
        )
        .optional()?;
    row.map(|r| r.into_message(conn)).transpose()
}

/// A page of a chat's log, newest first.
pub(crate) fn history(
    conn: &Connection,
    chat: ChatId,
    q: HistoryQuery,
) -> Result<Vec<Message>, Error> {
    let lo = q
        .from_seq
        .max(q.after_seq.map_or(0, |a| a.saturating_add(1)));
    let hi = q.before_seq.unwrap_or(u64::MAX);
    if lo >= hi || q.limit == 0 {
        return Ok(Vec::new());
    }
    messages(
        conn,
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE chat_id = ?1 AND seq >= ?2 AND seq < ?3 \
             ORDER BY seq DESC LIMIT ?4"
        ),
        params![
            chat.to_string(),
            sql_u64(lo),
            sql_u64(hi),
            sql_limit(q.limit)
        ],
    )
}

/// What changed in a chat after a sync cursor, oldest change first.
pub(crate) fn changes(
    conn: &Connection,
    chat: ChatId,
    after_updated_seq: u64,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<Message>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let params = params![
        chat.to_string(),
        sql_u64(after_updated_seq),
        sql_u64(from_seq),
        sql_limit(limit)
    ];
    // Two disjoint sets, each in `updated_seq` order from its own index:
    // messages unchanged since posted (`updated_seq = seq`, on the log) and
    // messages changed after (the partial index `messages_changed`, whose
    // condition the query repeats so that SQLite uses it).
    let posted = messages(
        conn,
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE chat_id = ?1 AND seq > ?2 AND seq >= ?3 \
             AND updated_seq = seq ORDER BY seq LIMIT ?4"
        ),
        params,
    )?;
    let changed = messages(
        conn,
        concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE chat_id = ?1 AND updated_seq > ?2 AND seq >= ?3 \
             AND updated_seq > seq ORDER BY updated_seq LIMIT ?4"
        ),
        params,
    )?;
    Ok(merge_by_updated_seq(posted, changed, limit))
}

/// The first `limit` of two lists sorted by `updated_seq`, in that order.
fn merge_by_updated_seq(a: Vec<Message>, b: Vec<Message>, limit: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(limit.min(a.len() + b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while out.len() < limit {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.updated_seq <= y.updated_seq => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, _) => b.next(),
        };
        match next {
            Some(m) => out.push(m),
            None => break,
        }
    }
    out
}

/// Messages of others after `after_seq` that count as unread.
pub(crate) fn unread_count(
    conn: &Connection,
    chat: ChatId,
    user: &UserId,
    after_seq: u64,
) -> Result<u64, Error> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM messages \
             WHERE chat_id = ?1 AND seq > ?2 AND sender_id <> ?3 \
               AND kind <> 'system' AND deleted = 0",
        )?
        .query_row(
            params![chat.to_string(), sql_u64(after_seq), user.as_str()],
            |r| r.get(0),
        )?;
    unsigned("COUNT(*)", n)
}

// --- blocks --------------------------------------------------------------

fn users(
    conn: &Connection,
    sql: &str,
    who: &UserId,
    column: &'static str,
) -> Result<Vec<UserId>, Error> {
    let ids: Vec<String> = conn
        .prepare_cached(sql)?
        .query_map([who.as_str()], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    ids.into_iter().map(|id| user(column, id)).collect()
}

/// Whom `user` blocks, in blocking order.
pub(crate) fn blocked_by_user(conn: &Connection, who: &UserId) -> Result<Vec<UserId>, Error> {
    users(
        conn,
        "SELECT blocked FROM blocks WHERE blocker = ?1 ORDER BY ordinal",
        who,
        "blocks.blocked",
    )
}

/// Who blocks `user`, in blocking order.
pub(crate) fn blockers_of(conn: &Connection, who: &UserId) -> Result<Vec<UserId>, Error> {
    users(
        conn,
        "SELECT blocker FROM blocks WHERE blocked = ?1 ORDER BY ordinal",
        who,
        "blocks.blocker",
    )
}

/// Whether either blocks the other.
pub(crate) fn is_blocked_either(conn: &Connection, a: &UserId, b: &UserId) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM blocks \
             WHERE (blocker = ?1 AND blocked = ?2) OR (blocker = ?2 AND blocked = ?1))",
        )?
        .query_row(params![a.as_str(), b.as_str()], |r| r.get(0))?)
}

// --- users ---------------------------------------------------------------

/// What is stored about a user.
pub(crate) fn user_record(conn: &Connection, who: &UserId) -> Result<Option<UserRecord>, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT last_seen, read_receipts, typing, presence, suspended_until \
             FROM users WHERE user_id = ?1",
        )?
        .query_row([who.as_str()], |r| {
            Ok(UserRecord {
                user_id: who.clone(),
                last_seen: r.get::<_, Option<i64>>(0)?.map(ts),
                privacy: Privacy {
                    read_receipts: r.get(1)?,
                    typing: r.get(2)?,
                    presence: r.get(3)?,
                },
                suspended_until: r.get::<_, Option<i64>>(4)?.map(ts),
            })
        })
        .optional()?)
}

// --- reports -------------------------------------------------------------

macro_rules! report_columns {
    () => {
        "id, reporter_id, chat_id, message_id, reported_user_id, reason, content, status, \
         created_at, resolved_at, resolved_by, resolution_note"
    };
}

struct ReportRow {
    id: String,
    reporter_id: String,
    chat_id: String,
    message_id: String,
    reported_user_id: String,
    reason: String,
    content: Option<String>,
    status: String,
    created_at: i64,
    resolved_at: Option<i64>,
    resolved_by: Option<String>,
    resolution_note: Option<String>,
}

impl ReportRow {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            reporter_id: r.get(1)?,
            chat_id: r.get(2)?,
            message_id: r.get(3)?,
            reported_user_id: r.get(4)?,
            reason: r.get(5)?,
            content: r.get(6)?,
            status: r.get(7)?,
            created_at: r.get(8)?,
            resolved_at: r.get(9)?,
            resolved_by: r.get(10)?,
            resolution_note: r.get(11)?,
        })
    }

    fn into_report(self) -> Result<Report, Error> {
        Ok(Report {
            id: parse("reports.id", &self.id)?,
            reporter_id: user("reports.reporter_id", self.reporter_id)?,
            chat_id: parse("reports.chat_id", &self.chat_id)?,
            message_id: parse("reports.message_id", &self.message_id)?,
            reported_user_id: user("reports.reported_user_id", self.reported_user_id)?,
            reason: self.reason,
            content: self.content,
            status: parse("reports.status", &self.status)?,
            created_at: ts(self.created_at),
            resolved_at: self.resolved_at.map(ts),
            resolved_by: self
                .resolved_by
                .map(|u| user("reports.resolved_by", u))
                .transpose()?,
            resolution_note: self.resolution_note,
        })
    }
}

/// A report by id.
pub(crate) fn report(conn: &Connection, id: ReportId) -> Result<Option<Report>, Error> {
    conn.prepare_cached(concat!(
        "SELECT ",
        report_columns!(),
        " FROM reports WHERE id = ?1"
    ))?
    .query_row([id.to_string()], ReportRow::from_row)
    .optional()?
    .map(ReportRow::into_report)
    .transpose()
}

/// The open report of `reporter` about `message`, if any.
pub(crate) fn open_report(
    conn: &Connection,
    reporter: &UserId,
    message: MessageId,
) -> Result<Option<Report>, Error> {
    conn.prepare_cached(concat!(
        "SELECT ",
        report_columns!(),
        " FROM reports WHERE reporter_id = ?1 AND message_id = ?2 AND status = 'open' LIMIT 1"
    ))?
    .query_row(
        params![reporter.as_str(), message.to_string()],
        ReportRow::from_row,
    )
    .optional()?
    .map(ReportRow::into_report)
    .transpose()
}

/// Reports with `status` (all if `None`), oldest first.
pub(crate) fn list_reports(
    conn: &Connection,
    status: Option<ReportStatus>,
    limit: usize,
) -> Result<Vec<Report>, Error> {
    let rows: Vec<ReportRow> = match status {
        Some(status) => conn
            .prepare_cached(concat!(
                "SELECT ",
                report_columns!(),
                " FROM reports WHERE status = ?1 ORDER BY id LIMIT ?2"
            ))?
            .query_map(
                params![status.as_str(), sql_limit(limit)],
                ReportRow::from_row,
            )?
            .collect::<rusqlite::Result<_>>()?,
        None => conn
            .prepare_cached(concat!(
                "SELECT ",
                report_columns!(),
                " FROM reports ORDER BY id LIMIT ?1"
            ))?
            .query_map([sql_limit(limit)], ReportRow::from_row)?
            .collect::<rusqlite::Result<_>>()?,
    };
    rows.into_iter().map(ReportRow::into_report).collect()
}

// --- media ---------------------------------------------------------------

/// The record of an upload.
pub(crate) fn media(conn: &Connection, id: MediaId) -> Result<Option<MediaRecord>, Error> {
    let row = conn
        .prepare_cached(
            "SELECT chat_id, uploader_id, mime, size, duration_ms, has_thumbnail, created_at \
             FROM media WHERE id = ?1",
        )?
        .query_row([id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, i64>(6)?,
            ))
        })
        .optional()?;
    let Some((chat_id, uploader_id, mime, size, duration_ms, has_thumbnail, created_at)) = row
    else {
        return Ok(None);
    };
    Ok(Some(MediaRecord {
        id,
        chat_id: parse("media.chat_id", &chat_id)?,
        uploader_id: user("media.uploader_id", uploader_id)?,
        mime,
        size: unsigned("media.size", size)?,
        duration_ms: duration_ms
            .map(|d| unsigned("media.duration_ms", d))
            .transpose()?,
        has_thumbnail,
        created_at: ts(created_at),
    }))
}

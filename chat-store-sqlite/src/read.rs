//! Queries, and the mapping between rows and model types. Used by the
//! readers and, inside its transaction, by the writer.

use chat_core::{
    AuditEntry, Chat, ChatId, MediaId, MediaRecord, Message, MessageId, Participant, Reactions,
    Report, ReportId, ReportStatus, Timestamp, UserId, UserRecord,
    store::{
        AuditQuery, ChatListQuery, CheckinAnswer, ExpiredMessage, HistoryQuery, MlsGroupRecord,
        ReportQuery, RetentionChat, SentMessage, StoredText, TextTable, UserReaction,
        rows::{
            self, AuditRow, ChatRow, MediaRow, MessageRow, ParticipantRow, ReportRow, TextRow,
            UserRow, direct_key, fold_reactions, sql_limit, sql_u64, unsigned, user_id,
        },
    },
};
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::Error;

// --- chats ---------------------------------------------------------------

macro_rules! chat_columns {
    () => {
        "c.id, c.kind, c.name, c.description, c.avatar_url, c.encryption, c.last_seq, \
         c.last_activity, c.created_at, c.retention_secs"
    };
}

/// The columns of `chat_columns!`.
fn chat_row(r: &Row<'_>) -> rusqlite::Result<ChatRow> {
    Ok(ChatRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        avatar_url: r.get(4)?,
        encryption: r.get(5)?,
        last_seq: r.get(6)?,
        last_activity: r.get(7)?,
        created_at: r.get(8)?,
        retention_secs: r.get(9)?,
    })
}

/// The chat of `row`, with its participants.
fn with_participants(conn: &Connection, row: ChatRow) -> Result<Chat, Error> {
    let participants = participants(conn, &row.id)?;
    Ok(row.into_chat(participants)?)
}

/// The participants of the chat with id `chat`, in joining order.
fn participants(conn: &Connection, chat: &str) -> Result<Vec<Participant>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT user_id, role, joined_at, delivered_seq, read_seq, visible_from_seq, \
         muted_until, hidden_seq, silenced_until FROM participants WHERE chat_id = ?1 \
         ORDER BY ordinal",
    )?;
    let rows = stmt.query_map([chat], |r| {
        Ok(ParticipantRow {
            user_id: r.get(0)?,
            role: r.get(1)?,
            joined_at: r.get(2)?,
            delivered_seq: r.get(3)?,
            read_seq: r.get(4)?,
            visible_from_seq: r.get(5)?,
            muted_until: r.get(6)?,
            hidden_seq: r.get(7)?,
            silenced_until: r.get(8)?,
        })
    })?;
    rows.map(|row| Ok(row?.into_participant()?)).collect()
}

/// A chat with its participants in joining order.
pub(crate) fn chat(conn: &Connection, id: ChatId) -> Result<Option<Chat>, Error> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            chat_columns!(),
            " FROM chats c WHERE c.id = ?1"
        ))?
        .query_row([id.to_string()], chat_row)
        .optional()?;
    row.map(|r| with_participants(conn, r)).transpose()
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
        .query_row([direct_key(a, b)], chat_row)
        .optional()?;
    row.map(|r| with_participants(conn, r)).transpose()
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
            .query_map(params![user.as_str(), sql_limit(q.limit)], chat_row)?
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
                chat_row,
            )?
            .collect::<rusqlite::Result<_>>()?,
    };
    rows.into_iter()
        .map(|r| with_participants(conn, r))
        .collect()
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
        .map(|id| Ok(user_id("participants.user_id", id)?))
        .collect()
}

// --- messages ------------------------------------------------------------

macro_rules! message_columns {
    () => {
        "id, chat_id, seq, updated_seq, sender_id, kind, content, media, reply_to, \
         client_msg_id, created_at, edited_at, deleted, system, mls"
    };
}

/// The columns of `message_columns!`.
fn message_row(r: &Row<'_>) -> rusqlite::Result<MessageRow> {
    Ok(MessageRow {
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
        mls: r.get(14)?,
    })
}

/// The message of `row`, with its reactions.
fn with_reactions(conn: &Connection, row: MessageRow) -> Result<Message, Error> {
    let reactions = reactions(conn, &row.id)?;
    Ok(row.into_message(reactions)?)
}

/// The reactions of the message with id `message`.
fn reactions(conn: &Connection, message: &str) -> Result<Reactions, Error> {
    let rows: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT emoji, user_id FROM reactions WHERE message_id = ?1 ORDER BY ordinal",
        )?
        .query_map([message], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(fold_reactions(rows)?)
}

fn messages(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Message>, Error> {
    let rows: Vec<MessageRow> = conn
        .prepare_cached(sql)?
        .query_map(params, message_row)?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(|r| with_reactions(conn, r)).collect()
}

/// A message by id, with its reactions.
pub(crate) fn message(conn: &Connection, id: MessageId) -> Result<Option<Message>, Error> {
    let row = conn
        .prepare_cached(concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = ?1"
        ))?
        .query_row([id.to_string()], message_row)
        .optional()?;
    row.map(|r| with_reactions(conn, r)).transpose()
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
        .query_row(params![sender.as_str(), client_msg_id], message_row)
        .optional()?;
    row.map(|r| with_reactions(conn, r)).transpose()
}

/// A page of a chat's log, newest first.
pub(crate) fn history(
    conn: &Connection,
    chat: ChatId,
    q: HistoryQuery,
) -> Result<Vec<Message>, Error> {
    let seqs = q.seqs();
    if seqs.is_empty() || q.limit == 0 {
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
            sql_u64(seqs.start),
            sql_u64(seqs.end),
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
    Ok(unsigned("COUNT(*)", n)?)
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
    ids.into_iter().map(|id| Ok(user_id(column, id)?)).collect()
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
            "SELECT last_seen, read_receipts, typing, presence, suspended_until, mood_sharing \
             FROM users WHERE user_id = ?1",
        )?
        .query_row([who.as_str()], |r| {
            Ok(UserRow {
                last_seen: r.get(0)?,
                read_receipts: r.get(1)?,
                typing: r.get(2)?,
                presence: r.get(3)?,
                suspended_until: r.get(4)?,
                mood_sharing: r.get(5)?,
            }
            .into_record(who.clone()))
        })
        .optional()?)
}

// --- reports -------------------------------------------------------------

macro_rules! report_columns {
    () => {
        "id, reporter_id, chat_id, message_id, reported_user_id, reason, content, status, \
         created_at, resolved_at, resolved_by, resolution_note, kind, media, legal_hold"
    };
}

/// The columns of `report_columns!`.
fn report_row(r: &Row<'_>) -> rusqlite::Result<ReportRow> {
    Ok(ReportRow {
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
        kind: r.get(12)?,
        media: r.get(13)?,
        legal_hold: r.get(14)?,
    })
}

/// The report of `row`.
fn report_of(row: ReportRow) -> Result<Report, Error> {
    Ok(row.into_report()?)
}

/// A report by id.
pub(crate) fn report(conn: &Connection, id: ReportId) -> Result<Option<Report>, Error> {
    conn.prepare_cached(concat!(
        "SELECT ",
        report_columns!(),
        " FROM reports WHERE id = ?1"
    ))?
    .query_row([id.to_string()], report_row)
    .optional()?
    .map(report_of)
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
    .query_row(params![reporter.as_str(), message.to_string()], report_row)
    .optional()?
    .map(report_of)
    .transpose()
}

/// [`Store::list_reports`](chat_core::Store::list_reports): the queue
/// (by status) walks `reports_by_status`; the other filters narrow it.
pub(crate) fn list_reports(conn: &Connection, q: &ReportQuery) -> Result<Vec<Report>, Error> {
    let rows: Vec<ReportRow> = conn
        .prepare_cached(concat!(
            "SELECT ",
            report_columns!(),
            " FROM reports WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR chat_id = ?2) \
             AND (?3 IS NULL OR reporter_id = ?3) AND (?4 IS NULL OR reported_user_id = ?4) \
             AND (?5 IS NULL OR id > ?5) AND (?7 IS NULL OR message_id = ?7) ORDER BY id LIMIT ?6"
        ))?
        .query_map(
            params![
                q.status.map(ReportStatus::as_str),
                q.chat.map(|c| c.to_string()),
                q.reporter.as_ref().map(UserId::as_str),
                q.reported_user.as_ref().map(UserId::as_str),
                q.after.map(|r| r.to_string()),
                sql_limit(q.limit),
                q.message.map(|m| m.to_string())
            ],
            report_row,
        )?
        .collect::<rusqlite::Result<_>>()?;
    rows.into_iter().map(report_of).collect()
}

// --- audit log -----------------------------------------------------------

/// [`Store::list_audit`](chat_core::Store::list_audit): newest first, on
/// the table's order or the index of the filter.
pub(crate) fn list_audit(conn: &Connection, query: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
    use rusqlite::types::Value;
    let (filter, texts) = rows::audit_filter(query, |n| format!("?{n}"));
    let sql = format!(
        "SELECT id, at, actor_id, action, target_type, target_id, chat_id, note \
         FROM audit_log{filter} ORDER BY id DESC LIMIT ?{}",
        texts.len() + 1
    );
    let mut params: Vec<Value> = texts.into_iter().map(Value::Text).collect();
    params.push(Value::Integer(sql_limit(query.limit)));
    let rows: Vec<AuditRow> = conn
        .prepare_cached(&sql)?
        .query_map(rusqlite::params_from_iter(params), |r| {
            Ok(AuditRow {
                id: r.get(0)?,
                at: r.get(1)?,
                actor_id: r.get(2)?,
                action: r.get(3)?,
                target_type: r.get(4)?,
                target_id: r.get(5)?,
                chat_id: r.get(6)?,
                note: r.get(7)?,
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows
        .into_iter()
        .map(AuditRow::into_entry)
        .collect::<Result<_, _>>()?)
}

// --- media ---------------------------------------------------------------

macro_rules! media_columns {
    () => {
        "id, chat_id, uploader_id, kind, mime, size, width, height, duration_ms, name, \
         has_thumbnail, sealed, message_id, created_at"
    };
}

/// The record of a row of `media_columns!`.
fn media_row(r: &Row<'_>) -> rusqlite::Result<(String, MediaRow)> {
    Ok((
        r.get(0)?,
        MediaRow {
            chat_id: r.get(1)?,
            uploader_id: r.get(2)?,
            kind: r.get(3)?,
            mime: r.get(4)?,
            size: r.get(5)?,
            width: r.get(6)?,
            height: r.get(7)?,
            duration_ms: r.get(8)?,
            name: r.get(9)?,
            has_thumbnail: r.get(10)?,
            sealed: r.get(11)?,
            message_id: r.get(12)?,
            created_at: r.get(13)?,
        },
    ))
}

fn media_of((id, row): (String, MediaRow)) -> Result<MediaRecord, Error> {
    Ok(row.into_record(rows::parse("media.id", &id)?)?)
}

/// The record of an upload.
pub(crate) fn media(conn: &Connection, id: MediaId) -> Result<Option<MediaRecord>, Error> {
    conn.prepare_cached(concat!(
        "SELECT ",
        media_columns!(),
        " FROM media WHERE id = ?1"
    ))?
    .query_row([id.to_string()], media_row)
    .optional()?
    .map(media_of)
    .transpose()
}

/// The query of [`unattached_media`]: it walks the partial index
/// `media_unattached` in order, without a sort.
pub(crate) const UNATTACHED_MEDIA: &str = concat!(
    "SELECT ",
    media_columns!(),
    " FROM media WHERE message_id IS NULL AND created_at < ?1 \
     ORDER BY created_at, id LIMIT ?2"
);

/// [`Store::unattached_media`](chat_core::Store::unattached_media).
pub(crate) fn unattached_media(
    conn: &Connection,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<MediaRecord>, Error> {
    conn.prepare_cached(UNATTACHED_MEDIA)?
        .query_map(params![before.as_millis(), sql_limit(limit)], media_row)?
        .map(|row| media_of(row?))
        .collect()
}

// --- check-ins -----------------------------------------------------------

/// The columns of a check-in answer.
fn answer_row(r: &Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn answer_of(
    (message, chat, user, option, at): (String, String, String, i64, i64),
) -> Result<CheckinAnswer, Error> {
    Ok(CheckinAnswer {
        message_id: rows::parse("checkin_answers.message_id", &message)?,
        chat_id: rows::parse("checkin_answers.chat_id", &chat)?,
        user_id: user_id("checkin_answers.user_id", user)?,
        option: u32::try_from(option).map_err(|e| Error::Corrupt {
            column: "checkin_answers.option",
            reason: e.to_string(),
        })?,
        at: Timestamp::from_millis(at),
    })
}

/// [`Store::checkin_answers`](chat_core::Store::checkin_answers), in the
/// order first given.
pub(crate) fn checkin_answers(
    conn: &Connection,
    message: MessageId,
) -> Result<Vec<CheckinAnswer>, Error> {
    conn.prepare_cached(
        "SELECT message_id, chat_id, user_id, option, answered_at FROM checkin_answers \
         WHERE message_id = ?1 ORDER BY rowid",
    )?
    .query_map([message.to_string()], answer_row)?
    .map(|row| answer_of(row?))
    .collect()
}

/// [`Store::answers_by_user`](chat_core::Store::answers_by_user), from
/// `checkin_answers_by_user`.
pub(crate) fn answers_by_user(
    conn: &Connection,
    user: &UserId,
    after: Option<MessageId>,
    limit: usize,
) -> Result<Vec<CheckinAnswer>, Error> {
    conn.prepare_cached(
        "SELECT message_id, chat_id, user_id, option, answered_at FROM checkin_answers \
         WHERE user_id = ?1 AND message_id > ?2 ORDER BY message_id LIMIT ?3",
    )?
    .query_map(
        params![
            user.as_str(),
            after.map(|a| a.to_string()).unwrap_or_default(),
            sql_limit(limit)
        ],
        answer_row,
    )?
    .map(|row| answer_of(row?))
    .collect()
}

// --- erasure -------------------------------------------------------------

/// [`Store::messages_by_sender`](chat_core::Store::messages_by_sender):
/// walks the sender's part of `messages_by_client_id` (every user message
/// has a `client_msg_id`) from `after`.
pub(crate) fn messages_by_sender(
    conn: &Connection,
    user: &UserId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<SentMessage>, Error> {
    conn.prepare_cached(
        "SELECT chat_id, id, client_msg_id FROM messages INDEXED BY messages_by_client_id \
         WHERE sender_id = ?1 AND client_msg_id IS NOT NULL AND client_msg_id > ?2 \
         AND deleted = 0 AND kind NOT IN ('system', 'mls_commit') \
         ORDER BY client_msg_id LIMIT ?3",
    )?
    .query_map(
        params![user.as_str(), after.unwrap_or(""), sql_limit(limit)],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?)),
    )?
    .map(|row| {
        let (chat, id, client_msg_id) = row?;
        Ok(SentMessage {
            chat_id: rows::parse("messages.chat_id", &chat)?,
            id: rows::parse("messages.id", &id)?,
            client_msg_id,
        })
    })
    .collect()
}

/// [`Store::reactions_by_user`](chat_core::Store::reactions_by_user), from
/// `reactions_by_user`.
pub(crate) fn reactions_by_user(
    conn: &Connection,
    user: &UserId,
    limit: usize,
) -> Result<Vec<UserReaction>, Error> {
    conn.prepare_cached(
        "SELECT m.chat_id, r.message_id, r.emoji FROM reactions r \
         JOIN messages m ON m.id = r.message_id WHERE r.user_id = ?1 LIMIT ?2",
    )?
    .query_map(params![user.as_str(), sql_limit(limit)], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?))
    })?
    .map(|row| {
        let (chat, message, emoji) = row?;
        Ok(UserReaction {
            chat_id: rows::parse("messages.chat_id", &chat)?,
            message_id: rows::parse("reactions.message_id", &message)?,
            emoji,
        })
    })
    .collect()
}

/// [`Store::media_by_uploader`](chat_core::Store::media_by_uploader), from
/// `media_by_uploader`.
pub(crate) fn media_by_uploader(
    conn: &Connection,
    user: &UserId,
    after: Option<MediaId>,
    limit: usize,
) -> Result<Vec<MediaRecord>, Error> {
    conn.prepare_cached(concat!(
        "SELECT ",
        media_columns!(),
        " FROM media WHERE uploader_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3"
    ))?
    .query_map(
        params![
            user.as_str(),
            after.map(|a| a.to_string()).unwrap_or_default(),
            sql_limit(limit)
        ],
        media_row,
    )?
    .map(|row| media_of(row?))
    .collect()
}

// --- retention -----------------------------------------------------------

/// [`Store::retention_chats`](chat_core::Store::retention_chats), from the
/// partial index `chats_with_retention`.
pub(crate) fn retention_chats(
    conn: &Connection,
    after: Option<ChatId>,
    limit: usize,
) -> Result<Vec<RetentionChat>, Error> {
    let after = after.map(|a| a.to_string()).unwrap_or_default();
    conn.prepare_cached(
        "SELECT id, retention_secs, retention_swept_seq FROM chats \
         WHERE retention_secs IS NOT NULL AND id > ?1 ORDER BY id LIMIT ?2",
    )?
    .query_map(params![after, sql_limit(limit)], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?
    .map(|row| {
        let (id, seconds, swept) = row?;
        Ok(rows::retention_chat(&id, seconds, swept)?)
    })
    .collect()
}

/// [`Store::expired_messages`](chat_core::Store::expired_messages): walks
/// the log from `after_seq` and stops stepping at the first message that
/// is not old enough.
pub(crate) fn expired_messages(
    conn: &Connection,
    chat: ChatId,
    after_seq: u64,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<ExpiredMessage>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, seq, sender_id, kind, media, deleted, created_at FROM messages \
         WHERE chat_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![chat.to_string(), sql_u64(after_seq), sql_limit(limit)],
        |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        },
    )?;
    rows::expired(chat, rows.map(|row| row.map_err(Error::from)), before)
}

// --- MLS -----------------------------------------------------------------

/// [`Store::get_mls_group`](chat_core::Store::get_mls_group).
pub(crate) fn mls_group(conn: &Connection, chat: ChatId) -> Result<Option<MlsGroupRecord>, Error> {
    let row: Option<(i64, String, Vec<u8>)> = conn
        .prepare_cached("SELECT epoch, members, state FROM mls_groups WHERE chat_id = ?1")?
        .query_row([chat.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    row.map(|(epoch, members, state)| rows::mls_group(epoch, &members, state))
        .transpose()
        .map_err(Into::into)
}

/// [`Store::key_packages_of`](chat_core::Store::key_packages_of), from
/// `key_packages_by_device`.
pub(crate) fn key_packages_of(
    conn: &Connection,
    user: &UserId,
) -> Result<Vec<chat_core::mls::PublishedKeyPackage>, Error> {
    conn.prepare_cached(
        "SELECT device_id, bytes, last_resort FROM key_packages WHERE user_id = ?1 \
         ORDER BY device_id, last_resort, id",
    )?
    .query_map([user.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?))
    })?
    .map(|row| {
        let (device, key_package, last_resort) = row?;
        Ok(chat_core::mls::PublishedKeyPackage {
            device_id: rows::device_id("key_packages.device_id", device)?,
            key_package,
            last_resort,
        })
    })
    .collect()
}

/// [`Store::device_keys`](chat_core::Store::device_keys).
pub(crate) fn device_keys(
    conn: &Connection,
    devices: &[(UserId, chat_core::DeviceId)],
) -> Result<Vec<Option<Vec<u8>>>, Error> {
    let mut stmt = conn.prepare_cached(
        "SELECT signature_key FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
    )?;
    devices
        .iter()
        .map(|(u, d)| {
            Ok(stmt
                .query_row(params![u.as_str(), d.as_str()], |r| r.get(0))
                .optional()?)
        })
        .collect()
}

// --- maintenance ---------------------------------------------------------

/// [`Store::stored_texts`](chat_core::Store::stored_texts).
pub(crate) fn stored_texts(
    conn: &Connection,
    table: TextTable,
    after: &str,
    limit: usize,
) -> Result<Vec<StoredText>, Error> {
    // Both walk the primary key's index from `after`.
    let sql = match table {
        TextTable::Messages => {
            "SELECT id, chat_id, sender_id, id, content FROM messages \
             WHERE id > ?1 AND content IS NOT NULL ORDER BY id LIMIT ?2"
        }
        TextTable::Reports => {
            "SELECT id, chat_id, reported_user_id, message_id, content FROM reports \
             WHERE id > ?1 AND content IS NOT NULL ORDER BY id LIMIT ?2"
        }
    };
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params![after, sql_limit(limit)], |r| {
        Ok(TextRow {
            row: r.get(0)?,
            chat_id: r.get(1)?,
            author: r.get(2)?,
            message_id: r.get(3)?,
            text: r.get(4)?,
        })
    })?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row?.into_stored_text()?);
    }
    Ok(out)
}

/// [`Store::get_meta`](chat_core::Store::get_meta).
pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<String>, Error> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

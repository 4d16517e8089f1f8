//! Queries, and the mapping between rows and model types.
//!
//! Every read is one statement, so it sees one snapshot: a chat comes with
//! its participants and a message with its reactions (aggregated into
//! arrays by a `LATERAL` subquery) without a transaction around them. The
//! functions take any executor: the pool for the store's reads, the
//! transaction's connection for the writes that read back.

use std::collections::HashMap;

use chat_core::{
    AuditEntry, Chat, ChatId, MediaId, MediaRecord, Message, MessageId, Report, ReportId,
    ReportStatus, Timestamp, UserId, UserRecord,
    store::{
        AuditQuery, ChatListQuery, CheckinAnswer, DAY_MS, DayCounts, ExpiredMessage, HistoryQuery,
        Members, MlsGroupRecord, ReportQuery, RetentionChat, SentMessage, StatsRows, StoredText,
        TextTable, UserReaction, WeekCounts,
        rows::{
            self, AuditRow, ChatRow, MediaRow, MessageRow, ParticipantRow, ReportRow, TextRow,
            UserRow, direct_key, fold_reactions, parse, sql_limit, sql_u64, unsigned, user_id,
        },
        week_of_day,
    },
};
use sqlx::{PgExecutor, PgPool, Row, postgres::PgRow};

use crate::Error;

// --- conversions ---------------------------------------------------------

/// An array aggregate (NULL over no rows) as a vector of `len` elements.
fn array<T>(column: &'static str, v: Option<Vec<T>>, len: usize) -> Result<Vec<T>, Error> {
    let v = v.unwrap_or_default();
    if v.len() != len {
        return Err(Error::corrupt(
            column,
            format!("{} elements where {len} were expected", v.len()),
        ));
    }
    Ok(v)
}

// --- chats ---------------------------------------------------------------

/// The columns [`chat_from_row`] reads, from `chats c` and the participant
/// arrays `p` of [`CHAT_PARTICIPANTS`].
macro_rules! chat_columns {
    () => {
        "c.id, c.kind, c.name, c.description, c.avatar_url, c.encryption, c.last_seq, \
         c.last_activity, c.created_at, c.retention_secs, p.users, p.roles, p.joined, \
         p.delivered, p.read, \
         p.visible, p.muted, p.hidden, p.silenced"
    };
}

/// The participants of chat `c`, in joining order, as one array per column.
macro_rules! chat_participants {
    () => {
        " LEFT JOIN LATERAL (SELECT \
             array_agg(user_id ORDER BY ordinal) AS users, \
             array_agg(role ORDER BY ordinal) AS roles, \
             array_agg(joined_at ORDER BY ordinal) AS joined, \
             array_agg(delivered_seq ORDER BY ordinal) AS delivered, \
             array_agg(read_seq ORDER BY ordinal) AS read, \
             array_agg(visible_from_seq ORDER BY ordinal) AS visible, \
             array_agg(muted_until ORDER BY ordinal) AS muted, \
             array_agg(hidden_seq ORDER BY ordinal) AS hidden, \
             array_agg(silenced_until ORDER BY ordinal) AS silenced \
           FROM participants WHERE chat_id = c.id) p ON TRUE "
    };
}

fn chat_from_row(r: &PgRow) -> Result<Chat, Error> {
    let users: Option<Vec<String>> = r.try_get("users")?;
    let n = users.as_ref().map_or(0, Vec::len);
    let roles: Vec<String> = array("participants.role", r.try_get("roles")?, n)?;
    let joined: Vec<i64> = array("participants.joined_at", r.try_get("joined")?, n)?;
    let delivered: Vec<i64> = array("participants.delivered_seq", r.try_get("delivered")?, n)?;
    let read: Vec<i64> = array("participants.read_seq", r.try_get("read")?, n)?;
    let visible: Vec<i64> = array("participants.visible_from_seq", r.try_get("visible")?, n)?;
    let muted: Vec<Option<i64>> = array("participants.muted_until", r.try_get("muted")?, n)?;
    let hidden: Vec<Option<i64>> = array("participants.hidden_seq", r.try_get("hidden")?, n)?;
    let silenced: Vec<Option<i64>> =
        array("participants.silenced_until", r.try_get("silenced")?, n)?;
    let mut participants = Vec::with_capacity(n);
    for (i, (user_id, role)) in users.unwrap_or_default().into_iter().zip(roles).enumerate() {
        let row = ParticipantRow {
            user_id,
            role,
            joined_at: joined[i],
            delivered_seq: delivered[i],
            read_seq: read[i],
            visible_from_seq: visible[i],
            muted_until: muted[i],
            hidden_seq: hidden[i],
            silenced_until: silenced[i],
        };
        participants.push(row.into_participant()?);
    }
    let row = ChatRow {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        name: r.try_get("name")?,
        description: r.try_get("description")?,
        avatar_url: r.try_get("avatar_url")?,
        encryption: r.try_get("encryption")?,
        last_seq: r.try_get("last_seq")?,
        last_activity: r.try_get("last_activity")?,
        created_at: r.try_get("created_at")?,
        retention_secs: r.try_get("retention_secs")?,
    };
    Ok(row.into_chat(participants)?)
}

/// A chat with its participants in joining order.
pub(crate) async fn chat<'e>(ex: impl PgExecutor<'e>, id: ChatId) -> Result<Option<Chat>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        chat_columns!(),
        " FROM chats c",
        chat_participants!(),
        "WHERE c.id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(ex)
    .await?
    .map(|r| chat_from_row(&r))
    .transpose()
}

/// The direct chat of the pair `{a, b}`.
pub(crate) async fn direct_chat<'e>(
    ex: impl PgExecutor<'e>,
    a: &UserId,
    b: &UserId,
) -> Result<Option<Chat>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        chat_columns!(),
        " FROM chats c",
        chat_participants!(),
        "WHERE c.direct_key = $1"
    ))
    .bind(direct_key(a, b))
    .fetch_optional(ex)
    .await?
    .map(|r| chat_from_row(&r))
    .transpose()
}

/// The chats of `user`, most recent first. The page is chosen first, so
/// only its chats' participants are aggregated.
pub(crate) async fn list_chats<'e>(
    ex: impl PgExecutor<'e>,
    user: &UserId,
    q: ChatListQuery,
) -> Result<Vec<Chat>, Error> {
    if q.limit == 0 {
        return Ok(Vec::new());
    }
    let (activity, after) = match q.after {
        Some((activity, id)) => (Some(activity.as_millis()), Some(id.to_string())),
        None => (None, None),
    };
    let rows = sqlx::query(concat!(
        "SELECT ",
        chat_columns!(),
        " FROM (SELECT c.* FROM participants me JOIN chats c ON c.id = me.chat_id \
           WHERE me.user_id = $1 \
             AND ($2::bigint IS NULL OR (c.last_activity, c.id) < ($2, $3::text)) \
           ORDER BY c.last_activity DESC, c.id DESC LIMIT $4) c",
        chat_participants!(),
        "ORDER BY c.last_activity DESC, c.id DESC"
    ))
    .bind(user.as_str())
    .bind(activity)
    .bind(after)
    .bind(sql_limit(q.limit))
    .fetch_all(ex)
    .await?;
    rows.iter().map(chat_from_row).collect()
}

/// How many groups `who` takes part in.
pub(crate) async fn group_count<'e>(ex: impl PgExecutor<'e>, who: &UserId) -> Result<u64, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM participants p JOIN chats c ON c.id = p.chat_id \
         WHERE p.user_id = $1 AND c.kind = 'group'",
    )
    .bind(who.as_str())
    .fetch_one(ex)
    .await?;
    Ok(unsigned("group count", n)?)
}

/// The members of each of `chats` (ids as text), as the transaction sees
/// them now: participants in joining order, their mutes, and whether a
/// direct chat's pair has a block either way.
pub(crate) async fn members_of<'e>(
    ex: impl PgExecutor<'e>,
    chats: &[&str],
) -> Result<HashMap<ChatId, Members>, Error> {
    let rows = sqlx::query(
        "SELECT c.id, c.kind, p.users, p.muted, \
           (c.kind = 'direct' AND EXISTS (SELECT 1 FROM blocks b \
              WHERE b.blocker = ANY (p.users) AND b.blocked = ANY (p.users) \
                AND b.blocker <> b.blocked)) AS blocked \
         FROM chats c LEFT JOIN LATERAL (SELECT \
             array_agg(user_id ORDER BY ordinal) AS users, \
             array_agg(muted_until ORDER BY ordinal) AS muted \
           FROM participants WHERE chat_id = c.id) p ON TRUE \
         WHERE c.id = ANY ($1)",
    )
    .bind(chats)
    .fetch_all(ex)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let id: ChatId = parse("chats.id", r.try_get::<&str, _>("id")?)?;
        let users: Option<Vec<String>> = r.try_get("users")?;
        let n = users.as_ref().map_or(0, Vec::len);
        let muted: Vec<Option<i64>> = array("participants.muted_until", r.try_get("muted")?, n)?;
        let users = users
            .unwrap_or_default()
            .into_iter()
            .map(|u| user_id("participants.user_id", u))
            .collect::<Result<Vec<_>, _>>()?;
        let mut members = Members::default();
        members.muted = users
            .iter()
            .zip(muted)
            .filter_map(|(u, m)| m.map(|m| (u.clone(), Timestamp::from_millis(m))))
            .collect();
        members.users = users.into();
        members.blocked = r.try_get::<Option<bool>, _>("blocked")?.unwrap_or(false);
        out.insert(id, members);
    }
    Ok(out)
}

/// Everyone sharing a chat with `user`, sorted, each once.
pub(crate) async fn co_members<'e>(
    ex: impl PgExecutor<'e>,
    who: &UserId,
) -> Result<Vec<UserId>, Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT o.user_id FROM participants p \
         JOIN participants o ON o.chat_id = p.chat_id \
         WHERE p.user_id = $1 AND o.user_id <> $1 ORDER BY o.user_id",
    )
    .bind(who.as_str())
    .fetch_all(ex)
    .await?;
    ids.into_iter()
        .map(|id| Ok(user_id("participants.user_id", id)?))
        .collect()
}

// --- messages ------------------------------------------------------------

/// `SELECT` of messages `m` with their reactions `r` in reaction order,
/// the columns [`message_from_row`] reads. Continue with `WHERE`.
macro_rules! select_messages {
    () => {
        "SELECT m.id, m.chat_id, m.seq, m.updated_seq, m.sender_id, m.kind, m.content, \
           m.media::text AS media, m.reply_to, m.client_msg_id, m.created_at, m.edited_at, \
           m.deleted, m.system::text AS system, m.mls::text AS mls, r.emoji, r.users \
         FROM messages m \
         LEFT JOIN LATERAL (SELECT array_agg(emoji ORDER BY ordinal) AS emoji, \
             array_agg(user_id ORDER BY ordinal) AS users \
           FROM reactions WHERE message_id = m.id) r ON TRUE "
    };
}

pub(crate) fn message_from_row(r: &PgRow) -> Result<Message, Error> {
    let emoji: Option<Vec<String>> = r.try_get("emoji")?;
    let n = emoji.as_ref().map_or(0, Vec::len);
    let users: Vec<String> = array("reactions.user_id", r.try_get("users")?, n)?;
    let reactions = fold_reactions(emoji.unwrap_or_default().into_iter().zip(users))?;
    let row = MessageRow {
        id: r.try_get("id")?,
        chat_id: r.try_get("chat_id")?,
        seq: r.try_get("seq")?,
        updated_seq: r.try_get("updated_seq")?,
        sender_id: r.try_get("sender_id")?,
        kind: r.try_get("kind")?,
        content: r.try_get("content")?,
        media: r.try_get("media")?,
        reply_to: r.try_get("reply_to")?,
        client_msg_id: r.try_get("client_msg_id")?,
        created_at: r.try_get("created_at")?,
        edited_at: r.try_get("edited_at")?,
        deleted: r.try_get("deleted")?,
        system: r.try_get("system")?,
        mls: r.try_get("mls")?,
    };
    Ok(row.into_message(reactions)?)
}

/// A message by id, with its reactions.
pub(crate) async fn message<'e>(
    ex: impl PgExecutor<'e>,
    id: MessageId,
) -> Result<Option<Message>, Error> {
    sqlx::query(concat!(select_messages!(), "WHERE m.id = $1"))
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?
        .map(|r| message_from_row(&r))
        .transpose()
}

/// The message `sender` posted with `client_msg_id`.
pub(crate) async fn by_client_id<'e>(
    ex: impl PgExecutor<'e>,
    sender: &UserId,
    client_msg_id: &str,
) -> Result<Option<Message>, Error> {
    sqlx::query(concat!(
        select_messages!(),
        "WHERE m.sender_id = $1 AND m.client_msg_id = $2"
    ))
    .bind(sender.as_str())
    .bind(client_msg_id)
    .fetch_optional(ex)
    .await?
    .map(|r| message_from_row(&r))
    .transpose()
}

/// A page of a chat's log, newest first.
pub(crate) async fn history<'e>(
    ex: impl PgExecutor<'e>,
    chat: ChatId,
    q: HistoryQuery,
) -> Result<Vec<Message>, Error> {
    let seqs = q.seqs();
    if seqs.is_empty() || q.limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(concat!(
        select_messages!(),
        "WHERE m.chat_id = $1 AND m.seq >= $2 AND m.seq < $3 ORDER BY m.seq DESC LIMIT $4"
    ))
    .bind(chat.to_string())
    .bind(sql_u64(seqs.start))
    .bind(sql_u64(seqs.end))
    .bind(sql_limit(q.limit))
    .fetch_all(ex)
    .await?;
    rows.iter().map(message_from_row).collect()
}

/// What changed in a chat after a sync cursor, oldest change first.
pub(crate) async fn changes<'e>(
    ex: impl PgExecutor<'e>,
    chat: ChatId,
    after_updated_seq: u64,
    from_seq: u64,
    limit: usize,
) -> Result<Vec<Message>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(concat!(
        select_messages!(),
        "WHERE m.chat_id = $1 AND m.updated_seq > $2 AND m.seq >= $3 \
         ORDER BY m.updated_seq LIMIT $4"
    ))
    .bind(chat.to_string())
    .bind(sql_u64(after_updated_seq))
    .bind(sql_u64(from_seq))
    .bind(sql_limit(limit))
    .fetch_all(ex)
    .await?;
    rows.iter().map(message_from_row).collect()
}

/// Messages of others after `after_seq` that count as unread.
pub(crate) async fn unread_count<'e>(
    ex: impl PgExecutor<'e>,
    chat: ChatId,
    who: &UserId,
    after_seq: u64,
) -> Result<u64, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages \
         WHERE chat_id = $1 AND seq > $2 AND sender_id <> $3 \
           AND kind <> 'system' AND NOT deleted",
    )
    .bind(chat.to_string())
    .bind(sql_u64(after_seq))
    .bind(who.as_str())
    .fetch_one(ex)
    .await?;
    Ok(unsigned("COUNT(*)", n)?)
}

/// [`Store::messages_by_sender`](chat_core::Store::messages_by_sender):
/// a range of the unique index `messages_by_client_id` (sender, key), so
/// each page starts where the last ended. Two statements rather than
/// `$2 IS NULL OR ...`, which a generic plan could not turn into a range.
pub(crate) async fn messages_by_sender<'e>(
    ex: impl PgExecutor<'e>,
    sender: &UserId,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<SentMessage>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    const FIRST: &str = "SELECT chat_id, id, client_msg_id FROM messages \
         WHERE sender_id = $1 AND client_msg_id IS NOT NULL \
           AND NOT deleted AND kind NOT IN ('system', 'mls_commit') \
         ORDER BY client_msg_id LIMIT $2";
    const NEXT: &str = "SELECT chat_id, id, client_msg_id FROM messages \
         WHERE sender_id = $2 AND client_msg_id IS NOT NULL AND client_msg_id > $1 \
           AND NOT deleted AND kind NOT IN ('system', 'mls_commit') \
         ORDER BY client_msg_id LIMIT $3";
    let q = match after {
        Some(after) => sqlx::query_as(NEXT).bind(after),
        None => sqlx::query_as(FIRST),
    };
    let rows: Vec<(String, String, String)> = q
        .bind(sender.as_str())
        .bind(sql_limit(limit))
        .fetch_all(ex)
        .await?;
    rows.into_iter()
        .map(|(chat, id, client_msg_id)| {
            Ok(SentMessage {
                chat_id: parse("messages.chat_id", &chat)?,
                id: parse("messages.id", &id)?,
                client_msg_id,
            })
        })
        .collect()
}

/// [`Store::reactions_by_user`](chat_core::Store::reactions_by_user),
/// from the index `reactions_by_user`; the chat is the message's.
pub(crate) async fn reactions_by_user<'e>(
    ex: impl PgExecutor<'e>,
    who: &UserId,
    limit: usize,
) -> Result<Vec<UserReaction>, Error> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT m.chat_id, r.message_id, r.emoji FROM reactions r \
         JOIN messages m ON m.id = r.message_id WHERE r.user_id = $1 LIMIT $2",
    )
    .bind(who.as_str())
    .bind(sql_limit(limit))
    .fetch_all(ex)
    .await?;
    rows.into_iter()
        .map(|(chat, message, emoji)| {
            Ok(UserReaction {
                chat_id: parse("messages.chat_id", &chat)?,
                message_id: parse("reactions.message_id", &message)?,
                emoji,
            })
        })
        .collect()
}

// --- blocks --------------------------------------------------------------

async fn users<'e>(
    ex: impl PgExecutor<'e>,
    sql: &'static str,
    who: &UserId,
    column: &'static str,
) -> Result<Vec<UserId>, Error> {
    let ids: Vec<String> = sqlx::query_scalar(sql)
        .bind(who.as_str())
        .fetch_all(ex)
        .await?;
    ids.into_iter().map(|id| Ok(user_id(column, id)?)).collect()
}

/// Whom `who` blocks, in blocking order.
pub(crate) async fn blocked_by_user<'e>(
    ex: impl PgExecutor<'e>,
    who: &UserId,
) -> Result<Vec<UserId>, Error> {
    users(
        ex,
        "SELECT blocked FROM blocks WHERE blocker = $1 ORDER BY ordinal",
        who,
        "blocks.blocked",
    )
    .await
}

/// Who blocks `who`, in blocking order.
pub(crate) async fn blockers_of<'e>(
    ex: impl PgExecutor<'e>,
    who: &UserId,
) -> Result<Vec<UserId>, Error> {
    users(
        ex,
        "SELECT blocker FROM blocks WHERE blocked = $1 ORDER BY ordinal",
        who,
        "blocks.blocker",
    )
    .await
}

/// Whether either blocks the other.
pub(crate) async fn is_blocked_either<'e>(
    ex: impl PgExecutor<'e>,
    a: &UserId,
    b: &UserId,
) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM blocks \
         WHERE (blocker = $1 AND blocked = $2) OR (blocker = $2 AND blocked = $1))",
    )
    .bind(a.as_str())
    .bind(b.as_str())
    .fetch_one(ex)
    .await?)
}

// --- users ---------------------------------------------------------------

/// What is stored about a user.
pub(crate) async fn user_record<'e>(
    ex: impl PgExecutor<'e>,
    who: &UserId,
) -> Result<Option<UserRecord>, Error> {
    let row = sqlx::query(
        "SELECT last_seen, read_receipts, typing, presence, mood_sharing, suspended_until \
         FROM users WHERE user_id = $1",
    )
    .bind(who.as_str())
    .fetch_optional(ex)
    .await?;
    row.map(|r| user_from_row(who, &r)).transpose()
}

/// What is stored about each of `users`, in their order, in one query.
pub(crate) async fn user_records<'e>(
    ex: impl PgExecutor<'e>,
    users: &[UserId],
) -> Result<Vec<Option<UserRecord>>, Error> {
    let ids: Vec<&str> = users.iter().map(UserId::as_str).collect();
    let rows = sqlx::query(
        "SELECT user_id, last_seen, read_receipts, typing, presence, mood_sharing, \
           suspended_until \
         FROM users WHERE user_id = ANY ($1)",
    )
    .bind(&ids)
    .fetch_all(ex)
    .await?;
    let mut found = HashMap::with_capacity(rows.len());
    for r in &rows {
        found.insert(r.try_get::<&str, _>("user_id")?, r);
    }
    users
        .iter()
        .map(|u| {
            found
                .get(u.as_str())
                .map(|r| user_from_row(u, r))
                .transpose()
        })
        .collect()
}

fn user_from_row(who: &UserId, r: &PgRow) -> Result<UserRecord, Error> {
    let row = UserRow {
        last_seen: r.try_get("last_seen")?,
        read_receipts: r.try_get("read_receipts")?,
        typing: r.try_get("typing")?,
        presence: r.try_get("presence")?,
        mood_sharing: r.try_get("mood_sharing")?,
        suspended_until: r.try_get("suspended_until")?,
    };
    Ok(row.into_record(who.clone()))
}

// --- check-ins -----------------------------------------------------------

/// The columns [`checkin_answer_from_row`] reads.
macro_rules! checkin_answer_columns {
    () => {
        "message_id, chat_id, user_id, option, answered_at"
    };
}

fn checkin_answer_from_row(r: &PgRow) -> Result<CheckinAnswer, Error> {
    let option: i32 = r.try_get("option")?;
    Ok(CheckinAnswer {
        message_id: parse(
            "checkin_answers.message_id",
            r.try_get::<&str, _>("message_id")?,
        )?,
        chat_id: parse("checkin_answers.chat_id", r.try_get::<&str, _>("chat_id")?)?,
        user_id: user_id("checkin_answers.user_id", r.try_get("user_id")?)?,
        option: u32::try_from(option).map_err(|e| Error::corrupt("checkin_answers.option", e))?,
        at: Timestamp::from_millis(r.try_get("answered_at")?),
    })
}

/// [`Store::checkin_answers`](chat_core::Store::checkin_answers): the
/// check-in's rows of the primary key, in the order of their first answer.
pub(crate) async fn checkin_answers<'e>(
    ex: impl PgExecutor<'e>,
    message: MessageId,
) -> Result<Vec<CheckinAnswer>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        checkin_answer_columns!(),
        " FROM checkin_answers WHERE message_id = $1 ORDER BY ordinal"
    ))
    .bind(message.to_string())
    .fetch_all(ex)
    .await?
    .iter()
    .map(checkin_answer_from_row)
    .collect()
}

/// [`Store::answers_by_user`](chat_core::Store::answers_by_user), from the
/// index `checkin_answers_by_user` (ids are never empty, so `''` is
/// before all of them).
pub(crate) async fn answers_by_user<'e>(
    ex: impl PgExecutor<'e>,
    who: &UserId,
    after: Option<MessageId>,
    limit: usize,
) -> Result<Vec<CheckinAnswer>, Error> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    sqlx::query(concat!(
        "SELECT ",
        checkin_answer_columns!(),
        " FROM checkin_answers WHERE user_id = $1 AND message_id > $2 \
         ORDER BY message_id LIMIT $3"
    ))
    .bind(who.as_str())
    .bind(after.map(|a| a.to_string()).unwrap_or_default())
    .bind(sql_limit(limit))
    .fetch_all(ex)
    .await?
    .iter()
    .map(checkin_answer_from_row)
    .collect()
}

// --- reports -------------------------------------------------------------

/// The columns [`report_from_row`] reads.
macro_rules! report_columns {
    () => {
        "id, reporter_id, chat_id, message_id, reported_user_id, reason, content, status, \
         created_at, resolved_at, resolved_by, resolution_note, kind, media, legal_hold"
    };
}
pub(crate) use report_columns;

pub(crate) fn report_from_row(r: &PgRow) -> Result<Report, Error> {
    let row = ReportRow {
        id: r.try_get("id")?,
        reporter_id: r.try_get("reporter_id")?,
        chat_id: r.try_get("chat_id")?,
        message_id: r.try_get("message_id")?,
        reported_user_id: r.try_get("reported_user_id")?,
        reason: r.try_get("reason")?,
        content: r.try_get("content")?,
        status: r.try_get("status")?,
        created_at: r.try_get("created_at")?,
        resolved_at: r.try_get("resolved_at")?,
        resolved_by: r.try_get("resolved_by")?,
        resolution_note: r.try_get("resolution_note")?,
        kind: r.try_get("kind")?,
        media: r.try_get("media")?,
        legal_hold: r.try_get("legal_hold")?,
    };
    Ok(row.into_report()?)
}

/// A report by id.
pub(crate) async fn report<'e>(
    ex: impl PgExecutor<'e>,
    id: ReportId,
) -> Result<Option<Report>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        report_columns!(),
        " FROM reports WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(ex)
    .await?
    .map(|r| report_from_row(&r))
    .transpose()
}

/// The open report of `reporter` about `message`, if any.
pub(crate) async fn open_report<'e>(
    ex: impl PgExecutor<'e>,
    reporter: &UserId,
    message: MessageId,
) -> Result<Option<Report>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        report_columns!(),
        " FROM reports WHERE reporter_id = $1 AND message_id = $2 AND status = 'open'"
    ))
    .bind(reporter.as_str())
    .bind(message.to_string())
    .fetch_optional(ex)
    .await?
    .map(|r| report_from_row(&r))
    .transpose()
}

/// [`Store::list_reports`](chat_core::Store::list_reports).
pub(crate) async fn list_reports<'e>(
    ex: impl PgExecutor<'e>,
    q: &ReportQuery,
) -> Result<Vec<Report>, Error> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        report_columns!(),
        " FROM reports WHERE ($1::text IS NULL OR status = $1) \
           AND ($2::text IS NULL OR chat_id = $2) AND ($3::text IS NULL OR reporter_id = $3) \
           AND ($4::text IS NULL OR reported_user_id = $4) AND ($5::text IS NULL OR id > $5) \
           AND ($7::text IS NULL OR message_id = $7) \
         ORDER BY id LIMIT $6"
    ))
    .bind(q.status.map(ReportStatus::as_str))
    .bind(q.chat.map(|c| c.to_string()))
    .bind(q.reporter.as_ref().map(UserId::as_str))
    .bind(q.reported_user.as_ref().map(UserId::as_str))
    .bind(q.after.map(|r| r.to_string()))
    .bind(sql_limit(q.limit))
    .bind(q.message.map(|m| m.to_string()))
    .fetch_all(ex)
    .await?;
    rows.iter().map(report_from_row).collect()
}

// --- audit log -----------------------------------------------------------

/// [`Store::list_audit`](chat_core::Store::list_audit): newest first, on
/// the primary key or the index of the filter.
pub(crate) async fn list_audit<'e>(
    ex: impl PgExecutor<'e>,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, Error> {
    let (filter, params) = rows::audit_filter(query, |n| format!("${n}"));
    let sql = format!(
        "SELECT id, at, actor_id, action, target_type, target_id, chat_id, note \
         FROM audit_log{filter} ORDER BY id DESC LIMIT ${}",
        params.len() + 1
    );
    // Only the placeholders and the columns of `audit_filter` are spliced
    // in; every value is bound.
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in params {
        q = q.bind(p);
    }
    let rows = q.bind(sql_limit(query.limit)).fetch_all(ex).await?;
    rows.iter()
        .map(|r| {
            let row = AuditRow {
                id: r.try_get("id")?,
                at: r.try_get("at")?,
                actor_id: r.try_get("actor_id")?,
                action: r.try_get("action")?,
                target_type: r.try_get("target_type")?,
                target_id: r.try_get("target_id")?,
                chat_id: r.try_get("chat_id")?,
                note: r.try_get("note")?,
            };
            Ok(row.into_entry()?)
        })
        .collect()
}

// --- media ---------------------------------------------------------------

macro_rules! media_columns {
    () => {
        "id, chat_id, uploader_id, kind, mime, size, width, height, duration_ms, name, \
         has_thumbnail, sealed, message_id, created_at"
    };
}
pub(crate) use media_columns;

/// The record of a row of `media_columns!`.
pub(crate) fn media_from_row(r: &PgRow) -> Result<MediaRecord, Error> {
    let id: String = r.try_get("id")?;
    let row = MediaRow {
        chat_id: r.try_get("chat_id")?,
        uploader_id: r.try_get("uploader_id")?,
        kind: r.try_get("kind")?,
        mime: r.try_get("mime")?,
        size: r.try_get("size")?,
        width: r.try_get("width")?,
        height: r.try_get("height")?,
        duration_ms: r.try_get("duration_ms")?,
        name: r.try_get("name")?,
        has_thumbnail: r.try_get("has_thumbnail")?,
        sealed: r.try_get("sealed")?,
        message_id: r.try_get("message_id")?,
        created_at: r.try_get("created_at")?,
    };
    Ok(row.into_record(parse("media.id", &id)?)?)
}

/// The record of an upload.
pub(crate) async fn media<'e>(
    ex: impl PgExecutor<'e>,
    id: MediaId,
) -> Result<Option<MediaRecord>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        media_columns!(),
        " FROM media WHERE id = $1"
    ))
    .bind(id.to_string())
    .fetch_optional(ex)
    .await?
    .as_ref()
    .map(media_from_row)
    .transpose()
}

/// [`Store::unattached_media`](chat_core::Store::unattached_media), from
/// the partial index `media_unattached`.
pub(crate) async fn unattached_media<'e>(
    ex: impl PgExecutor<'e>,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<MediaRecord>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        media_columns!(),
        " FROM media WHERE message_id IS NULL AND created_at < $1 \
         ORDER BY created_at, id LIMIT $2"
    ))
    .bind(before.as_millis())
    .bind(sql_limit(limit))
    .fetch_all(ex)
    .await?
    .iter()
    .map(media_from_row)
    .collect()
}

/// [`Store::media_by_uploader`](chat_core::Store::media_by_uploader), from
/// the index `media_by_uploader` (ids are never empty, so `''` is before
/// all of them).
pub(crate) async fn media_by_uploader<'e>(
    ex: impl PgExecutor<'e>,
    uploader: &UserId,
    after: Option<MediaId>,
    limit: usize,
) -> Result<Vec<MediaRecord>, Error> {
    sqlx::query(concat!(
        "SELECT ",
        media_columns!(),
        " FROM media WHERE uploader_id = $1 AND id > $2 ORDER BY id LIMIT $3"
    ))
    .bind(uploader.as_str())
    .bind(after.map(|a| a.to_string()).unwrap_or_default())
    .bind(sql_limit(limit))
    .fetch_all(ex)
    .await?
    .iter()
    .map(media_from_row)
    .collect()
}

// --- retention -----------------------------------------------------------

/// [`Store::retention_chats`](chat_core::Store::retention_chats), from the
/// partial index `chats_with_retention`.
pub(crate) async fn retention_chats<'e>(
    ex: impl PgExecutor<'e>,
    after: Option<ChatId>,
    limit: usize,
) -> Result<Vec<RetentionChat>, Error> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT id, retention_secs, retention_swept_seq FROM chats \
         WHERE retention_secs IS NOT NULL AND id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after.map(|a| a.to_string()).unwrap_or_default())
    .bind(sql_limit(limit))
    .fetch_all(ex)
    .await?;
    rows.into_iter()
        .map(|(id, seconds, swept)| Ok(rows::retention_chat(&id, seconds, swept)?))
        .collect()
}

/// [`Store::expired_messages`](chat_core::Store::expired_messages): a page
/// of the log from `after_seq`, cut at the first message that is not old
/// enough.
pub(crate) async fn expired_messages<'e>(
    ex: impl PgExecutor<'e>,
    chat: ChatId,
    after_seq: u64,
    before: Timestamp,
    limit: usize,
) -> Result<Vec<ExpiredMessage>, Error> {
    let rows: Vec<rows::LogRow> = sqlx::query_as(
        "SELECT id, seq, sender_id, kind, media::text, deleted, created_at FROM messages \
         WHERE chat_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(chat.to_string())
    .bind(sql_u64(after_seq))
    .bind(sql_limit(limit))
    .fetch_all(ex)
    .await?;
    rows::expired(chat, rows.into_iter().map(Ok::<_, Error>), before)
}

// --- MLS -----------------------------------------------------------------

/// [`Store::get_mls_group`](chat_core::Store::get_mls_group).
pub(crate) async fn mls_group<'e>(
    ex: impl PgExecutor<'e>,
    chat: ChatId,
) -> Result<Option<MlsGroupRecord>, Error> {
    let row = sqlx::query(
        "SELECT epoch, members::text AS members, state FROM mls_groups WHERE chat_id = $1",
    )
    .bind(chat.to_string())
    .fetch_optional(ex)
    .await?;
    let Some(r) = row else {
        return Ok(None);
    };
    let members: String = r.try_get("members")?;
    Ok(Some(chat_core::store::rows::mls_group(
        r.try_get("epoch")?,
        &members,
        r.try_get("state")?,
    )?))
}

// --- maintenance ---------------------------------------------------------

/// [`Store::stored_texts`](chat_core::Store::stored_texts).
pub(crate) async fn stored_texts<'e>(
    ex: impl PgExecutor<'e>,
    table: TextTable,
    after: &str,
    limit: usize,
) -> Result<Vec<StoredText>, Error> {
    // Both walk the primary key (COLLATE "C": byte order, as ids sort).
    let sql = match table {
        TextTable::Messages => {
            "SELECT id, chat_id, sender_id AS author, id AS message_id, content FROM messages \
             WHERE id > $1 AND content IS NOT NULL ORDER BY id LIMIT $2"
        }
        TextTable::Reports => {
            "SELECT id, chat_id, reported_user_id AS author, message_id, content FROM reports \
             WHERE id > $1 AND content IS NOT NULL ORDER BY id LIMIT $2"
        }
    };
    let rows = sqlx::query(sql)
        .bind(after)
        .bind(sql_limit(limit))
        .fetch_all(ex)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let row = TextRow {
            row: r.try_get("id")?,
            chat_id: r.try_get("chat_id")?,
            author: r.try_get("author")?,
            message_id: r.try_get("message_id")?,
            text: r.try_get("content")?,
        };
        out.push(row.into_stored_text()?);
    }
    Ok(out)
}

/// [`Store::get_meta`](chat_core::Store::get_meta).
pub(crate) async fn meta<'e>(ex: impl PgExecutor<'e>, key: &str) -> Result<Option<String>, Error> {
    let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
        .bind(key)
        .fetch_optional(ex)
        .await?;
    Ok(row.map(|r| r.try_get("value")).transpose()?)
}

// --- analytics -----------------------------------------------------------

/// Which messages [`Store::stats`](chat_core::Store::stats) counts (see
/// [`counted_kind`](chat_core::store::counted_kind)), as SQL on `messages`.
macro_rules! counted {
    () => {
        "kind NOT IN ('system', 'mls_commit')"
    };
}

/// Per day of the period (and, as the row of the empty grouping set, for
/// all of it): counted messages, distinct users among their senders and
/// the session holders, sessions, new chats, and the counted messages
/// delivered within 1 s and read within 24 h. `$1..$2` are the period's
/// milliseconds, `$3..=$4` its days.
const STATS_DAYS: &str = concat!(
    "WITH counted AS ( \
       SELECT m.sender_id, floor(m.created_at / 86400000.0)::bigint AS day, \
              r.delivered_at - m.created_at <= 1000 AS delivered_1s, \
              r.read_at - m.created_at <= 86400000 AS read_24h \
       FROM messages m \
       LEFT JOIN receipt_times r ON r.chat_id = m.chat_id AND r.seq = m.seq \
       WHERE m.created_at >= $1 AND m.created_at < $2 AND m.",
    counted!(),
    " ), \
     counts (day, messages, user_id, sessions, new_chats, delivered_1s, read_24h) AS ( \
       SELECT day, 1, sender_id, 0::bigint, 0, delivered_1s, read_24h FROM counted \
       UNION ALL \
       SELECT day, 0, user_id, sessions, 0, NULL, NULL FROM daily_sessions \
       WHERE day BETWEEN $3 AND $4 \
       UNION ALL \
       SELECT floor(created_at / 86400000.0)::bigint, 0, NULL, 0, 1, NULL, NULL FROM chats \
       WHERE created_at >= $1 AND created_at < $2 \
     ) \
     SELECT GROUPING(day) = 1 AS total, day, \
            coalesce(sum(messages), 0)::bigint AS messages, \
            count(DISTINCT user_id) AS active_users, \
            coalesce(sum(sessions), 0)::bigint AS sessions, \
            coalesce(sum(new_chats), 0)::bigint AS new_chats, \
            count(*) FILTER (WHERE delivered_1s) AS delivered_1s, \
            count(*) FILTER (WHERE read_24h) AS read_24h \
     FROM counts GROUP BY GROUPING SETS ((day), ()) ORDER BY day"
);

/// Per week up to `$3`: the chats with a counted message in it, and of
/// those the ones with one the week after. `$1..$2` are the milliseconds
/// from the first week's Monday to the end of the week after the last.
const STATS_WEEKS: &str = concat!(
    "WITH active AS ( \
       SELECT DISTINCT chat_id, floor((created_at / 86400000.0 + 3) / 7)::bigint AS week \
       FROM messages WHERE created_at >= $1 AND created_at < $2 AND ",
    counted!(),
    " ) \
     SELECT a.week, count(*) AS active_chats, count(n.chat_id) AS retained \
     FROM active a LEFT JOIN active n ON n.chat_id = a.chat_id AND n.week = a.week + 1 \
     WHERE a.week <= $3 GROUP BY a.week ORDER BY a.week"
);

/// The direct chats whose first counted message (lowest seq) was created
/// in `$1..$2`: how many got no counted message of another sender after
/// it, and for the others the milliseconds until the first one. Both
/// lookups walk the unique (chat_id, seq) index.
const STATS_FIRST_REPLIES: &str = concat!(
    "SELECT count(*) FILTER (WHERE r.created_at IS NULL) AS unanswered, \
            array_agg(greatest(r.created_at - f.created_at, 0)) \
              FILTER (WHERE r.created_at IS NOT NULL) AS replies \
     FROM chats c \
     CROSS JOIN LATERAL ( \
       SELECT seq, sender_id, created_at FROM messages \
       WHERE chat_id = c.id AND ",
    counted!(),
    " ORDER BY seq LIMIT 1) f \
     LEFT JOIN LATERAL ( \
       SELECT created_at FROM messages \
       WHERE chat_id = c.id AND seq > f.seq AND sender_id <> f.sender_id AND ",
    counted!(),
    " ORDER BY seq LIMIT 1) r ON TRUE \
     WHERE c.kind = 'direct' AND f.created_at >= $1 AND f.created_at < $2"
);

/// [`Store::stats`](chat_core::Store::stats): three statements in one
/// read-only snapshot, so that their counts agree.
pub(crate) async fn stats(pool: &PgPool, from: i64, to: i64) -> Result<StatsRows, Error> {
    let ms = |day: i64| day.saturating_mul(DAY_MS);
    let (first_week, last_week) = (week_of_day(from), week_of_day(to));
    // The Monday (day) that starts a week.
    let monday = |week: i64| week.saturating_mul(7).saturating_sub(3);
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let mut stats = StatsRows::default();

    let rows = sqlx::query(STATS_DAYS)
        .bind(ms(from))
        .bind(ms(to.saturating_add(1)))
        .bind(from)
        .bind(to)
        .fetch_all(&mut *tx)
        .await?;
    for r in rows {
        let count = |column: &'static str| -> Result<u64, Error> {
            Ok(unsigned(column, r.try_get::<i64, _>(column)?)?)
        };
        if r.try_get::<bool, _>("total")? {
            stats.messages = count("messages")?;
            stats.active_users = count("active_users")?;
            stats.sessions = count("sessions")?;
            stats.delivered_within_1s = count("delivered_1s")?;
            stats.read_within_24h = count("read_24h")?;
        } else {
            stats.days.push(DayCounts {
                day: r.try_get("day")?,
                messages: count("messages")?,
                active_users: count("active_users")?,
                new_chats: count("new_chats")?,
            });
        }
    }

    let rows = sqlx::query(STATS_WEEKS)
        .bind(ms(monday(first_week)))
        .bind(ms(monday(last_week.saturating_add(2))))
        .bind(last_week)
        .fetch_all(&mut *tx)
        .await?;
    for r in rows {
        stats.weeks.push(WeekCounts {
            week: r.try_get("week")?,
            active_chats: unsigned("active_chats", r.try_get("active_chats")?)?,
            retained: unsigned("retained", r.try_get("retained")?)?,
        });
    }

    let r = sqlx::query(STATS_FIRST_REPLIES)
        .bind(ms(from))
        .bind(ms(to.saturating_add(1)))
        .fetch_one(&mut *tx)
        .await?;
    stats.unanswered = unsigned("unanswered", r.try_get("unanswered")?)?;
    let replies: Option<Vec<i64>> = r.try_get("replies")?;
    for ms in replies.unwrap_or_default() {
        stats.first_replies_ms.push(unsigned("replies", ms)?);
    }
    tx.commit().await?;
    Ok(stats)
}

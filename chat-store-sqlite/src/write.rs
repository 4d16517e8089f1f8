//! Write operations. Each runs on the writer's connection inside its own
//! savepoint of the group's transaction, so it either happens whole or not
//! at all; being on the single writer, it sees no concurrent writes. Posts
//! run without a savepoint: everything that refuses one comes before its
//! first write, and a failure after that fails the whole group (see
//! `Batch::step_unguarded`).

use std::cell::Cell;

use chat_core::{
    AuditEntry, Chat, ChatId, DeviceId, Error as CoreError, MediaId, MediaRecord, Message,
    MessageId, MessageType, ParticipantSettings, Privacy, Report, Role, Timestamp, UserId,
    mls::{ClaimedKeyPackage, MAX_KEY_PACKAGES_PER_DEVICE},
    store::{
        Applied, Change, CheckinAnswer, Committed, DAY_MS, ErasedRows, HeldReports, HeldSnapshot,
        NewChat, NewMessage, RECEIPT_HORIZON_MS, ReportResolution, TextReplacement, TextTable,
        receipt_range,
        rows::{self, Marked, direct_key, sql_u64, sql_u64_checked},
    },
};
use rusqlite::{Connection, OptionalExtension, Params, Statement, params};

use crate::{
    Error,
    prepared::{Hot, Prepared},
    read,
    writer::Batch,
};

fn not_found(what: &str) -> Error {
    Error::Contract(CoreError::not_found(what))
}

fn conflict(what: impl Into<String>) -> Error {
    Error::Contract(CoreError::conflict(what))
}

/// Takes the chat's next seq and moves its `last_activity` to `at`.
///
/// A read and an update rather than one `UPDATE ... RETURNING`: SQLite
/// collects `RETURNING` rows in a temporary table, which costs more than
/// the second statement.
fn next_seq(conn: &Connection, chat: ChatId, at: Timestamp) -> Result<u64, Error> {
    let last = last_seq(conn, chat)?.ok_or_else(|| not_found("chat not found"))?;
    let seq = last + 1;
    set_last_seq(conn, chat, seq, at)?;
    Ok(seq)
}

/// The chat's change counter; `None` if there is no such chat.
fn last_seq(conn: &Connection, chat: ChatId) -> Result<Option<u64>, Error> {
    query_counter(
        &mut *conn.prepare_cached(Hot::ChatSeq.sql())?,
        [chat.to_string()],
    )
}

/// The chat's change counter if `user` takes part in it (any user for a
/// system message); `None` if the chat does not exist or the user is not a
/// participant.
fn last_seq_of_post(db: &Prepared<'_>, new: &NewMessage) -> Result<Option<u64>, Error> {
    let chat = new.chat_id.to_string();
    if new.kind == MessageType::System {
        db.with(Hot::ChatSeq, |stmt| query_counter(stmt, [&chat]))
    } else {
        db.with(Hot::MemberSeq, |stmt| {
            query_counter(stmt, params![chat, new.sender_id.as_str()])
        })
    }
}

/// Runs a query for a `chats.last_seq`, checked; `None` if it has no row.
fn query_counter(stmt: &mut Statement<'_>, params: impl Params) -> Result<Option<u64>, Error> {
    let seq: Option<i64> = stmt.query_row(params, |r| r.get(0)).optional()?;
    Ok(seq
        .map(|s| rows::unsigned("chats.last_seq", s))
        .transpose()?)
}

fn set_last_seq(conn: &Connection, chat: ChatId, seq: u64, at: Timestamp) -> Result<(), Error> {
    set_last_seq_with(
        &mut *conn.prepare_cached(Hot::SetLastSeq.sql())?,
        chat,
        seq,
        at,
    )
}

/// Runs [`Hot::SetLastSeq`], prepared either way.
fn set_last_seq_with(
    stmt: &mut Statement<'_>,
    chat: ChatId,
    seq: u64,
    at: Timestamp,
) -> Result<(), Error> {
    stmt.execute(params![chat.to_string(), sql_u64(seq), at.as_millis()])?;
    Ok(())
}

fn chat_exists(conn: &Connection, chat: ChatId) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM chats WHERE id = ?1)")?
        .query_row([chat.to_string()], |r| r.get(0))?)
}

fn role_of(conn: &Connection, chat: ChatId, user: &UserId) -> Result<Option<Role>, Error> {
    let role: Option<String> = conn
        .prepare_cached("SELECT role FROM participants WHERE chat_id = ?1 AND user_id = ?2")?
        .query_row(params![chat.to_string(), user.as_str()], |r| r.get(0))
        .optional()?;
    Ok(role
        .map(|r| rows::parse("participants.role", &r))
        .transpose()?)
}

fn load_chat(conn: &Connection, chat: ChatId) -> Result<Chat, Error> {
    read::chat(conn, chat)?.ok_or_else(|| not_found("chat not found"))
}

/// The message `id` of `chat`, with its reactions; `NotFound` if it is not
/// a message of `chat`.
fn message_in_chat(conn: &Connection, chat: ChatId, id: MessageId) -> Result<Message, Error> {
    Ok(rows::message_in_chat(read::message(conn, id)?, chat)?)
}

fn insert_message(conn: &Connection, m: &Message) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, content, media, \
         reply_to, client_msg_id, created_at, edited_at, deleted, system, mls) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        m.id.to_string(),
        m.chat_id.to_string(),
        sql_u64(m.seq),
        sql_u64(m.updated_seq),
        m.sender_id.as_str(),
        m.kind.as_str(),
        m.content,
        m.media.as_ref().map(serde_json::to_string).transpose()?,
        m.reply_to.map(|id| id.to_string()),
        m.client_msg_id,
        m.created_at.as_millis(),
        m.edited_at.map(Timestamp::as_millis),
        m.deleted,
        m.system.as_ref().map(serde_json::to_string).transpose()?,
        m.mls.as_ref().map(serde_json::to_string).transpose()?,
    ])?;
    Ok(())
}

/// Applies one change of [`Store::apply`](chat_core::Store::apply) as a
/// step of the group: a post without a savepoint
/// (see [`post`]), anything else inside its own.
///
/// The result carries the chat's members right after the change, from the
/// writer's view: a membership change forgets the chat's entry, so that it
/// is read again inside the transaction.
pub(crate) fn apply(batch: &mut Batch<'_, '_>, change: Change) -> Result<Committed, Error> {
    let chat_id = change.chat_id();
    let applied = match change {
        Change::Post(new) => batch.step_unguarded(|db, wrote| post(db, new, wrote))?,
        change => {
            let changes_members =
                change.system_event().is_some() || matches!(change, Change::EnsureAdmin { .. });
            // (An `Authorized` change's system event is its inner one's.)
            let applied = batch.step(|conn| apply_guarded(conn, change));
            if changes_members {
                batch.forget_members(Some(chat_id));
            }
            applied?
        }
    };
    Ok(Committed::new(applied, batch.members(chat_id)?))
}

fn apply_guarded(conn: &Connection, change: Change) -> Result<Applied, Error> {
    let event = change.system_event();
    match change {
        // Posts go through `apply` unguarded; inside a savepoint the same
        // code is just as correct.
        Change::Post(new) => post(&Prepared::new(conn), new, &Cell::new(false)),
        Change::Edit {
            chat_id,
            message_id,
            content,
            at,
        } => {
            let mut message = message_in_chat(conn, chat_id, message_id)?;
            rows::check_not_deleted(&message)?;
            let seq = next_seq(conn, chat_id, at)?;
            conn.prepare_cached(
                "UPDATE messages SET content = ?2, edited_at = ?3, updated_seq = ?4 WHERE id = ?1",
            )?
            .execute(params![
                message_id.to_string(),
                content,
                at.as_millis(),
                sql_u64(seq)
            ])?;
            rows::edit(&mut message, content, at, seq);
            Ok(Applied::Updated {
                message,
                changed: true,
            })
        }
        Change::Delete {
            chat_id,
            message_id,
            at,
        } => {
            let mut message = message_in_chat(conn, chat_id, message_id)?;
            if message.deleted {
                return Ok(Applied::Updated {
                    message,
                    changed: false,
                });
            }
            let seq = next_seq(conn, chat_id, at)?;
            conn.prepare_cached(
                "UPDATE messages SET content = NULL, media = NULL, deleted = 1, updated_seq = ?2 \
                 WHERE id = ?1",
            )?
            .execute(params![message_id.to_string(), sql_u64(seq)])?;
            conn.prepare_cached("DELETE FROM reactions WHERE message_id = ?1")?
                .execute([message_id.to_string()])?;
            rows::tombstone(&mut message, seq);
            Ok(Applied::Updated {
                message,
                changed: true,
            })
        }
        Change::React {
            chat_id,
            message_id,
            user_id,
            emoji,
            add,
            max_distinct,
            at,
        } => react(
            conn,
            chat_id,
            message_id,
            &user_id,
            &emoji,
            add,
            max_distinct,
            at,
        ),
        Change::AddParticipant {
            chat_id,
            user_id,
            role,
            by,
            max_participants,
            at,
        } => {
            if !chat_exists(conn, chat_id)? {
                return Err(not_found("chat not found"));
            }
            let already = role_of(conn, chat_id, &user_id)?.is_some();
            let count: i64 = conn
                .prepare_cached("SELECT COUNT(*) FROM participants WHERE chat_id = ?1")?
                .query_row([chat_id.to_string()], |r| r.get(0))?;
            rows::check_can_join(
                already,
                usize::try_from(count).unwrap_or(usize::MAX),
                max_participants,
            )?;
            let message = system_message(conn, chat_id, event, &by, at)?;
            let seq = sql_u64(message.seq);
            conn.prepare_cached(
                "INSERT INTO participants (chat_id, user_id, role, joined_at, delivered_seq, \
                 read_seq, visible_from_seq, ordinal) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?5, \
                   (SELECT COALESCE(MAX(ordinal), 0) + 1 FROM participants WHERE chat_id = ?1))",
            )?
            .execute(params![
                chat_id.to_string(),
                user_id.as_str(),
                role.as_str(),
                at.as_millis(),
                seq
            ])?;
            membership(conn, chat_id, Some(message))
        }
        Change::RemoveParticipant {
            chat_id,
            user_id,
            by,
            at,
        } => {
            if !chat_exists(conn, chat_id)? {
                return Err(not_found("chat not found"));
            }
            if role_of(conn, chat_id, &user_id)?.is_none() {
                return Err(not_found("not a participant"));
            }
            let message = system_message(conn, chat_id, event, &by, at)?;
            conn.prepare_cached("DELETE FROM participants WHERE chat_id = ?1 AND user_id = ?2")?
                .execute(params![chat_id.to_string(), user_id.as_str()])?;
            // A direct chat one side left (erasure) is no longer the
            // pair's: a new one can be opened.
            conn.prepare_cached(
                "UPDATE chats SET direct_key = NULL WHERE id = ?1 AND kind = 'direct'",
            )?
            .execute([chat_id.to_string()])?;
            membership(conn, chat_id, Some(message))
        }
        Change::SetRole {
            chat_id,
            user_id,
            role,
            by,
            at,
        } => {
            if !chat_exists(conn, chat_id)? {
                return Err(not_found("chat not found"));
            }
            let current =
                role_of(conn, chat_id, &user_id)?.ok_or_else(|| not_found("not a participant"))?;
            if current == role {
                return membership(conn, chat_id, None);
            }
            if current == Role::Admin {
                rows::check_keeps_admin(&load_chat(conn, chat_id)?, &user_id, role)?;
            }
            let message = system_message(conn, chat_id, event, &by, at)?;
            conn.prepare_cached(
                "UPDATE participants SET role = ?3 WHERE chat_id = ?1 AND user_id = ?2",
            )?
            .execute(params![
                chat_id.to_string(),
                user_id.as_str(),
                role.as_str()
            ])?;
            membership(conn, chat_id, Some(message))
        }
        Change::Authorized { by, role, change } => {
            let held = role_of(conn, change.chat_id(), &by)?;
            chat_core::store::check_authority(held, &by, role)?;
            apply_guarded(conn, *change)
        }
        Change::EnsureAdmin { chat_id, by, at } => {
            let chat = load_chat(conn, chat_id)?;
            match chat_core::store::promotion_of_heir(&chat, &by, at) {
                Some(promotion) => apply_guarded(conn, promotion),
                None => Ok(Applied::Membership {
                    chat,
                    message: None,
                }),
            }
        }
        Change::UpdateGroup {
            chat_id,
            patch,
            by,
            at,
        } => {
            if !chat_exists(conn, chat_id)? {
                return Err(not_found("chat not found"));
            }
            let message = system_message(conn, chat_id, event, &by, at)?;
            // NULL leaves a field as it is; '' clears it.
            conn.prepare_cached(
                "UPDATE chats SET \
                   name = CASE WHEN ?2 IS NULL THEN name ELSE NULLIF(?2, '') END, \
                   description = CASE WHEN ?3 IS NULL THEN description ELSE NULLIF(?3, '') END, \
                   avatar_url = CASE WHEN ?4 IS NULL THEN avatar_url ELSE NULLIF(?4, '') END \
                 WHERE id = ?1",
            )?
            .execute(params![
                chat_id.to_string(),
                patch.name,
                patch.description,
                patch.avatar_url
            ])?;
            membership(conn, chat_id, Some(message))
        }
        Change::SetRetention {
            chat_id,
            seconds,
            by,
            at,
        } => {
            let current: Option<Option<i64>> = conn
                .prepare_cached("SELECT retention_secs FROM chats WHERE id = ?1")?
                .query_row([chat_id.to_string()], |r| r.get(0))
                .optional()?;
            let current = current.ok_or_else(|| not_found("chat not found"))?;
            let seconds = seconds.map(sql_u64);
            if current == seconds {
                return membership(conn, chat_id, None);
            }
            let message = system_message(conn, chat_id, event, &by, at)?;
            conn.prepare_cached("UPDATE chats SET retention_secs = ?2 WHERE id = ?1")?
                .execute(params![chat_id.to_string(), seconds])?;
            membership(conn, chat_id, Some(message))
        }
        Change::Mark {
            chat_id,
            user_id,
            delivered_up_to,
            read_up_to,
            at,
        } => mark(conn, chat_id, &user_id, (delivered_up_to, read_up_to), at),
        Change::MlsCommit {
            expected_epoch,
            group,
            message,
            membership: with,
        } => {
            let chat_id = message.chat_id;
            let current = read::mls_group(conn, chat_id)?.map(|g| g.epoch);
            rows::check_mls_epoch(current, expected_epoch)?;
            // Inside this change's savepoint: the membership change, the
            // group and the commit's log entry are all written, or none.
            let system = match with {
                Some(change) => match apply_guarded(conn, *change)? {
                    Applied::Membership { message, .. } => Some(message),
                    _ => return Err(invalid_change("not a membership change")),
                },
                None => None,
            };
            conn.prepare_cached(
                "INSERT INTO mls_groups (chat_id, epoch, members, state) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (chat_id) DO UPDATE SET epoch = excluded.epoch, \
                   members = excluded.members, state = excluded.state",
            )?
            .execute(params![
                chat_id.to_string(),
                sql_u64(group.epoch),
                rows::mls_members_json(&group.members),
                group.state,
            ])?;
            let posted = post(&Prepared::new(conn), message, &Cell::new(false))?;
            match (system, posted) {
                (
                    Some(system),
                    Applied::Posted {
                        message: commit, ..
                    },
                ) => Ok(Applied::MlsMembership {
                    chat: load_chat(conn, chat_id)?,
                    message: system,
                    commit: Box::new(commit),
                }),
                (_, posted) => Ok(posted),
            }
        }
        other => Err(Error::Contract(CoreError::invalid(format!(
            "this store does not know the change {other:?}"
        )))),
    }
}

/// Stores a post. Everything that can refuse it runs before its first
/// write, which sets `wrote` (see `Batch::step_unguarded`).
fn post(db: &Prepared<'_>, new: NewMessage, wrote: &Cell<bool>) -> Result<Applied, Error> {
    // The common case is three statements: the chat's counter, read
    // together with the membership probe; the insert (which skips a retry
    // on its unique key); and the counter's update. Anything unusual first
    // finds out whether the post is a retry, so that a retry always gets
    // the stored message (even from a sender who has left since).
    let conn = db.conn();
    let Some(last) = last_seq_of_post(db, &new)? else {
        return retry_or(conn, &new, not_found("chat not found"));
    };
    if let Some(reply_to) = new.reply_to {
        let chat: Option<String> = conn
            .prepare_cached("SELECT chat_id FROM messages WHERE id = ?1")?
            .query_row([reply_to.to_string()], |r| r.get(0))
            .optional()?;
        if chat.as_deref() != Some(new.chat_id.to_string().as_str()) {
            return retry_or(
                conn,
                &new,
                not_found("reply_to message not found in this chat"),
            );
        }
    }
    let seq = last + 1;
    if !insert_post(db, &new, seq)? {
        // Nothing inserted: `(sender, client_msg_id)` is taken, a retry.
        return retry_or(conn, &new, not_found("chat not found"));
    }
    // A failed statement leaves nothing behind, so the insert is the first
    // write that could need undoing.
    wrote.set(true);
    db.with(Hot::SetLastSeq, |stmt| {
        set_last_seq_with(stmt, new.chat_id, seq, new.created_at)
    })?;
    Ok(Applied::Posted {
        message: new.into_message(seq),
        duplicate: false,
    })
}

/// A retry of an earlier post is answered with the stored message (or
/// `Conflict` if that is in another chat); anything else with `error`.
fn retry_or(conn: &Connection, new: &NewMessage, error: Error) -> Result<Applied, Error> {
    if let Some(cid) = &new.client_msg_id {
        if let Some(existing) = read::by_client_id(conn, &new.sender_id, cid)? {
            return Ok(rows::repost(existing, new)?);
        }
    }
    Err(error)
}

/// Inserts a post as the chat's `seq`; `false` if nothing was inserted
/// because `(sender, client_msg_id)` is taken. No `RETURNING`: SQLite
/// collects its rows in a temporary table, a cost on every post.
fn insert_post(db: &Prepared<'_>, new: &NewMessage, seq: u64) -> Result<bool, Error> {
    let media = new.media.as_ref().map(serde_json::to_string).transpose()?;
    let system = new.system.as_ref().map(serde_json::to_string).transpose()?;
    let mls = new.mls.as_ref().map(serde_json::to_string).transpose()?;
    let inserted = db.with(Hot::InsertPost, |stmt| {
        Ok(stmt.execute(params![
            new.id.to_string(),
            new.chat_id.to_string(),
            sql_u64(seq),
            new.sender_id.as_str(),
            new.kind.as_str(),
            new.content,
            media,
            new.reply_to.map(|id| id.to_string()),
            new.client_msg_id,
            new.created_at.as_millis(),
            system,
            mls,
        ])?)
    })?;
    Ok(inserted == 1)
}

fn system_message(
    conn: &Connection,
    chat_id: ChatId,
    system: Option<chat_core::SystemEvent>,
    by: &UserId,
    at: Timestamp,
) -> Result<Message, Error> {
    let seq = next_seq(conn, chat_id, at)?;
    let message = NewMessage::system(chat_id, by.clone(), system, at).into_message(seq);
    insert_message(conn, &message)?;
    Ok(message)
}

#[allow(clippy::too_many_arguments)]
fn react(
    conn: &Connection,
    chat_id: ChatId,
    message_id: MessageId,
    user_id: &UserId,
    emoji: &str,
    add: bool,
    max_distinct: usize,
    at: Timestamp,
) -> Result<Applied, Error> {
    let mut message = message_in_chat(conn, chat_id, message_id)?;
    if !rows::reaction_changes(&message, user_id, emoji, add, max_distinct)? {
        return Ok(Applied::Updated {
            message,
            changed: false,
        });
    }
    let id = message_id.to_string();
    let seq = next_seq(conn, chat_id, at)?;
    if add {
        conn.prepare_cached(
            "INSERT INTO reactions (message_id, emoji, user_id, ordinal) VALUES (?1, ?2, ?3, \
             (SELECT COALESCE(MAX(ordinal), 0) + 1 FROM reactions WHERE message_id = ?1))",
        )?
        .execute(params![id, emoji, user_id.as_str()])?;
    } else {
        conn.prepare_cached(
            "DELETE FROM reactions WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3",
        )?
        .execute(params![id, emoji, user_id.as_str()])?;
    }
    conn.prepare_cached("UPDATE messages SET updated_seq = ?2 WHERE id = ?1")?
        .execute(params![id, sql_u64(seq)])?;
    rows::react(&mut message, user_id, emoji, add, seq);
    Ok(Applied::Updated {
        message,
        changed: true,
    })
}

fn mark(
    conn: &Connection,
    chat_id: ChatId,
    user_id: &UserId,
    (delivered_up_to, read_up_to): (u64, u64),
    at: Timestamp,
) -> Result<Applied, Error> {
    let last: i64 = conn
        .prepare_cached("SELECT last_seq FROM chats WHERE id = ?1")?
        .query_row([chat_id.to_string()], |r| r.get(0))
        .optional()?
        .ok_or_else(|| not_found("chat not found"))?;
    let (delivered_was, read_was): (i64, i64) = conn
        .prepare_cached(
            "SELECT delivered_seq, read_seq FROM participants WHERE chat_id = ?1 AND user_id = ?2",
        )?
        .query_row(params![chat_id.to_string(), user_id.as_str()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .ok_or_else(|| not_found("not a participant"))?;
    let was = (
        rows::unsigned("participants.delivered_seq", delivered_was)?,
        rows::unsigned("participants.read_seq", read_was)?,
    );
    let marked = Marked::new(
        rows::unsigned("chats.last_seq", last)?,
        was,
        delivered_up_to,
        read_up_to,
    );
    if marked.moved() {
        conn.prepare_cached(
            "UPDATE participants SET delivered_seq = ?3, read_seq = ?4 \
             WHERE chat_id = ?1 AND user_id = ?2",
        )?
        .execute(params![
            chat_id.to_string(),
            user_id.as_str(),
            sql_u64(marked.delivered_seq),
            sql_u64(marked.read_seq)
        ])?;
    }
    let first_delivered = time_receipts(conn, chat_id, user_id, was, marked, at)?;
    Ok(marked.applied(first_delivered))
}

/// A mark's first deliveries: others' counted messages of the chat `?1`
/// in seqs `(?2, ?3]` created at or after `?6`, delivered at `?5` unless
/// someone delivered them before. On the log's `(chat_id, seq)` index.
pub(crate) const RECEIPT_DELIVERED: &str = "INSERT INTO receipt_times (chat_id, seq, created_at, delivered_at) \
     SELECT chat_id, seq, created_at, ?5 FROM messages \
     WHERE chat_id = ?1 AND seq > ?2 AND seq <= ?3 AND sender_id <> ?4 \
       AND kind NOT IN ('system', 'mls_commit') AND created_at >= ?6 \
     ON CONFLICT DO NOTHING RETURNING created_at";

/// A mark's first reads, of the same rows (`?4`: when, `?5`: the horizon,
/// `?6`: the reader). Only others' messages: a row exists for a message
/// someone else delivered, and its sender reading it is no read.
pub(crate) const RECEIPT_READ: &str = "UPDATE receipt_times SET read_at = ?4 \
     WHERE chat_id = ?1 AND seq > ?2 AND seq <= ?3 AND read_at IS NULL \
       AND created_at >= ?5 AND seq IN (SELECT seq FROM messages \
         WHERE chat_id = ?1 AND seq > ?2 AND seq <= ?3 AND sender_id <> ?6)";

/// Records the first delivery and read receipts a mark gives (see
/// [`chat_core::store::receipt_range`]); returns when the messages it
/// delivered first were created.
fn time_receipts(
    conn: &Connection,
    chat_id: ChatId,
    user_id: &UserId,
    (delivered_was, read_was): (u64, u64),
    marked: Marked,
    at: Timestamp,
) -> Result<Vec<Timestamp>, Error> {
    let since = at.as_millis().saturating_sub(RECEIPT_HORIZON_MS);
    let mut first = Vec::new();
    if marked.delivered_moved {
        let (lo, hi) = receipt_range(delivered_was, marked.delivered_seq);
        let mut insert = conn.prepare_cached(RECEIPT_DELIVERED)?;
        let rows = insert.query_map(
            params![
                chat_id.to_string(),
                sql_u64(lo),
                sql_u64(hi),
                user_id.as_str(),
                at.as_millis(),
                since
            ],
            |r| r.get::<_, i64>(0),
        )?;
        for created in rows {
            first.push(Timestamp::from_millis(created?));
        }
    }
    if marked.read_moved {
        let (lo, hi) = receipt_range(read_was, marked.read_seq);
        conn.prepare_cached(RECEIPT_READ)?.execute(params![
            chat_id.to_string(),
            sql_u64(lo),
            sql_u64(hi),
            at.as_millis(),
            since,
            user_id.as_str()
        ])?;
    }
    Ok(first)
}

/// [`Store::record_session`](chat_core::Store::record_session).
pub(crate) fn record_session(conn: &Connection, user: &UserId, at: Timestamp) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO daily_sessions (day, user_id, sessions) VALUES (?1, ?2, 1) \
         ON CONFLICT (day, user_id) DO UPDATE SET sessions = sessions + 1",
    )?
    .execute(params![at.as_millis().div_euclid(DAY_MS), user.as_str()])?;
    Ok(())
}

/// [`Store::create_chat`](chat_core::Store::create_chat).
pub(crate) fn create_chat(conn: &Connection, new: NewChat) -> Result<(Chat, bool), Error> {
    let key = match rows::direct_pair(&new)? {
        Some((a, b)) => {
            if let Some(existing) = read::direct_chat(conn, a, b)? {
                return Ok((existing, false));
            }
            Some(direct_key(a, b))
        }
        None => None,
    };
    if chat_exists(conn, new.id)? {
        return Err(conflict("chat id exists"));
    }
    let chat = new.into_chat();
    conn.prepare_cached(
        "INSERT INTO chats (id, kind, name, description, avatar_url, encryption, last_seq, \
         last_activity, created_at, direct_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?7, ?8)",
    )?
    .execute(params![
        chat.id.to_string(),
        chat.kind.as_str(),
        chat.name,
        chat.description,
        chat.avatar_url,
        chat.encryption.as_str(),
        chat.created_at.as_millis(),
        key,
    ])?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO participants (chat_id, user_id, role, joined_at, delivered_seq, read_seq, \
         visible_from_seq, ordinal) VALUES (?1, ?2, ?3, ?4, 0, 0, 0, ?5)",
    )?;
    for (ordinal, p) in chat.participants.iter().enumerate() {
        insert.execute(params![
            chat.id.to_string(),
            p.user_id.as_str(),
            p.role.as_str(),
            chat.created_at.as_millis(),
            i64::try_from(ordinal).unwrap_or(i64::MAX)
        ])?;
    }
    Ok((chat, true))
}

/// [`Store::set_block`](chat_core::Store::set_block).
pub(crate) fn set_block(
    conn: &Connection,
    blocker: &UserId,
    blocked: &UserId,
    on: bool,
) -> Result<bool, Error> {
    let sql = if on {
        "INSERT INTO blocks (blocker, blocked) VALUES (?1, ?2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2"
    };
    let n = conn
        .prepare_cached(sql)?
        .execute(params![blocker.as_str(), blocked.as_str()])?;
    Ok(n > 0)
}

/// [`Store::set_last_seen`](chat_core::Store::set_last_seen).
pub(crate) fn set_last_seen(conn: &Connection, user: &UserId, at: Timestamp) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO users (user_id, last_seen) VALUES (?1, ?2) \
         ON CONFLICT (user_id) DO UPDATE SET last_seen = excluded.last_seen",
    )?
    .execute(params![user.as_str(), at.as_millis()])?;
    Ok(())
}

/// [`Store::set_privacy`](chat_core::Store::set_privacy).
pub(crate) fn set_privacy(conn: &Connection, user: &UserId, p: Privacy) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO users (user_id, read_receipts, typing, presence, mood_sharing) \
         VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (user_id) DO UPDATE SET read_receipts = excluded.read_receipts, \
           typing = excluded.typing, presence = excluded.presence, \
           mood_sharing = excluded.mood_sharing",
    )?
    .execute(params![
        user.as_str(),
        p.read_receipts,
        p.typing,
        p.presence,
        p.mood_sharing
    ])?;
    Ok(())
}

/// [`Store::set_suspension`](chat_core::Store::set_suspension).
pub(crate) fn set_participant_settings(
    conn: &Connection,
    chat: ChatId,
    user: &UserId,
    settings: ParticipantSettings,
) -> Result<(), Error> {
    let hidden = settings.hidden_seq.map(sql_u64);
    let changed = conn
        .prepare_cached(
            "UPDATE participants SET muted_until = ?3, hidden_seq = ?4 \
             WHERE chat_id = ?1 AND user_id = ?2",
        )?
        .execute(params![
            chat.to_string(),
            user.as_str(),
            settings.muted_until.map(Timestamp::as_millis),
            hidden
        ])?;
    if changed == 0 {
        return Err(not_found("not a participant"));
    }
    Ok(())
}

/// [`Store::set_silenced`](chat_core::Store::set_silenced).
pub(crate) fn set_silenced(
    conn: &Connection,
    chat: ChatId,
    user: &UserId,
    until: Option<Timestamp>,
) -> Result<bool, Error> {
    let changed = conn
        .prepare_cached(
            "UPDATE participants SET silenced_until = ?3 WHERE chat_id = ?1 AND user_id = ?2",
        )?
        .execute(params![
            chat.to_string(),
            user.as_str(),
            until.map(Timestamp::as_millis)
        ])?;
    Ok(changed > 0)
}

pub(crate) fn set_suspension(
    conn: &Connection,
    user: &UserId,
    until: Option<Timestamp>,
) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO users (user_id, suspended_until) VALUES (?1, ?2) \
         ON CONFLICT (user_id) DO UPDATE SET suspended_until = excluded.suspended_until",
    )?
    .execute(params![user.as_str(), until.map(Timestamp::as_millis)])?;
    Ok(())
}

/// [`Store::insert_report`](chat_core::Store::insert_report).
pub(crate) fn insert_report(conn: &Connection, r: Report) -> Result<Report, Error> {
    if let Some(existing) = read::open_report(conn, &r.reporter_id, r.message_id)? {
        return Ok(existing);
    }
    conn.prepare_cached(
        "INSERT INTO reports (id, reporter_id, chat_id, message_id, reported_user_id, reason, \
         content, status, created_at, resolved_at, resolved_by, resolution_note, kind, media, \
         legal_hold) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        r.id.to_string(),
        r.reporter_id.as_str(),
        r.chat_id.to_string(),
        r.message_id.to_string(),
        r.reported_user_id.as_str(),
        r.reason,
        r.content,
        r.status.as_str(),
        r.created_at.as_millis(),
        r.resolved_at.map(Timestamp::as_millis),
        r.resolved_by.as_ref().map(UserId::as_str),
        r.resolution_note,
        r.kind.as_str(),
        r.media.as_ref().map(serde_json::to_string).transpose()?,
        r.legal_hold,
    ])?;
    Ok(r)
}

/// [`Store::resolve_report`](chat_core::Store::resolve_report).
pub(crate) fn resolve_report(conn: &Connection, res: ReportResolution) -> Result<Report, Error> {
    let mut report = read::report(conn, res.id)?.ok_or_else(|| not_found("report not found"))?;
    rows::resolve(&mut report, res)?;
    conn.prepare_cached(
        "UPDATE reports SET status = ?2, resolved_at = ?3, resolved_by = ?4, \
         resolution_note = ?5, content = ?6, media = ?7 WHERE id = ?1",
    )?
    .execute(params![
        report.id.to_string(),
        report.status.as_str(),
        report.resolved_at.map(Timestamp::as_millis),
        report.resolved_by.as_ref().map(UserId::as_str),
        report.resolution_note,
        // A held report's snapshot goes with its resolution.
        report.content,
        report
            .media
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?,
    ])?;
    Ok(report)
}

/// [`Store::append_audit`](chat_core::Store::append_audit): a duplicate id
/// is a unique violation, which is a `Conflict`.
pub(crate) fn append_audit(conn: &Connection, e: AuditEntry) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO audit_log (id, at, actor_id, action, target_type, target_id, chat_id, note) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        e.id.to_string(),
        e.at.as_millis(),
        e.actor_id.as_str(),
        e.action.as_str(),
        e.target_type.as_str(),
        e.target_id,
        e.chat_id.map(|c| c.to_string()),
        e.note,
    ])?;
    Ok(())
}

/// [`Store::pseudonymize_audit`](chat_core::Store::pseudonymize_audit):
/// one `UPDATE` of the entries that name `user`.
pub(crate) fn pseudonymize_audit(
    conn: &Connection,
    user: &UserId,
    pseudonym: &UserId,
) -> Result<u64, Error> {
    let changed = conn
        .prepare_cached(
            "UPDATE audit_log SET \
               actor_id = CASE WHEN actor_id = ?1 THEN ?2 ELSE actor_id END, \
               target_id = CASE WHEN target_type = 'user' AND target_id = ?1 \
                 THEN ?2 ELSE target_id END \
             WHERE actor_id = ?1 OR (target_type = 'user' AND target_id = ?1)",
        )?
        .execute(params![user.as_str(), pseudonym.as_str()])?;
    Ok(changed as u64)
}

// --- check-ins -----------------------------------------------------------

/// [`Store::answer_checkin`](chat_core::Store::answer_checkin): an upsert
/// that keeps the row (and so the place) of a first answer.
pub(crate) fn answer_checkin(conn: &Connection, a: CheckinAnswer) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO checkin_answers (message_id, chat_id, user_id, option, answered_at) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (message_id, user_id) \
         DO UPDATE SET option = excluded.option, answered_at = excluded.answered_at",
    )?
    .execute(params![
        a.message_id.to_string(),
        a.chat_id.to_string(),
        a.user_id.as_str(),
        a.option,
        a.at.as_millis()
    ])?;
    Ok(())
}

// --- erasure -------------------------------------------------------------

/// [`Store::hold_reports`](chat_core::Store::hold_reports), inside the
/// writer's transaction.
pub(crate) fn hold_reports(
    conn: &Connection,
    user: &UserId,
    pseudonym: &UserId,
    held: Vec<HeldSnapshot>,
) -> Result<HeldReports, Error> {
    let (user, pseudonym) = (user.as_str(), pseudonym.as_str());
    for snapshot in held {
        conn.prepare_cached(
            "UPDATE reports SET content = ?2 \
             WHERE id = ?1 AND reported_user_id = ?3 AND status = 'open'",
        )?
        .execute(params![snapshot.id.to_string(), snapshot.content, user])?;
    }
    let held = conn
        .prepare_cached(
            "UPDATE reports SET legal_hold = 1, reported_user_id = ?2 \
             WHERE reported_user_id = ?1 AND status = 'open'",
        )?
        .execute(params![user, pseudonym])?;
    let destroyed = conn
        .prepare_cached(
            "UPDATE reports SET content = NULL, media = NULL, reported_user_id = ?2 \
             WHERE reported_user_id = ?1",
        )?
        .execute(params![user, pseudonym])?;
    Ok(HeldReports {
        held: held as u64,
        destroyed: destroyed as u64,
    })
}

/// [`Store::erase_user_rows`](chat_core::Store::erase_user_rows), inside
/// the writer's transaction; every statement finds its rows by an index.
pub(crate) fn erase_user_rows(
    conn: &Connection,
    user: &UserId,
    pseudonym: &UserId,
) -> Result<ErasedRows, Error> {
    let run = |sql: &str, pseudonymized: bool| -> Result<u64, Error> {
        let mut statement = conn.prepare_cached(sql)?;
        let changed = if pseudonymized {
            statement.execute(params![user.as_str(), pseudonym.as_str()])?
        } else {
            statement.execute([user.as_str()])?
        };
        Ok(changed as u64)
    };
    let messages = run(
        "UPDATE messages INDEXED BY messages_by_client_id SET sender_id = ?2, client_msg_id = NULL \
         WHERE sender_id = ?1 AND client_msg_id IS NOT NULL",
        true,
    )?;
    let reports_filed = run(
        "UPDATE reports SET reporter_id = ?2, reason = '' WHERE reporter_id = ?1",
        true,
    )?;
    run(
        "UPDATE media SET uploader_id = ?2 WHERE uploader_id = ?1",
        true,
    )?;
    // Sessions stay counted, under the pseudonym (fresh: no row to merge).
    run(
        "UPDATE daily_sessions SET user_id = ?2 WHERE user_id = ?1",
        true,
    )?;
    // A direct chat the user is still in (joined while the erasure ran)
    // stops being the pair's, as when its side leaves.
    run(
        "UPDATE chats SET direct_key = NULL WHERE kind = 'direct' \
         AND id IN (SELECT chat_id FROM participants WHERE user_id = ?1)",
        false,
    )?;
    Ok(ErasedRows {
        messages,
        reports_filed,
        blocks: run("DELETE FROM blocks WHERE blocker = ?1", false)?,
        key_packages: run("DELETE FROM key_packages WHERE user_id = ?1", false)?,
        device_keys: run("DELETE FROM device_keys WHERE user_id = ?1", false)?,
        reactions: run("DELETE FROM reactions WHERE user_id = ?1", false)?,
        memberships: run("DELETE FROM participants WHERE user_id = ?1", false)?,
        checkin_answers: run("DELETE FROM checkin_answers WHERE user_id = ?1", false)?,
        user: run("DELETE FROM users WHERE user_id = ?1", false)? > 0,
    })
}

/// [`Store::insert_media`](chat_core::Store::insert_media).
pub(crate) fn insert_media(conn: &Connection, m: MediaRecord) -> Result<(), Error> {
    if read::media(conn, m.id)?.is_some() {
        return Err(conflict("media id exists"));
    }
    conn.prepare_cached(
        "INSERT INTO media (id, chat_id, uploader_id, kind, mime, size, width, height, \
         duration_ms, name, has_thumbnail, sealed, message_id, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        m.id.to_string(),
        m.chat_id.to_string(),
        m.uploader_id.as_str(),
        m.kind.as_str(),
        m.mime,
        sql_u64_checked("size", m.size)?,
        m.width,
        m.height,
        m.duration_ms
            .map(|d| sql_u64_checked("duration_ms", d))
            .transpose()?,
        m.name,
        m.has_thumbnail,
        m.sealed,
        m.message_id.map(|id| id.to_string()),
        m.created_at.as_millis(),
    ])?;
    Ok(())
}

/// [`Store::attach_media`](chat_core::Store::attach_media): one
/// compare-and-set `UPDATE`.
pub(crate) fn attach_media(
    conn: &Connection,
    id: MediaId,
    message: MessageId,
) -> Result<bool, Error> {
    let changed = conn
        .prepare_cached("UPDATE media SET message_id = ?2 WHERE id = ?1 AND message_id IS NULL")?
        .execute([id.to_string(), message.to_string()])?;
    Ok(changed == 1)
}

/// [`Store::detach_media`](chat_core::Store::detach_media).
pub(crate) fn detach_media(
    conn: &Connection,
    id: MediaId,
    message: MessageId,
) -> Result<(), Error> {
    conn.prepare_cached("UPDATE media SET message_id = NULL WHERE id = ?1 AND message_id = ?2")?
        .execute([id.to_string(), message.to_string()])?;
    Ok(())
}

/// [`Store::delete_media`](chat_core::Store::delete_media): the record as
/// it was (no write can come between on the single writer).
pub(crate) fn delete_media(conn: &Connection, id: MediaId) -> Result<Option<MediaRecord>, Error> {
    let record = read::media(conn, id)?;
    if record.is_some() {
        conn.prepare_cached("DELETE FROM media WHERE id = ?1")?
            .execute([id.to_string()])?;
    }
    Ok(record)
}

fn invalid_change(why: &str) -> Error {
    Error::Contract(CoreError::invalid(why.to_owned()))
}

/// The result of a membership change or group update: the chat after it.
fn membership(
    conn: &Connection,
    chat_id: ChatId,
    message: Option<Message>,
) -> Result<Applied, Error> {
    Ok(Applied::Membership {
        chat: load_chat(conn, chat_id)?,
        message,
    })
}

// --- maintenance ---------------------------------------------------------

/// [`Store::replace_texts`](chat_core::Store::replace_texts). The
/// connection has `secure_delete` on, so the texts replaced (plaintext
/// written before encryption at rest) are overwritten with zeros in the
/// file instead of left in free space. (Turning it on for this step alone
/// is not enough: pages are freed and rebalanced after the step.)
pub(crate) fn replace_texts(
    conn: &Connection,
    replacements: Vec<TextReplacement>,
) -> Result<usize, Error> {
    let mut replaced = 0;
    for r in replacements {
        let sql = match r.table {
            TextTable::Messages => {
                "UPDATE messages SET content = ?3 WHERE id = ?1 AND content = ?2"
            }
            TextTable::Reports => "UPDATE reports SET content = ?3 WHERE id = ?1 AND content = ?2",
        };
        replaced += conn
            .prepare_cached(sql)?
            .execute(params![r.row, r.old, r.new])?;
    }
    Ok(replaced)
}

/// [`Store::set_retention_watermark`](chat_core::Store::set_retention_watermark).
pub(crate) fn set_retention_watermark(
    conn: &Connection,
    chat: ChatId,
    seq: u64,
) -> Result<(), Error> {
    conn.prepare_cached(
        "UPDATE chats SET retention_swept_seq = max(retention_swept_seq, ?2) WHERE id = ?1",
    )?
    .execute(params![chat.to_string(), sql_u64(seq)])?;
    Ok(())
}

/// [`Store::set_meta`](chat_core::Store::set_meta).
pub(crate) fn set_meta(conn: &Connection, key: &str, value: &str) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

// --- MLS key packages ----------------------------------------------------

/// How many key packages (not last resort) `device` has.
fn key_package_count(conn: &Connection, user: &UserId, device: &DeviceId) -> Result<u64, Error> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM key_packages \
             WHERE user_id = ?1 AND device_id = ?2 AND last_resort = 0",
        )?
        .query_row(params![user.as_str(), device.as_str()], |r| r.get(0))?;
    Ok(rows::unsigned("key_packages.count", n)?)
}

/// [`Store::publish_key_packages`](chat_core::Store::publish_key_packages).
pub(crate) fn publish_key_packages(
    conn: &Connection,
    user: &UserId,
    device: &DeviceId,
    packages: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    at: Timestamp,
) -> Result<u64, Error> {
    let have = key_package_count(conn, user, device)?;
    if have + packages.len() as u64 > MAX_KEY_PACKAGES_PER_DEVICE {
        return Err(conflict(format!(
            "a device keeps at most {MAX_KEY_PACKAGES_PER_DEVICE} key packages; it has {have}"
        )));
    }
    let mut insert = conn.prepare_cached(
        "INSERT INTO key_packages (user_id, device_id, last_resort, bytes, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for package in &packages {
        insert.execute(params![
            user.as_str(),
            device.as_str(),
            false,
            package,
            at.as_millis()
        ])?;
    }
    if let Some(package) = last_resort {
        conn.prepare_cached(
            "DELETE FROM key_packages WHERE user_id = ?1 AND device_id = ?2 AND last_resort = 1",
        )?
        .execute(params![user.as_str(), device.as_str()])?;
        insert.execute(params![
            user.as_str(),
            device.as_str(),
            true,
            package,
            at.as_millis()
        ])?;
    }
    Ok(have + packages.len() as u64)
}

/// [`Store::claim_key_packages`](chat_core::Store::claim_key_packages): on
/// the single writer, so two claims never see the same row.
pub(crate) fn claim_key_packages(
    conn: &Connection,
    users: &[UserId],
) -> Result<Vec<ClaimedKeyPackage>, Error> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for user in users {
        if !seen.insert(user) {
            continue;
        }
        let devices: Vec<String> = conn
            .prepare_cached(
                "SELECT DISTINCT device_id FROM key_packages WHERE user_id = ?1 ORDER BY device_id",
            )?
            .query_map([user.as_str()], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for device in devices {
            let device_id = DeviceId::new(device).map_err(|e| Error::Corrupt {
                column: "key_packages.device_id",
                reason: e.to_string(),
            })?;
            let next: Option<(i64, Vec<u8>)> = conn
                .prepare_cached(
                    "SELECT id, bytes FROM key_packages \
                     WHERE user_id = ?1 AND device_id = ?2 AND last_resort = 0 \
                     ORDER BY id LIMIT 1",
                )?
                .query_row(params![user.as_str(), device_id.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let (key_package, last_resort) = match next {
                Some((id, bytes)) => {
                    conn.prepare_cached("DELETE FROM key_packages WHERE id = ?1")?
                        .execute([id])?;
                    (bytes, false)
                }
                None => {
                    let fallback: Option<Vec<u8>> = conn
                        .prepare_cached(
                            "SELECT bytes FROM key_packages \
                             WHERE user_id = ?1 AND device_id = ?2 AND last_resort = 1",
                        )?
                        .query_row(params![user.as_str(), device_id.as_str()], |r| r.get(0))
                        .optional()?;
                    match fallback {
                        Some(bytes) => (bytes, true),
                        None => continue,
                    }
                }
            };
            let remaining = key_package_count(conn, user, &device_id)?;
            out.push(ClaimedKeyPackage {
                user_id: user.clone(),
                device_id,
                key_package,
                last_resort,
                remaining,
            });
        }
    }
    Ok(out)
}

/// [`Store::checkpoint`](chat_core::Store::checkpoint): copies the WAL into
/// the database and truncates it, retrying while readers hold old
/// snapshots (each for one read).
pub(crate) fn checkpoint(
    path: &std::path::Path,
    config: &crate::SqliteConfig,
) -> Result<(), Error> {
    let conn = crate::connect(path, config)?;
    for _ in 0..50 {
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy == 0 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(Error::Contract(CoreError::backend(
        "the WAL stayed busy: it is truncated at a later checkpoint",
    )))
}

/// [`Store::pin_device_key`](chat_core::Store::pin_device_key).
pub(crate) fn pin_device_key(
    conn: &Connection,
    user: &UserId,
    device: &DeviceId,
    key: &[u8],
) -> Result<Vec<u8>, Error> {
    conn.prepare_cached(
        "INSERT INTO device_keys (user_id, device_id, signature_key) VALUES (?1, ?2, ?3) \
         ON CONFLICT (user_id, device_id) DO NOTHING",
    )?
    .execute(params![user.as_str(), device.as_str(), key])?;
    Ok(conn
        .prepare_cached(
            "SELECT signature_key FROM device_keys WHERE user_id = ?1 AND device_id = ?2",
        )?
        .query_row(params![user.as_str(), device.as_str()], |r| r.get(0))?)
}

//! Write operations.
//!
//! The changes of [`Store::apply`](chat_core::Store::apply) run on the
//! batch's connection, each inside its own savepoint (see `batch`), with
//! the row of their chat locked: the lock serializes every writer of one
//! chat on every node, so the checks a change makes (is the message
//! deleted, is the group full) still hold when it writes. The other writes
//! are single statements, or their own short transaction.

use std::collections::HashSet;

use chat_core::{
    AuditEntry, Chat, ChatId, DeviceId, MediaId, MediaRecord, Message, MessageId, MessageType,
    ParticipantSettings, Privacy, Report, Role, SystemEvent, Timestamp, UserId,
    mls::{ClaimedKeyPackage, MAX_KEY_PACKAGES_PER_DEVICE},
    store::{
        Applied, Change, CheckinAnswer, DAY_MS, ErasedRows, HeldReports, HeldSnapshot, NewChat,
        NewMessage, RECEIPT_HORIZON_MS, ReportResolution, TextReplacement, TextTable,
        receipt_range,
        rows::{self, Marked, direct_key, sql_u64, sql_u64_checked, unsigned},
    },
};
use sqlx::{PgConnection, PgPool, Row};

use crate::{
    Error,
    error::{conflict, invalid, not_found},
    read::{self, media_columns, report_columns},
};

/// Opens the savepoint each change of a batch runs in.
pub(crate) const SAVEPOINT: &str = "SAVEPOINT change";
/// Keeps what the change did.
pub(crate) const RELEASE: &str = "RELEASE SAVEPOINT change";
/// Undoes what the change did; the savepoint stays open.
const ROLLBACK: &str = "ROLLBACK TO SAVEPOINT change";
/// Undoes what the change did and ends the savepoint.
pub(crate) const ROLLBACK_AND_RELEASE: &str =
    "ROLLBACK TO SAVEPOINT change; RELEASE SAVEPOINT change";

/// The chat rows a batch's transaction holds locked.
///
/// The batch locks the rows of every chat it touches up front, in id
/// order (so that two batches never wait for each other in a cycle). A
/// chat that did not exist then is locked when a change needs it, inside
/// that change's savepoint: the lock is kept only if the change is.
#[derive(Debug, Default)]
pub(crate) struct Locks {
    held: HashSet<ChatId>,
    pending: Vec<ChatId>,
}

impl Locks {
    pub(crate) fn new(held: HashSet<ChatId>) -> Self {
        Self {
            held,
            pending: Vec::new(),
        }
    }

    pub(crate) fn holds(&self, chat: ChatId) -> bool {
        self.held.contains(&chat)
    }

    /// Locks the chat's row unless the transaction holds it; whether the
    /// chat exists.
    async fn ensure(&mut self, conn: &mut PgConnection, chat: ChatId) -> Result<bool, Error> {
        if self.held.contains(&chat) {
            return Ok(true);
        }
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM chats WHERE id = $1 FOR NO KEY UPDATE")
                .bind(chat.to_string())
                .fetch_optional(conn)
                .await?;
        if found.is_some() {
            self.pending.push(chat);
        }
        Ok(found.is_some())
    }

    /// The change's savepoint was released: its locks are the batch's.
    pub(crate) fn keep_pending(&mut self) {
        self.held.extend(self.pending.drain(..));
    }

    /// The change's savepoint was rolled back, and its locks with it.
    pub(crate) fn drop_pending(&mut self) {
        self.pending.clear();
    }
}

/// The message that posting `new` stores with `seq`.
pub(crate) fn stored(new: NewMessage, seq: u64) -> Message {
    new.into_message(seq)
}

/// `new.media`, `new.system` and `new.mls` as JSON text.
pub(crate) fn json_columns(new: &NewMessage) -> Result<JsonColumns, Error> {
    Ok((
        new.media.as_ref().map(serde_json::to_string).transpose()?,
        new.system.as_ref().map(serde_json::to_string).transpose()?,
        new.mls.as_ref().map(serde_json::to_string).transpose()?,
    ))
}

/// What [`json_columns`] gives.
pub(crate) type JsonColumns = (Option<String>, Option<String>, Option<String>);

/// Takes the chat's next seq (moving `last_activity` to the message's
/// time) and stores `new` with it, in one statement. `None` if the chat
/// does not exist or `(sender, client_msg_id)` is taken: the seq was taken
/// all the same, so the caller rolls back to its savepoint.
async fn insert_next(conn: &mut PgConnection, new: &NewMessage) -> Result<Option<u64>, Error> {
    let (media, system, mls) = json_columns(new)?;
    let seq: Option<i64> = sqlx::query_scalar(
        "WITH s AS ( \
           UPDATE chats SET last_seq = last_seq + 1, last_activity = $9 \
           WHERE id = $2 RETURNING last_seq) \
         INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, content, media, \
           reply_to, client_msg_id, created_at, deleted, system, mls) \
         SELECT $1, $2, s.last_seq, s.last_seq, $3, $4, $5, $6::jsonb, $7, $8, $9, FALSE, \
           $10::jsonb, $11::jsonb FROM s \
         ON CONFLICT (sender_id, client_msg_id) WHERE client_msg_id IS NOT NULL DO NOTHING \
         RETURNING seq",
    )
    .bind(new.id.to_string())
    .bind(new.chat_id.to_string())
    .bind(new.sender_id.as_str())
    .bind(new.kind.as_str())
    .bind(new.content.as_deref())
    .bind(media)
    .bind(new.reply_to.map(|id| id.to_string()))
    .bind(new.client_msg_id.as_deref())
    .bind(new.created_at.as_millis())
    .bind(system)
    .bind(mls)
    .fetch_optional(conn)
    .await?;
    Ok(seq.map(|s| unsigned("messages.seq", s)).transpose()?)
}

/// Takes the chat's next seq and moves its `last_activity` to `at`.
async fn next_seq(conn: &mut PgConnection, chat: ChatId, at: Timestamp) -> Result<u64, Error> {
    let seq: Option<i64> = sqlx::query_scalar(
        "UPDATE chats SET last_seq = last_seq + 1, last_activity = $2 \
         WHERE id = $1 RETURNING last_seq",
    )
    .bind(chat.to_string())
    .bind(at.as_millis())
    .fetch_optional(conn)
    .await?;
    let seq = seq.ok_or_else(|| not_found("chat not found"))?;
    Ok(unsigned("chats.last_seq", seq)?)
}

async fn role_of(
    conn: &mut PgConnection,
    chat: ChatId,
    user: &UserId,
) -> Result<Option<Role>, Error> {
    let role: Option<String> =
        sqlx::query_scalar("SELECT role FROM participants WHERE chat_id = $1 AND user_id = $2")
            .bind(chat.to_string())
            .bind(user.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(role
        .map(|r| rows::parse("participants.role", &r))
        .transpose()?)
}

async fn load_chat(conn: &mut PgConnection, chat: ChatId) -> Result<Chat, Error> {
    read::chat(conn, chat)
        .await?
        .ok_or_else(|| not_found("chat not found"))
}

/// The message `id` of `chat`, with its reactions; `NotFound` if it is not
/// a message of `chat`.
async fn message_in_chat(
    conn: &mut PgConnection,
    chat: ChatId,
    id: MessageId,
) -> Result<Message, Error> {
    Ok(rows::message_in_chat(read::message(conn, id).await?, chat)?)
}

/// Applies one change of [`Store::apply`](chat_core::Store::apply), inside
/// the savepoint ([`SAVEPOINT`]) of the batch's transaction.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    locks: &mut Locks,
    change: Change,
) -> Result<Applied, Error> {
    // The heir is chosen here, under the chat's lock, from the chat as the
    // batch's earlier changes left it.
    let change = match change {
        Change::EnsureAdmin { chat_id, by, at } => {
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            let chat = load_chat(conn, chat_id).await?;
            match chat_core::store::promotion_of_heir(&chat, &by, at) {
                Some(promotion) => promotion,
                None => {
                    return Ok(Applied::Membership {
                        chat,
                        message: None,
                    });
                }
            }
        }
        // Rights that must still hold at commit, checked under the chat's
        // lock. (The engine never wraps an EnsureAdmin.)
        Change::Authorized { by, role, change } => {
            let chat_id = change.chat_id();
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            let held = role_of(conn, chat_id, &by).await?;
            chat_core::store::check_authority(held, &by, role)?;
            *change
        }
        other => other,
    };
    let event = change.system_event();
    match change {
        Change::Post(new) => post(conn, locks, new).await,
        Change::Edit {
            chat_id,
            message_id,
            content,
            at,
        } => {
            locks.ensure(conn, chat_id).await?;
            let mut message = message_in_chat(conn, chat_id, message_id).await?;
            rows::check_not_deleted(&message)?;
            let seq = next_seq(conn, chat_id, at).await?;
            sqlx::query(
                "UPDATE messages SET content = $2, edited_at = $3, updated_seq = $4 WHERE id = $1",
            )
            .bind(message_id.to_string())
            .bind(content.as_str())
            .bind(at.as_millis())
            .bind(sql_u64(seq))
            .execute(&mut *conn)
            .await?;
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
            locks.ensure(conn, chat_id).await?;
            let mut message = message_in_chat(conn, chat_id, message_id).await?;
            if message.deleted {
                return Ok(Applied::Updated {
                    message,
                    changed: false,
                });
            }
            let seq = next_seq(conn, chat_id, at).await?;
            sqlx::query(
                "WITH gone AS (DELETE FROM reactions WHERE message_id = $1) \
                 UPDATE messages SET content = NULL, media = NULL, deleted = TRUE, \
                   updated_seq = $2 WHERE id = $1",
            )
            .bind(message_id.to_string())
            .bind(sql_u64(seq))
            .execute(&mut *conn)
            .await?;
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
        } => {
            locks.ensure(conn, chat_id).await?;
            react(
                conn,
                chat_id,
                message_id,
                user_id,
                emoji,
                add,
                max_distinct,
                at,
            )
            .await
        }
        Change::AddParticipant {
            chat_id,
            user_id,
            role,
            by,
            max_participants,
            at,
        } => {
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            let row = sqlx::query(
                "SELECT (SELECT role FROM participants WHERE chat_id = $1 AND user_id = $2) \
                   AS role, \
                 (SELECT COUNT(*) FROM participants WHERE chat_id = $1) AS count",
            )
            .bind(chat_id.to_string())
            .bind(user_id.as_str())
            .fetch_one(&mut *conn)
            .await?;
            let count: i64 = row.try_get("count")?;
            rows::check_can_join(
                row.try_get::<Option<String>, _>("role")?.is_some(),
                usize::try_from(count).unwrap_or(usize::MAX),
                max_participants,
            )?;
            let message = system_message(conn, chat_id, event, by, at).await?;
            sqlx::query(
                "INSERT INTO participants (chat_id, user_id, role, joined_at, delivered_seq, \
                   read_seq, visible_from_seq, ordinal) \
                 SELECT $1, $2, $3, $4, $5, $5, $5, COALESCE(MAX(ordinal), 0) + 1 \
                 FROM participants WHERE chat_id = $1",
            )
            .bind(chat_id.to_string())
            .bind(user_id.as_str())
            .bind(role.as_str())
            .bind(at.as_millis())
            .bind(sql_u64(message.seq))
            .execute(&mut *conn)
            .await?;
            membership(conn, chat_id, Some(message)).await
        }
        Change::RemoveParticipant {
            chat_id,
            user_id,
            by,
            at,
        } => {
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            if role_of(conn, chat_id, &user_id).await?.is_none() {
                return Err(not_found("not a participant"));
            }
            let message = system_message(conn, chat_id, event, by, at).await?;
            // A direct chat one side left is no longer the pair's: freeing
            // its key lets the pair open a new one (find_direct_chat and
            // create_chat go by the key).
            sqlx::query(
                "WITH gone AS (DELETE FROM participants WHERE chat_id = $1 AND user_id = $2) \
                 UPDATE chats SET direct_key = NULL \
                 WHERE id = $1 AND kind = 'direct' AND direct_key IS NOT NULL",
            )
            .bind(chat_id.to_string())
            .bind(user_id.as_str())
            .execute(&mut *conn)
            .await?;
            membership(conn, chat_id, Some(message)).await
        }
        Change::SetRole {
            chat_id,
            user_id,
            role,
            by,
            at,
        } => {
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            let current = role_of(conn, chat_id, &user_id)
                .await?
                .ok_or_else(|| not_found("not a participant"))?;
            if current == role {
                return membership(conn, chat_id, None).await;
            }
            if current == Role::Admin {
                rows::check_keeps_admin(&load_chat(conn, chat_id).await?, &user_id, role)?;
            }
            let message = system_message(conn, chat_id, event, by, at).await?;
            sqlx::query("UPDATE participants SET role = $3 WHERE chat_id = $1 AND user_id = $2")
                .bind(chat_id.to_string())
                .bind(user_id.as_str())
                .bind(role.as_str())
                .execute(&mut *conn)
                .await?;
            membership(conn, chat_id, Some(message)).await
        }
        Change::UpdateGroup {
            chat_id,
            patch,
            by,
            at,
        } => {
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            // An empty patch still records its system message, as the
            // other stores do.
            let message = system_message(conn, chat_id, event, by, at).await?;
            // NULL leaves a field as it is; '' clears it.
            sqlx::query(
                "UPDATE chats SET \
                   name = CASE WHEN $2::text IS NULL THEN name ELSE NULLIF($2, '') END, \
                   description = CASE WHEN $3::text IS NULL THEN description \
                     ELSE NULLIF($3, '') END, \
                   avatar_url = CASE WHEN $4::text IS NULL THEN avatar_url \
                     ELSE NULLIF($4, '') END \
                 WHERE id = $1",
            )
            .bind(chat_id.to_string())
            .bind(patch.name.as_deref())
            .bind(patch.description.as_deref())
            .bind(patch.avatar_url.as_deref())
            .execute(&mut *conn)
            .await?;
            membership(conn, chat_id, Some(message)).await
        }
        Change::SetRetention {
            chat_id,
            seconds,
            by,
            at,
        } => {
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            let seconds = seconds.map(sql_u64);
            let current: Option<i64> =
                sqlx::query_scalar("SELECT retention_secs FROM chats WHERE id = $1")
                    .bind(chat_id.to_string())
                    .fetch_one(&mut *conn)
                    .await?;
            if current == seconds {
                return membership(conn, chat_id, None).await;
            }
            let message = system_message(conn, chat_id, event, by, at).await?;
            sqlx::query("UPDATE chats SET retention_secs = $2 WHERE id = $1")
                .bind(chat_id.to_string())
                .bind(seconds)
                .execute(&mut *conn)
                .await?;
            membership(conn, chat_id, Some(message)).await
        }
        Change::Mark {
            chat_id,
            user_id,
            delivered_up_to,
            read_up_to,
            at,
        } => {
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            mark(conn, chat_id, &user_id, (delivered_up_to, read_up_to), at).await
        }
        Change::MlsCommit {
            expected_epoch,
            group,
            message,
            membership: with,
        } => {
            // The chat's lock orders this against every other change of the
            // chat, on any node: the epoch read is the one that holds.
            let chat_id = message.chat_id;
            if !locks.ensure(conn, chat_id).await? {
                return Err(not_found("chat not found"));
            }
            let current = read::mls_group(&mut *conn, chat_id).await?.map(|g| g.epoch);
            rows::check_mls_epoch(current, expected_epoch)?;
            // Inside this change's savepoint: the membership change, the
            // group and the commit's log entry are all written, or none.
            let system = match with {
                Some(change) => match Box::pin(apply(conn, locks, *change)).await? {
                    Applied::Membership { message, .. } => Some(message),
                    _ => return Err(invalid("not a membership change")),
                },
                None => None,
            };
            sqlx::query(
                "INSERT INTO mls_groups (chat_id, epoch, members, state) \
                 VALUES ($1, $2, $3::jsonb, $4) \
                 ON CONFLICT (chat_id) DO UPDATE SET epoch = excluded.epoch, \
                   members = excluded.members, state = excluded.state",
            )
            .bind(chat_id.to_string())
            .bind(sql_u64(group.epoch))
            .bind(rows::mls_members_json(&group.members))
            .bind(&group.state)
            .execute(&mut *conn)
            .await?;
            let posted = post(conn, locks, message).await?;
            match (system, posted) {
                (
                    Some(system),
                    Applied::Posted {
                        message: commit, ..
                    },
                ) => Ok(Applied::MlsMembership {
                    chat: load_chat(conn, chat_id).await?,
                    message: system,
                    commit: Box::new(commit),
                }),
                (_, posted) => Ok(posted),
            }
        }
        other => Err(invalid(format!(
            "this store does not know the change {other:?}"
        ))),
    }
}

/// [`Change::Post`]: checks in the order of the other stores (the key
/// first, then the chat, the sender, `reply_to`), then takes the seq and
/// inserts in one statement.
async fn post(
    conn: &mut PgConnection,
    locks: &mut Locks,
    new: NewMessage,
) -> Result<Applied, Error> {
    let exists = locks.ensure(conn, new.chat_id).await?;
    let chat = new.chat_id.to_string();
    let probe = sqlx::query(
        "SELECT (SELECT id FROM messages WHERE sender_id = $2 AND client_msg_id = $3) AS dup, \
           EXISTS (SELECT 1 FROM participants WHERE chat_id = $1 AND user_id = $2) AS member, \
           (SELECT chat_id FROM messages WHERE id = $4) AS reply_chat",
    )
    .bind(chat.as_str())
    .bind(new.sender_id.as_str())
    .bind(new.client_msg_id.as_deref())
    .bind(new.reply_to.map(|id| id.to_string()))
    .fetch_one(&mut *conn)
    .await?;
    if let Some(dup) = probe.try_get::<Option<&str>, _>("dup")? {
        let id: MessageId = rows::parse("messages.id", dup)?;
        let existing = read::message(&mut *conn, id)
            .await?
            .ok_or_else(|| Error::corrupt("messages.id", "the duplicate vanished"))?;
        return Ok(rows::repost(existing, &new)?);
    }
    if !exists {
        return Err(not_found("chat not found"));
    }
    if new.kind != MessageType::System && !probe.try_get::<bool, _>("member")? {
        return Err(not_found("chat not found"));
    }
    if new.reply_to.is_some()
        && probe.try_get::<Option<&str>, _>("reply_chat")? != Some(chat.as_str())
    {
        return Err(not_found("reply_to message not found in this chat"));
    }
    if let Some(seq) = insert_next(conn, &new).await? {
        return Ok(Applied::Posted {
            message: stored(new, seq),
            duplicate: false,
        });
    }
    // A post of the same key on another connection committed after the
    // probe (in another chat: this chat's writers wait for our lock). Undo
    // the seq this statement took and answer with the stored message.
    sqlx::raw_sql(ROLLBACK).execute(&mut *conn).await?;
    locks.drop_pending();
    let cid = new.client_msg_id.as_deref().unwrap_or_default();
    let existing = read::by_client_id(&mut *conn, &new.sender_id, cid)
        .await?
        .ok_or_else(|| Error::corrupt("messages.client_msg_id", "the duplicate vanished"))?;
    Ok(rows::repost(existing, &new)?)
}

/// Stores the system message of a membership change or group update.
async fn system_message(
    conn: &mut PgConnection,
    chat_id: ChatId,
    system: Option<SystemEvent>,
    by: UserId,
    at: Timestamp,
) -> Result<Message, Error> {
    let new = NewMessage::system(chat_id, by, system, at);
    let seq = insert_next(conn, &new)
        .await?
        .ok_or_else(|| not_found("chat not found"))?;
    Ok(stored(new, seq))
}

#[allow(clippy::too_many_arguments)]
async fn react(
    conn: &mut PgConnection,
    chat_id: ChatId,
    message_id: MessageId,
    user_id: UserId,
    emoji: String,
    add: bool,
    max_distinct: usize,
    at: Timestamp,
) -> Result<Applied, Error> {
    let mut message = message_in_chat(conn, chat_id, message_id).await?;
    if !rows::reaction_changes(&message, &user_id, &emoji, add, max_distinct)? {
        return Ok(Applied::Updated {
            message,
            changed: false,
        });
    }
    let seq = next_seq(conn, chat_id, at).await?;
    let sql = if add {
        "WITH r AS (INSERT INTO reactions (message_id, emoji, user_id, ordinal) \
           SELECT $1, $2, $3, COALESCE(MAX(ordinal), 0) + 1 FROM reactions \
           WHERE message_id = $1) \
         UPDATE messages SET updated_seq = $4 WHERE id = $1"
    } else {
        "WITH r AS (DELETE FROM reactions \
           WHERE message_id = $1 AND emoji = $2 AND user_id = $3) \
         UPDATE messages SET updated_seq = $4 WHERE id = $1"
    };
    sqlx::query(sql)
        .bind(message_id.to_string())
        .bind(emoji.as_str())
        .bind(user_id.as_str())
        .bind(sql_u64(seq))
        .execute(&mut *conn)
        .await?;
    rows::react(&mut message, &user_id, &emoji, add, seq);
    Ok(Applied::Updated {
        message,
        changed: true,
    })
}

async fn mark(
    conn: &mut PgConnection,
    chat_id: ChatId,
    user_id: &UserId,
    (delivered_up_to, read_up_to): (u64, u64),
    at: Timestamp,
) -> Result<Applied, Error> {
    let row = sqlx::query(
        "SELECT c.last_seq, p.delivered_seq, p.read_seq \
         FROM chats c JOIN participants p ON p.chat_id = c.id \
         WHERE c.id = $1 AND p.user_id = $2",
    )
    .bind(chat_id.to_string())
    .bind(user_id.as_str())
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| not_found("not a participant"))?;
    let (delivered_was, read_was) = (
        unsigned("participants.delivered_seq", row.try_get("delivered_seq")?)?,
        unsigned("participants.read_seq", row.try_get("read_seq")?)?,
    );
    let marked = Marked::new(
        unsigned("chats.last_seq", row.try_get("last_seq")?)?,
        (delivered_was, read_was),
        delivered_up_to,
        read_up_to,
    );
    if !marked.moved() {
        return Ok(marked.applied(Vec::new()));
    }
    sqlx::query(
        "UPDATE participants SET delivered_seq = $3, read_seq = $4 \
         WHERE chat_id = $1 AND user_id = $2",
    )
    .bind(chat_id.to_string())
    .bind(user_id.as_str())
    .bind(sql_u64(marked.delivered_seq))
    .bind(sql_u64(marked.read_seq))
    .execute(&mut *conn)
    .await?;
    // The receipt times (see `receipt_range`): by the unique (chat_id, seq)
    // index of messages, at most RECEIPT_WINDOW rows each.
    let since = at.as_millis().saturating_sub(RECEIPT_HORIZON_MS);
    let mut first_delivered = Vec::new();
    if marked.delivered_moved {
        let (lo, hi) = receipt_range(delivered_was, marked.delivered_seq);
        let created: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO receipt_times (chat_id, seq, created_at, delivered_at) \
             SELECT chat_id, seq, created_at, $6 FROM messages \
             WHERE chat_id = $1 AND seq > $2 AND seq <= $3 AND sender_id <> $4 \
               AND kind NOT IN ('system', 'mls_commit') AND created_at >= $5 \
             ON CONFLICT (chat_id, seq) DO NOTHING \
             RETURNING created_at",
        )
        .bind(chat_id.to_string())
        .bind(sql_u64(lo))
        .bind(sql_u64(hi))
        .bind(user_id.as_str())
        .bind(since)
        .bind(at.as_millis())
        .fetch_all(&mut *conn)
        .await?;
        first_delivered = created.into_iter().map(Timestamp::from_millis).collect();
    }
    if marked.read_moved {
        let (lo, hi) = receipt_range(read_was, marked.read_seq);
        // Not the marking user's own messages: another member may have had
        // them delivered.
        sqlx::query(
            "UPDATE receipt_times r SET read_at = $5 FROM messages m \
             WHERE r.chat_id = $1 AND r.seq > $2 AND r.seq <= $3 \
               AND r.read_at IS NULL AND r.created_at >= $4 \
               AND m.chat_id = r.chat_id AND m.seq = r.seq AND m.sender_id <> $6",
        )
        .bind(chat_id.to_string())
        .bind(sql_u64(lo))
        .bind(sql_u64(hi))
        .bind(since)
        .bind(at.as_millis())
        .bind(user_id.as_str())
        .execute(&mut *conn)
        .await?;
    }
    Ok(marked.applied(first_delivered))
}

/// [`Store::create_chat`](chat_core::Store::create_chat), in its own
/// transaction. The unique `direct_key` makes concurrent creations of one
/// pair's chat (on any node) store one chat; the losers return it.
pub(crate) async fn create_chat(pool: &PgPool, new: NewChat) -> Result<(Chat, bool), Error> {
    let pair = rows::direct_pair(&new)?.map(|(a, b)| (a.clone(), b.clone()));
    let key = match &pair {
        Some((a, b)) => {
            if let Some(existing) = read::direct_chat(pool, a, b).await? {
                return Ok((existing, false));
            }
            Some(direct_key(a, b))
        }
        None => None,
    };
    let chat = new.into_chat();
    let founders: Vec<(UserId, Role)> = chat
        .participants
        .iter()
        .map(|p| (p.user_id.clone(), p.role))
        .collect();
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    let created: Option<String> = sqlx::query_scalar(
        "INSERT INTO chats (id, kind, name, description, avatar_url, encryption, last_seq, \
           last_activity, created_at, direct_key) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $7, $8) \
         ON CONFLICT (direct_key) DO NOTHING RETURNING id",
    )
    .bind(chat.id.to_string())
    .bind(chat.kind.as_str())
    .bind(chat.name.as_deref())
    .bind(chat.description.as_deref())
    .bind(chat.avatar_url.as_deref())
    .bind(chat.encryption.as_str())
    .bind(chat.created_at.as_millis())
    .bind(key.as_deref())
    .fetch_optional(&mut *tx)
    .await?;
    if created.is_none() {
        // The pair's chat was created (and committed) since we looked.
        tx.rollback().await?;
        let Some((a, b)) = &pair else {
            return Err(invalid("a direct chat has exactly two participants"));
        };
        let existing = read::direct_chat(pool, a, b)
            .await?
            .ok_or_else(|| Error::corrupt("chats.direct_key", "the direct chat vanished"))?;
        return Ok((existing, false));
    }
    let users: Vec<&str> = founders.iter().map(|(u, _)| u.as_str()).collect();
    let roles: Vec<&str> = founders.iter().map(|(_, r)| r.as_str()).collect();
    sqlx::query(
        "INSERT INTO participants (chat_id, user_id, role, joined_at, delivered_seq, read_seq, \
           visible_from_seq, ordinal) \
         SELECT $1, u.user_id, u.role, $4, 0, 0, 0, u.ordinal \
         FROM UNNEST($2::text[], $3::text[]) WITH ORDINALITY AS u(user_id, role, ordinal)",
    )
    .bind(chat.id.to_string())
    .bind(&users)
    .bind(&roles)
    .bind(chat.created_at.as_millis())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((chat, true))
}

/// [`Store::set_block`](chat_core::Store::set_block).
pub(crate) async fn set_block(
    pool: &PgPool,
    blocker: &UserId,
    blocked: &UserId,
    on: bool,
) -> Result<bool, Error> {
    let sql = if on {
        "INSERT INTO blocks (blocker, blocked) VALUES ($1, $2) ON CONFLICT DO NOTHING"
    } else {
        "DELETE FROM blocks WHERE blocker = $1 AND blocked = $2"
    };
    let done = sqlx::query(sql)
        .bind(blocker.as_str())
        .bind(blocked.as_str())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// [`Store::set_last_seen`](chat_core::Store::set_last_seen).
pub(crate) async fn set_last_seen(
    pool: &PgPool,
    user: &UserId,
    at: Timestamp,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO users (user_id, last_seen) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET last_seen = excluded.last_seen",
    )
    .bind(user.as_str())
    .bind(at.as_millis())
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::record_session`](chat_core::Store::record_session): one more
/// session of the user on the UTC day of `at`.
pub(crate) async fn record_session(
    pool: &PgPool,
    user: &UserId,
    at: Timestamp,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO daily_sessions (day, user_id, sessions) VALUES ($1, $2, 1) \
         ON CONFLICT (day, user_id) DO UPDATE \
         SET sessions = daily_sessions.sessions + 1",
    )
    .bind(at.as_millis().div_euclid(DAY_MS))
    .bind(user.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::set_privacy`](chat_core::Store::set_privacy).
pub(crate) async fn set_privacy(pool: &PgPool, user: &UserId, p: Privacy) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO users (user_id, read_receipts, typing, presence, mood_sharing) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (user_id) DO UPDATE SET read_receipts = excluded.read_receipts, \
           typing = excluded.typing, presence = excluded.presence, \
           mood_sharing = excluded.mood_sharing",
    )
    .bind(user.as_str())
    .bind(p.read_receipts)
    .bind(p.typing)
    .bind(p.presence)
    .bind(p.mood_sharing)
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::answer_checkin`](chat_core::Store::answer_checkin): one
/// upsert on the primary key, so concurrent answers of one user (on any
/// node) leave one row, the last to commit. A changed answer keeps the row's
/// `ordinal`, its place in the order of first answers.
pub(crate) async fn answer_checkin(pool: &PgPool, a: CheckinAnswer) -> Result<(), Error> {
    let option = i32::try_from(a.option).map_err(|_| invalid("option is too large"))?;
    sqlx::query(
        "INSERT INTO checkin_answers (message_id, chat_id, user_id, option, answered_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (message_id, user_id) DO UPDATE SET option = excluded.option, \
           answered_at = excluded.answered_at",
    )
    .bind(a.message_id.to_string())
    .bind(a.chat_id.to_string())
    .bind(a.user_id.as_str())
    .bind(option)
    .bind(a.at.as_millis())
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::set_suspension`](chat_core::Store::set_suspension).
pub(crate) async fn set_suspension(
    pool: &PgPool,
    user: &UserId,
    until: Option<Timestamp>,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO users (user_id, suspended_until) VALUES ($1, $2) \
         ON CONFLICT (user_id) DO UPDATE SET suspended_until = excluded.suspended_until",
    )
    .bind(user.as_str())
    .bind(until.map(Timestamp::as_millis))
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::set_silenced`](chat_core::Store::set_silenced).
pub(crate) async fn set_silenced(
    pool: &PgPool,
    chat: ChatId,
    user: &UserId,
    until: Option<Timestamp>,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "UPDATE participants SET silenced_until = $3 WHERE chat_id = $1 AND user_id = $2",
    )
    .bind(chat.to_string())
    .bind(user.as_str())
    .bind(until.map(Timestamp::as_millis))
    .execute(pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// [`Store::set_participant_settings`](chat_core::Store::set_participant_settings).
pub(crate) async fn set_participant_settings(
    pool: &PgPool,
    chat: ChatId,
    user: &UserId,
    settings: ParticipantSettings,
) -> Result<(), Error> {
    let done = sqlx::query(
        "UPDATE participants SET muted_until = $3, hidden_seq = $4 \
         WHERE chat_id = $1 AND user_id = $2",
    )
    .bind(chat.to_string())
    .bind(user.as_str())
    .bind(settings.muted_until.map(Timestamp::as_millis))
    .bind(settings.hidden_seq.map(sql_u64))
    .execute(pool)
    .await?;
    if done.rows_affected() == 0 {
        return Err(not_found("not a participant"));
    }
    Ok(())
}

/// How often [`insert_report`] tries again when the open report it
/// collided with was closed before it could read it.
const REPORT_ATTEMPTS: usize = 3;

/// [`Store::insert_report`](chat_core::Store::insert_report). The partial
/// unique index on open reports makes a concurrent duplicate (on any node)
/// return the first.
pub(crate) async fn insert_report(pool: &PgPool, r: Report) -> Result<Report, Error> {
    let media = r.media.as_ref().map(serde_json::to_string).transpose()?;
    for _ in 0..REPORT_ATTEMPTS {
        let done = sqlx::query(
            "INSERT INTO reports (id, reporter_id, chat_id, message_id, reported_user_id, \
               reason, content, status, created_at, resolved_at, resolved_by, resolution_note, \
               kind, media, legal_hold) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (reporter_id, message_id) WHERE status = 'open' DO NOTHING",
        )
        .bind(r.id.to_string())
        .bind(r.reporter_id.as_str())
        .bind(r.chat_id.to_string())
        .bind(r.message_id.to_string())
        .bind(r.reported_user_id.as_str())
        .bind(r.reason.as_str())
        .bind(r.content.as_deref())
        .bind(r.status.as_str())
        .bind(r.created_at.as_millis())
        .bind(r.resolved_at.map(Timestamp::as_millis))
        .bind(r.resolved_by.as_ref().map(UserId::as_str))
        .bind(r.resolution_note.as_deref())
        .bind(r.kind.as_str())
        .bind(media.as_deref())
        .bind(r.legal_hold)
        .execute(pool)
        .await?;
        if done.rows_affected() > 0 {
            return Ok(r);
        }
        if let Some(existing) = read::open_report(pool, &r.reporter_id, r.message_id).await? {
            return Ok(existing);
        }
    }
    Err(conflict(
        "the reporter's open report of this message keeps changing",
    ))
}

/// [`Store::resolve_report`](chat_core::Store::resolve_report): one
/// conditional UPDATE, so a report is closed once, also between nodes. It
/// leaves the snapshot as [`rows::resolve`] does: a report on legal hold
/// loses its content and media. Deciding that in the statement (not from
/// a read before it) sees a hold that `hold_reports` set concurrently.
pub(crate) async fn resolve_report(pool: &PgPool, res: ReportResolution) -> Result<Report, Error> {
    let row = sqlx::query(concat!(
        "UPDATE reports SET status = $2, resolved_at = $3, resolved_by = $4, \
           resolution_note = $5, \
           content = CASE WHEN legal_hold THEN NULL ELSE content END, \
           media = CASE WHEN legal_hold THEN NULL ELSE media END \
         WHERE id = $1 AND status = 'open' RETURNING ",
        report_columns!()
    ))
    .bind(res.id.to_string())
    .bind(res.status.as_str())
    .bind(res.at.as_millis())
    .bind(res.by.as_str())
    .bind(res.note.as_deref())
    .fetch_optional(pool)
    .await?;
    match row {
        Some(row) => read::report_from_row(&row),
        None => match read::report(pool, res.id).await? {
            None => Err(not_found("report not found")),
            Some(r) => {
                rows::check_open(&r)?;
                Err(conflict("report changed concurrently"))
            }
        },
    }
}

/// [`Store::append_audit`](chat_core::Store::append_audit): a duplicate id
/// is a unique violation, which is a `Conflict`.
pub(crate) async fn append_audit(pool: &PgPool, e: AuditEntry) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO audit_log (id, at, actor_id, action, target_type, target_id, chat_id, note) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(e.id.to_string())
    .bind(e.at.as_millis())
    .bind(e.actor_id.as_str())
    .bind(e.action.as_str())
    .bind(e.target_type.as_str())
    .bind(e.target_id.as_str())
    .bind(e.chat_id.map(|c| c.to_string()))
    .bind(e.note.as_deref())
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::pseudonymize_audit`](chat_core::Store::pseudonymize_audit):
/// one `UPDATE` of the entries that name `user`.
pub(crate) async fn pseudonymize_audit(
    pool: &PgPool,
    user: &UserId,
    pseudonym: &UserId,
) -> Result<u64, Error> {
    let done = sqlx::query(
        "UPDATE audit_log SET \
           actor_id = CASE WHEN actor_id = $1 THEN $2 ELSE actor_id END, \
           target_id = CASE WHEN target_type = 'user' AND target_id = $1 \
             THEN $2 ELSE target_id END \
         WHERE actor_id = $1 OR (target_type = 'user' AND target_id = $1)",
    )
    .bind(user.as_str())
    .bind(pseudonym.as_str())
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// [`Store::insert_media`](chat_core::Store::insert_media); a taken id is a
/// unique violation, so a `Conflict`.
pub(crate) async fn insert_media(pool: &PgPool, m: MediaRecord) -> Result<(), Error> {
    let size = sql_u64_checked("size", m.size)?;
    let duration = m
        .duration_ms
        .map(|d| sql_u64_checked("duration_ms", d))
        .transpose()?;
    sqlx::query(
        "INSERT INTO media (id, chat_id, uploader_id, kind, mime, size, width, height, \
           duration_ms, name, has_thumbnail, sealed, message_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(m.id.to_string())
    .bind(m.chat_id.to_string())
    .bind(m.uploader_id.as_str())
    .bind(m.kind.as_str())
    .bind(m.mime.as_str())
    .bind(size)
    .bind(m.width.map(i64::from))
    .bind(m.height.map(i64::from))
    .bind(duration)
    .bind(m.name.as_deref())
    .bind(m.has_thumbnail)
    .bind(m.sealed)
    .bind(m.message_id.map(|id| id.to_string()))
    .bind(m.created_at.as_millis())
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::attach_media`](chat_core::Store::attach_media): one
/// compare-and-set `UPDATE`. A concurrent attach waits for the row lock,
/// then finds `message_id` set and changes nothing.
pub(crate) async fn attach_media(
    pool: &PgPool,
    id: MediaId,
    message: MessageId,
) -> Result<bool, Error> {
    let done = sqlx::query("UPDATE media SET message_id = $2 WHERE id = $1 AND message_id IS NULL")
        .bind(id.to_string())
        .bind(message.to_string())
        .execute(pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// [`Store::detach_media`](chat_core::Store::detach_media).
pub(crate) async fn detach_media(
    pool: &PgPool,
    id: MediaId,
    message: MessageId,
) -> Result<(), Error> {
    sqlx::query("UPDATE media SET message_id = NULL WHERE id = $1 AND message_id = $2")
        .bind(id.to_string())
        .bind(message.to_string())
        .execute(pool)
        .await?;
    Ok(())
}

/// [`Store::delete_media`](chat_core::Store::delete_media): the record as
/// the `DELETE` removed it.
pub(crate) async fn delete_media(pool: &PgPool, id: MediaId) -> Result<Option<MediaRecord>, Error> {
    sqlx::query(concat!(
        "DELETE FROM media WHERE id = $1 RETURNING ",
        media_columns!()
    ))
    .bind(id.to_string())
    .fetch_optional(pool)
    .await?
    .as_ref()
    .map(read::media_from_row)
    .transpose()
}

/// The result of a membership change or group update: the chat after it.
async fn membership(
    conn: &mut PgConnection,
    chat_id: ChatId,
    message: Option<Message>,
) -> Result<Applied, Error> {
    Ok(Applied::Membership {
        chat: load_chat(conn, chat_id).await?,
        message,
    })
}

// --- erasure -------------------------------------------------------------

/// [`Store::hold_reports`](chat_core::Store::hold_reports), in one
/// transaction: the snapshots given first (only on open reports of
/// `user`), then every report of `user` moved to `pseudonym` by one
/// `UPDATE`, which decides open (held) or closed (snapshot destroyed) on
/// the row it locks, so a report resolved meanwhile is counted as closed.
pub(crate) async fn hold_reports(
    pool: &PgPool,
    user: &UserId,
    pseudonym: &UserId,
    held: Vec<HeldSnapshot>,
) -> Result<HeldReports, Error> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    if !held.is_empty() {
        let ids: Vec<String> = held.iter().map(|h| h.id.to_string()).collect();
        let contents: Vec<Option<String>> = held.into_iter().map(|h| h.content).collect();
        sqlx::query(
            "UPDATE reports r SET content = h.content \
             FROM UNNEST($1::text[], $2::text[]) AS h(id, content) \
             WHERE r.id = h.id AND r.reported_user_id = $3 AND r.status = 'open'",
        )
        .bind(&ids)
        .bind(&contents)
        .bind(user.as_str())
        .execute(&mut *tx)
        .await?;
    }
    let (held, destroyed): (i64, i64) = sqlx::query_as(
        "WITH moved AS ( \
           UPDATE reports SET reported_user_id = $2, \
             legal_hold = legal_hold OR status = 'open', \
             content = CASE WHEN status = 'open' THEN content END, \
             media = CASE WHEN status = 'open' THEN media END \
           WHERE reported_user_id = $1 RETURNING status = 'open' AS open) \
         SELECT count(*) FILTER (WHERE open), count(*) FILTER (WHERE NOT open) FROM moved",
    )
    .bind(user.as_str())
    .bind(pseudonym.as_str())
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(HeldReports {
        held: unsigned("held reports", held)?,
        destroyed: unsigned("destroyed snapshots", destroyed)?,
    })
}

/// [`Store::erase_user_rows`](chat_core::Store::erase_user_rows), in one
/// transaction. It first locks the rows of the chats `user` is still in,
/// in id order as batches do: a batch of one of those chats either
/// commits before, or starts after and reads the members without `user`.
pub(crate) async fn erase_user_rows(
    pool: &PgPool,
    user: &UserId,
    pseudonym: &UserId,
) -> Result<ErasedRows, Error> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    sqlx::query(
        "SELECT id FROM chats \
         WHERE id IN (SELECT chat_id FROM participants WHERE user_id = $1) \
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(user.as_str())
    .execute(&mut *tx)
    .await?;
    // Renamed: the partial unique index on (sender_id, client_msg_id)
    // finds them, and a NULL key frees it for a new user of the same id.
    let messages = rename(
        &mut tx,
        "UPDATE messages SET sender_id = $2, client_msg_id = NULL \
         WHERE sender_id = $1 AND client_msg_id IS NOT NULL",
        user,
        pseudonym,
    )
    .await?;
    let reports_filed = rename(
        &mut tx,
        "UPDATE reports SET reporter_id = $2, reason = '' WHERE reporter_id = $1",
        user,
        pseudonym,
    )
    .await?;
    rename(
        &mut tx,
        "UPDATE media SET uploader_id = $2 WHERE uploader_id = $1",
        user,
        pseudonym,
    )
    .await?;
    // Deleted, each by the user's own column: blocks of others on the user
    // are theirs and stay; the last-resort key package is a row too.
    let blocks = delete_of(&mut tx, "DELETE FROM blocks WHERE blocker = $1", user).await?;
    let key_packages =
        delete_of(&mut tx, "DELETE FROM key_packages WHERE user_id = $1", user).await?;
    let device_keys =
        delete_of(&mut tx, "DELETE FROM device_keys WHERE user_id = $1", user).await?;
    let reactions = delete_of(&mut tx, "DELETE FROM reactions WHERE user_id = $1", user).await?;
    // A direct chat the user is still in (joined while the erasure ran)
    // stops being the pair's, as when its side leaves.
    sqlx::query(
        "UPDATE chats SET direct_key = NULL WHERE kind = 'direct' \
         AND id IN (SELECT chat_id FROM participants WHERE user_id = $1)",
    )
    .bind(user.as_str())
    .execute(&mut *tx)
    .await?;
    let memberships =
        delete_of(&mut tx, "DELETE FROM participants WHERE user_id = $1", user).await?;
    let checkin_answers = delete_of(
        &mut tx,
        "DELETE FROM checkin_answers WHERE user_id = $1",
        user,
    )
    .await?;
    let record = delete_of(&mut tx, "DELETE FROM users WHERE user_id = $1", user).await?;
    // Sessions stay counted, under the pseudonym: the past's stats do not
    // change, and nothing names the user. (Merged into the pseudonym's
    // rows, should it have any.)
    rename(
        &mut tx,
        "WITH gone AS (DELETE FROM daily_sessions WHERE user_id = $1 \
                       RETURNING day, sessions) \
         INSERT INTO daily_sessions (day, user_id, sessions) \
         SELECT day, $2, sessions FROM gone \
         ON CONFLICT (day, user_id) DO UPDATE \
         SET sessions = daily_sessions.sessions + excluded.sessions",
        user,
        pseudonym,
    )
    .await?;
    tx.commit().await?;
    Ok(ErasedRows {
        messages,
        reports_filed,
        blocks,
        key_packages,
        device_keys,
        reactions,
        memberships,
        checkin_answers,
        user: record > 0,
    })
}

/// Runs `sql`, an `UPDATE` from `$1` (the user) to `$2` (the pseudonym);
/// how many rows it changed.
async fn rename(
    conn: &mut PgConnection,
    sql: &'static str,
    user: &UserId,
    pseudonym: &UserId,
) -> Result<u64, Error> {
    let done = sqlx::query(sql)
        .bind(user.as_str())
        .bind(pseudonym.as_str())
        .execute(conn)
        .await?;
    Ok(done.rows_affected())
}

/// Runs `sql`, a `DELETE` of the rows of `$1` (the user); how many it
/// deleted.
async fn delete_of(
    conn: &mut PgConnection,
    sql: &'static str,
    user: &UserId,
) -> Result<u64, Error> {
    let done = sqlx::query(sql).bind(user.as_str()).execute(conn).await?;
    Ok(done.rows_affected())
}

// --- maintenance ---------------------------------------------------------

/// [`Store::replace_texts`](chat_core::Store::replace_texts), in one
/// transaction. The old row versions stay in the table's dead tuples until
/// VACUUM reclaims them (and in free space until it is reused): README says
/// how to rewrite the table after the first sealing.
pub(crate) async fn replace_texts(
    pool: &PgPool,
    replacements: Vec<TextReplacement>,
) -> Result<usize, Error> {
    let mut tx = pool.begin().await?;
    let mut replaced = 0;
    for r in replacements {
        let sql = match r.table {
            TextTable::Messages => {
                "UPDATE messages SET content = $3 WHERE id = $1 AND content = $2"
            }
            TextTable::Reports => "UPDATE reports SET content = $3 WHERE id = $1 AND content = $2",
        };
        let done = sqlx::query(sql)
            .bind(&r.row)
            .bind(&r.old)
            .bind(&r.new)
            .execute(&mut *tx)
            .await?;
        replaced += usize::try_from(done.rows_affected()).unwrap_or(usize::MAX);
    }
    tx.commit().await?;
    Ok(replaced)
}

/// [`Store::set_retention_watermark`](chat_core::Store::set_retention_watermark).
pub(crate) async fn set_retention_watermark(
    pool: &PgPool,
    chat: ChatId,
    seq: u64,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE chats SET retention_swept_seq = GREATEST(retention_swept_seq, $2) WHERE id = $1",
    )
    .bind(chat.to_string())
    .bind(sql_u64(seq))
    .execute(pool)
    .await?;
    Ok(())
}

/// [`Store::set_meta`](chat_core::Store::set_meta).
pub(crate) async fn set_meta(pool: &PgPool, key: &str, value: &str) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(pool)
    .await?;
    Ok(())
}

// --- MLS key packages ----------------------------------------------------

/// How many key packages (not last resort) `device` has.
async fn key_package_count(
    conn: &mut PgConnection,
    user: &UserId,
    device: &DeviceId,
) -> Result<u64, Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM key_packages \
         WHERE user_id = $1 AND device_id = $2 AND NOT last_resort",
    )
    .bind(user.as_str())
    .bind(device.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(unsigned("key_packages.count", n)?)
}

/// [`Store::publish_key_packages`](chat_core::Store::publish_key_packages),
/// in one transaction holding the device's advisory lock, so that two
/// publishes of one device cannot both pass the bound.
pub(crate) async fn publish_key_packages(
    pool: &PgPool,
    user: &UserId,
    device: &DeviceId,
    packages: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    at: Timestamp,
) -> Result<u64, Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "SELECT pg_advisory_xact_lock(hashtextextended('key_packages/' || $1 || '/' || $2, 0))",
    )
    .bind(user.as_str())
    .bind(device.as_str())
    .execute(&mut *tx)
    .await?;
    let have = key_package_count(&mut tx, user, device).await?;
    if have + packages.len() as u64 > MAX_KEY_PACKAGES_PER_DEVICE {
        return Err(conflict(format!(
            "a device keeps at most {MAX_KEY_PACKAGES_PER_DEVICE} key packages; it has {have}"
        )));
    }
    let insert = "INSERT INTO key_packages (user_id, device_id, last_resort, bytes, created_at) \
                  VALUES ($1, $2, $3, $4, $5)";
    for package in &packages {
        sqlx::query(insert)
            .bind(user.as_str())
            .bind(device.as_str())
            .bind(false)
            .bind(package)
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await?;
    }
    if let Some(package) = last_resort {
        sqlx::query(
            "DELETE FROM key_packages WHERE user_id = $1 AND device_id = $2 AND last_resort",
        )
        .bind(user.as_str())
        .bind(device.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query(insert)
            .bind(user.as_str())
            .bind(device.as_str())
            .bind(true)
            .bind(package)
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(have + packages.len() as u64)
}

/// The device's oldest key package, deleted and returned in one
/// statement; `None` when it has none left.
///
/// `SKIP LOCKED` lets concurrent claimers (on any node) take the next row
/// instead of waiting for, and then missing, the same one. A claimer that
/// finds every remaining row held by others (each only for the instant of
/// its `DELETE`) looks again rather than settling for the last-resort
/// package while ordinary ones are left.
async fn take_key_package(
    conn: &mut PgConnection,
    user: &UserId,
    device: &DeviceId,
) -> Result<Option<Vec<u8>>, Error> {
    for _ in 0..100 {
        let taken: Option<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM key_packages WHERE id = (\
               SELECT id FROM key_packages \
               WHERE user_id = $1 AND device_id = $2 AND NOT last_resort \
               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING bytes",
        )
        .bind(user.as_str())
        .bind(device.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        if taken.is_some() || key_package_count(conn, user, device).await? == 0 {
            return Ok(taken);
        }
        tokio::task::yield_now().await;
    }
    Ok(None)
}

/// [`Store::claim_key_packages`](chat_core::Store::claim_key_packages):
/// one key package per device, see [`take_key_package`].
pub(crate) async fn claim_key_packages(
    pool: &PgPool,
    users: &[UserId],
) -> Result<Vec<ClaimedKeyPackage>, Error> {
    let mut conn = pool.acquire().await?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for user in users {
        if !seen.insert(user) {
            continue;
        }
        let devices: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT device_id FROM key_packages WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user.as_str())
        .fetch_all(&mut *conn)
        .await?;
        for device in devices {
            let device_id = DeviceId::new(device).map_err(|e| invalid(e.to_string()))?;
            let taken = take_key_package(&mut conn, user, &device_id).await?;
            let (key_package, last_resort) = match taken {
                Some(bytes) => (bytes, false),
                None => {
                    let fallback: Option<Vec<u8>> = sqlx::query_scalar(
                        "SELECT bytes FROM key_packages \
                         WHERE user_id = $1 AND device_id = $2 AND last_resort",
                    )
                    .bind(user.as_str())
                    .bind(device_id.as_str())
                    .fetch_optional(&mut *conn)
                    .await?;
                    match fallback {
                        Some(bytes) => (bytes, true),
                        None => continue,
                    }
                }
            };
            let remaining = key_package_count(&mut conn, user, &device_id).await?;
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

/// [`Store::pin_device_key`](chat_core::Store::pin_device_key): the first
/// key wins, also between nodes (the primary key decides).
pub(crate) async fn pin_device_key(
    pool: &PgPool,
    user: &UserId,
    device: &DeviceId,
    key: &[u8],
) -> Result<Vec<u8>, Error> {
    sqlx::query(
        "INSERT INTO device_keys (user_id, device_id, signature_key) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, device_id) DO NOTHING",
    )
    .bind(user.as_str())
    .bind(device.as_str())
    .bind(key)
    .execute(pool)
    .await?;
    Ok(sqlx::query_scalar(
        "SELECT signature_key FROM device_keys WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user.as_str())
    .bind(device.as_str())
    .fetch_one(pool)
    .await?)
}

/// [`Store::key_packages_of`](chat_core::Store::key_packages_of), from
/// `key_packages_by_device`.
pub(crate) async fn key_packages_of(
    pool: &PgPool,
    user: &UserId,
) -> Result<Vec<chat_core::mls::PublishedKeyPackage>, Error> {
    let rows: Vec<(String, Vec<u8>, bool)> = sqlx::query_as(
        "SELECT device_id, bytes, last_resort FROM key_packages WHERE user_id = $1 \
         ORDER BY device_id, last_resort, id",
    )
    .bind(user.as_str())
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(device, key_package, last_resort)| {
            Ok(chat_core::mls::PublishedKeyPackage {
                device_id: chat_core::store::rows::device_id("key_packages.device_id", device)?,
                key_package,
                last_resort,
            })
        })
        .collect()
}

/// [`Store::device_keys`](chat_core::Store::device_keys).
pub(crate) async fn device_keys(
    pool: &PgPool,
    devices: &[(UserId, DeviceId)],
) -> Result<Vec<Option<Vec<u8>>>, Error> {
    let mut out = Vec::with_capacity(devices.len());
    for (user, device) in devices {
        let key: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT signature_key FROM device_keys WHERE user_id = $1 AND device_id = $2",
        )
        .bind(user.as_str())
        .bind(device.as_str())
        .fetch_optional(pool)
        .await?;
        out.push(key);
    }
    Ok(out)
}

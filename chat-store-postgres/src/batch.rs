//! [`Store::apply`](chat_core::Store::apply): one transaction per batch.
//!
//! 1. `BEGIN`, then lock the rows of every chat the batch touches, in id
//!    order (`SELECT ... ORDER BY id FOR NO KEY UPDATE`): the writers of a
//!    chat, on every node, queue on its row; two batches never wait for
//!    each other in a cycle; and every statement after the lock sees what
//!    the chat's previous writers committed.
//! 2. Each change runs in its own `SAVEPOINT`: a failing change is rolled
//!    back to it and fails alone; its seq is given back with it.
//! 3. A run of consecutive posts is first tried in bulk (see
//!    [`bulk_posts`]): one probe, one `UPDATE chats ... last_seq + n` for all
//!    chats of the run and one `INSERT ... SELECT FROM UNNEST(...)`. When a
//!    post of the run could fail or be a duplicate, or the bulk insert
//!    collides with a concurrent writer, the run goes through the per-change
//!    path instead, which decides every case.
//! 4. Each applied change gets the members of its chat as of that change:
//!    read once for every chat of the batch right after the locks (no other
//!    writer can change them until `COMMIT`), and followed through the
//!    batch's own membership changes.
//! 5. `COMMIT` once. If the transaction fails as a whole (`BEGIN`, a
//!    savepoint, `COMMIT`, a lost connection), every change of the batch
//!    fails with the same [`Error::Batch`], and none was stored.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use chat_core::{
    ChatId, MessageId, MessageType, UserId,
    store::{Applied, Change, Committed, Members, NewMessage, rows::unsigned},
};
use sqlx::{PgConnection, PgPool, Row};

use crate::{
    Error, read,
    write::{self, Locks, RELEASE, ROLLBACK_AND_RELEASE, SAVEPOINT},
};

/// How batches were applied; see [`PostgresStore::stats`](crate::PostgresStore::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BatchStats {
    /// Transactions committed by `apply`.
    pub batches: u64,
    /// Changes those transactions carried.
    pub changes: u64,
    /// Runs of consecutive posts stored with the multi-row statements.
    pub bulk_runs: u64,
    /// Posts stored by those runs.
    pub bulk_posts: u64,
    /// Runs of posts that went through the per-change path instead (a post
    /// that may fail or be a duplicate, or a collision with another writer).
    pub fallback_runs: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    changes: AtomicU64,
    bulk_runs: AtomicU64,
    bulk_posts: AtomicU64,
    fallback_runs: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> BatchStats {
        BatchStats {
            batches: self.batches.load(Relaxed),
            changes: self.changes.load(Relaxed),
            bulk_runs: self.bulk_runs.load(Relaxed),
            bulk_posts: self.bulk_posts.load(Relaxed),
            fallback_runs: self.fallback_runs.load(Relaxed),
        }
    }
}

fn count(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Applies a batch (see the module docs).
pub(crate) async fn apply(
    pool: &PgPool,
    changes: Vec<Change>,
    bulk: bool,
    counters: &Counters,
) -> Vec<chat_core::Result<Committed>> {
    let n = changes.len();
    if n == 0 {
        return Vec::new();
    }
    match run(pool, changes, bulk, counters).await {
        Ok(results) => {
            counters.batches.fetch_add(1, Relaxed);
            counters.changes.fetch_add(count(n), Relaxed);
            results
        }
        Err(e) => {
            tracing::warn!(error = %e, changes = n, "a batch's transaction failed");
            let e = Arc::new(e);
            (0..n)
                .map(|_| Err(Error::Batch(Arc::clone(&e)).into()))
                .collect()
        }
    }
}

/// The batch's transaction; `Err` only when it fails as a whole.
async fn run(
    pool: &PgPool,
    changes: Vec<Change>,
    bulk: bool,
    counters: &Counters,
) -> Result<Vec<chat_core::Result<Committed>>, sqlx::Error> {
    // The design rests on READ COMMITTED: each statement after the chat
    // locks sees what the chats' previous writers committed. Said
    // explicitly, so a server default of REPEATABLE READ cannot turn lock
    // waits into serialization failures.
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
        .await?;
    let chats: HashMap<String, ChatId> = changes
        .iter()
        .map(|c| (c.chat_id().to_string(), c.chat_id()))
        .collect();
    let mut ids: Vec<&str> = chats.keys().map(String::as_str).collect();
    ids.sort_unstable();
    let locked: Vec<String> =
        sqlx::query_scalar("SELECT id FROM chats WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE")
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
    let mut locks = Locks::new(
        locked
            .iter()
            .filter_map(|id| chats.get(id).copied())
            .collect(),
    );
    let locked: Vec<&str> = locked.iter().map(String::as_str).collect();
    let mut members: HashMap<ChatId, Arc<Members>> = read::members_of(&mut *tx, &locked)
        .await
        .map_err(backend)?
        .into_iter()
        .map(|(id, m)| (id, Arc::new(m)))
        .collect();
    let chat_ids: Vec<ChatId> = changes.iter().map(Change::chat_id).collect();

    let mut results = Vec::with_capacity(changes.len());
    let mut changes = changes.into_iter().peekable();
    while let Some(change) = changes.next() {
        let change = match change {
            Change::Post(first) if bulk && matches!(changes.peek(), Some(Change::Post(_))) => {
                let mut posts = vec![first];
                while let Some(Change::Post(_)) = changes.peek() {
                    if let Some(Change::Post(next)) = changes.next() {
                        posts.push(next);
                    }
                }
                let n = posts.len();
                match bulk_posts(&mut tx, &locks, posts).await? {
                    Ok(applied) => {
                        counters.bulk_runs.fetch_add(1, Relaxed);
                        counters.bulk_posts.fetch_add(count(n), Relaxed);
                        results.extend(applied.into_iter().map(Ok));
                    }
                    Err(posts) => {
                        counters.fallback_runs.fetch_add(1, Relaxed);
                        for (i, post) in posts.into_iter().enumerate() {
                            let last = i + 1 == n && changes.peek().is_none();
                            let change = Change::Post(post);
                            results.push(one(&mut tx, &mut locks, change, last).await?);
                        }
                    }
                }
                continue;
            }
            other => other,
        };
        let last = changes.peek().is_none();
        results.push(one(&mut tx, &mut locks, change, last).await?);
    }
    let mut out = Vec::with_capacity(results.len());
    for (result, chat_id) in results.into_iter().zip(chat_ids) {
        let applied = match result {
            Ok(applied) => applied,
            Err(e) => {
                out.push(Err(e));
                continue;
            }
        };
        let blocked = members.get(&chat_id).is_some_and(|m| m.blocked);
        let current = match &applied {
            Applied::Membership { chat, .. } | Applied::MlsMembership { chat, .. } => {
                Arc::new(Members::of(chat, blocked))
            }
            _ => match members.get(&chat_id) {
                Some(m) => Arc::clone(m),
                // Locked by the change itself (a chat that did not exist
                // when the batch began).
                None => {
                    let id = chat_id.to_string();
                    let mut read = read::members_of(&mut *tx, &[id.as_str()])
                        .await
                        .map_err(backend)?;
                    Arc::new(read.remove(&chat_id).unwrap_or_default())
                }
            },
        };
        members.insert(chat_id, Arc::clone(&current));
        out.push(Ok(Committed::new(applied, current)));
    }
    tx.commit().await?;
    Ok(out)
}

/// A read of the batch that failed: the batch fails as a whole.
fn backend(e: Error) -> sqlx::Error {
    match e {
        Error::Sqlx(e) => e,
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

/// Runs one change in its savepoint. The `last` change of a batch keeps its
/// savepoint open when it succeeds: the `COMMIT` that follows releases it,
/// one round trip fewer while the chats are locked.
async fn one(
    conn: &mut PgConnection,
    locks: &mut Locks,
    change: Change,
    last: bool,
) -> Result<chat_core::Result<Applied>, sqlx::Error> {
    sqlx::raw_sql(SAVEPOINT).execute(&mut *conn).await?;
    match write::apply(conn, locks, change).await {
        Ok(applied) => {
            if !last {
                sqlx::raw_sql(RELEASE).execute(&mut *conn).await?;
            }
            locks.keep_pending();
            Ok(Ok(applied))
        }
        Err(e) => {
            // Undo the change and end its savepoint, in one round trip.
            sqlx::raw_sql(ROLLBACK_AND_RELEASE)
                .execute(&mut *conn)
                .await?;
            locks.drop_pending();
            Ok(Err(e.into()))
        }
    }
}

/// The savepoint of a bulk run.
const BULK_BEGIN: &str = "SAVEPOINT bulk";
const BULK_RELEASE: &str = "RELEASE SAVEPOINT bulk";
const BULK_ROLLBACK: &str = "ROLLBACK TO SAVEPOINT bulk; RELEASE SAVEPOINT bulk";

/// Stores a run of posts with multi-row statements if every one of them
/// would be stored as new by the per-change path: chats locked by the batch
/// (so they exist and no other writer of them runs), ids and keys unused
/// (in the database and within the run), senders participants, `reply_to`
/// a message of the same chat (stored, or earlier in the run). Otherwise,
/// or if the insert collides with a concurrent writer (a key or id used in
/// another chat meanwhile), nothing is written and the posts are handed
/// back for the per-change path.
async fn bulk_posts(
    conn: &mut PgConnection,
    locks: &Locks,
    posts: Vec<NewMessage>,
) -> Result<Result<Vec<Applied>, Vec<NewMessage>>, sqlx::Error> {
    let Some(plan) = Plan::new(locks, &posts) else {
        tracing::debug!(
            posts = posts.len(),
            "bulk posts: checked in Rust, falling back"
        );
        return Ok(Err(posts));
    };
    sqlx::raw_sql(BULK_BEGIN).execute(&mut *conn).await?;
    match plan.store(conn, &posts).await {
        Ok(Some(seqs)) => {
            sqlx::raw_sql(BULK_RELEASE).execute(&mut *conn).await?;
            let applied = posts
                .into_iter()
                .zip(seqs)
                .map(|(new, seq)| Applied::Posted {
                    message: write::stored(new, seq),
                    duplicate: false,
                })
                .collect();
            Ok(Ok(applied))
        }
        Ok(None) => {
            sqlx::raw_sql(BULK_ROLLBACK).execute(&mut *conn).await?;
            tracing::debug!(
                posts = posts.len(),
                "bulk posts: probe found a failing post"
            );
            Ok(Err(posts))
        }
        Err(e) => {
            sqlx::raw_sql(BULK_ROLLBACK).execute(&mut *conn).await?;
            tracing::debug!(error = %e, posts = posts.len(), "bulk posts: insert failed");
            Ok(Err(posts))
        }
    }
}

/// What a bulk run must check in the database, and how many posts each
/// chat takes.
struct Plan {
    ids: Vec<String>,
    key_senders: Vec<String>,
    key_ids: Vec<String>,
    member_chats: Vec<String>,
    member_users: Vec<String>,
    reply_ids: Vec<String>,
    reply_chats: Vec<String>,
    /// Per chat, in first-seen order: how many posts, and the time of the
    /// last one (the chat's `last_activity` after the run).
    per_chat: Vec<(ChatId, i64, i64)>,
}

impl Plan {
    /// `None` if a post of the run may fail or be a duplicate for a reason
    /// visible without the database.
    fn new(locks: &Locks, posts: &[NewMessage]) -> Option<Self> {
        let mut ids = HashSet::new();
        let mut keys: HashSet<(&UserId, &str)> = HashSet::new();
        let mut members: HashSet<(ChatId, &UserId)> = HashSet::new();
        let mut replies: HashSet<(MessageId, ChatId)> = HashSet::new();
        let mut earlier: HashMap<MessageId, ChatId> = HashMap::new();
        let mut per_chat: Vec<(ChatId, i64, i64)> = Vec::new();
        let mut plan = Plan {
            ids: Vec::with_capacity(posts.len()),
            key_senders: Vec::new(),
            key_ids: Vec::new(),
            member_chats: Vec::new(),
            member_users: Vec::new(),
            reply_ids: Vec::new(),
            reply_chats: Vec::new(),
            per_chat: Vec::new(),
        };
        for new in posts {
            if !locks.holds(new.chat_id) || !ids.insert(new.id) {
                return None;
            }
            plan.ids.push(new.id.to_string());
            if let Some(cid) = &new.client_msg_id {
                if !keys.insert((&new.sender_id, cid)) {
                    return None;
                }
                plan.key_senders.push(new.sender_id.as_str().to_owned());
                plan.key_ids.push(cid.clone());
            }
            if new.kind != MessageType::System && members.insert((new.chat_id, &new.sender_id)) {
                plan.member_chats.push(new.chat_id.to_string());
                plan.member_users.push(new.sender_id.as_str().to_owned());
            }
            if let Some(reply_to) = new.reply_to {
                match earlier.get(&reply_to) {
                    Some(chat) if *chat == new.chat_id => {}
                    Some(_) => return None,
                    None => {
                        if replies.insert((reply_to, new.chat_id)) {
                            plan.reply_ids.push(reply_to.to_string());
                            plan.reply_chats.push(new.chat_id.to_string());
                        }
                    }
                }
            }
            earlier.insert(new.id, new.chat_id);
            let at = new.created_at.as_millis();
            match per_chat.iter_mut().find(|(c, _, _)| *c == new.chat_id) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 = at;
                }
                None => per_chat.push((new.chat_id, 1, at)),
            }
        }
        plan.per_chat = per_chat;
        Some(plan)
    }

    /// Checks the run against the database and stores it; the seq of each
    /// post, or `None` if a post would not be stored as new.
    async fn store(
        &self,
        conn: &mut PgConnection,
        posts: &[NewMessage],
    ) -> Result<Option<Vec<u64>>, Error> {
        let probe = sqlx::query(
            "SELECT \
               (SELECT COUNT(*) FROM messages WHERE id = ANY($1::text[])) AS ids_taken, \
               (SELECT COUNT(*) FROM messages m \
                  JOIN UNNEST($2::text[], $3::text[]) AS k(sender_id, client_msg_id) \
                  ON m.sender_id = k.sender_id AND m.client_msg_id = k.client_msg_id) \
                 AS keys_taken, \
               (SELECT COUNT(*) FROM participants p \
                  JOIN UNNEST($4::text[], $5::text[]) AS s(chat_id, user_id) \
                  ON p.chat_id = s.chat_id AND p.user_id = s.user_id) AS members, \
               (SELECT COUNT(*) FROM messages m \
                  JOIN UNNEST($6::text[], $7::text[]) AS r(id, chat_id) \
                  ON m.id = r.id AND m.chat_id = r.chat_id) AS replies",
        )
        .bind(&self.ids)
        .bind(&self.key_senders)
        .bind(&self.key_ids)
        .bind(&self.member_chats)
        .bind(&self.member_users)
        .bind(&self.reply_ids)
        .bind(&self.reply_chats)
        .fetch_one(&mut *conn)
        .await?;
        let counted = |column: &str| -> Result<i64, Error> { Ok(probe.try_get(column)?) };
        if counted("ids_taken")? != 0
            || counted("keys_taken")? != 0
            || counted("members")? != i64::try_from(self.member_chats.len()).unwrap_or(-1)
            || counted("replies")? != i64::try_from(self.reply_ids.len()).unwrap_or(-1)
        {
            return Ok(None);
        }

        // Take every chat's seqs at once: the chat's posts get the last n.
        let chat_ids: Vec<String> = self.per_chat.iter().map(|c| c.0.to_string()).collect();
        let takes: Vec<i64> = self.per_chat.iter().map(|c| c.1).collect();
        let times: Vec<i64> = self.per_chat.iter().map(|c| c.2).collect();
        let rows = sqlx::query(
            "UPDATE chats c SET last_seq = c.last_seq + u.n, last_activity = u.at \
             FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) AS u(id, n, at) \
             WHERE c.id = u.id RETURNING c.id, c.last_seq",
        )
        .bind(&chat_ids)
        .bind(&takes[..])
        .bind(&times)
        .fetch_all(&mut *conn)
        .await?;
        let taken: HashMap<&str, i64> = chat_ids.iter().map(String::as_str).zip(takes).collect();
        let mut next: HashMap<String, i64> = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let last: i64 = row.try_get("last_seq")?;
            let n = taken.get(id.as_str()).copied().unwrap_or_default();
            next.insert(id, last - n + 1);
        }
        if next.len() != self.per_chat.len() {
            return Ok(None);
        }

        let mut seqs = Vec::with_capacity(posts.len());
        let mut chat = Vec::with_capacity(posts.len());
        let mut seq = Vec::with_capacity(posts.len());
        let mut sender = Vec::with_capacity(posts.len());
        let mut kind = Vec::with_capacity(posts.len());
        let mut content = Vec::with_capacity(posts.len());
        let mut media = Vec::with_capacity(posts.len());
        let mut reply_to = Vec::with_capacity(posts.len());
        let mut client_msg_id = Vec::with_capacity(posts.len());
        let mut created_at = Vec::with_capacity(posts.len());
        let mut system = Vec::with_capacity(posts.len());
        let mut mls = Vec::with_capacity(posts.len());
        for new in posts {
            let chat_id = new.chat_id.to_string();
            let Some(slot) = next.get_mut(&chat_id) else {
                return Ok(None);
            };
            let s = *slot;
            *slot += 1;
            seqs.push(unsigned("chats.last_seq", s)?);
            let (m, sys, commit) = write::json_columns(new)?;
            chat.push(chat_id);
            seq.push(s);
            sender.push(new.sender_id.as_str());
            kind.push(new.kind.as_str());
            content.push(new.content.as_deref());
            media.push(m);
            reply_to.push(new.reply_to.map(|id| id.to_string()));
            client_msg_id.push(new.client_msg_id.as_deref());
            created_at.push(new.created_at.as_millis());
            system.push(sys);
            mls.push(commit);
        }
        let inserted = sqlx::query(
            "INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, content, \
               media, reply_to, client_msg_id, created_at, deleted, system, mls) \
             SELECT u.id, u.chat_id, u.seq, u.seq, u.sender_id, u.kind, u.content, \
               u.media::jsonb, u.reply_to, u.client_msg_id, u.created_at, FALSE, \
               u.system::jsonb, u.mls::jsonb \
             FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], \
               $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], \
               $12::text[]) \
               AS u(id, chat_id, seq, sender_id, kind, content, media, reply_to, \
               client_msg_id, created_at, system, mls)",
        )
        .bind(&self.ids)
        .bind(&chat)
        .bind(&seq)
        .bind(&sender)
        .bind(&kind)
        .bind(&content)
        .bind(&media)
        .bind(&reply_to)
        .bind(&client_msg_id)
        .bind(&created_at)
        .bind(&system)
        .bind(&mls)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() != count(posts.len()) {
            return Ok(None);
        }
        Ok(Some(seqs))
    }
}

//! Versioned migrations, tracked in `PRAGMA user_version`.

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior};

use crate::Error;

/// The migrations, in order: the database's `user_version` is the number
/// of them applied. Never edit one that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE chats (
        id            TEXT PRIMARY KEY NOT NULL,
        kind          TEXT NOT NULL,
        name          TEXT,
        description   TEXT,
        avatar_url    TEXT,
        encryption    TEXT NOT NULL,
        last_seq      INTEGER NOT NULL DEFAULT 0,
        last_activity INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        -- "a/b" for a direct chat of users a <= b ('/' is not valid in ids).
        direct_key    TEXT UNIQUE
    ) STRICT;

    CREATE TABLE participants (
        chat_id          TEXT NOT NULL REFERENCES chats (id),
        user_id          TEXT NOT NULL,
        role             TEXT NOT NULL,
        joined_at        INTEGER NOT NULL,
        delivered_seq    INTEGER NOT NULL DEFAULT 0,
        read_seq         INTEGER NOT NULL DEFAULT 0,
        visible_from_seq INTEGER NOT NULL DEFAULT 0,
        -- joining order within the chat
        ordinal          INTEGER NOT NULL,
        PRIMARY KEY (chat_id, user_id)
    ) STRICT, WITHOUT ROWID;
    -- list_chats and co_members start from the user.
    CREATE INDEX participants_by_user ON participants (user_id, chat_id);
    CREATE INDEX participants_by_ordinal ON participants (chat_id, ordinal);

    CREATE TABLE messages (
        id            TEXT PRIMARY KEY NOT NULL,
        chat_id       TEXT NOT NULL REFERENCES chats (id),
        seq           INTEGER NOT NULL,
        updated_seq   INTEGER NOT NULL,
        sender_id     TEXT NOT NULL,
        kind          TEXT NOT NULL,
        content       TEXT,
        media         TEXT,    -- MediaRef as JSON
        reply_to      TEXT,
        client_msg_id TEXT,
        created_at    INTEGER NOT NULL,
        edited_at     INTEGER,
        deleted       INTEGER NOT NULL DEFAULT 0,
        system        TEXT,    -- SystemEvent as JSON
        UNIQUE (chat_id, seq)  -- the log; history pages on it
    ) STRICT;
    -- sync: everything changed after a cursor.
    CREATE INDEX messages_by_updated_seq ON messages (chat_id, updated_seq);
    -- idempotency of posts.
    CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_msg_id)
        WHERE client_msg_id IS NOT NULL;
    -- unread counts, answered from the index alone.
    CREATE INDEX messages_unread ON messages (chat_id, seq, sender_id)
        WHERE kind <> 'system' AND deleted = 0;

    CREATE TABLE reactions (
        message_id TEXT NOT NULL REFERENCES messages (id),
        emoji      TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        -- reaction order within the message
        ordinal    INTEGER NOT NULL,
        PRIMARY KEY (message_id, emoji, user_id)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE blocks (
        -- the order blocks were recorded in
        ordinal INTEGER PRIMARY KEY,
        blocker TEXT NOT NULL,
        blocked TEXT NOT NULL,
        UNIQUE (blocker, blocked)
    ) STRICT;
    CREATE INDEX blocks_by_blocked ON blocks (blocked, blocker);

    CREATE TABLE users (
        user_id         TEXT PRIMARY KEY NOT NULL,
        last_seen       INTEGER,
        read_receipts   INTEGER NOT NULL DEFAULT 1,
        typing          INTEGER NOT NULL DEFAULT 1,
        presence        INTEGER NOT NULL DEFAULT 1,
        suspended_until INTEGER
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE reports (
        id               TEXT PRIMARY KEY NOT NULL,
        reporter_id      TEXT NOT NULL,
        chat_id          TEXT NOT NULL,
        message_id       TEXT NOT NULL,
        reported_user_id TEXT NOT NULL,
        reason           TEXT NOT NULL,
        content          TEXT,
        status           TEXT NOT NULL,
        created_at       INTEGER NOT NULL,
        resolved_at      INTEGER,
        resolved_by      TEXT,
        resolution_note  TEXT
    ) STRICT;
    -- the moderation queue, oldest first (ids are time-ordered).
    CREATE INDEX reports_by_status ON reports (status, id);
    CREATE INDEX reports_by_reporter ON reports (reporter_id, message_id, status);

    CREATE TABLE media (
        id            TEXT PRIMARY KEY NOT NULL,
        chat_id       TEXT NOT NULL,
        uploader_id   TEXT NOT NULL,
        mime          TEXT NOT NULL,
        size          INTEGER NOT NULL,
        duration_ms   INTEGER,
        has_thumbnail INTEGER NOT NULL,
        created_at    INTEGER NOT NULL
    ) STRICT;
    "#,
    // 2: a participant's own settings of a chat.
    r#"
    ALTER TABLE participants ADD COLUMN muted_until INTEGER;
    ALTER TABLE participants ADD COLUMN hidden_seq INTEGER;
    "#,
    // 3: one index on the log instead of two. Every post maintained both
    // `UNIQUE (chat_id, seq)` and the partial unread index, each at a place
    // that depends on the chat; one covering index serves history pages and
    // unread counts alike (store throughput +35% on 100,000 messages, see
    // BENCHMARKS.md). A seq is unique by construction: the writer takes it
    // from the chat's counter in the transaction that inserts. SQLite cannot
    // drop a table constraint, so the table is rebuilt (foreign keys are off
    // while migrations run, and checked before they commit).
    r#"
    CREATE TABLE messages_v3 (
        id            TEXT PRIMARY KEY NOT NULL,
        chat_id       TEXT NOT NULL REFERENCES chats (id),
        seq           INTEGER NOT NULL,
        updated_seq   INTEGER NOT NULL,
        sender_id     TEXT NOT NULL,
        kind          TEXT NOT NULL,
        content       TEXT,
        media         TEXT,    -- MediaRef as JSON
        reply_to      TEXT,
        client_msg_id TEXT,
        created_at    INTEGER NOT NULL,
        edited_at     INTEGER,
        deleted       INTEGER NOT NULL DEFAULT 0,
        system        TEXT     -- SystemEvent as JSON
    ) STRICT;
    INSERT INTO messages_v3 (id, chat_id, seq, updated_seq, sender_id, kind, content, media,
                             reply_to, client_msg_id, created_at, edited_at, deleted, system)
        SELECT id, chat_id, seq, updated_seq, sender_id, kind, content, media,
               reply_to, client_msg_id, created_at, edited_at, deleted, system
        FROM messages ORDER BY rowid;
    DROP TABLE messages;
    ALTER TABLE messages_v3 RENAME TO messages;
    -- the log: history pages, and unread counts from the index alone.
    CREATE INDEX messages_log ON messages (chat_id, seq, sender_id, kind, deleted);
    -- sync: everything changed after a cursor.
    CREATE INDEX messages_by_updated_seq ON messages (chat_id, updated_seq);
    -- idempotency of posts.
    CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_msg_id)
        WHERE client_msg_id IS NOT NULL;
    "#,
    // 4: sync finds messages never changed since they were posted
    // (`updated_seq = seq`) on the log, so the index by `updated_seq` only
    // needs those changed after (edited, deleted, reacted to). A post then
    // maintains four B-trees instead of five, and one fewer page that
    // depends on its chat is written per commit.
    r#"
    DROP INDEX messages_by_updated_seq;
    CREATE INDEX messages_changed ON messages (chat_id, updated_seq) WHERE updated_seq > seq;
    "#,
    // 5: values the engine keeps about the store itself, such as how far
    // the sealing of content written before encryption at rest has come.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    ) STRICT, WITHOUT ROWID;
    "#,
    // 6: the MLS key package directory of e2ee chats.
    r#"
    CREATE TABLE key_packages (
        id          INTEGER PRIMARY KEY,   -- publishing order: oldest first
        user_id     TEXT NOT NULL,
        device_id   TEXT NOT NULL,
        last_resort INTEGER NOT NULL,
        bytes       BLOB NOT NULL,
        created_at  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX key_packages_by_device ON key_packages (user_id, device_id, last_resort, id);
    "#,
    // 7: MLS commits of e2ee chats: on their log messages, and each chat's
    // group as the server follows it (epoch, member devices, public state).
    r#"
    ALTER TABLE messages ADD COLUMN mls TEXT;   -- MlsCommitRecord as JSON
    CREATE TABLE mls_groups (
        chat_id TEXT PRIMARY KEY NOT NULL REFERENCES chats (id),
        epoch   INTEGER NOT NULL,
        members TEXT NOT NULL,   -- JSON [[user, device], ...]
        state   BLOB NOT NULL
    ) STRICT, WITHOUT ROWID;
    "#,
    // 8: each MLS device's signature key, pinned when it first publishes.
    r#"
    CREATE TABLE device_keys (
        user_id       TEXT NOT NULL,
        device_id     TEXT NOT NULL,
        signature_key BLOB NOT NULL,
        PRIMARY KEY (user_id, device_id)
    ) STRICT, WITHOUT ROWID;
    "#,
    // 9: what an upload is (kind, image dimensions, file name), whether
    // its bytes are sealed, and the message it is attached to. Rows from
    // before have no kind and are read by their mime. The sweep of
    // abandoned uploads reads the unattached ones oldest first from an
    // index of them alone.
    r#"
    ALTER TABLE media ADD COLUMN kind TEXT;
    ALTER TABLE media ADD COLUMN width INTEGER;
    ALTER TABLE media ADD COLUMN height INTEGER;
    ALTER TABLE media ADD COLUMN name TEXT;
    ALTER TABLE media ADD COLUMN sealed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE media ADD COLUMN message_id TEXT;
    CREATE INDEX media_unattached ON media (created_at, id) WHERE message_id IS NULL;
    "#,
    // 10: participants muted by a group moderator (`mute_participant`).
    r#"
    ALTER TABLE participants ADD COLUMN silenced_until INTEGER;
    "#,
    // 11: the moderation audit log. Append-only: clustered on its time-ordered id
    // (pages newest first), listed by actor or by action, and found by
    // the user it names when that user is erased. Triggers refuse to
    // delete an entry or to change anything but the ids that
    // pseudonymization replaces. Self-contained and idempotent (`IF NOT
    // EXISTS`), so that renumbering it cannot fail on a database that ran
    // it under another number.
    r#"
    CREATE TABLE IF NOT EXISTS audit_log (
        id          TEXT PRIMARY KEY NOT NULL,
        at          INTEGER NOT NULL,
        actor_id    TEXT NOT NULL,
        action      TEXT NOT NULL,
        target_type TEXT NOT NULL,
        target_id   TEXT NOT NULL,
        chat_id     TEXT,
        note        TEXT
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS audit_log_by_actor ON audit_log (actor_id, id);
    CREATE INDEX IF NOT EXISTS audit_log_by_action ON audit_log (action, id);
    CREATE INDEX IF NOT EXISTS audit_log_by_user_target ON audit_log (target_id)
        WHERE target_type = 'user';
    CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only');
    END;
    CREATE TRIGGER IF NOT EXISTS audit_log_no_rewrite
        BEFORE UPDATE OF id, at, action, target_type, chat_id, note ON audit_log
    BEGIN
        SELECT RAISE(ABORT, 'the audit log is append-only');
    END;
    "#,
    // 12: a report keeps the reported message's type and media too, for
    // its evidence snapshot.
    r#"
    ALTER TABLE reports ADD COLUMN kind TEXT;
    ALTER TABLE reports ADD COLUMN media TEXT;   -- MediaRef as JSON
    "#,
    // 13: a chat's retention (`set_retention`), and how far its sweep has
    // come: every message with `seq <= retention_swept_seq` was swept. The
    // sweep reads each chat's log from there, so messages need no index by
    // time (one more B-tree every post would maintain); it finds the chats
    // with a retention from an index of them alone.
    r#"
    ALTER TABLE chats ADD COLUMN retention_secs INTEGER;
    ALTER TABLE chats ADD COLUMN retention_swept_seq INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX chats_with_retention ON chats (id) WHERE retention_secs IS NOT NULL;
    "#,
    // 14: erasure. A report whose sender was erased while it was open is
    // on legal hold; erasure finds a user's reactions, uploads and the
    // reports of their messages from indexes of their own, and the check
    // whether a deleted message's media is held by an open report reads
    // the reports of that message alone. Reactions and uploads are far
    // rarer than messages: no index is added to the messages table, whose
    // every post would maintain it (a user's messages are found through
    // `messages_by_client_id`).
    r#"
    ALTER TABLE reports ADD COLUMN legal_hold INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX reactions_by_user ON reactions (user_id);
    CREATE INDEX media_by_uploader ON media (uploader_id, id);
    CREATE INDEX reports_by_reported_user ON reports (reported_user_id, status);
    CREATE INDEX reports_by_message ON reports (message_id, status);
    "#,
    // 15: check-ins. Answers, one per user and check-in, in the order
    // they were first given (the rowid: a changed answer keeps its row);
    // found by user for the export and erasure. A user's opt-in to share
    // their mood check-ins with the host app.
    r#"
    CREATE TABLE checkin_answers (
        message_id  TEXT NOT NULL,
        chat_id     TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        option      INTEGER NOT NULL,
        answered_at INTEGER NOT NULL,
        UNIQUE (message_id, user_id)
    ) STRICT;
    CREATE INDEX checkin_answers_by_user ON checkin_answers (user_id, message_id);
    ALTER TABLE users ADD COLUMN mood_sharing INTEGER NOT NULL DEFAULT 0;
    "#,
    // 16: analytics. Sessions (authenticated connections) per UTC day and
    // user; the first delivery and read receipt of each message, written
    // by marks (never by posts: the send path pays nothing for them).
    r#"
    CREATE TABLE daily_sessions (
        day      INTEGER NOT NULL,
        user_id  TEXT NOT NULL,
        sessions INTEGER NOT NULL,
        PRIMARY KEY (day, user_id)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE receipt_times (
        chat_id      TEXT NOT NULL,
        seq          INTEGER NOT NULL,
        created_at   INTEGER NOT NULL,
        delivered_at INTEGER NOT NULL,
        read_at      INTEGER,
        PRIMARY KEY (chat_id, seq)
    ) STRICT, WITHOUT ROWID;
    "#,
];

/// The schema version this build creates: the number of migrations.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], in one transaction.
///
/// Foreign keys are off while it runs, because rebuilding a table (the way
/// SQLite changes a constraint) drops the table others refer to; every
/// reference is checked before the transaction commits, and foreign keys
/// are on again afterwards, whatever happened.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    conn.pragma_update(None, "foreign_keys", false)?;
    let migrated = migrate_unchecked(conn);
    conn.pragma_update(None, "foreign_keys", true)?;
    migrated
}

/// Runs the `migrations` that `tx`'s database (at `user_version`) lacks;
/// returns whether it ran any. The caller checks the result and sets
/// `user_version` to `migrations.len()` before it commits. `what` names
/// the database in logs. Shared by the message database and the key store.
pub(crate) fn apply_migrations(
    tx: &Transaction<'_>,
    migrations: &[&str],
    what: &str,
) -> Result<bool, Error> {
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > known {
        return Err(Error::SchemaTooNew { found, known });
    }
    if found == known {
        return Ok(false);
    }
    let applied = usize::try_from(found).unwrap_or(0);
    for (i, sql) in migrations.iter().enumerate().skip(applied) {
        tracing::info!(version = i + 1, "applying {what} migration");
        tx.execute_batch(sql)?;
    }
    Ok(true)
}

fn migrate_unchecked(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !apply_migrations(&tx, MIGRATIONS, "SQLite")? {
        return Ok(());
    }
    let broken: Option<String> = tx
        .prepare("PRAGMA foreign_key_check")?
        .query_row([], |row| row.get(0))
        .optional()?;
    if let Some(table) = broken {
        return Err(Error::Migration(format!(
            "a row of {table} refers to one that is gone"
        )));
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database at `version`, as an older build left it.
    fn at_version(version: usize) -> Connection {
        let conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "foreign_keys", true).expect("fk");
        for sql in &MIGRATIONS[..version] {
            conn.execute_batch(sql).expect("old migration");
        }
        conn.pragma_update(None, "user_version", version as i64)
            .expect("version");
        conn
    }

    #[test]
    fn version_2_keeps_its_messages_and_references_through_the_latest() {
        let mut conn = at_version(2);
        conn.execute_batch(
            "INSERT INTO chats (id, kind, encryption, last_seq, last_activity, created_at) \
               VALUES ('c1', 'group', 'at_rest', 2, 0, 0);
             INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, content, \
               client_msg_id, created_at) \
               VALUES ('m1', 'c1', 1, 1, 'alice', 'text', 'hi', 'k1', 0), \
                      ('m2', 'c1', 2, 2, 'bob', 'text', 'yo', NULL, 0);
             INSERT INTO reactions (message_id, emoji, user_id, ordinal) \
               VALUES ('m1', 'x', 'bob', 0);",
        )
        .expect("v2 rows");
        migrate(&mut conn).expect("migrate");

        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(version, SCHEMA_VERSION);
        let rows: Vec<(String, i64, String)> = conn
            .prepare("SELECT id, seq, content FROM messages ORDER BY seq")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .expect("messages");
        assert_eq!(
            rows,
            [("m1".into(), 1, "hi".into()), ("m2".into(), 2, "yo".into())]
        );
        let fk: bool = conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .expect("fk");
        assert!(fk, "foreign keys are on again");
        // The reaction still refers to its message, and references are
        // enforced against the rebuilt table.
        let refused = conn.execute(
            "INSERT INTO reactions (message_id, emoji, user_id, ordinal) \
             VALUES ('gone', 'x', 'bob', 1)",
            [],
        );
        assert!(refused.is_err(), "a reaction to no message is refused");
        let dup = conn.execute(
            "INSERT INTO messages (id, chat_id, seq, updated_seq, sender_id, kind, \
               client_msg_id, created_at) VALUES ('m3', 'c1', 3, 3, 'alice', 'text', 'k1', 0)",
            [],
        );
        assert!(dup.is_err(), "(sender, client_msg_id) is still unique");
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM messages WHERE chat_id = 'c1' \
                 AND seq > 0 AND sender_id <> 'bob' AND kind <> 'system' AND deleted = 0",
                [],
                |r| r.get(3),
            )
            .expect("plan");
        assert!(
            plan.contains("COVERING INDEX messages_log"),
            "unread counts come from the index alone: {plan}"
        );
        // Sync's two queries each read their own index in order.
        for (sql, index) in [
            (
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE chat_id = 'c1' AND seq > 0 \
                 AND seq >= 0 AND updated_seq = seq ORDER BY seq LIMIT 10",
                "messages_log",
            ),
            (
                "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE chat_id = 'c1' \
                 AND updated_seq > 0 AND seq >= 0 AND updated_seq > seq \
                 ORDER BY updated_seq LIMIT 10",
                "messages_changed",
            ),
        ] {
            let plan: Vec<String> = conn
                .prepare(sql)
                .and_then(|mut st| st.query_map([], |r| r.get(3))?.collect())
                .expect("plan");
            let plan = plan.join("; ");
            assert!(plan.contains(index), "{sql}: {plan}");
            assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
        }
        // Only messages changed after they were posted are in the index by
        // updated_seq.
        conn.execute("UPDATE messages SET updated_seq = 3 WHERE id = 'm1'", [])
            .expect("edit");
        let changed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM messages INDEXED BY messages_changed \
                 WHERE chat_id = 'c1' AND updated_seq > 0 AND updated_seq > seq",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(changed, 1);
        // Migrating again changes nothing.
        migrate(&mut conn).expect("again");
    }

    #[test]
    fn version_8_media_rows_are_read_by_their_mime_and_swept_from_the_index() {
        use chat_core::{ChatId, MediaId, MediaKind, Timestamp};

        let mut conn = at_version(8);
        let chat = ChatId::new();
        let ids = [MediaId::new(), MediaId::new(), MediaId::new()];
        for (id, mime, created) in [
            (ids[0], "image/png", 3),
            (ids[1], "audio/ogg", 1),
            (ids[2], "application/pdf", 2),
        ] {
            conn.execute(
                "INSERT INTO media (id, chat_id, uploader_id, mime, size, duration_ms, \
                 has_thumbnail, created_at) VALUES (?1, ?2, 'alice', ?3, 10, NULL, 0, ?4)",
                rusqlite::params![id.to_string(), chat.to_string(), mime, created],
            )
            .expect("v8 media row");
        }
        migrate(&mut conn).expect("migrate");

        let kinds: Vec<(MediaKind, bool, bool)> = ids
            .iter()
            .map(|id| {
                let m = crate::read::media(&conn, *id)
                    .expect("read")
                    .expect("the row is kept");
                (m.kind, m.sealed, m.message_id.is_none())
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (MediaKind::Image, false, true),
                (MediaKind::Voice, false, true),
                (MediaKind::File, false, true),
            ],
            "rows from before have their kind from the mime, unsealed, unattached"
        );
        let swept: Vec<MediaId> =
            crate::read::unattached_media(&conn, Timestamp::from_millis(10), 10)
                .expect("sweep")
                .into_iter()
                .map(|m| m.id)
                .collect();
        assert_eq!(swept, [ids[1], ids[2], ids[0]], "oldest first");

        let plan: Vec<String> = conn
            .prepare(&format!(
                "EXPLAIN QUERY PLAN {}",
                crate::read::UNATTACHED_MEDIA
            ))
            .and_then(|mut st| {
                st.query_map(rusqlite::params![10, 10], |r| r.get(3))?
                    .collect()
            })
            .expect("plan");
        let plan = plan.join("; ");
        assert!(
            plan.contains("media_unattached"),
            "the sweep's index: {plan}"
        );
        assert!(!plan.contains("TEMP B-TREE"), "no sort: {plan}");
    }

    /// Timing a mark's receipts reads a range of the log and of the
    /// receipts by their keys: no scan of either table.
    #[test]
    fn receipt_timing_reads_ranges_by_key() {
        let conn = at_version(MIGRATIONS.len());
        for sql in [crate::write::RECEIPT_DELIVERED, crate::write::RECEIPT_READ] {
            let plan: Vec<String> = conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .and_then(|mut st| {
                    st.query_map(rusqlite::params!["c", 0, 10, "u", 1, 0], |r| r.get(3))?
                        .collect()
                })
                .expect("plan");
            let plan = plan.join("; ");
            assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        }
    }

    /// The audit log's migration runs again without harm (it may be
    /// renumbered), and the database refuses to delete an entry or to
    /// change anything of it but the ids pseudonymization replaces.
    #[test]
    fn the_audit_log_is_append_only() {
        let conn = at_version(MIGRATIONS.len());
        let audit = MIGRATIONS
            .iter()
            .find(|sql| sql.contains("CREATE TABLE IF NOT EXISTS audit_log"))
            .expect("the audit log's migration");
        conn.execute_batch(audit).expect("the migration runs again");
        let (insert, refused, allowed) = chat_core::testing::AUDIT_LOG_SQL;
        conn.execute_batch(insert).expect("append");
        for sql in refused {
            assert!(conn.execute_batch(sql).is_err(), "{sql}");
        }
        conn.execute_batch(allowed).expect("pseudonymization");
    }
}

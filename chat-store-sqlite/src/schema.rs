//! Versioned migrations, tracked in `PRAGMA user_version`.

use rusqlite::{Connection, TransactionBehavior};

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
];

/// The schema version this build creates: the number of migrations.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        });
    }
    let applied = usize::try_from(found).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        tracing::info!(version = i + 1, "applying SQLite migration");
        tx.execute_batch(sql)?;
    }
    if found != SCHEMA_VERSION {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

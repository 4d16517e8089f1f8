//! [`SqliteKeyStore`]: the [`KeyStore`] of a single node, in a SQLite file
//! of its own beside the message database.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use chat_core::{
    ChatId, UserId,
    crypto::{KeyCheck, KeyEpoch, WrappedUserKey},
    keystore::{DataKeyRecord, KeyStore},
    store::rows,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};

use crate::{Error, schema};

/// The key store's schema version: `PRAGMA user_version` of a key store
/// file that is up to date. Independent of the message database's
/// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).
pub const KEYSTORE_SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// `PRAGMA application_id` of a key store file ("CHKS"): tells a key store
/// from a message database, so that the two are never confused. Keeping
/// user keys in the message database would defeat crypto-shredding (a
/// backup of the messages would hold the keys too).
const APPLICATION_ID: i32 = 0x4348_4B53;

/// How long a statement waits for a lock held by another connection (a
/// second process on the same file) before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The migrations, in order: the file's `user_version` is the number of
/// them applied. Never edit one that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE user_keys (
        user_id TEXT PRIMARY KEY NOT NULL,  -- BINARY collation: byte order
        wrapped BLOB NOT NULL
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE data_keys (
        chat_id    TEXT NOT NULL,
        sender     TEXT NOT NULL,
        epoch      INTEGER NOT NULL,
        wrapped    BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (chat_id, sender, epoch)
    ) STRICT, WITHOUT ROWID;
    -- A sender's data keys in every chat (erasure, audits).
    CREATE INDEX data_keys_by_sender ON data_keys (sender);

    -- One row at most.
    CREATE TABLE key_check (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        wrapped BLOB NOT NULL
    ) STRICT;
    "#,
];

/// The SQLite [`KeyStore`]: wrapped user keys, wrapped data keys and the
/// key check, in a file of their own.
///
/// The file must not be the message database: erasing a user reaches old
/// copies of the messages only because their keys live elsewhere, backed
/// up separately and with short retention. [`open`](Self::open) refuses a
/// file that another schema already uses.
///
/// - **Durability.** `journal_mode=WAL` and `synchronous=FULL`: when a call
///   returns `Ok`, its change is fsynced.
/// - **Deletion.** `secure_delete=ON` zeroes the bytes a deleted record
///   occupied, and [`delete_user_key`](KeyStore::delete_user_key) then
///   checkpoints the WAL with `TRUNCATE`, so the older page images that
///   still hold the key leave the WAL file too. Temporary tables and
///   indexes stay in memory (`temp_store=MEMORY`), never in a temp file.
/// - **Concurrency.** One connection behind a mutex, used on tokio's
///   blocking pool: the key store sees a few calls per new user or key
///   epoch (the engine caches unwrapped keys), so a pool would buy
///   nothing. Put-if-absent runs in an `IMMEDIATE` transaction and
///   compare-and-swap is a single `UPDATE ... WHERE wrapped = ?`, so both
///   stay atomic against other processes opening the same file.
/// - **Schema.** Versioned migrations (`PRAGMA user_version`, see
///   [`KEYSTORE_SCHEMA_VERSION`]) run in one transaction when it opens.
pub struct SqliteKeyStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl fmt::Debug for SqliteKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteKeyStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteKeyStore {
    /// Opens (or creates) the key store file at `path` and migrates it to
    /// [`KEYSTORE_SCHEMA_VERSION`].
    ///
    /// Async because opening touches the disk: it runs on the blocking
    /// pool. Fails if the file is another database (the message store's),
    /// or was written by a newer version of this crate.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let opened = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_connection(&opened)).await??;
        tracing::debug!(path = %path.display(), "opened SQLite key store");
        Ok(Self {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The key store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the connection on the blocking pool; `op` names the
    /// operation in errors.
    async fn run<T, F>(&self, op: &'static str, f: F) -> chat_core::Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        let ran = tokio::task::spawn_blocking(move || {
            // A panic inside `f` rolls its transaction back (the
            // transaction's drop), so a poisoned connection is consistent.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await;
        match ran {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(source)) => Err(failed(op, source)),
            Err(join) => Err(failed(op, Error::Task(join))),
        }
    }
}

/// A failed key store operation, as the engine sees it: its message says
/// which store and operation, its source is the SQLite error.
#[derive(Debug, thiserror::Error)]
#[error("SQLite key store: {op} failed: {source}")]
struct KeyStoreFailure {
    op: &'static str,
    #[source]
    source: Error,
}

fn failed(op: &'static str, source: Error) -> chat_core::Error {
    chat_core::Error::backend(KeyStoreFailure { op, source })
}

fn open_connection(path: &Path) -> Result<Connection, Error> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NotWal(mode));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let secure: i64 =
        conn.pragma_update_and_check(None, "secure_delete", "ON", |row| row.get(0))?;
    if secure != 1 {
        return Err(Error::Migration(format!(
            "this SQLite cannot enable secure_delete (it reports {secure})"
        )));
    }
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    let application_id: i32 = tx.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
    let fresh = found == 0 && application_id == 0 && tables == 0;
    if !fresh && application_id != APPLICATION_ID {
        return Err(Error::NotAKeyStore { application_id });
    }
    if !schema::apply_migrations(&tx, MIGRATIONS, "SQLite key store")? {
        return Ok(());
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", KEYSTORE_SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

fn corrupt(column: &'static str, reason: impl fmt::Display) -> Error {
    Error::Corrupt {
        column,
        reason: reason.to_string(),
    }
}

/// The shared decoders of key store rows, with this store's errors.
fn user_key(bytes: Vec<u8>) -> Result<WrappedUserKey, Error> {
    Ok(rows::wrapped_user_key(bytes)?)
}

fn check(bytes: Vec<u8>) -> Result<KeyCheck, Error> {
    Ok(rows::key_check(bytes)?)
}

fn data_key(row: (i64, Vec<u8>, i64)) -> Result<DataKeyRecord, Error> {
    Ok(rows::data_key_record(row)?)
}

fn data_key_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Vec<u8>, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

/// Copies the WAL into the file and truncates it, so that page images
/// written before a deletion leave the WAL file. The deletion is committed
/// either way; if another process keeps the WAL busy, the next checkpoint
/// (the next deletion's, or SQLite's automatic one) finishes the job.
fn checkpoint_truncate(conn: &Connection) -> Result<(), Error> {
    let (busy, log, done): (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    if busy != 0 {
        tracing::warn!(
            wal_frames = log,
            checkpointed = done,
            "the key store's WAL could not be truncated after a deletion (another \
             connection is reading); the deleted key's old pages stay in the WAL \
             until the next checkpoint"
        );
    }
    Ok(())
}

#[async_trait]
impl KeyStore for SqliteKeyStore {
    async fn get_user_key(&self, user: &UserId) -> chat_core::Result<Option<WrappedUserKey>> {
        let user = user.clone();
        self.run("get_user_key", move |conn| {
            conn.prepare_cached("SELECT wrapped FROM user_keys WHERE user_id = ?1")?
                .query_row([user.as_str()], |row| row.get::<_, Vec<u8>>(0))
                .optional()?
                .map(user_key)
                .transpose()
        })
        .await
    }

    async fn put_user_key_if_absent(
        &self,
        user: &UserId,
        key: WrappedUserKey,
    ) -> chat_core::Result<WrappedUserKey> {
        let user = user.clone();
        self.run("put_user_key_if_absent", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO user_keys (user_id, wrapped) VALUES (?1, ?2) \
                     ON CONFLICT (user_id) DO NOTHING",
                )?
                .execute(params![user.as_str(), key.as_bytes()])?;
            let stored = if inserted == 1 {
                key
            } else {
                let bytes: Vec<u8> = tx
                    .prepare_cached("SELECT wrapped FROM user_keys WHERE user_id = ?1")?
                    .query_row([user.as_str()], |row| row.get(0))?;
                user_key(bytes)?
            };
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn replace_user_key(
        &self,
        user: &UserId,
        current: &WrappedUserKey,
        new: WrappedUserKey,
    ) -> chat_core::Result<bool> {
        let (user, current) = (user.clone(), current.clone());
        self.run("replace_user_key", move |conn| {
            let changed = conn
                .prepare_cached(
                    "UPDATE user_keys SET wrapped = ?3 WHERE user_id = ?1 AND wrapped = ?2",
                )?
                .execute(params![user.as_str(), current.as_bytes(), new.as_bytes()])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn delete_user_key(&self, user: &UserId) -> chat_core::Result<bool> {
        let user = user.clone();
        self.run("delete_user_key", move |conn| {
            // The user's data keys stay (the KeyStore contract): useless
            // without this key, they keep the user's epochs from being
            // reused should the id come back.
            let user_keys = conn
                .prepare_cached("DELETE FROM user_keys WHERE user_id = ?1")?
                .execute([user.as_str()])?;
            if user_keys > 0 {
                checkpoint_truncate(conn)?;
            }
            Ok(user_keys == 1)
        })
        .await
    }

    async fn list_user_keys(
        &self,
        after: Option<&UserId>,
        limit: usize,
    ) -> chat_core::Result<Vec<(UserId, WrappedUserKey)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let after = after.cloned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run("list_user_keys", move |conn| {
            let row = |row: &rusqlite::Row<'_>| Ok((row.get::<_, String>(0)?, row.get(1)?));
            let rows: Vec<(String, Vec<u8>)> = match &after {
                Some(after) => conn
                    .prepare_cached(
                        "SELECT user_id, wrapped FROM user_keys WHERE user_id > ?1 \
                         ORDER BY user_id LIMIT ?2",
                    )?
                    .query_map(params![after.as_str(), limit], row)?
                    .collect::<rusqlite::Result<_>>()?,
                None => conn
                    .prepare_cached(
                        "SELECT user_id, wrapped FROM user_keys ORDER BY user_id LIMIT ?1",
                    )?
                    .query_map([limit], row)?
                    .collect::<rusqlite::Result<_>>()?,
            };
            rows.into_iter()
                .map(|(user, bytes)| {
                    let user = UserId::new(user).map_err(|e| corrupt("user_keys.user_id", e))?;
                    Ok((user, user_key(bytes)?))
                })
                .collect()
        })
        .await
    }

    async fn put_data_key_if_absent(
        &self,
        chat: ChatId,
        sender: &UserId,
        record: DataKeyRecord,
    ) -> chat_core::Result<DataKeyRecord> {
        let sender = sender.clone();
        self.run("put_data_key_if_absent", move |conn| {
            let chat = chat.to_string();
            let epoch = i64::from(record.epoch.get());
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO data_keys (chat_id, sender, epoch, wrapped, created_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (chat_id, sender, epoch) DO NOTHING",
                )?
                .execute(params![
                    chat,
                    sender.as_str(),
                    epoch,
                    record.key.as_bytes(),
                    record.created_at.as_millis()
                ])?;
            let stored = if inserted == 1 {
                record
            } else {
                let row = tx
                    .prepare_cached(
                        "SELECT epoch, wrapped, created_at FROM data_keys \
                         WHERE chat_id = ?1 AND sender = ?2 AND epoch = ?3",
                    )?
                    .query_row(params![chat, sender.as_str(), epoch], data_key_row)?;
                data_key(row)?
            };
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn get_data_key(
        &self,
        chat: ChatId,
        sender: &UserId,
        epoch: KeyEpoch,
    ) -> chat_core::Result<Option<DataKeyRecord>> {
        let sender = sender.clone();
        self.run("get_data_key", move |conn| {
            conn.prepare_cached(
                "SELECT epoch, wrapped, created_at FROM data_keys \
                 WHERE chat_id = ?1 AND sender = ?2 AND epoch = ?3",
            )?
            .query_row(
                params![chat.to_string(), sender.as_str(), i64::from(epoch.get())],
                data_key_row,
            )
            .optional()?
            .map(data_key)
            .transpose()
        })
        .await
    }

    async fn latest_data_key(
        &self,
        chat: ChatId,
        sender: &UserId,
    ) -> chat_core::Result<Option<DataKeyRecord>> {
        let sender = sender.clone();
        self.run("latest_data_key", move |conn| {
            conn.prepare_cached(
                "SELECT epoch, wrapped, created_at FROM data_keys \
                 WHERE chat_id = ?1 AND sender = ?2 ORDER BY epoch DESC LIMIT 1",
            )?
            .query_row(params![chat.to_string(), sender.as_str()], data_key_row)
            .optional()?
            .map(data_key)
            .transpose()
        })
        .await
    }

    async fn get_check(&self) -> chat_core::Result<Option<KeyCheck>> {
        self.run("get_check", move |conn| {
            conn.prepare_cached("SELECT wrapped FROM key_check WHERE id = 1")?
                .query_row([], |row| row.get::<_, Vec<u8>>(0))
                .optional()?
                .map(check)
                .transpose()
        })
        .await
    }

    async fn put_check_if_absent(&self, new: KeyCheck) -> chat_core::Result<KeyCheck> {
        self.run("put_check_if_absent", move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let inserted = tx
                .prepare_cached(
                    "INSERT INTO key_check (id, wrapped) VALUES (1, ?1) \
                     ON CONFLICT (id) DO NOTHING",
                )?
                .execute([new.as_bytes()])?;
            let stored = if inserted == 1 {
                new
            } else {
                let bytes: Vec<u8> = tx
                    .prepare_cached("SELECT wrapped FROM key_check WHERE id = 1")?
                    .query_row([], |row| row.get(0))?;
                check(bytes)?
            };
            tx.commit()?;
            Ok(stored)
        })
        .await
    }

    async fn replace_check(&self, current: &KeyCheck, new: KeyCheck) -> chat_core::Result<bool> {
        let current = current.clone();
        self.run("replace_check", move |conn| {
            let changed = conn
                .prepare_cached("UPDATE key_check SET wrapped = ?2 WHERE id = 1 AND wrapped = ?1")?
                .execute(params![current.as_bytes(), new.as_bytes()])?;
            Ok(changed == 1)
        })
        .await
    }
}

//! [`PostgresKeyStore`]: the [`KeyStore`] of a cluster, in a PostgreSQL
//! schema of its own, which may be in a database of its own.

use std::{fmt, time::Duration};

use async_trait::async_trait;
use chat_core::{
    ChatId, UserId,
    crypto::{KeyCheck, KeyEpoch, WrappedUserKey},
    keystore::{DataKeyRecord, KeyStore},
    store::rows,
};
use sqlx::{
    AssertSqlSafe, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::{Error, error::invalid};

/// The key store's schema version, kept in its `schema_version` table:
/// the number of its migrations applied.
pub const KEYSTORE_SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The migrations, in order; `{s}` stands for the quoted schema name.
/// Never edit one that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema. COLLATE "C" orders user ids byte-wise, the
    // order of listing; epochs are u32, hence bigint.
    r#"
    CREATE TABLE {s}.user_keys (
        user_id TEXT COLLATE "C" PRIMARY KEY,
        wrapped BYTEA NOT NULL
    );
    CREATE TABLE {s}.data_keys (
        chat_id    TEXT COLLATE "C" NOT NULL,
        sender     TEXT COLLATE "C" NOT NULL,
        epoch      BIGINT NOT NULL,
        wrapped    BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (chat_id, sender, epoch)
    );
    -- A sender's data keys in every chat (erasure, audits).
    CREATE INDEX data_keys_by_sender ON {s}.data_keys (sender);
    CREATE TABLE {s}.key_check (
        id      INTEGER PRIMARY KEY CHECK (id = 1),
        wrapped BYTEA NOT NULL
    );
    "#,
];

/// How often put-if-absent retries when the record it lost to was deleted
/// before it could read it back.
const PUT_RETRIES: usize = 4;

/// How a [`PostgresKeyStore`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresKeyStoreConfig {
    /// The schema of the key store's tables: lowercase ASCII letters,
    /// digits and `_`, not starting with a digit, at most 63 bytes.
    /// Created if missing. Default `chat_keys`.
    pub schema: String,
    /// Most connections the pool opens. The key store sees a few calls
    /// per new user or key epoch (the engine caches unwrapped keys).
    /// Default 4.
    pub max_connections: u32,
    /// How long a caller waits for a connection before failing. Default 30 s.
    pub acquire_timeout: Duration,
    /// After a deletion, `VACUUM FULL` (rewrite the tables into new files,
    /// under an exclusive lock) instead of a plain `VACUUM`. See
    /// [`PostgresKeyStore`] for what each removes. Default `false`.
    pub vacuum_full: bool,
    /// `application_name` of the connections. Default
    /// `"chat-store-postgres-keys"`.
    pub application_name: String,
}

impl Default for PostgresKeyStoreConfig {
    fn default() -> Self {
        Self {
            schema: "chat_keys".to_owned(),
            max_connections: 4,
            acquire_timeout: Duration::from_secs(30),
            vacuum_full: false,
            application_name: "chat-store-postgres-keys".to_owned(),
        }
    }
}

/// The PostgreSQL [`KeyStore`]: wrapped user keys, wrapped data keys and
/// the key check, in a schema of their own (`chat_keys` by default).
///
/// Point it at a database other than the message store's (its own URL) so
/// that it is backed up separately and with short retention: erasing a
/// user reaches old backups of the messages only because their keys are
/// not in them. Any number of nodes may share one key store.
///
/// - **Schema.** [`connect`](Self::connect) creates the schema and its
///   tables, or migrates them (see [`KEYSTORE_SCHEMA_VERSION`]), in one
///   transaction under an advisory lock, so nodes starting together do it
///   once.
/// - **Atomicity.** Put-if-absent is `INSERT ... ON CONFLICT DO NOTHING`
///   (which waits for a concurrent insert of the same key and yields to
///   it), then a read of the winner in a new snapshot; compare-and-swap is
///   one `UPDATE ... WHERE wrapped = $current`, which PostgreSQL
///   re-evaluates on the newest row version after waiting for a
///   concurrent update.
/// - **Deletion.** [`delete_user_key`](KeyStore::delete_user_key) deletes
///   the user key and its data keys in one transaction, then vacuums both
///   tables (outside a transaction, which `VACUUM` requires). A plain
///   `VACUUM` removes the dead row versions and their index entries, so
///   their space is reused by later writes, but PostgreSQL does not zero
///   the freed bytes; [`PostgresKeyStoreConfig::vacuum_full`] rewrites the
///   tables into new files instead, which drops the old files. Vacuuming is
///   best effort: if it fails, the deletion stands and a warning is
///   logged. Neither reaches PostgreSQL's own WAL (nor archived WAL or
///   base backups): keep the key store's retention short.
/// - **Durability** is PostgreSQL's: with `synchronous_commit = on` an `Ok`
///   change survives a crash.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresKeyStore {
    pool: PgPool,
    /// `"schema"`, validated and quoted, for the queries.
    quoted: String,
    config: PostgresKeyStoreConfig,
}

impl fmt::Debug for PostgresKeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresKeyStore")
            .field("schema", &self.config.schema)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// A failed key store operation, as the engine sees it: its message says
/// which store and operation, its source is the database error.
#[derive(Debug, thiserror::Error)]
#[error("PostgreSQL key store: {op} failed: {source}")]
struct KeyStoreFailure {
    op: &'static str,
    #[source]
    source: Error,
}

/// Adds the operation's name to an error, for the engine.
fn op<T>(op: &'static str, r: Result<T, Error>) -> chat_core::Result<T> {
    r.map_err(|source| match source {
        Error::Contract(e) => e,
        source => chat_core::Error::backend(KeyStoreFailure { op, source }),
    })
}

/// Whether `schema` is a name that needs no escaping (and folds to itself).
fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && schema.len() <= 63
}

impl PostgresKeyStore {
    /// Connects to the database at `url` with the default
    /// [`PostgresKeyStoreConfig`] (schema `chat_keys`), creating or
    /// migrating the schema.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresKeyStoreConfig::default()).await
    }

    /// Connects to the database at `url` with `config`, creating or
    /// migrating the schema. Fails if the schema name is not valid, no
    /// connection can be opened, or the schema is newer than this build.
    pub async fn connect_with(url: &str, config: PostgresKeyStoreConfig) -> Result<Self, Error> {
        if !valid_schema(&config.schema) {
            return Err(invalid(format!(
                "key store schema {:?}: use lowercase ASCII letters, digits and _ \
                 (not first), at most 63 bytes",
                config.schema
            )));
        }
        let options: PgConnectOptions = url.parse()?;
        let options = options.application_name(&config.application_name);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await?;
        let store = Self {
            pool,
            quoted: format!("\"{}\"", config.schema),
            config,
        };
        store.migrate().await?;
        tracing::debug!(schema = %store.config.schema, "connected the PostgreSQL key store");
        Ok(store)
    }

    /// The schema of the key store's tables.
    pub fn schema(&self) -> &str {
        &self.config.schema
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Closes the pool: waits for the connections in use to come back and
    /// closes all of them.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// `template` with `{s}` replaced by the quoted schema (validated at
    /// connect, so safe to splice).
    fn sql(&self, template: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(template.replace("{s}", &self.quoted))
    }

    /// Creates the schema or brings it to [`KEYSTORE_SCHEMA_VERSION`], in
    /// one transaction under an advisory lock of this schema's name.
    async fn migrate(&self) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("chat-keystore:{}", self.config.schema))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(self.sql(
            "CREATE SCHEMA IF NOT EXISTS {s};
             CREATE TABLE IF NOT EXISTS {s}.schema_version (
                 id      INTEGER PRIMARY KEY CHECK (id = 1),
                 version INTEGER NOT NULL
             );",
        ))
        .execute(&mut *tx)
        .await?;
        let found: i32 =
            sqlx::query_scalar(self.sql("SELECT version FROM {s}.schema_version WHERE id = 1"))
                .fetch_optional(&mut *tx)
                .await?
                .unwrap_or(0);
        if found > KEYSTORE_SCHEMA_VERSION {
            return Err(invalid(format!(
                "the key store schema {} has version {found}, this build knows up to {}",
                self.config.schema, KEYSTORE_SCHEMA_VERSION
            )));
        }
        if found == KEYSTORE_SCHEMA_VERSION {
            return Ok(());
        }
        let applied = usize::try_from(found).unwrap_or(0);
        for (i, migration) in MIGRATIONS.iter().enumerate().skip(applied) {
            tracing::info!(version = i + 1, schema = %self.config.schema,
                "applying PostgreSQL key store migration");
            sqlx::raw_sql(self.sql(migration)).execute(&mut *tx).await?;
        }
        sqlx::query(self.sql(
            "INSERT INTO {s}.schema_version (id, version) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
        ))
        .bind(KEYSTORE_SCHEMA_VERSION)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_user_key_(&self, user: &UserId) -> Result<Option<WrappedUserKey>, Error> {
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar(self.sql("SELECT wrapped FROM {s}.user_keys WHERE user_id = $1"))
                .bind(user.as_str())
                .fetch_optional(&self.pool)
                .await?;
        bytes.map(user_key).transpose()
    }

    async fn put_user_key_(
        &self,
        user: &UserId,
        key: WrappedUserKey,
    ) -> Result<WrappedUserKey, Error> {
        for _ in 0..PUT_RETRIES {
            let inserted = sqlx::query(self.sql(
                "INSERT INTO {s}.user_keys (user_id, wrapped) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO NOTHING",
            ))
            .bind(user.as_str())
            .bind(key.as_bytes())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(key);
            }
            // Another key won; read it in a snapshot taken after it
            // committed. `None`: it was deleted meanwhile, try again.
            if let Some(stored) = self.get_user_key_(user).await? {
                return Ok(stored);
            }
        }
        Err(Error::Contract(chat_core::Error::conflict(format!(
            "{user}'s key kept being deleted while it was stored; try again"
        ))))
    }

    async fn replace_user_key_(
        &self,
        user: &UserId,
        current: &WrappedUserKey,
        new: WrappedUserKey,
    ) -> Result<bool, Error> {
        let changed = sqlx::query(
            self.sql("UPDATE {s}.user_keys SET wrapped = $3 WHERE user_id = $1 AND wrapped = $2"),
        )
        .bind(user.as_str())
        .bind(current.as_bytes())
        .bind(new.as_bytes())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn delete_user_key_(&self, user: &UserId) -> Result<bool, Error> {
        // The user's data keys stay (the KeyStore contract): useless
        // without this key, they keep the user's epochs from being reused
        // should the id come back.
        let user_keys = sqlx::query(self.sql("DELETE FROM {s}.user_keys WHERE user_id = $1"))
            .bind(user.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
        if user_keys > 0 {
            self.vacuum().await;
        }
        Ok(user_keys == 1)
    }

    /// Vacuums the user key table after a deletion; best effort (the deletion
    /// is committed already), a failure is logged.
    async fn vacuum(&self) {
        let sql = if self.config.vacuum_full {
            "VACUUM FULL {s}.user_keys"
        } else {
            "VACUUM {s}.user_keys"
        };
        // The simple query protocol: VACUUM cannot run in the implicit
        // transaction of an extended-protocol statement.
        if let Err(e) = sqlx::raw_sql(self.sql(sql)).execute(&self.pool).await {
            tracing::warn!(
                schema = %self.config.schema,
                error = %e,
                "could not vacuum the key store after a deletion: the deleted key's \
                 dead row versions stay in the table files until the next vacuum"
            );
        }
    }

    async fn list_user_keys_(
        &self,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, WrappedUserKey)>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // `$1 IS NULL`: from the first user.
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(self.sql(
            "SELECT user_id, wrapped FROM {s}.user_keys \
             WHERE $1::text IS NULL OR user_id > $1 ORDER BY user_id LIMIT $2",
        ))
        .bind(after.map(UserId::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(user, bytes)| {
                let user = UserId::new(user).map_err(|e| corrupt("user_keys.user_id", e))?;
                Ok((user, user_key(bytes)?))
            })
            .collect()
    }

    async fn put_data_key_(
        &self,
        chat: ChatId,
        sender: &UserId,
        record: DataKeyRecord,
    ) -> Result<DataKeyRecord, Error> {
        let epoch = record.epoch;
        for _ in 0..PUT_RETRIES {
            let inserted = sqlx::query(self.sql(
                "INSERT INTO {s}.data_keys (chat_id, sender, epoch, wrapped, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (chat_id, sender, epoch) DO NOTHING",
            ))
            .bind(chat.to_string())
            .bind(sender.as_str())
            .bind(i64::from(epoch.get()))
            .bind(record.key.as_bytes())
            .bind(record.created_at.as_millis())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(record);
            }
            if let Some(stored) = self.get_data_key_(chat, sender, epoch).await? {
                return Ok(stored);
            }
        }
        Err(Error::Contract(chat_core::Error::conflict(format!(
            "{sender}'s data key kept being deleted while it was stored; try again"
        ))))
    }

    async fn get_data_key_(
        &self,
        chat: ChatId,
        sender: &UserId,
        epoch: KeyEpoch,
    ) -> Result<Option<DataKeyRecord>, Error> {
        let row: Option<(i64, Vec<u8>, i64)> = sqlx::query_as(self.sql(
            "SELECT epoch, wrapped, created_at FROM {s}.data_keys \
             WHERE chat_id = $1 AND sender = $2 AND epoch = $3",
        ))
        .bind(chat.to_string())
        .bind(sender.as_str())
        .bind(i64::from(epoch.get()))
        .fetch_optional(&self.pool)
        .await?;
        row.map(data_key).transpose()
    }

    async fn latest_data_key_(
        &self,
        chat: ChatId,
        sender: &UserId,
    ) -> Result<Option<DataKeyRecord>, Error> {
        let row: Option<(i64, Vec<u8>, i64)> = sqlx::query_as(self.sql(
            "SELECT epoch, wrapped, created_at FROM {s}.data_keys \
             WHERE chat_id = $1 AND sender = $2 ORDER BY epoch DESC LIMIT 1",
        ))
        .bind(chat.to_string())
        .bind(sender.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(data_key).transpose()
    }

    async fn get_check_(&self) -> Result<Option<KeyCheck>, Error> {
        let bytes: Option<Vec<u8>> =
            sqlx::query_scalar(self.sql("SELECT wrapped FROM {s}.key_check WHERE id = 1"))
                .fetch_optional(&self.pool)
                .await?;
        bytes.map(check).transpose()
    }

    async fn put_check_(&self, new: KeyCheck) -> Result<KeyCheck, Error> {
        for _ in 0..PUT_RETRIES {
            let inserted = sqlx::query(self.sql(
                "INSERT INTO {s}.key_check (id, wrapped) VALUES (1, $1) \
                 ON CONFLICT (id) DO NOTHING",
            ))
            .bind(new.as_bytes())
            .execute(&self.pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(new);
            }
            if let Some(stored) = self.get_check_().await? {
                return Ok(stored);
            }
        }
        Err(Error::Contract(chat_core::Error::conflict(
            "the key check kept being deleted while it was stored; try again",
        )))
    }

    async fn replace_check_(&self, current: &KeyCheck, new: KeyCheck) -> Result<bool, Error> {
        let changed = sqlx::query(
            self.sql("UPDATE {s}.key_check SET wrapped = $2 WHERE id = 1 AND wrapped = $1"),
        )
        .bind(current.as_bytes())
        .bind(new.as_bytes())
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(changed == 1)
    }
}

fn corrupt(column: &'static str, reason: impl ToString) -> Error {
    Error::corrupt(column, reason)
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

#[async_trait]
impl KeyStore for PostgresKeyStore {
    async fn get_user_key(&self, user: &UserId) -> chat_core::Result<Option<WrappedUserKey>> {
        op("get_user_key", self.get_user_key_(user).await)
    }

    async fn put_user_key_if_absent(
        &self,
        user: &UserId,
        key: WrappedUserKey,
    ) -> chat_core::Result<WrappedUserKey> {
        op(
            "put_user_key_if_absent",
            self.put_user_key_(user, key).await,
        )
    }

    async fn replace_user_key(
        &self,
        user: &UserId,
        current: &WrappedUserKey,
        new: WrappedUserKey,
    ) -> chat_core::Result<bool> {
        op(
            "replace_user_key",
            self.replace_user_key_(user, current, new).await,
        )
    }

    async fn delete_user_key(&self, user: &UserId) -> chat_core::Result<bool> {
        op("delete_user_key", self.delete_user_key_(user).await)
    }

    async fn list_user_keys(
        &self,
        after: Option<&UserId>,
        limit: usize,
    ) -> chat_core::Result<Vec<(UserId, WrappedUserKey)>> {
        op("list_user_keys", self.list_user_keys_(after, limit).await)
    }

    async fn put_data_key_if_absent(
        &self,
        chat: ChatId,
        sender: &UserId,
        record: DataKeyRecord,
    ) -> chat_core::Result<DataKeyRecord> {
        op(
            "put_data_key_if_absent",
            self.put_data_key_(chat, sender, record).await,
        )
    }

    async fn get_data_key(
        &self,
        chat: ChatId,
        sender: &UserId,
        epoch: KeyEpoch,
    ) -> chat_core::Result<Option<DataKeyRecord>> {
        op(
            "get_data_key",
            self.get_data_key_(chat, sender, epoch).await,
        )
    }

    async fn latest_data_key(
        &self,
        chat: ChatId,
        sender: &UserId,
    ) -> chat_core::Result<Option<DataKeyRecord>> {
        op("latest_data_key", self.latest_data_key_(chat, sender).await)
    }

    async fn get_check(&self) -> chat_core::Result<Option<KeyCheck>> {
        op("get_check", self.get_check_().await)
    }

    async fn put_check_if_absent(&self, check: KeyCheck) -> chat_core::Result<KeyCheck> {
        op("put_check_if_absent", self.put_check_(check).await)
    }

    async fn replace_check(&self, current: &KeyCheck, new: KeyCheck) -> chat_core::Result<bool> {
        op("replace_check", self.replace_check_(current, new).await)
    }
}

#[cfg(test)]
mod tests {
    use super::valid_schema;

    #[test]
    fn schema_names_that_need_quoting_are_refused() {
        for good in ["chat_keys", "_k", "keys2"] {
            assert!(valid_schema(good), "{good}");
        }
        for bad in [
            "",
            "2keys",
            "Keys",
            "chat-keys",
            "a\"b",
            "a b",
            &"k".repeat(64),
        ] {
            assert!(!valid_schema(bad), "{bad}");
        }
    }
}

//! PostgreSQL implementation of the chat engine's [`Store`]: for several
//! server nodes sharing one database.
//!
//! [`PostgresStore`] keeps everything in PostgreSQL through a pool of
//! [`sqlx`] connections. Any number of nodes (processes, each with its own
//! store and pool) may write to the same database at once; every rule of
//! the [`Store`] contract holds across them, because the database enforces
//! it, not the process:
//!
//! - **Seqs.** Every change of a chat's log takes the chat's next seq with
//!   `UPDATE chats SET last_seq = last_seq + 1 ... RETURNING last_seq` in the
//!   transaction that stores the change. A batch first locks the rows of the
//!   chats it touches (in id order, so batches never deadlock), so the
//!   writers of one chat, on every node, queue on its row: seqs are unique
//!   and gap-free, and the checks a change makes (a deleted message, a full
//!   group, the distinct-reaction limit) still hold when it writes.
//! - **Idempotency.** `(sender_id, client_msg_id)` has a unique index. A
//!   post looks the key up, then inserts with `ON CONFLICT DO NOTHING`; if a
//!   concurrent post of the same key on another connection won in between,
//!   the post rolls back to its savepoint (giving back the seq it took) and
//!   returns the stored message with `duplicate: true` (or `Conflict` if it
//!   is in another chat).
//! - **Batches.** [`Store::apply`] runs its batch in one transaction, each
//!   change in its own `SAVEPOINT` (a failing change fails alone and leaves
//!   no trace) and commits once. Runs of consecutive posts are stored with
//!   multi-row statements (one `UPDATE chats ... last_seq + n` and one
//!   `INSERT ... SELECT FROM UNNEST(...)`) when none of them can fail; see
//!   [`PostgresConfig::bulk_posts`].
//! - **Direct chats** have a unique key per unordered pair of users, so
//!   concurrent creations of one pair's chat store one chat; open reports
//!   are unique per reporter and message the same way. A direct chat one
//!   side left gives its key up, so that the pair can open a new one.
//! - **Durability** is PostgreSQL's: `apply` returns after `COMMIT`, so with
//!   the default `synchronous_commit = on` an `Ok` change survives a crash.
//! - **Reads** use the pool; each is a single statement, hence one
//!   consistent snapshot that includes every committed change
//!   ([`Store::stats`], three statements, runs them in one read-only
//!   `REPEATABLE READ` transaction for the same reason).
//! - **Analytics.** [`Store::record_session`] counts sessions per day and
//!   user in `daily_sessions`; a `Change::Mark` that moves a watermark
//!   records, in its transaction, when the messages it covers were first
//!   delivered and read (`receipt_times`, at most `RECEIPT_WINDOW` rows
//!   by the log's `(chat_id, seq)` index). [`Store::stats`] counts the
//!   rest from `messages` and `chats` as they are: `messages` has no index
//!   for it, so that posting does not pay for analytics.
//! - **Schema.** [`PostgresStore::migrate`] runs the migrations of this
//!   crate's `migrations/` directory ([`MIGRATOR`]); sqlx records them in
//!   `_sqlx_migrations` and serializes concurrent runs with an advisory
//!   lock, so every node may call it at startup.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `batch` | `apply`: the transaction, savepoints, bulk posts |
//! | `write` | the changes and the other writes |
//! | `read` | queries and row mapping |
//! | `keystore` | [`PostgresKeyStore`], the key store in a schema of its own |
//! | `error` | [`Error`] and its conversion into [`chat_core::Error`] |
//!
//! # Key store
//!
//! [`PostgresKeyStore`] implements [`chat_core::keystore::KeyStore`] in a
//! schema of its own (`chat_keys` by default), created at connect, in the
//! database its URL names: point it at a database other than the message
//! store's, backed up separately, so that erasing a user's key reaches
//! old backups of the messages. See its docs for how deletions are
//! vacuumed and what that cannot reach.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use chat_core::{
//!     ChatId, ChatKind, MessageId, MessageType, Role, Store, Timestamp, UserId,
//!     store::{Applied, Change, Committed, NewChat, NewMessage},
//! };
//! use chat_store_postgres::PostgresStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PostgresStore::connect("postgres://chat@127.0.0.1:5432/chat").await?;
//! store.migrate().await?;
//! let store: Arc<dyn Store> = Arc::new(store);
//!
//! let alice = UserId::new("alice")?;
//! let (chat, _) = store
//!     .create_chat(NewChat {
//!         id: ChatId::new(),
//!         kind: ChatKind::Group,
//!         name: Some("team".into()),
//!         description: None,
//!         avatar_url: None,
//!         encryption: Default::default(),
//!         participants: vec![(alice.clone(), Role::Admin)],
//!         created_at: Timestamp::now(),
//!     })
//!     .await?;
//!
//! let post = Change::Post(NewMessage {
//!     mls: None,
//!     id: MessageId::new(),
//!     chat_id: chat.id,
//!     sender_id: alice,
//!     kind: MessageType::Text,
//!     content: Some("hello".into()),
//!     media: None,
//!     reply_to: None,
//!     client_msg_id: Some("c-1".into()),
//!     system: None,
//!     created_at: Timestamp::now(),
//! });
//! let mut results = store.apply(vec![post]).await;
//! let Some(Ok(Committed { applied: Applied::Posted { message, .. }, .. })) = results.pop() else {
//!     panic!("the post failed");
//! };
//! assert_eq!(message.seq, 1);
//! # Ok(())
//! # }
//! ```

mod batch;
mod error;
mod keystore;
mod read;
mod write;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chat_core::{
    AuditEntry, Chat, ChatId, DeviceId, MediaId, MediaRecord, Message, MessageId,
    ParticipantSettings, Privacy, Report, ReportId, Store, Timestamp, UserId, UserRecord,
    mls::ClaimedKeyPackage,
    store::{
        AuditQuery, Change, ChatListQuery, CheckinAnswer, Committed, ErasedRows, ExpiredMessage,
        HeldReports, HeldSnapshot, HistoryQuery, NewChat, ReportQuery, ReportResolution,
        RetentionChat, SentMessage, StatsRows, StoredText, TextReplacement, TextTable,
        UserReaction,
    },
};
use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

pub use batch::BatchStats;
pub use error::Error;
pub use keystore::{KEYSTORE_SCHEMA_VERSION, PostgresKeyStore, PostgresKeyStoreConfig};
pub use sqlx;

/// The migrations of this crate (`migrations/`), embedded at build time.
/// [`PostgresStore::migrate`] runs them; use this to run them elsewhere
/// (a deploy step) or to inspect them.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How a [`PostgresStore`] connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Most connections the pool opens. Each running `apply` holds one for
    /// its transaction, and each read one for its statement. Default 10.
    pub max_connections: u32,
    /// Connections the pool keeps open when idle. Default 0.
    pub min_connections: u32,
    /// How long a caller waits for a connection before failing with a
    /// backend error. Default 30 s.
    pub acquire_timeout: Duration,
    /// Store runs of consecutive posts of a batch with multi-row statements
    /// when none of them can fail (the per-change path decides the others).
    /// Both paths give the same results; `false` is for comparing them.
    /// Default `true`.
    pub bulk_posts: bool,
    /// `application_name` of the connections, as `pg_stat_activity` shows
    /// it. Default `"chat-store-postgres"`.
    pub application_name: String,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            max_connections: 10,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(30),
            bulk_posts: true,
            application_name: "chat-store-postgres".to_owned(),
        }
    }
}

/// The PostgreSQL [`Store`]. See the [crate docs](crate) for how it works.
///
/// Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    config: PostgresConfig,
    counters: Arc<batch::Counters>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("config", &self.config)
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects a pool with the default [`PostgresConfig`] to the database
    /// at `url` (`postgres://user:password@host:port/database?options`).
    /// Does not migrate: call [`migrate`](Self::migrate).
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(url, PostgresConfig::default()).await
    }

    /// Connects a pool with `config` to the database at `url`; fails if no
    /// connection can be opened. Does not migrate.
    pub async fn connect_with(url: &str, config: PostgresConfig) -> Result<Self, Error> {
        let options: PgConnectOptions = url.parse()?;
        let options = options.application_name(&config.application_name);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(config.min_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await?;
        tracing::debug!(?config, "connected the PostgreSQL store");
        Ok(Self::from_pool(pool, config))
    }

    /// A store over an existing pool (the pool's own options apply;
    /// `config` is read for [`PostgresConfig::bulk_posts`]).
    pub fn from_pool(pool: PgPool, config: PostgresConfig) -> Self {
        Self {
            pool,
            config,
            counters: Arc::default(),
        }
    }

    /// Brings the database's schema up to date: runs the migrations of
    /// [`MIGRATOR`] that it lacks. Safe to call from several nodes at once.
    pub async fn migrate(&self) -> Result<(), Error> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The configuration the store was made with.
    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    /// How this store's `apply` calls went so far (this process only).
    pub fn stats(&self) -> BatchStats {
        self.counters.snapshot()
    }

    /// Closes the pool: waits for the connections in use to come back and
    /// closes all of them.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Converts the crate's error into the engine's.
fn core<T>(r: Result<T, Error>) -> chat_core::Result<T> {
    r.map_err(Into::into)
}

#[async_trait]
impl Store for PostgresStore {
    async fn apply(&self, changes: Vec<Change>) -> Vec<chat_core::Result<Committed>> {
        batch::apply(&self.pool, changes, self.config.bulk_posts, &self.counters).await
    }

    async fn create_chat(&self, chat: NewChat) -> chat_core::Result<(Chat, bool)> {
        core(write::create_chat(&self.pool, chat).await)
    }

    async fn get_chat(&self, id: ChatId) -> chat_core::Result<Option<Chat>> {
        core(read::chat(&self.pool, id).await)
    }

    async fn find_direct_chat(&self, a: &UserId, b: &UserId) -> chat_core::Result<Option<Chat>> {
        core(read::direct_chat(&self.pool, a, b).await)
    }

    async fn list_chats(
        &self,
        user: &UserId,
        query: ChatListQuery,
    ) -> chat_core::Result<Vec<Chat>> {
        core(read::list_chats(&self.pool, user, query).await)
    }

    async fn set_participant_settings(
        &self,
        chat: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> chat_core::Result<()> {
        core(write::set_participant_settings(&self.pool, chat, user, settings).await)
    }

    async fn group_count(&self, user: &UserId) -> chat_core::Result<u64> {
        core(read::group_count(&self.pool, user).await)
    }

    async fn co_members(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        core(read::co_members(&self.pool, user).await)
    }

    async fn get_message(&self, id: MessageId) -> chat_core::Result<Option<Message>> {
        core(read::message(&self.pool, id).await)
    }

    async fn find_by_client_id(
        &self,
        sender: &UserId,
        client_msg_id: &str,
    ) -> chat_core::Result<Option<Message>> {
        core(read::by_client_id(&self.pool, sender, client_msg_id).await)
    }

    async fn history(&self, chat: ChatId, query: HistoryQuery) -> chat_core::Result<Vec<Message>> {
        core(read::history(&self.pool, chat, query).await)
    }

    async fn changes(
        &self,
        chat: ChatId,
        after_updated_seq: u64,
        from_seq: u64,
        limit: usize,
    ) -> chat_core::Result<Vec<Message>> {
        core(read::changes(&self.pool, chat, after_updated_seq, from_seq, limit).await)
    }

    async fn unread_count(
        &self,
        chat: ChatId,
        user: &UserId,
        after_seq: u64,
    ) -> chat_core::Result<u64> {
        core(read::unread_count(&self.pool, chat, user, after_seq).await)
    }

    async fn set_block(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        on: bool,
    ) -> chat_core::Result<bool> {
        core(write::set_block(&self.pool, blocker, blocked, on).await)
    }

    async fn blocked_by_user(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        core(read::blocked_by_user(&self.pool, user).await)
    }

    async fn blockers_of(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        core(read::blockers_of(&self.pool, user).await)
    }

    async fn is_blocked_either(&self, a: &UserId, b: &UserId) -> chat_core::Result<bool> {
        core(read::is_blocked_either(&self.pool, a, b).await)
    }

    async fn get_user(&self, user: &UserId) -> chat_core::Result<Option<UserRecord>> {
        core(read::user_record(&self.pool, user).await)
    }

    async fn get_users(&self, users: &[UserId]) -> chat_core::Result<Vec<Option<UserRecord>>> {
        core(read::user_records(&self.pool, users).await)
    }

    async fn set_last_seen(&self, user: &UserId, at: Timestamp) -> chat_core::Result<()> {
        core(write::set_last_seen(&self.pool, user, at).await)
    }

    async fn set_privacy(&self, user: &UserId, privacy: Privacy) -> chat_core::Result<()> {
        core(write::set_privacy(&self.pool, user, privacy).await)
    }

    async fn set_silenced(
        &self,
        chat: ChatId,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> chat_core::Result<bool> {
        core(write::set_silenced(&self.pool, chat, user, until).await)
    }

    async fn set_suspension(
        &self,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> chat_core::Result<()> {
        core(write::set_suspension(&self.pool, user, until).await)
    }

    async fn insert_report(&self, report: Report) -> chat_core::Result<Report> {
        core(write::insert_report(&self.pool, report).await)
    }

    async fn get_report(&self, id: ReportId) -> chat_core::Result<Option<Report>> {
        core(read::report(&self.pool, id).await)
    }

    async fn list_reports(&self, query: ReportQuery) -> chat_core::Result<Vec<Report>> {
        core(read::list_reports(&self.pool, &query).await)
    }

    async fn resolve_report(&self, resolution: ReportResolution) -> chat_core::Result<Report> {
        core(write::resolve_report(&self.pool, resolution).await)
    }

    async fn append_audit(&self, entry: AuditEntry) -> chat_core::Result<()> {
        core(write::append_audit(&self.pool, entry).await)
    }

    async fn list_audit(&self, query: AuditQuery) -> chat_core::Result<Vec<AuditEntry>> {
        core(read::list_audit(&self.pool, &query).await)
    }

    async fn pseudonymize_audit(
        &self,
        user: &UserId,
        pseudonym: &UserId,
    ) -> chat_core::Result<u64> {
        core(write::pseudonymize_audit(&self.pool, user, pseudonym).await)
    }

    async fn insert_media(&self, record: MediaRecord) -> chat_core::Result<()> {
        core(write::insert_media(&self.pool, record).await)
    }

    async fn get_media(&self, id: MediaId) -> chat_core::Result<Option<MediaRecord>> {
        core(read::media(&self.pool, id).await)
    }

    async fn attach_media(&self, id: MediaId, message: MessageId) -> chat_core::Result<bool> {
        core(write::attach_media(&self.pool, id, message).await)
    }

    async fn detach_media(&self, id: MediaId, message: MessageId) -> chat_core::Result<()> {
        core(write::detach_media(&self.pool, id, message).await)
    }

    async fn delete_media(&self, id: MediaId) -> chat_core::Result<Option<MediaRecord>> {
        core(write::delete_media(&self.pool, id).await)
    }

    async fn unattached_media(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> chat_core::Result<Vec<MediaRecord>> {
        core(read::unattached_media(&self.pool, before, limit).await)
    }

    async fn retention_chats(
        &self,
        after: Option<ChatId>,
        limit: usize,
    ) -> chat_core::Result<Vec<RetentionChat>> {
        core(read::retention_chats(&self.pool, after, limit).await)
    }

    async fn expired_messages(
        &self,
        chat: ChatId,
        after_seq: u64,
        before: Timestamp,
        limit: usize,
    ) -> chat_core::Result<Vec<ExpiredMessage>> {
        core(read::expired_messages(&self.pool, chat, after_seq, before, limit).await)
    }

    async fn set_retention_watermark(&self, chat: ChatId, seq: u64) -> chat_core::Result<()> {
        core(write::set_retention_watermark(&self.pool, chat, seq).await)
    }

    async fn answer_checkin(&self, answer: CheckinAnswer) -> chat_core::Result<()> {
        core(write::answer_checkin(&self.pool, answer).await)
    }

    async fn checkin_answers(&self, message: MessageId) -> chat_core::Result<Vec<CheckinAnswer>> {
        core(read::checkin_answers(&self.pool, message).await)
    }

    async fn answers_by_user(
        &self,
        user: &UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> chat_core::Result<Vec<CheckinAnswer>> {
        core(read::answers_by_user(&self.pool, user, after, limit).await)
    }

    async fn record_session(&self, user: &UserId, at: Timestamp) -> chat_core::Result<()> {
        core(write::record_session(&self.pool, user, at).await)
    }

    async fn stats(&self, from: i64, to: i64) -> chat_core::Result<StatsRows> {
        core(read::stats(&self.pool, from, to).await)
    }

    async fn messages_by_sender(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: usize,
    ) -> chat_core::Result<Vec<SentMessage>> {
        core(read::messages_by_sender(&self.pool, user, after, limit).await)
    }

    async fn reactions_by_user(
        &self,
        user: &UserId,
        limit: usize,
    ) -> chat_core::Result<Vec<UserReaction>> {
        core(read::reactions_by_user(&self.pool, user, limit).await)
    }

    async fn media_by_uploader(
        &self,
        user: &UserId,
        after: Option<MediaId>,
        limit: usize,
    ) -> chat_core::Result<Vec<MediaRecord>> {
        core(read::media_by_uploader(&self.pool, user, after, limit).await)
    }

    async fn hold_reports(
        &self,
        user: &UserId,
        pseudonym: &UserId,
        held: Vec<HeldSnapshot>,
    ) -> chat_core::Result<HeldReports> {
        core(write::hold_reports(&self.pool, user, pseudonym, held).await)
    }

    async fn erase_user_rows(
        &self,
        user: &UserId,
        pseudonym: &UserId,
    ) -> chat_core::Result<ErasedRows> {
        core(write::erase_user_rows(&self.pool, user, pseudonym).await)
    }

    async fn stored_texts(
        &self,
        table: TextTable,
        after: Option<&str>,
        limit: usize,
    ) -> chat_core::Result<Vec<StoredText>> {
        core(read::stored_texts(&self.pool, table, after.unwrap_or(""), limit).await)
    }

    async fn replace_texts(&self, replacements: Vec<TextReplacement>) -> chat_core::Result<usize> {
        core(write::replace_texts(&self.pool, replacements).await)
    }

    async fn get_meta(&self, key: &str) -> chat_core::Result<Option<String>> {
        core(read::meta(&self.pool, key).await)
    }

    async fn set_meta(&self, key: &str, value: &str) -> chat_core::Result<()> {
        core(write::set_meta(&self.pool, key, value).await)
    }

    async fn publish_key_packages(
        &self,
        user: &UserId,
        device: &DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        at: Timestamp,
    ) -> chat_core::Result<u64> {
        core(write::publish_key_packages(&self.pool, user, device, packages, last_resort, at).await)
    }

    async fn claim_key_packages(
        &self,
        users: &[UserId],
    ) -> chat_core::Result<Vec<ClaimedKeyPackage>> {
        core(write::claim_key_packages(&self.pool, users).await)
    }

    async fn get_mls_group(
        &self,
        chat: ChatId,
    ) -> chat_core::Result<Option<chat_core::store::MlsGroupRecord>> {
        core(read::mls_group(&self.pool, chat).await)
    }

    async fn pin_device_key(
        &self,
        user: &UserId,
        device: &DeviceId,
        key: Vec<u8>,
    ) -> chat_core::Result<Vec<u8>> {
        core(write::pin_device_key(&self.pool, user, device, &key).await)
    }

    async fn key_packages_of(
        &self,
        user: &UserId,
    ) -> chat_core::Result<Vec<chat_core::mls::PublishedKeyPackage>> {
        core(write::key_packages_of(&self.pool, user).await)
    }

    async fn device_keys(
        &self,
        devices: &[(UserId, DeviceId)],
    ) -> chat_core::Result<Vec<Option<Vec<u8>>>> {
        core(write::device_keys(&self.pool, devices).await)
    }
}

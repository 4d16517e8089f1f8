//! SQLite implementation of the chat engine's [`Store`]: the embedded
//! default, for a single node.
//!
//! [`SqliteStore`] keeps everything in one database file (through
//! [`rusqlite`], SQLite compiled in):
//!
//! - **One writer, group commit.** Every write is a job for one thread that
//!   owns the write connection. It takes the first waiting job and keeps
//!   taking the jobs queued behind it, including those that arrive while
//!   the group runs (up to [`SqliteConfig::batch_max`] changes), runs them
//!   in one transaction, each change inside its own
//!   SAVEPOINT (a failing change rolls back only itself and fails only its
//!   caller), commits once and then answers the callers. One fsync serves
//!   the whole group. Seqs are taken on that thread, so they are gap-free
//!   without locks. Posts skip the savepoint: they are refused before
//!   their first write or not at all, and an I/O error after it fails the
//!   group, whose callers retry.
//! - **Checkpoints** copy the WAL into the database every
//!   [`SqliteConfig::checkpoint_pages`] pages (10,000 by default, ten times
//!   SQLite's): appends to many chats rewrite the same index pages, and a
//!   checkpoint copies each page once however often it changed.
//! - **Readers** use their own connections ([`SqliteConfig::readers`] of
//!   them) on tokio's blocking pool, each read in one snapshot. Callers
//!   never block a runtime thread.
//! - **Durability.** `journal_mode=WAL` and, by default,
//!   `synchronous=FULL`: when [`Store::apply`] returns, its `Ok` changes
//!   are in the WAL and fsynced, so they survive a crash of the process
//!   and a power loss. [`Synchronous::Normal`] keeps them across a process
//!   crash but may lose the last commits on power loss;
//!   [`Synchronous::Off`] is for tests.
//! - **Deleted means overwritten.** `secure_delete=ON`: content deleted
//!   or replaced (a deleted message's ciphertext, plaintext sealed by
//!   encryption at rest after an upgrade) is overwritten with zeros in the
//!   file rather than left in free pages. Inserts cost the same; a freed
//!   page is written once more.
//! - **Schema.** Versioned migrations (`PRAGMA user_version`, see
//!   [`SCHEMA_VERSION`]) run in one transaction when the store opens, with
//!   foreign keys off (a migration may rebuild a table) and every reference
//!   checked before it commits. Version 3 rebuilds `messages` to keep one
//!   index on the log instead of two; on a large database the first open
//!   after upgrading takes as long as copying the messages. Version 4
//!   indexes by `updated_seq` only the messages changed after they were
//!   posted (sync finds the others on the log), which takes one index
//!   build on the first open. Version 5 adds the `meta` table of
//!   [`Store::get_meta`], version 6 the MLS key package directory,
//!   version 7 MLS commits and groups, version 8 pinned device keys,
//!   version 9 what an upload is and the message it is attached to (with
//!   an index of the unattached ones for the sweep), version 10 the
//!   moderation audit log (append-only: triggers refuse deletions and
//!   rewrites).
//!
//! Dropping the store lets the writer finish the jobs already queued, then
//! it closes its connection and exits; [`SqliteStore::close`] does the same
//! and waits for it.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | `schema` | migrations |
//! | `writer` | the writer thread and its group commit |
//! | `write` | write operations, run by the writer |
//! | `readers`, `read` | the read pool and the queries |
//! | `keystore` | [`SqliteKeyStore`], the key store in a file of its own |
//! | `error` | [`Error`] and its conversion into [`chat_core::Error`] |
//!
//! # Key store
//!
//! [`SqliteKeyStore`] implements [`chat_core::keystore::KeyStore`] in a
//! second SQLite file (by default beside the message database): the
//! wrapped user keys that crypto-shredding deletes must never sit in the
//! message database or its backups. See its docs for durability and how
//! deletions leave no copy in the file or its WAL.
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//!
//! use chat_core::{
//!     ChatId, ChatKind, MessageId, MessageType, Role, Store, Timestamp, UserId,
//!     store::{Applied, Change, Committed, NewChat, NewMessage},
//! };
//! use chat_store_sqlite::SqliteStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("chat.db"))?);
//!
//! let alice = UserId::new("alice")?;
//! let (chat, created) = store
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
//! assert!(created);
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

mod error;
mod keystore;
mod prepared;
mod read;
mod readers;
mod schema;
mod stats;
mod write;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Duration,
};

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
use rusqlite::{Connection, OpenFlags};

pub use error::Error;
pub use keystore::{KEYSTORE_SCHEMA_VERSION, SqliteKeyStore};
pub use rusqlite;
pub use schema::SCHEMA_VERSION;
pub use writer::CommitStats;

use crate::{readers::Readers, writer::Writer};

/// SQLite's `synchronous` setting: how much durability a commit buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// fsync the WAL at every commit: an acknowledged write survives a
    /// crash of the process and a power loss. The default.
    #[default]
    Full,
    /// fsync only at checkpoints: an acknowledged write survives a crash of
    /// the process, but the last ones may be lost on power loss.
    Normal,
    /// Never fsync: fastest, for tests and throwaway data.
    Off,
}

impl Synchronous {
    fn as_str(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

/// How a [`SqliteStore`] is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    /// Durability of a commit. Default [`Synchronous::Full`].
    pub synchronous: Synchronous,
    /// Number of read connections (at least 1). Default 4.
    pub readers: usize,
    /// How long a connection waits for a lock held by another connection
    /// (another process, or a checkpoint) before failing. Default 5 s.
    pub busy_timeout: Duration,
    /// Most changes one group commit carries (at least 1; a single
    /// `apply` with more changes is committed alone). Default 1000.
    pub batch_max: usize,
    /// Page cache of the write connection, KiB. Default 64 MiB: appends
    /// touch every index of the messages table at many chats' positions,
    /// and SQLite's 2 MiB default turns that into page reads and writes.
    pub writer_cache_kib: u32,
    /// Page cache of each read connection, KiB. Default 16 MiB.
    pub reader_cache_kib: u32,
    /// WAL pages after which a commit copies the WAL into the database
    /// (SQLite's `wal_autocheckpoint`). Default 10,000, about 40 MiB of WAL:
    /// a checkpoint copies each page once however often it changed since
    /// the last one, and appends to many chats rewrite the same index
    /// pages, so a longer WAL copies less per message. With SQLite's 1,000
    /// checkpoints took 16% of the server's CPU with 500 busy direct chats
    /// (BENCHMARKS.md).
    pub checkpoint_pages: u32,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            batch_max: 1000,
            writer_cache_kib: 64 * 1024,
            reader_cache_kib: 16 * 1024,
            checkpoint_pages: 10_000,
        }
    }
}

/// The SQLite [`Store`]. See the [crate docs](crate) for how it works.
pub struct SqliteStore {
    path: PathBuf,
    config: SqliteConfig,
    writer: Writer,
    writer_thread: JoinHandle<()>,
    readers: Arc<Readers>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Prepared statements cached per connection; more than the store uses.
const STATEMENT_CACHE: usize = 128;

pub(crate) fn connect(path: &Path, config: &SqliteConfig) -> Result<Connection, Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(config.busy_timeout)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::NotWal(mode));
    }
    conn.pragma_update(None, "synchronous", config.synchronous.as_str())?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Content that is deleted or replaced is overwritten with zeros in the
    // file, not left in free space: deleted messages, and plaintext that
    // was sealed after encryption at rest was turned on. Costs nothing on
    // inserts; a page freed is written once more (rare here).
    conn.pragma_update(None, "secure_delete", true)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` with the default
    /// [`SqliteConfig`], and migrates it to [`SCHEMA_VERSION`].
    ///
    /// Blocks while it opens the file and migrates; call it before the
    /// runtime is busy, or inside `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::open_with(path, SqliteConfig::default())
    }

    /// Opens (or creates) the database at `path` with `config`, and
    /// migrates it to [`SCHEMA_VERSION`].
    pub fn open_with(path: impl AsRef<Path>, config: SqliteConfig) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let mut conn = connect(&path, &config)?;
        // Negative: KiB rather than pages.
        conn.pragma_update(None, "cache_size", -i64::from(config.writer_cache_kib))?;
        conn.pragma_update(None, "wal_autocheckpoint", config.checkpoint_pages)?;
        schema::migrate(&mut conn)?;
        let readers = (0..config.readers.max(1))
            .map(|_| {
                let conn = connect(&path, &config)?;
                conn.pragma_update(None, "query_only", true)?;
                conn.pragma_update(None, "cache_size", -i64::from(config.reader_cache_kib))?;
                Ok(conn)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let (writer, writer_thread) = Writer::spawn(conn, config.batch_max)?;
        tracing::debug!(path = %path.display(), ?config, "opened SQLite store");
        Ok(Self {
            path,
            config,
            writer,
            writer_thread,
            readers: Arc::new(Readers::new(readers)),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &SqliteConfig {
        &self.config
    }

    /// How many group commits the writer has made, and what they carried:
    /// `changes / commits` is the average group size.
    pub fn stats(&self) -> CommitStats {
        self.writer.stats()
    }

    /// Closes the store: the writer finishes every queued job, closes its
    /// connection and exits; returns when it has.
    pub async fn close(self) -> Result<(), Error> {
        let SqliteStore {
            writer,
            writer_thread,
            readers,
            ..
        } = self;
        drop(writer);
        drop(readers);
        tokio::task::spawn_blocking(move || writer_thread.join())
            .await?
            .map_err(|_| Error::Closed)
    }

    /// Runs one write operation as its own step of a group commit.
    async fn write<T, F>(&self, f: F) -> chat_core::Result<T>
    where
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        match self.writer.submit(1, move |batch| batch.step(f)).await {
            Ok(out) => out.map_err(Into::into),
            Err(failed) => Err(Error::from(failed).into()),
        }
    }

    /// [`write`](Self::write) for a write that changes what the writer's
    /// view of members holds: of `chat`, or of every chat (`None`).
    async fn write_forgetting<T, F>(&self, chat: Option<ChatId>, f: F) -> chat_core::Result<T>
    where
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        let submitted = self
            .writer
            .submit(1, move |batch| {
                let out = batch.step(f);
                batch.forget_members(chat);
                out
            })
            .await;
        match submitted {
            Ok(out) => out.map_err(Into::into),
            Err(failed) => Err(Error::from(failed).into()),
        }
    }

    /// Runs a query on a read connection.
    async fn read<T, F>(&self, f: F) -> chat_core::Result<T>
    where
        F: FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
        T: Send + 'static,
    {
        self.readers.read(f).await.map_err(Into::into)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn apply(&self, changes: Vec<Change>) -> Vec<chat_core::Result<Committed>> {
        let n = changes.len();
        if n == 0 {
            return Vec::new();
        }
        let submitted = self
            .writer
            .submit(n, move |batch| {
                changes
                    .into_iter()
                    .map(|change| write::apply(batch, change).map_err(chat_core::Error::from))
                    .collect::<Vec<_>>()
            })
            .await;
        match submitted {
            Ok(results) => results,
            Err(failed) => (0..n)
                .map(|_| Err(Error::from(failed.clone()).into()))
                .collect(),
        }
    }

    async fn create_chat(&self, chat: NewChat) -> chat_core::Result<(Chat, bool)> {
        self.write(move |conn| write::create_chat(conn, chat)).await
    }

    async fn get_chat(&self, id: ChatId) -> chat_core::Result<Option<Chat>> {
        self.read(move |conn| read::chat(conn, id)).await
    }

    async fn find_direct_chat(&self, a: &UserId, b: &UserId) -> chat_core::Result<Option<Chat>> {
        let (a, b) = (a.clone(), b.clone());
        self.read(move |conn| read::direct_chat(conn, &a, &b)).await
    }

    async fn list_chats(
        &self,
        user: &UserId,
        query: ChatListQuery,
    ) -> chat_core::Result<Vec<Chat>> {
        let user = user.clone();
        self.read(move |conn| read::list_chats(conn, &user, query))
            .await
    }

    async fn group_count(&self, user: &UserId) -> chat_core::Result<u64> {
        let user = user.clone();
        self.read(move |conn| read::group_count(conn, &user)).await
    }

    async fn co_members(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        let user = user.clone();
        self.read(move |conn| read::co_members(conn, &user)).await
    }

    async fn get_message(&self, id: MessageId) -> chat_core::Result<Option<Message>> {
        self.read(move |conn| read::message(conn, id)).await
    }

    async fn find_by_client_id(
        &self,
        sender: &UserId,
        client_msg_id: &str,
    ) -> chat_core::Result<Option<Message>> {
        let (sender, cid) = (sender.clone(), client_msg_id.to_owned());
        self.read(move |conn| read::by_client_id(conn, &sender, &cid))
            .await
    }

    async fn history(&self, chat: ChatId, query: HistoryQuery) -> chat_core::Result<Vec<Message>> {
        self.read(move |conn| read::history(conn, chat, query))
            .await
    }

    async fn changes(
        &self,
        chat: ChatId,
        after_updated_seq: u64,
        from_seq: u64,
        limit: usize,
    ) -> chat_core::Result<Vec<Message>> {
        self.read(move |conn| read::changes(conn, chat, after_updated_seq, from_seq, limit))
            .await
    }

    async fn unread_count(
        &self,
        chat: ChatId,
        user: &UserId,
        after_seq: u64,
    ) -> chat_core::Result<u64> {
        let user = user.clone();
        self.read(move |conn| read::unread_count(conn, chat, &user, after_seq))
            .await
    }

    async fn set_block(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        on: bool,
    ) -> chat_core::Result<bool> {
        let (blocker, blocked) = (blocker.clone(), blocked.clone());
        // Which direct chat a block concerns is not worth a read: blocks
        // are rare, and the writer reloads members as it needs them.
        self.write_forgetting(None, move |conn| {
            write::set_block(conn, &blocker, &blocked, on)
        })
        .await
    }

    async fn blocked_by_user(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        let user = user.clone();
        self.read(move |conn| read::blocked_by_user(conn, &user))
            .await
    }

    async fn blockers_of(&self, user: &UserId) -> chat_core::Result<Vec<UserId>> {
        let user = user.clone();
        self.read(move |conn| read::blockers_of(conn, &user)).await
    }

    async fn is_blocked_either(&self, a: &UserId, b: &UserId) -> chat_core::Result<bool> {
        let (a, b) = (a.clone(), b.clone());
        self.read(move |conn| read::is_blocked_either(conn, &a, &b))
            .await
    }

    async fn get_user(&self, user: &UserId) -> chat_core::Result<Option<UserRecord>> {
        let user = user.clone();
        self.read(move |conn| read::user_record(conn, &user)).await
    }

    async fn get_users(&self, users: &[UserId]) -> chat_core::Result<Vec<Option<UserRecord>>> {
        let users = users.to_vec();
        // One trip to a reader and one snapshot for all of them; the
        // statement is prepared once.
        self.read(move |conn| users.iter().map(|u| read::user_record(conn, u)).collect())
            .await
    }

    async fn set_last_seen(&self, user: &UserId, at: Timestamp) -> chat_core::Result<()> {
        let user = user.clone();
        self.write(move |conn| write::set_last_seen(conn, &user, at))
            .await
    }

    async fn set_participant_settings(
        &self,
        chat: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> chat_core::Result<()> {
        let user = user.clone();
        self.write_forgetting(Some(chat), move |conn| {
            write::set_participant_settings(conn, chat, &user, settings)
        })
        .await
    }

    async fn set_privacy(&self, user: &UserId, privacy: Privacy) -> chat_core::Result<()> {
        let user = user.clone();
        self.write(move |conn| write::set_privacy(conn, &user, privacy))
            .await
    }

    async fn set_silenced(
        &self,
        chat: ChatId,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> chat_core::Result<bool> {
        let user = user.clone();
        self.write(move |conn| write::set_silenced(conn, chat, &user, until))
            .await
    }

    async fn set_suspension(
        &self,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> chat_core::Result<()> {
        let user = user.clone();
        self.write(move |conn| write::set_suspension(conn, &user, until))
            .await
    }

    async fn insert_report(&self, report: Report) -> chat_core::Result<Report> {
        self.write(move |conn| write::insert_report(conn, report))
            .await
    }

    async fn get_report(&self, id: ReportId) -> chat_core::Result<Option<Report>> {
        self.read(move |conn| read::report(conn, id)).await
    }

    async fn list_reports(&self, query: ReportQuery) -> chat_core::Result<Vec<Report>> {
        self.read(move |conn| read::list_reports(conn, &query))
            .await
    }

    async fn resolve_report(&self, resolution: ReportResolution) -> chat_core::Result<Report> {
        self.write(move |conn| write::resolve_report(conn, resolution))
            .await
    }

    async fn append_audit(&self, entry: AuditEntry) -> chat_core::Result<()> {
        self.write(move |conn| write::append_audit(conn, entry))
            .await
    }

    async fn list_audit(&self, query: AuditQuery) -> chat_core::Result<Vec<AuditEntry>> {
        self.read(move |conn| read::list_audit(conn, &query)).await
    }

    async fn pseudonymize_audit(
        &self,
        user: &UserId,
        pseudonym: &UserId,
    ) -> chat_core::Result<u64> {
        let (user, pseudonym) = (user.clone(), pseudonym.clone());
        self.write(move |conn| write::pseudonymize_audit(conn, &user, &pseudonym))
            .await
    }

    async fn answer_checkin(&self, answer: CheckinAnswer) -> chat_core::Result<()> {
        self.write(move |conn| write::answer_checkin(conn, answer))
            .await
    }

    async fn checkin_answers(&self, message: MessageId) -> chat_core::Result<Vec<CheckinAnswer>> {
        self.read(move |conn| read::checkin_answers(conn, message))
            .await
    }

    async fn answers_by_user(
        &self,
        user: &UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> chat_core::Result<Vec<CheckinAnswer>> {
        let user = user.clone();
        self.read(move |conn| read::answers_by_user(conn, &user, after, limit))
            .await
    }

    async fn record_session(&self, user: &UserId, at: Timestamp) -> chat_core::Result<()> {
        let user = user.clone();
        self.write(move |conn| write::record_session(conn, &user, at))
            .await
    }

    async fn stats(&self, from: i64, to: i64) -> chat_core::Result<StatsRows> {
        self.read(move |conn| stats::stats(conn, from, to)).await
    }

    async fn messages_by_sender(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: usize,
    ) -> chat_core::Result<Vec<SentMessage>> {
        let (user, after) = (user.clone(), after.map(str::to_owned));
        self.read(move |conn| read::messages_by_sender(conn, &user, after.as_deref(), limit))
            .await
    }

    async fn reactions_by_user(
        &self,
        user: &UserId,
        limit: usize,
    ) -> chat_core::Result<Vec<UserReaction>> {
        let user = user.clone();
        self.read(move |conn| read::reactions_by_user(conn, &user, limit))
            .await
    }

    async fn media_by_uploader(
        &self,
        user: &UserId,
        after: Option<MediaId>,
        limit: usize,
    ) -> chat_core::Result<Vec<MediaRecord>> {
        let user = user.clone();
        self.read(move |conn| read::media_by_uploader(conn, &user, after, limit))
            .await
    }

    async fn hold_reports(
        &self,
        user: &UserId,
        pseudonym: &UserId,
        held: Vec<HeldSnapshot>,
    ) -> chat_core::Result<HeldReports> {
        let (user, pseudonym) = (user.clone(), pseudonym.clone());
        self.write(move |conn| write::hold_reports(conn, &user, &pseudonym, held))
            .await
    }

    async fn erase_user_rows(
        &self,
        user: &UserId,
        pseudonym: &UserId,
    ) -> chat_core::Result<ErasedRows> {
        let (user, pseudonym) = (user.clone(), pseudonym.clone());
        // Memberships and blocks change: the writer's view of members goes.
        self.write_forgetting(None, move |conn| {
            write::erase_user_rows(conn, &user, &pseudonym)
        })
        .await
    }

    async fn insert_media(&self, record: MediaRecord) -> chat_core::Result<()> {
        self.write(move |conn| write::insert_media(conn, record))
            .await
    }

    async fn get_media(&self, id: MediaId) -> chat_core::Result<Option<MediaRecord>> {
        self.read(move |conn| read::media(conn, id)).await
    }

    async fn attach_media(&self, id: MediaId, message: MessageId) -> chat_core::Result<bool> {
        self.write(move |conn| write::attach_media(conn, id, message))
            .await
    }

    async fn detach_media(&self, id: MediaId, message: MessageId) -> chat_core::Result<()> {
        self.write(move |conn| write::detach_media(conn, id, message))
            .await
    }

    async fn delete_media(&self, id: MediaId) -> chat_core::Result<Option<MediaRecord>> {
        self.write(move |conn| write::delete_media(conn, id)).await
    }

    async fn unattached_media(
        &self,
        before: Timestamp,
        limit: usize,
    ) -> chat_core::Result<Vec<MediaRecord>> {
        self.read(move |conn| read::unattached_media(conn, before, limit))
            .await
    }

    async fn retention_chats(
        &self,
        after: Option<ChatId>,
        limit: usize,
    ) -> chat_core::Result<Vec<RetentionChat>> {
        self.read(move |conn| read::retention_chats(conn, after, limit))
            .await
    }

    async fn expired_messages(
        &self,
        chat: ChatId,
        after_seq: u64,
        before: Timestamp,
        limit: usize,
    ) -> chat_core::Result<Vec<ExpiredMessage>> {
        self.read(move |conn| read::expired_messages(conn, chat, after_seq, before, limit))
            .await
    }

    async fn set_retention_watermark(&self, chat: ChatId, seq: u64) -> chat_core::Result<()> {
        self.write(move |conn| write::set_retention_watermark(conn, chat, seq))
            .await
    }

    async fn stored_texts(
        &self,
        table: TextTable,
        after: Option<&str>,
        limit: usize,
    ) -> chat_core::Result<Vec<StoredText>> {
        let after = after.unwrap_or("").to_owned();
        self.read(move |conn| read::stored_texts(conn, table, &after, limit))
            .await
    }

    async fn replace_texts(&self, replacements: Vec<TextReplacement>) -> chat_core::Result<usize> {
        self.write(move |conn| write::replace_texts(conn, replacements))
            .await
    }

    async fn get_meta(&self, key: &str) -> chat_core::Result<Option<String>> {
        let key = key.to_owned();
        self.read(move |conn| read::meta(conn, &key)).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> chat_core::Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.write(move |conn| write::set_meta(conn, &key, &value))
            .await
    }

    async fn publish_key_packages(
        &self,
        user: &UserId,
        device: &DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        at: Timestamp,
    ) -> chat_core::Result<u64> {
        let (user, device) = (user.clone(), device.clone());
        self.write(move |conn| {
            write::publish_key_packages(conn, &user, &device, packages, last_resort, at)
        })
        .await
    }

    async fn claim_key_packages(
        &self,
        users: &[UserId],
    ) -> chat_core::Result<Vec<ClaimedKeyPackage>> {
        let users = users.to_vec();
        self.write(move |conn| write::claim_key_packages(conn, &users))
            .await
    }

    async fn get_mls_group(
        &self,
        chat: ChatId,
    ) -> chat_core::Result<Option<chat_core::store::MlsGroupRecord>> {
        self.read(move |conn| read::mls_group(conn, chat)).await
    }

    async fn pin_device_key(
        &self,
        user: &UserId,
        device: &DeviceId,
        key: Vec<u8>,
    ) -> chat_core::Result<Vec<u8>> {
        let (user, device) = (user.clone(), device.clone());
        self.write(move |conn| write::pin_device_key(conn, &user, &device, &key))
            .await
    }

    async fn key_packages_of(
        &self,
        user: &UserId,
    ) -> chat_core::Result<Vec<chat_core::mls::PublishedKeyPackage>> {
        let user = user.clone();
        self.read(move |conn| read::key_packages_of(conn, &user))
            .await
    }

    async fn device_keys(
        &self,
        devices: &[(UserId, DeviceId)],
    ) -> chat_core::Result<Vec<Option<Vec<u8>>>> {
        let devices = devices.to_vec();
        self.read(move |conn| read::device_keys(conn, &devices))
            .await
    }

    async fn checkpoint(&self) -> chat_core::Result<()> {
        // On a connection of its own: the writer's is inside its group's
        // transaction, where a checkpoint cannot run.
        let (path, config) = (self.path.clone(), self.config.clone());
        tokio::task::spawn_blocking(move || write::checkpoint(&path, &config))
            .await
            .map_err(chat_core::Error::backend)?
            .map_err(Into::into)
    }
}

/// The embedding example of the workspace README, compiled and run as a
/// doctest so that it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

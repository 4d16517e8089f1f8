//! The error type of the crate and its conversion into the engine's error.

use std::sync::Arc;

use chat_core::store::rows::RowError;
use rusqlite::ffi;

/// What can go wrong in a [`SqliteStore`](crate::SqliteStore).
///
/// Converts into [`chat_core::Error`]: contract errors pass through
/// unchanged, unique-constraint violations become
/// [`Conflict`](chat_core::Error::Conflict), everything else becomes
/// [`Backend`](chat_core::Error::Backend) with this error as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// SQLite reported an error.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// The COMMIT of a group of writes failed (or the group's transaction
    /// was lost); every write of the group fails with the same error and
    /// none of them was stored.
    #[error("the group commit failed: {0}")]
    Commit(#[source] Arc<rusqlite::Error>),
    /// A JSON column (media, system event) could not be encoded or decoded.
    #[error("JSON column: {0}")]
    Json(#[from] serde_json::Error),
    /// A stored value does not parse as what its column holds.
    #[error("corrupt value in column {column}: {reason}")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// What is wrong with the value.
        reason: String,
    },
    /// The database file cannot use `journal_mode=WAL` (for example an
    /// in-memory database); the store needs WAL for its concurrent readers.
    #[error("journal_mode=WAL is not available for this database (it reports {0:?})")]
    NotWal(String),
    /// A migration left the database inconsistent; nothing was changed.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The database was written by a newer version of this crate.
    #[error("the database has schema version {found}, this build knows up to {known}")]
    SchemaTooNew {
        /// `PRAGMA user_version` of the file.
        found: i64,
        /// The newest version this build can migrate to.
        known: i64,
    },
    /// The file opened as a key store is another database (most likely the
    /// message database): user keys must live in a file of their own.
    #[error(
        "this file is not a key store (application_id {application_id:#x}); the key store \
         must be a SQLite file of its own, not the message database"
    )]
    NotAKeyStore {
        /// `PRAGMA application_id` of the file.
        application_id: i32,
    },
    /// The write was abandoned: the store was closed, or its writer thread
    /// failed (a panic while running this write, which was rolled back).
    #[error("the store is closed or its writer failed")]
    Closed,
    /// The writer thread could not be started.
    #[error("could not start the writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// A read task on the blocking pool failed (panicked or was cancelled).
    #[error("a read task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An error of the [`Store`](chat_core::Store) contract (not found,
    /// conflict, invalid input), passed through unchanged.
    #[error(transparent)]
    Contract(#[from] chat_core::Error),
}

impl Error {
    /// Whether this is a violation of a UNIQUE or PRIMARY KEY constraint.
    pub fn is_unique_violation(&self) -> bool {
        match self {
            Error::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            _ => false,
        }
    }
}

impl From<RowError> for Error {
    fn from(e: RowError) -> Self {
        match e {
            RowError::Corrupt { column, reason } => Error::Corrupt { column, reason },
            RowError::Json(e) => Error::Json(e),
        }
    }
}

impl From<Error> for chat_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Contract(e) => e,
            e if e.is_unique_violation() => chat_core::Error::conflict("already exists"),
            e => chat_core::Error::backend(e),
        }
    }
}

/// Why a write job got no result: shared by every job of a failed group.
#[derive(Debug, Clone)]
pub(crate) enum Failed {
    /// The group's transaction failed as a whole.
    Commit(Arc<rusqlite::Error>),
    /// The writer is gone (closed, or panicked while running the job).
    Closed,
}

impl From<Failed> for Error {
    fn from(f: Failed) -> Self {
        match f {
            Failed::Commit(e) => Error::Commit(e),
            Failed::Closed => Error::Closed,
        }
    }
}

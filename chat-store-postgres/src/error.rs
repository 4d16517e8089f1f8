//! The error type of the crate and its conversion into the engine's error.

use std::sync::Arc;

use chat_core::store::rows::RowError;

/// What can go wrong in a [`PostgresStore`](crate::PostgresStore).
///
/// Converts into [`chat_core::Error`]: contract errors pass through
/// unchanged, unique violations become
/// [`Conflict`](chat_core::Error::Conflict), values PostgreSQL cannot store
/// (a NUL character in a text) become
/// [`InvalidInput`](chat_core::Error::InvalidInput), everything else becomes
/// [`Backend`](chat_core::Error::Backend) with this error as its source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database (or the connection to it) reported an error.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// Running the migrations failed.
    #[error("migrating the database failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The transaction of a batch failed as a whole (its BEGIN, a
    /// SAVEPOINT, or its COMMIT, or the connection was lost): every change
    /// of the batch fails with the same error and none of them was stored.
    #[error("the batch's transaction failed: {0}")]
    Batch(#[source] Arc<sqlx::Error>),
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
    /// An error of the [`Store`](chat_core::Store) contract (not found,
    /// conflict, invalid input), passed through unchanged.
    #[error(transparent)]
    Contract(#[from] chat_core::Error),
}

impl Error {
    /// The SQLSTATE code of a database error, if this is one.
    pub fn sqlstate(&self) -> Option<String> {
        let db = match self {
            Error::Sqlx(sqlx::Error::Database(db)) => db,
            Error::Batch(e) => match &**e {
                sqlx::Error::Database(db) => db,
                _ => return None,
            },
            _ => return None,
        };
        db.code().map(|c| c.into_owned())
    }

    /// Whether this is a violation of a UNIQUE or PRIMARY KEY constraint.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, Error::Sqlx(sqlx::Error::Database(db)) if db.is_unique_violation())
    }

    pub(crate) fn corrupt(column: &'static str, reason: impl ToString) -> Self {
        Error::Corrupt {
            column,
            reason: reason.to_string(),
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

/// `character_not_in_repertoire` (a NUL in a text) and
/// `untranslatable_character` (`\u0000` in JSONB).
const UNSTORABLE_TEXT: [&str; 2] = ["22021", "22P05"];

impl From<Error> for chat_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Contract(e) => e,
            Error::Sqlx(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                chat_core::Error::conflict(match db.constraint() {
                    Some(constraint) => format!("already exists ({constraint})"),
                    None => "already exists".to_owned(),
                })
            }
            e if e
                .sqlstate()
                .is_some_and(|code| UNSTORABLE_TEXT.contains(&code.as_str())) =>
            {
                chat_core::Error::invalid(format!("the store cannot keep this value: {e}"))
            }
            e => chat_core::Error::backend(e),
        }
    }
}

pub(crate) fn not_found(what: &str) -> Error {
    Error::Contract(chat_core::Error::not_found(what))
}

pub(crate) fn conflict(what: impl Into<String>) -> Error {
    Error::Contract(chat_core::Error::conflict(what))
}

pub(crate) fn invalid(what: impl Into<String>) -> Error {
    Error::Contract(chat_core::Error::invalid(what))
}

//! The one error type of the engine and its adapters.

use std::time::Duration;

/// A boxed error from a backend (database, bus, media store), kept whole so
/// that its source chain survives into logs.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The result type of every fallible operation of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in terms a client can act on.
///
/// Each variant maps to exactly one wire error code (see [`Error::code`]);
/// adapters convert their driver errors into [`Error::Backend`] (or
/// [`Error::Conflict`] for unique violations) so that the engine never sees a
/// driver type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thing does not exist, or the actor may not know that it exists.
    #[error("not found: {0}")]
    NotFound(String),
    /// The actor may see the thing but may not do this to it.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The request contradicts the current state (duplicate, deleted, full).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input is malformed or breaks a validation rule.
    #[error("bad request: {0}")]
    InvalidInput(String),
    /// The input is larger than a configured limit allows.
    #[error("too large: {0}")]
    TooLarge(String),
    /// The media type is not on the allowlist.
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// The actor sent more than its budget allows; try again later.
    #[error("rate limited, retry after {retry_after:?}")]
    RateLimited {
        /// How long to wait before the next attempt can succeed.
        retry_after: Duration,
    },
    /// The caller has not proven who it is.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The engine is shutting down and takes no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// A backend failed; the operation may or may not be retried.
    #[error("backend error: {source}")]
    Backend {
        /// The backend's own error.
        #[source]
        source: BoxError,
    },
}

/// The error codes of the wire protocol (`docs/protocol.md`, "Error codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed or invalid input.
    BadRequest,
    /// Not authenticated.
    Unauthenticated,
    /// Not allowed.
    Forbidden,
    /// Unknown, or outside the actor's reach.
    NotFound,
    /// Contradicts the current state.
    Conflict,
    /// Over a size limit.
    TooLarge,
    /// Over a rate limit.
    RateLimited,
    /// Media type not allowed.
    UnsupportedMediaType,
    /// A server fault; details are logged, not sent.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::TooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
        }
    }
}

impl Error {
    /// Wraps a backend error.
    pub fn backend(source: impl Into<BoxError>) -> Self {
        Error::Backend {
            source: source.into(),
        }
    }

    /// Shorthand for [`Error::InvalidInput`].
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidInput(msg.into())
    }

    /// Shorthand for [`Error::NotFound`].
    pub fn not_found(msg: impl Into<String>) -> Self {
        Error::NotFound(msg.into())
    }

    /// Shorthand for [`Error::Forbidden`].
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Error::Forbidden(msg.into())
    }

    /// Shorthand for [`Error::Conflict`].
    pub fn conflict(msg: impl Into<String>) -> Self {
        Error::Conflict(msg.into())
    }

    /// The wire code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::Conflict(_) => ErrorCode::Conflict,
            Error::InvalidInput(_) => ErrorCode::BadRequest,
            Error::TooLarge(_) => ErrorCode::TooLarge,
            Error::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Error::RateLimited { .. } => ErrorCode::RateLimited,
            Error::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Error::ShuttingDown | Error::Backend { .. } => ErrorCode::Internal,
        }
    }

    /// The message that may be shown to the client: internal details of
    /// backend failures stay in the server's logs.
    pub fn public_message(&self) -> String {
        match self {
            Error::Backend { .. } => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

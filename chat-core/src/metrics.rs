//! Metric names. The engine and the connection driver record through the
//! `metrics` facade (nothing is recorded until an application installs a
//! recorder); the example server installs a Prometheus one and serves
//! `/metrics`.

use crate::error::ErrorCode;

/// Gauge: live connections (every transport).
pub const CONNECTIONS: &str = "chat_connections";
/// Counter by `type`: commands received.
pub const COMMANDS: &str = "chat_commands_total";
/// Counter: messages stored (sends acknowledged).
pub const MESSAGES_STORED: &str = "chat_messages_stored_total";
/// Counter: events queued on connections.
pub const EVENTS_DELIVERED: &str = "chat_events_delivered_total";
/// Histogram: seconds from receiving a send to its ack.
pub const SEND_ACK_SECONDS: &str = "chat_send_ack_seconds";
/// Counter by `code`: errors answered.
pub const ERRORS: &str = "chat_errors_total";
/// Histogram: seconds from a message's creation to its first delivery
/// receipt (`mark_delivered` or `mark_as_read`) by another member; the
/// live counterpart of the stats' `delivered_within_1s`.
pub const DELIVERY_LATENCY_SECONDS: &str = "chat_delivery_latency_seconds";
/// Counter: commands and connects refused by the rate limiter.
pub const RATE_LIMITED: &str = "chat_rate_limited_total";
/// Counter: connections closed for being too slow.
pub const SLOW_CLOSED: &str = "chat_slow_consumers_closed_total";

/// Counter: audit entries that could not be stored after their action
/// was done (each is logged at error level with every field).
pub const AUDIT_FAILURES: &str = "chat_audit_failures_total";

/// Counter: crisis alerts raised (messages or edits that matched a crisis
/// phrase).
pub const CRISIS_ALERTS: &str = "chat_crisis_alerts_total";

/// Counter by `kind`: uploads stored.
pub const UPLOADS: &str = "chat_uploads_total";
/// Counter by `kind`: bytes of uploads stored (after re-encoding).
pub const UPLOAD_BYTES: &str = "chat_upload_bytes_total";

/// Counts one upload of `kind` (`image`, `voice`, `file`) of `bytes`.
pub fn media_uploaded(kind: &'static str, bytes: u64) {
    metrics::counter!(UPLOADS, "kind" => kind).increment(1);
    metrics::counter!(UPLOAD_BYTES, "kind" => kind).increment(bytes);
}

/// Counts one command of wire type `kind`.
pub fn command(kind: &str) {
    metrics::counter!(COMMANDS, "type" => kind.to_owned()).increment(1);
}

/// Counts one error answered with `code`.
pub fn error(code: ErrorCode) {
    metrics::counter!(ERRORS, "code" => code.as_str()).increment(1);
}

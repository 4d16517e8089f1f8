//! The wire language of `docs/protocol.md`: commands, events, error codes, and the
//! dispatcher that turns a command of an authenticated connection into
//! engine calls.
//!
//! Frames are JSON objects `{"type": ..., "id": ..., "data": ...}`. Every
//! command that carries an `id` is answered exactly once by `ack` or
//! `error` with that `id`; a failing command without `id` is answered by an
//! `error` event without `id`, a succeeding one by nothing.

mod commands;
mod dispatch;
pub mod driver;

pub use commands::{ClientCommand, MAX_REQUEST_ID_LEN, ParseError, Request, parse_request};

pub use crate::event::{AckData, ErrorBody, PresenceEntry, ServerEvent};
pub use dispatch::{
    ClaimedView, KeyPackages, dispatch_text, execute, from_base64, key_packages_from_base64,
};
pub use driver::{
    Auth, Authenticator, Close, CloseReason, Credentials, Driver, DriverConfig, Inbound, Outbound,
};

//! Domain logic of the chat engine: no sockets, no SQL, no Redis.
//!
//! `chat-core` holds every rule of the chat system in one place, the
//! [`ChatEngine`], and reaches the outside world only through traits:
//!
//! - [`Store`]: durable state (chats as logs, receipts, blocks, reports);
//!   [`MemoryStore`] here, SQLite and PostgreSQL in their own crates;
//! - [`Bus`]: events and presence between server nodes; [`LocalBus`] here,
//!   Redis in `chat-bus-redis`;
//! - [`Transport`]: the outgoing half of a live connection, as the
//!   [`Hub`](hub::Hub) sees it;
//! - [`MediaStore`], [`Notifier`], [`ContactPolicy`], [`MessageHook`]: media
//!   bytes, push for offline users, who may talk to whom, and checks that
//!   run before a message is stored.
//!
//! The [`protocol`] module is the wire language of `docs/protocol.md` and its
//! dispatcher, so that every transport speaks it the same way.
//!
//! # Layout
//!
//! | module | what |
//! |---|---|
//! | [`model`] | ids, chats, participants, messages, reports |
//! | [`engine`] | [`ChatEngine`]: every rule |
//! | [`protocol`] | commands, dispatcher, the connection driver |
//! | [`event`] | events and replies, encoded once, framed per transport |
//! | [`hub`] | local fan-out to live connections |
//! | [`store`], [`bus`], [`transport`], [`hooks`], [`media`] | the seams |
//! | [`crypto`] | encryption at rest: keys, wrapping, sealing, epochs |
//! | [`keystore`] | [`KeyStore`](keystore::KeyStore): wrapped user keys, apart from the [`Store`]; the key cache |
//! | `testing` (feature `testing`) | conformance suites for adapters |
//!
//! # Example
//!
//! ```
//! use chat_core::{Actor, ChatEngine, MemoryStore, SendMessage, UserId};
//! use std::sync::Arc;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> chat_core::Result<()> {
//! let engine = ChatEngine::builder(Arc::new(MemoryStore::new())).build().await?;
//! let alice = Actor::user(UserId::new("alice")?);
//! let bob = UserId::new("bob")?;
//!
//! let chat = engine.create_direct(&alice, &bob, Default::default()).await?.chat;
//! let sent = engine
//!     .send(&alice, SendMessage::text(chat.chat.id, "c-1", "hello"))
//!     .await?;
//! assert_eq!(sent.seq, 1);
//! # Ok(())
//! # }
//! ```

pub mod bus;
pub mod care;
pub mod clock;
pub mod crypto;
pub mod engine;
mod error;
pub mod event;
pub mod hooks;
pub mod hub;
pub mod keystore;
pub mod limits;
pub mod media;
mod memory;
pub mod metrics;
pub mod mls;
pub mod model;
pub mod protocol;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod transport;

pub use bus::{Bus, LocalBus};
pub use engine::{
    Actor, ChatEngine, ChatPage, ChatUpdate, EngineBuilder, EngineConfig, Erasure, Health,
    HistoryPage, HistoryRequest, ModerationAction, NewGroup, Opened, PrivacyPatch, Receipt,
    SendMessage, Session, SyncChat, SyncResult,
};

pub use error::{BoxError, Error, ErrorCode, Result};
pub use hooks::{ContactPolicy, MessageHook, Notifier};
pub use media::{MediaStore, ObjectMediaStore};
pub use memory::MemoryStore;
pub use model::*;
pub use store::{AuditQuery, ChatListQuery, GroupPatch, Store};
pub use transport::Transport;

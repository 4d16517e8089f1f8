//! Redis implementation of the chat engine's [`Bus`](chat_core::Bus): fan-out
//! and presence across server nodes.
//!
//! Not implemented yet: this crate is a placeholder in the workspace until
//! its issue ("PostgreSQL store and Redis fan-out") lands. A single node
//! uses [`LocalBus`](chat_core::LocalBus).

pub use chat_core;

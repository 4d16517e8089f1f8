//! PostgreSQL implementation of the chat engine's [`Store`](chat_core::Store).
//!
//! Not implemented yet: this crate is a placeholder in the workspace until
//! its issue ("PostgreSQL store and Redis fan-out") lands. Use
//! `chat-store-sqlite` for a single node.

pub use chat_core;

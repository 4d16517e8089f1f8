//! The [`MediaStore`] trait: where the bytes of uploads live.

use std::{collections::HashMap, fmt::Debug, sync::Mutex};

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, Result};

/// Bytes of uploads (images, voice notes, files) and their thumbnails, by
/// key. Records of uploads (who, which chat, type) are in the
/// [`Store`](crate::Store); access rules are the engine's.
///
/// # Contract
///
/// - `put` is durable when it returns and replaces any object under `key`.
/// - `get` of a missing key is [`Error::NotFound`].
/// - `delete` of a missing key succeeds (erasure is idempotent).
#[async_trait]
pub trait MediaStore: Debug + Send + Sync + 'static {
    /// Stores `bytes` under `key`.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()>;
    /// The bytes under `key`.
    async fn get(&self, key: &str) -> Result<Bytes>;
    /// Removes the object under `key`.
    async fn delete(&self, key: &str) -> Result<()>;
}

/// A [`MediaStore`] in memory, for tests.
#[derive(Debug, Default)]
pub struct MemoryMediaStore(Mutex<HashMap<String, Bytes>>);

impl MemoryMediaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl MediaStore for MemoryMediaStore {
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), bytes);
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Bytes> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
            .ok_or_else(|| Error::not_found("media not found"))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        Ok(())
    }
}

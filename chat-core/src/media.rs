//! The [`MediaStore`] trait: where the bytes of uploads live, streamed in
//! and out, never held whole in memory; and [`ObjectMediaStore`], its
//! implementation over the `object_store` crate (a local directory, memory,
//! or any store `object_store` reaches, such as S3).

pub mod process;

use std::{fmt::Debug, ops::Range, path::Path, sync::Arc};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use object_store::{
    GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart, local::LocalFileSystem,
    memory::InMemory, path::Path as ObjectPath,
};

use crate::error::{Error, Result};

/// A stream of bytes, read or written in chunks.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// Bytes of uploads (images, voice notes, files) and their thumbnails, by
/// key. Records of uploads (who, which chat, type) are in the
/// [`Store`](crate::Store); access rules are the engine's.
///
/// # Contract
///
/// - What a [`MediaWriter`] writes is visible under its key only after
///   [`MediaWriter::finish`], and durable then; [`MediaWriter::abort`]
///   leaves nothing behind.
/// - [`get`](MediaStore::get) of a missing key is [`Error::NotFound`]; a
///   range must lie within the object.
/// - [`delete`](MediaStore::delete) of a missing key succeeds (erasure is
///   idempotent).
#[async_trait]
pub trait MediaStore: Debug + Send + Sync + 'static {
    /// Starts writing the object under `key` (replacing any before it once
    /// finished).
    async fn writer(&self, key: &str) -> Result<Box<dyn MediaWriter>>;

    /// The object under `key`, or the byte `range` of it, as a stream.
    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<MediaObject>;

    /// Removes the object under `key`.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Stores `bytes` under `key` (small objects: thumbnails, re-encoded
    /// images).
    async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let mut writer = self.writer(key).await?;
        if let Err(e) = writer.write(bytes).await {
            // The write's error is the one to report; the abort's is logged.
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, "aborting a failed media write failed");
            }
            return Err(e);
        }
        writer.finish().await
    }
}

/// An object being written; see [`MediaStore::writer`].
#[async_trait]
pub trait MediaWriter: Send {
    /// Appends `chunk`; waits while earlier chunks are still being stored.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
    /// Makes the object visible and durable.
    async fn finish(self: Box<Self>) -> Result<()>;
    /// Drops what was written; nothing is left under the key.
    async fn abort(self: Box<Self>) -> Result<()>;
}

/// What [`MediaStore::get`] returns.
pub struct MediaObject {
    /// Size of the whole object, in bytes.
    pub size: u64,
    /// The bytes returned: the range asked for, or the whole object.
    pub range: Range<u64>,
    /// Those bytes.
    pub body: ByteStream,
}

impl Debug for MediaObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaObject")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// A [`MediaStore`] over an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct ObjectMediaStore {
    store: Arc<dyn ObjectStore>,
    part_size: usize,
}

/// Parts of 5 MiB: the least S3 accepts (but for the last).
const S3_PART: usize = 5 << 20;
/// Parts of the local and memory stores: there is no minimum, and each
/// upload in progress buffers up to a part.
const LOCAL_PART: usize = 1 << 20;

impl ObjectMediaStore {
    /// Over any object store (S3 and others: see `object_store`'s features);
    /// uploads are written in parts of 5 MiB.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            part_size: S3_PART,
        }
    }

    /// Files under `dir`, created if missing. Files are synced to disk
    /// before an upload is answered, and empty directories removed as
    /// objects are deleted.
    pub fn local(dir: impl AsRef<Path>) -> Result<Self> {
        std::fs::create_dir_all(dir.as_ref()).map_err(Error::backend)?;
        let store = LocalFileSystem::new_with_prefix(dir.as_ref())
            .map_err(Error::backend)?
            .with_automatic_cleanup(true);
        Ok(Self {
            store: Arc::new(store),
            part_size: LOCAL_PART,
        })
    }

    /// In memory, for tests.
    pub fn memory() -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            part_size: LOCAL_PART,
        }
    }

    /// Writes uploads in parts of `bytes` (each upload in progress buffers
    /// up to two parts).
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(1);
        self
    }
}

fn path(key: &str) -> Result<ObjectPath> {
    ObjectPath::parse(key).map_err(|e| Error::invalid(format!("bad media key: {e}")))
}

fn store_error(e: object_store::Error) -> Error {
    match e {
        object_store::Error::NotFound { .. } => Error::not_found("media not found"),
        e => Error::backend(e),
    }
}

#[async_trait]
impl MediaStore for ObjectMediaStore {
    async fn writer(&self, key: &str) -> Result<Box<dyn MediaWriter>> {
        let upload = self
            .store
            .put_multipart(&path(key)?)
            .await
            .map_err(store_error)?;
        Ok(Box::new(ObjectWriter(WriteMultipart::new_with_chunk_size(
            upload,
            self.part_size,
        ))))
    }

    async fn get(&self, key: &str, range: Option<Range<u64>>) -> Result<MediaObject> {
        let mut options = GetOptions::default();
        if let Some(range) = range {
            if range.start >= range.end {
                return Err(Error::invalid("empty media range"));
            }
            options.range = Some(GetRange::Bounded(range));
        }
        let got = self
            .store
            .get_opts(&path(key)?, options)
            .await
            .map_err(store_error)?;
        let (size, range) = (got.meta.size, got.range.clone());
        let body = got.into_stream().map_err(store_error).boxed();
        Ok(MediaObject { size, range, body })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::backend(e)),
        }
    }
}

struct ObjectWriter(WriteMultipart);

#[async_trait]
impl MediaWriter for ObjectWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        // At most two parts in flight: memory per upload stays bounded.
        self.0.wait_for_capacity(2).await.map_err(Error::backend)?;
        self.0.put(chunk);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<()> {
        self.0.finish().await.map(|_| ()).map_err(Error::backend)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        self.0.abort().await.map_err(Error::backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(object: MediaObject) -> Vec<u8> {
        let chunks: Vec<Bytes> = object.body.try_collect().await.unwrap();
        chunks.concat()
    }

    async fn round_trip(store: &ObjectMediaStore) {
        let mut w = store.writer("chat/a").await.unwrap();
        for i in 0..5u8 {
            w.write(Bytes::from(vec![i; 100_000])).await.unwrap();
        }
        w.finish().await.unwrap();
        let whole = store.get("chat/a", None).await.unwrap();
        assert_eq!((whole.size, whole.range.clone()), (500_000, 0..500_000));
        let bytes = read_all(whole).await;
        assert_eq!(bytes.len(), 500_000);
        assert_eq!(bytes[250_000], 2);
        let part = store.get("chat/a", Some(99_990..100_010)).await.unwrap();
        assert_eq!(part.range, 99_990..100_010);
        assert_eq!(read_all(part).await, [vec![0; 10], vec![1; 10]].concat());

        let mut w = store.writer("chat/b").await.unwrap();
        w.write(Bytes::from_static(b"half")).await.unwrap();
        w.abort().await.unwrap();
        assert!(matches!(
            store.get("chat/b", None).await,
            Err(Error::NotFound(_))
        ));
        store.delete("chat/a").await.unwrap();
        store.delete("chat/a").await.unwrap();
        assert!(matches!(
            store.get("chat/a", None).await,
            Err(Error::NotFound(_))
        ));
    }

    #[tokio::test]
    async fn memory_store_streams_ranges_and_aborts() {
        round_trip(&ObjectMediaStore::memory().with_part_size(64 * 1024)).await;
    }

    #[tokio::test]
    async fn local_store_leaves_nothing_after_abort_or_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectMediaStore::local(dir.path().join("media")).unwrap();
        round_trip(&store).await;
        let left: Vec<_> = walk(&dir.path().join("media"));
        assert!(left.is_empty(), "files left: {left:?}");
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }
}

//! Uploads (images, voice notes, files) and their downloads.
//!
//! An upload is streamed into a spool file with its size limit checked per
//! chunk, typed from its first bytes (never the client's claim), processed
//! off the async runtime with a bound on how many at once (images decoded
//! under pixel limits and re-encoded, which drops their metadata; voice
//! notes timed), then written to the [`MediaStore`]: sealed in parts under
//! the uploader's data key when the engine encrypts at rest, so erasing
//! the uploader shreds their media too. Only the chat's participants see
//! it; a message carries it once; deleting the message deletes its bytes;
//! uploads never attached are swept.

use std::{ops::Range, path::PathBuf, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, stream, stream::BoxStream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Semaphore,
};

use super::{Actor, ChatEngine};
use crate::{
    crypto::{Aad, DataKey, DataKeyScope, SEALED_OVERHEAD, sealed_epoch},
    error::{Error, Result},
    media::{
        ByteStream, MediaStore,
        process::{self, MediaLimits, Sniffed},
    },
    model::{ChatId, Encryption, MediaId, MediaKind, MediaRecord, MessageId, ReportStatus, UserId},
    store::ReportQuery,
};

/// Settings of uploads.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MediaConfig {
    /// Sizes, pixels and durations.
    pub limits: MediaLimits,
    /// Where uploads are spooled while they arrive and are processed (the
    /// system's temporary directory when `None`). Spool files are removed
    /// as soon as the upload is answered.
    pub spool_dir: Option<PathBuf>,
    /// Most uploads processed (decoded, timed) at once; the others wait.
    /// Each image decode holds up to its pixels in memory (4 bytes each,
    /// 160 MB for 40 megapixels), so this bounds the memory uploads take.
    pub max_processing: usize,
    /// Uploads not attached to a message this long after they were made
    /// are removed by [`ChatEngine::sweep_media`].
    pub unattached_ttl: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            limits: MediaLimits::default(),
            spool_dir: None,
            max_processing: std::thread::available_parallelism().map_or(2, |n| n.get()),
            unattached_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// What the engine keeps for media.
#[derive(Debug)]
pub(super) struct MediaParts {
    store: Arc<dyn MediaStore>,
    config: MediaConfig,
    processing: Arc<Semaphore>,
}

impl MediaParts {
    pub(super) fn new(store: Arc<dyn MediaStore>, config: MediaConfig) -> Self {
        Self {
            store,
            processing: Arc::new(Semaphore::new(config.max_processing.max(1))),
            config,
        }
    }
}

/// An upload as it arrives.
#[non_exhaustive]
pub struct Upload<'a> {
    /// The name the client gave the file (kept, sanitized, for files).
    pub file_name: Option<String>,
    /// The length the client announced, if any: refused at once when over
    /// every limit, but the bytes are counted anyway.
    pub length: Option<u64>,
    /// The bytes.
    pub body: BoxStream<'a, Result<Bytes>>,
}

impl<'a> Upload<'a> {
    /// An upload of `body`.
    pub fn new(body: BoxStream<'a, Result<Bytes>>) -> Self {
        Self {
            file_name: None,
            length: None,
            body,
        }
    }

    /// With the client's file name.
    pub fn file_name(mut self, name: Option<String>) -> Self {
        self.file_name = name;
        self
    }

    /// With the length the client announced.
    pub fn length(mut self, length: Option<u64>) -> Self {
        self.length = length;
        self
    }
}

impl std::fmt::Debug for Upload<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("length", &self.length)
            .finish_non_exhaustive()
    }
}

/// A byte range asked for (HTTP `Range: bytes=...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// From this offset to the end.
    From(u64),
    /// From the first to the last offset, both included.
    Bounded(u64, u64),
    /// The last this many bytes.
    Last(u64),
}

impl ByteRange {
    /// The bytes of an object of `size` this range names; `None` if none
    /// (unsatisfiable).
    pub fn resolve(self, size: u64) -> Option<Range<u64>> {
        let range = match self {
            ByteRange::From(start) => start..size,
            ByteRange::Bounded(first, last) if first <= last => {
                first..last.saturating_add(1).min(size)
            }
            ByteRange::Bounded(..) => return None,
            ByteRange::Last(n) => size.saturating_sub(n)..size,
        };
        (range.start < range.end).then_some(range)
    }
}

/// Which bytes a [`Download`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Served {
    /// All of them.
    Whole,
    /// This range of them.
    Partial(Range<u64>),
    /// The range asked for lies outside the object; no bytes.
    Unsatisfiable,
}

/// A download: the record, what is served, and the bytes.
#[non_exhaustive]
pub struct Download {
    /// The upload's record.
    pub record: MediaRecord,
    /// The type of what is served (the thumbnail's, for a thumbnail).
    pub mime: String,
    /// The size of the whole object served (upload or thumbnail).
    pub size: u64,
    /// Which bytes.
    pub served: Served,
    /// Those bytes.
    pub body: ByteStream,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("record", &self.record)
            .field("served", &self.served)
            .finish_non_exhaustive()
    }
}

/// Plaintext bytes per sealed part: a ranged read opens at most one part
/// it does not serve at each end.
const PART: u64 = 64 * 1024;
/// Thumbnails are read whole; one larger than this is not one we made.
const MAX_THUMBNAIL: u64 = 4 << 20;
/// Abandoned uploads removed per store call of the sweep.
const SWEEP_BATCH: usize = 100;

fn too_large(kind: Option<MediaKind>, limits: &MediaLimits) -> Error {
    let (what, max) = match kind {
        Some(kind) => (kind.as_str(), limits.max_bytes(kind)),
        None => ("upload", limits.largest()),
    };
    Error::TooLarge(format!("an {what} may have at most {} bytes", max))
}

/// An upload in its spool file.
struct Spooled {
    file: tempfile::NamedTempFile,
    sniffed: Sniffed,
    size: u64,
}

/// What processing found.
enum Processed {
    Image(process::ProcessedImage),
    Voice(Duration),
    File,
}

/// The key that seals an upload's parts, and for what.
struct Sealing<'a> {
    scope: &'a DataKeyScope,
    key: &'a DataKey,
    media: MediaId,
    thumbnail: bool,
}

impl Sealing<'_> {
    fn aad(&self, index: u64, parts: u64) -> Result<Aad> {
        let part = u32::try_from(index).map_err(|_| Error::invalid("upload too large"))?;
        Ok(Aad::media_part(
            self.scope,
            self.media,
            self.thumbnail,
            part,
            index + 1 == parts,
        ))
    }
}

/// Where an upload's bytes are read from when they are stored.
enum Source {
    Memory(Bytes),
    File(tokio::fs::File),
}

impl Source {
    async fn read(&mut self, len: u64) -> Result<Bytes> {
        match self {
            Source::Memory(bytes) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX).min(bytes.len());
                Ok(bytes.split_to(len))
            }
            Source::File(file) => {
                let len = usize::try_from(len).map_err(Error::backend)?;
                let mut buf = vec![0; len];
                file.read_exact(&mut buf).await.map_err(Error::backend)?;
                Ok(buf.into())
            }
        }
    }
}

impl ChatEngine {
    /// The limits of uploads; `None` when uploads are not enabled.
    pub fn media_limits(&self) -> Option<&MediaLimits> {
        self.inner.media.as_ref().map(|m| &m.config.limits)
    }

    fn media_parts(&self) -> Result<&MediaParts> {
        self.inner
            .media
            .as_ref()
            .ok_or_else(|| Error::not_found("uploads are not enabled on this server"))
    }

    /// Takes an upload to `chat_id` from one of its participants: checks
    /// its size as it arrives and its type from its bytes, processes it
    /// (images re-encoded without metadata and with a thumbnail, voice
    /// notes timed), stores it and returns its record. Nothing is left
    /// behind when it is refused.
    pub async fn upload(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        upload: Upload<'_>,
    ) -> Result<MediaRecord> {
        let media = self.media_parts()?;
        let chat = self.chat_of(actor, chat_id).await?;
        if chat.encryption == Encryption::E2ee {
            // The server can neither type nor re-encode what it cannot
            // read; e2ee attachments travel inside MLS messages.
            return Err(Error::invalid(
                "uploads to e2ee chats are not supported: attachments are end-to-end encrypted by clients",
            ));
        }
        let limits = &media.config.limits;
        if upload.length.is_some_and(|n| n > limits.largest()) {
            return Err(too_large(None, limits));
        }
        let spooled = self.spool(media, upload.body).await?;
        let kind = spooled.sniffed.kind;
        let processed = self.process(media, &spooled).await?;
        let id = MediaId::new();
        let mut record = MediaRecord {
            id,
            chat_id,
            uploader_id: actor.user_id.clone(),
            kind,
            mime: spooled.sniffed.mime.to_owned(),
            size: spooled.size,
            width: None,
            height: None,
            duration_ms: None,
            name: None,
            has_thumbnail: false,
            sealed: self.inner.encrypted.is_some(),
            message_id: None,
            created_at: self.now(),
        };
        let (source, thumbnail) = match processed {
            Processed::Image(image) => {
                record.mime = image.mime.to_owned();
                record.size = image.bytes.len() as u64;
                record.width = Some(image.width);
                record.height = Some(image.height);
                record.has_thumbnail = true;
                (
                    Source::Memory(image.bytes.into()),
                    Some(Bytes::from(image.thumbnail)),
                )
            }
            Processed::Voice(duration) => {
                record.duration_ms = Some(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
                (Source::File(self.reopen(&spooled).await?), None)
            }
            Processed::File => (Source::File(self.reopen(&spooled).await?), None),
        };
        if kind == MediaKind::File {
            record.name = upload
                .file_name
                .as_deref()
                .and_then(process::sanitize_file_name);
        }
        self.store_upload(media, &record, source, thumbnail).await?;
        drop(spooled);
        if let Err(e) = self.inner.store.insert_media(record.clone()).await {
            self.delete_objects(media, &record).await;
            return Err(e);
        }
        crate::metrics::media_uploaded(kind.as_str(), record.size);
        Ok(record)
    }

    /// Streams `body` into a spool file, typing it from its first bytes and
    /// refusing it as soon as it is over its kind's limit.
    async fn spool(
        &self,
        media: &MediaParts,
        mut body: BoxStream<'_, Result<Bytes>>,
    ) -> Result<Spooled> {
        let limits = &media.config.limits;
        let dir = media.config.spool_dir.clone();
        let file = tokio::task::spawn_blocking(move || match dir {
            Some(dir) => tempfile::NamedTempFile::new_in(dir),
            None => tempfile::NamedTempFile::new(),
        })
        .await
        .map_err(Error::backend)?
        .map_err(Error::backend)?;
        let mut out = tokio::fs::File::from_std(file.reopen().map_err(Error::backend)?);
        let mut head = Vec::with_capacity(process::SNIFF_BYTES);
        let mut sniffed: Option<Sniffed> = None;
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            size += chunk.len() as u64;
            let max = sniffed.map_or(limits.largest(), |s| limits.max_bytes(s.kind));
            if size > max {
                return Err(too_large(sniffed.map(|s| s.kind), limits));
            }
            if sniffed.is_none() {
                let take = (process::SNIFF_BYTES - head.len()).min(chunk.len());
                head.extend_from_slice(&chunk[..take]);
                if head.len() >= process::SNIFF_BYTES {
                    let found = process::sniff(&head)?;
                    if size > limits.max_bytes(found.kind) {
                        return Err(too_large(Some(found.kind), limits));
                    }
                    sniffed = Some(found);
                }
            }
            out.write_all(&chunk).await.map_err(Error::backend)?;
        }
        let sniffed = match sniffed {
            Some(s) => s,
            None => {
                let found = process::sniff(&head)?;
                if size > limits.max_bytes(found.kind) {
                    return Err(too_large(Some(found.kind), limits));
                }
                found
            }
        };
        out.flush().await.map_err(Error::backend)?;
        Ok(Spooled {
            file,
            sniffed,
            size,
        })
    }

    async fn reopen(&self, spooled: &Spooled) -> Result<tokio::fs::File> {
        let file = spooled.file.reopen().map_err(Error::backend)?;
        Ok(tokio::fs::File::from_std(file))
    }

    /// Decodes, re-encodes or times an upload on the blocking pool, at
    /// most [`MediaConfig::max_processing`] at once.
    async fn process(&self, media: &MediaParts, spooled: &Spooled) -> Result<Processed> {
        let Sniffed { kind, mime } = spooled.sniffed;
        if kind == MediaKind::File {
            return Ok(Processed::File);
        }
        let permit = media
            .processing
            .clone()
            .acquire_owned()
            .await
            .map_err(Error::backend)?;
        let mut file = spooled.file.reopen().map_err(Error::backend)?;
        let limits = media.config.limits.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            match kind {
                MediaKind::Image => {
                    process::process_image(&mut file, mime, &limits).map(Processed::Image)
                }
                MediaKind::Voice => {
                    let duration = process::voice_duration(&mut file, mime)?;
                    if duration > limits.voice_duration {
                        return Err(Error::TooLarge(format!(
                            "a voice note may last at most {} s",
                            limits.voice_duration.as_secs()
                        )));
                    }
                    Ok(Processed::Voice(duration))
                }
                MediaKind::File => Ok(Processed::File),
            }
        })
        .await
        .map_err(Error::backend)?
    }

    /// Writes an upload's bytes (and thumbnail) to the media store, sealed
    /// when the engine encrypts at rest; on failure nothing is left.
    async fn store_upload(
        &self,
        media: &MediaParts,
        record: &MediaRecord,
        mut source: Source,
        thumbnail: Option<Bytes>,
    ) -> Result<()> {
        let key = match &self.inner.encrypted {
            Some(encrypted) => Some(
                encrypted
                    .keyring()
                    .media_sealing_key(record.chat_id, &record.uploader_id)
                    .await?,
            ),
            None => None,
        };
        let sealing = |thumbnail| {
            key.as_ref().map(|(scope, key)| Sealing {
                scope,
                key,
                media: record.id,
                thumbnail,
            })
        };
        let store = media.store.as_ref();
        write_object(
            store,
            &record.object_key(),
            record.size,
            &mut source,
            sealing(false).as_ref(),
        )
        .await?;
        if let (Some(thumb), Some(thumb_key)) = (thumbnail, record.thumbnail_key()) {
            let size = thumb.len() as u64;
            let written = match sealing(true) {
                // One part: thumbnails are read whole.
                Some(s) => {
                    let sealed = s.key.seal(&s.aad(0, 1)?, &thumb)?;
                    store.put(&thumb_key, sealed.into()).await
                }
                None => {
                    write_object(store, &thumb_key, size, &mut Source::Memory(thumb), None).await
                }
            };
            if let Err(e) = written {
                self.delete_objects(media, record).await;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes an upload's bytes and thumbnail, logging failures (the
    /// record stays then, so that the bytes are not forgotten).
    async fn delete_objects(&self, media: &MediaParts, record: &MediaRecord) -> bool {
        let mut ok = true;
        for key in std::iter::once(record.object_key()).chain(record.thumbnail_key()) {
            if let Err(e) = media.store.delete(&key).await {
                tracing::error!(media = %record.id, error = %e, "could not delete media bytes");
                ok = false;
            }
        }
        ok
    }

    /// Removes an upload: its bytes, its thumbnail, then its record.
    pub(super) async fn remove_media(&self, record: &MediaRecord) -> Result<()> {
        let media = self.media_parts()?;
        if !self.delete_objects(media, record).await {
            return Err(Error::backend("media bytes could not be deleted"));
        }
        self.inner.store.delete_media(record.id).await?;
        Ok(())
    }

    /// Removes the upload a deleted message carried, logging failures: the
    /// message is a tombstone already. An open report of the message holds
    /// the bytes as evidence until it is resolved (`resolve_report` calls
    /// this again then).
    pub(super) async fn remove_media_of(&self, media: MediaId) {
        if self.inner.media.is_none() {
            return;
        }
        let record = match self.inner.store.get_media(media).await {
            Ok(Some(record)) => record,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(%media, error = %e, "could not read a deleted message's media");
                return;
            }
        };
        match self.reported(record.message_id, true).await {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(%media, "media of a deleted message kept for an open report");
                return;
            }
            Err(e) => {
                tracing::error!(%media, error = %e, "could not check reports of deleted media; kept");
                return;
            }
        }
        if let Err(e) = self.remove_media(&record).await {
            tracing::error!(%media, error = %e, "could not remove a deleted message's media");
        }
    }

    /// The upload `media_id` for a message of `kind` that `sender` sends to
    /// `chat_id`, attached to `message` (once: an upload already attached
    /// is a `conflict`). Someone else's upload, or one to another chat,
    /// is `not_found`.
    pub(super) async fn attach_upload(
        &self,
        sender: &UserId,
        chat_id: ChatId,
        kind: MediaKind,
        media_id: MediaId,
        message: MessageId,
    ) -> Result<MediaRecord> {
        let store = &self.inner.store;
        let mut record = match store.get_media(media_id).await? {
            Some(r) if r.uploader_id == *sender && r.chat_id == chat_id => r,
            _ => return Err(Error::not_found("media not found")),
        };
        if record.kind != kind {
            return Err(Error::invalid(format!(
                "this upload is a {}, not a {}",
                record.kind.as_str(),
                kind.as_str()
            )));
        }
        if record.message_id.is_some() || !store.attach_media(media_id, message).await? {
            return Err(Error::conflict(
                "this upload is attached to a message already",
            ));
        }
        record.message_id = Some(message);
        Ok(record)
    }

    /// Downloads an upload (or its thumbnail), or a range of it, for a
    /// participant of its chat who can see the message it is attached to
    /// (before it is attached: its uploader only). Anyone else gets
    /// `not_found`, so that its existence does not leak.
    pub async fn download(
        &self,
        actor: &Actor,
        media_id: MediaId,
        thumbnail: bool,
        range: Option<ByteRange>,
    ) -> Result<Download> {
        let media = self.media_parts()?;
        let not_found = || Error::not_found("media not found");
        let store = &self.inner.store;
        let record = store.get_media(media_id).await?.ok_or_else(not_found)?;
        let chat = self.chat_of(actor, record.chat_id).await.ok();
        let mine = record.uploader_id == actor.user_id;
        let visible = match (&chat, record.message_id) {
            (None, _) => false,
            (Some(_), None) => mine,
            (Some(chat), Some(message)) => match store.get_message(message).await? {
                Some(m) => {
                    let from = chat
                        .participant(&actor.user_id)
                        .map_or(u64::MAX, |p| p.visible_from_seq);
                    !m.deleted && m.seq >= from
                }
                // Attached by a send still under way.
                None => mine,
            },
        };
        // A service admin reviewing a report sees its evidence, even after
        // the message was deleted.
        let reviewing = !visible && actor.admin && self.reported(record.message_id, false).await?;
        if !visible && !reviewing {
            return Err(not_found());
        }
        self.serve(media, record, thumbnail, range).await
    }

    /// Whether `message` was reported (only reports still open, if
    /// `open_only`).
    pub(super) async fn reported(
        &self,
        message: Option<MessageId>,
        open_only: bool,
    ) -> Result<bool> {
        let Some(message) = message else {
            return Ok(false);
        };
        let mut query = ReportQuery::new(1);
        query.message = Some(message);
        if open_only {
            query.status = Some(ReportStatus::Open);
        }
        Ok(!self.inner.store.list_reports(query).await?.is_empty())
    }

    /// The bytes of an upload whose access was checked.
    async fn serve(
        &self,
        media: &MediaParts,
        record: MediaRecord,
        thumbnail: bool,
        range: Option<ByteRange>,
    ) -> Result<Download> {
        let not_found = || Error::not_found("media not found");
        if thumbnail {
            let key = record.thumbnail_key().ok_or_else(not_found)?;
            let bytes = self.read_thumbnail(media, &record, &key).await?;
            let size = bytes.len() as u64;
            let (served, body) = match range.map(|r| r.resolve(size)) {
                None => (Served::Whole, bytes),
                Some(Some(r)) => (Served::Partial(r.clone()), bytes.slice(to_usize(r)?)),
                Some(None) => (Served::Unsatisfiable, Bytes::new()),
            };
            return Ok(Download {
                record,
                mime: "image/jpeg".to_owned(),
                size,
                served,
                body: stream::once(async move { Ok(body) }).boxed(),
            });
        }
        let size = record.size;
        let (served, wanted) = match range.map(|r| r.resolve(size)) {
            None => (Served::Whole, 0..size),
            Some(Some(r)) => (Served::Partial(r.clone()), r),
            Some(None) => {
                return Ok(Download {
                    mime: record.mime.clone(),
                    record,
                    size,
                    served: Served::Unsatisfiable,
                    body: stream::empty().boxed(),
                });
            }
        };
        let body = if record.sealed {
            self.open_sealed(media, &record, wanted).await?
        } else {
            media
                .store
                .get(&record.object_key(), Some(wanted))
                .await?
                .body
        };
        Ok(Download {
            mime: record.mime.clone(),
            record,
            size,
            served,
            body,
        })
    }

    /// The scope and key that open `record`'s parts, from the epoch in
    /// `part` (any sealed part); `not_found` once its uploader was erased.
    async fn opening_key(
        &self,
        record: &MediaRecord,
        part: &[u8],
    ) -> Result<(DataKeyScope, Arc<DataKey>)> {
        let encrypted = self.inner.encrypted.as_ref().ok_or_else(|| {
            Error::backend("sealed media, but the engine does not encrypt at rest")
        })?;
        let scope = DataKeyScope::new(
            record.chat_id,
            record.uploader_id.clone(),
            sealed_epoch(part)?,
        );
        let key = encrypted
            .keyring()
            .media_opening_key(&scope)
            .await?
            .ok_or_else(|| Error::not_found("media not found: its uploader's data was erased"))?;
        Ok((scope, key))
    }

    async fn read_thumbnail(
        &self,
        media: &MediaParts,
        record: &MediaRecord,
        key: &str,
    ) -> Result<Bytes> {
        let object = media.store.get(key, None).await?;
        if object.size > MAX_THUMBNAIL + SEALED_OVERHEAD as u64 {
            return Err(Error::backend("stored thumbnail larger than any made"));
        }
        let mut bytes = BytesMut::new();
        let mut body = object.body;
        while let Some(chunk) = body.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        if !record.sealed {
            return Ok(bytes.freeze());
        }
        // Sealed whole, as its one and last part.
        let (scope, key) = self.opening_key(record, &bytes).await?;
        let opened = key.open(&Aad::media_part(&scope, record.id, true, 0, true), &bytes)?;
        Ok(Bytes::copy_from_slice(&opened))
    }

    /// The plaintext bytes `wanted` of a sealed upload: the parts that hold
    /// them are read and opened one at a time, as the stream is polled.
    async fn open_sealed(
        &self,
        media: &MediaParts,
        record: &MediaRecord,
        wanted: Range<u64>,
    ) -> Result<ByteStream> {
        let sealed_part = PART + SEALED_OVERHEAD as u64;
        let parts = record.size.div_ceil(PART);
        let stored_size = record.size + parts * SEALED_OVERHEAD as u64;
        let first = wanted.start / PART;
        let last = (wanted.end - 1) / PART;
        let stored = first * sealed_part..((last + 1) * sealed_part).min(stored_size);
        let mut body = media
            .store
            .get(&record.object_key(), Some(stored))
            .await?
            .body;
        let mut reader = PartReader {
            buf: BytesMut::new(),
            sealed_part: usize::try_from(sealed_part).map_err(Error::backend)?,
        };
        // The first part is read here, so that an erased uploader is a
        // `not_found` answer rather than a broken body.
        let Some(part) = reader.next(&mut body).await? else {
            return Err(Error::backend("sealed media shorter than its record"));
        };
        let (scope, key) = self.opening_key(record, &part).await?;
        let opener = PartOpener {
            key,
            scope,
            media: record.id,
            parts,
            wanted,
        };
        let head = opener.open(first, &part)?;
        let rest = stream::try_unfold(
            (body, reader, opener, first + 1),
            |(mut body, mut reader, opener, index)| async move {
                match reader.next(&mut body).await? {
                    None => Ok(None),
                    Some(part) => {
                        let bytes = opener.open(index, &part)?;
                        Ok(Some((bytes, (body, reader, opener, index + 1))))
                    }
                }
            },
        );
        Ok(stream::once(async move { Ok(head) }).chain(rest).boxed())
    }

    /// Removes uploads never attached to a message within
    /// [`MediaConfig::unattached_ttl`], in batches; returns how many. The
    /// server runs it periodically; embedders call it from a timer of
    /// their own.
    pub async fn sweep_media(&self) -> Result<usize> {
        let media = self.media_parts()?;
        let ttl = i64::try_from(media.config.unattached_ttl.as_millis()).unwrap_or(i64::MAX);
        let before =
            crate::model::Timestamp::from_millis(self.now().as_millis().saturating_sub(ttl));
        let mut removed = 0;
        loop {
            let batch = self
                .inner
                .store
                .unattached_media(before, SWEEP_BATCH)
                .await?;
            let full = batch.len() == SWEEP_BATCH;
            for record in batch {
                // Claimed first, with an id no message has: a send that
                // attaches it at this very moment fails instead of
                // carrying bytes about to go.
                if !self
                    .inner
                    .store
                    .attach_media(record.id, MessageId::new())
                    .await?
                {
                    continue;
                }
                self.remove_media(&record).await?;
                removed += 1;
            }
            if !full {
                break;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "swept uploads never attached to a message");
        }
        Ok(removed)
    }
}

fn to_usize(r: Range<u64>) -> Result<Range<usize>> {
    let convert = |n: u64| usize::try_from(n).map_err(Error::backend);
    Ok(convert(r.start)?..convert(r.end)?)
}

/// Writes `size` bytes from `source` under `key`, in parts (sealed ones
/// with `sealing`); aborts on failure, so nothing is left.
async fn write_object(
    store: &dyn MediaStore,
    key: &str,
    size: u64,
    source: &mut Source,
    sealing: Option<&Sealing<'_>>,
) -> Result<()> {
    let mut writer = store.writer(key).await?;
    let parts = size.div_ceil(PART);
    for index in 0..parts {
        let len = PART.min(size - index * PART);
        let written = async {
            let plain = source.read(len).await?;
            let bytes = match sealing {
                Some(s) => Bytes::from(s.key.seal(&s.aad(index, parts)?, &plain)?),
                None => plain,
            };
            writer.write(bytes).await
        }
        .await;
        if let Err(e) = written {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(error = %abort, "aborting a failed media write failed");
            }
            return Err(e);
        }
    }
    writer.finish().await
}

/// Cuts a stream of stored bytes into sealed parts.
struct PartReader {
    buf: BytesMut,
    sealed_part: usize,
}

impl PartReader {
    async fn next(&mut self, body: &mut ByteStream) -> Result<Option<Bytes>> {
        while self.buf.len() < self.sealed_part {
            match body.next().await {
                Some(chunk) => self.buf.extend_from_slice(&chunk?),
                None => break,
            }
        }
        if self.buf.is_empty() {
            return Ok(None);
        }
        let take = self.sealed_part.min(self.buf.len());
        Ok(Some(self.buf.split_to(take).freeze()))
    }
}

/// Opens the parts of one sealed upload and keeps the wanted bytes.
struct PartOpener {
    key: Arc<DataKey>,
    scope: DataKeyScope,
    media: MediaId,
    parts: u64,
    wanted: Range<u64>,
}

impl PartOpener {
    fn open(&self, index: u64, sealed: &[u8]) -> Result<Bytes> {
        let part = u32::try_from(index).map_err(Error::backend)?;
        let aad = Aad::media_part(
            &self.scope,
            self.media,
            false,
            part,
            index + 1 == self.parts,
        );
        let plain = self.key.open(&aad, sealed)?;
        let start = index * PART;
        let from = self.wanted.start.saturating_sub(start);
        let to = (self.wanted.end - start).min(plain.len() as u64);
        let slice = plain
            .get(to_usize(from..to)?)
            .ok_or_else(|| Error::backend("sealed media part shorter than expected"))?;
        Ok(Bytes::copy_from_slice(slice))
    }
}

#[cfg(test)]
mod tests;

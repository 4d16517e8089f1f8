//! [`EncryptedStore`]: encryption at rest around any [`Store`].
//!
//! Message bodies (and edits, which replace them) and report snapshots are
//! sealed by a [`Keyring`] before the inner store sees them, and opened
//! again on every way they come back: change results, messages, history,
//! sync pages, reports. The inner store only ever holds ciphertext, as
//! `"\u{1}v1:" + base64` in its text columns (U+0001 is refused in text
//! messages, so no plaintext starts with it); content without that prefix
//! was written before encryption and is returned as it is.
//!
//! A body that does not open is not an error for the whole read: the
//! message keeps its place with `content: None` and
//! [`Message::unreadable`] saying why ([`Unreadable::Erased`] for a
//! shredded sender, [`Unreadable::Damaged`] otherwise).

use std::sync::Arc;

use async_trait::async_trait;
use base64::{Engine as _, engine::general_purpose::STANDARD};

use super::{
    Applied, AuditQuery, Change, ChatListQuery, Committed, ExpiredMessage, HistoryQuery, NewChat,
    ReportQuery, ReportResolution, RetentionChat, Store, StoredText, TextReplacement, TextTable,
};
use crate::{
    error::{Error, Result},
    keystore::{Keyring, Opened, SealedBody},
    model::{
        AuditEntry, Chat, ChatId, MediaId, MediaRecord, Message, MessageId, ParticipantSettings,
        Privacy, Report, ReportId, Timestamp, Unreadable, UserId, UserRecord,
    },
};

/// Content this store just sealed: the sealed text, and the plaintext it
/// stands for.
struct Known {
    sealed: String,
    plain: String,
}

/// What sealed content starts with in the inner store.
const SEALED: &str = "\u{1}v1:";

/// Meta key: [`MIGRATED_V1`] once every text is sealed.
const MIGRATED: &str = "at_rest.sealed_existing";
const MIGRATED_V1: &str = "v1";
/// Meta key: where [`EncryptedStore::seal_existing`] stopped
/// ([`Position`]).
const MIGRATION_AT: &str = "at_rest.sealed_through";
/// How often [`EncryptedStore::seal_existing`] logs its progress.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What [`EncryptedStore::seal_existing`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SealedExisting {
    /// Nothing to do: an earlier call finished.
    pub already_done: bool,
    /// Texts read.
    pub scanned: u64,
    /// Texts that were plaintext and are sealed now.
    pub sealed: u64,
}

/// Where [`EncryptedStore::seal_existing`] is: a table, and the last row
/// done in it. Saved as `"messages:<id>"` / `"reports:<id>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    table: TextTable,
    after: Option<String>,
}

impl Default for Position {
    fn default() -> Self {
        Self {
            table: TextTable::Messages,
            after: None,
        }
    }
}

impl Position {
    /// A saved position; anything unreadable starts over (sealing is
    /// idempotent: sealed rows are skipped).
    fn parse(saved: &str) -> Self {
        let (table, after) = match saved.split_once(':') {
            Some(("messages", after)) => (TextTable::Messages, after),
            Some(("reports", after)) => (TextTable::Reports, after),
            _ => return Self::default(),
        };
        Self {
            table,
            after: (!after.is_empty()).then(|| after.to_owned()),
        }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = match self.table {
            TextTable::Messages => "messages",
            TextTable::Reports => "reports",
        };
        write!(f, "{table}:{}", self.after.as_deref().unwrap_or(""))
    }
}

/// A [`Store`] that keeps message content encrypted in the store it wraps:
/// bodies, edits and report snapshots are sealed by a [`Keyring`] on the
/// way in and opened on every way out; content that does not open reads as
/// [`Unreadable`] instead of failing the read.
#[derive(Debug)]
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keyring: Arc<Keyring>,
}

impl EncryptedStore {
    /// `inner`, with content sealed by `keyring`.
    pub fn new(inner: Arc<dyn Store>, keyring: Arc<Keyring>) -> Self {
        Self { inner, keyring }
    }

    /// The keyring (for erasure).
    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Seals every text the inner store holds in plaintext (written before
    /// encryption at rest was turned on): message contents, then report
    /// snapshots, `batch` rows at a time, each batch replaced in one
    /// transaction of the inner store.
    ///
    /// Resumable: after each batch the position is saved in the store's
    /// meta values, and a later call continues from there; once both
    /// tables are done, calls return at once (unless `from_start`, which
    /// scans everything again: for a database that an older server wrote
    /// to after the migration). Safe while the engine serves: a row edited
    /// or deleted between the read and the write keeps its new content
    /// (which was sealed by the edit). Progress is logged.
    pub async fn seal_existing(&self, batch: usize, from_start: bool) -> Result<SealedExisting> {
        let mut report = SealedExisting::default();
        if !from_start && self.inner.get_meta(MIGRATED).await?.as_deref() == Some(MIGRATED_V1) {
            report.already_done = true;
            return Ok(report);
        }
        let batch = batch.max(1);
        let mut position = match self.inner.get_meta(MIGRATION_AT).await? {
            Some(at) if !from_start => Position::parse(&at),
            _ => Position::default(),
        };
        let started = std::time::Instant::now();
        let mut logged = started;
        for table in [TextTable::Messages, TextTable::Reports] {
            if position.table == TextTable::Reports && table == TextTable::Messages {
                continue;
            }
            if position.table != table {
                position = Position { table, after: None };
            }
            loop {
                let texts = self
                    .inner
                    .stored_texts(table, position.after.as_deref(), batch)
                    .await?;
                let Some(last) = texts.last() else {
                    break;
                };
                let last = last.row.clone();
                let full = texts.len() == batch;
                report.scanned += texts.len() as u64;
                let mut replacements = Vec::new();
                for text in texts {
                    if text.text.starts_with(SEALED) {
                        continue;
                    }
                    let sealed = match table {
                        TextTable::Messages => {
                            self.keyring
                                .seal_body(text.chat_id, &text.author, text.message_id, &text.text)
                                .await?
                        }
                        TextTable::Reports => {
                            self.keyring
                                .seal_snapshot(
                                    text.chat_id,
                                    &text.author,
                                    text.message_id,
                                    &text.text,
                                )
                                .await?
                        }
                    };
                    replacements.push(TextReplacement {
                        table,
                        row: text.row,
                        new: format!("{SEALED}{}", STANDARD.encode(sealed)),
                        old: text.text,
                    });
                }
                if !replacements.is_empty() {
                    report.sealed += self.inner.replace_texts(replacements).await? as u64;
                }
                position.after = Some(last);
                self.inner
                    .set_meta(MIGRATION_AT, &position.to_string())
                    .await?;
                if logged.elapsed() >= PROGRESS_EVERY {
                    logged = std::time::Instant::now();
                    tracing::info!(
                        scanned = report.scanned,
                        sealed = report.sealed,
                        table = ?table,
                        "sealing content written before encryption at rest"
                    );
                }
                if !full {
                    break;
                }
            }
        }
        self.inner.set_meta(MIGRATED, MIGRATED_V1).await?;
        self.inner.set_meta(MIGRATION_AT, "").await?;
        if report.sealed > 0 {
            // The plaintext replaced is overwritten in the store's pages;
            // copies of those pages in its log go now, not at some later
            // checkpoint.
            if let Err(e) = self.inner.checkpoint().await {
                tracing::warn!(error = %e, "checkpoint after sealing failed; the next one clears the log");
            }
        }
        tracing::info!(
            scanned = report.scanned,
            sealed = report.sealed,
            seconds = started.elapsed().as_secs(),
            "content written before encryption at rest is sealed"
        );
        Ok(report)
    }

    async fn seal_body(
        &self,
        chat: ChatId,
        sender: &UserId,
        message: MessageId,
        text: &str,
    ) -> Result<String> {
        let sealed = self.keyring.seal_body(chat, sender, message, text).await?;
        Ok(format!("{SEALED}{}", STANDARD.encode(sealed)))
    }

    /// `message` with its content opened.
    async fn open_message(&self, mut message: Message) -> Result<Message> {
        let Some(sealed) = message
            .content
            .as_deref()
            .and_then(|c| c.strip_prefix(SEALED))
        else {
            return Ok(message);
        };
        let opened = match STANDARD.decode(sealed) {
            Ok(bytes) => {
                self.keyring
                    .open_body(message.chat_id, &message.sender_id, message.id, &bytes)
                    .await?
            }
            Err(_) => Opened::Damaged,
        };
        set_opened(&mut message, opened);
        Ok(message)
    }

    /// A page of messages opened: the sealed bodies are decoded into one
    /// buffer and opened together, each key looked up once per page.
    async fn open_messages(&self, mut messages: Vec<Message>) -> Result<Vec<Message>> {
        // (index in `messages`, range in `bytes`) of each sealed body.
        let mut sealed: Vec<(usize, std::ops::Range<usize>)> = Vec::new();
        let mut bytes = Vec::new();
        for (i, message) in messages.iter_mut().enumerate() {
            let Some(text) = message
                .content
                .as_deref()
                .and_then(|c| c.strip_prefix(SEALED))
            else {
                continue;
            };
            let start = bytes.len();
            match STANDARD.decode_vec(text, &mut bytes) {
                Ok(()) => sealed.push((i, start..bytes.len())),
                Err(_) => {
                    bytes.truncate(start);
                    set_opened(message, Opened::Damaged);
                }
            }
        }
        if sealed.is_empty() {
            return Ok(messages);
        }
        let mut bodies = Vec::with_capacity(sealed.len());
        for (i, range) in &sealed {
            let m = &messages[*i];
            bodies.push(SealedBody {
                chat: m.chat_id,
                sender: &m.sender_id,
                message: m.id,
                sealed: &bytes[range.clone()],
            });
        }
        let opened = self.keyring.open_bodies(&bodies).await?;
        drop(bodies);
        for ((i, _), opened) in sealed.into_iter().zip(opened) {
            set_opened(&mut messages[i], opened);
        }
        Ok(messages)
    }

    async fn open_report(&self, mut report: Report) -> Result<Report> {
        let Some(sealed) = report
            .content
            .as_deref()
            .and_then(|c| c.strip_prefix(SEALED))
        else {
            return Ok(report);
        };
        let opened = match STANDARD.decode(sealed) {
            Ok(bytes) => {
                self.keyring
                    .open_snapshot(
                        report.chat_id,
                        &report.reported_user_id,
                        report.message_id,
                        &bytes,
                    )
                    .await?
            }
            Err(_) => Opened::Damaged,
        };
        report.content = match opened {
            Opened::Text(text) => Some(text.as_str().to_owned()),
            // The evidence went with its sender's key (or is damaged): the
            // report stays, without the copy.
            Opened::Erased | Opened::Damaged => None,
        };
        Ok(report)
    }

    /// `change` with its content sealed, and the sealed text with the
    /// plaintext it stands for: the change's result carries the sealed
    /// text back, and is given the plaintext without decrypting it again.
    async fn seal_change(&self, change: Change) -> Result<(Change, Option<Known>)> {
        let mut known = None;
        let change = match change {
            Change::Post(mut new) => {
                if let Some(text) = new.content.take() {
                    let sealed = self
                        .seal_body(new.chat_id, &new.sender_id, new.id, &text)
                        .await?;
                    new.content = Some(sealed.clone());
                    known = Some(Known {
                        sealed,
                        plain: text,
                    });
                }
                Change::Post(new)
            }
            Change::Edit {
                chat_id,
                message_id,
                content,
                at,
            } => {
                // Only a message's sender edits it; the store checks the
                // chat. A message that does not exist is refused here.
                let sender = match self.inner.get_message(message_id).await? {
                    Some(message) => message.sender_id,
                    None => return Err(Error::not_found("message not found")),
                };
                let sealed = self
                    .seal_body(chat_id, &sender, message_id, &content)
                    .await?;
                known = Some(Known {
                    sealed: sealed.clone(),
                    plain: content,
                });
                Change::Edit {
                    chat_id,
                    message_id,
                    content: sealed,
                    at,
                }
            }
            Change::Authorized { by, role, change } => {
                let (change, inner) = Box::pin(self.seal_change(*change)).await?;
                known = inner;
                Change::Authorized {
                    by,
                    role,
                    change: Box::new(change),
                }
            }
            other => other,
        };
        Ok((change, known))
    }

    /// `message` opened, using `known` when the stored content is the text
    /// this call just sealed.
    async fn open_known(&self, mut message: Message, known: Option<&Known>) -> Result<Message> {
        if let Some(known) = known {
            if message.content.as_deref() == Some(known.sealed.as_str()) {
                message.content = Some(known.plain.clone());
                message.unpack();
                return Ok(message);
            }
        }
        self.open_message(message).await
    }

    /// A committed change with its messages opened.
    async fn open_committed(
        &self,
        mut committed: Committed,
        known: Option<&Known>,
    ) -> Result<Committed> {
        committed.applied = match committed.applied {
            Applied::Posted { message, duplicate } => Applied::Posted {
                message: self.open_known(message, known).await?,
                duplicate,
            },
            Applied::Updated { message, changed } => Applied::Updated {
                message: self.open_known(message, known).await?,
                changed,
            },
            Applied::Membership { chat, message } => Applied::Membership {
                chat,
                message: match message {
                    Some(message) => Some(self.open_message(message).await?),
                    None => None,
                },
            },
            other => other,
        };
        Ok(committed)
    }
}

fn set_opened(message: &mut Message, opened: Opened) {
    match opened {
        // Moved out, not copied: the message's content is the only copy
        // of the plaintext left (it is not wiped when dropped: it goes to
        // the reader).
        Opened::Text(mut text) => {
            message.content = Some(std::mem::take(&mut *text));
            message.unpack();
        }
        Opened::Erased => {
            message.content = None;
            message.unreadable = Some(Unreadable::Erased);
        }
        Opened::Damaged => {
            message.content = None;
            message.unreadable = Some(Unreadable::Damaged);
        }
    }
}

#[async_trait]
impl Store for EncryptedStore {
    async fn apply(&self, changes: Vec<Change>) -> Vec<Result<Committed>> {
        // Changes whose sealing failed are answered here; the others go to
        // the inner store as one batch, in order, and are matched back.
        let mut results: Vec<Result<Option<Known>>> = Vec::with_capacity(changes.len());
        let mut sealed = Vec::with_capacity(changes.len());
        for change in changes {
            match self.seal_change(change).await {
                Ok((change, known)) => {
                    results.push(Ok(known));
                    sealed.push(change);
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut applied = self.inner.apply(sealed).await.into_iter();
        let mut out = Vec::with_capacity(results.len());
        for slot in results {
            let result = match slot {
                Err(refused) => Err(refused),
                Ok(known) => match applied.next() {
                    Some(Ok(committed)) => self.open_committed(committed, known.as_ref()).await,
                    Some(Err(e)) => Err(e),
                    None => Err(Error::backend(
                        "the store answered fewer changes than given",
                    )),
                },
            };
            out.push(result);
        }
        out
    }

    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)> {
        self.inner.create_chat(chat).await
    }

    async fn get_chat(&self, id: ChatId) -> Result<Option<Chat>> {
        self.inner.get_chat(id).await
    }

    async fn find_direct_chat(&self, a: &UserId, b: &UserId) -> Result<Option<Chat>> {
        self.inner.find_direct_chat(a, b).await
    }

    async fn list_chats(&self, user: &UserId, query: ChatListQuery) -> Result<Vec<Chat>> {
        self.inner.list_chats(user, query).await
    }

    async fn set_participant_settings(
        &self,
        chat: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> Result<()> {
        self.inner
            .set_participant_settings(chat, user, settings)
            .await
    }

    async fn group_count(&self, user: &UserId) -> Result<u64> {
        self.inner.group_count(user).await
    }

    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.inner.co_members(user).await
    }

    async fn get_message(&self, id: MessageId) -> Result<Option<Message>> {
        match self.inner.get_message(id).await? {
            Some(message) => Ok(Some(self.open_message(message).await?)),
            None => Ok(None),
        }
    }

    async fn find_by_client_id(
        &self,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>> {
        match self.inner.find_by_client_id(sender, client_msg_id).await? {
            Some(message) => Ok(Some(self.open_message(message).await?)),
            None => Ok(None),
        }
    }

    async fn history(&self, chat: ChatId, query: HistoryQuery) -> Result<Vec<Message>> {
        let messages = self.inner.history(chat, query).await?;
        self.open_messages(messages).await
    }

    async fn changes(
        &self,
        chat: ChatId,
        after_updated_seq: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        let messages = self
            .inner
            .changes(chat, after_updated_seq, from_seq, limit)
            .await?;
        self.open_messages(messages).await
    }

    async fn unread_count(&self, chat: ChatId, user: &UserId, after_seq: u64) -> Result<u64> {
        self.inner.unread_count(chat, user, after_seq).await
    }

    async fn set_block(&self, blocker: &UserId, blocked: &UserId, on: bool) -> Result<bool> {
        self.inner.set_block(blocker, blocked, on).await
    }

    async fn blocked_by_user(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.inner.blocked_by_user(user).await
    }

    async fn blockers_of(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.inner.blockers_of(user).await
    }

    async fn is_blocked_either(&self, a: &UserId, b: &UserId) -> Result<bool> {
        self.inner.is_blocked_either(a, b).await
    }

    async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>> {
        self.inner.get_user(user).await
    }

    async fn get_users(&self, users: &[UserId]) -> Result<Vec<Option<UserRecord>>> {
        self.inner.get_users(users).await
    }

    async fn set_last_seen(&self, user: &UserId, at: Timestamp) -> Result<()> {
        self.inner.set_last_seen(user, at).await
    }

    async fn set_privacy(&self, user: &UserId, privacy: Privacy) -> Result<()> {
        self.inner.set_privacy(user, privacy).await
    }

    async fn set_suspension(&self, user: &UserId, until: Option<Timestamp>) -> Result<()> {
        self.inner.set_suspension(user, until).await
    }

    async fn set_silenced(
        &self,
        chat: ChatId,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> Result<bool> {
        self.inner.set_silenced(chat, user, until).await
    }

    async fn insert_report(&self, mut report: Report) -> Result<Report> {
        if let Some(text) = report.content.take() {
            let sealed = self
                .keyring
                .seal_snapshot(
                    report.chat_id,
                    &report.reported_user_id,
                    report.message_id,
                    &text,
                )
                .await?;
            report.content = Some(format!("{SEALED}{}", STANDARD.encode(sealed)));
        }
        let stored = self.inner.insert_report(report).await?;
        self.open_report(stored).await
    }

    async fn get_report(&self, id: ReportId) -> Result<Option<Report>> {
        match self.inner.get_report(id).await? {
            Some(report) => Ok(Some(self.open_report(report).await?)),
            None => Ok(None),
        }
    }

    async fn list_reports(&self, query: ReportQuery) -> Result<Vec<Report>> {
        let reports = self.inner.list_reports(query).await?;
        let mut out = Vec::with_capacity(reports.len());
        for report in reports {
            out.push(self.open_report(report).await?);
        }
        Ok(out)
    }

    async fn resolve_report(&self, resolution: ReportResolution) -> Result<Report> {
        let report = self.inner.resolve_report(resolution).await?;
        self.open_report(report).await
    }

    // The audit log passes through in plaintext, notes included. A note is
    // a moderator's text about an action, not a user's content, and no
    // user's key would fit it: sealing it under the actor's key would let
    // erasing the moderator destroy the record of what they did. Whether
    // notes get a key of their own is open; until then they are plaintext.
    async fn append_audit(&self, entry: AuditEntry) -> Result<()> {
        self.inner.append_audit(entry).await
    }

    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>> {
        self.inner.list_audit(query).await
    }

    async fn pseudonymize_audit(&self, user: &UserId, pseudonym: &UserId) -> Result<u64> {
        self.inner.pseudonymize_audit(user, pseudonym).await
    }

    async fn messages_by_sender(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::SentMessage>> {
        self.inner.messages_by_sender(user, after, limit).await
    }

    async fn reactions_by_user(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<crate::store::UserReaction>> {
        self.inner.reactions_by_user(user, limit).await
    }

    async fn media_by_uploader(
        &self,
        user: &UserId,
        after: Option<MediaId>,
        limit: usize,
    ) -> Result<Vec<MediaRecord>> {
        self.inner.media_by_uploader(user, after, limit).await
    }

    // Held snapshots are sealed anew under the pseudonym's key: the
    // erased user's key is destroyed next, and the evidence must outlive
    // it until the report is resolved. Erasing the pseudonym's key then
    // destroys every copy of it.
    async fn hold_reports(
        &self,
        user: &UserId,
        pseudonym: &UserId,
        mut held: Vec<crate::store::HeldSnapshot>,
    ) -> Result<crate::store::HeldReports> {
        for snapshot in &mut held {
            if let Some(text) = snapshot.content.take() {
                let sealed = self
                    .keyring
                    .seal_snapshot(snapshot.chat_id, pseudonym, snapshot.message_id, &text)
                    .await?;
                snapshot.content = Some(format!("{SEALED}{}", STANDARD.encode(sealed)));
            }
        }
        self.inner.hold_reports(user, pseudonym, held).await
    }

    async fn erase_user_rows(
        &self,
        user: &UserId,
        pseudonym: &UserId,
    ) -> Result<crate::store::ErasedRows> {
        self.inner.erase_user_rows(user, pseudonym).await
    }

    async fn key_packages_of(&self, user: &UserId) -> Result<Vec<crate::mls::PublishedKeyPackage>> {
        self.inner.key_packages_of(user).await
    }

    async fn record_session(&self, user: &UserId, at: crate::model::Timestamp) -> Result<()> {
        self.inner.record_session(user, at).await
    }

    async fn stats(&self, from: i64, to: i64) -> Result<crate::store::StatsRows> {
        self.inner.stats(from, to).await
    }

    async fn answer_checkin(&self, answer: crate::store::CheckinAnswer) -> Result<()> {
        self.inner.answer_checkin(answer).await
    }
    async fn checkin_answers(
        &self,
        message: MessageId,
    ) -> Result<Vec<crate::store::CheckinAnswer>> {
        self.inner.checkin_answers(message).await
    }
    async fn answers_by_user(
        &self,
        user: &UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<crate::store::CheckinAnswer>> {
        self.inner.answers_by_user(user, after, limit).await
    }
    async fn insert_media(&self, record: MediaRecord) -> Result<()> {
        self.inner.insert_media(record).await
    }

    async fn get_media(&self, id: MediaId) -> Result<Option<MediaRecord>> {
        self.inner.get_media(id).await
    }

    async fn attach_media(&self, id: MediaId, message: MessageId) -> Result<bool> {
        self.inner.attach_media(id, message).await
    }

    async fn detach_media(&self, id: MediaId, message: MessageId) -> Result<()> {
        self.inner.detach_media(id, message).await
    }

    async fn delete_media(&self, id: MediaId) -> Result<Option<MediaRecord>> {
        self.inner.delete_media(id).await
    }

    async fn unattached_media(&self, before: Timestamp, limit: usize) -> Result<Vec<MediaRecord>> {
        self.inner.unattached_media(before, limit).await
    }

    async fn publish_key_packages(
        &self,
        user: &UserId,
        device: &crate::model::DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        at: Timestamp,
    ) -> Result<u64> {
        // Public keys and signatures: nothing to seal.
        self.inner
            .publish_key_packages(user, device, packages, last_resort, at)
            .await
    }

    async fn claim_key_packages(
        &self,
        users: &[UserId],
    ) -> Result<Vec<crate::mls::ClaimedKeyPackage>> {
        self.inner.claim_key_packages(users).await
    }

    async fn pin_device_key(
        &self,
        user: &UserId,
        device: &crate::model::DeviceId,
        key: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.inner.pin_device_key(user, device, key).await
    }

    async fn device_keys(
        &self,
        devices: &[(UserId, crate::model::DeviceId)],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.device_keys(devices).await
    }

    async fn get_mls_group(&self, chat: ChatId) -> Result<Option<super::MlsGroupRecord>> {
        self.inner.get_mls_group(chat).await
    }

    // Maintenance reads and writes the stored form: it is how
    // `seal_existing` finds plaintext and puts ciphertext in its place.

    async fn retention_chats(
        &self,
        after: Option<ChatId>,
        limit: usize,
    ) -> Result<Vec<RetentionChat>> {
        self.inner.retention_chats(after, limit).await
    }

    // No content: nothing to open.
    async fn expired_messages(
        &self,
        chat: ChatId,
        after_seq: u64,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<ExpiredMessage>> {
        self.inner
            .expired_messages(chat, after_seq, before, limit)
            .await
    }

    async fn set_retention_watermark(&self, chat: ChatId, seq: u64) -> Result<()> {
        self.inner.set_retention_watermark(chat, seq).await
    }

    async fn stored_texts(
        &self,
        table: TextTable,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredText>> {
        self.inner.stored_texts(table, after, limit).await
    }

    async fn replace_texts(&self, replacements: Vec<TextReplacement>) -> Result<usize> {
        self.inner.replace_texts(replacements).await
    }

    async fn checkpoint(&self) -> Result<()> {
        self.inner.checkpoint().await
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.inner.get_meta(key).await
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.inner.set_meta(key, value).await
    }
}

#[cfg(test)]
mod tests;

//! The [`Store`] trait: durable state of the engine.

use std::{fmt::Debug, sync::Arc};

use async_trait::async_trait;

use crate::{
    error::Result,
    mls::ClaimedKeyPackage,
    model::{
        AuditAction, AuditEntry, AuditId, Chat, ChatId, ChatKind, DeviceId, Encryption,
        MediaRecord, MediaRef, Message, MessageId, MessageType, ParticipantSettings, Privacy,
        Report, ReportId, ReportStatus, Role, SystemEvent, Timestamp, UserId, UserRecord,
    },
};

mod encrypted;
pub mod rows;

pub use encrypted::{EncryptedStore, SealedExisting};

/// Durable state: chats, participants, messages, receipts, blocks, reports,
/// media records and what the engine keeps about users.
///
/// The engine holds every rule; a store keeps data and enforces only the
/// invariants that must hold atomically (sequencing, idempotency, watermark
/// monotonicity, unique direct chats, counts checked under concurrency).
///
/// # Contract
///
/// - **Chats as logs.** Every [`Change`] that alters a chat's log takes the
///   next value of the chat's counter (`last_seq + 1`) in the same
///   transaction that stores it: a new message gets `seq == updated_seq ==`
///   that value; an edit, deletion or reaction moves the message's
///   `updated_seq` to it; membership changes, group updates and changes
///   of retention store a `system` message with it. `seq`s of one chat are unique and gap-free,
///   also under concurrent callers on several nodes. `last_activity` becomes
///   the change's time.
/// - **Batches.** [`Store::apply`] applies its changes in order, each
///   atomically, and returns one result per change in the same order. A
///   change that fails leaves no trace and does not affect the others. When
///   `apply` returns, every `Ok` change is durable (committed, and fsynced as
///   far as the store's configured durability promises).
/// - **Audience at commit.** Each `Ok` result carries the chat's
///   [`Members`] as that change left them, read where the change was
///   applied: in the same transaction (PostgreSQL), or in the single
///   writer's view of the data (SQLite, memory). A participant removed by
///   an earlier change of the same batch, or by any change committed
///   before, is not in it; one added before is. Blocks in a direct chat and
///   mutes are as of that moment too. The engine addresses every event of
///   the change to exactly these users, never to a list it read before.
/// - **Groups keep an admin.** A [`Change::SetRole`] that would leave a
///   group with participants but no admin is a `Conflict`;
///   [`Change::EnsureAdmin`] promotes an heir when the last admin left.
/// - **Idempotency.** `(sender_id, client_msg_id)` is unique. Posting a
///   message whose pair exists returns the stored message with
///   `duplicate: true` and writes nothing, also when the two posts race;
///   if the stored message is in another chat the post fails with
///   [`Error::Conflict`](crate::Error::Conflict).
/// - **Watermarks** (`delivered_seq`, `read_seq`) never move backwards, are
///   clamped to the chat's `last_seq`, and `delivered_seq >= read_seq`.
/// - **Direct chats** are unique per unordered pair of users:
///   [`Store::create_chat`] of a direct chat whose pair has one returns the
///   existing chat and `false`.
/// - **The audit log is append-only.** Entries are never changed or
///   removed, except that [`Store::pseudonymize_audit`] replaces an erased
///   user's id; [`Store::list_audit`] reads them newest first.
/// - Reads see every change whose `apply` returned.
/// - Errors: a missing chat, message or participant is
///   [`Error::NotFound`](crate::Error::NotFound); a state conflict
///   (editing a deleted message, a duplicate participant, a full group, too
///   many distinct reactions) is [`Error::Conflict`](crate::Error::Conflict);
///   a backend failure is [`Error::Backend`](crate::Error::Backend).
///
/// The conformance suite in `chat_core::testing` (feature `testing`) checks
/// all of this; every store runs it against its real backend.
///
/// # Implementing a store
///
/// ```
/// use chat_core::{Store, MemoryStore};
/// use std::sync::Arc;
///
/// // A store is used as a trait object; the in-memory store is the
/// // reference implementation.
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
/// # let _ = store;
/// ```
#[async_trait]
pub trait Store: Debug + Send + Sync + 'static {
    // --- the log ---------------------------------------------------------

    /// Applies `changes` in order, each atomically, durably before returning;
    /// one result per change, in order (see the trait's contract).
    async fn apply(&self, changes: Vec<Change>) -> Vec<Result<Committed>>;

    // --- chats -----------------------------------------------------------

    /// Creates a chat with its founding participants (`visible_from_seq`
    /// 0, watermarks 0, `last_seq` 0). For a direct chat whose pair already
    /// has one, returns that chat and `false` and writes nothing.
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)>;

    /// A chat with its participants in joining order.
    async fn get_chat(&self, id: ChatId) -> Result<Option<Chat>>;

    /// The direct chat of the unordered pair `{a, b}`.
    async fn find_direct_chat(&self, a: &UserId, b: &UserId) -> Result<Option<Chat>>;

    /// The chats `user` takes part in, most recent `last_activity` first
    /// (ties broken by id, descending), starting after `query.after`.
    async fn list_chats(&self, user: &UserId, query: ChatListQuery) -> Result<Vec<Chat>>;

    /// Replaces `user`'s own settings of `chat`; `NotFound` if they are not
    /// a participant. Settings take no seq and survive watermark moves.
    async fn set_participant_settings(
        &self,
        chat: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> Result<()>;

    /// How many groups `user` is a participant of.
    async fn group_count(&self, user: &UserId) -> Result<u64>;

    /// Everyone who shares at least one chat with `user`, without `user`,
    /// each once.
    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>>;

    // --- messages --------------------------------------------------------

    /// A message by id, with its reactions.
    async fn get_message(&self, id: MessageId) -> Result<Option<Message>>;

    /// The message `sender` posted with `client_msg_id`.
    async fn find_by_client_id(
        &self,
        sender: &UserId,
        client_msg_id: &str,
    ) -> Result<Option<Message>>;

    /// Messages of a chat with `from_seq <= seq`, `after_seq < seq <
    /// before_seq` (each bound optional), newest first, at most `limit`.
    async fn history(&self, chat: ChatId, query: HistoryQuery) -> Result<Vec<Message>>;

    /// Messages of a chat with `updated_seq > after_updated_seq` and
    /// `seq >= from_seq`, in ascending `updated_seq`, at most `limit`.
    async fn changes(
        &self,
        chat: ChatId,
        after_updated_seq: u64,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Message>>;

    /// How many messages of the chat have `seq > after_seq`, were not sent
    /// by `user`, are not `system` messages and are not deleted.
    async fn unread_count(&self, chat: ChatId, user: &UserId, after_seq: u64) -> Result<u64>;

    // --- blocks ----------------------------------------------------------

    /// Records (`on`) or lifts that `blocker` blocks `blocked`; returns
    /// whether anything changed.
    async fn set_block(&self, blocker: &UserId, blocked: &UserId, on: bool) -> Result<bool>;

    /// The users `user` has blocked, in the order they were blocked.
    async fn blocked_by_user(&self, user: &UserId) -> Result<Vec<UserId>>;

    /// The users who have blocked `user`.
    async fn blockers_of(&self, user: &UserId) -> Result<Vec<UserId>>;

    /// Whether `a` blocks `b` or `b` blocks `a`.
    async fn is_blocked_either(&self, a: &UserId, b: &UserId) -> Result<bool>;

    // --- users -----------------------------------------------------------

    /// What is stored about `user`; `None` if nothing is.
    async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>>;

    /// What is stored about each of `users`, in the same order. Stores
    /// override the default (one [`get_user`](Store::get_user) after the
    /// other) with one query: a connect reads every contact's privacy.
    async fn get_users(&self, users: &[UserId]) -> Result<Vec<Option<UserRecord>>> {
        let mut out = Vec::with_capacity(users.len());
        for user in users {
            out.push(self.get_user(user).await?);
        }
        Ok(out)
    }

    /// Stores when `user` was last online.
    async fn set_last_seen(&self, user: &UserId, at: Timestamp) -> Result<()>;

    /// Stores `user`'s privacy settings.
    async fn set_privacy(&self, user: &UserId, privacy: Privacy) -> Result<()>;

    /// Suspends `user` until `until`, or lifts the suspension (`None`).
    async fn set_suspension(&self, user: &UserId, until: Option<Timestamp>) -> Result<()>;

    /// Mutes participant `user` of `chat` until `until` (a group
    /// moderator's `mute_participant`), or lifts it (`None`); `false` if
    /// they are not a participant. Not a change of the chat's log: no
    /// `seq`, no system message.
    async fn set_silenced(
        &self,
        chat: ChatId,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> Result<bool>;

    // --- reports ---------------------------------------------------------

    /// Files a report. If `reporter_id` already has an open report of the
    /// same message, returns that one and writes nothing.
    async fn insert_report(&self, report: Report) -> Result<Report>;

    /// A report by id.
    async fn get_report(&self, id: ReportId) -> Result<Option<Report>>;

    /// Reports that match `query`, oldest first.
    async fn list_reports(&self, query: ReportQuery) -> Result<Vec<Report>>;

    /// Closes an open report. Not open: [`Error::Conflict`](crate::Error::Conflict).
    async fn resolve_report(&self, resolution: ReportResolution) -> Result<Report>;

    // --- audit log -------------------------------------------------------
    //
    // Append-only: there is no method to change or remove an entry, apart
    // from the pseudonymization of an erased user.

    /// Appends an entry to the moderation audit log. An entry whose id is
    /// stored already is a [`Conflict`](crate::Error::Conflict) and
    /// changes nothing.
    async fn append_audit(&self, entry: AuditEntry) -> Result<()>;

    /// Entries that match `query`'s filters, newest first (by id), at most
    /// `query.limit`, only those older than `query.before` if given: paging
    /// with the last id of a page as the next `before` neither repeats nor
    /// skips an entry.
    async fn list_audit(&self, query: AuditQuery) -> Result<Vec<AuditEntry>>;

    /// Replaces `user` with `pseudonym` wherever the log names them: as
    /// `actor_id`, and as `target_id` of entries whose target is a
    /// [`User`](crate::model::AuditTarget::User). Returns how many entries
    /// changed. For the erasure of a user, whose log must remain without
    /// naming them.
    async fn pseudonymize_audit(&self, user: &UserId, pseudonym: &UserId) -> Result<u64>;

    // --- media -----------------------------------------------------------

    /// Stores the record of an upload.
    async fn insert_media(&self, record: MediaRecord) -> Result<()>;

    /// The record of an upload.
    async fn get_media(&self, id: crate::model::MediaId) -> Result<Option<MediaRecord>>;

    /// Attaches upload `id` to `message` if it is attached to nothing yet
    /// (compare-and-set): `true` if it is now attached to `message`,
    /// `false` if it was attached already (to any message, `message`
    /// included) or does not exist.
    async fn attach_media(
        &self,
        id: crate::model::MediaId,
        message: crate::model::MessageId,
    ) -> Result<bool>;

    /// Undoes [`attach_media`](Store::attach_media) when the message was
    /// not stored after all: detaches `id` if it is attached to `message`;
    /// nothing otherwise.
    async fn detach_media(
        &self,
        id: crate::model::MediaId,
        message: crate::model::MessageId,
    ) -> Result<()>;

    /// Removes the record of an upload and returns it (`None` if there was
    /// none). The caller deletes the bytes.
    async fn delete_media(&self, id: crate::model::MediaId) -> Result<Option<MediaRecord>>;

    /// Uploads attached to no message and created before `before`, oldest
    /// first, at most `limit` (the sweep of abandoned uploads).
    async fn unattached_media(&self, before: Timestamp, limit: usize) -> Result<Vec<MediaRecord>>;

    // --- MLS key packages ------------------------------------------------

    /// Adds `packages` to `device`'s key packages (and makes `last_resort`
    /// its last-resort one, replacing any before); returns how many it now
    /// has, the last-resort one not counted. More than
    /// [`MAX_KEY_PACKAGES_PER_DEVICE`](crate::mls::MAX_KEY_PACKAGES_PER_DEVICE)
    /// in all is a [`Conflict`](crate::Error::Conflict) and stores nothing.
    async fn publish_key_packages(
        &self,
        user: &UserId,
        device: &DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        at: Timestamp,
    ) -> Result<u64>;

    /// Every key package of `user`'s devices not claimed yet, the
    /// last-resort ones included, by device then publishing order (the
    /// user's data export).
    async fn key_packages_of(&self, user: &UserId) -> Result<Vec<crate::mls::PublishedKeyPackage>>;

    /// One key package of each device of each of `users` that has any:
    /// the oldest not handed out yet, which is removed (never handed out
    /// twice, also to concurrent claimers on several nodes), or the
    /// device's last-resort one when none is left (kept).
    async fn claim_key_packages(&self, users: &[UserId]) -> Result<Vec<ClaimedKeyPackage>>;

    /// Pins `key` as the signature key of `device`, unless one is pinned
    /// already (the first one wins, also between concurrent callers);
    /// returns the pinned key.
    async fn pin_device_key(
        &self,
        user: &UserId,
        device: &DeviceId,
        key: Vec<u8>,
    ) -> Result<Vec<u8>>;

    /// The pinned signature key of each of `devices`, in order.
    async fn device_keys(&self, devices: &[(UserId, DeviceId)]) -> Result<Vec<Option<Vec<u8>>>>;

    /// The chat's MLS group, if an MLS commit was accepted for it.
    async fn get_mls_group(&self, chat: ChatId) -> Result<Option<MlsGroupRecord>>;

    // --- retention -------------------------------------------------------

    /// Chats with a retention ([`Change::SetRetention`]), in id order,
    /// after `after` (from the start if `None`), at most `limit`.
    async fn retention_chats(
        &self,
        after: Option<ChatId>,
        limit: usize,
    ) -> Result<Vec<RetentionChat>>;

    /// The messages of `chat` with `seq > after_seq`, in seq order, up to
    /// (not including) the first one created at or after `before`, at most
    /// `limit`: what the retention sweep looks at next. Every kind, deleted
    /// or not; the engine decides what to remove. Reads the log from
    /// `after_seq` on, never a whole chat.
    async fn expired_messages(
        &self,
        chat: ChatId,
        after_seq: u64,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<ExpiredMessage>>;

    /// Moves the chat's retention watermark (everything up to `seq` was
    /// swept) forward to `seq`; never back. Not a change of the chat's log.
    /// Nothing if the chat does not exist.
    async fn set_retention_watermark(&self, chat: ChatId, seq: u64) -> Result<()>;

    // --- check-ins -------------------------------------------------------

    /// Records `answer` (replacing the same user's earlier answer to the
    /// same check-in).
    async fn answer_checkin(&self, answer: CheckinAnswer) -> Result<()>;

    /// Every answer to check-in `message`, in the order they were first
    /// given.
    async fn checkin_answers(&self, message: MessageId) -> Result<Vec<CheckinAnswer>>;

    /// Up to `limit` of `user`'s answers, to check-ins with ids after
    /// `after`, in check-in id order (the user's data export).
    async fn answers_by_user(
        &self,
        user: &UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<CheckinAnswer>>;

    // --- analytics -------------------------------------------------------

    /// Counts one authenticated connection of `user` opened at `at`: a
    /// session of [`Store::stats`].
    async fn record_session(&self, user: &UserId, at: Timestamp) -> Result<()>;

    /// The counts behind `GET /api/v1/admin/stats` for the UTC days
    /// `from..=to` (days since 1970-01-01), as [`StatsRows`] defines them.
    /// Counts only: nothing of it names a user, chat or message.
    async fn stats(&self, from: i64, to: i64) -> Result<StatsRows>;

    // --- erasure ---------------------------------------------------------
    //
    // What `ChatEngine::erase_user` reads and writes. The messages,
    // reactions and memberships it finds are removed through the write
    // lanes (so that participants get events and `sync` brings the
    // tombstones); these methods find them and do the rest.

    /// Up to `limit` of `user`'s own messages that are not tombstones,
    /// `system` and `mls_commit` entries left out, in `client_msg_id`
    /// order after `after` (the last of the previous page; from the start
    /// if `None`).
    async fn messages_by_sender(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SentMessage>>;

    /// Up to `limit` of `user`'s reactions, in any order.
    async fn reactions_by_user(&self, user: &UserId, limit: usize) -> Result<Vec<UserReaction>>;

    /// Up to `limit` of `user`'s uploads with ids after `after`, in id order.
    async fn media_by_uploader(
        &self,
        user: &UserId,
        after: Option<crate::model::MediaId>,
        limit: usize,
    ) -> Result<Vec<MediaRecord>>;

    /// The legal hold of an erasure: every report of `user`'s messages
    /// names `pseudonym` instead from now on; the open ones are put on
    /// [`legal_hold`](crate::model::Report::legal_hold), those listed in
    /// `held` with the snapshot given there (the others keep theirs), and
    /// closed ones lose their snapshot (content and media). In one
    /// transaction.
    async fn hold_reports(
        &self,
        user: &UserId,
        pseudonym: &UserId,
        held: Vec<HeldSnapshot>,
    ) -> Result<HeldReports>;

    /// The last step of erasing `user`, in one transaction: the messages
    /// they sent name `pseudonym` and lose their `client_msg_id` (so that
    /// a new user of the same id starts clean), reports they filed name
    /// `pseudonym` and lose their reason, uploads left (held as evidence)
    /// name `pseudonym`; their blocks, key packages, device keys,
    /// check-in answers, remaining reactions and memberships, and their
    /// user record
    /// (privacy settings, last seen, suspension) are deleted.
    async fn erase_user_rows(&self, user: &UserId, pseudonym: &UserId) -> Result<ErasedRows>;

    // --- maintenance -----------------------------------------------------

    /// Up to `limit` stored texts of `table` (messages with content, or
    /// reports with a snapshot), in id order, after the row `after` (from
    /// the start if `None`). For re-sealing content written before
    /// encryption at rest; see [`EncryptedStore::seal_existing`].
    async fn stored_texts(
        &self,
        table: TextTable,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<StoredText>>;

    /// Replaces each text whose row still holds exactly `old` with `new`,
    /// in one transaction, changing nothing else (no `updated_seq`, no
    /// time): a row edited or deleted since it was read keeps what it has
    /// now. Returns how many were replaced. Old contents are not kept: a
    /// store overwrites the freed space where it can (SQLite's
    /// `secure_delete`).
    async fn replace_texts(&self, replacements: Vec<TextReplacement>) -> Result<usize>;

    /// Moves everything written so far into the store's files and drops
    /// the copies a log still holds (SQLite: a `TRUNCATE` checkpoint of the
    /// WAL), so that content replaced by [`Store::replace_texts`] is gone
    /// from the files too. Best effort: nothing to do by default.
    async fn checkpoint(&self) -> Result<()> {
        Ok(())
    }

    /// A value the engine keeps about the store itself (the progress of a
    /// maintenance task), or `None`.
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;

    /// Sets a value of [`Store::get_meta`].
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;
}

/// A chat's MLS group as the delivery service follows it: read with
/// [`Store::get_mls_group`], written by [`Change::MlsCommit`].
#[derive(Clone, PartialEq, Eq)]
pub struct MlsGroupRecord {
    /// Its current epoch.
    pub epoch: u64,
    /// The devices in it, by user.
    pub members: Vec<(UserId, DeviceId)>,
    /// Its public state, opaque to the store (the [`MlsDelivery`]'s).
    ///
    /// [`MlsDelivery`]: crate::mls::MlsDelivery
    pub state: Vec<u8>,
}

impl Debug for MlsGroupRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsGroupRecord")
            .field("epoch", &self.epoch)
            .field("members", &self.members)
            .field("state_bytes", &self.state.len())
            .finish()
    }
}

/// A chat with a retention, as [`Store::retention_chats`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionChat {
    /// The chat.
    pub chat_id: ChatId,
    /// Its retention, in seconds.
    pub seconds: u64,
    /// Every message with `seq <= swept_seq` was swept already.
    pub swept_seq: u64,
}

/// One user's answer to a check-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckinAnswer {
    /// The check-in message.
    pub message_id: MessageId,
    /// Its chat.
    pub chat_id: ChatId,
    /// Who answered.
    pub user_id: UserId,
    /// The index of the option they picked.
    pub option: u32,
    /// When they (last) answered.
    pub at: Timestamp,
}

/// A message as [`Store::messages_by_sender`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentMessage {
    /// Its chat.
    pub chat_id: ChatId,
    /// The message.
    pub id: MessageId,
    /// Its sender's idempotency key (the listing's order).
    pub client_msg_id: String,
}

/// A reaction as [`Store::reactions_by_user`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserReaction {
    /// The chat of the message.
    pub chat_id: ChatId,
    /// The message reacted to.
    pub message_id: MessageId,
    /// With what.
    pub emoji: String,
}

/// An open report's snapshot as [`Store::hold_reports`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldSnapshot {
    /// The report.
    pub id: ReportId,
    /// The chat of the reported message.
    pub chat_id: ChatId,
    /// The reported message.
    pub message_id: MessageId,
    /// The snapshot's text; an [`EncryptedStore`] seals it under the
    /// pseudonym's key.
    pub content: Option<String>,
}

/// What [`Store::hold_reports`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeldReports {
    /// Open reports now on legal hold.
    pub held: u64,
    /// Closed reports whose snapshot was destroyed.
    pub destroyed: u64,
}

/// Milliseconds in a day: [`Store::stats`] days are `created_at /
/// DAY_MS` (UTC).
pub const DAY_MS: i64 = 86_400_000;

/// The Monday-based week of a day (days since 1970-01-01, a Thursday):
/// day -3 (Monday 1969-12-29) starts week 0, so every week runs Monday to
/// Sunday as ISO weeks do.
pub fn week_of_day(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

/// How many of the latest messages one mark times (see
/// [`Applied::Marked`]): a receipt that covers more at once times these.
pub const RECEIPT_WINDOW: u64 = 1000;

/// How old a message may be and still have its receipts timed: older ones
/// cannot count as delivered within 1 s or read within 24 h.
pub const RECEIPT_HORIZON_MS: i64 = DAY_MS;

/// Which seqs a mark from `was` to `now` times: `(lo, hi]`, the latest
/// [`RECEIPT_WINDOW`] of the range (of those, only messages of others,
/// counted as [`StatsRows::messages`] counts them, and created within
/// [`RECEIPT_HORIZON_MS`] of the mark).
pub fn receipt_range(was: u64, now: u64) -> (u64, u64) {
    (was.max(now.saturating_sub(RECEIPT_WINDOW)), now)
}

/// Whether messages of this kind count in [`Store::stats`] (everything a
/// person sent: system messages and MLS commits do not).
pub fn counted_kind(kind: MessageType) -> bool {
    !matches!(kind, MessageType::System | MessageType::MlsCommit)
}

/// What [`Store::stats`] counts over UTC days `from..=to`. A *counted
/// message* is one of a kind [`counted_kind`] accepts, created in the
/// period (tombstones count: the message was sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsRows {
    /// Per day with any count, in day order (days left out count zero).
    pub days: Vec<DayCounts>,
    /// Counted messages.
    pub messages: u64,
    /// Distinct users who opened a session or sent a counted message.
    pub active_users: u64,
    /// Sessions ([`Store::record_session`]) opened.
    pub sessions: u64,
    /// Counted messages whose first receipt by another member
    /// (`mark_delivered` or `mark_as_read`) came at most 1 s after them.
    pub delivered_within_1s: u64,
    /// Counted messages another member marked read at most 24 h after them.
    pub read_within_24h: u64,
    /// For each direct chat whose first counted message is in the period
    /// and that got a reply: milliseconds from that message to the first
    /// counted message of the other participant (which may come after the
    /// period). Any order.
    pub first_replies_ms: Vec<u64>,
    /// Direct chats whose first counted message is in the period, without
    /// a reply yet.
    pub unanswered: u64,
    /// Per week ([`week_of_day`]) from the week of `from` to the week of
    /// `to` with an active chat, in order (weeks left out count zero).
    pub weeks: Vec<WeekCounts>,
}

/// One day of [`StatsRows::days`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayCounts {
    /// Days since 1970-01-01.
    pub day: i64,
    /// Counted messages created that day.
    pub messages: u64,
    /// Distinct users who opened a session or sent a counted message.
    pub active_users: u64,
    /// Chats (direct and group) created that day.
    pub new_chats: u64,
}

/// One week of [`StatsRows::weeks`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WeekCounts {
    /// [`week_of_day`] of its days.
    pub week: i64,
    /// Chats with a counted message in the week (any day of it, also
    /// outside the period).
    pub active_chats: u64,
    /// Of those, chats with a counted message the week after.
    pub retained: u64,
}

/// What [`Store::erase_user_rows`] did, counted per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErasedRows {
    /// Messages (tombstones, commits) that now name the pseudonym.
    pub messages: u64,
    /// Reports the user filed, now in the pseudonym's name.
    pub reports_filed: u64,
    /// Blocks the user had placed.
    pub blocks: u64,
    /// MLS key packages.
    pub key_packages: u64,
    /// Pinned MLS device signature keys.
    pub device_keys: u64,
    /// Reactions left (made while the erasure ran).
    pub reactions: u64,
    /// Memberships left (joined while the erasure ran).
    pub memberships: u64,
    /// Check-in answers.
    pub checkin_answers: u64,
    /// Whether there was a user record.
    pub user: bool,
}

/// A message as [`Store::expired_messages`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiredMessage {
    /// The message.
    pub id: MessageId,
    /// Its place in the log.
    pub seq: u64,
    /// Its kind.
    pub kind: MessageType,
    /// Whether it is a tombstone already.
    pub deleted: bool,
    /// The upload it carries.
    pub media: Option<crate::model::MediaId>,
}

impl ExpiredMessage {
    /// The parts of `message` the sweep needs.
    pub fn of(message: &Message) -> Self {
        Self {
            id: message.id,
            seq: message.seq,
            kind: message.kind,
            deleted: message.deleted,
            media: message.media.as_ref().map(|m| m.id),
        }
    }
}

/// Which stored texts [`Store::stored_texts`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextTable {
    /// The content of messages.
    Messages,
    /// The snapshots of reported messages.
    Reports,
}

/// A text at rest: a message's content or a report's snapshot of it.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredText {
    /// The row's id (the message's, or the report's).
    pub row: String,
    /// The chat it was written in.
    pub chat_id: ChatId,
    /// Who wrote it (for a report, the reported user).
    pub author: UserId,
    /// The message it is, or is a copy of.
    pub message_id: MessageId,
    /// The text as stored.
    pub text: String,
}

impl Debug for StoredText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the text: it may be a plaintext body.
        f.debug_struct("StoredText")
            .field("row", &self.row)
            .field("chat_id", &self.chat_id)
            .field("author", &self.author)
            .field("message_id", &self.message_id)
            .finish_non_exhaustive()
    }
}

/// One replacement of [`Store::replace_texts`].
#[derive(Clone, PartialEq, Eq)]
pub struct TextReplacement {
    /// Where.
    pub table: TextTable,
    /// The row's id.
    pub row: String,
    /// What the row must still hold.
    pub old: String,
    /// What it holds afterwards.
    pub new: String,
}

impl Debug for TextReplacement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextReplacement")
            .field("table", &self.table)
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

/// A change of a chat's log (or of a participant's watermarks), applied by
/// [`Store::apply`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// Changes are built once and moved into a batch; boxing the large `Post`
// variant would cost an allocation per message on the hottest path.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    /// Store a new message (user or system) with the next seq.
    ///
    /// Fails with `NotFound` if the chat does not exist, if a non-system
    /// sender is not a participant, or if `reply_to` is not a message of the
    /// same chat.
    Post(NewMessage),
    /// Replace a message's content, set `edited_at`, take the next seq.
    /// `NotFound` if the message is not in `chat_id`; `Conflict` if deleted.
    Edit {
        /// The chat of the message.
        chat_id: ChatId,
        /// The message.
        message_id: MessageId,
        /// The new content.
        content: String,
        /// When.
        at: Timestamp,
    },
    /// Make a message a tombstone (content and media `None`, reactions
    /// removed, `deleted`), taking the next seq. Deleting a tombstone again
    /// changes nothing and returns `changed: false`.
    Delete {
        /// The chat of the message.
        chat_id: ChatId,
        /// The message.
        message_id: MessageId,
        /// When.
        at: Timestamp,
    },
    /// Add or remove `user_id`'s reaction `emoji`, taking the next seq if
    /// anything changed (`changed: false` otherwise). Adding a new distinct
    /// emoji to a message that has `max_distinct` already is a `Conflict`, as
    /// is reacting to a deleted message.
    React {
        /// The chat of the message.
        chat_id: ChatId,
        /// The message.
        message_id: MessageId,
        /// Who reacts.
        user_id: UserId,
        /// With what.
        emoji: String,
        /// Add (`true`) or remove.
        add: bool,
        /// Limit of distinct emoji on one message.
        max_distinct: usize,
        /// When.
        at: Timestamp,
    },
    /// Add a participant (watermarks and `visible_from_seq` set to the seq of
    /// the system message recording it). `Conflict` if already in, or if the
    /// chat has `max_participants` already.
    AddParticipant {
        /// The chat.
        chat_id: ChatId,
        /// Who joins.
        user_id: UserId,
        /// With which role.
        role: Role,
        /// Who adds them (the system message's sender).
        by: UserId,
        /// Capacity of the chat.
        max_participants: usize,
        /// When.
        at: Timestamp,
    },
    /// Remove a participant; `NotFound` if not in the chat.
    RemoveParticipant {
        /// The chat.
        chat_id: ChatId,
        /// Who leaves.
        user_id: UserId,
        /// Who removes them (themselves when leaving).
        by: UserId,
        /// When.
        at: Timestamp,
    },
    /// Change a participant's role; `NotFound` if not in the chat. Setting
    /// the role they have changes nothing (`message: None`). Demoting the
    /// only admin of a group is a `Conflict`: a group keeps an admin.
    SetRole {
        /// The chat.
        chat_id: ChatId,
        /// Whose role.
        user_id: UserId,
        /// The new role.
        role: Role,
        /// Who changes it.
        by: UserId,
        /// When.
        at: Timestamp,
    },
    /// `change`, if `by` is still a participant of its chat holding at
    /// least `role` when it commits; otherwise `Forbidden`, and nothing is
    /// written. The engine checks a group change's rights on the chat as it
    /// reads it, then queues the change; this makes the store check again
    /// where it applies the change, so that an admin removed or demoted by
    /// a change committed in between cannot still add, remove, promote or
    /// rename (a group left with members and no admin, otherwise).
    Authorized {
        /// Who must still hold the role.
        by: UserId,
        /// The least role they need (admin > moderator > member).
        role: Role,
        /// The change to apply.
        change: Box<Change>,
    },
    /// An accepted MLS commit of an `e2ee` chat: if the chat's group is at
    /// `expected_epoch` (`None`: the chat has no group yet), it becomes
    /// `group` and `message` (the `mls_commit` log entry) is posted, in one
    /// transaction; otherwise a `Conflict` and nothing is written. This is
    /// what makes commits a total order per chat, also between nodes.
    MlsCommit {
        /// The epoch the commit was made for.
        expected_epoch: Option<u64>,
        /// The group after the commit.
        group: MlsGroupRecord,
        /// The log entry, posted as [`Change::Post`].
        message: NewMessage,
        /// The membership change the commit goes with (`add_participant`,
        /// `remove_participant` in an e2ee chat), applied first, in the same
        /// transaction; the result is then [`Applied::MlsMembership`].
        membership: Option<Box<Change>>,
    },
    /// If the chat has participants but none of them is an admin (its last
    /// admin just left), make its heir admin: the longest-standing
    /// moderator, else the longest-standing participant; recorded like a
    /// [`Change::SetRole`] by `by`. Otherwise changes nothing (`message:
    /// None`). The engine queues it right behind a removal, in the same
    /// batch, so that no other change of the chat comes between them.
    EnsureAdmin {
        /// The chat.
        chat_id: ChatId,
        /// Who caused it (the remover).
        by: UserId,
        /// When.
        at: Timestamp,
    },
    /// Change a group's name, description or avatar (fields that are
    /// `Some`); `NotFound` if the chat does not exist.
    UpdateGroup {
        /// The chat.
        chat_id: ChatId,
        /// What changes.
        patch: GroupPatch,
        /// Who changes it.
        by: UserId,
        /// When.
        at: Timestamp,
    },
    /// Set the chat's retention (`None`: keep forever), recorded by a
    /// `system` message [`SystemEvent::RetentionChanged`]; setting the
    /// retention it has changes nothing (`message: None`). `NotFound` if
    /// the chat does not exist.
    SetRetention {
        /// The chat.
        chat_id: ChatId,
        /// The new retention, in seconds.
        seconds: Option<u64>,
        /// Who changes it.
        by: UserId,
        /// When.
        at: Timestamp,
    },
    /// Move a participant's watermarks forward (never back, clamped to
    /// `last_seq`; read implies delivered). Takes no seq. `NotFound` if not a
    /// participant.
    Mark {
        /// The chat.
        chat_id: ChatId,
        /// Whose watermarks.
        user_id: UserId,
        /// Delivered up to here.
        delivered_up_to: u64,
        /// Read up to here (`0`: no change).
        read_up_to: u64,
        /// When: the time of the receipts it records (see
        /// [`receipt_range`]).
        at: Timestamp,
    },
}

impl Change {
    /// The chat the change belongs to.
    pub fn chat_id(&self) -> ChatId {
        match self {
            Change::Post(m) | Change::MlsCommit { message: m, .. } => m.chat_id,
            Change::Authorized { change, .. } => change.chat_id(),
            Change::Edit { chat_id, .. }
            | Change::Delete { chat_id, .. }
            | Change::React { chat_id, .. }
            | Change::AddParticipant { chat_id, .. }
            | Change::RemoveParticipant { chat_id, .. }
            | Change::SetRole { chat_id, .. }
            | Change::EnsureAdmin { chat_id, .. }
            | Change::UpdateGroup { chat_id, .. }
            | Change::SetRetention { chat_id, .. }
            | Change::Mark { chat_id, .. } => *chat_id,
        }
    }

    /// The system event recorded by a membership change or group update.
    pub fn system_event(&self) -> Option<SystemEvent> {
        match self {
            Change::AddParticipant { user_id, role, .. } => Some(SystemEvent::ParticipantAdded {
                user_id: user_id.clone(),
                role: *role,
            }),
            Change::RemoveParticipant { user_id, .. } => Some(SystemEvent::ParticipantRemoved {
                user_id: user_id.clone(),
            }),
            Change::SetRole { user_id, role, .. } => Some(SystemEvent::RoleChanged {
                user_id: user_id.clone(),
                role: *role,
            }),
            Change::UpdateGroup { patch, .. } => Some(SystemEvent::GroupUpdated {
                name: patch.name.clone(),
                description: patch.description.clone(),
                avatar_url: patch.avatar_url.clone(),
            }),
            Change::SetRetention { seconds, .. } => {
                Some(SystemEvent::RetentionChanged { seconds: *seconds })
            }
            Change::Authorized { change, .. }
            | Change::MlsCommit {
                membership: Some(change),
                ..
            } => change.system_event(),
            _ => None,
        }
    }

    /// `self`, applied only if `by` still holds at least `role` when it
    /// commits (see [`Change::Authorized`]).
    pub fn authorized(self, by: &UserId, role: Role) -> Change {
        Change::Authorized {
            by: by.clone(),
            role,
            change: Box::new(self),
        }
    }
}

/// The check of a [`Change::Authorized`]: `held` is `by`'s role in the
/// chat now (`None`: not a participant); `Forbidden` unless it is at least
/// `required` (admin > moderator > member).
pub fn check_authority(held: Option<Role>, by: &UserId, required: Role) -> Result<()> {
    fn rank(role: Role) -> u8 {
        match role {
            Role::Admin => 2,
            Role::Moderator => 1,
            Role::Member => 0,
        }
    }
    match held {
        Some(role) if rank(role) >= rank(required) => Ok(()),
        _ => Err(crate::Error::forbidden(format!(
            "{by} no longer has the role this change needs in the chat"
        ))),
    }
}

/// What a [`Change::EnsureAdmin`] becomes on `chat` as the batch's earlier
/// changes left it: the promotion of its heir (the longest-standing
/// moderator, else the longest-standing participant), or `None` if the
/// group has an admin or no participants and nothing changes.
pub fn promotion_of_heir(chat: &Chat, by: &UserId, at: Timestamp) -> Option<Change> {
    if chat.participants.iter().any(|p| p.role == Role::Admin) {
        return None;
    }
    let heir = chat
        .participants
        .iter()
        .find(|p| p.role == Role::Moderator)
        .or_else(|| chat.participants.first())?;
    Some(Change::SetRole {
        chat_id: chat.id,
        user_id: heir.user_id.clone(),
        role: Role::Admin,
        by: by.clone(),
        at,
    })
}

/// Whether giving `user` the role `role` would leave a group with
/// participants but no admin (see [`Change::SetRole`]).
pub fn demotes_last_admin(chat: &Chat, user: &UserId, role: Role) -> bool {
    role != Role::Admin
        && chat.kind == ChatKind::Group
        && chat
            .participants
            .iter()
            .filter(|p| p.role == Role::Admin)
            .all(|p| &p.user_id == user)
        && chat
            .participant(user)
            .is_some_and(|p| p.role == Role::Admin)
}

/// The participants of a chat as one applied change left them: who
/// receives that change's events (see the [`Store`] contract, "Audience at
/// commit").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Members {
    /// The participants, in joining order.
    pub users: Arc<[UserId]>,
    /// Participants who muted the chat, and until when.
    pub muted: Vec<(UserId, Timestamp)>,
    /// A direct chat in which one participant blocks the other: nothing
    /// one of them does reaches the other.
    pub blocked: bool,
}

impl Members {
    /// The members of `chat` as it is; `blocked` for a direct chat with a
    /// block either way.
    pub fn of(chat: &Chat, blocked: bool) -> Self {
        Self {
            users: chat.member_ids().into(),
            muted: chat
                .participants
                .iter()
                .filter_map(|p| p.settings.muted_until.map(|t| (p.user_id.clone(), t)))
                .collect(),
            blocked: blocked && chat.kind == ChatKind::Direct,
        }
    }

    /// Whether `user` is one of them.
    pub fn contains(&self, user: &UserId) -> bool {
        self.users.contains(user)
    }

    /// Whether `user` muted the chat at `now`.
    pub fn is_muted(&self, user: &UserId, now: Timestamp) -> bool {
        self.muted
            .iter()
            .any(|(u, until)| u == user && *until > now)
    }
}

/// One change as [`Store::apply`] committed it: its outcome and the chat's
/// members right after it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Committed {
    /// What the change did.
    pub applied: Applied,
    /// Who receives its events.
    pub members: Arc<Members>,
}

impl Committed {
    /// A committed change with its audience.
    pub fn new(applied: Applied, members: Arc<Members>) -> Self {
        Self { applied, members }
    }
}

/// The outcome of one [`Change`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Applied {
    /// A [`Change::Post`]: the stored message; `duplicate` if it had been
    /// stored before under the same `(sender, client_msg_id)`.
    Posted {
        /// The message as stored.
        message: Message,
        /// Whether this was a retry of an earlier post.
        duplicate: bool,
    },
    /// An edit, deletion or reaction: the message after it.
    Updated {
        /// The message after the change.
        message: Message,
        /// Whether anything changed (and a seq was taken).
        changed: bool,
    },
    /// A membership change or group update: the chat after it and the
    /// system message recording it (`None` if nothing changed).
    Membership {
        /// The chat after the change.
        chat: Chat,
        /// The system message.
        message: Option<Message>,
    },
    /// A [`Change::MlsCommit`] carrying a membership change: the chat and
    /// system message of the membership change, and the `mls_commit` log
    /// entry right behind it.
    MlsMembership {
        /// The chat after both.
        chat: Chat,
        /// The membership change's system message.
        message: Option<Message>,
        /// The commit's log entry (boxed: the variant is rare, and the
        /// enum stays as small as its common variants).
        commit: Box<Message>,
    },
    /// A [`Change::Mark`]: the watermarks after it.
    Marked {
        /// Delivered watermark after the change.
        delivered_seq: u64,
        /// Read watermark after the change.
        read_seq: u64,
        /// Whether the delivered watermark moved.
        delivered_moved: bool,
        /// Whether the read watermark moved.
        read_moved: bool,
        /// When the messages this mark delivered first (no member but
        /// their sender had marked them) were created, within
        /// [`receipt_range`]: the delivery latency the engine reports.
        first_delivered: Vec<Timestamp>,
    },
}

/// A message to post.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// Its id, chosen by the engine.
    pub id: MessageId,
    /// Where.
    pub chat_id: ChatId,
    /// Who.
    pub sender_id: UserId,
    /// Kind.
    pub kind: MessageType,
    /// Body (validated by the engine).
    pub content: Option<String>,
    /// Attached upload.
    pub media: Option<MediaRef>,
    /// The answered message (must be in the same chat).
    pub reply_to: Option<MessageId>,
    /// The sender's idempotency key (`None` for system messages).
    pub client_msg_id: Option<String>,
    /// For system messages.
    pub system: Option<SystemEvent>,
    /// For `mls_commit` messages: the commit.
    pub mls: Option<crate::model::MlsCommitRecord>,
    /// When.
    pub created_at: Timestamp,
}

impl NewMessage {
    /// The system message recording a membership change or group update,
    /// caused by `by`.
    pub fn system(chat_id: ChatId, by: UserId, event: Option<SystemEvent>, at: Timestamp) -> Self {
        Self {
            mls: None,
            id: MessageId::new(),
            chat_id,
            sender_id: by,
            kind: MessageType::System,
            content: None,
            media: None,
            reply_to: None,
            client_msg_id: None,
            system: event,
            created_at: at,
        }
    }

    /// The message this post becomes when stored with `seq`.
    pub fn into_message(self, seq: u64) -> Message {
        let mut message = Message {
            mls: self.mls,
            id: self.id,
            chat_id: self.chat_id,
            seq,
            updated_seq: seq,
            sender_id: self.sender_id,
            kind: self.kind,
            content: self.content,
            media: self.media,
            reply_to: self.reply_to,
            client_msg_id: self.client_msg_id,
            created_at: self.created_at,
            edited_at: None,
            deleted: false,
            reactions: Default::default(),
            system: self.system,
            unreadable: None,
            checkin: None,
            resource: None,
        };
        message.unpack();
        message
    }
}

/// A chat to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChat {
    /// Its id.
    pub id: ChatId,
    /// Direct or group. A direct chat has exactly two distinct participants.
    pub kind: ChatKind,
    /// Group name.
    pub name: Option<String>,
    /// Group description.
    pub description: Option<String>,
    /// Group avatar.
    pub avatar_url: Option<String>,
    /// Fixed encryption mode.
    pub encryption: Encryption,
    /// The founding participants in order, each once.
    pub participants: Vec<(UserId, Role)>,
    /// When.
    pub created_at: Timestamp,
}

impl NewChat {
    /// The chat as stored: each founder once (first occurrence wins), in
    /// order, with watermarks and `visible_from_seq` 0, `last_seq` 0.
    pub fn into_chat(self) -> Chat {
        let mut seen = std::collections::HashSet::new();
        let participants = self
            .participants
            .into_iter()
            .filter(|(u, _)| seen.insert(u.clone()))
            .map(|(user_id, role)| crate::model::Participant {
                user_id,
                role,
                joined_at: self.created_at,
                delivered_seq: 0,
                read_seq: 0,
                visible_from_seq: 0,
                silenced_until: None,
                settings: Default::default(),
            })
            .collect();
        Chat {
            id: self.id,
            kind: self.kind,
            name: self.name,
            description: self.description,
            avatar_url: self.avatar_url,
            encryption: self.encryption,
            last_seq: 0,
            last_activity: self.created_at,
            created_at: self.created_at,
            retention_secs: None,
            participants,
        }
    }
}

/// The changed fields of a group; `None` leaves a field as it is, and
/// `Some("")` clears it (stored as `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New avatar.
    pub avatar_url: Option<String>,
}

impl GroupPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.description.is_none() && self.avatar_url.is_none()
    }
}

/// Paging of [`Store::list_chats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatListQuery {
    /// Continue after this `(last_activity, id)`, exclusive.
    pub after: Option<(Timestamp, ChatId)>,
    /// At most this many.
    pub limit: usize,
}

/// Filters and paging of [`Store::list_audit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries older than this one (the cursor: the last id of the
    /// page before).
    pub before: Option<AuditId>,
    /// At most this many.
    pub limit: usize,
    /// Only entries of this actor.
    pub actor: Option<UserId>,
    /// Only entries of this action.
    pub action: Option<AuditAction>,
}

impl Default for AuditQuery {
    /// The first page of the whole log, 50 entries.
    fn default() -> Self {
        Self {
            before: None,
            limit: 50,
            actor: None,
            action: None,
        }
    }
}

impl AuditQuery {
    /// Whether `entry` passes the filters and the cursor (not the limit).
    pub fn matches(&self, entry: &AuditEntry) -> bool {
        self.before.is_none_or(|before| entry.id < before)
            && self.actor.as_ref().is_none_or(|a| &entry.actor_id == a)
            && self.action.is_none_or(|a| entry.action == a)
    }
}

/// Paging of [`Store::history`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only `seq < before_seq`.
    pub before_seq: Option<u64>,
    /// Only `seq > after_seq`.
    pub after_seq: Option<u64>,
    /// Only `seq >= from_seq` (the reader's visibility).
    pub from_seq: u64,
    /// At most this many.
    pub limit: usize,
}

impl HistoryQuery {
    /// The seqs the query may return, `from_seq` and `after_seq` and
    /// `before_seq` taken together; empty when nothing can match.
    pub fn seqs(&self) -> std::ops::Range<u64> {
        let lo = self
            .from_seq
            .max(self.after_seq.map_or(0, |a| a.saturating_add(1)));
        let hi = self.before_seq.unwrap_or(u64::MAX);
        lo..hi
    }
}

/// Which reports [`Store::list_reports`] returns: every filter that is
/// set must match.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportQuery {
    /// Only reports in this state.
    pub status: Option<ReportStatus>,
    /// Only reports of messages in this chat.
    pub chat: Option<ChatId>,
    /// Only reports filed by this user.
    pub reporter: Option<UserId>,
    /// Only reports of this user's messages.
    pub reported_user: Option<UserId>,
    /// Only reports of this message.
    pub message: Option<MessageId>,
    /// Only reports filed after this one (paging: the last id of the
    /// previous page).
    pub after: Option<ReportId>,
    /// At most this many.
    pub limit: usize,
}

impl ReportQuery {
    /// Every report, oldest first, at most `limit`.
    pub fn new(limit: usize) -> Self {
        Self {
            status: None,
            chat: None,
            reporter: None,
            reported_user: None,
            message: None,
            after: None,
            limit,
        }
    }

    /// Only reports in `status` (every state if `None`).
    pub fn status(mut self, status: Option<ReportStatus>) -> Self {
        self.status = status;
        self
    }

    /// Whether `report` matches (the limit aside).
    pub fn matches(&self, report: &Report) -> bool {
        self.status.is_none_or(|s| report.status == s)
            && self.chat.is_none_or(|c| report.chat_id == c)
            && self
                .reporter
                .as_ref()
                .is_none_or(|u| report.reporter_id == *u)
            && self
                .reported_user
                .as_ref()
                .is_none_or(|u| report.reported_user_id == *u)
            && self.message.is_none_or(|m| report.message_id == m)
            && self.after.is_none_or(|after| report.id > after)
    }
}

/// An admin's decision on a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportResolution {
    /// Which report.
    pub id: ReportId,
    /// `Resolved` or `Dismissed`.
    pub status: ReportStatus,
    /// Which admin.
    pub by: UserId,
    /// Their note.
    pub note: Option<String>,
    /// When.
    pub at: Timestamp,
}

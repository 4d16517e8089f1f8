//! Policies and hooks the host application plugs into the engine:
//! [`ContactPolicy`], [`MessageHook`] and [`Notifier`].

use std::fmt::Debug;

use async_trait::async_trait;

use crate::{
    error::Result,
    model::{ChatId, ChatKind, Encryption, MessageId, MessageType, UserId},
};

/// Who may open a direct chat with whom. The host app of a matching service
/// says "only matched users"; the default allows everyone.
#[async_trait]
pub trait ContactPolicy: Debug + Send + Sync + 'static {
    /// Whether `from` may open a direct chat with `to`. Refusal is
    /// `forbidden` for the caller.
    async fn may_open_direct(&self, from: &UserId, to: &UserId) -> Result<bool>;

    /// Whether `actor` may put `member` into a group (at creation or later).
    async fn may_add_to_group(&self, actor: &UserId, member: &UserId) -> Result<bool> {
        let _ = (actor, member);
        Ok(true)
    }
}

/// The default [`ContactPolicy`]: everyone may talk to everyone.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

#[async_trait]
impl ContactPolicy for AllowAll {
    async fn may_open_direct(&self, _from: &UserId, _to: &UserId) -> Result<bool> {
        Ok(true)
    }
}

/// What a [`MessageHook`] sees of a message before it is stored.
#[derive(Debug, Clone)]
pub struct HookContext<'a> {
    /// The chat.
    pub chat_id: ChatId,
    /// Direct or group.
    pub chat_kind: ChatKind,
    /// Always `at_rest`: hooks do not run on messages of `e2ee` chats,
    /// whose content is ciphertext no hook can read.
    pub encryption: Encryption,
    /// The sender.
    pub sender_id: &'a UserId,
    /// The message's kind.
    pub kind: MessageType,
    /// Its content (text or caption), if any.
    pub content: Option<&'a str>,
}

/// What a hook decided.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookDecision {
    /// Store and deliver as usual.
    Allow,
    /// Refuse the message: the sender gets `forbidden` with `reason`.
    Reject {
        /// Shown to the sender.
        reason: String,
    },
    /// Store and deliver, and file a report (reporter `system`) with
    /// `reason` for moderators; escalation to responders is the hook's own
    /// business (it can notify them before returning).
    Flag {
        /// Recorded in the report.
        reason: String,
    },
}

/// Runs before a message is stored: word filters, mood signals, crisis
/// escalation. Hooks run in registration order; the first `Reject` wins.
///
/// # Contract
///
/// A hook must be fast (it is on the send path) and must not fail for
/// content it does not understand; an `Err` fails the send with
/// `internal`, so prefer `Allow` when unsure.
#[async_trait]
pub trait MessageHook: Debug + Send + Sync + 'static {
    /// Decides about a message before it is stored.
    async fn before_store(&self, ctx: &HookContext<'_>) -> Result<HookDecision>;
}

/// One push notification: a user with no live connection got a message.
///
/// It carries ids, and text only where the host app asked for it: pushes
/// travel through third parties (APNs, FCM) and the chats are private, so
/// [`preview`](Self::preview) is `None` unless
/// [`EngineConfig::push_preview_chars`](crate::EngineConfig::push_preview_chars)
/// is set, and always for `e2ee` chats (the server cannot read them).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    /// Who to notify.
    pub user_id: UserId,
    /// The chat.
    pub chat_id: ChatId,
    /// The new message.
    pub message_id: MessageId,
    /// Its sender.
    pub sender_id: UserId,
    /// Its kind.
    pub kind: MessageType,
    /// The start of its text: at most `push_preview_chars` Unicode scalar
    /// values of a `text` message of an `at_rest` chat; `None` otherwise.
    pub preview: Option<String>,
}

/// Push for recipients with no live connection.
///
/// # Contract
///
/// `notify` is called off the send path, after the message is stored and
/// fanned out, with every notification of one write batch. Failures are
/// logged by the engine and not retried by it; a notifier that needs retries
/// keeps its own queue.
#[async_trait]
pub trait Notifier: Debug + Send + Sync + 'static {
    /// Delivers push notifications.
    async fn notify(&self, batch: Vec<Notification>) -> Result<()>;

    /// Delivers a crisis alert to the host app (its webhook), whether or
    /// not a responder is online: called once per alert, off the send
    /// path. Does nothing by default.
    async fn crisis_alert(&self, alert: &crate::care::CrisisAlert) -> Result<()> {
        let _ = alert;
        Ok(())
    }

    /// Delivers a mood check-in answer of a user who opted in to sharing
    /// it. Does nothing by default.
    async fn mood(&self, signal: &crate::care::MoodSignal) -> Result<()> {
        let _ = signal;
        Ok(())
    }
}

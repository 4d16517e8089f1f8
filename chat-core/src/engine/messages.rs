//! Messages: sending (retries, hooks), editing, deleting, reactions,
//! receipts, and reading them back.

use serde::{Deserialize, Serialize};

use super::{
    Actor, ChatEngine,
    cache::Cached,
    unexpected,
    validate::{ciphertext, client_msg_id, emoji_ok, text},
    writer::{EventKind, Fanout},
};
use crate::{
    error::{Error, Result},
    event::Event,
    hooks::{HookContext, HookDecision},
    model::{
        Chat, ChatId, ChatKind, Encryption, MediaId, MediaKind, MediaRef, Message, MessageId,
        MessageType, Report, Role, UserId,
    },
    store::{Change, HistoryQuery, NewMessage},
};

/// A message to send (`send_message`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Where.
    pub chat_id: ChatId,
    /// The sender's idempotency key, 1..=64 characters.
    pub client_msg_id: String,
    /// Kind; `text` when absent.
    #[serde(rename = "type", default)]
    pub kind: Option<MessageType>,
    /// Text, caption, or E2EE ciphertext.
    #[serde(default)]
    pub content: Option<String>,
    /// An upload of the sender to this chat, for image/voice/file.
    #[serde(default)]
    pub media_id: Option<MediaId>,
    /// The message this one answers.
    #[serde(default)]
    pub reply_to: Option<MessageId>,
    /// The resource of a `resource` message.
    #[serde(default)]
    pub resource: Option<crate::model::Resource>,
}

impl SendMessage {
    /// A text message.
    pub fn text(
        chat_id: ChatId,
        client_msg_id: impl Into<String>,
        content: impl Into<String>,
    ) -> Self {
        Self {
            chat_id,
            client_msg_id: client_msg_id.into(),
            kind: Some(MessageType::Text),
            content: Some(content.into()),
            media_id: None,
            reply_to: None,
            resource: None,
        }
    }
}

/// One page of history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryPage {
    /// Newest first.
    pub messages: Vec<Message>,
    /// Whether older messages exist beyond this page.
    pub has_more: bool,
}

/// Paging of [`ChatEngine::history`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRequest {
    /// Only messages older than this seq.
    #[serde(default)]
    pub before_seq: Option<u64>,
    /// Only messages newer than this seq.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// 1..=200; 50 when absent.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// Receipt kinds of [`ChatEngine::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// Reached a device.
    Delivered,
    /// Read (implies delivered).
    Read,
}

const HISTORY_DEFAULT: usize = 50;
/// The reporter of reports filed by hooks.
pub const SYSTEM_REPORTER: &str = "system";

impl ChatEngine {
    /// A message the actor may see, with its chat.
    pub(super) async fn message_of(
        &self,
        actor: &Actor,
        message_id: MessageId,
    ) -> Result<(Chat, Message)> {
        let not_found = || Error::not_found("message not found");
        let message = self
            .inner
            .store
            .get_message(message_id)
            .await?
            .ok_or_else(not_found)?;
        let chat = self
            .chat_of(actor, message.chat_id)
            .await
            .map_err(|_| not_found())?;
        let visible_from = chat
            .participant(&actor.user_id)
            .map_or(u64::MAX, |p| p.visible_from_seq);
        if message.seq < visible_from {
            return Err(not_found());
        }
        Ok((chat, message))
    }

    /// A message the actor may see.
    pub async fn get_message(&self, actor: &Actor, message_id: MessageId) -> Result<Message> {
        Ok(self.message_of(actor, message_id).await?.1)
    }

    /// A page of a chat's history, newest first.
    pub async fn history(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        req: HistoryRequest,
    ) -> Result<HistoryPage> {
        let chat = self.chat_of(actor, chat_id).await?;
        let limit = match req.limit {
            None => HISTORY_DEFAULT,
            Some(n @ 1..=200) => n as usize,
            Some(n) => return Err(Error::invalid(format!("limit must be 1..=200, got {n}"))),
        };
        let from_seq = chat
            .participant(&actor.user_id)
            .map_or(0, |p| p.visible_from_seq);
        let mut messages = self
            .inner
            .store
            .history(
                chat_id,
                HistoryQuery {
                    before_seq: req.before_seq,
                    after_seq: req.after_seq,
                    from_seq,
                    limit: limit + 1,
                },
            )
            .await?;
        let has_more = messages.len() > limit;
        messages.truncate(limit);
        Ok(HistoryPage { messages, has_more })
    }

    /// Sends a message. Returns once it is durably stored (and fanned out);
    /// a retry with the same `client_msg_id` returns the stored message and
    /// notifies nobody again.
    pub async fn send(&self, actor: &Actor, req: SendMessage) -> Result<Message> {
        self.send_framed(actor, req)
            .await
            .map(|(message, _frame)| message)
    }

    /// [`send`](Self::send), with the `message_received` event the message
    /// was published as (`None` for a retry): the protocol's ack reuses its
    /// encoded data.
    pub(crate) async fn send_framed(
        &self,
        actor: &Actor,
        req: SendMessage,
    ) -> Result<(Message, Option<Event>)> {
        client_msg_id(&req.client_msg_id)?;
        let cached = self.cached_chat(actor, req.chat_id).await?;
        let (chat_id, client_id) = (req.chat_id, req.client_msg_id.clone());
        // With hooks, a retry is answered before they run, so that their
        // side effects (a report, an escalation) happen once per message.
        // Without hooks a send reads nothing: the store answers retries.
        if !self.inner.hooks.is_empty() {
            if let Some(stored) = self.stored_retry(actor, chat_id, &client_id).await? {
                return Ok((stored, None));
            }
        }
        let refused = match self.post(actor, &cached, req).await {
            Ok(posted) => return Ok(posted),
            Err(e) => e,
        };
        // A retry of a stored message gets that message even when something
        // would refuse it now (a block, a hook, an edit of its text): its
        // first ack was lost, not the message. Looked up only when refusing.
        match self.stored_retry(actor, chat_id, &client_id).await {
            Ok(Some(existing)) => Ok((existing, None)),
            Err(e @ Error::Conflict(_)) => Err(e),
            Ok(None) | Err(_) => Err(refused),
        }
    }

    /// The message the actor stored under `client_id`, if any; `conflict`
    /// if it is in another chat than `chat_id`.
    pub(super) async fn stored_retry(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        client_id: &str,
    ) -> Result<Option<Message>> {
        match self
            .inner
            .store
            .find_by_client_id(&actor.user_id, client_id)
            .await?
        {
            Some(stored) if stored.chat_id != chat_id => Err(Error::conflict(
                "client_msg_id was already used in another chat",
            )),
            stored => Ok(stored),
        }
    }

    async fn post(
        &self,
        actor: &Actor,
        cached: &Cached,
        req: SendMessage,
    ) -> Result<(Message, Option<Event>)> {
        let me = &actor.user_id;
        let chat_id = req.chat_id;
        let chat = &cached.chat;
        let store = &self.inner.store;
        let kind = req.kind.unwrap_or(MessageType::Text);
        let content = match (kind, req.content.as_deref()) {
            (MessageType::Resource, None) => {
                Some(resource_body(chat.encryption, req.resource.as_ref())?)
            }
            (MessageType::Resource, Some(_)) => {
                return Err(Error::invalid("a resource message has no content"));
            }
            (_, _) if req.resource.is_some() => {
                return Err(Error::invalid("resource needs type resource"));
            }
            (MessageType::Checkin, _) => {
                return Err(Error::invalid("check-ins are posted with create_checkin"));
            }
            (k, _) if k.is_engine_written() => {
                return Err(Error::invalid(format!(
                    "clients cannot send {} messages",
                    k.as_str()
                )));
            }
            (MessageType::Text, None) => {
                return Err(Error::invalid("content is required for text messages"));
            }
            (_, None) => None,
            (_, Some(c)) => Some(self.content(chat.encryption, c)?),
        };
        let upload = match (kind.media_kind(), req.media_id) {
            (None, Some(_)) => {
                return Err(Error::invalid("media_id needs type image, voice or file"));
            }
            (Some(_), None) => {
                return Err(Error::invalid(format!(
                    "a {} message needs media_id",
                    kind.as_str()
                )));
            }
            (None, None) => None,
            (Some(media_kind), Some(id)) => Some((media_kind, id)),
        };
        if let Some(reply_to) = req.reply_to {
            let visible_from = chat.participant(me).map_or(0, |p| p.visible_from_seq);
            match store.get_message(reply_to).await? {
                Some(m) if m.chat_id == chat_id && m.seq >= visible_from => {}
                _ => return Err(Error::not_found("reply_to message not found in this chat")),
            }
        }
        if cached.blocked {
            return Err(Error::forbidden("you cannot write to this user"));
        }
        if let Some(until) = chat
            .participant(me)
            .and_then(|p| p.silenced_until)
            .filter(|until| *until > self.now())
        {
            return Err(Error::Forbidden(format!(
                "a moderator muted you in this chat until {until}"
            )));
        }
        // End-to-end encrypted: no hook reads it (it is ciphertext), and it
        // may only go out while everyone in the MLS group is a participant.
        let flag = if chat.encryption == Encryption::E2ee {
            self.check_mls_members(chat, content.as_deref()).await?;
            None
        } else {
            self.run_hooks(chat, me, kind, content.as_deref()).await?
        };
        let new = NewMessage {
            mls: None,
            id: MessageId::new(),
            chat_id,
            sender_id: me.clone(),
            kind,
            content,
            media: None,
            reply_to: req.reply_to,
            client_msg_id: Some(req.client_msg_id),
            system: None,
            created_at: self.now(),
        };
        match upload {
            None => self.submit_post(cached, new, flag).await,
            // Boxed, so that the state of a media message's post is not
            // part of every text message's future (which the connection
            // driver moves for each command).
            Some((media_kind, media_id)) => {
                Box::pin(self.post_with_upload(cached, new, flag, media_kind, media_id)).await
            }
        }
    }

    /// Posts a message that carries the sender's upload `media_id`:
    /// attaches it first (checked last, after everything that could
    /// refuse the message, since attaching claims the upload) and releases
    /// it when the message is not stored after all.
    async fn post_with_upload(
        &self,
        cached: &Cached,
        mut new: NewMessage,
        flag: Option<String>,
        media_kind: MediaKind,
        media_id: MediaId,
    ) -> Result<(Message, Option<Event>)> {
        let id = new.id;
        let record = self
            .attach_upload(&new.sender_id, new.chat_id, media_kind, media_id, id)
            .await?;
        new.media = Some(MediaRef::for_record(&record));
        let posted = self.submit_post(cached, new, flag).await;
        let stored = matches!(&posted, Ok((m, _)) if m.id == id);
        if !stored {
            if let Err(e) = self.inner.store.detach_media(media_id, id).await {
                tracing::warn!(media = %media_id, error = %e, "could not release an upload");
            }
        }
        posted
    }

    /// Queues a post and waits for it to be stored and fanned out.
    pub(super) async fn submit_post(
        &self,
        cached: &Cached,
        new: NewMessage,
        flag: Option<String>,
    ) -> Result<(Message, Option<Event>)> {
        if let (Some(encrypted), Some(_)) = (&self.inner.encrypted, &new.content) {
            // A first message (of this sender in this chat, or of a new key
            // epoch) makes its keys here, not in the write lane, where the
            // key store's fsync would hold up every chat of the lane.
            encrypted
                .keyring()
                .prepare_sealing(new.chat_id, &new.sender_id)
                .await?;
        }
        let mut fanout = Fanout::new(EventKind::Post);
        fanout.readable = cached.chat.encryption == Encryption::AtRest;
        let done = self
            .inner
            .writer
            .submit_framed(Change::Post(new), fanout, None)
            .await?;
        let crate::store::Applied::Posted { message, duplicate } = done.applied else {
            return Err(unexpected());
        };
        if !duplicate {
            match self.crisis_match(cached.chat.encryption, &message) {
                // Its report (with a hook's reason, if any) is filed off
                // the send path with the alert.
                Some(phrase) => self.escalate(&message, phrase, flag),
                None => {
                    if let Some(reason) = flag {
                        self.file_hook_report(&message, reason).await;
                    }
                }
            }
            self.stop_typing(cached, &message.sender_id).await;
        }
        Ok((message, done.event))
    }

    fn content(&self, encryption: Encryption, content: &str) -> Result<String> {
        match encryption {
            Encryption::AtRest => text(content, self.inner.config.max_text_chars),
            Encryption::E2ee => ciphertext(content, self.inner.config.max_ciphertext_bytes),
        }
    }

    /// Runs the hooks; `Some(reason)` if one flagged the message.
    async fn run_hooks(
        &self,
        chat: &Chat,
        sender: &UserId,
        kind: MessageType,
        content: Option<&str>,
    ) -> Result<Option<String>> {
        let ctx = HookContext {
            chat_id: chat.id,
            chat_kind: chat.kind,
            encryption: chat.encryption,
            sender_id: sender,
            kind,
            content,
        };
        let mut flag = None;
        for hook in &self.inner.hooks {
            match hook.before_store(&ctx).await? {
                HookDecision::Allow => {}
                HookDecision::Reject { reason } => return Err(Error::Forbidden(reason)),
                HookDecision::Flag { reason } => {
                    flag.get_or_insert(reason);
                }
            }
        }
        Ok(flag)
    }

    pub(super) async fn file_hook_report(&self, message: &Message, reason: String) {
        let Ok(reporter) = UserId::new(SYSTEM_REPORTER) else {
            return;
        };
        let report = Report::open(reporter, message, reason, self.now());
        if let Err(e) = self.inner.store.insert_report(report).await {
            tracing::error!(error = %e, message_id = %message.id, "failed to file a hook's report");
        }
    }

    /// Edits the text of the actor's own message.
    pub async fn edit(
        &self,
        actor: &Actor,
        message_id: MessageId,
        content: &str,
    ) -> Result<Message> {
        let (chat, message) = self.message_of(actor, message_id).await?;
        if message.sender_id != actor.user_id {
            return Err(Error::forbidden("only the sender may edit a message"));
        }
        if message.kind.is_engine_written() {
            return Err(Error::invalid("system messages cannot be edited"));
        }
        if message.deleted {
            return Err(Error::conflict("the message was deleted"));
        }
        let content = self.content(chat.encryption, content)?;
        let change = Change::Edit {
            chat_id: chat.id,
            message_id,
            content,
            at: self.now(),
        };
        let edited = self.updated(change, Fanout::new(EventKind::Edit)).await?;
        if let Some(phrase) = self.crisis_match(chat.encryption, &edited) {
            self.escalate(&edited, phrase, None);
        }
        Ok(edited)
    }

    /// Deletes a message (leaves a tombstone): the sender, or a group's
    /// admins and moderators.
    pub async fn delete(&self, actor: &Actor, message_id: MessageId) -> Result<Message> {
        let (chat, message) = self.message_of(actor, message_id).await?;
        let role = chat.participant(&actor.user_id).map(|p| p.role);
        let moderates =
            chat.kind == ChatKind::Group && matches!(role, Some(Role::Admin | Role::Moderator));
        if message.sender_id != actor.user_id && !moderates {
            return Err(Error::forbidden(
                "only the sender or a group admin or moderator may delete it",
            ));
        }
        if message.kind.is_engine_written() {
            return Err(Error::invalid("system messages cannot be deleted"));
        }
        if message.deleted {
            return Ok(message);
        }
        let change = Change::Delete {
            chat_id: chat.id,
            message_id,
            at: self.now(),
        };
        let deleted = self.updated(change, Fanout::new(EventKind::Delete)).await?;
        if message.sender_id != actor.user_id {
            // A group admin or moderator deleted someone else's message.
            self.audit_deletion(actor, chat.id, message_id, None).await;
        }
        if let Some(media) = &message.media {
            self.remove_media_of(media.id).await;
        }
        Ok(deleted)
    }

    /// Adds the actor's reaction `emoji` to a message (nothing changes if
    /// it is there).
    pub async fn react(
        &self,
        actor: &Actor,
        message_id: MessageId,
        emoji: &str,
    ) -> Result<Message> {
        self.set_reaction(actor, message_id, emoji, true).await
    }

    /// Removes the actor's reaction `emoji` from a message (nothing changes
    /// if it is not there).
    pub async fn unreact(
        &self,
        actor: &Actor,
        message_id: MessageId,
        emoji: &str,
    ) -> Result<Message> {
        self.set_reaction(actor, message_id, emoji, false).await
    }

    async fn set_reaction(
        &self,
        actor: &Actor,
        message_id: MessageId,
        emoji: &str,
        add: bool,
    ) -> Result<Message> {
        emoji_ok(emoji)?;
        let (chat, message) = self.message_of(actor, message_id).await?;
        if message.kind.is_engine_written() {
            return Err(Error::invalid("system messages take no reactions"));
        }
        if message.deleted {
            return Err(Error::conflict("the message was deleted"));
        }
        let change = Change::React {
            chat_id: chat.id,
            message_id,
            user_id: actor.user_id.clone(),
            emoji: emoji.to_owned(),
            add,
            max_distinct: self.inner.config.max_reactions_per_message,
            at: self.now(),
        };
        let kind = EventKind::React {
            user_id: actor.user_id.clone(),
            emoji: emoji.to_owned(),
            add,
        };
        self.updated(change, Fanout::new(kind)).await
    }

    pub(super) async fn updated(&self, change: Change, fanout: Fanout) -> Result<Message> {
        match self.inner.writer.submit(change, fanout).await? {
            crate::store::Applied::Updated { message, .. } => Ok(message),
            _ => Err(unexpected()),
        }
    }

    /// Marks a chat read up to and including `message_id` (the REST
    /// `POST /chat/messages/:id/read`): the read watermark moves to the
    /// message's `seq`, never back.
    pub async fn mark_read_up_to(&self, actor: &Actor, message_id: MessageId) -> Result<()> {
        let message = self.get_message(actor, message_id).await?;
        self.mark(actor, message.chat_id, Receipt::Read, message.seq)
            .await
    }

    /// Moves the actor's delivered or read watermark of a chat forward.
    pub async fn mark(
        &self,
        actor: &Actor,
        chat_id: ChatId,
        receipt: Receipt,
        up_to_seq: u64,
    ) -> Result<()> {
        // A non-member gets `not_found` here without queueing anything; the
        // store checks membership again at commit.
        self.cached_chat(actor, chat_id).await?;
        let (delivered_up_to, read_up_to) = match receipt {
            Receipt::Delivered => (up_to_seq, 0),
            Receipt::Read => (up_to_seq, up_to_seq),
        };
        let privacy = self.privacy_of(&actor.user_id).await?;
        let at = self.now();
        let change = Change::Mark {
            chat_id,
            user_id: actor.user_id.clone(),
            delivered_up_to,
            read_up_to,
            at,
        };
        let kind = EventKind::Mark {
            chat_id,
            user_id: actor.user_id.clone(),
        };
        let mut fanout = Fanout::new(kind);
        if !privacy.read_receipts {
            fanout.private_reads_of = Some(actor.user_id.clone());
        }
        let applied = self.inner.writer.submit(change, fanout).await?;
        if let crate::store::Applied::Marked {
            first_delivered, ..
        } = applied
        {
            let latency = metrics::histogram!(crate::metrics::DELIVERY_LATENCY_SECONDS);
            for created in first_delivered {
                let ms = (at.as_millis() - created.as_millis()).max(0);
                latency.record(ms as f64 / 1000.0);
            }
        }
        Ok(())
    }
}

/// The stored body of a `resource` message: its resource, checked
/// (PROTOCOL.md 5.3: title 1..=200, an https URL of at most 2048 bytes,
/// summary at most 1000; lengths in Unicode scalar values), as JSON.
fn resource_body(
    encryption: Encryption,
    resource: Option<&crate::model::Resource>,
) -> Result<String> {
    if encryption == Encryption::E2ee {
        return Err(Error::invalid(
            "resource messages are not available in e2ee chats: share the link inside the ciphertext",
        ));
    }
    let r = resource.ok_or_else(|| Error::invalid("a resource message needs resource"))?;
    let title = r.title.chars().count();
    if !(1..=200).contains(&title) || r.title.trim().is_empty() {
        return Err(Error::invalid("resource.title must be 1..=200 characters"));
    }
    super::validate::https_url(&r.url)?;
    if r.summary.as_ref().is_some_and(|s| s.chars().count() > 1000) {
        return Err(Error::invalid(
            "resource.summary must be at most 1000 characters",
        ));
    }
    serde_json::to_string(r).map_err(Error::backend)
}

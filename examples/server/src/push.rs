//! [`WebhookNotifier`]: the engine's push notifications, batched per user
//! into POSTs of the host app's webhook (PROTOCOL.md 5.4).
//!
//! A user's window opens with their first pending notification; `batch`
//! later one POST goes out for them with, per chat, how many new messages
//! came in the window and the latest of them. So a lively chat costs the
//! host app one push per user every few seconds, not one per message.
//!
//! What stays in memory is bounded: at most `max_pending` chat entries
//! across all open windows and [`MAX_CHATS_PER_USER`] per user; beyond
//! that a notification is dropped and counted
//! (`chat_push_dropped_total{reason="overflow"}`). The POSTs themselves go
//! through a [`WebhookSender`], with its own bounded queue.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use chat_core::{
    ChatId, MessageId, MessageType, Result, UserId,
    hooks::{Notification, Notifier},
};
use serde::Serialize;

use crate::webhook::{CARE_METRICS, PUSH_METRICS, WebhookConfig, WebhookSender};

/// Most chats in one user's POST: more in one window is a flood, not news.
pub(crate) const MAX_CHATS_PER_USER: usize = 100;

/// Push settings (`[notifications]`).
#[derive(Debug, Clone)]
pub(crate) struct PushConfig {
    pub(crate) webhook: WebhookConfig,
    /// How long a user's window stays open (`batch_ms`).
    pub(crate) batch: Duration,
    /// Most chat entries pending across all open windows.
    pub(crate) max_pending: usize,
}

/// A [`Notifier`] that batches per user and POSTs to the webhook. Cheap to
/// clone; clones share the windows and the queue.
#[derive(Debug, Clone)]
pub(crate) struct WebhookNotifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    windows: Mutex<Windows>,
    sender: WebhookSender,
    /// Crisis alerts and mood signals, one POST each, right away.
    care: WebhookSender,
    batch: Duration,
}

/// The body of one POST (PROTOCOL.md 5.4; field names are the contract).
#[derive(Debug, Serialize)]
struct Body<'a> {
    user_id: &'a UserId,
    notifications: &'a [ChatEntry],
}

/// One chat of a user's window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ChatEntry {
    chat_id: ChatId,
    /// New messages in the window.
    count: u64,
    latest: Latest,
}

/// The latest of a chat's new messages in the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Latest {
    message_id: MessageId,
    sender_id: UserId,
    #[serde(rename = "type")]
    kind: MessageType,
    /// `null` unless the server is configured to preview, and for e2ee
    /// chats always (the engine fills it accordingly).
    preview: Option<String>,
}

impl From<Notification> for Latest {
    fn from(n: Notification) -> Self {
        Self {
            message_id: n.message_id,
            sender_id: n.sender_id,
            kind: n.kind,
            preview: n.preview,
        }
    }
}

/// The open windows.
#[derive(Debug)]
struct Windows {
    users: HashMap<UserId, Window>,
    /// Chat entries across all windows.
    pending: usize,
    max_pending: usize,
    /// The id of the last window opened: a timer flushes only the window it
    /// was started for, not a later one of the same user.
    last_id: u64,
}

#[derive(Debug)]
struct Window {
    id: u64,
    chats: Vec<ChatEntry>,
}

/// What became of one notification.
#[derive(Debug, PartialEq, Eq)]
enum Added {
    /// It opened the user's window, with this id.
    Opened(u64),
    /// It joined the user's open window.
    Joined,
    /// Dropped: too much is pending.
    Overflow,
}

impl Windows {
    fn new(max_pending: usize) -> Self {
        Self {
            users: HashMap::new(),
            pending: 0,
            max_pending: max_pending.max(1),
            last_id: 0,
        }
    }

    fn add(&mut self, n: Notification) -> Added {
        let full = self.pending >= self.max_pending;
        if let Some(window) = self.users.get_mut(&n.user_id) {
            if let Some(chat) = window.chats.iter_mut().find(|c| c.chat_id == n.chat_id) {
                chat.count += 1;
                // Notifications of two write batches may arrive in either
                // order; ids are time-ordered.
                if n.message_id > chat.latest.message_id {
                    chat.latest = n.into();
                }
                return Added::Joined;
            }
            if full || window.chats.len() >= MAX_CHATS_PER_USER {
                return Added::Overflow;
            }
            window.chats.push(ChatEntry {
                chat_id: n.chat_id,
                count: 1,
                latest: n.into(),
            });
            self.pending += 1;
            return Added::Joined;
        }
        if full {
            return Added::Overflow;
        }
        self.last_id += 1;
        let id = self.last_id;
        let user_id = n.user_id.clone();
        let chats = vec![ChatEntry {
            chat_id: n.chat_id,
            count: 1,
            latest: n.into(),
        }];
        self.users.insert(user_id, Window { id, chats });
        self.pending += 1;
        Added::Opened(id)
    }

    /// Closes `user`'s window if it is still window `id`.
    fn take(&mut self, user: &UserId, id: u64) -> Option<Vec<ChatEntry>> {
        if self.users.get(user)?.id != id {
            return None;
        }
        let window = self.users.remove(user)?;
        self.pending -= window.chats.len();
        Some(window.chats)
    }

    /// Closes every window.
    fn take_all(&mut self) -> Vec<(UserId, Vec<ChatEntry>)> {
        self.pending = 0;
        self.users
            .drain()
            .map(|(user, window)| (user, window.chats))
            .collect()
    }
}

impl WebhookNotifier {
    /// Starts the webhook's sender; must be called within a Tokio runtime.
    pub(crate) fn start(config: &PushConfig) -> Result<Self, String> {
        let sender = WebhookSender::start(&config.webhook, &PUSH_METRICS)?;
        let care = WebhookSender::start(&config.webhook, &CARE_METRICS)?;
        Ok(Self {
            inner: Arc::new(Inner {
                windows: Mutex::new(Windows::new(config.max_pending)),
                sender,
                care,
                batch: config.batch,
            }),
        })
    }

    /// Sends every open window now and waits up to `within` for the
    /// queue to empty: a stopping server hands over what it can.
    pub(crate) async fn shutdown(&self, within: Duration) {
        let windows = self.inner.lock().take_all();
        for (user, chats) in windows {
            self.inner.post(&user, &chats);
        }
        let left = self.inner.sender.drain(within).await + self.inner.care.drain(within).await;
        if left > 0 {
            tracing::warn!(left, "push notifications not delivered before shutdown");
        }
    }
}

impl Inner {
    /// Posts `payload` with `"type": kind` in front of its fields.
    fn post_care(&self, kind: &str, payload: &impl Serialize) {
        let mut body = match serde_json::to_value(payload) {
            Ok(serde_json::Value::Object(fields)) => fields,
            Ok(_) | Err(_) => {
                tracing::error!(kind, "a care signal did not serialize; not sent");
                return;
            }
        };
        body.insert("type".to_owned(), kind.into());
        match serde_json::to_vec(&body) {
            Ok(bytes) => self.care.post(bytes.into()),
            Err(e) => tracing::error!(kind, error = %e, "a care signal did not serialize"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn post(&self, user_id: &UserId, chats: &[ChatEntry]) {
        let body = Body {
            user_id,
            notifications: chats,
        };
        match serde_json::to_vec(&body) {
            Ok(bytes) => self.sender.post(Bytes::from(bytes)),
            Err(e) => tracing::error!(error = %e, "cannot encode a push notification"),
        }
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    /// `{"type": "crisis_alert", chat_id, message_id, sender_id, matched,
    /// at}`, posted at once (PROTOCOL.md 5.3).
    async fn crisis_alert(&self, alert: &chat_core::care::CrisisAlert) -> Result<()> {
        self.inner.post_care("crisis_alert", alert);
        Ok(())
    }

    /// `{"type": "mood", user_id, chat_id, value, at}` (PROTOCOL.md 5.3),
    /// posted at once; the engine calls it only for users who opted in.
    async fn mood(&self, signal: &chat_core::care::MoodSignal) -> Result<()> {
        self.inner.post_care("mood", signal);
        Ok(())
    }

    async fn notify(&self, batch: Vec<Notification>) -> Result<()> {
        let mut opened = Vec::new();
        let mut overflow = 0u64;
        {
            let mut windows = self.inner.lock();
            for n in batch {
                let user = n.user_id.clone();
                match windows.add(n) {
                    Added::Opened(id) => opened.push((user, id)),
                    Added::Joined => {}
                    Added::Overflow => overflow += 1,
                }
            }
        }
        if overflow > 0 {
            metrics::counter!(PUSH_METRICS.dropped, "reason" => "overflow").increment(overflow);
        }
        for (user, id) in opened {
            let inner = self.inner.clone();
            tokio::spawn(async move {
                tokio::time::sleep(inner.batch).await;
                let chats = inner.lock().take(&user, id);
                if let Some(chats) = chats {
                    inner.post(&user, &chats);
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).expect("valid id")
    }

    fn note(user: &str, chat: ChatId, text: Option<&str>) -> Notification {
        Notification {
            user_id: uid(user),
            chat_id: chat,
            message_id: MessageId::new(),
            sender_id: uid("alice"),
            kind: MessageType::Text,
            preview: text.map(str::to_owned),
        }
    }

    #[test]
    fn a_window_counts_per_chat_and_keeps_the_latest() {
        let mut windows = Windows::new(100);
        let (one, two) = (ChatId::new(), ChatId::new());
        assert_eq!(windows.add(note("bob", one, Some("a"))), Added::Opened(1));
        assert_eq!(windows.add(note("bob", two, Some("b"))), Added::Joined);
        let last = note("bob", one, Some("c"));
        let last_id = last.message_id;
        assert_eq!(windows.add(last), Added::Joined);
        assert_eq!(windows.add(note("carol", one, None)), Added::Opened(2));
        assert_eq!(windows.pending, 3);

        assert_eq!(windows.take(&uid("bob"), 99), None, "another window");
        let chats = windows.take(&uid("bob"), 1).expect("bob's window");
        assert_eq!(chats.len(), 2);
        assert_eq!((chats[0].chat_id, chats[0].count), (one, 2));
        assert_eq!(chats[0].latest.message_id, last_id);
        assert_eq!(chats[0].latest.preview.as_deref(), Some("c"));
        assert_eq!((chats[1].chat_id, chats[1].count), (two, 1));
        assert_eq!(windows.pending, 1);
        assert_eq!(windows.take(&uid("bob"), 1), None, "sent once");
    }

    #[test]
    fn an_older_message_does_not_replace_the_latest() {
        let mut windows = Windows::new(100);
        let chat = ChatId::new();
        let older = note("bob", chat, Some("older"));
        let newer = note("bob", chat, Some("newer"));
        windows.add(newer);
        windows.add(older);
        let chats = windows.take(&uid("bob"), 1).expect("window");
        assert_eq!(chats[0].count, 2);
        assert_eq!(chats[0].latest.preview.as_deref(), Some("newer"));
    }

    #[test]
    fn pending_entries_are_bounded() {
        let mut windows = Windows::new(3);
        let chat = ChatId::new();
        windows.add(note("a", chat, None));
        windows.add(note("b", chat, None));
        windows.add(note("c", chat, None));
        assert_eq!(windows.add(note("d", chat, None)), Added::Overflow);
        assert_eq!(windows.add(note("a", ChatId::new(), None)), Added::Overflow);
        assert_eq!(windows.add(note("a", chat, None)), Added::Joined, "counted");

        let mut windows = Windows::new(10 * MAX_CHATS_PER_USER);
        for _ in 0..MAX_CHATS_PER_USER {
            assert_ne!(windows.add(note("a", ChatId::new(), None)), Added::Overflow);
        }
        assert_eq!(windows.add(note("a", ChatId::new(), None)), Added::Overflow);
        assert_ne!(windows.add(note("b", ChatId::new(), None)), Added::Overflow);
        assert_eq!(windows.take_all().len(), 2);
        assert_eq!(windows.pending, 0);
    }

    #[test]
    fn the_body_is_the_contract() {
        let chat = ChatId::new();
        let n = note("bob", chat, None);
        let message_id = n.message_id;
        let entry = ChatEntry {
            chat_id: chat,
            count: 3,
            latest: n.into(),
        };
        let body = Body {
            user_id: &uid("bob"),
            notifications: &[entry],
        };
        let json = serde_json::to_value(&body).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "user_id": "bob",
                "notifications": [{
                    "chat_id": chat.to_string(),
                    "count": 3,
                    "latest": {
                        "message_id": message_id.to_string(),
                        "sender_id": "alice",
                        "type": "text",
                        "preview": null,
                    },
                }],
            })
        );
    }
}

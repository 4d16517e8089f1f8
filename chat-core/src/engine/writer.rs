//! Write lanes: group commit and ordered fan-out.
//!
//! Every change of a chat's log goes through one lane, chosen by the chat's
//! id, so that one chat's changes are applied and published in order. A
//! lane takes every job waiting at that moment (up to `write_batch`), hands
//! them to [`Store::apply`](crate::Store::apply) as one batch (one commit,
//! one fsync), then publishes each change's events in commit order and only
//! then answers each caller. So an acknowledged change is durable, and every
//! connection sees a chat's events in `updated_seq` order.

use std::{
    sync::{Arc, Mutex, RwLock, Weak},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{EngineConfig, Inner, unexpected};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    hooks::Notification,
    model::{Chat, ChatId, ChatView, Message, MessageType, SystemEvent, UserId},
    protocol::ServerEvent,
    store::{Applied, Change},
};

/// Which events a change produces.
#[derive(Debug, Clone)]
pub(super) enum EventKind {
    Post,
    Edit,
    Delete,
    React {
        user_id: UserId,
        emoji: String,
        add: bool,
    },
    Membership,
    Mark {
        chat_id: ChatId,
        user_id: UserId,
    },
}

/// What the lane needs to publish a change's events.
#[derive(Debug)]
pub(super) struct Fanout {
    /// The chat's participants when the change was checked.
    members: Arc<[UserId]>,
    kind: EventKind,
    /// Read receipts of this user go only to their own devices.
    pub(super) private_reads_of: Option<UserId>,
    /// Members who muted the chat: no push for them.
    pub(super) muted: Vec<UserId>,
}

impl Fanout {
    pub(super) fn new(chat: &Chat, kind: EventKind) -> Self {
        Self::to(chat.member_ids().into(), kind)
    }

    /// The fan-out of a change to `members`.
    pub(super) fn to(members: Arc<[UserId]>, kind: EventKind) -> Self {
        Self {
            members,
            kind,
            private_reads_of: None,
            muted: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Job {
    change: Change,
    fanout: Fanout,
    reply: oneshot::Sender<Result<Done>>,
}

/// A change applied and published.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) applied: Applied,
    /// The `message_received` frame of a new post, which the sender's ack
    /// reuses instead of serializing the message a second time.
    pub(super) frame: Option<Bytes>,
}

type Lanes = Arc<[mpsc::Sender<Job>]>;

#[derive(Debug)]
pub(super) struct Writer {
    lanes: RwLock<Option<Lanes>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Writer {
    pub(super) fn start(engine: Weak<Inner>, config: &EngineConfig) -> Self {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..config.write_lanes.max(1) {
            let (tx, rx) = mpsc::channel(config.write_queue.max(1));
            senders.push(tx);
            handles.push(tokio::spawn(run_lane(
                engine.clone(),
                rx,
                config.write_batch.max(1),
            )));
        }
        Self {
            lanes: RwLock::new(Some(senders.into())),
            handles: Mutex::new(handles),
        }
    }

    /// Applies one change through its chat's lane; returns once it is
    /// durable and its events are published.
    pub(super) async fn submit(&self, change: Change, fanout: Fanout) -> Result<Applied> {
        self.submit_framed(change, fanout)
            .await
            .map(|done| done.applied)
    }

    /// [`submit`](Self::submit), with the frame the change was published as.
    pub(super) async fn submit_framed(&self, change: Change, fanout: Fanout) -> Result<Done> {
        let lane = {
            let lanes = self.lanes.read().unwrap_or_else(|e| e.into_inner());
            let lanes = lanes.as_ref().ok_or(Error::ShuttingDown)?;
            let ulid = change.chat_id().ulid().0;
            let idx = ((ulid as u64) ^ ((ulid >> 64) as u64)) % lanes.len() as u64;
            lanes[idx as usize].clone()
        };
        let (reply, rx) = oneshot::channel();
        lane.send(Job {
            change,
            fanout,
            reply,
        })
        .await
        .map_err(|_| Error::ShuttingDown)?;
        drop(lane);
        rx.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Stops taking changes, lets the lanes finish what is queued, and
    /// waits for them.
    pub(super) async fn shutdown(&self) {
        self.lanes.write().unwrap_or_else(|e| e.into_inner()).take();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            if let Err(e) = handle.await {
                tracing::error!(error = %e, "a write lane ended abnormally");
            }
        }
    }
}

async fn run_lane(engine: Weak<Inner>, mut rx: mpsc::Receiver<Job>, batch_max: usize) {
    let mut jobs = Vec::with_capacity(batch_max);
    while rx.recv_many(&mut jobs, batch_max).await > 0 {
        let Some(inner) = engine.upgrade() else {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(Error::ShuttingDown));
            }
            break;
        };
        let mut changes = Vec::with_capacity(jobs.len());
        let mut waiting = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            changes.push(job.change);
            waiting.push((job.fanout, job.reply));
        }
        let n = changes.len();
        let mut results = inner.store.apply(changes).await;
        if results.len() != n {
            tracing::error!(
                expected = n,
                got = results.len(),
                "store broke the apply contract"
            );
            results = (0..n).map(|_| Err(unexpected())).collect();
        }
        let mut notes = Vec::new();
        for ((fanout, reply), result) in waiting.into_iter().zip(results) {
            let done = match result {
                Ok(applied) => {
                    if let Applied::Membership { chat, .. } = &applied {
                        inner.chats.invalidate(chat.id);
                    }
                    let frame = fan_out(&inner, &fanout, &applied, &mut notes).await;
                    Ok(Done { applied, frame })
                }
                Err(e) => Err(e),
            };
            // The caller may have gone away (connection closed); the change
            // is durable and published regardless.
            let _ = reply.send(done);
        }
        if !notes.is_empty() {
            notify_offline(&inner, notes);
        }
    }
}

async fn frame(inner: &Inner, users: impl Into<Arc<[UserId]>>, event: ServerEvent) {
    publish(
        inner,
        Audience::users(users),
        Action::Frame(event.to_frame()),
    )
    .await;
}

async fn publish(inner: &Inner, audience: Audience, action: Action) {
    let delivery = crate::bus::Delivery { audience, action };
    if let Err(e) = inner.bus.publish(delivery).await {
        tracing::warn!(error = %e, "bus publish failed; clients catch up with sync");
    }
}

/// Publishes a change's events; returns the `message_received` frame of a
/// new post.
async fn fan_out(
    inner: &Inner,
    fanout: &Fanout,
    applied: &Applied,
    notes: &mut Vec<(Message, Vec<UserId>)>,
) -> Option<Bytes> {
    let members = || fanout.members.clone();
    match (&fanout.kind, applied) {
        (
            EventKind::Post,
            Applied::Posted {
                message,
                duplicate: false,
            },
        ) => {
            let received = ServerEvent::message_received_frame(message);
            publish(
                inner,
                Audience::users(members()),
                Action::Frame(received.clone()),
            )
            .await;
            // Only a notifier needs to know who was offline.
            if message.kind != MessageType::System && inner.notifier.is_some() {
                let others = fanout
                    .members
                    .iter()
                    .filter(|u| **u != message.sender_id && !fanout.muted.contains(u))
                    .cloned()
                    .collect();
                notes.push((message.clone(), others));
            }
            return Some(received);
        }
        (
            EventKind::Edit,
            Applied::Updated {
                message,
                changed: true,
            },
        ) => {
            frame(
                inner,
                members(),
                ServerEvent::MessageEdited(message.clone()),
            )
            .await;
        }
        (
            EventKind::Delete,
            Applied::Updated {
                message,
                changed: true,
            },
        ) => {
            let event = ServerEvent::MessageDeleted {
                chat_id: message.chat_id,
                message_id: message.id,
                seq: message.seq,
                updated_seq: message.updated_seq,
            };
            frame(inner, members(), event).await;
        }
        (
            EventKind::React {
                user_id,
                emoji,
                add,
            },
            Applied::Updated {
                message,
                changed: true,
            },
        ) => {
            let (chat_id, message_id, user_id, emoji, updated_seq) = (
                message.chat_id,
                message.id,
                user_id.clone(),
                emoji.clone(),
                message.updated_seq,
            );
            let event = if *add {
                ServerEvent::ReactionAdded {
                    chat_id,
                    message_id,
                    user_id,
                    emoji,
                    updated_seq,
                }
            } else {
                ServerEvent::ReactionRemoved {
                    chat_id,
                    message_id,
                    user_id,
                    emoji,
                    updated_seq,
                }
            };
            frame(inner, members(), event).await;
        }
        (
            EventKind::Membership,
            Applied::Membership {
                chat,
                message: Some(message),
            },
        ) => {
            membership_events(inner, chat, message).await;
        }
        (
            EventKind::Mark { chat_id, user_id },
            Applied::Marked {
                delivered_seq,
                read_seq,
                delivered_moved,
                read_moved,
            },
        ) => {
            if *delivered_moved {
                let event = ServerEvent::MessageDelivered {
                    chat_id: *chat_id,
                    user_id: user_id.clone(),
                    up_to_seq: *delivered_seq,
                };
                frame(inner, members(), event).await;
            }
            if *read_moved {
                let audience = match &fanout.private_reads_of {
                    Some(me) => Arc::from([me.clone()]),
                    None => members(),
                };
                let event = ServerEvent::MessageRead {
                    chat_id: *chat_id,
                    user_id: user_id.clone(),
                    up_to_seq: *read_seq,
                };
                frame(inner, audience, event).await;
            }
        }
        _ => {}
    }
    None
}

/// Events of a membership change or group update: the system message to
/// everyone in the chat after it, plus the specific event.
async fn membership_events(inner: &Inner, chat: &Chat, message: &Message) {
    let members = chat.member_ids();
    frame(
        inner,
        members.clone(),
        ServerEvent::MessageReceived(message.clone()),
    )
    .await;
    match &message.system {
        Some(SystemEvent::ParticipantAdded { user_id, role }) => {
            let event = ServerEvent::ParticipantAdded {
                chat_id: chat.id,
                user_id: user_id.clone(),
                role: *role,
            };
            frame(inner, members, event).await;
            let created = ServerEvent::ChatCreated(ChatView {
                chat: chat.clone(),
                unread_count: 0,
                muted_until: None,
            });
            frame(inner, vec![user_id.clone()], created).await;
        }
        Some(SystemEvent::ParticipantRemoved { user_id }) => {
            let mut audience = members;
            audience.push(user_id.clone());
            let event = ServerEvent::ParticipantRemoved {
                chat_id: chat.id,
                user_id: user_id.clone(),
            };
            frame(inner, audience, event).await;
            publish(
                inner,
                Audience::users(vec![user_id.clone()]),
                Action::CloseChat(chat.id),
            )
            .await;
        }
        Some(SystemEvent::RoleChanged { .. } | SystemEvent::GroupUpdated { .. }) => {
            chat_updated(inner, chat).await;
        }
        None => {}
    }
}

/// `chat_updated` carries each recipient's own unread count, so it is
/// serialized per recipient. Group updates are rare; messages are not
/// delayed by this because counts come from the store's read side.
async fn chat_updated(inner: &Inner, chat: &Chat) {
    for p in &chat.participants {
        let unread_count = if p.read_seq >= chat.last_seq {
            0
        } else {
            match inner
                .store
                .unread_count(chat.id, &p.user_id, p.read_seq)
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "unread count for chat_updated failed");
                    0
                }
            }
        };
        let view = ChatView {
            chat: chat.clone(),
            unread_count,
            muted_until: p.settings.muted_until,
        };
        frame(
            inner,
            vec![p.user_id.clone()],
            ServerEvent::ChatUpdated(view),
        )
        .await;
    }
}

/// Push for recipients with no live connection on any node, off the send
/// path.
fn notify_offline(inner: &Inner, notes: Vec<(Message, Vec<UserId>)>) {
    let Some(notifier) = inner.notifier.clone() else {
        return;
    };
    let bus = inner.bus.clone();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        for (message, recipients) in notes {
            let online = match bus.online(&recipients).await {
                Ok(online) => online,
                Err(e) => {
                    tracing::warn!(error = %e, "presence lookup for push failed");
                    continue;
                }
            };
            for (user_id, online) in recipients.into_iter().zip(online) {
                if !online {
                    batch.push(Notification {
                        user_id,
                        chat_id: message.chat_id,
                        message_id: message.id,
                        sender_id: message.sender_id.clone(),
                        kind: message.kind,
                    });
                }
            }
        }
        if !batch.is_empty() {
            match tokio::time::timeout(Duration::from_secs(30), notifier.notify(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "push notifier failed"),
                Err(_) => tracing::warn!("push notifier timed out"),
            }
        }
    });
}

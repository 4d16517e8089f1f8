//! Write lanes: group commit and ordered fan-out.
//!
//! Every change of a chat's log goes through one lane, chosen by the chat's
//! id, so that one chat's changes are applied and published in order. A
//! lane takes every job waiting at that moment (up to `write_batch`), hands
//! them to [`Store::apply`](crate::Store::apply) as one batch (one commit,
//! one fsync), then publishes each change's events in commit order and only
//! then answers each caller. So an acknowledged change is durable, and every
//! connection sees a chat's events in `updated_seq` order.
//!
//! Events go to the chat's members as the store returned them with the
//! change (audience at commit), never to a list read before the change was
//! queued: a member removed by an earlier change of the same batch gets
//! nothing of the later ones, a member added gets everything after.
//!
//! Publishing never waits on I/O here: the bus hands remote deliveries to
//! its own queue, and the per-recipient reads of `chat_updated` run on a
//! task of their own. A panic inside the store fails that batch's callers
//! and the lane goes on; a lane that ends anyway is reported by
//! [`ChatEngine::health`](super::ChatEngine::health).

use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, RwLock, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use tokio::{
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{EngineConfig, Inner, unexpected};
use crate::{
    bus::{Action, Audience},
    error::{Error, Result},
    event::{Event, ServerEvent},
    hooks::Notification,
    model::{Chat, ChatId, ChatView, Message, MessageType, SystemEvent, UserId},
    store::{Applied, Change, Committed, Members},
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

/// What the lane needs, besides the members at commit, to publish a
/// change's events.
#[derive(Debug)]
pub(super) struct Fanout {
    kind: EventKind,
    /// Read receipts of this user go only to their own devices.
    pub(super) private_reads_of: Option<UserId>,
    /// A post the server can read (its chat is `at_rest`): its push
    /// notifications may carry a preview. Never set for `e2ee` chats.
    pub(super) readable: bool,
}

impl Fanout {
    /// The fan-out of a change producing `kind` events.
    pub(super) fn new(kind: EventKind) -> Self {
        Self {
            kind,
            private_reads_of: None,
            readable: false,
        }
    }
}

#[derive(Debug)]
struct Job {
    change: Change,
    fanout: Fanout,
    /// A change that must land in the same batch, right behind `change`,
    /// so that no other change of the chat comes between them (the
    /// promotion of an heir behind the removal of the last admin). Its
    /// outcome is published, not returned.
    then: Option<Change>,
    reply: oneshot::Sender<Result<Done>>,
}

/// A change applied and published.
#[derive(Debug)]
pub(super) struct Done {
    pub(super) applied: Applied,
    /// The `message_received` event of a new post, whose encoded data the
    /// sender's ack reuses instead of serializing the message a second time.
    pub(super) event: Option<Event>,
}

type Lanes = Arc<[mpsc::Sender<Job>]>;

#[derive(Debug)]
pub(super) struct Writer {
    lanes: RwLock<Option<Lanes>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Lanes whose task is running; fewer than started means one ended
    /// while the engine was up (see [`Writer::healthy`]).
    alive: Arc<AtomicUsize>,
    started: usize,
}

/// Counts a lane as alive for as long as its task runs, however it ends.
struct Alive(Arc<AtomicUsize>);

impl Alive {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Writer {
    pub(super) fn start(engine: Weak<Inner>, config: &EngineConfig) -> Self {
        let mut senders = Vec::new();
        let mut handles = Vec::new();
        let alive = Arc::new(AtomicUsize::new(0));
        let started = config.write_lanes.max(1);
        for _ in 0..started {
            let (tx, rx) = mpsc::channel(config.write_queue.max(1));
            senders.push(tx);
            // Counted before the task runs, so that health is right from
            // the start.
            let guard = Alive::new(&alive);
            handles.push(tokio::spawn(run_lane(
                engine.clone(),
                rx,
                config.write_batch.max(1),
                guard,
            )));
        }
        Self {
            lanes: RwLock::new(Some(senders.into())),
            handles: Mutex::new(handles),
            alive,
            started,
        }
    }

    /// Whether every lane is running (or the writer was shut down on
    /// purpose).
    pub(super) fn healthy(&self) -> bool {
        let open = self
            .lanes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        !open || self.alive.load(Ordering::SeqCst) == self.started
    }

    /// Applies one change through its chat's lane; returns once it is
    /// durable and its events are published.
    pub(super) async fn submit(&self, change: Change, fanout: Fanout) -> Result<Applied> {
        self.submit_framed(change, fanout, None)
            .await
            .map(|done| done.applied)
    }

    /// [`submit`](Self::submit), with the frame the change was published
    /// as, and with a change that must follow it in the same batch.
    pub(super) async fn submit_framed(
        &self,
        change: Change,
        fanout: Fanout,
        then: Option<Change>,
    ) -> Result<Done> {
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
            then,
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

/// Where the result of a change of the batch goes.
enum Waiting {
    /// A caller's change.
    Caller(Fanout, oneshot::Sender<Result<Done>>),
    /// A change that followed a caller's in the same job.
    Follow,
}

async fn run_lane(
    engine: Weak<Inner>,
    mut rx: mpsc::Receiver<Job>,
    batch_max: usize,
    _alive: Alive,
) {
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
            waiting.push(Waiting::Caller(job.fanout, job.reply));
            if let Some(then) = job.then {
                changes.push(then);
                waiting.push(Waiting::Follow);
            }
        }
        let n = changes.len();
        // A store that panics fails this batch's callers, not the lane:
        // the next batch may well succeed (a poisoned row, a transient
        // bug), and a dead lane would refuse every later change of a
        // third of the chats.
        let results = match AssertUnwindSafe(inner.store.apply(changes))
            .catch_unwind()
            .await
        {
            Ok(results) if results.len() == n => results,
            Ok(results) => {
                tracing::error!(
                    expected = n,
                    got = results.len(),
                    "store broke the apply contract"
                );
                (0..n).map(|_| Err(unexpected())).collect()
            }
            Err(_) => {
                tracing::error!(changes = n, "the store panicked applying a batch");
                (0..n)
                    .map(|_| Err(Error::backend("the store failed applying the change")))
                    .collect()
            }
        };
        let mut notes = Vec::new();
        for (waiting, result) in waiting.into_iter().zip(results) {
            match waiting {
                Waiting::Caller(fanout, reply) => {
                    let done = match result {
                        Ok(committed) => {
                            let event = fan_out(&inner, &fanout, &committed, &mut notes).await;
                            Ok(Done {
                                applied: committed.applied,
                                event,
                            })
                        }
                        Err(e) => Err(e),
                    };
                    // The caller may have gone away (connection closed); the
                    // change is durable and published regardless.
                    let _ = reply.send(done);
                }
                Waiting::Follow => match result {
                    Ok(committed) => {
                        let fanout = Fanout::new(EventKind::Membership);
                        fan_out(&inner, &fanout, &committed, &mut notes).await;
                    }
                    Err(e) => tracing::error!(error = %e, "a follow-up change failed"),
                },
            }
        }
        if !notes.is_empty() {
            notify_offline(&inner, notes);
        }
    }
}

async fn frame(inner: &Inner, users: impl Into<Arc<[UserId]>>, event: ServerEvent) {
    publish(inner, Audience::users(users), Action::Event(event.encode())).await;
}

async fn publish(inner: &Inner, audience: Audience, action: Action) {
    let delivery = crate::bus::Delivery { audience, action };
    if let Err(e) = inner.bus.publish(delivery).await {
        tracing::warn!(error = %e, "bus publish failed; clients catch up with sync");
    }
}

/// Who receives what `actor` does in the chat: every member, or, in a
/// direct chat with a block either way, the actor's own devices only.
fn signal_audience(members: &Members, actor: &UserId) -> Arc<[UserId]> {
    if members.blocked {
        Arc::from([actor.clone()])
    } else {
        members.users.clone()
    }
}

/// Publishes a change's events to its members at commit; returns the
/// `message_received` event of a new post.
async fn fan_out(
    inner: &Inner,
    fanout: &Fanout,
    committed: &Committed,
    notes: &mut Vec<Offline>,
) -> Option<Event> {
    let members = &committed.members;
    match (&fanout.kind, &committed.applied) {
        (
            EventKind::Post,
            Applied::Posted {
                message,
                duplicate: false,
            },
        ) => {
            let received = Event::message_received(message);
            let audience = signal_audience(members, &message.sender_id);
            // Only a notifier needs to know who was offline.
            if !message.kind.is_engine_written() && inner.notifier.is_some() {
                let now = inner.clock.now();
                let others = audience
                    .iter()
                    .filter(|u| **u != message.sender_id && !members.is_muted(u, now))
                    .cloned()
                    .collect();
                notes.push(Offline {
                    message: message.clone(),
                    recipients: others,
                    readable: fanout.readable,
                });
            }
            publish(
                inner,
                Audience::users(audience),
                Action::Event(received.clone()),
            )
            .await;
            return Some(received);
        }
        (
            EventKind::Edit,
            Applied::Updated {
                message,
                changed: true,
            },
        ) => {
            let audience = signal_audience(members, &message.sender_id);
            frame(inner, audience, ServerEvent::MessageEdited(message.clone())).await;
        }
        (
            EventKind::Delete,
            Applied::Updated {
                message,
                changed: true,
            },
        ) => {
            // A deletion removes content: it reaches everyone, also across
            // a block.
            let event = ServerEvent::MessageDeleted {
                chat_id: message.chat_id,
                message_id: message.id,
                seq: message.seq,
                updated_seq: message.updated_seq,
            };
            frame(inner, members.users.clone(), event).await;
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
            let audience = signal_audience(members, &user_id);
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
            frame(inner, audience, event).await;
        }
        (
            EventKind::Membership,
            Applied::Membership {
                chat,
                message: Some(message),
            },
        ) => {
            inner.chats.invalidate(chat.id);
            membership_events(inner, chat, message).await;
        }
        (EventKind::Membership, Applied::Membership { chat, .. }) => {
            inner.chats.invalidate(chat.id);
        }
        (
            EventKind::Membership,
            Applied::MlsMembership {
                chat,
                message,
                commit,
            },
        ) => {
            inner.chats.invalidate(chat.id);
            if let Some(message) = message {
                membership_events(inner, chat, message).await;
            }
            // The commit that goes with it, to the members after it: an
            // added member finds its welcome here, a removed one gets none.
            let received = ServerEvent::MessageReceived((**commit).clone());
            frame(inner, chat.member_ids(), received).await;
        }
        (
            EventKind::Mark { chat_id, user_id },
            Applied::Marked {
                delivered_seq,
                read_seq,
                delivered_moved,
                read_moved,
                ..
            },
        ) => {
            let audience = signal_audience(members, user_id);
            if *delivered_moved {
                let event = ServerEvent::MessageDelivered {
                    chat_id: *chat_id,
                    user_id: user_id.clone(),
                    up_to_seq: *delivered_seq,
                };
                frame(inner, audience.clone(), event).await;
            }
            if *read_moved {
                let audience = match &fanout.private_reads_of {
                    Some(me) => Arc::from([me.clone()]),
                    None => audience,
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
            let mut seen = chat.clone();
            match super::chats::private_readers(&*inner.store, std::slice::from_ref(chat)).await {
                Ok(private) => super::chats::mask_reads(&mut seen, Some(user_id), &private),
                // Unknown privacy: show no one's reads.
                Err(_) => seen.participants.iter_mut().for_each(|p| p.read_seq = 0),
            }
            let created = ServerEvent::ChatCreated(ChatView {
                chat: seen,
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
        Some(
            SystemEvent::RoleChanged { .. }
            | SystemEvent::GroupUpdated { .. }
            | SystemEvent::RetentionChanged { .. },
        ) => {
            chat_updated(inner, chat);
        }
        None => {}
    }
}

/// `chat_updated` carries each recipient's own unread count, so it is
/// serialized per recipient, and the counts are store reads: they run on a
/// task of their own, so that the lane's next batch does not wait for
/// them. Group updates are rare.
fn chat_updated(inner: &Inner, chat: &Chat) {
    let (store, bus, chat) = (inner.store.clone(), inner.bus.clone(), chat.clone());
    tokio::spawn(async move {
        let private = super::chats::private_readers(&*store, std::slice::from_ref(&chat))
            .await
            .unwrap_or_else(|_| chat.member_ids().into_iter().collect());
        for p in &chat.participants {
            let unread_count = if p.read_seq >= chat.last_seq {
                0
            } else {
                match store.unread_count(chat.id, &p.user_id, p.read_seq).await {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "unread count for chat_updated failed");
                        0
                    }
                }
            };
            let mut seen = chat.clone();
            super::chats::mask_reads(&mut seen, Some(&p.user_id), &private);
            let view = ChatView {
                chat: seen,
                unread_count,
                muted_until: p.settings.muted_until,
            };
            let delivery = crate::bus::Delivery {
                audience: Audience::users(vec![p.user_id.clone()]),
                action: Action::Event(ServerEvent::ChatUpdated(view).encode()),
            };
            if let Err(e) = bus.publish(delivery).await {
                tracing::warn!(error = %e, "bus publish failed; clients catch up with sync");
            }
        }
    });
}

/// A new post and who might need a push for it.
#[derive(Debug)]
pub(super) struct Offline {
    message: Message,
    /// Its audience but the sender and who muted the chat.
    recipients: Vec<UserId>,
    /// See [`Fanout::readable`].
    readable: bool,
}

/// Push for recipients with no live connection on any node, off the send
/// path.
fn notify_offline(inner: &Inner, notes: Vec<Offline>) {
    let Some(notifier) = inner.notifier.clone() else {
        return;
    };
    let bus = inner.bus.clone();
    let preview_chars = inner.config.push_preview_chars;
    tokio::spawn(async move {
        let mut batch = Vec::new();
        for Offline {
            message,
            recipients,
            readable,
        } in notes
        {
            let preview = readable.then(|| preview(&message, preview_chars)).flatten();
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
                        preview: preview.clone(),
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

/// The first `chars` Unicode scalar values of a readable text message;
/// `None` for 0, other kinds (a caption is not previewed), and content the
/// server cannot show.
fn preview(message: &Message, chars: usize) -> Option<String> {
    if chars == 0
        || message.kind != MessageType::Text
        || message.deleted
        || message.unreadable.is_some()
    {
        return None;
    }
    let text = message.content.as_deref()?;
    Some(text.chars().take(chars).collect())
}

//! The GDPR data export (`GET /api/v1/users/me/export`): one JSON document
//! of everything the engine holds about a user, written page by page so
//! that a large account never sits in memory.
//!
//! # What the document holds
//!
//! ```text
//! {"user_id", "exported_at", "privacy": {...}, "blocked": [user ids],
//!  "key_packages": [{device_id, key_package, last_resort}],
//!  "reports_filed": [{id, chat_id, message_id, reported_user_id, reason,
//!                     status, created_at, resolved_at}],
//!  "chats": [{<the chat as the user sees it>, "receipts": {delivered_seq,
//!             read_seq}, "messages": [...], "reactions": [{message_id, emoji}]}],
//!  "messages_in_left_chats": [...],
//!  "checkin_answers": [{message_id, chat_id, option, answered_at}]}
//! ```
//!
//! - `messages`: the messages the user *sent* (`sender_id` is them), oldest
//!   first, as stored: their reactions, media objects (whose `url` and
//!   `thumbnail_url` are the download links), tombstones of deleted ones,
//!   `system` messages recording the user's own actions. Other
//!   participants' messages are their data and are left out. Content of
//!   at-rest chats comes back decrypted; content of `e2ee` chats is the
//!   ciphertext as stored (the server cannot read it); content that can no
//!   longer be decrypted is `null` with `unreadable` set.
//! - `reactions` of a chat: the reactions the user made on *others'*
//!   messages there (their reactions on their own messages are in those
//!   messages).
//! - `reports_filed`: the reports the user filed, without the evidence
//!   snapshot (the reported message is someone else's data).
//! - `key_packages`: the MLS key packages the user's devices published
//!   that nobody claimed yet (claimed ones are handed out and gone), the
//!   bytes in standard base64.
//! - `checkin_answers`: the user's answers to check-ins (anonymous ones
//!   included: they are anonymous to others, not to the user).
//! - `messages_in_left_chats`: the messages the user sent in chats they
//!   have since left or been removed from (not the chats themselves:
//!   what happened there after they left is not theirs), found through
//!   the store's index of their messages; tombstones and `system`
//!   entries left out.
//!
//! Each chat is read as of when the export reaches it (messages up to its
//! `last_seq` then). A chat that gets new activity while the export runs
//! moves ahead of the listing's cursor; the listing is repeated until a
//! pass finds no chat not yet exported, so none is missed.

use std::collections::{HashSet, VecDeque};

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};
use serde::Serialize;

use super::{Actor, ChatEngine, chats::private_readers};
use crate::{
    error::{Error, Result},
    model::{ChatId, ChatView, Message, Report, ReportId, ReportStatus, Timestamp, UserId},
    store::{ChatListQuery, HistoryQuery, ReportQuery},
};

/// The export document as a stream of JSON text (see
/// [`ChatEngine::export`]). An error ends it early, leaving the document
/// unterminated.
pub type ExportStream = BoxStream<'static, Result<Bytes>>;

/// Chats read per store page.
const CHAT_PAGE: usize = 100;
/// Seqs of a chat's log read per history page.
const MESSAGE_WINDOW: u64 = 200;
/// Reports read per store page.
const REPORT_PAGE: usize = 100;
/// Most exports running at once on one node.
pub const MAX_EXPORTS: usize = 4;
/// What a refused export is told to wait.
const EXPORT_RETRY: std::time::Duration = std::time::Duration::from_secs(10);
/// Pieces smaller than this are joined before they are handed out.
const CHUNK_BYTES: usize = 64 * 1024;

impl ChatEngine {
    /// Everything the engine holds about the actor, as one JSON document
    /// written incrementally (see the module docs for its shape and what
    /// it includes). At most one store page is held at a time.
    ///
    /// An export reads every chat of the user, so each user runs one at a
    /// time and a node at most [`MAX_EXPORTS`] at once: beyond that,
    /// [`Error::RateLimited`] (retry a little later). The slot is freed
    /// when the stream ends or is dropped (the client went away).
    pub fn export(&self, actor: &Actor) -> Result<ExportStream> {
        {
            let mut running = self.inner.exports.lock().unwrap_or_else(|e| e.into_inner());
            if running.contains(&actor.user_id) || running.len() >= MAX_EXPORTS {
                return Err(Error::RateLimited {
                    retry_after: EXPORT_RETRY,
                });
            }
            running.insert(actor.user_id.clone());
        }
        let exporter = Exporter {
            engine: self.clone(),
            me: actor.user_id.clone(),
            buf: Vec::new(),
            phase: Phase::Start,
        };
        Ok(stream::try_unfold(exporter, |mut ex| async move {
            Ok(ex.next_chunk().await?.map(|chunk| (chunk, ex)))
        })
        .boxed())
    }
}

/// The head of the document, up to the reports.
#[derive(Serialize)]
struct Head<'a> {
    user_id: &'a UserId,
    exported_at: Timestamp,
    privacy: crate::model::Privacy,
    blocked: Vec<UserId>,
    key_packages: Vec<ExportedKeyPackage>,
}

/// A key package the user's device published, not claimed yet (public:
/// others fetch it to add the device to e2ee chats).
#[derive(Serialize)]
struct ExportedKeyPackage {
    device_id: crate::model::DeviceId,
    /// Standard base64, as published.
    key_package: String,
    last_resort: bool,
}

impl From<crate::mls::PublishedKeyPackage> for ExportedKeyPackage {
    fn from(p: crate::mls::PublishedKeyPackage) -> Self {
        use base64::Engine as _;
        Self {
            device_id: p.device_id,
            key_package: base64::engine::general_purpose::STANDARD.encode(&p.key_package),
            last_resort: p.last_resort,
        }
    }
}

/// One of the user's check-in answers.
#[derive(Serialize)]
struct GivenCheckinAnswer {
    message_id: crate::model::MessageId,
    chat_id: ChatId,
    option: u32,
    answered_at: Timestamp,
}

/// A report the user filed, without its evidence snapshot.
#[derive(Serialize)]
struct FiledReport<'a> {
    id: ReportId,
    chat_id: ChatId,
    message_id: crate::model::MessageId,
    reported_user_id: &'a UserId,
    reason: &'a str,
    status: ReportStatus,
    created_at: Timestamp,
    resolved_at: Option<Timestamp>,
}

impl<'a> From<&'a Report> for FiledReport<'a> {
    fn from(r: &'a Report) -> Self {
        Self {
            id: r.id,
            chat_id: r.chat_id,
            message_id: r.message_id,
            reported_user_id: &r.reported_user_id,
            reason: &r.reason,
            status: r.status,
            created_at: r.created_at,
            resolved_at: r.resolved_at,
        }
    }
}

/// The head of one chat's object, up to its messages.
#[derive(Serialize)]
struct ChatHead<'a> {
    #[serde(flatten)]
    view: &'a ChatView,
    receipts: Receipts,
}

#[derive(Serialize)]
struct Receipts {
    delivered_seq: u64,
    read_seq: u64,
}

/// A reaction of the user on someone else's message.
#[derive(Serialize)]
struct Given<'a> {
    message_id: crate::model::MessageId,
    emoji: &'a str,
}

struct Exporter {
    engine: ChatEngine,
    me: UserId,
    /// Written and not yet handed out.
    buf: Vec<u8>,
    phase: Phase,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.engine
            .inner
            .exports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.me);
    }
}

enum Phase {
    Start,
    Reports {
        after: Option<ReportId>,
        first: bool,
    },
    Chats(Chats),
    /// Messages the user sent in chats they are no longer in.
    Elsewhere {
        /// The `client_msg_id` of the last one looked at.
        after: Option<String>,
        /// The chats exported whole.
        done: HashSet<ChatId>,
        /// None written yet.
        first: bool,
    },
    /// The user's answers to check-ins.
    Answers {
        /// The check-in of the last one written.
        after: Option<crate::model::MessageId>,
        /// None written yet.
        first: bool,
    },
    Done,
}

/// Where the chat list is.
struct Chats {
    /// Chats of the current page still to export.
    page: VecDeque<ChatView>,
    /// Where the next store page starts.
    next: Option<(Timestamp, ChatId)>,
    /// The current listing pass has no further page.
    exhausted: bool,
    /// The current listing pass found a chat not yet exported.
    found: bool,
    /// Chats exported (ids only), so that a repeated pass skips them.
    done: HashSet<ChatId>,
    /// No chat written yet (no comma before the next).
    first: bool,
    /// The chat being read.
    scan: Option<Scan>,
}

/// A chat's log being read window by window.
struct Scan {
    chat_id: ChatId,
    from_seq: u64,
    last_seq: u64,
    /// Read up to this seq.
    at: u64,
    /// `false`: the user's messages; `true`: their reactions on others'.
    reactions: bool,
    first: bool,
}

fn json(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer(buf, value).map_err(Error::backend)
}

/// Writes `value`, an object, without its closing brace, so that more
/// fields can follow.
fn open_object(buf: &mut Vec<u8>, value: &impl Serialize) -> Result<()> {
    json(buf, value)?;
    debug_assert_eq!(buf.last(), Some(&b'}'));
    buf.pop();
    Ok(())
}

fn comma(buf: &mut Vec<u8>, first: &mut bool) {
    if !std::mem::take(first) {
        buf.push(b',');
    }
}

impl Exporter {
    /// The next piece of the document; `None` after the last.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            if matches!(self.phase, Phase::Done) || self.buf.len() >= CHUNK_BYTES {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(Bytes::from(std::mem::take(&mut self.buf))));
            }
            self.step().await?;
        }
    }

    /// Reads one page and writes what it contributes.
    async fn step(&mut self) -> Result<()> {
        let store = &*self.engine.inner.store;
        let buf = &mut self.buf;
        let me = &self.me;
        match &mut self.phase {
            Phase::Start => {
                let head = Head {
                    user_id: me,
                    exported_at: self.engine.now(),
                    privacy: self.engine.privacy_of(me).await?,
                    blocked: store.blocked_by_user(me).await?,
                    key_packages: store
                        .key_packages_of(me)
                        .await?
                        .into_iter()
                        .map(ExportedKeyPackage::from)
                        .collect(),
                };
                open_object(buf, &head)?;
                buf.extend_from_slice(br#","reports_filed":["#);
                self.phase = Phase::Reports {
                    after: None,
                    first: true,
                };
            }
            Phase::Reports { after, first } => {
                let query = ReportQuery {
                    reporter: Some(me.clone()),
                    after: *after,
                    ..ReportQuery::new(REPORT_PAGE)
                };
                let reports = store.list_reports(query).await?;
                for report in &reports {
                    comma(buf, first);
                    json(buf, &FiledReport::from(report))?;
                    *after = Some(report.id);
                }
                if reports.len() < REPORT_PAGE {
                    buf.extend_from_slice(br#"],"chats":["#);
                    self.phase = Phase::Chats(Chats {
                        page: VecDeque::new(),
                        next: None,
                        exhausted: false,
                        found: false,
                        done: HashSet::new(),
                        first: true,
                        scan: None,
                    });
                }
            }
            Phase::Chats(chats) => {
                if let Some(scan) = &mut chats.scan {
                    if scan_window(store, me, buf, scan).await? {
                        chats.scan = None;
                    }
                } else if let Some(view) = chats.page.pop_front() {
                    chats.done.insert(view.chat.id);
                    comma(buf, &mut chats.first);
                    chats.scan = Some(open_chat(buf, me, &view)?);
                } else if !chats.exhausted {
                    let batch = store
                        .list_chats(
                            me,
                            ChatListQuery {
                                after: chats.next,
                                limit: CHAT_PAGE,
                            },
                        )
                        .await?;
                    chats.exhausted = batch.len() < CHAT_PAGE;
                    chats.next = batch.last().map(|c| (c.last_activity, c.id));
                    let fresh: Vec<_> = batch
                        .into_iter()
                        .filter(|c| !chats.done.contains(&c.id))
                        .collect();
                    chats.found |= !fresh.is_empty();
                    let private = private_readers(store, &fresh).await?;
                    for chat in fresh {
                        let view = self.engine.view_masked(chat, me, &private).await?;
                        chats.page.push_back(view);
                    }
                } else if std::mem::take(&mut chats.found) {
                    // Chats that moved ahead of the cursor while this pass
                    // ran: list again, skipping the exported ones.
                    chats.next = None;
                    chats.exhausted = false;
                } else {
                    buf.extend_from_slice(br#"],"messages_in_left_chats":["#);
                    self.phase = Phase::Elsewhere {
                        after: None,
                        done: std::mem::take(&mut chats.done),
                        first: true,
                    };
                }
            }
            Phase::Elsewhere { after, done, first } => {
                let page = store
                    .messages_by_sender(me, after.as_deref(), MESSAGE_WINDOW as usize)
                    .await?;
                for sent in &page {
                    if done.contains(&sent.chat_id) {
                        continue;
                    }
                    if let Some(message) = store.get_message(sent.id).await? {
                        comma(buf, first);
                        json(buf, &message)?;
                    }
                }
                *after = page.last().map(|m| m.client_msg_id.clone());
                if page.len() < MESSAGE_WINDOW as usize {
                    buf.extend_from_slice(br#"],"checkin_answers":["#);
                    self.phase = Phase::Answers {
                        after: None,
                        first: true,
                    };
                }
            }
            Phase::Answers { after, first } => {
                let page = store.answers_by_user(me, *after, REPORT_PAGE).await?;
                for a in &page {
                    comma(buf, first);
                    json(
                        buf,
                        &GivenCheckinAnswer {
                            message_id: a.message_id,
                            chat_id: a.chat_id,
                            option: a.option,
                            answered_at: a.at,
                        },
                    )?;
                }
                *after = page.last().map(|a| a.message_id);
                if page.len() < REPORT_PAGE {
                    buf.extend_from_slice(b"]}");
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
        Ok(())
    }
}

/// Writes the head of a chat's object and returns the scan of its log.
fn open_chat(buf: &mut Vec<u8>, me: &UserId, view: &ChatView) -> Result<Scan> {
    let mine = view.chat.participant(me);
    let head = ChatHead {
        view,
        receipts: Receipts {
            delivered_seq: mine.map_or(0, |p| p.delivered_seq),
            read_seq: mine.map_or(0, |p| p.read_seq),
        },
    };
    open_object(buf, &head)?;
    buf.extend_from_slice(br#","messages":["#);
    let from_seq = mine.map_or(0, |p| p.visible_from_seq);
    Ok(Scan {
        chat_id: view.chat.id,
        from_seq,
        last_seq: view.chat.last_seq,
        at: from_seq.saturating_sub(1),
        reactions: false,
        first: true,
    })
}

/// Reads the next window of seqs of the chat's log and writes what belongs
/// to the export; returns whether the chat's object is complete.
async fn scan_window(
    store: &dyn crate::store::Store,
    me: &UserId,
    buf: &mut Vec<u8>,
    scan: &mut Scan,
) -> Result<bool> {
    let query = HistoryQuery {
        after_seq: Some(scan.at),
        before_seq: Some(scan.at.saturating_add(MESSAGE_WINDOW + 1)),
        from_seq: scan.from_seq,
        limit: MESSAGE_WINDOW as usize,
    };
    let mut window: Vec<Message> = store.history(scan.chat_id, query).await?;
    window.reverse();
    for message in &window {
        if !scan.reactions {
            if &message.sender_id == me {
                comma(buf, &mut scan.first);
                json(buf, message)?;
            }
        } else if &message.sender_id != me {
            for (emoji, users) in &message.reactions {
                if users.contains(me) {
                    comma(buf, &mut scan.first);
                    json(
                        buf,
                        &Given {
                            message_id: message.id,
                            emoji,
                        },
                    )?;
                }
            }
        }
    }
    scan.at = scan.at.saturating_add(MESSAGE_WINDOW);
    if scan.at < scan.last_seq {
        return Ok(false);
    }
    if scan.reactions {
        buf.extend_from_slice(b"]}");
        return Ok(true);
    }
    buf.extend_from_slice(br#"],"reactions":["#);
    scan.reactions = true;
    scan.first = true;
    scan.at = scan.from_seq.saturating_sub(1);
    Ok(false)
}

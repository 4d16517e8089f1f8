use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashSet},
    fmt::Debug,
    sync::atomic::{AtomicU64, Ordering::SeqCst},
};

use tokio::{sync::Barrier, task::JoinHandle};
use ulid::Ulid;

use crate::{
    error::{Error, Result},
    model::{
        Chat, ChatId, ChatKind, Encryption, MediaId, MediaKind, MediaRecord, MediaRef, Message,
        MessageId, MessageType, Participant, ParticipantSettings, Privacy, Reactions, Report,
        ReportId, ReportStatus, Role, SystemEvent, Timestamp, UserId, UserRecord,
    },
    store::{
        Applied, Change, ChatListQuery, GroupPatch, HistoryQuery, NewChat, NewMessage, ReportQuery,
        ReportResolution, Store,
    },
};

crate::store_conformance_tests!(@list names);

mod audience;
mod audit;
mod chats;
mod checkins;
mod concurrency;
mod erasure;
mod key_packages;
mod log;
mod maintenance;
mod membership;
mod mls;
mod receipts;
mod retention;
mod safety;
mod stats;
mod users;
pub use self::{
    audience::*, audit::*, chats::*, checkins::*, concurrency::*, erasure::*, key_packages::*,
    log::*, maintenance::*, membership::*, mls::*, receipts::*, retention::*, safety::*, stats::*,
    users::*,
};

// --- helpers -------------------------------------------------------------

/// 2026-11-23T20:00:00Z: the suite's epoch.
const T0: i64 = 1_795_464_000_000;

/// The suite's epoch plus `secs` seconds.
fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(T0 + secs * 1_000)
}

#[track_caller]
fn user(name: &str) -> UserId {
    match UserId::new(name) {
        Ok(u) => u,
        Err(e) => panic!("bad user id in the suite: {e}"),
    }
}

#[track_caller]
fn ok<T>(result: Result<T>, what: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{what}: expected success, got {e:?}"),
    }
}

#[track_caller]
fn some<T>(value: Option<T>, what: &str) -> T {
    match value {
        Some(v) => v,
        None => panic!("{what}: expected Some, got None"),
    }
}

#[track_caller]
fn not_found<T: Debug>(result: Result<T>, what: &str) {
    match result {
        Err(Error::NotFound(_)) => {}
        other => panic!("{what}: expected Error::NotFound, got {other:?}"),
    }
}

#[track_caller]
fn conflict<T: Debug>(result: Result<T>, what: &str) {
    match result {
        Err(Error::Conflict(_)) => {}
        other => panic!("{what}: expected Error::Conflict, got {other:?}"),
    }
}

#[track_caller]
fn posted(result: Result<Applied>, what: &str) -> (Message, bool) {
    match ok(result, what) {
        Applied::Posted { message, duplicate } => (message, duplicate),
        other => panic!("{what}: expected Applied::Posted, got {other:?}"),
    }
}

#[track_caller]
fn updated(result: Result<Applied>, what: &str) -> (Message, bool) {
    match ok(result, what) {
        Applied::Updated { message, changed } => (message, changed),
        other => panic!("{what}: expected Applied::Updated, got {other:?}"),
    }
}

#[track_caller]
fn membership(result: Result<Applied>, what: &str) -> (Chat, Option<Message>) {
    match ok(result, what) {
        Applied::Membership { chat, message } => (chat, message),
        other => panic!("{what}: expected Applied::Membership, got {other:?}"),
    }
}

/// `(delivered_seq, read_seq, delivered_moved, read_moved)`.
#[track_caller]
fn marked(result: Result<Applied>, what: &str) -> (u64, u64, bool, bool) {
    match ok(result, what) {
        Applied::Marked {
            delivered_seq,
            read_seq,
            delivered_moved,
            read_moved,
            ..
        } => (delivered_seq, read_seq, delivered_moved, read_moved),
        other => panic!("{what}: expected Applied::Marked, got {other:?}"),
    }
}

/// Applies one change and checks that one result came back.
async fn apply_one(store: &dyn Store, change: Change) -> Result<Applied> {
    let mut results = store.apply(vec![change]).await;
    assert_eq!(
        results.len(),
        1,
        "apply must return one result per change, got {results:?}"
    );
    some(results.pop(), "the one result of apply").map(|c| c.applied)
}

/// A text message with a fresh id.
fn text(
    chat: ChatId,
    sender: &UserId,
    client_msg_id: &str,
    content: &str,
    created_at: Timestamp,
) -> NewMessage {
    NewMessage {
        mls: None,
        id: MessageId::new(),
        chat_id: chat,
        sender_id: sender.clone(),
        kind: MessageType::Text,
        content: Some(content.to_owned()),
        media: None,
        reply_to: None,
        client_msg_id: Some(client_msg_id.to_owned()),
        system: None,
        created_at,
    }
}

/// A system message with a fresh id.
fn system(chat: ChatId, by: &UserId, event: SystemEvent, created_at: Timestamp) -> NewMessage {
    NewMessage {
        mls: None,
        id: MessageId::new(),
        chat_id: chat,
        sender_id: by.clone(),
        kind: MessageType::System,
        content: None,
        media: None,
        reply_to: None,
        client_msg_id: None,
        system: Some(event),
        created_at,
    }
}

/// The message that posting `new` must store with `seq`.
fn stored(new: &NewMessage, seq: u64) -> Message {
    Message {
        mls: None,
        id: new.id,
        chat_id: new.chat_id,
        seq,
        updated_seq: seq,
        sender_id: new.sender_id.clone(),
        kind: new.kind,
        content: new.content.clone(),
        media: new.media.clone(),
        reply_to: new.reply_to,
        client_msg_id: new.client_msg_id.clone(),
        created_at: new.created_at,
        edited_at: None,
        deleted: false,
        reactions: Reactions::new(),
        system: new.system.clone(),
        unreadable: None,
        checkin: None,
        resource: None,
    }
}

/// Posts `new`, which must be stored as a new message.
async fn post(store: &dyn Store, new: NewMessage) -> Message {
    let what = format!("posting {:?} by {}", new.client_msg_id, new.sender_id);
    let (message, duplicate) = posted(apply_one(store, Change::Post(new)).await, &what);
    assert!(
        !duplicate,
        "{what}: a first post must have duplicate: false"
    );
    message
}

fn edit(chat: ChatId, message: MessageId, content: &str, at: Timestamp) -> Change {
    Change::Edit {
        chat_id: chat,
        message_id: message,
        content: content.to_owned(),
        at,
    }
}

fn delete(chat: ChatId, message: MessageId, at: Timestamp) -> Change {
    Change::Delete {
        chat_id: chat,
        message_id: message,
        at,
    }
}

fn react_max(
    chat: ChatId,
    message: MessageId,
    user: &UserId,
    emoji: &str,
    add: bool,
    max_distinct: usize,
    at: Timestamp,
) -> Change {
    Change::React {
        chat_id: chat,
        message_id: message,
        user_id: user.clone(),
        emoji: emoji.to_owned(),
        add,
        max_distinct,
        at,
    }
}

fn react(
    chat: ChatId,
    message: MessageId,
    user: &UserId,
    emoji: &str,
    add: bool,
    at: Timestamp,
) -> Change {
    react_max(chat, message, user, emoji, add, 16, at)
}

fn add_max(
    chat: ChatId,
    user: &UserId,
    role: Role,
    by: &UserId,
    max_participants: usize,
    at: Timestamp,
) -> Change {
    Change::AddParticipant {
        chat_id: chat,
        user_id: user.clone(),
        role,
        by: by.clone(),
        max_participants,
        at,
    }
}

fn add(chat: ChatId, user: &UserId, role: Role, by: &UserId, at: Timestamp) -> Change {
    add_max(chat, user, role, by, 1_000, at)
}

fn remove(chat: ChatId, user: &UserId, by: &UserId, at: Timestamp) -> Change {
    Change::RemoveParticipant {
        chat_id: chat,
        user_id: user.clone(),
        by: by.clone(),
        at,
    }
}

fn set_role(chat: ChatId, user: &UserId, role: Role, by: &UserId, at: Timestamp) -> Change {
    Change::SetRole {
        chat_id: chat,
        user_id: user.clone(),
        role,
        by: by.clone(),
        at,
    }
}

fn mark(chat: ChatId, user: &UserId, delivered_up_to: u64, read_up_to: u64) -> Change {
    Change::Mark {
        chat_id: chat,
        user_id: user.clone(),
        delivered_up_to,
        read_up_to,
        at: at(100),
    }
}

fn new_group(members: &[&UserId], created_at: Timestamp) -> NewChat {
    NewChat {
        id: ChatId::new(),
        kind: ChatKind::Group,
        name: Some("group".to_owned()),
        description: None,
        avatar_url: None,
        encryption: Encryption::AtRest,
        participants: members
            .iter()
            .enumerate()
            .map(|(i, u)| {
                (
                    (*u).clone(),
                    if i == 0 { Role::Admin } else { Role::Member },
                )
            })
            .collect(),
        created_at,
    }
}

fn new_direct(a: &UserId, b: &UserId, created_at: Timestamp) -> NewChat {
    NewChat {
        id: ChatId::new(),
        kind: ChatKind::Direct,
        name: None,
        description: None,
        avatar_url: None,
        encryption: Encryption::AtRest,
        participants: vec![(a.clone(), Role::Member), (b.clone(), Role::Member)],
        created_at,
    }
}

/// Creates a group; the first member is its admin, the others members.
async fn group(store: &dyn Store, members: &[&UserId], created_at: Timestamp) -> Chat {
    let (chat, created) = ok(
        store.create_chat(new_group(members, created_at)).await,
        "create_chat(group)",
    );
    assert!(created, "create_chat of a new group must return true");
    chat
}

/// Creates the direct chat of `a` and `b`, which must be new.
async fn direct(store: &dyn Store, a: &UserId, b: &UserId, created_at: Timestamp) -> Chat {
    let (chat, created) = ok(
        store.create_chat(new_direct(a, b, created_at)).await,
        "create_chat(direct)",
    );
    assert!(created, "create_chat of a new direct chat must return true");
    chat
}

async fn get_chat(store: &dyn Store, id: ChatId) -> Chat {
    some(
        ok(store.get_chat(id).await, "get_chat"),
        "get_chat of an existing chat",
    )
}

async fn get_message(store: &dyn Store, id: MessageId) -> Message {
    some(
        ok(store.get_message(id).await, "get_message"),
        "get_message of a stored message",
    )
}

async fn last_seq(store: &dyn Store, id: ChatId) -> u64 {
    get_chat(store, id).await.last_seq
}

#[track_caller]
fn participant<'a>(chat: &'a Chat, user: &UserId) -> &'a Participant {
    some(
        chat.participant(user),
        &format!("participant {user} of the chat"),
    )
}

fn all_history() -> HistoryQuery {
    HistoryQuery {
        before_seq: None,
        after_seq: None,
        from_seq: 0,
        limit: 10_000,
    }
}

async fn history_seqs(store: &dyn Store, chat: ChatId, query: HistoryQuery) -> Vec<u64> {
    ok(store.history(chat, query).await, "history")
        .iter()
        .map(|m| m.seq)
        .collect()
}

async fn changes_ids(
    store: &dyn Store,
    chat: ChatId,
    after: u64,
    from_seq: u64,
    limit: usize,
) -> Vec<(MessageId, u64)> {
    ok(store.changes(chat, after, from_seq, limit).await, "changes")
        .iter()
        .map(|m| (m.id, m.updated_seq))
        .collect()
}

fn all_chats() -> ChatListQuery {
    ChatListQuery {
        after: None,
        limit: 1_000,
    }
}

async fn list_chat_ids(store: &dyn Store, user: &UserId, query: ChatListQuery) -> Vec<ChatId> {
    ok(store.list_chats(user, query).await, "list_chats")
        .iter()
        .map(|c| c.id)
        .collect()
}

/// Sorts chats as `list_chats` must: last_activity, then id, descending.
fn sort_chats(chats: &mut [Chat]) {
    chats.sort_by_key(|c| Reverse((c.last_activity, c.id)));
}

fn reactions(entries: &[(&str, &[&UserId])]) -> Reactions {
    entries
        .iter()
        .map(|(emoji, users)| {
            (
                (*emoji).to_owned(),
                users.iter().map(|u| (*u).clone()).collect(),
            )
        })
        .collect()
}

/// A report filed at `created_at`, with an id in the same millisecond so
/// that id order and time order agree (as for ids made at filing time).
fn report(reporter: &UserId, message: &Message, reason: &str, created_at: Timestamp) -> Report {
    let ms = u64::try_from(created_at.as_millis()).unwrap_or_default();
    Report {
        id: ReportId::from_ulid(Ulid::from_parts(ms, Ulid::new().random())),
        reporter_id: reporter.clone(),
        chat_id: message.chat_id,
        message_id: message.id,
        reported_user_id: message.sender_id.clone(),
        reason: reason.to_owned(),
        content: message.content.clone(),
        kind: message.kind,
        media: message.media.clone(),
        status: ReportStatus::Open,
        created_at,
        resolved_at: None,
        resolved_by: None,
        resolution_note: None,
        legal_hold: false,
    }
}

fn media_record(chat: ChatId, uploader: &UserId, created_at: Timestamp) -> MediaRecord {
    MediaRecord {
        id: MediaId::new(),
        chat_id: chat,
        uploader_id: uploader.clone(),
        kind: MediaKind::Image,
        mime: "image/png".to_owned(),
        size: 48_213,
        width: Some(1_280),
        height: Some(960),
        duration_ms: None,
        name: None,
        has_thumbnail: true,
        sealed: false,
        message_id: None,
        created_at,
    }
}

/// Awaits every task, re-raising the first panic as the case's own.
async fn join_all<T: Send + 'static>(handles: Vec<JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        match handle.await {
            Ok(v) => out.push(v),
            Err(e) => match e.try_into_panic() {
                Ok(payload) => std::panic::resume_unwind(payload),
                Err(e) => panic!("a task of the case failed: {e}"),
            },
        }
    }
    out
}

/// A small deterministic generator (xorshift64*), so that concurrent
/// cases draw the same values on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self((seed.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

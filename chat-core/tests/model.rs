//! Property test: the engine driven by random command sequences from
//! several users, checked against a simple model of chats as logs.
//!
//! Checked after every operation: the engine's answer (success or error
//! code) is the model's, and a new message takes exactly the next seq.
//! Checked at the end: every chat's log is gap-free with unique ids; members
//! read exactly the messages they may see, in seq order; nobody sees a chat
//! they are not in; unread counts match the model.
//!
//! A second property runs the same kind of operation lists split across
//! several tasks at once (on two threads, two write lanes) and checks what
//! holds whatever the interleaving, against a model replayed from the
//! store's final log: each chat's seqs are gap-free (every seq is a message
//! or the deletion of one); the user messages in the log are exactly those
//! whose sends succeeded, at the seqs the sends returned, and a retry returns
//! the original; membership and roles replayed from founders and system
//! messages are the store's, posts are by members at their seq, and a group
//! with members always has an admin (the heir promoted right after the
//! removal of the last one); concurrent openings of one direct chat yield one
//! chat, created once; reads (chat list, history, unread counts, watermarks)
//! agree with the replayed model; refusals have the codes races explain.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex},
};

use chat_core::{
    Actor, ChatEngine, ChatId, ChatKind, EngineConfig, ErrorCode, MemoryStore, Message, MessageId,
    MessageType, NewGroup, Receipt, Role, SendMessage, Store, SystemEvent, UserId,
    engine::HistoryRequest,
    store::{ChatListQuery, HistoryQuery},
};
use proptest::prelude::*;

const USERS: usize = 4;

fn uid(i: usize) -> UserId {
    UserId::new(format!("u{i}")).expect("valid id")
}

#[derive(Debug, Clone)]
enum Op {
    Direct(usize, usize),
    Group(usize, u8),
    Send(usize, usize),
    Retry(usize),
    Add(usize, usize, usize),
    Remove(usize, usize, usize),
    Read(usize, usize, u8),
    Delete(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let u = 0..USERS;
    prop_oneof![
        1 => (u.clone(), u.clone()).prop_map(|(a, b)| Op::Direct(a, b)),
        1 => (u.clone(), any::<u8>()).prop_map(|(a, m)| Op::Group(a, m)),
        4 => (u.clone(), 0..8usize).prop_map(|(a, c)| Op::Send(a, c)),
        1 => (0..64usize).prop_map(Op::Retry),
        1 => (u.clone(), 0..8usize, u.clone()).prop_map(|(a, c, b)| Op::Add(a, c, b)),
        1 => (u.clone(), 0..8usize, u.clone()).prop_map(|(a, c, b)| Op::Remove(a, c, b)),
        2 => (u.clone(), 0..8usize, any::<u8>()).prop_map(|(a, c, f)| Op::Read(a, c, f)),
        1 => (u.clone(), 0..64usize).prop_map(|(a, m)| Op::Delete(a, m)),
    ]
}

#[derive(Debug, Clone)]
struct MMsg {
    id: MessageId,
    chat: usize,
    seq: u64,
    sender: usize,
    client_id: String,
    deleted: bool,
    system: bool,
}

#[derive(Debug, Default)]
struct MChat {
    id: Option<ChatId>,
    group: bool,
    /// member -> (is admin, visible_from_seq, read_seq)
    members: BTreeMap<usize, (bool, u64, u64)>,
    last_seq: u64,
}

#[derive(Debug, Default)]
struct Model {
    chats: Vec<MChat>,
    msgs: Vec<MMsg>,
    next_client_id: usize,
}

/// The model's record of the system message the engine stored at `seq`.
async fn system_msg(store: &MemoryStore, chat_id: ChatId, chat: usize, seq: u64) -> MMsg {
    let query = HistoryQuery {
        before_seq: Some(seq + 1),
        after_seq: Some(seq - 1),
        from_seq: 0,
        limit: 1,
    };
    let stored = store.history(chat_id, query).await.unwrap_or_default();
    // A system message's sender is the user who caused the change.
    let sender = stored
        .first()
        .and_then(|m| m.sender_id.as_str().strip_prefix('u')?.parse().ok())
        .unwrap_or(usize::MAX);
    MMsg {
        id: stored.first().map_or_else(MessageId::new, |m| m.id),
        chat,
        seq,
        sender,
        client_id: String::new(),
        deleted: false,
        system: true,
    }
}

fn result_code<T>(r: &chat_core::Result<T>) -> Option<ErrorCode> {
    r.as_ref().err().map(|e| e.code())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Arc::new(MemoryStore::new());
    let engine = ChatEngine::builder(store.clone())
        .build()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut m = Model::default();
    let actor = |i: usize| Actor::user(uid(i));
    for op in ops {
        match op {
            Op::Direct(a, b) => {
                let r = engine
                    .create_direct(&actor(a), &uid(b), Default::default())
                    .await;
                if a == b {
                    prop_assert_eq!(result_code(&r), Some(ErrorCode::BadRequest));
                    continue;
                }
                let opened = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                let id = opened.chat.chat.id;
                let known = m.chats.iter().any(|c| c.id == Some(id));
                prop_assert_eq!(opened.created, !known);
                if !known {
                    let mut members = BTreeMap::new();
                    members.insert(a, (false, 0, 0));
                    members.insert(b, (false, 0, 0));
                    m.chats.push(MChat {
                        id: Some(id),
                        group: false,
                        members,
                        last_seq: 0,
                    });
                }
            }
            Op::Group(a, mask) => {
                let others: Vec<usize> = (0..USERS)
                    .filter(|i| *i != a && mask & (1 << i) != 0)
                    .collect();
                let g = NewGroup {
                    name: "g".into(),
                    member_ids: others.iter().map(|i| uid(*i)).collect(),
                    ..Default::default()
                };
                let view = engine
                    .create_group(&actor(a), g)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut members = BTreeMap::new();
                members.insert(a, (true, 0, 0));
                for o in others {
                    members.insert(o, (false, 0, 0));
                }
                m.chats.push(MChat {
                    id: Some(view.chat.id),
                    group: true,
                    members,
                    last_seq: 0,
                });
            }
            Op::Send(a, c) => {
                let Some(chat) = m.chats.get_mut(c) else {
                    continue;
                };
                let Some(chat_id) = chat.id else { continue };
                m.next_client_id += 1;
                let cid = format!("c{}", m.next_client_id);
                let r = engine
                    .send(&actor(a), SendMessage::text(chat_id, cid.clone(), "hi"))
                    .await;
                if !chat.members.contains_key(&a) {
                    prop_assert_eq!(result_code(&r), Some(ErrorCode::NotFound));
                    continue;
                }
                let msg = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                chat.last_seq += 1;
                prop_assert_eq!(msg.seq, chat.last_seq, "a new message takes the next seq");
                m.msgs.push(MMsg {
                    id: msg.id,
                    chat: c,
                    seq: msg.seq,
                    sender: a,
                    client_id: cid,
                    deleted: false,
                    system: false,
                });
            }
            Op::Retry(i) => {
                let Some(orig) = m.msgs.get(i).cloned().filter(|x| !x.system) else {
                    continue;
                };
                let chat = &m.chats[orig.chat];
                let Some(chat_id) = chat.id else { continue };
                let r = engine
                    .send(
                        &actor(orig.sender),
                        SendMessage::text(chat_id, orig.client_id.clone(), "again"),
                    )
                    .await;
                if chat.members.contains_key(&orig.sender) {
                    let msg = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(
                        (msg.id, msg.seq),
                        (orig.id, orig.seq),
                        "a retry returns the original"
                    );
                } else {
                    prop_assert_eq!(result_code(&r), Some(ErrorCode::NotFound));
                }
            }
            Op::Add(a, c, b) => {
                let Some(chat) = m.chats.get_mut(c) else {
                    continue;
                };
                let Some(chat_id) = chat.id else { continue };
                let r = engine
                    .add_participant(&actor(a), chat_id, &uid(b), Role::Member)
                    .await;
                let expected = match chat.members.get(&a) {
                    None => Some(ErrorCode::NotFound),
                    Some(_) if !chat.group => Some(ErrorCode::BadRequest),
                    Some((false, ..)) => Some(ErrorCode::Forbidden),
                    Some(_) if chat.members.contains_key(&b) => Some(ErrorCode::Conflict),
                    Some(_) => None,
                };
                prop_assert_eq!(result_code(&r), expected);
                if expected.is_none() {
                    chat.last_seq += 1;
                    chat.members
                        .insert(b, (false, chat.last_seq, chat.last_seq));
                    let seq = chat.last_seq;
                    m.msgs.push(system_msg(&store, chat_id, c, seq).await);
                }
            }
            Op::Remove(a, c, b) => {
                let Some(chat) = m.chats.get_mut(c) else {
                    continue;
                };
                let Some(chat_id) = chat.id else { continue };
                let r = engine.remove_participant(&actor(a), chat_id, &uid(b)).await;
                let expected = match chat.members.get(&a) {
                    None => Some(ErrorCode::NotFound),
                    Some(_) if !chat.group => Some(ErrorCode::BadRequest),
                    Some(_) if !chat.members.contains_key(&b) => Some(ErrorCode::NotFound),
                    Some((admin, ..)) if *admin || a == b => None,
                    Some(_) => Some(ErrorCode::Forbidden),
                };
                prop_assert_eq!(result_code(&r), expected);
                if expected.is_none() {
                    chat.last_seq += 1;
                    let seq = chat.last_seq;
                    m.msgs.push(system_msg(&store, chat_id, c, seq).await);
                    chat.members.remove(&b);
                    let admins = chat.members.values().filter(|(admin, ..)| *admin).count();
                    if admins == 0 {
                        // The heir is the engine's choice (the longest-standing
                        // member); the model checks there is exactly one.
                        if !chat.members.is_empty() {
                            chat.last_seq += 1;
                            let seq = chat.last_seq;
                            m.msgs.push(system_msg(&store, chat_id, c, seq).await);
                            let view = store
                                .get_chat(chat_id)
                                .await
                                .map_err(|e| TestCaseError::fail(e.to_string()))?
                                .ok_or_else(|| TestCaseError::fail("chat vanished"))?;
                            for p in &view.participants {
                                let idx: usize =
                                    p.user_id.as_str()[1..].parse().unwrap_or(usize::MAX);
                                if let Some(entry) = chat.members.get_mut(&idx) {
                                    entry.0 = p.role == Role::Admin;
                                }
                            }
                            let admins = chat.members.values().filter(|(admin, ..)| *admin).count();
                            prop_assert_eq!(admins, 1, "a group that lost its last admin gets one");
                        }
                    }
                }
            }
            Op::Read(a, c, frac) => {
                let Some(chat) = m.chats.get_mut(c) else {
                    continue;
                };
                let Some(chat_id) = chat.id else { continue };
                let up_to = (chat.last_seq + 2) * u64::from(frac) / 255;
                let r = engine.mark(&actor(a), chat_id, Receipt::Read, up_to).await;
                match chat.members.get_mut(&a) {
                    None => prop_assert_eq!(result_code(&r), Some(ErrorCode::NotFound)),
                    Some(entry) => {
                        prop_assert!(r.is_ok());
                        entry.2 = entry.2.max(up_to.min(chat.last_seq));
                    }
                }
            }
            Op::Delete(a, i) => {
                let Some(msg) = m.msgs.get(i).cloned() else {
                    continue;
                };
                let chat = &mut m.chats[msg.chat];
                let r = engine.delete(&actor(a), msg.id).await;
                let expected = match chat.members.get(&a) {
                    None => Some(ErrorCode::NotFound),
                    Some((_, from, _)) if msg.seq < *from => Some(ErrorCode::NotFound),
                    // Permission first, then the kind: only those who may
                    // delete learn that system messages cannot be deleted.
                    Some((admin, ..)) if msg.sender == a || (chat.group && *admin) => {
                        msg.system.then_some(ErrorCode::BadRequest)
                    }
                    Some(_) => Some(ErrorCode::Forbidden),
                };
                prop_assert_eq!(result_code(&r), expected);
                if expected.is_none() && !msg.deleted {
                    chat.last_seq += 1;
                    m.msgs[i].deleted = true;
                }
            }
        }
    }
    check_final(&engine, &store, &m).await
}

async fn check_final(
    engine: &ChatEngine,
    store: &MemoryStore,
    m: &Model,
) -> Result<(), TestCaseError> {
    let fail = |e: chat_core::Error| TestCaseError::fail(e.to_string());
    let mut all_ids = std::collections::HashSet::new();
    for (ci, chat) in m.chats.iter().enumerate() {
        let Some(chat_id) = chat.id else { continue };
        // the log: the model's messages at their seqs, each counter value
        // used by one change, unique ids
        let stored = store.get_chat(chat_id).await.map_err(fail)?;
        prop_assert_eq!(
            stored.map(|c| c.last_seq),
            Some(chat.last_seq),
            "every change took one seq"
        );
        let log = store
            .history(
                chat_id,
                HistoryQuery {
                    before_seq: None,
                    after_seq: None,
                    from_seq: 0,
                    limit: 10_000,
                },
            )
            .await
            .map_err(fail)?;
        let seqs: Vec<u64> = log.iter().rev().map(|msg| msg.seq).collect();
        let model_seqs: Vec<u64> = m
            .msgs
            .iter()
            .filter(|x| x.chat == ci)
            .map(|x| x.seq)
            .collect();
        prop_assert_eq!(
            &seqs,
            &model_seqs,
            "the log holds the model's messages in seq order"
        );
        let mut counters = std::collections::HashSet::new();
        for msg in &log {
            prop_assert!(all_ids.insert(msg.id), "duplicate message id");
            prop_assert!(msg.seq <= msg.updated_seq && msg.updated_seq <= chat.last_seq);
            prop_assert!(counters.insert(msg.updated_seq), "two changes took one seq");
        }
        for u in 0..USERS {
            let me = Actor::user(uid(u));
            let listed = engine
                .list_chats(
                    &me,
                    ChatListQuery {
                        after: None,
                        limit: 200,
                    },
                )
                .await
                .map_err(fail)?
                .chats
                .iter()
                .any(|v| v.chat.id == chat_id);
            match chat.members.get(&u) {
                None => {
                    prop_assert!(!listed, "u{} lists a chat they are not in", u);
                    prop_assert_eq!(
                        result_code(&engine.get_chat(&me, chat_id).await),
                        Some(ErrorCode::NotFound)
                    );
                    prop_assert_eq!(
                        result_code(
                            &engine
                                .history(&me, chat_id, HistoryRequest::default())
                                .await
                        ),
                        Some(ErrorCode::NotFound)
                    );
                }
                Some((_, from, read)) => {
                    prop_assert!(listed);
                    let view = engine.get_chat(&me, chat_id).await.map_err(fail)?;
                    prop_assert_eq!(view.chat.kind == ChatKind::Group, chat.group);
                    let expected_unread = m
                        .msgs
                        .iter()
                        .filter(|x| x.chat == ci && !x.system && !x.deleted && x.sender != u)
                        .filter(|x| x.seq > *read && x.seq >= *from)
                        .count() as u64;
                    prop_assert_eq!(view.unread_count, expected_unread, "unread of u{}", u);
                    let seen = engine
                        .history(
                            &me,
                            chat_id,
                            HistoryRequest {
                                limit: Some(200),
                                ..Default::default()
                            },
                        )
                        .await
                        .map_err(fail)?;
                    let seen_seqs: Vec<u64> = seen.messages.iter().rev().map(|x| x.seq).collect();
                    let expected: Vec<u64> = model_seqs
                        .iter()
                        .copied()
                        .filter(|seq| seq >= from)
                        .collect();
                    prop_assert_eq!(
                        seen_seqs,
                        expected,
                        "u{} reads exactly what they may see",
                        u
                    );
                    prop_assert!(
                        seen.messages
                            .iter()
                            .all(|x| x.kind != MessageType::System || x.content.is_none())
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run(ops))?;
    }
}

// --- the same operations, at once --------------------------------------------

/// Tasks that share one engine in the concurrent property.
const TASKS: usize = 3;

/// A chat as created, with its founding participants in joining order.
#[derive(Debug, Clone)]
struct Founded {
    id: ChatId,
    group: bool,
    founders: Vec<(usize, Role)>,
}

/// A send that succeeded.
#[derive(Debug, Clone)]
struct Sent {
    id: MessageId,
    chat: ChatId,
    sender: usize,
    client_id: String,
    seq: u64,
}

/// What the tasks share: what each learned from the engine's answers, for
/// the others to act on and for the final check.
#[derive(Debug, Default)]
struct Shared {
    chats: Vec<Founded>,
    sends: Vec<Sent>,
    /// Each opening of a direct chat of a pair: the chat and whether it
    /// was created by that call.
    directs: BTreeMap<(usize, usize), Vec<(ChatId, bool)>>,
    next_client_id: usize,
    /// Answers no race explains.
    failures: Vec<String>,
}

fn user_ix(user: &UserId) -> Option<usize> {
    user.as_str().strip_prefix('u')?.parse().ok()
}

fn shared_lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records a refusal whose code is not among `allowed`.
fn allow<T>(shared: &Mutex<Shared>, what: &str, r: &chat_core::Result<T>, allowed: &[ErrorCode]) {
    if let Err(e) = r {
        if !allowed.contains(&e.code()) {
            shared_lock(shared)
                .failures
                .push(format!("{what}: unexpected {e:?}"));
        }
    }
}

async fn concurrent_step(engine: &ChatEngine, shared: &Mutex<Shared>, op: Op) {
    use ErrorCode::{BadRequest, Conflict, Forbidden, NotFound};
    let actor = |i: usize| Actor::user(uid(i));
    let chat = |c: usize| {
        let s = shared_lock(shared);
        (!s.chats.is_empty()).then(|| s.chats[c % s.chats.len()].clone())
    };
    let sent = |i: usize| {
        let s = shared_lock(shared);
        (!s.sends.is_empty()).then(|| s.sends[i % s.sends.len()].clone())
    };
    match op {
        Op::Direct(a, b) => {
            let r = engine
                .create_direct(&actor(a), &uid(b), Default::default())
                .await;
            if a == b {
                if result_code(&r) != Some(BadRequest) {
                    shared_lock(shared)
                        .failures
                        .push(format!("direct chat with oneself: {r:?}"));
                }
                return;
            }
            allow(shared, "create_direct", &r, &[]);
            if let Ok(opened) = r {
                let mut s = shared_lock(shared);
                let id = opened.chat.chat.id;
                s.directs
                    .entry((a.min(b), a.max(b)))
                    .or_default()
                    .push((id, opened.created));
                if opened.created {
                    let founders = founders_of(&opened.chat.chat);
                    s.chats.push(Founded {
                        id,
                        group: false,
                        founders,
                    });
                }
            }
        }
        Op::Group(a, mask) => {
            let others: Vec<usize> = (0..USERS)
                .filter(|i| *i != a && mask & (1 << i) != 0)
                .collect();
            let g = NewGroup {
                name: "g".into(),
                member_ids: others.iter().map(|i| uid(*i)).collect(),
                ..Default::default()
            };
            let r = engine.create_group(&actor(a), g).await;
            allow(shared, "create_group", &r, &[]);
            if let Ok(view) = r {
                let founders = founders_of(&view.chat);
                shared_lock(shared).chats.push(Founded {
                    id: view.chat.id,
                    group: true,
                    founders,
                });
            }
        }
        Op::Send(a, c) => {
            let Some(chat) = chat(c) else { return };
            let cid = {
                let mut s = shared_lock(shared);
                s.next_client_id += 1;
                format!("c{}", s.next_client_id)
            };
            let r = engine
                .send(&actor(a), SendMessage::text(chat.id, cid.clone(), "hi"))
                .await;
            // A sender removed meanwhile is refused at commit.
            allow(shared, "send", &r, &[NotFound]);
            if let Ok(m) = r {
                shared_lock(shared).sends.push(Sent {
                    id: m.id,
                    chat: chat.id,
                    sender: a,
                    client_id: cid,
                    seq: m.seq,
                });
            }
        }
        Op::Retry(i) => {
            let Some(orig) = sent(i) else { return };
            let r = engine
                .send(
                    &actor(orig.sender),
                    SendMessage::text(orig.chat, orig.client_id.clone(), "again"),
                )
                .await;
            allow(shared, "retry", &r, &[NotFound]);
            if let Ok(m) = r {
                if (m.id, m.seq) != (orig.id, orig.seq) {
                    shared_lock(shared).failures.push(format!(
                        "a retry of {} returned seq {} id {}, not the original's seq {} id {}",
                        orig.client_id, m.seq, m.id, orig.seq, orig.id
                    ));
                }
            }
        }
        Op::Add(a, c, b) => {
            let Some(chat) = chat(c) else { return };
            let r = engine
                .add_participant(&actor(a), chat.id, &uid(b), Role::Member)
                .await;
            allow(
                shared,
                "add_participant",
                &r,
                &[NotFound, BadRequest, Forbidden, Conflict],
            );
        }
        Op::Remove(a, c, b) => {
            let Some(chat) = chat(c) else { return };
            let r = engine.remove_participant(&actor(a), chat.id, &uid(b)).await;
            allow(
                shared,
                "remove_participant",
                &r,
                &[NotFound, BadRequest, Forbidden],
            );
        }
        Op::Read(a, c, frac) => {
            let Some(chat) = chat(c) else { return };
            let up_to = u64::from(frac) / 4;
            let r = engine.mark(&actor(a), chat.id, Receipt::Read, up_to).await;
            allow(shared, "mark", &r, &[NotFound]);
        }
        Op::Delete(a, i) => {
            let Some(m) = sent(i) else { return };
            let r = engine.delete(&actor(a), m.id).await;
            allow(shared, "delete", &r, &[NotFound, Forbidden]);
        }
    }
}

fn founders_of(chat: &chat_core::Chat) -> Vec<(usize, Role)> {
    chat.participants
        .iter()
        .filter_map(|p| Some((user_ix(&p.user_id)?, p.role)))
        .collect()
}

/// Splits `ops` round-robin across [`TASKS`] tasks that run at once, then
/// checks what must hold whatever the interleaving.
async fn run_concurrent(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Arc::new(MemoryStore::new());
    let mut config = EngineConfig::default();
    config.write_lanes = 2;
    let engine = ChatEngine::builder(store.clone())
        .config(config)
        .build()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut parts: Vec<Vec<Op>> = vec![Vec::new(); TASKS];
    for (i, op) in ops.into_iter().enumerate() {
        parts[i % TASKS].push(op);
    }
    let mut tasks = Vec::new();
    for part in parts {
        let (engine, shared) = (engine.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            for op in part {
                concurrent_step(&engine, &shared, op).await;
            }
        }));
    }
    for task in tasks {
        task.await
            .map_err(|e| TestCaseError::fail(format!("a task failed: {e}")))?;
    }
    let shared = std::mem::take(&mut *shared_lock(&shared));
    let result = check_concurrent(&engine, &store, &shared).await;
    engine.shutdown().await;
    result
}

/// Membership replayed from a chat's founders and its log.
#[derive(Debug, Default)]
struct Replayed {
    /// In joining order, with roles.
    members: Vec<(usize, Role)>,
    /// The seq each member's current membership started at.
    joined: BTreeMap<usize, u64>,
}

fn replay(chat: &Founded, log: &[Message]) -> Result<Replayed, TestCaseError> {
    let mut r = Replayed {
        members: chat.founders.clone(),
        joined: chat.founders.iter().map(|(u, _)| (*u, 0)).collect(),
    };
    // The heir due right after the removal of the last admin.
    let mut heir_due: Option<(u64, usize)> = None;
    for m in log {
        let seq = m.seq;
        if let Some((due, heir)) = heir_due.take() {
            let promoted = matches!(
                &m.system,
                Some(SystemEvent::RoleChanged { user_id, role: Role::Admin })
                    if user_ix(user_id) == Some(heir)
            );
            prop_assert!(
                seq == due && promoted,
                "the removal at seq {} left no admin and seq {} does not promote the heir u{}: {:?}",
                due - 1,
                seq,
                heir,
                m
            );
        }
        let position = |r: &Replayed, u: Option<usize>| {
            u.and_then(|u| r.members.iter().position(|(x, _)| *x == u))
        };
        match &m.system {
            None => prop_assert!(
                position(&r, user_ix(&m.sender_id)).is_some(),
                "seq {} was posted by {}, not a member then",
                seq,
                m.sender_id
            ),
            Some(SystemEvent::ParticipantAdded { user_id, role }) => {
                let u = user_ix(user_id);
                prop_assert!(position(&r, u).is_none(), "seq {} adds a member", seq);
                let u = u.unwrap_or(usize::MAX);
                r.members.push((u, *role));
                r.joined.insert(u, seq);
            }
            Some(SystemEvent::ParticipantRemoved { user_id }) => {
                let at = position(&r, user_ix(user_id));
                prop_assert!(at.is_some(), "seq {} removes a non-member", seq);
                let (u, _) = r.members.remove(at.unwrap_or_default());
                r.joined.remove(&u);
                if chat.group
                    && !r.members.is_empty()
                    && r.members.iter().all(|(_, role)| *role != Role::Admin)
                {
                    let heir = r
                        .members
                        .iter()
                        .find(|(_, role)| *role == Role::Moderator)
                        .unwrap_or(&r.members[0])
                        .0;
                    heir_due = Some((seq + 1, heir));
                }
            }
            Some(SystemEvent::RoleChanged { user_id, role }) => {
                let at = position(&r, user_ix(user_id));
                prop_assert!(at.is_some(), "seq {} changes a non-member's role", seq);
                r.members[at.unwrap_or_default()].1 = *role;
            }
            // Group updates, and whatever else a system message records.
            Some(_) => {}
        }
        if m.system.is_some() && heir_due.is_none() && chat.group && !r.members.is_empty() {
            prop_assert!(
                r.members.iter().any(|(_, role)| *role == Role::Admin),
                "no admin after seq {} ({:?} by {}); members {:?}; founders {:?}; log {:?}",
                seq,
                m.system,
                m.sender_id,
                r.members,
                chat.founders,
                log.iter()
                    .map(|m| (m.seq, m.sender_id.as_str(), m.system.as_ref()))
                    .collect::<Vec<_>>()
            );
        }
    }
    prop_assert!(
        heir_due.is_none(),
        "the log ends before the heir's promotion"
    );
    Ok(r)
}

async fn check_concurrent(
    engine: &ChatEngine,
    store: &MemoryStore,
    shared: &Shared,
) -> Result<(), TestCaseError> {
    let fail = |e: chat_core::Error| TestCaseError::fail(e.to_string());
    prop_assert!(
        shared.failures.is_empty(),
        "answers no race explains: {:?}",
        shared.failures
    );
    for (pair, opened) in &shared.directs {
        let ids: BTreeSet<ChatId> = opened.iter().map(|(id, _)| *id).collect();
        let created = opened.iter().filter(|(_, c)| *c).count();
        prop_assert_eq!(ids.len(), 1, "the pair {:?} has one direct chat", pair);
        prop_assert_eq!(created, 1, "the pair {:?} created its chat once", pair);
    }
    // Every successful send, keyed by message id (a retry's answer was
    // checked against its original already).
    let mut sent: BTreeMap<MessageId, &Sent> = BTreeMap::new();
    for s in &shared.sends {
        if let Some(first) = sent.insert(s.id, s) {
            prop_assert_eq!(
                (first.seq, first.chat),
                (s.seq, s.chat),
                "one message id, two places"
            );
        }
    }
    let mut in_logs: HashSet<MessageId> = HashSet::new();
    let mut client_ids: HashSet<(UserId, String)> = HashSet::new();
    for chat in &shared.chats {
        let stored = store
            .get_chat(chat.id)
            .await
            .map_err(fail)?
            .ok_or_else(|| TestCaseError::fail("a chat vanished"))?;
        let mut log = store
            .history(
                chat.id,
                HistoryQuery {
                    before_seq: None,
                    after_seq: None,
                    from_seq: 0,
                    limit: 10_000,
                },
            )
            .await
            .map_err(fail)?;
        log.reverse();
        // Gap-free: every seq is a message's, or a deletion's.
        let mut taken: Vec<u64> = log.iter().map(|m| m.seq).collect();
        taken.extend(log.iter().filter(|m| m.deleted).map(|m| m.updated_seq));
        taken.sort_unstable();
        let expected: Vec<u64> = (1..=stored.last_seq).collect();
        prop_assert_eq!(&taken, &expected, "every seq is taken by one change");
        for m in &log {
            prop_assert!(in_logs.insert(m.id), "duplicate message id");
            if m.kind == MessageType::System {
                continue;
            }
            let s = sent.get(&m.id).copied();
            prop_assert!(
                s.is_some(),
                "seq {} is in the log, but no send returned it",
                m.seq
            );
            let s = s.ok_or_else(|| TestCaseError::fail("unreachable"))?;
            prop_assert_eq!(
                (s.chat, s.seq, Some(s.client_id.as_str())),
                (m.chat_id, m.seq, m.client_msg_id.as_deref()),
                "the log holds the message where its send said"
            );
            prop_assert!(
                client_ids.insert((m.sender_id.clone(), s.client_id.clone())),
                "one client_msg_id, two messages"
            );
        }
        let r = replay(chat, &log)?;
        let participants: Vec<(usize, Role)> = founders_of(&stored);
        prop_assert_eq!(
            &participants,
            &r.members,
            "the store's participants are the log's"
        );
        for u in 0..USERS {
            let me = Actor::user(uid(u));
            let listed = engine
                .list_chats(
                    &me,
                    ChatListQuery {
                        after: None,
                        limit: 200,
                    },
                )
                .await
                .map_err(fail)?
                .chats
                .iter()
                .any(|v| v.chat.id == chat.id);
            let Some(&from) = r.joined.get(&u) else {
                prop_assert!(!listed, "u{} lists a chat they are not in", u);
                prop_assert_eq!(
                    result_code(&engine.get_chat(&me, chat.id).await),
                    Some(ErrorCode::NotFound)
                );
                continue;
            };
            prop_assert!(listed, "u{} does not list their chat", u);
            let p = stored
                .participant(&uid(u))
                .ok_or_else(|| TestCaseError::fail("a member vanished"))?;
            prop_assert_eq!(p.visible_from_seq, from, "u{} sees from their joining", u);
            prop_assert!(
                p.read_seq >= from
                    && p.read_seq <= stored.last_seq
                    && p.delivered_seq >= p.read_seq,
                "watermarks of u{}: {:?}",
                u,
                p
            );
            let view = engine.get_chat(&me, chat.id).await.map_err(fail)?;
            let unread = log
                .iter()
                .filter(|m| m.kind != MessageType::System && !m.deleted)
                .filter(|m| user_ix(&m.sender_id) != Some(u))
                .filter(|m| m.seq > p.read_seq && m.seq >= from)
                .count() as u64;
            prop_assert_eq!(view.unread_count, unread, "unread of u{}", u);
            let seen = engine
                .history(
                    &me,
                    chat.id,
                    HistoryRequest {
                        limit: Some(200),
                        ..Default::default()
                    },
                )
                .await
                .map_err(fail)?;
            let seen: Vec<u64> = seen.messages.iter().rev().map(|m| m.seq).collect();
            let expected: Vec<u64> = log.iter().map(|m| m.seq).filter(|s| *s >= from).collect();
            prop_assert_eq!(seen, expected, "u{} reads exactly what they may see", u);
        }
    }
    let missing: Vec<&Sent> = sent
        .values()
        .filter(|s| !in_logs.contains(&s.id))
        .copied()
        .collect();
    prop_assert!(
        missing.is_empty(),
        "acknowledged sends missing from the logs: {:?}",
        missing
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_operations_keep_the_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        rt.block_on(run_concurrent(ops))?;
    }
}

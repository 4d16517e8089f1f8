//! Property test: the engine driven by random command sequences from
//! several users, checked against a simple model of chats as logs.
//!
//! Checked after every operation: the engine's answer (success or error
//! code) is the model's, and a new message takes exactly the next seq.
//! Checked at the end: every chat's log is gap-free with unique ids; members
//! read exactly the messages they may see, in seq order; nobody sees a chat
//! they are not in; unread counts match the model.

use std::{collections::BTreeMap, sync::Arc};

use chat_core::{
    Actor, ChatEngine, ChatId, ChatKind, ErrorCode, MemoryStore, MessageId, MessageType, NewGroup,
    Receipt, Role, SendMessage, Store, UserId,
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
                            let view = engine
                                .store()
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

//! Tests of every rule of the engine, through its public API, with live
//! sessions on in-memory queues so that events can be observed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;

use super::*;
use crate::{
    hooks::{HookContext, HookDecision, MessageHook, Notification, Notifier},
    memory::MemoryStore,
    store::Store,
    transport::{Outbox, Outgoing, outbox},
};

pub(super) fn uid(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

pub(super) fn actor(s: &str) -> Actor {
    Actor::user(uid(s))
}

async fn engine_with(config: EngineConfig) -> (ChatEngine, Arc<MemoryStore>) {
    let store = Arc::new(MemoryStore::new());
    let engine = ChatEngine::builder(store.clone())
        .config(config)
        .build()
        .await
        .unwrap();
    (engine, store)
}

async fn engine() -> ChatEngine {
    engine_with(EngineConfig::default()).await.0
}

/// An engine on a memory store whose clock stands at `start` and moves
/// only when the test moves it.
pub(super) async fn clocked_engine(start_ms: i64) -> (ChatEngine, Arc<crate::clock::ManualClock>) {
    let clock = Arc::new(crate::clock::ManualClock::new(Timestamp::from_millis(
        start_ms,
    )));
    let engine = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    (engine, clock)
}

pub(super) struct Client {
    session: Session,
    out: Outbox,
}

impl Client {
    pub(super) async fn connect(engine: &ChatEngine, user: &str) -> Client {
        Self::connect_with(engine, user, "default", 256).await
    }

    async fn connect_with(
        engine: &ChatEngine,
        user: &str,
        device: &str,
        capacity: usize,
    ) -> Client {
        let (tx, out) = outbox(capacity);
        let session = engine
            .connect(actor(user), DeviceId::new(device).unwrap(), Arc::new(tx))
            .await
            .unwrap();
        let mut client = Client { session, out };
        let first = client.next().await;
        assert_eq!(
            first["type"], "presence_update",
            "first frame after connect"
        );
        client
    }

    /// The next frame, waiting at most a (virtual) second.
    async fn next(&mut self) -> Value {
        match tokio::time::timeout(Duration::from_secs(1), self.out.next()).await {
            Ok(Some(Outgoing::Frame(f))) => json_of(&f),
            Ok(Some(Outgoing::Close(code, reason))) => {
                serde_json::json!({"closed": code, "reason": reason})
            }
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame of type `kind`, skipping others.
    pub(super) async fn next_of(&mut self, kind: &str) -> Value {
        for _ in 0..50 {
            let f = self.next().await;
            if f["type"] == kind {
                return f["data"].clone();
            }
        }
        panic!("no {kind} frame");
    }

    /// Every frame queued now.
    fn drain(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(f) = self.out.try_next_frame() {
            out.push(json_of(&f));
        }
        out
    }

    pub(super) fn types(&mut self) -> Vec<String> {
        self.drain()
            .into_iter()
            .map(|f| f["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn cmd(&self, json: Value) -> Value {
        let reply = crate::protocol::dispatch_text(&self.session, &json.to_string())
            .await
            .expect("a command with an id is answered");
        json_of(&reply)
    }
}

/// A frame as `/ws` sends it, parsed.
fn json_of(frame: &crate::event::Frame) -> Value {
    serde_json::from_slice(&frame.encode(crate::event::Framing::Json)).unwrap()
}

pub(super) async fn direct(engine: &ChatEngine, a: &str, b: &str) -> ChatId {
    engine
        .create_direct(&actor(a), &uid(b), Encryption::AtRest)
        .await
        .unwrap()
        .chat
        .chat
        .id
}

pub(super) async fn group(engine: &ChatEngine, admin: &str, members: &[&str]) -> ChatId {
    let g = NewGroup {
        name: "support".into(),
        member_ids: members.iter().map(|m| uid(m)).collect(),
        ..Default::default()
    };
    engine.create_group(&actor(admin), g).await.unwrap().chat.id
}

pub(super) async fn send(
    engine: &ChatEngine,
    who: &str,
    chat: ChatId,
    cid: &str,
    text: &str,
) -> Result<Message> {
    engine
        .send(&actor(who), SendMessage::text(chat, cid, text))
        .await
}

/// Posts `n` texts straight through the store at `at` (faster than `n`
/// sends), the senders taking turns in the order `senders` lists them.
async fn post_texts(store: &MemoryStore, chat: ChatId, senders: &[&str], n: usize, at: Timestamp) {
    let posts = (0..n)
        .map(|i| {
            let who = senders[i % senders.len()];
            Change::Post(crate::store::NewMessage {
                mls: None,
                id: MessageId::new(),
                chat_id: chat,
                sender_id: uid(who),
                kind: MessageType::Text,
                content: Some(format!("old {i}")),
                media: None,
                reply_to: None,
                client_msg_id: Some(format!("{who}-{chat}-{i}")),
                system: None,
                created_at: at,
            })
        })
        .collect();
    for result in store.apply(posts).await {
        result.unwrap();
    }
}

/// The record of an image `uploader` uploaded to `chat_id` (with a
/// thumbnail, not yet attached).
fn image_upload(uploader: &str, chat_id: ChatId) -> MediaRecord {
    MediaRecord {
        id: MediaId::new(),
        chat_id,
        uploader_id: uid(uploader),
        kind: MediaKind::Image,
        mime: "image/png".into(),
        size: 10,
        width: Some(4),
        height: Some(3),
        duration_ms: None,
        name: None,
        has_thumbnail: true,
        sealed: false,
        message_id: None,
        created_at: Timestamp::from_millis(0),
    }
}

fn code<T: std::fmt::Debug>(r: Result<T>) -> crate::ErrorCode {
    r.expect_err("expected an error").code()
}

use crate::ErrorCode as C;

// --- direct chats ---------------------------------------------------------

#[tokio::test]
async fn direct_chat_is_unique_per_pair() {
    let e = engine().await;
    let a = e
        .create_direct(&actor("alice"), &uid("bob"), Encryption::AtRest)
        .await
        .unwrap();
    assert!(a.created);
    let b = e
        .create_direct(&actor("bob"), &uid("alice"), Encryption::E2ee)
        .await
        .unwrap();
    assert!(!b.created);
    assert_eq!(a.chat.chat.id, b.chat.chat.id);
    assert_eq!(
        b.chat.chat.encryption,
        Encryption::AtRest,
        "encryption is fixed at creation"
    );
    assert_eq!(
        code(
            e.create_direct(&actor("alice"), &uid("alice"), Encryption::AtRest)
                .await
        ),
        C::BadRequest
    );
}

#[derive(Debug)]
struct OnlyMatched;

#[async_trait::async_trait]
impl ContactPolicy for OnlyMatched {
    async fn may_open_direct(&self, from: &UserId, to: &UserId) -> Result<bool> {
        Ok(from.as_str() == "alice" && to.as_str() == "bob"
            || from.as_str() == "bob" && to.as_str() == "alice")
    }
}

#[tokio::test]
async fn contact_policy_and_blocks_guard_direct_chats() {
    let store = Arc::new(MemoryStore::new());
    let e = ChatEngine::builder(store)
        .contact_policy(Arc::new(OnlyMatched))
        .build()
        .await
        .unwrap();
    assert_eq!(
        code(
            e.create_direct(&actor("alice"), &uid("carol"), Encryption::AtRest)
                .await
        ),
        C::Forbidden
    );
    e.block(&actor("bob"), &uid("alice")).await.unwrap();
    assert_eq!(
        code(
            e.create_direct(&actor("alice"), &uid("bob"), Encryption::AtRest)
                .await
        ),
        C::Forbidden
    );
    assert_eq!(
        code(
            e.create_direct(&actor("bob"), &uid("alice"), Encryption::AtRest)
                .await
        ),
        C::Forbidden
    );
    e.unblock(&actor("bob"), &uid("alice")).await.unwrap();
    assert!(
        e.create_direct(&actor("alice"), &uid("bob"), Encryption::AtRest)
            .await
            .is_ok()
    );
    assert_eq!(
        code(e.block(&actor("bob"), &uid("bob")).await),
        C::BadRequest
    );
}

#[tokio::test]
async fn blocked_users_cannot_write_into_an_existing_direct_chat() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    send(&e, "alice", chat, "c1", "hi").await.unwrap();
    e.block(&actor("bob"), &uid("alice")).await.unwrap();
    assert_eq!(
        code(send(&e, "alice", chat, "c2", "hi?").await),
        C::Forbidden
    );
    assert_eq!(code(send(&e, "bob", chat, "c3", "no").await), C::Forbidden);
    assert_eq!(
        e.blocked_users(&actor("bob")).await.unwrap(),
        vec![uid("alice")]
    );
    e.unblock(&actor("bob"), &uid("alice")).await.unwrap();
    assert!(send(&e, "alice", chat, "c2", "hi?").await.is_ok());
}

// --- sending ----------------------------------------------------------------

#[tokio::test]
async fn cached_chats_follow_membership_changes() {
    let e = engine().await;
    let g = group(&e, "alice", &["bob"]).await;
    send(&e, "alice", g, "c1", "fills the cache").await.unwrap();
    let mut carol = Client::connect(&e, "carol").await;
    e.add_participant(&actor("alice"), g, &uid("carol"), Role::Member)
        .await
        .unwrap();
    send(&e, "carol", g, "c2", "hello").await.unwrap();
    send(&e, "alice", g, "c3", "welcome").await.unwrap();
    let got = carol.drain();
    assert!(
        got.iter()
            .any(|f| f["type"] == "message_received" && f["data"]["content"] == "welcome"),
        "a new member gets the next message: {got:?}"
    );
    e.remove_participant(&actor("alice"), g, &uid("carol"))
        .await
        .unwrap();
    assert_eq!(
        code(send(&e, "carol", g, "c4", "still here?").await),
        C::NotFound
    );
    carol.drain();
    send(&e, "alice", g, "c5", "private again").await.unwrap();
    assert!(
        !carol.types().contains(&"message_received".to_owned()),
        "a removed member gets nothing more"
    );
}

#[tokio::test]
async fn a_retry_refused_now_still_gets_the_stored_message() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let m = send(&e, "alice", chat, "c1", "hi").await.unwrap();
    e.block(&actor("bob"), &uid("alice")).await.unwrap();
    let again = send(&e, "alice", chat, "c1", "hi").await.unwrap();
    assert_eq!(again.id, m.id, "the first ack was lost, not the message");
    assert_eq!(
        code(send(&e, "alice", chat, "c2", "hi").await),
        C::Forbidden
    );
}

#[tokio::test]
async fn send_assigns_seq_and_is_idempotent() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let mut bob = Client::connect(&e, "bob").await;
    let m1 = send(&e, "alice", chat, "c1", "  hello  ").await.unwrap();
    assert_eq!((m1.seq, m1.updated_seq), (1, 1));
    assert_eq!(m1.content.as_deref(), Some("hello"), "stored trimmed");
    let again = send(&e, "alice", chat, "c1", "different text")
        .await
        .unwrap();
    assert_eq!((again.id, again.seq), (m1.id, 1));
    let m2 = send(&e, "alice", chat, "c2", "second").await.unwrap();
    assert_eq!(m2.seq, 2);
    // bob saw each message once
    let got: Vec<Value> = bob
        .drain()
        .into_iter()
        .filter(|f| f["type"] == "message_received")
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["data"]["seq"], 1);
    assert_eq!(got[1]["data"]["seq"], 2);
    // the same client_msg_id in another chat is a conflict
    let other = direct(&e, "alice", "carol").await;
    assert_eq!(code(send(&e, "alice", other, "c1", "x").await), C::Conflict);
}

#[tokio::test]
async fn send_validates_content() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    assert_eq!(
        code(send(&e, "alice", chat, "c", "   ").await),
        C::BadRequest
    );
    assert_eq!(
        code(send(&e, "alice", chat, "c", "bell\u{7}").await),
        C::BadRequest
    );
    assert_eq!(
        code(send(&e, "alice", chat, "c", &"x".repeat(8193)).await),
        C::BadRequest
    );
    assert!(
        send(&e, "alice", chat, "c", &"é".repeat(8192))
            .await
            .is_ok()
    );
    assert_eq!(code(send(&e, "alice", chat, "", "x").await), C::BadRequest);
    assert_eq!(
        code(send(&e, "alice", chat, &"k".repeat(65), "x").await),
        C::BadRequest
    );
    let mut sys = SendMessage::text(chat, "s", "x");
    sys.kind = Some(MessageType::System);
    assert_eq!(code(e.send(&actor("alice"), sys).await), C::BadRequest);
    let mut no_content = SendMessage::text(chat, "n", "x");
    no_content.content = None;
    assert_eq!(
        code(e.send(&actor("alice"), no_content).await),
        C::BadRequest
    );
    // nothing was stored by the refused sends
    assert_eq!(
        e.get_chat(&actor("alice"), chat)
            .await
            .unwrap()
            .chat
            .last_seq,
        1
    );
}

#[tokio::test]
async fn outsiders_get_not_found() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let m = send(&e, "alice", chat, "c1", "private").await.unwrap();
    let eve = actor("eve");
    assert_eq!(code(e.get_chat(&eve, chat).await), C::NotFound);
    assert_eq!(code(send(&e, "eve", chat, "e1", "hi").await), C::NotFound);
    assert_eq!(code(e.get_message(&eve, m.id).await), C::NotFound);
    assert_eq!(code(e.edit(&eve, m.id, "x").await), C::NotFound);
    assert_eq!(code(e.delete(&eve, m.id).await), C::NotFound);
    assert_eq!(code(e.react(&eve, m.id, "👍").await), C::NotFound);
    assert_eq!(code(e.report(&eve, m.id, "spam").await), C::NotFound);
    assert_eq!(
        code(e.history(&eve, chat, HistoryRequest::default()).await),
        C::NotFound
    );
    assert_eq!(
        code(e.mark(&eve, chat, Receipt::Read, 1).await),
        C::NotFound
    );
    assert_eq!(
        code(
            e.add_participant(&eve, chat, &uid("eve"), Role::Member)
                .await
        ),
        C::NotFound
    );
    assert!(
        e.list_chats(
            &eve,
            ChatListQuery {
                after: None,
                limit: 50
            }
        )
        .await
        .unwrap()
        .chats
        .is_empty()
    );
}

#[tokio::test]
async fn replies_stay_within_their_chat() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let other = direct(&e, "alice", "carol").await;
    let elsewhere = send(&e, "alice", other, "o1", "x").await.unwrap();
    let first = send(&e, "alice", chat, "c1", "q").await.unwrap();
    let mut reply = SendMessage::text(chat, "c2", "a");
    reply.reply_to = Some(first.id);
    assert_eq!(
        e.send(&actor("bob"), reply).await.unwrap().reply_to,
        Some(first.id)
    );
    let mut bad = SendMessage::text(chat, "c3", "a");
    bad.reply_to = Some(elsewhere.id);
    assert_eq!(code(e.send(&actor("alice"), bad).await), C::NotFound);
}

#[tokio::test]
async fn media_messages_need_the_senders_upload_to_that_chat() {
    let (e, store) = engine_with(EngineConfig::default()).await;
    let chat = direct(&e, "alice", "bob").await;
    let mine = image_upload("alice", chat);
    let bobs = image_upload("bob", chat);
    store.insert_media(mine.clone()).await.unwrap();
    store.insert_media(bobs.clone()).await.unwrap();
    let image = |cid: &str, media| SendMessage {
        chat_id: chat,
        client_msg_id: cid.into(),
        kind: Some(MessageType::Image),
        content: None,
        media_id: media,
        reply_to: None,
        resource: None,
    };
    let m = e
        .send(&actor("alice"), image("i1", Some(mine.id)))
        .await
        .unwrap();
    let media = m.media.unwrap();
    assert_eq!(media.url, format!("/api/v1/chat/media/{}", mine.id));
    assert!(media.thumbnail_url.is_some());
    assert_eq!(
        code(e.send(&actor("alice"), image("i2", Some(bobs.id))).await),
        C::NotFound
    );
    assert_eq!(
        code(e.send(&actor("alice"), image("i3", None)).await),
        C::BadRequest
    );
    let mut text_with_media = SendMessage::text(chat, "t", "x");
    text_with_media.media_id = Some(mine.id);
    assert_eq!(
        code(e.send(&actor("alice"), text_with_media).await),
        C::BadRequest
    );
}

#[tokio::test]
async fn e2ee_content_is_opaque() {
    let e = engine().await;
    let chat = e
        .create_direct(&actor("alice"), &uid("bob"), Encryption::E2ee)
        .await
        .unwrap()
        .chat
        .chat
        .id;
    let m = send(&e, "alice", chat, "c1", "  base64+/=  \u{1}")
        .await
        .unwrap();
    assert_eq!(
        m.content.as_deref(),
        Some("  base64+/=  \u{1}"),
        "ciphertext is stored as sent"
    );
}

// --- edits, deletions, reactions ------------------------------------------

#[tokio::test]
async fn edit_and_delete_rules() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let mut bob = Client::connect(&e, "bob").await;
    let m = send(&e, "alice", chat, "c1", "helo").await.unwrap();
    assert_eq!(code(e.edit(&actor("bob"), m.id, "x").await), C::Forbidden);
    let edited = e.edit(&actor("alice"), m.id, "hello").await.unwrap();
    assert_eq!((edited.seq, edited.updated_seq), (1, 2));
    assert!(edited.edited_at.is_some());
    assert_eq!(
        code(e.delete(&actor("bob"), m.id).await),
        C::Forbidden,
        "direct chats have no moderators"
    );
    let deleted = e.delete(&actor("alice"), m.id).await.unwrap();
    assert!(deleted.deleted && deleted.content.is_none());
    assert_eq!(deleted.updated_seq, 3);
    assert_eq!(
        code(e.edit(&actor("alice"), m.id, "again").await),
        C::Conflict
    );
    assert_eq!(
        e.delete(&actor("alice"), m.id).await.unwrap().updated_seq,
        3,
        "idempotent"
    );
    let types = bob.types();
    assert_eq!(
        types,
        vec!["message_received", "message_edited", "message_deleted"]
    );
}

#[tokio::test]
async fn group_moderators_delete_others_messages() {
    let e = engine().await;
    let g = group(&e, "admin", &["mod", "m1", "m2"]).await;
    e.set_role(&actor("admin"), g, &uid("mod"), Role::Moderator)
        .await
        .unwrap();
    let a = send(&e, "m1", g, "a", "x").await.unwrap();
    let b = send(&e, "m1", g, "b", "y").await.unwrap();
    assert_eq!(code(e.delete(&actor("m2"), a.id).await), C::Forbidden);
    assert!(e.delete(&actor("mod"), a.id).await.unwrap().deleted);
    assert!(e.delete(&actor("admin"), b.id).await.unwrap().deleted);
}

#[tokio::test]
async fn reactions() {
    let e = engine_with(EngineConfig {
        max_reactions_per_message: 2,
        ..Default::default()
    })
    .await
    .0;
    let chat = direct(&e, "alice", "bob").await;
    let mut alice = Client::connect(&e, "alice").await;
    let m = send(&e, "alice", chat, "c1", "hi").await.unwrap();
    let r = e.react(&actor("bob"), m.id, "👍").await.unwrap();
    assert_eq!(r.reactions["👍"], vec![uid("bob")]);
    assert_eq!(r.updated_seq, 2);
    assert_eq!(
        e.react(&actor("bob"), m.id, "👍")
            .await
            .unwrap()
            .updated_seq,
        2,
        "no change"
    );
    e.react(&actor("alice"), m.id, "👍").await.unwrap();
    e.react(&actor("alice"), m.id, "❤️").await.unwrap();
    assert_eq!(
        code(e.react(&actor("alice"), m.id, "🎉").await),
        C::Conflict
    );
    let r = e.unreact(&actor("bob"), m.id, "👍").await.unwrap();
    assert_eq!(r.reactions["👍"], vec![uid("alice")]);
    assert_eq!(
        code(e.react(&actor("bob"), m.id, "bad emoji").await),
        C::BadRequest
    );
    let added = alice.next_of("reaction_added").await;
    assert_eq!(added["emoji"], "👍");
    assert_eq!(added["updated_seq"], 2);
    assert_eq!(alice.next_of("reaction_removed").await["user_id"], "bob");
}

// --- history, sync, receipts -----------------------------------------------

#[tokio::test]
async fn history_pages_newest_first() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    for i in 0..7 {
        send(&e, "alice", chat, &format!("c{i}"), "x")
            .await
            .unwrap();
    }
    let req = |before_seq, limit| HistoryRequest {
        before_seq,
        after_seq: None,
        limit,
    };
    let p = e
        .history(&actor("bob"), chat, req(None, Some(3)))
        .await
        .unwrap();
    assert_eq!(
        p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![7, 6, 5]
    );
    assert!(p.has_more);
    let p = e
        .history(&actor("bob"), chat, req(Some(3), Some(3)))
        .await
        .unwrap();
    assert_eq!(
        p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2, 1]
    );
    assert!(!p.has_more);
    assert_eq!(
        code(e.history(&actor("bob"), chat, req(None, Some(0))).await),
        C::BadRequest
    );
    assert_eq!(
        code(e.history(&actor("bob"), chat, req(None, Some(201))).await),
        C::BadRequest
    );
}

#[tokio::test]
async fn sync_brings_everything_an_offline_device_missed() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let g = group(&e, "alice", &["bob"]).await;
    let m1 = send(&e, "alice", chat, "c1", "one").await.unwrap();
    let bob = actor("bob");
    let first = e.sync(&bob, &HashMap::new()).await.unwrap();
    assert_eq!(first.chats.len(), 2);
    let cursor: HashMap<ChatId, u64> = first
        .chats
        .iter()
        .map(|c| {
            (
                c.chat.chat.id,
                c.changes.last().map_or(0, |m| m.updated_seq),
            )
        })
        .collect();
    // while bob is offline: new message, edit, reaction, deletion, membership
    let m2 = send(&e, "alice", chat, "c2", "two").await.unwrap();
    e.edit(&actor("alice"), m1.id, "one!").await.unwrap();
    e.react(&actor("alice"), m2.id, "👍").await.unwrap();
    e.delete(&actor("alice"), m2.id).await.unwrap();
    e.add_participant(&actor("alice"), g, &uid("carol"), Role::Member)
        .await
        .unwrap();
    let again = e.sync(&bob, &cursor).await.unwrap();
    let direct_changes = &again
        .chats
        .iter()
        .find(|c| c.chat.chat.id == chat)
        .unwrap()
        .changes;
    let seqs: Vec<(u64, u64, bool)> = direct_changes
        .iter()
        .map(|m| (m.seq, m.updated_seq, m.deleted))
        .collect();
    assert_eq!(
        seqs,
        vec![(1, 3, false), (2, 5, true)],
        "edits and deletions arrive as the current state"
    );
    let group_changes = &again
        .chats
        .iter()
        .find(|c| c.chat.chat.id == g)
        .unwrap()
        .changes;
    assert_eq!(group_changes.len(), 1);
    assert_eq!(group_changes[0].kind, MessageType::System);
    assert!(
        matches!(&group_changes[0].system, Some(SystemEvent::ParticipantAdded { user_id, .. }) if user_id.as_str() == "carol")
    );
    // removal shows as removed_chat_ids
    e.remove_participant(&actor("alice"), g, &uid("bob"))
        .await
        .unwrap();
    let after = e.sync(&bob, &cursor).await.unwrap();
    assert_eq!(after.removed_chat_ids, vec![g]);
}

#[tokio::test]
async fn sync_pages_long_logs() {
    let e = engine_with(EngineConfig {
        sync_page: 3,
        ..Default::default()
    })
    .await
    .0;
    let chat = direct(&e, "alice", "bob").await;
    for i in 0..7 {
        send(&e, "alice", chat, &format!("c{i}"), "x")
            .await
            .unwrap();
    }
    let mut cursors = HashMap::new();
    let mut seen = Vec::new();
    loop {
        let r = e.sync(&actor("bob"), &cursors).await.unwrap();
        let c = &r.chats[0];
        seen.extend(c.changes.iter().map(|m| m.seq));
        if let Some(last) = c.changes.last() {
            cursors.insert(chat, last.updated_seq);
        }
        if !c.has_more {
            break;
        }
    }
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());
}

#[tokio::test]
async fn watermarks_and_unread_counts() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let mut alice = Client::connect(&e, "alice").await;
    for i in 0..3 {
        send(&e, "alice", chat, &format!("c{i}"), "x")
            .await
            .unwrap();
    }
    send(&e, "bob", chat, "b", "mine").await.unwrap();
    let bob = actor("bob");
    assert_eq!(e.get_chat(&bob, chat).await.unwrap().unread_count, 3);
    assert_eq!(
        e.get_chat(&actor("alice"), chat)
            .await
            .unwrap()
            .unread_count,
        1
    );
    e.mark(&bob, chat, Receipt::Delivered, 3).await.unwrap();
    e.mark(&bob, chat, Receipt::Read, 2).await.unwrap();
    assert_eq!(e.get_chat(&bob, chat).await.unwrap().unread_count, 1);
    e.mark(&bob, chat, Receipt::Read, 1).await.unwrap(); // backwards: no change, no event
    e.mark(&bob, chat, Receipt::Read, 99).await.unwrap(); // clamped to last_seq
    let view = e.get_chat(&bob, chat).await.unwrap();
    let me = view.chat.participant(&uid("bob")).unwrap();
    assert_eq!(
        (me.delivered_seq, me.read_seq, view.unread_count),
        (4, 4, 0)
    );
    let moves: Vec<(String, u64)> = alice
        .drain()
        .into_iter()
        .filter(|f| f["type"] == "message_delivered" || f["type"] == "message_read")
        .map(|f| {
            (
                f["type"].as_str().unwrap().to_owned(),
                f["data"]["up_to_seq"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("message_delivered", 3),
        ("message_read", 2),
        ("message_delivered", 4),
        ("message_read", 4),
    ];
    let expected: Vec<(String, u64)> = expected.iter().map(|(t, s)| (t.to_string(), *s)).collect();
    assert_eq!(moves, expected, "only forward moves are announced");
    let e2 = engine().await;
    let chat2 = direct(&e2, "alice", "bob").await;
    let mut a2 = Client::connect(&e2, "alice").await;
    send(&e2, "alice", chat2, "c", "x").await.unwrap();
    e2.mark(&bob, chat2, Receipt::Read, 1).await.unwrap();
    e2.mark(&bob, chat2, Receipt::Read, 1).await.unwrap();
    let types = a2.types();
    assert_eq!(
        types,
        vec!["message_received", "message_delivered", "message_read"]
    );
}

#[tokio::test]
async fn read_receipts_can_be_private() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob2 = Client::connect_with(&e, "bob", "tablet", 64).await;
    alice.drain(); // bob's user_online
    send(&e, "alice", chat, "c", "x").await.unwrap();
    let bob = actor("bob");
    let p = e
        .set_privacy(
            &bob,
            PrivacyPatch {
                read_receipts: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(!p.read_receipts && p.typing && p.presence);
    e.mark(&bob, chat, Receipt::Read, 1).await.unwrap();
    assert_eq!(alice.types(), vec!["message_received", "message_delivered"]);
    assert_eq!(
        bob2.types(),
        vec!["message_received", "message_delivered", "message_read"]
    );
    // Nor does the chat view tell: Alice sees no read watermark of Bob's,
    // Bob sees his own.
    let read_seq_of =
        |view: &ChatView, user: &str| view.chat.participant(&uid(user)).map(|p| p.read_seq);
    let seen_by_alice = e.get_chat(&actor("alice"), chat).await.unwrap();
    assert_eq!(read_seq_of(&seen_by_alice, "bob"), Some(0));
    let seen_by_bob = e.get_chat(&bob, chat).await.unwrap();
    assert_eq!(read_seq_of(&seen_by_bob, "bob"), Some(1));
    let listed = e
        .list_chats(
            &actor("alice"),
            ChatListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap();
    assert_eq!(read_seq_of(&listed.chats[0], "bob"), Some(0));
}

// --- groups ---------------------------------------------------------------

#[tokio::test]
async fn group_permissions_follow_the_protocol() {
    let e = engine().await;
    let g = group(&e, "admin", &["mod", "m1"]).await;
    let (admin, moder, m1) = (actor("admin"), actor("mod"), actor("m1"));
    assert_eq!(
        code(e.set_role(&moder, g, &uid("mod"), Role::Moderator).await),
        C::Forbidden
    );
    e.set_role(&admin, g, &uid("mod"), Role::Moderator)
        .await
        .unwrap();
    // add: admin any role, moderator members only, member never
    assert_eq!(
        code(e.add_participant(&m1, g, &uid("x1"), Role::Member).await),
        C::Forbidden
    );
    assert_eq!(
        code(
            e.add_participant(&moder, g, &uid("x1"), Role::Moderator)
                .await
        ),
        C::Forbidden
    );
    e.add_participant(&moder, g, &uid("x1"), Role::Member)
        .await
        .unwrap();
    e.add_participant(&admin, g, &uid("x2"), Role::Moderator)
        .await
        .unwrap();
    assert_eq!(
        code(e.add_participant(&admin, g, &uid("x2"), Role::Member).await),
        C::Conflict
    );
    // remove: moderator members only, member only self, admin anyone
    assert_eq!(
        code(e.remove_participant(&moder, g, &uid("x2")).await),
        C::Forbidden
    );
    assert_eq!(
        code(e.remove_participant(&m1, g, &uid("x1")).await),
        C::Forbidden
    );
    e.remove_participant(&moder, g, &uid("x1")).await.unwrap();
    e.remove_participant(&m1, g, &uid("m1")).await.unwrap();
    e.remove_participant(&admin, g, &uid("x2")).await.unwrap();
    assert_eq!(
        code(e.remove_participant(&admin, g, &uid("nobody")).await),
        C::NotFound
    );
    // update_group: admins only
    let patch = GroupPatch {
        name: Some("renamed".into()),
        ..Default::default()
    };
    assert_eq!(
        code(e.update_group(&moder, g, patch.clone()).await),
        C::Forbidden
    );
    assert_eq!(
        e.update_group(&admin, g, patch)
            .await
            .unwrap()
            .chat
            .name
            .as_deref(),
        Some("renamed")
    );
    assert_eq!(
        code(e.update_group(&admin, g, GroupPatch::default()).await),
        C::BadRequest
    );
    // direct chats have no membership operations
    let d = direct(&e, "admin", "mod").await;
    assert_eq!(
        code(e.add_participant(&admin, d, &uid("z"), Role::Member).await),
        C::BadRequest
    );
}

#[tokio::test]
async fn the_last_admin_cannot_step_down_and_leaving_hands_over() {
    let e = engine().await;
    let g = group(&e, "admin", &["mod", "m1"]).await;
    let admin = actor("admin");
    e.set_role(&admin, g, &uid("mod"), Role::Moderator)
        .await
        .unwrap();
    assert_eq!(
        code(e.set_role(&admin, g, &uid("admin"), Role::Member).await),
        C::Conflict
    );
    e.remove_participant(&admin, g, &uid("admin"))
        .await
        .unwrap();
    let chat = e.get_chat(&actor("m1"), g).await.unwrap().chat;
    assert_eq!(chat.participant(&uid("mod")).unwrap().role, Role::Admin);
}

#[tokio::test]
async fn group_size_is_limited() {
    let e = engine_with(EngineConfig {
        max_group_members: 3,
        ..Default::default()
    })
    .await
    .0;
    let too_many = NewGroup {
        name: "g".into(),
        member_ids: vec![uid("a"), uid("b"), uid("c")],
        ..Default::default()
    };
    assert_eq!(
        code(e.create_group(&actor("admin"), too_many).await),
        C::BadRequest
    );
    let g = group(&e, "admin", &["a", "b"]).await;
    assert_eq!(
        code(
            e.add_participant(&actor("admin"), g, &uid("c"), Role::Member)
                .await
        ),
        C::Conflict
    );
}

#[tokio::test]
async fn new_members_do_not_read_what_came_before() {
    let e = engine().await;
    let g = group(&e, "admin", &["m1"]).await;
    let old = send(&e, "m1", g, "old", "before you came").await.unwrap();
    e.add_participant(&actor("admin"), g, &uid("new"), Role::Member)
        .await
        .unwrap();
    send(&e, "m1", g, "new", "welcome").await.unwrap();
    let newbie = actor("new");
    let h = e
        .history(&newbie, g, HistoryRequest::default())
        .await
        .unwrap();
    assert_eq!(h.messages.len(), 2, "the join and what follows");
    assert_eq!(code(e.get_message(&newbie, old.id).await), C::NotFound);
    assert_eq!(e.get_chat(&newbie, g).await.unwrap().unread_count, 1);
}

#[tokio::test]
async fn membership_events() {
    let e = engine().await;
    let g = group(&e, "admin", &["m1"]).await;
    let mut m1 = Client::connect(&e, "m1").await;
    let mut newbie = Client::connect(&e, "new").await;
    e.add_participant(&actor("admin"), g, &uid("new"), Role::Member)
        .await
        .unwrap();
    assert_eq!(m1.types(), vec!["message_received", "participant_added"]);
    assert_eq!(
        newbie.types(),
        vec!["message_received", "participant_added", "chat_created"]
    );
    e.set_role(&actor("admin"), g, &uid("m1"), Role::Moderator)
        .await
        .unwrap();
    let updated = m1.next_of("chat_updated").await;
    assert_eq!(updated["id"], g.to_string());
    e.remove_participant(&actor("admin"), g, &uid("new"))
        .await
        .unwrap();
    assert_eq!(
        newbie.drain().last().unwrap()["type"],
        "participant_removed"
    );
}

// --- typing and presence -----------------------------------------------------

#[tokio::test(start_paused = true)]
async fn typing_goes_to_open_chats_and_expires() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let mut alice = Client::connect(&e, "alice").await;
    let mut bob = Client::connect(&e, "bob").await;
    let mut bob_closed = Client::connect_with(&e, "bob", "phone", 64).await;
    bob.session.join_chat(chat).await.unwrap();
    alice.session.join_chat(chat).await.unwrap();
    alice.drain();
    bob.drain();
    alice.session.start_typing(chat).await.unwrap();
    assert_eq!(bob.next_of("user_typing").await["user_id"], "alice");
    assert!(alice.types().is_empty(), "not the typist");
    assert!(
        bob_closed.types().iter().all(|t| t != "user_typing"),
        "only where the chat is open"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    alice.session.start_typing(chat).await.unwrap(); // renews, no second event
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        bob.types().is_empty(),
        "renewed at 4 s, so still typing at 8 s"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(bob.types(), vec!["user_stopped_typing"]);
    // explicit stop and stop-on-send
    alice.session.start_typing(chat).await.unwrap();
    send(&e, "alice", chat, "c", "x").await.unwrap();
    assert_eq!(
        bob.types(),
        vec!["user_typing", "message_received", "user_stopped_typing"]
    );
    bob.session.leave_chat(chat);
    alice.session.start_typing(chat).await.unwrap();
    assert!(bob.types().is_empty(), "left the chat on this connection");
}

#[tokio::test(start_paused = true)]
async fn presence_with_grace_and_blocks() {
    let e = engine().await;
    direct(&e, "alice", "bob").await;
    direct(&e, "alice", "carol").await;
    direct(&e, "alice", "dave").await;
    e.block(&actor("dave"), &uid("alice")).await.unwrap();
    let mut bob = Client::connect(&e, "bob").await;
    let mut dave = Client::connect(&e, "dave").await;
    let alice = Client::connect(&e, "alice").await;
    assert_eq!(bob.next_of("user_online").await["user_id"], "alice");
    // a second device does not announce again; closing one keeps her online
    let alice2 = Client::connect_with(&e, "alice", "tablet", 64).await;
    alice2.session.close().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bob.types().is_empty());
    // a reconnect within the grace period does not flap
    alice.session.close().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alice = Client::connect(&e, "alice").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bob.types().is_empty());
    alice.session.close().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let off = bob.next_of("user_offline").await;
    assert_eq!(off["user_id"], "alice");
    assert!(off["last_seen"].is_string());
    assert!(dave.types().is_empty(), "no presence across a block");
    // presence_update lists contacts with their state
    let mut carol = Client::connect(&e, "carol").await;
    let _ = &mut carol;
    let (tx, mut out) = outbox(16);
    let s = e
        .connect(actor("alice"), DeviceId::default_device(), Arc::new(tx))
        .await
        .unwrap();
    let Some(Outgoing::Frame(f)) = out.next().await else {
        panic!()
    };
    let v = json_of(&f);
    let users = v["data"]["users"].as_array().unwrap();
    let bob_entry = users.iter().find(|u| u["user_id"] == "bob").unwrap();
    assert_eq!(bob_entry["online"], true);
    assert!(users.iter().all(|u| u["user_id"] != "dave"));
    s.close().await;
}

#[tokio::test(start_paused = true)]
async fn explicit_status_and_private_presence() {
    let e = engine().await;
    direct(&e, "alice", "bob").await;
    let mut bob = Client::connect(&e, "bob").await;
    let alice = Client::connect(&e, "alice").await;
    bob.next_of("user_online").await;
    alice.session.set_status(false).await.unwrap();
    assert_eq!(bob.next_of("user_offline").await["user_id"], "alice");
    alice.session.set_status(true).await.unwrap();
    bob.next_of("user_online").await;
    e.set_privacy(
        &actor("alice"),
        PrivacyPatch {
            presence: Some(false),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    alice.session.close().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(bob.types().is_empty(), "presence turned off");
}

// --- safety, moderation, hooks ----------------------------------------------

#[tokio::test]
async fn suspension_closes_connections_and_refuses_access() {
    let e = engine().await;
    let mut eve = Client::connect(&e, "eve").await;
    assert_eq!(
        code(e.suspend(&actor("bob"), &uid("eve"), None).await),
        C::Forbidden,
        "admins only"
    );
    e.suspend(&Actor::admin(uid("root")), &uid("eve"), None)
        .await
        .unwrap();
    assert_eq!(
        eve.next().await["closed"],
        crate::transport::CLOSE_SUSPENDED
    );
    assert_eq!(code(e.authorize(uid("eve"), false).await), C::Forbidden);
    e.unsuspend(&Actor::admin(uid("root")), &uid("eve"))
        .await
        .unwrap();
    assert!(e.authorize(uid("eve"), false).await.is_ok());
}

#[tokio::test]
async fn reports_and_their_resolution() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let m = send(&e, "alice", chat, "c", "nasty").await.unwrap();
    let r1 = e.report(&actor("bob"), m.id, "abuse").await.unwrap();
    assert_eq!(
        e.report(&actor("bob"), m.id, "abuse again").await.unwrap(),
        r1,
        "one open report per reporter"
    );
    assert_eq!(
        code(e.report(&actor("bob"), m.id, "  ").await),
        C::BadRequest
    );
    e.delete(&actor("alice"), m.id).await.unwrap();
    let admin = Actor::admin(uid("root"));
    assert_eq!(
        code(e.list_reports(&actor("bob"), ReportQuery::new(10)).await),
        C::Forbidden
    );
    let open = e
        .list_reports(
            &admin,
            ReportQuery::new(10).status(Some(ReportStatus::Open)),
        )
        .await
        .unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        open[0].content.as_deref(),
        Some("nasty"),
        "evidence survives deletion"
    );
    let done = e
        .resolve_report(&admin, r1, ModerationAction::Dismiss, Some("warned".into()))
        .await
        .unwrap();
    assert_eq!(done.resolved_by, Some(uid("root")));
    assert_eq!(done.status, ReportStatus::Dismissed);
    assert_eq!(
        code(
            e.resolve_report(&admin, r1, ModerationAction::Dismiss, None)
                .await
        ),
        C::Conflict
    );
    // acting on a report: delete the message, suspend the sender
    let m2 = send(&e, "alice", chat, "c2", "worse").await.unwrap();
    let r2 = e.report(&actor("bob"), m2.id, "abuse").await.unwrap();
    let done = e
        .resolve_report(&admin, r2, ModerationAction::DeleteMessage, None)
        .await
        .unwrap();
    assert_eq!(done.status, ReportStatus::Resolved);
    assert!(e.get_message(&actor("bob"), m2.id).await.unwrap().deleted);
    let m3 = send(&e, "alice", chat, "c3", "again").await.unwrap();
    let r3 = e.report(&actor("bob"), m3.id, "abuse").await.unwrap();
    e.resolve_report(
        &admin,
        r3,
        ModerationAction::SuspendUser { until: None },
        None,
    )
    .await
    .unwrap();
    assert_eq!(code(e.authorize(uid("alice"), false).await), C::Forbidden);
}

#[derive(Debug)]
struct WordHook;

#[async_trait::async_trait]
impl MessageHook for WordHook {
    async fn before_store(&self, ctx: &HookContext<'_>) -> Result<HookDecision> {
        Ok(match ctx.content {
            Some(c) if c.contains("forbidden") => HookDecision::Reject {
                reason: "not here".into(),
            },
            Some(c) if c.contains("hopeless") => HookDecision::Flag {
                reason: "crisis".into(),
            },
            _ => HookDecision::Allow,
        })
    }
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Notification>>);

#[async_trait::async_trait]
impl Notifier for Recorder {
    async fn notify(&self, batch: Vec<Notification>) -> Result<()> {
        self.0.lock().unwrap().extend(batch);
        Ok(())
    }
}

impl Recorder {
    /// What was pushed, once the engine's push task had time to run.
    async fn pushed(&self) -> Vec<Notification> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.0.lock().unwrap().clone()
    }
}

/// An engine with `config` whose pushes a [`Recorder`] keeps.
async fn pushing(config: EngineConfig) -> (ChatEngine, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let engine = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .notifier(recorder.clone())
        .config(config)
        .build()
        .await
        .unwrap();
    (engine, recorder)
}

#[tokio::test]
async fn hooks_reject_or_flag_and_offline_users_get_pushed() {
    let recorder = Arc::new(Recorder::default());
    let e = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .hook(Arc::new(WordHook))
        .notifier(recorder.clone())
        .build()
        .await
        .unwrap();
    let chat = direct(&e, "alice", "bob").await;
    let _carol_online = Client::connect(&e, "carol").await;
    assert_eq!(
        code(send(&e, "alice", chat, "c1", "forbidden word").await),
        C::Forbidden
    );
    let m = send(&e, "alice", chat, "c2", "I feel hopeless")
        .await
        .unwrap();
    let reports = e
        .list_reports(&Actor::admin(uid("root")), ReportQuery::new(10))
        .await
        .unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].reporter_id.as_str(), SYSTEM_REPORTER);
    assert_eq!(reports[0].message_id, m.id);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let pushed = recorder.0.lock().unwrap().clone();
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].user_id.as_str(), "bob");
    assert_eq!(pushed[0].message_id, m.id);
}

#[tokio::test]
async fn push_previews_only_when_configured_and_only_readable_chats() {
    let (e, recorder) = pushing(EngineConfig {
        push_preview_chars: 4,
        ..Default::default()
    })
    .await;
    let plain = direct(&e, "alice", "bob").await;
    let sealed = e
        .create_direct(&actor("alice"), &uid("carol"), Encryption::E2ee)
        .await
        .unwrap()
        .chat
        .chat
        .id;
    send(&e, "alice", plain, "c1", "héllo wörld").await.unwrap();
    send(&e, "alice", sealed, "c2", "b64ciphertext")
        .await
        .unwrap();
    let pushed = recorder.pushed().await;
    let preview_of = |user: &str| {
        pushed
            .iter()
            .find(|n| n.user_id.as_str() == user)
            .map(|n| n.preview.clone())
    };
    assert_eq!(preview_of("bob"), Some(Some("héll".to_owned())));
    assert_eq!(preview_of("carol"), Some(None), "e2ee: never a preview");

    let (e, recorder) = pushing(EngineConfig::default()).await;
    let chat = direct(&e, "alice", "bob").await;
    send(&e, "alice", chat, "c1", "secret text").await.unwrap();
    let pushed = recorder.pushed().await;
    assert_eq!(pushed.len(), 1);
    assert_eq!(pushed[0].preview, None, "no preview by default");
}

#[tokio::test]
async fn a_connected_user_who_said_user_offline_gets_no_push() {
    let (e, recorder) = pushing(EngineConfig::default()).await;
    let chat = direct(&e, "alice", "bob").await;
    let bob = Client::connect(&e, "bob").await;
    bob.session.set_status(false).await.unwrap();
    send(&e, "alice", chat, "c1", "still there?").await.unwrap();
    assert!(
        recorder.pushed().await.is_empty(),
        "a live connection counts, whatever the status"
    );
}

// --- connections ---------------------------------------------------------

#[tokio::test]
async fn slow_consumers_are_closed_not_buffered() {
    let e = engine().await;
    let g = group(&e, "alice", &["bob"]).await;
    let (tx, mut out) = outbox(4);
    let _bob = e
        .connect(actor("bob"), DeviceId::default_device(), Arc::new(tx))
        .await
        .unwrap();
    for i in 0..10 {
        send(&e, "alice", g, &format!("c{i}"), "flood")
            .await
            .unwrap();
    }
    let mut frames = 0;
    loop {
        match out.next().await {
            Some(Outgoing::Frame(_)) => frames += 1,
            Some(Outgoing::Close(code, _)) => {
                assert_eq!(code, crate::transport::CLOSE_TOO_SLOW);
                break;
            }
            None => panic!("no close"),
        }
    }
    assert!(frames <= 4);
    assert_eq!(
        e.hub_stats()
            .slow_closed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn connections_per_user_are_limited() {
    let e = engine_with(EngineConfig {
        max_connections_per_user: 2,
        ..Default::default()
    })
    .await
    .0;
    let _a = Client::connect(&e, "alice").await;
    let _b = Client::connect_with(&e, "alice", "d2", 8).await;
    let (tx, _out) = outbox(8);
    let third = e
        .connect(actor("alice"), DeviceId::default_device(), Arc::new(tx))
        .await;
    assert_eq!(code(third), C::Conflict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_arrive_in_seq_order() {
    let e = engine().await;
    let g = group(&e, "alice", &["bob", "carol"]).await;
    let mut bob = Client::connect_with(&e, "bob", "default", 10_000).await;
    let mut tasks = Vec::new();
    for sender in ["alice", "carol"] {
        for t in 0..8 {
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    send(&e, sender, g, &format!("{sender}-{t}-{i}"), "x")
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seqs: Vec<u64> = bob
        .drain()
        .into_iter()
        .filter(|f| f["type"] == "message_received")
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
}

#[tokio::test]
async fn shutdown_finishes_queued_writes_then_refuses() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let pending: Vec<_> = (0..20)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(async move { send(&e, "alice", chat, &format!("c{i}"), "x").await })
        })
        .collect();
    tokio::task::yield_now().await;
    e.shutdown().await;
    let acked = futures::future::join_all(pending)
        .await
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count() as u64;
    assert_eq!(
        e.inner
            .store
            .get_chat(chat)
            .await
            .unwrap()
            .unwrap()
            .last_seq,
        acked,
        "every ack is stored"
    );
    assert_eq!(
        code(send(&e, "alice", chat, "late", "x").await),
        C::Internal
    );
}

// --- the dispatcher --------------------------------------------------------

#[tokio::test]
async fn dispatcher_answers_every_command_with_an_id() {
    let e = engine().await;
    let alice = Client::connect(&e, "alice").await;
    let r = alice
        .cmd(serde_json::json!({"type": "ping", "id": "p1"}))
        .await;
    assert_eq!(
        r,
        serde_json::json!({"type": "ack", "id": "p1", "data": {}})
    );
    let r = alice
        .cmd(serde_json::json!({"type": "create_direct", "id": "r1", "data": {"user_id": "bob"}}))
        .await;
    assert_eq!(r["type"], "ack");
    let chat_id = r["data"]["chat"]["id"].as_str().unwrap().to_owned();
    assert_eq!(r["data"]["chat"]["type"], "direct");
    assert_eq!(r["data"]["chat"]["unread_count"], 0);
    let r = alice
        .cmd(serde_json::json!({"type": "send_message", "id": "r2",
            "data": {"chat_id": chat_id, "client_msg_id": "c-1", "content": "hello"}}))
        .await;
    assert_eq!(r["data"]["message"]["seq"], 1);
    assert_eq!(r["data"]["message"]["type"], "text");
    assert_eq!(r["data"]["message"]["client_msg_id"], "c-1");
    let r = alice
        .cmd(serde_json::json!({"type": "history", "id": "r3", "data": {"chat_id": chat_id}}))
        .await;
    assert_eq!(r["data"]["has_more"], false);
    let r = alice
        .cmd(serde_json::json!({"type": "sync", "id": "r4", "data": {"cursors": {}}}))
        .await;
    assert_eq!(r["data"]["chats"][0]["changes"][0]["content"], "hello");
    // errors carry the id and a code
    let r = alice
        .cmd(serde_json::json!({"type": "nope", "id": "r5"}))
        .await;
    assert_eq!(
        (
            r["type"].as_str(),
            r["id"].as_str(),
            r["data"]["code"].as_str()
        ),
        (Some("error"), Some("r5"), Some("bad_request"))
    );
    let r = alice
        .cmd(serde_json::json!({"type": "send_message", "id": "r6", "data": {"chat_id": chat_id}}))
        .await;
    assert_eq!(r["data"]["code"], "bad_request");
    let r = alice
        .cmd(serde_json::json!({"type": "join_chat", "id": "r7", "data": {"chat_id": ChatId::new()}}))
        .await;
    assert_eq!(r["data"]["code"], "not_found");
    let raw = crate::protocol::dispatch_text(&alice.session, "{not json")
        .await
        .unwrap();
    let r = json_of(&raw);
    assert_eq!(r["type"], "error");
    assert!(r.get("id").is_none());
    // without id: success is silent
    assert!(
        crate::protocol::dispatch_text(&alice.session, r#"{"type":"ping"}"#)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn muted_chats_get_no_push_and_hidden_chats_come_back_with_activity() {
    let (e, recorder) = pushing(EngineConfig::default()).await;
    let chat = direct(&e, "alice", "bob").await;
    let bob = actor("bob");
    let until = Timestamp::now().plus(Duration::from_secs(3600));
    let view = e.set_muted(&bob, chat, Some(until)).await.unwrap();
    assert_eq!(view.muted_until, Some(until));
    send(&e, "alice", chat, "c1", "shh").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(recorder.0.lock().unwrap().is_empty(), "muted: no push");
    e.set_muted(&bob, chat, None).await.unwrap();
    send(&e, "alice", chat, "c2", "now").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(recorder.0.lock().unwrap().len(), 1);

    let list = |e: ChatEngine| async move {
        e.list_chats(
            &actor("bob"),
            ChatListQuery {
                after: None,
                limit: 10,
            },
        )
        .await
        .unwrap()
        .chats
        .len()
    };
    e.hide_chat(&bob, chat).await.unwrap();
    assert_eq!(list(e.clone()).await, 0, "hidden");
    assert_eq!(
        e.history(&bob, chat, HistoryRequest::default())
            .await
            .unwrap()
            .messages
            .len(),
        2,
        "history stays"
    );
    send(&e, "alice", chat, "c3", "hello again").await.unwrap();
    assert_eq!(list(e.clone()).await, 1, "new activity brings it back");
}

#[tokio::test]
async fn a_send_is_acked_with_the_message_its_event_carries() {
    let e = engine().await;
    let mut alice = Client::connect(&e, "alice").await;
    let chat = direct(&e, "alice", "bob").await;
    alice.drain();
    // An id that needs escaping: the ack is written around it by hand.
    let id = "r\"1\\\u{1}é";
    let send = serde_json::json!({"type": "send_message", "id": id,
        "data": {"chat_id": chat, "client_msg_id": "c-1", "content": "hi \"there\"\n"}});
    let ack = alice.cmd(send.clone()).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], id);
    let events = alice.drain();
    let received: Vec<&Value> = events
        .iter()
        .filter(|f| f["type"] == "message_received")
        .collect();
    assert_eq!(received.len(), 1);
    assert_eq!(
        ack["data"],
        serde_json::json!({"message": received[0]["data"]})
    );
    let stored = e
        .history(&actor("alice"), chat, HistoryRequest::default())
        .await
        .unwrap();
    assert_eq!(
        ack["data"]["message"],
        serde_json::to_value(&stored.messages[0]).unwrap()
    );
    // A retry is answered from the store, with the same message.
    let retry = alice.cmd(send).await;
    assert_eq!(retry["data"], ack["data"]);
    assert!(
        alice
            .drain()
            .iter()
            .all(|f| f["type"] != "message_received")
    );
}

// --- audience at commit and the faults around it ----------------------------

/// Eight sends of carol into `chat`, started at once and not awaited.
fn pipelined_sends(
    e: &ChatEngine,
    chat: ChatId,
    round: usize,
) -> Vec<tokio::task::JoinHandle<Result<Message>>> {
    (0..8)
        .map(|i| {
            let e = e.clone();
            tokio::spawn(
                async move { send(&e, "carol", chat, &format!("r{round}-{i}"), "hi").await },
            )
        })
        .collect()
}

/// The seqs the sends were acknowledged with.
async fn acked_seqs(sends: Vec<tokio::task::JoinHandle<Result<Message>>>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for s in sends {
        seqs.push(s.await.unwrap().unwrap().seq);
    }
    seqs
}

/// The seqs of the text messages a client received so far.
fn received_text_seqs(client: &mut Client) -> Vec<u64> {
    client
        .drain()
        .into_iter()
        .filter(|f| f["type"] == "message_received" && f["data"]["type"] == "text")
        .map(|f| f["data"]["seq"].as_u64().unwrap())
        .collect()
}

/// Sends racing a removal: the removed member receives every message
/// logged before the removal and none after it, in every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_gets_nothing_logged_after_the_removal() {
    let e = engine().await;
    for round in 0..20 {
        let chat = group(&e, "alice", &["bob", "carol"]).await;
        let mut bob = Client::connect_with(&e, "bob", &format!("d{round}"), 1024).await;
        let sends = pipelined_sends(&e, chat, round);
        e.remove_participant(&actor("alice"), chat, &uid("bob"))
            .await
            .unwrap();
        let seqs = acked_seqs(sends).await;
        let log = e
            .history(&actor("alice"), chat, HistoryRequest::default())
            .await
            .unwrap()
            .messages;
        let removed_at = log
            .iter()
            .find(|m| {
                matches!(&m.system, Some(SystemEvent::ParticipantRemoved { user_id }) if user_id.as_str() == "bob")
            })
            .unwrap()
            .seq;
        let got = received_text_seqs(&mut bob);
        let expected: Vec<u64> = {
            let mut v: Vec<u64> = seqs.into_iter().filter(|s| *s < removed_at).collect();
            v.sort_unstable();
            v
        };
        assert_eq!(got, expected, "round {round}: bob removed at {removed_at}");
        bob.session.close().await;
    }
}

/// Sends racing an addition: the added member receives every message
/// logged after the addition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_member_gets_everything_logged_after_the_addition() {
    let e = engine().await;
    for round in 0..20 {
        let chat = group(&e, "alice", &["carol"]).await;
        let mut nora = Client::connect_with(&e, "nora", &format!("d{round}"), 1024).await;
        let sends = pipelined_sends(&e, chat, round);
        e.add_participant(&actor("alice"), chat, &uid("nora"), Role::Member)
            .await
            .unwrap();
        let seqs = acked_seqs(sends).await;
        let added_at = e
            .get_chat(&actor("nora"), chat)
            .await
            .unwrap()
            .chat
            .participants[2]
            .visible_from_seq;
        let got = received_text_seqs(&mut nora);
        let mut expected: Vec<u64> = seqs.into_iter().filter(|s| *s > added_at).collect();
        expected.sort_unstable();
        assert_eq!(got, expected, "round {round}: nora added at {added_at}");
        nora.session.close().await;
    }
}

/// Two admins demoting each other at once: one of them stays admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_demotions_leave_an_admin() {
    let e = engine().await;
    for _ in 0..20 {
        let chat = group(&e, "alice", &["bob", "carol"]).await;
        e.set_role(&actor("alice"), chat, &uid("bob"), Role::Admin)
            .await
            .unwrap();
        let (alice, bob) = (actor("alice"), actor("bob"));
        let (a, b) = tokio::join!(
            e.set_role(&alice, chat, &alice.user_id, Role::Member),
            e.set_role(&bob, chat, &bob.user_id, Role::Member),
        );
        assert!(a.is_ok() || b.is_ok(), "one may step down");
        let admins = e
            .get_chat(&actor("carol"), chat)
            .await
            .unwrap()
            .chat
            .participants
            .iter()
            .filter(|p| p.role == Role::Admin)
            .count();
        assert_eq!(admins, 1, "exactly one admin is left");
    }
}

/// Two admins leaving at once: an heir is promoted, in the same batch as
/// the removal that left the group without admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_leaving_at_once_hand_over() {
    let e = engine().await;
    for _ in 0..20 {
        let chat = group(&e, "alice", &["bob", "carol", "dave"]).await;
        e.set_role(&actor("alice"), chat, &uid("bob"), Role::Admin)
            .await
            .unwrap();
        let (alice, bob) = (actor("alice"), actor("bob"));
        let (a, b) = tokio::join!(
            e.remove_participant(&alice, chat, &alice.user_id),
            e.remove_participant(&bob, chat, &bob.user_id),
        );
        a.unwrap();
        b.unwrap();
        let chat = e.get_chat(&actor("carol"), chat).await.unwrap().chat;
        let admins: Vec<_> = chat
            .participants
            .iter()
            .filter(|p| p.role == Role::Admin)
            .map(|p| p.user_id.as_str().to_owned())
            .collect();
        assert_eq!(admins, vec!["carol".to_owned()], "the heir is carol");
    }
}

/// In a direct chat with a block either way, typing, receipts, reactions
/// and edits of one side do not reach the other.
#[tokio::test]
async fn a_block_stops_every_signal_in_the_direct_chat() {
    let e = engine().await;
    let chat = direct(&e, "alice", "bob").await;
    let m = send(&e, "alice", chat, "a1", "hello").await.unwrap();
    let mut alice = Client::connect(&e, "alice").await;
    let bob = Client::connect(&e, "bob").await;
    alice.drain();
    bob.cmd(serde_json::json!({"type": "join_chat", "id": "j", "data": {"chat_id": chat}}))
        .await;
    alice
        .cmd(serde_json::json!({"type": "join_chat", "id": "j", "data": {"chat_id": chat}}))
        .await;
    e.block(&actor("alice"), &uid("bob")).await.unwrap();
    alice.drain();
    bob.session.start_typing(chat).await.unwrap();
    e.mark(&actor("bob"), chat, Receipt::Read, m.seq)
        .await
        .unwrap();
    e.react(&actor("bob"), m.id, "👍").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        alice.types(),
        Vec::<String>::new(),
        "nothing bob does reaches alice, who blocks him"
    );
    // Lifting the block lets signals through again.
    e.unblock(&actor("alice"), &uid("bob")).await.unwrap();
    e.react(&actor("bob"), m.id, "👀").await.unwrap();
    assert_eq!(alice.next_of("reaction_added").await["emoji"], "👀");
}

/// A retry of a stored message does not run the hooks again: a flag files
/// one report, however often the client retries.
#[tokio::test]
async fn hooks_do_not_run_again_on_a_retry() {
    let e = ChatEngine::builder(Arc::new(MemoryStore::new()))
        .hook(Arc::new(WordHook))
        .build()
        .await
        .unwrap();
    let chat = direct(&e, "alice", "bob").await;
    let first = send(&e, "alice", chat, "c1", "I feel hopeless")
        .await
        .unwrap();
    for _ in 0..3 {
        let again = send(&e, "alice", chat, "c1", "I feel hopeless")
            .await
            .unwrap();
        assert_eq!(again, first);
    }
    let reports = e
        .list_reports(&Actor::admin(uid("root")), ReportQuery::new(10))
        .await
        .unwrap();
    assert_eq!(reports.len(), 1, "one report for one message");
}

/// A store that panics while applying, once.
#[derive(Debug)]
struct PanicsOnce {
    inner: MemoryStore,
    armed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl crate::store::Store for PanicsOnce {
    async fn apply(&self, changes: Vec<Change>) -> Vec<Result<crate::store::Committed>> {
        if self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("a bug in the store");
        }
        self.inner.apply(changes).await
    }
    async fn create_chat(&self, chat: NewChat) -> Result<(Chat, bool)> {
        self.inner.create_chat(chat).await
    }
    async fn get_chat(&self, id: ChatId) -> Result<Option<Chat>> {
        self.inner.get_chat(id).await
    }
    async fn find_direct_chat(&self, a: &UserId, b: &UserId) -> Result<Option<Chat>> {
        self.inner.find_direct_chat(a, b).await
    }
    async fn list_chats(&self, user: &UserId, query: ChatListQuery) -> Result<Vec<Chat>> {
        self.inner.list_chats(user, query).await
    }
    async fn set_participant_settings(
        &self,
        chat: ChatId,
        user: &UserId,
        settings: ParticipantSettings,
    ) -> Result<()> {
        self.inner
            .set_participant_settings(chat, user, settings)
            .await
    }
    async fn group_count(&self, user: &UserId) -> Result<u64> {
        self.inner.group_count(user).await
    }
    async fn co_members(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.inner.co_members(user).await
    }
    async fn get_message(&self, id: MessageId) -> Result<Option<Message>> {
        self.inner.get_message(id).await
    }
    async fn find_by_client_id(&self, sender: &UserId, cid: &str) -> Result<Option<Message>> {
        self.inner.find_by_client_id(sender, cid).await
    }
    async fn history(&self, chat: ChatId, query: HistoryQuery) -> Result<Vec<Message>> {
        self.inner.history(chat, query).await
    }
    async fn changes(
        &self,
        chat: ChatId,
        after: u64,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Message>> {
        self.inner.changes(chat, after, from, limit).await
    }
    async fn unread_count(&self, chat: ChatId, user: &UserId, after: u64) -> Result<u64> {
        self.inner.unread_count(chat, user, after).await
    }
    async fn set_block(&self, a: &UserId, b: &UserId, on: bool) -> Result<bool> {
        self.inner.set_block(a, b, on).await
    }
    async fn blocked_by_user(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.inner.blocked_by_user(user).await
    }
    async fn blockers_of(&self, user: &UserId) -> Result<Vec<UserId>> {
        self.inner.blockers_of(user).await
    }
    async fn is_blocked_either(&self, a: &UserId, b: &UserId) -> Result<bool> {
        self.inner.is_blocked_either(a, b).await
    }
    async fn get_user(&self, user: &UserId) -> Result<Option<UserRecord>> {
        self.inner.get_user(user).await
    }
    async fn set_last_seen(&self, user: &UserId, at: Timestamp) -> Result<()> {
        self.inner.set_last_seen(user, at).await
    }
    async fn set_privacy(&self, user: &UserId, privacy: Privacy) -> Result<()> {
        self.inner.set_privacy(user, privacy).await
    }
    async fn set_silenced(
        &self,
        chat: ChatId,
        user: &UserId,
        until: Option<Timestamp>,
    ) -> Result<bool> {
        self.inner.set_silenced(chat, user, until).await
    }
    async fn set_suspension(&self, user: &UserId, until: Option<Timestamp>) -> Result<()> {
        self.inner.set_suspension(user, until).await
    }
    async fn insert_report(&self, report: Report) -> Result<Report> {
        self.inner.insert_report(report).await
    }
    async fn get_report(&self, id: ReportId) -> Result<Option<Report>> {
        self.inner.get_report(id).await
    }
    async fn list_reports(&self, query: crate::store::ReportQuery) -> Result<Vec<Report>> {
        self.inner.list_reports(query).await
    }
    async fn resolve_report(&self, resolution: ReportResolution) -> Result<Report> {
        self.inner.resolve_report(resolution).await
    }
    async fn append_audit(&self, entry: AuditEntry) -> Result<()> {
        self.inner.append_audit(entry).await
    }
    async fn list_audit(&self, query: crate::store::AuditQuery) -> Result<Vec<AuditEntry>> {
        self.inner.list_audit(query).await
    }
    async fn pseudonymize_audit(&self, user: &UserId, pseudonym: &UserId) -> Result<u64> {
        self.inner.pseudonymize_audit(user, pseudonym).await
    }
    async fn messages_by_sender(
        &self,
        user: &UserId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::SentMessage>> {
        self.inner.messages_by_sender(user, after, limit).await
    }
    async fn reactions_by_user(
        &self,
        user: &UserId,
        limit: usize,
    ) -> Result<Vec<crate::store::UserReaction>> {
        self.inner.reactions_by_user(user, limit).await
    }
    async fn media_by_uploader(
        &self,
        user: &UserId,
        after: Option<MediaId>,
        limit: usize,
    ) -> Result<Vec<MediaRecord>> {
        self.inner.media_by_uploader(user, after, limit).await
    }
    async fn hold_reports(
        &self,
        user: &UserId,
        pseudonym: &UserId,
        held: Vec<crate::store::HeldSnapshot>,
    ) -> Result<crate::store::HeldReports> {
        self.inner.hold_reports(user, pseudonym, held).await
    }
    async fn erase_user_rows(
        &self,
        user: &UserId,
        pseudonym: &UserId,
    ) -> Result<crate::store::ErasedRows> {
        self.inner.erase_user_rows(user, pseudonym).await
    }
    async fn key_packages_of(&self, user: &UserId) -> Result<Vec<crate::mls::PublishedKeyPackage>> {
        self.inner.key_packages_of(user).await
    }
    async fn record_session(&self, user: &UserId, at: crate::model::Timestamp) -> Result<()> {
        self.inner.record_session(user, at).await
    }
    async fn stats(&self, from: i64, to: i64) -> Result<crate::store::StatsRows> {
        self.inner.stats(from, to).await
    }
    async fn answer_checkin(&self, answer: crate::store::CheckinAnswer) -> Result<()> {
        self.inner.answer_checkin(answer).await
    }
    async fn checkin_answers(
        &self,
        message: MessageId,
    ) -> Result<Vec<crate::store::CheckinAnswer>> {
        self.inner.checkin_answers(message).await
    }
    async fn answers_by_user(
        &self,
        user: &UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<crate::store::CheckinAnswer>> {
        self.inner.answers_by_user(user, after, limit).await
    }
    async fn insert_media(&self, record: MediaRecord) -> Result<()> {
        self.inner.insert_media(record).await
    }
    async fn get_media(&self, id: MediaId) -> Result<Option<MediaRecord>> {
        self.inner.get_media(id).await
    }
    async fn attach_media(&self, id: MediaId, message: MessageId) -> Result<bool> {
        self.inner.attach_media(id, message).await
    }
    async fn detach_media(&self, id: MediaId, message: MessageId) -> Result<()> {
        self.inner.detach_media(id, message).await
    }
    async fn delete_media(&self, id: MediaId) -> Result<Option<MediaRecord>> {
        self.inner.delete_media(id).await
    }
    async fn unattached_media(&self, before: Timestamp, limit: usize) -> Result<Vec<MediaRecord>> {
        self.inner.unattached_media(before, limit).await
    }
    async fn retention_chats(
        &self,
        after: Option<ChatId>,
        limit: usize,
    ) -> Result<Vec<crate::store::RetentionChat>> {
        self.inner.retention_chats(after, limit).await
    }
    async fn expired_messages(
        &self,
        chat: ChatId,
        after_seq: u64,
        before: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::store::ExpiredMessage>> {
        self.inner
            .expired_messages(chat, after_seq, before, limit)
            .await
    }
    async fn set_retention_watermark(&self, chat: ChatId, seq: u64) -> Result<()> {
        self.inner.set_retention_watermark(chat, seq).await
    }
    async fn stored_texts(
        &self,
        table: crate::store::TextTable,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<crate::store::StoredText>> {
        self.inner.stored_texts(table, after, limit).await
    }
    async fn replace_texts(&self, r: Vec<crate::store::TextReplacement>) -> Result<usize> {
        self.inner.replace_texts(r).await
    }
    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.inner.get_meta(key).await
    }
    async fn publish_key_packages(
        &self,
        user: &UserId,
        device: &DeviceId,
        packages: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
        at: Timestamp,
    ) -> Result<u64> {
        self.inner
            .publish_key_packages(user, device, packages, last_resort, at)
            .await
    }
    async fn claim_key_packages(
        &self,
        users: &[UserId],
    ) -> Result<Vec<crate::mls::ClaimedKeyPackage>> {
        self.inner.claim_key_packages(users).await
    }
    async fn get_mls_group(&self, chat: ChatId) -> Result<Option<crate::store::MlsGroupRecord>> {
        self.inner.get_mls_group(chat).await
    }
    async fn pin_device_key(&self, u: &UserId, d: &DeviceId, key: Vec<u8>) -> Result<Vec<u8>> {
        self.inner.pin_device_key(u, d, key).await
    }
    async fn device_keys(&self, devices: &[(UserId, DeviceId)]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.device_keys(devices).await
    }
    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.inner.set_meta(key, value).await
    }
}

/// A panic in the store fails the batch's callers; the lane goes on and
/// health stays ok.
#[tokio::test]
async fn a_panicking_store_fails_one_batch_not_the_lane() {
    let store = Arc::new(PanicsOnce {
        inner: MemoryStore::new(),
        armed: std::sync::atomic::AtomicBool::new(false),
    });
    let e = ChatEngine::builder(store.clone()).build().await.unwrap();
    let chat = direct(&e, "alice", "bob").await;
    assert!(e.health().await.ok);
    store.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        code(send(&e, "alice", chat, "c1", "lost").await),
        C::Internal,
        "the batch that panicked fails"
    );
    let m = send(&e, "alice", chat, "c2", "next").await.unwrap();
    assert_eq!(m.seq, 1, "the lane still runs");
    let health = e.health().await;
    assert!(health.ok && health.lanes_running, "{health:?}");
}

/// A group's member list is checked against the limit before it is worked
/// on, and a user can be in at most `max_groups_per_user` groups.
#[tokio::test]
async fn group_sizes_and_memberships_are_bounded() {
    let config = EngineConfig {
        max_groups_per_user: 2,
        ..EngineConfig::default()
    };
    let (e, _) = engine_with(config).await;
    let huge = NewGroup {
        name: "huge".into(),
        member_ids: (0..100_000).map(|i| uid(&format!("u{i}"))).collect(),
        ..Default::default()
    };
    let started = std::time::Instant::now();
    assert_eq!(
        code(e.create_group(&actor("alice"), huge).await),
        C::BadRequest
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    group(&e, "alice", &["bob"]).await;
    let g = group(&e, "carol", &["bob"]).await;
    let g3 = NewGroup {
        name: "third".into(),
        member_ids: vec![uid("bob")],
        ..Default::default()
    };
    assert_eq!(code(e.create_group(&actor("dave"), g3).await), C::Conflict);
    let g4 = group(&e, "dave", &[]).await;
    assert_eq!(
        code(
            e.add_participant(&actor("dave"), g4, &uid("bob"), Role::Member)
                .await
        ),
        C::Conflict,
        "bob is in two groups already"
    );
    e.remove_participant(&actor("bob"), g, &uid("bob"))
        .await
        .unwrap();
    e.add_participant(&actor("dave"), g4, &uid("bob"), Role::Member)
        .await
        .unwrap();
}

/// `sync` answers in pages bounded in chats and bytes; following `next`
/// visits every chat once; `removed_chat_ids` comes with the first page.
#[tokio::test]
async fn sync_pages_over_chats_bounded_by_bytes() {
    let config = EngineConfig {
        sync_chats_page: 4,
        sync_page_bytes: 4 * 1024,
        ..EngineConfig::default()
    };
    let (e, _) = engine_with(config).await;
    let mut all = HashSet::new();
    for i in 0..10 {
        let chat = group(&e, "alice", &["bob"]).await;
        all.insert(chat);
        // Chats 0..3 carry enough text to fill a page on their own.
        let text = "x".repeat(if i < 3 { 5000 } else { 10 });
        send(&e, "alice", chat, &format!("c{i}"), &text)
            .await
            .unwrap();
    }
    let gone = group(&e, "carol", &["bob"]).await;
    e.remove_participant(&actor("carol"), gone, &uid("bob"))
        .await
        .unwrap();
    let bob = actor("bob");
    let cursors = HashMap::from([(gone, 1)]);
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = e.sync_from(&bob, &cursors, after.as_deref()).await.unwrap();
        pages += 1;
        assert!(!page.chats.is_empty() && page.chats.len() <= 4);
        if pages == 1 {
            assert_eq!(page.removed_chat_ids, vec![gone]);
        } else {
            assert!(page.removed_chat_ids.is_empty());
        }
        seen.extend(page.chats.iter().map(|c| c.chat.chat.id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 20, "paging must end");
    }
    assert_eq!(seen.len(), 10, "every chat once: {seen:?}");
    assert_eq!(seen.iter().copied().collect::<HashSet<_>>(), all);
    assert!(
        pages >= 4,
        "bytes bound the big chats' pages ({pages} pages)"
    );
    assert_eq!(
        code(e.sync_from(&bob, &cursors, Some("nonsense")).await),
        C::BadRequest
    );
}

// --- rules that used to live in the HTTP layer ----------------------------

#[tokio::test]
async fn a_refused_chat_update_changes_nothing_not_even_the_mute() {
    let e = engine().await;
    let chat = group(&e, "ann", &["ben"]).await;
    let later = Timestamp::from_millis(4_000_000_000_000);
    // A member may mute but not rename: the whole update is refused.
    let update = ChatUpdate {
        muted_until: Some(Some(later)),
        group: GroupPatch {
            name: Some("mine now".into()),
            ..GroupPatch::default()
        },
        ..ChatUpdate::default()
    };
    assert_eq!(
        code(e.update_chat(&actor("ben"), chat, update).await),
        C::Forbidden
    );
    let view = e.get_chat(&actor("ben"), chat).await.unwrap();
    assert_eq!(view.muted_until, None, "the mute was not applied");
    assert_eq!(view.chat.name.as_deref(), Some("support"));
    // A bad name from an admin is refused before the mute is written.
    let update = ChatUpdate {
        muted_until: Some(Some(later)),
        group: GroupPatch {
            name: Some("x".repeat(10_000)),
            ..GroupPatch::default()
        },
        ..ChatUpdate::default()
    };
    assert_eq!(
        code(e.update_chat(&actor("ann"), chat, update).await),
        C::BadRequest
    );
    assert_eq!(
        e.get_chat(&actor("ann"), chat).await.unwrap().muted_until,
        None
    );
    // Both at once from an admin; then the member's own mute alone.
    let update = ChatUpdate {
        muted_until: Some(Some(later)),
        group: GroupPatch {
            name: Some("circle".into()),
            ..GroupPatch::default()
        },
        ..ChatUpdate::default()
    };
    let view = e.update_chat(&actor("ann"), chat, update).await.unwrap();
    assert_eq!(view.muted_until, Some(later));
    assert_eq!(view.chat.name.as_deref(), Some("circle"));
    let mute = ChatUpdate {
        muted_until: Some(Some(later)),
        ..ChatUpdate::default()
    };
    let view = e.update_chat(&actor("ben"), chat, mute).await.unwrap();
    assert_eq!(view.muted_until, Some(later));
    let unmute = ChatUpdate {
        muted_until: Some(None),
        ..ChatUpdate::default()
    };
    assert_eq!(
        e.update_chat(&actor("ben"), chat, unmute)
            .await
            .unwrap()
            .muted_until,
        None
    );
}

#[tokio::test]
async fn leaving_a_group_removes_and_leaving_a_direct_chat_hides() {
    let e = engine().await;
    let chat = group(&e, "ann", &["ben"]).await;
    e.leave(&actor("ben"), chat).await.unwrap();
    assert_eq!(code(e.get_chat(&actor("ben"), chat).await), C::NotFound);
    let direct_chat = direct(&e, "ann", "ben").await;
    send(&e, "ann", direct_chat, "c-1", "hi").await.unwrap();
    e.leave(&actor("ben"), direct_chat).await.unwrap();
    let listed = |e: ChatEngine| async move {
        let query = ChatListQuery {
            after: None,
            limit: 50,
        };
        let page = e.list_chats(&actor("ben"), query).await.unwrap();
        page.chats.iter().map(|c| c.chat.id).collect::<Vec<_>>()
    };
    assert!(!listed(e.clone()).await.contains(&direct_chat), "hidden");
    // Still a member: new activity brings it back.
    send(&e, "ann", direct_chat, "c-2", "still there?")
        .await
        .unwrap();
    assert!(listed(e.clone()).await.contains(&direct_chat));
    assert_eq!(code(e.leave(&actor("cat"), direct_chat).await), C::NotFound);
}

#[tokio::test]
async fn read_up_to_a_message_moves_the_watermark_to_its_seq() {
    let e = engine().await;
    let chat = direct(&e, "ann", "ben").await;
    let first = send(&e, "ann", chat, "c-1", "one").await.unwrap();
    let second = send(&e, "ann", chat, "c-2", "two").await.unwrap();
    e.mark_read_up_to(&actor("ben"), second.id).await.unwrap();
    // Never back.
    e.mark_read_up_to(&actor("ben"), first.id).await.unwrap();
    let view = e.get_chat(&actor("ben"), chat).await.unwrap();
    let ben = view.chat.participant(&uid("ben")).unwrap();
    assert_eq!(ben.read_seq, second.seq);
    assert_eq!(view.unread_count, 0);
    assert_eq!(
        code(e.mark_read_up_to(&actor("cat"), first.id).await),
        C::NotFound
    );
}

// --- encryption at rest ----------------------------------------------------

#[tokio::test]
async fn erasing_a_users_keys_leaves_only_their_content_unreadable() {
    use crate::{
        clock::SystemClock,
        crypto::MasterKey,
        keystore::{KeyringConfig, MemoryKeyStore},
    };
    let store = Arc::new(MemoryStore::new());
    let keyring = Keyring::new(
        MasterKey::generate().unwrap(),
        Arc::new(MemoryKeyStore::new()),
        Arc::new(SystemClock),
        KeyringConfig::default(),
    )
    .await
    .unwrap();
    let e = ChatEngine::builder(store.clone())
        .encrypt_at_rest(Arc::new(keyring))
        .build()
        .await
        .unwrap();
    let chat = direct(&e, "ann", "bob").await;
    let from_ann = e
        .send(
            &actor("ann"),
            SendMessage::text(chat, "a1", "I feel unsafe at home"),
        )
        .await
        .unwrap();
    let from_bob = e
        .send(
            &actor("bob"),
            SendMessage::text(chat, "b1", "I am here for you"),
        )
        .await
        .unwrap();
    // The store under the engine holds ciphertext only.
    let raw = store.get_message(from_ann.id).await.unwrap().unwrap();
    assert!(!raw.content.unwrap_or_default().contains("unsafe"));

    // Only service admins destroy keys.
    let refused = e.erase_user_keys(&actor("bob"), &uid("ann")).await;
    assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    let admin = Actor::admin(uid("root"));
    assert!(e.erase_user_keys(&admin, &uid("ann")).await.unwrap());
    assert!(!e.erase_user_keys(&admin, &uid("ann")).await.unwrap());

    // Bob's history keeps both messages in place: Ann's as erased, his own
    // readable.
    let page = e
        .history(&actor("bob"), chat, HistoryRequest::default())
        .await
        .unwrap();
    let of = |id| page.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(of(from_ann.id).content, None);
    assert_eq!(of(from_ann.id).unreadable, Some(Unreadable::Erased));
    assert_eq!(
        of(from_bob.id).content.as_deref(),
        Some("I am here for you")
    );
    assert_eq!(of(from_bob.id).unreadable, None);

    // Ann writes again: a new key, readable.
    let again = e
        .send(&actor("ann"), SendMessage::text(chat, "a2", "thank you"))
        .await
        .unwrap();
    let page = e
        .history(&actor("bob"), chat, HistoryRequest::default())
        .await
        .unwrap();
    let of = |id| page.messages.iter().find(|m| m.id == id).unwrap();
    assert_eq!(of(again.id).content.as_deref(), Some("thank you"));
    assert_eq!(of(from_ann.id).unreadable, Some(Unreadable::Erased));

    // An engine without encryption at rest has no key to destroy.
    let plain = engine().await;
    let refused = plain.erase_user_keys(&admin, &uid("ann")).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
}

// --- MLS key packages --------------------------------------------------------

/// Key packages for tests: `"kp:<user>/<device>"`, `"...:lr"` for last resort.
#[derive(Debug)]
struct FakeMls;

impl crate::mls::MlsDelivery for FakeMls {
    fn inspect_key_package(&self, bytes: &[u8]) -> Result<crate::mls::KeyPackageInfo> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::invalid("not a key package"))?;
        let rest = text
            .strip_prefix("kp:")
            .ok_or_else(|| Error::invalid("not a key package"))?;
        let (rest, key) = match rest.split_once('#') {
            Some((rest, key)) => (rest, Some(key)),
            None => (rest, None),
        };
        let (rest, last_resort) = match rest.strip_suffix(":lr") {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let (user, device) = rest
            .split_once('/')
            .ok_or_else(|| Error::invalid("not a key package"))?;
        Ok(crate::mls::KeyPackageInfo {
            user_id: UserId::new(user)?,
            device_id: DeviceId::new(device)?,
            last_resort,
            signature_key: key
                .map(|k| k.as_bytes().to_vec())
                .unwrap_or_else(|| fake_key(user, device)),
        })
    }

    /// Application messages: `"app|<chat id>|<epoch>"` (base64 on the wire).
    fn inspect_application(&self, message: &[u8]) -> Result<(Vec<u8>, u64)> {
        let text = std::str::from_utf8(message).map_err(|_| Error::invalid("not MLS"))?;
        match text.split('|').collect::<Vec<_>>()[..] {
            ["app", group, epoch] => Ok((
                group.as_bytes().to_vec(),
                epoch.parse().map_err(|_| Error::invalid("not MLS"))?,
            )),
            _ => Err(Error::invalid("not an application message")),
        }
    }

    /// `"<epoch>|u/d,u/d"`.
    fn group_from_info(&self, _chat: ChatId, info: &[u8]) -> Result<crate::mls::MlsGroupView> {
        fake_group(info)
    }

    /// Commits: `"<epoch>|<by u/d>|<added u/d,..>|<removed u/d,..>"`.
    fn apply_commit(&self, state: &[u8], commit: &[u8]) -> Result<crate::mls::MlsCommitView> {
        let group = fake_group(state)?;
        let text = std::str::from_utf8(commit).map_err(|_| Error::invalid("not a commit"))?;
        let parts: Vec<&str> = text.split('|').collect();
        let [epoch, by, added, removed] = parts[..] else {
            return Err(Error::invalid("not a commit"));
        };
        if epoch.parse::<u64>().ok() != Some(group.epoch) {
            return Err(Error::conflict("wrong epoch"));
        }
        let (added, removed) = (fake_devices(added)?, fake_devices(removed)?);
        let mut members: Vec<_> = group
            .members
            .into_iter()
            .filter(|m| !removed.contains(m))
            .collect();
        members.extend(added.iter().cloned());
        let list: Vec<String> = members.iter().map(|(u, d)| format!("{u}/{d}")).collect();
        let after = format!("{}|{}", group.epoch + 1, list.join(","));
        let added_signature_keys = added
            .iter()
            .map(|(u, d)| fake_key(u.as_str(), d.as_str()))
            .collect();
        Ok(crate::mls::MlsCommitView {
            added_signature_keys,
            committer: fake_devices(by)?
                .pop()
                .ok_or_else(|| Error::invalid("no committer"))?,
            added,
            removed,
            group: fake_group(after.as_bytes())?,
        })
    }
}

/// A fake application message of `chat` in `epoch`, as sent (base64).
fn fake_app(chat: ChatId, epoch: u64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("app|{chat}|{epoch}"))
}

/// The signature key a fake device has unless its key package names one.
fn fake_key(user: &str, device: &str) -> Vec<u8> {
    format!("key-{user}/{device}").into_bytes()
}

fn fake_devices(list: &str) -> Result<Vec<(UserId, DeviceId)>> {
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (u, d) = s
                .split_once('/')
                .ok_or_else(|| Error::invalid("not a device"))?;
            Ok((UserId::new(u)?, DeviceId::new(d)?))
        })
        .collect()
}

fn fake_group(bytes: &[u8]) -> Result<crate::mls::MlsGroupView> {
    let text = std::str::from_utf8(bytes).map_err(|_| Error::invalid("not a group"))?;
    let (epoch, members) = text
        .split_once('|')
        .ok_or_else(|| Error::invalid("not a group"))?;
    Ok(crate::mls::MlsGroupView {
        epoch: epoch.parse().map_err(|_| Error::invalid("not a group"))?,
        members: fake_devices(members)?,
        state: bytes.to_vec(),
    })
}

fn kp(user: &str, device: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|_| format!("kp:{user}/{device}").into_bytes())
        .collect()
}

async fn mls_engine(policy: Option<Arc<dyn ContactPolicy>>) -> ChatEngine {
    let mut builder = ChatEngine::builder(Arc::new(MemoryStore::new())).mls(Arc::new(FakeMls));
    if let Some(policy) = policy {
        builder = builder.contact_policy(policy);
    }
    builder.build().await.unwrap()
}

#[tokio::test]
async fn key_packages_are_published_only_with_ones_own_credential() {
    let e = mls_engine(None).await;
    let (alice, phone) = (actor("alice"), DeviceId::new("phone").unwrap());
    // Without an MLS delivery service, the commands are refused.
    let plain = engine().await;
    let refused = plain
        .publish_key_packages(&alice, &phone, kp("alice", "phone", 1), None)
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );

    let lr = Some(b"kp:alice/phone:lr".to_vec());
    assert_eq!(
        e.publish_key_packages(&alice, &phone, kp("alice", "phone", 3), lr)
            .await
            .unwrap(),
        3
    );
    // Another user's credential, or another device's: refused, nothing stored.
    for forged in [kp("bob", "phone", 1), kp("alice", "laptop", 1)] {
        let mut packages = kp("alice", "phone", 1);
        packages.extend(forged);
        let refused = e.publish_key_packages(&alice, &phone, packages, None).await;
        assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    }
    let garbage = e
        .publish_key_packages(&alice, &phone, vec![b"garbage".to_vec()], None)
        .await;
    assert!(
        matches!(garbage, Err(Error::InvalidInput(_))),
        "{garbage:?}"
    );
    let too_many = e
        .publish_key_packages(&alice, &phone, kp("alice", "phone", 101), None)
        .await;
    assert!(
        matches!(too_many, Err(Error::InvalidInput(_))),
        "{too_many:?}"
    );
    let nothing = e
        .publish_key_packages(&alice, &phone, Vec::new(), None)
        .await;
    assert!(
        matches!(nothing, Err(Error::InvalidInput(_))),
        "{nothing:?}"
    );
    let claimed = e
        .claim_key_packages(&actor("bob"), &[uid("alice")])
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(
        claimed[0].remaining, 2,
        "the refused publishes stored nothing"
    );
}

#[tokio::test]
async fn key_packages_go_only_to_users_one_may_talk_to() {
    let e = mls_engine(Some(Arc::new(OnlyMatched))).await;
    let phone = DeviceId::new("phone").unwrap();
    for user in ["alice", "bob", "carol", "dave"] {
        e.publish_key_packages(&actor(user), &phone, kp(user, "phone", 5), None)
            .await
            .unwrap();
    }
    // Matched (the contact policy), and oneself: allowed.
    assert_eq!(
        e.claim_key_packages(&actor("alice"), &[uid("bob"), uid("alice")])
            .await
            .unwrap()
            .len(),
        2
    );
    // A stranger: refused, and nothing is handed out.
    let refused = e
        .claim_key_packages(&actor("alice"), &[uid("bob"), uid("carol")])
        .await;
    assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    // Someone one shares a group with: allowed, though not matched.
    let refused = e.claim_key_packages(&actor("dave"), &[uid("carol")]).await;
    assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
    e.create_group(
        &actor("dave"),
        NewGroup {
            name: "circle".into(),
            member_ids: vec![uid("carol")],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        e.claim_key_packages(&actor("dave"), &[uid("carol")])
            .await
            .unwrap()
            .len(),
        1
    );
    // A block cuts it off even when matched.
    e.block(&actor("bob"), &uid("alice")).await.unwrap();
    let blocked = e.claim_key_packages(&actor("alice"), &[uid("bob")]).await;
    assert!(matches!(blocked, Err(Error::Forbidden(_))), "{blocked:?}");
    let empty = e.claim_key_packages(&actor("alice"), &[]).await;
    assert!(matches!(empty, Err(Error::InvalidInput(_))), "{empty:?}");
}

#[tokio::test]
async fn a_device_low_on_key_packages_is_told_so_and_only_it() {
    let e = mls_engine(None).await;
    let mut phone = Client::connect_with(&e, "alice", "phone", 256).await;
    let mut laptop = Client::connect_with(&e, "alice", "laptop", 256).await;
    e.publish_key_packages(
        &actor("alice"),
        phone.session.device_id(),
        kp("alice", "phone", 11),
        None,
    )
    .await
    .unwrap();
    // 11 -> 10: not low yet.
    e.claim_key_packages(&actor("bob"), &[uid("alice")])
        .await
        .unwrap();
    // 10 -> 9: low.
    e.claim_key_packages(&actor("bob"), &[uid("alice")])
        .await
        .unwrap();
    let low = phone.next_of("key_packages_low").await;
    assert_eq!(low["available"], 9);
    assert!(
        !laptop.types().contains(&"key_packages_low".to_owned()),
        "only the device that is low"
    );
    assert_eq!(
        phone
            .drain()
            .iter()
            .filter(|f| f["type"] == "key_packages_low")
            .count(),
        0,
        "once per claim that leaves it low"
    );
}

#[tokio::test]
async fn key_package_commands_over_the_protocol() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let e = mls_engine(None).await;
    let alice = Client::connect_with(&e, "alice", "phone", 256).await;
    let bob = Client::connect(&e, "bob").await;
    let published = alice
        .cmd(
            serde_json::json!({"type": "publish_key_packages", "id": "p", "data": {
                "key_packages": [b64(b"kp:alice/phone"), b64(b"kp:alice/phone")],
                "last_resort": b64(b"kp:alice/phone:lr"),
            }}),
        )
        .await;
    assert_eq!(published["type"], "ack", "{published}");
    assert_eq!(published["data"]["available"], 2);
    let bad = alice
        .cmd(
            serde_json::json!({"type": "publish_key_packages", "id": "b", "data": {
                "key_packages": ["not base64!"],
            }}),
        )
        .await;
    assert_eq!(bad["data"]["code"], "bad_request", "{bad}");
    let claimed = bob
        .cmd(
            serde_json::json!({"type": "claim_key_packages", "id": "c", "data": {
                "user_ids": ["alice"],
            }}),
        )
        .await;
    assert_eq!(claimed["type"], "ack", "{claimed}");
    let devices = claimed["data"]["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["user_id"], "alice");
    assert_eq!(devices[0]["device_id"], "phone");
    assert_eq!(devices[0]["key_package"], b64(b"kp:alice/phone"));
    assert_eq!(devices[0]["last_resort"], false);
}

/// Every `(user, device)` publishes a key package, pinning its key.
async fn publish_devices(e: &ChatEngine, devices: &[(&str, &str)]) {
    for (user, device) in devices {
        e.publish_key_packages(
            &actor(user),
            &DeviceId::new(*device).unwrap(),
            kp(user, device, 1),
            None,
        )
        .await
        .unwrap();
    }
}

fn commit_req(chat: ChatId, epoch: u64, commit: &str, info: Option<&str>) -> MlsCommitRequest {
    MlsCommitRequest {
        chat_id: chat,
        epoch,
        commit: commit.as_bytes().to_vec(),
        welcome: Some(b"welcome".to_vec()),
        group_info: info.map(|i| i.as_bytes().to_vec()),
    }
}

#[tokio::test]
async fn mls_commits_are_ordered_and_checked_against_membership() {
    let e = mls_engine(None).await;
    let phone = DeviceId::new("phone").unwrap();
    let alice = actor("alice");
    let group = e
        .create_group(
            &alice,
            NewGroup {
                name: "circle".into(),
                member_ids: vec![uid("bob")],
                encryption: Encryption::E2ee,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let chat = group.chat.id;
    let mut bob = Client::connect_with(&e, "bob", "phone", 256).await;
    publish_devices(&e, &[("bob", "phone"), ("alice", "laptop"), ("carol", "x")]).await;
    let commit = |req| e.mls_commit(&alice, &phone, req);

    // The first commit: epoch 0, with the new group it starts from (the
    // committing device alone), checked like any other.
    let no_info = commit(commit_req(chat, 0, "0|alice/phone|bob/phone|", None)).await;
    assert!(
        matches!(no_info, Err(Error::InvalidInput(_))),
        "{no_info:?}"
    );
    let later = commit(commit_req(chat, 3, "c", Some("0|alice/phone"))).await;
    assert!(matches!(later, Err(Error::Conflict(_))), "{later:?}");
    let crowded = commit(commit_req(
        chat,
        0,
        "0|alice/phone||",
        Some("0|alice/phone,carol/x"),
    ))
    .await;
    assert!(
        matches!(crowded, Err(Error::InvalidInput(_))),
        "{crowded:?}"
    );
    let not_mine = commit(commit_req(
        chat,
        0,
        "0|alice/laptop||",
        Some("0|alice/laptop"),
    ))
    .await;
    assert!(
        matches!(not_mine, Err(Error::InvalidInput(_))),
        "{not_mine:?}"
    );
    let stranger = commit(commit_req(
        chat,
        0,
        "0|alice/phone|carol/x|",
        Some("0|alice/phone"),
    ))
    .await;
    assert!(matches!(stranger, Err(Error::Forbidden(_))), "{stranger:?}");
    let epoch = commit(commit_req(
        chat,
        0,
        "0|alice/phone|bob/phone|",
        Some("0|alice/phone"),
    ))
    .await
    .unwrap();
    assert_eq!(epoch, 1);
    let received = bob.next_of("message_received").await;
    assert_eq!(received["type"], "mls_commit");
    assert_eq!(received["mls"]["epoch"], 0);
    assert_eq!(received["mls"]["welcome"], "d2VsY29tZQ==");

    // Then: the current epoch only, from the sender's own device, within
    // membership.
    let stale = commit(commit_req(chat, 0, "0|alice/phone||", None)).await;
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    let forged = commit(commit_req(chat, 1, "1|bob/phone||", None)).await;
    assert!(matches!(forged, Err(Error::Forbidden(_))), "{forged:?}");
    let outsider = commit(commit_req(chat, 1, "1|alice/phone|carol/x|", None)).await;
    assert!(matches!(outsider, Err(Error::Forbidden(_))), "{outsider:?}");
    let kick = commit(commit_req(chat, 1, "1|alice/phone||bob/phone", None)).await;
    assert!(matches!(kick, Err(Error::Forbidden(_))), "{kick:?}");
    let own_device = commit(commit_req(chat, 1, "1|alice/phone|alice/laptop|", None))
        .await
        .unwrap();
    assert_eq!(own_device, 2);

    // A member who left stays in the MLS group until a commit removes
    // them: until then nothing may be sent there.
    e.remove_participant(&actor("bob"), chat, &uid("bob"))
        .await
        .unwrap();
    let send =
        |id: &str, epoch: u64| e.send(&alice, SendMessage::text(chat, id, fake_app(chat, epoch)));
    let refused = send("s1", 2).await;
    assert!(matches!(refused, Err(Error::Conflict(_))), "{refused:?}");
    commit(commit_req(chat, 2, "2|alice/phone||bob/phone", None))
        .await
        .unwrap();
    // Content encrypted in an epoch the group has left, or not MLS at all,
    // is refused; at the current epoch it goes.
    let stale = send("s2", 2).await;
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    let garbage = e
        .send(&alice, SendMessage::text(chat, "s3", "b3BhcXVl"))
        .await;
    assert!(
        matches!(garbage, Err(Error::InvalidInput(_))),
        "{garbage:?}"
    );
    send("s4", 3).await.unwrap();

    // Not for chats encrypted at rest.
    let plain = e
        .create_group(
            &alice,
            NewGroup {
                name: "plain".into(),
                member_ids: vec![uid("bob")],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let refused = commit(commit_req(plain.chat.id, 0, "c", Some("0|alice/phone"))).await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn membership_changes_of_e2ee_chats_carry_their_commit() {
    let e = mls_engine(None).await;
    let phone = DeviceId::new("phone").unwrap();
    let alice = actor("alice");
    let chat = e
        .create_group(
            &alice,
            NewGroup {
                name: "circle".into(),
                member_ids: vec![uid("bob")],
                encryption: Encryption::E2ee,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .chat
        .id;
    publish_devices(&e, &[("bob", "phone")]).await;
    e.mls_commit(
        &alice,
        &phone,
        commit_req(chat, 0, "0|alice/phone|bob/phone|", Some("0|alice/phone")),
    )
    .await
    .unwrap();
    let mut carol = Client::connect_with(&e, "carol", "phone", 256).await;
    publish_devices(&e, &[("carol", "phone"), ("dave", "phone"), ("dave", "x")]).await;

    // Adding: the commit must add the new member's devices, nothing else.
    let wrong = e
        .add_participant_with_commit(
            &alice,
            &phone,
            &uid("carol"),
            Role::Member,
            commit_req(chat, 1, "1|alice/phone|dave/x|", None),
        )
        .await;
    assert!(matches!(wrong, Err(Error::InvalidInput(_))), "{wrong:?}");
    let epoch = e
        .add_participant_with_commit(
            &alice,
            &phone,
            &uid("carol"),
            Role::Member,
            commit_req(chat, 1, "1|alice/phone|carol/phone|", None),
        )
        .await
        .unwrap();
    assert_eq!(epoch, 2);
    // Carol learns of the chat and finds the welcome in its log.
    carol.next_of("chat_created").await;
    let commit = carol.next_of("message_received").await;
    let commit = if commit["type"] == "mls_commit" {
        commit
    } else {
        carol.next_of("message_received").await
    };
    assert_eq!(commit["type"], "mls_commit", "{commit}");
    assert_eq!(commit["mls"]["epoch"], 1);
    let view = e.get_chat(&actor("carol"), chat).await.unwrap();
    assert!(view.chat.participant(&uid("carol")).is_some());

    // Removing: the commit removes every device of the member, in the
    // same change, so sending goes on at once.
    let partial = e
        .remove_participant_with_commit(
            &alice,
            &phone,
            &uid("bob"),
            commit_req(chat, 2, "2|alice/phone||carol/phone", None),
        )
        .await;
    assert!(
        matches!(partial, Err(Error::InvalidInput(_))),
        "{partial:?}"
    );
    let myself = e
        .remove_participant_with_commit(
            &alice,
            &phone,
            &uid("alice"),
            commit_req(chat, 2, "2|alice/phone||alice/phone", None),
        )
        .await;
    assert!(matches!(myself, Err(Error::InvalidInput(_))), "{myself:?}");
    e.remove_participant_with_commit(
        &alice,
        &phone,
        &uid("bob"),
        commit_req(chat, 2, "2|alice/phone||bob/phone", None),
    )
    .await
    .unwrap();
    let view = e.get_chat(&alice, chat).await.unwrap();
    assert!(
        view.chat.participant(&uid("bob")).is_none(),
        "removed with the commit"
    );
    let audit = e
        .audit_log(
            &Actor::admin(uid("root")),
            crate::store::AuditQuery::default(),
        )
        .await
        .unwrap();
    let removals: Vec<_> = audit
        .entries
        .iter()
        .map(|a| {
            (
                a.action,
                a.actor_id.as_str(),
                a.target_id.as_str(),
                a.chat_id,
            )
        })
        .collect();
    assert_eq!(
        removals,
        [(AuditAction::RemoveParticipant, "alice", "bob", Some(chat))],
        "the removal with its commit is audited once; refused ones not"
    );
    e.send(&alice, SendMessage::text(chat, "after", fake_app(chat, 3)))
        .await
        .unwrap();
    // A refused commit leaves the membership as it was.
    let stale = e
        .add_participant_with_commit(
            &alice,
            &phone,
            &uid("dave"),
            Role::Member,
            commit_req(chat, 1, "1|alice/phone|dave/phone|", None),
        )
        .await;
    assert!(matches!(stale, Err(Error::Conflict(_))), "{stale:?}");
    let view = e.get_chat(&alice, chat).await.unwrap();
    assert!(view.chat.participant(&uid("dave")).is_none());
}

#[tokio::test]
async fn a_device_is_added_only_with_the_key_it_published() {
    let e = mls_engine(None).await;
    let phone = DeviceId::new("phone").unwrap();
    let alice = actor("alice");
    publish_devices(&e, &[("bob", "phone")]).await;
    // Bob's phone published its key; a key package with another key for
    // the same device is refused.
    let other_key = e
        .publish_key_packages(
            &actor("bob"),
            &phone,
            vec![b"kp:bob/phone#forged".to_vec()],
            None,
        )
        .await;
    assert!(
        matches!(other_key, Err(Error::Forbidden(_))),
        "{other_key:?}"
    );
    let chat = e
        .create_group(
            &alice,
            NewGroup {
                name: "circle".into(),
                member_ids: vec![uid("bob"), uid("carol")],
                encryption: Encryption::E2ee,
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .chat
        .id;
    // Carol never published: a commit cannot add a leaf for her.
    let unknown = e
        .mls_commit(
            &alice,
            &phone,
            commit_req(chat, 0, "0|alice/phone|carol/phone|", Some("0|alice/phone")),
        )
        .await;
    assert!(matches!(unknown, Err(Error::Forbidden(_))), "{unknown:?}");
    e.mls_commit(
        &alice,
        &phone,
        commit_req(chat, 0, "0|alice/phone|bob/phone|", Some("0|alice/phone")),
    )
    .await
    .unwrap();
}

// --- group moderation: mutes -------------------------------------------------

#[tokio::test]
async fn muted_members_cannot_send_until_the_mute_ends() {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(crate::clock::ManualClock::new(Timestamp::from_millis(
        1_795_464_000_000,
    )));
    let e = ChatEngine::builder(store.clone())
        .clock(clock.clone())
        .build()
        .await
        .unwrap();
    let g = group(&e, "ann", &["mod", "bob", "cat"]).await;
    e.set_role(&actor("ann"), g, &uid("mod"), Role::Moderator)
        .await
        .unwrap();
    let mut bob = Client::connect(&e, "bob").await;
    let mut cat = Client::connect(&e, "cat").await;
    let until = Timestamp::from_millis(clock.now().as_millis() + 3_600_000);

    // Who may mute whom.
    for (who, target, expected, why) in [
        ("cat", "bob", C::Forbidden, "a member"),
        ("mod", "ann", C::Forbidden, "a moderator muting an admin"),
        ("ann", "ann", C::BadRequest, "oneself"),
        ("ann", "eve", C::NotFound, "not a participant"),
        ("eve", "bob", C::NotFound, "an outsider"),
    ] {
        let refused = e
            .mute_participant(&actor(who), g, &uid(target), Some(until))
            .await;
        assert_eq!(code(refused), expected, "{why}");
    }
    let direct_chat = direct(&e, "ann", "bob").await;
    assert_eq!(
        code(
            e.mute_participant(&actor("ann"), direct_chat, &uid("bob"), Some(until))
                .await
        ),
        C::BadRequest,
        "a direct chat"
    );

    e.mute_participant(&actor("mod"), g, &uid("bob"), Some(until))
        .await
        .unwrap();
    for client in [&mut bob, &mut cat] {
        let updated = client.next_of("participant_updated").await;
        assert_eq!(updated["user_id"], "bob");
        assert_eq!(updated["role"], "member");
        assert_eq!(updated["muted_until"], serde_json::to_value(until).unwrap());
    }
    let refused = e
        .send(&actor("bob"), SendMessage::text(g, "b1", "hi"))
        .await;
    assert_eq!(code(refused), C::Forbidden);
    // Reactions, typing and receipts stay allowed.
    let m = send(&e, "cat", g, "c1", "are you ok?").await.unwrap();
    e.react(&actor("bob"), m.id, "👍").await.unwrap();
    e.mark(&actor("bob"), g, Receipt::Read, m.seq)
        .await
        .unwrap();
    // The chat shows the mute to its participants.
    let chat = e.get_chat(&actor("cat"), g).await.unwrap();
    let shown = serde_json::to_value(&chat).unwrap();
    let bob_entry = shown["participants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["user_id"] == "bob")
        .cloned()
        .unwrap();
    assert_eq!(
        bob_entry["muted_until"],
        serde_json::to_value(until).unwrap()
    );

    // It ends by itself...
    clock.advance(Duration::from_secs(3601));
    send(&e, "bob", g, "b2", "back").await.unwrap();
    // ...or is lifted with null, and a past time counts as null.
    let until = Timestamp::from_millis(clock.now().as_millis() + 60_000);
    e.mute_participant(&actor("ann"), g, &uid("bob"), Some(until))
        .await
        .unwrap();
    let refused = e.send(&actor("bob"), SendMessage::text(g, "b3", "x")).await;
    assert_eq!(code(refused), C::Forbidden, "muted again");
    e.mute_participant(&actor("ann"), g, &uid("bob"), None)
        .await
        .unwrap();
    send(&e, "bob", g, "b4", "thanks").await.unwrap();
    e.mute_participant(
        &actor("ann"),
        g,
        &uid("bob"),
        Some(Timestamp::from_millis(0)),
    )
    .await
    .unwrap();
    let stored = store.get_chat(g).await.unwrap().unwrap();
    assert_eq!(
        stored.participant(&uid("bob")).unwrap().silenced_until,
        None
    );
    // The protocol command requires `until` (null lifts).
    let missing = bob
        .cmd(serde_json::json!({"id": "1", "type": "mute_participant", "data": {"chat_id": g, "user_id": "cat"}}))
        .await;
    assert_eq!(missing["data"]["code"], "bad_request", "{missing}");
}

mod export;
mod retention;

//! Retention: who sets it, what it records, and the sweep (only old user
//! messages, bounded, fair between chats, never redone, never in the way
//! of sends). Time is a [`ManualClock`].

use super::*;
use crate::clock::ManualClock;

const HOUR: Duration = Duration::from_secs(3600);

async fn engine_at(config: EngineConfig) -> (ChatEngine, Arc<MemoryStore>, Arc<ManualClock>) {
    let store = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::new(Timestamp::from_millis(1_795_464_000_000)));
    let engine = ChatEngine::builder(store.clone())
        .clock(clock.clone())
        .config(config)
        .build()
        .await
        .unwrap();
    (engine, store, clock)
}

/// Posts `n` texts of `who` straight through the store, at the clock's
/// time.
async fn post_many(store: &MemoryStore, clock: &ManualClock, chat: ChatId, who: &str, n: usize) {
    post_texts(store, chat, &[who], n, clock.now()).await;
}

async fn last_seq(store: &MemoryStore, chat: ChatId) -> u64 {
    store.get_chat(chat).await.unwrap().unwrap().last_seq
}

async fn watermark(store: &MemoryStore, chat: ChatId) -> Option<u64> {
    let chats = store.retention_chats(None, 100).await.unwrap();
    chats
        .iter()
        .find(|c| c.chat_id == chat)
        .map(|c| c.swept_seq)
}

#[tokio::test]
async fn retention_is_set_by_group_admins_and_either_side_of_a_direct_chat() {
    let (e, store, _clock) = engine_at(EngineConfig::default()).await;
    let g = group(&e, "ann", &["mod", "bob"]).await;
    e.set_role(&actor("ann"), g, &uid("mod"), Role::Moderator)
        .await
        .unwrap();
    let mut bob = Client::connect(&e, "bob").await;
    let day = Some(86_400);
    assert_eq!(
        code(e.set_retention(&actor("eve"), g, day).await),
        C::NotFound
    );
    assert_eq!(
        code(e.set_retention(&actor("bob"), g, day).await),
        C::Forbidden
    );
    assert_eq!(
        code(e.set_retention(&actor("mod"), g, day).await),
        C::Forbidden
    );
    for bad in [0, 3599, 31_536_001, u64::MAX] {
        assert_eq!(
            code(e.set_retention(&actor("ann"), g, Some(bad)).await),
            C::BadRequest,
            "{bad} seconds"
        );
    }
    let before = last_seq(&store, g).await;

    let view = e.set_retention(&actor("ann"), g, Some(3600)).await.unwrap();
    assert_eq!(view.chat.retention_secs, Some(3600));
    assert_eq!(view.chat.last_seq, before + 1);
    let note = bob.next_of("message_received").await;
    assert_eq!(note["type"], "system");
    assert_eq!(note["sender_id"], "ann");
    assert_eq!(
        note["system"],
        serde_json::json!({"event": "retention_changed", "seconds": 3600})
    );
    // (`chat_updated` of the promotion may still come first.)
    let mut updated = bob.next_of("chat_updated").await;
    if updated["retention_secs"].is_null() {
        updated = bob.next_of("chat_updated").await;
    }
    assert_eq!(updated["retention_secs"], 3600);
    assert_eq!(updated["id"], g.to_string());

    // The same value again changes nothing and tells no one.
    let again = e.set_retention(&actor("ann"), g, Some(3600)).await.unwrap();
    assert_eq!(again.chat.last_seq, before + 1);
    tokio::task::yield_now().await;
    assert!(bob.types().is_empty(), "nothing to tell");

    let max = e
        .set_retention(&actor("ann"), g, Some(MAX_RETENTION_SECS))
        .await
        .unwrap();
    assert_eq!(max.chat.retention_secs, Some(31_536_000));

    // Either side of a direct chat; null keeps messages forever.
    let d = direct(&e, "alice", "bob").await;
    let set = e.set_retention(&actor("bob"), d, day).await.unwrap();
    assert_eq!(set.chat.retention_secs, day);
    let cleared = e.set_retention(&actor("alice"), d, None).await.unwrap();
    assert_eq!(cleared.chat.retention_secs, None);
    let log = store
        .history(
            d,
            HistoryQuery {
                before_seq: None,
                after_seq: None,
                from_seq: 0,
                limit: 10,
            },
        )
        .await
        .unwrap();
    let events: Vec<_> = log.iter().map(|m| m.system.clone()).collect();
    assert_eq!(
        events,
        vec![
            Some(SystemEvent::RetentionChanged { seconds: None }),
            Some(SystemEvent::RetentionChanged { seconds: day }),
        ]
    );
    assert_eq!(
        log.iter().map(|m| m.sender_id.as_str()).collect::<Vec<_>>(),
        ["alice", "bob"]
    );
}

#[tokio::test]
async fn set_retention_over_the_protocol_requires_seconds() {
    let (e, _store, _clock) = engine_at(EngineConfig::default()).await;
    let d = direct(&e, "alice", "bob").await;
    let alice = Client::connect(&e, "alice").await;
    let r = alice
        .cmd(serde_json::json!({"type": "set_retention", "id": "r1", "data": {"chat_id": d}}))
        .await;
    assert_eq!(r["data"]["code"], "bad_request", "a missing seconds: {r}");
    let r = alice
        .cmd(serde_json::json!({"type": "set_retention", "id": "r2",
            "data": {"chat_id": d, "seconds": 7200}}))
        .await;
    assert_eq!(
        (r["type"].as_str(), r["id"].as_str()),
        (Some("ack"), Some("r2"))
    );
    assert_eq!(r["data"]["chat"]["retention_secs"], 7200);
    assert_eq!(r["data"]["chat"]["unread_count"], 0);
    let r = alice
        .cmd(serde_json::json!({"type": "set_retention", "id": "r3",
            "data": {"chat_id": d, "seconds": null}}))
        .await;
    assert_eq!(r["data"]["chat"]["retention_secs"], serde_json::Value::Null);
    let r = alice
        .cmd(serde_json::json!({"type": "set_retention", "id": "r4",
            "data": {"chat_id": d, "seconds": 60}}))
        .await;
    assert_eq!(r["data"]["code"], "bad_request");
}

#[tokio::test]
async fn the_sweep_removes_only_old_user_messages_once() {
    let (e, store, clock) = engine_at(EngineConfig::default()).await;
    let d = direct(&e, "alice", "bob").await;
    let mut bob = Client::connect(&e, "bob").await;
    let old: Vec<Message> = vec![
        send(&e, "alice", d, "a1", "one").await.unwrap(),
        send(&e, "bob", d, "b1", "two").await.unwrap(),
        send(&e, "alice", d, "a2", "three").await.unwrap(),
    ];
    let deleted_by_bob = send(&e, "bob", d, "b2", "oops").await.unwrap();
    e.delete(&actor("bob"), deleted_by_bob.id).await.unwrap();
    e.set_retention(&actor("alice"), d, Some(3600))
        .await
        .unwrap();
    clock.advance(HOUR / 2);
    let recent = send(&e, "alice", d, "a3", "recent").await.unwrap();
    assert_eq!(e.sweep_retention().await.unwrap(), 0, "nothing is old yet");
    bob.drain();

    clock.advance(HOUR);
    let before = last_seq(&store, d).await;
    assert_eq!(e.sweep_retention().await.unwrap(), 3);
    for m in &old {
        let now = store.get_message(m.id).await.unwrap().unwrap();
        assert!(
            now.deleted && now.content.is_none(),
            "{} is a tombstone",
            m.id
        );
        assert_eq!(now.seq, m.seq, "a tombstone keeps its place");
        assert!(now.updated_seq > before, "sync brings the tombstone");
        let event = bob.next_of("message_deleted").await;
        assert_eq!(event["message_id"], m.id.to_string());
        assert_eq!(event["updated_seq"], now.updated_seq);
    }
    assert_eq!(last_seq(&store, d).await, before + 3);
    let log = store
        .changes(d, before, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect::<Vec<_>>();
    assert_eq!(log, old.iter().map(|m| m.id).collect::<Vec<_>>());
    let system = store
        .history(
            d,
            HistoryQuery {
                before_seq: None,
                after_seq: None,
                from_seq: 0,
                limit: 100,
            },
        )
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.kind == MessageType::System)
        .unwrap();
    assert!(!system.deleted, "system messages stay");
    let kept = store.get_message(recent.id).await.unwrap().unwrap();
    assert_eq!(
        kept.content.as_deref(),
        Some("recent"),
        "a recent message stays"
    );
    // Everything up to the recent message was swept: the next sweep starts
    // there and redoes nothing.
    assert_eq!(watermark(&store, d).await, Some(system.seq));
    assert_eq!(e.sweep_retention().await.unwrap(), 0);
    assert_eq!(last_seq(&store, d).await, before + 3, "no change redone");
    tokio::task::yield_now().await;
    assert!(bob.types().is_empty(), "no event repeated");

    // Once the recent one is old too, it goes; the watermark follows.
    clock.advance(HOUR);
    assert_eq!(e.sweep_retention().await.unwrap(), 1);
    assert!(store.get_message(recent.id).await.unwrap().unwrap().deleted);
    assert_eq!(watermark(&store, d).await, Some(recent.seq));
    // A chat without retention keeps everything.
    e.set_retention(&actor("bob"), d, None).await.unwrap();
    let later = send(&e, "bob", d, "b3", "kept").await.unwrap();
    clock.advance(HOUR * 1000);
    assert_eq!(e.sweep_retention().await.unwrap(), 0);
    assert!(!store.get_message(later.id).await.unwrap().unwrap().deleted);
}

#[tokio::test]
async fn each_sweep_is_bounded_and_every_chat_gets_its_turn() {
    let (e, store, clock) = engine_at(EngineConfig::default()).await;
    let busy = group(&e, "ann", &["bob"]).await;
    let quiet = direct(&e, "cat", "dan").await;
    post_many(&store, &clock, busy, "bob", 1_000).await;
    post_many(&store, &clock, quiet, "cat", 5).await;
    for (who, chat) in [("ann", busy), ("cat", quiet)] {
        e.set_retention(&actor(who), chat, Some(3600))
            .await
            .unwrap();
    }
    clock.advance(HOUR * 2);
    // 500 looked at: the quiet chat's 5 texts and its system message, and
    // 494 of the busy one's texts.
    let first = e.sweep_retention().await.unwrap();
    assert_eq!(
        first,
        RETENTION_SWEEP_MAX - 1,
        "one call looks at 500 at most"
    );
    let quiet_left = store
        .expired_messages(quiet, 0, clock.now(), 100)
        .await
        .unwrap()
        .iter()
        .filter(|m| !m.deleted && m.kind == MessageType::Text)
        .count();
    assert_eq!(
        quiet_left, 0,
        "the quiet chat was not starved by the busy one"
    );
    let mut total = first;
    loop {
        let n = e.sweep_retention().await.unwrap();
        assert!(n <= RETENTION_SWEEP_MAX);
        if n == 0 {
            break;
        }
        total += n;
    }
    assert_eq!(total, 1_005);
}

#[tokio::test]
async fn a_send_is_not_held_up_by_a_long_sweep() {
    let (e, store, clock) = engine_at(EngineConfig::default()).await;
    let g = group(&e, "ann", &["bob"]).await;
    post_many(&store, &clock, g, "bob", 3_000).await;
    e.set_retention(&actor("ann"), g, Some(3600)).await.unwrap();
    clock.advance(HOUR * 2);
    let base = last_seq(&store, g).await;
    let sweeper = e.clone();
    let sweep = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut total = 0;
        loop {
            let n = sweeper.sweep_retention().await.unwrap();
            if n == 0 {
                return (total, started.elapsed());
            }
            total += n;
        }
    });
    // Once the sweep is under way, a send goes in among its deletions.
    while last_seq(&store, g).await == base {
        tokio::task::yield_now().await;
    }
    let started = std::time::Instant::now();
    let sent = send(&e, "ann", g, "during", "still here").await.unwrap();
    let send_took = started.elapsed();
    let (total, sweep_took) = sweep.await.unwrap();
    assert_eq!(total, 3_000);
    assert!(
        sent.seq <= base + 2 * 100 + 1,
        "the send waited for at most two chat visits of the sweep, not for \
         all of it: seq {} after {base}",
        sent.seq
    );
    assert_eq!(last_seq(&store, g).await, base + 3_001);
    assert!(
        send_took < sweep_took,
        "send {send_took:?}, whole sweep {sweep_took:?}"
    );
    assert!(!store.get_message(sent.id).await.unwrap().unwrap().deleted);
}

#[tokio::test]
async fn the_chat_update_sets_retention_all_or_nothing() {
    let (e, _store, _clock) = engine_at(EngineConfig::default()).await;
    let g = group(&e, "ann", &["ben"]).await;
    let later = Timestamp::from_millis(4_000_000_000_000);
    // A member's own mute with a retention they may not set: nothing.
    let update = ChatUpdate {
        muted_until: Some(Some(later)),
        retention_secs: Some(Some(3600)),
        ..ChatUpdate::default()
    };
    assert_eq!(
        code(e.update_chat(&actor("ben"), g, update).await),
        C::Forbidden
    );
    let view = e.get_chat(&actor("ben"), g).await.unwrap();
    assert_eq!((view.muted_until, view.chat.retention_secs), (None, None));
    // A bad value from an admin is refused before the rename is written.
    let update = ChatUpdate {
        retention_secs: Some(Some(60)),
        group: GroupPatch {
            name: Some("circle".into()),
            ..GroupPatch::default()
        },
        ..ChatUpdate::default()
    };
    assert_eq!(
        code(e.update_chat(&actor("ann"), g, update).await),
        C::BadRequest
    );
    assert_eq!(
        e.get_chat(&actor("ann"), g)
            .await
            .unwrap()
            .chat
            .name
            .as_deref(),
        Some("support")
    );
    let update = ChatUpdate {
        retention_secs: Some(Some(7200)),
        group: GroupPatch {
            name: Some("circle".into()),
            ..GroupPatch::default()
        },
        ..ChatUpdate::default()
    };
    let view = e.update_chat(&actor("ann"), g, update).await.unwrap();
    assert_eq!(view.chat.retention_secs, Some(7200));
    assert_eq!(view.chat.name.as_deref(), Some("circle"));
    let clear = ChatUpdate {
        retention_secs: Some(None),
        ..ChatUpdate::default()
    };
    let view = e.update_chat(&actor("ann"), g, clear).await.unwrap();
    assert_eq!(view.chat.retention_secs, None);
}

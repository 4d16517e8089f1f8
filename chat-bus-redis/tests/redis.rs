//! What the conformance suite cannot say about the Redis bus in general
//! terms: routing, losing Redis (unreachable, killed connections, lost
//! data, a restart of a private `redis-server`), leaving, a node id that
//! comes back, and two engines talking through it.

mod common;

use common::{attach, frame, user};

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use chat_bus_redis::{
    RedisBus, RedisBusConfig,
    fred::{interfaces::ClientLike, prelude::ClientInterface, types::client::ClientKillFilter},
};
use chat_core::{
    Actor, Bus, ChatEngine, DeviceId, MemoryStore, SendMessage, UserId,
    bus::{Action, Audience, Delivery},
    testing::RecordingSink,
    transport::{Outbox, Outgoing, outbox},
};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);

async fn connected(bus: &RedisBus, u: &UserId) -> bool {
    match bus.user_connected(u).await {
        Ok(b) => b,
        Err(e) => panic!("user_connected: {e}"),
    }
}

async fn online(bus: &RedisBus, users: &[&UserId]) -> Vec<bool> {
    let users: Vec<UserId> = users.iter().map(|u| (*u).clone()).collect();
    match bus.online(&users).await {
        Ok(v) => v,
        Err(e) => panic!("online: {e}"),
    }
}

/// Publishes probes from `from` to `to` until one reaches `sink`.
async fn delivery_works(
    from: &RedisBus,
    sink: &RecordingSink,
    to: &UserId,
    within: Duration,
) -> bool {
    let deadline = Instant::now() + within;
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let probe = frame(&[to], &format!("probe {n}"));
        let _ = from.publish(probe.clone()).await;
        if sink
            .wait_until(Duration::from_millis(200), |s| s.count(&probe) > 0)
            .await
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_holding_no_audience_user_gets_nothing() {
    if !common::redis_available("node_holding_no_audience_user_gets_nothing").await {
        return;
    }
    let prefix = common::Prefix::new();
    let n1 = common::node(&prefix, "n1").await;
    let n2 = common::node(&prefix, "n2").await;
    let n3 = common::node(&prefix, "n3").await;
    attach(&n1).await;
    let s2 = attach(&n2).await;
    let s3 = attach(&n3).await;
    let (bob, carol) = (user("bob"), user("carol"));
    connected(&n2, &bob).await;
    connected(&n3, &carol).await;

    let to_bob = frame(&[&bob], "only bob");
    let typing = Delivery {
        audience: Audience {
            users: vec![bob.clone(), carol.clone()].into(),
            except_user: Some(carol.clone()),
            chat_open: None,
            device: None,
        },
        action: Action::Event(
            chat_core::event::Event::from_frame(Bytes::from_static(
                br#"{"type":"user_typing","data":{"user_id":"carol"}}"#,
            ))
            .expect("an event frame"),
        ),
    };
    let to_carol = frame(&[&carol], "fence");
    for d in [&to_bob, &typing, &to_carol] {
        if let Err(e) = n1.publish(d.clone()).await {
            panic!("publish: {e}");
        }
    }
    assert!(s3.wait_until(WAIT, |s| s.count(&to_carol) == 1).await);
    assert!(s2.wait_until(WAIT, |s| s.count(&typing) == 1).await);
    assert_eq!(
        s3.deliveries(),
        vec![to_carol],
        "node 3 holds only carol: neither bob's delivery nor carol's own typing reaches it"
    );
    assert_eq!(s2.count(&to_bob), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_keeps_serving_local_connections() {
    common::init_logs();
    let url = format!("redis://127.0.0.1:{}", common::free_port());
    let started = Instant::now();
    let config = RedisBusConfig::default()
        .connect_timeout(Duration::from_millis(300))
        .presence_ttl(Duration::from_secs(1));
    let bus = match RedisBus::connect(&url, config).await {
        Ok(bus) => Arc::new(bus),
        Err(e) => panic!("connect must not fail on an unreachable Redis: {e}"),
    };
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "connect waited {:?}",
        started.elapsed()
    );
    assert!(!bus.is_ready(), "nothing listens at {url}");
    let sink = attach(&bus).await;
    let (alice, bob) = (user("alice"), user("bob"));
    assert!(
        connected(&bus, &alice).await,
        "alice came online (on this node)"
    );
    assert!(!connected(&bus, &alice).await, "alice was online already");
    for i in 0..20 {
        let d = frame(&[&alice, &bob], &format!("local {i}"));
        // The remote part fails (and says so); the local part must not.
        let _ = bus.publish(d.clone()).await;
        assert_eq!(sink.count(&d), 1, "local delivery {i} without Redis");
    }
    assert_eq!(online(&bus, &[&alice, &bob]).await, [true, false]);
    // Let the heartbeat and the reconnection loop fail a few times.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match bus.user_disconnected(&alice).await {
        Ok(offline) => assert!(offline, "alice was only here: offline now"),
        Err(e) => panic!("user_disconnected: {e}"),
    }
    assert_eq!(online(&bus, &[&alice]).await, [false]);
    bus.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_reconnect_resubscribe_and_keep_presence() {
    if !common::redis_available("killed_connections_reconnect_resubscribe_and_keep_presence").await
    {
        return;
    }
    let prefix = common::Prefix::new();
    let n1 = common::node(&prefix, "n1").await;
    let n2 = common::node(&prefix, "n2").await;
    attach(&n1).await;
    let s2 = attach(&n2).await;
    let bob = user("bob");
    connected(&n2, &bob).await;
    assert!(delivery_works(&n1, &s2, &bob, WAIT).await);

    // Kill node 2's own connections (and only those) server-side.
    let ids = n2.client_ids();
    assert_eq!(ids.len(), 2, "a command and a subscription connection");
    kill_clients(&ids).await;
    let reconnected = tokio::time::timeout(WAIT, async {
        loop {
            let now = n2.client_ids();
            if now.len() == 2 && now.iter().all(|id| !ids.contains(id)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        reconnected.is_ok(),
        "node 2 must open new connections; it has {:?}",
        n2.client_ids()
    );
    assert!(
        delivery_works(&n1, &s2, &bob, WAIT).await,
        "node 2 must resubscribe after its connections were killed"
    );
    assert_eq!(online(&n1, &[&bob]).await, [true], "bob stays online");
}

async fn kill_clients(ids: &[i64]) {
    let config = match chat_bus_redis::fred::prelude::Config::from_url(&common::redis_url()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let client = match chat_bus_redis::fred::types::Builder::from_config(config).build() {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    if let Err(e) = client.init().await {
        panic!("{e}");
    }
    for id in ids {
        let killed: Result<i64, _> = client
            .client_kill(vec![ClientKillFilter::ID(id.to_string())])
            .await;
        assert!(matches!(killed, Ok(1)), "CLIENT KILL ID {id}: {killed:?}");
    }
    let _ = client.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lost_in_redis_is_registered_again() {
    if !common::redis_available("presence_lost_in_redis_is_registered_again").await {
        return;
    }
    let prefix = common::Prefix::new();
    let n1 = common::node(&prefix, "n1").await;
    let n2 = common::node(&prefix, "n2").await;
    let s1 = attach(&n1).await;
    attach(&n2).await;
    let (alice, bob) = (user("alice"), user("bob"));
    connected(&n1, &alice).await;
    connected(&n2, &bob).await;

    // What a Redis restart without persistence does to the data.
    common::delete_prefix(&prefix).await;
    assert_eq!(online(&n1, &[&bob]).await, [false], "the data is gone");
    let back = tokio::time::timeout(WAIT, async {
        loop {
            if online(&n1, &[&alice, &bob]).await == [true, true] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "both nodes must register their users again");
    tokio::time::sleep(common::TTL).await;
    assert!(
        s1.went_offline().is_empty(),
        "nobody went offline: {:?}",
        s1.went_offline()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_users_at_once() {
    if !common::redis_available("shutdown_reports_users_at_once").await {
        return;
    }
    let prefix = common::Prefix::new();
    let n1 = common::node(&prefix, "n1").await;
    let n2 = common::node(&prefix, "n2").await;
    let s1 = attach(&n1).await;
    attach(&n2).await;
    let bob = user("bob");
    connected(&n2, &bob).await;
    let left = Instant::now();
    n2.shutdown().await;
    assert!(
        s1.wait_until(common::TTL / 2, |s| s.went_offline() == [bob.clone()])
            .await,
        "bob must be reported offline well before the TTL after a clean shutdown"
    );
    eprintln!("shutdown_reports_users_at_once: after {:?}", left.elapsed());
    assert_eq!(online(&n1, &[&bob]).await, [false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_id_reports_users_of_its_previous_process() {
    if !common::redis_available("restarted_node_id_reports_users_of_its_previous_process").await {
        return;
    }
    let prefix = common::Prefix::new();
    let n1 = common::node(&prefix, "n1").await;
    let s1 = attach(&n1).await;
    let old = common::node(&prefix, "n2").await;
    let (bob, carol) = (user("bob"), user("carol"));
    connected(&old, &bob).await;
    connected(&old, &carol).await;
    connected(&n1, &carol).await;
    drop(old);

    // The process comes back at once with the same node id.
    let new = common::node(&prefix, "n2").await;
    assert_eq!(
        online(&new, &[&bob, &carol]).await,
        [false, true],
        "the new process holds nobody; carol is on node 1"
    );
    let s2 = attach(&new).await;
    assert_eq!(s2.went_offline(), vec![bob.clone()], "reported on attach");
    tokio::time::sleep(common::TTL + Duration::from_millis(500)).await;
    assert!(
        s1.went_offline().is_empty(),
        "node 1 must not report bob again: {:?}",
        s1.went_offline()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_reconnects_resubscribes_and_registers_presence_again() {
    common::init_logs();
    let port = common::free_port();
    let Some(mut redis) = common::PrivateRedis::start(port).await else {
        if common::services_required() {
            panic!("redis-server is not installed and CHAT_REQUIRE_SERVICES=1");
        }
        eprintln!("SKIPPED: redis-server not installed (redis restart test)");
        return;
    };
    let url = redis.url();
    let make = |name: &str| {
        let config = RedisBusConfig::default()
            .node_id(name)
            .presence_ttl(common::TTL)
            .connect_timeout(Duration::from_secs(5));
        let url = url.clone();
        async move {
            match RedisBus::connect(&url, config).await {
                Ok(bus) => Arc::new(bus),
                Err(e) => panic!("{e}"),
            }
        }
    };
    let n1 = make("n1").await;
    let n2 = make("n2").await;
    assert!(n1.is_ready() && n2.is_ready());
    let s1 = attach(&n1).await;
    let s2 = attach(&n2).await;
    let (alice, bob) = (user("alice"), user("bob"));
    connected(&n1, &alice).await;
    connected(&n2, &bob).await;
    assert!(delivery_works(&n1, &s2, &bob, WAIT).await);

    redis.stop();
    // Without Redis: local deliveries and presence calls go on.
    for i in 0..10 {
        let d = frame(&[&alice, &bob], &format!("while down {i}"));
        let _ = n1.publish(d.clone()).await;
        assert_eq!(s1.count(&d), 1, "local delivery while Redis is down");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let carol = user("carol");
    assert!(
        connected(&n2, &carol).await,
        "carol connects while Redis is down"
    );
    assert_eq!(online(&n1, &[&alice]).await, [true]);
    assert!(!n1.is_ready());

    // Redis comes back empty: no keys, no scripts.
    let Some(_redis) = common::PrivateRedis::start(port).await else {
        panic!("redis-server went away");
    };
    assert!(
        delivery_works(&n1, &s2, &bob, Duration::from_secs(15)).await,
        "node 2 must reconnect and resubscribe after the restart"
    );
    assert!(
        delivery_works(&n2, &s1, &alice, Duration::from_secs(15)).await,
        "node 1 too"
    );
    let registered = tokio::time::timeout(WAIT, async {
        loop {
            if online(&n1, &[&alice, &bob, &carol]).await == [true, true, true] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        registered.is_ok(),
        "both nodes must register their users (carol too) again: {:?}",
        online(&n1, &[&alice, &bob, &carol]).await
    );
    // Readiness is the client's own view and can trail the first commands
    // that went through; wait for it rather than sample it.
    let ready = tokio::time::timeout(WAIT, async {
        while !(n1.is_ready() && n2.is_ready()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "both nodes report ready again");
    assert!(
        s1.went_offline().is_empty() && s2.went_offline().is_empty(),
        "nobody went offline"
    );
}

// --- two engines ---------------------------------------------------------------

async fn expect_event(out: &mut Outbox, kind: &str) -> serde_json::Value {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            match out.next().await {
                Some(Outgoing::Frame(bytes)) => {
                    let event: serde_json::Value = match serde_json::from_slice(
                        &bytes.encode(chat_core::event::Framing::Json),
                    ) {
                        Ok(v) => v,
                        Err(e) => panic!("frame is not JSON: {e}"),
                    };
                    if event["type"] == kind {
                        return event;
                    }
                }
                Some(Outgoing::Close(code, reason)) => panic!("closed: {code} {reason}"),
                None => panic!("outbox closed"),
            }
        }
    })
    .await;
    match found {
        Ok(event) => event,
        Err(_) => panic!("no {kind} event within {WAIT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_talk_through_redis() -> chat_core::Result<()> {
    if !common::redis_available("two_engines_talk_through_redis").await {
        return Ok(());
    }
    let prefix = common::Prefix::new();
    let store = Arc::new(MemoryStore::new());
    let bus1 = common::node(&prefix, "n1").await;
    let bus2 = common::node(&prefix, "n2").await;
    let e1 = ChatEngine::builder(store.clone())
        .bus(common::dyn_bus(bus1.clone()))
        .build()
        .await?;
    let e2 = ChatEngine::builder(store)
        .bus(common::dyn_bus(bus2.clone()))
        .build()
        .await?;
    let alice = Actor::user(user("alice"));
    let bob = Actor::user(user("bob"));
    let chat = e1
        .create_direct(&alice, &bob.user_id, Default::default())
        .await?
        .chat
        .chat
        .id;

    let (t1, mut out1) = outbox(64);
    let (t2, mut out2) = outbox(64);
    let alice_session = e1
        .connect(alice.clone(), DeviceId::new("phone")?, Arc::new(t1))
        .await?;
    let bob_session = e2
        .connect(bob.clone(), DeviceId::new("laptop")?, Arc::new(t2))
        .await?;
    let online = expect_event(&mut out1, "user_online").await;
    assert_eq!(online["data"]["user_id"], "bob", "{online}");

    bob_session.join_chat(chat).await?;
    e1.send(&alice, SendMessage::text(chat, "c-1", "hello from node 1"))
        .await?;
    let received = expect_event(&mut out2, "message_received").await;
    assert_eq!(
        received["data"]["content"], "hello from node 1",
        "{received}"
    );

    alice_session.start_typing(chat).await?;
    let typing = expect_event(&mut out2, "user_typing").await;
    assert_eq!(typing["data"]["user_id"], "alice", "{typing}");

    // Bob's node goes away: node 1 learns it from Redis and tells alice.
    bus2.shutdown().await;
    let offline = expect_event(&mut out1, "user_offline").await;
    assert_eq!(offline["data"]["user_id"], "bob", "{offline}");

    alice_session.close().await;
    drop(bob_session);
    // The engines may outlive this function in their tasks: stop node 1's
    // heartbeat before the keys are deleted.
    bus1.shutdown().await;
    Ok(())
}

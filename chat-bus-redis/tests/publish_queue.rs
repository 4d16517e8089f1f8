//! `publish` does not wait for Redis: the remote half of each delivery goes
//! through the bus's ordered publish queue. Each test pauses a private
//! `redis-server` (`CLIENT PAUSE .. WRITE`), so that the shared Redis and
//! the other tests never notice.

mod common;

use common::{attach, frame, user};

use std::{sync::Arc, time::Duration};

use chat_bus_redis::RedisBus;
use chat_core::{Bus, UserId, bus::Delivery, testing::RecordingSink};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(10);
/// How long Redis holds every script while paused.
const PAUSE: Duration = Duration::from_millis(500);
/// How long one `publish` may take while Redis is paused.
const PUBLISH_BUDGET: Duration = Duration::from_millis(50);

async fn connect(bus: &RedisBus, u: &UserId) {
    if let Err(e) = bus.user_connected(u).await {
        panic!("user_connected: {e}");
    }
}

async fn publish(bus: &RedisBus, d: &Delivery) {
    if let Err(e) = bus.publish(d.clone()).await {
        panic!("publish: {e}");
    }
}

/// Publishes `n` deliveries to alice (on `n1`) and bob (on `n2`) and
/// checks that each `publish` returned within [`PUBLISH_BUDGET`] and had
/// reached the local sink by then.
async fn publish_quickly(n1: &RedisBus, s1: &RecordingSink, tag: &str, n: usize) -> Vec<Delivery> {
    let (alice, bob) = (user("alice"), user("bob"));
    let mut sent = Vec::with_capacity(n);
    let mut slowest = Duration::ZERO;
    for i in 0..n {
        let d = frame(&[&alice, &bob], &format!("{tag} {i}"));
        let started = Instant::now();
        publish(n1, &d).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(s1.count(&d), 1, "local delivery {i} happens inside publish");
        sent.push(d);
    }
    eprintln!("{tag}: slowest of {n} publishes while Redis was paused: {slowest:?}");
    assert!(
        slowest < PUBLISH_BUDGET,
        "publish waited for the paused Redis: the slowest of {n} took {slowest:?} \
         (budget {PUBLISH_BUDGET:?})"
    );
    sent
}

/// The deliveries of `sent` that `sink` received, in arrival order.
fn received_of(sink: &RecordingSink, sent: &[Delivery]) -> Vec<Delivery> {
    sink.deliveries()
        .into_iter()
        .filter(|d| sent.contains(d))
        .collect()
}

/// Two nodes on `redis`, alice on the first, bob on the second, and a
/// delivery from the first to the second that went through (so the script
/// is loaded and the subscription is up).
async fn two_nodes(
    redis: &common::PrivateRedis,
    first: chat_bus_redis::RedisBusConfig,
) -> (
    Arc<RedisBus>,
    Arc<RecordingSink>,
    Arc<RedisBus>,
    Arc<RecordingSink>,
) {
    let prefix = common::unique_prefix();
    let n1 = common::node_at(&redis.url(), first.key_prefix(&prefix)).await;
    let n2 = common::node_at(&redis.url(), common::config(&prefix, "n2")).await;
    let s1 = attach(&n1).await;
    let s2 = attach(&n2).await;
    connect(&n1, &user("alice")).await;
    connect(&n2, &user("bob")).await;
    let probe = frame(&[&user("bob")], "warm-up");
    publish(&n1, &probe).await;
    assert!(
        s2.wait_until(WAIT, |s| s.count(&probe) == 1).await,
        "the warm-up delivery must reach node 2"
    );
    (n1, s1, n2, s2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_does_not_wait_for_a_paused_redis() {
    let Some(redis) =
        common::PrivateRedis::start_or_skip("publish_does_not_wait_for_a_paused_redis").await
    else {
        return;
    };
    let (n1, s1, _n2, s2) = two_nodes(&redis, common::config("", "n1")).await;

    common::pause_writes(&redis.url(), PAUSE).await;
    let paused = Instant::now();
    let sent = publish_quickly(&n1, &s1, "while paused", 20).await;
    let published = paused.elapsed();
    assert!(
        published < PAUSE / 2,
        "test too slow to prove anything: publishing took {published:?}"
    );
    assert!(
        received_of(&s2, &sent).is_empty(),
        "Redis is paused: nothing can have reached node 2 yet"
    );

    // Once Redis resumes, node 2 gets all of them, once each, in order.
    let all = s2
        .wait_until(WAIT, |s| received_of(s, &sent).len() >= sent.len())
        .await;
    let arrived = paused.elapsed();
    assert!(
        all,
        "only {} of {} deliveries reached node 2 after the pause",
        received_of(&s2, &sent).len(),
        sent.len()
    );
    eprintln!(
        "publish_does_not_wait_for_a_paused_redis: 20 publishes returned within {published:?}; \
         node 2 had them all {arrived:?} after the pause began ({PAUSE:?})"
    );
    assert!(
        arrived >= PAUSE - Duration::from_millis(100),
        "node 2 got them after {arrived:?}: was Redis paused at all?"
    );
    assert_eq!(
        received_of(&s2, &sent),
        sent,
        "node 2 gets every delivery once, in publish order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_new_deliveries_rather_than_wait() {
    let Some(redis) =
        common::PrivateRedis::start_or_skip("full_queue_drops_new_deliveries_rather_than_wait")
            .await
    else {
        return;
    };
    // Room for a few dozen of these deliveries.
    let limit = 8 << 10;
    let first = common::config("", "n1").publish_queue_bytes(limit);
    let (n1, s1, _n2, s2) = two_nodes(&redis, first).await;
    let before = n1.publish_stats();

    common::pause_writes(&redis.url(), PAUSE).await;
    let sent = publish_quickly(&n1, &s1, "overflow", 500).await;
    let stats = n1.publish_stats();
    let dropped = usize::try_from(stats.dropped - before.dropped).unwrap_or(usize::MAX);
    eprintln!("full_queue_drops_new_deliveries_rather_than_wait: {stats:?}");
    assert!(
        dropped > 0 && dropped < sent.len(),
        "a {limit}-byte queue holds some of 500 deliveries, not all: {stats:?}"
    );
    assert!(
        stats.pending_bytes <= limit,
        "the queue stays within its bound: {stats:?}"
    );
    assert_eq!(stats.pending, sent.len() - dropped);

    // The first ones queued reach node 2 once Redis resumes, in order; the
    // ones dropped never do.
    let kept = &sent[..sent.len() - dropped];
    let last = &kept[kept.len() - 1];
    assert!(s2.wait_until(WAIT, |s| s.count(last) == 1).await);
    assert_eq!(received_of(&s2, &sent), kept);
    let drained = tokio::time::timeout(WAIT, async {
        while n1.publish_stats().pending > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        drained.is_ok(),
        "the queue drains: {:?}",
        n1.publish_stats()
    );
    let after = n1.publish_stats();
    assert_eq!(after.sent - before.sent, kept.len() as u64);
    assert_eq!(after.failed, before.failed);

    // Room again: the next delivery goes through.
    let next = frame(&[&user("bob")], "after the overflow");
    publish(&n1, &next).await;
    assert!(s2.wait_until(WAIT, |s| s.count(&next) == 1).await);
    assert_eq!(
        received_of(&s2, &sent),
        kept,
        "no dropped delivery shows up late"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_the_queue_before_leaving() {
    let Some(redis) =
        common::PrivateRedis::start_or_skip("shutdown_sends_the_queue_before_leaving").await
    else {
        return;
    };
    let (n1, s1, n2, s2) = two_nodes(&redis, common::config("", "n1")).await;

    common::pause_writes(&redis.url(), PAUSE).await;
    let paused = Instant::now();
    let sent = publish_quickly(&n1, &s1, "before shutdown", 20).await;
    n1.shutdown().await;
    let shut = paused.elapsed();
    let stats = n1.publish_stats();
    eprintln!(
        "shutdown_sends_the_queue_before_leaving: shutdown returned after {shut:?}: {stats:?}"
    );
    assert!(
        shut >= PAUSE - Duration::from_millis(100),
        "shutdown must wait for Redis to take the queue; it returned after {shut:?}"
    );
    assert_eq!(stats.pending, 0, "{stats:?}");
    assert_eq!(stats.dropped + stats.failed, 0, "{stats:?}");

    let all = s2
        .wait_until(WAIT, |s| received_of(s, &sent).len() >= sent.len())
        .await;
    assert!(
        all,
        "only {} of {} deliveries queued before shutdown reached node 2",
        received_of(&s2, &sent).len(),
        sent.len()
    );
    assert_eq!(received_of(&s2, &sent), sent, "once each, in order");
    // And the node left afterwards: alice went offline at once.
    let alice = user("alice");
    let left = tokio::time::timeout(WAIT, async {
        while n2.online(std::slice::from_ref(&alice)).await.ok() != Some(vec![false]) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        left.is_ok(),
        "node 1 left the cluster after sending its queue"
    );

    // After shutdown, publish still reaches this node, and only it.
    let late = frame(&[&alice, &user("bob")], "after shutdown");
    publish(&n1, &late).await;
    assert_eq!(s1.count(&late), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s2.count(&late), 0);
}

/// Not a check: measures what one task (the engine's write lane) pays per
/// `publish`, and how soon another node has everything, on a healthy
/// Redis. Run with
/// `cargo test -p chat-bus-redis --release --test publish_queue -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run by hand"]
async fn measure_publish_cost() {
    let Some(redis) = common::PrivateRedis::start_or_skip("measure_publish_cost").await else {
        return;
    };
    let (n1, _s1, _n2, s2) = two_nodes(&redis, common::config("", "n1")).await;
    let (alice, bob) = (user("alice"), user("bob"));
    for round in 0..5 {
        let n = 5_000;
        let sent: Vec<Delivery> = (0..n)
            .map(|i| {
                frame(
                    &[&alice, &bob],
                    &format!("round {round} message {i} {}", "x".repeat(200)),
                )
            })
            .collect();
        let before = s2.deliveries().len();
        let mut took = Vec::with_capacity(n);
        let started = Instant::now();
        for d in &sent {
            let t = Instant::now();
            publish(&n1, d).await;
            took.push(t.elapsed());
        }
        let published = started.elapsed();
        // (`count` rather than `deliveries`, which would copy them all.)
        let last = &sent[n - 1];
        let all = s2
            .wait_until(Duration::from_secs(60), |s| s.count(last) > 0)
            .await;
        let arrived = started.elapsed();
        assert!(all, "not everything arrived");
        assert_eq!(s2.deliveries()[before..], sent[..], "order");
        took.sort_unstable();
        let pct = |p: usize| took[(took.len() * p / 100).min(took.len() - 1)];
        eprintln!(
            "round {round}: {n} publishes in {published:?} (p50 {:?}, p99 {:?}, max {:?}); \
             all on node 2 after {arrived:?} ({:.0}/s)",
            pct(50),
            pct(99),
            took[took.len() - 1],
            n as f64 / arrived.as_secs_f64()
        );
    }
}

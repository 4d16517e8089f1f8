//! The [`Bus`] conformance suite.
//!
//! [`bus_suite`] holds one public async function per behaviour of the
//! [`Bus`] contract (see the trait's `# Contract` section). Each function
//! takes a [`Cluster`], which makes the nodes of one fresh, isolated
//! cluster, and panics with a message naming the broken rule.
//!
//! Single-node cases run on any bus. Cases that need two or three nodes
//! over one backend (cross-node delivery, presence across nodes, node
//! death) run only on a [`Cluster::multi_node`]; on a
//! [`Cluster::single_node`] such as [`LocalBus`](crate::LocalBus) they
//! return at once, saying so on stderr.
//!
//! An adapter crate runs the whole suite with
//! [`bus_conformance_tests!`](crate::bus_conformance_tests), which expands
//! into one `#[tokio::test]` per case:
//!
//! ```ignore
//! // chat-bus-foo/tests/conformance.rs
//! use std::{sync::Arc, time::Duration};
//!
//! use chat_core::{Bus, testing::{BusFixture, Cluster}};
//!
//! async fn setup() -> Option<BusFixture> {
//!     // `None` skips the case (say why on stderr): e.g. no backend here.
//!     let prefix = unique_prefix();
//!     let cluster = Cluster::multi_node(Duration::from_secs(2), move |node| {
//!         let prefix = prefix.clone();
//!         async move {
//!             let bus = FooBus::connect(&prefix, &node, Duration::from_secs(2)).await;
//!             Arc::new(bus.expect("connect")) as Arc<dyn Bus>
//!         }
//!     });
//!     Some(BusFixture::new(cluster))
//! }
//!
//! chat_core::bus_conformance_tests!(setup);
//! ```
//!
//! # Node death
//!
//! The suite kills a node by dropping the last `Arc` to its bus. A
//! multi-node bus must treat that as a crash: stop heartbeating at once and
//! leave its presence behind, for the survivors to expire.

use std::{
    fmt,
    future::Future,
    panic::{AssertUnwindSafe, resume_unwind},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::FutureExt;

use super::CASE_TIMEOUT;
use crate::{
    bus::{Bus, Delivery, DeliverySink},
    model::UserId,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

type MakeNode = dyn Fn(String) -> BoxFuture<Arc<dyn Bus>> + Send + Sync;

/// Makes the nodes of one cluster: buses over one backend, isolated from
/// every other case's.
///
/// Cheap to clone; each [`Cluster::node`] call makes a new node.
#[derive(Clone)]
pub struct Cluster {
    make: Arc<MakeNode>,
    node_ttl: Option<Duration>,
}

impl Cluster {
    /// A bus that is one node by nature, such as
    /// [`LocalBus`](crate::LocalBus): each call of `make` returns an
    /// independent bus, and the multi-node cases are skipped.
    pub fn single_node<F, Fut>(make: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Arc<dyn Bus>> + Send + 'static,
    {
        Self {
            make: Arc::new(move |name| Box::pin(make(name))),
            node_ttl: None,
        }
    }

    /// A bus whose nodes share a backend: every call of `make` returns a new
    /// node of the same cluster (named after its argument, for logs). A node
    /// whose bus is dropped is dead, and its users must go offline on the
    /// survivors within `node_ttl`.
    pub fn multi_node<F, Fut>(node_ttl: Duration, make: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Arc<dyn Bus>> + Send + 'static,
    {
        Self {
            make: Arc::new(move |name| Box::pin(make(name))),
            node_ttl: Some(node_ttl),
        }
    }

    /// A new node named `name`.
    pub async fn node(&self, name: &str) -> Arc<dyn Bus> {
        (self.make)(name.to_owned()).await
    }

    /// Whether nodes made here share state (see [`Cluster::multi_node`]).
    pub fn is_multi_node(&self) -> bool {
        self.node_ttl.is_some()
    }

    /// How long a dead node's users may stay online, if multi-node.
    pub fn node_ttl(&self) -> Option<Duration> {
        self.node_ttl
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("node_ttl", &self.node_ttl)
            .finish_non_exhaustive()
    }
}

type Cleanup = Box<dyn FnOnce() -> BoxFuture<()> + Send>;

/// One case's [`Cluster`], and what to clean up after it.
///
/// The setup function given to
/// [`bus_conformance_tests!`](crate::bus_conformance_tests) returns one per
/// case (or `None` to skip the case).
pub struct BusFixture {
    cluster: Cluster,
    cleanup: Option<Cleanup>,
}

impl BusFixture {
    /// A fixture that needs no cleanup.
    pub fn new(cluster: Cluster) -> Self {
        Self {
            cluster,
            cleanup: None,
        }
    }

    /// Runs `cleanup` after the case, whether it passed or not (e.g. deletes
    /// the case's keys). The case's buses are dropped by then.
    pub fn with_cleanup<F, Fut>(mut self, cleanup: F) -> Self
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.cleanup = Some(Box::new(move || Box::pin(cleanup())));
        self
    }

    /// Runs one case (a function of [`bus_suite`]) on the cluster, failing
    /// it if it takes longer than [`CASE_TIMEOUT`], then cleans up.
    pub async fn run<F, Fut>(self, name: &str, case: F)
    where
        F: FnOnce(Cluster) -> Fut,
        Fut: Future<Output = ()>,
    {
        let outcome = AssertUnwindSafe(tokio::time::timeout(
            CASE_TIMEOUT,
            case(self.cluster.clone()),
        ))
        .catch_unwind()
        .await;
        drop(self.cluster);
        if let Some(cleanup) = self.cleanup {
            cleanup().await;
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!(
                "bus conformance case `{name}` did not finish within {CASE_TIMEOUT:?} \
                 (a lost delivery or a hung backend call?)"
            ),
            Err(panic) => resume_unwind(panic),
        }
    }
}

impl fmt::Debug for BusFixture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusFixture")
            .field("cluster", &self.cluster)
            .field("cleanup", &self.cleanup.as_ref().map(|_| ".."))
            .finish()
    }
}

/// A [`DeliverySink`] that records what it is given, for tests.
#[derive(Debug, Default)]
pub struct RecordingSink {
    deliveries: Mutex<Vec<Delivery>>,
    offline: Mutex<Vec<UserId>>,
}

impl RecordingSink {
    /// An empty sink.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).clone()
    }

    /// How many times `delivery` arrived.
    pub fn count(&self, delivery: &Delivery) -> usize {
        lock(&self.deliveries)
            .iter()
            .filter(|d| *d == delivery)
            .count()
    }

    /// Every user reported by [`DeliverySink::users_went_offline`] so far,
    /// in order, one entry per report.
    pub fn went_offline(&self) -> Vec<UserId> {
        lock(&self.offline).clone()
    }

    /// Polls `done` until it holds or `timeout` passes; returns whether it
    /// held.
    pub async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl DeliverySink for RecordingSink {
    fn deliver(&self, delivery: &Delivery) {
        lock(&self.deliveries).push(delivery.clone());
    }

    fn users_went_offline(&self, users: Vec<UserId>) {
        lock(&self.offline).extend(users);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Expands into one `#[tokio::test]` per case of
/// [`bus_suite`](crate::testing::bus_suite).
///
/// The argument is an async function (or any expression callable with no
/// arguments that returns a future) producing an
/// `Option<`[`BusFixture`](crate::testing::BusFixture)`>`; `None` skips the
/// case (the setup says why, e.g. the backend is unreachable):
///
/// ```ignore
/// async fn setup() -> Option<chat_core::testing::BusFixture> {
///     use chat_core::{Bus, LocalBus, testing::{BusFixture, Cluster}};
///     let cluster = Cluster::single_node(|_node| async {
///         std::sync::Arc::new(LocalBus::new()) as std::sync::Arc<dyn Bus>
///     });
///     Some(BusFixture::new(cluster))
/// }
///
/// chat_core::bus_conformance_tests!(setup);
/// ```
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread`
/// features (as a dev-dependency). Arms starting with `@` are internal.
#[macro_export]
macro_rules! bus_conformance_tests {
    (@list $($then:tt)*) => {
        $crate::bus_conformance_tests! { @$($then)* [
            publish_reaches_local_sink,
            publish_keeps_order_on_local_node,
            every_action_reaches_local_sink_unchanged,
            publish_without_sink_is_harmless,
            first_connection_comes_online,
            last_disconnection_goes_offline,
            user_comes_online_again_after_going_offline,
            online_answers_each_user_in_order,
            publish_reaches_other_node,
            node_gets_one_delivery_for_many_of_its_users,
            publish_keeps_order_across_nodes,
            every_action_crosses_nodes_unchanged,
            user_on_two_nodes_is_online_until_both_leave,
            presence_is_seen_from_every_node,
            dead_node_users_go_offline_within_ttl,
            dead_node_is_announced_by_one_survivor,
            user_who_moved_off_a_dead_node_stays_online,
            nodes_of_a_cluster_are_not_single_node,
        ] }
    };
    (@names [$($case:ident),* $(,)?]) => {
        /// The names of all cases, in the order the suite lists them (the
        /// names of the tests that
        /// [`bus_conformance_tests!`](crate::bus_conformance_tests)
        /// generates).
        pub const CASES: &[&str] = &[$(::core::stringify!($case)),*];
    };
    (@tests $setup:expr; [$($case:ident),* $(,)?]) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: ::core::option::Option<$crate::testing::BusFixture> =
                    ($setup)().await;
                if let ::core::option::Option::Some(fixture) = fixture {
                    fixture
                        .run(
                            ::core::stringify!($case),
                            $crate::testing::bus_suite::$case,
                        )
                        .await;
                }
            }
        )*
    };
    ($setup:expr $(,)?) => {
        $crate::bus_conformance_tests! { @list tests $setup; }
    };
}

/// The [`Bus`] conformance cases: one function per behaviour.
///
/// Every function takes a [`Cluster`] and panics with a message naming the
/// broken rule. Cases that need several nodes return at once on a
/// single-node cluster.
pub mod bus_suite {
    use std::{collections::HashSet, sync::Arc, time::Duration};

    use tokio::time::Instant;

    use super::{Cluster, RecordingSink};
    use crate::{
        bus::{Action, Audience, Bus, Delivery},
        error::Result,
        model::{ChatId, UserId},
    };

    crate::bus_conformance_tests!(@list names);

    /// How long a delivery may take to reach a node.
    const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

    /// How late after the node TTL a dead node's users may be reported.
    const DEATH_SLACK: Duration = Duration::from_secs(1);

    // --- helpers -------------------------------------------------------------

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

    /// An event that carries `text`.
    fn text_event(text: &str) -> crate::event::Event {
        crate::event::ServerEvent::Error(crate::event::ErrorBody {
            code: crate::ErrorCode::Internal,
            message: text.to_owned(),
        })
        .encode()
    }

    /// A frame for `users` whose text is `text`.
    fn frame(users: &[&UserId], text: &str) -> Delivery {
        Delivery {
            audience: Audience::users(users.iter().map(|u| (*u).clone()).collect::<Vec<_>>()),
            action: Action::Event(text_event(text)),
        }
    }

    async fn attach(bus: &Arc<dyn Bus>) -> Arc<RecordingSink> {
        let sink = RecordingSink::new();
        ok(bus.attach(sink.clone()).await, "attach");
        sink
    }

    async fn connect(bus: &Arc<dyn Bus>, user: &UserId) -> bool {
        ok(bus.user_connected(user).await, "user_connected")
    }

    async fn disconnect(bus: &Arc<dyn Bus>, user: &UserId) -> bool {
        ok(bus.user_disconnected(user).await, "user_disconnected")
    }

    async fn online(bus: &Arc<dyn Bus>, users: &[&UserId]) -> Vec<bool> {
        let users: Vec<UserId> = users.iter().map(|u| (*u).clone()).collect();
        let answer = ok(bus.online(&users).await, "online");
        assert_eq!(
            answer.len(),
            users.len(),
            "online must answer once per user asked about"
        );
        answer
    }

    async fn publish(bus: &Arc<dyn Bus>, delivery: &Delivery) {
        ok(bus.publish(delivery.clone()).await, "publish");
    }

    /// Publishes a marker to `user` from `from` and waits until it reached
    /// `sink`: deliveries `from` published before it have arrived by then
    /// (deliveries from one task keep their order), and so would have any
    /// duplicate of them.
    async fn fence(from: &Arc<dyn Bus>, sink: &RecordingSink, user: &UserId, tag: &str) {
        let marker = frame(&[user], &format!("fence {tag}"));
        publish(from, &marker).await;
        let arrived = sink
            .wait_until(DELIVERY_TIMEOUT, |s| s.count(&marker) > 0)
            .await;
        assert!(
            arrived,
            "a delivery to {user} did not arrive within {DELIVERY_TIMEOUT:?}"
        );
    }

    /// The TTL of a multi-node cluster, or `None` (and a note) if the case
    /// does not apply.
    fn multi_node(cluster: &Cluster, case: &str) -> Option<Duration> {
        let ttl = cluster.node_ttl();
        if ttl.is_none() {
            eprintln!("bus_suite::{case}: skipped, the bus under test is single-node");
        }
        ttl
    }

    // --- one node ------------------------------------------------------------

    /// A delivery reaches the sink of the publishing node, once.
    pub async fn publish_reaches_local_sink(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let sink = attach(&bus).await;
        let alice = user("alice");
        let bob = user("bob");
        connect(&bus, &alice).await;
        let hello = frame(&[&alice, &bob], "hello");
        publish(&bus, &hello).await;
        fence(&bus, &sink, &alice, "1").await;
        assert_eq!(
            sink.count(&hello),
            1,
            "a delivery must reach the publishing node exactly once"
        );
    }

    /// Deliveries published by one task reach the local sink in order.
    pub async fn publish_keeps_order_on_local_node(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let sink = attach(&bus).await;
        let alice = user("alice");
        connect(&bus, &alice).await;
        let sent: Vec<Delivery> = (0..100)
            .map(|i| frame(&[&alice], &format!("m{i}")))
            .collect();
        for d in &sent {
            publish(&bus, d).await;
        }
        let all = sink
            .wait_until(DELIVERY_TIMEOUT, |s| s.deliveries().len() >= sent.len())
            .await;
        assert!(
            all,
            "not every delivery arrived within {DELIVERY_TIMEOUT:?}"
        );
        assert_eq!(
            sink.deliveries(),
            sent,
            "deliveries from one task must arrive once each, in publish order"
        );
    }

    /// Every kind of action, and every audience field, reaches the local
    /// sink as published.
    pub async fn every_action_reaches_local_sink_unchanged(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let sink = attach(&bus).await;
        let alice = user("alice");
        connect(&bus, &alice).await;
        let sent = assorted_deliveries(&alice);
        for d in &sent {
            publish(&bus, d).await;
        }
        fence(&bus, &sink, &alice, "1").await;
        for d in &sent {
            assert_eq!(sink.count(d), 1, "{d:?} must arrive once, unchanged");
        }
    }

    fn assorted_deliveries(to: &UserId) -> Vec<Delivery> {
        let typist = user("typist.1@example:x");
        let chat = ChatId::new();
        vec![
            Delivery {
                audience: Audience {
                    users: vec![to.clone(), typist.clone()].into(),
                    except_user: Some(typist),
                    chat_open: Some(chat),
                    device: None,
                },
                action: Action::Event(text_event("h\u{e9}llo \u{1f44b} \"q\"\n")),
            },
            Delivery {
                audience: Audience::users(vec![to.clone()]),
                action: Action::CloseChat(chat),
            },
            Delivery {
                audience: Audience::users(vec![to.clone()]),
                action: Action::Disconnect {
                    code: 4003,
                    reason: "suspended: \u{e9}t\u{e9}".to_owned(),
                },
            },
        ]
    }

    /// Publishing before a sink is attached neither fails nor panics.
    pub async fn publish_without_sink_is_harmless(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let alice = user("alice");
        connect(&bus, &alice).await;
        publish(&bus, &frame(&[&alice], "nobody listens")).await;
        let sink = attach(&bus).await;
        fence(&bus, &sink, &alice, "1").await;
    }

    /// The first `user_connected` brings a user online; a second one on the
    /// same node does not (the user was online already).
    pub async fn first_connection_comes_online(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let alice = user("alice");
        assert_eq!(
            online(&bus, &[&alice]).await,
            [false],
            "nobody is online yet"
        );
        assert!(
            connect(&bus, &alice).await,
            "the first user_connected must report that the user came online"
        );
        assert!(
            !connect(&bus, &alice).await,
            "user_connected for a user already online must report false"
        );
        assert_eq!(online(&bus, &[&alice]).await, [true]);
    }

    /// `user_disconnected` of the only node holding a user takes the user
    /// offline.
    pub async fn last_disconnection_goes_offline(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let alice = user("alice");
        connect(&bus, &alice).await;
        assert!(
            disconnect(&bus, &alice).await,
            "the last user_disconnected must report that the user went offline"
        );
        assert_eq!(online(&bus, &[&alice]).await, [false]);
    }

    /// A user who went offline comes online again on the next connection.
    pub async fn user_comes_online_again_after_going_offline(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let alice = user("alice");
        connect(&bus, &alice).await;
        disconnect(&bus, &alice).await;
        assert!(
            connect(&bus, &alice).await,
            "connecting again after going offline must report coming online"
        );
        assert_eq!(online(&bus, &[&alice]).await, [true]);
    }

    /// `online` answers for each user asked about, in order, duplicates
    /// included; an empty question gets an empty answer.
    pub async fn online_answers_each_user_in_order(cluster: Cluster) {
        let bus = cluster.node("node-1").await;
        let (a, b, c) = (user("a"), user("b"), user("c"));
        connect(&bus, &a).await;
        connect(&bus, &c).await;
        assert_eq!(
            online(&bus, &[&a, &b, &c, &a]).await,
            [true, false, true, true]
        );
        assert_eq!(online(&bus, &[]).await, Vec::<bool>::new());
        disconnect(&bus, &c).await;
        assert_eq!(online(&bus, &[&c, &b, &a]).await, [false, false, true]);
    }

    // --- several nodes -------------------------------------------------------

    /// A delivery published on one node reaches the node holding its
    /// audience, once.
    pub async fn publish_reaches_other_node(cluster: Cluster) {
        if multi_node(&cluster, "publish_reaches_other_node").is_none() {
            return;
        }
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        let s1 = attach(&n1).await;
        let s2 = attach(&n2).await;
        let (alice, bob) = (user("alice"), user("bob"));
        connect(&n1, &alice).await;
        connect(&n2, &bob).await;

        let to_bob = frame(&[&bob], "to bob");
        publish(&n1, &to_bob).await;
        fence(&n1, &s2, &bob, "1").await;
        assert_eq!(s2.count(&to_bob), 1, "node 2 holds bob: exactly once");

        let to_alice = frame(&[&alice], "to alice");
        publish(&n2, &to_alice).await;
        fence(&n2, &s1, &alice, "2").await;
        assert_eq!(s1.count(&to_alice), 1, "node 1 holds alice: exactly once");
    }

    /// A bus between nodes says so: the engine caches chats only on a
    /// single node, because another node may change a chat at any time.
    pub async fn nodes_of_a_cluster_are_not_single_node(cluster: Cluster) {
        if multi_node(&cluster, "nodes_of_a_cluster_are_not_single_node").is_none() {
            return;
        }
        let node = cluster.node("node-1").await;
        assert!(
            !node.single_node(),
            "a bus whose nodes share a backend must not claim single_node()"
        );
    }

    /// A node holding several users of an audience gets the delivery once
    /// (its sink reaches every local connection of each), and so does the
    /// publishing node.
    pub async fn node_gets_one_delivery_for_many_of_its_users(cluster: Cluster) {
        if multi_node(&cluster, "node_gets_one_delivery_for_many_of_its_users").is_none() {
            return;
        }
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        let s1 = attach(&n1).await;
        let s2 = attach(&n2).await;
        let (a, b, c, d) = (user("a"), user("b"), user("c"), user("d"));
        connect(&n1, &a).await;
        for u in [&b, &c, &d] {
            connect(&n2, u).await;
        }
        // Bob's first connection on node 1 too: node 1 holds two of them.
        connect(&n1, &b).await;
        let group = frame(&[&a, &b, &c, &d], "group of four");
        publish(&n1, &group).await;
        fence(&n1, &s2, &d, "1").await;
        fence(&n1, &s1, &a, "2").await;
        assert_eq!(
            s2.count(&group),
            1,
            "node 2 holds b, c and d: it must get the delivery exactly once"
        );
        assert_eq!(
            s1.count(&group),
            1,
            "the publishing node holds a and b: it must get the delivery exactly once"
        );
    }

    /// Deliveries published by one task reach another node in order.
    pub async fn publish_keeps_order_across_nodes(cluster: Cluster) {
        if multi_node(&cluster, "publish_keeps_order_across_nodes").is_none() {
            return;
        }
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        attach(&n1).await;
        let s2 = attach(&n2).await;
        let bob = user("bob");
        connect(&n2, &bob).await;
        let sent: Vec<Delivery> = (0..200).map(|i| frame(&[&bob], &format!("m{i}"))).collect();
        for d in &sent {
            publish(&n1, d).await;
        }
        let all = s2
            .wait_until(DELIVERY_TIMEOUT, |s| s.deliveries().len() >= sent.len())
            .await;
        assert!(
            all,
            "only {} of {} deliveries reached node 2 within {DELIVERY_TIMEOUT:?}",
            s2.deliveries().len(),
            sent.len()
        );
        assert_eq!(
            s2.deliveries(),
            sent,
            "deliveries from one task must reach another node once each, in publish order"
        );
    }

    /// Every kind of action, and every audience field (typing's
    /// `except_user` and `chat_open`), crosses nodes unchanged.
    pub async fn every_action_crosses_nodes_unchanged(cluster: Cluster) {
        if multi_node(&cluster, "every_action_crosses_nodes_unchanged").is_none() {
            return;
        }
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        attach(&n1).await;
        let s2 = attach(&n2).await;
        let bob = user("bob");
        connect(&n2, &bob).await;
        let sent = assorted_deliveries(&bob);
        for d in &sent {
            publish(&n1, d).await;
        }
        fence(&n1, &s2, &bob, "1").await;
        for d in &sent {
            assert_eq!(s2.count(d), 1, "{d:?} must reach node 2 once, unchanged");
        }
    }

    /// A user connected on two nodes came online with the first and goes
    /// offline with the last; every node sees the same.
    pub async fn user_on_two_nodes_is_online_until_both_leave(cluster: Cluster) {
        if multi_node(&cluster, "user_on_two_nodes_is_online_until_both_leave").is_none() {
            return;
        }
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        let alice = user("alice");
        assert!(connect(&n1, &alice).await, "first node: came online");
        assert!(
            !connect(&n2, &alice).await,
            "second node: alice was online on node 1 already"
        );
        assert!(
            !disconnect(&n1, &alice).await,
            "alice is still connected on node 2: not offline"
        );
        assert_eq!(online(&n1, &[&alice]).await, [true], "seen from node 1");
        assert_eq!(online(&n2, &[&alice]).await, [true], "seen from node 2");
        assert!(
            disconnect(&n2, &alice).await,
            "the last node let go: offline everywhere"
        );
        assert_eq!(online(&n1, &[&alice]).await, [false], "seen from node 1");
        assert_eq!(online(&n2, &[&alice]).await, [false], "seen from node 2");
        assert!(
            connect(&n1, &alice).await,
            "back on node 1 after being offline everywhere: came online"
        );
    }

    /// `online` answers for the cluster, not for the asking node.
    pub async fn presence_is_seen_from_every_node(cluster: Cluster) {
        if multi_node(&cluster, "presence_is_seen_from_every_node").is_none() {
            return;
        }
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        let (alice, bob) = (user("alice"), user("bob"));
        connect(&n1, &alice).await;
        assert_eq!(online(&n1, &[&alice, &bob]).await, [true, false]);
        assert!(
            connect(&n2, &bob).await,
            "bob was offline everywhere: came online"
        );
        assert_eq!(online(&n1, &[&alice, &bob]).await, [true, true]);
        assert_eq!(online(&n2, &[&alice, &bob]).await, [true, true]);
        disconnect(&n2, &bob).await;
        assert_eq!(online(&n1, &[&alice, &bob]).await, [true, false]);
    }

    /// When a node dies, its users who are on no other node go offline
    /// within the TTL, and a survivor reports them with
    /// `users_went_offline`; users still connected elsewhere stay online.
    pub async fn dead_node_users_go_offline_within_ttl(cluster: Cluster) {
        let Some(ttl) = multi_node(&cluster, "dead_node_users_go_offline_within_ttl") else {
            return;
        };
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        let s1 = attach(&n1).await;
        attach(&n2).await;
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        connect(&n1, &alice).await;
        connect(&n2, &alice).await;
        connect(&n2, &bob).await;
        connect(&n2, &carol).await;
        assert_eq!(
            online(&n1, &[&alice, &bob, &carol]).await,
            [true, true, true]
        );

        drop(n2);
        let died = Instant::now();
        let reported = s1
            .wait_until(ttl + DEATH_SLACK, |s| {
                let gone = s.went_offline();
                gone.contains(&bob) && gone.contains(&carol)
            })
            .await;
        assert!(
            reported,
            "the survivor must report bob and carol offline within the TTL ({ttl:?} + \
             {DEATH_SLACK:?} slack) of their node's death; reported: {:?}",
            s1.went_offline()
        );
        eprintln!(
            "dead_node_users_go_offline_within_ttl: reported {:?} after the node died (TTL {ttl:?})",
            died.elapsed()
        );
        assert_eq!(
            online(&n1, &[&alice, &bob, &carol]).await,
            [true, false, false],
            "after the report, the dead node's users are offline, alice (on node 1 too) is not"
        );
        tokio::time::sleep(ttl / 2).await;
        let gone = s1.went_offline();
        assert!(
            !gone.contains(&alice),
            "alice is still connected on node 1: she must not be reported offline"
        );
        assert_eq!(
            gone.iter().filter(|u| **u == bob).count(),
            1,
            "bob must be reported once: {gone:?}"
        );
    }

    /// With several survivors, exactly one reports each of a dead node's
    /// users offline.
    pub async fn dead_node_is_announced_by_one_survivor(cluster: Cluster) {
        let Some(ttl) = multi_node(&cluster, "dead_node_is_announced_by_one_survivor") else {
            return;
        };
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        let n3 = cluster.node("node-3").await;
        let s1 = attach(&n1).await;
        let s2 = attach(&n2).await;
        attach(&n3).await;
        let (bob, carol) = (user("bob"), user("carol"));
        connect(&n3, &bob).await;
        connect(&n3, &carol).await;

        drop(n3);
        let reported = s1
            .wait_until(ttl + DEATH_SLACK, |_| {
                let all: Vec<UserId> = s1
                    .went_offline()
                    .into_iter()
                    .chain(s2.went_offline())
                    .collect();
                all.contains(&bob) && all.contains(&carol)
            })
            .await;
        assert!(
            reported,
            "a survivor must report the dead node's users within {ttl:?} + {DEATH_SLACK:?}"
        );
        // Give a second survivor every chance to report them again.
        tokio::time::sleep(ttl).await;
        let all: Vec<UserId> = s1
            .went_offline()
            .into_iter()
            .chain(s2.went_offline())
            .collect();
        for u in [&bob, &carol] {
            assert_eq!(
                all.iter().filter(|x| *x == u).count(),
                1,
                "{u} must be reported offline exactly once cluster-wide; node 1 reported {:?}, \
                 node 2 reported {:?}",
                s1.went_offline(),
                s2.went_offline()
            );
        }
        assert_eq!(online(&n1, &[&bob, &carol]).await, [false, false]);
        assert_eq!(online(&n2, &[&bob, &carol]).await, [false, false]);
    }

    /// A user of a dead node who connected to a survivor before the dead
    /// node expired is not reported offline, and stays online.
    pub async fn user_who_moved_off_a_dead_node_stays_online(cluster: Cluster) {
        let Some(ttl) = multi_node(&cluster, "user_who_moved_off_a_dead_node_stays_online") else {
            return;
        };
        let n1 = cluster.node("node-1").await;
        let n2 = cluster.node("node-2").await;
        let s1 = attach(&n1).await;
        attach(&n2).await;
        let (bob, carol) = (user("bob"), user("carol"));
        connect(&n2, &bob).await;
        connect(&n2, &carol).await;

        drop(n2);
        // Bob's client reconnects to node 1 at once. Whether that counts
        // as coming online depends on how fast the bus notices the death.
        connect(&n1, &bob).await;
        let carol_reported = s1
            .wait_until(ttl + DEATH_SLACK, |s| s.went_offline().contains(&carol))
            .await;
        assert!(
            carol_reported,
            "carol (only on the dead node) must be reported offline within {ttl:?} + {DEATH_SLACK:?}"
        );
        tokio::time::sleep(ttl / 2).await;
        assert!(
            !s1.went_offline().contains(&bob),
            "bob is connected on node 1: he must not be reported offline"
        );
        assert_eq!(online(&n1, &[&bob, &carol]).await, [true, false]);
        let unique: HashSet<UserId> = s1.went_offline().into_iter().collect();
        assert_eq!(
            unique.len(),
            s1.went_offline().len(),
            "no user reported twice"
        );
    }
}

#[cfg(test)]
mod local_bus {
    use std::sync::Arc;

    use super::{BusFixture, Cluster, bus_suite};
    use crate::{Bus, LocalBus};

    async fn setup() -> Option<BusFixture> {
        let cluster =
            Cluster::single_node(|_node| async { Arc::new(LocalBus::new()) as Arc<dyn Bus> });
        Some(BusFixture::new(cluster))
    }

    crate::bus_conformance_tests!(setup);

    #[test]
    fn cases_are_listed_once() {
        let mut names = bus_suite::CASES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), bus_suite::CASES.len());
    }

    #[tokio::test]
    async fn cleanup_runs_after_a_failing_case() {
        use std::sync::atomic::{AtomicBool, Ordering};

        let cleaned = Arc::new(AtomicBool::new(false));
        let flag = cleaned.clone();
        let fixture = BusFixture::new(Cluster::single_node(|_node| async {
            Arc::new(LocalBus::new()) as Arc<dyn Bus>
        }))
        .with_cleanup(move || async move { flag.store(true, Ordering::SeqCst) });
        let outcome = tokio::spawn(fixture.run("probe", |_cluster| async {
            panic!("the case fails");
        }))
        .await;
        assert!(outcome.is_err(), "the case's panic propagates");
        assert!(cleaned.load(Ordering::SeqCst), "cleanup ran anyway");
    }
}

//! Redis implementation of the chat engine's [`Bus`](chat_core::Bus):
//! fan-out and presence across server nodes, on [`fred`].
//!
//! Every node of a cluster connects a [`RedisBus`] to the same Redis (7.0
//! or later, standalone or behind Sentinel; the Lua scripts build key names,
//! so not Redis Cluster) with the same [key prefix](RedisBusConfig::key_prefix).
//! A single node does not need it: use [`LocalBus`](chat_core::LocalBus).
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use chat_bus_redis::{RedisBus, RedisBusConfig};
//! use chat_core::{ChatEngine, MemoryStore};
//!
//! # async fn run() -> chat_core::Result<()> {
//! let bus = RedisBus::connect("redis://127.0.0.1:6379", RedisBusConfig::default()).await?;
//! let engine = ChatEngine::builder(Arc::new(MemoryStore::new()))
//!     .bus(Arc::new(bus))
//!     .build()
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Channel scheme: one channel per node, routed by a user -> nodes registry
//!
//! Each node subscribes to one channel, `<prefix>:to:<node>`. Presence
//! already needs to know which nodes hold which users, so Redis keeps that
//! registry (`<prefix>:user:<user>`: the set of nodes holding the user),
//! and each [`publish`](chat_core::Bus::publish) is one Lua script that
//! reads the audience's sets and `PUBLISH`es the delivery, once, to each
//! *other* node that holds at least one of the audience (the typist of a
//! typing event excepted). The publishing node hands the delivery to its
//! own sink directly, without Redis, and leaves the script to a background
//! task (see [below](#publishing-without-waiting-for-redis)); each
//! receiving node hands it to its sink (the hub), which reaches every local
//! connection of every audience user.
//!
//! Cost for a message to a group of 50 whose members are spread over `n`
//! nodes: one `EVALSHA` carrying the event once, 50 `SMEMBERS` of tiny sets
//! inside Redis, and at most `min(n - 1, 50)` `PUBLISH`es: each concerned
//! node receives the event **once**, however many members it holds, and
//! nodes holding none receive nothing. The alternatives cost more:
//!
//! - per-user channels need 50 `PUBLISH`es of 50 copies of the event per
//!   message (a node holding 30 members receives it 30 times), and a
//!   `SUBSCRIBE`/`UNSUBSCRIBE` on every user's first connection and last
//!   disconnection;
//! - one broadcast channel sends every event to every node, concerned or
//!   not: `n` copies per message, whatever the audience.
//!
//! The price of routing is a lookup per publish, paid inside the same
//! script (one round trip), atomically with presence changes: a node that
//! registered a user before the script ran is always reached.
//!
//! **Exactly once.** The script publishes once per node; the publishing
//! node is left out of it and delivers locally once; commands are never
//! resent after a broken connection or a timeout (a publish cut off by a
//! disconnect is lost, never doubled: clients catch up with `sync`). Only a
//! script Redis refused to run because it did not know it (`NOSCRIPT`) is
//! sent again, once loaded.
//!
//! **Typing** needs nothing special: its delivery names the chat's members
//! with `except_user` (the typist, whose nodes are not sent it for their
//! own sake) and `chat_open`, which each receiving hub applies to its
//! connections.
//!
//! **Order.** A node's deliveries go through one queue, which one task
//! sends in order on one connection, and Redis runs scripts one at a time,
//! so the `PUBLISH`es of a node's deliveries happen in the order `publish`
//! was called (across all its callers, not only per task), and each node's
//! subscription receives its channel in that order. A delivery lost to a
//! failure or a full queue leaves a gap, never an inversion.
//!
//! # Publishing without waiting for Redis
//!
//! The engine calls `publish` inline on its write lane, for every applied
//! change, in commit order: a Redis round trip there would hold every send
//! of the lane behind the slowest Redis call. So `publish` does local work
//! only: it hands the delivery to this node's sink and pushes it onto the
//! node's **publish queue** (a lock and a push, under a microsecond), and
//! returns. One background task drains the queue in order: it takes what
//! has queued up (at most 256 deliveries or 1 MiB), encodes it (the JSON
//! payload and the audience's keys are built there, not by the caller), and
//! sends it as one pipeline of `EVALSHA`s; the next batch waits for the
//! replies. Batches follow the load: one delivery per round trip when
//! traffic is light, hundreds during a burst, which about triples what one
//! node can route to the others (measured from one task on a local Redis:
//! about 5,000 deliveries/s at one round trip each, 14,000-21,000/s
//! pipelined).
//!
//! **A full queue drops; it does not wait.** The queue is bounded by
//! [`publish_queue_bytes`](RedisBusConfig::publish_queue_bytes) (16 MiB by
//! default), counting each delivery's event and audience, the batch being
//! sent included. A delivery that does not fit still reaches this node's
//! connections, but not the other nodes: the bus logs a warning when a run
//! of drops starts and when it ends, and counts them
//! ([`PublishStats::dropped`], from [`RedisBus::publish_stats`]). Waiting
//! for room instead would hand a slow or hung Redis straight back to the
//! write lane, stalling every send of the node, even in chats whose members
//! are all on it, for up to a [command
//! timeout](RedisBusConfig::command_timeout) per batch; and the bus never
//! blocks on Redis anywhere else. What a drop loses is live delivery on
//! other nodes, which the bus already gives up when Redis is cut off or a
//! node falls behind its subscription: messages are stored before they are
//! published, and clients catch up with `sync`. The queue fills only when
//! Redis is slower than the node's traffic for as long as the bound lasts
//! (seconds of a busy node's deliveries); a disconnected Redis does not
//! fill it, since commands then fail at once.
//!
//! **Errors** from Redis are logged and counted ([`PublishStats::failed`])
//! by the task, not returned by `publish`.
//!
//! **Shutdown.** [`RedisBus::shutdown`] closes the queue (later publishes
//! reach this node only), waits up to the command timeout for the task to
//! send what it holds, and only then leaves the cluster. Dropping the bus
//! without `shutdown` is a crash: what is queued is lost.
//!
//! # Presence
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:nodes` | sorted set | node id -> deadline (ms, Redis clock) |
//! | `<prefix>:node:<node>` | set | users the node holds |
//! | `<prefix>:user:<user>` | set | nodes holding the user |
//!
//! A node is live while its deadline is in the future. Its heartbeat (every
//! [TTL](RedisBusConfig::presence_ttl) / 3, 10 s by default) sets the
//! deadline to now + TTL. Redis 7.0 cannot expire one member of a set, and
//! an expiring key would take with it the list of users to announce, so the
//! TTL is this deadline, checked against Redis's own clock (`TIME`) so that
//! node clocks never matter. `<prefix>:nodes` and the node sets also carry
//! a real expiry of ten TTLs, refreshed by the heartbeats, that only ever
//! removes what a cluster that died whole left behind; a user's set
//! disappears when its last node leaves or is swept (a node id left in it
//! by such a cluster counts as dead, and goes at the user's next
//! disconnection).
//!
//! - [`user_connected`](chat_core::Bus::user_connected) adds the user to both
//!   sets and returns true only if no *live* node held the user before;
//!   [`user_disconnected`](chat_core::Bus::user_disconnected) removes them
//!   and returns true only if no live node holds the user now;
//!   [`online`](chat_core::Bus::online) answers from the sets and the
//!   deadlines. A dead node's users thus count as offline as soon as its
//!   deadline passes, at most one TTL after its last heartbeat.
//! - Each node also wakes up at the next deadline of another node. If it
//!   passed, the node's heartbeat script *sweeps*: it removes every expired
//!   node from `<prefix>:nodes`, takes those nodes off their users' sets,
//!   and returns the users no live node holds any more; the bus hands them
//!   to [`DeliverySink::users_went_offline`](chat_core::bus::DeliverySink::users_went_offline).
//!   Since removing a node from the sorted set happens inside one script,
//!   exactly one survivor sweeps each dead node, so each of its users is
//!   announced once cluster-wide. A user who reconnected to a survivor in
//!   the meantime is online there and is not announced.
//!   `user_disconnected` prunes expired nodes from the user's set too, so a
//!   user it reports offline is not reported again by a later sweep.
//! - [`RedisBus::shutdown`] expires the node at once and wakes the others,
//!   so that its users are announced without waiting for the TTL.
//!
//! # When Redis goes away
//!
//! The bus never panics and never blocks on a missing Redis: commands fail
//! at once while disconnected, and the connections retry with a backoff of
//! up to 2 s, forever. Meanwhile:
//!
//! - `publish` still delivers to this node's connections; its scripts fail
//!   at once, logged and counted in [`PublishStats::failed`];
//! - presence calls answer from what this node holds, and log;
//! - on reconnection the bus resubscribes to its channel and replaces its
//!   registered users in Redis with the ones it holds (so a restarted,
//!   empty Redis learns them again), then goes on as before;
//! - a heartbeat that finds the node expired (its heartbeats could not
//!   reach Redis for a whole TTL, so survivors may have announced its users
//!   offline) registers its users again, and logs a warning;
//! - a node pings its own channel with every heartbeat and reconnects its
//!   subscription if the ping does not come back.
//!
//! Deliveries published while a node is cut off are lost for it; clients
//! catch up with `sync`, as after any reconnection.
//!
//! # Layout
//!
//! | item | what |
//! |---|---|
//! | [`RedisBus`] | the bus: connect, [`Bus`](chat_core::Bus), shutdown |
//! | [`RedisBusConfig`] | node id, key prefix, TTL, timeouts, publish queue bound |
//! | [`PublishStats`] | counters of the publish queue, for metrics |
//! | [`fred`] | the Redis client, re-exported |

mod bus;
mod config;
mod queue;
mod scripts;

pub use bus::RedisBus;
pub use chat_core;
pub use config::RedisBusConfig;
pub use fred;
pub use queue::PublishStats;

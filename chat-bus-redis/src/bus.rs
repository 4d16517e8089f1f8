//! [`RedisBus`]: the [`Bus`] over Redis.

use std::{
    collections::HashSet,
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chat_core::{
    Error, Result, UserId,
    bus::{Bus, Delivery, DeliverySink},
};
use fred::{
    clients::{Client, SubscriberClient},
    error::{Error as RedisError, ErrorKind as RedisErrorKind},
    interfaces::{ClientInterface, ClientLike, EventInterface, PubsubInterface},
    prelude::{Builder, Config, Options, ReconnectPolicy},
    types::{ClusterHash, CustomCommand, Key, Message, Value},
};
use tokio::{
    sync::{Notify, RwLock, broadcast},
    task::AbortHandle,
    time::Instant,
};

use crate::{
    config::RedisBusConfig,
    queue::{Job, PublishQueue, PublishStats, Pushed},
    scripts::{Lua, Scripts},
};

/// Payload that asks a node to run its heartbeat (and sweep) now.
const WAKE: &str = "wake";
/// Prefix of the payload a node sends itself to check its subscription.
const PING: &str = "ping:";
/// Pub/sub messages a node may fall behind by before losing some.
const MESSAGE_BUFFER: usize = 4096;
/// Key expiry, in TTLs: a safety net for the keys of a cluster that died
/// whole. Live nodes refresh it with every heartbeat.
const KEY_EXPIRY_TTLS: u32 = 10;
/// Added to the next foreign deadline before sweeping, for timer jitter.
const SWEEP_DELAY: Duration = Duration::from_millis(2);
/// How long [`RedisBus::shutdown`] waits for each `QUIT`.
const QUIT_TIMEOUT: Duration = Duration::from_millis(500);
/// Most deliveries the drain task sends in one pipeline.
const BATCH_JOBS: usize = 256;
/// Most queued bytes (as the queue counts them) in one pipeline, unless a
/// single delivery is larger.
const BATCH_BYTES: usize = 1 << 20;

/// The [`Bus`] of a node in a cluster that shares one Redis.
///
/// Made with [`RedisBus::connect`]; see the [crate docs](crate) for the
/// channel scheme, the keys and the publish queue. Dropping it is a crash
/// as far as the cluster can tell (survivors expire the node after the TTL,
/// and deliveries still queued for other nodes are lost); call
/// [`RedisBus::shutdown`] to send the queue and leave at once.
pub struct RedisBus {
    shared: Arc<Shared>,
    /// fred's connection tasks (commands, subscription): they reconnect
    /// forever, until aborted.
    connections: [AbortHandle; 2],
    /// Sends the publish queue to Redis.
    drain: AbortHandle,
    /// Receiving, watching the connections, heartbeat.
    workers: [AbortHandle; 4],
}

struct Keys {
    /// Sorted set: node id -> deadline (Redis ms).
    nodes: Key,
    /// Set: this node's users.
    mine: Key,
    node_prefix: String,
    user_prefix: String,
    channel_prefix: String,
    /// This node's channel.
    channel: String,
}

impl Keys {
    fn new(prefix: &str, node: &str) -> Self {
        let node_prefix = format!("{prefix}:node:");
        let channel_prefix = format!("{prefix}:to:");
        Self {
            nodes: Key::from(format!("{prefix}:nodes")),
            mine: Key::from(format!("{node_prefix}{node}")),
            channel: format!("{channel_prefix}{node}"),
            node_prefix,
            user_prefix: format!("{prefix}:user:"),
            channel_prefix,
        }
    }

    fn user(&self, user: &UserId) -> Key {
        Key::from(format!("{}{}", self.user_prefix, user.as_str()))
    }
}

struct Shared {
    node: String,
    ttl: Duration,
    keys: Keys,
    cmd: Client,
    sub: SubscriberClient,
    /// Options of every command on `cmd`: fail at once while disconnected
    /// and never resend, so a publish is never delivered twice.
    options: Options,
    scripts: Scripts,
    /// The remote half of `publish`, for the drain task.
    queue: PublishQueue,
    sink: OnceLock<Arc<dyn DeliverySink>>,
    /// Users this node holds, whatever Redis knows.
    local: Mutex<HashSet<UserId>>,
    /// Presence changes hold it shared; a sync of the whole local set
    /// holds it exclusively, so no change slips between its snapshot and
    /// its script.
    gate: RwLock<()>,
    /// Redis may not hold this node's users as they are: the next
    /// heartbeat replaces them.
    needs_sync: AtomicBool,
    /// The first sync happened (it reports users left by a previous
    /// process with this node id).
    synced_once: AtomicBool,
    /// Users found offline before a sink was attached.
    pending_offline: Mutex<Vec<UserId>>,
    wake: Notify,
    registered: AtomicBool,
    /// This node's channel was subscribed on the current subscription
    /// connection (see [`watch_subscriber`] for why fred cannot tell).
    subscribed: AtomicBool,
    redis_up: AtomicBool,
    last_ping: AtomicU64,
    closed: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into().into())
}

fn bad_reply(what: &str, value: &Value) -> Error {
    Error::backend(format!("unexpected Redis reply to {what}: {value:?}"))
}

impl RedisBus {
    /// Connects to the Redis at `url` (`redis://[:password@]host:port[/db]`,
    /// as [`fred`] reads it) and joins the cluster of
    /// [`key_prefix`](RedisBusConfig::key_prefix) as node
    /// [`node_id`](RedisBusConfig::node_id).
    ///
    /// Waits up to [`connect_timeout`](RedisBusConfig::connect_timeout) for
    /// Redis. If Redis does not answer by then, logs a warning and returns a
    /// bus that serves this node's connections alone and joins the cluster
    /// as soon as Redis answers. Fails only on a bad URL or configuration.
    /// Must be called within a Tokio runtime.
    pub async fn connect(url: &str, config: RedisBusConfig) -> Result<Self> {
        config.validate()?;
        let mut redis = Config::from_url(url).map_err(Error::backend)?;
        // Retry the first connection too, like any later one.
        redis.fail_fast = false;
        let mut builder = Builder::from_config(redis);
        builder
            .with_connection_config(|c| {
                c.connection_timeout = config.connect_timeout;
                c.internal_command_timeout = config.command_timeout;
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = config.command_timeout;
                p.broadcast_channel_capacity = MESSAGE_BUFFER;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let cmd = builder.build().map_err(Error::backend)?;
        let sub = builder.build_subscriber_client().map_err(Error::backend)?;

        let shared = Arc::new(Shared {
            keys: Keys::new(&config.key_prefix, &config.node_id),
            node: config.node_id.clone(),
            ttl: config.presence_ttl,
            options: Options {
                fail_fast: true,
                max_attempts: Some(1),
                timeout: Some(config.command_timeout),
                ..Options::default()
            },
            scripts: Scripts::new(),
            queue: PublishQueue::new(config.publish_queue_bytes),
            sink: OnceLock::new(),
            local: Mutex::new(HashSet::new()),
            gate: RwLock::new(()),
            needs_sync: AtomicBool::new(true),
            synced_once: AtomicBool::new(false),
            pending_offline: Mutex::new(Vec::new()),
            wake: Notify::new(),
            registered: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            redis_up: AtomicBool::new(false),
            last_ping: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            cmd,
            sub,
        });

        // Listen before connecting, so that the first connection is seen.
        let messages = shared.sub.message_rx();
        let sub_events = (shared.sub.reconnect_rx(), shared.sub.error_rx());
        let cmd_events = (shared.cmd.reconnect_rx(), shared.cmd.error_rx());
        let bus = RedisBus {
            connections: [
                shared.cmd.connect().abort_handle(),
                shared.sub.connect().abort_handle(),
            ],
            drain: tokio::spawn(drain(shared.clone())).abort_handle(),
            workers: [
                tokio::spawn(receive(shared.clone(), messages)).abort_handle(),
                tokio::spawn(watch_subscriber(shared.clone(), sub_events.0, sub_events.1))
                    .abort_handle(),
                tokio::spawn(watch_commands(shared.clone(), cmd_events.0, cmd_events.1))
                    .abort_handle(),
                tokio::spawn(heartbeat(shared.clone())).abort_handle(),
            ],
            shared,
        };

        let ready = tokio::time::timeout(config.connect_timeout, async {
            while !bus.is_ready() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .is_ok();
        if ready {
            tracing::info!(node = %config.node_id, prefix = %config.key_prefix, "bus joined the cluster on Redis");
        } else {
            tracing::warn!(
                node = %config.node_id,
                timeout = ?config.connect_timeout,
                "Redis did not answer in time; the bus serves this node's connections alone \
                 and joins the cluster when Redis answers"
            );
        }
        Ok(bus)
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node
    }

    /// Whether the bus is connected, subscribed and registered in Redis
    /// (otherwise it serves this node's connections alone, and reconnects).
    pub fn is_ready(&self) -> bool {
        let s = &self.shared;
        s.registered.load(Ordering::SeqCst)
            && s.subscribed.load(Ordering::SeqCst)
            && s.cmd.is_connected()
            && s.sub.is_connected()
    }

    /// The Redis `CLIENT ID`s of this bus's current connections (commands
    /// and subscription), to find them in `CLIENT LIST`.
    pub fn client_ids(&self) -> Vec<i64> {
        let s = &self.shared;
        s.cmd
            .connection_ids()
            .into_values()
            .chain(s.sub.connection_ids().into_values())
            .collect()
    }

    /// Counters of the publish queue, to export as metrics: see
    /// [`PublishStats`].
    pub fn publish_stats(&self) -> PublishStats {
        self.shared.queue.stats()
    }

    /// Leaves the cluster: sends what the publish queue holds to the other
    /// nodes (waiting up to
    /// [`command_timeout`](RedisBusConfig::command_timeout) for Redis to
    /// take it), stops the heartbeat, lets a surviving node report this
    /// node's remaining users offline at once (rather than after the TTL),
    /// and closes the connections. Call it last: from its start, `publish`
    /// reaches this node only, and afterwards the bus receives nothing from
    /// other nodes. Never fails: if Redis is unreachable the survivors
    /// expire the node after the TTL, as if it had crashed.
    pub async fn shutdown(&self) {
        let s = &self.shared;
        if s.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Deliveries published so far reach the other nodes before this
        // node leaves; the heartbeat keeps the node live meanwhile.
        s.queue.close();
        let budget = s.options.timeout.unwrap_or(QUIT_TIMEOUT);
        if tokio::time::timeout(budget, s.queue.flush()).await.is_err() {
            let left = s.queue.abandon();
            tracing::warn!(
                node = %s.node,
                left,
                "bus shutdown: Redis did not take the queued deliveries in time; those left \
                 did not reach other nodes (clients catch up with sync)"
            );
        }
        // Stop everything but the connections.
        self.drain.abort();
        for task in &self.workers {
            task.abort();
        }
        let keys = vec![s.keys.nodes.clone(), s.keys.mine.clone()];
        let args = vec![
            text(s.node.as_str()),
            text(s.keys.channel_prefix.as_str()),
            text(WAKE),
        ];
        match s.eval(&s.scripts.leave, keys, args).await {
            Ok(_) => tracing::info!(node = %s.node, "bus left the cluster"),
            Err(e) => tracing::warn!(
                node = %s.node,
                error = %e,
                "bus could not leave the cluster cleanly; its users go offline when its presence expires"
            ),
        }
        if s.cmd.is_connected() {
            let _ = tokio::time::timeout(QUIT_TIMEOUT, s.cmd.quit()).await;
        }
        if s.sub.is_connected() {
            let _ = tokio::time::timeout(QUIT_TIMEOUT, s.sub.quit()).await;
        }
        self.abort_all();
    }

    fn abort_all(&self) {
        let tasks = self.connections.iter().chain([&self.drain]);
        for task in tasks.chain(&self.workers) {
            task.abort();
        }
    }
}

impl fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.shared;
        f.debug_struct("RedisBus")
            .field("node", &s.node)
            .field("channel", &s.keys.channel)
            .field("presence_ttl", &s.ttl)
            .field("ready", &self.is_ready())
            .field("publish_queue", &s.queue.stats())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        // Aborting the connection tasks drops the sockets. Presence stays
        // behind, and so do the deliveries still queued for other nodes:
        // to the cluster this node crashed.
        self.shared.closed.store(true, Ordering::SeqCst);
        self.abort_all();
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn attach(&self, sink: Arc<dyn DeliverySink>) -> Result<()> {
        let s = &self.shared;
        s.sink
            .set(sink.clone())
            .map_err(|_| Error::conflict("a sink is attached already"))?;
        let pending = std::mem::take(&mut *lock(&s.pending_offline));
        if !pending.is_empty() {
            sink.users_went_offline(pending);
        }
        // Start sweeping dead nodes now.
        s.wake.notify_one();
        Ok(())
    }

    /// Hands `delivery` to this node's sink, queues it for the other nodes
    /// and returns: it never waits for Redis, and Redis errors are logged
    /// and counted ([`RedisBus::publish_stats`]) rather than returned.
    async fn publish(&self, delivery: Delivery) -> Result<()> {
        let s = &self.shared;
        // This node's connections never wait for Redis...
        if let Some(sink) = s.sink.get() {
            sink.deliver(&delivery);
        }
        let audience = &delivery.audience;
        if audience
            .users
            .iter()
            .all(|u| audience.except_user.as_ref() == Some(u))
        {
            return Ok(());
        }
        // ...nor do the other nodes' deliveries: the drain task routes them
        // through Redis, in this order. The caller does no more than take
        // a lock and push: the task encodes them.
        match s.queue.push(delivery) {
            Pushed::Queued { after_drops: 0 } => {}
            Pushed::Queued { after_drops } => tracing::warn!(
                node = %s.node,
                dropped = after_drops,
                "bus publish queue has room again; the deliveries dropped meanwhile did not \
                 reach other nodes (clients catch up with sync)"
            ),
            Pushed::Dropped { first: true } => tracing::warn!(
                node = %s.node,
                stats = ?s.queue.stats(),
                "bus publish queue is full (Redis is slow or unreachable): new deliveries \
                 reach this node only until it drains (clients elsewhere catch up with sync)"
            ),
            Pushed::Dropped { first: false } => {}
            Pushed::Closed => {
                tracing::debug!(node = %s.node, "publish after shutdown: this node only");
            }
        }
        Ok(())
    }

    async fn user_connected(&self, user: &UserId) -> Result<bool> {
        let s = &self.shared;
        let _gate = s.gate.read().await;
        let was_here = !lock(&s.local).insert(user.clone());
        match s.presence_change(&s.scripts.connected, user).await {
            Ok(elsewhere) => Ok(!was_here && !elsewhere),
            Err(e) => {
                s.backend_failed("user_connected", &e);
                Ok(!was_here)
            }
        }
    }

    async fn user_disconnected(&self, user: &UserId) -> Result<bool> {
        let s = &self.shared;
        let _gate = s.gate.read().await;
        let was_here = lock(&s.local).remove(user);
        match s.presence_change(&s.scripts.disconnected, user).await {
            Ok(elsewhere) => Ok(was_here && !elsewhere),
            Err(e) => {
                s.backend_failed("user_disconnected", &e);
                Ok(was_here)
            }
        }
    }

    async fn online(&self, users: &[UserId]) -> Result<Vec<bool>> {
        let s = &self.shared;
        let here: Vec<bool> = {
            let local = lock(&s.local);
            users.iter().map(|u| local.contains(u)).collect()
        };
        if users.is_empty() {
            return Ok(here);
        }
        let keys: Vec<Key> = std::iter::once(s.keys.nodes.clone())
            .chain(users.iter().map(|u| s.keys.user(u)))
            .collect();
        let answer = s
            .eval(&s.scripts.online, keys, Vec::new())
            .await
            .and_then(|v| {
                let flags: Vec<Option<i64>> =
                    v.clone().into_array().iter().map(Value::as_i64).collect();
                if flags.len() != users.len() || flags.iter().any(Option::is_none) {
                    return Err(bad_reply("online", &v));
                }
                Ok(flags)
            });
        match answer {
            Ok(flags) => Ok(here
                .into_iter()
                .zip(flags)
                .map(|(h, f)| h || f == Some(1))
                .collect()),
            Err(e) => {
                s.backend_failed("online", &e);
                Ok(here)
            }
        }
    }
}

impl Shared {
    /// `EVALSHA`, loading the script if Redis does not have it (first use,
    /// or after a restart).
    ///
    /// The steps of fred's `Script::evalsha_with_reload`, written here
    /// because fred's script calls cannot carry [`Shared::options`]: that
    /// function takes a bare `&Client`, and `LuaInterface` is implemented
    /// neither for `WithOptions` nor for `Pipeline`. Without `fail_fast`, a
    /// call made while Redis is away would wait for the reconnection (up to
    /// the command timeout) instead of failing at once, as the bus promises
    /// (and the drain task would hold the publish queue meanwhile). So
    /// `EVALSHA` and `SCRIPT LOAD` go as custom commands.
    async fn eval(&self, lua: &Lua, keys: Vec<Key>, args: Vec<Value>) -> Result<Value> {
        let client = self.cmd.with_options(&self.options);
        let command = evalsha_args(lua, keys, args);
        let first = client
            .custom::<Value, Value>(evalsha(), command.clone())
            .await;
        let result = match first {
            Err(e) if is_noscript(&e) => match self.load(lua).await {
                Ok(()) => client.custom(evalsha(), command).await,
                Err(e) => Err(e),
            },
            other => other,
        };
        result.map_err(|e| Error::backend(format!("Redis bus script `{}`: {e}", lua.name)))
    }

    /// `SCRIPT LOAD`.
    async fn load(&self, lua: &Lua) -> Result<(), RedisError> {
        tracing::debug!(script = lua.name, "loading bus script into Redis");
        let load = CustomCommand::new_static("SCRIPT", ClusterHash::Random, false);
        self.cmd
            .with_options(&self.options)
            .custom::<Value, Value>(load, vec![text("LOAD"), Value::String(lua.source.clone())])
            .await
            .map(drop)
    }

    /// Sends `commands` (arguments of `EVALSHA`) in one pipeline, in order,
    /// and returns one result per command.
    ///
    /// Custom commands here too: fred's `Pipeline` has no `LuaInterface`,
    /// and `evalsha_with_reload` per delivery would turn one round trip per
    /// batch into one per delivery (two on `NOSCRIPT`). `send_batch` reloads
    /// the script once for the whole batch instead.
    async fn pipeline(&self, commands: &[Vec<Value>]) -> Vec<Result<Value, RedisError>> {
        let all_failed = |e: RedisError| vec![Err(e); commands.len()];
        let pipeline = self.cmd.pipeline().with_options(&self.options);
        for command in commands {
            // Only buffers the command.
            if let Err(e) = pipeline
                .custom::<Value, Value>(evalsha(), command.clone())
                .await
            {
                return all_failed(e);
            }
        }
        let results = pipeline.try_all::<Value>().await;
        if results.len() == commands.len() {
            return results;
        }
        // The pipeline as a whole failed: not connected, or timed out.
        let error = results.into_iter().find_map(Result::err);
        all_failed(error.unwrap_or_else(|| {
            RedisError::new(
                RedisErrorKind::Protocol,
                "pipeline reply of the wrong length",
            )
        }))
    }

    /// The `EVALSHA` arguments of the `publish` script for `delivery`, or
    /// `None` if its audience is nobody (but maybe this node's typist).
    fn publish_command(&self, delivery: &Delivery) -> Result<Option<Vec<Value>>> {
        let audience = &delivery.audience;
        let mut seen = HashSet::new();
        let keys: Vec<Key> = audience
            .users
            .iter()
            .filter(|u| audience.except_user.as_ref() != Some(*u) && seen.insert(*u))
            .map(|u| self.keys.user(u))
            .collect();
        if keys.is_empty() {
            return Ok(None);
        }
        let payload = serde_json::to_string(delivery).map_err(Error::backend)?;
        let args = vec![
            text(self.node.as_str()),
            text(self.keys.channel_prefix.as_str()),
            text(payload),
        ];
        Ok(Some(evalsha_args(&self.scripts.publish, keys, args)))
    }

    /// Routes one batch of the publish queue through Redis, in order;
    /// returns how many deliveries went through and how many failed.
    async fn send_batch(&self, batch: &[Job]) -> (u64, u64) {
        let (mut sent, mut failed) = (0, 0);
        let mut commands = Vec::with_capacity(batch.len());
        for job in batch {
            match self.publish_command(&job.delivery) {
                Ok(Some(command)) => commands.push(command),
                Ok(None) => sent += 1,
                Err(e) => {
                    failed += 1;
                    tracing::error!(node = %self.node, error = %e, "bus cannot encode a delivery for other nodes; dropped");
                }
            }
        }
        if commands.is_empty() {
            return (sent, failed);
        }
        let mut results = self.pipeline(&commands).await;
        let noscript = |r: &Result<Value, RedisError>| matches!(r, Err(e) if is_noscript(e));
        if results.iter().any(noscript) {
            // Redis lacks the script (first use, a restart, SCRIPT FLUSH),
            // so those commands did not run: load it and send them again,
            // but only those after the last command that may have run (in
            // practice all of them), so that no delivery overtakes another.
            let from = results
                .iter()
                .rposition(|r| !noscript(r))
                .map_or(0, |i| i + 1);
            match self.load(&self.scripts.publish).await {
                Ok(()) => {
                    let again = self.pipeline(&commands[from..]).await;
                    results.splice(from.., again);
                }
                Err(e) => results[from..].fill(Err(e)),
            }
        }
        let mut first_error = None;
        for result in results {
            match result {
                Ok(_) => sent += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            let lost = failed;
            if self.redis_up.load(Ordering::SeqCst) {
                tracing::warn!(node = %self.node, error = %e, lost, "bus could not route deliveries to other nodes through Redis (clients catch up with sync)");
            } else {
                tracing::debug!(node = %self.node, error = %e, lost, "bus without Redis: deliveries reach this node only");
            }
        }
        (sent, failed)
    }

    /// Runs `connected` or `disconnected` for `user`; returns whether the
    /// user is online on another live node.
    async fn presence_change(&self, lua: &Lua, user: &UserId) -> Result<bool> {
        let keys = vec![
            self.keys.nodes.clone(),
            self.keys.mine.clone(),
            self.keys.user(user),
        ];
        let args = vec![
            text(self.node.as_str()),
            text(user.as_str()),
            text(self.keys.node_prefix.as_str()),
        ];
        let reply = self.eval(lua, keys, args).await?;
        let pair: Vec<Option<i64>> = reply
            .clone()
            .into_array()
            .iter()
            .map(Value::as_i64)
            .collect();
        let [Some(elsewhere), Some(live)] = pair[..] else {
            return Err(bad_reply(lua.name, &reply));
        };
        if live != 1 {
            // Redis lost this node (a restart) or expired it: re-register.
            self.request_sync();
        }
        Ok(elsewhere == 1)
    }

    fn request_sync(&self) {
        self.needs_sync.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    /// A presence call failed: answer from local knowledge and make the
    /// next heartbeat put Redis right.
    fn backend_failed(&self, what: &str, error: &Error) {
        self.request_sync();
        if self.redis_up.load(Ordering::SeqCst) {
            tracing::warn!(node = %self.node, error = %error, "bus {what} failed; answering from this node alone");
        } else {
            tracing::debug!(node = %self.node, error = %error, "bus {what} without Redis; answering from this node alone");
        }
    }

    fn on_message(&self, message: Message) {
        if *message.channel != *self.keys.channel {
            return;
        }
        let Some(payload) = message.value.as_bytes() else {
            tracing::warn!(node = %self.node, "non-text message on the bus channel; dropped");
            return;
        };
        if payload == WAKE.as_bytes() {
            self.wake.notify_one();
            return;
        }
        if let Some(seq) = payload.strip_prefix(PING.as_bytes()) {
            if let Some(seq) = std::str::from_utf8(seq).ok().and_then(|s| s.parse().ok()) {
                self.last_ping.fetch_max(seq, Ordering::SeqCst);
            }
            return;
        }
        match serde_json::from_slice::<Delivery>(payload) {
            Ok(delivery) => match self.sink.get() {
                Some(sink) => sink.deliver(&delivery),
                None => tracing::debug!(node = %self.node, "delivery before attach; dropped"),
            },
            Err(e) => {
                tracing::warn!(node = %self.node, error = %e, "undecodable delivery on the bus; dropped")
            }
        }
    }

    /// Hands users found offline to the sink, or keeps them until one is
    /// attached.
    fn report_offline(&self, users: Vec<Value>) {
        let users: Vec<UserId> = users
            .into_iter()
            .filter_map(|v| {
                let id = v.as_string().and_then(|s| UserId::new(s).ok());
                if id.is_none() {
                    tracing::warn!(node = %self.node, value = ?v, "bad user id in Redis presence; skipped");
                }
                id
            })
            .collect();
        if users.is_empty() {
            return;
        }
        let mut pending = lock(&self.pending_offline);
        match self.sink.get() {
            Some(sink) => {
                drop(pending);
                sink.users_went_offline(users);
            }
            None => pending.extend(users),
        }
    }

    /// One heartbeat; returns how long to wait for the next.
    async fn beat(&self, ping: &mut PingCheck) -> Duration {
        let interval = self.ttl / 3;
        let retry = interval.min(Duration::from_secs(1));

        // Does this node still hear its own channel? (Only asked while the
        // subscription is up: a ping sent before a resubscription proves
        // nothing.)
        let subscribed = self.subscribed.load(Ordering::SeqCst);
        if let Some((seq, sent)) = ping.pending {
            if self.last_ping.load(Ordering::SeqCst) >= seq || !subscribed {
                ping.pending = None;
            } else if sent.elapsed() >= interval.max(Duration::from_secs(1)) {
                ping.pending = None;
                if self.sub.is_connected() {
                    tracing::warn!(
                        node = %self.node,
                        "bus subscription is silent; reconnecting it"
                    );
                    self.subscribed.store(false, Ordering::SeqCst);
                    let sub = self.sub.clone();
                    tokio::spawn(async move {
                        let _ = sub.force_reconnection().await;
                    });
                }
            }
        }
        let ping_seq = (subscribed && ping.pending.is_none()).then(|| ping.seq + 1);

        let sync = self.needs_sync.swap(false, Ordering::SeqCst);
        let _gate = if sync {
            Some(self.gate.write().await)
        } else {
            None
        };
        let users: Vec<Value> = if sync {
            lock(&self.local).iter().map(|u| text(u.as_str())).collect()
        } else {
            Vec::new()
        };
        let registered = users.len();
        let flag = |b: bool| text(if b { "1" } else { "0" });
        let keys = vec![self.keys.nodes.clone(), self.keys.mine.clone()];
        let mut args = vec![
            text(self.node.as_str()),
            text(self.ttl.as_millis().to_string()),
            text((self.ttl * KEY_EXPIRY_TTLS).as_millis().to_string()),
            flag(self.sink.get().is_some()),
            text(self.keys.node_prefix.as_str()),
            text(self.keys.user_prefix.as_str()),
            text(self.keys.channel_prefix.as_str()),
            text(ping_seq.map_or(String::new(), |n| format!("{PING}{n}"))),
            flag(sync),
        ];
        args.extend(users);

        let reply = self
            .eval(&self.scripts.beat, keys, args)
            .await
            .and_then(BeatReply::parse);
        let beat = match reply {
            Ok(beat) => beat,
            Err(e) => {
                if sync {
                    self.needs_sync.store(true, Ordering::SeqCst);
                }
                if self.redis_up.load(Ordering::SeqCst) {
                    tracing::warn!(node = %self.node, error = %e, "bus heartbeat failed; retrying");
                }
                return retry;
            }
        };
        if let Some(seq) = ping_seq {
            ping.seq = seq;
            ping.pending = Some((seq, Instant::now()));
        }
        self.registered.store(true, Ordering::SeqCst);
        if sync {
            let first = !self.synced_once.swap(true, Ordering::SeqCst);
            if beat.lost && !first {
                tracing::info!(node = %self.node, users = registered, "bus registered this node's users again in Redis");
            }
            if first && !beat.stale.is_empty() {
                tracing::info!(
                    node = %self.node,
                    users = beat.stale.len(),
                    "a previous process with this node id left users behind; they went offline"
                );
                self.report_offline(beat.stale);
            }
        } else if beat.lost {
            tracing::warn!(
                node = %self.node,
                "this node's presence had expired or was lost in Redis (no heartbeat for a whole \
                 TTL, or a Redis restart); its users may have been reported offline; \
                 registering them again"
            );
            self.needs_sync.store(true, Ordering::SeqCst);
            return Duration::ZERO;
        }
        if !beat.swept.is_empty() {
            tracing::info!(
                node = %self.node,
                users = beat.swept.len(),
                "users of a dead node went offline"
            );
            self.report_offline(beat.swept);
        }
        let wait = match beat.next_deadline {
            Some(ms) => interval.min(ms + SWEEP_DELAY),
            None => interval,
        };
        wait.max(Duration::from_millis(10))
    }
}

fn evalsha() -> CustomCommand {
    CustomCommand::new_static("EVALSHA", ClusterHash::FirstKey, false)
}

/// The arguments of `EVALSHA` for `lua`.
fn evalsha_args(lua: &Lua, keys: Vec<Key>, args: Vec<Value>) -> Vec<Value> {
    let mut command = Vec::with_capacity(2 + keys.len() + args.len());
    command.push(Value::String(lua.sha1.clone()));
    command.push(Value::Integer(
        i64::try_from(keys.len()).unwrap_or(i64::MAX),
    ));
    command.extend(keys.into_iter().map(|k| Value::Bytes(k.into_bytes())));
    command.extend(args);
    command
}

/// Whether Redis refused a script it does not know.
///
/// By the reply's text: fred has no error kind for it (its reply parser
/// files `NOSCRIPT` under `ErrorKind::Unknown`, with every other server
/// error it does not name), and its own `Script::evalsha_with_reload`
/// tests the same prefix.
fn is_noscript(e: &RedisError) -> bool {
    e.details().starts_with("NOSCRIPT")
}

#[derive(Debug, Default)]
struct PingCheck {
    seq: u64,
    /// The ping in flight, and when it was sent.
    pending: Option<(u64, Instant)>,
}

#[derive(Debug)]
struct BeatReply {
    lost: bool,
    /// Time until the next other node's deadline.
    next_deadline: Option<Duration>,
    stale: Vec<Value>,
    swept: Vec<Value>,
}

impl BeatReply {
    fn parse(value: Value) -> Result<Self> {
        let mut items = value.clone().into_array().into_iter();
        let (Some(lost), Some(wait), Some(stale), Some(swept)) =
            (items.next(), items.next(), items.next(), items.next())
        else {
            return Err(bad_reply("beat", &value));
        };
        let (Some(lost), Some(wait)) = (lost.as_i64(), wait.as_i64()) else {
            return Err(bad_reply("beat", &value));
        };
        let list = |v: Value| {
            if v.is_null() {
                Vec::new()
            } else {
                v.into_array()
            }
        };
        Ok(Self {
            lost: lost == 1,
            next_deadline: u64::try_from(wait).ok().map(Duration::from_millis),
            stale: list(stale),
            swept: list(swept),
        })
    }
}

/// Sends the publish queue to Redis, in order, on the command connection:
/// each batch (what queued up while the previous one was out) is one
/// pipeline of `EVALSHA`s, and the next batch waits for its replies. The
/// bus never resends a command, so a batch cut off by a disconnect is lost,
/// never doubled.
async fn drain(shared: Arc<Shared>) {
    loop {
        let batch = shared.queue.next_batch(BATCH_JOBS, BATCH_BYTES).await;
        let (sent, failed) = shared.send_batch(&batch).await;
        shared.queue.finished(batch, sent, failed);
    }
}

async fn receive(shared: Arc<Shared>, mut messages: broadcast::Receiver<Message>) {
    loop {
        match messages.recv().await {
            Ok(message) => shared.on_message(message),
            Err(broadcast::error::RecvError::Lagged(lost)) => tracing::warn!(
                node = %shared.node,
                lost,
                "bus fell behind its Redis subscription; deliveries lost (clients catch up with sync)"
            ),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// (Re)subscribes to this node's channel on every (re)connection, and
/// keeps `subscribed` true from then until the connection fails.
///
/// fred's `SubscriberClient::manage_subscriptions` resubscribes in a task
/// of its own, but cannot stand in for this one: the bus must know when it
/// is subscribed again (for `is_ready`, and for the self-ping of
/// `Shared::beat`, which must not wait for a ping sent before the
/// resubscription), and that task reports nothing, not even a failure (it
/// only logs it); it also stops for good if its reconnect receiver ever
/// lags. Calling fred's `resubscribe_all` here instead of `subscribe`
/// gains nothing: it subscribes only what an earlier `subscribe` recorded
/// (nothing on the first connection), and it sends a `PSUBSCRIBE` without
/// patterns, which Redis refuses while fred answers `Ok`. And fred's
/// `subscribe` returns once the command is written, not when Redis
/// confirms it: only the self-ping proves that the subscription works.
async fn watch_subscriber(
    shared: Arc<Shared>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    mut errors: broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
) {
    loop {
        tokio::select! {
            event = reconnects.recv() => match event {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    match shared.sub.subscribe(shared.keys.channel.as_str()).await {
                        Ok(()) => {
                            shared.subscribed.store(true, Ordering::SeqCst);
                            tracing::debug!(node = %shared.node, channel = %shared.keys.channel, "bus subscribed");
                        }
                        Err(e) => tracing::warn!(
                            node = %shared.node,
                            error = %e,
                            "bus could not subscribe to its channel; retrying on the next reconnect"
                        ),
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            event = errors.recv() => match event {
                Ok((e, _)) => {
                    shared.subscribed.store(false, Ordering::SeqCst);
                    tracing::debug!(node = %shared.node, error = %e, "bus subscription connection failed");
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Logs the command connection's ups and downs, and re-registers this
/// node's presence after every (re)connection.
async fn watch_commands(
    shared: Arc<Shared>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    mut errors: broadcast::Receiver<(fred::error::Error, Option<fred::types::config::Server>)>,
) {
    loop {
        tokio::select! {
            event = reconnects.recv() => match event {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !shared.redis_up.swap(true, Ordering::SeqCst)
                        && shared.synced_once.load(Ordering::SeqCst)
                    {
                        tracing::info!(node = %shared.node, "bus reconnected to Redis");
                    }
                    shared.request_sync();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            event = errors.recv() => match event {
                Ok((e, _)) => {
                    if shared.redis_up.swap(false, Ordering::SeqCst) {
                        tracing::warn!(
                            node = %shared.node,
                            error = %e,
                            "bus lost Redis; serving this node's connections alone until it is back"
                        );
                    } else {
                        tracing::debug!(node = %shared.node, error = %e, "bus still cannot reach Redis");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

async fn heartbeat(shared: Arc<Shared>) {
    let mut ping = PingCheck::default();
    loop {
        let wait = shared.beat(&mut ping).await;
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.wake.notified() => {}
        }
    }
}

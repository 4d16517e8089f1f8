//! Many clients against one engine at once, checked against the store's log.
//!
//! [`run`] builds a [`ChatEngine`] over the given store, opens a few groups
//! and direct chats between users `u0`, `u1`, ... (some with two devices),
//! connects every device, and lets several tasks drive random operations at
//! the same time, from a seed: pipelined sends (several `send_message` in
//! flight at once, over the protocol and the engine's API, some retrying the
//! same `client_msg_id`), edits, reactions, deletions, receipts, typing,
//! additions and removals (leaving too, and the last admin leaving), role
//! changes (two admins demoting each other at once), group updates, blocks
//! in direct chats, and reconnects (close, connect again, `sync` from the
//! cursors the device had). At the end it probes each direct chat under a
//! block, closes every connection and reads each chat's log from the store.
//!
//! Then it checks what every connection received against a model replayed
//! from that log (founders, then the system messages that record membership
//! and role changes, at their seqs):
//!
//! 1. **Audience at commit.** Every event of a change (`message_received`,
//!    `message_edited`, `message_deleted`, `reaction_*`) reached a user only
//!    for a seq at which they were a member; `message_delivered` /
//!    `message_read` only if they were a member at some point where the
//!    receipt can have committed (between the events around it on that
//!    connection); `participant_added` / `participant_removed` /
//!    `chat_created` / `chat_updated` only for changes they were in the
//!    chat for; typing only in chats they belonged to at some point. In a
//!    direct chat, a message, edit or reaction made while a block was
//!    certainly in place (no block or unblock overlapped the call) did not
//!    reach the other participant.
//! 2. **Completeness.** A connection that was live for the whole run
//!    received the `message_received` of every seq at which its user was a
//!    member (in direct chats: unless a block may have been in place when it
//!    committed), and a `participant_removed` for each removal of its user.
//!    A device that reconnected has, over its connections and the `sync`s it
//!    made after each reconnect, every message of the chats its user is in at
//!    the end, from where they may see.
//! 3. **Order.** On each connection, the seqs (`updated_seq` for updates) of
//!    one chat's events strictly increase.
//! 4. **Groups keep an admin.** After every system message of a group that
//!    has members there is an admin, except right after the removal of the
//!    last admin, which must be followed at the next seq by the promotion of
//!    the heir (the longest-standing moderator, else participant) by the
//!    same user. The replayed members and roles must be the store's.
//!
//! Also: posts are by members at their seq, seqs are unique and the chat's
//! `last_seq` is its highest `updated_seq`, concurrent retries of one
//! `client_msg_id` return one message, `sync` pages are ascending and
//! above the cursor, and operations fail only with the codes a race can
//! explain (`not_found`, `forbidden`, `conflict`, `bad_request`).
//!
//! System changes whose author no longer had the right to make them when
//! they committed (a demoted admin's role change that was already queued,
//! an addition by someone removed meanwhile) are not failures: the engine
//! checks rights when a change is queued. They are listed in
//! [`Summary::stale_authority`].
//!
//! A violation panics with the seed; set `ENGINE_SUITE_SEED=<seed>` (or a
//! comma-separated list) to run exactly those seeds again, and
//! `ENGINE_SUITE_RUNS=<n>` to run more seeds than a test's default.
//! Interleavings depend on the scheduler, so a seed fixes the operations
//! each task tries, not their timing.
//!
//! ```ignore
//! // chat-store-foo/tests/engine_concurrency.rs
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn engine_under_concurrent_clients() {
//!     let options = chat_core::testing::engine_suite::Options::default();
//!     for seed in chat_core::testing::engine_suite::seeds(3) {
//!         let store = Arc::new(FooStore::open_temp().await);
//!         chat_core::testing::engine_suite::run(store, seed, &options).await;
//!     }
//! }
//! ```

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::{
    engine::{
        Actor, ChatEngine, EngineConfig, NewGroup, Receipt, SendMessage, Session, SyncResult,
    },
    error::{Error, ErrorCode, Result},
    model::{Chat, ChatId, DeviceId, Message, MessageId, Role, SystemEvent, UserId},
    protocol::dispatch_text,
    store::{GroupPatch, Store},
    transport::{Outgoing, outbox},
};

/// The environment variable naming the seeds to run (comma-separated).
pub const SEED_VAR: &str = "ENGINE_SUITE_SEED";
/// The environment variable raising the number of seeds a test runs.
pub const RUNS_VAR: &str = "ENGINE_SUITE_RUNS";

/// How long the engine is left alone before connections are closed, so
/// that work it does off the lanes (`chat_updated`, typing expiry) lands.
const SETTLE: Duration = Duration::from_millis(100);
/// How long a connection's reader may take to drain after its close.
const DRAIN: Duration = Duration::from_secs(5);

/// The seeds a test runs: those in [`SEED_VAR`] if set, else `default`
/// seeds (or [`RUNS_VAR`] of them), the same on every run.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(list) = std::env::var(SEED_VAR) {
        let seeds: Vec<u64> = list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if !seeds.is_empty() {
            return seeds;
        }
    }
    let runs = std::env::var(RUNS_VAR)
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(default);
    (0..runs).map(|i| 0x5EED_0000 + i).collect()
}

/// The size of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Users `u0`, `u1`, ...; at least 4.
    pub users: usize,
    /// The first this many users have a second device.
    pub two_device_users: usize,
    /// Tasks driving operations at the same time.
    pub workers: usize,
    /// Operations each task tries.
    pub ops_per_worker: usize,
    /// Write lanes of the engine.
    pub write_lanes: usize,
    /// Outgoing queue of each connection: large, so that no connection is
    /// closed as too slow (which the completeness check would not excuse).
    pub outbox_capacity: usize,
    /// A run that takes longer fails as hanging.
    pub time_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            users: 6,
            two_device_users: 3,
            workers: 4,
            ops_per_worker: 50,
            write_lanes: 2,
            outbox_capacity: 1 << 16,
            time_limit: Duration::from_secs(60),
        }
    }
}

/// What a run did; it passed if [`run`] returned it.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// How long it took.
    pub elapsed: Duration,
    /// Operations tried (a burst of sends counts once).
    pub ops: usize,
    /// Engine calls that succeeded.
    pub accepted: usize,
    /// Engine calls refused, by error code.
    pub refused: BTreeMap<String, usize>,
    /// Messages in the chats' logs at the end (system messages included).
    pub log_entries: usize,
    /// Frames received by all connections.
    pub frames: usize,
    /// Events of a chat checked against the log (audience and order).
    pub events_checked: usize,
    /// Messages a connection or a reconnected device was checked to have.
    pub owed_checked: usize,
    /// Reconnects (each followed by a `sync`).
    pub reconnects: usize,
    /// Heirs promoted because the last admin left.
    pub heirs: usize,
    /// Two admins demoting each other at once: both succeeded, one did,
    /// neither did.
    pub mutual_demotions: [usize; 3],
    /// System changes whose author had lost the right to make them by the
    /// time they committed (see the module docs).
    pub stale_authority: Vec<String>,
}

/// Runs the engine over `store` (fresh and empty) with concurrent clients
/// driven from `seed`, then checks what they received; panics with the seed
/// and every violation found.
pub async fn run(store: Arc<dyn Store>, seed: u64, options: &Options) -> Summary {
    let limit = options.time_limit;
    match tokio::time::timeout(limit, run_unbounded(store, seed, options.clone())).await {
        Ok(summary) => summary,
        Err(_) => panic!(
            "engine suite, seed {seed}: the run did not finish within {limit:?} \
             (a deadlock or a lost wake-up?); run it again with {SEED_VAR}={seed}"
        ),
    }
}

async fn run_unbounded(store: Arc<dyn Store>, seed: u64, options: Options) -> Summary {
    assert!(
        options.users >= 4,
        "the engine suite needs at least 4 users"
    );
    let started = Instant::now();
    let world = Arc::new(World::setup(store, seed, options).await);
    let mut tasks = Vec::new();
    for k in 0..world.options.workers {
        let w = world.clone();
        let rng = Rng::new(seed ^ ((k as u64 + 1) << 40));
        tasks.push(tokio::spawn(async move { w.worker(rng).await }));
    }
    for task in tasks {
        if let Err(e) = task.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("engine suite, seed {seed}: a worker was cancelled: {e}");
        }
    }
    world.block_probe().await;
    tokio::time::sleep(SETTLE).await;
    let devices = world.teardown().await;
    world.engine.shutdown().await;
    let timelines = world.timelines().await;
    let mut checker = Checker::new(&world, timelines).await;
    for device in &devices {
        checker.device(device);
    }
    let mut summary = std::mem::take(&mut *lock(&world.summary));
    summary.seed = seed;
    summary.elapsed = started.elapsed();
    summary.frames = devices
        .iter()
        .flat_map(|d| &d.gens)
        .map(|g| g.frames.len())
        .sum();
    summary.log_entries = checker.logs.values().map(|l| l.by_seq.len()).sum();
    summary.heirs = checker.heirs;
    summary.events_checked = checker.events_checked;
    summary.owed_checked = checker.owed_checked;
    summary.stale_authority = std::mem::take(&mut checker.stale);
    let mut violations = std::mem::take(&mut *lock(&world.violations));
    violations.append(&mut checker.violations);
    if !violations.is_empty() {
        const SHOWN: usize = 40;
        let n = violations.len();
        violations.truncate(SHOWN);
        panic!(
            "engine suite, seed {seed}: {n} violation(s) (first {shown}):\n  - {}\n\
             run it again with {SEED_VAR}={seed}\nsummary: {summary:?}",
            violations.join("\n  - "),
            shown = n.min(SHOWN),
        );
    }
    summary
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            items.get(self.below(items.len()))
        }
    }
}

fn user_id(i: usize) -> UserId {
    UserId::new(format!("u{i}")).unwrap_or_else(|e| panic!("user id u{i}: {e}"))
}

fn ix(user: &UserId) -> Option<usize> {
    user.as_str().strip_prefix('u')?.parse().ok()
}

fn actor(i: usize) -> Actor {
    Actor::user(user_id(i))
}

// --- the world ---------------------------------------------------------------

/// A chat of the run, as set up.
#[derive(Debug, Clone)]
struct ChatInfo {
    id: ChatId,
    name: String,
    group: bool,
    /// Participants at creation, in joining order.
    founders: Vec<(usize, Role)>,
    /// A direct chat's two users and its block timeline.
    pair: Option<(usize, usize, usize)>,
}

/// A message sent in the run.
#[derive(Debug, Clone)]
struct Sent {
    chat: usize,
    id: MessageId,
    sender: usize,
}

/// What one connection received, in order.
#[derive(Debug, Default)]
struct ConnLog {
    frames: Vec<Value>,
    /// A close the engine asked for (never expected here).
    close: Option<(u16, String)>,
}

/// One `sync` answer, with the cursors it was asked with.
#[derive(Debug)]
struct SyncRecord {
    cursors: HashMap<ChatId, u64>,
    result: SyncResult,
}

#[derive(Debug)]
struct DeviceState {
    session: Option<Session>,
    reader: Option<JoinHandle<()>>,
    log: Arc<Mutex<ConnLog>>,
    /// Logs of connections closed by a reconnect.
    past: Vec<Arc<Mutex<ConnLog>>>,
    syncs: Vec<SyncRecord>,
}

#[derive(Debug)]
struct Device {
    user: usize,
    id: DeviceId,
    state: tokio::sync::Mutex<DeviceState>,
}

/// A device's record after the run.
#[derive(Debug)]
struct DeviceRecord {
    user: usize,
    name: String,
    /// Each connection's frames, oldest connection first.
    gens: Vec<ConnLog>,
    syncs: Vec<SyncRecord>,
}

/// One block or unblock in a direct chat.
#[derive(Debug, Clone)]
struct BlockOp {
    start: Instant,
    end: Instant,
    /// A block either way before and after it.
    before: bool,
    after: bool,
}

/// Who blocks whom in one direct chat, over time. Its block calls are made
/// one at a time (under its mutex), so their windows do not overlap.
#[derive(Debug, Clone, Default)]
struct BlockTimeline {
    /// The first user blocks the second, the second the first.
    flags: [bool; 2],
    ops: Vec<BlockOp>,
}

impl BlockTimeline {
    /// The block state (either way) throughout `start..=end`, if certain:
    /// no call that changed it overlapped the window.
    fn state_during(&self, start: Instant, end: Instant) -> Option<bool> {
        let mut state = false;
        for op in &self.ops {
            if op.end <= start {
                state = op.after;
            } else if op.start >= end {
                break;
            } else if op.before != op.after {
                return None;
            }
        }
        Some(state)
    }
}

#[derive(Debug)]
struct World {
    engine: ChatEngine,
    store: Arc<dyn Store>,
    options: Options,
    chats: Vec<ChatInfo>,
    devices: Vec<Device>,
    /// Per direct chat.
    blocks: Vec<tokio::sync::Mutex<BlockTimeline>>,
    /// When the call that took `(chat, seq)` ran (the union of the windows
    /// of every call that returned that seq).
    windows: Mutex<HashMap<(ChatId, u64), (Instant, Instant)>>,
    sent: Mutex<Vec<Sent>>,
    violations: Mutex<Vec<String>>,
    summary: Mutex<Summary>,
    next_id: AtomicU64,
}

/// Which calls refusals are expected from, as races explain them.
fn expected_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotFound | ErrorCode::Forbidden | ErrorCode::Conflict | ErrorCode::BadRequest
    )
}

fn error_of(code: &str, message: &str) -> Error {
    match code {
        "not_found" => Error::not_found(message),
        "forbidden" => Error::forbidden(message),
        "conflict" => Error::conflict(message),
        "bad_request" => Error::invalid(message),
        _ => Error::backend(format!("{code}: {message}")),
    }
}

/// The `data` of a command's `ack`, or its error.
fn reply_of(reply: Option<crate::event::Frame>) -> Result<Value> {
    let Some(reply) = reply else {
        return Err(Error::backend("a command with an id got no answer"));
    };
    let json = reply.encode(crate::event::Framing::Json);
    let v: Value = serde_json::from_slice(&json).map_err(Error::backend)?;
    match v["type"].as_str() {
        Some("ack") => Ok(v["data"].clone()),
        Some("error") => Err(error_of(
            v["data"]["code"].as_str().unwrap_or_default(),
            v["data"]["message"].as_str().unwrap_or_default(),
        )),
        _ => Err(Error::backend(format!("unexpected reply {v}"))),
    }
}

impl World {
    async fn setup(store: Arc<dyn Store>, seed: u64, options: Options) -> Self {
        let config = EngineConfig {
            write_lanes: options.write_lanes,
            presence_grace: Duration::from_millis(20),
            typing_ttl: Duration::from_millis(300),
            ..EngineConfig::default()
        };
        let engine = ChatEngine::builder(store.clone())
            .config(config)
            .build()
            .await
            .unwrap_or_else(|e| panic!("engine suite, seed {seed}: build the engine: {e}"));
        let n = options.users;
        let mut chats = Vec::new();
        let groups: [(usize, Vec<usize>); 3] = [
            (0, vec![1, 2, 3]),
            (3, vec![4 % n, 5 % n, 0]),
            (1, (0..n).filter(|u| *u != 1).collect()),
        ];
        for (k, (admin, members)) in groups.into_iter().enumerate() {
            let group = NewGroup {
                name: format!("g{k}"),
                member_ids: members.iter().map(|u| user_id(*u)).collect(),
                ..NewGroup::default()
            };
            let view = engine
                .create_group(&actor(admin), group)
                .await
                .unwrap_or_else(|e| panic!("engine suite, seed {seed}: create group g{k}: {e}"));
            chats.push(ChatInfo {
                id: view.chat.id,
                name: format!("g{k}"),
                group: true,
                founders: view
                    .chat
                    .participants
                    .iter()
                    .filter_map(|p| Some((ix(&p.user_id)?, p.role)))
                    .collect(),
                pair: None,
            });
        }
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        for (a, b) in [(0, 1), (2, 3), (4 % n, 5 % n), (0, 5 % n)] {
            if a != b && !pairs.contains(&(a, b)) && !pairs.contains(&(b, a)) {
                pairs.push((a, b));
            }
        }
        let mut blocks = Vec::new();
        for (a, b) in pairs {
            let opened = engine
                .create_direct(&actor(a), &user_id(b), Default::default())
                .await
                .unwrap_or_else(|e| panic!("engine suite, seed {seed}: direct u{a}-u{b}: {e}"));
            chats.push(ChatInfo {
                id: opened.chat.chat.id,
                name: format!("d{a}-{b}"),
                group: false,
                founders: vec![(a, Role::Member), (b, Role::Member)],
                pair: Some((a, b, blocks.len())),
            });
            blocks.push(tokio::sync::Mutex::new(BlockTimeline::default()));
        }
        let mut devices = Vec::new();
        for user in 0..n {
            let mut names = vec!["phone"];
            if user < options.two_device_users {
                names.push("tablet");
            }
            for name in names {
                let id = DeviceId::new(name).unwrap_or_else(|e| panic!("device id: {e}"));
                devices.push((user, id));
            }
        }
        let mut world = Self {
            engine,
            store,
            options,
            chats,
            devices: Vec::new(),
            blocks,
            windows: Mutex::default(),
            sent: Mutex::default(),
            violations: Mutex::default(),
            summary: Mutex::default(),
            next_id: AtomicU64::new(0),
        };
        for (user, id) in devices {
            let log = Arc::new(Mutex::new(ConnLog::default()));
            let (session, reader) = world.connect(user, &id, log.clone()).await;
            world.devices.push(Device {
                user,
                id,
                state: tokio::sync::Mutex::new(DeviceState {
                    session: Some(session),
                    reader: Some(reader),
                    log,
                    past: Vec::new(),
                    syncs: Vec::new(),
                }),
            });
        }
        world
    }

    /// Connects a device and starts the task that records its frames.
    async fn connect(
        &self,
        user: usize,
        device: &DeviceId,
        log: Arc<Mutex<ConnLog>>,
    ) -> (Session, JoinHandle<()>) {
        let (tx, mut out) = outbox(self.options.outbox_capacity);
        let session = self
            .engine
            .connect(actor(user), device.clone(), Arc::new(tx))
            .await
            .unwrap_or_else(|e| panic!("engine suite: connect u{user}: {e}"));
        let reader = tokio::spawn(async move {
            while let Some(next) = out.next().await {
                match next {
                    Outgoing::Frame(frame) => {
                        let json = frame.encode(crate::event::Framing::Json);
                        let v = serde_json::from_slice(&json)
                            .unwrap_or_else(|_| Value::String(format!("{frame:?}")));
                        lock(&log).frames.push(v);
                    }
                    Outgoing::Close(code, reason) => {
                        lock(&log).close = Some((code, reason));
                        break;
                    }
                }
            }
        });
        (session, reader)
    }

    fn violation(&self, what: String) {
        lock(&self.violations).push(what);
    }

    fn accepted(&self) {
        lock(&self.summary).accepted += 1;
    }

    fn refused(&self, what: &str, e: &Error) {
        let code = e.code();
        if expected_refusal(code) {
            *lock(&self.summary)
                .refused
                .entry(code.as_str().to_owned())
                .or_default() += 1;
        } else {
            self.violation(format!("{what}: unexpected error {e:?}"));
        }
    }

    /// The value of a call, counting its outcome.
    fn outcome<T>(&self, what: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.accepted();
                Some(v)
            }
            Err(e) => {
                self.refused(what, &e);
                None
            }
        }
    }

    fn client_id(&self) -> String {
        format!("c{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    fn window(&self, chat: ChatId, seq: u64, start: Instant, end: Instant) {
        let mut windows = lock(&self.windows);
        let w = windows.entry((chat, seq)).or_insert((start, end));
        w.0 = w.0.min(start);
        w.1 = w.1.max(end);
    }

    fn record_sent(&self, chat: usize, message: &Message, sender: usize) {
        let mut sent = lock(&self.sent);
        if !sent.iter().any(|s| s.id == message.id) {
            sent.push(Sent {
                chat,
                id: message.id,
                sender,
            });
        }
    }

    async fn chat(&self, c: usize) -> Option<Chat> {
        match self.store.get_chat(self.chats[c].id).await {
            Ok(chat) => chat,
            Err(e) => {
                self.violation(format!("get_chat {}: {e:?}", self.chats[c].name));
                None
            }
        }
    }

    fn devices_of(&self, user: usize) -> Vec<usize> {
        (0..self.devices.len())
            .filter(|d| self.devices[*d].user == user)
            .collect()
    }

    fn random_device_of(&self, user: usize, rng: &mut Rng) -> usize {
        let devices = self.devices_of(user);
        devices[rng.below(devices.len())]
    }

    fn groups(&self) -> Vec<usize> {
        (0..self.chats.len())
            .filter(|c| self.chats[*c].group)
            .collect()
    }

    /// The block timelines, once no block call runs any more.
    async fn timelines(&self) -> Vec<BlockTimeline> {
        let mut out = Vec::new();
        for b in &self.blocks {
            out.push(b.lock().await.clone());
        }
        out
    }

    // --- operations ----------------------------------------------------------

    async fn worker(&self, mut rng: Rng) {
        for _ in 0..self.options.ops_per_worker {
            lock(&self.summary).ops += 1;
            match rng.below(100) {
                0..=27 => self.send_burst(&mut rng).await,
                28..=34 => self.edit(&mut rng).await,
                35..=42 => self.react(&mut rng).await,
                43..=46 => self.delete(&mut rng).await,
                47..=54 => self.mark(&mut rng).await,
                55..=59 => self.typing(&mut rng).await,
                60..=66 => self.add(&mut rng).await,
                67..=72 => self.remove(&mut rng).await,
                73..=75 => self.last_admin_leaves(&mut rng).await,
                76..=80 => self.set_role(&mut rng).await,
                81..=84 => self.mutual_demotion(&mut rng).await,
                85..=90 => self.block(&mut rng).await,
                91..=95 => self.reconnect(&mut rng).await,
                96 => self.empty_with_an_addition_in_flight(&mut rng).await,
                _ => self.update_group(&mut rng).await,
            }
        }
    }

    /// 1 to 4 sends into one chat, all in flight at once, some over the
    /// protocol, some retrying the previous `client_msg_id`.
    async fn send_burst(&self, rng: &mut Rng) {
        let c = rng.below(self.chats.len());
        let Some(chat) = self.chat(c).await else {
            return;
        };
        let sender = match rng.pick(&chat.participants) {
            Some(p) if rng.chance(85) => ix(&p.user_id).unwrap_or(0),
            _ => rng.below(self.options.users),
        };
        let n = 1 + rng.below(4);
        let mut ids: Vec<String> = Vec::with_capacity(n);
        for k in 0..n {
            if k > 0 && rng.chance(15) {
                let again = ids[k - 1].clone();
                ids.push(again);
            } else {
                ids.push(self.client_id());
            }
        }
        let protocol = rng.chance(50);
        let device = self.random_device_of(sender, rng);
        let guard = if protocol {
            Some(self.devices[device].state.lock().await)
        } else {
            None
        };
        let session = guard.as_ref().and_then(|g| g.session.as_ref());
        let chat_id = self.chats[c].id;
        let sends = ids.iter().enumerate().map(|(k, cid)| async move {
            let start = Instant::now();
            let result = match session {
                Some(session) if k % 2 == 0 => {
                    let cmd = serde_json::json!({
                        "type": "send_message",
                        "id": format!("r-{cid}-{k}"),
                        "data": {"chat_id": chat_id, "client_msg_id": cid, "content": format!("text {cid}")},
                    });
                    reply_of(dispatch_text(session, &cmd.to_string()).await).and_then(|data| {
                        serde_json::from_value::<Message>(data["message"].clone())
                            .map_err(Error::backend)
                    })
                }
                _ => {
                    let req = SendMessage::text(chat_id, cid.clone(), format!("text {cid}"));
                    self.engine.send(&actor(sender), req).await
                }
            };
            (cid, start, Instant::now(), result)
        });
        let results = futures::future::join_all(sends).await;
        drop(guard);
        let mut stored: HashMap<&String, MessageId> = HashMap::new();
        for (cid, start, end, result) in results {
            let Some(message) = self.outcome("send_message", result) else {
                continue;
            };
            if let Some(first) = stored.insert(cid, message.id) {
                if first != message.id {
                    self.violation(format!(
                        "two sends of client_msg_id {cid} by u{sender} returned two messages \
                         ({first} and {})",
                        message.id
                    ));
                }
            }
            if message.chat_id != chat_id || ix(&message.sender_id) != Some(sender) {
                self.violation(format!("send {cid} returned a foreign message {message:?}"));
            }
            self.window(chat_id, message.seq, start, end);
            self.record_sent(c, &message, sender);
        }
    }

    fn random_sent(&self, rng: &mut Rng) -> Option<Sent> {
        let sent = lock(&self.sent);
        rng.pick(&sent).cloned()
    }

    async fn edit(&self, rng: &mut Rng) {
        let Some(sent) = self.random_sent(rng) else {
            return;
        };
        let chat_id = self.chats[sent.chat].id;
        let start = Instant::now();
        let r = self
            .engine
            .edit(&actor(sent.sender), sent.id, "edited")
            .await;
        let end = Instant::now();
        if let Some(message) = self.outcome("edit", r) {
            self.window(chat_id, message.updated_seq, start, end);
        }
    }

    async fn react(&self, rng: &mut Rng) {
        let Some(sent) = self.random_sent(rng) else {
            return;
        };
        let chat_id = self.chats[sent.chat].id;
        let who = match self.chat(sent.chat).await.as_ref().and_then(|c| {
            let p = rng.pick(&c.participants)?;
            ix(&p.user_id)
        }) {
            Some(u) if rng.chance(90) => u,
            _ => rng.below(self.options.users),
        };
        let emoji = *rng.pick(&["👍", "❤", "😂"]).unwrap_or(&"👍");
        let add = rng.chance(70);
        let start = Instant::now();
        let r = if rng.chance(50) {
            let device = self.random_device_of(who, rng);
            let state = self.devices[device].state.lock().await;
            match state.session.as_ref() {
                Some(session) => {
                    let cmd = serde_json::json!({
                        "type": if add { "react" } else { "unreact" },
                        "id": "react",
                        "data": {"message_id": sent.id, "emoji": emoji},
                    });
                    reply_of(dispatch_text(session, &cmd.to_string()).await).and_then(|data| {
                        serde_json::from_value::<Message>(data["message"].clone())
                            .map_err(Error::backend)
                    })
                }
                None => return,
            }
        } else {
            let a = actor(who);
            if add {
                self.engine.react(&a, sent.id, emoji).await
            } else {
                self.engine.unreact(&a, sent.id, emoji).await
            }
        };
        let end = Instant::now();
        if let Some(message) = self.outcome("react", r) {
            // An unchanged reaction returns the message's current
            // updated_seq, another change's: the union of windows keeps
            // the certainty check conservative.
            self.window(chat_id, message.updated_seq, start, end);
        }
    }

    async fn delete(&self, rng: &mut Rng) {
        let Some(sent) = self.random_sent(rng) else {
            return;
        };
        let who = if rng.chance(80) {
            sent.sender
        } else {
            rng.below(self.options.users)
        };
        let r = self.engine.delete(&actor(who), sent.id).await;
        self.outcome("delete", r);
    }

    async fn mark(&self, rng: &mut Rng) {
        let c = rng.below(self.chats.len());
        let Some(chat) = self.chat(c).await else {
            return;
        };
        let who = match rng.pick(&chat.participants) {
            Some(p) if rng.chance(90) => ix(&p.user_id).unwrap_or(0),
            _ => rng.below(self.options.users),
        };
        let up_to = rng.below(chat.last_seq as usize + 3) as u64;
        let read = rng.chance(50);
        let r = if rng.chance(50) {
            let device = self.random_device_of(who, rng);
            let state = self.devices[device].state.lock().await;
            let Some(session) = state.session.as_ref() else {
                return;
            };
            let cmd = serde_json::json!({
                "type": if read { "mark_as_read" } else { "mark_delivered" },
                "id": "mark",
                "data": {"chat_id": chat.id, "up_to_seq": up_to},
            });
            reply_of(dispatch_text(session, &cmd.to_string()).await).map(drop)
        } else {
            let receipt = if read {
                Receipt::Read
            } else {
                Receipt::Delivered
            };
            self.engine.mark(&actor(who), chat.id, receipt, up_to).await
        };
        self.outcome("mark", r);
    }

    async fn typing(&self, rng: &mut Rng) {
        let c = rng.below(self.chats.len());
        let d = rng.below(self.devices.len());
        let state = self.devices[d].state.lock().await;
        let Some(session) = state.session.as_ref() else {
            return;
        };
        let chat_id = self.chats[c].id;
        if self
            .outcome("join_chat", session.join_chat(chat_id).await)
            .is_none()
        {
            return;
        }
        let start = rng.chance(70);
        let r = if start {
            session.start_typing(chat_id).await
        } else {
            session.stop_typing(chat_id).await
        };
        self.outcome("typing", r);
    }

    /// A random group and its participants with their roles.
    async fn random_group(&self, rng: &mut Rng) -> Option<(usize, Chat)> {
        let groups = self.groups();
        let c = *rng.pick(&groups)?;
        Some((c, self.chat(c).await?))
    }

    fn with_role(chat: &Chat, roles: &[Role]) -> Vec<usize> {
        chat.participants
            .iter()
            .filter(|p| roles.contains(&p.role))
            .filter_map(|p| ix(&p.user_id))
            .collect()
    }

    async fn add(&self, rng: &mut Rng) {
        let Some((_, chat)) = self.random_group(rng).await else {
            return;
        };
        let powerful = Self::with_role(&chat, &[Role::Admin, Role::Moderator]);
        let by = match rng.pick(&powerful) {
            Some(u) if rng.chance(85) => *u,
            _ => rng.below(self.options.users),
        };
        let outside: Vec<usize> = (0..self.options.users)
            .filter(|u| chat.participant(&user_id(*u)).is_none())
            .collect();
        let target = match rng.pick(&outside) {
            Some(u) if rng.chance(90) => *u,
            _ => rng.below(self.options.users),
        };
        let role = match rng.below(10) {
            0..=5 => Role::Member,
            6..=7 => Role::Moderator,
            _ => Role::Admin,
        };
        let r = self
            .engine
            .add_participant(&actor(by), chat.id, &user_id(target), role)
            .await;
        self.outcome("add_participant", r);
    }

    async fn remove(&self, rng: &mut Rng) {
        let Some((_, chat)) = self.random_group(rng).await else {
            return;
        };
        // Groups mostly stay populated, so that there is something to race
        // on; now and then one empties, racing with changes queued before.
        if chat.participants.len() <= 2 && rng.chance(85) {
            return;
        }
        let members = Self::with_role(&chat, &[Role::Admin, Role::Moderator, Role::Member]);
        let Some(&by) = rng.pick(&members) else {
            return;
        };
        let target = if rng.chance(30) {
            by
        } else {
            *rng.pick(&members).unwrap_or(&by)
        };
        let r = if rng.chance(40) {
            let device = self.random_device_of(by, rng);
            let state = self.devices[device].state.lock().await;
            let Some(session) = state.session.as_ref() else {
                return;
            };
            let cmd = serde_json::json!({
                "type": "remove_participant",
                "id": "remove",
                "data": {"chat_id": chat.id, "user_id": user_id(target)},
            });
            reply_of(dispatch_text(session, &cmd.to_string()).await).map(drop)
        } else {
            self.engine
                .remove_participant(&actor(by), chat.id, &user_id(target))
                .await
        };
        self.outcome("remove_participant", r);
    }

    /// An admin of a group leaves; if they were the last, an heir follows.
    async fn last_admin_leaves(&self, rng: &mut Rng) {
        let Some((_, chat)) = self.random_group(rng).await else {
            return;
        };
        if chat.participants.len() <= 2 && rng.chance(85) {
            return;
        }
        let admins = Self::with_role(&chat, &[Role::Admin]);
        let Some(&admin) = rng.pick(&admins) else {
            return;
        };
        let r = self
            .engine
            .remove_participant(&actor(admin), chat.id, &user_id(admin))
            .await;
        self.outcome("leave (admin)", r);
    }

    async fn set_role(&self, rng: &mut Rng) {
        let Some((_, chat)) = self.random_group(rng).await else {
            return;
        };
        let admins = Self::with_role(&chat, &[Role::Admin]);
        let members = Self::with_role(&chat, &[Role::Admin, Role::Moderator, Role::Member]);
        let by = match rng.pick(&admins) {
            Some(u) if rng.chance(85) => *u,
            _ => rng.below(self.options.users),
        };
        let Some(&target) = rng.pick(&members) else {
            return;
        };
        let role = *rng
            .pick(&[Role::Admin, Role::Moderator, Role::Member])
            .unwrap_or(&Role::Member);
        let r = self
            .engine
            .set_role(&actor(by), chat.id, &user_id(target), role)
            .await;
        self.outcome("set_role", r);
    }

    /// Two admins demote each other at the same time (making a second admin
    /// first if there is one only).
    async fn mutual_demotion(&self, rng: &mut Rng) {
        let Some((c, chat)) = self.random_group(rng).await else {
            return;
        };
        let admins = Self::with_role(&chat, &[Role::Admin]);
        let others = Self::with_role(&chat, &[Role::Moderator, Role::Member]);
        if admins.len() < 2 {
            let (Some(&admin), Some(&other)) = (admins.first(), rng.pick(&others)) else {
                return;
            };
            let r = self
                .engine
                .set_role(&actor(admin), chat.id, &user_id(other), Role::Admin)
                .await;
            if self.outcome("set_role (promote)", r).is_none() {
                return;
            }
        }
        let Some(chat) = self.chat(c).await else {
            return;
        };
        let admins = Self::with_role(&chat, &[Role::Admin]);
        if admins.len() < 2 {
            return;
        }
        let a = admins[rng.below(admins.len())];
        let b = *admins.iter().find(|x| **x != a).unwrap_or(&a);
        let (actor_a, actor_b) = (actor(a), actor(b));
        let (user_a, user_b) = (user_id(a), user_id(b));
        let (ra, rb) = tokio::join!(
            self.engine
                .set_role(&actor_a, chat.id, &user_b, Role::Member),
            self.engine
                .set_role(&actor_b, chat.id, &user_a, Role::Member),
        );
        // Whether the group kept an admin is the log check's business:
        // another admin may have been made meanwhile.
        let ok = usize::from(ra.is_ok()) + usize::from(rb.is_ok());
        lock(&self.summary).mutual_demotions[2 - ok] += 1;
        self.outcome("set_role (mutual)", ra);
        self.outcome("set_role (mutual)", rb);
    }

    /// An admin empties a group (removes everyone else, then leaves) with
    /// an addition of their own in flight: all pipelined, as a client may.
    async fn empty_with_an_addition_in_flight(&self, rng: &mut Rng) {
        let Some((_, chat)) = self.random_group(rng).await else {
            return;
        };
        let admins = Self::with_role(&chat, &[Role::Admin]);
        let Some(&admin) = rng.pick(&admins) else {
            return;
        };
        let outside: Vec<usize> = (0..self.options.users)
            .filter(|u| chat.participant(&user_id(*u)).is_none())
            .collect();
        let Some(&newcomer) = rng.pick(&outside) else {
            return;
        };
        let mut leaving: Vec<usize> = Self::with_role(&chat, &[Role::Moderator, Role::Member]);
        leaving.push(admin);
        // The addition goes somewhere among the removals.
        let at = rng.below(leaving.len() + 1);
        let by = actor(admin);
        let mut calls = Vec::new();
        for (i, target) in leaving.iter().enumerate() {
            if i == at {
                calls.push(None);
            }
            calls.push(Some(user_id(*target)));
        }
        if at == leaving.len() {
            calls.push(None);
        }
        let newcomer = user_id(newcomer);
        let results = futures::future::join_all(calls.iter().map(|target| async {
            match target {
                Some(target) => ("remove_participant (emptying)", {
                    self.engine.remove_participant(&by, chat.id, target).await
                }),
                None => ("add_participant (emptying)", {
                    self.engine
                        .add_participant(&by, chat.id, &newcomer, Role::Member)
                        .await
                }),
            }
        }))
        .await;
        for (what, r) in results {
            self.outcome(what, r);
        }
    }

    async fn update_group(&self, rng: &mut Rng) {
        let Some((c, chat)) = self.random_group(rng).await else {
            return;
        };
        let admins = Self::with_role(&chat, &[Role::Admin]);
        let by = match rng.pick(&admins) {
            Some(u) if rng.chance(90) => *u,
            _ => rng.below(self.options.users),
        };
        let patch = GroupPatch {
            name: Some(format!("{} {}", self.chats[c].name, rng.below(1000))),
            ..GroupPatch::default()
        };
        let r = self.engine.update_group(&actor(by), chat.id, patch).await;
        self.outcome("update_group", r);
    }

    /// Blocks or unblocks one way in a direct chat, recording when.
    async fn set_block(&self, c: usize, first_blocks: bool, on: bool) {
        let Some((a, b, k)) = self.chats[c].pair else {
            return;
        };
        let (who, other, flag) = if first_blocks { (a, b, 0) } else { (b, a, 1) };
        let mut timeline = self.blocks[k].lock().await;
        let before = timeline.flags[0] || timeline.flags[1];
        let start = Instant::now();
        let (a, o) = (actor(who), user_id(other));
        let r = if on {
            self.engine.block(&a, &o).await
        } else {
            self.engine.unblock(&a, &o).await
        };
        let end = Instant::now();
        if self.outcome("block", r).is_some() {
            timeline.flags[flag] = on;
        }
        let after = timeline.flags[0] || timeline.flags[1];
        timeline.ops.push(BlockOp {
            start,
            end,
            before,
            after,
        });
    }

    async fn block(&self, rng: &mut Rng) {
        let directs: Vec<usize> = (0..self.chats.len())
            .filter(|c| !self.chats[*c].group)
            .collect();
        let Some(&c) = rng.pick(&directs) else {
            return;
        };
        let first = rng.chance(50);
        let on = rng.chance(50);
        self.set_block(c, first, on).await;
    }

    /// Closes a device's connection, connects again, and syncs from the
    /// cursors of everything the device saw.
    async fn reconnect(&self, rng: &mut Rng) {
        let d = rng.below(self.devices.len());
        let device = &self.devices[d];
        let mut state = device.state.lock().await;
        if let Some(session) = state.session.take() {
            session.close().await;
        }
        if let Some(reader) = state.reader.take() {
            self.drain(d, reader).await;
        }
        let fresh = Arc::new(Mutex::new(ConnLog::default()));
        let old = std::mem::replace(&mut state.log, fresh.clone());
        state.past.push(old);
        let (session, reader) = self.connect(device.user, &device.id, fresh).await;
        state.session = Some(session);
        state.reader = Some(reader);
        lock(&self.summary).reconnects += 1;
        let mut cursors = cursors_of(&state);
        let me = actor(device.user);
        for _ in 0..50 {
            let result = match self.engine.sync(&me, &cursors).await {
                Ok(result) => result,
                Err(e) => {
                    self.refused("sync", &e);
                    break;
                }
            };
            self.accepted();
            let asked = cursors.clone();
            let mut more = false;
            for chat in &result.chats {
                if let Some(last) = chat.changes.last() {
                    let cursor = cursors.entry(chat.chat.chat.id).or_insert(0);
                    *cursor = (*cursor).max(last.updated_seq);
                }
                more |= chat.has_more;
            }
            for gone in &result.removed_chat_ids {
                cursors.remove(gone);
            }
            state.syncs.push(SyncRecord {
                cursors: asked,
                result,
            });
            if !more {
                break;
            }
        }
    }

    /// Waits for a closed connection's reader to record every frame.
    async fn drain(&self, d: usize, reader: JoinHandle<()>) {
        if tokio::time::timeout(DRAIN, reader).await.is_err() {
            self.violation(format!(
                "device {d}: the outgoing queue did not end within {DRAIN:?} of its \
                 connection's close (is the transport still held?)"
            ));
        }
    }

    /// In every direct chat under a block, what each side does (typing,
    /// receipts, reactions, edits) must not reach the other; lifting the
    /// block lets a reaction through again.
    async fn block_probe(&self) {
        for c in 0..self.chats.len() {
            let Some((a, b, _)) = self.chats[c].pair else {
                continue;
            };
            let chat_id = self.chats[c].id;
            // Exactly one block, the first user's, so that lifting it
            // lifts every block of the chat.
            self.set_block(c, false, false).await;
            self.set_block(c, true, true).await;
            for user in [a, b] {
                for d in self.devices_of(user) {
                    let state = self.devices[d].state.lock().await;
                    if let Some(session) = state.session.as_ref() {
                        self.outcome("join_chat (probe)", session.join_chat(chat_id).await);
                    }
                }
            }
            // Let the readers record what was queued before: only what the
            // probe causes is judged (events with a seq: only above this).
            tokio::time::sleep(Duration::from_millis(30)).await;
            let last_seq = self.chat(c).await.map_or(0, |chat| chat.last_seq);
            let mut marks = Vec::new();
            for user in [a, b] {
                for d in self.devices_of(user) {
                    let state = self.devices[d].state.lock().await;
                    marks.push((d, lock(&state.log).frames.len(), state.log.clone()));
                }
            }
            let sent: Vec<Sent> = lock(&self.sent)
                .iter()
                .filter(|s| s.chat == c)
                .cloned()
                .collect();
            for user in [a, b] {
                let d = self.devices_of(user)[0];
                {
                    let state = self.devices[d].state.lock().await;
                    if let Some(session) = state.session.as_ref() {
                        self.outcome("typing (probe)", session.start_typing(chat_id).await);
                    }
                }
                let r = self
                    .engine
                    .mark(&actor(user), chat_id, Receipt::Read, last_seq)
                    .await;
                self.outcome("mark (probe)", r);
                if let Some(m) = sent.last() {
                    let start = Instant::now();
                    let r = self.engine.react(&actor(user), m.id, "🔒").await;
                    let end = Instant::now();
                    if let Some(m) = self.outcome("react (probe)", r) {
                        self.window(chat_id, m.updated_seq, start, end);
                    }
                }
                if let Some(m) = sent.iter().rev().find(|s| s.sender == user) {
                    let start = Instant::now();
                    let r = self
                        .engine
                        .edit(&actor(user), m.id, "edited under a block")
                        .await;
                    let end = Instant::now();
                    if let Some(m) = self.outcome("edit (probe)", r) {
                        self.window(chat_id, m.updated_seq, start, end);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            for (d, from, log) in &marks {
                let me = self.devices[*d].user;
                let other = if me == a { b } else { a };
                let log = lock(log);
                for frame in log.frames.iter().skip(*from) {
                    let kind = frame["type"].as_str().unwrap_or_default();
                    let data = &frame["data"];
                    let by = match kind {
                        "user_typing" | "message_read" | "message_delivered" | "reaction_added"
                        | "reaction_removed" => data["user_id"].as_str(),
                        "message_edited" | "message_received" => data["sender_id"].as_str(),
                        _ => None,
                    };
                    let in_chat = data["chat_id"].as_str() == Some(&chat_id.to_string());
                    let earlier = data["updated_seq"].as_u64().is_some_and(|u| u <= last_seq);
                    if in_chat && !earlier && by == Some(user_id(other).as_str()) {
                        self.violation(format!(
                            "{}: u{me} ({}) received {kind} of u{other} while u{a} blocks u{b}: {frame}",
                            self.chats[c].name, self.devices[*d].id.as_str()
                        ));
                    }
                }
            }
            // Lifted: a reaction of b reaches a again.
            self.set_block(c, true, false).await;
            let Some(m) = sent.last() else {
                continue;
            };
            let watch = {
                let d = self.devices_of(a)[0];
                let state = self.devices[d].state.lock().await;
                (lock(&state.log).frames.len(), state.log.clone())
            };
            let start = Instant::now();
            let r = self.engine.react(&actor(b), m.id, "🔓").await;
            let end = Instant::now();
            let Some(reacted) = self.outcome("react (after unblock)", r) else {
                continue;
            };
            self.window(chat_id, reacted.updated_seq, start, end);
            tokio::time::sleep(Duration::from_millis(20)).await;
            let got = lock(&watch.1).frames.iter().skip(watch.0).any(|f| {
                f["type"] == "reaction_added"
                    && f["data"]["emoji"] == "🔓"
                    && f["data"]["updated_seq"] == reacted.updated_seq
            });
            if !got {
                self.violation(format!(
                    "{}: after the block was lifted, u{b}'s reaction at seq {} did not reach u{a}",
                    self.chats[c].name, reacted.updated_seq
                ));
            }
            for user in [a, b] {
                let d = self.devices_of(user)[0];
                let state = self.devices[d].state.lock().await;
                if let Some(session) = state.session.as_ref() {
                    self.outcome("typing stop (probe)", session.stop_typing(chat_id).await);
                }
            }
        }
    }

    /// Closes every connection and returns what each device received.
    async fn teardown(&self) -> Vec<DeviceRecord> {
        let mut out = Vec::new();
        for (d, device) in self.devices.iter().enumerate() {
            let mut state = device.state.lock().await;
            if let Some(session) = state.session.take() {
                session.close().await;
            }
            if let Some(reader) = state.reader.take() {
                self.drain(d, reader).await;
            }
            let mut gens = Vec::new();
            let past = std::mem::take(&mut state.past);
            for log in past.iter().chain(std::iter::once(&state.log)) {
                gens.push(std::mem::take(&mut *lock(log)));
            }
            out.push(DeviceRecord {
                user: device.user,
                name: format!("u{}/{}", device.user, device.id.as_str()),
                gens,
                syncs: std::mem::take(&mut state.syncs),
            });
        }
        out
    }
}

/// The cursor of each chat: the highest seq the device saw of it, live or
/// in a sync.
fn cursors_of(state: &DeviceState) -> HashMap<ChatId, u64> {
    let mut cursors: HashMap<ChatId, u64> = HashMap::new();
    let mut see = |chat: ChatId, seq: u64| {
        let c = cursors.entry(chat).or_insert(0);
        *c = (*c).max(seq);
    };
    for log in state.past.iter().chain(std::iter::once(&state.log)) {
        for frame in &lock(log).frames {
            if let Seen::Anchor { chat, seq, .. } = parse(frame) {
                see(chat, seq);
            }
        }
    }
    for sync in &state.syncs {
        for chat in &sync.result.chats {
            for m in &chat.changes {
                see(chat.chat.chat.id, m.updated_seq);
            }
        }
    }
    cursors
}

// --- what a frame says -----------------------------------------------------------

/// A received frame, as far as the checks care.
#[derive(Debug)]
enum Seen {
    /// An event of one change, at its seq (`updated_seq` for updates).
    Anchor {
        chat: ChatId,
        seq: u64,
        kind: &'static str,
        /// Whose doing it was, for the block rule (`None`: system).
        by: Option<usize>,
        /// A `message_received`.
        received: bool,
    },
    /// A receipt: no seq of its own.
    Mark {
        chat: ChatId,
        up_to: u64,
    },
    Added {
        chat: ChatId,
        user: usize,
    },
    Removed {
        chat: ChatId,
        user: usize,
    },
    /// `chat_created` / `chat_updated`: the chat as it was at `last_seq`.
    View {
        chat: ChatId,
        last_seq: u64,
        has_me: Vec<usize>,
    },
    Typing {
        chat: ChatId,
    },
    /// Not about a chat (presence).
    Other,
    Bad(String),
}

fn chat_field(v: &Value) -> Option<ChatId> {
    v.as_str()?.parse().ok()
}

fn user_field(v: &Value) -> Option<usize> {
    ix(&UserId::new(v.as_str()?).ok()?)
}

fn parse(frame: &Value) -> Seen {
    let kind = frame["type"].as_str().unwrap_or_default();
    let data = &frame["data"];
    let bad = || Seen::Bad(format!("malformed {kind}: {frame}"));
    match kind {
        "message_received" | "message_edited" => {
            let Ok(m) = serde_json::from_value::<Message>(data.clone()) else {
                return bad();
            };
            let received = kind == "message_received";
            Seen::Anchor {
                chat: m.chat_id,
                seq: if received { m.seq } else { m.updated_seq },
                kind: if received {
                    "message_received"
                } else {
                    "message_edited"
                },
                by: if m.system.is_some() {
                    None
                } else {
                    ix(&m.sender_id)
                },
                received,
            }
        }
        "message_deleted" => match (chat_field(&data["chat_id"]), data["updated_seq"].as_u64()) {
            (Some(chat), Some(seq)) => Seen::Anchor {
                chat,
                seq,
                kind: "message_deleted",
                by: None,
                received: false,
            },
            _ => bad(),
        },
        "reaction_added" | "reaction_removed" => match (
            chat_field(&data["chat_id"]),
            data["updated_seq"].as_u64(),
            user_field(&data["user_id"]),
        ) {
            (Some(chat), Some(seq), Some(by)) => Seen::Anchor {
                chat,
                seq,
                kind: "reaction",
                by: Some(by),
                received: false,
            },
            _ => bad(),
        },
        "message_delivered" | "message_read" => {
            match (chat_field(&data["chat_id"]), data["up_to_seq"].as_u64()) {
                (Some(chat), Some(up_to)) => Seen::Mark { chat, up_to },
                _ => bad(),
            }
        }
        "participant_added" | "participant_removed" => {
            match (chat_field(&data["chat_id"]), user_field(&data["user_id"])) {
                (Some(chat), Some(user)) if kind == "participant_added" => {
                    Seen::Added { chat, user }
                }
                (Some(chat), Some(user)) => Seen::Removed { chat, user },
                _ => bad(),
            }
        }
        "chat_created" | "chat_updated" => {
            match (chat_field(&data["id"]), data["last_seq"].as_u64()) {
                (Some(chat), Some(last_seq)) => Seen::View {
                    chat,
                    last_seq,
                    has_me: data["participants"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .filter_map(|p| user_field(&p["user_id"]))
                                .collect()
                        })
                        .unwrap_or_default(),
                },
                _ => bad(),
            }
        }
        "user_typing" | "user_stopped_typing" => match chat_field(&data["chat_id"]) {
            Some(chat) => Seen::Typing { chat },
            None => bad(),
        },
        "presence_update" | "user_online" | "user_offline" => Seen::Other,
        _ => Seen::Bad(format!("unexpected frame {frame}")),
    }
}

// --- the checks --------------------------------------------------------------------

/// A chat's log as the store holds it at the end, with membership replayed.
#[derive(Debug)]
struct ChatLog {
    info: ChatInfo,
    chat: Chat,
    by_seq: BTreeMap<u64, Message>,
    /// Each user's membership spans: member at seqs `start..end`.
    spans: HashMap<usize, Vec<(u64, u64)>>,
    adds: Vec<(u64, usize)>,
    removes: Vec<(u64, usize)>,
    /// The direct chat's block timeline.
    blocks: Option<BlockTimeline>,
}

impl ChatLog {
    fn member_at(&self, user: usize, seq: u64) -> bool {
        self.spans
            .get(&user)
            .is_some_and(|s| s.iter().any(|(a, r)| *a <= seq && seq < *r))
    }

    /// A member at some seq in `lo..=hi`.
    fn member_within(&self, user: usize, lo: u64, hi: u64) -> bool {
        self.spans
            .get(&user)
            .is_some_and(|s| s.iter().any(|(a, r)| *a <= hi && *r > lo))
    }

    fn ever_member(&self, user: usize) -> bool {
        self.spans.get(&user).is_some_and(|s| !s.is_empty())
    }
}

#[derive(Debug, Default)]
struct Checker {
    logs: HashMap<ChatId, ChatLog>,
    windows: HashMap<(ChatId, u64), (Instant, Instant)>,
    violations: Vec<String>,
    stale: Vec<String>,
    heirs: usize,
    events_checked: usize,
    owed_checked: usize,
}

fn role_name(role: Option<Role>) -> &'static str {
    role.map_or("not a member", Role::as_str)
}

impl Checker {
    async fn new(world: &World, timelines: Vec<BlockTimeline>) -> Self {
        let mut checker = Self {
            windows: lock(&world.windows).clone(),
            ..Self::default()
        };
        for info in &world.chats {
            let chat = match world.store.get_chat(info.id).await {
                Ok(Some(chat)) => chat,
                other => {
                    checker
                        .violations
                        .push(format!("{}: the chat is gone: {other:?}", info.name));
                    continue;
                }
            };
            let messages = match world.store.changes(info.id, 0, 0, 1_000_000).await {
                Ok(m) => m,
                Err(e) => {
                    checker
                        .violations
                        .push(format!("{}: reading the log: {e:?}", info.name));
                    continue;
                }
            };
            let blocks = info.pair.map(|(_, _, k)| timelines[k].clone());
            let log = checker.replay(info, chat, messages, blocks);
            checker.logs.insert(info.id, log);
        }
        checker
    }

    fn fail(&mut self, what: String) {
        self.violations.push(what);
    }

    /// Replays membership and roles from the log, checking the log itself.
    fn replay(
        &mut self,
        info: &ChatInfo,
        chat: Chat,
        messages: Vec<Message>,
        blocks: Option<BlockTimeline>,
    ) -> ChatLog {
        let name = &info.name;
        let mut by_seq = BTreeMap::new();
        let mut updated = BTreeSet::new();
        for m in messages {
            if !updated.insert(m.updated_seq) {
                self.fail(format!(
                    "{name}: two messages have updated_seq {}",
                    m.updated_seq
                ));
            }
            if m.seq > m.updated_seq || m.updated_seq > chat.last_seq || m.seq == 0 {
                self.fail(format!(
                    "{name}: message at seq {} has updated_seq {} with last_seq {}",
                    m.seq, m.updated_seq, chat.last_seq
                ));
            }
            if let Some(old) = by_seq.insert(m.seq, m) {
                self.fail(format!("{name}: two messages have seq {}", old.seq));
            }
        }
        if updated.last().copied().unwrap_or(0) != chat.last_seq {
            self.fail(format!(
                "{name}: last_seq {} is not the highest updated_seq {:?}",
                chat.last_seq,
                updated.last()
            ));
        }
        let mut members: Vec<(usize, Role)> = info.founders.clone();
        let mut spans: HashMap<usize, Vec<(u64, u64)>> = HashMap::new();
        for (u, _) in &members {
            spans.entry(*u).or_default().push((0, u64::MAX));
        }
        let (mut adds, mut removes) = (Vec::new(), Vec::new());
        // After the removal of the last admin: (seq of the promotion due,
        // heir, remover).
        let mut heir_due: Option<(u64, usize, UserId)> = None;
        for (&seq, m) in &by_seq {
            let role_of = |members: &[(usize, Role)], u: Option<usize>| -> Option<Role> {
                let u = u?;
                members.iter().find(|(x, _)| *x == u).map(|(_, r)| *r)
            };
            let by = ix(&m.sender_id);
            let by_role = role_of(&members, by);
            let mut heir_promotion = false;
            if let Some((due, heir, remover)) = heir_due.take() {
                match &m.system {
                    Some(SystemEvent::RoleChanged {
                        user_id,
                        role: Role::Admin,
                    }) if seq == due && ix(user_id) == Some(heir) && m.sender_id == remover => {
                        heir_promotion = true;
                        self.heirs += 1;
                    }
                    _ => self.fail(format!(
                        "{name}: the removal at seq {} left no admin, and seq {seq} is not the \
                         promotion of the heir u{heir} by {remover}: {m:?}",
                        due - 1
                    )),
                }
            }
            let mut stale = |what: String| {
                self.stale.push(format!(
                    "{name} seq {seq}: {what} by {} who was {} when it committed",
                    m.sender_id,
                    role_name(by_role)
                ));
            };
            match &m.system {
                None => {
                    if by_role.is_none() {
                        self.violations.push(format!(
                            "{name}: seq {seq} was posted by {}, not a member then",
                            m.sender_id
                        ));
                    }
                }
                Some(SystemEvent::ParticipantAdded { user_id, role }) => {
                    let allowed = by_role == Some(Role::Admin)
                        || (by_role == Some(Role::Moderator) && *role == Role::Member);
                    if !allowed {
                        stale(format!("adding {user_id} as {}", role.as_str()));
                    }
                    let Some(u) = ix(user_id) else { continue };
                    if members.iter().any(|(x, _)| *x == u) {
                        self.violations
                            .push(format!("{name}: seq {seq} adds u{u}, already a member"));
                    } else {
                        members.push((u, *role));
                        spans.entry(u).or_default().push((seq, u64::MAX));
                        adds.push((seq, u));
                    }
                }
                Some(SystemEvent::ParticipantRemoved { user_id }) => {
                    let target = ix(user_id);
                    let target_role = role_of(&members, target);
                    let allowed = by == target
                        || by_role == Some(Role::Admin)
                        || (by_role == Some(Role::Moderator) && target_role == Some(Role::Member));
                    if !allowed {
                        stale(format!("removing {user_id} ({})", role_name(target_role)));
                    }
                    let Some(u) = target else { continue };
                    let Some(pos) = members.iter().position(|(x, _)| *x == u) else {
                        self.violations
                            .push(format!("{name}: seq {seq} removes u{u}, not a member"));
                        continue;
                    };
                    members.remove(pos);
                    if let Some(span) = spans.get_mut(&u).and_then(|s| s.last_mut()) {
                        span.1 = seq;
                    }
                    removes.push((seq, u));
                    if info.group
                        && !members.is_empty()
                        && !members.iter().any(|(_, r)| *r == Role::Admin)
                    {
                        let heir = members
                            .iter()
                            .find(|(_, r)| *r == Role::Moderator)
                            .unwrap_or(&members[0])
                            .0;
                        heir_due = Some((seq + 1, heir, m.sender_id.clone()));
                    }
                }
                Some(SystemEvent::RoleChanged { user_id, role }) => {
                    if !heir_promotion && by_role != Some(Role::Admin) {
                        stale(format!("making {user_id} {}", role.as_str()));
                    }
                    let Some(u) = ix(user_id) else { continue };
                    match members.iter_mut().find(|(x, _)| *x == u) {
                        Some(entry) => entry.1 = *role,
                        None => self.violations.push(format!(
                            "{name}: seq {seq} changes the role of u{u}, not a member"
                        )),
                    }
                }
                Some(SystemEvent::GroupUpdated { .. }) => {
                    if by_role != Some(Role::Admin) {
                        stale("updating the group".to_owned());
                    }
                }
                Some(SystemEvent::RetentionChanged { .. }) => {
                    if by_role != Some(Role::Admin) {
                        stale("setting the retention".to_owned());
                    }
                }
            }
            if m.system.is_some()
                && info.group
                && heir_due.is_none()
                && !members.is_empty()
                && !members.iter().any(|(_, r)| *r == Role::Admin)
            {
                let recent: Vec<String> = by_seq
                    .range(..=seq)
                    .rev()
                    .filter(|(_, m)| m.system.is_some())
                    .take(6)
                    .map(|(s, m)| format!("{s}: {:?} by {}", m.system, m.sender_id))
                    .collect();
                self.violations.push(format!(
                    "{name}: no admin after seq {seq}; members {members:?}; system messages \
                     up to it, newest first: {recent:?}"
                ));
            }
        }
        if let Some((due, heir, _)) = heir_due {
            self.fail(format!(
                "{name}: the removal at seq {} left no admin and the log ends before the \
                 promotion of u{heir}",
                due - 1
            ));
        }
        let stored: Vec<(usize, Role)> = chat
            .participants
            .iter()
            .filter_map(|p| Some((ix(&p.user_id)?, p.role)))
            .collect();
        if stored != members {
            self.fail(format!(
                "{name}: the store's participants {stored:?} are not the log's {members:?}"
            ));
        }
        for p in &chat.participants {
            let Some(u) = ix(&p.user_id) else { continue };
            let start = spans.get(&u).and_then(|s| s.last()).map(|s| s.0);
            if start != Some(p.visible_from_seq) {
                self.fail(format!(
                    "{name}: u{u} has visible_from_seq {} but joined at seq {start:?}",
                    p.visible_from_seq
                ));
            }
        }
        ChatLog {
            info: info.clone(),
            chat,
            by_seq,
            spans,
            adds,
            removes,
            blocks,
        }
    }

    /// Whether a block was certainly in place (`Some(true)`), certainly not
    /// (`Some(false)`), or may have been when `(chat, seq)` committed.
    fn blocked_at(&self, log: &ChatLog, seq: u64) -> Option<bool> {
        let timeline = log.blocks.as_ref()?;
        let (start, end) = self.windows.get(&(log.chat.id, seq))?;
        timeline.state_during(*start, *end)
    }

    /// Whether `user` must have received the message at `seq` live.
    fn owed(&self, log: &ChatLog, user: usize, seq: u64, m: &Message) -> bool {
        if log.info.group || ix(&m.sender_id) == Some(user) {
            return true;
        }
        self.blocked_at(log, seq) == Some(false)
    }

    /// Checks one device: each connection's frames, then completeness.
    fn device(&mut self, device: &DeviceRecord) {
        let user = device.user;
        let mut received: HashMap<ChatId, BTreeSet<u64>> = HashMap::new();
        let mut removals_seen: HashMap<ChatId, usize> = HashMap::new();
        let mut closed = false;
        for (g, conn) in device.gens.iter().enumerate() {
            let at = format!("{} (connection {g})", device.name);
            if let Some((code, reason)) = &conn.close {
                closed = true;
                self.fail(format!("{at}: closed by the engine: {code} {reason}"));
            }
            self.connection(user, &at, conn, &mut received, &mut removals_seen);
        }
        for (i, sync) in device.syncs.iter().enumerate() {
            self.sync(
                user,
                &format!("{} (sync {i})", device.name),
                sync,
                &mut received,
            );
        }
        if closed {
            return;
        }
        let throughout = device.gens.len() == 1;
        let mut missing = Vec::new();
        for log in self.logs.values() {
            let got = received.get(&log.chat.id);
            let from = if throughout {
                0
            } else {
                match log.chat.participant(&user_id(user)) {
                    Some(p) => p.visible_from_seq,
                    None => continue,
                }
            };
            for (&seq, m) in log.by_seq.range(from..) {
                if log.member_at(user, seq) && self.owed(log, user, seq, m) {
                    self.owed_checked += 1;
                    if !got.is_some_and(|s| s.contains(&seq)) {
                        missing.push(format!("{}@{seq}", log.info.name));
                    }
                }
            }
            if throughout {
                let removed = log.removes.iter().filter(|(_, u)| *u == user).count();
                let seen = removals_seen.get(&log.chat.id).copied().unwrap_or(0);
                if seen < removed {
                    self.violations.push(format!(
                        "{}: removed from {} {removed} time(s), told {seen} time(s)",
                        device.name, log.info.name
                    ));
                }
            }
        }
        if !missing.is_empty() {
            let how = if throughout {
                "live throughout, never received"
            } else {
                "reconnected, has neither live nor from sync"
            };
            self.fail(format!(
                "{}: {how} the messages {}",
                device.name,
                missing.join(", ")
            ));
        }
    }

    fn connection(
        &mut self,
        user: usize,
        at: &str,
        conn: &ConnLog,
        received: &mut HashMap<ChatId, BTreeSet<u64>>,
        removals_seen: &mut HashMap<ChatId, usize>,
    ) {
        let seen: Vec<Seen> = conn.frames.iter().map(parse).collect();
        // The seq of the next event of the same chat, for each position.
        let mut next: Vec<Option<u64>> = vec![None; seen.len()];
        let mut upcoming: HashMap<ChatId, u64> = HashMap::new();
        for (i, s) in seen.iter().enumerate().rev() {
            let chat = match s {
                Seen::Anchor { chat, .. }
                | Seen::Mark { chat, .. }
                | Seen::Added { chat, .. }
                | Seen::Removed { chat, .. } => *chat,
                _ => continue,
            };
            next[i] = upcoming.get(&chat).copied();
            if let Seen::Anchor { seq, .. } = s {
                upcoming.insert(chat, *seq);
            }
        }
        let mut prev: HashMap<ChatId, u64> = HashMap::new();
        let mut errors = Vec::new();
        for (i, s) in seen.into_iter().enumerate() {
            let frame = &conn.frames[i];
            let chat = match &s {
                Seen::Anchor { chat, .. }
                | Seen::Mark { chat, .. }
                | Seen::Added { chat, .. }
                | Seen::Removed { chat, .. }
                | Seen::View { chat, .. }
                | Seen::Typing { chat } => *chat,
                Seen::Other => continue,
                Seen::Bad(what) => {
                    errors.push(what.clone());
                    continue;
                }
            };
            let Some(log) = self.logs.get(&chat) else {
                errors.push(format!("event of a chat the run never made: {frame}"));
                continue;
            };
            self.events_checked += 1;
            let name = &log.info.name;
            let lo = prev.get(&chat).copied().unwrap_or(0);
            let hi = next[i].unwrap_or(u64::MAX);
            match s {
                Seen::Anchor {
                    seq,
                    kind,
                    by,
                    received: is_received,
                    ..
                } => {
                    if prev.contains_key(&chat) && seq <= lo {
                        errors.push(format!(
                            "{name}: {kind} at seq {seq} after an event at seq {lo} (order)"
                        ));
                    }
                    prev.insert(chat, seq);
                    if !log.member_at(user, seq) {
                        errors.push(format!(
                            "{name}: {kind} at seq {seq} reached u{user}, not a member then: {frame}"
                        ));
                    }
                    if by.is_some_and(|b| b != user) && self.blocked_at(log, seq) == Some(true) {
                        errors.push(format!(
                            "{name}: {kind} at seq {seq} of u{} crossed a block: {frame}",
                            by.unwrap_or_default()
                        ));
                    }
                    if is_received {
                        received.entry(chat).or_default().insert(seq);
                    }
                }
                Seen::Mark { up_to, .. } => {
                    let hi = hi.min(log.chat.last_seq);
                    let lo = lo.max(up_to);
                    if lo > hi {
                        errors.push(format!(
                            "{name}: a receipt up to {up_to} between events at seqs {:?} and \
                             {:?} (order): {frame}",
                            prev.get(&chat),
                            next[i]
                        ));
                    } else if !log.member_within(user, lo, hi) {
                        errors.push(format!(
                            "{name}: a receipt that committed within seqs {lo}..={hi} reached \
                             u{user}, not a member then: {frame}"
                        ));
                    }
                }
                Seen::Added { user: added, .. } => {
                    let ok = log.adds.iter().any(|(a, u)| {
                        *u == added && (lo..=hi).contains(a) && log.member_at(user, *a)
                    });
                    if !ok {
                        errors.push(format!(
                            "{name}: participant_added of u{added} reached u{user} with no \
                             addition within seqs {lo}..={hi} that u{user} was a member for: {frame}"
                        ));
                    }
                }
                Seen::Removed { user: removed, .. } => {
                    let ok = log.removes.iter().any(|(r, u)| {
                        *u == removed
                            && (lo..=hi).contains(r)
                            && (log.member_at(user, *r)
                                || (user == removed && log.member_at(user, r - 1)))
                    });
                    if !ok {
                        errors.push(format!(
                            "{name}: participant_removed of u{removed} reached u{user} with no \
                             removal within seqs {lo}..={hi} that u{user} was a member for: {frame}"
                        ));
                    }
                    if removed == user {
                        *removals_seen.entry(chat).or_default() += 1;
                    }
                }
                Seen::View {
                    last_seq, has_me, ..
                } => {
                    if !has_me.contains(&user) || !log.member_at(user, last_seq) {
                        errors.push(format!(
                            "{name}: {} at seq {last_seq} reached u{user}, not a member then",
                            frame["type"]
                        ));
                    }
                }
                Seen::Typing { .. } => {
                    if !log.ever_member(user) {
                        errors.push(format!(
                            "{name}: typing reached u{user}, never a member: {frame}"
                        ));
                    }
                }
                Seen::Other | Seen::Bad(_) => {}
            }
        }
        for e in errors {
            self.fail(format!("{at}: {e}"));
        }
    }

    fn sync(
        &mut self,
        user: usize,
        at: &str,
        sync: &SyncRecord,
        received: &mut HashMap<ChatId, BTreeSet<u64>>,
    ) {
        let mut errors = Vec::new();
        for chat in &sync.result.chats {
            let view = &chat.chat.chat;
            let Some(log) = self.logs.get(&view.id) else {
                errors.push(format!("sync lists a chat the run never made: {}", view.id));
                continue;
            };
            let name = &log.info.name;
            let me = view.participant(&user_id(user));
            if me.is_none() || !log.member_at(user, view.last_seq) {
                errors.push(format!(
                    "{name}: sync at last_seq {} lists it, u{user} not a member then",
                    view.last_seq
                ));
            }
            let cursor = sync.cursors.get(&view.id).copied().unwrap_or(0);
            let from = me.map_or(0, |p| p.visible_from_seq);
            let mut last = cursor;
            for m in &chat.changes {
                if m.updated_seq <= last {
                    errors.push(format!(
                        "{name}: sync from cursor {cursor} returned updated_seq {} after {last}",
                        m.updated_seq
                    ));
                }
                last = m.updated_seq;
                if m.seq < from || m.chat_id != view.id {
                    errors.push(format!(
                        "{name}: sync returned seq {} (visible from {from})",
                        m.seq
                    ));
                }
                received.entry(view.id).or_default().insert(m.seq);
            }
        }
        for e in errors {
            self.fail(format!("{at}: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        time::{Duration, Instant},
    };

    use serde_json::Value;

    use super::{
        BlockOp, BlockTimeline, ChatInfo, Checker, ConnLog, DeviceRecord, Options, run, seeds,
        user_id,
    };
    use crate::{
        MemoryStore,
        model::{
            Chat, ChatId, ChatKind, Encryption, Message, MessageType, Participant, Role,
            SystemEvent, Timestamp,
        },
        protocol::ServerEvent,
        store::NewMessage,
    };

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_store_under_concurrent_clients() {
        let options = Options::default();
        let mut stale = 0;
        for seed in seeds(6) {
            let summary = run(Arc::new(MemoryStore::new()), seed, &options).await;
            assert!(summary.owed_checked > 0 && summary.events_checked > 0);
            stale += summary.stale_authority.len();
            eprintln!("{summary:?}");
        }
        eprintln!("system changes by authors without the right at commit: {stale}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_lane_and_single_devices() {
        let options = Options {
            write_lanes: 1,
            two_device_users: 0,
            workers: 6,
            ops_per_worker: 30,
            ..Options::default()
        };
        for seed in seeds(3) {
            run(Arc::new(MemoryStore::new()), seed ^ 0xA5A5, &options).await;
        }
    }

    // --- the checks themselves ---------------------------------------------------

    fn message(chat: ChatId, seq: u64, by: usize, system: Option<SystemEvent>) -> Message {
        let mut new =
            NewMessage::system(chat, user_id(by), system.clone(), Timestamp::from_millis(0));
        if system.is_none() {
            new.kind = MessageType::Text;
            new.content = Some(format!("m{seq}"));
        }
        new.into_message(seq)
    }

    fn participant(u: usize, role: Role, visible_from_seq: u64) -> Participant {
        Participant {
            user_id: user_id(u),
            role,
            joined_at: Timestamp::from_millis(0),
            delivered_seq: visible_from_seq,
            read_seq: visible_from_seq,
            visible_from_seq,
            silenced_until: None,
            settings: Default::default(),
        }
    }

    /// A group founded by u0 (admin), u1 and u2: 1 post, 2 u1 removed, 3
    /// post, 4 u1 added again, 5 post.
    fn group() -> (ChatInfo, Chat, Vec<Message>) {
        let id = ChatId::from_ulid(ulid::Ulid(0x0123_4567_89AB_CDEF));
        let log = vec![
            message(id, 1, 0, None),
            message(
                id,
                2,
                0,
                Some(SystemEvent::ParticipantRemoved {
                    user_id: user_id(1),
                }),
            ),
            message(id, 3, 2, None),
            message(
                id,
                4,
                0,
                Some(SystemEvent::ParticipantAdded {
                    user_id: user_id(1),
                    role: Role::Member,
                }),
            ),
            message(id, 5, 0, None),
        ];
        let chat = Chat {
            id,
            kind: ChatKind::Group,
            name: Some("g".into()),
            description: None,
            avatar_url: None,
            encryption: Encryption::AtRest,
            last_seq: 5,
            last_activity: Timestamp::from_millis(0),
            created_at: Timestamp::from_millis(0),
            retention_secs: None,
            participants: vec![
                participant(0, Role::Admin, 0),
                participant(2, Role::Member, 0),
                participant(1, Role::Member, 4),
            ],
        };
        let info = ChatInfo {
            id,
            name: "g".into(),
            group: true,
            founders: vec![(0, Role::Admin), (1, Role::Member), (2, Role::Member)],
            pair: None,
        };
        (info, chat, log)
    }

    fn checker() -> (Checker, ChatInfo, Vec<Message>) {
        let (info, chat, log) = group();
        let mut checker = Checker::default();
        let replayed = checker.replay(&info, chat, log.clone(), None);
        checker.logs.insert(info.id, replayed);
        assert_eq!(checker.violations, Vec::<String>::new(), "a faithful log");
        (checker, info, log)
    }

    fn frame(event: ServerEvent) -> Value {
        serde_json::from_slice(event.encode().frame()).unwrap_or(Value::Null)
    }

    fn received(m: &Message) -> Value {
        frame(ServerEvent::MessageReceived(m.clone()))
    }

    fn removed(chat: ChatId, u: usize) -> Value {
        frame(ServerEvent::ParticipantRemoved {
            chat_id: chat,
            user_id: user_id(u),
        })
    }

    fn device(user: usize, gens: Vec<Vec<Value>>) -> DeviceRecord {
        DeviceRecord {
            user,
            name: format!("u{user}/test"),
            gens: gens
                .into_iter()
                .map(|frames| ConnLog {
                    frames,
                    close: None,
                })
                .collect(),
            syncs: Vec::new(),
        }
    }

    /// The violations the device checks find against [`group`].
    fn violations(device: &DeviceRecord) -> Vec<String> {
        let (mut checker, ..) = checker();
        checker.device(device);
        checker.violations
    }

    #[test]
    fn a_faithful_connection_passes() {
        let (_, info, log) = checker();
        let u1 = device(
            1,
            vec![vec![
                received(&log[0]),
                removed(info.id, 1),
                received(&log[3]),
                frame(ServerEvent::ParticipantAdded {
                    chat_id: info.id,
                    user_id: user_id(1),
                    role: Role::Member,
                }),
                received(&log[4]),
            ]],
        );
        assert_eq!(violations(&u1), Vec::<String>::new());
    }

    #[test]
    fn events_to_non_members_out_of_order_or_missing_are_caught() {
        let (_, info, log) = checker();
        // u1 gets the post at seq 3, made while they were out.
        let leak = device(
            1,
            vec![vec![
                received(&log[0]),
                removed(info.id, 1),
                received(&log[2]),
                received(&log[3]),
                received(&log[4]),
            ]],
        );
        let v = violations(&leak);
        assert!(v.iter().any(|v| v.contains("not a member then")), "{v:?}");
        // u0 gets seq 3 before seq 1.
        let disorder = device(
            0,
            vec![vec![
                received(&log[2]),
                received(&log[0]),
                received(&log[1]),
                received(&log[3]),
                received(&log[4]),
            ]],
        );
        let v = violations(&disorder);
        assert!(v.iter().any(|v| v.contains("(order)")), "{v:?}");
        // u2, live throughout, misses seq 3.
        let lossy = device(
            2,
            vec![vec![
                received(&log[0]),
                received(&log[1]),
                received(&log[3]),
                received(&log[4]),
            ]],
        );
        let v = violations(&lossy);
        assert!(
            v.iter()
                .any(|v| v.contains("never received the messages g@3")),
            "{v:?}"
        );
        // u1, live throughout, is never told of their removal.
        let untold = device(
            1,
            vec![vec![
                received(&log[0]),
                received(&log[3]),
                received(&log[4]),
            ]],
        );
        let v = violations(&untold);
        assert!(v.iter().any(|v| v.contains("told 0 time(s)")), "{v:?}");
        // A reconnected u2 that neither got seq 5 live nor synced it.
        let gap = device(
            2,
            vec![
                vec![received(&log[0]), received(&log[1]), received(&log[2])],
                vec![received(&log[3])],
            ],
        );
        let v = violations(&gap);
        assert!(
            v.iter()
                .any(|v| v.contains("reconnected") && v.contains("g@5")),
            "{v:?}"
        );
        // u3 never belonged: no receipt, typing or chat_updated for them.
        let stranger = device(
            3,
            vec![vec![
                frame(ServerEvent::MessageRead {
                    chat_id: info.id,
                    user_id: user_id(0),
                    up_to_seq: 1,
                }),
                frame(ServerEvent::UserTyping {
                    chat_id: info.id,
                    user_id: user_id(0),
                }),
                frame(ServerEvent::MessageReceived(message(
                    ChatId::new(),
                    1,
                    0,
                    None,
                ))),
            ]],
        );
        let v = violations(&stranger);
        assert!(v.iter().any(|v| v.contains("a receipt")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("typing reached u3")), "{v:?}");
        assert!(v.iter().any(|v| v.contains("never made")), "{v:?}");
    }

    #[test]
    fn a_group_left_without_admin_is_caught() {
        let (info, mut chat, _) = group();
        let id = info.id;
        let demote_only_admin = vec![message(
            id,
            1,
            0,
            Some(SystemEvent::RoleChanged {
                user_id: user_id(0),
                role: Role::Member,
            }),
        )];
        let mut c = Checker::default();
        chat.last_seq = 1;
        c.replay(&info, chat.clone(), demote_only_admin, None);
        assert!(
            c.violations
                .iter()
                .any(|v| v.contains("no admin after seq 1")),
            "{:?}",
            c.violations
        );

        let leave = message(
            id,
            1,
            0,
            Some(SystemEvent::ParticipantRemoved {
                user_id: user_id(0),
            }),
        );
        let mut c = Checker::default();
        c.replay(&info, chat.clone(), vec![leave.clone()], None);
        assert!(
            c.violations.iter().any(|v| v.contains("log ends before")),
            "{:?}",
            c.violations
        );

        // The heir is u1, the longest-standing; promoting u2 is wrong.
        let wrong_heir = message(
            id,
            2,
            0,
            Some(SystemEvent::RoleChanged {
                user_id: user_id(2),
                role: Role::Admin,
            }),
        );
        let mut c = Checker::default();
        chat.last_seq = 2;
        c.replay(&info, chat.clone(), vec![leave.clone(), wrong_heir], None);
        assert!(
            c.violations.iter().any(|v| v.contains("heir u1")),
            "{:?}",
            c.violations
        );

        // The right heir, then the one who left adds someone: allowed by
        // the store, listed as stale authority.
        let heir = message(
            id,
            2,
            0,
            Some(SystemEvent::RoleChanged {
                user_id: user_id(1),
                role: Role::Admin,
            }),
        );
        let late_add = message(
            id,
            3,
            0,
            Some(SystemEvent::ParticipantAdded {
                user_id: user_id(3),
                role: Role::Member,
            }),
        );
        chat.last_seq = 3;
        chat.participants = vec![
            participant(1, Role::Admin, 0),
            participant(2, Role::Member, 0),
            participant(3, Role::Member, 3),
        ];
        let mut c = Checker::default();
        c.replay(&info, chat, vec![leave, heir, late_add], None);
        assert_eq!(c.violations, Vec::<String>::new());
        assert_eq!(c.heirs, 1);
        assert_eq!(c.stale.len(), 1, "{:?}", c.stale);
    }

    #[test]
    fn block_windows_are_certain_only_without_an_overlapping_change() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let timeline = BlockTimeline {
            flags: [true, false],
            ops: vec![
                BlockOp {
                    start: at(10),
                    end: at(20),
                    before: false,
                    after: true,
                },
                // Blocking the other way too changes nothing "either way".
                BlockOp {
                    start: at(30),
                    end: at(40),
                    before: true,
                    after: true,
                },
            ],
        };
        assert_eq!(timeline.state_during(at(0), at(9)), Some(false));
        assert_eq!(timeline.state_during(at(5), at(15)), None);
        assert_eq!(timeline.state_during(at(21), at(50)), Some(true));
        assert_eq!(timeline.state_during(at(20), at(25)), Some(true));
    }
}

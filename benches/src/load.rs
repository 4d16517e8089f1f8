//! The load generator: N authenticated WebSocket clients in direct chats or
//! groups, sending at a fixed rate (open loop, intended send times in the
//! messages, so a stalled server cannot hide its latency) or as fast as acks
//! allow, for a fixed time; then it checks that every acknowledged message
//! reached every member, and reports throughput, latency percentiles,
//! errors, and the server's memory and CPU.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::{Args, ValueEnum};
use futures::{SinkExt, StreamExt, stream::SplitSink};
use hdrhistogram::Histogram;
use memchr::memmem::Finder;
use tokio::{net::TcpStream, process::Command, sync::Semaphore};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, tungstenite::Message};

use crate::{
    Error, procstat, reads,
    server::{self, Server},
    sio,
};

/// What to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Target {
    /// The chat server (spawned from the same target directory, or `--addr`).
    Chat,
    /// The bare broadcast relay baseline (spawned).
    Relay,
    /// A Node.js Socket.IO server doing the same chat traffic without
    /// storage (`benches/socketio/server.mjs`, spawned with `node`; run
    /// `npm ci` in that folder first). Always `--protocol socketio`.
    NodeSocketio,
}

/// How the generator's clients speak to a chat target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Protocol {
    /// `/ws`: the JSON frames of PROTOCOL.md.
    Ws,
    /// `/socket.io/`: Socket.IO 5 over a WebSocket.
    Socketio,
}

/// `chat-bench load`
#[derive(Debug, Clone, Args)]
pub(crate) struct LoadArgs {
    /// What to drive.
    #[arg(long, value_enum, default_value = "chat")]
    target: Target,
    /// The chat server's endpoint to drive.
    #[arg(long, value_enum, default_value = "ws")]
    protocol: Protocol,
    /// A running chat server instead of spawning one (needs --secret).
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// The server's CHAT_JWT_SECRET (random for a spawned server).
    #[arg(long)]
    secret: Option<String>,
    /// The chat-server binary (default: next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// WebSocket connections, one user each.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Members per group; 2 makes direct chats.
    #[arg(long, default_value_t = 50)]
    group_size: usize,
    /// Messages per second over all senders; 0: as fast as acks allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Unacknowledged sends per connection when --rate is 0.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    message_bytes: usize,
    /// Only connect and hold the connections (memory per idle connection).
    #[arg(long)]
    idle: bool,
    /// Skip the warm-up (one message per connection before measuring, so
    /// that first-use work, such as making each sender's keys, is not
    /// counted in the steady state).
    #[arg(long)]
    no_warmup: bool,
    /// Measure reads instead of sends: fill each chat with --fill
    /// messages, then read in a loop for --duration seconds.
    #[arg(long, value_enum)]
    reads: Option<reads::ReadKind>,
    /// Messages per chat before a read workload.
    #[arg(long, default_value_t = 200)]
    fill: usize,
    /// The spawned server's SQLite durability: full or normal.
    #[arg(long, default_value = "full")]
    synchronous: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Percentiles {
    pub(crate) p50: f64,
    p90: f64,
    pub(crate) p99: f64,
    p999: f64,
    pub(crate) max: f64,
    count: u64,
}

impl Percentiles {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: h.max() as f64 / 1000.0,
            count: h.len(),
        }
    }
}

/// Everything a run measured.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Report {
    target: String,
    connections: usize,
    group_size: usize,
    rate: u64,
    duration_s: f64,
    sends_acked: u64,
    sends_per_sec: f64,
    deliveries: u64,
    deliveries_per_sec: f64,
    send_to_ack_ms: Percentiles,
    send_to_receive_ms: Percentiles,
    errors: HashMap<String, u64>,
    /// Acknowledged messages some member never received.
    lost: u64,
    /// Sent but not acknowledged when the run ended (overload backlog).
    unacked: u64,
    duplicates: u64,
    server_rss_mib_before: f64,
    server_rss_mib_after: f64,
    idle_bytes_per_connection: Option<f64>,
    server_cpu_s: f64,
    server_cpu_s_per_million_deliveries: Option<f64>,
}

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn spawn_server(args: &LoadArgs, secret: &str) -> Result<Server, Error> {
    let dir = tempfile::tempdir()?;
    let cmd = match args.target {
        Target::Relay => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["relay", "--bind", "127.0.0.1:0"]);
            c
        }
        Target::NodeSocketio => {
            let mut c = Command::new("node");
            c.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/socketio/server.mjs"));
            c
        }
        Target::Chat => {
            let unlimited = server::UNLIMITED;
            let config = format!(
                "sqlite_synchronous = \"{}\"\noutgoing_queue = 8192\nmax_connections = 200000\n\
                 [rate_limits]\nwrite = {unlimited}\ntyping = {unlimited}\nother = {unlimited}\n\
                 [limits]\nmax_group_members = 10000\n",
                args.synchronous
            );
            server::chat_server(args.server_bin.as_deref(), dir.path(), &config, secret)?
        }
    };
    Server::spawn(cmd, dir).await
}

async fn connect(args: &LoadArgs, addr: SocketAddr, secret: &str, i: usize) -> Result<Ws, Error> {
    if args.socketio() {
        return sio::connect(addr, &server::token(secret, &format!("u{i}"))?).await;
    }
    let url = match args.target {
        Target::NodeSocketio => unreachable!("always socketio"),
        Target::Chat => {
            let token = server::token(secret, &format!("u{i}"))?;
            format!("ws://{addr}/ws?token={token}")
        }
        Target::Relay => format!("ws://{addr}/?group=g{}", i / args.group_size.max(1)),
    };
    // Like the server, the client must not hold back a small frame for
    // a delayed ACK (Nagle), or latency measures the kernel.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    Ok(ws)
}

/// Sends a command and reads until its ack; returns the ack's `data`.
pub(crate) async fn request(
    ws: &mut Ws,
    id: &str,
    kind: &str,
    data: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    let frame = serde_json::json!({"type": kind, "id": id, "data": data});
    ws.send(Message::Text(frame.to_string().into())).await?;
    while let Some(msg) = ws.next().await {
        if let Message::Text(text) = msg? {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            if v["id"] == id {
                if v["type"] == "ack" {
                    return Ok(v["data"].clone());
                }
                return Err(format!("{kind} failed: {}", v["data"]).into());
            }
        }
    }
    Err("connection closed during setup".into())
}

impl LoadArgs {
    fn socketio(&self) -> bool {
        self.protocol == Protocol::Socketio || self.target == Target::NodeSocketio
    }

    /// Whether the target is a chat (it has chats to create).
    fn chat(&self) -> bool {
        self.target != Target::Relay
    }

    /// The report's name of what was driven.
    fn name(&self) -> String {
        match (self.target, self.protocol) {
            (Target::Chat, Protocol::Socketio) => "chat-socketio".to_owned(),
            (Target::NodeSocketio, _) => "node-socketio".to_owned(),
            (target, _) => format!("{target:?}").to_lowercase(),
        }
    }
}

/// [`request`] or its Socket.IO twin (`n` numbers the Socket.IO ack).
async fn setup_request(
    args: &LoadArgs,
    ws: &mut Ws,
    n: u64,
    kind: &str,
    data: serde_json::Value,
) -> Result<serde_json::Value, Error> {
    if args.socketio() {
        sio::request(ws, 1_000_000 + n, kind, data).await
    } else {
        request(ws, &format!("setup-{n}"), kind, data).await
    }
}

/// Content of warm-up messages; readers skip them.
const WARMUP: &str = "warmup";

/// One message per connection, all at once, and a moment for their
/// deliveries to go out: first-use work (a sender's keys in each chat, the
/// store's caches) happens here, not in the measured window.
async fn warm_up(args: &LoadArgs, sockets: &mut [Ws], chat_of: &[String]) -> Result<(), Error> {
    let sends = sockets
        .iter_mut()
        .zip(chat_of)
        .enumerate()
        .map(|(i, (ws, chat))| async move {
            let id = format!("warmup-{i}");
            let data = serde_json::json!({"chat_id": chat, "client_msg_id": id, "content": WARMUP});
            setup_request(args, ws, 2_000_000 + i as u64, "send_message", data).await
        });
    for result in futures::future::join_all(sends).await {
        result?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(())
}

/// Per-connection results, merged at the end.
struct ConnStats {
    ack: Histogram<u64>,
    recv: Histogram<u64>,
    /// Messages received from each sender (by connection index); counted
    /// for every delivery, hence foldhash.
    received: foldhash::HashMap<u32, u64>,
    errors: HashMap<String, u64>,
    acked: u64,
}

pub(crate) fn histogram() -> Result<Histogram<u64>, Error> {
    // Microseconds up to 100 s, 3 significant digits.
    Ok(Histogram::new_with_bounds(1, 100_000_000, 3)?)
}

/// A field's searcher, `"<key>":"`, built once: the readers look for one
/// in every frame they get, and the generator shares the server's cores,
/// so what it spends per frame is taken from the server being measured.
struct Key(Finder<'static>);

impl Key {
    fn new(key: &str) -> Self {
        Self(Finder::new(format!("\"{key}\":\"").as_bytes()).into_owned())
    }
}

static CONTENT: LazyLock<Key> = LazyLock::new(|| Key::new("content"));
static ID: LazyLock<Key> = LazyLock::new(|| Key::new("id"));
static CODE: LazyLock<Key> = LazyLock::new(|| Key::new("code"));

/// Finds `"<key>":"` in a frame and returns the text up to the next quote.
fn field<'a>(frame: &'a str, key: &Key) -> Option<&'a str> {
    let start = key.0.find(frame.as_bytes())? + key.0.needle().len();
    let end = memchr::memchr(b'"', frame.as_bytes().get(start..)?)? + start;
    // Both ends are next to an ASCII quote, so on character boundaries.
    frame.get(start..end)
}

pub(crate) async fn run(args: LoadArgs) -> Result<(), Error> {
    let secret = match &args.secret {
        Some(s) => s.clone(),
        None => server::random_secret()?,
    };
    let server = match args.addr {
        Some(addr) => Server::running(addr)?,
        None => spawn_server(&args, &secret).await?,
    };
    let pid = server.pid();
    let before = pid.map(procstat::sample).unwrap_or_default();
    let n = args.connections.max(1);
    let group = args.group_size.max(2).min(n);

    // Connect, 64 at a time.
    let progress = (!args.quiet && !args.json).then(|| indicatif::ProgressBar::new(n as u64));
    let limit = Arc::new(Semaphore::new(64));
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let (args, secret, limit) = (args.clone(), secret.clone(), limit.clone());
        let addr = server.addr;
        pending.push(tokio::spawn(async move {
            let _permit = limit.acquire().await;
            connect(&args, addr, &secret, i).await
        }));
    }
    let mut sockets = Vec::with_capacity(n);
    for p in pending {
        sockets.push(p.await??);
        if let Some(bar) = &progress {
            bar.inc(1);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }

    if args.idle {
        tokio::time::sleep(Duration::from_secs(args.duration.max(1))).await;
        let after = pid.map(procstat::sample).unwrap_or_default();
        let report = Report {
            target: args.name(),
            connections: n,
            server_rss_mib_before: before.rss as f64 / 1048576.0,
            server_rss_mib_after: after.rss as f64 / 1048576.0,
            idle_bytes_per_connection: Some(after.rss.saturating_sub(before.rss) as f64 / n as f64),
            ..Report::default()
        };
        print_report(&args, &report)?;
        drop(sockets);
        return Ok(());
    }

    // Chats: groups of `group` consecutive users (the first creates it), or
    // direct chats of pairs.
    let groups: Vec<Vec<usize>> = (0..n)
        .step_by(group)
        .map(|s| (s..(s + group).min(n)).collect())
        .collect();
    let mut chat_of = vec![String::new(); n];
    if args.chat() {
        for (g, members) in groups.iter().enumerate() {
            let Some(&creator) = members.first() else {
                continue;
            };
            let others: Vec<String> = members[1..].iter().map(|m| format!("u{m}")).collect();
            let data = if group == 2 && others.len() == 1 {
                setup_request(
                    &args,
                    &mut sockets[creator],
                    g as u64,
                    "create_direct",
                    serde_json::json!({"user_id": others[0]}),
                )
                .await?
            } else {
                setup_request(
                    &args,
                    &mut sockets[creator],
                    g as u64,
                    "create_group",
                    serde_json::json!({"name": format!("g{g}"), "member_ids": others}),
                )
                .await?
            };
            let chat_id = data["chat"]["id"]
                .as_str()
                .ok_or("no chat id in ack")?
                .to_owned();
            for &m in members {
                chat_of[m] = chat_id.clone();
            }
        }
    }
    let group_of: Vec<usize> = (0..n).map(|i| i / group).collect();

    if let (Some(kind), Target::Chat, Protocol::Ws) = (args.reads, args.target, args.protocol) {
        let duration = Duration::from_secs(args.duration.max(1));
        let workload = reads::Workload {
            kind,
            fill: args.fill,
            message_bytes: args.message_bytes,
            duration,
            json: args.json,
        };
        reads::run(workload, sockets, chat_of, pid).await?;
        drop(server);
        return Ok(());
    }

    if args.chat() && !args.no_warmup {
        warm_up(&args, &mut sockets, &chat_of).await?;
    }

    // Run.
    let base = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop_at = base + Duration::from_secs(args.duration);
    let mut readers = Vec::with_capacity(n);
    let mut writers = Vec::with_capacity(n);
    let (stop_readers, reader_stop) = tokio::sync::watch::channel(false);
    let cpu_before = pid.map(procstat::sample).unwrap_or_default();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (sink, stream) = ws.split();
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        let window = Arc::new(Semaphore::new(args.inflight.max(1)));
        let outstanding: Arc<Mutex<std::collections::VecDeque<u64>>> = Arc::default();
        let relay = args.target == Target::Relay;
        readers.push(tokio::spawn(read_loop(
            stream,
            sink.clone(),
            reader_stop.clone(),
            i,
            base,
            relay,
            args.socketio(),
            window.clone(),
            outstanding.clone(),
            delivered.clone(),
        )));
        writers.push(tokio::spawn(write_loop(
            sink,
            i,
            n,
            chat_of[i].clone(),
            args.clone(),
            base,
            stop_at,
            window,
            outstanding,
            sent.clone(),
        )));
    }
    let bar = (!args.quiet && !args.json).then(|| {
        let bar = indicatif::ProgressBar::new(args.duration);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} s  {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    });
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(bar) = &bar {
            bar.set_position(base.elapsed().as_secs().min(args.duration));
            bar.set_message(format!(
                "sent {}  delivered {}",
                sent.load(Ordering::Relaxed),
                delivered.load(Ordering::Relaxed)
            ));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut sent_by = vec![0u64; n];
    let mut sinks = Vec::with_capacity(n);
    for (i, w) in writers.into_iter().enumerate() {
        let (count, sink) = w.await??;
        sent_by[i] = count;
        sinks.push(sink);
    }
    let send_elapsed = base.elapsed();
    // Drain: every member should receive every message of its chat.
    let expected: u64 = (0..n)
        .map(|i| sent_by[i] * groups[group_of[i]].len() as u64)
        .sum();
    // Wait while deliveries still arrive (an overloaded server drains its
    // backlog), at most two minutes.
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut last_progress) = (0, Instant::now());
    while delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            (last, last_progress) = (now, Instant::now());
        } else if last_progress.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let cpu_after = pid.map(procstat::sample).unwrap_or_default();
    let _ = stop_readers.send(true);
    let mut stats = Vec::with_capacity(n);
    for r in readers {
        stats.push(r.await??);
    }
    for sink in sinks {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            sink.lock().await.close().await
        })
        .await;
    }

    let mut ack = histogram()?;
    let mut recv = histogram()?;
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut acked = 0;
    let (mut lost, mut duplicates) = (0u64, 0u64);
    for (m, s) in stats.iter().enumerate() {
        ack.add(&s.ack)?;
        recv.add(&s.recv)?;
        acked += s.acked;
        for (code, count) in &s.errors {
            *errors.entry(code.clone()).or_default() += count;
        }
        for &sender in &groups[group_of[m]] {
            let got = s.received.get(&(sender as u32)).copied().unwrap_or(0);
            // A connection's sends are acked in order, so its first
            // `acked` messages are exactly the acknowledged ones: each must
            // reach every member. Later ones may still be in flight.
            lost += stats[sender].acked.saturating_sub(got);
            duplicates += got.saturating_sub(sent_by[sender]);
        }
    }
    let deliveries = delivered.load(Ordering::Relaxed);
    let secs = send_elapsed.as_secs_f64();
    let cpu = cpu_after.cpu.saturating_sub(cpu_before.cpu).as_secs_f64();
    let report = Report {
        target: args.name(),
        connections: n,
        group_size: group,
        rate: args.rate,
        duration_s: secs,
        sends_acked: acked,
        sends_per_sec: acked as f64 / secs,
        deliveries,
        deliveries_per_sec: deliveries as f64 / secs,
        send_to_ack_ms: Percentiles::of(&ack),
        send_to_receive_ms: Percentiles::of(&recv),
        errors,
        lost,
        unacked: sent_by.iter().sum::<u64>().saturating_sub(acked),
        duplicates,
        server_rss_mib_before: before.rss as f64 / 1048576.0,
        server_rss_mib_after: cpu_after.rss as f64 / 1048576.0,
        idle_bytes_per_connection: None,
        server_cpu_s: cpu,
        server_cpu_s_per_million_deliveries: (deliveries > 0 && pid.is_some())
            .then(|| cpu / deliveries as f64 * 1e6),
    };
    print_report(&args, &report)?;
    drop(server);
    Ok(())
}

/// A connection's writing half, shared by its writer and (for Socket.IO,
/// whose pings the client answers) its reader.
type Sink = Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>;

#[allow(clippy::too_many_arguments)]
async fn write_loop(
    sink: Sink,
    i: usize,
    n: usize,
    chat_id: String,
    args: LoadArgs,
    base: Instant,
    stop_at: Instant,
    window: Arc<Semaphore>,
    outstanding: Arc<Mutex<std::collections::VecDeque<u64>>>,
    sent: Arc<AtomicU64>,
) -> Result<(u64, Sink), Error> {
    let padding = "x".repeat(args.message_bytes.saturating_sub(24));
    // Open loop: connection i sends at rate/n, staggered so that the
    // connections do not all fire in the same millisecond.
    let interval = (args.rate > 0).then(|| Duration::from_secs_f64(n as f64 / args.rate as f64));
    let offset = interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n as f64));
    let mut count = 0u64;
    loop {
        let intended = match interval {
            Some(iv) => {
                let at = base + offset + iv.mul_f64(count as f64);
                if at >= stop_at {
                    break;
                }
                tokio::time::sleep_until(at.into()).await;
                at
            }
            None => {
                if Instant::now() >= stop_at {
                    break;
                }
                match tokio::time::timeout_at(stop_at.into(), window.acquire()).await {
                    Ok(permit) => permit?.forget(),
                    Err(_) => break,
                }
                Instant::now()
            }
        };
        let t = intended.duration_since(base).as_micros() as u64;
        let content = format!("t={t};s={i};{padding}");
        // Written by hand so that "type" comes first (the relay echoes the
        // frame as sent, and readers classify frames by their prefix); no
        // field needs escaping.
        let frame = if args.socketio() {
            sio::command(
                count,
                "send_message",
                &format!(
                    r#"{{"chat_id":"{chat_id}","client_msg_id":"{i}-{count}","content":"{content}"}}"#
                ),
            )
        } else {
            format!(
                r#"{{"type":"send_message","id":"m{count}","data":{{"chat_id":"{chat_id}","client_msg_id":"{i}-{count}","content":"{content}"}}}}"#
            )
        };
        outstanding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(t);
        sink.lock().await.send(Message::Text(frame.into())).await?;
        count += 1;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok((count, sink))
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    mut stream: futures::stream::SplitStream<Ws>,
    sink: Sink,
    mut stop: tokio::sync::watch::Receiver<bool>,
    me: usize,
    base: Instant,
    relay: bool,
    socketio: bool,
    window: Arc<Semaphore>,
    outstanding: Arc<Mutex<std::collections::VecDeque<u64>>>,
    delivered: Arc<AtomicU64>,
) -> Result<ConnStats, Error> {
    let mut stats = ConnStats {
        ack: histogram()?,
        recv: histogram()?,
        received: foldhash::HashMap::default(),
        errors: HashMap::new(),
        acked: 0,
    };
    let on_ack = |stats: &mut ConnStats| {
        let now = base.elapsed().as_micros() as u64;
        if let Some(t) = outstanding
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front()
        {
            let _ = stats.ack.record(now.saturating_sub(t).max(1));
        }
        stats.acked += 1;
        window.add_permits(1);
    };
    loop {
        let msg = tokio::select! {
            msg = stream.next() => msg,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(msg) = msg else { break };
        let Ok(Message::Text(text)) = msg else {
            continue;
        };
        let frame: &str = &text;
        // A Socket.IO packet, told apart by its prefix; anything but a
        // delivery is handled here.
        let incoming = socketio.then(|| sio::classify(frame));
        let error = match incoming {
            Some(sio::Incoming::Ping) => {
                sink.lock().await.send(Message::Text("3".into())).await?;
                continue;
            }
            Some(sio::Incoming::Ack(Ok(()))) => {
                on_ack(&mut stats);
                continue;
            }
            Some(sio::Incoming::Ack(Err(()))) => true,
            Some(sio::Incoming::Other) => continue,
            Some(sio::Incoming::Delivery) | None => false,
        };
        let delivery = if relay {
            frame.starts_with("{\"type\":\"send_message\"")
        } else if socketio {
            !error
        } else {
            frame.starts_with("{\"type\":\"message_received\"")
        };
        if delivery {
            let Some(content) = field(frame, &CONTENT) else {
                continue;
            };
            if content == WARMUP {
                continue;
            }
            let mut parts = content.split(';');
            let t: u64 = parts
                .next()
                .and_then(|p| p.strip_prefix("t="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let sender: u32 = parts
                .next()
                .and_then(|p| p.strip_prefix("s="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(u32::MAX);
            let now = base.elapsed().as_micros() as u64;
            let _ = stats.recv.record(now.saturating_sub(t).max(1));
            *stats.received.entry(sender).or_default() += 1;
            delivered.fetch_add(1, Ordering::Relaxed);
            if relay && sender as usize == me {
                on_ack(&mut stats);
            }
        } else if frame.starts_with("{\"type\":\"ack\"") {
            if field(frame, &ID).is_some_and(|id| id.starts_with('m')) {
                on_ack(&mut stats);
            }
        } else if error || frame.starts_with("{\"type\":\"error\"") {
            let code = field(frame, &CODE).unwrap_or("unknown").to_owned();
            *stats.errors.entry(code).or_default() += 1;
            // An error answers a send too: release its slot.
            window.add_permits(1);
            outstanding
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
        }
    }
    Ok(stats)
}

fn print_report(args: &LoadArgs, r: &Report) -> Result<(), Error> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "target {}: {} connections, group size {}, rate {}",
        r.target,
        r.connections,
        r.group_size,
        if r.rate == 0 {
            "as fast as acks allow".to_owned()
        } else {
            format!("{}/s", r.rate)
        }
    );
    if let Some(b) = r.idle_bytes_per_connection {
        println!(
            "  idle: server RSS {:.1} -> {:.1} MiB, {:.1} KiB per connection",
            r.server_rss_mib_before,
            r.server_rss_mib_after,
            b / 1024.0
        );
        return Ok(());
    }
    println!(
        "  sends acked    {:>10} ({:.0}/s)",
        r.sends_acked, r.sends_per_sec
    );
    println!(
        "  deliveries     {:>10} ({:.0}/s)",
        r.deliveries, r.deliveries_per_sec
    );
    let p = |name: &str, p: &Percentiles| {
        println!(
            "  {name:<14} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            p.p50, p.p90, p.p99, p.p999, p.max
        );
    };
    p("send->ack", &r.send_to_ack_ms);
    p("send->receive", &r.send_to_receive_ms);
    println!(
        "  lost (acked, not received) {}  unacked at end {}  duplicates {}  errors {:?}",
        r.lost, r.unacked, r.duplicates, r.errors
    );
    println!(
        "  server RSS {:.1} -> {:.1} MiB, CPU {:.2} s{}",
        r.server_rss_mib_before,
        r.server_rss_mib_after,
        r.server_cpu_s,
        r.server_cpu_s_per_million_deliveries
            .map(|c| format!(", {c:.2} CPU-s per million deliveries"))
            .unwrap_or_default()
    );
    Ok(())
}

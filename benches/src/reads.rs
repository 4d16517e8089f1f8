//! The read workload of `chat-bench load --reads history|sync`: the read
//! path (every body opened on the way out, with encryption at rest), where
//! the send workload measures the write path.
//!
//! Each chat is first filled with `--fill` messages by its members; then
//! every connection reads in a closed loop for `--duration` seconds: a
//! `history` page of 50, or a first `sync` page (every chat of the user
//! from the start, 100 changes each). Reported: reads per second, latency
//! percentiles, messages returned, and the server's CPU per thousand
//! reads and per million messages returned.

use std::time::{Duration, Instant};

use clap::ValueEnum;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    Error,
    load::{Percentiles, Ws, histogram, request},
    procstat,
};

/// Which read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReadKind {
    /// `history` of a chat, 50 messages.
    History,
    /// `sync` without cursors: one page of every chat from the start.
    Sync,
}

/// What the read workload measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ReadReport {
    read: String,
    connections: usize,
    messages_per_chat: usize,
    duration_s: f64,
    reads: u64,
    reads_per_sec: f64,
    messages_returned: u64,
    latency_ms: Percentiles,
    server_cpu_s: f64,
    server_cpu_ms_per_thousand_reads: Option<f64>,
    server_cpu_s_per_million_messages: Option<f64>,
}

/// The parameters of a read workload.
pub(crate) struct Workload {
    /// Which read.
    pub(crate) kind: ReadKind,
    /// Messages per chat before reading.
    pub(crate) fill: usize,
    /// Bytes of text per message.
    pub(crate) message_bytes: usize,
    /// How long to read.
    pub(crate) duration: Duration,
    /// Print JSON.
    pub(crate) json: bool,
}

/// Fills every chat, then reads; `chat_of[i]` is connection `i`'s chat,
/// `pid` the server's process.
pub(crate) async fn run(
    w: Workload,
    mut sockets: Vec<Ws>,
    chat_of: Vec<String>,
    pid: Option<u32>,
) -> Result<(), Error> {
    let Workload {
        kind,
        fill,
        message_bytes,
        duration,
        json,
    } = w;
    let n = sockets.len();
    // Fill: members take turns, so each chat holds bodies of many senders
    // (one data key per sender).
    let text = "x".repeat(message_bytes.max(1));
    let mut filled = std::collections::HashMap::<String, usize>::new();
    for round in 0.. {
        let mut any = false;
        for (i, ws) in sockets.iter_mut().enumerate() {
            let count = filled.entry(chat_of[i].clone()).or_default();
            if *count >= fill {
                continue;
            }
            *count += 1;
            any = true;
            request(
                ws,
                &format!("fill-{i}-{round}"),
                "send_message",
                serde_json::json!({
                    "chat_id": chat_of[i],
                    "client_msg_id": format!("fill-{i}-{round}"),
                    "content": text,
                }),
            )
            .await?;
        }
        if !any {
            break;
        }
    }

    let cpu_before = pid.map(procstat::sample).unwrap_or_default();
    let base = Instant::now();
    let stop_at = base + duration;
    let mut tasks = Vec::with_capacity(n);
    for (i, ws) in sockets.into_iter().enumerate() {
        let chat = chat_of[i].clone();
        tasks.push(tokio::spawn(read_loop(ws, i, kind, chat, stop_at)));
    }
    let mut latency = histogram()?;
    let (mut reads, mut returned) = (0u64, 0u64);
    for task in tasks {
        let (h, r, m) = task.await??;
        latency.add(&h)?;
        reads += r;
        returned += m;
    }
    let secs = base.elapsed().as_secs_f64();
    let cpu_after = pid.map(procstat::sample).unwrap_or_default();
    let cpu = cpu_after.cpu.saturating_sub(cpu_before.cpu).as_secs_f64();
    let measured = pid.is_some() && reads > 0;
    let report = ReadReport {
        read: format!("{kind:?}").to_lowercase(),
        connections: n,
        messages_per_chat: fill,
        duration_s: secs,
        reads,
        reads_per_sec: reads as f64 / secs,
        messages_returned: returned,
        latency_ms: Percentiles::of(&latency),
        server_cpu_s: cpu,
        server_cpu_ms_per_thousand_reads: measured.then(|| cpu * 1e6 / reads as f64),
        server_cpu_s_per_million_messages: (measured && returned > 0)
            .then(|| cpu * 1e6 / returned as f64),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let l = &report.latency_ms;
        println!(
            "{} reads: {} connections, {} messages per chat\n  reads {:>10} ({:.0}/s), messages returned {}\n  latency p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms\n  server CPU {:.2} s, {} CPU-ms per thousand reads, {} CPU-s per million messages",
            report.read,
            n,
            fill,
            reads,
            report.reads_per_sec,
            returned,
            l.p50,
            l.p99,
            l.max,
            cpu,
            report
                .server_cpu_ms_per_thousand_reads
                .map_or("-".into(), |c| format!("{c:.1}")),
            report
                .server_cpu_s_per_million_messages
                .map_or("-".into(), |c| format!("{c:.2}")),
        );
    }
    Ok(())
}

/// One connection reading until `stop_at`: latency histogram, reads,
/// messages returned.
async fn read_loop(
    mut ws: Ws,
    i: usize,
    kind: ReadKind,
    chat: String,
    stop_at: Instant,
) -> Result<(Histogram<u64>, u64, u64), Error> {
    let mut latency = histogram()?;
    let (mut reads, mut returned) = (0u64, 0u64);
    let data = match kind {
        ReadKind::History => serde_json::json!({"chat_id": chat, "limit": 50}),
        ReadKind::Sync => serde_json::json!({}),
    };
    let command = match kind {
        ReadKind::History => "history",
        ReadKind::Sync => "sync",
    };
    while Instant::now() < stop_at {
        let started = Instant::now();
        let ack = request(&mut ws, &format!("r{i}-{reads}"), command, data.clone()).await?;
        latency.record(started.elapsed().as_micros() as u64)?;
        reads += 1;
        returned += match kind {
            ReadKind::History => ack["messages"].as_array().map_or(0, Vec::len) as u64,
            ReadKind::Sync => ack["chats"].as_array().map_or(0, |chats| {
                chats
                    .iter()
                    .map(|c| c["changes"].as_array().map_or(0, Vec::len))
                    .sum::<usize>()
            }) as u64,
        };
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
    // Drain what the server still sends, so the close completes.
    let _ = tokio::time::timeout(Duration::from_millis(100), ws.next()).await;
    let _ = ws.send(Message::Close(None)).await;
    Ok((latency, reads, returned))
}

//! Run with: cargo run --release -p chat-bench -- <load|relay|store|upload> --help
//!
//! Benchmarks of the chat engine that need more than criterion: a load
//! generator that drives a real `chat-server` (or the bare relay baseline)
//! over WebSockets, the bare tokio-tungstenite broadcast relay itself, and
//! the SQLite store against a raw rusqlite insert loop in the same run, and
//! media uploads (images decoded and re-encoded) against a PDF that is only
//! stored.
//! Every figure is also a ratio to a same-run baseline, so that one noisy
//! number does not mislead. See BENCHMARKS.md.

mod load;
mod procstat;
mod reads;
mod relay;
mod server;
mod sio;
mod store;
mod upload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "chat-bench", about = "Benchmarks of the chat engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive a chat server (or the relay) with WebSocket clients.
    Load(load::LoadArgs),
    /// Serve the bare broadcast relay baseline.
    Relay(relay::RelayArgs),
    /// SQLite store appends against a raw rusqlite insert loop.
    Store(store::StoreArgs),
    /// Media uploads through a chat server: images against a PDF baseline.
    Upload(upload::UploadArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-bench: no runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Load(args) => load::run(args).await,
            Command::Relay(args) => relay::run(args).await,
            Command::Store(args) => store::run(args).await,
            Command::Upload(args) => upload::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Errors of the tool: messages for a person.
pub(crate) type Error = Box<dyn std::error::Error + Send + Sync>;

//! The server under test: a `chat-server` (or the relay) spawned on a
//! throwaway directory and killed on drop, and the tokens to talk to it.
//! Shared by `chat-bench load` and `chat-bench upload`.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use chat_core::UserId;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::Error;

/// The server under test, killed on drop.
#[derive(Debug)]
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server that someone else runs at `addr`.
    pub(crate) fn running(addr: SocketAddr) -> Result<Self, Error> {
        Ok(Self {
            addr,
            child: None,
            _dir: tempfile::tempdir()?,
        })
    }

    /// The spawned server's process id (`None` for [`Server::running`]).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Spawns `cmd`, which works in `dir` and prints
    /// `listening on http://ADDR` once it accepts connections.
    pub(crate) async fn spawn(mut cmd: Command, dir: tempfile::TempDir) -> Result<Self, Error> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Ok::<_, Error>(addr.parse::<SocketAddr>()?);
                }
            }
            Err("the server exited before listening".into())
        })
        .await
        .map_err(|_| "the server did not start within 30 s")??;
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self {
            addr,
            child: Some(child),
            _dir: dir,
        })
    }
}

/// A `chat-server` command on a fresh SQLite file in `dir` (uploads go to
/// the default media directory beside it, `dir/media`; no `--media-dir`, so
/// that builds from before media can be driven too), with `config` as its
/// TOML configuration, HS256 tokens signed with `secret` and a throwaway
/// master key.
pub(crate) fn chat_server(
    bin: Option<&Path>,
    dir: &Path,
    config: &str,
    secret: &str,
) -> Result<Command, Error> {
    let bin = match bin {
        Some(bin) => bin.to_owned(),
        None => std::env::current_exe()?.with_file_name("chat-server"),
    };
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release -p chat-server)",
            bin.display()
        )
        .into());
    }
    let config_file = dir.join("bench.toml");
    std::fs::write(&config_file, config)?;
    let mut c = Command::new(bin);
    c.arg("--bind")
        .arg("127.0.0.1:0")
        .arg("--sqlite")
        .arg(dir.join("bench.db"))
        .arg("--config")
        .arg(&config_file)
        .env("CHAT_JWT_SECRET", secret)
        // A throwaway master key: the benchmark's database is too.
        .env("CHAT_MASTER_KEY", throwaway_master_key()?)
        .env("RUST_LOG", "warn");
    Ok(c)
}

/// A rate limit that never bites, for `[rate_limits]`.
pub(crate) const UNLIMITED: &str = "{ per_second = 10000000, burst = 10000000 }";

/// A random HS256 secret for a spawned server.
pub(crate) fn random_secret() -> Result<String, Error> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A token for `user`, valid for an hour.
pub(crate) fn token(secret: &str, user: &str) -> Result<String, Error> {
    let user = UserId::new(user)?;
    Ok(chat_transport_ws::auth::issue_hs256(
        secret.as_bytes(),
        &user,
        false,
        Duration::from_secs(3600),
    )?)
}

/// A random master key for a server whose database is thrown away after
/// the run.
fn throwaway_master_key() -> Result<String, Error> {
    let key = chat_core::crypto::MasterKey::generate()?;
    Ok(key.to_base64().as_str().to_owned())
}

//! Run with: cargo run -p chat-server -- --dev
//!
//! The standalone chat server: `chat-core` with the SQLite store and the
//! local bus (one node), or PostgreSQL and Redis (many nodes), and the
//! WebSocket/HTTP transport, speaking `docs/protocol.md`.

mod config;
mod mls;
mod push;
mod web;
mod webhook;

use std::{io::Write, net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use chat_bus_redis::{RedisBus, RedisBusConfig};
use chat_core::{
    ChatEngine, MediaStore, ObjectMediaStore, Store, UserId,
    clock::SystemClock,
    crypto::MasterKey,
    keystore::{KeyStore, KeyStoreExt, Keyring},
    store::EncryptedStore,
};
use chat_store_postgres::{PostgresKeyStore, PostgresStore};
use chat_store_sqlite::{SqliteKeyStore, SqliteStore};
use chat_transport_ws::{WsConfig, auth::AuthConfig, auth::issue_hs256};
use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::config::{
    Cli, EraseArgs, MediaBackend, RotateArgs, SealArgs, ServeArgs, Settings, TokenArgs,
};

fn main() -> ExitCode {
    tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("token") => TokenArgs::try_parse_from(args.iter().skip(1))
            .map_err(clap_exit)
            .and_then(token),
        Some("rotate-master-key") => RotateArgs::try_parse_from(args.iter().skip(1))
            .map_err(clap_exit)
            .and_then(rotate_master_key),
        Some("erase-user-keys") => EraseArgs::try_parse_from(args.iter().skip(1))
            .map_err(clap_exit)
            .and_then(erase_user_keys),
        Some("seal-existing") => SealArgs::try_parse_from(args.iter().skip(1))
            .map_err(clap_exit)
            .and_then(seal_existing),
        Some("serve") => ServeArgs::try_parse_from(args.iter().skip(1))
            .map_err(clap_exit)
            .and_then(serve),
        _ => Cli::try_parse_from(&args)
            .map_err(clap_exit)
            .and_then(|cli| serve(cli.serve)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, msg)) => {
            if !msg.is_empty() {
                eprintln!("{msg}");
            }
            ExitCode::from(code)
        }
    }
}

/// Allocations of at least this many bytes get their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 16 * 1024;

/// Keeps glibc from scattering freed handshake buffers through the heap.
///
/// Every WebSocket handshake allocates a 16 KiB HTTP read buffer and frees
/// it once the connection is upgraded, after the connection's long-lived
/// state was allocated around it. glibc reuses such holes only in part, so
/// that 10,000 idle connections held 18.8 KiB of RSS each, of which 8 KiB
/// were in use. Buffers of 16 KiB and more in their own mapping go back to
/// the system when freed: 10 KiB per idle connection (BENCHMARKS.md).
/// `GLIBC_TUNABLES`, when set, is the operator's choice and wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    // SAFETY: mallopt only sets a parameter of glibc's allocator, under the
    // allocator's own lock; it runs first in main, before any other thread
    // exists, and takes no pointers.
    let ok = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if ok != 1 {
        eprintln!("chat-server: could not set the allocator's mmap threshold");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// An exit code and what to print.
struct Failure(u8, String);

fn clap_exit(e: clap::Error) -> Failure {
    let code = if e.use_stderr() { 2 } else { 0 };
    let _ = e.print();
    Failure(code, String::new())
}

fn fail(msg: impl std::fmt::Display) -> Failure {
    Failure(1, format!("chat-server: {msg}"))
}

fn token(args: TokenArgs) -> Result<(), Failure> {
    let secret = std::env::var("CHAT_JWT_SECRET").map_err(|_| {
        Failure(
            2,
            "chat-server: CHAT_JWT_SECRET is not set; `token` signs with it".into(),
        )
    })?;
    let user = UserId::new(args.user).map_err(fail)?;
    let ttl = config::parse_duration(&args.ttl).map_err(fail)?;
    let token = issue_hs256(secret.as_bytes(), &user, args.admin, ttl).map_err(fail)?;
    println!("{token}");
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), Failure> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = Settings::resolve(args).map_err(|e| Failure(2, format!("chat-server: {e}")))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(fail)?;
    runtime.block_on(run(settings))
}

async fn run(settings: Settings) -> Result<(), Failure> {
    let secret = match (&settings.jwt_secret, settings.dev) {
        (Some(secret), _) => secret.clone().into_bytes(),
        // Tokens are verified with a public key; a secret only signs dev tokens.
        (None, false) if settings.jwt_public_key.is_some() => Vec::new(),
        (None, true) => {
            let mut secret = vec![0u8; 32];
            getrandom::fill(&mut secret)
                .map_err(|e| fail(format!("no randomness for a dev secret: {e}")))?;
            tracing::warn!(
                "--dev without CHAT_JWT_SECRET: using a random secret; get tokens from GET /dev/token?user=<id>"
            );
            secret
        }
        (None, false) => {
            return Err(Failure(
                2,
                "chat-server: CHAT_JWT_SECRET is not set; set it, or pass --dev for a throwaway secret".into(),
            ));
        }
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[
            0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
        ])
        .map_err(fail)?
        // Receipts come from devices that may have been offline for hours:
        // the delivery latency's buckets reach a day.
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(
                chat_core::metrics::DELIVERY_LATENCY_SECONDS.to_owned(),
            ),
            &[
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0,
            ],
        )
        .map_err(fail)?
        .install_recorder()
        .map_err(fail)?;
    // Histograms keep every sample until upkeep folds them into buckets; the
    // recorder installed this way leaves upkeep to us. Without it, a server
    // nobody scrapes would keep one sample per message forever.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });

    let store = open_store(&settings).await?;
    let keyring = open_keyring(&settings).await?;
    let media = open_media(&settings)?;
    let mut builder = ChatEngine::builder(store)
        .encrypt_at_rest(keyring)
        .media(media, settings.media_config.clone())
        .mls(Arc::new(mls::OpenMlsDelivery))
        .config(settings.engine.clone());
    for hook in &settings.hooks {
        builder = builder.hook(Arc::new(hook.clone()));
    }
    if let Some(crisis) = &settings.crisis {
        builder = builder.crisis(crisis.clone());
    }
    let push = match &settings.push {
        Some(config) => {
            let notifier = push::WebhookNotifier::start(config).map_err(fail)?;
            builder = builder.notifier(Arc::new(notifier.clone()));
            tracing::info!(
                host = %config.webhook.host(),
                batch_ms = config.batch.as_millis() as u64,
                preview_chars = settings.engine.push_preview_chars,
                "push notifications go to the webhook"
            );
            Some(notifier)
        }
        None => None,
    };
    let mut redis = None;
    if let Some(url) = &settings.redis {
        let mut config = RedisBusConfig::default();
        config.presence_ttl = settings.presence_ttl;
        if let Some(prefix) = &settings.redis_key_prefix {
            config.key_prefix = prefix.clone();
        }
        let bus = Arc::new(
            RedisBus::connect(url, config)
                .await
                .map_err(|e| fail(format!("cannot set up the Redis bus: {e}")))?,
        );
        builder = builder.bus(bus.clone());
        redis = Some(bus);
    }
    let engine = builder.build().await.map_err(fail)?;

    let mut auth = AuthConfig::hs256(secret.clone());
    if let Some(key) = settings.jwt_public_key.clone() {
        auth.key = key;
    }
    auth.audience = settings.jwt_audience.clone();
    auth.issuer = settings.jwt_issuer.clone();
    let mut ws = WsConfig::new(auth);
    ws.allowed_origins = settings.allowed_origins.clone();
    ws.rate_limits = settings.rate_limits;
    ws.max_connections = settings.max_connections;
    ws.outgoing_queue = settings.outgoing_queue;
    ws.ping_interval = settings.ping_interval.unwrap_or(ws.ping_interval);
    ws.idle_timeout = settings.idle_timeout.unwrap_or(ws.idle_timeout);
    ws.header_read_timeout = settings
        .header_read_timeout
        .unwrap_or(ws.header_read_timeout);
    ws.dev_token_secret =
        (settings.dev && settings.jwt_public_key.is_none()).then(|| secret.clone());
    ws.metrics = Some(Arc::new(move || metrics.render()));

    // Content an older version wrote in plaintext is sealed in the
    // background, in small batches between the sends; a restart resumes.
    let sealing = engine.clone();
    tokio::spawn(async move {
        if let Err(e) = sealing.seal_existing_content(SEAL_BATCH, false).await {
            tracing::error!(error = %e, "sealing existing content stopped; the next start resumes it");
        }
    });

    // Uploads never attached to a message go after their time to live.
    let sweeping = engine.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(MEDIA_SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            if let Err(e) = sweeping.sweep_media().await {
                tracing::warn!(error = %e, "sweeping abandoned uploads failed; trying again later");
            }
        }
    });

    // Messages older than their chat's retention go for everyone. Each call
    // does bounded work; while it finds some, the next follows shortly, so
    // a backlog (a retention just shortened) clears without holding up
    // sends.
    let retaining = engine.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(RETENTION_SWEEP_INTERVAL);
        loop {
            tick.tick().await;
            loop {
                match retaining.sweep_retention().await {
                    Ok(0) => break,
                    Ok(_) => tokio::time::sleep(RETENTION_SWEEP_PAUSE).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "sweeping expired messages failed; trying again later");
                        break;
                    }
                }
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(settings.bind)
        .await
        .map_err(|e| fail(format!("cannot listen on {}: {e}", settings.bind)))?;
    let addr: SocketAddr = listener.local_addr().map_err(fail)?;
    let store_name = match &settings.postgres {
        Some(_) => "postgres".to_owned(),
        None => format!("sqlite:{}", settings.sqlite.display()),
    };
    tracing::info!(%addr, store = %store_name, redis = settings.redis.is_some(), dev = settings.dev, "chat server ready");
    // The one line scripts wait for.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on http://{addr}");
    let _ = stdout.flush();

    let served = chat_transport_ws::serve_with(
        listener,
        engine.clone(),
        ws,
        web::routes(),
        shutdown_signal(),
    )
    .await;
    // The engine is ours, not the transport's: drain its write lanes (every
    // acknowledged change is committed) even if serving failed.
    engine.shutdown().await;
    tracing::info!("engine stopped");
    if let Some(push) = push {
        push.shutdown(PUSH_DRAIN).await;
    }
    served.map_err(fail)?;
    if let Some(bus) = redis {
        // Leave the cluster now rather than when the presence TTL expires.
        bus.shutdown().await;
    }
    // Give the store's writer a moment to finish its last commit on drop.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

/// Rows per batch when sealing content written before encryption at rest.
const SEAL_BATCH: usize = 500;

/// How often abandoned uploads are looked for.
const MEDIA_SWEEP_INTERVAL: Duration = Duration::from_secs(600);

/// How often messages older than their chat's retention are looked for
/// (PROTOCOL.md 5.2: at least every minute).
const RETENTION_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// The pause between two calls of one retention sweep that finds work.
const RETENTION_SWEEP_PAUSE: Duration = Duration::from_millis(200);

/// How long a stopping server keeps trying to hand its pending push
/// notifications to the webhook.
const PUSH_DRAIN: Duration = Duration::from_secs(5);

/// Where the bytes of uploads go.
fn open_media(settings: &Settings) -> Result<Arc<dyn MediaStore>, Failure> {
    match &settings.media {
        MediaBackend::Local(dir) => {
            let store = ObjectMediaStore::local(dir)
                .map_err(|e| fail(format!("cannot use media dir {}: {e}", dir.display())))?;
            Ok(Arc::new(store))
        }
        #[cfg(feature = "s3")]
        MediaBackend::S3(s3) => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_allow_http(s3.allow_http);
            if let Some(region) = &s3.region {
                builder = builder.with_region(region);
            }
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            let store = builder
                .build()
                .map_err(|e| fail(format!("cannot use S3 bucket {}: {e}", s3.bucket)))?;
            Ok(Arc::new(ObjectMediaStore::new(Arc::new(store))))
        }
        #[cfg(not(feature = "s3"))]
        MediaBackend::S3(_) => Err(fail(
            "media.store = \"s3\" needs chat-server built with `--features s3`",
        )),
    }
}

/// The configured message store, migrated.
async fn open_store(settings: &Settings) -> Result<Arc<dyn Store>, Failure> {
    match &settings.postgres {
        Some(url) => {
            let store = PostgresStore::connect(url)
                .await
                .map_err(|e| fail(format!("cannot connect to PostgreSQL: {e}")))?;
            store
                .migrate()
                .await
                .map_err(|e| fail(format!("cannot migrate PostgreSQL: {e}")))?;
            Ok(Arc::new(store))
        }
        None => {
            let sqlite = settings.sqlite.clone();
            let sqlite_config = settings.sqlite_config();
            let store =
                tokio::task::spawn_blocking(move || SqliteStore::open_with(&sqlite, sqlite_config))
                    .await
                    .map_err(fail)?
                    .map_err(|e| {
                        fail(format!(
                            "cannot open SQLite database {}: {e}",
                            settings.sqlite.display()
                        ))
                    })?;
            Ok(Arc::new(store))
        }
    }
}

/// The keyring of encryption at rest, under the configured master key and
/// key store. Refuses to start without a master key (outside `--dev`) or
/// with one that does not open the key store, changing nothing.
async fn open_keyring(settings: &Settings) -> Result<Arc<Keyring>, Failure> {
    let master = master_key(settings)?;
    let (keys, place) = open_key_store(settings).await?;
    let keyring = Keyring::new(master, keys, Arc::new(SystemClock), settings.keyring)
        .await
        .map_err(|e| {
            Failure(
                2,
                format!(
                    "chat-server: the master key does not open {place} ({e}); nothing was \
                     changed. Start with the key this store was created with."
                ),
            )
        })?;
    tracing::info!(key_store = %place, "message content is encrypted at rest");
    Ok(Arc::new(keyring))
}

/// Logging for the maintenance commands.
fn init_command_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// A runtime for the maintenance commands.
fn command_runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(fail)
}

/// `chat-server erase-user-keys <user>`: crypto-shredding from the command
/// line (for an account deleted in the host application): destroys the
/// user's key in the key store. Everything they sent reads as erased, in
/// the database and in every copy of it; running servers stop reading it
/// within a minute (they recheck cached keys).
fn erase_user_keys(args: EraseArgs) -> Result<(), Failure> {
    init_command_logging();
    let user = UserId::new(args.user).map_err(|e| Failure(2, format!("chat-server: {e}")))?;
    let settings =
        Settings::resolve(args.serve).map_err(|e| Failure(2, format!("chat-server: {e}")))?;
    command_runtime()?.block_on(async {
        let keyring = open_keyring(&settings).await?;
        let existed = keyring
            .erase_user(&user)
            .await
            .map_err(|e| fail(format!("cannot destroy the key of {user}: {e}")))?;
        let mut stdout = std::io::stdout();
        let _ = if existed {
            writeln!(
                stdout,
                "destroyed the key of {user}: what they sent now reads as erased, here and in \
                 every backup of the message store; running servers follow within a minute"
            )
        } else {
            writeln!(stdout, "{user} had no key: nothing they sent is stored")
        };
        Ok(())
    })
}

/// `chat-server seal-existing [--from-start]`: seals content written in
/// plaintext before encryption at rest, as every server does in the
/// background at start; `--from-start` scans everything again (after an
/// older server wrote to the database). Safe while servers run.
fn seal_existing(args: SealArgs) -> Result<(), Failure> {
    init_command_logging();
    let settings =
        Settings::resolve(args.serve).map_err(|e| Failure(2, format!("chat-server: {e}")))?;
    command_runtime()?.block_on(async {
        let store = open_store(&settings).await?;
        let keyring = open_keyring(&settings).await?;
        let sealed = EncryptedStore::new(store, keyring)
            .seal_existing(SEAL_BATCH, args.from_start)
            .await
            .map_err(|e| fail(format!("sealing stopped (run again to resume): {e}")))?;
        let mut stdout = std::io::stdout();
        let _ = if sealed.already_done {
            writeln!(
                stdout,
                "nothing to do: existing content was sealed already (--from-start checks again)"
            )
        } else {
            writeln!(
                stdout,
                "sealed {} of {} stored texts; the rest were sealed already",
                sealed.sealed, sealed.scanned
            )
        };
        Ok(())
    })
}

/// The configured key store, and how to name it in messages.
async fn open_key_store(settings: &Settings) -> Result<(Arc<dyn KeyStore>, String), Failure> {
    match settings
        .key_store_url
        .as_ref()
        .or(settings.postgres.as_ref())
    {
        Some(url) => {
            let keys = PostgresKeyStore::connect(url)
                .await
                .map_err(|e| fail(format!("cannot open the PostgreSQL key store: {e}")))?;
            Ok((Arc::new(keys), "the PostgreSQL key store".to_owned()))
        }
        None => {
            let path = &settings.key_store_path;
            let keys = SqliteKeyStore::open(path)
                .await
                .map_err(|e| fail(format!("cannot open the key store {}: {e}", path.display())))?;
            Ok((Arc::new(keys), format!("the key store {}", path.display())))
        }
    }
}

/// `chat-server rotate-master-key`: re-wraps every user key under the new
/// master key; message rows and data keys are not touched. Resumable: an
/// interrupted run is finished by running it again with the same keys.
fn rotate_master_key(args: RotateArgs) -> Result<(), Failure> {
    init_command_logging();
    let settings =
        Settings::resolve(args.serve).map_err(|e| Failure(2, format!("chat-server: {e}")))?;
    let text = std::fs::read_to_string(&args.new_key_file).map_err(|e| {
        Failure(
            2,
            format!(
                "chat-server: cannot read the new master key file {}: {e}",
                args.new_key_file.display()
            ),
        )
    })?;
    let new = MasterKey::from_base64(&text).map_err(|e| {
        Failure(
            2,
            format!("chat-server: the new master key is not valid: {e}"),
        )
    })?;
    let old = master_key(&settings)?;
    command_runtime()?.block_on(async {
        let (keys, place) = open_key_store(&settings).await?;
        // Refuses a current key that does not open the store, changing
        // nothing, before anything is re-wrapped.
        keys.verify_master_key(&old).await.or_else(|e| {
            // An interrupted rotation already moved the check to the new
            // key: finish it.
            keys_verified_by(&new, &e)
        })
        .map_err(|e| {
            Failure(2, format!("chat-server: the current master key does not open {place} ({e})"))
        })?;
        let rotation = keys
            .rotate_master_key(&old, &new, 500)
            .await
            .map_err(|e| fail(format!("rotation of {place} failed: {e}")))?;
        let mut stdout = std::io::stdout();
        let _ = writeln!(
            stdout,
            "re-wrapped {} user keys ({} already under the new key, {} deleted meanwhile) in {place}",
            rotation.rewrapped, rotation.already_rotated, rotation.vanished
        );
        if !rotation.unreadable.is_empty() {
            return Err(Failure(
                1,
                format!(
                    "chat-server: {} user keys could not be re-wrapped (not under the current \
                     key); they still need it",
                    rotation.unreadable.len()
                ),
            ));
        }
        let _ = writeln!(
            stdout,
            "start the servers with the new key now: the old one no longer opens {place}"
        );
        Ok(())
    })
}

/// Whether `error` (from checking the current key) is only that the check
/// already moved to `new`: an interrupted rotation, which running again
/// finishes.
fn keys_verified_by(new: &MasterKey, error: &chat_core::Error) -> chat_core::Result<()> {
    match std::error::Error::source(error)
        .and_then(|s| s.downcast_ref::<chat_core::crypto::CryptoError>())
    {
        Some(chat_core::crypto::CryptoError::KeyMismatch { found, .. }) if *found == new.id() => {
            Ok(())
        }
        _ => Err(chat_core::Error::backend(error.to_string())),
    }
}

/// The master key: `CHAT_MASTER_KEY`, else the key file; in `--dev`
/// without either, one kept in a file beside the database (made on first
/// start), so that a development server reads its own messages after a
/// restart.
fn master_key(settings: &Settings) -> Result<MasterKey, Failure> {
    let invalid = |from: &str, e: &dyn std::fmt::Display| {
        Failure(
            2,
            format!("chat-server: the master key in {from} is not valid: {e}"),
        )
    };
    if let Some(text) = &settings.master_key {
        return MasterKey::from_base64(text).map_err(|e| invalid("CHAT_MASTER_KEY", &e));
    }
    if let Some(path) = &settings.master_key_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Failure(
                2,
                format!(
                    "chat-server: cannot read the master key file {}: {e}",
                    path.display()
                ),
            )
        })?;
        return MasterKey::from_base64(&text).map_err(|e| invalid(&path.display().to_string(), &e));
    }
    if !settings.dev {
        return Err(Failure(
            2,
            "chat-server: no master key: set CHAT_MASTER_KEY (32 random bytes, base64, e.g. \
             `openssl rand -base64 32`) or master_key_file, or pass --dev"
                .into(),
        ));
    }
    let mut path = settings.sqlite.clone().into_os_string();
    path.push(".dev-master-key");
    let path = std::path::PathBuf::from(path);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return MasterKey::from_base64(&text).map_err(|e| invalid(&path.display().to_string(), &e));
    }
    let key = MasterKey::generate().map_err(fail)?;
    write_private(&path, key.to_base64().as_bytes()).map_err(|e| {
        fail(format!(
            "cannot write the dev master key {}: {e}",
            path.display()
        ))
    })?;
    tracing::warn!(
        path = %path.display(),
        "--dev without CHAT_MASTER_KEY: made up a master key and kept it beside the database; \
         never use this outside development"
    );
    Ok(key)
}

/// Writes a new file readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

//! Command line, environment and the optional TOML file, merged into
//! [`Settings`]. Precedence: flag, then its environment twin, then the
//! file, then the default.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use chat_core::{
    EngineConfig, UserId,
    care::{CrisisConfig, FilterAction, SupportResource, WordFilter},
    engine::MediaConfig,
    keystore::KeyringConfig,
};
use chat_store_sqlite::{SqliteConfig, Synchronous};
use chat_transport_ws::{
    auth::JwtKey,
    limits::{ByteRate, Rate, RateLimits},
};
use clap::Parser;
use serde::Deserialize;

use crate::{
    push::PushConfig,
    webhook::{Retry, Secret, WebhookConfig},
};

/// `chat-server [serve] [options]`
#[derive(Debug, Parser)]
#[command(
    name = "chat-server",
    version,
    about = "The chat engine's standalone server"
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// Options of `serve` (the default command).
#[derive(Debug, Parser)]
#[command(name = "serve")]
pub(crate) struct ServeArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "CHAT_BIND")]
    bind: Option<SocketAddr>,
    /// SQLite database file (the default store).
    #[arg(long, env = "CHAT_SQLITE", conflicts_with = "postgres")]
    sqlite: Option<PathBuf>,
    /// PostgreSQL URL (many nodes).
    #[arg(long, env = "CHAT_POSTGRES_URL")]
    postgres: Option<String>,
    /// Redis URL (fan-out between nodes).
    #[arg(long, env = "CHAT_REDIS_URL")]
    redis: Option<String>,
    /// Where uploads are kept.
    #[arg(long, env = "CHAT_MEDIA_DIR")]
    media_dir: Option<PathBuf>,
    /// TOML file with further settings.
    #[arg(long, env = "CHAT_CONFIG")]
    config: Option<PathBuf>,
    /// Browser origins allowed to connect, comma-separated (`*` for all).
    #[arg(long, env = "CHAT_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    /// The master key of encryption at rest, in a file (32 bytes,
    /// base64); `CHAT_MASTER_KEY` holds the key itself instead.
    #[arg(long, env = "CHAT_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// The key store's SQLite file (default: the database's path with
    /// `.keys` appended). Back it up apart from the database.
    #[arg(long, env = "CHAT_KEY_STORE")]
    key_store: Option<PathBuf>,
    /// Development mode: a random JWT secret if none is set, a master key
    /// kept beside the database if none is set, and
    /// `GET /dev/token?user=<id>`.
    #[arg(long)]
    dev: bool,
}

/// `chat-server rotate-master-key --new-key-file F [serve options]`
#[derive(Debug, Parser)]
#[command(
    name = "rotate-master-key",
    about = "Re-wraps every user key of the key store under a new master key (stop the servers first)"
)]
pub(crate) struct RotateArgs {
    /// The new master key (32 bytes, base64). The current one comes from
    /// CHAT_MASTER_KEY or master_key_file, as for `serve`.
    #[arg(long)]
    pub(crate) new_key_file: PathBuf,
    /// Where the key store is: the same options as `serve`.
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `chat-server erase-user-keys <user> [serve options]`
#[derive(Debug, Parser)]
#[command(
    name = "erase-user-keys",
    about = "Destroys a user's key in the key store: everything they sent reads as erased, in every copy of the database"
)]
pub(crate) struct EraseArgs {
    /// The user id.
    pub(crate) user: String,
    /// Where the key store is: the same options as `serve`.
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `chat-server seal-existing [--from-start] [serve options]`
#[derive(Debug, Parser)]
#[command(
    name = "seal-existing",
    about = "Encrypts message content written before encryption at rest (servers also do it at start)"
)]
pub(crate) struct SealArgs {
    /// Scan every row again, even if an earlier run finished.
    #[arg(long)]
    pub(crate) from_start: bool,
    /// Where the database and key store are: the same options as `serve`.
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
}

/// `chat-server token <user> [--admin] [--ttl 24h]`
#[derive(Debug, Parser)]
#[command(name = "token", about = "Prints a token signed with CHAT_JWT_SECRET")]
pub(crate) struct TokenArgs {
    /// The user id (the token's `sub`).
    pub(crate) user: String,
    /// Grant the moderation API.
    #[arg(long)]
    pub(crate) admin: bool,
    /// Lifetime: `90s`, `30m`, `24h`, `7d`.
    #[arg(long, default_value = "24h")]
    pub(crate) ttl: String,
}

/// The TOML file. Every field is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<SocketAddr>,
    sqlite: Option<PathBuf>,
    postgres: Option<String>,
    redis: Option<String>,
    media_dir: Option<PathBuf>,
    allowed_origins: Option<Vec<String>>,
    jwt_audience: Option<String>,
    jwt_issuer: Option<String>,
    /// `HS256` (default, secret from CHAT_JWT_SECRET), `RS256` or `EdDSA`.
    jwt_algorithm: Option<String>,
    /// PEM public key for RS256 / EdDSA.
    jwt_public_key_file: Option<PathBuf>,
    /// File holding the master key (32 bytes, base64).
    master_key_file: Option<PathBuf>,
    /// The key store's SQLite file.
    key_store_path: Option<PathBuf>,
    /// The key store's PostgreSQL database (with PostgreSQL; default: the
    /// message database, in its own schema `chat_keys`).
    key_store_url: Option<String>,
    /// Messages a sender seals under one data key in a chat before the
    /// next key (default 10,000).
    key_epoch_messages: Option<u64>,
    /// How long one data key seals (`7d` by default; `12h`, `30d`, ...).
    key_epoch_max_age: Option<String>,
    /// Seconds a node trusts a cached user key before asking the key store
    /// again: the longest an erasure elsewhere takes to reach it (60).
    key_recheck_secs: Option<u64>,
    /// `full` (default), `normal` or `off`.
    sqlite_synchronous: Option<String>,
    max_connections: Option<usize>,
    outgoing_queue: Option<usize>,
    /// With Redis: a dead node's users go offline within this many seconds.
    presence_ttl_secs: Option<u64>,
    /// Seconds between the server's pings on an idle WebSocket (default 25).
    ping_interval_secs: Option<u64>,
    /// A WebSocket that sends nothing, not even a pong, for this many
    /// seconds is closed with 1001 (default 75).
    idle_timeout_secs: Option<u64>,
    /// An HTTP client that has not sent a request's whole header section
    /// within this many seconds is disconnected (default 10).
    header_read_timeout_secs: Option<u64>,
    /// With Redis: the prefix of the bus's keys (several clusters on one Redis).
    redis_key_prefix: Option<String>,
    rate_limits: Option<FileRateLimits>,
    limits: Option<FileLimits>,
    media: Option<FileMedia>,
    notifications: Option<FileNotifications>,
    crisis: Option<FileCrisis>,
    /// Message hooks, run in this order before a message is stored.
    hooks: Option<Vec<FileHook>>,
}

/// `[crisis]`: crisis escalation (PROTOCOL.md 5.3).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCrisis {
    phrases: Vec<String>,
    #[serde(default)]
    responders: Vec<String>,
    #[serde(default)]
    resources: Vec<SupportResource>,
}

/// `[[hooks]]`: one message hook.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
enum FileHook {
    /// Rejects or flags messages with one of `words`.
    WordFilter {
        words: Vec<String>,
        action: FilterAction,
        /// What the sender is told (reject) or the report says (flag).
        reason: Option<String>,
    },
}

/// `[media]`: limits of uploads and where their bytes go. Every key is
/// optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMedia {
    image_max_bytes: Option<u64>,
    image_max_megapixels: Option<u64>,
    voice_max_bytes: Option<u64>,
    voice_max_seconds: Option<u64>,
    file_max_bytes: Option<u64>,
    /// Uploads decoded or timed at once (default: the number of CPUs).
    max_processing: Option<usize>,
    /// Uploads never attached to a message are removed after this long
    /// (`24h` by default).
    unattached_ttl: Option<String>,
    /// Where uploads are spooled while they arrive (default: the system's
    /// temporary directory).
    spool_dir: Option<PathBuf>,
    /// `local` (default: files under `media_dir`) or `s3`.
    store: Option<String>,
    s3: Option<S3Config>,
}

/// `[media.s3]`: an S3-compatible bucket (needs a build with the `s3`
/// feature). Credentials come from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...), never the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub(crate) struct S3Config {
    pub(crate) bucket: String,
    pub(crate) region: Option<String>,
    /// For S3-compatible services (MinIO, R2, ...).
    pub(crate) endpoint: Option<String>,
    /// Allow `http://` endpoints (a local MinIO).
    #[serde(default)]
    pub(crate) allow_http: bool,
}

/// Where the bytes of uploads go.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "s3"), allow(dead_code))]
pub(crate) enum MediaBackend {
    Local(PathBuf),
    S3(S3Config),
}

/// `[notifications]`: push by webhook (PROTOCOL.md 5.4). Without
/// `webhook_url`, nothing is pushed.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNotifications {
    /// `http://` or `https://`.
    webhook_url: Option<String>,
    /// Signs every POST; required with `webhook_url`. `CHAT_WEBHOOK_SECRET`
    /// wins over it.
    secret: Option<Secret>,
    /// One POST per user per window of this many milliseconds (3000).
    batch_ms: Option<u64>,
    /// Characters of a text message's start in the push (0: none).
    preview_chars: Option<usize>,
    /// POSTs waiting (10,000); the oldest goes when full.
    queue_capacity: Option<usize>,
    /// Chat entries waiting in open windows across users (100,000).
    max_pending: Option<usize>,
    /// Seconds to connect to the webhook (5).
    connect_timeout_secs: Option<u64>,
    /// Seconds for a whole POST and its answer (10).
    request_timeout_secs: Option<u64>,
}

/// Most characters of a push preview: a push shows a line or two, and
/// every pending notification holds its preview until it is sent.
const MAX_PREVIEW_CHARS: usize = 1000;

/// `[notifications]` (and `CHAT_WEBHOOK_SECRET`) resolved; `None` without
/// a webhook. Sets the engine's preview length.
fn push_settings(
    file: Option<&FileNotifications>,
    env_secret: Option<String>,
    engine: &mut EngineConfig,
) -> Result<Option<PushConfig>, String> {
    let Some(file) = file else {
        return Ok(None);
    };
    let Some(url) = file.webhook_url.as_deref().filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    // The URL is not echoed: its query may hold a token.
    let url = reqwest::Url::parse(url.trim())
        .map_err(|e| format!("notifications.webhook_url is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "notifications.webhook_url must be an http:// or https:// URL, not {}:",
            url.scheme()
        ));
    }
    let secret = env_secret
        .map(Secret::new)
        .or_else(|| file.secret.clone())
        .filter(|s| !s.is_empty())
        .ok_or(
            "notifications.secret (or CHAT_WEBHOOK_SECRET) is required with webhook_url: \
             it signs every POST",
        )?;
    let preview_chars = file.preview_chars.unwrap_or(0);
    if preview_chars > MAX_PREVIEW_CHARS {
        return Err(format!(
            "notifications.preview_chars must be at most {MAX_PREVIEW_CHARS}"
        ));
    }
    let at_least_one = |name: &str, v: Option<usize>, default: usize| match v {
        Some(0) => Err(format!("notifications.{name} must be more than zero")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    engine.push_preview_chars = preview_chars;
    Ok(Some(PushConfig {
        webhook: WebhookConfig {
            url,
            secret,
            connect_timeout: secs(file.connect_timeout_secs).unwrap_or(Duration::from_secs(5)),
            request_timeout: secs(file.request_timeout_secs).unwrap_or(Duration::from_secs(10)),
            queue_capacity: at_least_one("queue_capacity", file.queue_capacity, 10_000)?,
            retry: Retry::default(),
        },
        batch: Duration::from_millis(file.batch_ms.unwrap_or(3000)),
        max_pending: at_least_one("max_pending", file.max_pending, 100_000)?,
    }))
}

/// `[rate_limits]`: every class, and each key of a class, is optional; what
/// is left out keeps its default (`RateLimits::default()`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimits {
    write: Option<FileRate>,
    typing: Option<FileRate>,
    other: Option<FileRate>,
    /// Opening a WebSocket connection, per user.
    connect: Option<FileRate>,
    /// Bytes uploaded, per user.
    upload: Option<FileByteRate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileByteRate {
    per_minute_bytes: Option<u64>,
    burst_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRate {
    per_second: Option<u32>,
    burst: Option<u32>,
}

impl FileRate {
    fn over(rate: Option<&Self>, default: Rate) -> Rate {
        let Some(rate) = rate else {
            return default;
        };
        Rate {
            per_second: rate.per_second.unwrap_or(default.per_second),
            burst: rate.burst.unwrap_or(default.burst),
        }
    }
}

impl FileRateLimits {
    /// The file's budgets over the defaults.
    fn resolve(file: Option<&Self>) -> RateLimits {
        let defaults = RateLimits::default();
        let Some(file) = file else {
            return defaults;
        };
        RateLimits {
            write: FileRate::over(file.write.as_ref(), defaults.write),
            typing: FileRate::over(file.typing.as_ref(), defaults.typing),
            other: FileRate::over(file.other.as_ref(), defaults.other),
            connect: FileRate::over(file.connect.as_ref(), defaults.connect),
            upload: match &file.upload {
                None => defaults.upload,
                Some(upload) => ByteRate {
                    per_minute: upload
                        .per_minute_bytes
                        .unwrap_or(defaults.upload.per_minute),
                    burst: upload.burst_bytes.unwrap_or(defaults.upload.burst),
                },
            },
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_text_chars: Option<usize>,
    max_group_members: Option<usize>,
    max_groups_per_user: Option<usize>,
    max_connections_per_user: Option<usize>,
    max_open_chats: Option<usize>,
    write_lanes: Option<usize>,
    chat_cache: Option<usize>,
}

/// Everything `serve` needs, resolved.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) bind: SocketAddr,
    pub(crate) sqlite: PathBuf,
    pub(crate) postgres: Option<String>,
    pub(crate) redis: Option<String>,
    pub(crate) media: MediaBackend,
    pub(crate) media_config: MediaConfig,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) dev: bool,
    pub(crate) jwt_secret: Option<String>,
    /// `CHAT_MASTER_KEY`: the master key itself (base64).
    pub(crate) master_key: Option<String>,
    pub(crate) master_key_file: Option<PathBuf>,
    pub(crate) key_store_path: PathBuf,
    pub(crate) key_store_url: Option<String>,
    pub(crate) keyring: KeyringConfig,
    pub(crate) jwt_audience: Option<String>,
    pub(crate) jwt_issuer: Option<String>,
    /// A public key verifies tokens instead of the HS256 secret.
    pub(crate) jwt_public_key: Option<JwtKey>,
    pub(crate) synchronous: Synchronous,
    pub(crate) max_connections: usize,
    pub(crate) outgoing_queue: usize,
    pub(crate) presence_ttl: Duration,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) header_read_timeout: Option<Duration>,
    pub(crate) redis_key_prefix: Option<String>,
    pub(crate) rate_limits: RateLimits,
    pub(crate) engine: EngineConfig,
    pub(crate) crisis: Option<CrisisConfig>,
    pub(crate) hooks: Vec<WordFilter>,
    /// Push by webhook; `None`: no push.
    pub(crate) push: Option<PushConfig>,
}

impl Settings {
    pub(crate) fn resolve(args: ServeArgs) -> Result<Self, String> {
        let file: FileConfig = match &args.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                toml::from_str(&text)
                    .map_err(|e| format!("invalid config {}: {e}", path.display()))?
            }
        };
        let synchronous = match file.sqlite_synchronous.as_deref() {
            None | Some("full") => Synchronous::Full,
            Some("normal") => Synchronous::Normal,
            Some("off") => Synchronous::Off,
            Some(other) => {
                return Err(format!(
                    "sqlite_synchronous must be full, normal or off, not {other:?}"
                ));
            }
        };
        let jwt_public_key = match (file.jwt_algorithm.as_deref(), &file.jwt_public_key_file) {
            (None | Some("HS256"), None) => None,
            (None | Some("HS256"), Some(_)) => {
                return Err(
                    "jwt_public_key_file needs jwt_algorithm = \"RS256\" or \"EdDSA\"".into(),
                );
            }
            (Some(alg @ ("RS256" | "EdDSA")), Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                Some(if alg == "RS256" {
                    JwtKey::Rs256Pem(pem)
                } else {
                    JwtKey::EdDsaPem(pem)
                })
            }
            (Some("RS256" | "EdDSA"), None) => {
                return Err("jwt_algorithm RS256/EdDSA needs jwt_public_key_file".into());
            }
            (Some(other), _) => {
                return Err(format!(
                    "jwt_algorithm must be HS256, RS256 or EdDSA, not {other:?}"
                ));
            }
        };
        let mut engine = EngineConfig::default();
        if let Some(l) = &file.limits {
            engine.max_text_chars = l.max_text_chars.unwrap_or(engine.max_text_chars);
            engine.max_group_members = l.max_group_members.unwrap_or(engine.max_group_members);
            engine.max_groups_per_user =
                l.max_groups_per_user.unwrap_or(engine.max_groups_per_user);
            engine.max_connections_per_user = l
                .max_connections_per_user
                .unwrap_or(engine.max_connections_per_user);
            engine.max_open_chats = l.max_open_chats.unwrap_or(engine.max_open_chats);
            engine.write_lanes = l.write_lanes.unwrap_or(engine.write_lanes);
            engine.chat_cache = l.chat_cache.unwrap_or(engine.chat_cache);
        }
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let sqlite = args
            .sqlite
            .or(file.sqlite)
            .unwrap_or_else(|| PathBuf::from("./chat.db"));
        let key_store_path = args.key_store.or(file.key_store_path).unwrap_or_else(|| {
            let mut path = sqlite.clone().into_os_string();
            path.push(".keys");
            PathBuf::from(path)
        });
        let mut keyring = KeyringConfig::default();
        if let Some(n) = file.key_epoch_messages {
            keyring.epochs.max_messages = n.max(1);
        }
        if let Some(age) = &file.key_epoch_max_age {
            let age = parse_duration(age).map_err(|e| format!("key_epoch_max_age: {e}"))?;
            if age.is_zero() {
                return Err("key_epoch_max_age must be more than zero".into());
            }
            keyring.epochs.max_age = age;
        }
        if let Some(recheck) = secs(file.key_recheck_secs) {
            keyring.recheck_after = recheck;
        }
        let media_dir = args.media_dir.or(file.media_dir).unwrap_or_else(|| {
            // Beside the database, so one directory holds a node's data.
            sqlite
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("./media"), |p| p.join("media"))
        });
        let (media, media_config) = media_settings(file.media.as_ref(), media_dir)?;
        let crisis = file.crisis.map(crisis_settings).transpose()?;
        let hooks = file
            .hooks
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(
                |(
                    i,
                    FileHook::WordFilter {
                        words,
                        action,
                        reason,
                    },
                )| {
                    let reason = reason.as_deref().unwrap_or(match action {
                        FilterAction::Reject => "this message is not allowed here",
                        FilterAction::Flag => "word filter",
                    });
                    WordFilter::new(&words, action, reason).map_err(|e| format!("hooks[{i}]: {e}"))
                },
            )
            .collect::<Result<_, _>>()?;
        let push = push_settings(
            file.notifications.as_ref(),
            non_empty(std::env::var("CHAT_WEBHOOK_SECRET").ok()),
            &mut engine,
        )?;
        Ok(Self {
            bind: args
                .bind
                .or(file.bind)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            sqlite,
            postgres: non_empty(args.postgres.or(file.postgres)),
            redis: non_empty(args.redis.or(file.redis)),
            media,
            media_config,
            allowed_origins: args
                .allowed_origins
                .or(file.allowed_origins)
                .unwrap_or_default()
                .into_iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            dev: args.dev,
            jwt_secret: non_empty(std::env::var("CHAT_JWT_SECRET").ok()),
            master_key: non_empty(std::env::var("CHAT_MASTER_KEY").ok()),
            master_key_file: args.master_key_file.or(file.master_key_file),
            key_store_path,
            key_store_url: non_empty(file.key_store_url),
            keyring,
            jwt_audience: file.jwt_audience,
            jwt_issuer: file.jwt_issuer,
            jwt_public_key,
            synchronous,
            max_connections: file.max_connections.unwrap_or(50_000),
            outgoing_queue: file.outgoing_queue.unwrap_or(1024),
            presence_ttl: secs(file.presence_ttl_secs).unwrap_or(Duration::from_secs(30)),
            ping_interval: secs(file.ping_interval_secs),
            idle_timeout: secs(file.idle_timeout_secs),
            header_read_timeout: secs(file.header_read_timeout_secs),
            redis_key_prefix: file.redis_key_prefix,
            rate_limits: FileRateLimits::resolve(file.rate_limits.as_ref()),
            engine,
            crisis,
            hooks,
            push,
        })
    }

    pub(crate) fn sqlite_config(&self) -> SqliteConfig {
        SqliteConfig {
            synchronous: self.synchronous,
            ..SqliteConfig::default()
        }
    }
}

/// `[crisis]`, checked: phrases the matcher takes, responders' ids,
/// resources with a title and an https URL.
fn crisis_settings(file: FileCrisis) -> Result<CrisisConfig, String> {
    if file.phrases.is_empty() {
        return Err("crisis.phrases must list at least one phrase".into());
    }
    let responders = file
        .responders
        .into_iter()
        .map(|r| UserId::new(r).map_err(|e| format!("crisis.responders: {e}")))
        .collect::<Result<_, _>>()?;
    CrisisConfig::new(&file.phrases, responders, file.resources).map_err(|e| format!("crisis: {e}"))
}

/// A setting in whole seconds; 0 is taken as 1, since none of these
/// intervals may be zero.
fn secs(value: Option<u64>) -> Option<Duration> {
    value.map(|s| Duration::from_secs(s.max(1)))
}

/// `90s`, `30m`, `24h`, `7d`, or plain seconds.
/// `[media]` over the defaults.
fn media_settings(
    file: Option<&FileMedia>,
    media_dir: PathBuf,
) -> Result<(MediaBackend, MediaConfig), String> {
    let mut config = MediaConfig::default();
    let Some(file) = file else {
        return Ok((MediaBackend::Local(media_dir), config));
    };
    let limits = &mut config.limits;
    let positive = |name: &str, v: Option<u64>, default: u64| match v {
        Some(0) => Err(format!("media.{name} must be more than zero")),
        Some(v) => Ok(v),
        None => Ok(default),
    };
    limits.image_bytes = positive("image_max_bytes", file.image_max_bytes, limits.image_bytes)?;
    limits.image_pixels = positive(
        "image_max_megapixels",
        file.image_max_megapixels,
        limits.image_pixels / 1_000_000,
    )?
    .saturating_mul(1_000_000);
    limits.voice_bytes = positive("voice_max_bytes", file.voice_max_bytes, limits.voice_bytes)?;
    limits.voice_duration = Duration::from_secs(positive(
        "voice_max_seconds",
        file.voice_max_seconds,
        limits.voice_duration.as_secs(),
    )?);
    limits.file_bytes = positive("file_max_bytes", file.file_max_bytes, limits.file_bytes)?;
    if let Some(n) = file.max_processing {
        config.max_processing = n.max(1);
    }
    if let Some(ttl) = &file.unattached_ttl {
        config.unattached_ttl =
            parse_duration(ttl).map_err(|e| format!("media.unattached_ttl: {e}"))?;
    }
    config.spool_dir.clone_from(&file.spool_dir);
    let backend = match (file.store.as_deref(), &file.s3) {
        (None | Some("local"), _) => MediaBackend::Local(media_dir),
        (Some("s3"), Some(s3)) => MediaBackend::S3(s3.clone()),
        (Some("s3"), None) => return Err("media.store = \"s3\" needs a [media.s3] section".into()),
        (Some(other), _) => return Err(format!("media.store must be local or s3, not {other:?}")),
    };
    Ok((backend, config))
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("invalid duration {s:?}"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("invalid duration unit in {s:?}; use s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
    }

    /// Settings from `toml` (and no flags).
    fn settings(toml: &str) -> Result<Settings, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("chat.toml");
        std::fs::write(&path, toml).expect("write config");
        let args = ServeArgs::try_parse_from(["serve", "--config", path.to_str().expect("utf-8")])
            .expect("args");
        Settings::resolve(args)
    }

    /// The example file of the repository is a valid configuration with
    /// every section in it.
    #[test]
    fn the_example_file_loads_with_every_section() {
        let text = include_str!("../chat.example.toml");
        let s = settings(text).expect("chat.example.toml is valid");
        for section in [
            "[rate_limits]",
            "[media]",
            "[crisis]",
            "[[hooks]]",
            "[limits]",
            "[notifications]",
        ] {
            assert!(text.contains(section), "{section} is in the example");
        }
        assert!(s.crisis.is_some());
        assert_eq!(s.hooks.len(), 1);
        assert!(s.push.is_some());
        assert_eq!(s.engine.max_group_members, 256);
    }

    #[test]
    fn key_epochs_and_recheck_from_the_file() {
        let s = settings(
            "key_epoch_messages = 500\nkey_epoch_max_age = \"12h\"\nkey_recheck_secs = 5\n",
        )
        .expect("valid");
        assert_eq!(s.keyring.epochs.max_messages, 500);
        assert_eq!(s.keyring.epochs.max_age, Duration::from_secs(12 * 3600));
        assert_eq!(s.keyring.recheck_after, Duration::from_secs(5));
        let defaults = settings("").expect("valid");
        assert_eq!(defaults.keyring, KeyringConfig::default());
        assert!(settings("key_epoch_max_age = \"0s\"\n").is_err());
        assert!(settings("key_epoch_max_age = \"soon\"\n").is_err());
    }

    #[test]
    fn notifications_from_the_file() {
        let none = settings("").expect("valid");
        assert!(none.push.is_none());
        assert_eq!(none.engine.push_preview_chars, 0);
        assert!(
            settings("[notifications]\nbatch_ms = 100\n")
                .expect("valid")
                .push
                .is_none()
        );

        let s = settings(
            "[notifications]\nwebhook_url = \"https://push.example/chat?token=t\"\n\
             secret = \"s3cret\"\nbatch_ms = 250\npreview_chars = 40\nqueue_capacity = 5\n\
             max_pending = 7\nconnect_timeout_secs = 2\nrequest_timeout_secs = 3\n",
        )
        .expect("valid");
        let push = s.push.expect("a webhook");
        assert_eq!(
            push.webhook.url.as_str(),
            "https://push.example/chat?token=t"
        );
        assert_eq!(push.webhook.host(), "push.example");
        assert_eq!(push.batch, Duration::from_millis(250));
        assert_eq!((push.webhook.queue_capacity, push.max_pending), (5, 7));
        assert_eq!(push.webhook.connect_timeout, Duration::from_secs(2));
        assert_eq!(push.webhook.request_timeout, Duration::from_secs(3));
        assert_eq!(s.engine.push_preview_chars, 40);
        assert!(
            !format!("{push:?}").contains("s3cret"),
            "the secret never prints"
        );

        let defaults = settings(
            "[notifications]\nwebhook_url = \"http://127.0.0.1:9/hook\"\nsecret = \"s\"\n",
        )
        .expect("valid")
        .push
        .expect("a webhook");
        assert_eq!(defaults.batch, Duration::from_millis(3000));
        assert_eq!(defaults.webhook.queue_capacity, 10_000);
    }

    #[test]
    fn a_bad_webhook_is_a_clear_startup_error() {
        let err = |keys: &str| settings(&format!("[notifications]\n{keys}")).expect_err("refused");
        let https = "webhook_url = \"https://push.example/\"\n";
        let signed = format!("{https}secret = \"s\"\n");
        for (keys, says) in [
            (
                "webhook_url = \"ftp://push.example/\"\nsecret = \"s\"\n".to_owned(),
                "http:// or https://",
            ),
            (
                "webhook_url = \"push.example/chat\"\nsecret = \"s\"\n".to_owned(),
                "not a valid URL",
            ),
            (https.to_owned(), "secret"),
            (format!("{https}secret = \"\"\n"), "secret"),
            (format!("{signed}preview_chars = 5000\n"), "preview_chars"),
            (format!("{signed}queue_capacity = 0\n"), "queue_capacity"),
            (format!("{signed}max_pending = 0\n"), "max_pending"),
            (
                "webhok_url = \"https://x.example/\"\n".to_owned(),
                "unknown field",
            ),
        ] {
            let error = err(&keys);
            assert!(error.contains(says), "{keys:?}: {error}");
        }
    }

    #[test]
    fn engine_limits_from_the_file() {
        let file: FileConfig =
            toml::from_str("[limits]\nwrite_lanes = 2\nchat_cache = 0\n").expect("valid TOML");
        let limits = file.limits.expect("limits");
        assert_eq!((limits.write_lanes, limits.chat_cache), (Some(2), Some(0)));
        assert!(toml::from_str::<FileConfig>("[limits]\nchat_cahce = 1\n").is_err());
    }

    #[test]
    fn rate_limits_with_one_class_keep_the_other_defaults() {
        let file: FileConfig =
            toml::from_str("[rate_limits]\ntyping = { per_second = 2, burst = 4 }\n")
                .expect("one class is enough");
        let defaults = RateLimits::default();
        assert_eq!(
            FileRateLimits::resolve(file.rate_limits.as_ref()),
            RateLimits {
                typing: Rate {
                    per_second: 2,
                    burst: 4
                },
                ..defaults
            }
        );
    }

    #[test]
    fn rate_limit_keys_are_each_optional() {
        let file: FileConfig = toml::from_str(
            "[rate_limits]\nwrite = { burst = 100 }\nconnect = { per_second = 3 }\n",
        )
        .expect("valid TOML");
        let limits = FileRateLimits::resolve(file.rate_limits.as_ref());
        let defaults = RateLimits::default();
        assert_eq!(
            limits.write,
            Rate {
                per_second: defaults.write.per_second,
                burst: 100
            }
        );
        assert_eq!(
            limits.connect,
            Rate {
                per_second: 3,
                burst: defaults.connect.burst
            }
        );
        assert_eq!(
            (limits.typing, limits.other),
            (defaults.typing, defaults.other)
        );
        let empty: FileConfig = toml::from_str("[rate_limits]\n").expect("empty table");
        assert_eq!(
            FileRateLimits::resolve(empty.rate_limits.as_ref()),
            defaults
        );
        assert_eq!(
            FileRateLimits::resolve(FileConfig::default().rate_limits.as_ref()),
            defaults
        );
        assert!(toml::from_str::<FileConfig>("[rate_limits]\nwrites = { burst = 1 }\n").is_err());
        assert!(toml::from_str::<FileConfig>("[rate_limits]\nwrite = { brust = 1 }\n").is_err());
    }
}

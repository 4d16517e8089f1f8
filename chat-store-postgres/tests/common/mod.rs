//! A fresh database per test on the machine's PostgreSQL, dropped after.
//!
//! The server is `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), used as the admin
//! connection that creates and drops the test databases. If it cannot be
//! reached, the test fails when `CHAT_REQUIRE_SERVICES=1` and is skipped
//! (with a loud `SKIPPED` line on stderr) otherwise.

#![allow(dead_code, unreachable_pub)]

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use chat_store_postgres::{
    PostgresConfig, PostgresStore,
    sqlx::{self, AssertSqlSafe, Connection, PgConnection},
};

/// The admin connection when `DATABASE_URL` is not set.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Prefix of the test databases' names; the rest is a ULID (its time lets
/// a later run drop databases that a killed run left behind).
const PREFIX: &str = "chat_test_";

/// Databases of killed runs older than this are dropped by the next run.
const STALE_AFTER: Duration = Duration::from_secs(3600);

/// How long connecting to the admin database may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

static SWEPT: AtomicBool = AtomicBool::new(false);

/// `url` with its password (if any) hidden, for messages.
pub fn redacted(url: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority..];
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => match rest[..at].find(':') {
            Some(colon) => format!("{}{}:***{}", &url[..authority], &rest[..colon], &rest[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The admin URL.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned())
}

fn services_required() -> bool {
    std::env::var("CHAT_REQUIRE_SERVICES").is_ok_and(|v| v.trim() == "1")
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority = base.find("://").map_or(0, |i| i + 3);
    let root = match base[authority..].find('/') {
        Some(i) => &base[..authority + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{database}?{q}"),
        None => format!("{root}/{database}"),
    }
}

async fn connect_admin(url: &str) -> Result<PgConnection, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no connection within {CONNECT_TIMEOUT:?}")),
    }
}

/// A database of its own for one test; dropped (`WITH (FORCE)`, which ends
/// the store's connections) when this value is.
#[derive(Debug)]
pub struct TestDb {
    /// The URL of the test database.
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDb {
    /// Creates a fresh, migrated database; `None` if the test is to be
    /// skipped because PostgreSQL is unreachable.
    pub async fn create() -> Option<TestDb> {
        let db = Self::create_empty().await?;
        // Migrate through a store of its own, as a deploy step would.
        let store = PostgresStore::connect_with(&db.url, small_pool())
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", redacted(&db.url)));
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("migrate {}: {e}", redacted(&db.url)));
        store.close().await;
        Some(db)
    }

    /// Creates a fresh, empty database (no message store schema: for the
    /// key store, which makes its own); `None` if the test is to be
    /// skipped because PostgreSQL is unreachable.
    pub async fn create_empty() -> Option<TestDb> {
        let admin_url = admin_url();
        let shown = redacted(&admin_url);
        let mut admin = match connect_admin(&admin_url).await {
            Ok(conn) => conn,
            Err(e) if services_required() => panic!(
                "PostgreSQL unreachable at {shown} ({e}), and CHAT_REQUIRE_SERVICES=1: \
                 start it, or point DATABASE_URL at one"
            ),
            Err(e) => {
                eprintln!(
                    "\n*** SKIPPED: PostgreSQL unreachable at {shown} ({e}). \
                     Set DATABASE_URL, or CHAT_REQUIRE_SERVICES=1 to fail instead. ***\n"
                );
                return None;
            }
        };
        if !SWEPT.swap(true, Ordering::SeqCst) {
            sweep_stale(&mut admin).await;
        }
        let name = format!("{PREFIX}{}", ulid::Ulid::new().to_string().to_lowercase());
        sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name} at {shown}: {e}"));
        let _ = admin.close().await;
        Some(TestDb {
            url: with_database(&admin_url, &name),
            name,
            admin_url,
        })
    }

    /// A store (a "node") on this database.
    pub async fn store(&self, config: PostgresConfig) -> PostgresStore {
        PostgresStore::connect_with(&self.url, config)
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", redacted(&self.url)))
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The pool of a test store: enough connections for the concurrent cases,
/// few enough that parallel tests fit the server's `max_connections`.
pub fn small_pool() -> PostgresConfig {
    PostgresConfig {
        max_connections: 8,
        ..PostgresConfig::default()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Drop runs inside the test's runtime, where blocking on another
        // future is not allowed: drop the database from a thread with a
        // runtime of its own, and wait for it.
        let (name, admin_url) = (self.name.clone(), self.admin_url.clone());
        let dropper = std::thread::spawn(move || -> Result<(), String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let mut admin = connect_admin(&admin_url).await?;
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .map_err(|e| e.to_string())?;
                let _ = admin.close().await;
                Ok(())
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop the test database {}: {e}", self.name),
            Err(_) => eprintln!("dropping the test database {} panicked", self.name),
        }
    }
}

/// Drops test databases that runs killed before their cleanup left behind
/// (older than [`STALE_AFTER`], so never one of a run still going).
async fn sweep_stale(admin: &mut PgConnection) {
    let names: Vec<String> =
        match sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
            .bind(format!("{PREFIX}%"))
            .fetch_all(&mut *admin)
            .await
        {
            Ok(names) => names,
            Err(e) => {
                eprintln!("listing stale test databases: {e}");
                return;
            }
        };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    for name in names {
        let Some(created_ms) = name
            .strip_prefix(PREFIX)
            .and_then(|id| ulid::Ulid::from_string(&id.to_uppercase()).ok())
            .map(|id| u128::from(id.timestamp_ms()))
        else {
            continue;
        };
        if now_ms.saturating_sub(created_ms) < STALE_AFTER.as_millis() {
            continue;
        }
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *admin).await {
            eprintln!("dropping the stale test database {name}: {e}");
        }
    }
}

#[test]
fn with_database_replaces_only_the_path() {
    assert_eq!(
        with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
        "postgres://postgres@127.0.0.1:5432/x"
    );
    assert_eq!(
        with_database("postgres://u:p@h/db?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
    assert_eq!(
        with_database("postgres://h:5432", "x"),
        "postgres://h:5432/x"
    );
}

#[test]
fn redacted_hides_only_the_password() {
    assert_eq!(
        redacted("postgres://u:secret@h:5432/db?x=1"),
        "postgres://u:***@h:5432/db?x=1"
    );
    assert_eq!(redacted(DEFAULT_URL), DEFAULT_URL);
}

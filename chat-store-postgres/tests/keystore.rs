//! [`PostgresKeyStore`]: the `KeyStore` conformance suite of `chat-core`,
//! every case against a fresh database of the machine's PostgreSQL (see
//! `common`), and what only a shared server can show (several nodes on
//! one key store agree).
//!
//! When PostgreSQL is unreachable the cases are skipped loudly, or fail
//! under `CHAT_REQUIRE_SERVICES=1`.

mod common;

use std::sync::Arc;

use chat_core::{
    UserId,
    crypto::{MasterKey, UserKey, WrappedUserKey},
    keystore::KeyStore,
    testing::KeyStoreFixture,
};
use chat_store_postgres::{PostgresKeyStore, PostgresKeyStoreConfig};
use tokio::sync::Barrier;

use crate::common::{TestDb, redacted};

/// A key store in `schema` of `db`.
async fn key_store(db: &TestDb, schema: &str) -> PostgresKeyStore {
    let config = PostgresKeyStoreConfig {
        schema: schema.to_owned(),
        ..PostgresKeyStoreConfig::default()
    };
    PostgresKeyStore::connect_with(&db.url, config)
        .await
        .unwrap_or_else(|e| panic!("connect the key store to {}: {e}", redacted(&db.url)))
}

mod conformance {
    use super::*;

    /// A fresh key store in a fresh database, which the fixture drops after
    /// the key store; `None` to skip the case.
    async fn setup() -> Option<KeyStoreFixture> {
        let db = TestDb::create_empty().await?;
        let keys = key_store(&db, "chat_keys").await;
        Some(KeyStoreFixture::with_guard(Arc::new(keys), db))
    }

    chat_core::keystore_conformance_tests!(setup);
}

fn wrapped(master: &MasterKey, user: &UserId) -> WrappedUserKey {
    master
        .wrap_user_key(user, &UserKey::generate().expect("user key"))
        .expect("wrap a user key")
}

/// Two nodes, each with its own key store (and pool) on one schema, start
/// together (both create the schema) and race to store the first key of
/// the same users: each user ends with one key, the one both were told.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_key_stores_on_one_schema_agree() {
    let Some(db) = TestDb::create_empty().await else {
        return;
    };
    let (a, b) = tokio::join!(key_store(&db, "keys_shared"), key_store(&db, "keys_shared"));
    let (a, b) = (Arc::new(a), Arc::new(b));
    let master = MasterKey::generate().expect("master key");
    let users: Vec<UserId> = (0..16)
        .map(|i| UserId::new(format!("user{i}")).expect("user id"))
        .collect();
    let barrier = Arc::new(Barrier::new(2 * users.len()));
    let mut racers = Vec::new();
    for user in &users {
        for store in [&a, &b] {
            let (store, user, barrier) = (Arc::clone(store), user.clone(), Arc::clone(&barrier));
            let key = wrapped(&master, &user);
            racers.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .put_user_key_if_absent(&user, key)
                    .await
                    .expect("put_user_key_if_absent")
            }));
        }
    }
    let mut won = Vec::new();
    for racer in racers {
        won.push(racer.await.expect("racer"));
    }
    for (i, user) in users.iter().enumerate() {
        let (from_a, from_b) = (&won[2 * i], &won[2 * i + 1]);
        assert_eq!(
            from_a, from_b,
            "both nodes were told the same key for {user}"
        );
        let stored_a = a.get_user_key(user).await.expect("get via a");
        let stored_b = b.get_user_key(user).await.expect("get via b");
        assert_eq!(stored_a.as_ref(), Some(from_a), "node a reads the winner");
        assert_eq!(stored_b.as_ref(), Some(from_a), "node b reads the winner");
    }
    let listed = a.list_user_keys(None, 100).await.expect("list");
    assert_eq!(listed.len(), users.len(), "one key per user, no duplicates");
    a.close().await;
    b.close().await;
}

/// A schema name that would need quoting is refused before connecting.
#[tokio::test]
async fn an_unsafe_schema_name_is_refused() {
    let config = PostgresKeyStoreConfig {
        schema: "keys\"; DROP TABLE x; --".to_owned(),
        ..PostgresKeyStoreConfig::default()
    };
    let refused = PostgresKeyStore::connect_with("postgres://nobody@127.0.0.1:1/none", config)
        .await
        .expect_err("an unsafe schema name is refused");
    assert!(refused.to_string().contains("schema"), "{refused}");
}

/// `delete_user_key` vacuums the user key table (the vacuum is best effort and
/// only logs a failure, so look at PostgreSQL's own record of it).
#[tokio::test]
async fn deleting_a_key_vacuums_the_user_key_table() {
    let Some(db) = TestDb::create_empty().await else {
        return;
    };
    let keys = key_store(&db, "chat_keys").await;
    let master = MasterKey::generate().expect("master key");
    let ann = UserId::new("ann").expect("user id");
    keys.put_user_key_if_absent(&ann, wrapped(&master, &ann))
        .await
        .expect("put");
    assert!(keys.delete_user_key(&ann).await.expect("delete"));
    let mut vacuumed: Vec<String> = Vec::new();
    for _ in 0..50 {
        vacuumed = chat_store_postgres::sqlx::query_scalar(
            "SELECT relname::text FROM pg_stat_user_tables \
             WHERE schemaname = 'chat_keys' AND last_vacuum IS NOT NULL ORDER BY relname",
        )
        .fetch_all(keys.pool())
        .await
        .expect("pg_stat_user_tables");
        if !vacuumed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(vacuumed, ["user_keys"], "the user key table was vacuumed");
    keys.close().await;
}

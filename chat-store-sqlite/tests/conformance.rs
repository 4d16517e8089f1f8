//! The `Store` conformance suite of `chat-core`, against a fresh database
//! file per case.

use std::sync::Arc;

use chat_core::testing::Fixture;
use chat_store_sqlite::{SqliteConfig, SqliteStore};

async fn setup() -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    // The default (durable) configuration: the suite checks what ships.
    let store = SqliteStore::open_with(dir.path().join("chat.db"), SqliteConfig::default())
        .unwrap_or_else(|e| panic!("open the SQLite store: {e}"));
    Fixture::with_guard(Arc::new(store), dir)
}

chat_core::store_conformance_tests!(setup);

//! The `Store` conformance suite of `chat-core`, every case against a fresh
//! database of the machine's PostgreSQL (see `common`).
//!
//! When PostgreSQL is unreachable the setup returns `None` and the case is
//! skipped loudly, or fails under `CHAT_REQUIRE_SERVICES=1`.

mod common;

use std::sync::Arc;

use chat_core::testing::Fixture;

use crate::common::{TestDb, small_pool};

/// A fresh store in a fresh database, which the fixture drops after the
/// store; `None` to skip the case.
async fn setup() -> Option<Fixture> {
    let db = TestDb::create().await?;
    let store = db.store(small_pool()).await;
    Some(Fixture::with_guard(Arc::new(store), db))
}

chat_core::store_conformance_tests!(setup);

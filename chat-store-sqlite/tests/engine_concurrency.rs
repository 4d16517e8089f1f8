//! The engine under many concurrent clients, over a SQLite store: the
//! harness of `chat_core::testing::engine_suite`, against a fresh database
//! file per seed. `ENGINE_SUITE_SEED=<seed>` runs one seed again.

use std::sync::Arc;

use chat_core::testing::engine_suite::{Options, run, seeds};
use chat_store_sqlite::{SqliteConfig, SqliteStore};

async fn run_seed(seed: u64, options: &Options) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let path = dir.path().join("chat.db");
    // The default (durable) configuration: what ships.
    let store =
        tokio::task::spawn_blocking(move || SqliteStore::open_with(path, SqliteConfig::default()))
            .await
            .unwrap_or_else(|e| panic!("open task: {e}"))
            .unwrap_or_else(|e| panic!("open the SQLite store: {e}"));
    let summary = run(Arc::new(store), seed, options).await;
    eprintln!("{summary:?}");
    // The store is dropped inside `run` with the engine; the directory after.
    drop(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_under_concurrent_clients() {
    let options = Options::default();
    for seed in seeds(3) {
        run_seed(seed, &options).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_with_one_lane_under_concurrent_clients() {
    let options = Options {
        write_lanes: 1,
        workers: 6,
        ops_per_worker: 30,
        ..Options::default()
    };
    for seed in seeds(2) {
        run_seed(seed ^ 0xA5A5, &options).await;
    }
}

//! Run with: cargo bench -p chat-bench --bench sqlite
//!
//! SQLite store appends from 1,000 concurrent senders (group commit) and the
//! raw rusqlite batched insert of identical rows, in the same run. The
//! `chat-bench store` command prints the ratio directly.

#![allow(missing_docs)]

use chat_store_sqlite::Synchronous;
use criterion::{Criterion, criterion_group, criterion_main};

#[path = "../src/store.rs"]
#[allow(dead_code, unreachable_pub)]
mod store;

/// `store.rs` refers to `crate::Error`.
type Error = Box<dyn std::error::Error + Send + Sync>;

fn append(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("sqlite_append");
    group.sample_size(10);
    group.bench_function("store_vs_raw_20k_messages_1000_senders", |b| {
        b.iter_custom(|iters| {
            let mut total = std::time::Duration::ZERO;
            for _ in 0..iters {
                let report = rt
                    .block_on(store::compare(20_000, 1000, 1000, Synchronous::Full, 100))
                    .expect("compare");
                eprintln!(
                    "store {:.0} msg/s, raw {:.0} rows/s, ratio {:.2}",
                    report.store_msgs_per_sec, report.raw_rows_per_sec, report.ratio
                );
                total += std::time::Duration::from_secs_f64(20_000.0 / report.store_msgs_per_sec);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, append);
criterion_main!(benches);

//! Run with: cargo bench -p chat-bench --bench care
//!
//! Crisis phrase matching (PROTOCOL.md 5.3), which runs on every message
//! of an at-rest chat when `[crisis]` is configured: an 8 KiB message,
//! ASCII and accented, against 50 phrases, next to the baseline of
//! lowercasing the same text (what any case-insensitive search costs);
//! and the engine's send path without and with crisis phrases configured
//! (a message that matches nothing), in the same run.

use std::{hint::black_box, sync::Arc};

use chat_core::{
    ChatEngine, MemoryStore,
    care::{CrisisConfig, PhraseMatcher},
};
use common::uid;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

mod common;

/// 50 phrases of the kind a host app configures.
fn phrases() -> Vec<String> {
    let base = [
        "want to die",
        "kill myself",
        "end it all",
        "no reason to live",
        "hurt myself",
    ];
    (0..50)
        .map(|i| format!("{} {}", base[i % base.len()], i / base.len()))
        .collect()
}

/// About 8 KiB of ordinary text; `accented` mixes in non-ASCII words.
fn message(accented: bool) -> String {
    let words = if accented {
        "je me sens très fatigué aujourd'hui, mais ça va aller demain peut-être "
    } else {
        "i feel very tired today but it will probably be better tomorrow maybe "
    };
    let mut text = String::new();
    while text.len() < 8 * 1024 {
        text.push_str(words);
    }
    text
}

fn matching(c: &mut Criterion) {
    let matcher = PhraseMatcher::new(&phrases()).expect("phrases");
    let mut group = c.benchmark_group("crisis_match_8k");
    for accented in [false, true] {
        let text = message(accented);
        let name = if accented { "accented" } else { "ascii" };
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(format!("baseline_lowercase_{name}"), |b| {
            b.iter(|| black_box(black_box(&text).to_lowercase()))
        });
        group.bench_function(format!("phrases_50_{name}"), |b| {
            b.iter(|| black_box(matcher.find(black_box(&text))))
        });
    }
    group.finish();
}

fn send_path(c: &mut Criterion) {
    let rt = common::runtime();
    let mut group = c.benchmark_group("send_with_crisis");
    for crisis in [false, true] {
        let (engine, chat, drains) = rt.block_on(async {
            let mut builder = ChatEngine::builder(Arc::new(MemoryStore::new()));
            if crisis {
                let config = CrisisConfig::new(&phrases(), vec![uid(9)], Vec::new())
                    .expect("crisis settings");
                builder = builder.crisis(config);
            }
            let engine = builder.build().await.expect("engine");
            let chat = common::group_of(&engine, 2).await;
            let drains = common::drained_sessions(&engine, 2).await;
            (engine, chat, drains)
        });
        let name = if crisis { "phrases_50" } else { "baseline" };
        common::bench_sends(&mut group, &rt, &engine, chat, name.to_owned());
        for d in drains {
            d.abort();
        }
    }
    group.finish();
}

criterion_group!(benches, matching, send_path);
criterion_main!(benches);

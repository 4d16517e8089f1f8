//! Throughput and latency benchmarks of the chat engine (next issue).

fn main() {
    eprintln!("chat-bench: not implemented yet; see README.md");
}

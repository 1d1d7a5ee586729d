//! Memory of a cache, each case in a fresh process of its own (resident set size from
//! `/proc/self/statm`, so the allocator's own overhead counts, as it does in production):
//!
//! - bytes per entry beyond key and value (`u64` keys, `u64` values: 16 bytes), unbounded and
//!   with eviction on;
//! - the resident set of a node that read 1 M distinct keys with `max_capacity(10 000)`,
//!   against one that read 10 000.
//!
//! `cargo bench --bench memory` prints one JSON object per case; `-- --check` exits non-zero if
//! the node that read 1 M keys with `max_capacity(10 000)` holds 4 MiB more than the one that
//! read 10 000 (`.ci/run` runs it).

use std::process::Command;

use ractor_cache_sync::{Cache, Mode, Node, NodeConfig, Source, Topic, Version};

struct Constant;

#[async_trait::async_trait]
impl Source<u64, u64> for Constant {
    async fn load(&self, key: &u64) -> ractor_cache_sync::Result<Option<(u64, Version)>> {
        Ok(Some((*key, 1)))
    }
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Reads `keys` distinct keys into a cache of `capacity` (none: unbounded); prints the
/// resident set before and after.
fn case(name: &str, keys: u64, capacity: Option<u64>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let node = Node::start(NodeConfig::new("memory", "memory-cookie-0123456789abc"))
            .await
            .unwrap();
        let mut builder = Cache::builder(Topic::new("memory"), Constant).mode(Mode::Eventual);
        if let Some(capacity) = capacity {
            builder = builder.max_capacity(capacity);
        }
        let cache: Cache<u64, u64> = builder.spawn(&node).await.unwrap();
        // Warm the paths up so that their one-time allocations are not counted per entry.
        for key in 0..1_000 {
            cache.get(&(u64::MAX - key)).await.unwrap();
        }
        cache.invalidate_all().unwrap();
        let before = rss_bytes();
        for key in 0..keys {
            cache.get(&key).await.unwrap();
        }
        let after = rss_bytes();
        let held = cache.entry_count() as u64;
        let per_entry = (after.saturating_sub(before)) as f64 / held.max(1) as f64;
        println!(
            "{{\"case\":\"{name}\",\"keys_read\":{keys},\"entries\":{held},\"rss_before\":{before},\"rss_after\":{after},\"bytes_per_entry_beyond_key_and_value\":{:.1}}}",
            per_entry - 16.0
        );
        node.shutdown().await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--case") {
        match args.get(at + 1).map(String::as_str) {
            Some("unbounded_1m") => case("unbounded_1m", 1_000_000, None),
            Some("bounded_1m_of_1m") => case("bounded_1m_of_1m", 1_000_000, Some(1_000_000)),
            Some("bounded_10k_read_1m") => case("bounded_10k_read_1m", 1_000_000, Some(10_000)),
            Some("bounded_10k_read_10k") => case("bounded_10k_read_10k", 10_000, Some(10_000)),
            other => eprintln!("unknown case {other:?}"),
        }
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let me = std::env::current_exe().unwrap();
    if args.iter().any(|a| a == "--check") {
        let rss = |name: &str| -> u64 {
            let out = Command::new(&me).args(["--case", name]).output().unwrap();
            let line = String::from_utf8_lossy(&out.stdout).to_string();
            println!("{}", line.trim());
            let after = line.split("\"rss_after\":").nth(1).unwrap_or("0");
            after
                .split(',')
                .next()
                .unwrap_or("0")
                .parse()
                .unwrap_or(u64::MAX)
        };
        let (many, few) = (rss("bounded_10k_read_1m"), rss("bounded_10k_read_10k"));
        if many > few + (4 << 20) {
            eprintln!("1 M keys through max_capacity(10 000) held {many} bytes, 10 000 keys {few}");
            std::process::exit(1);
        }
        return;
    }
    for name in [
        "unbounded_1m",
        "bounded_1m_of_1m",
        "bounded_10k_read_1m",
        "bounded_10k_read_10k",
    ] {
        let status = Command::new(&me).args(["--case", name]).status().unwrap();
        assert!(status.success(), "{name} failed");
    }
}

//! Hit ratios of a bounded cache against quick_cache (S3-FIFO) and moka (TinyLFU) on the same
//! traces with the same seeds: Zipf (s = 0.9 and 0.99) over 1 M keys at capacities of 1 % and
//! 10 %, and a Zipf mix interrupted by one-pass scans of keys never seen again.
//!
//! `cargo bench --bench hit_ratio` prints a Markdown table; `-- --json` adds one JSON object per
//! row (keys `trace`, `capacity`, `ractor_cache_sync`, `quick_cache`, `moka`, `behind_best`).
//! `-- --quick` runs a tenth of the requests, `-- --requests N` any number; `-- --check` exits
//! non-zero if ours is more than one point behind the better of the two on any row (`.ci/run`
//! runs `--requests 1000000 --check`). On short traces from a cold start moka's frequency
//! sketch learns faster: at 200 000 reads it leads by 0.5–1.0 point at 1 % capacity.

use ractor_cache_sync::{Cache, Mode, Node, NodeConfig, Source, Topic, Version};

const KEYS: u64 = 1_000_000;

struct Constant;

#[async_trait::async_trait]
impl Source<u64, u64> for Constant {
    async fn load(&self, key: &u64) -> ractor_cache_sync::Result<Option<(u64, Version)>> {
        Ok(Some((*key, 1)))
    }
}

/// A xorshift generator: the same sequence for a seed on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf ranks over `KEYS` keys with exponent `s`, by inverse transform on the cumulative
/// distribution.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(s: f64) -> Self {
        let mut total = 0.0;
        let mut cumulative = Vec::with_capacity(KEYS as usize);
        for rank in 1..=KEYS {
            total += 1.0 / (rank as f64).powf(s);
            cumulative.push(total);
        }
        for c in &mut cumulative {
            *c /= total;
        }
        Self { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cumulative.partition_point(|&c| c < u) as u64
    }
}

/// A trace: `requests` Zipf reads, with a scan of `scan` never-seen keys after every
/// `every` of them when `scan > 0`.
fn trace(s: f64, requests: usize, scan: u64, every: usize, seed: u64) -> Vec<u64> {
    let zipf = Zipf::new(s);
    let mut rng = Rng(seed);
    let mut keys = Vec::with_capacity(requests);
    let mut fresh = KEYS;
    for i in 0..requests {
        keys.push(zipf.sample(&mut rng));
        if scan > 0 && (i + 1) % every == 0 {
            keys.extend(fresh..fresh + scan);
            fresh += scan;
        }
    }
    keys
}

fn percent(hits: u64, total: usize) -> f64 {
    100.0 * hits as f64 / total as f64
}

fn ours(trace: &[u64], capacity: u64) -> f64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let node = Node::start(NodeConfig::new("hit-ratio", "hit-ratio-cookie-0123456789"))
            .await
            .unwrap();
        let cache: Cache<u64, u64> = Cache::builder(Topic::new("hit-ratio"), Constant)
            .mode(Mode::Eventual)
            .max_capacity(capacity)
            .spawn(&node)
            .await
            .unwrap();
        let mut hits = 0;
        for key in trace {
            if cache.peek(key).is_some() {
                hits += 1;
            } else {
                cache.get(key).await.unwrap();
            }
        }
        assert!(cache.entry_count() as u64 <= capacity);
        node.shutdown().await;
        percent(hits, trace.len())
    })
}

fn quick(trace: &[u64], capacity: u64) -> f64 {
    let cache = quick_cache::sync::Cache::<u64, u64>::new(capacity as usize);
    replay(
        trace,
        |key| cache.get(&key).is_some(),
        |key| cache.insert(key, key),
    )
}

fn moka(trace: &[u64], capacity: u64) -> f64 {
    let cache = moka::sync::Cache::<u64, u64>::new(capacity);
    replay(
        trace,
        |key| cache.get(&key).is_some(),
        |key| cache.insert(key, key),
    )
}

/// The hit ratio of a plain cache over `trace`: a miss inserts the key.
fn replay(trace: &[u64], hit: impl Fn(u64) -> bool, insert: impl Fn(u64)) -> f64 {
    let mut hits = 0;
    for &key in trace {
        if hit(key) {
            hits += 1;
        } else {
            insert(key);
        }
    }
    percent(hits, trace.len())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().any(|a| a == "--json");
    let check = args.iter().any(|a| a == "--check");
    let mut worst: f64 = f64::NEG_INFINITY;
    let requests = match args.iter().position(|a| a == "--requests") {
        Some(at) => args
            .get(at + 1)
            .and_then(|n| n.parse().ok())
            .expect("--requests N"),
        None if args.iter().any(|a| a == "--quick") => 200_000,
        None => 2_000_000,
    };
    println!("| trace | capacity | ractor_cache_sync | quick_cache | moka | behind the best |");
    println!("|---|---|---|---|---|---|");
    let rows: [(&str, f64, bool); 3] = [
        ("zipf 0.9", 0.9, false),
        ("zipf 0.99", 0.99, false),
        ("zipf 0.9 + scans", 0.9, true),
    ];
    for (name, s, scans) in rows {
        for capacity in [KEYS / 100, KEYS / 10] {
            let keys = if scans {
                // After every tenth of the reads, one pass over as many new keys as fit.
                trace(s, requests, capacity, requests / 10, 42)
            } else {
                trace(s, requests, 0, 1, 42)
            };
            let (a, b, c) = (
                ours(&keys, capacity),
                quick(&keys, capacity),
                moka(&keys, capacity),
            );
            let behind = b.max(c) - a;
            worst = worst.max(behind);
            let share = format!("{} %", capacity * 100 / KEYS);
            println!("| {name} | {share} | {a:.2} % | {b:.2} % | {c:.2} % | {behind:.2} |");
            if json {
                println!(
                    "{{\"trace\":\"{name}\",\"capacity\":{capacity},\"ractor_cache_sync\":{a:.3},\"quick_cache\":{b:.3},\"moka\":{c:.3},\"behind_best\":{behind:.3}}}"
                );
            }
        }
    }
    if check && worst > 1.0 {
        eprintln!("hit ratio {worst:.2} points behind the best of quick_cache and moka");
        std::process::exit(1);
    }
}

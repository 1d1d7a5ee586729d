//! Micro-benchmarks of the hot paths: a cache hit (1 and 2 threads), a miss with single
//! flight, one invalidation in a burst, envelope encode/decode, and preparing one publish for
//! N peers.
//!
//! `cargo bench --bench micro`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ractor_cache_sync::{Cache, Node, NodeConfig, Source, Topic, Version};

struct Constant;

#[async_trait::async_trait]
impl Source<u64, Arc<String>> for Constant {
    async fn load(&self, key: &u64) -> ractor_cache_sync::Result<Option<(Arc<String>, Version)>> {
        Ok(Some((Arc::new(format!("value {key}")), 1)))
    }
}

fn setup() -> (tokio::runtime::Runtime, Node, Cache<u64, Arc<String>>) {
    setup_with(1024)
}

/// A node and a cache holding keys `0..entries`.
fn setup_with(entries: u64) -> (tokio::runtime::Runtime, Node, Cache<u64, Arc<String>>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (node, cache) = runtime.block_on(async {
        let node = Node::start(NodeConfig::new("bench", "cookie"))
            .await
            .unwrap();
        let cache = Cache::spawn(Topic::new("micro"), Arc::new(Constant), &node)
            .await
            .unwrap();
        for key in 0..entries {
            cache.get(&key).await.unwrap();
        }
        (node, cache)
    });
    (runtime, node, cache)
}

fn hits(c: &mut Criterion) {
    let (_runtime, _node, cache) = setup();
    let mut group = c.benchmark_group("cache_hit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_thread", |b| {
        let mut key = 0u64;
        b.iter(|| {
            key = (key + 1) & 1023;
            cache.peek(&key).expect("hit")
        })
    });
    group.bench_function("2_threads", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |t, i| {
                // Disjoint halves of the keys: threads share the map, not values.
                std::hint::black_box(cache.peek(&((i & 511) + t * 512)));
            })
        })
    });
    group.finish();
}

/// Reads with a per-read guarantee, on a hit, against a plain `lookup` hit (all through the
/// same `block_on`, whose cost they share): a token already applied, a budget the entry meets.
fn per_read(c: &mut Criterion) {
    let (runtime, _node, cache) = setup();
    let token = cache.invalidate_with_token(&5_000, None).unwrap();
    let mut group = c.benchmark_group("per_read_hit");
    group.throughput(Throughput::Elements(1));
    let mut key = 0u64;
    let mut next = move || {
        key = (key + 1) & 1023;
        key
    };
    group.bench_function("lookup", |b| {
        b.iter(|| runtime.block_on(cache.lookup(&next())).unwrap())
    });
    group.bench_function("get_after_applied_token", |b| {
        b.iter(|| {
            let key = next();
            runtime
                .block_on(cache.get_after(&token, &key, Duration::from_secs(1)))
                .unwrap()
        })
    });
    group.bench_function("get_within_1s", |b| {
        b.iter(|| {
            let key = next();
            runtime
                .block_on(cache.get_within(&key, Duration::from_secs(1)))
                .unwrap()
        })
    });
    group.finish();
}

/// Time per operation when two threads each do `iters` of `op(thread, i)` at once.
fn on_two_threads(iters: u64, op: impl Fn(u64, u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..2u64 {
            let op = &op;
            s.spawn(move || (0..iters).for_each(|i| op(t, i)));
        }
    });
    // Per operation: two threads did `iters` each in this time.
    start.elapsed() / 2
}

/// The machine's own ceiling for the 2-thread figure: work of about a cache hit's length that
/// shares nothing between threads.
fn reference_scaling(c: &mut Criterion) {
    fn work(seed: u64) -> u64 {
        (0..24).fold(seed | 1, |x, _| {
            let x = x ^ (x << 13);
            let x = x ^ (x >> 7);
            x ^ (x << 17)
        })
    }
    let mut group = c.benchmark_group("no_sharing_reference");
    group.throughput(Throughput::Elements(1));
    group.bench_function("1_thread", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            work(std::hint::black_box(i))
        })
    });
    group.bench_function("2_threads", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, |t, i| {
                std::hint::black_box(work(std::hint::black_box(i + t)));
            })
        })
    });
    group.finish();
}

/// Invalidating and reloading one key over and over, in a small and a large cache: the cost
/// must not grow with the number of entries.
fn miss_with_single_flight(c: &mut Criterion) {
    let mut group = c.benchmark_group("miss_invalidate_then_get");
    for entries in [1_024u64, 100_000] {
        let (runtime, _node, cache) = setup_with(entries);
        group.bench_with_input(BenchmarkId::from_parameter(entries), &entries, |b, _| {
            b.iter(|| {
                cache.invalidate(&7).unwrap();
                runtime.block_on(cache.get(&7)).unwrap()
            })
        });
    }
    group.finish();
}

/// One local invalidation of a key nobody caches, as in a burst: drop here, add to the
/// coalescing batch (published once per window by a timer, with no peers to send to).
fn invalidation_burst(c: &mut Criterion) {
    let (runtime, _node, cache) = setup();
    let _context = runtime.enter();
    let mut key = 1u64 << 32;
    c.bench_function("invalidate_in_burst", |b| {
        b.iter(|| {
            key += 1;
            cache.invalidate(&key).unwrap()
        })
    });
}

fn envelopes(c: &mut Criterion) {
    use ractor_cache_sync::fault_injection::{decode, encode_for_peers};
    let payload = vec![7u8; 64];
    let bytes = encode_for_peers(&payload, 1).pop().unwrap();
    c.bench_function("envelope_encode_64B", |b| {
        b.iter(|| encode_for_peers(&payload, 1))
    });
    c.bench_function("envelope_decode_64B", |b| b.iter(|| decode(&bytes)));
    let mut group = c.benchmark_group("publish_prepare_for_peers");
    for peers in [1usize, 4, 16] {
        group.bench_with_input(BenchmarkId::from_parameter(peers), &peers, |b, &peers| {
            b.iter(|| encode_for_peers(&payload, peers))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hits, reference_scaling, per_read, miss_with_single_flight, invalidation_burst, envelopes
}
criterion_main!(benches);

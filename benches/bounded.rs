//! Hits in a full, bounded cache of 100 000 entries read in a random order over all of them,
//! against quick_cache and moka in the same run (a benchmark that re-reads one hot key
//! measures the L1 cache, not the map), on one and two threads; a node runs beside the readers.
//!
//! `cargo bench --bench bounded`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ractor_cache_sync::{Cache, Node, NodeConfig, Source, Topic, Version};

const ENTRIES: u64 = 100_000;

/// The same value objects for every cache, allocated once in key order: a hit clones the
/// `Arc` (its reference count is the one write a hit makes), so where the values live in
/// memory weighs as much as the map; sharing them compares the maps alone.
struct Values(Arc<Vec<Arc<String>>>);

impl Values {
    fn new() -> Self {
        Self(Arc::new(
            (0..ENTRIES)
                .map(|k| Arc::new(format!("value {k}")))
                .collect(),
        ))
    }

    fn of(&self, key: u64) -> Arc<String> {
        self.0[key as usize].clone()
    }
}

#[async_trait::async_trait]
impl Source<u64, Arc<String>> for Values {
    async fn load(&self, key: &u64) -> ractor_cache_sync::Result<Option<(Arc<String>, Version)>> {
        Ok(Some((self.of(*key), 1)))
    }
}

/// Every key once, in a random order (a fixed seed: the same order for every cache).
fn random_order() -> Vec<u64> {
    let mut keys: Vec<u64> = (0..ENTRIES).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..keys.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        keys.swap(i, (state % (i as u64 + 1)) as usize);
    }
    keys
}

/// Time per read when two threads each do `iters` reads at once, over their own halves of
/// the order.
fn on_two_threads(iters: u64, order: &[u64], read: impl Fn(u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for half in order.chunks(order.len() / 2).take(2) {
            let read = &read;
            s.spawn(move || {
                for i in 0..iters as usize {
                    read(half[i % half.len()]);
                }
            });
        }
    });
    start.elapsed() / 2
}

fn group(c: &mut Criterion, name: &str, order: &[u64], read: impl Fn(u64) + Sync) {
    let mut group = c.benchmark_group("cache_hit_bounded");
    group.throughput(Throughput::Elements(1));
    group.bench_function(format!("{name}/1_thread"), |b| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % order.len();
            read(order[i])
        })
    });
    group.bench_function(format!("{name}/2_threads"), |b| {
        b.iter_custom(|iters| on_two_threads(iters, order, &read))
    });
    group.finish();
}

/// Each map is built, measured and dropped before the next is built, so that none reads
/// from a heap the others shaped; the node and the shared values live throughout.
fn hits(c: &mut Criterion) {
    let order = random_order();
    let values = Values::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = runtime.block_on(async {
        Node::start(NodeConfig::new("bench", "cookie"))
            .await
            .unwrap()
    });

    {
        let cache = runtime.block_on(async {
            let cache: Cache<u64, Arc<String>> =
                Cache::builder(Topic::new("bounded"), Values(values.0.clone()))
                    .max_capacity(ENTRIES)
                    .spawn(&node)
                    .await
                    .unwrap();
            for key in 0..ENTRIES {
                cache.get(&key).await.unwrap();
            }
            cache
        });
        assert_eq!(cache.entry_count(), ENTRIES as usize);
        group(c, "ractor_cache_sync", &order, |key| {
            std::hint::black_box(cache.peek(&key).expect("hit"));
        });
    }

    {
        // quick_cache bounds each shard on its own: 10 % more room keeps all of the keys.
        let quick = quick_cache::sync::Cache::<u64, Arc<String>>::new(ENTRIES as usize * 11 / 10);
        for key in 0..ENTRIES {
            quick.insert(key, values.of(key));
        }
        assert!((0..ENTRIES).all(|key| quick.peek(&key).is_some()));
        group(c, "quick_cache", &order, |key| {
            std::hint::black_box(quick.get(&key).expect("hit"));
        });
    }

    {
        let moka = moka::sync::Cache::<u64, Arc<String>>::new(ENTRIES * 11 / 10);
        for key in 0..ENTRIES {
            moka.insert(key, values.of(key));
        }
        moka.run_pending_tasks();
        assert!((0..ENTRIES).all(|key| moka.contains_key(&key)));
        group(c, "moka", &order, |key| {
            std::hint::black_box(moka.get(&key).expect("hit"));
        });
    }

    {
        // The map under the cache, bare, with and without one read of the system's monotonic
        // clock per lookup: what the map costs, what a fenced clock read does to it, and what
        // the coarse clock hits read does.
        let index = scc::HashIndex::<u64, Arc<String>, foldhash::fast::RandomState>::with_hasher(
            Default::default(),
        );
        for key in 0..ENTRIES {
            let _ = index.insert(key, values.of(key));
        }
        group(c, "bare_scc_hash_index", &order, |key| {
            std::hint::black_box(index.peek_with(&key, |_, v| v.clone()).expect("hit"));
        });
        group(c, "bare_scc_hash_index_and_clock", &order, |key| {
            std::hint::black_box(std::time::Instant::now());
            std::hint::black_box(index.peek_with(&key, |_, v| v.clone()).expect("hit"));
        });
        #[cfg(target_os = "linux")]
        group(c, "bare_scc_hash_index_and_coarse_clock", &order, |key| {
            std::hint::black_box(rustix::time::clock_gettime(
                rustix::time::ClockId::MonotonicCoarse,
            ));
            std::hint::black_box(index.peek_with(&key, |_, v| v.clone()).expect("hit"));
        });
    }
    runtime.block_on(node.shutdown());
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = hits
}
criterion_main!(benches);

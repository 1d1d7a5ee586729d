//! One node in this process (no peers, so no multi-node state shares the process-global
//! registries): a herd of readers on a freshly invalidated hot key causes exactly one source
//! load; a slow source does not let a stale load install; a failing source gives errors,
//! caches nothing and recovers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor_cache_sync::{Cache, Error, Node, NodeConfig, Source, Topic, Version};
use tokio::sync::watch;

/// A source whose loads can be held at a gate and made to fail. The gate is a state, not a
/// wake-up: a load that reaches it after the release goes straight through (a `Notify` would
/// lose a release that came before the load started waiting).
struct Controlled {
    version: AtomicU64,
    loads: AtomicU64,
    failing: AtomicBool,
    /// `true` while loads wait.
    held: watch::Sender<bool>,
}

impl Default for Controlled {
    fn default() -> Self {
        Self {
            version: AtomicU64::default(),
            loads: AtomicU64::default(),
            failing: AtomicBool::default(),
            held: watch::Sender::new(false),
        }
    }
}

impl Controlled {
    fn hold(&self) {
        self.held.send_replace(true);
    }

    fn release(&self) {
        self.held.send_replace(false);
    }
}

/// `task`'s result, within a liveness deadline.
async fn within<T>(task: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("a reader never finished")
        .unwrap()
}

#[async_trait::async_trait]
impl Source<String, String> for Controlled {
    async fn load(&self, key: &String) -> ractor_cache_sync::Result<Option<(String, Version)>> {
        let version = self.version.load(Ordering::SeqCst);
        self.loads.fetch_add(1, Ordering::SeqCst);
        let mut held = self.held.subscribe();
        held.wait_for(|held| !*held)
            .await
            .expect("the source outlives its loads");
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::from_source("database unavailable"));
        }
        Ok(Some((format!("{key}@{version}"), version)))
    }
}

async fn cache(topic: &str) -> (Node, Cache<String, String>, Arc<Controlled>) {
    let node = Node::start(NodeConfig::new(topic, "cookie")).await.unwrap();
    let source = Arc::new(Controlled::default());
    let cache = Cache::spawn(Topic::new(topic), source.clone(), &node)
        .await
        .unwrap();
    (node, cache, source)
}

async fn until(mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition never held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_on_an_invalidated_hot_key_loads_it_once() {
    let (_node, cache, source) = cache("herd").await;
    let key = "hot".to_owned();
    cache.get(&key).await.unwrap();
    source.version.store(1, Ordering::SeqCst);
    source.hold();
    cache.invalidate(&key).unwrap();
    let loads_before = source.loads.load(Ordering::SeqCst);
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move { cache.get(&key).await.unwrap() })
        })
        .collect();
    until(|| cache.stats().misses >= 100).await;
    source.release();
    for reader in readers {
        assert_eq!(within(reader).await.as_deref(), Some("hot@1"));
    }
    assert_eq!(source.loads.load(Ordering::SeqCst) - loads_before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_load_overtaken_by_an_invalidation_is_not_cached() {
    let (_node, cache, source) = cache("slow").await;
    let key = "k".to_owned();
    source.hold();
    let slow = tokio::spawn({
        let (cache, key) = (cache.clone(), key.clone());
        async move { cache.get(&key).await.unwrap() }
    });
    until(|| source.loads.load(Ordering::SeqCst) == 1).await;
    source.version.store(1, Ordering::SeqCst); // a commit lands while the load runs
    cache.invalidate(&key).unwrap();
    source.release();
    assert_eq!(within(slow).await.as_deref(), Some("k@0"));
    assert_eq!(cache.entry_count(), 0, "the overtaken load was installed");
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("k@1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_returns_errors_caches_nothing_and_recovers() {
    let (_node, cache, source) = cache("failing").await;
    let key = "k".to_owned();
    source.failing.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert!(matches!(cache.get(&key).await, Err(Error::Source(_))));
    }
    assert_eq!(cache.entry_count(), 0);
    assert_eq!(cache.stats().load_failures, 3);
    source.failing.store(false, Ordering::SeqCst);
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some("k@0"));
    assert!(cache.lookup(&key).await.unwrap().hit);
}

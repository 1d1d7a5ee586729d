//! The cache handle: reads from local heap, invalidates locally and cluster-wide.

mod actor;
mod batch;
mod builder;
mod invalidation;
mod metrics;
mod stats;
mod store;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use ractor::{ActorCell, ActorRef};

pub use self::actor::CacheKey;
use self::actor::CacheMessage;
use self::batch::{Added, Batch};
pub use self::builder::{CacheBuilder, Mode};
pub use self::invalidation::Invalidation;
pub use self::store::Lookup;
use self::store::Store;
use crate::synchronization::message::Drainer;
use crate::synchronization::{Confirmation, Synchronization};

/// The cache's current Synchronization handle, shared by the handles and the actor.
pub(crate) type SyncSlot<K> = Arc<RwLock<Option<Synchronization<Invalidation<K>>>>>;
pub use self::stats::CacheStats;
use crate::clock::now_us;
use crate::error::{Error, Result};
use crate::health::Health;
use crate::node::Node;
use crate::source::{Source, Version};
use crate::synchronization::SyncShared;
use crate::topic::Topic;

/// A node-local cache of `K → V`, kept in sync with the caches of the same topic on every
/// other node.
///
/// Cloneable and cheap to clone; every clone reads the same entries. Reads on a hit touch
/// only a concurrent map (no actor message, no await); a miss loads from the [`Source`] once
/// per key however many tasks ask at the same time.
pub struct Cache<K, V> {
    store: Arc<Store<K, V>>,
    batch: Arc<Batch<K>>,
    slot: SyncSlot<K>,
    drainer: Drainer<Invalidation<K>>,
    coalesce: Duration,
    actor: ActorRef<CacheMessage<K>>,
    shared: Arc<SyncShared>,
    mode: Mode,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            batch: self.batch.clone(),
            slot: self.slot.clone(),
            drainer: self.drainer.clone(),
            coalesce: self.coalesce,
            actor: self.actor.clone(),
            shared: self.shared.clone(),
            mode: self.mode,
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Cache<K, V> {
    /// Spawns the cache actor (and its topic's Synchronization actor) on `node`, with the
    /// default settings ([`Mode::Bounded`], 1 s lease, 200 ms heartbeat).
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] if an actor fails to start.
    pub async fn spawn(
        topic: Topic<Invalidation<K>>,
        source: Arc<dyn Source<K, V>>,
        node: &Node,
    ) -> Result<Self> {
        Self::builder(topic, source).spawn(node).await
    }

    /// Starts building a cache with non-default settings.
    pub fn builder(
        topic: Topic<Invalidation<K>>,
        source: Arc<dyn Source<K, V>>,
    ) -> CacheBuilder<K, V> {
        CacheBuilder::new(topic, source)
    }

    /// The value of `key`: from the heap on a hit, else loaded from the source (once per key
    /// for all concurrent readers). `None` if the key does not exist in the source.
    ///
    /// # Errors
    ///
    /// [`Error::Source`] if the load failed; nothing is cached then.
    pub async fn get(&self, key: &K) -> Result<Option<V>> {
        Ok(self.lookup(key).await?.value.map(|(value, _)| value))
    }

    /// The cached value of `key`, if this node may serve it from its heap right now: no load,
    /// no await, no message, no allocation beyond cloning `V` (use `Arc<T>` for large values).
    /// `None` on a miss, and in bounded mode while some peer's lease is not valid.
    pub fn peek(&self, key: &K) -> Option<V> {
        self.store.peek(key)
    }

    /// Like [`get`](Self::get), with the value's version and whether it was a hit.
    ///
    /// # Errors
    ///
    /// [`Error::Source`] if the load failed; nothing is cached then.
    pub async fn lookup(&self, key: &K) -> Result<Lookup<V>> {
        self.store.lookup(key).await
    }

    /// Drops `key` here at once and tells every other node to drop it. Call it right after
    /// committing the change to the source of truth.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the cache actor has stopped; the local entry is dropped
    /// anyway.
    pub fn invalidate(&self, key: &K) -> Result<()> {
        self.invalidate_one(key, None)
    }

    /// Like [`invalidate`](Self::invalidate), naming the version just committed: nodes that
    /// already hold that version or a newer one keep their entry.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub fn invalidate_version(&self, key: &K, version: Version) -> Result<()> {
        self.invalidate_one(key, Some(version))
    }

    /// One key, without building a list.
    fn invalidate_one(&self, key: &K, version: Option<Version>) -> Result<()> {
        self.store.invalidate(key, version);
        crate::counter::bump(&self.store.counters.invalidations_sent);
        self.added(self.batch.add(std::iter::once((key.clone(), version))))
    }

    /// Like [`invalidate_version`](Self::invalidate_version) (with `version` if known), then
    /// waits until every peer known now has applied it (about one heartbeat) or `timeout`
    /// passes, and says which peers did.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the cache actor has stopped; [`Error::Timeout`] if the
    /// actor did not answer in time. The local entry is dropped in every case.
    pub async fn invalidate_confirmed(
        &self,
        key: &K,
        version: Option<Version>,
        timeout: std::time::Duration,
    ) -> Result<Confirmation> {
        self.store.invalidate(key, version);
        let sync =
            ractor::call_t!(self.actor, CacheMessage::Sync, 5_000).map_err(Error::stopped)?;
        let invalidation = Invalidation::Keys(vec![(key.clone(), version)]);
        let confirmation = sync.publish_confirmed(&invalidation, timeout).await?;
        crate::counter::bump(&self.store.counters.invalidations_sent);
        Ok(confirmation)
    }

    /// Invalidates many keys in one message.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    ///
    /// Invalidations are coalesced: a lone invalidation goes out at once; in a burst, all keys
    /// invalidated within the coalescing window (default 1 ms) travel together in one envelope,
    /// each key once; past the batch cap the batch becomes an `invalidate_all`.
    pub fn invalidate_keys(&self, keys: Vec<(K, Option<Version>)>) -> Result<()> {
        for (key, version) in &keys {
            self.store.invalidate(key, *version);
        }
        crate::counter::add(&self.store.counters.invalidations_sent, keys.len() as u64);
        self.added(self.batch.add(keys))
    }

    /// Drops every entry here at once and tells every other node to do the same.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub fn invalidate_all(&self) -> Result<()> {
        self.store.invalidate_all();
        crate::counter::bump(&self.store.counters.invalidations_sent);
        self.added(self.batch.add_all())
    }

    /// Casts `bytes` unchanged to every remote member of the cache's topic, as if they were an
    /// envelope: a fault-injection tool to check how peers handle garbage.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the cache actor has stopped.
    #[doc(hidden)]
    pub fn send_raw(&self, bytes: Vec<u8>) -> Result<()> {
        self.send(CacheMessage::SendRaw(bytes))
    }

    /// Number of entries held in this node's heap.
    pub fn entry_count(&self) -> usize {
        self.store.entry_count()
    }

    /// Counters since the cache was spawned.
    pub fn stats(&self) -> CacheStats {
        let sync = self.shared.counters.snapshot();
        self.store.counters.snapshot(self.store.entry_count(), sync)
    }

    /// Whether the cache can serve from its heap now. In [`Mode::Eventual`] a cache serves
    /// from its heap even while this says [`Health::Bypassing`].
    pub fn health(&self) -> Health {
        self.shared.health(now_us())
    }

    /// The consistency mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The cache's current Synchronization actor (it changes when the cache actor restarts it
    /// after a failure), for monitoring and fault injection.
    pub fn synchronization_actor(&self) -> Option<ActorCell> {
        self.with_sync(Synchronization::actor)
    }

    /// The cache actor, for supervision. Stopping it stops its Synchronization actor too.
    pub fn actor(&self) -> ActorCell {
        self.actor.get_cell()
    }

    /// Publishes the batch from this task when it was empty (in a burst the Synchronization
    /// actor publishes it when the coalescing window ends) or is full. If the Synchronization
    /// actor is being restarted, the cache actor publishes the batch once the new one is up.
    fn added(&self, added: Added) -> Result<()> {
        match added {
            Added::First => self
                .with_sync(|sync| sync.flush(&self.drainer, self.coalesce))
                .map(drop)
                .ok_or_else(|| Error::ActorStopped("synchronization actor not started".into())),
            Added::Full => {
                self.with_sync(|sync| sync.drain_now(&self.drainer));
                Ok(())
            }
            Added::Queued => Ok(()),
        }
    }

    /// Runs `f` with the current Synchronization handle; `None` while there is none.
    fn with_sync<T>(&self, f: impl FnOnce(&Synchronization<Invalidation<K>>) -> T) -> Option<T> {
        let slot = self.slot.read().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(f)
    }

    fn send(&self, message: CacheMessage<K>) -> Result<()> {
        self.actor.cast(message).map_err(Error::stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::NodeConfig;

    struct Constant;

    #[async_trait::async_trait]
    impl Source<u32, u32> for Constant {
        async fn load(&self, key: &u32) -> Result<Option<(u32, Version)>> {
            Ok(Some((*key, 1)))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_from_a_thread_outside_any_runtime_is_published_when_the_window_ends() {
        let node = Node::start(NodeConfig::new("burst", "burst-cookie-0123456789abcdef"))
            .await
            .unwrap();
        let cache: Cache<u32, u32> = Cache::builder(Topic::new("burst-thread"), Arc::new(Constant))
            .coalesce_window(Duration::from_secs(1))
            .spawn(&node)
            .await
            .unwrap();
        let burst = cache.clone();
        std::thread::spawn(move || {
            // A batch of several keys goes out at once and starts a burst...
            burst
                .invalidate_keys((0..10).map(|k| (k, None)).collect())
                .unwrap();
            // ...so the next key waits for the end of the window.
            burst.invalidate(&10).unwrap();
        })
        .join()
        .unwrap();
        assert!(
            !cache.batch.is_empty(),
            "the key did not wait for the window"
        );
        assert_eq!(cache.stats().sync.published, 1);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cache.batch.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            cache.batch.is_empty(),
            "the waiting key was never published"
        );
        assert_eq!(cache.stats().sync.published, 2);
        node.shutdown().await;
    }
}

//! The cache handle: reads from local heap, invalidates locally and cluster-wide.

mod actor;
mod invalidation;
mod store;

use std::sync::Arc;

use ractor::{Actor, ActorCell, ActorRef};

pub use self::actor::CacheKey;
use self::actor::{CacheActor, CacheArguments, CacheMessage};
pub use self::invalidation::Invalidation;
pub use self::store::Lookup;
use self::store::Store;
use crate::synchronization::SyncCounters;
use crate::{CacheStats, Error, Node, Result, Source, Topic, Version};

/// A node-local cache of `K → V`, kept in sync with the caches of the same topic on every
/// other node.
///
/// Cloneable and cheap to clone; every clone reads the same entries. Reads on a hit touch
/// only a concurrent map (no actor message, no await); a miss loads from the [`Source`] once
/// per key however many tasks ask at the same time.
pub struct Cache<K, V> {
    store: Arc<Store<K, V>>,
    actor: ActorRef<CacheMessage<K>>,
    sync_counters: Arc<SyncCounters>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            actor: self.actor.clone(),
            sync_counters: self.sync_counters.clone(),
        }
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Cache<K, V> {
    /// Spawns the cache actor (and its topic's Synchronization actor) on `node`.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] if an actor fails to start.
    pub async fn spawn(
        topic: Topic<Invalidation<K>>,
        source: Arc<dyn Source<K, V>>,
        node: &Node,
    ) -> Result<Self> {
        Self::start(topic, source, node.name().to_owned(), None).await
    }

    /// Spawns the cache actor linked to the user's `supervisor`.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] if an actor fails to start.
    pub async fn spawn_linked(
        topic: Topic<Invalidation<K>>,
        source: Arc<dyn Source<K, V>>,
        node: &Node,
        supervisor: ActorCell,
    ) -> Result<Self> {
        Self::start(topic, source, node.name().to_owned(), Some(supervisor)).await
    }

    async fn start(
        topic: Topic<Invalidation<K>>,
        source: Arc<dyn Source<K, V>>,
        node_name: String,
        supervisor: Option<ActorCell>,
    ) -> Result<Self> {
        let store = Arc::new(Store::new(source));
        let sync_counters = Arc::<SyncCounters>::default();
        let args = CacheArguments {
            store: store.clone(),
            topic,
            node_name,
            sync_counters: sync_counters.clone(),
        };
        let spawned = match supervisor {
            Some(sup) => Actor::spawn_linked(None, CacheActor::new(), args, sup).await,
            None => Actor::spawn(None, CacheActor::new(), args).await,
        };
        let (actor, _) = spawned.map_err(|e| Error::spawn("cache actor", e))?;
        Ok(Self {
            store,
            actor,
            sync_counters,
        })
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
        self.invalidate_keys(vec![(key.clone(), None)])
    }

    /// Like [`invalidate`](Self::invalidate), naming the version just committed: nodes that
    /// already hold that version or a newer one keep their entry.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub fn invalidate_version(&self, key: &K, version: Version) -> Result<()> {
        self.invalidate_keys(vec![(key.clone(), Some(version))])
    }

    /// Invalidates many keys in one message.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub fn invalidate_keys(&self, keys: Vec<(K, Option<Version>)>) -> Result<()> {
        for (key, version) in &keys {
            self.store.invalidate(key, *version);
        }
        self.send(CacheMessage::Publish(Invalidation::Keys(keys)))
    }

    /// Drops every entry here at once and tells every other node to do the same.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub fn invalidate_all(&self) -> Result<()> {
        self.store.invalidate_all();
        self.send(CacheMessage::Publish(Invalidation::All))
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
        let sync = self.sync_counters.snapshot();
        self.store.counters.snapshot(self.store.entry_count(), sync)
    }

    /// The cache actor, for supervision. Stopping it stops its Synchronization actor too.
    pub fn actor(&self) -> ActorCell {
        self.actor.get_cell()
    }

    fn send(&self, message: CacheMessage<K>) -> Result<()> {
        self.actor.cast(message).map_err(Error::stopped)
    }
}

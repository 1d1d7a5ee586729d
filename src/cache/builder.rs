//! Cache options: the consistency mode and the topic's heartbeat and lease settings.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell};

use super::actor::{CacheActor, CacheArguments, CacheKey, OnRemote};
use super::batch::Batch;
use super::entries::{Bounds, Expiry, RemovalCause};
use super::revalidation::Revalidation;
use super::store::Store;
use super::{Cache, Inner, Invalidation};
use crate::error::{Error, Result};
use crate::feed::ChangeFeed;
use crate::gate::Mode;
use crate::node::Node;
use crate::source::Source;
use crate::synchronization::SyncConfig;
use crate::topic::Topic;

/// Builds a [`Cache`] with non-default settings.
///
/// ```no_run
/// # use std::{sync::Arc, time::Duration};
/// # use ractor_cache_sync::{Cache, Mode, Node, Source, SyncConfig, Topic};
/// # async fn example(node: &Node, source: Arc<dyn Source<String, String>>) -> ractor_cache_sync::Result<()> {
/// let sync = SyncConfig::default()
///     .lease(Duration::from_millis(500))
///     .heartbeat(Duration::from_millis(100));
/// let cache: Cache<String, String> = Cache::builder(Topic::new("users"), source)
///     .mode(Mode::Bounded)
///     .sync(sync)
///     .spawn(node)
///     .await?;
/// # Ok(()) }
/// ```
pub struct CacheBuilder<K, V> {
    topic: Topic<Invalidation<K>>,
    source: Arc<dyn Source<K, V>>,
    mode: Mode,
    sync: SyncConfig,
    max_batch_keys: usize,
    coalesce: Duration,
    on_remote: Option<OnRemote<K>>,
    revalidation: Revalidation,
    bounds: Bounds<K, V>,
    expiry: [Option<Duration>; 3],
    stale_if_error: Option<Duration>,
    feed: Option<Box<dyn ChangeFeed<K>>>,
}

impl<K, V> std::fmt::Debug for CacheBuilder<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let limits = self.bounds.limits;
        f.debug_struct("CacheBuilder")
            .field("topic", &self.topic)
            .field("mode", &self.mode)
            .field("sync", &self.sync)
            .field("max_batch_keys", &self.max_batch_keys)
            .field("coalesce", &self.coalesce)
            .field("revalidation", &self.revalidation)
            .field("max_entries", &limits.entries)
            .field("max_weight", &limits.weight)
            .field("expiry", &self.expiry)
            .field("stale_if_error", &self.stale_if_error)
            .field("change_feed", &self.feed.is_some())
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> CacheBuilder<K, V> {
    pub(crate) fn new(topic: Topic<Invalidation<K>>, source: Arc<dyn Source<K, V>>) -> Self {
        Self {
            topic,
            source,
            mode: Mode::default(),
            sync: SyncConfig::default(),
            max_batch_keys: 65_536,
            coalesce: Duration::from_millis(1),
            on_remote: None,
            revalidation: Revalidation::default(),
            bounds: Bounds::default(),
            expiry: [None; 3],
            stale_if_error: None,
            feed: None,
        }
    }

    /// Most entries the cache holds (keys cached as absent included); past it, the eviction
    /// policy (S3-FIFO: scan resistant, see `docs/semantics.md`) makes room for each new one.
    /// The bound holds at all times but for the one entry an install is putting in. Unbounded
    /// by default; at least 1.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.bounds.limits.entries = Some(entries);
        self
    }

    /// How much each entry weighs against [`max_weight`](Self::max_weight) (e.g. its bytes).
    /// A key cached as absent weighs 1.
    pub fn weigher(mut self, weigher: impl Fn(&K, &V) -> u32 + Send + Sync + 'static) -> Self {
        self.bounds.weigher = Some(Arc::new(weigher));
        self
    }

    /// Most total [weight](Self::weigher) the cache holds, within one entry's weight while an
    /// install puts it in; a value heavier than this is returned to its reader and not
    /// cached. Needs a weigher; at least 1. Unbounded by default.
    pub fn max_weight(mut self, units: u64) -> Self {
        self.bounds.limits.weight = Some(units);
        self
    }

    /// An entry is not served once this long has passed since the load that brought it
    /// started; the next read loads it again. Off by default; 1 ms to 30 days.
    pub fn time_to_live(mut self, ttl: Duration) -> Self {
        self.expiry[0] = Some(ttl);
        self
    }

    /// An entry is not served once it has not been read for this long (to 1/64 of it). Off by
    /// default; 1 ms to 30 days.
    pub fn time_to_idle(mut self, tti: Duration) -> Self {
        self.expiry[1] = Some(tti);
        self
    }

    /// A read of an entry older than this (since its load started) is served from the heap
    /// and reloads the key in the background, once per this interval, through the cache's
    /// reloader (single flight; an invalidation meanwhile keeps its answer out). Off by
    /// default; 1 ms to 30 days.
    pub fn refresh_after(mut self, after: Duration) -> Self {
        self.expiry[2] = Some(after);
        self
    }

    /// Caches "the source has no such key" too, so that reads of missing keys stop reaching
    /// the source. Such an entry is dropped by every invalidation of its key, whatever the
    /// version (any of them may be its creation), and checked like any other by
    /// revalidation. Off by default.
    pub fn cache_absent(mut self, absent: bool) -> Self {
        self.bounds.absent = absent;
        self
    }

    /// Calls `listener` with every value that leaves the cache and why ([`RemovalCause`]),
    /// with no lock of the cache held. It runs on the task that removed the entry (a reader,
    /// an invalidation, the Synchronization actor): keep it short.
    pub fn removal_listener(
        mut self,
        listener: impl Fn(&K, &V, RemovalCause) + Send + Sync + 'static,
    ) -> Self {
        self.bounds.listener = Some(Arc::new(listener));
        self
    }

    /// The consistency mode. Default [`Mode::Bounded`].
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The topic's heartbeat, lease (the staleness bound), forgetting and backlog settings.
    /// Default [`SyncConfig::default`]; each setting's doc states its default and bounds.
    pub fn sync(mut self, config: SyncConfig) -> Self {
        self.sync = config;
        self
    }

    /// Most keys one coalesced invalidation carries; a larger batch goes out as an
    /// `invalidate_all` instead (peers then reload what they need). Default 65 536 (an envelope
    /// of under 1 MiB for short keys); at least 1.
    pub fn max_batch_keys(mut self, keys: usize) -> Self {
        self.max_batch_keys = keys;
        self
    }

    /// Coalescing window: in a burst, at most one envelope per window carries every key
    /// invalidated meanwhile; an invalidation after a quiet window goes out at once, so this is
    /// the most latency coalescing adds. Default 1 ms; `Duration::ZERO` turns it off (batches
    /// then form only while the previous envelope is being sent); at most 1 s.
    pub fn coalesce_window(mut self, window: Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// Calls `hook` with every invalidation from another node once it has been applied here
    /// (the keys are gone from this node's heap), and with [`Invalidation::All`] after every
    /// repair: to drop data derived from cached values, notify clients, or observe
    /// propagation. It runs in the topic's Synchronization actor before the next message is
    /// handled: keep it short and non-blocking (send to a channel or an actor); while it runs,
    /// this node also holds back the heartbeats it received for the topic.
    pub fn on_remote_invalidation(
        mut self,
        hook: impl Fn(&Invalidation<K>) + Send + Sync + 'static,
    ) -> Self {
        self.on_remote = Some(Arc::new(hook));
        self
    }

    /// Checks every entry's version against the source this often, even while every lease is
    /// valid: a change made straight in the source (a migration, another service, a SQL
    /// session — anything that does not invalidate through a cache of this topic) is then
    /// served for at most this long plus one check. Off by default; at least 1 ms.
    pub fn revalidate_every(mut self, every: Duration) -> Self {
        self.revalidation.every = Some(every);
        self
    }

    /// Keys per bulk call: each version check ([`Source::versions`]) when the cache
    /// revalidates its entries, and each bulk reload ([`Source::load_many`]) of invalidated
    /// keys. Default 1 000; at least 1.
    pub fn revalidation_chunk(mut self, keys: usize) -> Self {
        self.revalidation.chunk = keys;
        self
    }

    /// Most entries one revalidation pass checks; past that, the entries it does not reach are
    /// dropped (a read loads them again, verified by that load), so a pass costs at most
    /// `budget / chunk` source calls. Default 100 000; at least 1.
    pub fn revalidation_budget(mut self, entries: usize) -> Self {
        self.revalidation.budget = entries;
        self
    }

    /// Most bulk reloads ([`Source::load_many`], one chunk each) of invalidated keys running at
    /// once: an invalidation storm never runs more source calls than this for reloading (reads
    /// that miss load on their own, one load per key). Default 1; at least 1.
    pub fn max_reload_calls(mut self, calls: usize) -> Self {
        self.revalidation.reload_calls = calls;
        self
    }

    /// Serve stale on source error, boundedly: when a load fails (the source is down), a read
    /// is answered with the cached entry if its last check against the source is at most `max`
    /// old, whatever the leases say, instead of with the error. Such answers are counted
    /// (`stale_served`) and marked ([`Lookup::stale`](crate::cache::Lookup::stale)). **This
    /// trades the staleness bound for availability while the source fails**: a value up to
    /// `max` old may be served, plus however long a write's invalidation took. It applies to
    /// [`get`](crate::Cache::get) and [`lookup`](crate::Cache::lookup) only: reads that
    /// promise more ([`get_after`](crate::Cache::get_after),
    /// [`get_at_least`](crate::Cache::get_at_least),
    /// [`get_within`](crate::Cache::get_within)) fail instead. Off by default; at most 30 days.
    pub fn stale_if_error(mut self, max: Duration) -> Self {
        self.stale_if_error = Some(max);
        self
    }

    /// The source's change feed (see [`ChangeFeed`]): the cache applies the changes it
    /// reports, and while its last barrier is less than a lease old, the source vouches for
    /// every entry — writes made outside the application and by nodes this one never heard of
    /// included — whatever the peers' state. Peers' invalidations still arrive as before (one
    /// network hop, usually faster than the feed).
    pub fn change_feed(mut self, feed: impl ChangeFeed<K>) -> Self {
        self.feed = Some(Box::new(feed));
        self
    }

    /// Spawns the cache (and its topic's Synchronization actor) on `node`, unsupervised.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings; [`Error::Spawn`] if an actor fails to start.
    pub async fn spawn(self, node: &Node) -> Result<Cache<K, V>> {
        self.start(node, None).await
    }

    /// Spawns the cache actor linked to the user's `supervisor`.
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_linked(self, node: &Node, supervisor: ActorCell) -> Result<Cache<K, V>> {
        self.start(node, Some(supervisor)).await
    }

    async fn start(self, node: &Node, supervisor: Option<ActorCell>) -> Result<Cache<K, V>> {
        self.sync.validate()?;
        if self.max_batch_keys == 0 {
            return Err(Error::Config("max_batch_keys must be at least 1".into()));
        }
        if self.coalesce > Duration::from_secs(1) {
            return Err(Error::Config("coalesce_window must be at most 1 s".into()));
        }
        if self.revalidation.chunk == 0
            || self.revalidation.budget == 0
            || self.revalidation.reload_calls == 0
        {
            return Err(Error::Config(
                "revalidation_chunk, revalidation_budget and max_reload_calls must be at least 1"
                    .into(),
            ));
        }
        if let Some(every) = self.revalidation.every {
            if every < Duration::from_millis(1) {
                return Err(Error::Config(
                    "revalidate_every must be at least 1 ms".into(),
                ));
            }
            crate::clock::at_most_30_days("revalidate_every", every)?;
        }
        if let Some(max) = self.stale_if_error {
            crate::clock::at_most_30_days("stale_if_error", max)?;
        }
        let bounds = self.checked_bounds()?;
        let sweep = bounds.expiry;
        // The topic's lease gate knows the lease before the cache exists (its actor publishes
        // the same value again whenever it starts).
        let sync = Arc::<crate::synchronization::SyncShared>::default();
        self.sync.configure(&sync.gate);
        let mut store = Store::new(self.source, self.mode, sync, node.member_gate(), bounds);
        if self.feed.is_some() {
            store.rule().feed.attach(store.rule().lease_us());
        }
        store.stale_if_error = self.stale_if_error.map_or(0, |max| {
            u64::try_from(max.as_micros()).unwrap_or(u64::MAX).max(1)
        });
        let batch = Batch::new(self.max_batch_keys, self.coalesce);
        let inner = Arc::new(Inner::new(self.topic, store, batch));
        let args = CacheArguments {
            cache: inner.clone(),
            node_name: node.name().to_owned(),
            sync_config: self.sync,
            on_remote: self.on_remote,
        };
        let spawned = match supervisor {
            Some(sup) => Actor::spawn_linked(None, CacheActor::new(), args, sup).await,
            None => Actor::spawn(None, CacheActor::new(), args).await,
        };
        spawned.map_err(|e| Error::spawn("cache actor", e))?;
        let cache = Cache { inner };
        tokio::spawn(super::metrics::report_cache(cache.clone()));
        tokio::spawn(super::reloader::run(
            Arc::downgrade(&cache.inner),
            self.revalidation.chunk,
            self.revalidation.reload_calls,
        ));
        if let Some(feed) = self.feed {
            tokio::spawn(super::feed::run(Arc::downgrade(&cache.inner), feed));
        }
        tokio::spawn(super::revalidation::run(
            Arc::downgrade(&cache.inner),
            self.revalidation,
            sweep.on().then(|| sweep.sweep_every()),
        ));
        Ok(cache)
    }

    /// The bound and expiry settings, checked.
    fn checked_bounds(&self) -> Result<Bounds<K, V>> {
        let limits = self.bounds.limits;
        if limits.entries == Some(0) || limits.weight == Some(0) {
            return Err(Error::Config(
                "max_capacity and max_weight must be at least 1".into(),
            ));
        }
        if limits.weight.is_some() && self.bounds.weigher.is_none() {
            return Err(Error::Config(
                "max_weight needs a weigher (without one, use max_capacity)".into(),
            ));
        }
        let names = ["time_to_live", "time_to_idle", "refresh_after"];
        for (name, setting) in names.iter().zip(self.expiry) {
            if let Some(setting) = setting {
                if setting < Duration::from_millis(1) {
                    return Err(Error::Config(format!("{name} must be at least 1 ms")));
                }
                crate::clock::at_most_30_days(name, setting)?;
            }
        }
        let mut bounds = self.bounds.clone();
        bounds.expiry = Expiry {
            ttl: Expiry::us(self.expiry[0]),
            tti: Expiry::us(self.expiry[1]),
            refresh: Expiry::us(self.expiry[2]),
        };
        Ok(bounds)
    }
}

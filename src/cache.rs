//! Caches: a node-local map kept in sync with the same topic's caches on every node.
//!
//! [`Cache`] is the handle (cheap to clone; reads never wait on a mailbox), [`CacheBuilder`]
//! its settings, [`Mode`] which rule it serves by. What a read returns ([`Lookup`]), what a
//! cache counts ([`CacheStats`]), why an entry left ([`RemovalCause`]), what travels between
//! nodes ([`Invalidation`]), what a key must be ([`CacheKey`]) and what a source's change feed
//! reports ([`ChangeFeed`], [`FeedEvent`], [`Stamp`]) live here too.

mod actor;
mod batch;
mod builder;
mod entries;
mod feed;
mod flights;
mod invalidation;
mod metrics;
mod policy;
mod reloader;
mod revalidation;
mod stats;
mod store;
mod token;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use ractor::{ActorCell, ActorRef, ActorStatus};

pub use self::actor::CacheKey;
use self::actor::CacheMessage;
use self::batch::{Added, Batch};
pub use self::builder::CacheBuilder;
pub use self::entries::RemovalCause;
pub use self::invalidation::Invalidation;
pub use self::stats::CacheStats;
pub use self::store::Lookup;
use self::store::Store;
pub use self::token::{BadToken, WriteToken};
use crate::clock::now_us;
use crate::counter::{add, bump};
use crate::error::{Error, Result};
pub use crate::feed::{ChangeFeed, FeedEvent, Stamp};
pub use crate::gate::Mode;
use crate::health::Health;
use crate::node::Node;
use crate::source::{Source, Version};
use crate::synchronization::{Confirmation, Synchronization};
use crate::topic::Topic;

/// A node-local cache of `K → V`, kept in sync with the caches of the same topic on every
/// other node.
///
/// Cloneable and cheap to clone; every clone reads the same entries. Reads on a hit touch
/// only a concurrent map (no actor message, no await); a miss loads from the [`Source`] once
/// per key however many tasks ask at the same time.
pub struct Cache<K, V> {
    inner: Arc<Inner<K, V>>,
}

/// What every handle of one cache, its actor and its Synchronization actor's hooks share.
pub(crate) struct Inner<K, V> {
    /// The topic the cache's invalidations travel on.
    topic: Topic<Invalidation<K>>,
    /// Entries, in-flight loads, the topic's lease gate and the counters.
    store: Store<K, V>,
    /// Local invalidations not yet published (coalescing).
    batch: Batch<K>,
    /// The topic's Synchronization handle, the one way to it: set by the cache actor each
    /// time it spawns one (again after a failure); `None` until the first is up.
    sync: RwLock<Option<Synchronization<Invalidation<K>>>>,
    /// The cache actor, set when it starts: it runs the coalescing window's timer and
    /// restarts the Synchronization actor.
    actor: OnceLock<ActorRef<CacheMessage>>,
}

impl<K, V> Clone for Cache<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("topic", &self.inner.topic)
            .field("mode", &self.inner.store.rule().mode())
            .finish_non_exhaustive()
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Cache<K, V> {
    /// Spawns the cache actor (and its topic's Synchronization actor) on `node`, with the
    /// default settings ([`Mode::Bounded`], 1 s lease, 200 ms heartbeat). `source` is your
    /// [`Source`], an `Arc` of it, or an `Arc<dyn Source<K, V>>`.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] if an actor fails to start.
    pub async fn spawn(
        topic: Topic<Invalidation<K>>,
        source: impl Source<K, V>,
        node: &Node,
    ) -> Result<Self> {
        Self::builder(topic, source).spawn(node).await
    }

    /// Starts building a cache with non-default settings.
    pub fn builder(topic: Topic<Invalidation<K>>, source: impl Source<K, V>) -> CacheBuilder<K, V> {
        CacheBuilder::new(topic, Arc::new(source))
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
        self.inner.store.peek(key)
    }

    /// Like [`get`](Self::get), with the value's version, whether it was a hit, and how old
    /// the guarantee behind it is ([`Lookup`]).
    ///
    /// # Errors
    ///
    /// [`Error::Source`] if the load failed; nothing is cached then.
    pub async fn lookup(&self, key: &K) -> Result<Lookup<V>> {
        self.inner.store.lookup(key).await
    }

    /// `key` at `version` or newer: from the heap if the entry holds such a version (a key
    /// cached as absent never does), else from one load shared with the other readers whose
    /// load started after this call. The caller's own committed write, say, which this node
    /// has not heard of yet: the answer reflects it once the source does. If the source
    /// answers with an older version (a lagging replica), that answer is returned: compare.
    ///
    /// # Errors
    ///
    /// [`Error::Source`] if the load failed; [`Error::Timeout`] if it took longer than
    /// `deadline` (it goes on for the readers that share it).
    pub async fn get_at_least(
        &self,
        key: &K,
        version: Version,
        deadline: Duration,
    ) -> Result<Lookup<V>> {
        let read = self.inner.store.lookup_at_least(key, version);
        tokio::time::timeout(deadline, read)
            .await
            .map_err(|_| Error::Timeout(deadline))?
    }

    /// `key`, from the heap only if what vouches for the entry (the peers' leases, or its last
    /// check against the source) is at most `max_age` old, else from a load that started at
    /// most `max_age` ago: a per-read staleness budget. Tighter than the lease in
    /// [`Mode::Bounded`] (where the lease rule applies too); in [`Mode::Eventual`] it is the
    /// only rule, so it may be looser. [`Lookup::age`] says how old the guarantee was.
    ///
    /// # Errors
    ///
    /// [`Error::Source`] if the load failed.
    pub async fn get_within(&self, key: &K, max_age: Duration) -> Result<Lookup<V>> {
        let max_age = u64::try_from(max_age.as_micros()).unwrap_or(u64::MAX);
        self.inner.store.lookup_within(key, max_age).await
    }

    /// Drops `key` here at once and tells every other node to drop it. Call it right after
    /// committing the change to the source of truth.
    ///
    /// Nothing runs it for you if the caller's future is dropped between the commit and this
    /// call (an HTTP handler whose client disconnected, a timeout layer): the change is then
    /// committed and no node hears of it. Where that can happen, commit through
    /// [`write`](Self::write) instead.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the cache actor has stopped: the local entry is dropped
    /// anyway, but no other node is told.
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

    /// Runs `commit` (your write to the source of truth, returning what the caller needs and
    /// the version it committed, if known) and then invalidates `key` here and on every other
    /// node — both on a task of their own, so that dropping the returned future (an HTTP
    /// handler whose client disconnected, a timeout layer, a `select!`) cannot separate them.
    ///
    /// The invalidation runs whatever the commit's outcome: after an `Ok`, with its version;
    /// after an `Err`, a panic or a cancellation of the task (the runtime shutting down), with
    /// no version, since a commit may land before it reports failing (a connection lost
    /// during `COMMIT`). Dropping the returned future before it is first polled runs nothing.
    ///
    /// ```no_run
    /// # use ractor_cache_sync::{Cache, Version};
    /// # async fn rename(id: u64, name: String) -> Result<Version, ractor_cache_sync::Error> { Ok(1) }
    /// # async fn handler(users: Cache<u64, String>) -> ractor_cache_sync::Result<()> {
    /// let version = users
    ///     .write(7, async move {
    ///         let version = rename(7, "ada".into()).await?; // UPDATE ... RETURNING version
    ///         Ok((version, Some(version)))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The commit's error; or, **after a commit that succeeded**, the invalidation's converted
    /// into `E`: [`Error::ActorStopped`] when the cache actor has stopped (as
    /// [`invalidate`](Self::invalidate): the local entry is dropped, no other node is told).
    /// The change is in the source then: do not retry a write that is not idempotent on this
    /// error. [`Error::ActorStopped`] as `E` too if the runtime ended the task (the commit may
    /// or may not have run; the invalidation has).
    ///
    /// # Panics
    ///
    /// If `commit` panics (after the invalidation has run).
    pub async fn write<T, E, F>(&self, key: K, commit: F) -> std::result::Result<T, E>
    where
        F: Future<Output = std::result::Result<(T, Option<Version>), E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        Ok(self.write_and(key, commit, false).await?.0)
    }

    /// Like [`write`](Self::write), with the [`WriteToken`] of what the write published: hand
    /// it to the client (a response header, a cookie) and a later read on any node can wait
    /// for it ([`get_after`](Self::get_after)). The invalidation goes out at once, without
    /// waiting for the coalescing window.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write); and, **after a commit that succeeded**,
    /// [`Error::ActorStopped`] if the topic's Synchronization actor is being restarted: the
    /// invalidation goes out with the next actor, but no token can name it. Do not retry a
    /// write that is not idempotent on it; answer without a token.
    ///
    /// # Panics
    ///
    /// As [`write`](Self::write).
    pub async fn write_with_token<T, E, F>(
        &self,
        key: K,
        commit: F,
    ) -> std::result::Result<(T, WriteToken), E>
    where
        F: Future<Output = std::result::Result<(T, Option<Version>), E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (value, token) = self.write_and(key, commit, true).await?;
        let token = token.ok_or_else(|| Error::stopped("synchronization actor"))?;
        Ok((value, token))
    }

    /// Like [`write`](Self::write), and this node keeps what the writer committed: `commit`
    /// returns the new value and its version too, and the cache installs them here (the
    /// writer's next read is a hit, not a reload) while every other node is told to drop
    /// older versions. The value is kept out if an invalidation or a repair of the key arrives
    /// while the commit runs (a newer write elsewhere wins), or if the commit fails.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    ///
    /// # Panics
    ///
    /// As [`write`](Self::write).
    pub async fn write_through<T, E, F>(&self, key: K, commit: F) -> std::result::Result<T, E>
    where
        F: Future<Output = std::result::Result<(T, V, Version), E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        Ok(self.write_through_and(key, commit, false).await?.0)
    }

    /// [`write_through`](Self::write_through) and [`write_with_token`](Self::write_with_token)
    /// at once: the writer's node keeps the value, and the token names the write for reads on
    /// other nodes.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write).
    ///
    /// # Panics
    ///
    /// As [`write`](Self::write).
    pub async fn write_through_with_token<T, E, F>(
        &self,
        key: K,
        commit: F,
    ) -> std::result::Result<(T, WriteToken), E>
    where
        F: Future<Output = std::result::Result<(T, V, Version), E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (value, token) = self.write_through_and(key, commit, true).await?;
        let token = token.ok_or_else(|| Error::stopped("synchronization actor"))?;
        Ok((value, token))
    }

    async fn write_through_and<T, E, F>(
        &self,
        key: K,
        commit: F,
        with_token: bool,
    ) -> std::result::Result<(T, Option<WriteToken>), E>
    where
        F: Future<Output = std::result::Result<(T, V, Version), E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let store_key = key.clone();
        let cache = self.clone();
        let commit = async move {
            let mut writing = Writing {
                cache: &cache,
                key: &store_key,
                flight: Some(cache.inner.store.start_write(&store_key)),
            };
            let (value, written, version) = commit.await?;
            if let Some(flight) = writing.flight.take() {
                let store = &cache.inner.store;
                store.finish_write(&store_key, &flight, Some((&written, version)));
            }
            Ok::<_, E>((value, Some(version)))
        };
        self.write_and(key, commit, with_token).await
    }

    async fn write_and<T, E, F>(
        &self,
        key: K,
        commit: F,
        with_token: bool,
    ) -> std::result::Result<(T, Option<WriteToken>), E>
    where
        F: Future<Output = std::result::Result<(T, Option<Version>), E>> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let mut pending = PendingInvalidation {
            cache: self.clone(),
            key: Some(key),
        };
        let task = tokio::spawn(async move {
            let committed = commit.await;
            let key = pending.key.take().expect("taken once, here");
            let version = committed.as_ref().map_or(None, |(_, version)| *version);
            let invalidated = pending.cache.invalidate_one(&key, version);
            let (value, _) = committed?;
            invalidated?;
            let token = if with_token {
                Some(pending.cache.token_now()?)
            } else {
                None
            };
            Ok((value, token))
        });
        match task.await {
            Ok(written) => written,
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => Err(Error::stopped_by("write task", error).into()),
        }
    }

    /// Like [`invalidate_version`](Self::invalidate_version) (with `version` if known), with
    /// the [`WriteToken`] of what it published; the invalidation goes out at once.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate); also [`Error::ActorStopped`] if no
    /// Synchronization actor is running (the invalidation waits for the next one, and no
    /// token can name it).
    pub fn invalidate_with_token(&self, key: &K, version: Option<Version>) -> Result<WriteToken> {
        self.invalidate_one(key, version)?;
        self.token_now()
    }

    /// Publishes what waits in the coalescing batch now, and names everything this node has
    /// published on the topic so far.
    fn token_now(&self) -> Result<WriteToken> {
        // Drained under the batch's lock: whoever drained our key earlier has numbered it.
        if !self.inner.publish_batch() {
            return Err(Error::stopped("synchronization actor"));
        }
        let (origin, incarnation, seq) = self
            .inner
            .with_sync(Synchronization::published_through)
            .ok_or_else(|| Error::stopped("synchronization actor"))?;
        Ok(WriteToken::new(
            self.inner.topic.name(),
            &origin,
            incarnation,
            seq,
        ))
    }

    /// `key`, once this node has applied every write `token` names (or a repair covered it):
    /// typically one network hop after the write, without a source load when the entry was
    /// reloaded meanwhile. Writes of this node are applied here already. A token of another
    /// topic is an error; a forged or unknown one makes the call wait for `deadline`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a token of another topic; [`Error::Timeout`] if `deadline`
    /// passes first — then read the source if you must have the write
    /// ([`get_within`](Self::get_within) with zero, or [`get_at_least`](Self::get_at_least)),
    /// or fail the request; [`Error::Source`] if the load failed.
    pub async fn get_after(
        &self,
        token: &WriteToken,
        key: &K,
        deadline: Duration,
    ) -> Result<Lookup<V>> {
        if token.topic() != self.inner.topic.name() {
            return Err(Error::Config(format!(
                "a write token of topic {:?} read on topic {:?}",
                token.topic(),
                self.inner.topic.name()
            )));
        }
        let shared = self.inner.store.sync();
        let covered = || {
            token.writes.iter().all(|(origin, incarnation, seq)| {
                let mine = self.inner.with_sync(|sync| sync.node_name() == origin);
                mine == Some(true) || shared.covers(origin, *incarnation, *seq)
            })
        };
        if !covered() {
            let applied = async {
                loop {
                    let changed = shared.applied_changed.notified();
                    tokio::pin!(changed);
                    changed.as_mut().enable();
                    if covered() {
                        return;
                    }
                    changed.await;
                }
            };
            tokio::time::timeout(deadline, applied)
                .await
                .map_err(|_| Error::Timeout(deadline))?;
        }
        // Never stale-if-error here: a read after a token promises that write or newer.
        self.inner.store.lookup_with(key, false).await
    }

    /// One key, without building a list.
    fn invalidate_one(&self, key: &K, version: Option<Version>) -> Result<()> {
        self.inner
            .store
            .invalidate(key, version, RemovalCause::Invalidated);
        bump(&self.inner.store.counters.invalidations_sent);
        let added = self.inner.batch.add(now_us, [(key.clone(), version)]);
        self.inner.added(added)
    }

    /// Like [`invalidate_version`](Self::invalidate_version) (with `version` if known), then
    /// waits until every peer known now has applied it (about one heartbeat) or `timeout`
    /// passes (`Duration::MAX`: no limit), and says which peers did. The invalidation is
    /// published from the caller's task before the call waits, as by `invalidate`: a caller
    /// dropped while it waits (a timeout layer, a disconnected client) has published it all
    /// the same.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the cache actor or its Synchronization actor has stopped
    /// (nothing was published); [`Error::Timeout`] if the Synchronization actor did not answer
    /// in time. The local entry is dropped in every case.
    pub async fn invalidate_confirmed(
        &self,
        key: &K,
        version: Option<Version>,
        timeout: Duration,
    ) -> Result<Confirmation> {
        self.inner
            .store
            .invalidate(key, version, RemovalCause::Invalidated);
        self.inner.ensure_running()?;
        let sync = self
            .inner
            .with_sync(Synchronization::clone)
            .ok_or_else(|| Error::stopped("synchronization actor"))?;
        let invalidation = Invalidation::Keys(vec![(key.clone(), version)]);
        let confirmation = sync.publish_confirmed(&invalidation, timeout).await?;
        bump(&self.inner.store.counters.invalidations_sent);
        Ok(confirmation)
    }

    /// Invalidates many keys in one message.
    ///
    /// Invalidations are coalesced: a lone invalidation goes out at once; in a burst, all keys
    /// invalidated within the coalescing window (default 1 ms) travel together in one envelope,
    /// each key once; past the batch cap the batch becomes an `invalidate_all`.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub fn invalidate_keys(&self, keys: Vec<(K, Option<Version>)>) -> Result<()> {
        for (key, version) in &keys {
            self.inner
                .store
                .invalidate(key, *version, RemovalCause::Invalidated);
        }
        add(
            &self.inner.store.counters.invalidations_sent,
            keys.len() as u64,
        );
        let added = self.inner.batch.add(now_us, keys);
        self.inner.added(added)
    }

    /// Drops every entry here at once and tells every other node to do the same.
    ///
    /// # Errors
    ///
    /// As [`invalidate`](Self::invalidate).
    pub fn invalidate_all(&self) -> Result<()> {
        self.inner.store.invalidate_all(RemovalCause::Invalidated);
        bump(&self.inner.store.counters.invalidations_sent);
        let added = self.inner.batch.add_all(now_us);
        self.inner.added(added)
    }

    /// Casts `bytes` unchanged to every remote member of the cache's topic, as if they were an
    /// envelope: a fault-injection tool to check how peers handle garbage.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if no Synchronization actor is running.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn send_raw(&self, bytes: Vec<u8>) -> Result<()> {
        self.inner
            .with_sync(|sync| sync.send_raw(bytes))
            .unwrap_or_else(|| Err(Error::stopped("synchronization actor")))
    }

    /// Makes the cache's Synchronization actor forge a heartbeat under `origin`'s name and
    /// `incarnation` after each of its own (fault injection; see
    /// `Synchronization::impersonate`).
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if no Synchronization actor is running.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn impersonate(&self, origin: &str, incarnation: u64) -> Result<()> {
        self.inner
            .with_sync(|sync| sync.impersonate(origin, incarnation))
            .unwrap_or_else(|| Err(Error::stopped("synchronization actor")))
    }

    /// The current Synchronization actor's incarnation (fault injection: what a forger needs).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn topic_incarnation(&self) -> Option<u64> {
        self.inner.with_sync(Synchronization::incarnation)
    }

    /// Number of entries held in this node's heap (keys cached as absent included).
    pub fn entry_count(&self) -> usize {
        self.inner.store.entry_count()
    }

    /// Total weight of the entries held, in the [weigher](CacheBuilder::weigher)'s units; the
    /// entry count for a cache bounded by [`max_capacity`](CacheBuilder::max_capacity) alone;
    /// 0 for an unbounded cache without a weigher.
    pub fn weighted_size(&self) -> u64 {
        self.inner.store.weighted_size()
    }

    /// Counters since the cache was spawned.
    pub fn stats(&self) -> CacheStats {
        let store = &self.inner.store;
        let sync = store.sync().counters.snapshot();
        store
            .counters
            .snapshot(store.entry_count(), store.weighted_size(), sync)
    }

    /// Whether the cache can serve from its heap now. In [`Mode::Eventual`] a cache serves
    /// from its heap even while this says [`Health::Bypassing`].
    pub fn health(&self) -> Health {
        self.inner.store.health(now_us())
    }

    /// The consistency mode.
    pub fn mode(&self) -> Mode {
        self.inner.store.rule().mode()
    }

    /// The topic the cache's invalidations travel on.
    pub fn topic(&self) -> &Topic<Invalidation<K>> {
        &self.inner.topic
    }

    /// The cache's current Synchronization actor (it changes when the cache actor restarts it
    /// after a failure), for monitoring and fault injection.
    pub fn synchronization_actor(&self) -> Option<ActorCell> {
        self.inner.with_sync(Synchronization::actor)
    }

    /// The cache actor, for supervision. Stopping it stops its Synchronization actor too.
    pub fn actor(&self) -> ActorCell {
        self.inner.actor().get_cell()
    }
}

/// A write's invalidation not yet run: the drop runs it (with no version) if the write's task
/// unwinds or is cancelled before it gets there.
struct PendingInvalidation<K: CacheKey, V: Clone + Send + Sync + 'static> {
    cache: Cache<K, V>,
    key: Option<K>,
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Drop for PendingInvalidation<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            if let Err(error) = self.cache.invalidate_one(&key, None) {
                tracing::warn!(%error, "a write ended early; its key was dropped here only");
            }
        }
    }
}

/// A write's flight not yet finished: the drop ends it without installing anything (the
/// commit failed, panicked or was cancelled), so that it neither lingers nor installs.
struct Writing<'a, K: CacheKey, V: Clone + Send + Sync + 'static> {
    cache: &'a Cache<K, V>,
    key: &'a K,
    flight: Option<Arc<self::flights::Flight<V>>>,
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Drop for Writing<'_, K, V> {
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            self.cache.inner.store.finish_write(self.key, &flight, None);
        }
    }
}

/// The last handle is gone: the reloader, asleep until keys arrive, wakes to see it and ends.
impl<K, V> Drop for Inner<K, V> {
    fn drop(&mut self) {
        self.store.reloads.wake_to_end();
    }
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Inner<K, V> {
    pub(crate) fn new(topic: Topic<Invalidation<K>>, store: Store<K, V>, batch: Batch<K>) -> Self {
        Self {
            topic,
            store,
            batch,
            sync: RwLock::new(None),
            actor: OnceLock::new(),
        }
    }

    /// Queues `keys` for the reloader (each once; what does not fit loads on its next read).
    pub(crate) fn reload(&self, keys: Vec<K>) {
        self.store.queue_reload(keys);
    }

    /// Called once by the cache actor when it starts.
    pub(crate) fn set_actor(&self, actor: ActorRef<CacheMessage>) {
        let _ = self.actor.set(actor);
    }

    /// Called by the cache actor each time it spawns a Synchronization actor.
    pub(crate) fn set_sync(&self, sync: Synchronization<Invalidation<K>>) {
        *self.sync.write().unwrap_or_else(|e| e.into_inner()) = Some(sync);
    }

    fn actor(&self) -> &ActorRef<CacheMessage> {
        self.actor
            .get()
            .expect("set before the cache is handed out")
    }

    /// Does what adding to the batch asked for. A lone invalidation (or a full batch) is
    /// published from this task; in a burst the cache actor publishes the batch when the
    /// window ends. While its Synchronization actor is being restarted, the batch waits for
    /// the new one.
    fn added(&self, added: Added) -> Result<()> {
        self.ensure_running()?;
        match added {
            Added::Now => {
                self.publish_batch();
            }
            Added::Later(delay) => self
                .actor()
                .cast(CacheMessage::DrainAfter(delay))
                .map_err(|e| Error::stopped_by("cache actor", e))?,
            Added::Queued => {}
        }
        Ok(())
    }

    /// Publishes the batch through the current Synchronization handle, if there is one
    /// running; whether nothing is left waiting.
    pub(crate) fn publish_batch(&self) -> bool {
        self.batch.drain(now_us(), |message| {
            self.with_sync(|sync| publish(sync, message))
                .unwrap_or(false)
        })
    }

    fn ensure_running(&self) -> Result<()> {
        match self.actor().get_status() {
            ActorStatus::Stopping | ActorStatus::Stopped => Err(Error::stopped("cache actor")),
            _ => Ok(()),
        }
    }

    /// Runs `f` with the current Synchronization handle; `None` while there is none.
    fn with_sync<T>(&self, f: impl FnOnce(&Synchronization<Invalidation<K>>) -> T) -> Option<T> {
        let slot = self.sync.read().unwrap_or_else(|e| e.into_inner());
        slot.as_ref().map(f)
    }
}

/// Publishes one batch; says whether it went out. One that cannot be encoded (a key type
/// whose serialisation fails) goes out as "invalidate everything" instead: never lost.
fn publish<K: CacheKey>(
    sync: &Synchronization<Invalidation<K>>,
    message: &Invalidation<K>,
) -> bool {
    match sync.publish(message) {
        Ok(()) => true,
        Err(Error::Encode(error)) => {
            tracing::error!(%error, "invalidation not encoded: invalidating everything instead");
            sync.publish(&Invalidation::All).is_ok()
        }
        Err(_) => false,
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
            // No heartbeat (which publishes what waits) within the window, even on a slow machine.
            .sync(
                crate::synchronization::SyncConfig::default()
                    .heartbeat(Duration::from_secs(10))
                    .lease(Duration::from_secs(30)),
            )
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
            !cache.inner.batch.is_empty(),
            "the key did not wait for the window"
        );
        assert_eq!(cache.stats().sync.published, 1);

        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cache.inner.batch.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            cache.inner.batch.is_empty(),
            "the waiting key was never published"
        );
        assert_eq!(cache.stats().sync.published, 2);
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invalidating_after_the_cache_actor_stopped_drops_locally_and_says_so() {
        let node = Node::start(NodeConfig::new(
            "stopped",
            "stopped-cookie-0123456789abcdef",
        ))
        .await
        .unwrap();
        let cache: Cache<u32, u32> = Cache::builder(Topic::new("stopped-cache"), Constant)
            .mode(Mode::Eventual)
            .spawn(&node)
            .await
            .unwrap();
        cache.get(&1).await.unwrap();
        cache.get(&2).await.unwrap();
        assert_eq!(cache.entry_count(), 2);
        let published = cache.stats().sync.published;
        cache
            .actor()
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();

        let stopped = |r: Result<()>| matches!(r, Err(Error::ActorStopped { .. }));
        assert!(stopped(cache.invalidate(&1)), "invalidate said Ok");
        assert_eq!(cache.entry_count(), 1, "the local entry stays dropped");
        assert!(stopped(cache.invalidate_version(&2, 9)));
        assert!(stopped(cache.invalidate_keys(vec![(3, None)])));
        assert!(stopped(cache.invalidate_all()));
        assert_eq!(cache.entry_count(), 0);
        let confirmed = cache
            .invalidate_confirmed(&4, None, Duration::from_secs(1))
            .await;
        assert!(matches!(confirmed, Err(Error::ActorStopped { .. })));
        assert_eq!(
            cache.stats().sync.published,
            published,
            "nothing was published after the stop"
        );
        node.shutdown().await;
    }

    /// A table in memory: `key → (value, version)`.
    #[derive(Clone, Default)]
    struct Table(Arc<std::sync::Mutex<std::collections::HashMap<u32, (u32, Version)>>>);

    impl Table {
        fn set(&self, key: u32, value: u32) -> Version {
            let mut rows = self.0.lock().unwrap();
            let version = rows.get(&key).map_or(1, |(_, v)| v + 1);
            rows.insert(key, (value, version));
            version
        }
    }

    #[async_trait::async_trait]
    impl Source<u32, u32> for Table {
        async fn load(&self, key: &u32) -> Result<Option<(u32, Version)>> {
            Ok(self.0.lock().unwrap().get(key).copied())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_whose_caller_is_dropped_mid_commit_still_invalidates_everywhere() {
        let node = Node::start(NodeConfig::new("writer", "writer-cookie-0123456789abcdef"))
            .await
            .unwrap();
        let table = Table::default();
        table.set(1, 10);
        let cache: Cache<u32, u32> = Cache::builder(Topic::new("cancel-safe-write"), table.clone())
            .mode(Mode::Eventual)
            .spawn(&node)
            .await
            .unwrap();
        assert_eq!(cache.get(&1).await.unwrap(), Some(10));
        let published = cache.stats().sync.published;

        // The commit waits for a lock (here: a signal) while its caller gives up.
        let (release, locked) = tokio::sync::oneshot::channel::<()>();
        let committing = table.clone();
        let write = cache.write(1, async move {
            locked.await.expect("released");
            let version = committing.set(1, 11);
            Ok::<_, Error>((version, Some(version)))
        });
        let gave_up = tokio::time::timeout(Duration::from_millis(20), write).await;
        assert!(
            gave_up.is_err(),
            "the commit cannot finish before it is released"
        );
        assert_eq!(
            cache.get(&1).await.unwrap(),
            Some(10),
            "nothing committed yet"
        );

        release.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while cache.stats().sync.published == published && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            cache.stats().sync.published,
            published + 1,
            "the commit's invalidation was never published"
        );
        assert_eq!(
            cache.get(&1).await.unwrap(),
            Some(11),
            "stale after the write"
        );
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_fails_or_panics_still_invalidates_and_reports_it() {
        let node = Node::start(NodeConfig::new(
            "failing",
            "failing-cookie-0123456789abcdef",
        ))
        .await
        .unwrap();
        let table = Table::default();
        table.set(1, 10);
        let cache: Cache<u32, u32> = Cache::builder(Topic::new("failing-write"), table.clone())
            .mode(Mode::Eventual)
            .spawn(&node)
            .await
            .unwrap();

        // An error after the row changed (a connection lost during COMMIT).
        cache.get(&1).await.unwrap();
        let committing = table.clone();
        let failed = cache
            .write(1, async move {
                committing.set(1, 11);
                Err::<(u32, Option<Version>), _>(Error::Config("lost during commit".into()))
            })
            .await;
        assert!(matches!(failed, Err(Error::Config(_))), "{failed:?}");
        assert_eq!(
            cache.get(&1).await.unwrap(),
            Some(11),
            "stale after a failed write"
        );

        // A panic after the row changed reaches the caller, after the invalidation.
        let (committing, writer) = (table.clone(), cache.clone());
        let panicked = tokio::spawn(async move {
            let commit = async move {
                committing.set(1, 12);
                panic!("the commit panicked");
            };
            writer.write::<u32, Error, _>(1, commit).await
        })
        .await
        .unwrap_err();
        assert!(panicked.is_panic());
        assert_eq!(
            cache.get(&1).await.unwrap(),
            Some(12),
            "stale after a panic"
        );

        // And a write that succeeds returns what the commit returned.
        let committing = table.clone();
        let version = cache
            .write(1, async move {
                let version = committing.set(1, 13);
                Ok::<_, Error>((version, Some(version)))
            })
            .await
            .unwrap();
        assert_eq!(version, 4);
        assert_eq!(cache.lookup(&1).await.unwrap().value, Some((13, 4)));
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cache_whose_actors_stopped_or_were_killed_serves_nothing_it_cannot_vouch_for() {
        let node = Node::start(NodeConfig::new("alone", "alone-cookie-0123456789abcdef"))
            .await
            .unwrap();
        let lease = Duration::from_millis(300);
        let sync = crate::synchronization::SyncConfig::default()
            .heartbeat(Duration::from_millis(60))
            .lease(lease);
        for (topic, kill) in [("stopped-alone", false), ("killed-alone", true)] {
            let table = Table::default();
            table.set(1, 10);
            let cache: Cache<u32, u32> = Cache::builder(Topic::new(topic), table.clone())
                .sync(sync)
                .spawn(&node)
                .await
                .unwrap();
            // Alone on its topic, the cache serves its heap.
            assert_eq!(cache.get(&1).await.unwrap(), Some(10));
            assert_eq!(cache.peek(&1), Some(10), "{topic}: alone, a hit");

            if kill {
                // Killed actors run no clean-up: only the gate's own expiry can close it.
                cache.actor().kill();
            } else {
                cache
                    .actor()
                    .stop_and_wait(None, Some(Duration::from_secs(5)))
                    .await
                    .unwrap();
            }
            // Nobody hears other nodes' invalidations for this handle any more, so a change
            // made meanwhile must be read from the source, not served from the heap.
            table.set(1, 11);
            let deadline = std::time::Instant::now() + lease * 20;
            while cache.peek(&1) == Some(10) && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // (What it serves from now on is what its checks against the source vouch for.)
            assert_ne!(
                cache.peek(&1),
                Some(10),
                "{topic}: served from a gate nobody keeps"
            );
            assert!(
                matches!(cache.health(), Health::Bypassing { ref reason } if reason.contains("Synchronization actor")),
                "{topic}: {}",
                cache.health()
            );
            assert_eq!(cache.get(&1).await.unwrap(), Some(11), "{topic}: stale");
        }
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_tokens_name_what_went_out_and_a_read_after_one_never_answers_wrong() {
        let node = Node::start(NodeConfig::new("tokens", "tokens-cookie-0123456789abcdef"))
            .await
            .unwrap();
        let table = Table::default();
        table.set(1, 10);
        let cache: Cache<u32, u32> = Cache::builder(Topic::new("tokens"), table.clone())
            .coalesce_window(Duration::from_secs(1))
            .spawn(&node)
            .await
            .unwrap();
        // In a burst (the second waits for the window), a token still names what went out.
        let first = cache.invalidate_with_token(&1, None).unwrap();
        let second = cache.invalidate_with_token(&2, None).unwrap();
        assert_eq!(cache.stats().sync.published, 2, "the token's write waited");
        let seq = |token: &WriteToken| token.writes[0].2;
        assert_eq!((seq(&first), seq(&second)), (1, 2));
        assert_eq!(second.to_string().parse::<WriteToken>().unwrap(), second);

        // This node's own writes are applied here already: no wait.
        let version = table.set(1, 11);
        let (_, token) = cache
            .write_with_token(1, async move { Ok::<_, Error>(((), Some(version))) })
            .await
            .unwrap();
        let read = cache
            .get_after(&token, &1, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(read.value, Some((11, version)));

        // Another topic's token is an error; one naming a write nobody made times out.
        let other = WriteToken::new("another", "x@h", 1, 1);
        assert!(matches!(
            cache.get_after(&other, &1, Duration::from_secs(5)).await,
            Err(Error::Config(_))
        ));
        let forged = WriteToken::new("tokens", "nobody@h", 1, 1);
        assert!(matches!(
            cache
                .get_after(&forged, &1, Duration::from_millis(50))
                .await,
            Err(Error::Timeout(_))
        ));
        node.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_writer_keeps_what_it_committed_unless_an_invalidation_came_in_between() {
        let node = Node::start(NodeConfig::new(
            "through",
            "through-cookie-0123456789abcdef",
        ))
        .await
        .unwrap();
        let table = Table::default();
        let cache: Cache<u32, u32> = Cache::builder(Topic::new("write-through"), table.clone())
            .spawn(&node)
            .await
            .unwrap();
        let loads = |cache: &Cache<u32, u32>| cache.stats().loads;

        // Source loads per write, each followed by a read on the writer's node.
        let before = loads(&cache);
        for n in 0..20 {
            let writing = table.clone();
            cache
                .write(1, async move {
                    let version = writing.set(1, n);
                    Ok::<_, Error>(((), Some(version)))
                })
                .await
                .unwrap();
            assert_eq!(cache.get(&1).await.unwrap(), Some(n));
        }
        let with_write = loads(&cache) - before;
        let before = loads(&cache);
        for n in 100..120 {
            let writing = table.clone();
            cache
                .write_through(1, async move {
                    let version = writing.set(1, n);
                    Ok::<_, Error>(((), n, version))
                })
                .await
                .unwrap();
            let read = cache.lookup(&1).await.unwrap();
            assert_eq!(read.value.map(|(v, _)| v), Some(n));
        }
        let with_write_through = loads(&cache) - before;
        assert_eq!((with_write, with_write_through), (20, 0));

        // An invalidation while the commit runs (a newer write elsewhere): the value stays out.
        let (release, locked) = tokio::sync::oneshot::channel::<()>();
        let writing = table.clone();
        let write = tokio::spawn({
            let cache = cache.clone();
            async move {
                cache
                    .write_through(1, async move {
                        locked.await.expect("released");
                        let version = writing.set(1, 200);
                        Ok::<_, Error>(((), 200, version))
                    })
                    .await
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while cache.inner.store.flights_in_progress() == 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        table.set(1, 300); // committed by someone else, newer than the write to come
        cache.invalidate(&1).unwrap();
        release.send(()).unwrap();
        write.await.unwrap().unwrap();
        assert_eq!(
            cache.peek(&1),
            None,
            "the write's value went in after an invalidation"
        );

        // A failed commit leaves neither a value nor a flight.
        let failed = cache
            .write_through(2, async {
                Err::<((), u32, Version), _>(Error::Config("no".into()))
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(cache.inner.store.flights_in_progress(), 0);
        assert_eq!(cache.peek(&2), None);
        node.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_publishes_a_pending_burst_before_it_goes_out() {
        let node = Node::start(NodeConfig::new("beat", "beat-cookie-0123456789abcdef"))
            .await
            .unwrap();
        // A window far longer than the heartbeat: only the heartbeat can publish the key early.
        let cache: Cache<u32, u32> = Cache::builder(Topic::new("beat-covers-burst"), Constant)
            .coalesce_window(Duration::from_secs(1))
            .sync(
                crate::synchronization::SyncConfig::default()
                    .heartbeat(Duration::from_millis(10))
                    .lease(Duration::from_millis(100)),
            )
            .spawn(&node)
            .await
            .unwrap();
        cache
            .invalidate_keys((0..10).map(|k| (k, None)).collect())
            .unwrap();
        cache.invalidate(&10).unwrap();
        assert!(
            !cache.inner.batch.is_empty(),
            "the key waits for the window"
        );
        assert_eq!(cache.stats().sync.published, 1);

        // Paused time: the next heartbeat is due long before the window ends.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            cache.inner.batch.is_empty(),
            "a heartbeat went out while an accepted invalidation was still pending"
        );
        assert_eq!(cache.stats().sync.published, 2);
        node.shutdown().await;
    }
}

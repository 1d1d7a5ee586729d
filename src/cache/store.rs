//! The cache's entries in local heap, with single-flight loading and the stale-load guard.
//!
//! Invariant (stale-load guard): a load installs its result only if its flight is still the
//! key's current flight when it finishes. Every invalidation removes the key's flight before it
//! removes the entry, and installing happens while holding the flight map's lock for that key,
//! so a load that started before an invalidation can never install afterwards. (An
//! invalidation skips the flight map when a counter says it is empty: the counter is raised
//! before a flight is added and lowered after it is removed, so it never reads 0 while a flight
//! exists.)
//!
//! Entries live in a read-optimised map (`scc::HashIndex`: a lookup takes no lock, so readers on
//! different cores do not fight over a lock word, and removing and re-inserting a key costs the
//! same whatever the map's size); in-flight loads live in a sharded locked map (`dashmap`), whose
//! entry lock serialises installing against invalidating.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use scc::hash_index::Entry as IndexEntry;
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::stats::CacheCounters;
use super::Mode;
use crate::clock::now_us;
use crate::counter::bump;
use crate::error::Result;
use crate::health::Health;
use crate::node::MemberGate;
use crate::source::{Source, Version};
use crate::synchronization::SyncShared;

type Loaded<V> = Result<Option<(V, Version)>>;

#[derive(Clone)]
struct Entry<V> {
    value: V,
    version: Version,
}

/// One in-progress load of one key, shared by every reader that asks meanwhile.
struct Flight<V> {
    result: OnceCell<Loaded<V>>,
}

impl<V> Default for Flight<V> {
    fn default() -> Self {
        Self {
            result: OnceCell::new(),
        }
    }
}

/// The result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lookup<V> {
    /// The value and its version, or `None` if the key does not exist in the source.
    pub value: Option<(V, Version)>,
    /// Whether the value came from the cache without a source load.
    pub hit: bool,
}

/// What an invalidation did to the local entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A cached entry was dropped.
    Entry,
    /// Nothing was cached, but a load was in flight: it was told not to install.
    Flight,
    /// Nothing was cached or loading.
    Nothing,
    /// The cached entry is already at least as new as the invalidation: kept.
    Ignored,
}

pub(crate) struct Store<K, V> {
    entries: scc::HashIndex<K, Entry<V>, foldhash::fast::RandomState>,
    flights: DashMap<K, Arc<Flight<V>>, foldhash::fast::RandomState>,
    /// How many flights the map holds, changed under the flight's entry lock. An invalidation
    /// that reads 0 skips the map: any flight it would have cancelled starts after the read,
    /// so after the commit the invalidation follows, and loads the new value.
    in_flight: AtomicUsize,
    source: Arc<dyn Source<K, V>>,
    mode: Mode,
    /// The topic's lease gate: in bounded mode, entries are served only while it is open.
    leases: Arc<SyncShared>,
    /// The node's membership gate: in bounded mode, entries are served only while every
    /// member the node knows of has a session with it, on a lease gate computed since.
    members: Arc<MemberGate>,
    pub(crate) counters: CacheCounters,
}

impl<K, V> Store<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        source: Arc<dyn Source<K, V>>,
        mode: Mode,
        leases: Arc<SyncShared>,
        members: Arc<MemberGate>,
    ) -> Self {
        Self {
            entries: scc::HashIndex::with_hasher(Default::default()),
            flights: DashMap::with_hasher(Default::default()),
            in_flight: AtomicUsize::new(0),
            source,
            mode,
            leases,
            members,
            counters: CacheCounters::default(),
        }
    }

    /// Reads from the heap on a hit (no await, no message); loads once per key on a miss, and
    /// on every read while bounded-mode leases are not valid (a bypass).
    pub(crate) async fn lookup(&self, key: &K) -> Result<Lookup<V>> {
        // The gate is read before the entry: a repair that closed and reopened it happened
        // before the gate was stored, so an open gate means the entry read is post-repair.
        if self.servable() {
            if let Some(value) = self.cached(key) {
                return Ok(Lookup {
                    value: Some(value),
                    hit: true,
                });
            }
            bump(&self.counters.misses);
        } else {
            bump(&self.counters.bypasses);
        }
        let value = self.load_once(key).await?;
        Ok(Lookup { value, hit: false })
    }

    /// The cached value, if it may be served now; never loads.
    pub(crate) fn peek(&self, key: &K) -> Option<V> {
        self.servable()
            .then(|| self.cached(key))
            .flatten()
            .map(|(value, _)| value)
    }

    /// Whether entries may be served from the heap now (always in eventual mode; in bounded
    /// mode while every peer's lease is valid): one atomic load and a clock read.
    fn servable(&self) -> bool {
        self.mode == Mode::Eventual
            || self
                .leases
                .leases_valid_since(now_us(), self.members.open_since())
    }

    fn cached(&self, key: &K) -> Option<(V, Version)> {
        let cached = self
            .entries
            .peek_with(key, |_, entry| (entry.value.clone(), entry.version))?;
        self.counters.hits.bump();
        Some(cached)
    }

    /// Joins the key's flight (or starts one) and installs its result if still current.
    pub(crate) async fn load_once(&self, key: &K) -> Loaded<V> {
        let flight = match self.flights.entry(key.clone()) {
            MapEntry::Occupied(current) => current.get().clone(),
            MapEntry::Vacant(vacant) => {
                self.in_flight.fetch_add(1, SeqCst);
                vacant.insert(Arc::default()).clone()
            }
        };
        let loaded = flight
            .result
            .get_or_init(|| {
                async {
                    bump(&self.counters.loads);
                    let loaded = self.source.load(key).await;
                    if loaded.is_err() {
                        bump(&self.counters.load_failures);
                    }
                    loaded
                }
                .instrument(tracing::debug_span!("load"))
            })
            .await
            .clone();
        self.install(key, &flight, &loaded);
        loaded
    }

    fn install(&self, key: &K, flight: &Arc<Flight<V>>, loaded: &Loaded<V>) {
        let MapEntry::Occupied(current) = self.flights.entry(key.clone()) else {
            return;
        };
        if !Arc::ptr_eq(current.get(), flight) {
            return;
        }
        if let Ok(Some((value, version))) = loaded {
            let entry = Entry {
                value: value.clone(),
                version: *version,
            };
            match self.entries.entry(key.clone()) {
                IndexEntry::Occupied(occupied) => occupied.update(entry),
                IndexEntry::Vacant(vacant) => {
                    vacant.insert_entry(entry);
                }
            }
        }
        current.remove();
        self.in_flight.fetch_sub(1, SeqCst);
    }

    /// Drops `key` unless the cached entry is already at `version` or newer.
    pub(crate) fn invalidate(&self, key: &K, version: Option<Version>) -> Dropped {
        if let Some(version) = version {
            if self.entries.peek_with(key, |_, e| e.version >= version) == Some(true) {
                return Dropped::Ignored;
            }
        }
        let flight = if self.in_flight.load(SeqCst) > 0 {
            self.flights.remove(key).inspect(|_| {
                self.in_flight.fetch_sub(1, SeqCst);
            })
        } else {
            None
        };
        let removed = self.entries.remove(key);
        match (removed, flight) {
            (true, _) => Dropped::Entry,
            (false, Some(_)) => Dropped::Flight,
            (false, None) => Dropped::Nothing,
        }
    }

    /// Drops every entry and cancels the installation of every in-flight load.
    pub(crate) fn invalidate_all(&self) {
        let mut removed = 0;
        self.flights.retain(|_, _| {
            removed += 1;
            false
        });
        self.in_flight.fetch_sub(removed, SeqCst);
        self.entries.clear();
    }

    /// The topic's lease gate, counters and status, shared with its Synchronization actor.
    pub(crate) fn leases(&self) -> &Arc<SyncShared> {
        &self.leases
    }

    /// Whether this node may serve from its heap now, and if not why (for health reports).
    pub(crate) fn health(&self, now: u64) -> Health {
        if let Some(reason) = self.members.reason() {
            return Health::Bypassing { reason };
        }
        let health = self.leases.health(now);
        if health == Health::Healthy
            && !self
                .leases
                .leases_valid_since(now, self.members.open_since())
        {
            let reason = "the topic has not yet counted the members just reached".to_owned();
            return Health::Bypassing { reason };
        }
        health
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::sync::Notify;

    /// A source whose loads wait for a signal, so tests control when a load finishes.
    #[derive(Default)]
    struct Gated {
        version: AtomicU64,
        loads: AtomicU64,
        gate: Notify,
    }

    #[async_trait::async_trait]
    impl Source<u32, String> for Gated {
        async fn load(&self, key: &u32) -> Result<Option<(String, Version)>> {
            let version = self.version.load(Ordering::SeqCst);
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.gate.notified().await;
            Ok(Some((format!("{key}@{version}"), version)))
        }
    }

    fn store() -> (Arc<Gated>, Arc<Store<u32, String>>) {
        let source = Arc::new(Gated::default());
        let source_dyn = source.clone() as Arc<dyn Source<u32, String>>;
        let store = Arc::new(Store::new(
            source_dyn,
            Mode::Eventual,
            Arc::default(),
            Arc::default(),
        ));
        (source, store)
    }

    async fn until(mut condition: impl FnMut() -> bool) {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_load_once() {
        let (source, store) = store();
        let readers: Vec<_> = (0..100)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.lookup(&7).await.unwrap() })
            })
            .collect();
        until(|| source.loads.load(Ordering::SeqCst) == 1).await;
        tokio::task::yield_now().await;
        source.gate.notify_waiters();
        for reader in readers {
            assert_eq!(reader.await.unwrap().value.unwrap().0, "7@0");
        }
        assert_eq!(source.loads.load(Ordering::SeqCst), 1);
        assert!(store.lookup(&7).await.unwrap().hit);
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_started_before_an_invalidation_never_installs() {
        let (source, store) = store();
        let early = tokio::spawn({
            let store = store.clone();
            async move { store.lookup(&1).await.unwrap() }
        });
        until(|| source.loads.load(Ordering::SeqCst) == 1).await;
        source.version.store(1, Ordering::SeqCst);
        assert_eq!(store.invalidate(&1, Some(1)), Dropped::Flight);
        source.gate.notify_waiters();
        assert_eq!(early.await.unwrap().value.unwrap().1, 0);
        assert_eq!(
            store.entry_count(),
            0,
            "the pre-invalidation load was cached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_flight_count_returns_to_zero_whatever_ends_a_flight() {
        let (source, store) = store();
        let flights = |store: &Store<u32, String>| store.in_flight.load(SeqCst);
        // Installed.
        let load = tokio::spawn({
            let store = store.clone();
            async move { store.lookup(&1).await }
        });
        until(|| source.loads.load(Ordering::SeqCst) == 1).await;
        assert_eq!(flights(&store), 1);
        source.gate.notify_waiters();
        load.await.unwrap().unwrap();
        assert_eq!(flights(&store), 0);
        // With no flight, an invalidation still drops the cached entry.
        assert_eq!(store.invalidate(&1, None), Dropped::Entry);
        // Cancelled by an invalidation, then by a whole-cache invalidation.
        for all in [false, true] {
            let load = tokio::spawn({
                let store = store.clone();
                async move { store.lookup(&2).await }
            });
            until(|| flights(&store) == 1).await;
            if all {
                store.invalidate_all();
            } else {
                assert_eq!(store.invalidate(&2, None), Dropped::Flight);
            }
            assert_eq!(flights(&store), 0);
            tokio::task::yield_now().await;
            source.gate.notify_waiters();
            load.await.unwrap().unwrap();
            assert_eq!(flights(&store), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn older_invalidations_are_ignored_and_newer_ones_drop() {
        let (source, store) = store();
        source.version.store(5, Ordering::SeqCst);
        let load = tokio::spawn({
            let store = store.clone();
            async move { store.lookup(&1).await }
        });
        until(|| source.loads.load(Ordering::SeqCst) == 1).await;
        source.gate.notify_waiters();
        load.await.unwrap().unwrap();
        assert_eq!(store.invalidate(&1, Some(4)), Dropped::Ignored);
        assert_eq!(store.invalidate(&1, Some(5)), Dropped::Ignored);
        assert_eq!(store.invalidate(&1, Some(6)), Dropped::Entry);
        assert_eq!(store.invalidate(&1, Some(6)), Dropped::Nothing);
    }
}

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
//! Verification: every entry carries the time (this node's clock) of the last event that
//! vouched for it against the source — the start of the load that brought it, or the start of
//! a version check that found it unchanged. A repair (messages may have been missed) does not
//! drop the entries: it marks every one verified before it as unverified, and the
//! revalidation pass checks them in bulk ([`Source::versions`]). An entry is served when it
//! is verified since the last repair and either the gates are open (every lease valid) or it
//! was verified less than one lease ago: a check that started at `t` saw every commit that
//! finished before `t`, exactly as a lease anchored at `t` vouches for every invalidation sent
//! before it, so the staleness bound is the same either way.
//!
//! Entries live in [`Entries`] (a lock-free read map, the bound, expiry, the removal listener);
//! in-flight loads live in a sharded locked map (`dashmap`), whose entry lock serialises
//! installing against invalidating. Eviction only ever removes entries, never flights, so an
//! evicted key's load in flight follows the same rules as any other.

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use tokio::sync::OnceCell;
use tracing::Instrument;

use super::entries::{Bounds, Entries, RemovalCause};
use super::reloader::ReloadQueue;
use super::stats::CacheCounters;
use crate::clock::now_us;
use crate::counter::bump;
use crate::error::Result;
use crate::gate::{MemberGate, Mode, ServeRule};
use crate::health::Health;
use crate::source::{Source, Version};
use crate::synchronization::SyncShared;

type Loaded<V> = Result<Option<(V, Version)>>;

/// One in-progress load of one key, shared by every reader that asks meanwhile.
struct Flight<V> {
    /// When the load started: its result reflects every commit that finished before.
    started: u64,
    result: OnceCell<Loaded<V>>,
    /// Loaded with other keys in one bulk call by the reloader: readers wait for `done`
    /// instead of loading themselves.
    bulk: Option<tokio::sync::Notify>,
}

impl<V> Flight<V> {
    fn new(started: u64) -> Arc<Self> {
        Arc::new(Self {
            started,
            result: OnceCell::new(),
            bulk: None,
        })
    }

    fn bulk(started: u64) -> Arc<Self> {
        Arc::new(Self {
            started,
            result: OnceCell::new(),
            bulk: Some(tokio::sync::Notify::new()),
        })
    }

    /// A bulk flight's result, once the bulk call has answered.
    async fn bulk_result(&self, done: &tokio::sync::Notify) -> Loaded<V>
    where
        V: Clone,
    {
        loop {
            let answered = done.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            if let Some(result) = self.result.get() {
                return result.clone();
            }
            answered.await;
        }
    }

    /// Ends a bulk flight with `result` and wakes its readers.
    fn answer(&self, result: Loaded<V>) {
        let _ = self.result.set(result);
        if let Some(done) = &self.bulk {
            done.notify_waiters();
        }
    }
}

/// Ends the bulk flights a cancelled bulk load leaves unanswered (its task dropped), so that no
/// reader waits for them forever and they leave the flight map.
struct Unanswered<'s, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    store: &'s Store<K, V>,
    flights: &'s [(K, Arc<Flight<V>>)],
}

impl<K, V> Drop for Unanswered<'_, K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        for (key, flight) in self.flights {
            if flight.result.get().is_none() {
                let cancelled = Err(crate::error::Error::from_source(
                    "the bulk load was cancelled",
                ));
                flight.answer(cancelled.clone());
                self.store.install(key, flight, &cancelled);
            }
        }
    }
}

/// What one revalidation pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Pass {
    /// Entries whose version was checked.
    pub(crate) checked: u64,
    /// Entries dropped because the source had another version (or none).
    pub(crate) dropped: u64,
    /// Chunks whose check failed (their entries stay as they were: unverified ones unserved).
    pub(crate) failed: u64,
    /// Entries dropped unchecked because the pass had no budget left for them.
    pub(crate) over_budget: u64,
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
    pub(crate) entries: Entries<K, V>,
    flights: DashMap<K, Arc<Flight<V>>, foldhash::fast::RandomState>,
    /// How many flights the map holds, changed under the flight's entry lock. An invalidation
    /// that reads 0 skips the map: any flight it would have cancelled starts after the read,
    /// so after the commit the invalidation follows, and loads the new value.
    in_flight: AtomicUsize,
    source: Arc<dyn Source<K, V>>,
    /// May an entry be served now: the mode, the topic's lease gate, the node's membership
    /// gate and the repair mark (see [`crate::gate`]).
    rule: Arc<ServeRule>,
    /// The topic's counters and status, shared with its Synchronization actor.
    sync: Arc<SyncShared>,
    /// Wakes the revalidation pass (a repair, a lapsed lease).
    pub(crate) wake: Arc<tokio::sync::Notify>,
    /// Keys to reload in the background (invalidated or changed while cached here, or due
    /// for a refresh).
    pub(crate) reloads: ReloadQueue<K>,
    pub(crate) counters: Arc<CacheCounters>,
}

impl<K, V> Store<K, V> {
    /// The cache's serve rule.
    pub(crate) fn rule(&self) -> &Arc<ServeRule> {
        &self.rule
    }

    /// The topic's counters and status, shared with its Synchronization actor.
    pub(crate) fn sync(&self) -> &Arc<SyncShared> {
        &self.sync
    }
}

impl<K, V> Store<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(
        source: Arc<dyn Source<K, V>>,
        mode: Mode,
        sync: Arc<SyncShared>,
        members: Arc<MemberGate>,
        bounds: Bounds<K, V>,
    ) -> Self {
        let counters = Arc::<CacheCounters>::default();
        Self {
            entries: Entries::new(bounds, counters.clone()),
            flights: DashMap::with_hasher(Default::default()),
            in_flight: AtomicUsize::new(0),
            source,
            rule: Arc::new(ServeRule::new(mode, sync.gate.clone(), members)),
            sync,
            wake: Arc::default(),
            reloads: ReloadQueue::default(),
            counters,
        }
    }

    /// Reads from the heap on a hit (no await, no message); loads once per key on a miss, and
    /// on every read of an entry that cannot be vouched for now (a bypass: see the module).
    pub(crate) async fn lookup(&self, key: &K) -> Result<Lookup<V>> {
        let now = now_us();
        let open = self.gates_open(now);
        if let Some(value) = self.cached(key, now, open) {
            return Ok(Lookup { value, hit: true });
        }
        if open {
            bump(&self.counters.misses);
        } else {
            bump(&self.counters.bypasses);
        }
        let value = self.load_once(key).await?;
        Ok(Lookup { value, hit: false })
    }

    /// The cached value, if it may be served now; never loads.
    pub(crate) fn peek(&self, key: &K) -> Option<V> {
        let now = now_us();
        self.cached(key, now, self.gates_open(now))
            .flatten()
            .map(|(value, _)| value)
    }

    /// Whether every gate is open (see [`ServeRule::open`]).
    pub(crate) fn gates_open(&self, now: u64) -> bool {
        self.rule.open(now)
    }

    /// The entry, if it may be served at `now`: unexpired, verified since the last repair, and
    /// the gates open or its verification less than a lease old. (The gates are read before
    /// the repair mark and the entry: a repair marked before the gate renewal that is read
    /// here.) `Some(None)`: the key is cached as absent from the source.
    fn cached(&self, key: &K, now: u64, open: bool) -> Option<Option<(V, Version)>> {
        let (repaired, lease) = (self.rule.repaired_at(), self.rule.lease_us());
        let hit = self.entries.read(key, now, |entry| {
            let verified = entry.verified_at.load(SeqCst);
            let vouched = ServeRule::serves(verified, repaired, open, lease, now);
            vouched.then(|| entry.value.clone().map(|value| (value, entry.version)))
        })?;
        self.counters.hits.bump();
        if hit.refresh {
            self.queue_reload(vec![key.clone()]);
        }
        Some(hit.answer)
    }

    /// Queues `keys` for the reloader (each once; what does not fit loads on its next read).
    pub(crate) fn queue_reload(&self, keys: Vec<K>) {
        if keys.is_empty() {
            return;
        }
        let (queued, dropped) = self.reloads.push(keys);
        crate::counter::add(&self.counters.reloads, queued);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "reload queue full: those keys load on their next read"
            );
        }
    }

    /// Joins the key's flight (or starts one) and installs its result if still current.
    ///
    /// A flight that started more than a lease ago, or before the last repair, is not joined
    /// (its answer could be older than the staleness bound allows, or miss what the repair is
    /// about): the reader starts a new one, which replaces it.
    pub(crate) async fn load_once(&self, key: &K) -> Loaded<V> {
        let now = now_us();
        let flight = match self.flights.entry(key.clone()) {
            MapEntry::Occupied(current) if self.joinable(current.get(), now) => {
                current.get().clone()
            }
            MapEntry::Occupied(mut old) => {
                let fresh = Flight::new(now);
                old.insert(fresh.clone());
                fresh
            }
            MapEntry::Vacant(vacant) => {
                self.in_flight.fetch_add(1, SeqCst);
                vacant.insert(Flight::new(now)).clone()
            }
        };
        if let Some(done) = &flight.bulk {
            let loaded = flight.bulk_result(done).await;
            self.install(key, &flight, &loaded);
            return loaded;
        }
        let loaded = flight
            .result
            .get_or_init(|| {
                async {
                    bump(&self.counters.loads);
                    bump(&self.counters.source_calls);
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

    /// Whether a reader at `now` may share `flight`'s answer.
    fn joinable(&self, flight: &Flight<V>, now: u64) -> bool {
        self.rule.joinable(flight.started, now)
    }

    fn install(&self, key: &K, flight: &Arc<Flight<V>>, loaded: &Loaded<V>) {
        let removed = {
            let MapEntry::Occupied(current) = self.flights.entry(key.clone()) else {
                return;
            };
            if !Arc::ptr_eq(current.get(), flight) {
                return;
            }
            let removed = loaded.as_ref().ok().map(|found| {
                let found = found.as_ref().map(|(value, version)| (value, *version));
                self.entries.install(key, found, flight.started)
            });
            current.remove();
            self.in_flight.fetch_sub(1, SeqCst);
            removed
        };
        // The listener runs with no lock held.
        if let Some(removed) = removed {
            self.entries.notify(removed);
        }
    }

    /// Loads `keys` in one bulk call ([`Source::load_many`]) through flights of their own, so
    /// that reads of them meanwhile wait for it and an invalidation meanwhile keeps its result
    /// out of the cache. Keys cached again or already loading are skipped.
    pub(crate) async fn load_batch(&self, keys: Vec<K>) {
        let now = now_us();
        let mut mine: Vec<(K, Arc<Flight<V>>)> = Vec::with_capacity(keys.len());
        for key in keys {
            if self.entries.holds_fresh(&key, now) {
                continue;
            }
            if let MapEntry::Vacant(vacant) = self.flights.entry(key.clone()) {
                self.in_flight.fetch_add(1, SeqCst);
                mine.push((key, vacant.insert(Flight::bulk(now)).clone()));
            }
        }
        if mine.is_empty() {
            return;
        }
        let _unanswered = Unanswered {
            store: self,
            flights: &mine,
        };
        let keys: Vec<K> = mine.iter().map(|(key, _)| key.clone()).collect();
        bump(&self.counters.source_calls);
        let loaded = self.source.load_many(&keys).await;
        let answers: Vec<Loaded<V>> = match loaded {
            Ok(values) if values.len() == keys.len() => values.into_iter().map(Ok).collect(),
            Ok(values) => {
                let error = crate::error::Error::from_source(format!(
                    "load_many answered {} of {} keys",
                    values.len(),
                    keys.len()
                ));
                vec![Err(error); keys.len()]
            }
            Err(error) => vec![Err(error); keys.len()],
        };
        if answers.first().is_some_and(Result::is_err) {
            bump(&self.counters.load_failures);
            tracing::warn!(keys = keys.len(), "bulk reload failed");
        }
        for ((key, flight), loaded) in mine.iter().zip(answers) {
            flight.answer(loaded.clone());
            self.install(key, flight, &loaded);
        }
    }

    /// Drops `key` unless the cached entry is already at `version` or newer (an entry cached
    /// as absent is always dropped: any invalidation may be its creation).
    pub(crate) fn invalidate(
        &self,
        key: &K,
        version: Option<Version>,
        cause: RemovalCause,
    ) -> Dropped {
        if let Some(version) = version {
            if self.entries.holds_at_least(key, version) {
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
        let removed = self.entries.remove(key, cause);
        match (removed, flight) {
            (true, _) => Dropped::Entry,
            (false, Some(_)) => Dropped::Flight,
            (false, None) => Dropped::Nothing,
        }
    }

    /// Drops every entry and cancels the installation of every in-flight load.
    pub(crate) fn invalidate_all(&self, cause: RemovalCause) {
        let mut removed = 0;
        self.flights.retain(|_, _| {
            removed += 1;
            false
        });
        self.in_flight.fetch_sub(removed, SeqCst);
        self.entries.clear(cause);
    }

    /// Marks every entry unverified as of now (messages may have been missed): none is served
    /// until a check that starts after this finds it unchanged, or a load replaces it.
    pub(crate) fn mark_unverified(&self) {
        self.rule.mark_repaired(now_us());
        self.wake.notify_one();
    }

    /// Whether a revalidation pass is due (see [`ServeRule::pass_due`]). (The caller skips an
    /// empty cache: there is nothing to check.)
    pub(crate) fn pass_due(&self, now: u64, last: u64, every: Option<u64>) -> bool {
        self.rule.pass_due(now, last, every)
    }

    /// Checks every entry's version against the source, `chunk` keys per call: an unchanged
    /// entry is verified as of the call's start, a changed or deleted one dropped. At most
    /// `budget` entries are checked; the rest are dropped (a read loads them again, verified).
    /// Returns what it did, and the keys it dropped because the source has another version
    /// of them (worth reloading: they were cached because they were read).
    pub(crate) async fn revalidate(&self, chunk: usize, budget: usize) -> (Pass, Vec<K>) {
        let mut changed = Vec::new();
        let mut pass = Pass::default();
        let mut all = self.entries.versions();
        if all.len() > budget {
            for (key, version) in all.drain(budget..) {
                if self.entries.remove_changed(&key, version) {
                    pass.over_budget += 1;
                }
            }
        }
        for part in all.chunks(chunk.max(1)) {
            let keys: Vec<K> = part.iter().map(|(key, _)| key.clone()).collect();
            let started = now_us();
            bump(&self.counters.source_calls);
            let versions = match self.source.versions(&keys).await {
                Ok(versions) if versions.len() == keys.len() => versions,
                Ok(versions) => {
                    tracing::warn!(
                        asked = keys.len(),
                        answered = versions.len(),
                        "the source answered a version check for the wrong number of keys"
                    );
                    pass.failed += 1;
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "version check failed");
                    pass.failed += 1;
                    continue;
                }
            };
            pass.checked += keys.len() as u64;
            for ((key, cached), current) in part.iter().zip(versions) {
                if current == *cached {
                    self.entries.verify(key, *cached, started);
                } else if self.entries.remove_changed(key, *cached) {
                    pass.dropped += 1;
                    if current.is_some() {
                        changed.push(key.clone());
                    }
                }
            }
        }
        (pass, changed)
    }

    /// Whether the cache holds no entry (a pass would check nothing).
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether this node may serve from its heap now, and if not why (for health reports).
    pub(crate) fn health(&self, now: u64) -> Health {
        self.rule.health(now)
    }

    pub(crate) fn entry_count(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    #[cfg(test)]
    fn stats_evictions(&self) -> u64 {
        self.counters.evictions.load(SeqCst)
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

    /// A source of versioned rows the test edits directly (like a SQL session would).
    #[derive(Default)]
    struct Rows {
        rows: std::sync::Mutex<std::collections::HashMap<u32, Version>>,
        version_calls: AtomicU64,
        /// When set, a version check waits for `gate` before it answers.
        gated: std::sync::atomic::AtomicBool,
        gate: Notify,
    }

    #[async_trait::async_trait]
    impl Source<u32, String> for Rows {
        async fn load(&self, key: &u32) -> Result<Option<(String, Version)>> {
            let version = self.rows.lock().unwrap().get(key).copied();
            Ok(version.map(|v| (format!("{key}@{v}"), v)))
        }

        async fn versions(&self, keys: &[u32]) -> Result<Vec<Option<Version>>> {
            self.version_calls.fetch_add(1, Ordering::SeqCst);
            if self.gated.load(Ordering::SeqCst) {
                self.gate.notified().await;
            }
            let rows = self.rows.lock().unwrap();
            Ok(keys.iter().map(|k| rows.get(k).copied()).collect())
        }
    }

    /// A store over `source`, without a node: no membership gate, leases never valid.
    fn store_over<S: Source<u32, String>>(
        source: &Arc<S>,
        mode: Mode,
        lease: Duration,
    ) -> Store<u32, String> {
        let source = source.clone() as Arc<dyn Source<u32, String>>;
        Store::new(
            source,
            mode,
            sync_with_lease(lease),
            Arc::new(MemberGate::open()),
            Bounds::default(),
        )
    }

    /// A topic's shared state as its actor would publish it: the lease, no lease valid.
    fn sync_with_lease(lease: Duration) -> Arc<SyncShared> {
        let sync = Arc::<SyncShared>::default();
        sync.gate.configure(lease.as_micros() as u64, 0);
        sync
    }

    fn rows_store(mode: Mode, lease: Duration) -> (Arc<Rows>, Store<u32, String>) {
        let source = Arc::new(Rows::default());
        let store = store_over(&source, mode, lease);
        (source, store)
    }

    async fn cached_keys(store: &Store<u32, String>, source: &Rows, keys: std::ops::Range<u32>) {
        for key in keys.clone() {
            source.rows.lock().unwrap().insert(key, 1);
        }
        for key in keys {
            assert!(!store.lookup(&key).await.unwrap().hit);
        }
    }

    #[tokio::test]
    async fn a_repair_keeps_what_the_source_confirms_and_drops_what_changed() {
        let (source, store) = rows_store(Mode::Eventual, Duration::from_secs(1));
        cached_keys(&store, &source, 0..10).await;
        store.mark_unverified();
        assert_eq!(store.peek(&3), None, "an unverified entry was served");
        source.rows.lock().unwrap().insert(3, 2);
        source.rows.lock().unwrap().remove(&4);
        let pass = store.revalidate(4, usize::MAX).await.0;
        assert_eq!((pass.checked, pass.dropped, pass.failed), (10, 2, 0));
        assert_eq!(
            source.version_calls.load(Ordering::SeqCst),
            3,
            "chunks of 4"
        );
        assert_eq!(store.peek(&1).as_deref(), Some("1@1"));
        assert_eq!(store.peek(&3), None, "a changed row was kept");
        assert_eq!(store.entry_count(), 8);
        assert_eq!(store.lookup(&3).await.unwrap().value.unwrap().1, 2);
    }

    #[tokio::test]
    async fn a_check_that_started_before_a_repair_does_not_verify_after_it() {
        let (source, store) = rows_store(Mode::Eventual, Duration::from_secs(1));
        let store = Arc::new(store);
        cached_keys(&store, &source, 0..2).await;
        source.gated.store(true, Ordering::SeqCst);
        let check = tokio::spawn({
            let store = store.clone();
            async move { store.revalidate(10, usize::MAX).await.0 }
        });
        until(|| source.version_calls.load(Ordering::SeqCst) == 1).await;
        // The repair lands after the check started, before its answer.
        store.mark_unverified();
        source.gate.notify_one();
        assert_eq!(check.await.unwrap().checked, 2);
        assert_eq!(
            store.peek(&0),
            None,
            "verified by a check older than the repair"
        );
        assert!(
            store.pass_due(now_us(), 0, None),
            "the repair made no pass due"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_the_gate_closed_an_entry_is_served_only_within_a_lease_of_its_check() {
        let lease = Duration::from_millis(30);
        let (source, store) = rows_store(Mode::Bounded, lease);
        cached_keys(&store, &source, 0..3).await;
        // No lease is valid: the loads just made vouch for the entries for one lease.
        tokio::time::advance(lease - Duration::from_millis(1)).await;
        assert_eq!(store.peek(&0).as_deref(), Some("0@1"));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert_eq!(store.peek(&0), None, "served past a lease");
        assert!(!store.lookup(&0).await.unwrap().hit, "served past a lease");
        // A check vouches for one more lease from its start; a changed row is dropped.
        source.rows.lock().unwrap().insert(2, 5);
        store.revalidate(100, usize::MAX).await;
        assert_eq!(store.peek(&1).as_deref(), Some("1@1"));
        assert_eq!(store.peek(&2), None);
    }

    #[tokio::test]
    async fn a_pass_over_its_budget_drops_what_it_does_not_check() {
        let (source, store) = rows_store(Mode::Eventual, Duration::from_secs(1));
        cached_keys(&store, &source, 0..10).await;
        store.mark_unverified();
        let pass = store.revalidate(3, 6).await.0;
        assert_eq!((pass.checked, pass.over_budget), (6, 4));
        assert_eq!(store.entry_count(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flight_older_than_a_lease_is_not_joined() {
        let source = Arc::new(Gated::default());
        let lease = Duration::from_millis(2);
        let store = Arc::new(store_over(&source, Mode::Eventual, lease));
        let early = spawn_lookup(&store, 1);
        until(|| source.loads.load(Ordering::SeqCst) == 1).await;
        tokio::time::advance(Duration::from_millis(3)).await;
        source.version.store(1, Ordering::SeqCst);
        let late = spawn_lookup(&store, 1);
        until(|| source.loads.load(Ordering::SeqCst) == 2).await;
        tokio::task::yield_now().await;
        source.gate.notify_waiters();
        assert_eq!(early.await.unwrap().value.unwrap().1, 0);
        assert_eq!(
            late.await.unwrap().value.unwrap().1,
            1,
            "joined an old load"
        );
        assert_eq!(
            store.peek(&1).unwrap(),
            "1@1",
            "the replaced load installed"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_after_a_repair_does_not_join_a_load_from_before_it() {
        let (source, store) = store();
        let early = spawn_lookup(&store, 1);
        until(|| source.loads.load(Ordering::SeqCst) == 1).await;
        store.mark_unverified();
        source.version.store(1, Ordering::SeqCst);
        let late = spawn_lookup(&store, 1);
        until(|| source.loads.load(Ordering::SeqCst) == 2).await;
        tokio::task::yield_now().await;
        source.gate.notify_waiters();
        assert_eq!(early.await.unwrap().value.unwrap().1, 0);
        assert_eq!(
            late.await.unwrap().value.unwrap().1,
            1,
            "joined a load from before the repair"
        );
    }

    /// A source whose bulk loads wait for a signal.
    #[derive(Default)]
    struct BulkGated {
        version: AtomicU64,
        bulk_calls: AtomicU64,
        loads: AtomicU64,
        gate: Notify,
    }

    #[async_trait::async_trait]
    impl Source<u32, String> for BulkGated {
        async fn load(&self, key: &u32) -> Result<Option<(String, Version)>> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            let version = self.version.load(Ordering::SeqCst);
            Ok(Some((format!("{key}@{version}"), version)))
        }

        async fn load_many(&self, keys: &[u32]) -> Result<Vec<Option<(String, Version)>>> {
            let version = self.version.load(Ordering::SeqCst);
            self.bulk_calls.fetch_add(1, Ordering::SeqCst);
            self.gate.notified().await;
            Ok(keys
                .iter()
                .map(|k| Some((format!("{k}@{version}"), version)))
                .collect())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_bulk_reload_is_one_call_readers_wait_for_it_and_an_invalidation_keeps_it_out() {
        let source = Arc::new(BulkGated::default());
        let store = Arc::new(store_over(&source, Mode::Eventual, Duration::from_secs(1)));
        let bulk = tokio::spawn({
            let store = store.clone();
            async move { store.load_batch(vec![1, 2, 3]).await }
        });
        until(|| source.bulk_calls.load(Ordering::SeqCst) == 1).await;
        let reader = spawn_lookup(&store, 1);
        tokio::task::yield_now().await;
        // Key 3 changes while the bulk call runs: its answer must not be cached.
        assert_eq!(
            store.invalidate(&3, Some(1), RemovalCause::Invalidated),
            Dropped::Flight
        );
        source.gate.notify_one();
        bulk.await.unwrap();
        let read = reader.await.unwrap();
        assert_eq!(
            read.value.unwrap().0,
            "1@0",
            "the reader did not get the bulk answer"
        );
        assert_eq!(
            source.loads.load(Ordering::SeqCst),
            0,
            "the reader loaded on its own"
        );
        assert_eq!(store.peek(&2).as_deref(), Some("2@0"));
        assert_eq!(
            store.peek(&3),
            None,
            "a load overtaken by an invalidation was cached"
        );
        assert_eq!(source.bulk_calls.load(Ordering::SeqCst), 1);
        // Keys cached or loading are skipped: nothing to load, no call.
        store.load_batch(vec![1, 2]).await;
        assert_eq!(source.bulk_calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_bulk_reload_does_not_leave_its_readers_waiting() {
        let source = Arc::new(BulkGated::default());
        let store = Arc::new(store_over(&source, Mode::Eventual, Duration::from_secs(1)));
        let bulk = tokio::spawn({
            let store = store.clone();
            async move { store.load_batch(vec![1]).await }
        });
        until(|| source.bulk_calls.load(Ordering::SeqCst) == 1).await;
        let reader = tokio::spawn({
            let store = store.clone();
            async move { store.lookup(&1).await }
        });
        tokio::task::yield_now().await;
        bulk.abort();
        let read = tokio::time::timeout(Duration::from_secs(5), reader).await;
        assert!(read.expect("the reader waited forever").unwrap().is_err());
        assert_eq!(
            store.in_flight.load(SeqCst),
            0,
            "the cancelled flight stayed"
        );
    }

    /// A reader of `key` in a task of its own.
    fn spawn_lookup(
        store: &Arc<Store<u32, String>>,
        key: u32,
    ) -> tokio::task::JoinHandle<Lookup<String>> {
        let store = store.clone();
        tokio::spawn(async move { store.lookup(&key).await.unwrap() })
    }

    fn store() -> (Arc<Gated>, Arc<Store<u32, String>>) {
        let source = Arc::new(Gated::default());
        let store = Arc::new(store_over(&source, Mode::Eventual, Duration::from_secs(1)));
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
        let early = spawn_lookup(&store, 1);
        until(|| source.loads.load(Ordering::SeqCst) == 1).await;
        source.version.store(1, Ordering::SeqCst);
        assert_eq!(
            store.invalidate(&1, Some(1), RemovalCause::Invalidated),
            Dropped::Flight
        );
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
        assert_eq!(
            store.invalidate(&1, None, RemovalCause::Invalidated),
            Dropped::Entry
        );
        // Cancelled by an invalidation, then by a whole-cache invalidation.
        for all in [false, true] {
            let load = tokio::spawn({
                let store = store.clone();
                async move { store.lookup(&2).await }
            });
            until(|| flights(&store) == 1).await;
            if all {
                store.invalidate_all(RemovalCause::Invalidated);
            } else {
                assert_eq!(
                    store.invalidate(&2, None, RemovalCause::Invalidated),
                    Dropped::Flight
                );
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
        assert_eq!(
            store.invalidate(&1, Some(4), RemovalCause::Invalidated),
            Dropped::Ignored
        );
        assert_eq!(
            store.invalidate(&1, Some(5), RemovalCause::Invalidated),
            Dropped::Ignored
        );
        assert_eq!(
            store.invalidate(&1, Some(6), RemovalCause::Invalidated),
            Dropped::Entry
        );
        assert_eq!(
            store.invalidate(&1, Some(6), RemovalCause::Invalidated),
            Dropped::Nothing
        );
    }

    /// A store over `Rows` with the given bounds, in eventual mode (no lease gate).
    fn bounded(bounds: Bounds<u32, String>) -> (Arc<Rows>, Arc<Store<u32, String>>) {
        let source = Arc::new(Rows::default());
        let dynamic = source.clone() as Arc<dyn Source<u32, String>>;
        let store = Store::new(
            dynamic,
            Mode::Eventual,
            sync_with_lease(Duration::from_secs(1)),
            Arc::new(MemberGate::open()),
            bounds,
        );
        (source, Arc::new(store))
    }

    fn limits(entries: Option<u64>, weight: Option<u64>) -> Bounds<u32, String> {
        Bounds {
            limits: super::super::policy::Limits { entries, weight },
            ..Bounds::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bounded_store_stays_within_its_capacity_under_reads_invalidations_and_repairs() {
        let (source, store) = bounded(limits(Some(50), None));
        for key in 0..500 {
            source.rows.lock().unwrap().insert(key, 1);
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (store, done) = (store.clone(), done.clone());
            let keys: Vec<u32> = (0..500).collect();
            async move {
                let mut most = 0;
                while !done.load(Ordering::SeqCst) {
                    most = most.max(store.entries.held(&keys));
                    // A sample every millisecond: often, without starving the workers.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                most
            }
        });
        let workers: Vec<_> = (0..8u64)
            .map(|worker| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut x = worker * 7919 + 1;
                    for _ in 0..3_000 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        // A hot tenth of the keys gets half the reads.
                        let key = if x % 2 == 0 { x % 50 } else { x % 500 } as u32;
                        match x % 100 {
                            0 => store.invalidate_all(RemovalCause::Invalidated),
                            1..=2 => {
                                store.mark_unverified();
                                store.revalidate(64, usize::MAX).await;
                            }
                            3..=15 => {
                                store.invalidate(&key, None, RemovalCause::Invalidated);
                            }
                            _ => {
                                store.lookup(&key).await.unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.await.unwrap();
        }
        done.store(true, Ordering::SeqCst);
        let most = sampler.await.unwrap();
        assert!(most <= 50, "held {most} entries with a capacity of 50");
        assert!(store.stats_evictions() > 0, "nothing was ever evicted");
        let keys: Vec<u32> = (0..500).collect();
        assert_eq!(
            store.entry_count(),
            store.entries.held(&keys),
            "the policy's count drifted from the map"
        );
    }

    #[tokio::test]
    async fn weight_bounds_the_store_and_a_value_heavier_than_the_budget_is_returned_uncached() {
        let mut bounds = limits(None, Some(100));
        bounds.weigher = Some(Arc::new(|key: &u32, _: &String| *key));
        let (source, store) = bounded(bounds);
        for key in 1..=200 {
            source.rows.lock().unwrap().insert(key, 1);
        }
        for key in 1..=60 {
            store.lookup(&key).await.unwrap();
            assert!(store.weighted_size() <= 100, "{}", store.weighted_size());
        }
        let heavy = store.lookup(&150).await.unwrap();
        assert_eq!(
            heavy.value.unwrap().0,
            "150@1",
            "the heavy value was not returned"
        );
        assert_eq!(store.peek(&150), None, "a value over the budget was cached");
        assert!(store.weighted_size() <= 100);
    }

    #[tokio::test]
    async fn a_load_that_an_invalidation_overtook_installs_nothing_even_in_a_full_store() {
        let (source, store) = bounded(limits(Some(2), None));
        cached_keys(&store, &source, 10..12).await;
        source.gated.store(true, Ordering::SeqCst);
        // Key 1 loads through a bulk flight held open by the gated version check... instead,
        // hold its load open with a gate of its own: a flight that an invalidation removes.
        let flight = Flight::new(now_us());
        store.in_flight.fetch_add(1, SeqCst);
        store.flights.insert(1, flight.clone());
        source.rows.lock().unwrap().insert(1, 1);
        assert_eq!(
            store.invalidate(&1, None, RemovalCause::Invalidated),
            Dropped::Flight
        );
        store.install(&1, &flight, &Ok(Some(("1@0".to_owned(), 0))));
        assert_eq!(
            store.peek(&1),
            None,
            "a load overtaken by an invalidation installed"
        );
        assert_eq!(store.entry_count(), 2, "it evicted for nothing");
        assert_eq!(store.peek(&10).as_deref(), Some("10@1"));
    }

    #[tokio::test(start_paused = true)]
    async fn time_to_live_and_to_idle_expire_entries_and_the_sweep_frees_them() {
        let mut bounds = Bounds::default();
        bounds.expiry.ttl = 100_000;
        let (source, store) = bounded(bounds);
        cached_keys(&store, &source, 0..2).await;
        tokio::time::advance(Duration::from_millis(60)).await;
        assert_eq!(store.peek(&0).as_deref(), Some("0@1"));
        tokio::time::advance(Duration::from_millis(50)).await;
        assert_eq!(store.peek(&0), None, "served past its time to live");
        assert!(!store.lookup(&0).await.unwrap().hit);
        assert_eq!(store.entries.sweep(now_us()), 1, "key 1 was not swept");
        assert_eq!(store.entry_count(), 1);

        let mut bounds = Bounds::default();
        bounds.expiry.tti = 100_000;
        let (source, store) = bounded(bounds);
        cached_keys(&store, &source, 0..1).await;
        for _ in 0..6 {
            tokio::time::advance(Duration::from_millis(50)).await;
            assert!(store.peek(&0).is_some(), "a key read every 50 ms idled out");
        }
        tokio::time::advance(Duration::from_millis(120)).await;
        assert_eq!(store.peek(&0), None, "served past its time to idle");
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_serves_the_old_value_and_reloads_once_in_the_background() {
        let mut bounds = Bounds::default();
        bounds.expiry.refresh = 100_000;
        let (source, store) = bounded(bounds);
        cached_keys(&store, &source, 0..1).await;
        source.rows.lock().unwrap().insert(0, 2);
        tokio::time::advance(Duration::from_millis(150)).await;
        let read = store.lookup(&0).await.unwrap();
        assert!(read.hit, "a refresh-due entry was not served");
        assert_eq!(read.value.unwrap().1, 1);
        store.lookup(&0).await.unwrap();
        let queued = store.reloads.take(10);
        assert_eq!(
            queued,
            vec![0],
            "the refresh was not asked for exactly once"
        );
        store.load_batch(queued).await;
        assert_eq!(store.peek(&0).as_deref(), Some("0@2"), "not refreshed");
    }

    #[tokio::test]
    async fn an_absent_key_is_cached_and_dropped_by_any_invalidation() {
        let (source, store) = bounded(Bounds {
            absent: true,
            ..Bounds::default()
        });
        assert_eq!(store.lookup(&5).await.unwrap().value, None);
        let again = store.lookup(&5).await.unwrap();
        assert!(again.hit && again.value.is_none(), "absence was not cached");
        assert_eq!(store.counters.loads.load(Ordering::SeqCst), 1);
        // The key is created at version 3; its invalidation drops the cached absence.
        source.rows.lock().unwrap().insert(5, 3);
        assert_eq!(
            store.invalidate(&5, Some(3), RemovalCause::InvalidatedRemotely),
            Dropped::Entry
        );
        assert_eq!(store.lookup(&5).await.unwrap().value.unwrap().1, 3);
        // A delayed older invalidation cannot bring the absence back.
        assert_eq!(
            store.invalidate(&5, Some(2), RemovalCause::InvalidatedRemotely),
            Dropped::Ignored
        );
        assert_eq!(store.peek(&5).as_deref(), Some("5@3"));
        // Revalidation keeps an absence the source confirms and drops one it does not.
        assert_eq!(store.lookup(&6).await.unwrap().value, None);
        assert_eq!(store.lookup(&7).await.unwrap().value, None);
        source.rows.lock().unwrap().insert(7, 1);
        store.mark_unverified();
        store.revalidate(10, usize::MAX).await;
        assert!(
            store.lookup(&6).await.unwrap().hit,
            "a confirmed absence was dropped"
        );
        assert_eq!(store.lookup(&7).await.unwrap().value.unwrap().1, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_listener_hears_every_removal_with_its_cause() {
        type Heard = Arc<std::sync::Mutex<Vec<(u32, RemovalCause)>>>;
        let heard: Heard = Arc::default();
        let mut bounds = limits(Some(3), None);
        bounds.expiry.ttl = 1_000_000;
        bounds.listener = Some({
            let heard = heard.clone();
            Arc::new(move |key: &u32, _: &String, cause| heard.lock().unwrap().push((*key, cause)))
        });
        let (source, store) = bounded(bounds);
        cached_keys(&store, &source, 0..3).await;
        store.invalidate(&1, None, RemovalCause::Invalidated);
        store.invalidate(&2, None, RemovalCause::InvalidatedRemotely);
        source.rows.lock().unwrap().insert(0, 2);
        store.mark_unverified();
        store.revalidate(10, usize::MAX).await;
        // Four keys into a capacity of three: one is evicted.
        cached_keys(&store, &source, 10..14).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        store.lookup(&13).await.unwrap();
        let heard = heard.lock().unwrap().clone();
        let causes: Vec<RemovalCause> = heard.iter().map(|(_, cause)| *cause).collect();
        assert_eq!(
            causes,
            vec![
                RemovalCause::Invalidated,
                RemovalCause::InvalidatedRemotely,
                RemovalCause::Repaired,
                RemovalCause::Size,
                RemovalCause::Expired,
            ],
            "{heard:?}"
        );
        assert_eq!(
            &heard[..3],
            &[
                (1, RemovalCause::Invalidated),
                (2, RemovalCause::InvalidatedRemotely),
                (0, RemovalCause::Repaired)
            ]
        );
        assert_eq!(heard[4].0, 13);
    }
}

//! The cache's entries in local heap, with single-flight loading and the stale-load guard.
//!
//! Invariant (stale-load guard, kept by [`Flights`]): a load installs its result only if its
//! flight is still the key's current flight when it finishes; every invalidation cancels the
//! key's flight before it removes the entry.
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
//! in-flight loads in [`Flights`]. Eviction only ever removes entries, never flights, so an
//! evicted key's load in flight follows the same rules as any other.

use std::hash::Hash;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::entries::{Bounds, Entries, RemovalCause};
use super::flights::{Flight, Flights, Loaded};
use super::reloader::ReloadQueue;
use super::stats::CacheCounters;
use crate::clock::{hit_now_us, now_us, HIT_EDGE_US};
use crate::counter::bump;
use crate::error::Result;
use crate::gate::{MemberGate, Mode, ServeRule};
use crate::health::Health;
use crate::source::{Source, Version};
use crate::synchronization::SyncShared;

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

/// Abandons a reader's flight if the reader is dropped before the load answered.
struct Reading<'s, K: Hash + Eq + Clone, V> {
    flights: &'s Flights<K, V>,
    key: &'s K,
    flight: &'s Arc<Flight<V>>,
}

impl<K: Hash + Eq + Clone, V> Drop for Reading<'_, K, V> {
    fn drop(&mut self) {
        if self.flight.result.get().is_none() {
            self.flights.abandon(self.key, self.flight);
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
    /// How old the guarantee behind the answer is: the answer reflects every write committed
    /// and invalidated (through any node) this long before it was given, and every write
    /// committed before the load or check behind it started. For a hit, the younger of the
    /// entry's last check against the source and the peers' leases; for a load, how long ago
    /// the load started. (A hit reads a coarse clock taken a few ms ahead, so its age may be
    /// over-stated by that much, never under-stated.)
    pub age: Duration,
    /// Served although nothing vouches for it, because the source failed: see
    /// [`CacheBuilder::stale_if_error`](crate::cache::CacheBuilder::stale_if_error).
    pub stale: bool,
}

impl<V> Lookup<V> {
    fn hit(value: Option<(V, Version)>, as_of: u64, now: u64) -> Self {
        Self::answer(value, true, as_of, now)
    }

    fn answer(value: Option<(V, Version)>, hit: bool, as_of: u64, now: u64) -> Self {
        Self {
            value,
            hit,
            age: Duration::from_micros(now.saturating_sub(as_of)),
            stale: false,
        }
    }
}

/// [`Store::hit_time`]'s rule, on explicit clocks: `hit` (the coarse hit clock's reading),
/// `precise` (read only when needed) and `open` (whether the gates are open at a time).
fn hit_time(hit: u64, precise: impl FnOnce() -> u64, open: impl Fn(u64) -> bool) -> (u64, bool) {
    if open(hit) && open(hit.saturating_add(HIT_EDGE_US)) {
        return (hit, true);
    }
    let now = precise();
    (now, open(now))
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
    flights: Flights<K, V>,
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
    /// Stale-if-error window (µs): when a load fails, an entry checked this recently is
    /// served instead; 0: off.
    pub(crate) stale_if_error: u64,
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
            flights: Flights::default(),
            source,
            rule: Arc::new(ServeRule::new(mode, sync.gate.clone(), members)),
            sync,
            wake: Arc::default(),
            reloads: ReloadQueue::default(),
            counters,
            stale_if_error: 0,
        }
    }

    /// The time a hit decides by, and whether the gates are open then: the coarse hit clock
    /// ([`hit_now_us`], a few ms ahead) while the gates are open and stay so for another
    /// [`HIT_EDGE_US`]; near their end, or once they are closed, the precise clock. So a hit
    /// judges a gate's end by the coarse clock only with that much to spare: a coarse clock
    /// lagging less than that (the kernel stalled in updating it) still cannot let a hit past
    /// the end, and a longer lag spans a watchdog tick, which ends every lease. (With the gates
    /// closed, an entry's own lease is judged by the precise clock too.)
    fn hit_time(&self) -> (u64, bool) {
        hit_time(hit_now_us(), now_us, |now| self.rule.open(now))
    }

    /// Reads from the heap on a hit (no await, no message); loads once per key on a miss, and
    /// on every read of an entry that cannot be vouched for now (a bypass: see the module).
    pub(crate) async fn lookup(&self, key: &K) -> Result<Lookup<V>> {
        self.lookup_with(key, true).await
    }

    /// As [`lookup`](Self::lookup); with `stale_if_error` applied only if `may_be_stale`
    /// (never for reads that promise more than the lease).
    pub(crate) async fn lookup_with(&self, key: &K, may_be_stale: bool) -> Result<Lookup<V>> {
        let (now, open) = self.hit_time();
        // The gates' anchor is read before the entry: a renewal after the entry was read
        // must not vouch for it.
        let gates = self.rule.gates_vouch_since(now);
        let (repaired, lease) = (self.rule.repaired_at(), self.rule.lease_us());
        let serves = |verified| ServeRule::serves(verified, repaired, open, lease, now);
        if let Some((value, verified)) = self.cached_with(key, now, serves) {
            let as_of = ServeRule::current_as_of(verified, repaired, gates);
            return Ok(Lookup::hit(value, as_of.unwrap_or(verified), now));
        }
        self.count_miss(open);
        self.load_answer(key, 0, may_be_stale).await
    }

    /// Like [`lookup`](Self::lookup), from the heap only if the guarantee behind the entry is
    /// at most `max_age` µs old (and, in bounded mode, the serve rule allows it); else from a
    /// load that started at most `max_age` ago (joined, or started now).
    pub(crate) async fn lookup_within(&self, key: &K, max_age: u64) -> Result<Lookup<V>> {
        let now = now_us();
        let open = self.rule.open(now);
        let gates = self.rule.gates_vouch_since(now);
        let (repaired, lease) = (self.rule.repaired_at(), self.rule.lease_us());
        let bounded = self.rule.mode() == Mode::Bounded;
        let young = |verified| {
            (!bounded || ServeRule::serves(verified, repaired, open, lease, now))
                && ServeRule::current_as_of(verified, repaired, gates)
                    .is_some_and(|as_of| now.saturating_sub(as_of) <= max_age)
        };
        if let Some((value, verified)) = self.cached_with(key, now, young) {
            let as_of = ServeRule::current_as_of(verified, repaired, gates).unwrap_or(verified);
            return Ok(Lookup::hit(value, as_of, now));
        }
        self.count_miss(open);
        self.load_answer(key, now.saturating_sub(max_age), false)
            .await
    }

    /// Like [`lookup`](Self::lookup), from the heap only if the entry holds a value at
    /// `version` or newer (a key cached as absent never does); else from a load that started
    /// after this call (joined, or started now).
    pub(crate) async fn lookup_at_least(&self, key: &K, version: Version) -> Result<Lookup<V>> {
        let (now, open) = self.hit_time();
        let gates = self.rule.gates_vouch_since(now);
        let (repaired, lease) = (self.rule.repaired_at(), self.rule.lease_us());
        let serves = |verified| ServeRule::serves(verified, repaired, open, lease, now);
        if let Some((value @ Some((_, held)), verified)) = self.cached_with(key, now, serves) {
            if held >= version {
                let as_of = ServeRule::current_as_of(verified, repaired, gates);
                return Ok(Lookup::hit(value, as_of.unwrap_or(verified), now));
            }
        }
        self.count_miss(open);
        // `now` is the hit's clock, a few ms ahead: a load must have started after this call
        // by the precise clock, or concurrent readers of the key would never share one.
        self.load_answer(key, now_us(), false).await
    }

    fn count_miss(&self, open: bool) {
        if open {
            bump(&self.counters.misses);
        } else {
            bump(&self.counters.bypasses);
        }
    }

    /// The answer of a load started at or after `since` (joined, or started now); if the
    /// source fails and stale-if-error allows it (and `may_be_stale`), the entry checked
    /// within its window instead.
    async fn load_answer(&self, key: &K, since: u64, may_be_stale: bool) -> Result<Lookup<V>> {
        match self.load_since(key, since).await {
            (Ok(value), started) => Ok(Lookup::answer(value, false, started, now_us())),
            (Err(error), _) if may_be_stale => self.stale_answer(key).ok_or(error),
            (Err(error), _) => Err(error),
        }
    }

    /// What stale-if-error serves when the source fails: the entry, if its last check against
    /// the source is at most the configured window old.
    fn stale_answer(&self, key: &K) -> Option<Lookup<V>> {
        let window = self.stale_if_error;
        if window == 0 {
            return None;
        }
        let now = now_us();
        let recent = |verified: u64| now.saturating_sub(verified) <= window;
        let hit = self.entries.read(key, now, |entry| {
            let verified = entry.verified_at.load(SeqCst);
            let value = entry.value.clone().map(|value| (value, entry.version));
            recent(verified).then_some((value, verified))
        })?;
        let (value, verified) = hit.answer;
        // Counted once as a miss or bypass (the load), and as served stale: not as a hit.
        bump(&self.counters.stale_served);
        let mut answer = Lookup::hit(value, verified, now);
        answer.stale = true;
        Some(answer)
    }

    /// The cached value, if it may be served now; never loads.
    pub(crate) fn peek(&self, key: &K) -> Option<V> {
        let (now, open) = self.hit_time();
        self.cached(key, now, open)
            .flatten()
            .map(|(value, _)| value)
    }

    /// The entry, if it may be served at `now`: unexpired, verified since the last repair, and
    /// the gates open or its verification less than a lease old. (The gates are read before
    /// the repair mark and the entry: a repair marked before the gate renewal that is read
    /// here.) `Some(None)`: the key is cached as absent from the source.
    /// The entry and when it was last verified, if `serve(verified)` allows it at `now`
    /// (unexpired, and the caller's rule).
    fn cached_with(
        &self,
        key: &K,
        now: u64,
        serve: impl FnOnce(u64) -> bool,
    ) -> Option<(Option<(V, Version)>, u64)> {
        let hit = self.entries.read(key, now, |entry| {
            let verified = entry.verified_at.load(SeqCst);
            serve(verified).then(|| {
                let value = entry.value.clone().map(|value| (value, entry.version));
                (value, verified)
            })
        })?;
        self.counters.hits.bump();
        if hit.refresh {
            self.queue_reload(vec![key.clone()]);
        }
        Some(hit.answer)
    }

    fn cached(&self, key: &K, now: u64, open: bool) -> Option<Option<(V, Version)>> {
        let (repaired, lease) = (self.rule.repaired_at(), self.rule.lease_us());
        let serves = |verified| ServeRule::serves(verified, repaired, open, lease, now);
        self.cached_with(key, now, serves).map(|(value, _)| value)
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

    /// Joins the key's flight that started at or after `since` (or starts one) and installs
    /// its result if still current; with when the flight that answered started.
    ///
    /// A flight that started more than a lease ago, or before the last repair, is not joined
    /// either (its answer could be older than the staleness bound allows, or miss what the
    /// repair is about): the reader starts a new one, which replaces it.
    async fn load_since(&self, key: &K, since: u64) -> (Loaded<V>, u64) {
        let now = now_us();
        let flight = self.flights.join_or_start(key, now, |flight| {
            !flight.write && flight.started >= since && self.joinable(flight, now)
        });
        let started = flight.started;
        (self.load_flight(key, flight).await, started)
    }

    async fn load_flight(&self, key: &K, flight: Arc<Flight<V>>) -> Loaded<V> {
        if let Some(done) = &flight.bulk {
            let loaded = flight.bulk_result(done).await;
            self.install(key, &flight, &loaded);
            return loaded;
        }
        let reading = Reading {
            flights: &self.flights,
            key,
            flight: &flight,
        };
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
        drop(reading);
        self.install(key, &flight, &loaded);
        loaded
    }

    /// Starts a write of `key`, before its commit: an invalidation or a repair that comes in
    /// before [`finish_write`](Self::finish_write) keeps the written value out.
    pub(crate) fn start_write(&self, key: &K) -> Arc<Flight<V>> {
        self.flights.start_write(key, now_us())
    }

    /// Ends a write's flight, installing what the writer committed (`None`: nothing, the
    /// commit failed or was dropped) unless the flight was cancelled or replaced meanwhile;
    /// whether it was installed. The entry counts as checked when the write started.
    pub(crate) fn finish_write(
        &self,
        key: &K,
        flight: &Arc<Flight<V>>,
        written: Option<(&V, Version)>,
    ) -> bool {
        let installed = self.flights.finish(key, flight, || {
            written.map(|found| self.entries.install(key, Some(found), flight.started))
        });
        match installed {
            Some(Some(removed)) => {
                self.entries.notify(removed);
                true
            }
            _ => false,
        }
    }

    /// Flights (loads and writes) in progress.
    #[cfg(test)]
    pub(crate) fn flights_in_progress(&self) -> usize {
        self.flights.len()
    }

    /// Whether a reader at `now` may share `flight`'s answer.
    fn joinable(&self, flight: &Flight<V>, now: u64) -> bool {
        self.rule.joinable(flight.started, now)
    }

    fn install(&self, key: &K, flight: &Arc<Flight<V>>, loaded: &Loaded<V>) {
        let removed = self.flights.finish(key, flight, || {
            loaded.as_ref().ok().map(|found| {
                let found = found.as_ref().map(|(value, version)| (value, *version));
                self.entries.install(key, found, flight.started)
            })
        });
        // The listener runs with no lock held.
        if let Some(Some(removed)) = removed {
            self.entries.notify(removed);
        }
    }

    /// Loads `keys` in one bulk call ([`Source::load_many`]) through flights of their own, so
    /// that reads of them meanwhile wait for it and an invalidation meanwhile keeps its result
    /// out of the cache. Keys cached again or already loading are skipped.
    pub(crate) async fn load_batch(&self, keys: Vec<K>) {
        let now = now_us();
        // By the clock of the hit that asked for the refresh, or that hit's refresh would be
        // found not due yet, and skipped.
        let fresh_by = hit_now_us();
        let mut mine: Vec<(K, Arc<Flight<V>>)> = Vec::with_capacity(keys.len());
        for key in keys {
            if self.entries.holds_fresh(&key, fresh_by) {
                continue;
            }
            if let Some(flight) = self.flights.start_bulk(&key, now) {
                mine.push((key, flight));
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
        let cancelled = self.flights.cancel(key);
        let removed = self.entries.remove(key, cause);
        match (removed, cancelled) {
            (true, _) => Dropped::Entry,
            (false, true) => Dropped::Flight,
            (false, false) => Dropped::Nothing,
        }
    }

    /// Drops every entry and cancels the installation of every in-flight load.
    pub(crate) fn invalidate_all(&self, cause: RemovalCause) {
        self.flights.cancel_all();
        self.entries.clear(cause);
    }

    /// Marks every entry unverified as of now (messages may have been missed): none is served
    /// until a check that starts after this finds it unchanged, or a load replaces it.
    pub(crate) fn mark_unverified(&self) {
        self.rule.mark_repaired(now_us());
        self.wake.notify_one();
    }

    /// The source of truth.
    pub(crate) fn source(&self) -> &dyn Source<K, V> {
        &*self.source
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
mod tests;

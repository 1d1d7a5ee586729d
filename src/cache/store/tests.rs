//! The store's invariants, one test each: single flight, the stale-load guard, repair by
//! revalidation, the serve rule with the gate closed, bounds and expiry.

use super::*;
use crate::cache::revalidation::revalidate;
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
    /// When set, loads fail (the source is down).
    failing: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl Source<u32, String> for Rows {
    async fn load(&self, key: &u32) -> Result<Option<(String, Version)>> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(crate::Error::Config("the source is down".into()));
        }
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
    let pass = revalidate(&store, 4, usize::MAX).await.0;
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
        async move { revalidate(&store, 10, usize::MAX).await.0 }
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
        store.rule().pass_due(now_us(), 0, None),
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
    revalidate(&store, 100, usize::MAX).await;
    assert_eq!(store.peek(&1).as_deref(), Some("1@1"));
    assert_eq!(store.peek(&2), None);
}

#[tokio::test]
async fn a_pass_over_its_budget_drops_what_it_does_not_check() {
    let (source, store) = rows_store(Mode::Eventual, Duration::from_secs(1));
    cached_keys(&store, &source, 0..10).await;
    store.mark_unverified();
    let pass = revalidate(&store, 3, 6).await.0;
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
    assert_eq!(store.flights.len(), 0, "the cancelled flight stayed");
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
    let flights = |store: &Store<u32, String>| store.flights.len();
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
async fn a_reader_dropped_mid_load_leaves_no_flight_and_one_of_several_hands_the_load_over() {
    let (source, store) = store();
    let flights = |store: &Store<u32, String>| store.flights.len();
    let read = |key| {
        let store = store.clone();
        tokio::spawn(async move { store.lookup(&key).await })
    };
    // Alone: its flight goes with it.
    let alone = read(1);
    until(|| source.loads.load(Ordering::SeqCst) == 1).await;
    alone.abort();
    assert!(alone.await.unwrap_err().is_cancelled());
    assert_eq!(flights(&store), 0, "the cancelled reader's flight stayed");
    // One of two: the other takes the load over and installs it.
    let (first, second) = (read(2), read(2));
    until(|| source.loads.load(Ordering::SeqCst) == 2).await;
    tokio::task::yield_now().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    assert_eq!(
        flights(&store),
        1,
        "a flight with a reader left was removed"
    );
    until(|| source.loads.load(Ordering::SeqCst) == 3).await;
    source.gate.notify_waiters();
    let loaded = second.await.unwrap().unwrap();
    assert_eq!(loaded.value.map(|(v, _)| v).as_deref(), Some("2@0"));
    assert_eq!(flights(&store), 0);
    assert!(
        store.lookup(&2).await.unwrap().hit,
        "the handed-over load was not installed"
    );
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
                            revalidate(&store, 64, usize::MAX).await;
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
    revalidate(&store, 10, usize::MAX).await;
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
    revalidate(&store, 10, usize::MAX).await;
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

#[tokio::test(start_paused = true)]
async fn at_least_a_version_is_a_hit_only_when_the_entry_holds_it() {
    let (source, store) = rows_store(Mode::Eventual, Duration::from_secs(1));
    cached_keys(&store, &source, 1..2).await;
    let read = store.lookup_at_least(&1, 1).await.unwrap();
    assert!(read.hit && read.value.unwrap().1 == 1);
    // Committed elsewhere, not invalidated here yet: a plain read still serves version 1.
    source.rows.lock().unwrap().insert(1, 2);
    assert_eq!(store.lookup(&1).await.unwrap().value.unwrap().1, 1);
    let read = store.lookup_at_least(&1, 2).await.unwrap();
    assert!(!read.hit, "served version 1 as at least 2");
    assert_eq!(read.value.unwrap().1, 2);
    // The load installed it: now a hit.
    assert!(store.lookup_at_least(&1, 2).await.unwrap().hit);
    // A key the source does not have: loaded every time, never a hit.
    assert!(!store.lookup_at_least(&7, 1).await.unwrap().hit);
    assert_eq!(store.lookup_at_least(&7, 1).await.unwrap().value, None);
}

#[tokio::test(start_paused = true)]
async fn within_a_budget_an_entry_is_served_only_while_its_guarantee_is_young_enough() {
    let (source, store) = rows_store(Mode::Eventual, Duration::from_secs(1));
    cached_keys(&store, &source, 1..2).await;
    tokio::time::advance(Duration::from_millis(300)).await;
    let ms = |n: u64| n * 1_000;
    let read = store.lookup_within(&1, ms(500)).await.unwrap();
    assert!(read.hit, "a 300 ms old check is within 500 ms");
    assert_eq!(read.age, Duration::from_millis(300));
    source.rows.lock().unwrap().insert(1, 2);
    let read = store.lookup_within(&1, ms(100)).await.unwrap();
    assert!(!read.hit, "a 300 ms old check served within 100 ms");
    assert_eq!(read.value.unwrap().1, 2, "the load reads the source now");
    assert_eq!(read.age, Duration::ZERO);
    assert!(store.lookup_within(&1, ms(100)).await.unwrap().hit);
    // A plain lookup says how old its guarantee is too.
    tokio::time::advance(Duration::from_millis(40)).await;
    assert_eq!(
        store.lookup(&1).await.unwrap().age,
        Duration::from_millis(40)
    );
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_a_recent_check_while_the_source_fails_and_no_older() {
    let (source, mut store) = rows_store(Mode::Bounded, Duration::from_secs(1));
    store.stale_if_error = 2_000_000;
    cached_keys(&store, &source, 1..2).await;
    // Past the lease: no lease vouches (none is valid here), so reads go to the source.
    tokio::time::advance(Duration::from_millis(1_500)).await;
    source.failing.store(true, Ordering::SeqCst);
    let read = store.lookup(&1).await.unwrap();
    assert!(read.stale && read.hit, "{read:?}");
    assert_eq!(read.value.unwrap().1, 1);
    assert_eq!(read.age, Duration::from_millis(1_500));
    assert_eq!(
        store
            .counters
            .snapshot(0, 0, Default::default())
            .stale_served,
        1
    );
    // Reads that promise more than the lease fail instead.
    assert!(store.lookup_within(&1, 10_000_000).await.is_err());
    assert!(store.lookup_at_least(&1, 1).await.is_err());
    assert!(store.lookup_with(&1, false).await.is_err());
    // Past the window: the error.
    tokio::time::advance(Duration::from_millis(600)).await;
    assert!(store.lookup(&1).await.is_err());
    // Off (the default): the error at once.
    store.stale_if_error = 0;
    tokio::time::advance(Duration::from_millis(1)).await;
    source.failing.store(false, Ordering::SeqCst);
    cached_keys(&store, &source, 2..3).await;
    tokio::time::advance(Duration::from_millis(1_500)).await;
    source.failing.store(true, Ordering::SeqCst);
    assert!(store.lookup(&2).await.is_err());
}

#[test]
fn a_hit_judges_a_gates_end_by_the_precise_clock_even_when_the_coarse_one_lags() {
    // The gates are open until 1 000 000 µs.
    let open = |now: u64| now < 1_000_000;
    let precise_read = std::cell::Cell::new(false);
    let precise = |at: u64| {
        let read = &precise_read;
        move || {
            read.set(true);
            at
        }
    };
    // Far from the end: the coarse reading decides, the precise clock is not read.
    assert_eq!(hit_time(500_000, precise(490_000), open), (500_000, true));
    assert!(!precise_read.get());
    // The coarse clock lags 200 ms behind a precise clock already past the end: within the
    // edge, so the precise clock decides and the gates are closed.
    assert_eq!(
        hit_time(900_000, precise(1_100_000), open),
        (1_100_000, false)
    );
    // Ahead of the precise clock (as it normally is) and past the end: the precise clock
    // decides, and the gates are still open by it.
    assert_eq!(hit_time(1_010_000, precise(990_000), open), (990_000, true));
}

//! Cache counters: lock-free atomics shared by the handle, the actor and loads.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::counter::StripedCounter;
use crate::synchronization::stats::SyncStats;

/// A snapshot of a [`Cache`](crate::Cache)'s counters since it was spawned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Reads answered from the heap.
    pub hits: u64,
    /// Reads that had to wait for a load (their own or a concurrent reader's).
    pub misses: u64,
    /// Reads sent to the source because no gate and no recent check vouched for the entry
    /// (bounded mode: some peer's lease had run out, or a member is out of reach).
    pub bypasses: u64,
    /// Calls to [`Source::load`](crate::Source::load).
    pub loads: u64,
    /// Every call into the source: loads, and the bulk version checks of revalidation.
    pub source_calls: u64,
    /// Revalidation passes: every entry checked against the source in bulk (after a possible
    /// loss, while a peer's lease has lapsed, and every `revalidate_every`).
    pub revalidations: u64,
    /// Entries whose version revalidation checked.
    pub revalidated_keys: u64,
    /// Entries revalidation dropped: changed or deleted in the source, or past its budget.
    pub revalidation_drops: u64,
    /// Bulk version checks that failed (their entries stay unverified, so unserved).
    pub revalidation_failures: u64,
    /// Loads that returned an error.
    pub load_failures: u64,
    /// Keys this node invalidated and published (an `invalidate_all` counts as one).
    pub invalidations_sent: u64,
    /// Keys peers invalidated (an `invalidate_all` counts as one).
    pub invalidations_received: u64,
    /// Whole-cache invalidations received (a peer's `invalidate_all`, or a batch that passed
    /// the batch cap).
    pub invalidate_alls_received: u64,
    /// Received invalidations older than the cached version, so ignored.
    pub invalidations_ignored: u64,
    /// Keys queued for the reloader because a peer invalidated a key this node had cached
    /// (or a revalidation found it changed).
    pub reloads: u64,
    /// Times every entry was marked unverified because messages may have been missed (each
    /// is served again once revalidation finds it unchanged in the source).
    pub repairs: u64,
    /// Times the cache's Synchronization actor failed and was spawned again.
    pub sync_restarts: u64,
    /// Entries evicted to stay within `max_capacity` / `max_weight` (and values too heavy to
    /// be cached at all).
    pub evictions: u64,
    /// Entries removed because their time to live or to idle ran out.
    pub expirations: u64,
    /// Entries in the heap now.
    pub entries: u64,
    /// Their total weight now (see [`Cache::weighted_size`](crate::Cache::weighted_size)).
    pub weighted_size: u64,
    /// The topic's Synchronization counters (decode failures, gaps, ...).
    pub sync: SyncStats,
}

#[derive(Debug, Default)]
pub(crate) struct CacheCounters {
    pub(crate) hits: StripedCounter,
    pub(crate) misses: AtomicU64,
    pub(crate) bypasses: AtomicU64,
    pub(crate) loads: AtomicU64,
    pub(crate) source_calls: AtomicU64,
    pub(crate) revalidations: AtomicU64,
    pub(crate) revalidated_keys: AtomicU64,
    pub(crate) revalidation_drops: AtomicU64,
    pub(crate) revalidation_failures: AtomicU64,
    pub(crate) load_failures: AtomicU64,
    pub(crate) invalidations_sent: AtomicU64,
    pub(crate) invalidations_received: AtomicU64,
    pub(crate) invalidate_alls_received: AtomicU64,
    pub(crate) invalidations_ignored: AtomicU64,
    pub(crate) reloads: AtomicU64,
    pub(crate) repairs: AtomicU64,
    pub(crate) sync_restarts: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) expirations: AtomicU64,
}

impl CacheCounters {
    pub(crate) fn snapshot(
        &self,
        entries: usize,
        weighted_size: u64,
        sync: SyncStats,
    ) -> CacheStats {
        CacheStats {
            hits: self.hits.sum(),
            misses: self.misses.load(Relaxed),
            bypasses: self.bypasses.load(Relaxed),
            loads: self.loads.load(Relaxed),
            source_calls: self.source_calls.load(Relaxed),
            revalidations: self.revalidations.load(Relaxed),
            revalidated_keys: self.revalidated_keys.load(Relaxed),
            revalidation_drops: self.revalidation_drops.load(Relaxed),
            revalidation_failures: self.revalidation_failures.load(Relaxed),
            load_failures: self.load_failures.load(Relaxed),
            invalidations_sent: self.invalidations_sent.load(Relaxed),
            invalidations_received: self.invalidations_received.load(Relaxed),
            invalidate_alls_received: self.invalidate_alls_received.load(Relaxed),
            invalidations_ignored: self.invalidations_ignored.load(Relaxed),
            reloads: self.reloads.load(Relaxed),
            repairs: self.repairs.load(Relaxed),
            sync_restarts: self.sync_restarts.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            expirations: self.expirations.load(Relaxed),
            entries: entries as u64,
            weighted_size,
            sync,
        }
    }
}

//! Cache counters: lock-free atomics shared by the handle, the actor and loads.

use std::sync::atomic::AtomicU64;

use crate::counter::StripedCounter;
use crate::synchronization::stats::SyncStats;

crate::counter::counter_table! {
    /// A snapshot of a [`Cache`](crate::Cache)'s counters since it was spawned.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct CacheStats from CacheCounters {
        /// Reads answered from the heap.
        hits: StripedCounter => "ractor_cache_sync_hits_total",
        /// Reads that had to wait for a load (their own or a concurrent reader's).
        misses: AtomicU64 => "ractor_cache_sync_misses_total",
        /// Reads sent to the source because no gate and no recent check vouched for the entry
        /// (bounded mode: some peer's lease had run out, or a member is out of reach).
        bypasses: AtomicU64 => "ractor_cache_sync_bypasses_total",
        /// Reads answered with an entry nothing vouched for because the source failed
        /// ([`CacheBuilder::stale_if_error`](crate::cache::CacheBuilder::stale_if_error)).
        stale_served: AtomicU64 => "ractor_cache_sync_stale_served_total",
        /// Calls to [`Source::load`](crate::Source::load).
        loads: AtomicU64 => "ractor_cache_sync_loads_total",
        /// Every call into the source: loads, and the bulk version checks of revalidation.
        source_calls: AtomicU64 => "ractor_cache_sync_source_calls_total",
        /// Revalidation passes: every entry checked against the source in bulk (after a possible
        /// loss, while a peer's lease has lapsed, and every `revalidate_every`).
        revalidations: AtomicU64 => "ractor_cache_sync_revalidations_total",
        /// Entries whose version revalidation checked.
        revalidated_keys: AtomicU64 => "ractor_cache_sync_revalidated_keys_total",
        /// Entries revalidation dropped: changed or deleted in the source, or past its budget.
        revalidation_drops: AtomicU64 => "ractor_cache_sync_revalidation_drops_total",
        /// Bulk version checks that failed (their entries stay unverified, so unserved).
        revalidation_failures: AtomicU64 => "ractor_cache_sync_revalidation_failures_total",
        /// Loads that returned an error.
        load_failures: AtomicU64 => "ractor_cache_sync_load_failures_total",
        /// Keys this node invalidated and published (an `invalidate_all` counts as one).
        invalidations_sent: AtomicU64 => "ractor_cache_sync_invalidations_sent_total",
        /// Keys peers invalidated (an `invalidate_all` counts as one).
        invalidations_received: AtomicU64 => "ractor_cache_sync_invalidations_applied_total",
        /// Whole-cache invalidations received (a peer's `invalidate_all`, or a batch that passed
        /// the batch cap).
        invalidate_alls_received: AtomicU64 => "ractor_cache_sync_invalidate_alls_received_total",
        /// Received invalidations older than the cached version, so ignored.
        invalidations_ignored: AtomicU64 => "ractor_cache_sync_invalidations_ignored_total",
        /// Keys queued for the reloader because a peer invalidated a key this node had cached
        /// (or a revalidation found it changed).
        reloads: AtomicU64 => "ractor_cache_sync_reloads_total",
        /// Times every entry was marked unverified because messages may have been missed (each
        /// is served again once revalidation finds it unchanged in the source).
        repairs: AtomicU64 => "ractor_cache_sync_repairs_total",
        /// Times the cache's Synchronization actor failed and was spawned again.
        sync_restarts: AtomicU64 => "ractor_cache_sync_sync_restarts_total",
        /// Entries evicted to stay within `max_capacity` / `max_weight` (and values too heavy to
        /// be cached at all).
        evictions: AtomicU64 => "ractor_cache_sync_evictions_total",
        /// Entries removed because their time to live or to idle ran out.
        expirations: AtomicU64 => "ractor_cache_sync_expirations_total",
        /// Changed keys the source's change feed reported.
        feed_changes: AtomicU64 => "ractor_cache_sync_feed_changes_total",
        /// Times the change feed's connection broke and came back.
        feed_reconnects: AtomicU64 => "ractor_cache_sync_feed_reconnects_total",
        /// Times the change feed may have missed changes (a reconnect, an overflow, a pruned
        /// log), so every entry was checked against the source.
        feed_repairs: AtomicU64 => "ractor_cache_sync_feed_repairs_total",
    }
    extra {
        /// Entries in the heap now.
        entries: u64,
        /// Their total weight now (see [`Cache::weighted_size`](crate::Cache::weighted_size)).
        weighted_size: u64,
        /// The topic's Synchronization counters (decode failures, gaps, ...).
        sync: SyncStats,
    }
}

impl CacheCounters {
    pub(crate) fn snapshot(
        &self,
        entries: usize,
        weighted_size: u64,
        sync: SyncStats,
    ) -> CacheStats {
        self.read_into(CacheStats {
            entries: entries as u64,
            weighted_size,
            sync,
            ..CacheStats::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_one_metric_and_the_published_names_stay() {
        let stats = CacheStats::default();
        let all: Vec<_> = stats.counters().chain(stats.sync.counters()).collect();
        let mut metrics: Vec<&str> = all.iter().map(|(_, metric, _)| *metric).collect();
        metrics.sort_unstable();
        metrics.dedup();
        assert_eq!(metrics.len(), all.len(), "two counters share a metric");
        assert!(metrics
            .iter()
            .all(|m| m.starts_with("ractor_cache_sync_") && m.ends_with("_total")));
        // Names operators' dashboards already use.
        for (field, metric) in [
            ("hits", "ractor_cache_sync_hits_total"),
            (
                "invalidations_received",
                "ractor_cache_sync_invalidations_applied_total",
            ),
            ("received", "ractor_cache_sync_envelopes_received_total"),
            ("unverified", "ractor_cache_sync_unverified_total"),
        ] {
            assert!(
                all.iter().any(|(f, m, _)| *f == field && *m == metric),
                "{field}"
            );
        }
    }

    #[test]
    fn a_snapshot_reads_every_counter() {
        let counters = CacheCounters::default();
        counters.hits.bump();
        crate::counter::add(&counters.expirations, 3);
        let stats = counters.snapshot(2, 5, SyncStats::default());
        assert_eq!((stats.hits, stats.expirations), (1, 3));
        assert_eq!((stats.entries, stats.weighted_size), (2, 5));
    }
}

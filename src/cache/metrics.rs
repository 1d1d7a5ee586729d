//! A cache's metrics through the `metrics` facade: once a second, each cache publishes its
//! counters (as absolute values, so the read path pays nothing) and gauges, labelled with its
//! topic. Install any `metrics` recorder (Prometheus, StatsD, ...) to collect them; without one
//! this costs a few atomic loads per second. (The node publishes its peer figures from its
//! watchdog.)

use std::time::Duration;

use metrics::{counter, gauge};
use ractor::ActorStatus;

use super::actor::CacheKey;
use super::Cache;
use crate::health::Health;

/// How often figures are published.
pub(crate) const INTERVAL: Duration = Duration::from_secs(1);

/// Publishes `cache`'s figures every [`INTERVAL`] until its actor stops.
pub(crate) async fn report_cache<K: CacheKey, V: Clone + Send + Sync + 'static>(
    cache: Cache<K, V>,
) {
    let topic = cache.topic().name().to_owned();
    let mut ticks = tokio::time::interval(INTERVAL);
    loop {
        ticks.tick().await;
        if matches!(
            cache.actor().get_status(),
            ActorStatus::Stopped | ActorStatus::Stopping
        ) {
            return;
        }
        publish_cache(&cache, &topic);
    }
}

fn publish_cache<K: CacheKey, V: Clone + Send + Sync + 'static>(cache: &Cache<K, V>, topic: &str) {
    let s = cache.stats();
    let counters = [
        ("ractor_cache_sync_hits_total", s.hits),
        ("ractor_cache_sync_misses_total", s.misses),
        ("ractor_cache_sync_loads_total", s.loads),
        ("ractor_cache_sync_load_failures_total", s.load_failures),
        ("ractor_cache_sync_bypasses_total", s.bypasses),
        (
            "ractor_cache_sync_invalidations_sent_total",
            s.invalidations_sent,
        ),
        (
            "ractor_cache_sync_invalidations_applied_total",
            s.invalidations_received,
        ),
        (
            "ractor_cache_sync_invalidations_ignored_total",
            s.invalidations_ignored,
        ),
        ("ractor_cache_sync_reloads_total", s.reloads),
        ("ractor_cache_sync_repairs_total", s.repairs),
        ("ractor_cache_sync_source_calls_total", s.source_calls),
        ("ractor_cache_sync_revalidations_total", s.revalidations),
        (
            "ractor_cache_sync_revalidated_keys_total",
            s.revalidated_keys,
        ),
        (
            "ractor_cache_sync_revalidation_drops_total",
            s.revalidation_drops,
        ),
        (
            "ractor_cache_sync_revalidation_failures_total",
            s.revalidation_failures,
        ),
        ("ractor_cache_sync_gaps_total", s.sync.gaps),
        (
            "ractor_cache_sync_decode_failures_total",
            s.sync.decode_failures,
        ),
        (
            "ractor_cache_sync_lease_expiries_total",
            s.sync.lease_expiries,
        ),
        (
            "ractor_cache_sync_backlog_overflows_total",
            s.sync.backlog_overflows,
        ),
        (
            "ractor_cache_sync_envelopes_sent_total",
            s.sync.envelopes_sent,
        ),
        (
            "ractor_cache_sync_envelopes_received_total",
            s.sync.received,
        ),
        ("ractor_cache_sync_evictions_total", s.evictions),
        ("ractor_cache_sync_expirations_total", s.expirations),
        (
            "ractor_cache_sync_unknown_origins_total",
            s.sync.unknown_origins,
        ),
        ("ractor_cache_sync_unverified_total", s.sync.unverified),
    ];
    for (name, value) in counters {
        counter!(name, "topic" => topic.to_owned()).absolute(value);
    }
    gauge!("ractor_cache_sync_entries", "topic" => topic.to_owned()).set(s.entries as f64);
    gauge!("ractor_cache_sync_weighted_size", "topic" => topic.to_owned())
        .set(s.weighted_size as f64);
    let health = match cache.health() {
        Health::Healthy => 0.0,
        Health::Repairing => 1.0,
        _ => 2.0,
    };
    gauge!("ractor_cache_sync_health", "topic" => topic.to_owned()).set(health);
}

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
    for (_, metric, value) in s.counters().chain(s.sync.counters()) {
        counter!(metric, "topic" => topic.to_owned()).absolute(value);
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

//! The revalidation task: one per cache, checking its entries' versions against the source in
//! bulk when they cannot be vouched for by leases alone — after a repair (messages may have
//! been missed), while the lease gate is closed (a peer hung, crashed or is partitioned), and
//! every `revalidate_every` if set (writes that bypass the application).
//!
//! It sleeps on a notification (a repair, a lease that ran out, the membership gate closing)
//! and otherwise wakes once per lease: idle, it costs one timer per lease and nothing else.
//! With a time to live or to idle it also sweeps expired entries out of memory, every quarter
//! of the shorter setting.

use std::sync::Weak;
use std::time::Duration;

use super::actor::CacheKey;
use super::store::Store;
use super::Inner;
use crate::clock::now_us;
use crate::counter::{add, bump};

/// Revalidation and reload settings of one cache (the reloader shares the chunk size).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Revalidation {
    /// Check every entry this often even while every gate is open (off: `None`).
    pub(crate) every: Option<Duration>,
    /// Keys per bulk version check.
    pub(crate) chunk: usize,
    /// Most entries one pass checks; the rest are dropped.
    pub(crate) budget: usize,
    /// Most bulk reloads running at once.
    pub(crate) reload_calls: usize,
}

impl Default for Revalidation {
    fn default() -> Self {
        Self {
            every: None,
            chunk: 1_000,
            budget: 100_000,
            reload_calls: 1,
        }
    }
}

/// Runs until the cache is dropped.
pub(crate) async fn run<K: CacheKey, V: Clone + Send + Sync + 'static>(
    cache: Weak<Inner<K, V>>,
    settings: Revalidation,
    sweep_every: Option<u64>,
) {
    let Some((wake, rule)) = cache
        .upgrade()
        .map(|c| (c.store.wake.clone(), c.store.rule().clone()))
    else {
        return;
    };
    let every = settings
        .every
        .map(|e| u64::try_from(e.as_micros()).unwrap_or(u64::MAX));
    // The repair the Synchronization actor makes when it starts came before any entry.
    let mut last = now_us();
    // A pass some of whose checks failed (the source is down) is tried again after this.
    let mut retry_at: Option<u64> = None;
    let mut sweep_at = sweep_every.map(|every| now_us().saturating_add(every));
    loop {
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let now = now_us();
        let lease_us = rule.lease_us();
        if let (Some(at), Some(every)) = (sweep_at, sweep_every) {
            if now >= at {
                cache.store.entries.sweep(now);
                sweep_at = Some(now.saturating_add(every));
            }
        }
        if cache.store.is_empty() {
            // Nothing to check: whatever is cached from now on is verified after every repair
            // so far (a load in flight from before stays unverified until a read replaces it).
            last = now;
        } else if rule.pass_due(now, last, every) || retry_at.is_some_and(|t| now >= t) {
            last = now;
            let (pass, changed) = revalidate(&cache.store, settings.chunk, settings.budget).await;
            cache.reload(changed);
            let counters = &cache.store.counters;
            bump(&counters.revalidations);
            add(&counters.revalidated_keys, pass.checked);
            add(
                &counters.revalidation_drops,
                pass.dropped + pass.over_budget,
            );
            add(&counters.revalidation_failures, pass.failed);
            retry_at = (pass.failed > 0).then(|| now_us() + lease_us / 4);
            if pass.over_budget > 0 {
                tracing::warn!(
                    dropped = pass.over_budget,
                    budget = settings.budget,
                    "more entries than one revalidation pass checks: dropped the rest"
                );
            }
            continue;
        }
        // A closed gate needs a pass every half lease; otherwise wake on a repair, a lapsed
        // lease, the membership gate closing, `every`, or after one lease at the latest.
        let mut nap = if rule.open(now) {
            lease_us
        } else {
            lease_us / 4
        };
        drop(cache);
        if let Some(every) = every {
            nap = nap.min(last.saturating_add(every).saturating_sub(now));
        }
        if let Some(retry_at) = retry_at {
            nap = nap.min(retry_at.saturating_sub(now));
        }
        if let Some(sweep_at) = sweep_at {
            nap = nap.min(sweep_at.saturating_sub(now));
        }
        let nap = nap.max(1_000);
        let _ = tokio::time::timeout(Duration::from_micros(nap), async {
            tokio::select! {
                () = wake.notified() => {}
                () = rule.closed() => {}
            }
        })
        .await;
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

/// Checks every entry's version against the source, `chunk` keys per call: an unchanged
/// entry is verified as of the call's start, a changed or deleted one dropped. At most
/// `budget` entries are checked; the rest are dropped (a read loads them again, verified).
/// Returns what it did, and the keys it dropped because the source has another version
/// of them (worth reloading: they were cached because they were read).
pub(crate) async fn revalidate<K: CacheKey, V: Clone + Send + Sync + 'static>(
    store: &Store<K, V>,
    chunk: usize,
    budget: usize,
) -> (Pass, Vec<K>) {
    let mut changed = Vec::new();
    let mut pass = Pass::default();
    let mut all = store.entries.versions();
    if all.len() > budget {
        for (key, version) in all.drain(budget..) {
            if store.entries.remove_changed(&key, version) {
                pass.over_budget += 1;
            }
        }
    }
    for part in all.chunks(chunk.max(1)) {
        let keys: Vec<K> = part.iter().map(|(key, _)| key.clone()).collect();
        let started = now_us();
        bump(&store.counters.source_calls);
        let versions = match store.source().versions(&keys).await {
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
                store.entries.verify(key, *cached, started);
            } else if store.entries.remove_changed(key, *cached) {
                pass.dropped += 1;
                if current.is_some() {
                    changed.push(key.clone());
                }
            }
        }
    }
    (pass, changed)
}

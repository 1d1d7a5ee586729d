//! The change-feed task: one per cache given a [`ChangeFeed`], applying the source's committed
//! changes as it applies a peer's invalidations and keeping the feed's lease (see
//! [`ChangeFeed`]).
//!
//! Order is the invariant: every change the feed delivered before a barrier is applied (the
//! entry dropped, a load in flight kept out of the heap) before the barrier renews the lease,
//! on this one task.

use std::sync::Weak;

use super::actor::CacheKey;
use super::entries::RemovalCause;
use super::store::Dropped;
use super::Inner;
use crate::counter::{add, bump};
use crate::feed::{ChangeFeed, FeedEvent};

/// Runs until the feed ends or the cache is dropped.
pub(crate) async fn run<K: CacheKey, V: Clone + Send + Sync + 'static>(
    cache: Weak<Inner<K, V>>,
    mut feed: Box<dyn ChangeFeed<K>>,
) {
    loop {
        let event = feed.next().await;
        let Some(cache) = cache.upgrade() else {
            return;
        };
        let store = &cache.store;
        let counters = &store.counters;
        match event {
            None => {
                tracing::warn!(
                    topic = cache.topic.name(),
                    "the change feed ended: the cache serves by its peers' leases alone"
                );
                store.rule().feed.detach();
                return;
            }
            Some(FeedEvent::Changed(changes)) => {
                add(&counters.feed_changes, changes.len() as u64);
                // Keys this node had cached or was loading are read again at once, as after a
                // peer's invalidation.
                let mut hot = Vec::new();
                for (key, version) in changes {
                    match store.invalidate(&key, version, RemovalCause::SourceChanged) {
                        Dropped::Entry | Dropped::Flight => hot.push(key),
                        Dropped::Ignored => bump(&counters.invalidations_ignored),
                        Dropped::Nothing => {}
                    }
                }
                cache.reload(hot);
            }
            Some(FeedEvent::Barrier(stamp)) => store.rule().feed.barrier(stamp.0),
            Some(FeedEvent::Reconnected) => {
                bump(&counters.feed_reconnects);
                bump(&counters.feed_repairs);
                tracing::info!(
                    topic = cache.topic.name(),
                    "the change feed reconnected: checking every entry against the source"
                );
                store.mark_unverified();
            }
            Some(FeedEvent::Lost(reason)) => {
                bump(&counters.feed_repairs);
                tracing::warn!(
                    topic = cache.topic.name(),
                    %reason,
                    "the change feed may have missed changes: checking every entry against the source"
                );
                store.mark_unverified();
            }
        }
    }
}

//! Reloading hot keys after they were invalidated: one queue and one task per cache, so an
//! invalidation storm never spawns a task per envelope, and at most `max_reload_calls` bulk
//! loads ([`Source::load_many`](crate::Source::load_many)) per cache run at a time.
//!
//! Keys are queued once each; a full queue drops what does not fit (those keys load on their
//! next read, as any miss). The task takes up to one chunk at a time and loads it through the
//! store's flights, so a reload follows the same rules as a read's load: single flight, and no
//! install after an invalidation of the key.

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

use super::Inner;

/// Most keys waiting to be reloaded.
const MAX_QUEUED: usize = 100_000;

/// Keys waiting to be reloaded, each once.
pub(crate) struct ReloadQueue<K> {
    queued: Mutex<(VecDeque<K>, HashSet<K>)>,
    wake: Arc<tokio::sync::Notify>,
}

impl<K: Hash + Eq + Clone> Default for ReloadQueue<K> {
    fn default() -> Self {
        Self {
            queued: Mutex::new((VecDeque::new(), HashSet::new())),
            wake: Arc::default(),
        }
    }
}

impl<K> ReloadQueue<K> {
    /// Wakes the task so that it sees the cache is gone.
    pub(crate) fn wake_to_end(&self) {
        self.wake.notify_one();
    }
}

impl<K: Hash + Eq + Clone> ReloadQueue<K> {
    /// Queues `keys` (those not queued already); returns how many were queued and how many did
    /// not fit.
    pub(crate) fn push(&self, keys: impl IntoIterator<Item = K>) -> (u64, u64) {
        let (mut queued, mut dropped) = (0, 0);
        {
            let mut guard = self.queued.lock().unwrap_or_else(|e| e.into_inner());
            let (order, set) = &mut *guard;
            for key in keys {
                if set.len() >= MAX_QUEUED {
                    dropped += 1;
                } else if set.insert(key.clone()) {
                    order.push_back(key);
                    queued += 1;
                }
            }
        }
        if queued > 0 {
            self.wake.notify_one();
        }
        (queued, dropped)
    }

    /// Takes up to `n` keys, oldest first.
    pub(crate) fn take(&self, n: usize) -> Vec<K> {
        let mut guard = self.queued.lock().unwrap_or_else(|e| e.into_inner());
        let (order, set) = &mut *guard;
        let n = n.min(order.len());
        let keys: Vec<K> = order.drain(..n).collect();
        for key in &keys {
            set.remove(key);
        }
        keys
    }
}

/// Runs until the cache is dropped: reloads queued keys, `chunk` per bulk load, at most
/// `calls` bulk loads at a time.
pub(crate) async fn run<K, V>(cache: Weak<Inner<K, V>>, chunk: usize, calls: usize)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    let Some(wake) = cache.upgrade().map(|c| c.store.reloads.wake.clone()) else {
        return;
    };
    let mut running = tokio::task::JoinSet::new();
    loop {
        if running.len() >= calls.max(1) {
            running.join_next().await;
            continue;
        }
        let Some(inner) = cache.upgrade() else {
            return;
        };
        let keys = inner.store.reloads.take(chunk.max(1));
        if keys.is_empty() {
            drop(inner);
            // A push since `take` left a permit: no wake-up is lost.
            if running.is_empty() {
                wake.notified().await;
            } else {
                tokio::select! {
                    () = wake.notified() => {}
                    _ = running.join_next() => {}
                }
            }
            continue;
        }
        running.spawn(async move { inner.store.load_batch(keys).await });
    }
}

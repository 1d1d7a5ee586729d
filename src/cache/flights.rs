//! Loads in flight, one per key, and the stale-load guard.
//!
//! Invariant (stale-load guard): a load installs its result only if its flight is still the
//! key's current flight when it finishes. Every invalidation removes the key's flight before it
//! removes the entry, and installing happens while holding the flight map's lock for that key
//! ([`Flights::finish`]), so a load that started before an invalidation can never install
//! afterwards. (An invalidation skips the flight map when a counter says it is empty: the
//! counter is raised before a flight is added and lowered after it is removed, so it never
//! reads 0 while a flight exists.)

use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use tokio::sync::OnceCell;

use crate::error::Result;
use crate::source::Version;

pub(crate) type Loaded<V> = Result<Option<(V, Version)>>;

/// One in-progress load of one key, shared by every reader that asks meanwhile.
pub(crate) struct Flight<V> {
    /// When the load started: its result reflects every commit that finished before.
    pub(crate) started: u64,
    pub(crate) result: OnceCell<Loaded<V>>,
    /// Loaded with other keys in one bulk call by the reloader: readers wait for `done`
    /// instead of loading themselves.
    pub(crate) bulk: Option<tokio::sync::Notify>,
    /// A write's: the value comes from the writer's commit, not a load. Readers never join it
    /// (they load, and their flight replaces it); an invalidation or a repair cancels it, and
    /// then the written value is not installed.
    pub(crate) write: bool,
}

impl<V> Flight<V> {
    pub(crate) fn new(started: u64) -> Arc<Self> {
        Arc::new(Self {
            started,
            result: OnceCell::new(),
            bulk: None,
            write: false,
        })
    }

    pub(crate) fn bulk(started: u64) -> Arc<Self> {
        Arc::new(Self {
            started,
            result: OnceCell::new(),
            bulk: Some(tokio::sync::Notify::new()),
            write: false,
        })
    }

    fn write(started: u64) -> Arc<Self> {
        Arc::new(Self {
            started,
            result: OnceCell::new(),
            bulk: None,
            write: true,
        })
    }

    /// A bulk flight's result, once the bulk call has answered.
    pub(crate) async fn bulk_result(&self, done: &tokio::sync::Notify) -> Loaded<V>
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
    pub(crate) fn answer(&self, result: Loaded<V>) {
        let _ = self.result.set(result);
        if let Some(done) = &self.bulk {
            done.notify_waiters();
        }
    }
}

/// Every key's flight, in a sharded locked map whose entry lock serialises installing against
/// invalidating.
pub(crate) struct Flights<K, V> {
    map: DashMap<K, Arc<Flight<V>>, foldhash::fast::RandomState>,
    /// How many flights the map holds, changed under the flight's entry lock. An invalidation
    /// that reads 0 skips the map: any flight it would have cancelled starts after the read,
    /// so after the commit the invalidation follows, and loads the new value.
    count: AtomicUsize,
}

impl<K: Hash + Eq + Clone, V> Default for Flights<K, V> {
    fn default() -> Self {
        Self {
            map: DashMap::with_hasher(Default::default()),
            count: AtomicUsize::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone, V> Flights<K, V> {
    /// The key's flight if `joinable` says it may be shared, or a new one started at `now`
    /// (which replaces one that may not).
    pub(crate) fn join_or_start(
        &self,
        key: &K,
        now: u64,
        joinable: impl FnOnce(&Flight<V>) -> bool,
    ) -> Arc<Flight<V>> {
        match self.map.entry(key.clone()) {
            MapEntry::Occupied(current) if joinable(current.get()) => current.get().clone(),
            MapEntry::Occupied(mut old) => {
                let fresh = Flight::new(now);
                old.insert(fresh.clone());
                fresh
            }
            MapEntry::Vacant(vacant) => {
                self.count.fetch_add(1, SeqCst);
                vacant.insert(Flight::new(now)).clone()
            }
        }
    }

    /// A write's flight for `key` (see [`Flight::write`]), replacing any flight there.
    pub(crate) fn start_write(&self, key: &K, now: u64) -> Arc<Flight<V>> {
        let flight = Flight::write(now);
        // Counted before it is in the map (an invalidation reading 0 skips the map).
        self.count.fetch_add(1, SeqCst);
        if self.map.insert(key.clone(), flight.clone()).is_some() {
            self.count.fetch_sub(1, SeqCst); // it replaced one
        }
        flight
    }

    /// A new bulk flight for `key`, unless one is in flight already.
    pub(crate) fn start_bulk(&self, key: &K, now: u64) -> Option<Arc<Flight<V>>> {
        let MapEntry::Vacant(vacant) = self.map.entry(key.clone()) else {
            return None;
        };
        self.count.fetch_add(1, SeqCst);
        Some(vacant.insert(Flight::bulk(now)).clone())
    }

    /// Ends `flight`: if it is still the key's current flight, runs `install` under the key's
    /// lock (no invalidation can come between) and removes it. `None`: it was cancelled or
    /// replaced, and its result must not be installed.
    pub(crate) fn finish<R>(
        &self,
        key: &K,
        flight: &Arc<Flight<V>>,
        install: impl FnOnce() -> R,
    ) -> Option<R> {
        let MapEntry::Occupied(current) = self.map.entry(key.clone()) else {
            return None;
        };
        if !Arc::ptr_eq(current.get(), flight) {
            return None;
        }
        let installed = install();
        current.remove();
        self.count.fetch_sub(1, SeqCst);
        Some(installed)
    }

    /// A reader of `flight` was dropped before it had an answer (its task aborted, a timeout,
    /// a disconnected client). If no other reader holds the flight, it is removed: nobody is
    /// left to finish it, and a key never read again would keep it for good. With other readers
    /// it stays, and one of them takes over the load. Decided under the key's lock, where
    /// readers join, so no reader can join in between.
    pub(crate) fn abandon(&self, key: &K, flight: &Arc<Flight<V>>) {
        let MapEntry::Occupied(current) = self.map.entry(key.clone()) else {
            return;
        };
        // The map's reference and the abandoning reader's: nobody else.
        let alone = Arc::strong_count(flight) <= 2;
        if Arc::ptr_eq(current.get(), flight) && flight.result.get().is_none() && alone {
            current.remove();
            self.count.fetch_sub(1, SeqCst);
        }
    }

    /// Cancels the key's flight, if any: its result will not be installed.
    pub(crate) fn cancel(&self, key: &K) -> bool {
        if self.count.load(SeqCst) == 0 {
            return false;
        }
        let cancelled = self.map.remove(key).is_some();
        if cancelled {
            self.count.fetch_sub(1, SeqCst);
        }
        cancelled
    }

    /// Cancels every flight.
    pub(crate) fn cancel_all(&self) {
        let mut removed = 0;
        self.map.retain(|_, _| {
            removed += 1;
            false
        });
        self.count.fetch_sub(removed, SeqCst);
    }

    /// How many flights there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.count.load(SeqCst)
    }

    /// Puts `flight` in as the key's flight (tests that stage a race).
    #[cfg(test)]
    pub(crate) fn insert(&self, key: K, flight: Arc<Flight<V>>) {
        self.count.fetch_add(1, SeqCst);
        if self.map.insert(key, flight).is_some() {
            self.count.fetch_sub(1, SeqCst);
        }
    }
}

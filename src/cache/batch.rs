//! Local invalidations waiting to be published, coalesced: one envelope carries every key
//! invalidated since the last one went out, each key once. Bounded: past `max_keys` the batch
//! escalates to "invalidate everything", so a burst of any size takes constant memory.
//!
//! The batch also tells a burst from a lone invalidation. A lone one (or a ping-pong pace)
//! goes out at once from the caller's task; in a burst the cache actor publishes the batch
//! when the coalescing window ends. Publishing happens under the batch's lock, and the
//! Synchronization actor drains the batch the same way before every heartbeat, so a heartbeat
//! never announces a last sequence number that leaves out an invalidation accepted before it.
//!
//! Time is explicit (`now`, microseconds of this node's monotonic clock), so the coalescing
//! rules are unit-tested without a runtime.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use super::Invalidation;
use crate::source::Version;

/// Keys after which a batch goes out without waiting for the coalescing window: envelopes
/// stay small enough to pipeline, and the dedup table small enough to stay in cache.
const FULL_KEYS: usize = 1024;

/// A drain finding the previous envelope less than this long ago, with one key in it, takes
/// it as a burst from a tight loop and starts coalescing; one round trip between two nodes
/// takes longer, so lone and ping-pong invalidations always go out at once.
const BURST_GAP_US: u64 = 10;

pub(crate) struct Batch<K> {
    pending: Mutex<Pending<K>>,
    max_keys: usize,
    window_us: u64,
}

/// What the caller of [`Batch::add`] must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// Publish the batch now, from this task.
    Now,
    /// A burst is under way: have the batch published after this long (one delayed drain at a
    /// time).
    Later(Duration),
    /// Nothing: a drain is already due.
    Queued,
}

struct Pending<K> {
    /// Hashed as the entries are (`foldhash`, seeded per process): a burst hashes every key.
    keys: HashMap<K, Option<Version>, foldhash::fast::RandomState>,
    all: bool,
    /// When (µs) the batch was last drained, and how many items that drain published.
    last_drain: u64,
    last_drain_items: usize,
    /// A delayed drain is due (asked for with [`Added::Later`]).
    drain_scheduled: bool,
}

impl<K: Hash + Eq> Batch<K> {
    pub(crate) fn new(max_keys: usize, window: Duration) -> Self {
        let pending = Pending {
            keys: HashMap::default(),
            all: false,
            last_drain: 0,
            last_drain_items: 0,
            drain_scheduled: false,
        };
        Self {
            pending: Mutex::new(pending),
            max_keys,
            window_us: window.as_micros() as u64,
        }
    }

    /// Adds keys; says what the caller must do. `now` is read only when the batch was empty
    /// (a burst adds keys without reading the clock).
    pub(crate) fn add(
        &self,
        now: impl FnOnce() -> u64,
        keys: impl IntoIterator<Item = (K, Option<Version>)>,
    ) -> Added {
        self.with(|p| {
            let was_empty = p.is_empty();
            if !p.all {
                p.merge(keys);
                if p.keys.len() > self.max_keys {
                    p.escalate();
                }
            }
            self.added(p, now, was_empty)
        })
    }

    /// Replaces the batch with "invalidate everything".
    pub(crate) fn add_all(&self, now: impl FnOnce() -> u64) -> Added {
        self.with(|p| {
            let was_empty = p.is_empty();
            p.escalate();
            self.added(p, now, was_empty)
        })
    }

    fn added(&self, p: &mut Pending<K>, now: impl FnOnce() -> u64, was_empty: bool) -> Added {
        if p.keys.len() >= FULL_KEYS.min(self.max_keys) {
            return Added::Now;
        }
        if !was_empty || p.drain_scheduled {
            return Added::Queued;
        }
        // Never drained: no burst yet (however early in the process's clock this is).
        let since = match p.last_drain {
            0 => u64::MAX,
            last => now().saturating_sub(last),
        };
        let burst = p.last_drain_items > 1 || since < BURST_GAP_US;
        if since < self.window_us && burst {
            p.drain_scheduled = true;
            return Added::Later(Duration::from_micros(self.window_us - since));
        }
        Added::Now
    }

    /// Hands what is pending (with `now` as the drain's time) to `publish`, holding the batch's
    /// lock until it returns; keeps it pending if `publish` says it could not publish. Whoever
    /// drains next waits for a publish in progress, which is what lets a heartbeat cover it.
    /// Whether nothing is left waiting (all was published, or nothing was pending).
    pub(crate) fn drain(&self, now: u64, publish: impl FnOnce(&Invalidation<K>) -> bool) -> bool {
        self.with(|p| {
            p.drain_scheduled = false;
            let Some((message, items)) = p.take() else {
                // Nothing came in since: quiet, so the next invalidation goes out at once.
                p.last_drain = 0;
                p.last_drain_items = 0;
                return true;
            };
            if publish(&message) {
                p.last_drain = now;
                p.last_drain_items = items;
                true
            } else {
                p.restore(message);
                false
            }
        })
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.with(|p| p.is_empty())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Pending<K>) -> T) -> T {
        f(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<K: Hash + Eq> Pending<K> {
    fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }

    /// Adds keys, each once: no version means "whatever you hold" and wins over any
    /// version; otherwise the newest version wins.
    fn merge(&mut self, keys: impl IntoIterator<Item = (K, Option<Version>)>) {
        for (key, version) in keys {
            let slot = self.keys.entry(key).or_insert(version);
            *slot = slot.zip(version).map(|(a, b)| a.max(b));
        }
    }

    fn escalate(&mut self) {
        self.all = true;
        self.keys = HashMap::default();
    }

    /// What is pending, with the number of items (1 for everything).
    fn take(&mut self) -> Option<(Invalidation<K>, usize)> {
        if self.all {
            self.all = false;
            self.keys.clear();
            return Some((Invalidation::All, 1));
        }
        let count = self.keys.len();
        (count > 0).then(|| (Invalidation::Keys(self.keys.drain().collect()), count))
    }

    /// Puts back what [`take`](Self::take) took (nothing could publish it).
    fn restore(&mut self, message: Invalidation<K>) {
        match message {
            Invalidation::All => self.all = true,
            Invalidation::Keys(keys) if !self.all => self.merge(keys),
            Invalidation::Keys(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_millis(1);

    /// Drains at `now`, publishing successfully; returns what went out.
    fn drain(batch: &Batch<u32>, now: u64) -> Option<Invalidation<u32>> {
        let mut out = None;
        batch.drain(now, |m| {
            out = Some(m.clone());
            true
        });
        out
    }

    #[test]
    fn coalesces_keys_and_keeps_the_strongest_version() {
        let batch = Batch::new(10, WINDOW);
        assert_eq!(
            batch.add(|| 1_000, [(1, Some(3)), (2, Some(1))]),
            Added::Now
        );
        assert_eq!(
            batch.add(|| 1_000, [(1, Some(5)), (2, None)]),
            Added::Queued
        );
        let Some(Invalidation::Keys(mut keys)) = drain(&batch, 1_000) else {
            panic!("expected keys")
        };
        keys.sort();
        assert_eq!(keys, vec![(1, Some(5)), (2, None)]);
        assert!(drain(&batch, 1_001).is_none());
    }

    #[test]
    fn lone_invalidations_go_out_at_once_even_back_to_back() {
        let batch = Batch::new(usize::MAX, WINDOW);
        // A ping-pong pace: one invalidation per round trip, well inside the window.
        for now in [1_000, 1_030, 1_060] {
            assert_eq!(batch.add(|| now, [(1, None)]), Added::Now);
            assert!(drain(&batch, now).is_some());
        }
    }

    #[test]
    fn a_tight_loop_is_coalesced_and_the_delay_stays_within_the_window() {
        let batch = Batch::new(usize::MAX, WINDOW);
        assert_eq!(batch.add(|| 1_000, [(1, None)]), Added::Now);
        drain(&batch, 1_000);
        assert_eq!(
            batch.add(|| 1_002, [(2, None)]),
            Added::Later(Duration::from_micros(998))
        );
        assert_eq!(batch.add(|| 1_003, [(3, None)]), Added::Queued);
        let Some(Invalidation::Keys(keys)) = drain(&batch, 2_000) else {
            panic!("expected keys")
        };
        assert_eq!(keys.len(), 2, "both keys of the burst in one envelope");
    }

    #[test]
    fn after_a_multi_key_batch_the_next_waits_for_the_window() {
        let batch = Batch::new(usize::MAX, WINDOW);
        assert_eq!(batch.add(|| 1_000, (0..500).map(|k| (k, None))), Added::Now);
        drain(&batch, 1_000);
        assert_eq!(
            batch.add(|| 1_400, [(1, None)]),
            Added::Later(Duration::from_micros(600))
        );
        drain(&batch, 2_000);
        // Once the window has passed, the next goes out at once again.
        assert_eq!(batch.add(|| 3_001, [(1, None)]), Added::Now);
    }

    #[test]
    fn a_zero_window_never_delays() {
        let batch = Batch::new(usize::MAX, Duration::ZERO);
        for now in 1_000..1_005 {
            assert_eq!(batch.add(|| now, (0..500).map(|k| (k, None))), Added::Now);
            drain(&batch, now);
        }
    }

    #[test]
    fn a_full_batch_asks_to_go_out_now_even_while_a_drain_is_due() {
        let batch = Batch::new(usize::MAX, WINDOW);
        assert_eq!(batch.add(|| 1_000, (0..2).map(|k| (k, None))), Added::Now);
        drain(&batch, 1_000);
        assert!(matches!(batch.add(|| 1_001, [(0, None)]), Added::Later(_)));
        for key in 1..FULL_KEYS as u32 - 1 {
            assert_eq!(batch.add(|| 1_001, [(key, None)]), Added::Queued);
        }
        assert_eq!(
            batch.add(|| 1_001, [(0, None)]),
            Added::Queued,
            "a duplicate adds nothing"
        );
        assert_eq!(batch.add(|| 1_001, [(FULL_KEYS as u32, None)]), Added::Now);
    }

    #[test]
    fn escalates_to_everything_past_the_cap() {
        let batch = Batch::new(3, WINDOW);
        batch.add(|| 1_000, (0..4).map(|k| (k, None)));
        assert_eq!(drain(&batch, 1_000), Some(Invalidation::All));
        assert!(batch.is_empty(), "empty again after the drain");
        batch.add(|| 5_000, [(1, None)]);
        assert_eq!(batch.add_all(|| 5_000), Added::Queued);
        assert_eq!(drain(&batch, 5_000), Some(Invalidation::All));
    }

    #[test]
    fn what_could_not_be_published_stays_pending() {
        let batch = Batch::new(10, WINDOW);
        batch.add(|| 1_000, [(1, Some(2))]);
        batch.drain(1_000, |_| false);
        batch.add(|| 1_000, [(2, None)]);
        let Some(Invalidation::Keys(mut keys)) = drain(&batch, 1_001) else {
            panic!("expected keys")
        };
        keys.sort();
        assert_eq!(keys, vec![(1, Some(2)), (2, None)]);
    }
}

//! Local invalidations waiting to be published, coalesced: one envelope carries every key
//! invalidated since the last one went out, each key once. Bounded: past `max_keys` the batch
//! escalates to "invalidate everything", so a burst of any size takes constant memory.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use super::Invalidation;
use crate::source::Version;

pub(crate) struct Batch<K> {
    pending: Mutex<Pending<K>>,
    max_keys: usize,
}

/// Keys after which a batch goes out without waiting for the coalescing window: envelopes
/// stay small enough to pipeline, and the dedup table small enough to stay in cache.
const FULL_KEYS: usize = 1024;

/// What adding to the batch asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// The batch was empty: flush (now, or after the window in a burst).
    First,
    /// The batch is full: publish it now.
    Full,
    /// Nothing: a flush is already due.
    Queued,
}

struct Pending<K> {
    keys: HashMap<K, Option<Version>>,
    all: bool,
}

impl<K: Hash + Eq> Batch<K> {
    pub(crate) fn new(max_keys: usize) -> Self {
        let pending = Pending {
            keys: HashMap::new(),
            all: false,
        };
        Self {
            pending: Mutex::new(pending),
            max_keys,
        }
    }

    /// Adds keys; says whether the caller must flush.
    pub(crate) fn add(&self, keys: impl IntoIterator<Item = (K, Option<Version>)>) -> Added {
        self.with(|p| {
            let was_empty = p.is_empty();
            if !p.all {
                for (key, version) in keys {
                    // No version means "whatever you hold": it wins over any version.
                    let slot = p.keys.entry(key).or_insert(version);
                    *slot = slot.zip(version).map(|(a, b)| a.max(b));
                }
                if p.keys.len() > self.max_keys {
                    p.escalate();
                }
            }
            if was_empty {
                Added::First
            } else if p.keys.len() >= FULL_KEYS.min(self.max_keys) {
                Added::Full
            } else {
                Added::Queued
            }
        })
    }

    /// Replaces the batch with "invalidate everything".
    pub(crate) fn add_all(&self) -> Added {
        self.with(|p| {
            let was_empty = p.is_empty();
            p.escalate();
            if was_empty {
                Added::First
            } else {
                Added::Queued
            }
        })
    }

    /// Takes what is pending, if anything, with the number of keys (1 for everything).
    pub(crate) fn take(&self) -> Option<(Invalidation<K>, usize)> {
        self.with(|p| {
            if p.all {
                p.all = false;
                p.keys.clear();
                return Some((Invalidation::All, 1));
            }
            let count = p.keys.len();
            (count > 0).then(|| (Invalidation::Keys(p.keys.drain().collect()), count))
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

impl<K> Pending<K> {
    fn is_empty(&self) -> bool {
        !self.all && self.keys.is_empty()
    }

    fn escalate(&mut self) {
        self.all = true;
        self.keys = HashMap::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_keys_and_keeps_the_strongest_version() {
        let batch = Batch::new(10);
        assert_eq!(batch.add([(1, Some(3)), (2, Some(1))]), Added::First);
        assert_eq!(batch.add([(1, Some(5)), (2, None)]), Added::Queued);
        let Some((Invalidation::Keys(mut keys), 2)) = batch.take() else {
            panic!("expected keys")
        };
        keys.sort();
        assert_eq!(keys, vec![(1, Some(5)), (2, None)]);
        assert!(batch.take().is_none());
    }

    #[test]
    fn a_full_batch_asks_to_go_out_now() {
        let batch = Batch::new(usize::MAX);
        assert_eq!(batch.add([(0, None)]), Added::First);
        for key in 1..FULL_KEYS - 1 {
            assert_eq!(batch.add([(key, None)]), Added::Queued);
        }
        assert_eq!(
            batch.add([(0, None)]),
            Added::Queued,
            "a duplicate adds nothing"
        );
        assert_eq!(batch.add([(FULL_KEYS, None)]), Added::Full);
    }

    #[test]
    fn escalates_to_everything_past_the_cap() {
        let batch = Batch::new(3);
        batch.add((0..4).map(|k| (k, None)));
        assert_eq!(batch.take(), Some((Invalidation::All, 1)));
        assert_eq!(
            batch.add([(1, None)]),
            Added::First,
            "empty again after the take"
        );
        assert_eq!(batch.add_all(), Added::Queued);
        assert_eq!(batch.take(), Some((Invalidation::All, 1)));
    }
}

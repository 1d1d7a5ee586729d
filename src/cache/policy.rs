//! Which entry to evict when a bounded cache is full: S3-FIFO (a small "cold" FIFO for new
//! entries, a large "hot" clock for entries read again, and a ghost list of keys evicted
//! recently), the scan-resistant policy quick_cache uses, built on the store's own map so
//! that a hit stays lock-free.
//!
//! A hit only raises its entry's use counter (capped at [`MAX_USES`]; one relaxed load, and a
//! store only while below the cap). Everything else runs under one lock, taken by installs
//! and evictions: an install evicts *before* it inserts, so the bound holds at all times
//! except for the one entry an install is putting in (the documented slack).
//!
//! The queues hold `(key, id)` slots; an entry removed by something else (an invalidation, a
//! repair, expiry) leaves its slot behind, recognised by its id no longer being the key's and
//! skipped when reached. The queues are compacted when dead slots outnumber live entries, so
//! they hold at most about twice as many slots as the cache holds entries.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A hit counts up to this: an entry read twice since it was last passed over survives two
/// passes of the hot clock.
pub(crate) const MAX_USES: u8 = 2;

/// An entry's id (which tells it from an earlier or later entry of the same key: the
/// policy's slots name it) and its use counter, in one word so that the entry stays small:
/// the id in the upper 56 bits (never changed), the uses (hits since the policy last passed
/// over it, at most [`MAX_USES`]) in the low byte. Readers raise the uses without a lock;
/// a racing write loses a use at worst, never the id.
#[derive(Debug)]
pub(crate) struct Tag(AtomicU64);

impl Tag {
    /// A tag for entry `id` (below 2^56: a cache would need centuries of installs to reach it),
    /// no uses yet.
    pub(crate) fn new(id: u64) -> Self {
        Self(AtomicU64::new(id << 8))
    }

    pub(crate) fn id(&self) -> u64 {
        self.0.load(Relaxed) >> 8
    }

    pub(crate) fn uses(&self) -> u8 {
        self.0.load(Relaxed) as u8
    }

    pub(crate) fn set_uses(&self, uses: u8) {
        let word = self.0.load(Relaxed);
        self.0.store((word & !0xFF) | u64::from(uses), Relaxed);
    }

    /// A hit: one more use, up to [`MAX_USES`] (no write once there).
    pub(crate) fn used(&self) {
        let word = self.0.load(Relaxed);
        if (word as u8) < MAX_USES {
            self.0.store(word + 1, Relaxed);
        }
    }
}

impl Clone for Tag {
    fn clone(&self) -> Self {
        Self(AtomicU64::new(self.0.load(Relaxed)))
    }
}

/// The hot clock's share of the budget once the cache is full (quick_cache's figure: the cold
/// FIFO only needs to hold new entries long enough to see whether they are read again).
const HOT_SHARE: f64 = 0.97;

/// The ghost list's length, as a share of the entries that fit: about the hot clock's size, as
/// the S3-FIFO paper has it. quick_cache's half forgets keys whose reuse distance is longer
/// than half the cache, and on the ARC paper's P3 and P6 traces that cost 4.8 and 6.3 points
/// of hit ratio (`docs/benchmarks.md`).
const GHOST_SHARE: f64 = 0.9;

/// What a bounded cache may hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Most entries.
    pub(crate) entries: Option<u64>,
    /// Most total weight (the weigher's units).
    pub(crate) weight: Option<u64>,
}

impl Limits {
    pub(crate) fn bounded(&self) -> bool {
        self.entries.is_some() || self.weight.is_some()
    }

    /// Whether `entries` entries of total `weight` are over a limit.
    fn over(&self, entries: u64, weight: u64) -> bool {
        self.entries.is_some_and(|max| entries > max) || self.weight.is_some_and(|max| weight > max)
    }

    /// The budget the queues share, in the units that bind: weight when weighed, else entries.
    fn budget(&self) -> u64 {
        self.weight.or(self.entries).unwrap_or(u64::MAX)
    }

    /// The units one entry of `weight` costs in [`budget`](Self::budget).
    fn units(&self, weight: u32) -> u64 {
        if self.weight.is_some() {
            u64::from(weight)
        } else {
            1
        }
    }
}

/// An entry as the policy sees it: its key, the id of the entry the slot was made for and its
/// weight.
struct Slot<K> {
    key: K,
    id: u64,
    weight: u32,
}

/// The store's map, as the policy needs it.
pub(crate) trait Resident<K> {
    /// Runs `f` on the tag of `key`'s entry if that entry is still `id`.
    fn uses<R>(&self, key: &K, id: u64, f: impl FnOnce(&Tag) -> R) -> Option<R>;
    /// Removes `key`'s entry if it is still `id`; says whether it did.
    fn evict(&self, key: &K, id: u64) -> bool;
}

/// What the policy keeps, under the store's policy lock.
pub(crate) struct Policy<K> {
    limits: Limits,
    cold: VecDeque<Slot<K>>,
    hot: VecDeque<Slot<K>>,
    /// Units of the slots in each queue, live or dead.
    cold_units: u64,
    hot_units: u64,
    hot_target: u64,
    /// Fingerprints (a hash's high 32 bits) of keys evicted from the cold FIFO, oldest first,
    /// each once in the queue and once in the set; a key coming back while its fingerprint is
    /// here goes straight to the hot clock (the fingerprint stays until it ages out). A new
    /// key matches some remembered fingerprint with odds of `ghost_len` in 2^32 (one in 4 800
    /// at a million entries): the cost is that key admitted to the hot clock instead of the
    /// cold FIFO.
    ghost: VecDeque<u32>,
    ghosts: HashSet<u32, foldhash::fast::FixedState>,
    ghost_len: usize,
    hasher: foldhash::fast::FixedState,
    next_id: u64,
    /// Live entries and their weight: what the limits bound.
    pub(crate) entries: u64,
    pub(crate) weight: u64,
    /// The entry an admission is replacing (counted out already): its slot is dead.
    replaced: Option<u64>,
}

impl<K: Hash + Eq + Clone> Policy<K> {
    pub(crate) fn new(limits: Limits) -> Self {
        let budget = limits.budget();
        let fit = limits.entries.unwrap_or(budget).min(1 << 26);
        Self {
            limits,
            cold: VecDeque::new(),
            hot: VecDeque::new(),
            cold_units: 0,
            hot_units: 0,
            hot_target: ((budget as f64 * HOT_SHARE) as u64).max(1),
            ghost: VecDeque::new(),
            ghosts: HashSet::default(),
            ghost_len: ((fit as f64 * GHOST_SHARE) as usize).max(1),
            hasher: foldhash::fast::FixedState::with_seed(0x5eed),
            next_id: 0,
            entries: 0,
            weight: 0,
            replaced: None,
        }
    }

    /// Whether an entry of `weight` can be cached at all (one heavier than the budget is
    /// returned to its reader, not cached).
    pub(crate) fn fits(&self, weight: u32) -> bool {
        !self.limits.over(1, u64::from(weight))
    }

    /// Makes room for a new entry of `weight` for `key`, evicting as needed (`evicted` is
    /// called with each key evicted), and returns the new entry's id. `replacing` is the
    /// weight and id of the entry the new one replaces, if any: already counted out, so its
    /// slot is passed over as dead (evicting it would count it out twice). The caller inserts
    /// the entry before it releases the lock.
    pub(crate) fn admit(
        &mut self,
        key: &K,
        weight: u32,
        replacing: Option<(u32, u64)>,
        map: &impl Resident<K>,
        mut evicted: impl FnMut(&K),
    ) -> u64 {
        let mut gone = Vec::new();
        if let Some((old, id)) = replacing {
            self.removed(old);
            self.replaced = Some(id);
        }
        while self
            .limits
            .over(self.entries + 1, self.weight + u64::from(weight))
        {
            if !self.advance_cold(map, &mut gone) {
                break;
            }
        }
        let units = self.limits.units(weight);
        let enter_hot = replacing.is_some()
            || self.hot_units + units <= self.hot_target
            || self.ghosts.contains(&self.fingerprint(key));
        if enter_hot {
            // Room in the hot clock first: the new entry is not in the map yet, so it must
            // not be in the queue a trim walks.
            while self.hot_units + units > self.hot_target {
                if !self.advance_hot(map, &mut gone) {
                    break;
                }
            }
        }
        self.next_id += 1;
        let slot = Slot {
            key: key.clone(),
            id: self.next_id,
            weight,
        };
        if enter_hot {
            self.hot_units += units;
            self.hot.push_back(slot);
        } else {
            self.cold_units += units;
            self.cold.push_back(slot);
        }
        self.entries += 1;
        self.weight += u64::from(weight);
        self.replaced = None;
        self.compact(map);
        for key in &gone {
            evicted(key);
        }
        self.next_id
    }

    /// An entry of `weight` left the map by other means (its slot stays until reached).
    pub(crate) fn removed(&mut self, weight: u32) {
        self.entries = self.entries.saturating_sub(1);
        self.weight = self.weight.saturating_sub(u64::from(weight));
    }

    /// Everything left the map at once.
    pub(crate) fn cleared(&mut self) {
        self.cold.clear();
        self.hot.clear();
        self.cold_units = 0;
        self.hot_units = 0;
        self.entries = 0;
        self.weight = 0;
    }

    /// One step of the cold FIFO: its oldest entry moves to the hot clock if it was read
    /// since it came in (the clock is trimmed to its share), else it is evicted (its key's
    /// fingerprint joins the ghost list). Evicted keys go to `gone`; `false` if both queues are
    /// empty.
    fn advance_cold(&mut self, map: &impl Resident<K>, gone: &mut Vec<K>) -> bool {
        let Some(slot) = self.cold.pop_front() else {
            return self.advance_hot(map, gone);
        };
        let units = self.limits.units(slot.weight);
        self.cold_units -= units;
        if self.replaced == Some(slot.id) {
            return true;
        }
        let used = map.uses(&slot.key, slot.id, |uses| {
            let used = uses.uses();
            if used > 0 {
                uses.set_uses(used - 1);
            }
            used > 0
        });
        match used {
            None => {}
            Some(true) => {
                self.hot_units += units;
                self.hot.push_back(slot);
                while self.hot_units > self.hot_target {
                    if !self.advance_hot(map, gone) {
                        break;
                    }
                }
            }
            Some(false) if map.evict(&slot.key, slot.id) => {
                self.removed(slot.weight);
                self.remember(self.fingerprint(&slot.key));
                gone.push(slot.key);
            }
            // Removed by someone else meanwhile.
            Some(false) => {}
        }
        true
    }

    /// One step of the hot clock: entries read since they were last passed over lose one use
    /// and go round again; the first that has none left is evicted (to `gone`). Readers raise
    /// uses while this runs, without the lock: past `MAX_USES + 1` turns of the whole clock the
    /// next live entry is evicted regardless, so the bound holds whatever they do. `false` if
    /// the clock is empty.
    fn advance_hot(&mut self, map: &impl Resident<K>, gone: &mut Vec<K>) -> bool {
        let turns = self.hot.len() * (usize::from(MAX_USES) + 1);
        let mut turn = 0;
        loop {
            let Some(slot) = self.hot.pop_front() else {
                return false;
            };
            let units = self.limits.units(slot.weight);
            let out_of_turns = turn >= turns;
            turn += 1;
            if self.replaced == Some(slot.id) {
                self.hot_units -= units;
                return true;
            }
            let used = map.uses(&slot.key, slot.id, |uses| {
                let used = uses.uses().min(MAX_USES);
                if used > 0 && !out_of_turns {
                    uses.set_uses(used - 1);
                }
                used > 0 && !out_of_turns
            });
            match used {
                None => {
                    self.hot_units -= units;
                    return true;
                }
                Some(true) => self.hot.push_back(slot),
                Some(false) => {
                    self.hot_units -= units;
                    if map.evict(&slot.key, slot.id) {
                        self.removed(slot.weight);
                        gone.push(slot.key);
                    }
                    return true;
                }
            }
        }
    }

    fn fingerprint(&self, key: &K) -> u32 {
        (self.hasher.hash_one(key) >> 32) as u32
    }

    fn remember(&mut self, fingerprint: u32) {
        if self.ghosts.insert(fingerprint) {
            self.ghost.push_back(fingerprint);
        }
        while self.ghost.len() > self.ghost_len {
            if let Some(old) = self.ghost.pop_front() {
                self.ghosts.remove(&old);
            }
        }
    }

    /// Drops dead slots once they outnumber live entries (amortised: each compaction at
    /// least halves the slots).
    fn compact(&mut self, map: &impl Resident<K>) {
        let slots = (self.cold.len() + self.hot.len()) as u64;
        if slots <= 2 * self.entries + 64 {
            return;
        }
        let limits = self.limits;
        for (queue, units) in [
            (&mut self.cold, &mut self.cold_units),
            (&mut self.hot, &mut self.hot_units),
        ] {
            queue.retain(|slot| {
                let live = map.uses(&slot.key, slot.id, |_| ()).is_some();
                if !live {
                    *units -= limits.units(slot.weight);
                }
                live
            });
        }
    }

    /// Slots held (live and dead), for tests.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.cold.len() + self.hot.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A map of key → tag, as the store keeps it.
    #[derive(Default)]
    struct Map(Mutex<HashMap<u32, Tag>>);

    impl Resident<u32> for Map {
        fn uses<R>(&self, key: &u32, id: u64, f: impl FnOnce(&Tag) -> R) -> Option<R> {
            let map = self.0.lock().unwrap();
            map.get(key).filter(|tag| tag.id() == id).map(f)
        }
        fn evict(&self, key: &u32, id: u64) -> bool {
            let mut map = self.0.lock().unwrap();
            if map.get(key).is_some_and(|tag| tag.id() == id) {
                map.remove(key);
                true
            } else {
                false
            }
        }
    }

    impl Map {
        /// A read: a hit raises the use counter; a miss inserts through the policy.
        fn read(&self, policy: &mut Policy<u32>, key: u32, weight: u32) -> bool {
            if let Some(tag) = self.0.lock().unwrap().get(&key) {
                tag.used();
                return true;
            }
            if policy.fits(weight) {
                let id = policy.admit(&key, weight, None, self, |_| {});
                self.0.lock().unwrap().insert(key, Tag::new(id));
            }
            false
        }

        fn len(&self) -> usize {
            self.0.lock().unwrap().len()
        }
    }

    #[test]
    fn a_tag_keeps_its_id_whatever_happens_to_its_uses() {
        let id = (1 << 56) - 1;
        let tag = Tag::new(id);
        assert_eq!((tag.id(), tag.uses()), (id, 0));
        for _ in 0..5 {
            tag.used();
        }
        assert_eq!(
            (tag.id(), tag.uses()),
            (id, MAX_USES),
            "uses stop at the maximum"
        );
        tag.set_uses(0);
        assert_eq!((tag.id(), tag.uses()), (id, 0));
        assert_eq!(tag.clone().id(), id);
    }

    #[test]
    fn the_bound_holds_and_a_reread_key_survives_a_scan() {
        let mut policy = Policy::new(Limits {
            entries: Some(100),
            weight: None,
        });
        let map = Map::default();
        for key in 0..100 {
            map.read(&mut policy, key, 1);
        }
        // Keys 0..10 are hot: read again before the scan.
        for key in 0..10 {
            assert!(map.read(&mut policy, key, 1));
        }
        for key in 1_000..11_000 {
            map.read(&mut policy, key, 1);
            assert!(map.len() <= 100, "over the bound: {}", map.len());
            assert_eq!(policy.entries as usize, map.len());
        }
        for key in 0..10 {
            assert!(map.read(&mut policy, key, 1), "a hot key was scanned out");
        }
        assert!(policy.slots() <= 2 * map.len() + 64);
    }

    #[test]
    fn a_key_back_within_nine_tenths_of_the_capacity_goes_straight_to_the_hot_clock() {
        let mut policy = Policy::new(Limits {
            entries: Some(1_000),
            weight: None,
        });
        let map = Map::default();
        for key in 0..1_000 {
            map.read(&mut policy, key, 1);
        }
        // Read once, evicted from the cold FIFO unread, then 850 other keys pass through.
        map.read(&mut policy, 5_000, 1);
        for key in 10_000..10_850 {
            map.read(&mut policy, key, 1);
        }
        assert!(!map.read(&mut policy, 5_000, 1), "still cached");
        // Back from the ghost list it is in the hot clock: a scan of new keys through the
        // cold FIFO does not evict it.
        for key in 20_000..20_200 {
            map.read(&mut policy, key, 1);
        }
        assert!(
            map.read(&mut policy, 5_000, 1),
            "a key evicted 850 evictions ago came back as new"
        );
    }

    #[test]
    fn weight_bounds_the_total_and_a_too_heavy_value_does_not_fit() {
        let mut policy = Policy::new(Limits {
            entries: None,
            weight: Some(1_000),
        });
        let map = Map::default();
        for key in 0..500 {
            map.read(&mut policy, key, 1 + key % 50);
            assert!(policy.weight <= 1_000);
        }
        assert!(!policy.fits(1_001));
        assert!(policy.fits(1_000));
    }

    #[test]
    fn dead_slots_are_compacted() {
        let mut policy = Policy::new(Limits {
            entries: Some(1_000),
            weight: None,
        });
        let map = Map::default();
        for round in 0..50u64 {
            for key in 0..10 {
                map.read(&mut policy, key, 1);
            }
            // Invalidated: gone from the map, the slot left behind.
            for key in 0..10 {
                map.0.lock().unwrap().remove(&key);
                policy.removed(1);
            }
            assert!(
                policy.slots() <= 64 + 10,
                "round {round}: {}",
                policy.slots()
            );
        }
    }

    proptest::proptest! {
        /// Any mix of reads (of any weight), reloads, removals by others and clears: the map never
        /// holds more than the limits, the policy's accounts match the map exactly, and the
        /// queues never hold more than about twice the live entries.
        #[test]
        fn the_limits_hold_and_the_accounts_match_the_map(
            ops in proptest::collection::vec((0u8..20, 0u32..300, 1u32..40), 1..2_000),
            entries in proptest::option::of(1u64..100),
            weight in proptest::option::of(1u64..800),
        ) {
            let mut policy = Policy::new(Limits { entries, weight });
            let map = Map::default();
            let mut weights = HashMap::new();
            for (op, key, w) in ops {
                match op {
                    0 => {
                        map.0.lock().unwrap().clear();
                        weights.clear();
                        policy.cleared();
                    }
                    1..=3 => {
                        if map.0.lock().unwrap().remove(&key).is_some() {
                            policy.removed(weights.remove(&key).unwrap());
                        }
                    }
                    // A reload of a held key replaces its entry (as a load after an
                    // invalidation that found it cached again, or a refresh).
                    4..=5 if policy.fits(w) => {
                        let old = map.0.lock().unwrap().get(&key).map(Tag::id);
                        if let (Some(old_id), Some(old_w)) = (old, weights.get(&key).copied()) {
                            let id = policy.admit(&key, w, Some((old_w, old_id)), &map, |_| {});
                            map.0.lock().unwrap().insert(key, Tag::new(id));
                            weights.insert(key, w);
                        }
                    }
                    _ => {
                        if !map.read(&mut policy, key, w) && policy.fits(w) {
                            weights.insert(key, w);
                        }
                    }
                }
                weights.retain(|k, _| map.0.lock().unwrap().contains_key(k));
                let held = map.len() as u64;
                let total: u64 = weights.values().map(|w| u64::from(*w)).sum();
                proptest::prop_assert!(entries.is_none_or(|max| held <= max), "{held} entries");
                proptest::prop_assert!(weight.is_none_or(|max| total <= max), "weight {total}");
                proptest::prop_assert_eq!(policy.entries, held);
                proptest::prop_assert_eq!(policy.weight, total);
                proptest::prop_assert!(policy.slots() as u64 <= 2 * held + 65);
            }
        }
    }
}

//! The cached entries themselves: the map readers hit, the bound on what it holds (entries and
//! weight, through the eviction [`Policy`]), expiry, cached absence and the removal listener.
//!
//! The map is a read-optimised `scc::HashIndex`: a lookup takes no lock, so readers on
//! different cores do not fight over a lock word. Installs and evictions of a bounded cache
//! take the policy's lock; removals by invalidation, repair and expiry take it only to settle
//! the accounts. The store above decides *whether* an entry may be installed or served (the
//! stale-load guard, leases, verification); this module only keeps what it is given, within
//! bounds.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use scc::hash_index::Entry as IndexEntry;

use super::policy::{Limits, Policy, Resident, Tag};
use super::stats::CacheCounters;
use crate::clock::HIT_EDGE_US;
use crate::counter::{add, bump};
use crate::source::Version;

/// Why an entry left the cache, as told to a [removal listener](crate::CacheBuilder::removal_listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemovalCause {
    /// Evicted to keep the cache within its capacity or weight (or, for a value heavier than
    /// the whole budget, never cached).
    Size,
    /// Older than `time_to_live`, or unread for `time_to_idle`.
    Expired,
    /// Invalidated on this node (`invalidate*`).
    Invalidated,
    /// Invalidated by another node.
    InvalidatedRemotely,
    /// A revalidation found another version (or none) in the source, or ran past its budget.
    Repaired,
    /// Replaced by a newer load of the same key.
    Replaced,
    /// The source's change feed reported a newer version (or a deletion).
    SourceChanged,
}

/// Called with every value that leaves the cache and why.
pub(crate) type Listener<K, V> = Arc<dyn Fn(&K, &V, RemovalCause) + Send + Sync>;

/// An entry's weight against `max_weight`.
pub(crate) type Weigher<K, V> = Arc<dyn Fn(&K, &V) -> u32 + Send + Sync>;

/// Expiry settings in µs (`u64::MAX`: off), so that a hit compares without branching on
/// options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Expiry {
    pub(crate) ttl: u64,
    pub(crate) tti: u64,
    pub(crate) refresh: u64,
}

impl Default for Expiry {
    fn default() -> Self {
        Self {
            ttl: u64::MAX,
            tti: u64::MAX,
            refresh: u64::MAX,
        }
    }
}

impl Expiry {
    pub(crate) fn us(setting: Option<Duration>) -> u64 {
        setting.map_or(u64::MAX, |d| {
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
        })
    }

    /// Whether expiry is on at all (a sweep is then due every so often).
    pub(crate) fn on(&self) -> bool {
        self.ttl != u64::MAX || self.tti != u64::MAX
    }

    /// How often to sweep expired entries out of memory: a quarter of the shortest setting,
    /// at least 10 ms.
    pub(crate) fn sweep_every(&self) -> u64 {
        (self.ttl.min(self.tti) / 4).max(10_000)
    }
}

/// What a cache may hold, for how long, and whom it tells.
pub(crate) struct Bounds<K, V> {
    pub(crate) limits: Limits,
    pub(crate) weigher: Option<Weigher<K, V>>,
    pub(crate) expiry: Expiry,
    pub(crate) listener: Option<Listener<K, V>>,
    /// Cache "the source has no such key" too.
    pub(crate) absent: bool,
}

pub(crate) struct Entry<V> {
    /// `None`: the source had no such key (cached only with `cache_absent`).
    pub(crate) value: Option<V>,
    /// The version loaded (0 for an absent key).
    pub(crate) version: Version,
    /// When (µs, this node's clock) the source last vouched for this version: the start of
    /// the load that brought it or of the newest check that found it unchanged.
    pub(crate) verified_at: AtomicU64,
    /// Its id (tells it from an earlier or later entry of the same key: the policy's slots
    /// and the expiry sweep name it) and, in bounded caches, its hits since the policy last
    /// passed over it.
    tag: Tag,
    /// Only with a weigher, expiry or refresh: a cache without them keeps its entries small
    /// (a hit's cost is mostly the cache misses of reaching the entry and its value, so size
    /// counts: 40 bytes besides the value's own with neither).
    extra: Option<Box<Extra>>,
}

/// What an entry keeps only when a weigher, expiry or refresh asks for it.
#[derive(Clone)]
struct Extra {
    /// Its weight (1 without a weigher).
    weight: u32,
    timing: Option<Timing>,
}

/// What expiry and refresh keep per entry.
struct Timing {
    /// The start of the load that brought it (time to live, refresh).
    loaded_at: u64,
    /// The last hit, to 1/64 of the time to idle.
    read_at: AtomicU64,
    /// When a background refresh was last asked for (0: never).
    refresh_asked: AtomicU64,
}

impl Clone for Timing {
    fn clone(&self) -> Self {
        Self {
            loaded_at: self.loaded_at,
            read_at: AtomicU64::new(self.read_at.load(Relaxed)),
            refresh_asked: AtomicU64::new(self.refresh_asked.load(Relaxed)),
        }
    }
}

impl Timing {
    fn expired(&self, now: u64, expiry: &Expiry) -> bool {
        now >= self.loaded_at.saturating_add(expiry.ttl)
            || now >= self.read_at.load(Relaxed).saturating_add(expiry.tti)
    }

    fn refresh_due(&self, now: u64, expiry: &Expiry) -> bool {
        now >= self.loaded_at.saturating_add(expiry.refresh)
    }
}

impl<K, V> Default for Bounds<K, V> {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            weigher: None,
            expiry: Expiry::default(),
            listener: None,
            absent: false,
        }
    }
}

impl<K, V> Clone for Bounds<K, V> {
    fn clone(&self) -> Self {
        Self {
            limits: self.limits,
            weigher: self.weigher.clone(),
            expiry: self.expiry,
            listener: self.listener.clone(),
            absent: self.absent,
        }
    }
}

/// (The map's iterators hand out clones.)
impl<V: Clone> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: self.value.clone(),
            version: self.version,
            verified_at: AtomicU64::new(self.verified_at.load(Relaxed)),
            tag: self.tag.clone(),
            extra: self.extra.clone(),
        }
    }
}

impl<V> Entry<V> {
    fn id(&self) -> u64 {
        self.tag.id()
    }

    fn weight(&self) -> u32 {
        self.extra.as_ref().map_or(1, |extra| extra.weight)
    }

    fn timing(&self) -> Option<&Timing> {
        self.extra.as_ref().and_then(|extra| extra.timing.as_ref())
    }

    fn expired(&self, now: u64, expiry: &Expiry) -> bool {
        self.timing().is_some_and(|t| t.expired(now, expiry))
    }

    fn refresh_due(&self, now: u64, expiry: &Expiry) -> bool {
        self.timing().is_some_and(|t| t.refresh_due(now, expiry))
    }
}

/// What a hit found: the entry's answer, and whether it asks for a background refresh now.
pub(crate) struct Hit<R> {
    pub(crate) answer: R,
    pub(crate) refresh: bool,
}

/// Values removed while a lock was held, told to the listener once it is released.
pub(crate) struct Removed<K, V>(Vec<(K, V, RemovalCause)>);

pub(crate) struct Entries<K, V> {
    map: scc::HashIndex<K, Entry<V>, foldhash::fast::RandomState>,
    /// `None` when unbounded and unweighed: no slots kept, nothing evicted.
    policy: Option<Mutex<Policy<K>>>,
    bounds: Bounds<K, V>,
    counters: Arc<CacheCounters>,
    next_id: AtomicU64,
}

/// The policy's view of the map.
struct View<'m, K, V> {
    map: &'m scc::HashIndex<K, Entry<V>, foldhash::fast::RandomState>,
    listener: bool,
    evicted: Vec<(K, V, RemovalCause)>,
}

impl<K, V> Resident<K> for std::cell::RefCell<View<'_, K, V>>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn uses<R>(&self, key: &K, id: u64, f: impl FnOnce(&Tag) -> R) -> Option<R> {
        let view = self.borrow();
        view.map
            .peek_with(key, |_, entry| (entry.id() == id).then(|| f(&entry.tag)))
            .flatten()
    }

    fn evict(&self, key: &K, id: u64) -> bool {
        let mut view = self.borrow_mut();
        let mut value = None;
        let listener = view.listener;
        let removed = view.map.remove_if(key, |entry| {
            if entry.id() != id {
                return false;
            }
            if listener {
                value = entry.value.clone();
            }
            true
        });
        if let Some(value) = value {
            view.evicted.push((key.clone(), value, RemovalCause::Size));
        }
        removed
    }
}

impl<K, V> Entries<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn new(bounds: Bounds<K, V>, counters: Arc<CacheCounters>) -> Self {
        let policy = (bounds.limits.bounded() || bounds.weigher.is_some())
            .then(|| Mutex::new(Policy::new(bounds.limits)));
        Self {
            map: scc::HashIndex::with_hasher(Default::default()),
            policy,
            bounds,
            counters,
            next_id: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, Policy<K>>> {
        self.policy
            .as_ref()
            .map(|p| p.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A hit at `now`: `answer` decides from the live (unexpired) entry what to return.
    /// Counts the use for the policy, the read for time to idle, and says whether the entry
    /// is due for a background refresh (once per refresh interval).
    pub(crate) fn read<R>(
        &self,
        key: &K,
        now: u64,
        answer: impl FnOnce(&Entry<V>) -> Option<R>,
    ) -> Option<Hit<R>> {
        let expiry = &self.bounds.expiry;
        let bounded = self.policy.is_some();
        self.map
            .peek_with(key, |_, entry| {
                if entry.expired(now, expiry) {
                    return None;
                }
                // Near its end, the time to live is judged by the precise clock (see
                // `HIT_EDGE_US`): `now` may be the coarse hit clock.
                if entry.expired(now.saturating_add(HIT_EDGE_US), expiry)
                    && entry.expired(crate::clock::now_us(), expiry)
                {
                    return None;
                }
                let answer = answer(entry)?;
                if bounded {
                    entry.tag.used();
                }
                let Some(timing) = entry.timing() else {
                    return Some(Hit {
                        answer,
                        refresh: false,
                    });
                };
                if expiry.tti != u64::MAX {
                    // Kept to 1/64 of the setting: a hot entry is not written on every hit.
                    let read = timing.read_at.load(Relaxed);
                    if now > read.saturating_add(expiry.tti / 64) {
                        timing.read_at.store(now, Relaxed);
                    }
                }
                let refresh = timing.refresh_due(now, expiry) && {
                    let asked = timing.refresh_asked.load(Relaxed);
                    (asked == 0 || now >= asked.saturating_add(expiry.refresh))
                        && timing
                            .refresh_asked
                            .compare_exchange(asked, now, Relaxed, Relaxed)
                            .is_ok()
                };
                Some(Hit { answer, refresh })
            })
            .flatten()
    }

    /// Whether `key` is held, unexpired and not due for a refresh (a bulk reload skips it).
    pub(crate) fn holds_fresh(&self, key: &K, now: u64) -> bool {
        let expiry = &self.bounds.expiry;
        self.map
            .peek_with(key, |_, entry| {
                !entry.expired(now, expiry) && !entry.refresh_due(now, expiry)
            })
            .unwrap_or(false)
    }

    /// Whether `key` holds a value at `version` or newer (an older invalidation is ignored).
    /// An absent key is never newer: every invalidation of it drops it.
    pub(crate) fn holds_at_least(&self, key: &K, version: Version) -> bool {
        self.map
            .peek_with(key, |_, e| e.value.is_some() && e.version >= version)
            == Some(true)
    }

    /// Installs what a load started at `started` found (`None`: no such key; installed only
    /// with `cache_absent`). Evicts first if the cache is full; a value heavier than the whole
    /// budget is not cached. The caller holds the key's flight lock and tells the listener
    /// what was removed once it released it.
    pub(crate) fn install(
        &self,
        key: &K,
        loaded: Option<(&V, Version)>,
        started: u64,
    ) -> Removed<K, V> {
        let mut removed = Vec::new();
        if loaded.is_none() && !self.bounds.absent {
            return Removed(removed);
        }
        let weight = match (&self.bounds.weigher, loaded) {
            (Some(weigher), Some((value, _))) => weigher(key, value),
            _ => 1,
        };
        let listener = self.bounds.listener.is_some();
        let mut policy = self.lock();
        if policy.as_ref().is_some_and(|policy| !policy.fits(weight)) {
            {
                drop(policy);
                // What was cached is older than what the source just said: it goes too.
                if let Some(Some(old)) = self.take_unless(key, |_| false) {
                    removed.push((key.clone(), old, RemovalCause::Replaced));
                }
                bump(&self.counters.evictions);
                if let (true, Some((value, _))) = (listener, loaded) {
                    removed.push((key.clone(), value.clone(), RemovalCause::Size));
                }
                return Removed(removed);
            }
        }
        let expiry = &self.bounds.expiry;
        let now = crate::clock::now_us();
        let old = self.map.peek_with(key, |_, e| {
            (e.weight(), e.value.clone(), e.expired(now, expiry), e.id())
        });
        if let Some((_, Some(value), expired, _)) = &old {
            if listener {
                let cause = if *expired {
                    RemovalCause::Expired
                } else {
                    RemovalCause::Replaced
                };
                removed.push((key.clone(), value.clone(), cause));
            }
        }
        if let Some((_, _, true, _)) = old {
            bump(&self.counters.expirations);
        }
        let id = match policy.as_mut() {
            Some(policy) => {
                let view = std::cell::RefCell::new(View {
                    map: &self.map,
                    listener,
                    evicted: Vec::new(),
                });
                let replacing = old.as_ref().map(|(w, _, _, id)| (*w, *id));
                let mut evictions = 0;
                let id = policy.admit(key, weight, replacing, &view, |_| evictions += 1);
                add(&self.counters.evictions, evictions);
                removed.extend(view.into_inner().evicted);
                id
            }
            None => self.next_id.fetch_add(1, Relaxed) + 1,
        };
        let timing = (expiry.on() || expiry.refresh != u64::MAX).then(|| Timing {
            loaded_at: started,
            read_at: AtomicU64::new(now),
            refresh_asked: AtomicU64::new(0),
        });
        let extra = (self.bounds.weigher.is_some() || timing.is_some())
            .then(|| Box::new(Extra { weight, timing }));
        let entry = Entry {
            value: loaded.map(|(value, _)| value.clone()),
            version: loaded.map_or(0, |(_, version)| version),
            verified_at: AtomicU64::new(started),
            tag: Tag::new(id),
            extra,
        };
        match self.map.entry(key.clone()) {
            IndexEntry::Occupied(occupied) => occupied.update(entry),
            IndexEntry::Vacant(vacant) => {
                vacant.insert_entry(entry);
            }
        }
        drop(policy);
        Removed(removed)
    }

    /// Tells the listener what an install removed.
    pub(crate) fn notify(&self, removed: Removed<K, V>) {
        if let Some(listener) = &self.bounds.listener {
            for (key, value, cause) in removed.0 {
                listener(&key, &value, cause);
            }
        }
    }

    /// Removes `key` if `keep` says no for its entry and settles the accounts (under the
    /// policy's lock, as every change to a bounded map). Returns `None` if nothing was
    /// removed, else the removed value when a listener wants it.
    fn take_unless(&self, key: &K, keep: impl FnOnce(&Entry<V>) -> bool) -> Option<Option<V>> {
        let listener = self.bounds.listener.is_some();
        let mut policy = self.lock();
        let mut gone = None;
        self.map.remove_if(key, |entry| {
            if keep(entry) {
                return false;
            }
            let value = if listener { entry.value.clone() } else { None };
            gone = Some((entry.weight(), value));
            true
        });
        let (weight, value) = gone?;
        if let Some(policy) = policy.as_mut() {
            policy.removed(weight);
        }
        Some(value)
    }

    /// As [`take_unless`](Self::take_unless), telling the listener; says whether it removed.
    fn remove_unless(
        &self,
        key: &K,
        cause: RemovalCause,
        keep: impl FnOnce(&Entry<V>) -> bool,
    ) -> bool {
        let Some(value) = self.take_unless(key, keep) else {
            return false;
        };
        if let (Some(listener), Some(value)) = (&self.bounds.listener, value) {
            listener(key, &value, cause);
        }
        true
    }

    /// Removes `key`; says whether it was held.
    pub(crate) fn remove(&self, key: &K, cause: RemovalCause) -> bool {
        self.remove_unless(key, cause, |_| false)
    }

    /// Removes every entry.
    pub(crate) fn clear(&self, cause: RemovalCause) {
        let mut told = Vec::new();
        {
            let mut policy = self.lock();
            if self.bounds.listener.is_some() {
                let guard = scc::ebr::Guard::new();
                for (key, entry) in self.map.iter(&guard) {
                    if let Some(value) = &entry.value {
                        told.push((key.clone(), value.clone()));
                    }
                }
            }
            self.map.clear();
            if let Some(policy) = policy.as_mut() {
                policy.cleared();
            }
        }
        if let Some(listener) = &self.bounds.listener {
            for (key, value) in told {
                listener(&key, &value, cause);
            }
        }
    }

    /// Removes what has expired by `now` (so that memory does not wait for a read).
    pub(crate) fn sweep(&self, now: u64) -> u64 {
        let expiry = self.bounds.expiry;
        let mut expired = Vec::new();
        {
            let guard = scc::ebr::Guard::new();
            for (key, entry) in self.map.iter(&guard) {
                if entry.expired(now, &expiry) {
                    expired.push((key.clone(), entry.id()));
                }
            }
        }
        let mut swept = 0;
        for (key, id) in expired {
            if self.remove_unless(&key, RemovalCause::Expired, |e| e.id() != id) {
                swept += 1;
            }
        }
        add(&self.counters.expirations, swept);
        swept
    }

    /// Every key with the version it holds (`None` for an absent key), for a revalidation.
    pub(crate) fn versions(&self) -> Vec<(K, Option<Version>)> {
        let mut all = Vec::with_capacity(self.len());
        let guard = scc::ebr::Guard::new();
        for (key, entry) in self.map.iter(&guard) {
            all.push((key.clone(), entry.value.as_ref().map(|_| entry.version)));
        }
        all
    }

    /// Marks `key` verified as of `started` if it still holds `version`.
    pub(crate) fn verify(&self, key: &K, version: Option<Version>, started: u64) {
        self.map.peek_with(key, |_, entry| {
            if entry.value.as_ref().map(|_| entry.version) == version {
                entry.verified_at.fetch_max(started, SeqCst);
            }
        });
    }

    /// Removes `key` if it still holds `version` (`None`: absent); a revalidation's drop.
    pub(crate) fn remove_changed(&self, key: &K, version: Option<Version>) -> bool {
        self.remove_unless(key, RemovalCause::Repaired, |e| {
            e.value.as_ref().map(|_| e.version) != version
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Entries held: the policy's count when bounded (exact, O(1)), else the map's.
    pub(crate) fn len(&self) -> usize {
        match self.lock() {
            Some(policy) => policy.entries as usize,
            None => self.map.len(),
        }
    }

    /// Total weight held (0 without a weigher or bound; entries when bounded by count only).
    pub(crate) fn weighted_size(&self) -> u64 {
        self.lock().map_or(0, |policy| policy.weight)
    }

    /// How many of `keys` the map holds, counted under the policy's lock (every change to a
    /// bounded map holds it, so the count is of one moment), for tests of the bound. (The map's
    /// own `len` may count an entry twice while its table grows.)
    #[cfg(test)]
    pub(crate) fn held<'k>(&self, keys: impl IntoIterator<Item = &'k K>) -> usize
    where
        K: 'k,
    {
        let _policy = self.lock();
        keys.into_iter()
            .filter(|key| self.map.contains(*key))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_without_weigher_or_expiry_is_40_bytes_besides_its_value() {
        // Value, version, verification time, tag, and the pointer to what a weigher or
        // expiry adds.
        assert_eq!(std::mem::size_of::<Entry<Arc<String>>>(), 40);
        assert_eq!(
            std::mem::size_of::<Entry<u64>>(),
            48,
            "Option<u64> takes 16"
        );
    }
}

//! May this node serve this entry now? The one rule, and the gates that feed it.
//!
//! Three layers know a part of the answer and push it down here; none reads another's part:
//!
//! - each topic's Synchronization actor keeps its [`LeaseGate`]: until when every peer's lease
//!   is valid, computed from what it knew at some time, and why not when it is not;
//! - the node keeps the [`MemberGate`]: whether every member it knows of has a session with
//!   it, and since when;
//! - the cache keeps the entries' verification times and its [`ServeRule`], which adds the
//!   repair mark (entries verified before it are not served) and decides;
//! - a cache with a change feed keeps its [`FeedGate`]: until when the source itself vouches
//!   (one lease past the last barrier the feed delivered), whatever the peers' state.
//!
//! | mode | gates (lease valid, computed since the member gate opened) | entry verified | served? |
//! |---|---|---|---|
//! | eventual | — | at or after the last repair | yes |
//! | bounded | open | at or after the last repair | yes |
//! | bounded | the feed's lease valid (peers' gates in any state) | at or after the last repair | yes |
//! | bounded | closed | at or after the last repair, less than a lease ago | yes (checked against the source) |
//! | bounded | closed | more than a lease ago | no: a bypass, the read loads |
//! | any | — | before the last repair | no: the read loads (a miss, or a bypass while a gate is closed) |
//!
//! The lease lives here once: it is published from the topic's validated configuration (by
//! the cache builder before the cache exists, and by the topic's actor before it computes its
//! first gate), and every reader takes it from the [`LeaseGate`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::health::Health;

/// A lock whose holder panicked still guards consistent data here (every section is a
/// single assignment or clone): recover it rather than poison every later reader.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a cache does when it cannot vouch for its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Serve from the heap only while every peer's lease is valid; otherwise read from the
    /// source (single flight, counted as a bypass). No node serves a value more than about
    /// one lease after a newer version was committed and invalidated through any node.
    #[default]
    Bounded,
    /// Always serve from the heap; repair on a detected loss (gap, restart, reconnect,
    /// undecodable input). pg2's behaviour: available, eventually consistent, and possibly
    /// stale for as long as a partition lasts.
    Eventual,
}

/// Why a gate that was open at its last computation is closed now: a peer's lease ran out
/// since (the topic's actor looks again within a heartbeat), or nobody renews it any more (the
/// actor stopped, was killed, or is stalled: the gate never holds longer than one lease past
/// its last look).
pub(crate) const LAPSED: &str = "no valid lease: it lapsed since the topic's Synchronization actor last renewed it (a peer's lease ran out, or the actor stopped or is stalled)";

/// One topic's lease gate. Written by the topic's Synchronization actor after every change
/// and heartbeat; read by every cache read (one atomic load) and by health reports.
#[derive(Debug, Default)]
pub(crate) struct LeaseGate {
    /// Our clock (µs): cached reads are safe until then. Stored with `Release` after any repair
    /// it depends on, so a reader that sees it open also sees the repair.
    valid_until: AtomicU64,
    /// Our clock (µs) when the actor started computing `valid_until`: a gate computed before
    /// the node's membership gate last opened may not count every member.
    refreshed_at: AtomicU64,
    /// The topic's lease (µs), from the actor's validated configuration: the one copy.
    lease_us: AtomicU64,
    /// The topic's heartbeat interval (µs): a repair this recent reports `Repairing`.
    heartbeat_us: AtomicU64,
    /// Our clock (µs) of the topic's last repair; 0: none yet.
    last_repair: AtomicU64,
    /// Why leases are not valid, when they are not.
    weakest: Mutex<Option<String>>,
    /// Signalled when the gate closes (a peer's lease ran out): wakes the cache's
    /// revalidation, which keeps entries checked against the source while it stays closed.
    pub(crate) closed: tokio::sync::Notify,
}

impl LeaseGate {
    /// Publishes the topic's lease and heartbeat interval (µs), before the first gate.
    pub(crate) fn configure(&self, lease_us: u64, heartbeat_us: u64) {
        self.lease_us.store(lease_us, Ordering::Release);
        self.heartbeat_us.store(heartbeat_us, Ordering::Release);
    }

    /// The topic's lease (µs); 0 until configured (a cache configures it before it exists).
    pub(crate) fn lease_us(&self) -> u64 {
        self.lease_us.load(Ordering::Acquire)
    }

    /// Whether every peer's lease is valid at `now`.
    pub(crate) fn valid(&self, now: u64) -> bool {
        now < self.valid_until.load(Ordering::Acquire)
    }

    /// Whether leases are valid now on a gate computed at or after `since` (our clock, µs;
    /// `u64::MAX`: never).
    pub(crate) fn valid_since(&self, now: u64, since: u64) -> bool {
        self.refreshed_at.load(Ordering::Acquire) >= since && self.valid(now)
    }

    /// When (our clock, µs) the gate was last computed.
    pub(crate) fn refreshed_at(&self) -> u64 {
        self.refreshed_at.load(Ordering::Acquire)
    }

    /// The time (our clock) every peer's lease is anchored at or after: every invalidation a
    /// peer sent before it has been applied here. Meaningful while [`valid`](Self::valid).
    pub(crate) fn anchor(&self) -> u64 {
        self.valid_until
            .load(Ordering::Acquire)
            .saturating_sub(self.lease_us())
    }

    /// Stores the gate computed from what was known at `computed_at`, and why it is closed
    /// when it is.
    pub(crate) fn renew(&self, until: u64, computed_at: u64, weakest: Option<String>) {
        self.valid_until.store(until, Ordering::Release);
        self.refreshed_at.store(computed_at, Ordering::Release);
        *lock(&self.weakest) = weakest;
    }

    /// Notes a repair of the topic at `now` (for health reports).
    pub(crate) fn repaired(&self, now: u64) {
        self.last_repair.fetch_max(now, Ordering::AcqRel);
    }

    /// The topic's health at `now`, from this gate alone.
    pub(crate) fn health(&self, now: u64) -> Health {
        if !self.valid(now) {
            let reason = lock(&self.weakest)
                .clone()
                .unwrap_or_else(|| LAPSED.to_owned());
            return Health::Bypassing { reason };
        }
        let last_repair = self.last_repair.load(Ordering::Acquire);
        let heartbeat = self.heartbeat_us.load(Ordering::Acquire);
        if last_repair > 0 && now.saturating_sub(last_repair) < heartbeat {
            return Health::Repairing;
        }
        Health::Healthy
    }
}

/// A cache's change-feed lease: every change committed before the feed's last barrier has
/// been applied, so entries may be served until one lease past the barrier's stamp. Written by
/// the cache's feed task after it applied everything before the barrier; never valid without
/// a feed.
#[derive(Debug, Default)]
pub(crate) struct FeedGate {
    /// The stamp (our clock, µs) of the last barrier delivered; 0: none.
    anchor: AtomicU64,
    /// The lease (µs) the gate is valid for past its anchor; 0: no feed.
    lease_us: AtomicU64,
}

impl FeedGate {
    /// A feed is attached, its lease `lease_us`.
    pub(crate) fn attach(&self, lease_us: u64) {
        self.lease_us.store(lease_us, Ordering::Release);
    }

    /// The feed delivered a barrier stamped `at`: everything committed before it is applied.
    pub(crate) fn barrier(&self, at: u64) {
        self.anchor.fetch_max(at, Ordering::AcqRel);
    }

    /// The feed ended: nothing vouches any more.
    pub(crate) fn detach(&self) {
        self.lease_us.store(0, Ordering::Release);
    }

    /// The anchor, while the feed's lease is valid at `now`.
    pub(crate) fn vouches(&self, now: u64) -> Option<u64> {
        let anchor = self.anchor.load(Ordering::Acquire);
        let lease = self.lease_us.load(Ordering::Acquire);
        (anchor > 0 && now < anchor.saturating_add(lease)).then_some(anchor)
    }
}

/// Whether this node knows its whole membership: every member it knows of (from gossip, or
/// heard from directly) has a ready session with it, and, if it was given peers or discovery
/// names, it has reached at least one. Caches serve from their heap only while it is open, and
/// only on a lease gate their topic computed after it opened (so the topic counted every
/// member that came with the sessions). Written by the node's membership.
#[derive(Debug)]
pub(crate) struct MemberGate {
    /// Our clock (µs) when it last opened; `u64::MAX` while closed.
    open_since: AtomicU64,
    /// Why it is closed.
    reason: Mutex<Option<String>>,
    /// Signalled when it closes: wakes the caches' revalidation.
    pub(crate) closed: tokio::sync::Notify,
}

impl MemberGate {
    /// A gate closed for `reason` until the node's membership first opens it.
    pub(crate) fn closed_for(reason: &str) -> Self {
        Self {
            open_since: AtomicU64::new(u64::MAX),
            reason: Mutex::new(Some(reason.to_owned())),
            closed: tokio::sync::Notify::new(),
        }
    }

    /// A gate open since the start: a cache without a node's membership (unit tests) is not
    /// held back by it.
    #[cfg(test)]
    pub(crate) fn open() -> Self {
        Self {
            open_since: AtomicU64::new(0),
            reason: Mutex::new(None),
            closed: tokio::sync::Notify::new(),
        }
    }

    /// When it last opened (our clock, µs), or `u64::MAX` while it is closed.
    pub(crate) fn open_since(&self) -> u64 {
        self.open_since.load(Ordering::Acquire)
    }

    /// Why it is closed, when it is.
    pub(crate) fn reason(&self) -> Option<String> {
        lock(&self.reason).clone()
    }

    /// Closes it for `reason`; wakes the caches' revalidation if it was open.
    pub(crate) fn close(&self, reason: String) {
        *lock(&self.reason) = Some(reason);
        if self.open_since.swap(u64::MAX, Ordering::AcqRel) != u64::MAX {
            self.closed.notify_waiters();
        }
    }

    /// Opens it at `now`, if it is closed.
    pub(crate) fn open_at(&self, now: u64) {
        if self.open_since() == u64::MAX {
            *lock(&self.reason) = None;
            self.open_since.store(now, Ordering::Release);
        }
    }
}

/// One cache's serve rule: its mode, its topic's lease gate, the node's membership gate and
/// its own repair mark, and the decisions taken from them.
#[derive(Debug)]
pub(crate) struct ServeRule {
    mode: Mode,
    leases: Arc<LeaseGate>,
    members: Arc<MemberGate>,
    /// The source's change feed, if the cache has one.
    pub(crate) feed: FeedGate,
    /// The last repair (µs): entries verified before it are not served until checked again.
    repaired_at: AtomicU64,
}

impl ServeRule {
    pub(crate) fn new(mode: Mode, leases: Arc<LeaseGate>, members: Arc<MemberGate>) -> Self {
        Self {
            mode,
            leases,
            members,
            feed: FeedGate::default(),
            repaired_at: AtomicU64::new(0),
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// The topic's lease (µs).
    pub(crate) fn lease_us(&self) -> u64 {
        self.leases.lease_us()
    }

    /// Whether every gate is open at `now` (always in eventual mode; in bounded mode while
    /// every peer's lease is valid on a gate computed since the node last knew every member,
    /// or while the change feed's lease is): a few atomic loads.
    pub(crate) fn open(&self, now: u64) -> bool {
        self.mode == Mode::Eventual
            || self.leases.valid_since(now, self.members.open_since())
            || self.feed.vouches(now).is_some()
    }

    /// The repair mark (µs).
    pub(crate) fn repaired_at(&self) -> u64 {
        self.repaired_at.load(Ordering::SeqCst)
    }

    /// Marks every entry unverified as of `now`.
    pub(crate) fn mark_repaired(&self, now: u64) {
        self.repaired_at.fetch_max(now, Ordering::SeqCst);
    }

    /// The rule, for an entry last verified at `verified` (a load or a version check that
    /// started then), with the repair mark and the gates read once by the caller (gates
    /// first: a repair marked before the gate renewal that was read is seen).
    #[inline]
    pub(crate) fn serves(verified: u64, repaired: u64, open: bool, lease: u64, now: u64) -> bool {
        verified >= repaired && (open || now < verified.saturating_add(lease))
    }

    /// As of when (our clock) the gates vouch for every entry verified since the last repair:
    /// the leases' anchor, while every gate is open (in either mode); `None` otherwise.
    pub(crate) fn gates_vouch_since(&self, now: u64) -> Option<u64> {
        let peers = self
            .leases
            .valid_since(now, self.members.open_since())
            .then(|| self.leases.anchor());
        match (peers, self.feed.vouches(now)) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// As of when (our clock) an entry verified at `verified` is known current: the later of
    /// its check and what the gates vouch for (`gates`, from
    /// [`gates_vouch_since`](Self::gates_vouch_since)); `None` for an entry verified before
    /// the last repair, which nothing vouches for.
    #[inline]
    pub(crate) fn current_as_of(verified: u64, repaired: u64, gates: Option<u64>) -> Option<u64> {
        (verified >= repaired).then(|| gates.map_or(verified, |anchor| anchor.max(verified)))
    }

    /// Whether a load that started at `started` may still be joined at `now`: one older than a
    /// lease could answer from before a commit the reader must see, and one older than the
    /// repair could miss what the repair is about.
    pub(crate) fn joinable(&self, started: u64, now: u64) -> bool {
        now < started.saturating_add(self.lease_us()) && started >= self.repaired_at()
    }

    /// Whether a revalidation pass is due at `now`, the last one having started at `last`:
    /// entries were marked unverified since; or a gate is closed and the entries' verification
    /// is half a lease old; or `every` has passed.
    pub(crate) fn pass_due(&self, now: u64, last: u64, every: Option<u64>) -> bool {
        self.repaired_at() > last
            || (!self.open(now) && now >= last.saturating_add(self.lease_us() / 2))
            || every.is_some_and(|every| now >= last.saturating_add(every))
    }

    /// Waits until either gate closes.
    pub(crate) async fn closed(&self) {
        tokio::select! {
            () = self.leases.closed.notified() => {}
            () = self.members.closed.notified() => {}
        }
    }

    /// Whether this node may serve from its heap now, and if not why (for health reports).
    pub(crate) fn health(&self, now: u64) -> Health {
        if self.feed.vouches(now).is_some() {
            // The source vouches for every committed write: the peers' state does not matter.
            return match self.leases.health(now) {
                Health::Repairing => Health::Repairing,
                _ => Health::Healthy,
            };
        }
        if let Some(reason) = self.members.reason() {
            return Health::Bypassing { reason };
        }
        let health = self.leases.health(now);
        if health == Health::Healthy && !self.leases.valid_since(now, self.members.open_since()) {
            let reason = "the topic has not yet counted the members just reached".to_owned();
            return Health::Bypassing { reason };
        }
        health
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(mode: Mode) -> ServeRule {
        let leases = Arc::new(LeaseGate::default());
        leases.configure(1_000, 200);
        ServeRule::new(mode, leases, Arc::new(MemberGate::open()))
    }

    #[test]
    fn the_table() {
        let (lease, now) = (1_000, 10_000);
        // Verified since the repair: served with the gates open, or within a lease of its check.
        assert!(ServeRule::serves(9_500, 9_000, true, lease, now));
        assert!(ServeRule::serves(9_500, 9_000, false, lease, now));
        assert!(
            !ServeRule::serves(8_999, 0, false, lease, now),
            "a lease old"
        );
        assert!(ServeRule::serves(8_999, 0, true, lease, now));
        // Verified before the repair: never.
        assert!(!ServeRule::serves(8_999, 9_000, true, lease, now));
    }

    #[test]
    fn eventual_is_always_open_bounded_only_on_a_gate_computed_since_the_members_were_known() {
        assert!(rule(Mode::Eventual).open(5));
        let bounded = rule(Mode::Bounded);
        assert!(!bounded.open(5), "no lease yet");
        bounded.leases.renew(100, 1, None);
        assert!(bounded.open(5));
        bounded.members.close("a member out of reach".into());
        assert!(!bounded.open(5));
        bounded.members.open_at(10);
        assert!(!bounded.open(11), "computed before the members were known");
        bounded.leases.renew(100, 10, None);
        assert!(bounded.open(11));
        assert_eq!(bounded.health(11), Health::Healthy);
        bounded.leases.repaired(50);
        assert_eq!(bounded.health(60), Health::Repairing);
        assert!(matches!(bounded.health(101), Health::Bypassing { .. }));
    }

    #[test]
    fn a_feed_s_lease_opens_the_gates_for_one_lease_past_its_last_barrier() {
        let rule = rule(Mode::Bounded);
        rule.members.close("a member out of reach".into());
        assert!(!rule.open(5));
        rule.feed.barrier(100);
        assert!(!rule.open(150), "no feed attached");
        rule.feed.attach(1_000);
        assert!(rule.open(150));
        assert_eq!(rule.gates_vouch_since(150), Some(100));
        assert_eq!(rule.health(150), Health::Healthy);
        assert!(rule.open(1_099));
        assert!(!rule.open(1_100), "a lease past the barrier");
        assert!(matches!(rule.health(1_100), Health::Bypassing { .. }));
        rule.feed.barrier(50);
        assert!(!rule.open(1_100), "an older barrier moves nothing");
        rule.feed.barrier(900);
        assert!(rule.open(1_100));
        rule.feed.detach();
        assert!(!rule.open(1_100), "the feed ended");
    }

    #[test]
    fn a_flight_is_joined_within_a_lease_and_since_the_repair() {
        let rule = rule(Mode::Bounded);
        assert!(rule.joinable(100, 1_099));
        assert!(!rule.joinable(100, 1_100), "a lease old");
        rule.mark_repaired(200);
        assert!(!rule.joinable(100, 300), "from before the repair");
        assert!(rule.joinable(200, 300));
    }
}

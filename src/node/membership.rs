//! Membership by gossip: every node-level heartbeat lists the members its sender knows (name,
//! incarnation, address to dial, whether it has a ready session with it); a node dials every
//! member it learns of, so one reachable seed is enough to join and chains work.
//!
//! A peer is a member from the moment its session is ready (not from its first heartbeat): a
//! node that joins, writes and vanishes at once is still one the gate waits for.
//!
//! **A member is never forgotten on silence alone.** A member that vanished without leaving
//! may still be writing to the shared source of truth behind a partition, however long: until
//! there is evidence it is gone, the membership gate stays closed for it and caches serve only
//! entries checked against the source within a lease. The evidence accepted:
//!
//! - a clean leave from the member itself (its caches stopped before it left);
//! - the same name heard back with a new incarnation (names are unique among live nodes: the
//!   old process is gone);
//! - discovery no longer listing the address it was once discovered at (the discovery name
//!   lists every live member — for a Kubernetes headless service, publish not-ready addresses);
//! - an operator removing it ([`Node::remove_member`](crate::Node::remove_member));
//! - a peer that listed it in its heartbeats dropping it from them while still heartbeating
//!   under the same incarnation: a node drops a member only on evidence, so the evidence
//!   travels (an operator's removal on one node reaches every node this way).
//!
//! A refused connection at its address is not evidence: a firewall rejecting traffic during a
//! partition looks the same. `forget_members_after` is how long a silent member is kept
//! before the evidence of discovery is taken; the others act at once.
//!
//! Rules, so that gossip never resurrects what is gone:
//! - What a member says of itself (its own heartbeats) is authoritative for its incarnation;
//!   a report of another incarnation of a member heard from directly is ignored.
//! - A member that left, was removed or was forgotten on evidence is remembered as gone under
//!   that incarnation: stale reports of it are ignored. A restart (a new incarnation) is a new
//!   member.
//! - What a credentialed peer can add is bounded: at most [`MAX_MEMBERS`] members, of which at
//!   most [`MAX_INTRODUCED`] introduced by any one reporter and not reached yet; names and
//!   addresses longer than [`MAX_FIELD`] bytes are refused. Each refusal is counted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt};

use super::dialer::Dialing;
use super::dialer::{Dialer, DialerTask};
use super::peers::Arrivals;
use crate::clock::now_us;
use crate::counter::bump;
use crate::gate::MemberGate;
use crate::protocol::envelope::Member;
use crate::synchronization::message::Gossip;

/// One other member of the cluster, as this node sees it ([`Node::members`](crate::Node::members)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// Its name (`name@host`).
    pub name: String,
    /// The address it is dialled at (`host:port`), as it advertises itself; empty if unknown.
    pub addr: String,
    /// Where this node stands with it.
    pub state: MemberState,
}

/// Where this node stands with one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MemberState {
    /// Known (configured, discovered or reported by a peer), never reached yet: dialling. The
    /// membership gate is closed meanwhile.
    Connecting,
    /// A ready session.
    Ready,
    /// Reached before, no session now (crashed, partitioned, restarting): dialled again until
    /// it returns or is forgotten. The membership gate is closed meanwhile.
    Down,
    /// Left cleanly; remembered for a while so that stale gossip does not bring it back.
    Left,
}

impl MemberState {
    /// `connecting`, `ready`, `down` or `left`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Ready => "ready",
            Self::Down => "down",
            Self::Left => "left",
        }
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most members a node keeps (known and remembered as gone, each).
pub(crate) const MAX_MEMBERS: usize = 1_024;
/// Most members one reporter may introduce that this node has not reached yet.
pub(crate) const MAX_INTRODUCED: usize = 64;
/// Longest member name or address accepted from a report (bytes).
pub(crate) const MAX_FIELD: usize = 255;
/// How long an operator's removal keeps a member's incarnation out (µs): a day.
const REMOVED_FOR: u64 = 24 * 3_600 * 1_000_000;
/// Most peers remembered as listing one member (evidence travels through any of them).
const MAX_LISTERS: usize = 16;
/// Most addresses remembered as once discovered.
const MAX_DISCOVERED: usize = 65_536;

pub(crate) struct Membership {
    /// This node's name and the address it advertises.
    me: String,
    my_addr: String,
    /// This node's node-level incarnation, once its heartbeat actor is up.
    /// 0 until the node-level actor is up; a new one after it was spawned again.
    my_incarnation: std::sync::atomic::AtomicU64,
    /// Addresses dialled anyway (configured peers): no second dialer for them.
    configured: Vec<String>,
    /// Whether members learnt from gossip are dialled at all.
    dial: bool,
    dialing: Dialing,
    /// Every session that became ready: each is a member.
    arrivals: Arrivals,
    /// How long a silent member is kept before discovery's evidence that it is gone is taken.
    forget_after: u64,
    state: Mutex<State>,
    gate: Arc<MemberGate>,
    /// Bumped whenever the members or their states change; the last signature seen.
    changes: tokio::sync::watch::Sender<u64>,
    signature: AtomicU64,
}

#[derive(Default)]
struct State {
    known: HashMap<String, Known>,
    /// (name, incarnation) → until when (our clock, µs) reports of it are ignored.
    gone: HashMap<(String, u64), Gone>,
    /// One dialer per address of a known member.
    dialers: HashMap<String, DialerTask>,
    /// Discovery name → the addresses other than ours it resolved to last.
    discovered: HashMap<String, HashSet<SocketAddr>>,
    /// Every address discovery ever listed (at most [`MAX_DISCOVERED`]): a member at one of
    /// them that no discovery name lists any more is gone.
    ever_discovered: HashSet<SocketAddr>,
}

/// A member remembered as gone, so that stale reports do not bring it back.
struct Gone {
    /// Our clock (µs): until then reports of it are ignored.
    until: u64,
    addr: String,
    /// It left cleanly (else: forgotten after nobody reached it).
    clean: bool,
}

struct Known {
    incarnation: u64,
    addr: String,
    /// The incarnation comes from the member's own heartbeat.
    direct: bool,
    /// This node had a ready session with it (or heard from it) at some point.
    reached: bool,
    /// Our clock (µs): the member was last heard from, or reported ready by someone.
    alive_at: u64,
    /// The reporter that introduced it, while this node has not reached it (for the cap on
    /// what one reporter may add).
    introduced_by: Option<String>,
    /// Peers (name → incarnation) whose latest heartbeat listed it: one of them dropping it
    /// under the same incarnation had evidence it is gone.
    listed_by: HashMap<String, u64>,
    /// Its vanishing was logged (no session, silent past `forget_after`, no evidence yet).
    vanished: bool,
}

impl Known {
    fn new(incarnation: u64, addr: String, now: u64) -> Self {
        Self {
            incarnation,
            addr,
            direct: false,
            reached: false,
            alive_at: now,
            introduced_by: None,
            listed_by: HashMap::new(),
            vanished: false,
        }
    }
}

impl Membership {
    pub(crate) fn new(
        me: String,
        my_addr: String,
        configured: Vec<String>,
        dial: bool,
        dialing: Dialing,
        arrivals: Arrivals,
        forget_after: Duration,
    ) -> Self {
        Self {
            me,
            my_addr,
            my_incarnation: std::sync::atomic::AtomicU64::new(0),
            configured,
            dial,
            dialing,
            arrivals,
            forget_after: forget_after.as_micros() as u64,
            state: Mutex::default(),
            gate: Arc::new(MemberGate::closed_for("starting")),
            changes: tokio::sync::watch::Sender::new(0),
            signature: AtomicU64::new(0),
        }
    }

    /// Every other member this node knows of, and those that left recently, sorted by name.
    pub(crate) fn members(&self) -> Vec<MemberInfo> {
        let ready = self.ready_names();
        let mut members = self.with(|s| {
            self.absorb_arrivals(s);
            s.mark_reached(&ready);
            s.view(&ready, |name, addr, state| MemberInfo {
                name: name.to_owned(),
                addr: addr.to_owned(),
                state,
            })
        });
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        members.dedup_by(|a, b| a.name == b.name && a.state == b.state);
        members
    }

    /// A receiver that sees a new value whenever [`members`](Self::members) would change.
    pub(crate) fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tells watchers if the members or their states changed (an order-independent sum of the
    /// hashes of what [`members`](Self::members) lists).
    fn signal_changes(&self, ready: &[String]) {
        use std::hash::{Hash, Hasher};
        let signature = self.with(|s| {
            s.view(ready, |name, addr, state| {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                (name, addr, state).hash(&mut hasher);
                hasher.finish()
            })
            .into_iter()
            .fold(0u64, u64::wrapping_add)
        });
        if self.signature.swap(signature, Ordering::AcqRel) != signature {
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    /// The gate caches check on every read.
    pub(crate) fn gate(&self) -> Arc<MemberGate> {
        self.gate.clone()
    }

    /// Discovery resolved `name` to these addresses other than this node's.
    pub(crate) fn discovered(&self, name: &str, found: &HashSet<SocketAddr>) {
        self.with(|s| {
            for addr in found {
                if s.ever_discovered.len() < MAX_DISCOVERED {
                    s.ever_discovered.insert(*addr);
                }
            }
            s.discovered.insert(name.to_owned(), found.clone());
        });
        self.refresh_gate();
    }

    /// An operator says `name` is gone for good (it may have vanished without leaving, and
    /// will not come back under its incarnation): it no longer holds the gate closed, and
    /// reports of that incarnation are ignored for a day. Returns whether it was known.
    pub(crate) fn remove(&self, name: &str) -> bool {
        let now = now_us();
        let removed = self.with(|s| {
            let known = s.known.remove(name)?;
            tracing::warn!(member = %name, "member removed by the operator");
            s.bury(name, &known, now.saturating_add(REMOVED_FOR), true);
            Some(())
        });
        self.refresh_gate();
        removed.is_some()
    }

    pub(crate) fn set_incarnation(&self, incarnation: u64) {
        self.my_incarnation
            .store(incarnation, std::sync::atomic::Ordering::Release);
    }
}

/// The node-level heartbeat lists what membership knows, and reports what peers' list.
impl Gossip for Membership {
    /// What this node's next heartbeat says: itself, then every member it knows.
    fn members(&self) -> Vec<Member> {
        let ready = self.ready_names();
        let incarnation = self
            .my_incarnation
            .load(std::sync::atomic::Ordering::Acquire);
        let mut members: Vec<Member> = (incarnation != 0)
            .then(|| Member {
                name: self.me.clone(),
                incarnation,
                addr: self.my_addr.clone(),
                ready: true,
            })
            .into_iter()
            .collect();
        self.with(|s| {
            self.absorb_arrivals(s);
            members.extend(s.known.iter().map(|(name, k)| Member {
                name: name.clone(),
                incarnation: k.incarnation,
                addr: k.addr.clone(),
                ready: ready.contains(name),
            }));
        });
        members
    }

    /// A heartbeat from `origin` at `incarnation` listed `members`.
    fn heard(&self, origin: &str, incarnation: u64, members: &[Member]) {
        let now = now_us();
        let refused = self.with(|s| s.heard(&self.me, origin, incarnation, members, now));
        let Some(refused) = refused else {
            return;
        };
        for _ in 0..refused {
            bump(&self.dialing.counters.members_refused);
        }
        self.refresh_gate();
    }

    /// `origin` at `incarnation` left cleanly: forgotten at once, and not resurrected.
    fn left(&self, origin: &str, incarnation: u64) {
        let until = now_us() + self.forget_after;
        self.with(|s| {
            // Known by its incarnation, or only by name (a session that was ready, a report).
            let matches = |k: &Known| k.incarnation == incarnation || k.incarnation == 0;
            let mut known = Known::new(incarnation, String::new(), 0);
            if s.known.get(origin).is_some_and(matches) {
                known = s.known.remove(origin).unwrap_or(known);
                known.incarnation = incarnation;
            }
            s.bury(origin, &known, until, true);
        });
        self.refresh_gate();
    }
}

impl Membership {
    /// Forgets the silent members that discovery no longer lists, notes the others as
    /// vanished (they keep the gate closed), and keeps one dialer per address of every known
    /// member. Called once per heartbeat.
    pub(crate) fn tick(&self) {
        let now = now_us();
        let ready = self.ready_names();
        let forget_after = self.forget_after;
        self.with(|s| {
            self.absorb_arrivals(s);
            s.gone.retain(|_, gone| gone.until > now);
            let silent: Vec<String> = s
                .known
                .iter()
                .filter(|(name, k)| {
                    !ready.contains(name) && now.saturating_sub(k.alive_at) > forget_after
                })
                .map(|(name, _)| name.clone())
                .collect();
            for name in silent {
                if s.undiscovered(&name) {
                    if let Some(k) = s.known.remove(&name) {
                        tracing::info!(member = %name, addr = %k.addr, "forgetting a member discovery no longer lists");
                        s.bury(&name, &k, now.saturating_add(forget_after), false);
                    }
                } else if let Some(k) = s.known.get_mut(&name) {
                    if !k.vanished {
                        k.vanished = true;
                        tracing::warn!(member = %name, "member vanished without leaving: entries are checked against the source until it returns, leaves, or is removed");
                    }
                }
            }
            let wanted: Vec<(String, String)> = s
                .known
                .iter()
                .map(|(name, k)| (k.addr.clone(), name.clone()))
                .filter(|(addr, _)| !addr.is_empty() && *addr != self.my_addr)
                .filter(|(addr, _)| self.dial && !self.configured.contains(addr))
                .collect();
            s.dialers
                .retain(|addr, _| wanted.iter().any(|(wanted, _)| wanted == addr));
            for (addr, name) in wanted {
                s.dialers.entry(addr).or_insert_with_key(|addr| {
                    tracing::info!(%addr, member = %name, "dialling a member learnt from gossip");
                    // A session the member opened to us counts: no second one is dialled.
                    let mut dialer: Dialer = self.dialing.dialer(addr);
                    dialer.known_name = Some(name);
                    dialer.spawn()
                });
            }
        });
        self.refresh_gate();
    }

    /// Closes the gate while a known member has no ready session, or while none of the
    /// configured or discovered peers has been reached; opens it otherwise. Decided and applied
    /// under the membership's lock, so that a decision taken on what was known before cannot
    /// undo a later one.
    fn refresh_gate(&self) {
        let ready = self.with(|s| {
            self.absorb_arrivals(s);
            let ready = self.ready_names();
            s.mark_reached(&ready);
            let mut missing: Vec<String> = s
                .known
                .keys()
                .filter(|n| !ready.contains(n))
                .cloned()
                .collect();
            missing.sort();
            let expects =
                !self.configured.is_empty() || s.discovered.values().any(|f| !f.is_empty());
            if !missing.is_empty() {
                let reason = format!("no session with member {}", missing.join(", "));
                self.gate.close(reason);
            } else if expects && ready.is_empty() {
                self.gate
                    .close("no configured or discovered peer reached".to_owned());
            } else {
                self.gate.open_at(now_us());
            }
            ready
        });
        self.signal_changes(&ready);
    }

    /// Every session that became ready since the last call is a member (reached), whatever
    /// became of the session since.
    fn absorb_arrivals(&self, s: &mut State) {
        let now = now_us();
        for (name, listens_on) in self.arrivals.take() {
            if name == self.me {
                continue;
            }
            let known = s
                .known
                .entry(name)
                .or_insert_with(|| Known::new(0, listens_on.clone(), now));
            if known.addr.is_empty() {
                known.addr = listens_on;
            }
            known.reached = true;
            known.alive_at = known.alive_at.max(now);
            known.introduced_by = None;
        }
    }

    fn ready_names(&self) -> Vec<String> {
        self.dialing
            .sessions
            .borrow()
            .values()
            .map(|s| s.name.clone())
            .collect()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl State {
    /// A verified heartbeat of `origin` at `incarnation` listing `members` (`me` among them,
    /// perhaps): how many of its reports were refused, or `None` if it was ignored.
    fn heard(
        &mut self,
        me: &str,
        origin: &str,
        incarnation: u64,
        members: &[Member],
        now: u64,
    ) -> Option<usize> {
        // A heartbeat sent before a clean leave and delivered after it (a late frame, a
        // queued bundle) does not bring the member back: the leave is final for its
        // incarnation.
        let tombstone = (origin.to_owned(), incarnation);
        if self.gone.get(&tombstone).is_some_and(|g| g.clean) {
            return None;
        }
        let own_addr = members
            .iter()
            .find(|m| m.name == origin)
            .map(|m| m.addr.clone());
        let addr = own_addr.or_else(|| self.known.get(origin).map(|k| k.addr.clone()));
        let known = self
            .known
            .entry(origin.to_owned())
            .or_insert_with(|| Known::new(incarnation, String::new(), now));
        known.incarnation = incarnation;
        known.addr = addr.unwrap_or_default();
        known.direct = true;
        known.reached = true;
        known.alive_at = now;
        known.introduced_by = None;
        self.dropped_by(origin, incarnation, members, now);
        let others = members.iter().filter(|m| m.name != origin && m.name != me);
        Some(
            others
                .filter(|member| !self.reported(member, origin, incarnation, now))
                .count(),
        )
    }

    /// Members with a ready session now have been reached.
    fn mark_reached(&mut self, ready: &[String]) {
        for name in ready {
            if let Some(k) = self.known.get_mut(name) {
                k.reached = true;
                k.introduced_by = None;
            }
        }
    }

    /// Remembers `known` as gone until `until`: reports of its incarnation are then ignored
    /// (all of them after a clean leave or a removal; those not ready otherwise). At most
    /// [`MAX_MEMBERS`] are remembered: the one that ends first makes room.
    fn bury(&mut self, name: &str, known: &Known, until: u64, clean: bool) {
        if self.gone.len() >= MAX_MEMBERS {
            let first = self
                .gone
                .iter()
                .min_by_key(|(_, g)| g.until)
                .map(|(key, _)| key.clone());
            if let Some(first) = first {
                self.gone.remove(&first);
            }
        }
        let gone = Gone {
            until,
            addr: known.addr.clone(),
            clean,
        };
        self.gone.insert((name.to_owned(), known.incarnation), gone);
    }

    /// Whether `name`, known at an address discovery once listed, is listed by no discovery
    /// name now: discovery's evidence that it is gone.
    fn undiscovered(&self, name: &str) -> bool {
        let Some(addr) = self
            .known
            .get(name)
            .and_then(|k| k.addr.parse::<SocketAddr>().ok())
        else {
            return false;
        };
        self.ever_discovered.contains(&addr)
            && !self.discovered.values().any(|found| found.contains(&addr))
    }

    /// `reporter` (at `incarnation`) heartbeats with `members`: every member it listed before
    /// under this incarnation and lists no more, it dropped on evidence that the member is
    /// gone. Such a member is forgotten here too, unless this node has a session with it.
    fn dropped_by(&mut self, reporter: &str, incarnation: u64, members: &[Member], now: u64) {
        let listed: HashSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let mut dropped = Vec::new();
        for (name, known) in &mut self.known {
            let Some(&listed_at) = known.listed_by.get(reporter) else {
                continue;
            };
            if listed.contains(name.as_str()) {
                continue;
            }
            known.listed_by.remove(reporter);
            // A restarted reporter forgot what it knew: not evidence.
            if listed_at == incarnation {
                dropped.push(name.clone());
            }
        }
        for name in dropped {
            if let Some(known) = self.known.remove(&name) {
                tracing::info!(member = %name, %reporter, "forgetting a member a peer dropped");
                self.bury(&name, &known, now.saturating_add(REMOVED_FOR), false);
            }
        }
    }

    /// Every known member and every clean leave still remembered, as `f(name, addr, state)`.
    fn view<T>(&self, ready: &[String], f: impl Fn(&str, &str, MemberState) -> T) -> Vec<T> {
        let known = self.known.iter().map(|(name, k)| {
            let state = if ready.contains(name) {
                MemberState::Ready
            } else if k.reached {
                MemberState::Down
            } else {
                MemberState::Connecting
            };
            f(name, &k.addr, state)
        });
        let left = self
            .gone
            .iter()
            .filter(|((name, _), gone)| gone.clean && !self.known.contains_key(name))
            .map(|((name, _), gone)| f(name, &gone.addr, MemberState::Left));
        known.chain(left).collect()
    }

    /// `reporter`'s (at `incarnation`) report of `member`; `false` if refused (a field too
    /// long, the table full, or the reporter's share of members not reached yet used up).
    fn reported(&mut self, member: &Member, reporter: &str, incarnation: u64, now: u64) -> bool {
        if member.name.is_empty() || member.name.len() > MAX_FIELD || member.addr.len() > MAX_FIELD
        {
            return false;
        }
        let tombstone = (member.name.clone(), member.incarnation);
        if let Some(gone) = self.gone.get(&tombstone) {
            // A clean leave is final for its incarnation, and a report without a ready session
            // is stale. But a member forgotten here that a peer has a ready session with is
            // alive: it must close the gate again until this node reaches it too, or its
            // writes, which reach that peer only, would be hidden by this node's heap.
            if gone.clean || !member.ready {
                return true;
            }
            tracing::info!(member = %member.name, "a forgotten member is reported alive");
            self.gone.remove(&tombstone);
        }
        if !self.known.contains_key(&member.name) {
            let introduced = self
                .known
                .values()
                .filter(|k| k.introduced_by.as_deref() == Some(reporter))
                .count();
            if self.known.len() >= MAX_MEMBERS || introduced >= MAX_INTRODUCED {
                return false;
            }
            let mut known = Known::new(member.incarnation, member.addr.clone(), now);
            // A member first heard of by a report is given `forget_after` to be reached.
            known.introduced_by = Some(reporter.to_owned());
            tracing::info!(member = %member.name, addr = %member.addr, "learnt of a member from gossip");
            self.known.insert(member.name.clone(), known);
        }
        let Some(k) = self.known.get_mut(&member.name) else {
            return true;
        };
        if k.listed_by.len() < MAX_LISTERS || k.listed_by.contains_key(reporter) {
            k.listed_by.insert(reporter.to_owned(), incarnation);
        }
        // What a member says of itself wins over what others say of it; an unknown
        // incarnation (0: known by its session only) says nothing.
        let theirs = member.incarnation;
        if !(k.direct && k.incarnation != 0 && k.incarnation != theirs) && theirs != 0 {
            if k.incarnation != theirs || (!k.direct && !member.addr.is_empty()) {
                k.incarnation = theirs;
                k.addr = member.addr.clone();
            }
        } else if k.addr.is_empty() && !member.addr.is_empty() {
            k.addr = member.addr.clone();
        }
        if member.ready && (!k.direct || k.incarnation == theirs || theirs == 0) {
            k.alive_at = now;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, incarnation: u64, ready: bool) -> Member {
        Member {
            name: name.into(),
            incarnation,
            addr: format!("{name}:1"),
            ready,
        }
    }

    #[test]
    fn a_report_of_a_gone_incarnation_is_ignored_and_a_new_one_is_a_new_member() {
        let mut state = State::default();
        let gone = Gone {
            until: u64::MAX,
            addr: String::new(),
            clean: true,
        };
        state.gone.insert(("c@h".into(), 7), gone);
        state.reported(&member("c@h", 7, true), "r@h", 1, 10);
        assert!(state.known.is_empty(), "a stale report resurrected c");
        state.reported(&member("c@h", 8, true), "r@h", 1, 10);
        assert_eq!(state.known["c@h"].incarnation, 8);
    }

    #[test]
    fn a_forgotten_member_reported_ready_is_known_again_a_clean_leave_is_final() {
        let mut state = State::default();
        let gone = |clean| Gone {
            until: u64::MAX,
            addr: String::new(),
            clean,
        };
        state.gone.insert(("d@h".into(), 7), gone(false));
        state.reported(&member("d@h", 7, false), "r@h", 1, 10);
        assert!(state.known.is_empty(), "a not-ready report brought d back");
        state.reported(&member("d@h", 7, true), "r@h", 1, 10);
        assert!(
            state.known.contains_key("d@h"),
            "d is alive to a peer, unknown here"
        );
        state.gone.insert(("e@h".into(), 3), gone(true));
        state.reported(&member("e@h", 3, true), "r@h", 1, 10);
        assert!(!state.known.contains_key("e@h"), "a clean leave was undone");
    }

    #[test]
    fn what_a_member_says_of_itself_wins_and_only_ready_reports_keep_it_alive() {
        let mut state = State::default();
        let mut direct = Known::new(2, "c:1".into(), 10);
        direct.direct = true;
        direct.reached = true;
        state.known.insert("c@h".into(), direct);
        state.reported(&member("c@h", 1, true), "r@h", 1, 20);
        assert_eq!(state.known["c@h"].incarnation, 2, "an old incarnation won");
        assert_eq!(state.known["c@h"].alive_at, 10);
        state.reported(&member("c@h", 2, false), "r@h", 1, 30);
        assert_eq!(
            state.known["c@h"].alive_at, 10,
            "a not-ready report kept c alive"
        );
        state.reported(&member("c@h", 2, true), "r@h", 1, 40);
        assert_eq!(state.known["c@h"].alive_at, 40);
    }

    #[test]
    fn a_member_a_peer_dropped_under_the_same_incarnation_is_forgotten_a_restarted_peer_proves_nothing(
    ) {
        let mut state = State::default();
        let listed = [member("d@h", 4, false), member("e@h", 5, false)];
        for m in &listed {
            assert!(state.reported(m, "p@h", 1, 10));
        }
        // p restarted (incarnation 2) and lists only e: it forgot d, which proves nothing.
        state.dropped_by("p@h", 2, &listed[1..], 20);
        assert!(state.known.contains_key("d@h"), "a restart dropped d");
        // p (incarnation 2) lists e, then drops it: evidence that e is gone.
        state.reported(&listed[1], "p@h", 2, 30);
        state.dropped_by("p@h", 2, &[], 40);
        assert!(
            !state.known.contains_key("e@h"),
            "a drop on evidence was ignored"
        );
        state.reported(&member("e@h", 5, false), "q@h", 1, 50);
        assert!(
            !state.known.contains_key("e@h"),
            "a stale report brought e back"
        );
        // A peer that never listed d dropping nothing says nothing of it.
        state.dropped_by("q@h", 1, &[], 60);
        assert!(state.known.contains_key("d@h"));
    }

    #[test]
    fn only_an_address_discovery_listed_once_and_lists_no_more_is_evidence() {
        let mut state = State::default();
        let addr: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        state
            .known
            .insert("d@h".into(), Known::new(1, addr.to_string(), 0));
        state
            .known
            .insert("c@h".into(), Known::new(1, "10.0.0.8:4000".into(), 0));
        assert!(!state.undiscovered("d@h"), "never discovered");
        state.ever_discovered.insert(addr);
        state
            .discovered
            .insert("peers".into(), HashSet::from([addr]));
        assert!(!state.undiscovered("d@h"), "still listed");
        state.discovered.insert("peers".into(), HashSet::new());
        assert!(state.undiscovered("d@h"));
        assert!(!state.undiscovered("c@h"), "c was never discovered");
    }

    #[test]
    fn a_heartbeat_delivered_after_a_clean_leave_does_not_bring_the_member_back() {
        let mut state = State::default();
        let gone = Gone {
            until: u64::MAX,
            addr: String::new(),
            clean: true,
        };
        state.gone.insert(("c@h".into(), 7), gone);
        let late = [member("c@h", 7, true), member("d@h", 1, true)];
        assert_eq!(state.heard("me@h", "c@h", 7, &late, 10), None);
        assert!(state.known.is_empty(), "a late heartbeat resurrected c");
        // Back under a new incarnation: a new member.
        assert_eq!(state.heard("me@h", "c@h", 8, &late, 20), Some(0));
        assert!(state.known.contains_key("c@h") && state.known.contains_key("d@h"));
    }

    #[test]
    fn what_one_reporter_can_add_is_bounded() {
        let mut state = State::default();
        let long = Member {
            name: "x".repeat(MAX_FIELD + 1),
            ..member("x@h", 1, true)
        };
        assert!(!state.reported(&long, "p@h", 1, 10));
        for i in 0..MAX_INTRODUCED {
            assert!(state.reported(&member(&format!("m{i}@h"), 1, true), "p@h", 1, 10));
        }
        assert!(!state.reported(&member("one-more@h", 1, true), "p@h", 1, 10));
        assert!(state.reported(&member("one-more@h", 1, true), "q@h", 1, 10));
        assert_eq!(state.known.len(), MAX_INTRODUCED + 1);
        // Reaching a member frees its reporter's share.
        state.mark_reached(&["m0@h".to_owned()]);
        assert!(state.reported(&member("another@h", 1, true), "p@h", 1, 10));
    }
}

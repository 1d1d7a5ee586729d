//! Membership by gossip: every node-level heartbeat lists the members its sender knows (name,
//! incarnation, address to dial, whether it has a ready session with it); a node dials every
//! member it learns of, so one reachable seed is enough to join and chains work.
//!
//! Rules, so that gossip never resurrects what is gone:
//! - What a member says of itself (its own heartbeats) is authoritative for its incarnation;
//!   a report of another incarnation of a member heard from directly is ignored.
//! - Only a reporter with a ready session keeps a member alive: when a member dies, every
//!   report says "not ready", and after `forget_after` without a session or a live report it
//!   is forgotten here too.
//! - A member that left cleanly or was forgotten is remembered as gone under that
//!   incarnation for `forget_after`: stale reports of it are ignored. A restart (a new
//!   incarnation) is a new member.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::dialer::Dialing;
use super::dialer::{Dialer, DialerTask};
use crate::clock::now_us;
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
    /// Discovery name → how many addresses other than ours it resolved to last.
    discovered: HashMap<String, usize>,
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
}

impl Membership {
    pub(crate) fn new(
        me: String,
        my_addr: String,
        configured: Vec<String>,
        dial: bool,
        dialing: Dialing,
        forget_after: Duration,
    ) -> Self {
        Self {
            me,
            my_addr,
            my_incarnation: std::sync::atomic::AtomicU64::new(0),
            configured,
            dial,
            dialing,
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

    /// Discovery resolved `name` to `count` addresses other than this node's.
    pub(crate) fn discovered(&self, name: &str, count: usize) {
        self.with(|s| s.discovered.insert(name.to_owned(), count));
        self.refresh_gate();
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
        let own_addr = members
            .iter()
            .find(|m| m.name == origin)
            .map(|m| m.addr.clone());
        self.with(|s| {
            let addr = own_addr.or_else(|| s.known.get(origin).map(|k| k.addr.clone()));
            let known = Known {
                incarnation,
                addr: addr.unwrap_or_default(),
                direct: true,
                reached: true,
                alive_at: now,
            };
            s.known.insert(origin.to_owned(), known);
            for member in members
                .iter()
                .filter(|m| m.name != origin && m.name != self.me)
            {
                s.reported(member, now);
            }
        });
        self.refresh_gate();
    }

    /// `origin` at `incarnation` left cleanly: forgotten at once, and not resurrected.
    fn left(&self, origin: &str, incarnation: u64) {
        let until = now_us() + self.forget_after;
        self.with(|s| {
            let mut addr = String::new();
            if s.known
                .get(origin)
                .is_some_and(|k| k.incarnation == incarnation)
            {
                addr = s.known.remove(origin).map(|k| k.addr).unwrap_or_default();
            }
            let gone = Gone {
                until,
                addr,
                clean: true,
            };
            s.gone.insert((origin.to_owned(), incarnation), gone);
        });
        self.refresh_gate();
    }
}

impl Membership {
    /// Forgets members nobody has been in touch with for `forget_after`, and keeps one dialer
    /// per address of every other known member. Called once per heartbeat.
    pub(crate) fn tick(&self) {
        let now = now_us();
        let ready = self.ready_names();
        let forget_after = self.forget_after;
        self.with(|s| {
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
                if let Some(k) = s.known.remove(&name) {
                    tracing::info!(member = %name, "forgetting a member nobody reaches");
                    let gone = Gone {
                        until: now + forget_after,
                        addr: k.addr,
                        clean: false,
                    };
                    s.gone.insert((name, k.incarnation), gone);
                }
            }
            let wanted: Vec<String> = s
                .known
                .values()
                .map(|k| k.addr.clone())
                .filter(|addr| !addr.is_empty() && *addr != self.my_addr)
                .filter(|addr| self.dial && !self.configured.contains(addr))
                .collect();
            s.dialers.retain(|addr, _| wanted.contains(addr));
            for addr in wanted {
                s.dialers.entry(addr).or_insert_with_key(|addr| {
                    tracing::info!(%addr, "dialling a member learnt from gossip");
                    let dialer: Dialer = self.dialing.dialer(addr);
                    dialer.spawn()
                });
            }
        });
        self.refresh_gate();
    }

    /// Closes the gate while a known member has no ready session, or while none of the
    /// configured or discovered peers has been reached; opens it otherwise.
    fn refresh_gate(&self) {
        let ready = self.ready_names();
        let (missing, expects_peers) = self.with(|s| {
            s.mark_reached(&ready);
            let mut missing: Vec<String> = s
                .known
                .keys()
                .filter(|n| !ready.contains(n))
                .cloned()
                .collect();
            missing.sort();
            let expects = !self.configured.is_empty() || s.discovered.values().any(|&n| n > 0);
            (missing, expects)
        });
        if !missing.is_empty() {
            let reason = format!("no session with member {}", missing.join(", "));
            self.gate.close(reason);
        } else if expects_peers && ready.is_empty() {
            self.gate
                .close("no configured or discovered peer reached".to_owned());
        } else {
            self.gate.open_at(now_us());
        }
        self.signal_changes(&ready);
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
    /// Members with a ready session now have been reached.
    fn mark_reached(&mut self, ready: &[String]) {
        for name in ready {
            if let Some(k) = self.known.get_mut(name) {
                k.reached = true;
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

    /// Someone else's report of `member`.
    fn reported(&mut self, member: &Member, now: u64) {
        let tombstone = (member.name.clone(), member.incarnation);
        if let Some(gone) = self.gone.get(&tombstone) {
            // A clean leave is final for its incarnation, and a report without a ready session
            // is stale. But a member forgotten here that a peer has a ready session with is
            // alive: it must close the gate again until this node reaches it too, or its
            // writes, which reach that peer only, would be hidden by this node's heap.
            if gone.clean || !member.ready {
                return;
            }
            tracing::info!(member = %member.name, "a forgotten member is reported alive");
            self.gone.remove(&tombstone);
        }
        match self.known.get_mut(&member.name) {
            None => {
                let known = Known {
                    incarnation: member.incarnation,
                    addr: member.addr.clone(),
                    direct: false,
                    reached: false,
                    // A member first heard of by a report is given `forget_after` to be reached.
                    alive_at: now,
                };
                tracing::info!(member = %member.name, addr = %member.addr, "learnt of a member from gossip");
                self.known.insert(member.name.clone(), known);
            }
            // What a member says of itself wins over what others say of it.
            Some(k) if k.direct && k.incarnation != member.incarnation => {}
            Some(k) => {
                if k.incarnation != member.incarnation || (!k.direct && !member.addr.is_empty()) {
                    k.incarnation = member.incarnation;
                    k.addr = member.addr.clone();
                }
                if member.ready {
                    k.alive_at = now;
                }
            }
        }
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
        state.reported(&member("c@h", 7, true), 10);
        assert!(state.known.is_empty(), "a stale report resurrected c");
        state.reported(&member("c@h", 8, true), 10);
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
        state.reported(&member("d@h", 7, false), 10);
        assert!(state.known.is_empty(), "a not-ready report brought d back");
        state.reported(&member("d@h", 7, true), 10);
        assert!(
            state.known.contains_key("d@h"),
            "d is alive to a peer, unknown here"
        );
        state.gone.insert(("e@h".into(), 3), gone(true));
        state.reported(&member("e@h", 3, true), 10);
        assert!(!state.known.contains_key("e@h"), "a clean leave was undone");
    }

    #[test]
    fn what_a_member_says_of_itself_wins_and_only_ready_reports_keep_it_alive() {
        let mut state = State::default();
        let direct = Known {
            incarnation: 2,
            addr: "c:1".into(),
            direct: true,
            reached: true,
            alive_at: 10,
        };
        state.known.insert("c@h".into(), direct);
        state.reported(&member("c@h", 1, true), 20);
        assert_eq!(state.known["c@h"].incarnation, 2, "an old incarnation won");
        assert_eq!(state.known["c@h"].alive_at, 10);
        state.reported(&member("c@h", 2, false), 30);
        assert_eq!(
            state.known["c@h"].alive_at, 10,
            "a not-ready report kept c alive"
        );
        state.reported(&member("c@h", 2, true), 40);
        assert_eq!(state.known["c@h"].alive_at, 40);
    }
}

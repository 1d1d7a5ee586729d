//! The protocol core: what this node knows of each peer on one topic — incarnation, applied
//! sequence, lease — and what every arriving envelope means. Plain data with explicit time
//! (`now`, microseconds of this node's monotonic clock), so the model tests drive it over a
//! simulated network without sockets or a runtime.
//!
//! Lease invariant: `lease_until` of peer P is `t + lease`, where `t` is the send time (our
//! clock) of one of our heartbeats that P echoed in a heartbeat of its own, and by the time the
//! echo was processed every message P had published before sending it was applied here (or
//! covered by a repair). P saw our heartbeat after `t`, so everything P published before `t`
//! has been applied: a cached value read before `lease_until` is at most `lease` older than
//! any write P published.

use foldhash::{HashMap, HashMapExt};

use crate::delivery::MissCause;
use crate::protocol::arrival::Arrival;
use crate::protocol::envelope::{Echo, Member};

/// One peer as this node knows it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    incarnation: u64,
    /// Highest sequence number applied (or covered by a repair).
    applied: u64,
    /// Our clock: cached reads are safe with respect to this peer until then.
    lease_until: u64,
    /// Our clock: when anything last arrived from this peer.
    pub(crate) last_heard: u64,
    /// The peer's last heartbeat stamp (its clock), echoed back in our heartbeats.
    their_stamp: u64,
    /// Highest of our sequence numbers the peer says it applied.
    pub(crate) acked: u64,
}

/// What one heartbeat says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Beat {
    /// The peer's incarnation.
    pub(crate) incarnation: u64,
    /// The peer's clock when it sent the heartbeat.
    pub(crate) stamp: u64,
    /// The last sequence number the peer published on this topic.
    pub(crate) last_seq: u64,
    /// Our own stamp the peer last received from our current incarnation, if any.
    pub(crate) echo: Option<u64>,
    /// The highest of our sequence numbers the peer applied, if it said.
    pub(crate) acked: Option<u64>,
}

/// The first member a heartbeat from `origin` names as having a session with it that this
/// node (`me`) has no session with, if any. A lease renewed by that heartbeat would vouch that
/// this node hears every member `origin` hears; it must not be renewed until it does.
pub(crate) fn unvouched<'m>(
    members: &'m [Member],
    origin: &str,
    me: &str,
    has_session: impl Fn(&str) -> bool,
) -> Option<&'m Member> {
    members
        .iter()
        .filter(|m| m.ready && m.name != origin && m.name != me)
        .find(|m| !has_session(&m.name))
}

/// Lease parameters, in microseconds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LeaseParams {
    pub(crate) lease: u64,
    pub(crate) forget_after: u64,
}

#[derive(Debug)]
pub(crate) struct PeerTable {
    params: LeaseParams,
    peers: HashMap<String, Peer>,
    /// Echoes of our stamps older than this (our clock) renew nothing: the clock was found to
    /// have missed time (a suspension) after they were sent.
    echo_floor: u64,
    /// Peers that left cleanly: name → (incarnation, until when it is remembered, our clock).
    /// A heartbeat of that incarnation delivered after the leave (a bundle collected before
    /// it, on another path) does not bring the peer back.
    left: HashMap<String, (u64, u64)>,
}

impl PeerTable {
    pub(crate) fn new(params: LeaseParams) -> Self {
        Self {
            params,
            peers: HashMap::new(),
            echo_floor: 0,
            left: HashMap::new(),
        }
    }

    /// A published message `seq` arrived: classify it (deliver unless a duplicate).
    pub(crate) fn on_publish(
        &mut self,
        origin: &str,
        incarnation: u64,
        seq: u64,
        now: u64,
    ) -> Arrival {
        let Some(peer) = self.peers.get_mut(origin) else {
            // Anything published before `seq` went by while we had no contact.
            self.insert(origin, incarnation, seq, now);
            return if seq > 1 {
                Arrival::Gap { missed: seq - 1 }
            } else {
                Arrival::FirstContact
            };
        };
        peer.last_heard = now;
        if peer.incarnation != incarnation {
            *peer = fresh(incarnation, seq, now);
            return Arrival::NewIncarnation;
        }
        let arrival = Arrival::after(peer.applied, seq);
        peer.applied = peer.applied.max(seq);
        arrival
    }

    /// A heartbeat arrived. Returns why to repair, if anything was missed; once the caller has
    /// applied that repair the lease is already renewed (the repair covers the gap).
    pub(crate) fn on_beat(&mut self, origin: &str, beat: Beat, now: u64) -> Option<MissCause> {
        if self
            .left
            .get(origin)
            .is_some_and(|&(incarnation, _)| incarnation == beat.incarnation)
        {
            return None; // sent before its leave, delivered after it
        }
        let lease = self.params.lease;
        let origin_name = origin.to_owned();
        let cause = match self.peers.get_mut(origin) {
            None => {
                self.insert(origin, beat.incarnation, beat.last_seq, now);
                (beat.last_seq > 0).then_some(MissCause::Gap {
                    origin: origin_name,
                    missed: beat.last_seq,
                })
            }
            Some(peer) if peer.incarnation != beat.incarnation => {
                *peer = fresh(beat.incarnation, beat.last_seq, now);
                Some(MissCause::PeerRestarted {
                    origin: origin_name,
                })
            }
            Some(peer) if beat.last_seq > peer.applied => {
                let missed = beat.last_seq - peer.applied;
                peer.applied = beat.last_seq;
                Some(MissCause::Gap {
                    origin: origin_name,
                    missed,
                })
            }
            Some(_) => None,
        };
        let peer = self.peers.get_mut(origin).expect("inserted above");
        peer.last_heard = now;
        peer.their_stamp = peer.their_stamp.max(beat.stamp);
        if let Some(echo) = beat.echo.filter(|&t| t > 0 && t <= now) {
            if echo >= self.echo_floor {
                peer.lease_until = peer.lease_until.max(echo + lease);
            }
        }
        peer.acked = peer.acked.max(beat.acked.unwrap_or(0));
        cause
    }

    /// The peer left cleanly after publishing up to `last_seq` (at `now`): forget it at once,
    /// repairing first if its last messages never arrived; its later heartbeats of the same
    /// incarnation are ignored for `forget_after`.
    pub(crate) fn on_leave(
        &mut self,
        origin: &str,
        incarnation: u64,
        last_seq: u64,
        now: u64,
    ) -> Option<MissCause> {
        let until = now.saturating_add(self.params.forget_after);
        self.left.insert(origin.to_owned(), (incarnation, until));
        let Some(peer) = self.peers.remove(origin) else {
            // Never heard from (or forgotten): what it published may never have arrived.
            return (last_seq > 0).then(|| MissCause::Gap {
                origin: origin.to_owned(),
                missed: last_seq,
            });
        };
        let complete = peer.incarnation == incarnation && peer.applied >= last_seq;
        (!complete).then(|| MissCause::Gap {
            origin: origin.to_owned(),
            missed: last_seq.saturating_sub(peer.applied),
        })
    }

    /// Whether `peer` has not been heard from for `forget_after` at `now`.
    fn is_silent(&self, peer: &Peer, now: u64) -> bool {
        now.saturating_sub(peer.last_heard) > self.params.forget_after
    }

    /// Whether some peer is silent (the next [`forget_silent`](Self::forget_silent) forgets
    /// it).
    pub(crate) fn any_silent(&self, now: u64) -> bool {
        self.peers.values().any(|p| self.is_silent(p, now))
    }

    /// Forgets peers not heard from for `forget_after`; each forgotten peer requires a repair
    /// (it may have published something that never arrived).
    pub(crate) fn forget_silent(&mut self, now: u64) -> Vec<String> {
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| self.is_silent(p, now))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &silent {
            self.peers.remove(name);
        }
        self.left.retain(|_, &mut (_, until)| until > now);
        silent
    }

    /// Until when (our clock) cached reads are safe: the earliest lease of all known peers, or
    /// 0 if the topic has more remote members than known peers (someone we have not heard
    /// from yet). `u64::MAX` when alone.
    pub(crate) fn valid_until(&self, remote_members: usize) -> u64 {
        if remote_members > self.peers.len() {
            return 0;
        }
        self.peers
            .values()
            .map(|p| p.lease_until)
            .min()
            .unwrap_or(u64::MAX)
    }

    /// The peer whose lease runs out first, for health reports.
    pub(crate) fn weakest(&self) -> Option<(&str, u64)> {
        self.peers
            .iter()
            .min_by_key(|(_, p)| p.lease_until)
            .map(|(name, p)| (name.as_str(), p.lease_until))
    }

    /// What we know of every peer, for our next heartbeat.
    pub(crate) fn echoes(&self) -> Vec<Echo> {
        self.peers
            .iter()
            .map(|(name, p)| Echo {
                peer: name.clone(),
                incarnation: p.incarnation,
                stamp: p.their_stamp,
                applied: p.applied,
            })
            .collect()
    }

    /// Peers for which `too_far_behind(highest of our sequence numbers it acknowledged)`.
    pub(crate) fn overflowing(&self, too_far_behind: impl Fn(u64) -> bool) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, p)| too_far_behind(p.acked))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Stops counting what `peer` has not acknowledged up to `last_seq`: its session is being
    /// closed, and it repairs (sees a gap) when it hears from us again.
    pub(crate) fn forgive(&mut self, peer: &str, last_seq: u64) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.acked = p.acked.max(last_seq);
        }
    }

    /// Whether `peer` has applied our message `seq`.
    /// Whether `peer` is known under `incarnation` and everything up to `last_seq` of it is
    /// applied: a heartbeat announcing `last_seq` brings nothing to repair.
    pub(crate) fn caught_up(&self, peer: &str, incarnation: u64, last_seq: u64) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.incarnation == incarnation && p.applied >= last_seq)
    }

    pub(crate) fn has_applied(&self, peer: &str, seq: u64) -> bool {
        self.peers.get(peer).is_some_and(|p| p.acked >= seq)
    }

    pub(crate) fn peers(&self) -> impl Iterator<Item = (&String, &Peer)> {
        self.peers.iter()
    }

    /// This node's clock missed time (the system was suspended) up to `now`: every lease
    /// ends, and only echoes of stamps sent from now on renew one — a heartbeat queued while
    /// this node slept echoes a stamp whose time, on a clock that did not count the sleep,
    /// looks far more recent than it was.
    pub(crate) fn expire_leases(&mut self, now: u64) {
        self.echo_floor = self.echo_floor.max(now);
        for peer in self.peers.values_mut() {
            peer.lease_until = 0;
        }
    }

    /// `peer`'s incarnation and the highest of its sequence numbers applied (or covered by a
    /// repair).
    pub(crate) fn progress(&self, peer: &str) -> Option<(u64, u64)> {
        self.peers.get(peer).map(|p| (p.incarnation, p.applied))
    }

    /// Whether `peer` is in the table.
    pub(crate) fn knows(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    fn insert(&mut self, origin: &str, incarnation: u64, applied: u64, now: u64) {
        self.peers
            .insert(origin.to_owned(), fresh(incarnation, applied, now));
    }
}

impl Peer {
    /// The highest sequence number applied (or covered by a repair).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn applied(&self) -> u64 {
        self.applied
    }
}

fn fresh(incarnation: u64, applied: u64, now: u64) -> Peer {
    Peer {
        incarnation,
        applied,
        lease_until: 0,
        last_heard: now,
        their_stamp: 0,
        acked: 0,
    }
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: u64 = 1_000_000;

    fn table() -> PeerTable {
        PeerTable::new(LeaseParams {
            lease: LEASE,
            forget_after: 30_000_000,
        })
    }

    fn beat(last_seq: u64, echo: Option<u64>) -> Beat {
        Beat {
            incarnation: 1,
            stamp: 5,
            last_seq,
            echo,
            acked: Some(last_seq),
        }
    }

    #[test]
    fn a_heartbeat_vouches_only_for_members_this_node_has_a_session_with() {
        let member = |name: &str, ready| Member {
            name: name.into(),
            incarnation: 0,
            addr: String::new(),
            ready,
        };
        let members = [member("me", true), member("p", true), member("c", true)];
        let sessions = |name: &str| name == "c";
        assert!(unvouched(&members, "p", "me", sessions).is_none());
        let with_d = [member("c", true), member("d", true), member("e", false)];
        let first = unvouched(&with_d, "p", "me", sessions).map(|m| m.name.as_str());
        assert_eq!(first, Some("d"), "a member only p has a session with");
        assert!(
            unvouched(&with_d[2..], "p", "me", sessions).is_none(),
            "not ready: not vouched"
        );
    }

    #[test]
    fn after_a_suspension_only_echoes_of_later_stamps_renew_a_lease() {
        let mut t = table();
        t.on_beat("p", beat(0, Some(100)), 200);
        assert_eq!(t.valid_until(1), 100 + LEASE);
        // The clock missed time up to 300: the lease ends at once...
        t.expire_leases(300);
        assert!(t.valid_until(1) <= 300, "the lease survived the suspension");
        // ...a heartbeat queued during the sleep, echoing a stamp from before it, renews
        // nothing...
        t.on_beat("p", beat(0, Some(250)), 400);
        assert!(
            t.valid_until(1) <= 400,
            "an echo from before the sleep renewed the lease"
        );
        // ...and one echoing a stamp sent after it does.
        t.on_beat("p", beat(0, Some(350)), 450);
        assert_eq!(t.valid_until(1), 350 + LEASE);
    }

    #[test]
    fn only_a_heartbeat_that_brings_nothing_to_repair_counts_as_caught_up() {
        let mut t = table();
        assert!(!t.caught_up("p", 1, 0), "a peer not heard from yet");
        t.on_beat("p", beat(0, None), 100);
        assert!(t.caught_up("p", 1, 0));
        assert!(!t.caught_up("p", 2, 0), "another incarnation is a restart");
        assert!(
            !t.caught_up("p", 1, 1),
            "an unapplied publish is a gap or in flight"
        );
        assert_eq!(t.on_publish("p", 1, 1, 200), Arrival::InOrder);
        assert!(t.caught_up("p", 1, 1));
        // Taking such a heartbeat ahead of the mailbox repairs nothing.
        assert_eq!(t.on_beat("p", beat(1, Some(300)), 400), None);
    }

    #[test]
    fn a_lease_is_anchored_at_the_echoed_send_time_not_at_arrival() {
        let mut t = table();
        assert_eq!(t.on_beat("p", beat(0, None), 100), None);
        assert_eq!(t.valid_until(1), 0, "no echo yet, no lease");
        t.on_beat("p", beat(0, Some(200)), 5_000_000);
        assert_eq!(
            t.valid_until(1),
            200 + LEASE,
            "a late echo must not extend trust"
        );
    }

    #[test]
    fn a_lost_final_message_is_noticed_by_the_next_heartbeat() {
        let mut t = table();
        t.on_beat("p", beat(0, None), 1);
        assert_eq!(t.on_publish("p", 1, 1, 2), Arrival::InOrder);
        // seq 2 was lost; the heartbeat says 2 was sent.
        let cause = t.on_beat("p", beat(2, Some(3)), 4);
        assert_eq!(
            cause,
            Some(MissCause::Gap {
                origin: "p".into(),
                missed: 1
            })
        );
        assert_eq!(
            t.valid_until(1),
            3 + LEASE,
            "renewed once the repair covers the gap"
        );
        assert_eq!(t.on_beat("p", beat(2, Some(5)), 6), None);
    }

    #[test]
    fn unknown_members_and_expired_leases_close_the_gate() {
        let mut t = table();
        t.on_beat("p", beat(0, Some(10)), 20);
        assert_eq!(t.valid_until(2), 0, "a member we never heard from");
        t.on_beat("q", beat(0, Some(30)), 40);
        assert_eq!(t.valid_until(2), 10 + LEASE, "the earliest lease wins");
    }

    #[test]
    fn a_clean_leave_removes_the_peer_and_a_gap_at_leave_repairs() {
        let mut t = table();
        t.on_beat("p", beat(0, None), 1);
        t.on_publish("p", 1, 1, 2);
        assert_eq!(t.on_leave("p", 1, 1, 3), None);
        assert_eq!(t.len(), 0);
        t.on_beat("q", beat(0, None), 1);
        assert!(t.on_leave("q", 1, 3, 3).is_some());
        // A leave of a peer never heard from that published something is a repair too.
        assert!(t.on_leave("r", 1, 2, 3).is_some());
        assert_eq!(t.on_leave("s", 1, 0, 3), None);
    }

    #[test]
    fn a_heartbeat_delivered_after_the_leave_does_not_bring_the_peer_back() {
        let mut t = table();
        t.on_beat("p", beat(0, None), 1);
        assert_eq!(t.on_leave("p", 1, 0, 10), None);
        // A bundle collected before the leave, delivered after it.
        assert_eq!(t.on_beat("p", beat(0, Some(5)), 20), None);
        assert_eq!(t.len(), 0, "the departed peer is back");
        assert_eq!(t.valid_until(0), u64::MAX, "alone again");
        // Its next incarnation is a new peer.
        let mut restarted = beat(0, None);
        restarted.incarnation = 2;
        t.on_beat("p", restarted, 30);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn silent_peers_are_forgotten_after_the_limit() {
        let mut t = PeerTable::new(LeaseParams {
            lease: LEASE,
            forget_after: 100,
        });
        t.on_beat("p", beat(0, None), 10);
        assert!(t.forget_silent(110).is_empty());
        assert_eq!(t.forget_silent(111), vec!["p".to_owned()]);
        assert_eq!(t.valid_until(0), u64::MAX);
    }

    #[test]
    fn publishes_are_classified_per_origin_and_incarnation() {
        let mut t = table();
        assert_eq!(t.on_publish("a", 7, 1, 1), Arrival::FirstContact);
        assert_eq!(t.on_publish("a", 7, 2, 1), Arrival::InOrder);
        assert_eq!(t.on_publish("a", 7, 2, 1), Arrival::Duplicate);
        assert_eq!(t.on_publish("a", 7, 5, 1), Arrival::Gap { missed: 2 });
        assert_eq!(t.on_publish("b", 1, 9, 1), Arrival::Gap { missed: 8 });
        assert_eq!(t.on_publish("a", 8, 1, 1), Arrival::NewIncarnation);
        assert_eq!(t.on_publish("a", 8, 2, 1), Arrival::InOrder);
    }

    proptest::proptest! {
        /// Over a lossy, duplicating link from one origin, every delivered message is
        /// delivered once, and a loss before any delivered message is flagged.
        #[test]
        fn every_loss_before_a_delivered_envelope_is_flagged(
            fates in proptest::collection::vec(0u8..4, 1..200)
        ) {
            let mut t = table();
            let mut delivered = std::collections::BTreeSet::new();
            let mut flagged = false;
            let mut lost = false;
            for (i, fate) in fates.iter().enumerate() {
                let seq = i as u64 + 1;
                let copies = match fate { 0 => 0, 1 => 2, _ => 1 };
                lost |= copies == 0;
                for _ in 0..copies {
                    let arrival = t.on_publish("a", 1, seq, 1);
                    flagged |= arrival.possibly_missed();
                    if arrival.deliver() {
                        proptest::prop_assert!(delivered.insert(seq), "delivered twice");
                    }
                    if lost { proptest::prop_assert!(flagged, "a loss before {} went unnoticed", seq); }
                }
            }
        }
    }

    #[test]
    fn unacknowledged_backlogs_overflow_and_can_be_forgiven() {
        let mut t = table();
        t.on_beat("p", beat(0, None), 1); // acked 0
        let behind = |last: u64| move |acked: u64| last - acked > 10;
        assert!(t.overflowing(behind(10)).is_empty());
        assert_eq!(t.overflowing(behind(11)), vec!["p".to_owned()]);
        t.forgive("p", 11);
        assert!(t.overflowing(behind(11)).is_empty());
        assert!(t.has_applied("p", 11) && !t.has_applied("p", 12));
    }

    #[test]
    fn a_restarted_peer_repairs_and_starts_without_a_lease() {
        let mut t = table();
        t.on_beat("p", beat(3, Some(10)), 20);
        let restarted = Beat {
            incarnation: 2,
            stamp: 1,
            last_seq: 0,
            echo: None,
            acked: None,
        };
        assert_eq!(
            t.on_beat("p", restarted, 30),
            Some(MissCause::PeerRestarted { origin: "p".into() })
        );
        assert_eq!(t.valid_until(1), 0);
    }
}

//! What the Synchronization actor receives: envelopes checked against the peer table, repairs,
//! deliveries to subscribers, and the lease gate readers check.

use std::sync::Mutex;

use super::actor::{lock, SynchronizationState};
use super::bundle::{BeatSink, Bundle};
use super::message::WIRE_VARIANT;
use super::TopicMessage;
use crate::clock::now_us;
use crate::counter::bump;
use crate::delivery::{Delivery, MissCause};
use crate::protocol::arrival::Arrival;
use crate::protocol::envelope::{Body, Echo, Envelope, Member};
use crate::protocol::peer_table::{unvouched, Beat};
use crate::topic::PG_SCOPE;

impl<M: TopicMessage> SynchronizationState<M> {
    /// Bytes from a peer, with the token of the cast that carried them.
    pub(super) fn receive(&mut self, bytes: &[u8], token: Option<&[u8]>) {
        match Envelope::decode(bytes) {
            Ok(envelope) => self.receive_envelope(envelope, token),
            Err(error) => self.undecodable(error.to_string()),
        }
    }

    /// Whether `envelope` is a heartbeat of this topic from a peer whose incarnation this
    /// node knows and whose every announced publish it has applied: taking it now, before
    /// whatever waits in the mailbox, renews a lease exactly as taking it later would.
    fn announces_nothing_new(&self, envelope: &Envelope) -> bool {
        let Body::Heartbeat { last_seq, .. } = envelope.body else {
            return false;
        };
        envelope.topic == self.group
            && envelope.origin != self.node_name
            && self
                .peers
                .caught_up(&envelope.origin, envelope.incarnation, last_seq)
    }

    pub(super) fn receive_envelope(&mut self, envelope: Envelope, token: Option<&[u8]>) {
        if envelope.topic != self.group {
            return self.undecodable(format!("envelope for unknown topic {:?}", envelope.topic));
        }
        if envelope.origin == self.node_name {
            return; // our own broadcast looped back: several nodes in one process
        }
        // The origin is the sender's word (a cast carries no trace of the session it came
        // on): a new one is admitted only if this node has a session with a node of that name,
        // so forged names cannot grow the table (every entry is kept, and echoed every
        // heartbeat).
        if !self.peers.knows(&envelope.origin) && !crate::sessions::has_session(&envelope.origin) {
            bump(&self.shared.counters.unknown_origins);
            tracing::debug!(topic = %self.group, origin = %envelope.origin, "envelope from an origin with no session: dropped");
            return;
        }
        // Whether the cast proves it came from the origin it names (it echoes the secret this
        // node sends over its session with that origin). Anything else may be a peer posing as
        // another: its invalidations are applied (they are idempotent, and carry no values),
        // but it renews no lease, moves no sequence number, and reports no members or leave.
        if !crate::sessions::verify(&envelope.origin, token) {
            return self.receive_unverified(envelope);
        }
        let now = now_us();
        let (origin, incarnation) = (envelope.origin, envelope.incarnation);
        let progress_of = origin.clone();
        match envelope.body {
            Body::Publish { seq, payload } => {
                let arrival = self.peers.on_publish(&origin, incarnation, seq, now);
                self.receive_publish(origin, arrival, &payload);
            }
            Body::Heartbeat {
                stamp,
                last_seq,
                echoes,
                members,
                bundled,
            } => {
                let vouched = match &self.gossip {
                    Some(gossip) => {
                        gossip.heard(&origin, incarnation, &members);
                        hand_over(self.outbox.bundle(), bundled, token);
                        true
                    }
                    None => self.knows_every(&origin, &members),
                };
                let own = self.own_echo(&echoes);
                let beat = Beat {
                    incarnation,
                    stamp,
                    last_seq,
                    // A lease renewed by this heartbeat would vouch for members this node
                    // has no session with, and whose invalidations it may be missing.
                    echo: own.filter(|_| vouched).map(|e| e.stamp),
                    acked: own.map(|e| e.applied),
                };
                if let Some(cause) = self.peers.on_beat(&origin, beat, now) {
                    self.count_cause(&cause);
                    self.possibly_missed(cause);
                }
                if !self.waiters.is_empty() {
                    self.answer_waiters();
                }
            }
            Body::Leave { last_seq } => {
                let known = self
                    .peers
                    .progress(&origin)
                    .is_some_and(|(known, _)| known == incarnation);
                bump(&self.shared.counters.peer_leaves);
                if let Some(gossip) = &self.gossip {
                    gossip.left(&origin, incarnation);
                }
                if let Some(cause) = self.peers.on_leave(&origin, incarnation, last_seq, now) {
                    self.count_cause(&cause);
                    self.possibly_missed(cause);
                }
                // Everything it published is applied or repaired: write tokens are covered
                // (of the incarnation this node knew; an unknown one's leave was repaired).
                if known {
                    self.shared.set_applied(&origin, incarnation, last_seq);
                }
                return;
            }
        }
        // Delivered (and any repair applied): what write tokens of this origin wait for.
        if let Some((incarnation, applied)) = self.peers.progress(&progress_of) {
            self.shared.set_applied(&progress_of, incarnation, applied);
        }
    }

    /// An envelope that does not prove its origin: a peer's first casts before it had one of
    /// ours to echo (a few per session start), or a forgery. A cache applies its
    /// invalidations (idempotent, no values: the worst a forgery does is a reload); a typed
    /// topic delivers nothing under a name it did not prove, and tells its subscribers that
    /// something from that name may be missing.
    fn receive_unverified(&mut self, envelope: Envelope) {
        bump(&self.shared.counters.unverified);
        tracing::debug!(topic = %self.group, origin = %envelope.origin, "envelope that does not prove its origin");
        if let Body::Publish { payload, .. } = envelope.body {
            if self.idempotent {
                self.receive_publish(envelope.origin, Arrival::Unverified, &payload);
            } else {
                self.possibly_missed(MissCause::Unverified {
                    origin: envelope.origin,
                });
            }
        }
    }

    /// Whether this node has a session with every member `origin` says it has one with. A
    /// lease renewed by `origin`'s heartbeat vouches for them; until then it is not renewed.
    pub(super) fn knows_every(&self, origin: &str, members: &[Member]) -> bool {
        let unknown = unvouched(
            members,
            origin,
            &self.node_name,
            crate::sessions::has_session,
        );
        if let Some(member) = unknown {
            tracing::debug!(topic = %self.group, peer = %origin, member = %member.name, "lease not renewed: the peer knows a member this node has no session with");
        }
        unknown.is_none()
    }

    /// What the peer says about us, if it is about our current incarnation.
    pub(super) fn own_echo<'e>(&self, echoes: &'e [Echo]) -> Option<&'e Echo> {
        echoes
            .iter()
            .find(|e| e.peer == self.node_name && e.incarnation == self.outbox.incarnation())
    }

    pub(super) fn receive_publish(&mut self, origin: String, arrival: Arrival, payload: &[u8]) {
        let _span = tracing::debug_span!("receive", topic = %self.group, %origin).entered();
        match arrival {
            Arrival::Duplicate if !self.idempotent => {
                return bump(&self.shared.counters.duplicates)
            }
            Arrival::Duplicate => bump(&self.shared.counters.duplicates),
            Arrival::Gap { missed } => {
                let cause = MissCause::Gap {
                    origin: origin.clone(),
                    missed,
                };
                self.count_cause(&cause);
                self.possibly_missed(cause);
            }
            Arrival::NewIncarnation => {
                let cause = MissCause::PeerRestarted {
                    origin: origin.clone(),
                };
                self.count_cause(&cause);
                self.possibly_missed(cause);
            }
            Arrival::FirstContact | Arrival::InOrder | Arrival::Unverified => {}
        }
        // The whole payload must be one `M`: bytes left over mean another type was published
        // under this topic's name (or a newer build's), never a message to deliver.
        match postcard::take_from_bytes::<M>(payload) {
            Ok((_, rest)) if !rest.is_empty() => {
                self.undecodable(format!("payload has {} bytes left over", rest.len()))
            }
            Ok((message, _)) => {
                bump(&self.shared.counters.received);
                self.deliver(Delivery::Message { origin, message });
            }
            Err(error) => self.undecodable(format!("payload does not decode: {error}")),
        }
    }

    pub(super) fn count_cause(&self, cause: &MissCause) {
        match cause {
            MissCause::Gap { origin, missed } => {
                bump(&self.shared.counters.gaps);
                tracing::warn!(topic = %self.group, %origin, missed, "sequence gap");
            }
            MissCause::PeerRestarted { .. } => bump(&self.shared.counters.peer_restarts),
            _ => {}
        }
    }

    pub(super) fn undecodable(&self, reason: String) {
        bump(&self.shared.counters.decode_failures);
        tracing::warn!(topic = %self.group, %reason, "undecodable message from a peer");
        self.possibly_missed(MissCause::Undecodable { reason });
    }

    pub(super) fn possibly_missed(&self, cause: MissCause) {
        let _span = tracing::info_span!("repair", topic = %self.group, ?cause).entered();
        bump(&self.shared.counters.possibly_missed);
        let now = now_us();
        self.shared.gate.repaired(now);
        self.deliver(Delivery::PossiblyMissed(cause));
    }

    /// Hands `delivery` to every subscriber: a copy to all but the last, which gets it.
    pub(super) fn deliver(&self, delivery: Delivery<M>) {
        if let Some((last, others)) = self.subscribers.split_last() {
            for subscriber in others {
                subscriber(delivery.clone());
            }
            last(delivery);
        }
    }

    /// Recomputes until when cached reads are safe, after every change.
    pub(super) fn refresh_gate(&mut self) {
        if self.stopped {
            return; // the gate stays closed: nobody keeps it any more
        }
        let now = now_us();
        let members = super::outbox::remote_members(&self.group).len();
        // Never valid for longer than one lease past this actor's last look, peers or none: if
        // the actor stops, is killed or stalls, the gate lapses on its own and the caches check
        // against the source instead of serving under a gate nobody keeps.
        let lease = self.shared.gate.lease_us();
        let until = (self.peers.valid_until(members)).min(now.saturating_add(lease));
        let weakest = self.weakest_reason(members, now);
        self.shared.gate.renew(until, now, weakest);
        let valid = now < until;
        if self.leases_were_valid && !valid {
            bump(&self.shared.counters.lease_expiries);
            self.shared.gate.closed.notify_one();
        }
        self.leases_were_valid = valid;
    }

    /// Why the gate is closed at `now`; `None` while it is open (a gate that lapses before the
    /// next look reports [`crate::gate::LAPSED`]).
    pub(super) fn weakest_reason(&self, members: usize, now: u64) -> Option<String> {
        if members > self.peers.len() {
            return Some(format!(
                "{} remote members, {} heard from",
                members,
                self.peers.len()
            ));
        }
        let (name, until) = self.peers.weakest()?;
        (until <= now).then(|| format!("no valid lease from {name}"))
    }
}

impl<M: TopicMessage> BeatSink for Mutex<SynchronizationState<M>> {
    fn slept(&self) {
        let mut state = lock(self);
        state.peers.expire_leases(now_us());
        state.refresh_gate();
        // Entries checked just before the sleep look recently checked on a clock that did
        // not count it: check them again.
        state.possibly_missed(MissCause::Restarted);
    }

    fn tick(&self) -> bool {
        let mut state = match self.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        // Forgetting a silent peer tells the subscribers (user code): that tick runs on the
        // topic's own actor, where a panic fails the actor and its restart repairs, and a slow
        // subscriber holds up this topic alone.
        if state.peers.any_silent(now_us()) {
            return false;
        }
        if !state.stopped {
            state.tick();
            state.refresh_gate();
        }
        true
    }

    fn offer(&self, bytes: &[u8], token: Option<&[u8]>) -> bool {
        let Ok(envelope) = Envelope::decode(bytes) else {
            return false; // the actor counts it and repairs
        };
        // A topic busy with a message (a slow subscriber, say) holds its state: its heartbeat
        // then goes to its mailbox like one that announces something, rather than the
        // node-level actor, which carries every topic's heartbeats, waiting for it.
        let mut state = match self.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false,
        };
        if state.stopped {
            return true; // nobody listens on this topic here any more
        }
        if !state.announces_nothing_new(&envelope) {
            return false;
        }
        let now = now_us();
        let from_weakest = state
            .peers
            .weakest()
            .is_some_and(|(weakest, _)| weakest == envelope.origin);
        state.receive_envelope(envelope, token);
        // Such a heartbeat only lengthens its sender's lease: the gate as last computed
        // stays a safe lower bound without it. It is computed again when it could open or
        // move (closed, or the sender held the shortest lease), and otherwise at most every
        // quarter heartbeat, not once per peer and topic in the burst of heartbeats that
        // arrives every interval.
        let gate = &state.shared.gate;
        let stale = now.saturating_sub(gate.refreshed_at()) >= state.heartbeat_us / 4;
        if from_weakest || stale || !gate.valid(now) {
            state.refresh_gate();
        }
        true
    }
}

/// Hands each topic heartbeat a node-level heartbeat carried to this node's actor of that
/// topic: taken at once when it announces nothing new, else queued to the actor as if it had
/// come on its own (topics this node does not serve are skipped). Each goes with the token of
/// the cast that carried it: a topic heartbeat proves its origin as the node-level one did.
fn hand_over(bundle: &Bundle, bundled: Vec<(String, Vec<u8>)>, token: Option<&[u8]>) {
    let sinks = bundle.sinks_of(bundled.iter().map(|(topic, _)| topic.as_str()));
    for ((topic, envelope), sink) in bundled.into_iter().zip(sinks) {
        if sink.is_some_and(|sink| sink.offer(&envelope, token)) {
            continue;
        }
        let local = ractor::pg::get_scoped_local_members(&PG_SCOPE.to_owned(), &topic);
        let copies = crate::protocol::envelope::per_peer(envelope, local.len());
        for (cell, args) in local.iter().zip(copies) {
            let wire = ractor::message::SerializedMessage::Cast {
                variant: WIRE_VARIANT.to_owned(),
                args,
                metadata: token.map(<[u8]>::to_vec),
            };
            let _ = cell.send_serialized(wire);
        }
    }
}

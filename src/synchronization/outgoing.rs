//! What the Synchronization actor itself sends: publishes with local delivery, confirmed
//! publishes, heartbeats, and the per-peer backlog bound. (Plain publishes go out from the
//! caller's task through the [`Outbox`](super::outbox::Outbox).)

use super::actor::{SynchronizationState, Waiter};
use super::{Confirmation, TopicMessage};
use crate::clock::now_us;
use crate::counter::bump;
use crate::delivery::{Delivery, MissCause};
use crate::protocol::envelope::Member;

impl<M: TopicMessage> SynchronizationState<M> {
    /// Waits until every peer known now applied our message `seq` (published from the
    /// caller's task, so that no heartbeat this actor sends afterwards can leave it out), or
    /// `timeout` passes (`Duration::MAX`, or anything past the clock's range: no limit).
    pub(super) fn await_applied(
        &mut self,
        seq: u64,
        timeout: std::time::Duration,
        reply: ractor::RpcReplyPort<Confirmation>,
    ) {
        // Every peer heard from, and every member of the group not heard from yet: those count
        // as missing until their heartbeats say they applied it.
        let mut peers: Vec<String> = self.peers.peers().map(|(name, _)| name.clone()).collect();
        for node in super::outbox::remote_member_nodes(&self.group) {
            if !peers.contains(&node) {
                peers.push(node);
            }
        }
        let timeout = u64::try_from(timeout.as_micros()).unwrap_or(u64::MAX);
        let deadline = now_us().saturating_add(timeout);
        self.waiters.push(Waiter {
            seq,
            peers,
            deadline,
            reply,
        });
        self.answer_waiters();
    }

    /// Answers every waiter whose peers all applied its message, or whose time is up.
    pub(super) fn answer_waiters(&mut self) {
        let now = now_us();
        let (done, waiting): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(|w| {
                w.deadline <= now || w.peers.iter().all(|p| self.peers.has_applied(p, w.seq))
            });
        self.waiters = waiting;
        for waiter in done {
            let mut peers = waiter.peers;
            peers.sort();
            let (applied, missing) = peers
                .into_iter()
                .partition(|p| self.peers.has_applied(p, waiter.seq));
            let _ = waiter.reply.send(Confirmation { applied, missing });
        }
    }

    /// Closes the session of every peer that left more than `max_backlog` of our messages
    /// unacknowledged, dropping what ractor_cluster queued for it.
    pub(super) fn shed_overflowing_peers(&mut self) {
        self.shed_overflowing_unheard();
        let limit = self.max_backlog;
        let peers = &self.peers;
        let overflowing = self
            .outbox
            .unacked(|unacked_since| peers.overflowing(|acked| unacked_since(acked) > limit));
        if overflowing.is_empty() {
            return;
        }
        let last_seq = self.outbox.last_seq();
        for peer in overflowing {
            // Forgiven only once its session is really being closed: what ractor_cluster
            // queued for it goes with the session, and it repairs when it hears from us again.
            if crate::sessions::close_session(&peer, "backlog overflow") {
                bump(&self.shared.counters.backlog_overflows);
                self.peers.forgive(&peer, last_seq);
            }
        }
    }

    /// The same bound for members of the topic this node has not heard from (just joined,
    /// forgotten while their session stays open, or never proving their origin): everything
    /// published since this actor first saw one is unacknowledged.
    fn shed_overflowing_unheard(&mut self) {
        let last_seq = self.outbox.last_seq();
        let mut present = Vec::new();
        for cell in super::outbox::remote_members(&self.group) {
            let node = cell.get_id().node();
            let Some(name) = crate::sessions::name_of(node) else {
                continue; // its session is gone: nothing more is queued for it
            };
            if !self.peers.knows(&name) {
                self.unheard.entry(node).or_insert(last_seq);
                present.push((node, name));
            }
        }
        self.unheard
            .retain(|node, _| present.iter().any(|(n, _)| n == node));
        let limit = self.max_backlog;
        let unheard = &self.unheard;
        let overflowing: Vec<(u64, String)> = self.outbox.unacked(|unacked_since| {
            present
                .into_iter()
                .filter(|(node, _)| unheard.get(node).is_some_and(|&s| unacked_since(s) > limit))
                .collect()
        });
        for (node, name) in overflowing {
            if crate::sessions::close_session(&name, "backlog overflow of a member not heard from")
            {
                bump(&self.shared.counters.backlog_overflows);
            }
            self.unheard.remove(&node);
        }
    }

    /// Publishes what the pending hook holds, if there is one. Called from this actor's task,
    /// so the heartbeat that follows announces a sequence number that includes it.
    pub(super) fn publish_pending(&self) {
        let Some(pending) = &self.pending else {
            return;
        };
        pending(&mut |message| match postcard::to_stdvec(message) {
            Ok(payload) if self.outbox.fits(payload.len()) => {
                self.outbox.publish(payload).is_some()
            }
            Ok(payload) => {
                // It never will fit: number it unsent, so peers see the gap and repair.
                tracing::error!(len = payload.len(), topic = %self.group, "pending message too large");
                self.outbox.skip().is_some()
            }
            Err(error) => {
                // It never will be: number it unsent, so peers see the gap and repair.
                tracing::error!(%error, topic = %self.group, "pending message not encoded");
                self.outbox.skip().is_some()
            }
        });
    }

    /// Publishes and hands `message` to the local subscribers too.
    pub(super) fn publish_with_local(&mut self, payload: Vec<u8>, message: M) {
        if self.outbox.publish(payload).is_some() {
            let origin = self.node_name.clone();
            self.deliver(Delivery::Message { origin, message });
        }
    }

    pub(super) fn tick(&mut self) {
        let now = now_us();
        // The node's watchdog reads the node-level topic's, once per heartbeat.
        if self.gossip.is_some() {
            let last_heard = self
                .peers
                .peers()
                .map(|(n, p)| (n.clone(), p.last_heard))
                .collect();
            self.shared.update(|s| s.last_heard = last_heard);
        }
        for forgotten in self.peers.forget_silent(now) {
            bump(&self.shared.counters.peers_forgotten);
            tracing::warn!(topic = %self.group, peer = %forgotten, "forgetting a silent peer");
            self.possibly_missed(MissCause::PeerForgotten { origin: forgotten });
        }
        self.shed_overflowing_peers();
        self.answer_waiters();
        // Every invalidation accepted before this heartbeat is covered by it.
        self.publish_pending();
        match &self.gossip {
            // The node-level topic carries every other topic's heartbeat, and the members.
            Some(gossip) => {
                let bundled = self.outbox.bundle().collect(now_us());
                #[allow(unused_mut)]
                let mut members = gossip.members();
                #[cfg(feature = "fault-injection")]
                members.extend((0..self.made_up_members).map(|i| Member {
                    name: format!("made-up-{i}@10.255.{}.{}", i / 256 % 256, i % 256),
                    incarnation: i as u64 + 1,
                    addr: format!("10.255.{}.{}:4001", i / 256 % 256, i % 256),
                    ready: true,
                }));
                self.outbox.heartbeat(self.peers.echoes(), members, bundled);
            }
            // Carried inside the node-level heartbeat, whose members the receiving node
            // checks before it hands this on: no list of its own.
            None if self.outbox.bundle().bundles(self.heartbeat_us) => {
                self.outbox.deposit_heartbeat(self.peers.echoes())
            }
            // On its own, a topic's heartbeat names the members this node has a session with:
            // a lease it renews vouches that the reader knows them too.
            None => {
                let members = crate::sessions::peer_names()
                    .into_iter()
                    .map(|name| Member {
                        name,
                        incarnation: 0,
                        addr: String::new(),
                        ready: true,
                    })
                    .collect();
                self.outbox
                    .heartbeat(self.peers.echoes(), members, Vec::new())
            }
        }
        #[cfg(feature = "fault-injection")]
        self.forge_heartbeat();
    }

    /// Fault injection: a clean leave under another node's name and incarnation, announcing
    /// what this node applied of it.
    #[cfg(feature = "fault-injection")]
    pub(super) fn forge_leave(&self, origin: &str, incarnation: u64) {
        let last_seq = self.applied_of(origin);
        let body = crate::protocol::envelope::Body::Leave { last_seq };
        self.cast_forged(origin, incarnation, &body);
    }

    /// Casts `body` to every remote member under `origin`'s name and `incarnation`.
    #[cfg(feature = "fault-injection")]
    fn cast_forged(&self, origin: &str, incarnation: u64, body: &crate::protocol::envelope::Body) {
        match crate::protocol::envelope::encode(&self.group, origin, incarnation, body) {
            Ok(bytes) => self.outbox.cast_to_remote_members(bytes),
            Err(error) => tracing::error!(%error, "forged envelope not encoded"),
        }
    }

    #[cfg(feature = "fault-injection")]
    fn applied_of(&self, origin: &str) -> u64 {
        self.peers
            .peers()
            .find(|(name, _)| *name == origin)
            .map_or(0, |(_, p)| p.applied())
    }

    /// Fault injection: a heartbeat under another node's name and incarnation, echoing what
    /// this node knows of its peers (their latest stamps included) and naming no members: what
    /// a peer with the cluster's credentials can send to keep a partitioned node's leases
    /// alive. Its casts carry this node's own session tokens.
    #[cfg(feature = "fault-injection")]
    fn forge_heartbeat(&self) {
        let Some((origin, incarnation)) = &self.impersonating else {
            return;
        };
        let last_seq = self.applied_of(origin);
        let mut echoes = self.peers.echoes();
        echoes.retain(|e| &e.peer != origin);
        let body = crate::protocol::envelope::Body::Heartbeat {
            stamp: now_us(),
            last_seq,
            echoes,
            members: Vec::new(),
            bundled: Vec::new(),
        };
        self.cast_forged(origin, *incarnation, &body);
    }
}

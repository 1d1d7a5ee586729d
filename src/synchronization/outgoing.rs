//! What the Synchronization actor sends: publishes (direct, coalesced, confirmed), heartbeats,
//! and the per-peer backlog bound.

use ractor::pg;
use ractor::ActorRef;

use super::actor::{SynchronizationState, Waiter};
use super::message::{Drainer, SyncMessage};
use super::{Delivery, MissCause, TopicMessage};
use crate::clock::now_us;
use crate::envelope::{Body, Envelope};
use crate::stats::bump;
use crate::topic::PG_SCOPE;

impl<M: TopicMessage> SynchronizationState<M> {
    /// Publishes a coalescing batch now, unless the previous batch carried several items (a
    /// burst is under way) and went out less than `window` ago: then once that much time has
    /// passed (one delayed drain at a time). Lone messages, even back to back, are never
    /// delayed; a burst travels in one envelope per window.
    pub(super) fn drain(
        &mut self,
        myself: &ActorRef<SyncMessage<M>>,
        take: Drainer<M>,
        window: std::time::Duration,
    ) {
        let now = now_us();
        let window_us = window.as_micros() as u64;
        let since = now.saturating_sub(self.last_drain);
        if since < window_us && self.last_drain_items > 1 {
            if !self.drain_scheduled {
                self.drain_scheduled = true;
                let delay = std::time::Duration::from_micros(window_us - since);
                myself.send_after(delay, move || SyncMessage::Drain {
                    take: take.clone(),
                    window: std::time::Duration::ZERO,
                });
            }
            return;
        }
        self.drain_scheduled = false;
        self.last_drain = now;
        let Some((message, items)) = take() else {
            self.last_drain_items = 0;
            return;
        };
        self.last_drain_items = items;
        match postcard::to_stdvec(&message) {
            Ok(payload) => self.publish(payload, None),
            Err(error) => tracing::error!(%error, topic = %self.group, "batch not encoded"),
        }
    }

    pub(super) fn publish_confirmed(
        &mut self,
        payload: Vec<u8>,
        timeout: std::time::Duration,
        reply: ractor::RpcReplyPort<crate::Confirmation>,
    ) {
        self.publish(payload, None);
        let peers = self.peers.peers().map(|(name, _)| name.clone()).collect();
        let deadline = now_us() + timeout.as_micros() as u64;
        let seq = self.last_seq;
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
            let _ = waiter.reply.send(crate::Confirmation { applied, missing });
        }
    }

    /// Closes the session of every peer that left more than `max_backlog` of our messages
    /// unacknowledged, dropping what ractor_cluster queued for it.
    pub(super) fn shed_overflowing_peers(&mut self) {
        let (backlog, limit) = (&self.backlog, self.max_backlog);
        for peer in self
            .peers
            .overflowing(|acked| backlog.unacked_since(acked) > limit)
        {
            bump(&self.shared.counters.backlog_overflows);
            crate::node::registry::close_session(&peer, "backlog overflow");
            self.peers.forgive(&peer, self.last_seq);
        }
    }

    pub(super) fn publish(&mut self, payload: Vec<u8>, local: Option<M>) {
        self.last_seq += 1;
        bump(&self.shared.counters.published);
        let seq = self.last_seq;
        let _span = tracing::debug_span!("publish", topic = %self.group, seq).entered();
        let sent = self.send(Body::Publish { seq, payload });
        self.backlog.record(seq, sent);
        if seq % 64 == 0 {
            self.shed_overflowing_peers();
        }
        if let Some(message) = local {
            let origin = self.node_name.clone();
            self.deliver(Delivery::Message { origin, message });
        }
    }

    pub(super) fn tick(&mut self) {
        let now = now_us();
        // Liveness reports (the node's watchdog) need this once per heartbeat, not per message.
        let last_heard = self
            .peers
            .peers()
            .map(|(n, p)| (n.clone(), p.last_heard))
            .collect();
        self.shared.update(|s| s.last_heard = last_heard);
        for forgotten in self.peers.forget_silent(now) {
            bump(&self.shared.counters.peers_forgotten);
            tracing::warn!(topic = %self.group, peer = %forgotten, "forgetting a silent peer");
            self.possibly_missed(MissCause::PeerForgotten { origin: forgotten });
        }
        self.shed_overflowing_peers();
        self.answer_waiters();
        let beat = Body::Heartbeat {
            stamp: now,
            last_seq: self.last_seq,
            echoes: self.peers.echoes(),
        };
        self.send(beat);
    }

    /// Encodes once and casts the same bytes to every remote member; returns the size.
    pub(super) fn send(&self, body: Body) -> usize {
        let envelope = Envelope {
            topic: self.group.clone(),
            origin: self.node_name.clone(),
            incarnation: self.incarnation,
            body,
        };
        match envelope.encode() {
            Ok(bytes) => {
                self.cast_to_remote_members(&bytes);
                bytes.len()
            }
            // Peers notice the skipped sequence number at the next heartbeat and repair.
            Err(error) => {
                tracing::error!(%error, topic = %self.group, "envelope not sent");
                0
            }
        }
    }

    /// Remote `ActorRef`s are never cached: stub ids change when a session is re-established,
    /// so pg is read on every send.
    pub(super) fn cast_to_remote_members(&self, bytes: &[u8]) {
        for cell in self.remote_members() {
            let member: ActorRef<SyncMessage<M>> = cell.into();
            // A stub whose session just died refuses the cast; that peer repairs on rejoin.
            if member.cast(SyncMessage::Wire(bytes.to_vec())).is_ok() {
                bump(&self.shared.counters.envelopes_sent);
            }
        }
    }

    pub(super) fn remote_members(&self) -> Vec<ractor::ActorCell> {
        let mut members = pg::get_scoped_members(&PG_SCOPE.to_owned(), &self.group);
        members.retain(|c| !c.get_id().is_local());
        members
    }
}

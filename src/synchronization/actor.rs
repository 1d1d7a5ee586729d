//! The Synchronization actor: joins the topic's process group, sends envelopes and heartbeats
//! to remote members, checks and decodes what arrives, keeps each peer's lease, and hands
//! deliveries to local subscribers.
//!
//! Subscribers run synchronously in this actor's task. A cache's subscriber applies an
//! invalidation (or a repair) to its store before returning, so when this actor renews a lease
//! right after, everything the lease vouches for has really been applied.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use super::backlog::Backlog;
use super::message::{Drainer, Subscriber, SyncMessage};
use super::shared::SyncShared;
use super::{Delivery, MissCause, SyncConfig, TopicMessage};
use crate::clock::now_us;
use crate::envelope::{Body, Echo, Envelope};
use crate::peer_table::{Beat, LeaseParams, PeerTable};
use crate::sequence::Arrival;
use crate::stats::bump;
use crate::topic::PG_SCOPE;
use crate::Topic;

/// The actor behind a [`Synchronization`](crate::Synchronization) handle. It is the only
/// remote-capable actor per topic and node: every authenticated peer can message it, and every
/// byte it receives is treated as untrusted.
pub(crate) struct SynchronizationActor<M>(PhantomData<fn() -> M>);

impl<M> SynchronizationActor<M> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

/// What the actor starts with.
pub(crate) struct SynchronizationArguments<M> {
    pub(crate) topic: Topic<M>,
    pub(crate) node_name: String,
    pub(crate) config: SyncConfig,
    pub(crate) subscribers: Vec<Subscriber<M>>,
    pub(crate) shared: Arc<SyncShared>,
}

/// The actor's state.
pub(crate) struct SynchronizationState<M> {
    group: String,
    node_name: String,
    incarnation: u64,
    last_seq: u64,
    peers: PeerTable,
    subscribers: Vec<Subscriber<M>>,
    shared: Arc<SyncShared>,
    ticker: JoinHandle<()>,
    leases_were_valid: bool,
    max_backlog: u64,
    backlog: Backlog,
    waiters: Vec<Waiter>,
    /// When (µs) a coalescing batch was last drained, and whether a delayed drain is pending.
    last_drain: u64,
    last_drain_items: usize,
    drain_scheduled: bool,
}

/// A `publish_confirmed` caller waiting for acknowledgements.
struct Waiter {
    seq: u64,
    peers: Vec<String>,
    deadline: u64,
    reply: ractor::RpcReplyPort<crate::Confirmation>,
}

impl<M: TopicMessage> Actor for SynchronizationActor<M> {
    type Msg = SyncMessage<M>;
    type State = SynchronizationState<M>;
    type Arguments = SynchronizationArguments<M>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.config.validate()?;
        let group = args.topic.name().to_owned();
        pg::join_scoped(PG_SCOPE.to_owned(), group.clone(), vec![myself.get_cell()]);
        pg::monitor_scope(PG_SCOPE.to_owned(), myself.get_cell());
        let ticker = myself.send_interval(args.config.heartbeat_interval(), || SyncMessage::Tick);
        let params = LeaseParams {
            lease: args.config.lease_duration().as_micros() as u64,
            forget_after: args.config.forget_after_duration().as_micros() as u64,
        };
        let heartbeat = args.config.heartbeat_interval().as_micros() as u64;
        args.shared.update(|s| s.heartbeat = heartbeat);
        let mut state = SynchronizationState {
            group,
            node_name: args.node_name,
            incarnation: random_incarnation(),
            last_seq: 0,
            peers: PeerTable::new(params),
            subscribers: args.subscribers,
            shared: args.shared,
            ticker,
            leases_were_valid: false,
            max_backlog: args.config.max_backlog_bytes(),
            backlog: Backlog::default(),
            waiters: Vec::new(),
            last_drain: 0,
            last_drain_items: 0,
            drain_scheduled: false,
        };
        // Whatever was published while no actor listened on this node is unknown.
        state.possibly_missed(MissCause::Restarted);
        // Peers already in the group joined before we could watch: treat them as joining now.
        for _ in state.remote_members() {
            bump(&state.shared.counters.peer_joins);
            state.possibly_missed(MissCause::PeerJoined);
        }
        state.refresh_gate();
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.ticker.abort();
        let leave = Body::Leave {
            last_seq: state.last_seq,
        };
        state.send(leave);
        pg::demonitor_scope(PG_SCOPE.to_owned(), myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SyncMessage::Drain { take, window } => state.drain(&myself, take, window),
            SyncMessage::Wire(bytes) => state.receive(&bytes),
            SyncMessage::Foreign(variant) => {
                state.undecodable(format!("foreign message {variant:?}"))
            }
            SyncMessage::Publish { payload, local } => state.publish(payload, local),
            SyncMessage::Subscribe(subscriber) => state.subscribers.push(subscriber),
            SyncMessage::SendRaw(bytes) => state.cast_to_remote_members(&bytes),
            SyncMessage::Tick => state.tick(),
            SyncMessage::PublishConfirmed {
                payload,
                timeout,
                reply,
            } => state.publish_confirmed(payload, timeout, reply),
        }
        state.refresh_gate();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(change) = event {
            let joined = matches!(change, GroupChangeMessage::Join(..));
            let (scope, group, who) = match change {
                GroupChangeMessage::Join(s, g, w) | GroupChangeMessage::Leave(s, g, w) => (s, g, w),
            };
            let remote = who.iter().any(|cell| !cell.get_id().is_local());
            if scope == PG_SCOPE && group == state.group && remote && joined {
                bump(&state.shared.counters.peer_joins);
                state.possibly_missed(MissCause::PeerJoined);
            }
            state.refresh_gate();
        }
        Ok(())
    }
}

impl<M: TopicMessage> SynchronizationState<M> {
    /// Publishes a coalescing batch now, unless the previous batch carried several items (a
    /// burst is under way) and went out less than `window` ago: then once that much time has
    /// passed (one delayed drain at a time). Lone messages, even back to back, are never
    /// delayed; a burst travels in one envelope per window.
    fn drain(
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

    fn publish_confirmed(
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
    fn answer_waiters(&mut self) {
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
    fn shed_overflowing_peers(&mut self) {
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

    fn publish(&mut self, payload: Vec<u8>, local: Option<M>) {
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

    fn tick(&mut self) {
        let now = now_us();
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
    fn send(&self, body: Body) -> usize {
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
    fn cast_to_remote_members(&self, bytes: &[u8]) {
        for cell in self.remote_members() {
            let member: ActorRef<SyncMessage<M>> = cell.into();
            // A stub whose session just died refuses the cast; that peer repairs on rejoin.
            if member.cast(SyncMessage::Wire(bytes.to_vec())).is_ok() {
                bump(&self.shared.counters.envelopes_sent);
            }
        }
    }

    fn remote_members(&self) -> Vec<ractor::ActorCell> {
        let mut members = pg::get_scoped_members(&PG_SCOPE.to_owned(), &self.group);
        members.retain(|c| !c.get_id().is_local());
        members
    }

    fn receive(&mut self, bytes: &[u8]) {
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(error) => return self.undecodable(error.to_string()),
        };
        if envelope.topic != self.group {
            return self.undecodable(format!("envelope for unknown topic {:?}", envelope.topic));
        }
        if envelope.origin == self.node_name {
            return; // our own broadcast looped back: several nodes in one process
        }
        let now = now_us();
        let (origin, incarnation) = (envelope.origin, envelope.incarnation);
        match envelope.body {
            Body::Publish { seq, payload } => {
                let arrival = self.peers.on_publish(&origin, incarnation, seq, now);
                self.receive_publish(origin, arrival, &payload);
            }
            Body::Heartbeat {
                stamp,
                last_seq,
                echoes,
            } => {
                let own = self.own_echo(&echoes);
                let beat = Beat {
                    incarnation,
                    stamp,
                    last_seq,
                    echo: own.map(|e| e.stamp),
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
                bump(&self.shared.counters.peer_leaves);
                if let Some(cause) = self.peers.on_leave(&origin, incarnation, last_seq) {
                    self.count_cause(&cause);
                    self.possibly_missed(cause);
                }
            }
        }
    }

    /// What the peer says about us, if it is about our current incarnation.
    fn own_echo<'e>(&self, echoes: &'e [Echo]) -> Option<&'e Echo> {
        echoes
            .iter()
            .find(|e| e.peer == self.node_name && e.incarnation == self.incarnation)
    }

    fn receive_publish(&mut self, origin: String, arrival: Arrival, payload: &[u8]) {
        let _span = tracing::debug_span!("receive", topic = %self.group, %origin).entered();
        match arrival {
            Arrival::Duplicate => return bump(&self.shared.counters.duplicates),
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
            Arrival::FirstContact | Arrival::InOrder => {}
        }
        match postcard::from_bytes::<M>(payload) {
            Ok(message) => {
                bump(&self.shared.counters.received);
                self.deliver(Delivery::Message { origin, message });
            }
            Err(error) => self.undecodable(format!("payload does not decode: {error}")),
        }
    }

    fn count_cause(&self, cause: &MissCause) {
        match cause {
            MissCause::Gap { origin, missed } => {
                bump(&self.shared.counters.gaps);
                tracing::warn!(topic = %self.group, %origin, missed, "sequence gap");
            }
            MissCause::PeerRestarted { .. } => bump(&self.shared.counters.peer_restarts),
            _ => {}
        }
    }

    fn undecodable(&self, reason: String) {
        bump(&self.shared.counters.decode_failures);
        tracing::warn!(topic = %self.group, %reason, "undecodable message from a peer");
        self.possibly_missed(MissCause::Undecodable { reason });
    }

    fn possibly_missed(&self, cause: MissCause) {
        let _span = tracing::info_span!("repair", topic = %self.group, ?cause).entered();
        bump(&self.shared.counters.possibly_missed);
        let now = now_us();
        self.shared.update(|s| s.last_repair = now);
        self.deliver(Delivery::PossiblyMissed(cause));
    }

    fn deliver(&self, delivery: Delivery<M>) {
        for subscriber in &self.subscribers {
            subscriber(delivery.clone());
        }
    }

    /// Recomputes until when cached reads are safe, after every change.
    fn refresh_gate(&mut self) {
        let now = now_us();
        let members = self.remote_members().len();
        let until = self.peers.valid_until(members);
        self.shared.set_valid_until(until);
        let valid = now < until;
        if self.leases_were_valid && !valid {
            bump(&self.shared.counters.lease_expiries);
        }
        self.leases_were_valid = valid;
        let weakest = self.weakest_reason(members, now);
        let last_heard = self
            .peers
            .peers()
            .map(|(n, p)| (n.clone(), p.last_heard))
            .collect();
        self.shared.update(|s| {
            s.weakest = weakest;
            s.last_heard = last_heard;
        });
    }

    fn weakest_reason(&self, members: usize, now: u64) -> Option<String> {
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

fn random_incarnation() -> u64 {
    // Falls back to the clock if the OS has no entropy to give: uniqueness across restarts,
    // not secrecy, is what matters here.
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

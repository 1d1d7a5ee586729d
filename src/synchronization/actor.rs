//! The Synchronization actor: joins the topic's process group, sends envelopes to remote
//! members, checks and decodes what arrives, and hands it to local subscribers.

use std::marker::PhantomData;
use std::sync::Arc;

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::message::{Subscriber, SyncMessage};
use super::stats::SyncCounters;
use super::{Delivery, MissCause, TopicMessage};
use crate::envelope::{Body, Envelope};
use crate::sequence::{Arrival, SequenceTracker};
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
    pub(crate) subscribers: Vec<Subscriber<M>>,
    pub(crate) counters: Arc<SyncCounters>,
}

/// The actor's state.
pub(crate) struct SynchronizationState<M> {
    topic: Topic<M>,
    node_name: String,
    incarnation: u64,
    next_seq: u64,
    tracker: SequenceTracker,
    subscribers: Vec<Subscriber<M>>,
    counters: Arc<SyncCounters>,
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
        let group = args.topic.name().to_owned();
        pg::join_scoped(PG_SCOPE.to_owned(), group, vec![myself.get_cell()]);
        pg::monitor_scope(PG_SCOPE.to_owned(), myself.get_cell());
        let state = SynchronizationState {
            topic: args.topic,
            node_name: args.node_name,
            incarnation: random_incarnation(),
            next_seq: 1,
            tracker: SequenceTracker::default(),
            subscribers: args.subscribers,
            counters: args.counters,
        };
        // Whatever was published while no actor listened on this node is unknown.
        state.possibly_missed(MissCause::Restarted);
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        pg::demonitor_scope(PG_SCOPE.to_owned(), myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SyncMessage::Wire(bytes) => state.receive(&bytes),
            SyncMessage::Foreign(variant) => {
                state.undecodable(format!("foreign message {variant:?}"))
            }
            SyncMessage::Publish { payload, local } => state.publish(payload, local),
            SyncMessage::Subscribe(subscriber) => state.subscribers.push(subscriber),
            SyncMessage::SendRaw(bytes) => state.cast_to_remote_members(&bytes),
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(scope, group, who)) =
            event
        {
            let remote = who.iter().any(|cell| !cell.get_id().is_local());
            if scope == PG_SCOPE && group == state.topic.name() && remote {
                bump(&state.counters.peer_joins);
                state.possibly_missed(MissCause::PeerJoined);
            }
        }
        Ok(())
    }
}

impl<M: TopicMessage> SynchronizationState<M> {
    fn publish(&mut self, payload: Vec<u8>, local: Option<M>) {
        let envelope = Envelope {
            topic: self.topic.name().to_owned(),
            origin: self.node_name.clone(),
            incarnation: self.incarnation,
            seq: self.next_seq,
            body: Body::Publish(payload),
        };
        self.next_seq += 1;
        bump(&self.counters.published);
        let _span = tracing::debug_span!("publish", topic = self.topic.name(), seq = envelope.seq)
            .entered();
        match envelope.encode() {
            Ok(bytes) => self.cast_to_remote_members(&bytes),
            // The handle checked the payload's size class; an oversize envelope is a bug in
            // the caller's message sizing, and peers notice the skipped sequence number.
            Err(error) => tracing::error!(%error, "envelope not sent"),
        }
        if let Some(message) = local {
            let origin = self.node_name.clone();
            self.deliver(Delivery::Message { origin, message });
        }
    }

    /// Casts the same bytes to every remote member. Remote `ActorRef`s are never cached: stub
    /// ids change when a session is re-established, so pg is read on every send.
    fn cast_to_remote_members(&self, bytes: &[u8]) {
        let members = pg::get_scoped_members(&PG_SCOPE.to_owned(), &self.topic.name().to_owned());
        for cell in members.into_iter().filter(|c| !c.get_id().is_local()) {
            let member: ActorRef<SyncMessage<M>> = cell.into();
            // A stub whose session just died refuses the cast; that peer repairs on rejoin.
            if member.cast(SyncMessage::Wire(bytes.to_vec())).is_ok() {
                bump(&self.counters.envelopes_sent);
            }
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        let envelope = match Envelope::decode(bytes) {
            Ok(envelope) => envelope,
            Err(error) => return self.undecodable(error.to_string()),
        };
        if envelope.topic != self.topic.name() {
            return self.undecodable(format!("envelope for unknown topic {:?}", envelope.topic));
        }
        let _span = tracing::debug_span!("receive", topic = self.topic.name(), origin = %envelope.origin, seq = envelope.seq).entered();
        let arrival = self
            .tracker
            .observe(&envelope.origin, envelope.incarnation, envelope.seq);
        self.note_arrival(&envelope.origin, arrival);
        if !arrival.deliver() {
            return;
        }
        let Body::Publish(payload) = envelope.body;
        match postcard::from_bytes::<M>(&payload) {
            Ok(message) => {
                bump(&self.counters.received);
                let origin = envelope.origin;
                self.deliver(Delivery::Message { origin, message });
            }
            Err(error) => self.undecodable(format!("payload does not decode: {error}")),
        }
    }

    fn note_arrival(&self, origin: &str, arrival: Arrival) {
        let origin = origin.to_owned();
        match arrival {
            Arrival::Duplicate => bump(&self.counters.duplicates),
            Arrival::Gap { missed } => {
                bump(&self.counters.gaps);
                tracing::warn!(topic = self.topic.name(), %origin, missed, "sequence gap");
                self.possibly_missed(MissCause::Gap { origin, missed });
            }
            Arrival::NewIncarnation => {
                bump(&self.counters.peer_restarts);
                self.possibly_missed(MissCause::PeerRestarted { origin });
            }
            Arrival::FirstContact | Arrival::InOrder => {}
        }
    }

    fn undecodable(&self, reason: String) {
        bump(&self.counters.decode_failures);
        tracing::warn!(topic = self.topic.name(), %reason, "undecodable message from a peer");
        self.possibly_missed(MissCause::Undecodable { reason });
    }

    fn possibly_missed(&self, cause: MissCause) {
        bump(&self.counters.possibly_missed);
        self.deliver(Delivery::PossiblyMissed(cause));
    }

    fn deliver(&self, delivery: Delivery<M>) {
        for subscriber in &self.subscribers {
            subscriber(delivery.clone());
        }
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

//! The Synchronization actor: joins the topic's process group, sends envelopes and heartbeats
//! to remote members, checks and decodes what arrives, keeps each peer's lease, and hands
//! deliveries to local subscribers.
//!
//! Subscribers run synchronously in this actor's task (a heartbeat tick the node drives on its
//! watchdog task hands itself to this actor when it would tell them anything). A cache's
//! subscriber applies an invalidation (or a repair) to its store before returning, so when this
//! actor renews a lease right after, everything the lease vouches for has really been applied.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::task::JoinHandle;

use super::message::{Gossip, Pending, Subscriber, SyncMessage};
use super::outbox::{remote_members, Outbox};
use super::shared::SyncShared;
use super::{Confirmation, SyncConfig, TopicMessage};
use crate::clock::now_us;
use crate::counter::bump;
use crate::delivery::MissCause;
use crate::protocol::peer_table::{LeaseParams, PeerTable};
use crate::topic::Topic;
use crate::topic::PG_SCOPE;

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
    pub(crate) pending: Option<Pending<M>>,
    pub(crate) gossip: Option<Arc<dyn Gossip>>,
    pub(crate) shared: Arc<SyncShared>,
    pub(crate) outbox: Arc<Outbox<M>>,
    pub(crate) idempotent: bool,
}

/// The actor's state.
pub(crate) struct SynchronizationState<M> {
    /// The topic's process group (its name).
    pub(super) group: String,
    /// This node's cluster-wide name, `name@host`.
    pub(super) node_name: String,
    /// Sequence numbers and casts, shared with the handles (which publish from the caller's
    /// task under its lock).
    pub(super) outbox: Arc<Outbox<M>>,
    /// Per peer: incarnation, what was applied, the lease, acknowledgements.
    pub(super) peers: PeerTable,
    /// Local subscribers: every delivery goes to each.
    pub(super) subscribers: Vec<Subscriber<M>>,
    /// Accepted but not yet published (a cache's coalescing batch): drained before every
    /// heartbeat and before the leave.
    pub(super) pending: Option<Pending<M>>,
    /// Membership gossip, on the node-level topic.
    pub(super) gossip: Option<Arc<dyn Gossip>>,
    /// Counters, the topic's lease gate and the last-heard status, shared with readers.
    pub(super) shared: Arc<SyncShared>,
    /// The heartbeat timer (sends `Tick`), aborted when the actor stops; `None` for a topic
    /// whose heartbeats the node drives (see [`super::bundle::Bundle::tick_topics`]).
    pub(super) ticker: Option<JoinHandle<()>>,
    /// Whether the leases were valid at the last gate computation: a change to invalid
    /// counts a lease expiry and wakes the cache's revalidation.
    pub(super) leases_were_valid: bool,
    /// Bytes a peer may leave unacknowledged before its session is closed.
    pub(super) max_backlog: u64,
    /// Heartbeat interval (µs): a topic's heartbeats ride on the node-level heartbeat when
    /// that one is at least as frequent.
    pub(super) heartbeat_us: u64,
    /// `publish_confirmed` callers waiting for acknowledgements, answered once every peer
    /// acknowledged their sequence number or at their deadline.
    pub(super) waiters: Vec<Waiter>,
    /// Deliver what the sequence numbers call a duplicate too (a cache's invalidations:
    /// applying one twice changes nothing, and a forged sequence number then cannot hide a
    /// peer's later ones).
    pub(super) idempotent: bool,
    /// Remote members not heard from (by session id), with the last sequence number published
    /// when this actor first saw each: what bounds their backlog.
    pub(super) unheard: std::collections::HashMap<u64, u64>,
    /// The actor stopped: nothing may renew the gate it closed (a bundled heartbeat the
    /// node-level task offers late, a suspension notice).
    pub(super) stopped: bool,
    /// Fault injection: the origin (name, incarnation) to forge a heartbeat for after each of
    /// this node's own, as a peer posing as another would.
    #[cfg(feature = "fault-injection")]
    pub(super) impersonating: Option<(String, u64)>,
    /// Fault injection: made-up members the node-level heartbeats list too.
    #[cfg(feature = "fault-injection")]
    pub(super) made_up_members: usize,
}

/// The actor's state, shared with the node-level actor: a topic heartbeat that arrives inside
/// the node-level heartbeat and announces nothing this topic has yet to apply is taken on the
/// node-level actor's task, without a message to this actor (see [`super::bundle`]).
pub(crate) type SharedState<M> = Arc<Mutex<SynchronizationState<M>>>;

/// The state, locked (every section is short and never awaits).
pub(super) fn lock<M>(
    state: &Mutex<SynchronizationState<M>>,
) -> MutexGuard<'_, SynchronizationState<M>> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `publish_confirmed` caller waiting for acknowledgements.
pub(super) struct Waiter {
    /// The sequence number of the message waited for.
    pub(super) seq: u64,
    /// The members (by name) it was sent to: each is applied or missing in the answer.
    pub(super) peers: Vec<String>,
    /// Our clock (µs) when the caller gives up: whoever has not acknowledged is missing.
    pub(super) deadline: u64,
    /// Where the answer goes.
    pub(super) reply: ractor::RpcReplyPort<Confirmation>,
}

/// The node-level heartbeat: every `period`, in phase with every other node's (see
/// [`crate::clock::aligned_interval`]).
fn aligned_ticks<M: TopicMessage>(
    myself: ActorRef<SyncMessage<M>>,
    period: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = crate::clock::aligned_interval(period, Duration::ZERO);
        loop {
            ticks.tick().await;
            if myself.cast(SyncMessage::Tick).is_err() {
                break;
            }
        }
    })
}

#[cfg_attr(feature = "async-trait", ractor::async_trait)]
impl<M: TopicMessage> Actor for SynchronizationActor<M> {
    type Msg = SyncMessage<M>;
    type State = SharedState<M>;
    type Arguments = SynchronizationArguments<M>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        // (The builder validated the configuration before it spawned this actor.)
        let group = args.topic.name().to_owned();
        pg::join_scoped(PG_SCOPE.to_owned(), group.clone(), vec![myself.get_cell()]);
        pg::monitor_scope(PG_SCOPE.to_owned(), myself.get_cell());
        let period = args.config.heartbeat_interval();
        // A topic that heartbeats at the node's rate is ticked by the node, on the node's
        // watchdog task, with every other such topic: no timer and no wake-up of its own.
        let driven = args.gossip.is_none()
            && args.outbox.bundle().node_interval() == period.as_micros() as u64;
        let ticker = if args.gossip.is_some() {
            Some(aligned_ticks(myself.clone(), period))
        } else if driven {
            None
        } else {
            Some(myself.send_interval(period, || SyncMessage::Tick))
        };
        let params = LeaseParams {
            lease: args.config.lease_duration().as_micros() as u64,
            forget_after: args.config.forget_after_duration().as_micros() as u64,
        };
        let heartbeat = args.config.heartbeat_interval().as_micros() as u64;
        args.config.configure(&args.shared.gate);
        if args.gossip.is_some() {
            args.outbox.bundle().set_node_interval(heartbeat);
        }
        let mut state = SynchronizationState {
            group,
            node_name: args.node_name,
            outbox: args.outbox,
            peers: PeerTable::new(params),
            subscribers: args.subscribers,
            pending: args.pending,
            gossip: args.gossip,
            shared: args.shared,
            ticker,
            leases_were_valid: false,
            max_backlog: args.config.max_backlog_bytes(),
            heartbeat_us: heartbeat,
            waiters: Vec::new(),
            idempotent: args.idempotent,
            unheard: std::collections::HashMap::new(),
            stopped: false,
            #[cfg(feature = "fault-injection")]
            impersonating: None,
            #[cfg(feature = "fault-injection")]
            made_up_members: 0,
        };
        // Whatever was published while no actor listened on this node is unknown.
        state.possibly_missed(MissCause::Restarted);
        // Peers already in the group joined before we could watch: treat them as joining now.
        for _ in remote_members(&state.group) {
            bump(&state.shared.counters.peer_joins);
            state.possibly_missed(MissCause::PeerJoined);
        }
        state.refresh_gate();
        let bundled = state.gossip.is_none();
        let group = state.group.clone();
        let state = Arc::new(Mutex::new(state));
        if bundled {
            let bundle = lock(&state).outbox.bundle().clone();
            let kick: Option<super::bundle::Kick> = driven.then(|| {
                let myself = myself.clone();
                Arc::new(move || {
                    let _ = myself.cast(SyncMessage::Tick);
                }) as _
            });
            bundle.register(&group, Arc::downgrade(&state) as _, kick);
        }
        Ok(state)
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let sink = Arc::downgrade(state) as std::sync::Weak<dyn super::bundle::BeatSink>;
        let mut state = lock(state);
        if state.gossip.is_none() {
            state.outbox.bundle().unregister(&state.group, &sink);
        }
        if let Some(ticker) = &state.ticker {
            ticker.abort();
        }
        if state.gossip.is_some() {
            state.outbox.bundle().set_node_interval(0);
        }
        // What was accepted before the leave goes out before it.
        state.publish_pending();
        state.outbox.leave();
        // Nobody keeps the topic's leases from here on: caches still holding a handle check
        // against the source until a new actor computes the gate again.
        state.stopped = true;
        state.shared.gate.renew(
            0,
            now_us(),
            Some("the topic's Synchronization actor stopped".to_owned()),
        );
        state.shared.gate.closed.notify_one();
        pg::demonitor_scope(PG_SCOPE.to_owned(), myself.get_id());
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut state = lock(state);
        // Only what peers send (and the passing of time) can change a lease; sending does not,
        // so the publish path skips the recomputation.
        let leases_may_change = matches!(
            message,
            SyncMessage::Wire(..) | SyncMessage::Foreign(_) | SyncMessage::Tick
        );
        match message {
            SyncMessage::CheckBacklog => state.shed_overflowing_peers(),
            SyncMessage::Wire(bytes, token) => state.receive(&bytes, token.as_deref()),
            SyncMessage::Foreign(variant) => {
                state.undecodable(format!("foreign message {variant:?}"))
            }
            SyncMessage::PublishWithLocal { payload, local } => {
                state.publish_with_local(payload, local)
            }
            SyncMessage::Subscribe(subscriber) => state.subscribers.push(subscriber),
            SyncMessage::Tick => state.tick(),
            SyncMessage::AwaitApplied {
                seq,
                timeout,
                reply,
            } => state.await_applied(seq, timeout, reply),
            #[cfg(feature = "fault-injection")]
            SyncMessage::Impersonate(origin, incarnation) => {
                state.impersonating = Some((origin, incarnation));
            }
            #[cfg(feature = "fault-injection")]
            SyncMessage::ForgeLeave(origin, incarnation) => state.forge_leave(&origin, incarnation),
            #[cfg(feature = "fault-injection")]
            SyncMessage::MadeUpMembers(count) => state.made_up_members = count,
        }
        if leases_may_change {
            state.refresh_gate();
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut state = lock(state);
        if let SupervisionEvent::ProcessGroupChanged(change) = event {
            let joined = matches!(change, GroupChangeMessage::Join(..));
            let (scope, group, who) = match change {
                GroupChangeMessage::Join(s, g, w) | GroupChangeMessage::Leave(s, g, w) => (s, g, w),
            };
            let remote = who.iter().any(|cell| !cell.get_id().is_local());
            // A join is a possible loss: an earlier incarnation of the peer that this node never
            // heard of may have published, and been lost, before it died (its successor's
            // heartbeats cannot tell). The repair checks versions; it drops nothing unchanged.
            if scope == PG_SCOPE && group == state.group && remote && joined {
                bump(&state.shared.counters.peer_joins);
                state.possibly_missed(MissCause::PeerJoined);
            }
            state.refresh_gate();
        }
        Ok(())
    }
}

/// A new incarnation: the wall clock's milliseconds above 20 random bits, so that a later
/// start has (barring a clock set back) a higher incarnation — what lets a reader ignore a
/// late message of an incarnation older than one it has seen. Unique across restarts;
/// never secret.
pub(super) fn random_incarnation() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    (now << 20) | (random & 0xF_FFFF)
}

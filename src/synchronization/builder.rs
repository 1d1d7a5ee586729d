//! Spawning a topic's Synchronization actor: settings, supervision, and (inside the crate)
//! the subscribers and the pending-message hook it starts with.

use std::fmt;
use std::sync::Arc;

use ractor::{Actor, ActorCell};

use super::actor::{random_incarnation, SynchronizationActor, SynchronizationArguments};
use super::bundle::Bundle;
use super::message::{Gossip, Pending, Subscriber};
use super::outbox::Outbox;
use super::shared::SyncShared;
use super::{SyncConfig, Synchronization, TopicMessage};
use crate::error::{Error, Result};
use crate::topic::{Topic, PG_SCOPE};

/// Builds a [`Synchronization`] actor with non-default settings.
///
/// ```no_run
/// # use std::time::Duration;
/// # use ractor_cache_sync::{Node, SyncConfig, Synchronization, Topic};
/// # async fn example(node: &Node) -> ractor_cache_sync::Result<()> {
/// let prices: Synchronization<String> = Synchronization::builder(Topic::new("prices"))
///     .config(SyncConfig::default().lease(Duration::from_millis(500)))
///     .spawn(node)
///     .await?;
/// # Ok(()) }
/// ```
pub struct SynchronizationBuilder<M> {
    topic: Topic<M>,
    config: SyncConfig,
    subscribers: Vec<Subscriber<M>>,
    shared: Arc<SyncShared>,
    pending: Option<Pending<M>>,
    gossip: Option<Arc<dyn Gossip>>,
    idempotent: bool,
}

impl<M: TopicMessage> SynchronizationBuilder<M> {
    pub(super) fn new(topic: Topic<M>) -> Self {
        Self {
            topic,
            config: SyncConfig::default(),
            subscribers: Vec::new(),
            shared: Arc::default(),
            pending: None,
            gossip: None,
            idempotent: false,
        }
    }

    /// Messages are idempotent (a cache's invalidations): one the sequence numbers call a
    /// duplicate is delivered too, so that no sequence number (a forged one included) can
    /// keep a peer's later messages from being applied. Sequence numbers still detect gaps.
    pub(crate) fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Heartbeat, lease, forget-after and backlog settings. Default [`SyncConfig::default`].
    pub fn config(mut self, config: SyncConfig) -> Self {
        self.config = config;
        self
    }

    /// A subscriber that is there from the start, so it sees the first delivery too.
    pub(crate) fn subscriber(mut self, subscriber: Subscriber<M>) -> Self {
        self.subscribers.push(subscriber);
        self
    }

    /// Counters and lease gate shared with a cache (they outlive a restart of the actor).
    pub(crate) fn shared(mut self, shared: Arc<SyncShared>) -> Self {
        self.shared = shared;
        self
    }

    /// Messages accepted but not yet published (a cache's coalescing batch): published before
    /// every heartbeat and before the leave.
    pub(crate) fn pending(mut self, pending: Pending<M>) -> Self {
        self.pending = Some(pending);
        self
    }

    /// Membership gossip on this actor's heartbeats (the node-level topic only).
    pub(crate) fn gossip(mut self, gossip: Arc<dyn Gossip>) -> Self {
        self.gossip = Some(gossip);
        self
    }

    /// Spawns the actor, unsupervised. `node` names this node in envelopes: pass the
    /// [`Node`](crate::Node) (or its [`name`](crate::Node::name)).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid configuration or a node name that is empty or
    /// contains `/`; [`Error::Spawn`] if the actor fails to start.
    pub async fn spawn(self, node: &(impl AsRef<str> + ?Sized)) -> Result<Synchronization<M>> {
        self.start(node.as_ref(), None).await
    }

    /// Spawns the actor linked to `supervisor`, which receives its failure and may spawn it
    /// again (it rejoins the group and tells subscribers
    /// [`MissCause::Restarted`](crate::synchronization::MissCause::Restarted)).
    ///
    /// # Errors
    ///
    /// As [`spawn`](Self::spawn).
    pub async fn spawn_linked(
        self,
        node: &(impl AsRef<str> + ?Sized),
        supervisor: ActorCell,
    ) -> Result<Synchronization<M>> {
        self.start(node.as_ref(), Some(supervisor)).await
    }

    async fn start(
        self,
        node_name: &str,
        supervisor: Option<ActorCell>,
    ) -> Result<Synchronization<M>> {
        self.config.validate()?;
        // Peers read the node's name off the actor's name, up to the first '/'.
        if node_name.is_empty() || node_name.contains('/') {
            return Err(crate::error::Error::Config(format!(
                "node name {node_name:?} must be non-empty and contain no '/'"
            )));
        }
        if self.gossip.is_none() {
            // (The node-level topic is the node's own: one per node.)
            refuse_a_second(self.topic.name())?;
        }
        let outbox = Arc::new(Outbox::new(
            self.topic.name().to_owned(),
            node_name.to_owned(),
            random_incarnation(),
            self.shared.clone(),
            Bundle::of(node_name),
        ));
        let arguments = SynchronizationArguments {
            topic: self.topic.clone(),
            node_name: node_name.to_owned(),
            config: self.config,
            subscribers: self.subscribers,
            pending: self.pending,
            gossip: self.gossip,
            shared: self.shared.clone(),
            outbox: outbox.clone(),
            idempotent: self.idempotent,
        };
        let actor = SynchronizationActor::new();
        // Named after this node: peers read the name off their stub of this actor, to tell
        // which node a member of the group is before they ever hear from it.
        let name = Some(super::outbox::actor_name(node_name, self.topic.name()));
        let spawned = match supervisor {
            Some(supervisor) => Actor::spawn_linked(name, actor, arguments, supervisor).await,
            None => Actor::spawn(name, actor, arguments).await,
        };
        let (actor, _) = spawned.map_err(|e| Error::spawn("synchronization actor", e))?;
        Ok(Synchronization {
            actor,
            shared: self.shared,
            outbox,
            topic: self.topic,
        })
    }
}

/// One Synchronization actor per topic and process: a second one would never see the first
/// one's messages (both are local members of the group, and only remote members are sent to).
fn refuse_a_second(topic: &str) -> Result<()> {
    use ractor::ActorStatus::{Running, Starting, Upgrading};
    let members = ractor::pg::get_scoped_local_members(&PG_SCOPE.to_owned(), &topic.to_owned());
    let running = members
        .iter()
        .any(|cell| matches!(cell.get_status(), Starting | Running | Upgrading));
    if running {
        return Err(Error::Config(format!(
            "topic {topic:?} already has a Synchronization actor (a cache or a topic) in this process; share that one"
        )));
    }
    Ok(())
}

impl<M> fmt::Debug for SynchronizationBuilder<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SynchronizationBuilder")
            .field("topic", &self.topic)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

//! Hooks for fault-injection tests and the crate's benchmarks, with the `fault-injection`
//! feature: not for production builds. Every hook is a method of one handle,
//! [`FaultInjector`]; hand-made envelopes and the process-group scope are here too.

use std::time::Duration;

use crate::cache::{Cache, CacheKey};
use crate::error::{Error, Result};
use crate::node::Node;
use crate::synchronization::{Synchronization, TopicMessage};

pub use crate::protocol::envelope::bench::{decode, encode_for_peers, encode_publish};
pub use crate::topic::PG_SCOPE;

/// What the injector can do to a topic: a cache's, or a typed topic's.
trait TopicHooks: Send + Sync {
    fn send_raw(&self, bytes: Vec<u8>) -> Result<()>;
    fn impersonate(&self, origin: &str, incarnation: u64) -> Result<()>;
    fn incarnation(&self) -> Option<u64>;
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> TopicHooks for Cache<K, V> {
    fn send_raw(&self, bytes: Vec<u8>) -> Result<()> {
        Cache::send_raw(self, bytes)
    }
    fn impersonate(&self, origin: &str, incarnation: u64) -> Result<()> {
        Cache::impersonate(self, origin, incarnation)
    }
    fn incarnation(&self) -> Option<u64> {
        self.topic_incarnation()
    }
}

impl<M: TopicMessage> TopicHooks for Synchronization<M> {
    fn send_raw(&self, bytes: Vec<u8>) -> Result<()> {
        Synchronization::send_raw(self, bytes)
    }
    fn impersonate(&self, origin: &str, incarnation: u64) -> Result<()> {
        Synchronization::impersonate(self, origin, incarnation)
    }
    fn incarnation(&self) -> Option<u64> {
        Some(Synchronization::incarnation(self))
    }
}

/// Every fault-injection hook of one node and, with [`topic`](Self::topic) or
/// [`cache`](Self::cache), of one of its topics.
pub struct FaultInjector<'a> {
    node: &'a Node,
    topic: Option<&'a dyn TopicHooks>,
}

impl std::fmt::Debug for FaultInjector<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultInjector")
            .field("node", &self.node.name())
            .field("topic", &self.topic.is_some())
            .finish()
    }
}

impl<'a> FaultInjector<'a> {
    /// The hooks of `node` (its node-level actor, its clock).
    pub fn new(node: &'a Node) -> Self {
        Self { node, topic: None }
    }

    /// And of `cache`'s topic.
    pub fn cache<K: CacheKey, V: Clone + Send + Sync + 'static>(
        mut self,
        cache: &'a Cache<K, V>,
    ) -> Self {
        self.topic = Some(cache);
        self
    }

    /// And of a typed topic.
    pub fn topic<M: TopicMessage>(mut self, topic: &'a Synchronization<M>) -> Self {
        self.topic = Some(topic);
        self
    }

    fn hooks(&self) -> Result<&'a dyn TopicHooks> {
        self.topic
            .ok_or_else(|| Error::Config("no topic given to the fault injector".into()))
    }

    /// Casts `bytes` unchanged to every remote member of the topic, as if they were an
    /// envelope: how do peers handle garbage?
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the topic's actor is not running; [`Error::Config`] without
    /// a topic.
    pub fn send_raw(&self, bytes: Vec<u8>) -> Result<()> {
        self.hooks()?.send_raw(bytes)
    }

    /// From now on, after each of its heartbeats, the topic's actor forges one under
    /// `origin`'s name and topic `incarnation`, echoing what it knows of its peers (a peer
    /// posing as another must not keep that node's leases alive).
    ///
    /// # Errors
    ///
    /// As [`send_raw`](Self::send_raw).
    pub fn impersonate(&self, origin: &str, incarnation: u64) -> Result<()> {
        self.hooks()?.impersonate(origin, incarnation)
    }

    /// The topic actor's incarnation, as its envelopes carry it (what a forger needs).
    pub fn topic_incarnation(&self) -> Option<u64> {
        self.topic.and_then(|topic| topic.incarnation())
    }

    /// The node-level actor's incarnation, as its heartbeats carry it (what a forger needs).
    pub fn node_incarnation(&self) -> Option<u64> {
        self.node.liveness_incarnation()
    }

    /// Makes the node-level actor forge a clean leave under another node's name and
    /// node-level `incarnation`, as a peer posing as it would.
    pub fn forge_leave(&self, origin: &str, incarnation: u64) {
        self.node.forge_leave(origin, incarnation);
    }

    /// Makes the node-level actor list `count` made-up members (unreachable addresses) in its
    /// heartbeats from now on, as a peer with the cluster's credentials could: peers must keep
    /// what they admit bounded. 0 stops it.
    pub fn gossip_made_up_members(&self, count: usize) {
        self.node.gossip_made_up_members(count);
    }

    /// Kills the node-level actor, as a bug in it would: its supervisor spawns it again.
    pub fn kill_node_level_actor(&self) {
        self.node.kill_liveness();
    }

    /// Makes the clock that counts suspended time jump by `sleep`, as a suspension of the
    /// system would: the node reacts at its next heartbeat.
    pub fn simulate_suspension(&self, sleep: Duration) {
        self.node.simulate_suspension(sleep);
    }
}

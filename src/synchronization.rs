//! Typed topics: one Synchronization actor per topic and node, and its handle.
//!
//! [`Synchronization`] publishes a [`TopicMessage`] to the topic's other nodes and hands what
//! arrives to subscribers as a [`Delivery`] (a message, or [`MissCause`]: something may have
//! been missed, repair). [`Recipients`] says who a publish reaches, [`Confirmation`] who
//! applied it; [`SyncConfig`] holds the heartbeat, lease and backlog settings a cache shares.

mod actor;
mod builder;
mod bundle;
mod config;
mod incoming;
pub(crate) mod message;
mod outbox;
mod outgoing;
pub(crate) mod shared;
pub(crate) mod stats;

use std::sync::Arc;
use std::time::Duration;

use ractor::{ActorCell, ActorRef};
use serde::{de::DeserializeOwned, Serialize};

pub use self::builder::SynchronizationBuilder;
pub(crate) use self::bundle::Bundle;
pub use self::config::SyncConfig;
use self::message::SyncMessage;
use self::outbox::Outbox;
pub(crate) use self::shared::SyncShared;
pub use self::stats::SyncStats;
use crate::clock::now_us;
pub use crate::delivery::{Delivery, MissCause};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::topic::Topic;

/// What a topic's messages must be: serde-encodable, cloneable (one copy per local subscriber)
/// and sendable between tasks. Implemented for every such type.
pub trait TopicMessage: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> TopicMessage for T {}

/// Which peers applied a message published with
/// [`publish_confirmed`](Synchronization::publish_confirmed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Confirmation {
    /// Peers (`name@host`) whose heartbeats said they applied it.
    pub applied: Vec<String>,
    /// Peers known when it was published that did not say so before the timeout.
    pub missing: Vec<String>,
}

impl Confirmation {
    /// Whether every peer known at publish time applied it.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// Who receives a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recipients {
    /// Subscribers on every other node (pg2's `get_members -- get_local_members`).
    #[default]
    Remote,
    /// Subscribers on every other node and on this one.
    RemoteAndLocal,
}

/// Handle to one topic's Synchronization actor on this node.
///
/// Cloneable; all clones talk to the same actor. Dropping handles does not stop the actor.
pub struct Synchronization<M> {
    actor: ActorRef<SyncMessage<M>>,
    shared: Arc<SyncShared>,
    outbox: Arc<Outbox<M>>,
    topic: Topic<M>,
}

impl<M> Clone for Synchronization<M> {
    fn clone(&self) -> Self {
        Self {
            actor: self.actor.clone(),
            shared: self.shared.clone(),
            outbox: self.outbox.clone(),
            topic: self.topic.clone(),
        }
    }
}

impl<M> std::fmt::Debug for Synchronization<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Synchronization")
            .field("topic", &self.topic)
            .field("actor", &self.actor.get_id())
            .finish_non_exhaustive()
    }
}

impl<M: TopicMessage> Synchronization<M> {
    /// Spawns the topic's Synchronization actor on `node`, unsupervised, with the default
    /// settings (200 ms heartbeat, 1 s lease).
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] if the actor fails to start.
    pub async fn spawn(topic: Topic<M>, node: &(impl AsRef<str> + ?Sized)) -> Result<Self> {
        Self::builder(topic).spawn(node).await
    }

    /// Starts building the topic's Synchronization actor with non-default settings or under a
    /// supervisor.
    pub fn builder(topic: Topic<M>) -> SynchronizationBuilder<M> {
        SynchronizationBuilder::new(topic)
    }

    /// Publishes `message` to the subscribers on every other node.
    ///
    /// The message is numbered, encoded once and cast to every remote member right here, in
    /// the caller's task (no hop through the actor's mailbox). Delivery is at most once; receivers detect losses by sequence number and are told
    /// [`Delivery::PossiblyMissed`].
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if `message` cannot be encoded; [`Error::ActorStopped`] if the actor
    /// has stopped.
    pub fn publish(&self, message: &M) -> Result<()> {
        self.publish_to(message, Recipients::Remote)
    }

    /// Publishes `message` to the chosen [`Recipients`].
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub fn publish_to(&self, message: &M, recipients: Recipients) -> Result<()> {
        let payload = postcard::to_stdvec(message).map_err(Error::encode)?;
        if !self.outbox.fits(payload.len()) {
            return Err(crate::protocol::envelope::too_large(payload.len()));
        }
        if recipients == Recipients::RemoteAndLocal {
            let local = message.clone();
            return self.send(SyncMessage::PublishWithLocal { payload, local });
        }
        self.ensure_running()?;
        let seq = self.outbox.publish(payload).ok_or_else(closed)?;
        self.published(seq);
        Ok(())
    }

    /// Publishes `message` to every other node, then waits until each peer known now has
    /// applied it (peers acknowledge in their heartbeats, so this takes about one heartbeat
    /// interval) or `timeout` passes, and says which did and which did not. `Duration::MAX`
    /// waits with no limit.
    ///
    /// The message is published from the caller's task, as by [`publish`](Self::publish),
    /// before the call waits: if the caller's future is dropped while it waits, the message
    /// is out all the same.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] if `message` cannot be encoded; [`Error::ActorStopped`] if the actor
    /// has stopped.
    pub async fn publish_confirmed(&self, message: &M, timeout: Duration) -> Result<Confirmation> {
        let payload = postcard::to_stdvec(message).map_err(Error::encode)?;
        if !self.outbox.fits(payload.len()) {
            return Err(crate::protocol::envelope::too_large(payload.len()));
        }
        self.ensure_running()?;
        let seq = self.outbox.publish(payload).ok_or_else(closed)?;
        self.published(seq);
        let request = |reply| SyncMessage::AwaitApplied {
            seq,
            timeout,
            reply,
        };
        // The actor answers at the deadline; the call's own limit only covers a stuck actor.
        let wait = timeout.checked_add(Duration::from_secs(1));
        match self.actor.call(request, wait).await {
            Ok(ractor::rpc::CallResult::Success(confirmation)) => Ok(confirmation),
            Ok(_) => Err(Error::Timeout(timeout)),
            Err(e) => Err(Error::stopped_by("synchronization actor", e)),
        }
    }

    /// Calls `subscriber` with every [`Delivery`] of the topic on this node, in order, from the
    /// actor's task: keep it short and non-blocking (send to an actor or a channel).
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the actor has stopped.
    pub fn subscribe(
        &self,
        subscriber: impl Fn(Delivery<M>) + Send + Sync + 'static,
    ) -> Result<()> {
        self.send(SyncMessage::Subscribe(Arc::new(subscriber)))
    }

    /// Every 64 publishes the actor checks that no peer left too much unacknowledged.
    fn published(&self, seq: u64) {
        if seq % 64 == 0 {
            let _ = self.actor.cast(SyncMessage::CheckBacklog);
        }
    }

    /// A handle may outlive a failed actor (whose successor numbers from 1 again under a new
    /// incarnation): publishing through it is refused.
    fn ensure_running(&self) -> Result<()> {
        use ractor::ActorStatus::{Stopped, Stopping};
        if matches!(self.actor.get_status(), Stopping | Stopped) {
            self.outbox.close();
            return Err(closed());
        }
        Ok(())
    }

    /// Casts `bytes` unchanged to every remote member of the topic, as if they were an
    /// envelope. A fault-injection tool to check how peers handle garbage; not for normal use.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the actor has stopped.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn send_raw(&self, bytes: Vec<u8>) -> Result<()> {
        self.ensure_running()?;
        self.outbox.cast_to_remote_members(bytes);
        Ok(())
    }

    /// From now on, after each of its heartbeats, the actor forges one under `origin`'s name
    /// and `incarnation`, echoing what it knows of its peers: a fault-injection tool to check
    /// that a peer posing as another cannot keep that node's leases alive; not for normal use.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the actor has stopped.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn impersonate(&self, origin: &str, incarnation: u64) -> Result<()> {
        self.send(SyncMessage::Impersonate(origin.to_owned(), incarnation))
    }

    /// Makes the node-level actor list `count` made-up members in its heartbeats too (fault
    /// injection: what a peer with the cluster's credentials could gossip).
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the actor has stopped.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn gossip_made_up_members(&self, count: usize) -> Result<()> {
        self.send(SyncMessage::MadeUpMembers(count))
    }

    /// Makes the actor forge a clean leave under `origin`'s name and `incarnation` (fault
    /// injection; see [`impersonate`](Self::impersonate)).
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] if the actor has stopped.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn forge_leave(&self, origin: &str, incarnation: u64) -> Result<()> {
        self.send(SyncMessage::ForgeLeave(origin.to_owned(), incarnation))
    }

    /// Counters since the actor (or the cache owning it) was spawned.
    pub fn stats(&self) -> SyncStats {
        self.shared.counters.snapshot()
    }

    /// This actor's incarnation (random per start), as its envelopes carry it.
    pub(crate) fn incarnation(&self) -> u64 {
        self.outbox.incarnation()
    }

    /// This node's name, as the actor's envelopes carry it.
    pub(crate) fn node_name(&self) -> &str {
        self.outbox.node_name()
    }

    /// (This node's name, the actor's incarnation, the last sequence number it published.)
    pub(crate) fn published_through(&self) -> (String, u64, u64) {
        let outbox = &self.outbox;
        (
            outbox.node_name().to_owned(),
            outbox.incarnation(),
            outbox.last_seq(),
        )
    }

    /// Peer name → when (this process's clock, µs) anything last arrived from it.
    pub(crate) fn last_heard(&self) -> std::collections::HashMap<String, u64> {
        self.shared.status().last_heard
    }

    /// Whether every peer's lease is valid now (see [`SyncConfig::lease`]).
    pub fn health(&self) -> Health {
        self.shared.health(now_us())
    }

    /// The topic this actor serves.
    pub fn topic(&self) -> &Topic<M> {
        &self.topic
    }

    /// The actor, for supervision (linking, monitoring, stopping).
    pub fn actor(&self) -> ActorCell {
        self.actor.get_cell()
    }

    fn send(&self, message: SyncMessage<M>) -> Result<()> {
        self.actor
            .cast(message)
            .map_err(|e| Error::stopped_by("synchronization actor", e))
    }
}

fn closed() -> Error {
    Error::stopped("synchronization actor")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishing_from_the_callers_task_stops_with_the_actor() {
        let topic: Topic<u32> = Topic::new("publish-stops-with-the-actor");
        let sync = Synchronization::spawn(topic, "me@here").await.unwrap();
        let other = sync.clone();
        sync.publish(&1).unwrap();
        other.publish(&2).unwrap();
        assert_eq!(
            sync.stats().published,
            2,
            "both handles share one numbering"
        );

        sync.actor()
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(matches!(sync.publish(&3), Err(Error::ActorStopped { .. })));
        assert!(matches!(other.publish(&4), Err(Error::ActorStopped { .. })));
        assert_eq!(
            sync.stats().published,
            2,
            "nothing numbered after the leave"
        );
    }

    #[tokio::test]
    async fn a_typed_topic_delivers_nothing_under_a_name_it_did_not_prove_and_nothing_twice() {
        use crate::protocol::envelope::{encode, Body};
        let topic: Topic<u32> = Topic::new("typed-proven-origins");
        let sync = Synchronization::spawn(topic, "me@here").await.unwrap();
        let (tx, mut deliveries) = tokio::sync::mpsc::unbounded_channel();
        sync.subscribe(move |delivery| {
            let _ = tx.send(delivery);
        })
        .unwrap();
        let origin = "typed-writer@there";
        let ours = crate::sessions::stand_in(origin, 4242).await;
        let cast = |seq: u64, message: u32, proof: Option<Vec<u8>>| {
            let payload = postcard::to_allocvec(&message).unwrap();
            let body = Body::Publish { seq, payload };
            let bytes = encode("typed-proven-origins", origin, 7, &body).unwrap();
            sync.actor.cast(SyncMessage::Wire(bytes, proof)).unwrap();
        };
        let proof = || Some([7u128.to_le_bytes(), ours.to_le_bytes()].concat());
        let next = |deliveries: &mut tokio::sync::mpsc::UnboundedReceiver<Delivery<u32>>| {
            let mut next = None;
            while let Ok(delivery) = deliveries.try_recv() {
                if !matches!(delivery, Delivery::PossiblyMissed(MissCause::Restarted)) {
                    next = Some(delivery);
                    break;
                }
            }
            next
        };

        // A cast that does not prove its origin (a forgery, or a replay without the secret).
        cast(1, 666, None);
        // One that does, then the same one again.
        cast(1, 1, proof());
        cast(1, 1, proof());
        cast(2, 2, proof());
        // A replay of a proven message by someone without the secret.
        cast(2, 2, None);
        cast(3, 3, proof());
        // The actor takes casts in order: once the last is delivered, all were taken.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while tokio::time::Instant::now() < deadline {
            match next(&mut deliveries) {
                Some(Delivery::Message { message: 3, .. }) => break,
                Some(delivery) => seen.push(delivery),
                None => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        let messages: Vec<u32> = seen
            .iter()
            .filter_map(|d| match d {
                Delivery::Message { origin: o, message } => {
                    assert_eq!(o, origin);
                    Some(*message)
                }
                _ => None,
            })
            .collect();
        assert_eq!(messages, [1, 2], "delivered: {seen:?}");
        let unproven = seen
            .iter()
            .filter(|d| {
                matches!(d, Delivery::PossiblyMissed(MissCause::Unverified { origin: o }) if o == origin)
            })
            .count();
        assert_eq!(unproven, 2, "each unproven cast is reported: {seen:?}");
        assert_eq!(sync.stats().unverified, 2);
        assert_eq!(sync.stats().duplicates, 1);
    }

    #[tokio::test]
    async fn a_second_actor_for_a_topic_is_refused_until_the_first_stops() {
        let topic: Topic<u32> = Topic::new("one-actor-per-topic");
        let first = Synchronization::spawn(topic.clone(), "me@here")
            .await
            .unwrap();
        let second = Synchronization::spawn(topic.clone(), "me@here").await;
        assert!(
            matches!(&second, Err(Error::Config(reason)) if reason.contains("one-actor-per-topic")),
            "{second:?}"
        );
        first
            .actor()
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        let again = Synchronization::spawn(topic, "me@here").await;
        assert!(again.is_ok(), "{again:?}");
    }

    #[tokio::test]
    async fn a_message_too_large_for_an_envelope_is_an_error_and_is_not_numbered() {
        let topic: Topic<Vec<u8>> = Topic::new("too-large-to-publish");
        let sync = Synchronization::spawn(topic, "me@here").await.unwrap();
        sync.publish(&vec![7; 16]).unwrap();
        let huge = vec![7; crate::protocol::envelope::MAX_ENVELOPE_BYTES];
        assert!(matches!(sync.publish(&huge), Err(Error::Encode(_))));
        assert!(matches!(
            sync.publish_to(&huge, Recipients::RemoteAndLocal),
            Err(Error::Encode(_))
        ));
        assert_eq!(
            sync.stats().published,
            1,
            "the refused message took a number"
        );
        sync.publish(&vec![7; 16]).unwrap();
        assert_eq!(sync.stats().published, 2);
    }

    #[tokio::test]
    async fn a_confirmed_publish_goes_out_before_it_waits_and_any_timeout_is_taken() {
        let topic: Topic<Vec<u8>> = Topic::new("confirmed-from-the-caller");
        let sync = Synchronization::spawn(topic, "me@here").await.unwrap();
        // Polled once and dropped: the message is out, numbered on the caller's task, before
        // the actor runs (no heartbeat the actor sends afterwards can leave it out).
        let message = vec![1];
        let mut once = std::pin::pin!(sync.publish_confirmed(&message, Duration::from_secs(5)));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(once.as_mut(), &mut context).is_pending());
        assert_eq!(sync.stats().published, 1, "published through the mailbox");
        // No limit, and limits past the clock's range: no panic, no wrap into the past.
        for timeout in [Duration::MAX, Duration::from_secs(u64::MAX / 2)] {
            let confirmation = sync.publish_confirmed(&vec![2], timeout).await.unwrap();
            assert!(confirmation.is_complete(), "{confirmation:?}");
        }
        assert_eq!(sync.stats().published, 3);
    }

    #[tokio::test]
    async fn a_node_name_peers_could_not_read_back_is_refused() {
        for name in ["", "a/b@h"] {
            let topic: Topic<Vec<u8>> = Topic::new("names-peers-can-read");
            let spawned = Synchronization::spawn(topic, name).await;
            assert!(matches!(spawned, Err(Error::Config(_))), "{name:?}");
        }
    }
}

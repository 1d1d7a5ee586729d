//! The Synchronization actor's mailbox type and its hand-written wire mapping.
//!
//! Every message a peer can send us arrives through [`ractor::Message::deserialize`], which
//! here never fails: our envelope becomes [`SyncMessage::Wire`] and anything else becomes
//! [`SyncMessage::Foreign`]. ractor would silently drop a message whose `deserialize` fails;
//! mapping everything to a variant lets the actor count and repair instead.

use std::sync::Arc;

use ractor::message::{BoxedDowncastErr, SerializedMessage};

use super::Confirmation;
use crate::delivery::Delivery;
use crate::protocol::envelope::Member;

/// The one variant name our envelopes travel under; crate-unique so that no other actor's
/// variant can be mis-decoded as ours.
pub(crate) const WIRE_VARIANT: &str = "ractor_cache_sync::Envelope";

/// A local subscriber callback.
pub(crate) type Subscriber<M> = Arc<dyn Fn(Delivery<M>) + Send + Sync>;

/// Hands whatever a publisher accepted but has not published yet (a cache's coalescing batch)
/// to the given function, which publishes it and says whether it could. The actor calls it
/// before every heartbeat and before its leave, so that a heartbeat covers every message
/// accepted before it.
pub(crate) type Pending<M> = Arc<dyn Fn(&mut dyn FnMut(&M) -> bool) + Send + Sync>;

/// How a node-level Synchronization actor takes part in membership gossip: what to put in
/// each heartbeat, and where to report what peers' heartbeats and leaves say.
pub(crate) trait Gossip: Send + Sync {
    /// The members this node knows, for the next heartbeat.
    fn members(&self) -> Vec<Member>;
    /// A heartbeat arrived from `origin` (at `incarnation`) listing these members.
    fn heard(&self, origin: &str, incarnation: u64, members: &[Member]);
    /// `origin` (at `incarnation`) left cleanly.
    fn left(&self, origin: &str, incarnation: u64);
}

/// Messages of the Synchronization actor.
pub(crate) enum SyncMessage<M> {
    /// Envelope bytes from a peer (or injected locally for fault testing), with the cast's
    /// metadata: the session token that tells whether it came from the origin it names
    /// (see `sessions::verify`).
    Wire(Vec<u8>, Option<Vec<u8>>),
    /// A remote message that is not one of ours: the name of its variant.
    Foreign(String),
    /// Publish an already-encoded payload and hand `local` to the local subscribers.
    PublishWithLocal { payload: Vec<u8>, local: M },
    /// Add a local subscriber.
    Subscribe(Subscriber<M>),
    /// Time to send heartbeats and forget silent peers.
    Tick,
    /// Many publishes went out since the backlog bound was last checked.
    CheckBacklog,
    /// Fault injection: after each heartbeat, forge one from this origin (name, incarnation).
    #[cfg(feature = "fault-injection")]
    Impersonate(String, u64),
    /// Fault injection: forge a clean leave from this origin (name, incarnation).
    #[cfg(feature = "fault-injection")]
    ForgeLeave(String, u64),
    /// Fault injection: the node-level heartbeats list this many made-up members too.
    #[cfg(feature = "fault-injection")]
    MadeUpMembers(usize),
    /// Report which peers applied the message published as `seq` (from the caller's task)
    /// within `timeout` (`Duration::MAX`: no limit).
    AwaitApplied {
        seq: u64,
        timeout: std::time::Duration,
        reply: ractor::RpcReplyPort<Confirmation>,
    },
}

impl<M: Send + 'static> ractor::Message for SyncMessage<M> {
    fn serializable() -> bool {
        true
    }

    fn serialize(self) -> Result<SerializedMessage, BoxedDowncastErr> {
        match self {
            Self::Wire(args, metadata) => Ok(SerializedMessage::Cast {
                variant: WIRE_VARIANT.to_owned(),
                args,
                metadata,
            }),
            _ => Err(BoxedDowncastErr),
        }
    }

    fn deserialize(message: SerializedMessage) -> Result<Self, BoxedDowncastErr> {
        Ok(match message {
            SerializedMessage::Cast {
                variant,
                args,
                metadata,
            } if variant == WIRE_VARIANT => Self::Wire(args, metadata),
            SerializedMessage::Cast { variant, .. } => Self::Foreign(variant),
            SerializedMessage::Call { variant, .. } => Self::Foreign(format!("call {variant}")),
            SerializedMessage::CallReply(..) => Self::Foreign("call reply".to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ractor::Message;

    #[test]
    fn envelope_bytes_round_trip_through_ractor_serialization() {
        let wire = SyncMessage::<u8>::Wire(vec![1, 2, 3], Some(vec![4; 32]))
            .serialize()
            .unwrap();
        assert!(matches!(
            SyncMessage::<u8>::deserialize(wire),
            Ok(SyncMessage::Wire(b, Some(t))) if b == [1, 2, 3] && t == [4; 32]
        ));
    }

    #[test]
    fn foreign_messages_are_kept_for_counting() {
        let foreign = SerializedMessage::Cast {
            variant: "Ping".into(),
            args: vec![],
            metadata: None,
        };
        assert!(
            matches!(SyncMessage::<u8>::deserialize(foreign), Ok(SyncMessage::Foreign(v)) if v == "Ping")
        );
    }

    #[test]
    fn local_only_messages_never_leave_the_node() {
        let publish = SyncMessage::<u8>::PublishWithLocal {
            payload: vec![],
            local: 1,
        };
        assert!(publish.serialize().is_err());
    }
}

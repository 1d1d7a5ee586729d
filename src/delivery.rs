//! What a topic's local subscribers receive: a message from a peer, or word that messages
//! may have been missed (and why).

/// What a local subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery<M> {
    /// A message published on another node (or on this one, with
    /// `Recipients::RemoteAndLocal`).
    Message {
        /// Name of the publishing node (`name@host`), as proven by the cast that carried the
        /// message (it echoed the secret this node sends over its session with that node).
        origin: String,
        /// The decoded message.
        message: M,
    },
    /// This node may have missed one or more messages of the topic: repair (for a cache,
    /// invalidate what it holds).
    PossiblyMissed(MissCause),
}

/// Why a subscriber may have missed messages.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissCause {
    /// Sequence numbers from `origin` skipped `missed` messages.
    Gap {
        /// The node whose messages went missing.
        origin: String,
        /// How many.
        missed: u64,
    },
    /// `origin` restarted; what it sent before it was connected again is unknown.
    PeerRestarted {
        /// The restarted node.
        origin: String,
    },
    /// Bytes from a peer could not be decoded (garbage, an unknown envelope version from a
    /// newer build, a message of another topic or type).
    Undecodable {
        /// What was wrong with them.
        reason: String,
    },
    /// A peer's Synchronization actor joined the topic (a new or re-established session):
    /// whatever it published while disconnected never reached this node.
    PeerJoined,
    /// This node's own Synchronization actor (re)started: it was not listening for a while.
    Restarted,
    /// A message naming `origin` did not prove it came from there, and a typed topic delivers
    /// nothing under a name it did not prove: it was dropped. Either a forgery by a peer with
    /// the cluster's credentials, or, on a plaintext cluster, one of `origin`'s first casts of
    /// a session (sent before it had this node's secret to echo).
    Unverified {
        /// The node the message claimed to come from.
        origin: String,
    },
    /// `origin` was silent for longer than `forget_after` and was dropped from the peer set.
    PeerForgotten {
        /// The forgotten node.
        origin: String,
    },
}

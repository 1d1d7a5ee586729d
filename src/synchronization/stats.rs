//! Counters of one Synchronization actor, shared lock-free with its handle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a [`Synchronization`](crate::Synchronization) actor's counters since it was
/// spawned (they survive a restart of the actor by its cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncStats {
    /// Messages published by this node (each sent once to every remote member).
    pub published: u64,
    /// Envelope copies handed to ractor for remote members.
    pub envelopes_sent: u64,
    /// Messages from peers decoded and delivered to local subscribers.
    pub received: u64,
    /// Envelopes seen twice (or out of date) and dropped.
    pub duplicates: u64,
    /// Undecodable bytes, unknown envelope versions, unknown topics and foreign messages.
    pub decode_failures: u64,
    /// Sequence gaps detected (each is one or more lost messages).
    pub gaps: u64,
    /// Times a peer was seen with a new incarnation (it restarted).
    pub peer_restarts: u64,
    /// Times a peer's Synchronization actor joined the topic (new or re-established
    /// sessions).
    pub peer_joins: u64,
    /// Clean leaves announced by peers.
    pub peer_leaves: u64,
    /// Silent peers forgotten after `forget_after` (each causes a repair).
    pub peers_forgotten: u64,
    /// Times a peer's unacknowledged backlog passed `max_backlog` and its session was closed.
    pub backlog_overflows: u64,
    /// Times the leases went from valid to expired (bounded-mode reads then bypass the cache).
    pub lease_expiries: u64,
    /// Times subscribers were told they may have missed messages (gap, restart, decode
    /// failure, peer joined).
    pub possibly_missed: u64,
    /// Envelopes dropped because they named an origin this node has neither a session with
    /// nor in its peer table (forged, or from a peer whose session already closed): the peer
    /// table only ever holds origins that had a session.
    pub unknown_origins: u64,
    /// Envelopes whose cast did not prove it came from the origin it names (it did not echo
    /// the secret this node sends over its session with that origin): a peer's first casts
    /// of each session, before it has had one of ours, and forgeries. Their invalidations are
    /// applied; they renew no lease and move no sequence number.
    pub unverified: u64,
}

#[derive(Debug, Default)]
pub(crate) struct SyncCounters {
    pub(crate) published: AtomicU64,
    pub(crate) envelopes_sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) decode_failures: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) peer_restarts: AtomicU64,
    pub(crate) peer_joins: AtomicU64,
    pub(crate) peer_leaves: AtomicU64,
    pub(crate) peers_forgotten: AtomicU64,
    pub(crate) lease_expiries: AtomicU64,
    pub(crate) backlog_overflows: AtomicU64,
    pub(crate) possibly_missed: AtomicU64,
    pub(crate) unknown_origins: AtomicU64,
    pub(crate) unverified: AtomicU64,
}

impl SyncCounters {
    pub(crate) fn snapshot(&self) -> SyncStats {
        SyncStats {
            published: self.published.load(Relaxed),
            envelopes_sent: self.envelopes_sent.load(Relaxed),
            received: self.received.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            decode_failures: self.decode_failures.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            peer_restarts: self.peer_restarts.load(Relaxed),
            peer_joins: self.peer_joins.load(Relaxed),
            peer_leaves: self.peer_leaves.load(Relaxed),
            peers_forgotten: self.peers_forgotten.load(Relaxed),
            lease_expiries: self.lease_expiries.load(Relaxed),
            backlog_overflows: self.backlog_overflows.load(Relaxed),
            possibly_missed: self.possibly_missed.load(Relaxed),
            unknown_origins: self.unknown_origins.load(Relaxed),
            unverified: self.unverified.load(Relaxed),
        }
    }
}

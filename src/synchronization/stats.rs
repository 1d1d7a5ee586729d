//! Counters of one Synchronization actor, shared lock-free with its handle.

use std::sync::atomic::AtomicU64;

crate::counter::counter_table! {
    /// A snapshot of a [`Synchronization`](crate::Synchronization) actor's counters since it was
    /// spawned (they survive a restart of the actor by its cache).
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct SyncStats from SyncCounters {
        /// Messages published by this node (each sent once to every remote member).
        published: AtomicU64 => "ractor_cache_sync_published_total",
        /// Envelope copies handed to ractor for remote members.
        envelopes_sent: AtomicU64 => "ractor_cache_sync_envelopes_sent_total",
        /// Messages from peers decoded and delivered to local subscribers.
        received: AtomicU64 => "ractor_cache_sync_envelopes_received_total",
        /// Envelopes seen twice (or out of date) and dropped.
        duplicates: AtomicU64 => "ractor_cache_sync_duplicates_total",
        /// Undecodable bytes, unknown envelope versions, unknown topics and foreign messages.
        decode_failures: AtomicU64 => "ractor_cache_sync_decode_failures_total",
        /// Sequence gaps detected (each is one or more lost messages).
        gaps: AtomicU64 => "ractor_cache_sync_gaps_total",
        /// Times a peer was seen with a new incarnation (it restarted).
        peer_restarts: AtomicU64 => "ractor_cache_sync_peer_restarts_total",
        /// Times a peer's Synchronization actor joined the topic (new or re-established
        /// sessions).
        peer_joins: AtomicU64 => "ractor_cache_sync_peer_joins_total",
        /// Clean leaves announced by peers.
        peer_leaves: AtomicU64 => "ractor_cache_sync_peer_leaves_total",
        /// Silent peers forgotten after `forget_after` (each causes a repair).
        peers_forgotten: AtomicU64 => "ractor_cache_sync_peers_forgotten_total",
        /// Times a peer's unacknowledged backlog passed `max_backlog` and its session was closed.
        backlog_overflows: AtomicU64 => "ractor_cache_sync_backlog_overflows_total",
        /// Times the leases went from valid to expired (bounded-mode reads then bypass the cache).
        lease_expiries: AtomicU64 => "ractor_cache_sync_lease_expiries_total",
        /// Times subscribers were told they may have missed messages (gap, restart, decode
        /// failure, peer joined).
        possibly_missed: AtomicU64 => "ractor_cache_sync_possibly_missed_total",
        /// Envelopes dropped because they named an origin this node has neither a session with
        /// nor in its peer table (forged, or from a peer whose session already closed): the peer
        /// table only ever holds origins that had a session.
        unknown_origins: AtomicU64 => "ractor_cache_sync_unknown_origins_total",
        /// Envelopes whose cast did not prove it came from the origin it names (it did not echo
        /// the secret this node sends over its session with that origin): a peer's first casts
        /// of each session, before it has had one of ours, and forgeries. A cache applies their
        /// invalidations, a typed topic drops them; they renew no lease and move no sequence
        /// number.
        unverified: AtomicU64 => "ractor_cache_sync_unverified_total",
        /// Node-level heartbeats too large for one envelope (many topics × many peers), sent as
        /// several, each with the members and echoes and a share of the topics' heartbeats.
        heartbeats_split: AtomicU64 => "ractor_cache_sync_heartbeats_split_total",
        /// Topic heartbeats left out of a node-level heartbeat because even alone they did not
        /// fit beside its members and echoes (that topic's peers then bypass it: safe).
        bundled_dropped: AtomicU64 => "ractor_cache_sync_bundled_dropped_total",
    }
    extra {
    }
}

impl SyncCounters {
    pub(crate) fn snapshot(&self) -> SyncStats {
        self.read_into(SyncStats::default())
    }
}

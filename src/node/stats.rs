//! The node's counters, declared once (see [`crate::counter`]): bumped by the watchdog, the
//! dialers and the accept loop; read by [`Node::stats`](crate::Node::stats) and published as
//! metrics by the watchdog.

use std::sync::atomic::AtomicU64;

crate::counter::counter_table! {
    /// A snapshot of a [`Node`](crate::Node)'s counters since it started.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct NodeStats from NodeCounters {
        /// Silent peers declared down (their sessions closed, then dialled again).
        peers_declared_down: AtomicU64 => "ractor_cache_sync_peers_declared_down_total",
        /// Connections, dialled or accepted, closed because their session did not become
        /// ready within the handshake timeout (a stopped peer whose kernel still accepts
        /// connections, an idle or slow client). Each would otherwise hold a socket.
        handshakes_timed_out: AtomicU64 => "ractor_cache_sync_handshakes_timed_out_total",
        /// Failed accepts on the listen address, most often the process out of file
        /// descriptors. The listener backs off after each (10 ms, doubling to 1 s, reset by
        /// the next accepted connection), so this grows by at most about 100 a second however
        /// many connections wait.
        accept_errors: AtomicU64 => "ractor_cache_sync_accept_errors_total",
        /// Times the system was found to have been suspended (the clock that counts suspended
        /// time moved more than 50 ms past the one leases use), or the coarse clock hits read
        /// was found further behind than they allow for: each time every lease gate
        /// closed until heartbeats sent after the wake-up renewed it, and every cache checked
        /// its entries again.
        suspensions: AtomicU64 => "ractor_cache_sync_suspensions_total",
        /// Members reported by peers' gossip and refused: a name or address too long, the
        /// membership table full, or the reporter's share of members this node has not
        /// reached used up (what a credentialed peer can add is bounded).
        members_refused: AtomicU64 => "ractor_cache_sync_members_refused_total",
        /// Connections this node dialled to a peer (configured, discovered or learnt from
        /// gossip), whatever became of them. Still while the mesh is whole: a peer with a
        /// ready session, whoever opened it, is not dialled.
        dials: AtomicU64 => "ractor_cache_sync_dials_total",
    }
    extra {
        /// Peers with a ready session now.
        peers_up: u64,
    }
}

impl NodeCounters {
    pub(crate) fn snapshot(&self, peers_up: usize) -> NodeStats {
        self.read_into(NodeStats {
            peers_up: peers_up as u64,
            ..NodeStats::default()
        })
    }
}

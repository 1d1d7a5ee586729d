//! Declares silent peers down. ractor_cluster never notices a hung or silently partitioned
//! peer (its TCP session stays up until the kernel gives up, ~15 minutes), so every node
//! heartbeats on an internal topic; a peer with a ready session that has not been heard from
//! for the peer timeout gets its session closed, which removes its process-group members at
//! once. Its dialer (or the peer's) then dials again with backoff.
//!
//! It also closes every connection whose session has not become ready within the handshake
//! timeout after it opened, dialled or accepted: a stopped peer whose kernel still completes
//! TCP connections, an idle or slow-loris client. Each would otherwise hold a socket for good.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorId;
use tokio::sync::watch;

use super::membership::Membership;
use super::peers::{Handshakes, Sessions};
use super::stats::{NodeCounters, NodeStats};
use crate::clock::now_us;
use crate::counter::{add, bump};
use crate::synchronization::Bundle;

pub(crate) struct Watchdog {
    pub(crate) liveness: Arc<super::liveness::Liveness>,
    pub(crate) sessions: watch::Receiver<Sessions>,
    /// Sessions that opened and are not ready yet.
    pub(crate) handshakes: Handshakes,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// A session not ready this long after it opened is closed.
    pub(crate) handshake_timeout: Duration,
    /// The node's counters: bumped here (peers declared down, handshakes timed out,
    /// suspensions) and published here.
    pub(crate) counters: Arc<NodeCounters>,
    /// Forgets unreachable members and dials the others, once per heartbeat.
    pub(crate) membership: Arc<Membership>,
    /// The node's topics, told when the clock missed time, and ticked every interval.
    pub(crate) bundle: Arc<Bundle>,
}

/// A suspension shorter than this is not acted on: far under any lease, and over the jitter
/// between two clock readings on a loaded machine.
const SUSPENSION_THRESHOLD_US: u64 = 50_000;

impl Watchdog {
    /// Runs until the node shuts down (the task is aborted then).
    pub(crate) async fn run(self) {
        let timeout = self.timeout.as_micros() as u64;
        let mut closed: HashSet<ActorId> = HashSet::new();
        // When each peer with a session was last heard from, kept here rather than only in the
        // node-level actor: one spawned again after a failure starts knowing nothing, and its
        // peers' sessions would look silent since they opened.
        let mut heard: HashMap<String, u64> = HashMap::new();
        // Half a period after the node-level heartbeat, which publishes when each peer was
        // last heard: at the same instant, whichever of the two ran first would decide whether
        // a peer looked silent for a period longer.
        let mut ticks = crate::clock::aligned_interval(self.interval, self.interval / 2);
        let mut sleep = crate::clock::SuspendDetector::default();
        loop {
            ticks.tick().await;
            let now = now_us();
            if let Some(behind) = crate::clock::check_hit_clock() {
                // Hits may have judged leases and expiry by a time up to this far behind:
                // end every lease (as for a suspension), and have hits read the precise clock.
                tracing::error!(
                    behind_ms = behind / 1000,
                    "the coarse clock fell behind: hits now read the monotonic clock; closing every lease gate and repairing"
                );
                bump(&self.counters.suspensions);
                self.bundle.slept();
            }
            let slept = crate::clock::boottime_us()
                .and_then(|boot| sleep.observe(now, boot, SUSPENSION_THRESHOLD_US));
            if let Some(slept) = slept {
                // Leases are kept on a clock that did not count the sleep: a lease taken before
                // it would look valid for as long again after it.
                tracing::warn!(
                    slept_ms = slept / 1000,
                    "the system was suspended: closing every lease gate and repairing"
                );
                bump(&self.counters.suspensions);
                self.bundle.slept();
            }
            // The topics whose heartbeats the node drives, half an interval after the
            // node-level heartbeat that carries them.
            self.bundle.tick_topics();
            let handshake = self.handshake_timeout.as_micros() as u64;
            self.membership.tick();
            let stuck = self
                .handshakes
                .close_older_than(now.saturating_sub(handshake));
            add(&self.counters.handshakes_timed_out, stuck as u64);
            let now_heard = self
                .liveness
                .current()
                .map(|liveness| liveness.last_heard())
                .unwrap_or_default();
            for (peer, at) in now_heard {
                let last = heard.entry(peer).or_insert(at);
                *last = (*last).max(at);
            }
            let sessions = self.sessions.borrow().clone();
            heard.retain(|peer, _| sessions.values().any(|s| s.name == *peer));
            publish_node(&self.counters.snapshot(super::peers::names(&sessions).len()));
            if let Some(liveness) = self.liveness.current() {
                // The node-level topic's own counters (heartbeats split, bundled dropped...).
                let topic = liveness.topic().name().to_owned();
                for (_, metric, value) in liveness.stats().counters() {
                    metrics::counter!(metric, "topic" => topic.clone()).absolute(value);
                }
            }
            closed.retain(|id| sessions.contains_key(id));
            for (id, session) in sessions {
                let last = heard.get(&session.name).copied().unwrap_or(0);
                let silent_for = now.saturating_sub(last.max(session.ready_at));
                if silent_for > timeout && closed.insert(id) {
                    tracing::warn!(peer = %session.name, silent_ms = silent_for / 1000, "peer silent: closing its session");
                    bump(&self.counters.peers_declared_down);
                    session.actor.stop(Some("peer silent".to_owned()));
                }
            }
        }
    }
}

/// Publishes the node's figures.
fn publish_node(stats: &NodeStats) {
    metrics::gauge!("ractor_cache_sync_peers_up").set(stats.peers_up as f64);
    for (_, metric, value) in stats.counters() {
        metrics::counter!(metric).absolute(value);
    }
}

//! Declares silent peers down. ractor_cluster never notices a hung or silently partitioned
//! peer (its TCP session stays up until the kernel gives up, ~15 minutes), so every node
//! heartbeats on an internal topic; a peer with a ready session that has not been heard from
//! for the peer timeout gets its session closed, which removes its process-group members at
//! once. Its dialer (or the peer's) then dials again with backoff.
//!
//! It also closes every connection whose session has not become ready within the handshake
//! timeout after it opened, dialled or accepted: a stopped peer whose kernel still completes
//! TCP connections, an idle or slow-loris client. Each would otherwise hold a socket for good.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorId;
use tokio::sync::watch;

use super::membership::Membership;
use super::peers::{Handshakes, Sessions};
use crate::clock::now_us;

pub(crate) struct Watchdog {
    pub(crate) liveness: Arc<super::liveness::Liveness>,
    pub(crate) sessions: watch::Receiver<Sessions>,
    /// Sessions that opened and are not ready yet.
    pub(crate) handshakes: Handshakes,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
    /// A session not ready this long after it opened is closed.
    pub(crate) handshake_timeout: Duration,
    pub(crate) declared_down: Arc<AtomicU64>,
    /// Counts the sessions closed because their handshake did not finish in time.
    pub(crate) timed_out: Arc<AtomicU64>,
    /// Failed accepts on the listener, published with the node's figures.
    pub(crate) accept_errors: Arc<AtomicU64>,
    /// Forgets unreachable members and dials the others, once per heartbeat.
    pub(crate) membership: Arc<Membership>,
    /// Counts the times the clock was found to have missed time (a suspension).
    pub(crate) suspensions: Arc<AtomicU64>,
}

/// A suspension shorter than this is not acted on: far under any lease, and over the jitter
/// between two clock readings on a loaded machine.
const SUSPENSION_THRESHOLD_US: u64 = 50_000;

impl Watchdog {
    /// Runs until the node shuts down (the task is aborted then).
    pub(crate) async fn run(self) {
        let timeout = self.timeout.as_micros() as u64;
        let mut closed: HashSet<ActorId> = HashSet::new();
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sleep = crate::clock::SuspendDetector::default();
        loop {
            ticks.tick().await;
            let now = now_us();
            let slept = crate::clock::boottime_us()
                .and_then(|boot| sleep.observe(now, boot, SUSPENSION_THRESHOLD_US));
            if let Some(slept) = slept {
                // Leases are kept on a clock that did not count the sleep: a lease taken before
                // it would look valid for as long again after it.
                tracing::warn!(
                    slept_ms = slept / 1000,
                    "the system was suspended: closing every lease gate and repairing"
                );
                self.suspensions.fetch_add(1, Ordering::Relaxed);
                crate::synchronization::slept();
            }
            let handshake = self.handshake_timeout.as_micros() as u64;
            self.membership.tick();
            let stuck = self
                .handshakes
                .close_older_than(now.saturating_sub(handshake));
            self.timed_out.fetch_add(stuck as u64, Ordering::Relaxed);
            let heard = self
                .liveness
                .current()
                .map(|liveness| liveness.last_heard())
                .unwrap_or_default();
            let sessions = self.sessions.borrow().clone();
            let declared = self.declared_down.load(Ordering::Relaxed);
            let timed_out = self.timed_out.load(Ordering::Relaxed);
            let accept_errors = self.accept_errors.load(Ordering::Relaxed);
            let counts = [declared, timed_out, accept_errors];
            publish_node(super::peers::names(&sessions).len(), counts);
            closed.retain(|id| sessions.contains_key(id));
            for (id, session) in sessions {
                let last = heard.get(&session.name).copied().unwrap_or(0);
                let silent_for = now.saturating_sub(last.max(session.ready_at));
                if silent_for > timeout && closed.insert(id) {
                    tracing::warn!(peer = %session.name, silent_ms = silent_for / 1000, "peer silent: closing its session");
                    self.declared_down.fetch_add(1, Ordering::Relaxed);
                    session.actor.stop(Some("peer silent".to_owned()));
                }
            }
        }
    }
}

/// Publishes the node's peer figures.
fn publish_node(peers_up: usize, [declared_down, timed_out, accept_errors]: [u64; 3]) {
    metrics::gauge!("ractor_cache_sync_peers_up").set(peers_up as f64);
    metrics::counter!("ractor_cache_sync_peers_declared_down_total").absolute(declared_down);
    metrics::counter!("ractor_cache_sync_handshakes_timed_out_total").absolute(timed_out);
    metrics::counter!("ractor_cache_sync_accept_errors_total").absolute(accept_errors);
}

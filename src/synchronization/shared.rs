//! State one Synchronization actor shares with readers: counters, the topic's lease gate
//! (one atomic read per cache read; see [`crate::gate`]) and a status snapshot for liveness
//! reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::stats::SyncCounters;
use crate::gate::LeaseGate;
use crate::health::Health;
use crate::protocol::progress::Applied;

#[derive(Debug, Default)]
pub(crate) struct SyncShared {
    pub(crate) counters: SyncCounters,
    /// The topic's lease gate, which this actor computes and caches read.
    pub(crate) gate: Arc<LeaseGate>,
    status: Mutex<TopicStatus>,
    /// Per origin: (incarnation, highest sequence number applied here or covered by a
    /// repair), published by the actor after each delivery; what write tokens wait for.
    applied: Mutex<Applied>,
    /// Signalled after `applied` changes.
    pub(crate) applied_changed: tokio::sync::Notify,
}

/// Refreshed by the actor on every heartbeat; read by reports, never by reads.
#[derive(Debug, Default, Clone)]
pub(crate) struct TopicStatus {
    /// Peer name → when (µs) anything last arrived from it (kept on the node-level topic
    /// only, for the node's watchdog).
    pub(crate) last_heard: HashMap<String, u64>,
}

impl SyncShared {
    pub(crate) fn update(&self, change: impl FnOnce(&mut TopicStatus)) {
        change(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    pub(crate) fn status(&self) -> TopicStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records what this node has applied of `origin` (see [`Applied::set`]) and wakes the
    /// readers waiting for it.
    pub(crate) fn set_applied(&self, origin: &str, incarnation: u64, seq: u64) {
        let changed = self.applied().set(origin, incarnation, seq);
        if changed {
            self.applied_changed.notify_waiters();
        }
    }

    /// Whether this node has applied (or a repair covered) what `origin` published at
    /// `incarnation` up to `seq`.
    pub(crate) fn covers(&self, origin: &str, incarnation: u64, seq: u64) -> bool {
        self.applied().covers(origin, incarnation, seq)
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        self.applied.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn health(&self, now: u64) -> Health {
        self.gate.health(now)
    }
}

//! State one Synchronization actor shares with readers: counters, the topic's lease gate
//! (one atomic read per cache read; see [`crate::gate`]) and a status snapshot for liveness
//! reports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::stats::SyncCounters;
use crate::gate::LeaseGate;
use crate::health::Health;

#[derive(Debug, Default)]
pub(crate) struct SyncShared {
    pub(crate) counters: SyncCounters,
    /// The topic's lease gate, which this actor computes and caches read.
    pub(crate) gate: Arc<LeaseGate>,
    status: Mutex<TopicStatus>,
}

/// Refreshed by the actor on every heartbeat; read by reports, never by reads.
#[derive(Debug, Default, Clone)]
pub(crate) struct TopicStatus {
    /// Peer name → when (µs) anything last arrived from it.
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

    pub(crate) fn health(&self, now: u64) -> Health {
        self.gate.health(now)
    }
}

//! State one Synchronization actor shares with readers: counters, the lease gate (one atomic
//! read per cache read) and a status snapshot for health and liveness reports.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::stats::SyncCounters;
use crate::health::Health;

#[derive(Debug, Default)]
pub(crate) struct SyncShared {
    pub(crate) counters: SyncCounters,
    /// Our clock (µs): cached reads are safe until then. Stored with `Release` after any repair
    /// it depends on, so a reader that sees it open also sees the repair.
    valid_until: AtomicU64,
    /// Our clock (µs) when the actor started computing `valid_until`: a gate computed before
    /// the node's membership gate last opened may not count every member.
    refreshed_at: AtomicU64,
    status: Mutex<TopicStatus>,
    /// Signalled when the lease gate closes (a peer's lease ran out): wakes the cache's
    /// revalidation, which keeps entries checked against the source while it stays closed.
    pub(crate) gate_closed: tokio::sync::Notify,
}

/// Refreshed by the actor on every change and heartbeat; read by reports, never by reads.
#[derive(Debug, Default, Clone)]
pub(crate) struct TopicStatus {
    /// Why leases are not valid, when they are not.
    pub(crate) weakest: Option<String>,
    /// When (µs) the last repair happened.
    pub(crate) last_repair: u64,
    /// Heartbeat interval (µs), to tell a recent repair.
    pub(crate) heartbeat: u64,
    /// Peer name → when (µs) anything last arrived from it.
    pub(crate) last_heard: HashMap<String, u64>,
}

impl SyncShared {
    pub(crate) fn leases_valid(&self, now: u64) -> bool {
        now < self.valid_until.load(Ordering::Acquire)
    }

    /// Whether leases are valid now on a gate computed at or after `since` (our clock, µs;
    /// `u64::MAX`: never).
    pub(crate) fn leases_valid_since(&self, now: u64, since: u64) -> bool {
        self.refreshed_at.load(Ordering::Acquire) >= since && self.leases_valid(now)
    }

    /// Stores the gate computed from what was known at `computed_at`.
    pub(crate) fn set_valid_until(&self, until: u64, computed_at: u64) {
        self.valid_until.store(until, Ordering::Release);
        self.refreshed_at.store(computed_at, Ordering::Release);
    }

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
        let status = self.status();
        if !self.leases_valid(now) {
            let reason = status
                .weakest
                .unwrap_or_else(|| "no valid lease".to_owned());
            return Health::Bypassing { reason };
        }
        if status.last_repair > 0 && now.saturating_sub(status.last_repair) < status.heartbeat {
            return Health::Repairing;
        }
        Health::Healthy
    }
}

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
    /// Per origin: (incarnation, highest sequence number applied here or covered by a
    /// repair), published by the actor after each delivery; what write tokens wait for.
    applied: Mutex<HashMap<String, Progress>>,
    /// Signalled after `applied` changes.
    pub(crate) applied_changed: tokio::sync::Notify,
}

/// How many superseded incarnations of one origin are remembered.
const SUPERSEDED_KEPT: usize = 8;

/// What this node has applied of one origin.
#[derive(Debug)]
struct Progress {
    incarnation: u64,
    seq: u64,
    /// Earlier incarnations, replaced by this one: a repair covered all they published.
    superseded: Vec<u64>,
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

    /// Records what this node has applied of `origin` (or a repair covered) and wakes the
    /// readers waiting for it. A higher incarnation (a later start: see `random_incarnation`)
    /// supersedes the one before, whose replacement caused a repair that covers whatever it
    /// published. A late message of an older incarnation changes nothing here: taking it as
    /// new would call the live incarnation covered. (Incarnations of builds that drew them at
    /// random may then be ignored: a read after their tokens waits for its deadline, never
    /// answers older.)
    pub(crate) fn set_applied(&self, origin: &str, incarnation: u64, seq: u64) {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let progress = applied.entry(origin.to_owned()).or_insert(Progress {
            incarnation,
            seq: 0,
            superseded: Vec::new(),
        });
        if incarnation < progress.incarnation {
            return;
        }
        if progress.incarnation != incarnation {
            progress.superseded.push(progress.incarnation);
            if progress.superseded.len() > SUPERSEDED_KEPT {
                progress.superseded.remove(0);
            }
            progress.incarnation = incarnation;
            progress.seq = seq;
        } else if seq > progress.seq {
            progress.seq = seq;
        } else {
            return;
        }
        drop(applied);
        self.applied_changed.notify_waiters();
    }

    /// Whether this node has applied (or a repair covered) what `origin` published at
    /// `incarnation` up to `seq`.
    pub(crate) fn covers(&self, origin: &str, incarnation: u64, seq: u64) -> bool {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        applied.get(origin).is_some_and(|p| {
            (p.incarnation == incarnation && p.seq >= seq) || p.superseded.contains(&incarnation)
        })
    }

    pub(crate) fn health(&self, now: u64) -> Health {
        self.gate.health(now)
    }
}

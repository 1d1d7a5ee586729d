//! Heartbeat and lease settings of a topic.

use std::time::Duration;

use crate::clock::at_most_30_days;
use crate::error::{Error, Result};
use crate::gate::LeaseGate;

/// How a topic's Synchronization actors keep each other honest.
///
/// ```
/// use std::time::Duration;
/// use ractor_cache_sync::SyncConfig;
/// let config = SyncConfig::default()
///     .heartbeat(Duration::from_millis(100))
///     .lease(Duration::from_millis(500));
/// assert_ne!(config, SyncConfig::default());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncConfig {
    heartbeat: Duration,
    lease: Duration,
    forget_after: Duration,
    max_backlog: u64,
}

/// Default bound on unacknowledged bytes per peer.
const DEFAULT_MAX_BACKLOG: u64 = 32 * 1024 * 1024;

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(200),
            lease: Duration::from_secs(1),
            forget_after: Duration::from_secs(30),
            max_backlog: DEFAULT_MAX_BACKLOG,
        }
    }
}

impl SyncConfig {
    /// How often each node sends every peer a heartbeat on the topic (carrying its last
    /// sequence number and echoing the peer's last heartbeat stamp). Default 200 ms; at least
    /// 1 ms, and at most a third of the lease.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// How long a peer's confirmation keeps cached reads safe: the staleness bound of
    /// [`Mode::Bounded`](crate::Mode::Bounded). Default 1 s; at least 3 heartbeats.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long the state of a peer that fell silent (crashed, partitioned) is kept in the
    /// topic's peer set: its sequence numbers, so that it can return without a repair. Once
    /// it is forgotten the cache is repaired. This frees memory and never reopens the serve
    /// rule: the node keeps a vanished member, and caches keep checking their entries against
    /// the source, until there is evidence it is gone (see
    /// [`Node::members`](crate::Node::members)). Default 30 s; at least the lease.
    pub fn forget_after(mut self, after: Duration) -> Self {
        self.forget_after = after;
        self
    }

    /// How many bytes of this node's messages a peer may leave unacknowledged (peers
    /// acknowledge in their heartbeats). Past that — a stopped or hopelessly slow peer — its
    /// session is closed, which drops everything queued for it; it repairs when it reconnects.
    /// This bounds the memory ractor_cluster's unbounded send queues can take. Default 32 MiB;
    /// at least 1.
    pub fn max_backlog(mut self, bytes: u64) -> Self {
        self.max_backlog = bytes;
        self
    }

    /// The backlog bound in bytes.
    pub(crate) fn max_backlog_bytes(&self) -> u64 {
        self.max_backlog
    }

    /// The heartbeat interval.
    pub(crate) fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// The lease.
    pub(crate) fn lease_duration(&self) -> Duration {
        self.lease
    }

    /// The forget-after duration.
    pub(crate) fn forget_after_duration(&self) -> Duration {
        self.forget_after
    }

    /// Publishes the lease and heartbeat interval (µs) into the topic's lease gate, the one
    /// copy readers use.
    pub(crate) fn configure(&self, gate: &LeaseGate) {
        gate.configure(micros(self.lease), micros(self.heartbeat));
    }

    pub(crate) fn validate(&self) -> Result<()> {
        at_most_30_days("heartbeat", self.heartbeat)?;
        at_most_30_days("lease", self.lease)?;
        at_most_30_days("forget_after", self.forget_after)?;
        if self.heartbeat < Duration::from_millis(1) || self.heartbeat * 3 > self.lease {
            return Err(Error::Config("need 1 ms <= heartbeat <= lease / 3".into()));
        }
        if self.max_backlog == 0 {
            return Err(Error::Config("max_backlog must be at least 1".into()));
        }
        if self.forget_after < self.lease {
            return Err(Error::Config(
                "forget_after must be at least the lease".into(),
            ));
        }
        Ok(())
    }
}

/// `duration` in µs (a validated duration is at most 30 days).
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_durations_are_a_config_error_not_a_panic() {
        SyncConfig::default().validate().unwrap();
        let configs = [
            SyncConfig::default().heartbeat(Duration::MAX),
            SyncConfig::default().lease(Duration::MAX),
            SyncConfig::default().forget_after(Duration::MAX),
            SyncConfig::default()
                .heartbeat(Duration::MAX / 2)
                .lease(Duration::MAX)
                .forget_after(Duration::MAX),
            SyncConfig::default().heartbeat(Duration::ZERO),
            SyncConfig::default().max_backlog(0),
        ];
        for config in configs {
            assert!(
                matches!(config.validate(), Err(Error::Config(_))),
                "{config:?}"
            );
        }
    }
}

//! Per-topic health, as users see it.

use std::fmt;

/// Whether a cache can currently serve from its heap.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Every peer's lease is valid: reads are served from the heap.
    Healthy,
    /// A repair (every entry checked against the source before it is served again) happened
    /// within the last heartbeat.
    Repairing,
    /// Some peer's lease has run out, or a member is out of reach: in bounded mode the cache
    /// serves only entries checked against the source less than a lease ago (checking them in
    /// bulk every half lease); other reads go to the source.
    Bypassing {
        /// Which peer, and why.
        reason: String,
    },
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Healthy => f.write_str("healthy"),
            Self::Repairing => f.write_str("repairing"),
            Self::Bypassing { reason } => write!(f, "bypassing: {reason}"),
        }
    }
}

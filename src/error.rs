//! The crate's one error type.

use std::sync::Arc;

/// A boxed error from user code, such as a [`Source`](crate::Source) implementation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, ractor_cache_sync::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
///
/// Each variant says whether local cache state changed when it was returned.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source of truth failed to load a key. Nothing was cached; the next read retries.
    #[error("source of truth failed to load: {0}")]
    Source(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),

    /// A message could not be encoded for the wire. Nothing was published and no local state
    /// changed.
    #[error("could not encode message: {0}")]
    Encode(String),

    /// The actor behind a handle has stopped (or its mailbox is closed). Local cache state is
    /// unchanged by the failed call; entries already dropped stay dropped.
    #[error("actor is not running: {0}")]
    ActorStopped(String),

    /// Starting an actor (cache, synchronization or the node server) failed. Nothing was started.
    #[error("could not start {what}: {reason}")]
    Spawn {
        /// Which actor failed to start.
        what: &'static str,
        /// Why, as reported by ractor.
        reason: String,
    },

    /// A configuration value is out of bounds. Nothing was started.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A deadline passed before the awaited condition held. No local state changed.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl Error {
    /// Wraps a [`Source`](crate::Source) implementation's error.
    pub fn from_source(error: impl Into<BoxError>) -> Self {
        Self::Source(Arc::from(error.into()))
    }

    pub(crate) fn stopped(error: impl std::fmt::Display) -> Self {
        Self::ActorStopped(error.to_string())
    }

    pub(crate) fn spawn(what: &'static str, error: impl std::fmt::Display) -> Self {
        Self::Spawn {
            what,
            reason: error.to_string(),
        }
    }
}

//! The crate's one error type.

use std::sync::Arc;

/// A boxed error from user code, such as a [`Source`](crate::Source) implementation.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Shorthand for `Result<T, ractor_cache_sync::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A cause kept for [`std::error::Error::source`]; shared, so that [`Error`] stays `Clone`.
pub(crate) type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in this crate.
///
/// Each variant says whether local cache state changed when it was returned; each keeps its
/// cause, where there is one, as [`source`](std::error::Error::source).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The source of truth failed to load a key. Nothing was cached; the next read retries.
    #[error("source of truth failed to load")]
    Source(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),

    /// A message could not be encoded for the wire. Nothing was published and no local state
    /// changed.
    #[error("could not encode message")]
    Encode(#[source] Arc<dyn std::error::Error + Send + Sync + 'static>),

    /// The actor behind a handle has stopped (or its mailbox is closed). Local cache state is
    /// unchanged by the failed call; entries already dropped stay dropped.
    #[error("{what} is not running")]
    ActorStopped {
        /// Which actor.
        what: &'static str,
        /// What ractor reported, if it reported anything.
        #[source]
        cause: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },

    /// Starting an actor (cache, synchronization or the node server) or binding a listener
    /// failed. Nothing was started.
    #[error("could not start {what}")]
    Spawn {
        /// What failed to start.
        what: &'static str,
        /// Why, as reported by ractor or the operating system.
        #[source]
        cause: Arc<dyn std::error::Error + Send + Sync + 'static>,
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

    /// `what` is not running; nothing more is known.
    pub(crate) fn stopped(what: &'static str) -> Self {
        Self::ActorStopped { what, cause: None }
    }

    /// `what` is not running, as `cause` (a ractor messaging error) says.
    pub(crate) fn stopped_by(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self::ActorStopped {
            what,
            cause: Some(message(cause)),
        }
    }

    pub(crate) fn spawn(what: &'static str, cause: impl std::fmt::Display) -> Self {
        Self::Spawn {
            what,
            cause: message(cause),
        }
    }

    pub(crate) fn encode(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Encode(Arc::new(cause))
    }
}

/// ractor's error types carry the message type as a parameter and are not always `Send` or
/// `'static` together with it; their text is what they have to say.
fn message(cause: impl std::fmt::Display) -> Cause {
    Arc::from(BoxError::from(cause.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn causes_are_kept_as_sources() {
        let io = std::io::Error::other("disk on fire");
        let error = Error::from_source(io);
        assert_eq!(error.to_string(), "source of truth failed to load");
        assert_eq!(error.source().unwrap().to_string(), "disk on fire");
        let stopped = Error::stopped_by("cache actor", "mailbox closed");
        assert_eq!(stopped.source().unwrap().to_string(), "mailbox closed");
        assert!(Error::stopped("cache actor").source().is_none());
    }
}

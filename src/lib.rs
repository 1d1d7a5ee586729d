//! Keep in-memory caches in sync across a cluster of [ractor](https://docs.rs/ractor) nodes.
//!
//! Each node holds hot data in its own heap ([`Cache`]); when a node changes the source of
//! truth it invalidates the key, and every other node's cache drops it and reloads it from the
//! [`Source`]. Messages travel over ractor_cluster's process groups as typed [`Topic`]s through
//! one [`Synchronization`] actor per topic and node.
//!
//! See the crate's `README.md` for a full example and `docs/` for the architecture and the
//! consistency guarantees.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

// Layers, top to bottom; each imports only from the ones below it.
mod cache;
mod node;
mod protocol;
mod synchronization;
// The vocabulary and process-wide state every layer may use.
mod clock;
mod counter;
mod delivery;
mod error;
mod health;
mod sessions;
mod source;
mod topic;

pub use cache::{Cache, CacheBuilder, CacheKey, CacheStats, Invalidation, Lookup, Mode};
pub use delivery::{Delivery, MissCause};
pub use error::{BoxError, Error, Result};
pub use health::Health;
pub use node::{Node, NodeConfig, TlsFiles, SHUTDOWN_GRACE, TLS_CLUSTER_NAME};
pub use source::{Source, Version};
pub use synchronization::{Confirmation, Recipients, SyncConfig, SyncStats};
pub use synchronization::{Synchronization, SynchronizationBuilder, TopicMessage};
pub use topic::{Topic, PG_SCOPE};

/// Entry points for the crate's own benchmarks; not part of the API.
#[doc(hidden)]
pub mod __bench {
    pub use crate::protocol::envelope::bench::*;
}

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

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
mod gate;
mod health;
mod sessions;
mod source;
mod topic;

pub use cache::{Cache, CacheBuilder, CacheKey, CacheStats, Invalidation, Lookup, RemovalCause};
pub use delivery::{Delivery, MissCause};
pub use error::{BoxError, Error, Result};
pub use gate::Mode;
pub use health::Health;
pub use node::{
    MemberChanges, MemberInfo, MemberState, Node, NodeConfig, TlsFiles, TLS_CLUSTER_NAME,
};
pub use source::{Source, Version};
pub use synchronization::{Confirmation, Recipients, SyncConfig, SyncStats};
pub use synchronization::{Synchronization, SynchronizationBuilder, TopicMessage};
pub use topic::Topic;

/// Hooks for fault-injection tests and the crate's benchmarks, with the `fault-injection`
/// feature: not for production builds. (`Cache::send_raw` and `Synchronization::send_raw`
/// cast raw bytes to a topic's remote members.)
#[cfg(feature = "fault-injection")]
pub mod fault_injection {
    pub use crate::protocol::envelope::bench::{decode, encode_for_peers, encode_publish};
    pub use crate::topic::PG_SCOPE;
}

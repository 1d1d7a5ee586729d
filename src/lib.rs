#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

// Layers, top to bottom; each imports only from the ones below it. The three upper layers are
// public modules (every name a user may need); the root re-exports the ones most programs use.
pub mod cache;
pub mod node;
mod protocol;
pub mod synchronization;
// The vocabulary and process-wide state every layer may use.
mod clock;
mod counter;
mod delivery;
mod error;
mod feed;
mod gate;
mod health;
mod sessions;
mod source;
mod topic;

pub use cache::{Cache, CacheBuilder, Invalidation};
pub use error::{BoxError, Error, Result};
pub use gate::Mode;
pub use health::Health;
pub use node::{Node, NodeConfig};
pub use source::{Source, Version};
pub use synchronization::{SyncConfig, Synchronization, TopicMessage};
pub use topic::Topic;

#[cfg(feature = "fault-injection")]
pub mod fault_injection;

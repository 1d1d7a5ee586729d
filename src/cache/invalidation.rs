//! What caches publish to each other: keys and versions, never values.

use serde::{Deserialize, Serialize};

use crate::source::Version;

/// The message type of a cache's topic.
///
/// It carries keys and versions only, so a rogue or confused peer can cause extra source
/// reads but can never put a value into another node's cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Invalidation<K> {
    /// These keys changed; a version, when known, is the committed version that made the
    /// cached one stale (a receiver holding that version or newer keeps its entry).
    Keys(Vec<(K, Option<Version>)>),
    /// Everything may have changed.
    All,
}

//! Typed topic names.

use std::fmt;
use std::marker::PhantomData;

/// The process-group scope every topic of this crate lives in, kept apart from the
/// application's own `ractor::pg` groups (`"ractor_cache_sync"`).
#[cfg_attr(not(feature = "fault-injection"), allow(unreachable_pub))]
pub const PG_SCOPE: &str = "ractor_cache_sync";

/// A named channel whose messages are of type `M`.
///
/// A topic is one process group (in the crate's own `ractor::pg` scope, `"ractor_cache_sync"`): every
/// node's [`Synchronization`](crate::Synchronization) actor for the topic joins it. The type
/// parameter makes the compiler check what is published and what subscribers receive; the
/// name is what nodes agree on at run time, so two topics with the same name must use the same
/// `M` on every node.
///
/// ```
/// use ractor_cache_sync::Topic;
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct PriceChanged { sku: String }
/// let topic: Topic<PriceChanged> = Topic::new("prices");
/// assert_eq!(topic.name(), "prices");
/// ```
pub struct Topic<M> {
    name: String,
    message: PhantomData<fn() -> M>,
}

impl<M> Topic<M> {
    /// Names a topic. Names are case-sensitive and compared byte for byte.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            message: PhantomData,
        }
    }

    /// The topic's name, which is also its process-group name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<M> Clone for Topic<M> {
    fn clone(&self) -> Self {
        Self::new(self.name.clone())
    }
}

impl<M> fmt::Debug for Topic<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Topic").field(&self.name).finish()
    }
}

impl<M> PartialEq for Topic<M> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl<M> Eq for Topic<M> {}

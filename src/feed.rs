//! Change feeds: a source reporting its committed changes (see [`ChangeFeed`]).

use crate::clock::now_us;
use crate::source::Version;

/// A point in this process's clock, taken with [`Stamp::now`] *before* a feed asks its source
/// for a barrier: everything committed before it is covered once the barrier is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp(pub(crate) u64);

impl Stamp {
    /// Now, on the clock the cache's leases use.
    #[must_use]
    pub fn now() -> Self {
        Self(now_us())
    }
}

/// What a [`ChangeFeed`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FeedEvent<K> {
    /// Keys changed by committed transactions, in commit order, each with its new version
    /// (`None`: deleted, or unknown — the entry is dropped whatever its version).
    Changed(Vec<(K, Option<Version>)>),
    /// Every change committed before the stamp has been delivered (in an earlier
    /// [`Changed`](FeedEvent::Changed)).
    Barrier(Stamp),
    /// The feed's connection broke and is back (listening again): changes made meanwhile may
    /// be missing. The cache checks every entry against the source.
    Reconnected,
    /// Changes may be missing for another reason (an overflow, a pruned log, a change too
    /// large to describe): the cache checks every entry against the source.
    Lost(String),
}

/// A source's committed changes, in commit order, with barriers: the source of truth vouches
/// for the cache itself.
///
/// A change feed yields the keys changed by committed transactions, in commit order, and
/// now and then a **barrier**: "every change committed before [`Stamp`] has been delivered".
/// A cache given one with [`CacheBuilder::change_feed`](crate::cache::CacheBuilder::change_feed)
/// applies each change as it applies a peer's invalidation (versioned, idempotent, through the
/// guard that keeps a load from before the change out of the heap), and after each barrier it
/// holds a **feed lease**: it may serve its entries until one lease after the barrier's stamp,
/// whatever the state of its peers. A write committed at `w` is applied before any barrier
/// stamped after `w` is delivered, so no entry is served more than a lease after it: the bound
/// then covers every committed write — made through the crate or not, by a node this one has
/// never heard of, across a partition between the nodes.
///
/// A feed that may have missed changes (it reconnected, its buffer overflowed, its log was
/// pruned past its position, a change too large to describe) says so with
/// [`FeedEvent::Reconnected`] or [`FeedEvent::Lost`], once it is listening again: the cache
/// then marks every entry unverified and checks them against the source in bulk (a repair),
/// never silence.
///
/// The crates `ractor_cache_sync_sqlite` and `ractor_cache_sync_postgres` implement it for a
/// change-log table (SQLite) and for `LISTEN`/`NOTIFY` (PostgreSQL).
///
/// # What an implementor must guarantee
///
/// - Every committed change of a key the cache may hold is reported, after its commit, and
///   before any barrier whose stamp was taken after the commit.
/// - Reordering only across a [`Reconnected`](FeedEvent::Reconnected) or a
///   [`Lost`](FeedEvent::Lost), which is reported only once the feed would again see every
///   change committed after it (a database listener is listening again): the cache's check
///   that follows covers what came before.
/// - A version reported with a change is the version the source then holds (or `None`).
///
/// `next` is cancel safe in the sense the cache needs: it is called again after every event
/// and never dropped mid-call while the cache lives.
#[async_trait::async_trait]
pub trait ChangeFeed<K>: Send + 'static {
    /// The next event; `None` once the feed has ended for good (its lease then lapses, and
    /// the cache serves by its peers' leases alone).
    async fn next(&mut self) -> Option<FeedEvent<K>>;
}

/// A boxed feed is a feed (pick one at run time: `Box<dyn ChangeFeed<K>>`).
#[async_trait::async_trait]
impl<K: Send, F: ChangeFeed<K> + ?Sized> ChangeFeed<K> for Box<F> {
    async fn next(&mut self) -> Option<FeedEvent<K>> {
        (**self).next().await
    }
}

//! The source of truth contract.

use crate::error::Result;

/// A version of one key's value in the source of truth.
///
/// Versions are per key and must never go backwards for a key (a row counter, a commit
/// sequence number or an `updated_at` in a monotonic unit all work).
pub type Version = u64;

/// The source of truth a [`Cache`](crate::Cache) loads from (a database, usually).
///
/// # What the crate guarantees to an implementor
///
/// - `load` is called at most once at a time per key and node for readers that arrive while a
///   load of that key is in flight (single flight): a hot key does not stampede the source.
/// - `load` is called from a Tokio task; blocking drivers must use `spawn_blocking`.
/// - A result is installed in the cache only if no invalidation of the key happened while the
///   load ran; otherwise it is handed to the waiting readers and not kept.
///
/// # What an implementor must guarantee
///
/// - `load` reads committed data, at least as new as every commit that finished before the call
///   started (read-after-commit). A lagging replica breaks the staleness promise.
/// - The returned [`Version`] of a key never goes backwards, and a changed value always has a
///   higher version — across a failover too. A counter that can resume lower on a promoted
///   replica (an asynchronous replica that had not received its last values, a crash with
///   `synchronous_commit = off`) would leave nodes holding a lost, higher version that ignores
///   every later invalidation naming a lower one: put an epoch that every failover raises in
///   the high bits (PostgreSQL's timeline: see the node example's PostgreSQL source), or call
///   [`Cache::invalidate_all`](crate::Cache::invalidate_all) on one node after each failover.
/// - `Ok(None)` means "the key does not exist"; it is not cached.
/// - Errors are returned, never panicked; they are passed to the reader and nothing is cached.
/// - [`load_many`](Source::load_many) and [`versions`](Source::versions) answer for every key
///   they are given, in the same order, under the same read-after-commit rule as `load`: a
///   version they report is at least as new as every commit that finished before the call
///   started. An answer of the wrong length is treated as a failed call.
///
/// `load_many` and `versions` have default implementations on top of `load` (one call per key),
/// so a source that implements only `load` works; a database source should implement both with
/// one statement per call (`WHERE key IN (...)`, `= ANY($1)`): the cache uses `versions` to check
/// its entries against the source after a possible loss and while a peer is unreachable, in
/// chunks, instead of dropping them or sending every read to the source. What the defaults
/// cost: one `load` per key, one after another, every half lease while a peer is unreachable
/// and after every repair. A cache of 100 000 entries then needs 100 000 sequential loads
/// within half a lease (at 50 µs each, 5 s against 0.5 s): the pass cannot finish, the
/// unchecked entries lapse, and their reads go to the source; with one statement per chunk of
/// 1 000 keys the same pass takes about 0.3–0.4 s of SQLite's time (see `docs/semantics.md`).
///
/// The trait is object safe. A cache takes any `Source` by value: your type, an `Arc` of it
/// (shared with the rest of your service), or an `Arc<dyn Source<K, V>>`.
///
/// ```
/// use ractor_cache_sync::{Source, Version};
/// struct Constant;
/// #[async_trait::async_trait]
/// impl Source<String, String> for Constant {
///     async fn load(&self, key: &String) -> ractor_cache_sync::Result<Option<(String, Version)>> {
///         Ok(Some((format!("value of {key}"), 1)))
///     }
/// }
/// ```
#[async_trait::async_trait]
pub trait Source<K, V>: Send + Sync + 'static {
    /// Loads the current value and version of `key`, or `None` if it does not exist.
    ///
    /// # Errors
    ///
    /// Any failure of the source, wrapped with [`Error::from_source`](crate::Error::from_source).
    async fn load(&self, key: &K) -> Result<Option<(V, Version)>>;

    /// Loads the current value and version of each of `keys` (`None` for a key that does not
    /// exist), in the order given. Default: one [`load`](Source::load) per key, one after
    /// another.
    ///
    /// # Errors
    ///
    /// As [`load`](Source::load); one failed key fails the call.
    async fn load_many(&self, keys: &[K]) -> Result<Vec<Option<(V, Version)>>>
    where
        K: Sync,
        V: Send,
    {
        let mut loaded = Vec::with_capacity(keys.len());
        for key in keys {
            loaded.push(self.load(key).await?);
        }
        Ok(loaded)
    }

    /// The current version of each of `keys` (`None` for a key that does not exist), in the
    /// order given: what the cache compares its entries with. Default: the versions of
    /// [`load_many`](Source::load_many).
    ///
    /// # Errors
    ///
    /// As [`load`](Source::load).
    async fn versions(&self, keys: &[K]) -> Result<Vec<Option<Version>>>
    where
        K: Sync,
        V: Send,
    {
        let loaded = self.load_many(keys).await?;
        Ok(loaded.into_iter().map(|l| l.map(|(_, v)| v)).collect())
    }
}

/// A shared source is a source: hand the cache an `Arc` and keep a clone for your own queries.
#[async_trait::async_trait]
impl<K, V, S> Source<K, V> for std::sync::Arc<S>
where
    K: Sync + 'static,
    S: Source<K, V> + ?Sized,
{
    async fn load(&self, key: &K) -> Result<Option<(V, Version)>> {
        (**self).load(key).await
    }

    async fn load_many(&self, keys: &[K]) -> Result<Vec<Option<(V, Version)>>>
    where
        K: Sync,
        V: Send,
    {
        (**self).load_many(keys).await
    }

    async fn versions(&self, keys: &[K]) -> Result<Vec<Option<Version>>>
    where
        K: Sync,
        V: Send,
    {
        (**self).versions(keys).await
    }
}

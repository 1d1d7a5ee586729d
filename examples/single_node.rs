//! The README's example, runnable: one node, one cache over a source of truth, a miss, a hit
//! and an invalidation. Add `.peer("host:port")` to the node's configuration (and start the
//! other nodes) to keep several nodes' caches in sync.
//!
//! ```text
//! cargo run --example single_node
//! ```

use ractor_cache_sync::{Cache, Node, NodeConfig, Source, Topic, Version};

/// Your source of truth: a database table, usually.
struct Users;

#[async_trait::async_trait]
impl Source<u64, String> for Users {
    async fn load(&self, id: &u64) -> ractor_cache_sync::Result<Option<(String, Version)>> {
        Ok(Some((format!("user {id}"), 1))) // SELECT name, version FROM users WHERE id = ?
    }
}

#[tokio::main]
async fn main() -> ractor_cache_sync::Result<()> {
    let node = Node::start(
        NodeConfig::new("a", "a-long-random-cookie").listen("127.0.0.1:0".parse().unwrap()), // .peer("127.0.0.1:4002") // dialled, and re-dialled with backoff, in the background
    )
    .await?;
    let users: Cache<u64, String> = Cache::spawn(Topic::new("users"), Users, &node).await?;

    let first = users.lookup(&7).await?; // miss: one load
    let second = users.lookup(&7).await?; // hit: no message, no await on a mailbox
    println!(
        "{:?} (hit: {}), then hit: {}",
        first.value, first.hit, second.hit
    );
    // After committing a change to user 7 in the database:
    users.invalidate_version(&7, 2)?; // dropped here at once, and on every other node
    println!("after the invalidation: {} entries", users.entry_count());
    node.shutdown().await;
    Ok(())
}

//! Your own supervisor owns the node and the cache: it spawns them linked to itself and
//! restarts the cache actor if it fails. The cache actor in turn restarts its Synchronization
//! actor. This demo kills the Synchronization actor and shows that it comes back, rejoins its
//! group, and that the cache keeps serving (after repairing what it may have missed).
//!
//! ```text
//! cargo run --example supervised
//! ```

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use ractor_cache_sync::{Cache, Node, NodeConfig, Source, Topic, Version};

/// A stand-in source of truth.
struct Catalogue;

#[async_trait::async_trait]
impl Source<String, String> for Catalogue {
    async fn load(&self, sku: &String) -> ractor_cache_sync::Result<Option<(String, Version)>> {
        Ok(Some((format!("price of {sku}: 4.20"), 1)))
    }
}

/// The application's supervisor: one node, one cache, restarted on failure.
struct AppSupervisor;

struct AppState {
    node: Node,
    cache: Cache<String, String>,
}

/// Messages to the supervisor.
enum AppMessage {
    /// Reply with the current cache handle (it changes when the cache is restarted).
    Cache(ractor::RpcReplyPort<Cache<String, String>>),
}

impl ractor::Message for AppMessage {}

#[cfg_attr(feature = "async-trait", ractor::async_trait)]
impl Actor for AppSupervisor {
    type Msg = AppMessage;
    type State = AppState;
    type Arguments = ();

    async fn pre_start(
        &self,
        me: ActorRef<AppMessage>,
        _: (),
    ) -> Result<AppState, ActorProcessingErr> {
        let config = NodeConfig::new("supervised", "demo-cookie-0123456789abcdef");
        let node = Node::start_linked(config, me.get_cell()).await?;
        let cache = spawn_cache(&node, &me).await?;
        Ok(AppState { node, cache })
    }

    async fn handle(
        &self,
        _: ActorRef<AppMessage>,
        msg: AppMessage,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            AppMessage::Cache(reply) => {
                let _ = reply.send(state.cache.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        me: ActorRef<AppMessage>,
        event: SupervisionEvent,
        state: &mut AppState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error)
                if cell.get_id() == state.cache.actor().get_id() =>
            {
                eprintln!("cache actor failed ({error}); restarting it");
                state.cache = spawn_cache(&state.node, &me).await?;
            }
            SupervisionEvent::ActorFailed(cell, error)
                if cell.get_id() == state.node.actor().get_id() =>
            {
                return Err(format!("node server failed: {error}").into());
            }
            _ => {}
        }
        Ok(())
    }
}

async fn spawn_cache(
    node: &Node,
    me: &ActorRef<AppMessage>,
) -> Result<Cache<String, String>, ActorProcessingErr> {
    let cache = Cache::builder(Topic::new("prices"), Arc::new(Catalogue))
        .spawn_linked(node, me.get_cell())
        .await?;
    Ok(cache)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (supervisor, handle) = Actor::spawn(None, AppSupervisor, ()).await?;
    let cache = ractor::call_t!(supervisor, AppMessage::Cache, 5_000)?;
    let sku = "sku-1".to_owned();
    println!("read: {}", cache.get(&sku).await?.unwrap_or_default());

    let sync = cache
        .synchronization_actor()
        .ok_or("no synchronization actor")?;
    println!("killing the Synchronization actor {}", sync.get_id());
    sync.kill();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.stats().sync_restarts == 0 || cache.synchronization_actor().is_none() {
        if tokio::time::Instant::now() > deadline {
            return Err("the Synchronization actor was not restarted".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let restarted = cache
        .synchronization_actor()
        .ok_or("no synchronization actor")?;
    // Topics live in the process-group scope "ractor_cache_sync", apart from your own groups.
    let scope = "ractor_cache_sync".to_owned();
    let in_group = ractor::pg::get_scoped_members(&scope, &"prices".to_owned())
        .iter()
        .any(|member| member.get_id() == restarted.get_id());
    println!(
        "restarted as {} (in its group again: {in_group})",
        restarted.get_id()
    );
    println!("read: {}", cache.get(&sku).await?.unwrap_or_default());
    println!(
        "repairs: {}, sync restarts: {}",
        cache.stats().repairs,
        cache.stats().sync_restarts
    );
    if !in_group {
        return Err("the restarted actor did not rejoin its group".into());
    }
    supervisor.stop(None);
    handle.await?;
    println!("ok");
    Ok(())
}

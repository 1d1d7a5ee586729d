//! The cache actor: owns the topic's Synchronization actor (restarting it if it fails) and
//! publishes local invalidations. Remote invalidations are applied by the subscriber it
//! registers, synchronously in the Synchronization actor's task (see there for why).

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{de::DeserializeOwned, Serialize};

use super::invalidation::Invalidation;
use super::store::{Dropped, Store};
use super::SyncSlot;
use crate::counter::{add, bump};
use crate::delivery::{Delivery, MissCause};
use crate::synchronization::message::Drainer;
use crate::synchronization::SyncShared;
use crate::synchronization::{SyncConfig, Synchronization};
use crate::topic::Topic;

/// The actor behind a [`Cache`](crate::Cache) handle. Local-only: peers never see it.
pub(crate) struct CacheActor<K, V>(PhantomData<fn() -> (K, V)>);

impl<K, V> CacheActor<K, V> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

/// Messages of the cache actor.
pub(crate) enum CacheMessage<K> {
    /// Cast raw bytes to every remote member (fault injection).
    SendRaw(Vec<u8>),
    /// Hand out the current Synchronization handle (it changes when the actor is restarted).
    Sync(ractor::RpcReplyPort<Synchronization<Invalidation<K>>>),
}

impl<K: Send + 'static> ractor::Message for CacheMessage<K> {}

/// What the cache actor starts with.
pub(crate) struct CacheArguments<K, V> {
    pub(crate) store: Arc<Store<K, V>>,
    /// Takes the batch: the same closure the `Cache` handles use.
    pub(crate) drainer: Drainer<Invalidation<K>>,
    /// The current Synchronization handle, shared with the `Cache` handles, which publish
    /// through it directly; replaced when the actor is restarted.
    pub(crate) slot: SyncSlot<K>,
    pub(crate) topic: Topic<Invalidation<K>>,
    pub(crate) node_name: String,
    pub(crate) sync_config: SyncConfig,
    pub(crate) shared: Arc<SyncShared>,
    pub(crate) on_remote: Option<OnRemote<K>>,
}

/// Called with every invalidation from another node (and every repair, as
/// [`Invalidation::All`]) once it has been applied here.
pub(crate) type OnRemote<K> = Arc<dyn Fn(&Invalidation<K>) + Send + Sync>;

/// The cache actor's state.
pub(crate) struct CacheState<K, V> {
    args: CacheArguments<K, V>,
    sync: Synchronization<Invalidation<K>>,
}

/// Bounds on cache keys: hashable map keys that travel in invalidations.
pub trait CacheKey:
    Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> CacheKey for T {}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> Actor for CacheActor<K, V> {
    type Msg = CacheMessage<K>;
    type State = CacheState<K, V>;
    type Arguments = CacheArguments<K, V>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let sync = spawn_sync(&myself, &args).await?;
        Ok(CacheState { args, sync })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Waiting lets the Synchronization actor announce its clean leave to peers.
        let timeout = Some(std::time::Duration::from_secs(1));
        let _ = state.sync.actor().stop_and_wait(None, timeout).await;
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CacheMessage::SendRaw(bytes) => state.sync.send_raw(bytes)?,
            CacheMessage::Sync(reply) => {
                let _ = reply.send(state.sync.clone());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let sync_id = state.sync.actor().get_id();
        let failed = match &event {
            SupervisionEvent::ActorFailed(cell, error) if cell.get_id() == sync_id => {
                Some(error.to_string())
            }
            // Stopped on purpose by someone else: without it the cache would go stale silently.
            SupervisionEvent::ActorTerminated(cell, ..) if cell.get_id() == sync_id => {
                Some("stopped".to_owned())
            }
            _ => None,
        };
        if let Some(reason) = failed {
            tracing::warn!(%reason, topic = state.args.topic.name(), "synchronization actor exited; restarting it");
            bump(&state.args.store.counters.sync_restarts);
            state.sync = spawn_sync(&myself, &state.args).await?;
        }
        Ok(())
    }
}

async fn spawn_sync<K: CacheKey, V: Clone + Send + Sync + 'static>(
    myself: &ActorRef<CacheMessage<K>>,
    args: &CacheArguments<K, V>,
) -> Result<Synchronization<Invalidation<K>>, ActorProcessingErr> {
    let store = args.store.clone();
    let on_remote = args.on_remote.clone();
    let subscriber = Arc::new(move |delivery| {
        let (applied, hot) = apply(&store, delivery);
        if let Some(on_remote) = &on_remote {
            on_remote(&applied);
        }
        reload(&store, hot);
    });
    let sync = Synchronization::start_with(
        args.topic.clone(),
        args.node_name.clone(),
        args.sync_config,
        Some(myself.get_cell()),
        vec![subscriber],
        args.shared.clone(),
    )
    .await?;
    *args.slot.write().unwrap_or_else(|e| e.into_inner()) = Some(sync.clone());
    // Whatever was batched while no actor was there goes out now.
    sync.drain_now(&args.drainer);
    Ok(sync)
}

/// Applies one delivery to the store before returning; returns what it applied and the
/// dropped keys that were cached or loading here (hot keys, to reload).
fn apply<K: CacheKey, V: Clone + Send + Sync + 'static>(
    store: &Arc<Store<K, V>>,
    delivery: Delivery<Invalidation<K>>,
) -> (Invalidation<K>, Vec<K>) {
    match delivery {
        Delivery::Message {
            message: Invalidation::Keys(keys),
            ..
        } => {
            add(&store.counters.invalidations_received, keys.len() as u64);
            let mut hot = Vec::new();
            for (key, version) in &keys {
                match store.invalidate(key, *version) {
                    Dropped::Ignored => bump(&store.counters.invalidations_ignored),
                    Dropped::Nothing => {}
                    Dropped::Entry | Dropped::Flight => hot.push(key.clone()),
                }
            }
            (Invalidation::Keys(keys), hot)
        }
        Delivery::Message { .. } => {
            bump(&store.counters.invalidations_received);
            bump(&store.counters.invalidate_alls_received);
            store.invalidate_all();
            (Invalidation::All, Vec::new())
        }
        Delivery::PossiblyMissed(cause) => {
            repair(store, &cause);
            (Invalidation::All, Vec::new())
        }
    }
}

/// Reloads the hot keys of one invalidation in the background, one after another in one
/// task (a burst never floods the source; a reader who needs a key sooner loads it itself),
/// so the next read is a hit on the fresh value.
fn reload<K: CacheKey, V: Clone + Send + Sync + 'static>(store: &Arc<Store<K, V>>, hot: Vec<K>) {
    if hot.is_empty() {
        return;
    }
    add(&store.counters.reloads, hot.len() as u64);
    let store = store.clone();
    tokio::spawn(async move {
        for key in hot {
            if let Err(error) = store.load_once(&key).await {
                tracing::warn!(%error, "reload after invalidation failed");
            }
        }
    });
}

fn repair<K: CacheKey, V: Clone + Send + Sync + 'static>(store: &Store<K, V>, cause: &MissCause) {
    if store.entry_count() > 0 {
        tracing::info!(?cause, "repairing: dropping every entry");
    }
    bump(&store.counters.repairs);
    store.invalidate_all();
}

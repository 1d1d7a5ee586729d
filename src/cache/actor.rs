//! The cache actor: owns the topic's Synchronization actor (restarting it if it fails),
//! publishes local invalidations and applies remote ones.

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{de::DeserializeOwned, Serialize};

use super::invalidation::Invalidation;
use super::store::{Dropped, Store};
use crate::stats::{add, bump};
use crate::synchronization::SyncCounters;
use crate::{Delivery, MissCause, Synchronization, Topic};

/// The actor behind a [`Cache`](crate::Cache) handle. Local-only: peers never see it.
pub(crate) struct CacheActor<K, V>(PhantomData<fn() -> (K, V)>);

impl<K, V> CacheActor<K, V> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

/// Messages of the cache actor.
pub(crate) enum CacheMessage<K> {
    /// Publish a local invalidation to the other nodes.
    Publish(Invalidation<K>),
    /// Something arrived on the topic.
    Remote(Delivery<Invalidation<K>>),
    /// Cast raw bytes to every remote member (fault injection).
    SendRaw(Vec<u8>),
}

impl<K: Send + 'static> ractor::Message for CacheMessage<K> {}

/// What the cache actor starts with.
pub(crate) struct CacheArguments<K, V> {
    pub(crate) store: Arc<Store<K, V>>,
    pub(crate) topic: Topic<Invalidation<K>>,
    pub(crate) node_name: String,
    pub(crate) sync_counters: Arc<SyncCounters>,
}

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
        state.sync.actor().stop(None);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CacheMessage::Publish(invalidation) => state.publish(&invalidation),
            CacheMessage::Remote(delivery) => state.apply(delivery),
            CacheMessage::SendRaw(bytes) => state.sync.send_raw(bytes)?,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error)
                if cell.get_id() == state.sync.actor().get_id() =>
            {
                tracing::warn!(%error, topic = state.args.topic.name(), "synchronization actor failed; restarting it");
                bump(&state.args.store.counters.sync_restarts);
                state.sync = spawn_sync(&myself, &state.args).await?;
            }
            SupervisionEvent::ActorTerminated(cell, ..)
                if cell.get_id() == state.sync.actor().get_id() =>
            {
                // Someone stopped it on purpose: without it the cache would go stale silently.
                bump(&state.args.store.counters.sync_restarts);
                state.sync = spawn_sync(&myself, &state.args).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

async fn spawn_sync<K: CacheKey, V>(
    myself: &ActorRef<CacheMessage<K>>,
    args: &CacheArguments<K, V>,
) -> Result<Synchronization<Invalidation<K>>, ActorProcessingErr> {
    let me = myself.clone();
    let subscriber = Arc::new(move |delivery| {
        // The cache actor only stops when the whole cache does.
        let _ = me.cast(CacheMessage::Remote(delivery));
    });
    let sync = Synchronization::start_with(
        args.topic.clone(),
        args.node_name.clone(),
        Some(myself.get_cell()),
        vec![subscriber],
        args.sync_counters.clone(),
    )
    .await?;
    Ok(sync)
}

impl<K: CacheKey, V: Clone + Send + Sync + 'static> CacheState<K, V> {
    fn publish(&self, invalidation: &Invalidation<K>) {
        let keys = match invalidation {
            Invalidation::Keys(keys) => keys.len() as u64,
            _ => 1,
        };
        match self.sync.publish(invalidation) {
            Ok(()) => add(&self.args.store.counters.invalidations_sent, keys),
            Err(error) => tracing::error!(%error, "invalidation not published"),
        }
    }

    fn apply(&self, delivery: Delivery<Invalidation<K>>) {
        let store = &self.args.store;
        match delivery {
            Delivery::Message {
                message: Invalidation::Keys(keys),
                ..
            } => {
                add(&store.counters.invalidations_received, keys.len() as u64);
                for (key, version) in keys {
                    self.apply_key(key, version);
                }
            }
            Delivery::Message { .. } => {
                bump(&store.counters.invalidations_received);
                store.invalidate_all();
            }
            Delivery::PossiblyMissed(cause) => self.repair(&cause),
        }
    }

    /// Drops the key and, if it was cached or being loaded (it is hot here), reloads it in the
    /// background so the next read is a hit on the fresh value.
    fn apply_key(&self, key: K, version: Option<crate::Version>) {
        let store = &self.args.store;
        match store.invalidate(&key, version) {
            Dropped::Ignored => bump(&store.counters.invalidations_ignored),
            Dropped::Nothing => {}
            Dropped::Entry | Dropped::Flight => {
                bump(&store.counters.reloads);
                let store = store.clone();
                tokio::spawn(async move {
                    if let Err(error) = store.load_once(&key).await {
                        tracing::warn!(%error, "reload after invalidation failed");
                    }
                });
            }
        }
    }

    fn repair(&self, cause: &MissCause) {
        let store = &self.args.store;
        if store.entry_count() > 0 {
            tracing::info!(
                ?cause,
                topic = self.args.topic.name(),
                "repairing: dropping every entry"
            );
        }
        bump(&store.counters.repairs);
        store.invalidate_all();
    }
}

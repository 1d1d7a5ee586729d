//! The cache actor: owns the topic's Synchronization actor (restarting it if it fails) and
//! runs the coalescing window's timer. Remote invalidations are applied by the subscriber it
//! registers, synchronously in the Synchronization actor's task, so a lease renewed right
//! after vouches only for what is already applied.

use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde::{de::DeserializeOwned, Serialize};

use super::entries::RemovalCause;
use super::invalidation::Invalidation;
use super::store::{Dropped, Store};
use super::Inner;
use crate::clock::now_us;
use crate::counter::{add, bump};
use crate::delivery::{Delivery, MissCause};
use crate::synchronization::{SyncConfig, Synchronization};

/// The actor behind a [`Cache`](crate::Cache) handle. Local-only: peers never see it.
pub(crate) struct CacheActor<K, V>(PhantomData<fn() -> (K, V)>);

impl<K, V> CacheActor<K, V> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

/// Messages of the cache actor.
pub(crate) enum CacheMessage {
    /// A burst is being coalesced: publish the batch after this long.
    DrainAfter(Duration),
    /// The coalescing window ended: publish the batch now.
    Drain,
}

impl ractor::Message for CacheMessage {}

/// What the cache actor starts with.
pub(crate) struct CacheArguments<K, V> {
    /// The cache its handles read and invalidate.
    pub(crate) cache: Arc<Inner<K, V>>,
    /// This node's name, for envelopes.
    pub(crate) node_name: String,
    /// The topic's heartbeat, lease and backlog settings.
    pub(crate) sync_config: SyncConfig,
    /// The remote-invalidation hook, if the user gave one.
    pub(crate) on_remote: Option<OnRemote<K>>,
}

/// Called with every invalidation from another node (and every repair, as
/// [`Invalidation::All`]) once it has been applied here.
pub(crate) type OnRemote<K> = Arc<dyn Fn(&Invalidation<K>) + Send + Sync>;

/// The cache actor's state.
pub(crate) struct CacheState<K, V> {
    /// What it started with: kept to spawn the Synchronization actor again.
    args: CacheArguments<K, V>,
    /// The topic's current Synchronization actor, linked to this one.
    sync: Synchronization<Invalidation<K>>,
}

/// Bounds on cache keys: hashable map keys that travel in invalidations.
pub trait CacheKey:
    Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static
{
}
impl<T: Hash + Eq + Clone + Serialize + DeserializeOwned + Send + Sync + 'static> CacheKey for T {}

#[cfg_attr(feature = "async-trait", ractor::async_trait)]
impl<K: CacheKey, V: Clone + Send + Sync + 'static> Actor for CacheActor<K, V> {
    type Msg = CacheMessage;
    type State = CacheState<K, V>;
    type Arguments = CacheArguments<K, V>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        args.cache.set_actor(myself.clone());
        let sync = spawn_sync(&myself, &args).await?;
        Ok(CacheState { args, sync })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Waiting lets the Synchronization actor publish what is pending and announce its
        // clean leave to peers.
        let timeout = Some(std::time::Duration::from_secs(1));
        let _ = state.sync.actor().stop_and_wait(None, timeout).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CacheMessage::DrainAfter(delay) => {
                myself.send_after(delay, || CacheMessage::Drain);
            }
            CacheMessage::Drain => {
                state.args.cache.publish_batch();
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
            let topic = state.args.cache.topic.name();
            tracing::warn!(%reason, topic, "synchronization actor exited; restarting it");
            bump(&state.args.cache.store.counters.sync_restarts);
            state.sync = spawn_sync(&myself, &state.args).await?;
        }
        Ok(())
    }
}

async fn spawn_sync<K: CacheKey, V: Clone + Send + Sync + 'static>(
    myself: &ActorRef<CacheMessage>,
    args: &CacheArguments<K, V>,
) -> Result<Synchronization<Invalidation<K>>, ActorProcessingErr> {
    let cache = args.cache.clone();
    let on_remote = args.on_remote.clone();
    let subscriber = Arc::new(move |delivery| {
        let (applied, hot) = apply(&cache.store, delivery);
        if let Some(on_remote) = &on_remote {
            on_remote(&applied);
        }
        cache.reload(hot);
    });
    let cache = args.cache.clone();
    let pending = Arc::new(move |publish: &mut dyn FnMut(&Invalidation<K>) -> bool| {
        cache.batch.drain(now_us(), |message| publish(message));
    });
    let sync = Synchronization::builder(args.cache.topic.clone())
        .config(args.sync_config)
        .subscriber(subscriber)
        .pending(pending)
        .idempotent()
        .shared(args.cache.store.sync().clone())
        .spawn_linked(args.node_name.as_str(), myself.get_cell())
        .await?;
    args.cache.set_sync(sync.clone());
    // Whatever was batched while no actor was there goes out now.
    args.cache.publish_batch();
    Ok(sync)
}

/// Applies one delivery to the store before returning; returns what it applied and the
/// dropped keys that were cached or loading here (hot keys, to reload).
fn apply<K: CacheKey, V: Clone + Send + Sync + 'static>(
    store: &Store<K, V>,
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
                match store.invalidate(key, *version, RemovalCause::InvalidatedRemotely) {
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
            store.invalidate_all(RemovalCause::InvalidatedRemotely);
            (Invalidation::All, Vec::new())
        }
        Delivery::PossiblyMissed(cause) => {
            repair(store, &cause);
            (Invalidation::All, Vec::new())
        }
    }
}

/// Marks every entry unverified: none is served until the revalidation task finds it
/// unchanged in the source (or a read loads it again).
fn repair<K: CacheKey, V: Clone + Send + Sync + 'static>(store: &Store<K, V>, cause: &MissCause) {
    if store.entry_count() > 0 {
        tracing::info!(?cause, "repairing: checking every entry against the source");
    }
    bump(&store.counters.repairs);
    store.mark_unverified();
}

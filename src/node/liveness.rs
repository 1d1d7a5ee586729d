//! The node-level Synchronization actor (heartbeats, gossip, every topic's bundled heartbeat),
//! under a supervisor of its own: if it fails, it is spawned again at once under a new
//! incarnation (peers repair as after a restart), instead of the node falling silent until
//! its peers declare it down.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::membership::Membership;
use crate::error::{Error, Result};
use crate::synchronization::{SyncConfig, Synchronization};
use crate::topic::Topic;

/// The internal topic every node heartbeats on.
pub(crate) const LIVENESS_TOPIC: &str = "ractor_cache_sync::nodes";

/// The current node-level actor, as the node and its watchdog reach it.
pub(crate) struct Liveness {
    /// Set by the supervisor when it spawns the actor (before `start` returns), and again
    /// after every failure.
    current: RwLock<Option<Synchronization<()>>>,
    /// Set by shutdown: a stop is then not a failure to recover from.
    stopping: AtomicBool,
    restarts: AtomicU64,
    supervisor: OnceLock<ActorRef<Never>>,
}

impl Liveness {
    /// The current node-level actor's handle.
    pub(crate) fn current(&self) -> Option<Synchronization<()>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, liveness: Synchronization<()>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(liveness);
    }

    /// Times the node-level actor failed and was spawned again.
    pub(crate) fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Stops the node-level actor (it leaves cleanly), then its supervisor.
    pub(crate) async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let timeout = Some(std::time::Duration::from_secs(1));
        if let Some(current) = self.current() {
            let _ = current.actor().stop_and_wait(None, timeout).await;
        }
        if let Some(supervisor) = self.supervisor.get() {
            supervisor.stop(None);
        }
    }

    /// Stops the node-level actor and its supervisor without waiting (a `Node` dropped
    /// without `shutdown`).
    pub(crate) fn stop_now(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(current) = self.current() {
            current.actor().stop(None);
        }
        if let Some(supervisor) = self.supervisor.get() {
            supervisor.stop(None);
        }
    }
}

/// The supervisor's mailbox takes no messages: it only hears supervision events.
pub(crate) enum Never {}

impl ractor::Message for Never {}

struct Supervisor;

/// The supervisor's state: what it needs to spawn the node-level actor again.
struct State {
    /// This node's name, `name@host`.
    name: String,
    /// The node-level topic's settings.
    config: SyncConfig,
    /// Who this node knows of: the actor gossips it and learns from peers' gossip.
    membership: Arc<Membership>,
    /// Where the node and its watchdog find the current actor.
    liveness: Arc<Liveness>,
}

impl State {
    async fn spawn(&self, supervisor: ractor::ActorCell) -> Result<()> {
        let liveness = Synchronization::builder(Topic::new(LIVENESS_TOPIC))
            .config(self.config)
            .gossip(self.membership.clone())
            .spawn_linked(self.name.as_str(), supervisor)
            .await?;
        self.membership.set_incarnation(liveness.incarnation());
        self.liveness.set(liveness);
        Ok(())
    }
}

#[cfg_attr(feature = "async-trait", ractor::async_trait)]
impl Actor for Supervisor {
    type Msg = Never;
    type State = State;
    type Arguments = State;

    async fn pre_start(
        &self,
        myself: ActorRef<Never>,
        state: State,
    ) -> std::result::Result<State, ActorProcessingErr> {
        state.spawn(myself.get_cell()).await?;
        Ok(state)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Never>,
        event: SupervisionEvent,
        state: &mut State,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let ended = matches!(
            event,
            SupervisionEvent::ActorFailed(..) | SupervisionEvent::ActorTerminated(..)
        );
        if !ended || state.liveness.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        tracing::error!(?event, "the node-level actor ended: spawning it again");
        state.spawn(myself.get_cell()).await?;
        state.liveness.restarts.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Spawns the node-level actor under its supervisor.
pub(crate) async fn start(
    name: String,
    config: SyncConfig,
    membership: Arc<Membership>,
) -> Result<Arc<Liveness>> {
    let liveness = Arc::new(Liveness {
        current: RwLock::new(None),
        stopping: AtomicBool::new(false),
        restarts: AtomicU64::new(0),
        supervisor: OnceLock::new(),
    });
    let state = State {
        name,
        config,
        membership,
        liveness: liveness.clone(),
    };
    let (supervisor, _) = Actor::spawn(None, Supervisor, state)
        .await
        .map_err(|e| Error::spawn("node-level actor", e))?;
    let _ = liveness.supervisor.set(supervisor);
    Ok(liveness)
}

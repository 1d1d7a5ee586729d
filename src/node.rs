//! The cluster node: ractor_cluster's NodeServer plus a dialer per configured peer.

mod config;
mod dialer;
mod peers;

use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::{NodeServer, NodeServerMessage};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::config::NodeConfig;
use self::dialer::Dialer;
use self::peers::{PeerEvents, Sessions};
use crate::{Error, Result};

const EVENTS_ID: &str = "ractor_cache_sync::peers";

/// This process's membership in the cluster.
///
/// Starts ractor_cluster's `NodeServer` on the configured address and keeps a session to every
/// configured peer (a full mesh when every pair is listed on at least one side), dialling
/// again with backoff after a session drops. There is one `Node` per process: ractor's
/// process groups are global to the process.
pub struct Node {
    name: String,
    server: ActorRef<NodeServerMessage>,
    sessions: watch::Receiver<Sessions>,
    dialers: Vec<JoinHandle<()>>,
}

impl Node {
    /// Starts the node, unsupervised.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid configuration; [`Error::Spawn`] if the listener cannot
    /// bind (for example, the port is taken).
    pub async fn start(config: NodeConfig) -> Result<Self> {
        Self::launch(config, None).await
    }

    /// Starts the node with its `NodeServer` linked to the user's `supervisor`.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start).
    pub async fn start_linked(config: NodeConfig, supervisor: ActorCell) -> Result<Self> {
        Self::launch(config, Some(supervisor)).await
    }

    async fn launch(config: NodeConfig, supervisor: Option<ActorCell>) -> Result<Self> {
        config.validate()?;
        let listen = config.listen_addr();
        let server = NodeServer::new(
            listen.port(),
            config.cookie().to_owned(),
            config.name().to_owned(),
            config.host(),
            None,
            None,
        )
        .with_listen_addr(listen.ip());
        let spawned = match supervisor {
            Some(sup) => Actor::spawn_linked(None, server, (), sup).await,
            None => Actor::spawn(None, server, ()).await,
        };
        let (server, _) = spawned.map_err(|e| Error::spawn("node server", e))?;
        let (events, sessions) = PeerEvents::new();
        server
            .cast(NodeServerMessage::SubscribeToEvents {
                id: EVENTS_ID.to_owned(),
                subscription: Box::new(events),
            })
            .map_err(Error::stopped)?;
        let dialers = spawn_dialers(&config, &server, &sessions);
        Ok(Self {
            name: format!("{}@{}", config.name(), config.host()),
            server,
            sessions,
            dialers,
        })
    }

    /// This node's cluster-wide name, `name@hostname`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names (`name@host`) of the peers with a ready session, sorted.
    pub fn peers(&self) -> Vec<String> {
        peers::names(&self.sessions.borrow())
    }

    /// Waits until at least `count` peers have a ready session.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if that does not happen within `timeout`.
    pub async fn wait_for_peers(&self, count: usize, timeout: Duration) -> Result<()> {
        let mut sessions = self.sessions.clone();
        let ready = sessions.wait_for(|s| peers::names(s).len() >= count);
        let outcome = tokio::time::timeout(timeout, ready)
            .await
            .map(|r| r.map(|_| ()));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::stopped(e)),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// The `NodeServer` actor, for supervision.
    pub fn actor(&self) -> ActorCell {
        self.server.get_cell()
    }

    /// Stops dialling and stops the `NodeServer`, closing every session: peers see this node's
    /// actors leave at once.
    pub async fn shutdown(self) {
        for dialer in &self.dialers {
            dialer.abort();
        }
        self.server.stop(None);
    }
}

fn spawn_dialers(
    config: &NodeConfig,
    server: &ActorRef<NodeServerMessage>,
    sessions: &watch::Receiver<Sessions>,
) -> Vec<JoinHandle<()>> {
    let dial = |addr: &String| Dialer {
        server: server.clone(),
        addr: addr.clone(),
        sessions: sessions.clone(),
        backoff: config.redial(),
        handshake_timeout: config.handshake(),
    };
    config
        .peers()
        .iter()
        .map(|addr| tokio::spawn(dial(addr).run()))
        .collect()
}

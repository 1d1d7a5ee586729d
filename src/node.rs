//! The cluster node: ractor_cluster's `NodeServer`, the sessions it keeps, and who it knows.
//!
//! [`Node`] is the handle, [`NodeConfig`] its settings ([`TlsFiles`] for mutual TLS);
//! [`MemberInfo`], [`MemberState`] and [`MemberChanges`] report the membership, [`NodeStats`]
//! the node's counters.
//!
//! # The supervision tree of one node
//!
//! ```text
//! your supervisor
//!  ├── NodeServer (ractor_cluster)      its own listener parked on a loopback port
//!  │    └── one session actor per peer
//!  ├── liveness supervisor              spawns the node-level actor again if it fails
//!  │    └── node-level actor            node heartbeats, gossip, carries topics' heartbeats
//!  ├── cache actor (per cache)          restarts its topic's actor, runs the coalescing timer
//!  │    └── Synchronization actor       the topic: sequence numbers, leases, repair
//!  └── Synchronization actor (per typed topic)
//! tasks (aborted at shutdown): the accept loop, a dialer per configured, discovered or
//! gossiped address, a discovery task per DNS name, the watchdog (silent peers, handshake
//! timeouts, suspensions, node metrics), the TLS file watch; per cache the reloader, the
//! revalidation task and its metrics.
//! ```
//!
//! # Who knows what about a peer
//!
//! | what | where | written by | read by |
//! |---|---|---|---|
//! | its ready session (actor, name, since when) | `peers::Sessions` (a watch channel) | node events | dialers, watchdog, `Node::peers` |
//! | its session before it is ready | `peers::Handshakes` | node events, accept loop | watchdog (timeouts), accept loop (shedding) |
//! | its session's secrets and TLS identity | `crate::sessions` (process-wide, like `ractor::pg`) | node events, TLS handshakes | every cast (origin proofs), topic actors (backlog bound) |
//! | that it is a member: address, incarnation, state | `membership::Membership` | gossip, configuration, discovery | the membership gate, dialers, `Node::members` |
//! | when it was last heard | the node-level topic's status, merged into the watchdog's own map (kept across a respawn of the node-level actor) | node heartbeats | watchdog |
//! | per topic: incarnation, applied sequence, lease, acknowledgements | each topic actor's `PeerTable` | that topic's actor | the topic's lease gate |
//! | per topic: a member not heard from yet | each topic actor's `unheard` | that topic's actor | its backlog bound, confirmations |

mod acceptor;
mod config;
mod dialer;
mod discovery;
mod liveness;
mod membership;
mod peers;
mod stats;
mod tls;
mod watchdog;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorRef};
use ractor_cluster::{IncomingEncryptionMode, NodeServer, NodeServerMessage};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use self::config::NodeConfig;
use self::dialer::Dialing;
use self::discovery::Discovery;
use self::membership::Membership;
pub use self::membership::{MemberInfo, MemberState};
use self::peers::{Arrivals, Handshakes, PeerEvents, Sessions};
use self::stats::NodeCounters;
pub use self::stats::NodeStats;
pub use self::tls::{TlsFiles, TLS_CLUSTER_NAME};
use self::watchdog::Watchdog;
use crate::error::{Error, Result};
use crate::gate::MemberGate;
use crate::synchronization::{Bundle, SyncConfig};

const EVENTS_ID: &str = "ractor_cache_sync::peers";

/// How long [`Node::shutdown`] lets queued envelopes (clean-leave notices) reach the sockets
/// before it closes the sessions. ractor_cluster offers no way to wait for its writers.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(100);

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
    handshakes: Handshakes,
    tasks: Vec<JoinHandle<()>>,
    liveness: Arc<liveness::Liveness>,
    /// The node's counters, shared with the watchdog, the dialers and the accept loop.
    counters: Arc<NodeCounters>,
    /// Whether every known member has a session with this node: caches check it.
    members: Arc<MemberGate>,
    /// Who this node knows of (gossip, configuration, discovery).
    membership: Arc<Membership>,
    /// The TLS configuration in use, read again when its files change.
    tls: Option<Arc<tls::Tls>>,
    /// This node's bundled topic heartbeats (deposits, the topics' sinks): its own, found by
    /// its topic actors under its name, never another node's in the same process.
    bundle: Arc<Bundle>,
}

/// Changes of a node's membership, from [`Node::member_changes`].
pub struct MemberChanges {
    changes: watch::Receiver<u64>,
    membership: Arc<Membership>,
}

impl MemberChanges {
    /// Waits for the next change and returns the members then.
    ///
    /// # Errors
    ///
    /// [`Error::ActorStopped`] once the node is gone.
    pub async fn changed(&mut self) -> Result<Vec<MemberInfo>> {
        self.changes
            .changed()
            .await
            .map_err(|e| Error::stopped_by("node", e))?;
        Ok(self.membership.members())
    }
}

impl std::fmt::Debug for MemberChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberChanges").finish_non_exhaustive()
    }
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
        let tls = config.tls_setup()?.map(Arc::new);
        let server = spawn_server(&config, tls.as_deref(), supervisor).await?;
        let (listener, listen) = bind(config.listen_addr()).await?;
        let (sessions, handshakes, arrivals) = watch_sessions(&server, tls.is_some())?;
        let name = format!("{}@{}", config.name(), config.host());
        // Before any topic actor of this node starts: they find it by the node's name.
        let bundle = Bundle::for_node(&name);
        let counters = Arc::new(NodeCounters::default());
        let dialing = Dialing {
            server: server.clone(),
            sessions: sessions.clone(),
            handshakes: handshakes.clone(),
            counters: counters.clone(),
            tls: tls.clone(),
            backoff: config.redial(),
            handshake_timeout: config.handshake(),
        };
        let membership = Arc::new(Membership::new(
            name.clone(),
            format!("{}:{}", config.host(), listen.port()),
            config.peers().to_vec(),
            config.dials_gossiped(),
            dialing.clone(),
            arrivals,
            config.forget_members(),
        ));
        let (heartbeat, timeout) = config.liveness();
        let liveness =
            liveness::start(name.clone(), node_topic(heartbeat), membership.clone()).await?;
        // The gate is right from the start: open alone, closed until a given peer is reached.
        membership.tick();
        let mut tasks = dial_and_discover(&config, &dialing, listen, &membership);
        tasks.push(tokio::spawn(acceptor::run(
            listener,
            tls.clone(),
            server.clone(),
            config.handshake(),
            handshakes.clone(),
            counters.clone(),
        )));
        let watchdog = Watchdog {
            liveness: liveness.clone(),
            sessions: sessions.clone(),
            handshakes: handshakes.clone(),
            interval: heartbeat,
            timeout,
            handshake_timeout: config.handshake(),
            counters: counters.clone(),
            membership: membership.clone(),
            bundle: bundle.clone(),
        };
        tasks.push(tokio::spawn(watchdog.run()));
        if let Some(tls) = &tls {
            tasks.push(tokio::spawn(tls::watch(tls.clone(), config.tls_reload())));
        }
        Ok(Self {
            name,
            server,
            sessions,
            handshakes,
            tasks,
            liveness,
            counters,
            members: membership.gate(),
            membership,
            tls,
            bundle,
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
            Ok(Err(e)) => Err(Error::stopped_by("node", e)),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Every other member this node knows of — configured, discovered, reported by a
    /// peer's gossip, or whose session was ready at some point — with its address and state,
    /// and the members that left cleanly a short while ago (`forget_members_after`), sorted by
    /// name. In bounded mode, caches serve from their heap without checking only while every
    /// member listed is `Ready` or `Left`.
    ///
    /// A `Down` member stays listed, and keeps caches checking their entries against the
    /// source, until there is evidence it is gone: it leaves cleanly, comes back under a new
    /// incarnation, discovery no longer lists its address, a peer that listed it drops it, or
    /// [`remove_member`](Self::remove_member) — silence alone is not evidence, since a
    /// partitioned member may still be writing to the source.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.membership.members()
    }

    /// Tells this node that the member `name` (`name@host`) is gone for good — a node that
    /// was killed and will not come back under that name — so that it stops holding the
    /// membership gate closed. Peers that listed it drop it too when they hear this node's
    /// next heartbeat. Returns whether the member was known.
    ///
    /// Only for a member that really stopped: one that is still writing to the source behind
    /// a partition would then be served stale here until it reconnects.
    pub fn remove_member(&self, name: &str) -> bool {
        self.membership.remove(name)
    }

    /// Watches [`members`](Self::members): [`MemberChanges::changed`] returns the new list
    /// each time a member appears, changes state or is forgotten.
    pub fn member_changes(&self) -> MemberChanges {
        MemberChanges {
            changes: self.membership.changes(),
            membership: self.membership.clone(),
        }
    }

    /// Waits until `until` holds for [`members`](Self::members), and returns them.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] if that does not happen within `timeout`.
    pub async fn wait_for_members(
        &self,
        until: impl Fn(&[MemberInfo]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<MemberInfo>> {
        let mut changes = self.member_changes();
        let wait = async {
            loop {
                let members = self.members();
                if until(&members) {
                    return Ok(members);
                }
                changes.changed().await?;
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// How many times the node-level actor (heartbeats, gossip) failed and was spawned again
    /// by its supervisor.
    pub fn liveness_restarts(&self) -> u64 {
        self.liveness.restarts()
    }

    /// Kills the node-level actor, as a bug in it would (fault injection): its supervisor
    /// spawns it again.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn kill_liveness(&self) {
        if let Some(current) = self.liveness.current() {
            current.actor().kill();
        }
    }

    /// The node-level actor's incarnation, as its heartbeats carry it (fault injection: what a
    /// forger needs).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn liveness_incarnation(&self) -> Option<u64> {
        self.liveness.current().map(|l| l.incarnation())
    }

    /// Makes the node-level actor list `count` made-up members in its heartbeats (fault
    /// injection).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn gossip_made_up_members(&self, count: usize) {
        if let Some(current) = self.liveness.current() {
            let _ = current.gossip_made_up_members(count);
        }
    }

    /// Makes the node-level actor forge a clean leave under another node's name and node-level
    /// incarnation, as a peer posing as it would (fault injection).
    #[cfg(feature = "fault-injection")]
    pub(crate) fn forge_leave(&self, origin: &str, incarnation: u64) {
        if let Some(current) = self.liveness.current() {
            let _ = current.forge_leave(origin, incarnation);
        }
    }

    /// How many times this node found that the system had been suspended (the clock that
    /// counts suspended time moved more than 50 ms past the one leases use): each time every
    /// lease gate closed until heartbeats sent after the wake-up renewed it, and every cache
    /// checked its entries again.
    pub fn suspensions(&self) -> u64 {
        self.stats().suspensions
    }

    /// Makes the clock that counts suspended time jump by `sleep`, as a suspension of the
    /// system would (fault injection): the node reacts at its next heartbeat.
    #[cfg(feature = "fault-injection")]
    pub(crate) fn simulate_suspension(&self, sleep: Duration) {
        crate::clock::inject_sleep(sleep);
    }

    /// With TLS, how many times changed certificate files were read and put in use since start.
    pub fn tls_reloads(&self) -> u64 {
        self.tls.as_ref().map_or(0, |tls| tls.reloads())
    }

    /// With TLS, how many times changed certificate files were refused since start (they did
    /// not load, or the certificate names another node); the ones in use were kept.
    pub fn tls_reload_failures(&self) -> u64 {
        self.tls.as_ref().map_or(0, |tls| tls.reload_failures())
    }

    /// How many times a silent peer was declared down (its session closed) since start.
    pub fn peers_declared_down(&self) -> u64 {
        self.stats().peers_declared_down
    }

    /// How many connections, dialled or accepted, were closed since start because their
    /// session did not become ready within the handshake timeout (a stopped peer whose kernel
    /// still accepts connections, an idle or slow client). Each would otherwise hold a socket.
    pub fn handshakes_timed_out(&self) -> u64 {
        self.stats().handshakes_timed_out
    }

    /// How many times accepting a connection on the listen address failed since start, most
    /// often because the process ran out of file descriptors. The listener backs off after
    /// each failure (10 ms, doubling to 1 s, reset by the next accepted connection), so this
    /// grows by at most about 100 a second however many connections wait.
    pub fn accept_errors(&self) -> u64 {
        self.stats().accept_errors
    }

    /// Every counter of this node since it started, and the peers up now.
    pub fn stats(&self) -> NodeStats {
        self.counters
            .snapshot(peers::names(&self.sessions.borrow()).len())
    }

    /// The membership gate this node's caches check on every read.
    pub(crate) fn member_gate(&self) -> Arc<MemberGate> {
        self.members.clone()
    }

    /// How many connections are waiting for their session's handshake now.
    pub fn handshakes_in_progress(&self) -> usize {
        self.handshakes.len()
    }

    /// The `NodeServer` actor, for supervision.
    pub fn actor(&self) -> ActorCell {
        self.server.get_cell()
    }

    /// Stops dialling and stops the `NodeServer`, closing every session: peers see this node's
    /// actors leave at once.
    ///
    /// Stop this node's caches first (`cache.actor().stop_and_wait(..)`): each then tells its
    /// peers it leaves cleanly, so they drop it at once instead of checking their entries
    /// against the source until there is evidence it is gone. Shutdown waits 100 ms for those
    /// last envelopes to reach the sockets before closing the sessions.
    pub async fn shutdown(self) {
        for task in &self.tasks {
            task.abort();
        }
        self.liveness.stop().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
        // Session ids are only unique within one NodeServer: a node started later in this
        // process must not find these.
        let closing: Vec<ractor::ActorId> = self.sessions.borrow().keys().copied().collect();
        for session in closing {
            crate::sessions::unregister(session);
        }
        self.server.stop(None);
    }
}

/// A node dropped without [`shutdown`](Node::shutdown) stops all the same — its accept loop,
/// dialers, watchdog, node-level actor and `NodeServer` — but without the grace that lets its
/// clean leave reach the peers: they treat it as vanished.
impl Drop for Node {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        self.liveness.stop_now();
        let closing: Vec<ractor::ActorId> = self.sessions.borrow().keys().copied().collect();
        for session in closing {
            crate::sessions::unregister(session);
        }
        self.server.stop(None);
    }
}

/// A node stands for its name where a topic needs one: `Synchronization::spawn(topic, &node)`.
impl AsRef<str> for Node {
    fn as_ref(&self) -> &str {
        &self.name
    }
}

/// Spawns ractor_cluster's `NodeServer`. Our own accept loop owns the listen address; the
/// server's listener (no handshake deadline, no backoff when file descriptors run out) is
/// parked on an ephemeral loopback port, TLS-only too with TLS.
async fn spawn_server(
    config: &NodeConfig,
    tls: Option<&tls::Tls>,
    supervisor: Option<ActorCell>,
) -> Result<ActorRef<NodeServerMessage>> {
    let encryption = tls.map(|tls| IncomingEncryptionMode::Tls(tls.acceptor()));
    let (port, ip) = (0, std::net::IpAddr::from([127, 0, 0, 1]));
    let server = NodeServer::new(
        port,
        config.cookie().to_owned(),
        config.name().to_owned(),
        config.host(),
        encryption,
        None,
    )
    .with_listen_addr(ip);
    let spawned = match supervisor {
        Some(sup) => Actor::spawn_linked(None, server, (), sup).await,
        None => Actor::spawn(None, server, ()).await,
    };
    let (server, _) = spawned.map_err(|e| Error::spawn("node server", e))?;
    Ok(server)
}

/// Binds the listen address; returns the listener and the address bound (port 0 asks for any
/// free port: the one bound is advertised).
async fn bind(listen: SocketAddr) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::Spawn {
            what: "listener",
            cause: Arc::new(e),
        })?;
    let bound = listener.local_addr().unwrap_or(listen);
    Ok((listener, bound))
}

/// Subscribes to the server's session events: the ready sessions, and those not ready yet.
fn watch_sessions(
    server: &ActorRef<NodeServerMessage>,
    tls: bool,
) -> Result<(watch::Receiver<Sessions>, Handshakes, Arrivals)> {
    let (events, sessions, handshakes, arrivals) = PeerEvents::new(tls);
    server
        .cast(NodeServerMessage::SubscribeToEvents {
            id: EVENTS_ID.to_owned(),
            subscription: Box::new(events),
        })
        .map_err(|e| Error::stopped_by("node server", e))?;
    Ok((sessions, handshakes, arrivals))
}

/// The node-level topic's settings: its lease is three node heartbeats, and a silent member
/// is forgotten only after a day (the membership forgets members on its own schedule).
fn node_topic(heartbeat: Duration) -> SyncConfig {
    SyncConfig::default()
        .heartbeat(heartbeat)
        .lease(heartbeat * 3)
        .forget_after(Duration::from_secs(24 * 3600).max(heartbeat * 3))
}

/// A dialer per configured peer and a discovery task per DNS name.
fn dial_and_discover(
    config: &NodeConfig,
    dialing: &Dialing,
    listen: SocketAddr,
    membership: &Arc<Membership>,
) -> Vec<JoinHandle<()>> {
    let mut tasks: Vec<JoinHandle<()>> = config
        .peers()
        .iter()
        .map(|addr| tokio::spawn(dialing.dialer(addr).run()))
        .collect();
    let (names, every) = config.discovery();
    for name in names {
        let discovery = Discovery::new(name, every, listen, dialing.clone(), membership);
        tasks.push(tokio::spawn(discovery.run()));
    }
    tasks
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("peers", &self.peers())
            .field("bundle", &self.bundle)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_dropped_without_shutdown_stops_its_tasks_and_frees_its_address() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = free.local_addr().unwrap();
        drop(free);
        let config = NodeConfig::new("dropped", "dropped-cookie-0123456789abcdef").listen(addr);
        let node = Node::start(config).await.unwrap();
        let server = node.actor();
        let node_level = node.liveness.current().unwrap().actor();
        drop(node);
        let stopped = |cell: &ActorCell| cell.get_status() == ractor::ActorStatus::Stopped;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(stopped(&server)
            && stopped(&node_level)
            && std::net::TcpListener::bind(addr).is_ok())
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the dropped node still runs: server {:?}, node-level actor {:?}, address bound: {}",
                server.get_status(),
                node_level.get_status(),
                std::net::TcpListener::bind(addr).is_err()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

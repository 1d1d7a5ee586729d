//! Which peer sessions are ready, fed by ractor_cluster's node events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ractor::{ActorId, ActorRef};
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::{NodeEventSubscription, NodeSessionMessage};

use crate::clock::now_us;
use tokio::sync::watch;

/// One ready session with a peer.
#[derive(Debug, Clone)]
pub(crate) struct PeerSession {
    /// `name@host`.
    pub(crate) name: String,
    /// The address the peer listens on, as it advertises it (`host:port`).
    pub(crate) listens_on: String,
    /// The socket address of this connection's far end.
    pub(crate) peer_addr: String,
    /// The session actor, to close the session when the peer falls silent.
    pub(crate) actor: ActorRef<NodeSessionMessage>,
    /// Our clock (µs) when the session became ready.
    pub(crate) ready_at: u64,
}

pub(crate) type Sessions = HashMap<ActorId, PeerSession>;

/// Every session that became ready, as (name, address it listens on), until the membership
/// takes them: a peer is a member from the moment its session is ready, even if the session
/// closes before the membership next looks at the ready sessions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Arrivals(Arc<Mutex<Vec<(String, String)>>>);

impl Arrivals {
    /// How many arrivals wait at most: beyond, the oldest go (the membership takes them every
    /// heartbeat, so only a flood of sessions gets there).
    const CAP: usize = 4_096;

    fn push(&self, name: String, listens_on: String) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() >= Self::CAP {
            all.remove(0);
        }
        all.push((name, listens_on));
    }

    /// Takes every arrival since the last call.
    pub(crate) fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A session that opened (a connection we dialled or accepted) but has not become ready: its
/// handshake is under way, or stuck (a stopped peer whose kernel still accepts connections, an
/// idle socket). Each holds a socket until it is closed.
#[derive(Debug, Clone)]
struct Unready {
    /// The socket address of the far end.
    peer_addr: String,
    /// We dialled it.
    outbound: bool,
    actor: ActorRef<NodeSessionMessage>,
    /// Our clock (µs) when it opened.
    opened_at: u64,
}

/// The sessions that opened and are not ready yet, for the dialers and the watchdog.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handshakes(Arc<Mutex<HashMap<ActorId, Unready>>>);

impl Handshakes {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<ActorId, Unready>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Closes every session that opened before `opened_before` (our clock, µs) and is still
    /// not ready; returns how many.
    pub(crate) fn close_older_than(&self, opened_before: u64) -> usize {
        self.close(
            |u| u.opened_at < opened_before,
            "handshake did not finish in time",
        )
    }

    /// Closes the oldest inbound sessions not ready yet while there are more than `cap`;
    /// returns how many.
    pub(crate) fn shed_inbound_beyond(&self, cap: usize) -> usize {
        let shed: Vec<Unready> = self.with(|all| {
            let mut inbound: Vec<(u64, ActorId)> = all
                .iter()
                .filter(|(_, u)| !u.outbound)
                .map(|(id, u)| (u.opened_at, *id))
                .collect();
            if inbound.len() <= cap {
                return Vec::new();
            }
            inbound.sort_unstable();
            let excess = inbound.len() - cap;
            inbound[..excess]
                .iter()
                .filter_map(|(_, id)| all.remove(id))
                .collect()
        });
        for unready in &shed {
            tracing::debug!(addr = %unready.peer_addr, "shedding the oldest unauthenticated session");
            unready
                .actor
                .stop(Some("too many unauthenticated sessions".to_owned()));
        }
        shed.len()
    }

    /// Closes the sessions we dialled to `addr` (or one of the addresses it resolved to) that
    /// are not ready: a dial whose handshake timed out; returns how many.
    pub(crate) fn close_dialled(&self, addr: &str, resolved: &[std::net::SocketAddr]) -> usize {
        let to = |u: &Unready| {
            u.peer_addr == addr || u.peer_addr.parse().is_ok_and(|a| resolved.contains(&a))
        };
        self.close(
            |u| u.outbound && to(u),
            "dial timed out before the session was ready",
        )
    }

    fn close(&self, which: impl Fn(&Unready) -> bool, reason: &str) -> usize {
        let closing: Vec<Unready> = self.with(|all| {
            let ids: Vec<ActorId> = all
                .iter()
                .filter(|(_, u)| which(u))
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| all.remove(id)).collect()
        });
        for unready in &closing {
            tracing::debug!(addr = %unready.peer_addr, %reason, "closing a session that never became ready");
            unready.actor.stop(Some(reason.to_owned()));
        }
        closing.len()
    }

    /// How many sessions are waiting for their handshake now.
    pub(crate) fn len(&self) -> usize {
        self.with(|all| all.len())
    }
}

/// Publishes the set of ready sessions into a watch channel.
pub(crate) struct PeerEvents {
    sessions: watch::Sender<Sessions>,
    handshakes: Handshakes,
    /// Every session that became ready, for the membership.
    arrivals: Arrivals,
    /// With TLS: a session whose claimed name differs from its certificate is closed.
    tls: bool,
}

impl PeerEvents {
    pub(crate) fn new(tls: bool) -> (Self, watch::Receiver<Sessions>, Handshakes, Arrivals) {
        let (sessions, receiver) = watch::channel(Sessions::new());
        let handshakes = Handshakes::default();
        let arrivals = Arrivals::default();
        let events = Self {
            sessions,
            handshakes: handshakes.clone(),
            arrivals: arrivals.clone(),
            tls,
        };
        (events, receiver, handshakes, arrivals)
    }
}

impl NodeEventSubscription for PeerEvents {
    fn node_session_opened(&self, ses: NodeServerSessionInformation) {
        let unready = Unready {
            peer_addr: ses.peer_addr.clone(),
            outbound: !ses.is_server,
            actor: ses.actor.clone(),
            opened_at: now_us(),
        };
        self.handshakes
            .with(|all| all.insert(ses.actor.get_id(), unready));
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        if !self.tls {
            return;
        }
        let claimed = ses
            .peer_name
            .as_ref()
            .map(|p| p.name.split('@').next().unwrap_or("").to_owned());
        let certified = crate::sessions::identity(&ses.peer_addr);
        if claimed.is_none() || claimed != certified {
            tracing::warn!(?claimed, ?certified, addr = %ses.peer_addr, "peer claims a name its certificate does not carry: closing");
            ses.actor.stop(Some(
                "claimed name does not match the certificate".to_owned(),
            ));
        }
    }

    fn node_session_ready(&self, ses: NodeServerSessionInformation) {
        let (name, listens_on) = match &ses.peer_name {
            Some(peer) => (peer.name.clone(), peer.connection_string.clone()),
            None => (ses.peer_addr.clone(), String::new()),
        };
        tracing::info!(peer = %name, addr = %ses.peer_addr, "peer session ready");
        self.handshakes.with(|all| all.remove(&ses.actor.get_id()));
        let session = PeerSession {
            name,
            listens_on,
            peer_addr: ses.peer_addr.clone(),
            actor: ses.actor.clone(),
            ready_at: now_us(),
        };
        crate::sessions::register(
            &session.name,
            ses.actor.clone(),
            ses.node_id,
            &ses.peer_addr,
        );
        self.arrivals
            .push(session.name.clone(), session.listens_on.clone());
        self.sessions.send_modify(|s| {
            s.insert(ses.actor.get_id(), session);
        });
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        tracing::info!(addr = %ses.peer_addr, "peer session closed");
        crate::sessions::unregister(ses.actor.get_id());
        crate::sessions::forget_identity(&ses.peer_addr);
        self.handshakes.with(|all| all.remove(&ses.actor.get_id()));
        self.sessions
            .send_if_modified(|s| s.remove(&ses.actor.get_id()).is_some());
    }
}

/// Whether some ready session is with the peer configured as `addr` (which may be a name
/// that resolves to `resolved`).
pub(crate) fn has_session(
    sessions: &Sessions,
    addr: &str,
    resolved: &[std::net::SocketAddr],
) -> bool {
    sessions.values().any(|s| is_with(s, addr, resolved))
}

/// Whether `session` is with the peer configured as `addr`.
pub(crate) fn is_with(
    session: &PeerSession,
    addr: &str,
    resolved: &[std::net::SocketAddr],
) -> bool {
    let matches = |s: &str| s == addr || s.parse().is_ok_and(|a| resolved.contains(&a));
    matches(&session.listens_on) || matches(&session.peer_addr)
}

/// Sorted, distinct names of the peers with a ready session.
pub(crate) fn names(sessions: &Sessions) -> Vec<String> {
    let mut names: Vec<String> = sessions.values().map(|s| s.name.clone()).collect();
    names.sort();
    names.dedup();
    names
}

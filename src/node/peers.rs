//! Which peer sessions are ready, fed by ractor_cluster's node events.

use std::collections::HashMap;

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

/// Publishes the set of ready sessions into a watch channel.
pub(crate) struct PeerEvents {
    sessions: watch::Sender<Sessions>,
    /// With TLS: a session whose claimed name differs from its certificate is closed.
    tls: bool,
}

impl PeerEvents {
    pub(crate) fn new(tls: bool) -> (Self, watch::Receiver<Sessions>) {
        let (sessions, receiver) = watch::channel(Sessions::new());
        (Self { sessions, tls }, receiver)
    }
}

impl NodeEventSubscription for PeerEvents {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

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
        let session = PeerSession {
            name,
            listens_on,
            peer_addr: ses.peer_addr.clone(),
            actor: ses.actor.clone(),
            ready_at: now_us(),
        };
        crate::sessions::register(&session.name, ses.actor.clone());
        self.sessions.send_modify(|s| {
            s.insert(ses.actor.get_id(), session);
        });
    }

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        tracing::info!(addr = %ses.peer_addr, "peer session closed");
        crate::sessions::unregister(ses.actor.get_id());
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

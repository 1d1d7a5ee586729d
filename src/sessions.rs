//! Process-wide map from peer name to its ready session, so that a Synchronization actor can
//! close the session of a peer that stopped acknowledging (bounded backlog), and can tell which
//! members this node has a session with (what its heartbeats vouch for, and what it checks of
//! a peer's). Process-wide like `ractor::pg` itself: there is one `Node` per process.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use ractor::{ActorId, ActorRef};
use ractor_cluster::NodeSessionMessage;

type Registry = HashMap<String, ActorRef<NodeSessionMessage>>;

fn registry() -> &'static Mutex<Registry> {
    static SESSIONS: OnceLock<Mutex<Registry>> = OnceLock::new();
    SESSIONS.get_or_init(Mutex::default)
}

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    f(&mut registry().lock().unwrap_or_else(|e| e.into_inner()))
}

pub(crate) fn register(peer: &str, session: ActorRef<NodeSessionMessage>) {
    with(|r| r.insert(peer.to_owned(), session));
}

pub(crate) fn unregister(session: ActorId) {
    with(|r| r.retain(|_, s| s.get_id() != session));
}

/// Whether this node has a ready session with `peer`.
pub(crate) fn has_session(peer: &str) -> bool {
    with(|r| r.contains_key(peer))
}

/// Names of the peers this node has a ready session with.
pub(crate) fn peer_names() -> Vec<String> {
    with(|r| r.keys().cloned().collect())
}

/// Closes the session with `peer`, if there is one; its members leave at once and it is
/// dialled again with backoff.
pub(crate) fn close_session(peer: &str, reason: &str) -> bool {
    let Some(session) = with(|r| r.remove(peer)) else {
        return false;
    };
    tracing::warn!(%peer, %reason, "closing the session with a peer");
    session.stop(Some(reason.to_owned()));
    true
}

/// Certificate node names of TLS connections, by the peer's socket address.
fn identities() -> &'static Mutex<HashMap<String, String>> {
    static IDENTITIES: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    IDENTITIES.get_or_init(Mutex::default)
}

pub(crate) fn record_identity(peer_addr: &str, name: &str) {
    let mut ids = identities().lock().unwrap_or_else(|e| e.into_inner());
    if ids.len() > 4096 {
        ids.clear(); // stale entries of closed connections; live ones are checked long before
    }
    ids.insert(peer_addr.to_owned(), name.to_owned());
}

/// The certificate node name of the TLS connection from `peer_addr`, if there was one.
pub(crate) fn identity(peer_addr: &str) -> Option<String> {
    let ids = identities().lock().unwrap_or_else(|e| e.into_inner());
    ids.get(peer_addr).cloned()
}

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

/// Most certificate names kept for connections whose session has not closed: past it the
/// oldest is dropped, one at a time (a connection whose session is checked has long been
/// checked by then).
const MAX_IDENTITIES: usize = 4096;

/// Certificate node names of TLS connections by the peer's socket address, with the order
/// they were recorded in.
#[derive(Default)]
struct Identities {
    names: HashMap<String, String>,
    order: std::collections::VecDeque<String>,
}

fn identities() -> &'static Mutex<Identities> {
    static IDENTITIES: OnceLock<Mutex<Identities>> = OnceLock::new();
    IDENTITIES.get_or_init(Mutex::default)
}

fn with_identities<T>(f: impl FnOnce(&mut Identities) -> T) -> T {
    f(&mut identities().lock().unwrap_or_else(|e| e.into_inner()))
}

pub(crate) fn record_identity(peer_addr: &str, name: &str) {
    with_identities(|ids| {
        if ids
            .names
            .insert(peer_addr.to_owned(), name.to_owned())
            .is_none()
        {
            ids.order.push_back(peer_addr.to_owned());
        }
        while ids.names.len() > MAX_IDENTITIES {
            let Some(oldest) = ids.order.pop_front() else {
                break;
            };
            ids.names.remove(&oldest);
        }
        // Addresses forgotten already may linger in the order: keep it near the map's size.
        if ids.order.len() > 2 * MAX_IDENTITIES {
            let names = &ids.names;
            ids.order.retain(|addr| names.contains_key(addr));
        }
    });
}

/// The session from `peer_addr` closed: its certificate name is not needed any more.
pub(crate) fn forget_identity(peer_addr: &str) {
    with_identities(|ids| ids.names.remove(peer_addr));
}

/// The certificate node name of the TLS connection from `peer_addr`, if there was one.
pub(crate) fn identity(peer_addr: &str) -> Option<String> {
    with_identities(|ids| ids.names.get(peer_addr).cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_cap_only_the_oldest_identities_are_dropped() {
        // Process-wide map: addresses of this test's own.
        let addr = |i: usize| format!("192.0.2.1:{i}");
        for i in 0..MAX_IDENTITIES + 100 {
            record_identity(&addr(i), &format!("n{i}@host"));
        }
        assert_eq!(identity(&addr(0)), None, "the oldest was kept past the cap");
        let last = MAX_IDENTITIES + 99;
        assert_eq!(
            identity(&addr(last)).as_deref(),
            Some(&*format!("n{last}@host"))
        );
        assert_eq!(
            identity(&addr(500)).as_deref(),
            Some("n500@host"),
            "the map was cleared wholesale"
        );
        forget_identity(&addr(last));
        assert_eq!(identity(&addr(last)), None);
    }
}

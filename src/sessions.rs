//! Process-wide map from peer name to its ready session, so that a Synchronization actor can
//! close the session of a peer that stopped acknowledging (bounded backlog), and can tell which
//! members this node has a session with (what its heartbeats vouch for, and what it checks of
//! a peer's). Process-wide like `ractor::pg` itself: there is one `Node` per process.
//!
//! It also keeps each session's secret. A cast carries no trace of the session it came on, so
//! an envelope's origin is the sender's word; but every cast also carries ractor's optional
//! metadata bytes, point to point. Each node sends, in the metadata of every cast over a
//! session, its secret for that session and the peer's secret as it last received it; a node
//! holding the cookie or a certificate of the cluster sees only the secrets of its own
//! sessions, so an envelope naming origin `a` whose metadata does not echo the secret this
//! node sends over its session with `a` did not come from `a` (see [`verify`]).
//!
//! With TLS both ends derive the session's secret from the connection's keying material
//! (RFC 5705 exporter): it is the same on both sides from the first cast, and nobody else can
//! know it. Without TLS each node picks a random one and the peer learns it from the first
//! casts: until a cast proves itself, the latest claim is kept (so a stale cast or a forgery
//! can delay the first proof, never block it), and after that only proven casts change it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ractor::{ActorCell, ActorId, ActorRef};
use ractor_cluster::{NodeId, NodeSessionMessage};

/// One ready session and its secrets.
struct Session {
    actor: ActorCell,
    node_id: NodeId,
    /// Ours: the peer must echo it.
    ours: u128,
    /// The peer's, as it sent it (0 until then).
    theirs: u128,
    /// Whether `theirs` came with a cast that proved itself (or from the TLS connection).
    confirmed: bool,
}

/// A closed session's secret, still accepted for a while: envelopes the peer sent before the
/// session closed (its clean leave among them) may be handled after the close is.
struct Retired {
    peer: String,
    ours: u128,
    until: Instant,
}

/// How long a closed session's secret is still accepted.
const RETIRED_FOR: Duration = Duration::from_secs(10);
/// Most closed sessions' secrets kept (the oldest goes first).
const MAX_RETIRED: usize = 256;

/// Sessions by peer name: normally one, two while ractor_cluster settles a duplicate
/// connection (each keeps its own secrets).
#[derive(Default)]
struct Registry {
    live: HashMap<String, Vec<Session>>,
    retired: VecDeque<Retired>,
}

fn registry() -> &'static Mutex<Registry> {
    static SESSIONS: OnceLock<Mutex<Registry>> = OnceLock::new();
    SESSIONS.get_or_init(Mutex::default)
}

fn with<T>(f: impl FnOnce(&mut Registry) -> T) -> T {
    f(&mut registry().lock().unwrap_or_else(|e| e.into_inner()))
}

/// A session became ready. `peer_addr` finds the secret of its TLS connection, if it has one.
pub(crate) fn register(
    peer: &str,
    actor: ActorRef<NodeSessionMessage>,
    node_id: NodeId,
    peer_addr: &str,
) {
    let tls = with_identities(|ids| ids.names.get(peer_addr).and_then(|i| i.secret));
    let session = match tls {
        Some(secret) => Session {
            actor: actor.get_cell(),
            node_id,
            ours: secret,
            theirs: secret,
            confirmed: true,
        },
        None => Session {
            actor: actor.get_cell(),
            node_id,
            ours: secret(),
            theirs: 0,
            confirmed: false,
        },
    };
    with(|r| r.live.entry(peer.to_owned()).or_default().push(session));
}

pub(crate) fn unregister(session: ActorId) {
    with(|r| {
        let mut closed = Vec::new();
        r.live.retain(|peer, sessions| {
            sessions.retain(|s| {
                let keep = s.actor.get_id() != session;
                if !keep {
                    closed.push((peer.clone(), s.ours));
                }
                keep
            });
            !sessions.is_empty()
        });
        for (peer, ours) in closed {
            r.retire(peer, ours);
        }
    });
}

impl Registry {
    fn retire(&mut self, peer: String, ours: u128) {
        let until = Instant::now() + RETIRED_FOR;
        self.retired.push_back(Retired { peer, ours, until });
        while self.retired.len() > MAX_RETIRED {
            self.retired.pop_front();
        }
    }

    /// The ready session with id `node` (as remote actors' stubs carry it), and its peer's
    /// name.
    fn by_node(&self, node: NodeId) -> Option<(&String, &Session)> {
        self.live
            .iter()
            .find_map(|(name, sessions)| Some((name, sessions.iter().find(|s| s.node_id == node)?)))
    }

    fn retired_accepts(&mut self, peer: &str, echoed: u128) -> bool {
        let now = Instant::now();
        self.retired.retain(|r| r.until > now);
        self.retired
            .iter()
            .any(|r| r.peer == peer && r.ours == echoed)
    }
}

/// The metadata of a cast: the sender's secret for the receiver, and the receiver's secret
/// for the sender as the sender last received it (0 if not yet).
const TOKEN_BYTES: usize = 32;

/// What to put in the metadata of a cast to each of `nodes` (the session ids of remote actors'
/// stubs), in the same order; `None` for a node with no ready session.
pub(crate) fn tokens_for(nodes: impl Iterator<Item = NodeId>) -> Vec<Option<Vec<u8>>> {
    with(|r| {
        nodes
            .map(|node| r.by_node(node).map(|(_, session)| token(session)))
            .collect()
    })
}

/// Like [`tokens_for`], with the name of the peer each session is with (as its handshake
/// proved it).
pub(crate) fn named_tokens_for(
    nodes: impl Iterator<Item = NodeId>,
) -> Vec<Option<(String, Vec<u8>)>> {
    with(|r| {
        nodes
            .map(|node| {
                r.by_node(node)
                    .map(|(name, session)| (name.clone(), token(session)))
            })
            .collect()
    })
}

fn token(session: &Session) -> Vec<u8> {
    let mut token = Vec::with_capacity(TOKEN_BYTES);
    token.extend_from_slice(&session.ours.to_le_bytes());
    token.extend_from_slice(&session.theirs.to_le_bytes());
    token
}

/// Whether a cast whose envelope names `origin` came from the peer of this node's session with
/// `origin` (or of one closed moments ago): its metadata echoes the secret this node sends over
/// that session, which no other node sees. The peer's own secret is taken from a cast that
/// proves itself; until one has, from the latest cast claiming to be the peer.
pub(crate) fn verify(origin: &str, token: Option<&[u8]>) -> bool {
    let Some(token) = token.filter(|t| t.len() == TOKEN_BYTES) else {
        return false;
    };
    let (theirs, echoed) = token.split_at(16);
    let theirs = u128::from_le_bytes(theirs.try_into().expect("16 bytes"));
    let echoed = u128::from_le_bytes(echoed.try_into().expect("16 bytes"));
    with(|r| {
        if let Some(sessions) = r.live.get_mut(origin) {
            if let Some(session) = sessions.iter_mut().find(|s| s.ours == echoed) {
                if theirs != 0 {
                    session.theirs = theirs;
                    session.confirmed = true;
                }
                return true;
            }
            for session in sessions.iter_mut().filter(|s| !s.confirmed) {
                session.theirs = theirs;
            }
        }
        r.retired_accepts(origin, echoed)
    })
}

/// A random nonzero secret. Without entropy from the OS it falls back to std's randomly
/// keyed hasher (its keys differ per call) over the wall clock.
fn secret() -> u128 {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for half in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            hasher.write_u128(now.map_or(0, |d| d.as_nanos()));
            half.copy_from_slice(&hasher.finish().to_le_bytes());
        }
    }
    u128::from_le_bytes(bytes).max(1)
}

/// The name of the peer of the ready session with id `node` (as remote actors' stubs carry
/// it).
pub(crate) fn name_of(node: NodeId) -> Option<String> {
    with(|r| r.by_node(node).map(|(name, _)| name.clone()))
}

/// Whether this node has a ready session with `peer`.
pub(crate) fn has_session(peer: &str) -> bool {
    with(|r| r.live.contains_key(peer))
}

/// Names of the peers this node has a ready session with.
pub(crate) fn peer_names() -> Vec<String> {
    with(|r| r.live.keys().cloned().collect())
}

/// Closes the session with `peer`, if there is one; its members leave at once and it is
/// dialled again with backoff.
pub(crate) fn close_session(peer: &str, reason: &str) -> bool {
    let Some(sessions) = with(|r| {
        let sessions = r.live.remove(peer)?;
        for session in &sessions {
            r.retire(peer.to_owned(), session.ours);
        }
        Some(sessions)
    }) else {
        return false;
    };
    tracing::warn!(%peer, %reason, "closing the session with a peer");
    for session in sessions {
        session.actor.stop(Some(reason.to_owned()));
    }
    true
}

/// Most certificate names kept for connections whose session has not closed: past it the
/// oldest is dropped, one at a time (a connection whose session is checked has long been
/// checked by then).
const MAX_IDENTITIES: usize = 4096;

/// What a TLS connection established: the certificate's node name, and the session secret
/// both ends derived from the connection's keying material.
struct Identity {
    name: String,
    secret: Option<u128>,
}

/// Identities of TLS connections by the peer's socket address, with the order they were
/// recorded in.
#[derive(Default)]
struct Identities {
    names: HashMap<String, Identity>,
    order: VecDeque<String>,
}

fn identities() -> &'static Mutex<Identities> {
    static IDENTITIES: OnceLock<Mutex<Identities>> = OnceLock::new();
    IDENTITIES.get_or_init(Mutex::default)
}

fn with_identities<T>(f: impl FnOnce(&mut Identities) -> T) -> T {
    f(&mut identities().lock().unwrap_or_else(|e| e.into_inner()))
}

/// Records what the TLS connection from `peer_addr` established: the certificate's node
/// name and, if the connection could export one, the secret of the session that will run on it.
pub(crate) fn record_identity(peer_addr: &str, name: &str, secret: Option<u128>) {
    let mut identity = Identity {
        name: name.to_owned(),
        secret: secret.filter(|&s| s != 0),
    };
    with_identities(|ids| {
        // Two connections dialled to one address at once share its key here: which secret
        // belongs to which session is unknown, so neither gets one (a session without it
        // falls back to random secrets, which the peers settle in a round trip).
        if let Some(earlier) = ids.names.get_mut(peer_addr) {
            if earlier.secret != identity.secret {
                earlier.secret = None;
                identity.secret = None;
            }
        }
        if ids.names.insert(peer_addr.to_owned(), identity).is_none() {
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
    with_identities(|ids| ids.names.get(peer_addr).map(|i| i.name.clone()))
}

/// Registers a stand-in session with `peer` (only its id and secrets are real) and returns
/// the secret a cast from `peer` must echo to prove itself.
#[cfg(test)]
pub(crate) async fn stand_in(peer: &str, node_id: NodeId) -> u128 {
    let session = tests::session_of(node_id).await;
    let ours = session.ours;
    with(|r| r.live.entry(peer.to_owned()).or_default().push(session));
    ours
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(theirs: u128, echoed: u128) -> Vec<u8> {
        [theirs.to_le_bytes(), echoed.to_le_bytes()].concat()
    }

    fn ours(peer: &str) -> u128 {
        with(|r| r.live[peer][0].ours)
    }

    fn theirs(peer: &str) -> u128 {
        with(|r| r.live[peer][0].theirs)
    }

    /// A stand-in for a session's actor: only its id is read here.
    struct Idle;

    #[cfg_attr(feature = "async-trait", ractor::async_trait)]
    impl ractor::Actor for Idle {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<()>,
            _args: (),
        ) -> Result<(), ractor::ActorProcessingErr> {
            Ok(())
        }
    }

    pub(super) async fn session_of(node_id: NodeId) -> Session {
        let (actor, _handle) = ractor::Actor::spawn(None, Idle, ()).await.expect("spawns");
        Session {
            actor: actor.get_cell(),
            node_id,
            ours: secret(),
            theirs: 0,
            confirmed: false,
        }
    }

    #[tokio::test]
    async fn only_a_cast_echoing_the_secret_sent_over_the_origin_s_session_is_verified() {
        // Process-wide registry: names of this test's own.
        let (a, b) = ("token-a@test", "token-b@test");
        let (session_a, session_b) = (session_of(9001).await, session_of(9002).await);
        let a_id = session_a.actor.get_id();
        with(|r| {
            r.live.insert(a.into(), vec![session_a]);
            r.live.insert(b.into(), vec![session_b]);
        });
        let (for_a, for_b) = (ours(a), ours(b));
        assert_ne!(for_a, for_b);

        // b poses as a before a's first cast, echoing the secret it was sent: not verified.
        assert!(!verify(a, Some(&token(66, for_b))));
        assert_eq!(theirs(a), 66);
        // a's first cast, before it had one of ours to echo: not verified, and until a cast
        // proves itself the latest claim is what goes back (so b's could not stick).
        assert!(!verify(a, Some(&token(11, 0))));
        assert_eq!(theirs(a), 11, "a forged claim outlived the real one");
        // No metadata, or the wrong length: not verified.
        assert!(!verify(a, None));
        assert!(!verify(a, Some(&[1, 2, 3])));
        // a echoing ours is; what it sends then is its secret, and stays.
        assert!(verify(a, Some(&token(12, for_a))));
        assert_eq!(theirs(a), 12);
        assert!(!verify(a, Some(&token(67, for_b))));
        assert_eq!(theirs(a), 12, "a forger replaced a proven secret");
        // Nobody is verified as a node this node has no session with.
        assert!(!verify("token-c@test", Some(&token(1, for_a))));

        // What goes out to a's stubs: our secret for a, and a's as last verified.
        let out = tokens_for([9001, 4242].into_iter());
        assert_eq!(out[0].as_deref(), Some(&*token(for_a, 12)));
        assert_eq!(out[1], None, "a node with no session was given a token");

        // Once a's session closes, what a sent before (its leave) still proves itself for a
        // while; nothing new goes out to it.
        unregister(a_id);
        assert!(verify(a, Some(&token(12, for_a))));
        assert_eq!(tokens_for([9001].into_iter())[0], None);
        with(|r| {
            r.live.remove(b);
            r.retired.retain(|s| s.peer != a);
        });
    }

    #[test]
    fn identities_go_oldest_first_past_the_cap_and_a_shared_address_gets_no_secret() {
        // Process-wide map: addresses of this test's own.
        let addr = |i: usize| format!("192.0.2.1:{i}");
        for i in 0..MAX_IDENTITIES + 100 {
            record_identity(&addr(i), &format!("n{i}@host"), None);
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

        // One process-wide map, so in the same test: a second connection dialled to an address
        // before the first closed leaves neither with the connection's secret.
        let secret = |addr: &str| with_identities(|ids| ids.names.get(addr).map(|i| i.secret));
        record_identity("192.0.2.9:1", "a", Some(7));
        assert_eq!(secret("192.0.2.9:1"), Some(Some(7)));
        record_identity("192.0.2.9:1", "a", Some(8));
        assert_eq!(
            secret("192.0.2.9:1"),
            Some(None),
            "a session could take the other's secret"
        );
        forget_identity("192.0.2.9:1");
    }
}

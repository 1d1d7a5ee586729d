//! Node configuration: named fields with documented defaults.

use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::at_most_30_days;
use crate::error::{Error, Result};

/// How a [`Node`](crate::Node) joins the cluster.
///
/// ```
/// use ractor_cache_sync::NodeConfig;
/// let config = NodeConfig::new("a", "a-long-random-cookie")
///     .listen("127.0.0.1:4001".parse().unwrap())
///     .peer("127.0.0.1:4002")
///     .peer("127.0.0.1:4003");
/// assert_eq!(config.peers().len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct NodeConfig {
    name: String,
    cookie: String,
    listen: SocketAddr,
    hostname: Option<String>,
    peers: Vec<String>,
    discover: Vec<String>,
    discover_every: Duration,
    forget_members_after: Duration,
    dial_gossiped: bool,
    redial_min: Duration,
    redial_max: Duration,
    handshake_timeout: Duration,
    heartbeat: Duration,
    peer_timeout: Duration,
    insecure: bool,
    tls: Option<super::tls::TlsFiles>,
    tls_reload_every: Duration,
    allowed_peers: Vec<String>,
}

impl NodeConfig {
    /// A node called `name` (unique in the cluster; peers see it as `name@hostname`) that
    /// authenticates peers with the shared secret `cookie`. The name may not contain `@`, `/`,
    /// spaces or control characters (refused when the node starts).
    pub fn new(name: impl Into<String>, cookie: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            cookie: cookie.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            hostname: None,
            peers: Vec::new(),
            discover: Vec::new(),
            discover_every: Duration::from_secs(5),
            forget_members_after: Duration::from_secs(30),
            dial_gossiped: true,
            redial_min: Duration::from_millis(100),
            redial_max: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_millis(200),
            peer_timeout: Duration::from_secs(3),
            insecure: false,
            tls: None,
            tls_reload_every: Duration::from_secs(10),
            allowed_peers: Vec::new(),
        }
    }

    /// Address to accept peer connections on. Default `127.0.0.1:0` (an ephemeral port, only
    /// useful for a node that dials out and is never dialled).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Host name peers know this node by (the part after `@` in its name). Default: the
    /// listen address's IP. Like the name: no `@`, `/`, spaces or control characters, and
    /// `name@hostname` at most 255 bytes.
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }

    /// Adds a peer to dial, as `host:port`. The node keeps a session to every configured peer,
    /// dialling again with backoff whenever it drops. Default: no peers. Peers that dial this
    /// node need not be listed (a full mesh needs each pair listed on at least one side).
    pub fn peer(mut self, addr: impl Into<String>) -> Self {
        self.peers.push(addr.into());
        self
    }

    /// Adds a DNS name to discover peers by, as `host:port` (a Kubernetes headless service, a
    /// round-robin record, `/etc/hosts`): the node resolves it with the system resolver, dials
    /// every address it resolves to other than its own (each with its own backoff), and
    /// resolves it again every [`discover_every`](Self::discover_every), dialling addresses
    /// that appear and dropping those that are gone. A name that stops resolving is logged and
    /// its addresses kept. Default: none.
    pub fn discover(mut self, name: impl Into<String>) -> Self {
        self.discover.push(name.into());
        self
    }

    /// How often discovery names are resolved again. Default 5 s; at least 10 ms.
    pub fn discover_every(mut self, every: Duration) -> Self {
        self.discover_every = every;
        self
    }

    /// Peers tell each other, on every node-level heartbeat, which members they know, and a
    /// node dials every member it learns of: one reachable seed is enough to join. A member
    /// that vanished is never forgotten on silence alone (it may still be writing to the source
    /// behind a partition): after this long without hearing from it, a member that discovery
    /// no longer lists is dropped; clean leaves are remembered this long, so that stale
    /// reports do not bring them back. See [`Node::members`](crate::Node::members) for the
    /// evidence accepted. Default 30 s; at least the peer timeout.
    pub fn forget_members_after(mut self, after: Duration) -> Self {
        self.forget_members_after = after;
        self
    }

    /// Whether to dial the members learnt from gossip, at the address each advertises.
    /// `false` dials only configured and discovered peers — for links that must go through a
    /// proxy or a tunnel — while gossiped members still count: a node that has no session
    /// with a member some peer knows does not serve from its heap. Default `true`.
    pub fn dial_gossiped(mut self, dial: bool) -> Self {
        self.dial_gossiped = dial;
        self
    }

    /// First and longest wait between dial attempts to a peer (exponential backoff with
    /// jitter). Defaults 100 ms and 2 s; `min` must be at least 1 ms and not above `max`.
    pub fn redial_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.redial_min = min;
        self.redial_max = max;
        self
    }

    /// How long a dialled connection may take to become a ready session before it is dialled
    /// again. Default 5 s; at least 10 ms.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How often the node heartbeats to every peer, to tell live peers from silent ones.
    /// Default 200 ms; at least 1 ms.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval;
        self
    }

    /// A peer not heard from for this long is declared down: its session is closed (so its
    /// process-group members go at once) and dialled again. Default 3 s; at least 3
    /// heartbeats.
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = timeout;
        self
    }

    /// Allows listening on a non-loopback address without encryption. The cookie handshake
    /// only authenticates: on a plaintext link a captured handshake can be brute-forced
    /// offline and nothing after it is protected, so a node refuses to start that way unless
    /// told so. Default `false`.
    pub fn allow_insecure(mut self, insecure: bool) -> Self {
        self.insecure = insecure;
        self
    }

    /// Encrypts and mutually authenticates every cluster link with TLS: see
    /// [`TlsFiles`](crate::node::TlsFiles) and [`TLS_CLUSTER_NAME`](crate::node::TLS_CLUSTER_NAME). Default:
    /// no TLS.
    pub fn tls(mut self, files: super::tls::TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    /// With TLS, how often the certificate, key and CA files are checked for changes. Changed
    /// files are read again, and connections made after that use them (short-lived
    /// certificates renewed in place); a new set that does not load, or whose certificate names
    /// another node, is refused with a log line and counted
    /// ([`Node::tls_reload_failures`](crate::Node::tls_reload_failures)), and the one in use is
    /// kept. Default 10 s; at least 10 ms.
    pub fn tls_reload_every(mut self, every: Duration) -> Self {
        self.tls_reload_every = every;
        self
    }

    /// With TLS, admits only peers whose certificate names one of these nodes (repeatable).
    /// Default: every node with a certificate from the cluster CA. Either way a peer must claim
    /// the node name its certificate carries.
    pub fn allow_peer(mut self, name: impl Into<String>) -> Self {
        self.allowed_peers.push(name.into());
        self
    }

    /// The node's short name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configured peers.
    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// The listen address.
    pub(crate) fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub(crate) fn cookie(&self) -> &str {
        &self.cookie
    }

    pub(crate) fn host(&self) -> String {
        self.hostname
            .clone()
            .unwrap_or_else(|| self.listen.ip().to_string())
    }

    /// Discovery names and how often they are resolved.
    pub(crate) fn discovery(&self) -> (&[String], Duration) {
        (&self.discover, self.discover_every)
    }

    pub(crate) fn forget_members(&self) -> Duration {
        self.forget_members_after
    }

    pub(crate) fn dials_gossiped(&self) -> bool {
        self.dial_gossiped
    }

    pub(crate) fn redial(&self) -> (Duration, Duration) {
        (self.redial_min, self.redial_max)
    }

    pub(crate) fn handshake(&self) -> Duration {
        self.handshake_timeout
    }

    pub(crate) fn tls_setup(&self) -> Result<Option<super::tls::Tls>> {
        let Some(files) = &self.tls else {
            return Ok(None);
        };
        super::tls::Tls::load(files, self.allowed_peers.clone()).map(Some)
    }

    pub(crate) fn tls_reload(&self) -> Duration {
        self.tls_reload_every
    }

    pub(crate) fn liveness(&self) -> (Duration, Duration) {
        (self.heartbeat, self.peer_timeout)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(what.to_owned()));
        for (what, setting) in [
            ("redial backoff", self.redial_max),
            ("heartbeat", self.heartbeat),
            ("peer timeout", self.peer_timeout),
            ("forget_members_after", self.forget_members_after),
            ("discover_every", self.discover_every),
            ("handshake timeout", self.handshake_timeout),
            ("tls_reload_every", self.tls_reload_every),
        ] {
            at_most_30_days(what, setting)?;
        }
        // Actor names carry the node's name before a '/', peers refuse members whose name is
        // over 255 bytes, and the name is printed in logs and replies.
        let plain = |part: &str| {
            !part.is_empty()
                && !part
                    .chars()
                    .any(|c| c == '@' || c == '/' || c.is_whitespace() || c.is_control())
        };
        if !plain(&self.name) || !plain(&self.host()) {
            return bad("node name and hostname must be non-empty, without '@', '/', spaces or control characters");
        }
        if self.name.len() + 1 + self.host().len() > crate::node::membership::MAX_FIELD {
            return bad("name@hostname must be at most 255 bytes");
        }
        if self.cookie.is_empty() {
            return bad("cookie must not be empty");
        }
        if self.redial_min < Duration::from_millis(1) || self.redial_min > self.redial_max {
            return bad("redial backoff needs 1 ms <= min <= max");
        }
        if self.heartbeat < Duration::from_millis(1) || self.peer_timeout < self.heartbeat * 3 {
            return bad("need heartbeat >= 1 ms and peer timeout >= 3 heartbeats");
        }
        if self.forget_members_after < self.peer_timeout {
            return bad("forget_members_after must be at least the peer timeout");
        }
        if self.discover_every < Duration::from_millis(10) {
            return bad("discover_every must be at least 10 ms");
        }
        if self.handshake_timeout < Duration::from_millis(10) {
            return bad("handshake timeout must be at least 10 ms");
        }
        if self.tls_reload_every < Duration::from_millis(10) {
            return bad("tls_reload_every must be at least 10 ms");
        }
        if !self.listen.ip().is_loopback() && !self.insecure && self.tls.is_none() {
            return bad("refusing to listen on a non-loopback address without encryption; allow it explicitly (allow_insecure / --insecure) on a trusted network only");
        }
        if cookie_bits(&self.cookie) < 128 {
            tracing::warn!("the cluster cookie has under 128 bits of entropy: use at least 16 random bytes (e.g. 32 hex digits)");
        }
        Ok(())
    }
}

/// A rough upper bound of a cookie's entropy: its length times the bits per character of the
/// smallest alphabet (digits, hex, letters, printable) that contains all of it.
fn cookie_bits(cookie: &str) -> u32 {
    let alphabet_bits = if cookie.chars().all(|c| c.is_ascii_digit()) {
        3.3
    } else if cookie.chars().all(|c| c.is_ascii_hexdigit()) {
        4.0
    } else if cookie.chars().all(|c| c.is_ascii_alphanumeric()) {
        5.9
    } else {
        6.5
    };
    (cookie.chars().count() as f64 * alphabet_bits) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_hostname_follows_listen() {
        let config = NodeConfig::new("a", "c").listen("127.0.0.2:9".parse().unwrap());
        config.validate().unwrap();
        assert_eq!(config.host(), "127.0.0.2");
        assert_eq!(config.clone().hostname("h").host(), "h");
    }

    #[test]
    fn refuses_plaintext_on_a_public_address_unless_allowed() {
        let public = NodeConfig::new("a", "c").listen("0.0.0.0:4000".parse().unwrap());
        assert!(matches!(public.validate(), Err(Error::Config(_))));
        public.allow_insecure(true).validate().unwrap();
    }

    #[test]
    fn estimates_cookie_entropy_conservatively() {
        assert!(cookie_bits("0123456789abcdef0123456789abcdef") >= 128);
        assert!(cookie_bits("secret") < 128);
        assert!(cookie_bits("1234567890") < 64);
    }

    #[test]
    fn rejects_out_of_bounds_values() {
        assert!(NodeConfig::new("", "c").validate().is_err());
        assert!(NodeConfig::new("a@b", "c").validate().is_err());
        for name in ["a/b", "a b", "a\nb", &"a".repeat(250)] {
            assert!(NodeConfig::new(name, "c").validate().is_err(), "{name:?}");
        }
        assert!(NodeConfig::new("a", "c")
            .hostname("h/x")
            .validate()
            .is_err());
        assert!(NodeConfig::new("a", "").validate().is_err());
        let backwards = NodeConfig::new("a", "c")
            .redial_backoff(Duration::from_secs(2), Duration::from_secs(1));
        assert!(backwards.validate().is_err());
    }

    #[test]
    fn absurd_durations_are_a_config_error_not_a_panic() {
        let ok = || NodeConfig::new("a", "c");
        let configs = [
            ok().heartbeat(Duration::MAX),
            ok().peer_timeout(Duration::MAX),
            ok().redial_backoff(Duration::from_millis(1), Duration::MAX),
            ok().handshake_timeout(Duration::MAX),
            ok().discover_every(Duration::MAX),
            ok().forget_members_after(Duration::MAX),
            ok().heartbeat(Duration::ZERO),
        ];
        for config in configs {
            assert!(matches!(config.validate(), Err(Error::Config(_))));
        }
    }
}

//! Keeps a session to one configured peer: dials, waits for the session to become ready,
//! and dials again with exponential backoff whenever there is none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;
use tokio::sync::watch;

use super::peers::{has_session, is_with, Handshakes, Sessions};
use super::stats::NodeCounters;
use super::tls::Tls;
use crate::counter::add;

/// What every dialer shares: each configured, discovered or gossiped address gets one.
#[derive(Clone)]
pub(crate) struct Dialing {
    /// The NodeServer that opens the sessions.
    pub(crate) server: ActorRef<NodeServerMessage>,
    /// The ready sessions: a dialer whose address has one waits.
    pub(crate) sessions: watch::Receiver<Sessions>,
    /// Sessions not ready yet: a dial that times out closes the one it opened.
    pub(crate) handshakes: Handshakes,
    /// The node's counters (timed-out handshakes).
    pub(crate) counters: Arc<NodeCounters>,
    /// With TLS, the configuration dials use (read again when its files change).
    pub(crate) tls: Option<Arc<Tls>>,
    /// First and longest wait between two dials of an unreachable address.
    pub(crate) backoff: (Duration, Duration),
    /// How long a dialled session may take to become ready.
    pub(crate) handshake_timeout: Duration,
}

impl Dialing {
    /// A dialer that keeps a session to `addr`.
    pub(crate) fn dialer(&self, addr: &str) -> Dialer {
        Dialer {
            server: self.server.clone(),
            addr: addr.to_owned(),
            sessions: self.sessions.clone(),
            handshakes: self.handshakes.clone(),
            counters: self.counters.clone(),
            backoff: self.backoff,
            handshake_timeout: self.handshake_timeout,
            tls: self.tls.clone(),
            known_name: None,
        }
    }
}

pub(crate) struct Dialer {
    pub(crate) server: ActorRef<NodeServerMessage>,
    pub(crate) addr: String,
    pub(crate) sessions: watch::Receiver<Sessions>,
    /// Sessions not ready yet: a dial that times out closes the one it opened.
    pub(crate) handshakes: Handshakes,
    /// The node's counters (the sessions closed that way).
    pub(crate) counters: Arc<NodeCounters>,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) handshake_timeout: Duration,
    pub(crate) tls: Option<Arc<Tls>>,
    /// The name of the node behind `addr`, as gossip reported it or once a session at `addr`
    /// was seen: a session it opened to us (which does not show `addr`) then counts too.
    pub(crate) known_name: Option<String>,
}

/// A running dialer, stopped when dropped (its address is no longer wanted, or its owner
/// stopped).
pub(crate) struct DialerTask(tokio::task::JoinHandle<()>);

impl Drop for DialerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Dialer {
    /// Runs the dialer in a task of its own, for as long as the returned handle lives.
    pub(crate) fn spawn(self) -> DialerTask {
        DialerTask(tokio::spawn(self.run()))
    }

    /// Runs until the node shuts down (the task is aborted then).
    pub(crate) async fn run(mut self) {
        let (min, max) = self.backoff;
        let mut wait = min;
        loop {
            let resolved = resolve(&self.addr).await;
            if self.connected(&resolved) {
                wait = min;
                // Wakes on any session change; a closed channel means the node is gone.
                if self.sessions.changed().await.is_err() {
                    return;
                }
                continue;
            }
            if self.dial_and_wait(&resolved).await {
                continue;
            }
            tokio::time::sleep(jitter(wait)).await;
            wait = (wait * 2).min(max);
        }
    }

    fn connected(&self, resolved: &[SocketAddr]) -> bool {
        let sessions = self.sessions.borrow();
        let named = |name: &String| sessions.values().any(|s| &s.name == name);
        has_session(&sessions, &self.addr, resolved) || self.known_name.as_ref().is_some_and(named)
    }

    fn learn_name(&mut self, resolved: &[SocketAddr]) {
        let sessions = self.sessions.borrow();
        let name = sessions
            .values()
            .find(|s| is_with(s, &self.addr, resolved))
            .map(|s| s.name.clone());
        drop(sessions);
        if name.is_some() {
            self.known_name = name;
        }
    }

    async fn dial_and_wait(&mut self, resolved: &[SocketAddr]) -> bool {
        tracing::debug!(peer = %self.addr, "dialling");
        add(&self.counters.dials, 1);
        let dialled = match &self.tls {
            Some(tls) => {
                super::acceptor::dial(&self.addr, tls, &self.server, self.handshake_timeout).await
            }
            None => {
                super::acceptor::dial_plain(&self.addr, &self.server, self.handshake_timeout).await
            }
        };
        if let Err(error) = dialled {
            tracing::debug!(peer = %self.addr, %error, "dial failed");
            return false;
        }
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        while !self.connected(resolved) {
            match tokio::time::timeout_at(deadline, self.sessions.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    // The connection is up but the session never got ready (a stopped peer's
                    // kernel still accepts): close it, or every redial leaks one socket.
                    let closed = self.handshakes.close_dialled(&self.addr, resolved);
                    add(&self.counters.handshakes_timed_out, closed as u64);
                    tracing::debug!(peer = %self.addr, closed, "handshake timed out");
                    return false;
                }
            }
        }
        self.learn_name(resolved);
        true
    }
}

async fn resolve(addr: &str) -> Vec<SocketAddr> {
    match tokio::net::lookup_host(addr).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    }
}

/// Up to 25 % less than `wait`, so that restarted nodes do not dial in lockstep.
fn jitter(wait: Duration) -> Duration {
    let spread = wait.as_micros() as u64 / 4;
    let offset = if spread == 0 {
        0
    } else {
        getrandom::u64().unwrap_or(0) % spread
    };
    wait - Duration::from_micros(offset)
}

//! DNS discovery: one name (`host:port`) resolved with the system resolver, again and again,
//! and one dialer per address it resolves to — a name with several addresses (a Kubernetes
//! headless service) gives a session with each, not one for the name.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::dialer::DialerTask;
use super::dialer::Dialing;
use super::membership::Membership;
use std::sync::Arc;

pub(crate) struct Discovery {
    name: String,
    every: Duration,
    /// This node's listen address: never dialled.
    own: SocketAddr,
    dialing: Dialing,
    /// Told how many peer addresses the name gives: a node that expects peers and has
    /// reached none does not serve from its heap.
    membership: Arc<Membership>,
}

impl Discovery {
    pub(crate) fn new(
        name: &str,
        every: Duration,
        own: SocketAddr,
        dialing: Dialing,
        membership: &Arc<Membership>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            every,
            own,
            dialing,
            membership: membership.clone(),
        }
    }

    /// Runs until the node shuts down (the task is aborted then, and its dialers with it).
    pub(crate) async fn run(self) {
        let mut dialers: HashMap<SocketAddr, DialerTask> = HashMap::new();
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut resolved_before = true;
        loop {
            ticks.tick().await;
            let found = match tokio::net::lookup_host(&self.name).await {
                Ok(addrs) => addrs
                    .filter(|a| !is_own(self.own, a))
                    .collect::<HashSet<_>>(),
                Err(error) => {
                    if resolved_before {
                        tracing::warn!(name = %self.name, %error, "discovery name does not resolve; keeping its addresses");
                    }
                    resolved_before = false;
                    continue;
                }
            };
            resolved_before = true;
            self.membership.discovered(&self.name, &found);
            dialers.retain(|addr, _| {
                let kept = found.contains(addr);
                if !kept {
                    tracing::info!(name = %self.name, %addr, "address no longer discovered");
                }
                kept
            });
            for addr in found {
                dialers.entry(addr).or_insert_with(|| {
                    tracing::info!(name = %self.name, %addr, "discovered a peer address");
                    let dialer = self.dialing.dialer(&addr.to_string());
                    dialer.spawn()
                });
            }
        }
    }
}

/// Whether `addr` is the node listening on `own`: that very address, or, when it listens on
/// every interface, its port on an address of this host.
fn is_own(own: SocketAddr, addr: &SocketAddr) -> bool {
    if *addr == own {
        return true;
    }
    addr.port() == own.port() && own.ip().is_unspecified() && is_local(addr.ip())
}

/// Whether `ip` belongs to this host: it can be bound.
fn is_local(ip: IpAddr) -> bool {
    std::net::TcpListener::bind((ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_own_address_is_never_dialled() {
        let own =
            |listen: &str, addr: &str| is_own(listen.parse().unwrap(), &addr.parse().unwrap());
        assert!(own("127.0.0.2:4000", "127.0.0.2:4000"));
        assert!(!own("127.0.0.2:4000", "127.0.0.3:4000"));
        assert!(own("0.0.0.0:4000", "127.0.0.1:4000"));
        assert!(!own("0.0.0.0:4000", "127.0.0.1:4001"));
        assert!(
            !own("0.0.0.0:4000", "192.0.2.1:4000"),
            "not an address of this host"
        );
    }
}

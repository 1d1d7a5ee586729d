//! The accept loop, for plaintext and TLS listeners alike. ractor_cluster's own listener has no
//! handshake deadline and retries `accept` without pause when the process runs out of file
//! descriptors (a node spins at a full core and no peer gets in); its TLS listener also runs
//! each TLS handshake inline, so one idle socket blocks every other peer. This loop backs off
//! on accept errors, runs each TLS handshake in its own task under a deadline (at most
//! [`MAX_PENDING_HANDSHAKES`] at once, the oldest dropped past it), checks the client's certificate against the
//! allow-list, and hands the streams to the NodeServer. Sessions that have not authenticated
//! are shed oldest first past [`MAX_UNREADY`] (the watchdog closes any left after the
//! handshake timeout), so idle or slow sockets arriving without end cannot keep a legitimate
//! peer, whose handshake takes milliseconds, from joining.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::peers::Handshakes;
use super::stats::NodeCounters;
use super::tls::Tls;
use crate::counter::bump;
use crate::sessions;

/// Most TLS handshakes in progress at once; past it the oldest is dropped.
const MAX_PENDING_HANDSHAKES: usize = 64;

/// Most inbound sessions not authenticated yet; past it the oldest is closed.
pub(crate) const MAX_UNREADY: usize = 256;

pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    server: ActorRef<NodeServerMessage>,
    timeout: Duration,
    unready: Handshakes,
    counters: Arc<NodeCounters>,
) {
    // TLS handshakes in progress, oldest first: past the cap the oldest is dropped rather than
    // the loop waiting for one to finish (idle sockets would hold every slot for the timeout).
    let mut pending: VecDeque<AbortHandle> = VecDeque::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                bump(&counters.accept_errors);
                tracing::warn!(%error, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        unready.shed_inbound_beyond(MAX_UNREADY);
        let Some(tls) = tls.clone() else {
            plain(stream, &server);
            continue;
        };
        pending.retain(|task| !task.is_finished());
        while pending.len() >= MAX_PENDING_HANDSHAKES {
            if let Some(oldest) = pending.pop_front() {
                oldest.abort();
            }
        }
        let server = server.clone();
        let task = tokio::spawn(async move { handshake(stream, tls, server, timeout).await });
        pending.push_back(task.abort_handle());
    }
}

/// Hands a plaintext connection to the NodeServer, which authenticates it (the cookie).
fn plain(stream: TcpStream, server: &ActorRef<NodeServerMessage>) {
    let (Ok(peer_addr), Ok(local_addr)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let stream = NetworkStream::Raw {
        peer_addr,
        local_addr,
        stream,
    };
    let _ = server.cast(NodeServerMessage::ConnectionOpened {
        stream: Box::new(stream),
        is_server: true,
    });
}

async fn handshake(
    stream: TcpStream,
    tls: Arc<Tls>,
    server: ActorRef<NodeServerMessage>,
    timeout: Duration,
) {
    let (Ok(peer_addr), Ok(local_addr)) = (stream.peer_addr(), stream.local_addr()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let stream = match tokio::time::timeout(timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return tracing::info!(%peer_addr, %error, "TLS handshake failed"),
        Err(_) => return tracing::info!(%peer_addr, "TLS handshake timed out"),
    };
    match tls.admit(stream.get_ref().1.peer_certificates()) {
        Ok(name) => {
            let secret = session_secret(stream.get_ref().1);
            sessions::record_identity(&peer_addr.to_string(), &name, secret)
        }
        Err(reason) => return tracing::warn!(%peer_addr, %reason, "peer refused"),
    }
    let stream = NetworkStream::TlsServer {
        stream,
        peer_addr,
        local_addr,
    };
    let _ = server.cast(NodeServerMessage::ConnectionOpened {
        stream: Box::new(stream),
        is_server: true,
    });
}

/// Dials `addr` over TLS (with `timeout` for connect and handshake), checks the server's
/// certificate, and hands the stream to the NodeServer.
pub(crate) async fn dial(
    addr: &str,
    tls: &Tls,
    server: &ActorRef<NodeServerMessage>,
    timeout: Duration,
) -> Result<(), String> {
    let stream = connect(addr, timeout).await?;
    let (peer_addr, local_addr) = (
        stream.peer_addr().map_err(|e| e.to_string())?,
        stream.local_addr().map_err(|e| e.to_string())?,
    );
    let handshake = tls.connector().connect(tls.server_name.clone(), stream);
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| "TLS handshake timed out")?
        .map_err(|e| e.to_string())?;
    let name = tls.admit(stream.get_ref().1.peer_certificates())?;
    let secret = session_secret(stream.get_ref().1);
    sessions::record_identity(&peer_addr.to_string(), &name, secret);
    let stream = NetworkStream::TlsClient {
        stream,
        peer_addr,
        local_addr,
    };
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(stream),
            is_server: false,
        })
        .map_err(|e| e.to_string())
}

/// Dials `addr` in plaintext and hands the connection to the NodeServer: what
/// `ractor_cluster::client_connect` does, with a connect timeout (a blackholed address would
/// otherwise hold the dialer for the kernel's SYN retries, about two minutes, and the session
/// would re-form up to a minute after the link heals).
pub(crate) async fn dial_plain(
    addr: &str,
    server: &ActorRef<NodeServerMessage>,
    timeout: Duration,
) -> Result<(), String> {
    let stream = connect(addr, timeout).await?;
    let stream = NetworkStream::Raw {
        peer_addr: stream.peer_addr().map_err(|e| e.to_string())?,
        local_addr: stream.local_addr().map_err(|e| e.to_string())?,
        stream,
    };
    server
        .cast(NodeServerMessage::ConnectionOpened {
            stream: Box::new(stream),
            is_server: false,
        })
        .map_err(|e| e.to_string())
}

/// A TCP connection to `addr` within `timeout`, without Nagle's delay.
async fn connect(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out")?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The secret both ends of a TLS connection derive from its keying material (RFC 5705): what
/// proves the origin of every envelope on the session that runs over it (`sessions::verify`).
fn session_secret<D>(connection: &tokio_rustls::rustls::ConnectionCommon<D>) -> Option<u128> {
    let secret = connection
        .export_keying_material([0u8; 16], b"ractor_cache_sync session secret", None)
        .ok()?;
    Some(u128::from_le_bytes(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_to_an_address_that_drops_connection_requests_gives_up_in_time() {
        // A listener that never accepts, its queue full: the kernel drops further SYNs, as
        // a firewall dropping traffic to a dead host would.
        let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        listener
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        listener.listen(0).expect("listen");
        let addr = listener.local_addr().unwrap().as_socket().unwrap();
        let mut queued = Vec::new();
        let mut blackholed = false;
        for _ in 0..16 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(stream) => queued.push(stream),
                Err(_) => {
                    blackholed = true;
                    break;
                }
            }
        }
        assert!(blackholed, "the listener's queue never filled");
        let started = std::time::Instant::now();
        let dialled = connect(&addr.to_string(), Duration::from_millis(300)).await;
        assert_eq!(dialled.err().as_deref(), Some("connect timed out"));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the dial waited {:?}",
            started.elapsed()
        );
    }
}

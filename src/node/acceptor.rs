//! The TLS accept loop. ractor_cluster's own TLS listener runs each handshake inline, with no
//! timeout: one idle socket blocks every other peer. This loop runs each handshake in its own
//! task under a deadline, caps how many are pending, backs off on accept errors (such as running
//! out of file descriptors), checks the client's certificate against the allow-list, and hands
//! finished TLS streams to the NodeServer.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::tls::Tls;
use crate::sessions;

/// Most TLS handshakes in progress at once; further connections wait to be accepted.
const MAX_PENDING_HANDSHAKES: usize = 64;

pub(crate) async fn run(
    listener: TcpListener,
    tls: Arc<Tls>,
    server: ActorRef<NodeServerMessage>,
    timeout: Duration,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    let mut backoff = Duration::from_millis(10);
    loop {
        let Ok(permit) = pending.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(10);
        let (tls, server) = (tls.clone(), server.clone());
        tokio::spawn(async move {
            handshake(stream, tls, server, timeout).await;
            drop(permit);
        });
    }
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
    let stream = match tokio::time::timeout(timeout, tls.acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return tracing::info!(%peer_addr, %error, "TLS handshake failed"),
        Err(_) => return tracing::info!(%peer_addr, "TLS handshake timed out"),
    };
    match tls.admit(stream.get_ref().1.peer_certificates()) {
        Ok(name) => sessions::record_identity(&peer_addr.to_string(), &name),
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
    let connect = TcpStream::connect(addr);
    let stream = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| "connect timed out")?
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let (peer_addr, local_addr) = (
        stream.peer_addr().map_err(|e| e.to_string())?,
        stream.local_addr().map_err(|e| e.to_string())?,
    );
    let handshake = tls.connector.connect(tls.server_name.clone(), stream);
    let stream = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| "TLS handshake timed out")?
        .map_err(|e| e.to_string())?;
    let name = tls.admit(stream.get_ref().1.peer_certificates())?;
    sessions::record_identity(&peer_addr.to_string(), &name);
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

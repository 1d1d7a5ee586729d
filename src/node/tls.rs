//! Mutual TLS for cluster links (rustls): every node presents a certificate signed by the
//! cluster's CA whose DNS names are the node's name and the cluster name
//! [`TLS_CLUSTER_NAME`](crate::node::TLS_CLUSTER_NAME); both sides verify the chain, the dialler
//! checks the cluster name, and each side checks the other's node name against its allow-list
//! and, once the cookie handshake says which node it claims to be, against that claim.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::{Error, Result};

/// The DNS name every node certificate carries besides the node's own name; dialling nodes
/// verify it (they know an address, not the name of the node behind it).
pub const TLS_CLUSTER_NAME: &str = "cluster.ractor-cache-sync";

/// Where a node's certificate, key and the cluster CA are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) ca: PathBuf,
}

impl TlsFiles {
    /// PEM files: this node's certificate chain, its private key, the cluster CA certificate.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>, ca: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }
    }
}

/// Everything a node needs to accept and dial over TLS. The files are read again when they
/// change (see [`reload_if_changed`](Self::reload_if_changed)): connections made after that
/// use the new ones, sessions already up keep theirs.
pub(crate) struct Tls {
    files: TlsFiles,
    pub(crate) server_name: ServerName<'static>,
    allowed: Vec<String>,
    current: RwLock<Configs>,
    /// The files as last read, and as found at the last check: a change is read once it has
    /// stayed put for one check (a renewal writes the key and the certificate one by one).
    seen: Mutex<(Fingerprint, Fingerprint)>,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

/// One reading of the files.
#[derive(Clone)]
struct Configs {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// The node name this node's certificate carries.
    node: Option<String>,
}

/// A hash of each file's content (`None` for one that cannot be read).
type Fingerprint = [Option<u64>; 3];

impl Tls {
    pub(crate) fn load(files: &TlsFiles, allowed: Vec<String>) -> Result<Self> {
        let seen = fingerprint(files);
        let configs = Configs::read(files)?;
        Ok(Self {
            files: files.clone(),
            server_name: ServerName::try_from(TLS_CLUSTER_NAME).expect("a valid DNS name"),
            allowed,
            current: RwLock::new(configs),
            seen: Mutex::new((seen, seen)),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// What accepts connections now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.read().acceptor.clone()
    }

    /// What dials now.
    pub(crate) fn connector(&self) -> TlsConnector {
        self.read().connector.clone()
    }

    /// Reads the certificate, key and CA files again if their content changed since they were
    /// last read and has stayed the same since the previous check: `None` if not. A new set
    /// that does not load (unreadable, not PEM, a key that does not match the certificate, a
    /// certificate for another node) is refused and the one in use kept; it is tried again
    /// when the files change again.
    pub(crate) fn reload_if_changed(&self) -> Option<Result<()>> {
        let now = fingerprint(&self.files);
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let (read, last_check) = &mut *seen;
            let settled = now == *last_check;
            *last_check = now;
            if now == *read || !settled {
                return None;
            }
            *read = now;
        }
        let result = Configs::read(&self.files).and_then(|new| {
            let old = self.read().node.clone();
            if new.node != old {
                return Err(Error::Config(format!(
                    "{}: the new certificate names node {:?}, the one in use {:?}",
                    self.files.cert.display(),
                    new.node,
                    old
                )));
            }
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = new;
            Ok(())
        });
        let counter = match result {
            Ok(()) => &self.reloads,
            Err(_) => &self.reload_failures,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(result)
    }

    /// New certificate files read and in use since start.
    pub(crate) fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Changed certificate files refused since start (the ones in use were kept).
    pub(crate) fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Configs> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The node name in the peer's certificate, if it has one and the allow-list admits it.
    pub(crate) fn admit(
        &self,
        peer_certs: Option<&[CertificateDer<'_>]>,
    ) -> std::result::Result<String, String> {
        let leaf = peer_certs
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let name = node_name(leaf).ok_or("the certificate names no node")?;
        if self.allowed.is_empty() || self.allowed.contains(&name) {
            Ok(name)
        } else {
            Err(format!("node {name:?} is not on the allow-list"))
        }
    }
}

impl Configs {
    fn read(files: &TlsFiles) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = read_certs(&files.cert)?;
        let node = node_name(&certs[0]);
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| bad(&files.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in read_certs(&files.ca)? {
            roots.add(ca).map_err(|e| bad(&files.ca, e))?;
        }
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| bad(&files.ca, e))?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| bad(&files.cert, e))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| bad(&files.cert, e))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            node,
        })
    }
}

/// Checks the files every `every` and reads them again when they change, until the node shuts
/// down (the task is aborted then).
pub(crate) async fn watch(tls: Arc<Tls>, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        // Reading PEM files and building the configurations blocks: off the runtime's workers.
        let checking = tls.clone();
        let outcome = tokio::task::spawn_blocking(move || checking.reload_if_changed()).await;
        match outcome {
            Ok(Some(Ok(()))) => {
                tracing::info!("TLS certificate files changed: new connections use them")
            }
            Ok(Some(Err(error))) => {
                tracing::warn!(%error, "changed TLS certificate files refused: keeping the ones in use")
            }
            Ok(None) | Err(_) => {}
        }
        metrics::counter!("ractor_cache_sync_tls_reloads_total").absolute(tls.reloads());
        metrics::counter!("ractor_cache_sync_tls_reload_failures_total")
            .absolute(tls.reload_failures());
    }
}

/// A hash of each file's content: certificate files are a few KiB, and their modification
/// time and length may well survive a renewal (`cp -p`, a key of the same size).
fn fingerprint(files: &TlsFiles) -> Fingerprint {
    use std::hash::{Hash, Hasher};
    [&files.cert, &files.key, &files.ca].map(|path| {
        let content = std::fs::read(path).ok()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut hasher);
        Some(hasher.finish())
    })
}

/// The first DNS name of the certificate that is not the cluster name.
fn node_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let sans = parsed.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) if *dns != TLS_CLUSTER_NAME => {
            Some((*dns).to_owned())
        }
        _ => None,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: std::result::Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(path, e))?
        .collect();
    let certs = certs.map_err(|e| bad(path, e))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{}: no certificate", path.display())));
    }
    Ok(certs)
}

fn bad(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {error}", path.display()))
}

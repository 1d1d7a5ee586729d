//! Mutual TLS for cluster links (rustls): every node presents a certificate signed by the
//! cluster's CA whose DNS names are the node's name and the cluster name
//! [`TLS_CLUSTER_NAME`](crate::TLS_CLUSTER_NAME); both sides verify the chain, the dialler
//! checks the cluster name, and each side checks the other's node name against its allow-list
//! and, once the cookie handshake says which node it claims to be, against that claim.

use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// Everything a node needs to accept and dial over TLS.
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    allowed: Vec<String>,
}

impl Tls {
    pub(crate) fn load(files: &TlsFiles, allowed: Vec<String>) -> Result<Self> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certs = read_certs(&files.cert)?;
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
            server_name: ServerName::try_from(TLS_CLUSTER_NAME).expect("a valid DNS name"),
            allowed,
        })
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

//! Mutual TLS between node processes: a cluster forms and invalidations flow; a certificate
//! from another CA, a certified name that is not allowed, a name claimed without its
//! certificate, and a plaintext client never join; idle sockets do not block the listener.

#[path = "support/cluster.rs"]
mod cluster;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use cluster::{put, start, wait_for_peers, wait_for_value, Cluster, NodeSpec};

/// Runs the `gen_certs` example: a CA and one certificate per name, into `dir`.
fn gen_certs(dir: &Path, names: &[&str], ca_name: &str) {
    let exe =
        cluster::node_binary().with_file_name(format!("gen_certs{}", std::env::consts::EXE_SUFFIX));
    let status = Command::new(exe)
        .arg(dir)
        .args(names)
        .args(["--ca-name", ca_name])
        .status()
        .unwrap();
    assert!(status.success());
}

/// `spec` using the certificate of `cert_name` from `dir`.
fn with_tls(spec: NodeSpec, dir: &Path, cert_name: &str) -> NodeSpec {
    let file = |f: String| dir.join(f).display().to_string();
    spec.arg("--tls-cert")
        .arg(&file(format!("{cert_name}.pem")))
        .arg("--tls-key")
        .arg(&file(format!("{cert_name}.key")))
        .arg("--tls-ca")
        .arg(&file("ca.pem".into()))
}

#[test]
fn a_tls_cluster_forms_and_invalidations_flow() {
    let cluster = Cluster::new();
    let certs = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), &["a", "b", "c"], "cluster CA");
    let specs = cluster.mesh_specs(&["a", "b", "c"]);
    let specs: Vec<NodeSpec> = specs
        .into_iter()
        .map(|s| {
            let n = s.name.clone();
            with_tls(s, certs.path(), &n)
        })
        .collect();
    let mut nodes = cluster.start_mesh(&specs);
    put(&mut nodes[0], "k", "v1");
    for node in &mut nodes {
        assert_eq!(node.value("k").as_deref(), Some("v1"));
    }
    put(&mut nodes[2], "k", "v2");
    for node in &mut nodes[..2] {
        wait_for_value(node, "k", "v2");
    }
}

#[test]
fn strangers_never_join_a_tls_cluster() {
    let cluster = Cluster::new();
    let certs = tempfile::tempdir().unwrap();
    let other_ca = tempfile::tempdir().unwrap();
    gen_certs(certs.path(), &["a", "b", "mallory"], "cluster CA");
    gen_certs(other_ca.path(), &["eve"], "another CA");
    // a admits only b; the CA also certified mallory.
    let mut a = start(
        &with_tls(cluster.spec("a"), certs.path(), "a")
            .arg("--tls-allow")
            .arg("b"),
    );
    let strangers = [
        with_tls(cluster.spec("eve").peer(&a.spec), other_ca.path(), "eve"), // another CA
        with_tls(
            cluster.spec("mallory").peer(&a.spec),
            certs.path(),
            "mallory",
        ), // not allowed
        with_tls(cluster.spec("impostor").peer(&a.spec), certs.path(), "b"), // b's certificate, another name
        cluster.spec("plain").peer(&a.spec),                                 // no TLS at all
    ];
    let mut strangers: Vec<_> = strangers.iter().map(start).collect();
    // Idle sockets against the TLS listener: handshakes time out on their own.
    let idle: Vec<TcpStream> = (0..50)
        .map(|_| TcpStream::connect(a.spec.listen).unwrap())
        .collect();
    // The legitimate peer joining after all of them is the sync point.
    let mut b = start(&with_tls(
        cluster.spec("b").peer(&a.spec),
        certs.path(),
        "b",
    ));
    wait_for_peers(&mut b, 1);
    assert_eq!(a.peers(), ["b@127.0.0.1"]);
    for stranger in &mut strangers {
        assert!(stranger.peers().is_empty(), "{} joined", stranger.spec.name);
        assert!(stranger.is_running());
    }
    drop(idle);
}

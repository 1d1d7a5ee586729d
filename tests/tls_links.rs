//! Mutual TLS between node processes: a cluster forms and invalidations flow; a certificate
//! from another CA, a certified name that is not allowed, a name claimed without its
//! certificate, and a plaintext client never join; idle sockets do not block the listener;
//! certificate files renewed in place are read again, and a bad set is refused.

#[path = "support/cluster.rs"]
mod cluster;

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;

use cluster::{eventually, put, start, wait_for_peers, wait_for_stat, wait_for_value};
use cluster::{Cluster, NodeSpec, DEADLINE};

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
    // Both ends of a TLS session derive its secret from the connection: every envelope proved
    // its origin from the first one.
    for node in &mut nodes {
        assert_eq!(
            node.stat("unverified"),
            0,
            "{} doubted a peer",
            node.spec.name
        );
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
    // Each side marks the session ready on its own: a may be a moment behind b.
    wait_for_session_with(&mut a, "b");
    assert_eq!(a.peers(), ["b@127.0.0.1"]);
    for stranger in &mut strangers {
        assert!(stranger.peers().is_empty(), "{} joined", stranger.spec.name);
        assert!(stranger.is_running());
    }
    drop(idle);
}

/// Replaces `to` with `from`'s content the way renewals do it (a new file renamed over the
/// old one), so that no reader sees half a file.
fn replace_file(to: &Path, content: &[u8]) {
    let staged = to.with_extension("staged");
    std::fs::write(&staged, content).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

/// Polls until `node` has a ready session with the node called `name`.
fn wait_for_session_with(node: &mut cluster::NodeProcess, name: &str) {
    let prefix = format!("{name}@");
    let who = node.spec.name.clone();
    eventually(DEADLINE, || {
        node.peers()
            .iter()
            .any(|p| p.starts_with(&prefix))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("{who} never had a session with {name}"));
}

#[test]
fn renewed_certificate_files_are_read_again_and_a_bad_set_is_refused() {
    let cluster = Cluster::new();
    let old = tempfile::tempdir().unwrap();
    gen_certs(old.path(), &["a", "b", "c"], "old CA");
    let new = tempfile::tempdir().unwrap();
    gen_certs(new.path(), &["a", "d"], "new CA");
    // a's files: its certificate and key from the old CA, and a bundle trusting both CAs.
    let live = tempfile::tempdir().unwrap();
    let read = |dir: &Path, file: &str| std::fs::read(dir.join(file)).unwrap();
    std::fs::write(live.path().join("a.pem"), read(old.path(), "a.pem")).unwrap();
    std::fs::write(live.path().join("a.key"), read(old.path(), "a.key")).unwrap();
    let bundle = [read(old.path(), "ca.pem"), read(new.path(), "ca.pem")].concat();
    std::fs::write(live.path().join("ca.pem"), bundle).unwrap();
    let a_spec = with_tls(cluster.proxied_spec("a"), live.path(), "a")
        .arg("--tls-reload-ms")
        // Far longer than the test takes between writing the key and the certificate, even
        // on a busy machine: a change is read once the files look alike at two checks.
        .arg("1000");
    let mut a = start(&a_spec);
    let mut b_spec = with_tls(cluster.proxied_spec("b"), old.path(), "b");
    b_spec.peers.push(a.spec.listen);
    let mut b = start(&b_spec);
    wait_for_peers(&mut a, 1);
    wait_for_peers(&mut b, 1);

    // A broken certificate file is refused and the set in use kept: a node certified by the
    // old CA still joins.
    replace_file(
        &live.path().join("a.pem"),
        b"-----BEGIN CERTIFICATE-----\ngarbage\n",
    );
    wait_for_stat(&mut a, "tls_reload_failures", 1);
    assert_eq!(a.stat("tls_reloads"), 0);
    let mut c_spec = with_tls(cluster.proxied_spec("c"), old.path(), "c");
    c_spec.peers.push(a.spec.listen);
    let mut c = start(&c_spec);
    wait_for_session_with(&mut c, "a");

    // The renewed key and certificate, from the new CA: read again, and a node that trusts
    // only the new CA joins; the sessions already up stay.
    replace_file(&live.path().join("a.key"), &read(new.path(), "a.key"));
    replace_file(&live.path().join("a.pem"), &read(new.path(), "a.pem"));
    wait_for_stat(&mut a, "tls_reloads", 1);
    let mut d_spec = with_tls(cluster.proxied_spec("d"), new.path(), "d");
    d_spec.peers.push(a.spec.listen);
    let mut d = start(&d_spec);
    wait_for_session_with(&mut d, "a");
    wait_for_session_with(&mut b, "a");
    assert_eq!(
        a.stat("tls_reload_failures"),
        1,
        "writing the key, then the certificate, was read half-way"
    );
    println!(
        "a: {} reloads, {} refused",
        a.stat("tls_reloads"),
        a.stat("tls_reload_failures")
    );
}

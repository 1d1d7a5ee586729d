//! A cluster across real hosts: three network namespaces on a bridge, one node in each on its
//! own non-loopback address, mutual TLS, membership through one seed. Faults are real: a
//! host's link is taken down and brought up again. The staleness bound holds throughout, and
//! the mesh and the caches converge after each heal.
//!
//! Creating namespaces needs root, hence `#[ignore]`; `.ci/run` (as root) runs it:
//!
//! ```text
//! cargo test --test a_cluster_across_hosts -- --ignored
//! ```

#[path = "support/cluster.rs"]
mod cluster;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster::scenario::{read_loop, write_loop, History, KEY};
use cluster::{
    eventually, wait_for_health, wait_for_peers, Cluster, NodeProcess, NodeSpec, DEADLINE,
};

const LEASE: Duration = Duration::from_secs(1);

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed (needs root)");
}

/// Network namespaces `host0..hostN` on one bridge, removed when dropped.
struct Hosts {
    prefix: String,
    count: usize,
}

impl Hosts {
    fn new(count: usize) -> Self {
        let prefix = format!("rcs{}", std::process::id() % 10_000);
        let hosts = Self { prefix, count };
        let bridge = hosts.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"]);
        ip(&["link", "set", &bridge, "up"]);
        for i in 0..count {
            let (ns, outside, inside) =
                (hosts.ns(i), hosts.link(i), format!("{}v{i}", hosts.prefix));
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", &inside,
            ]);
            ip(&["link", "set", &inside, "netns", &ns]);
            ip(&["link", "set", &outside, "master", &bridge]);
            ip(&["link", "set", &outside, "up"]);
            let addr = format!("{}/24", hosts.addr(i));
            ip(&[
                "netns", "exec", &ns, "ip", "addr", "add", &addr, "dev", &inside,
            ]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", &inside, "up"]);
            ip(&["netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
        }
        hosts
    }

    fn bridge(&self) -> String {
        format!("{}b", self.prefix)
    }

    fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// Host `i`'s link, on the bridge's side.
    fn link(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn addr(&self, i: usize) -> String {
        format!("10.77.0.{}", i + 2)
    }

    /// Takes host `i`'s link down (`false`) or up again.
    fn link_up(&self, i: usize, up: bool) {
        ip(&["link", "set", &self.link(i), if up { "up" } else { "down" }]);
    }

    /// Starts `spec` inside host `i`.
    fn start(&self, i: usize, spec: &NodeSpec) -> NodeProcess {
        let command = spec
            .command_under(["ip", "netns", "exec", &self.ns(i)])
            .expect("the node's command");
        NodeProcess::spawn(spec.clone(), command)
            .unwrap_or_else(|e| panic!("starting {} in {}: {e}", spec.name, self.ns(i)))
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for i in 0..self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
            let _ = Command::new("ip")
                .args(["link", "del", &self.link(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge()])
            .status();
    }
}

/// Runs the `gen_certs` example: a CA and one certificate per name, into `dir`.
fn gen_certs(dir: &Path, names: &[&str]) {
    let exe =
        cluster::node_binary().with_file_name(format!("gen_certs{}", std::env::consts::EXE_SUFFIX));
    let status = Command::new(exe).arg(dir).args(names).status().unwrap();
    assert!(status.success());
}

#[test]
#[ignore = "needs root: creates network namespaces, a bridge and veth links"]
fn a_tls_cluster_across_hosts_keeps_the_bound_through_link_cuts() {
    let cluster = Cluster::new();
    let certs = tempfile::tempdir().unwrap();
    let names = ["h0", "h1", "h2"];
    gen_certs(certs.path(), &names);
    let hosts = Hosts::new(names.len());
    let port = cluster::free_port();
    let specs: Vec<NodeSpec> = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut spec = cluster.spec(name);
            spec.listen = SocketAddr::new(hosts.addr(i).parse().unwrap(), port);
            let file = |f: &str| certs.path().join(f).display().to_string();
            spec.arg("--tls-cert")
                .arg(&file(&format!("{name}.pem")))
                .arg("--tls-key")
                .arg(&file(&format!("{name}.key")))
                .arg("--tls-ca")
                .arg(&file("ca.pem"))
        })
        .collect();
    // h1 and h2 know only the seed h0.
    let specs = [
        specs[0].clone(),
        specs[1].clone().peer(&specs[0]),
        specs[2].clone().peer(&specs[0]),
    ];
    let mut nodes: Vec<NodeProcess> = (0..3).map(|i| hosts.start(i, &specs[i])).collect();
    for node in &mut nodes {
        wait_for_peers(node, 2);
        wait_for_health(node, "healthy");
    }

    let history = History::default();
    let stop = AtomicBool::new(false);
    let (writer, rest) = nodes.split_first_mut().unwrap();
    std::thread::scope(|s| {
        let (h, st) = (&history, &stop);
        s.spawn(move || write_loop(writer, h, st, Duration::from_millis(20)));
        for reader in rest.iter_mut() {
            s.spawn(move || read_loop(reader, h, st, Duration::from_millis(3)));
        }
        // A cut shorter than the peer timeout (TCP carries on after it), then a longer one
        // (the sessions are declared down, closed and dialled again).
        for (host, cut) in [(2, 1_500), (1, 5_000)] {
            std::thread::sleep(Duration::from_millis(1_000));
            hosts.link_up(host, false);
            std::thread::sleep(Duration::from_millis(cut));
            hosts.link_up(host, true);
        }
        std::thread::sleep(Duration::from_millis(3_000));
        stop.store(true, Ordering::Relaxed);
    });

    for node in &mut nodes {
        wait_for_peers(node, 2);
        wait_for_health(node, "healthy");
    }
    let last = history.last_version();
    for node in &mut nodes[1..] {
        let name = node.spec.name.clone();
        let served = eventually(DEADLINE, || {
            (node.ask(&format!("get {KEY}"))["version"] == last).then_some(())
        });
        assert!(served.is_some(), "{name} never served v{last}");
    }
    history
        .check(LEASE)
        .report_and_assert("across hosts, link cuts");
}

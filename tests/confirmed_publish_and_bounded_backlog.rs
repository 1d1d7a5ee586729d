//! Publishing with acknowledgement says which peers applied a change; a stopped peer cannot
//! make the sender's memory grow without bound.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::NodeSpec;
use cluster::{signal, wait_for_health, wait_for_stat, wait_for_value, Cluster, NodeProcess};
use nix::sys::signal::Signal;

fn names(reply: &serde_json::Value, field: &str) -> Vec<String> {
    let list = reply[field].as_array().cloned().unwrap_or_default();
    list.iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// A writer that waits 5 s for confirmations (acknowledgements ride on heartbeats: a busy
/// machine may take more than the default second), and declares a silent peer down only after
/// 20 s, so a stopped peer is still a member when the wait ends.
fn waits_for_confirmations(spec: NodeSpec) -> NodeSpec {
    spec.arg("--confirm-timeout-ms")
        .arg("5000")
        .arg("--peer-timeout-ms")
        .arg("20000")
}

#[test]
fn a_confirmed_put_names_the_peers_that_applied_it() {
    let cluster = Cluster::new();
    let mut specs = cluster.mesh_specs(&["a", "b", "c"]);
    specs[0] = waits_for_confirmations(specs[0].clone());
    let mut nodes = cluster.start_mesh(&specs);
    let reply = nodes[0].ask("put-confirmed k v1");
    assert_eq!(
        names(&reply, "applied"),
        ["b@127.0.0.1", "c@127.0.0.1"],
        "{reply}"
    );
    assert!(names(&reply, "missing").is_empty());

    signal(&nodes[2], Signal::SIGSTOP);
    let reply = nodes[0].ask("put-confirmed k v2");
    signal(&nodes[2], Signal::SIGCONT);
    assert_eq!(names(&reply, "applied"), ["b@127.0.0.1"], "{reply}");
    assert_eq!(names(&reply, "missing"), ["c@127.0.0.1"]);
    wait_for_value(&mut nodes[2], "k", "v2");
}

/// A node that forgets a silent peer after 400 ms (heartbeats every 50 ms, a 300 ms lease).
fn forgets_fast(spec: NodeSpec) -> NodeSpec {
    spec.arg("--lease-ms")
        .arg("300")
        .arg("--heartbeat-ms")
        .arg("50")
        .arg("--forget-after-ms")
        .arg("400")
}

/// A member of the topic this node has not heard from (forgotten while its session stays
/// open, as a stopped process's does until the peer timeout) is missing until it says it
/// applied the message, not left out.
#[test]
fn a_member_not_heard_from_counts_as_missing() {
    let cluster = Cluster::new();
    let mut specs = cluster.mesh_specs(&["a", "b", "c"]);
    specs[0] = waits_for_confirmations(forgets_fast(specs[0].clone()));
    let mut nodes = cluster.start_mesh(&specs);
    signal(&nodes[2], Signal::SIGSTOP);
    // a forgets c after 400 ms; c's session stays open until the peer timeout.
    wait_for_stat(&mut nodes[0], "peers_forgotten", 1);
    let reply = nodes[0].ask("put-confirmed k v1");
    signal(&nodes[2], Signal::SIGCONT);
    assert_eq!(names(&reply, "applied"), ["b@127.0.0.1"], "{reply}");
    assert_eq!(
        names(&reply, "missing"),
        ["c@127.0.0.1"],
        "a member not heard from was left out: {reply}"
    );
    wait_for_value(&mut nodes[2], "k", "v1");
}

/// The backlog bound covers a member this node has not heard from too (forgotten while its
/// stopped process's session stays open until the peer timeout): a burst at it closes its
/// session once the bound is passed.
#[test]
fn a_burst_at_a_member_not_heard_from_is_bounded_too() {
    let cluster = Cluster::new();
    let mut specs = cluster.mesh_specs(&["a", "b"]);
    specs[0] = forgets_fast(specs[0].clone())
        .arg("--peer-timeout-ms")
        .arg("20000")
        .arg("--max-backlog-bytes")
        .arg("65536");
    let mut nodes = cluster.start_mesh(&specs);
    signal(&nodes[1], Signal::SIGSTOP);
    // a forgets b after 400 ms; b's session stays open (the peer timeout is 20 s).
    wait_for_stat(&mut nodes[0], "peers_forgotten", 1);
    let burst = nodes[0].ask("burst 100000");
    assert_eq!(burst["ok"], "burst", "{burst}");
    wait_for_stat(&mut nodes[0], "backlog_overflows", 1);
    let down = nodes[0].stat("peers_declared_down");
    signal(&nodes[1], Signal::SIGCONT);
    assert_eq!(down, 0, "the watchdog, not the bound, closed b's session");
}

fn rss_kib(node: &NodeProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_burst_at_a_stopped_peer_keeps_the_senders_memory_bounded() {
    // A small bound, so that this burst (coalesced into a few hundred envelopes) passes it.
    burst_at_a_stopped_peer(Some(65_536));
}

/// The same burst under the default bound (32 MiB of unacknowledged envelopes per peer).
#[test]
fn a_burst_at_a_stopped_peer_under_the_default_bound() {
    burst_at_a_stopped_peer(None);
}

fn burst_at_a_stopped_peer(bound: Option<u64>) {
    let cluster = Cluster::new();
    let mut specs = cluster.mesh_specs(&["a", "b"]);
    if let Some(bound) = bound {
        specs[0] = specs[0]
            .clone()
            .arg("--max-backlog-bytes")
            .arg(&bound.to_string());
    }
    let mut nodes = cluster.start_mesh(&specs);
    nodes[0].ask("burst 1000"); // warm up allocations
    let before = rss_kib(&nodes[0]);

    signal(&nodes[1], Signal::SIGSTOP);
    let burst = nodes[0].ask("burst 500000");
    let after = rss_kib(&nodes[0]);
    signal(&nodes[1], Signal::SIGCONT);
    let growth_mib = after.saturating_sub(before) / 1024;
    println!(
        "500k invalidations at a stopped peer (backlog bound {bound:?}) in {:.2} s: sender RSS {} → {} KiB (+{growth_mib} MiB), {} overflows",
        burst["seconds"].as_f64().unwrap_or(0.0),
        before,
        after,
        nodes[0].stat("backlog_overflows")
    );
    if bound.is_some() {
        assert!(
            nodes[0].stat("backlog_overflows") >= 1,
            "the backlog bound never fired"
        );
    }
    // Unbounded, ractor_cluster's queues grow by 100–160 MB for this burst.
    assert!(growth_mib < 32, "sender grew by {growth_mib} MiB");

    // The stopped peer comes back, reconnects, repairs and serves fresh data.
    for node in nodes.iter_mut() {
        cluster::wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
    cluster::put(&mut nodes[0], "after", "burst");
    wait_for_value(&mut nodes[1], "after", "burst");
}

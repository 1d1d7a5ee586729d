//! The node-level actor carries every heartbeat of the node; if it dies, the node falls
//! silent and its peers declare it down. It runs under a supervisor that spawns it again, and
//! the node keeps what it knew of its peers: the new actor has heard from nobody yet, and the
//! node must not take that for silence.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{put, wait_for_health, wait_for_stat, wait_for_value, Cluster};

#[test]
fn a_killed_node_level_actor_is_spawned_again_and_peers_never_declare_the_node_down() {
    let cluster = Cluster::new();
    let mut specs = cluster.mesh_specs(&["a", "b"]);
    // Each declares a silent peer down after 2 s (ten heartbeats: one slow moment on a busy
    // machine is not silence; a node-level actor that stays dead is).
    let timeout = Duration::from_millis(2_000);
    for spec in &mut specs {
        *spec = spec.clone().arg("--peer-timeout-ms").arg("2000");
    }
    let mut nodes = cluster.start_mesh(&specs);
    // Sessions older than the peer timeout: a node that forgot when it last heard from a peer
    // would see it silent since its session opened, and close it at once.
    std::thread::sleep(timeout + Duration::from_millis(500));
    let declared = |nodes: &mut Vec<cluster::NodeProcess>| {
        [0, 1].map(|i| nodes[i].stat("peers_declared_down"))
    };
    let declared_before = declared(&mut nodes);
    assert_eq!(nodes[0].ask("kill-liveness")["ok"], "kill-liveness");
    wait_for_stat(&mut nodes[0], "liveness_restarts", 1);
    // Two peer timeouts of watching: a keeps heartbeating under its new incarnation, and
    // closes no session itself.
    cluster::unchanged_for(
        2 * timeout,
        "peers declared down (a's side first, b's second): a fell silent or forgot b; they",
        declared_before,
        || declared(&mut nodes),
    );
    wait_for_health(&mut nodes[1], "healthy");
    put(&mut nodes[0], "k", "after");
    wait_for_value(&mut nodes[1], "k", "after");
    assert_eq!(nodes[0].stat("liveness_restarts"), 1);
}

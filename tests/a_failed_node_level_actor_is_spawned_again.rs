//! The node-level actor carries every heartbeat of the node; if it dies, the node falls
//! silent and its peers declare it down. It runs under a supervisor that spawns it again.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{put, wait_for_health, wait_for_stat, wait_for_value, Cluster};

#[test]
fn a_killed_node_level_actor_is_spawned_again_and_peers_never_declare_the_node_down() {
    let cluster = Cluster::new();
    let mut specs = cluster.mesh_specs(&["a", "b"]);
    // b declares a silent peer down after 2 s (ten heartbeats: one slow moment on a busy
    // machine is not silence; a node-level actor that stays dead is).
    specs[1] = specs[1].clone().arg("--peer-timeout-ms").arg("2000");
    let mut nodes = cluster.start_mesh(&specs);
    let declared_before = nodes[1].stat("peers_declared_down");
    assert_eq!(nodes[0].ask("kill-liveness")["ok"], "kill-liveness");
    wait_for_stat(&mut nodes[0], "liveness_restarts", 1);
    // Two peer timeouts of watching: a keeps heartbeating under its new incarnation.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_millis(4_000) {
        assert_eq!(
            nodes[1].stat("peers_declared_down"),
            declared_before,
            "b declared a down: a fell silent"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_for_health(&mut nodes[1], "healthy");
    put(&mut nodes[0], "k", "after");
    wait_for_value(&mut nodes[1], "k", "after");
    assert_eq!(nodes[0].stat("liveness_restarts"), 1);
}

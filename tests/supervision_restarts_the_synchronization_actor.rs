//! A killed Synchronization actor is restarted by its cache actor, rejoins its group, and the
//! cache keeps serving, repairs, and receives invalidations again.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, wait_for_stat, wait_for_value, Cluster};

#[test]
fn a_killed_synchronization_actor_is_restarted_and_invalidations_flow_again() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b"]));
    put(&mut nodes[0], "k", "v1");
    wait_for_stat(&mut nodes[1], "invalidations_received", 1);
    assert_eq!(nodes[1].value("k").as_deref(), Some("v1"));
    let joins_at_a = nodes[0].stat("peer_joins");
    let repairs_at_b = nodes[1].stat("repairs");

    assert_eq!(nodes[1].ask("kill-sync")["ok"], "kill-sync");
    wait_for_stat(&mut nodes[1], "sync_restarts", 1);
    // The new actor joined the group (a saw it join) and b repaired what it may have missed.
    wait_for_stat(&mut nodes[0], "peer_joins", joins_at_a + 1);
    assert!(nodes[1].stat("repairs") > repairs_at_b);
    assert_eq!(
        nodes[1].value("k").as_deref(),
        Some("v1"),
        "b stopped serving"
    );

    put(&mut nodes[0], "k", "v2");
    wait_for_value(&mut nodes[1], "k", "v2");
    put(&mut nodes[1], "k", "v3");
    wait_for_value(&mut nodes[0], "k", "v3");
}

#[test]
fn the_supervised_example_restarts_and_rejoins() {
    let exe = cluster::node_binary()
        .with_file_name(format!("supervised{}", std::env::consts::EXE_SUFFIX));
    let output = std::process::Command::new(&exe)
        .output()
        .expect("run the supervised example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("in its group again: true"), "{stdout}");
    assert!(stdout.lines().last() == Some("ok"), "{stdout}");
}

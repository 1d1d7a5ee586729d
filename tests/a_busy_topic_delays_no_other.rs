//! One topic's actor busy for longer than a lease (a subscriber blocking its thread for 5 s)
//! delays no other topic and not the node: the node-level actor, which carries every topic's
//! heartbeats, never waits for a busy topic, so the other topic's leases are renewed and no
//! peer is declared down meanwhile.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Duration;

use cluster::{put, wait_for_health, wait_for_value, Cluster, NodeProcess};

#[test]
fn a_topic_blocked_longer_than_a_lease_delays_no_other_topic_and_not_the_node() {
    let cluster = Cluster::new();
    let block = Duration::from_secs(5);
    let specs: Vec<_> = cluster
        .mesh_specs(&["a", "b"])
        .into_iter()
        // A 2 s lease and a 4 s peer timeout: a blocked node-level actor would let both lapse
        // within the 5 s block, and one slow moment of a busy machine would not.
        .map(|spec| {
            spec.arg("--slow-topic")
                .arg("slow")
                .arg("--lease-ms")
                .arg("2000")
                .arg("--peer-timeout-ms")
                .arg("4000")
        })
        .collect();
    let mut nodes = cluster.start_mesh(&specs);
    let figures = |nodes: &mut Vec<NodeProcess>| {
        [0, 1].map(|i| {
            let stats = nodes[i].ask("stats");
            [
                stats["lease_expiries"].as_u64().expect("lease_expiries"),
                stats["peers_declared_down"]
                    .as_u64()
                    .expect("peers_declared_down"),
            ]
        })
    };
    let before = figures(&mut nodes);
    // b's "slow" topic blocks for 5 s on a's invalidation.
    assert_eq!(
        nodes[0].ask(&format!("inject block {}", block.as_millis()))["ok"],
        "inject"
    );
    cluster::unchanged_for(
        block + Duration::from_secs(1),
        "[a, b] × [kv lease expiries, peers declared down], while b's other topic was blocked,",
        before,
        || figures(&mut nodes),
    );
    // The kv topic kept working all along, and still does.
    wait_for_health(&mut nodes[1], "healthy");
    put(&mut nodes[0], "k", "v");
    wait_for_value(&mut nodes[1], "k", "v");
}

//! Caches on different topics ignore each other's invalidations, even on meshed nodes.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, wait_for_value, Cluster};

#[test]
fn an_invalidation_on_one_topic_never_reaches_another() {
    let cluster = Cluster::new();
    let mut specs = cluster.mesh_specs(&["a", "b", "c"]);
    specs[0] = specs[0].clone().arg("--topic").arg("users");
    specs[1] = specs[1].clone().arg("--topic").arg("users");
    specs[2] = specs[2].clone().arg("--topic").arg("orders");
    let mut nodes = cluster.start_mesh(&specs);
    cluster::wait_for_joins(&mut nodes[1], 1);

    put(&mut nodes[0], "k", "old");
    for node in &mut nodes {
        assert_eq!(node.value("k").as_deref(), Some("old"));
    }
    put(&mut nodes[0], "k", "new");
    wait_for_value(&mut nodes[1], "k", "new");

    // b (same topic) has applied a's invalidation; c (other topic) got nothing and still
    // serves its own cached copy: the topics are independent caches.
    let c = &mut nodes[2];
    assert_eq!(c.stat("invalidations_received"), 0);
    assert_eq!(c.stat("decode_failures"), 0);
    let read = c.ask("get k");
    assert_eq!(
        (read["value"].as_str(), read["hit"].as_bool()),
        (Some("old"), Some(true))
    );
    // One or two: two quick puts may be coalesced into one invalidation.
    assert!(nodes[1].stat("invalidations_received") >= 1);
}

//! A write through any node reaches every other node's cache, which reloads it.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, wait_for_value, Cluster, DEADLINE};

#[test]
fn a_put_on_one_node_is_served_by_the_other_two() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b", "c"]));
    put(&mut nodes[0], "user:1", "alice");
    for node in &mut nodes {
        assert_eq!(
            node.value("user:1").as_deref(),
            Some("alice"),
            "{} cached",
            node.spec.name
        );
    }

    let version = put(&mut nodes[0], "user:1", "alicia");
    assert_eq!(version, 2);
    for node in &mut nodes[1..] {
        wait_for_value(node, "user:1", "alicia");
    }

    // Writes flow from every node, not only the first.
    put(&mut nodes[2], "user:1", "ali");
    for node in &mut nodes[..2] {
        wait_for_value(node, "user:1", "ali");
    }
    for node in nodes {
        node.quit().expect("clean quit");
    }
}

#[test]
fn a_remote_invalidation_reloads_a_cached_key_in_the_background() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b"]));
    // b repairs (drops everything) when a's Synchronization actor joins; let that pass first so
    // that the entry read below stays cached.
    cluster::wait_for_joins(&mut nodes[1], 1);
    put(&mut nodes[0], "k", "v1");
    // v1's invalidation must be out of the way, or it could be coalesced with v2's.
    cluster::wait_for_stat(&mut nodes[1], "invalidations_received", 1);
    assert_eq!(nodes[1].value("k").as_deref(), Some("v1"));
    assert_eq!(nodes[1].ask("get k")["hit"], true);
    put(&mut nodes[0], "k", "v2");

    // b reloads on its own: without any read, its stats show the reload and the next read is a
    // hit on the new version.
    let reloaded = cluster::eventually(DEADLINE, || {
        let stats = nodes[1].ask("stats");
        let applied_both = stats["invalidations_received"] == 2;
        let reloaded = applied_both && stats["reloads"].as_u64()? >= 1 && stats["entries"] == 1;
        reloaded.then_some(())
    });
    assert!(
        reloaded.is_some(),
        "b never reloaded k: {}",
        nodes[1].ask("stats")
    );
    let read = nodes[1].ask("get k");
    assert_eq!(
        (read["value"].as_str(), read["hit"].as_bool()),
        (Some("v2"), Some(true))
    );
    // The cache's remote-invalidation hook saw what was applied; the writer's own hook did not
    // fire for its own write.
    assert_eq!(
        nodes[1].ask("stats")["last_remote_invalidation"],
        serde_json::json!(["k"])
    );
    assert_ne!(
        nodes[0].ask("stats")["last_remote_invalidation"],
        serde_json::json!(["k"])
    );
}

#[test]
fn the_writer_reads_its_own_write_at_once() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b"]));
    for round in 0..20 {
        let value = format!("v{round}");
        put(&mut nodes[0], "counter", &value);
        assert_eq!(nodes[0].value("counter"), Some(value));
    }
}

//! A node killed with SIGKILL and restarted under the same name rejoins the mesh and serves
//! fresh data, including writes made while it was down.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, start, wait_for_peers, wait_for_value, Cluster, DEADLINE};

#[test]
fn a_killed_node_restarts_rejoins_and_serves_fresh_data() {
    let cluster = Cluster::new();
    let specs = cluster.mesh_specs(&["a", "b", "c"]);
    let mut nodes = cluster.start_mesh(&specs);
    put(&mut nodes[0], "k", "before");
    for node in &mut nodes {
        assert_eq!(node.value("k").as_deref(), Some("before"));
    }

    let b = nodes.remove(1);
    b.kill();
    for node in &mut nodes {
        let gone = cluster::eventually(DEADLINE, || {
            (!node.peers().contains(&"b@127.0.0.1".to_owned())).then_some(())
        });
        assert!(gone.is_some(), "{} still lists b", node.spec.name);
    }
    put(&mut nodes[0], "k", "while-b-was-down");

    let mut b = start(&specs[1]);
    wait_for_peers(&mut b, 2);
    for node in &mut nodes {
        wait_for_peers(node, 2);
    }
    assert_eq!(b.value("k").as_deref(), Some("while-b-was-down"));

    // The invalidation path to and from the restarted node works again.
    put(&mut nodes[0], "k", "after");
    wait_for_value(&mut b, "k", "after");
    put(&mut b, "k", "from-b");
    for node in &mut nodes {
        wait_for_value(node, "k", "from-b");
    }
}

#[test]
fn survivors_repair_when_a_peer_comes_back() {
    let cluster = Cluster::new();
    let specs = cluster.mesh_specs(&["a", "b"]);
    let mut nodes = cluster.start_mesh(&specs);
    put(&mut nodes[0], "k", "v1");
    assert_eq!(nodes[0].value("k").as_deref(), Some("v1"));
    let repairs_before = nodes[0].stat("repairs");

    nodes.remove(1).kill();
    let mut b = start(&specs[1]);
    wait_for_peers(&mut b, 1);
    wait_for_peers(&mut nodes[0], 1);

    // b's new incarnation joined the topic: a may have missed what b published before it
    // died, so a checks its entries against the source; k did not change, so a keeps it and
    // serves it from its heap again, at one version check for the whole cache.
    let a = &mut nodes[0];
    let repaired = cluster::eventually(DEADLINE, || {
        (a.stat("repairs") > repairs_before).then_some(())
    });
    assert!(repaired.is_some(), "a did not repair after b rejoined");
    let calls_before = a.stat("source_calls");
    let served = cluster::eventually(DEADLINE, || {
        let read = a.ask("get k");
        (read["hit"] == true && read["value"] == "v1").then_some(())
    });
    assert!(served.is_some(), "a dropped k: {}", a.ask("stats"));
    assert_eq!(a.stat("entries"), 1);
    let calls = a.stat("source_calls") - calls_before;
    assert!(calls <= 2, "{calls} source calls to keep one entry");
}

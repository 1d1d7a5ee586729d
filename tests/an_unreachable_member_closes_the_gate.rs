//! The staleness bound through membership: a member that a peer knows and this node cannot
//! reach keeps this node from serving its heap, so that member's writes, which never reach
//! this node as invalidations, are never hidden by a cached value; and a node that reaches
//! none of its configured peers does not serve from its heap either.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{eventually, put, start, wait_for_health, wait_for_peers, Cluster, DEADLINE};

#[test]
fn a_member_known_from_gossip_but_unreachable_closes_the_gate_and_its_writes_are_served() {
    let cluster = Cluster::new();
    let a_spec = cluster.spec("a");
    // b and d dial a, and advertise addresses nobody can reach: they know of each other
    // through a's gossip, and can never meet.
    let b_spec = cluster
        .spec("b")
        .peer(&a_spec)
        .arg("--advertise")
        .arg("192.0.2.2");
    let mut a = start(&a_spec);
    let mut b = start(&b_spec);
    wait_for_peers(&mut a, 1);
    wait_for_health(&mut b, "healthy");
    put(&mut a, "k", "v1");
    assert_eq!(b.value("k").as_deref(), Some("v1"));
    assert_eq!(b.ask("get k")["hit"], true, "b serves k from its heap");

    let d_spec = cluster
        .spec("d")
        .peer(&a_spec)
        .arg("--advertise")
        .arg("192.0.2.1");
    let mut d = start(&d_spec);
    wait_for_peers(&mut a, 2);
    let reason = eventually(DEADLINE, || {
        let stats = b.ask("stats");
        (stats["health"] == "bypassing").then(|| stats["health_reason"].to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "b kept serving while d was out of reach: {}",
            b.ask("stats")
        )
    });
    assert!(reason.contains("d@192.0.2.1"), "{reason}");

    // d's invalidation reaches a, never b: b must read the source, not its heap.
    put(&mut d, "k", "v2");
    let read = b.ask("get k");
    assert_eq!(
        (read["value"].as_str(), read["hit"].as_bool()),
        (Some("v2"), Some(false)),
        "b served a value d overwrote"
    );
    assert!(
        b.peers().iter().all(|p| !p.starts_with("d@")),
        "b met d after all"
    );
}

#[test]
fn a_node_that_reaches_none_of_its_peers_does_not_serve_from_its_heap() {
    let cluster = Cluster::new();
    let nobody = cluster.spec("nobody"); // never started
    let mut x = start(&cluster.spec("x").peer(&nobody));
    put(&mut x, "k", "v1");
    for _ in 0..3 {
        let read = x.ask("get k");
        assert_eq!(
            (read["value"].as_str(), read["hit"].as_bool()),
            (Some("v1"), Some(false))
        );
    }
    let stats = x.ask("stats");
    assert_eq!(stats["health"], "bypassing", "{stats}");
    assert!(
        stats["health_reason"]
            .as_str()
            .unwrap_or("")
            .contains("no configured or discovered peer reached"),
        "{stats}"
    );
}

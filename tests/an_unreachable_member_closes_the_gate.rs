//! The staleness bound through membership: a member that a peer knows and this node cannot
//! reach closes this node's gate, so it serves only entries it checked against the source
//! less than a lease ago, and that member's writes, which never reach this node as
//! invalidations, are served within the lease; the same for a node that reaches none of its
//! configured peers.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{eventually, put, served_within, start, wait_for_health, wait_for_peers};
use cluster::{wait_for_stat, write_directly, Cluster, DEADLINE};

/// The node example's default lease: the staleness bound.
const LEASE: Duration = Duration::from_secs(1);

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
    // A load racing the put's invalidation is not kept: read after it arrived.
    wait_for_stat(&mut b, "invalidations_received", 1);
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

    // d's invalidation reaches a, never b: b serves only what it checked against the
    // source less than a lease ago, so d's write is served within the lease.
    put(&mut d, "k", "v2");
    let committed = Instant::now();
    let took = served_within(&mut b, "k", "v2", committed, LEASE);
    println!("b served d's write {took:?} after its commit");
    assert!(
        b.peers().iter().all(|p| !p.starts_with("d@")),
        "b met d after all"
    );
}

#[test]
fn a_node_that_reaches_none_of_its_peers_serves_only_what_the_source_confirmed() {
    let cluster = Cluster::new();
    let nobody = cluster.spec("nobody"); // never started
    let mut x = start(&cluster.spec("x").peer(&nobody));
    put(&mut x, "k", "v1");
    assert_eq!(x.value("k").as_deref(), Some("v1"));
    // Nobody can tell x of a write: it serves k only as checked against the source less
    // than a lease ago, so a write straight into the database is served within the lease.
    write_directly(&cluster.db(), "k", "v2").expect("the row exists");
    let committed = Instant::now();
    let took = served_within(&mut x, "k", "v2", committed, LEASE);
    println!("x served the outside write {took:?} after its commit");
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

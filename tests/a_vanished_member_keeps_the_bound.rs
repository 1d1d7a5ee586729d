//! A member that vanished without leaving may still be writing to the source of truth: a
//! partition longer than every forget timeout, on both sides (one of them a seed with no
//! configured peer), and a node killed right after its session became ready. Until there is
//! evidence the member is gone, each node serves only what it checked against the source
//! within a lease — and an operator's removal is such evidence.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{cache, eventually, proxy::FaultProxy, put, served_within, start, wait_for_health};
use cluster::{wait_for_peers, wait_for_stat, write_directly, Cluster, NodeProcess, DEADLINE};

/// The node example's default lease: the staleness bound.
const LEASE: Duration = Duration::from_secs(1);
/// How long the partition lasts: longer than every forget timeout below.
const PARTITION: Duration = Duration::from_secs(6);

/// Short forget timeouts, so that a partition outlasts them in a few seconds.
const FORGET: [&str; 6] = [
    "--forget-after-ms",
    "2000",
    "--forget-members-after-ms",
    "3000",
    "--peer-timeout-ms",
    "600",
];

fn with_short_forget_timeouts(mut spec: cluster::NodeSpec) -> cluster::NodeSpec {
    for arg in FORGET {
        spec = spec.arg(arg);
    }
    spec
}

/// For `window`, `node` must never report `healthy` (it cannot vouch for its heap).
fn never_healthy_for(window: Duration, node: &mut NodeProcess) {
    let started = Instant::now();
    while started.elapsed() < window {
        let stats = node.ask("stats");
        assert_ne!(stats["health"], "healthy", "{stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_partition_longer_than_every_forget_timeout_keeps_the_bound_on_both_sides() {
    let cluster = Cluster::new();
    // a is a seed with no configured peer; b dials it through the proxy.
    let mut a = start(&with_short_forget_timeouts(cluster.proxied_spec("a")));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut spec = with_short_forget_timeouts(cluster.proxied_spec("b"));
    spec.peers.push(proxy.addr());
    let mut b = start(&spec);
    for node in [&mut a, &mut b] {
        wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
    for key in ["on-a", "on-b"] {
        put(&mut a, key, "v1");
    }
    wait_for_stat(&mut b, "invalidations_received", 2);
    for node in [&mut a, &mut b] {
        cache(node, "on-a", "v1");
        cache(node, "on-b", "v1");
    }

    // Connections reset and refused: what a firewall rejecting traffic looks like, which is
    // not evidence that the other side stopped writing.
    proxy.cut();
    let started = Instant::now();
    for node in [&mut a, &mut b] {
        eventually(DEADLINE, || node.peers().is_empty().then_some(())).expect("the session closes");
        // The lease taken before the cut still vouches for a moment.
        wait_for_health(node, "bypassing");
    }
    never_healthy_for(PARTITION.saturating_sub(started.elapsed()), &mut a);
    never_healthy_for(Duration::from_millis(500), &mut b);
    for node in [&mut a, &mut b] {
        let forgotten = node.stat("peers_forgotten");
        let members = node.ask("members");
        println!("{}: peers forgotten {forgotten}, {members}", node.spec.name);
        assert_eq!(members["members"][0]["state"], "down", "{members}");
    }

    // Each side writes a key the other has cached: neither hears of it.
    let committed = Instant::now();
    put(&mut b, "on-a", "v2");
    let took = served_within(&mut a, "on-a", "v2", committed, LEASE);
    println!("the seed served the other side's write after {took:?}");
    let committed = Instant::now();
    put(&mut a, "on-b", "v2");
    let took = served_within(&mut b, "on-b", "v2", committed, LEASE);
    println!("the dialler served the seed's write after {took:?}");

    // Healed, the mesh re-forms and both vouch for their heaps again.
    proxy.heal();
    for node in [&mut a, &mut b] {
        wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
}

#[test]
fn a_node_killed_as_soon_as_its_session_is_ready_is_a_member_until_removed() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b"]));
    put(&mut nodes[0], "k", "v1");
    wait_for_stat(&mut nodes[1], "invalidations_received", 1);
    cache(&mut nodes[1], "k", "v1");

    // c joins and is killed the moment b sees its session, before any heartbeat of it could
    // make it a member by gossip.
    let c = start(&cluster.spec("c").peer(&nodes[0].spec).peer(&nodes[1].spec));
    let c_name = eventually(DEADLINE, || {
        nodes[1].peers().into_iter().find(|p| p.starts_with("c@"))
    })
    .expect("c's session with b becomes ready");
    c.kill();

    // c may have written before it died: b checks against the source.
    let b = &mut nodes[1];
    wait_for_health(b, "bypassing");
    let members = b.ask("members");
    assert!(
        members["members"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == c_name.as_str())),
        "{members}"
    );
    write_directly(&cluster.db(), "k", "v2").expect("the row exists");
    let took = served_within(b, "k", "v2", Instant::now(), LEASE);
    println!("a write no node heard of served after {took:?}");
    never_healthy_for(Duration::from_secs(3), b);

    // The operator says c is gone for good, on a only: b hears it through a's heartbeats.
    let removed = nodes[0].ask(&format!("remove-member {c_name}"));
    assert_eq!(removed["removed"], true, "{removed}");
    for node in &mut nodes {
        wait_for_health(node, "healthy");
    }
    let read = nodes[1].ask("get k");
    assert_eq!(read["value"], "v2", "{read}");
}

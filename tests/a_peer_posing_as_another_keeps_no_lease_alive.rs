//! A peer with the cluster's cookie poses as a node that is partitioned away: it forges that
//! node's clean leave of the cluster (so membership stops expecting a session with it), and
//! after each of its own heartbeats one of the node's, echoing the stamps of the victim's
//! heartbeats it receives itself. Taken on trust, those forgeries keep the partitioned node's
//! lease alive at the victim, which then serves that node's writes stale for as long as the
//! forger keeps going. A cast proves its origin only by echoing the secret the victim sends
//! over its session with that origin, which the forger never sees: the lease runs out, and the
//! victim serves the partitioned node's writes within the lease, both while its session with
//! that node is still up and after it closed.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::proxy::FaultProxy;
use cluster::{put, served_within, start, wait_for_health, wait_for_peers, Cluster};

/// The node example's default lease: the staleness bound.
const LEASE: Duration = Duration::from_secs(1);

#[test]
fn a_peer_posing_as_a_partitioned_node_keeps_none_of_its_leases_alive() {
    let cluster = Cluster::new();
    // a listens; b and c dial it through proxies (cutting both isolates a); c dials b.
    let mut a = start(&cluster.proxied_spec("a"));
    let to_b = FaultProxy::start(a.spec.listen);
    let to_c = FaultProxy::start(a.spec.listen);
    let mut b_spec = cluster.proxied_spec("b");
    b_spec.peers.push(to_b.addr());
    let mut b = start(&b_spec);
    let mut c_spec = cluster.proxied_spec("c");
    c_spec.peers.push(to_c.addr());
    c_spec.peers.push(b.spec.listen);
    let mut c = start(&c_spec);
    for node in [&mut a, &mut b, &mut c] {
        wait_for_peers(node, 2);
    }
    wait_for_health(&mut c, "healthy");

    put(&mut a, "key", "v1");
    cluster::wait_for_value(&mut c, "key", "v1");
    let hits = c.stat("hits");
    assert_eq!(c.value("key").as_deref(), Some("v1"));
    assert!(c.stat("hits") > hits, "c did not cache the key");
    let stats = a.ask("stats");
    let origin = stats["name"].as_str().expect("a's name").to_owned();
    let incarnation = stats["incarnation"]
        .as_u64()
        .expect("a's topic incarnation");
    let node_incarnation = stats["node_incarnation"]
        .as_u64()
        .expect("a's node-level incarnation");

    let refused = c.stat("unverified");
    // b starts forging a's heartbeats; a is cut off from everyone.
    let forging = b.ask(&format!("inject impersonate {origin} {incarnation}"));
    assert_eq!(forging["ok"], "inject", "{forging}");
    to_b.partition();
    to_c.partition();

    // While c's session with a is still up (for the peer timeout, 3 s), a keeps writing to
    // the shared database; none of its invalidations reach c.
    put(&mut a, "key", "v2");
    let committed = Instant::now();
    let took = served_within(&mut c, "key", "v2", committed, LEASE);
    println!("with b posing as a, session up: c served a's write {took:?} after its commit");
    assert!(
        c.peers().iter().any(|p| p == &origin),
        "c's session with a closed before the write was served: the forgeries were checked \
         against no session"
    );

    // Once that session is closed, b also says a left the cluster (so membership stops
    // expecting a session with it), and keeps forging its heartbeats.
    wait_for_peers_at_most(&mut c, 1);
    let leave = b.ask(&format!("inject leave {origin} {node_incarnation}"));
    assert_eq!(leave["ok"], "inject", "{leave}");
    put(&mut a, "key", "v3");
    let committed = Instant::now();
    let took = served_within(&mut c, "key", "v3", committed, LEASE);
    println!("with b posing as a, session closed: c served a's write {took:?} after its commit");
    let refused = c.stat("unverified") - refused;
    println!("c refused {refused} envelopes that did not prove their origin");
    assert!(refused > 0, "c never saw b's forgeries");
    to_b.heal();
    to_c.heal();
}

/// Polls until `node` has a ready session with at most `count` peers.
fn wait_for_peers_at_most(node: &mut cluster::NodeProcess, count: usize) {
    let name = node.spec.name.clone();
    cluster::eventually(cluster::DEADLINE, || {
        (node.peers().len() <= count).then_some(())
    })
    .unwrap_or_else(|| panic!("{name} kept more than {count} peers"));
}

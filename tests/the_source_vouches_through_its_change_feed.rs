//! With `--change-feed`, the database reports every committed write to every node (a
//! trigger-filled change log, read every few milliseconds): a row changed straight in the
//! database, by no node, is served everywhere within the lease, and a partition between the
//! nodes (not from the database) longer than every forget timeout keeps the bound — and keeps
//! the nodes serving from their heaps — by the feed alone.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{cache, eventually, proxy::FaultProxy, put, served_within, start, wait_for_health};
use cluster::{wait_for_peers, write_directly, Cluster, DEADLINE};

/// The node example's default lease: the staleness bound.
const LEASE: Duration = Duration::from_secs(1);

fn median(mut figures: Vec<Duration>) -> Duration {
    figures.sort();
    figures[figures.len() / 2]
}

#[test]
fn a_row_updated_straight_in_the_database_is_served_by_every_node_within_the_lease() {
    let cluster = Cluster::new();
    let mut specs: Vec<_> = cluster
        .mesh_specs(&["a", "b", "c", "d"])
        .into_iter()
        .map(|spec| spec.arg("--change-feed"))
        .collect();
    // d follows no feed: it shows that nothing but the feed tells the others.
    specs[3].extra.retain(|arg| arg != "--change-feed");
    let mut nodes = cluster.start_mesh(&specs);
    put(&mut nodes[0], "k", "v0");
    let mut took = Vec::new();
    for round in 1..=5 {
        let old = format!("v{}", round - 1);
        for node in nodes.iter_mut() {
            cache(node, "k", &old);
        }
        let fresh = format!("v{round}");
        write_directly(&cluster.db(), "k", &fresh).expect("the row exists");
        let committed = Instant::now();
        for node in nodes.iter_mut().take(3) {
            took.push(served_within(node, "k", &fresh, committed, LEASE));
        }
        // Without the feed, d's heap still vouches for the old value: no node invalidated.
        let read = nodes[3].ask("get k");
        assert_eq!(
            (&read["value"], &read["hit"]),
            (&old.as_str().into(), &true.into()),
            "{read}"
        );
        let d = &mut nodes[3];
        d.ask(&format!("put k {fresh}"));
    }
    let worst = took.iter().max().copied().unwrap_or_default();
    println!(
        "a write made straight in SQLite was served by the feed's nodes after {:?} (median of {}), {worst:?} at worst",
        median(took.clone()),
        took.len()
    );
    for node in nodes.iter_mut().take(3) {
        let stats = node.ask("stats");
        assert_eq!(stats["health"], "healthy", "{stats}");
        assert!(stats["feed_changes"].as_u64() >= Some(5), "{stats}");
        assert_eq!(stats["feed_repairs"], 0, "{stats}");
    }
}

#[test]
fn a_partition_between_the_nodes_keeps_the_bound_and_the_heap_by_the_feed_alone() {
    let cluster = Cluster::new();
    let short = |spec: cluster::NodeSpec| {
        spec.arg("--change-feed")
            .arg("--forget-after-ms")
            .arg("2000")
            .arg("--forget-members-after-ms")
            .arg("3000")
            .arg("--peer-timeout-ms")
            .arg("600")
    };
    let mut a = start(&short(cluster.proxied_spec("a")));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut spec = short(cluster.proxied_spec("b"));
    spec.peers.push(proxy.addr());
    let mut b = start(&spec);
    for node in [&mut a, &mut b] {
        wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
    for key in ["on-a", "on-b"] {
        put(&mut a, key, "v1");
    }
    for node in [&mut a, &mut b] {
        cache(node, "on-a", "v1");
        cache(node, "on-b", "v1");
    }

    proxy.cut();
    let cut = Instant::now();
    for node in [&mut a, &mut b] {
        eventually(DEADLINE, || node.peers().is_empty().then_some(())).expect("the session closes");
    }
    // Longer than every forget timeout: the feed vouches all along, so neither stops serving
    // from its heap while the other side is out of reach (the session's loss is a repair:
    // `repairing` for a heartbeat, while the entries are checked once).
    while cut.elapsed() < Duration::from_secs(6) {
        for node in [&mut a, &mut b] {
            let stats = node.ask("stats");
            assert_ne!(stats["health"], "bypassing", "{stats}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let hits = a.stat("hits");
    cache(&mut a, "on-b", "v1");
    assert!(a.stat("hits") > hits, "a serves from its heap");

    // Each side writes a key the other has cached; neither hears of it from the other.
    let committed = Instant::now();
    put(&mut b, "on-a", "v2");
    let took = served_within(&mut a, "on-a", "v2", committed, LEASE);
    println!("across the partition, a served b's write after {took:?}");
    let committed = Instant::now();
    put(&mut a, "on-b", "v2");
    let took = served_within(&mut b, "on-b", "v2", committed, LEASE);
    println!("across the partition, b served a's write after {took:?}");
    assert_eq!(
        a.stat("invalidations_received"),
        0,
        "nothing came over the mesh"
    );

    proxy.heal();
    for node in [&mut a, &mut b] {
        wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
}

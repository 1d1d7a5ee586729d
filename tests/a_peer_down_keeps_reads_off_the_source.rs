//! Checking versions against the source keeps the cache useful when a peer is down, and
//! keeps the staleness bound: a crashed peer, a rolling restart and a write made straight in
//! the database, with the SQLite file as the source of truth.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::NodeProcess;
use cluster::{proxy::FaultProxy, wait_for_stat as stat_at_least, write_directly, Cluster};
use cluster::{put, served_within, start, wait_for_health, wait_for_peers, wait_for_stat};

/// The node example's default lease: the staleness bound.
const LEASE: Duration = Duration::from_secs(1);
const HOT_KEYS: usize = 100;

fn key(i: usize) -> String {
    format!("hot{i}")
}

/// Writes the hot keys through `writer` and caches them on `reader`.
fn cache_hot_keys(writer: &mut NodeProcess, reader: &mut NodeProcess) {
    for i in 0..HOT_KEYS {
        put(writer, &key(i), "v1");
    }
    // A load racing a put's invalidation is not kept: read after they all arrived.
    wait_for_stat(reader, "invalidations_received", HOT_KEYS as u64);
    for i in 0..HOT_KEYS {
        assert_eq!(reader.value(&key(i)).as_deref(), Some("v1"));
    }
}

/// Reads every hot key on `node` for `period`; returns (reads, hits, source calls).
fn read_hot_keys(node: &mut NodeProcess, period: Duration) -> (u64, u64, u64) {
    let (hits, calls) = (node.stat("hits"), node.stat("source_calls"));
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < period {
        for i in 0..HOT_KEYS {
            let read = node.ask(&format!("get {}", key(i)));
            assert_eq!(read["value"], "v1", "{read}");
            reads += 1;
        }
    }
    let hits = node.stat("hits") - hits;
    (reads, hits, node.stat("source_calls") - calls)
}

#[test]
fn with_a_peer_crashed_reads_stay_on_the_heap_and_outside_writes_are_served_within_the_lease() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b", "c"]));
    let (a, rest) = nodes.split_at_mut(1);
    cache_hot_keys(&mut a[0], &mut rest[0]);
    nodes.remove(2).kill();
    let b = &mut nodes[1];
    wait_for_health(b, "bypassing");

    // c's lease has lapsed and c is not forgotten for 30 s: b serves what it checked against
    // the source less than a lease ago, checking every entry in one call per half lease.
    let period = Duration::from_secs(3);
    let (reads, hits, calls) = read_hot_keys(b, period);
    let per_second = calls as f64 / period.as_secs_f64();
    println!("peer down: {reads} reads, {hits} hits, {calls} source calls ({per_second:.1}/s)");
    assert!(hits * 10 >= reads * 9, "{hits} hits of {reads} reads");
    assert!(
        calls <= 20,
        "{calls} source calls in {period:?} for {HOT_KEYS} keys"
    );

    // A write no node hears of (c could have made it before it died) is served within the
    // lease.
    write_directly(&cluster.db(), &key(7), "v2").expect("the row exists");
    let took = served_within(b, &key(7), "v2", Instant::now(), LEASE);
    println!("outside write served after {took:?}");
}

#[test]
fn a_rolling_restart_keeps_the_survivors_entries() {
    let cluster = Cluster::new();
    let specs = cluster.mesh_specs(&["a", "b", "c"]);
    let mut nodes = cluster.start_mesh(&specs);
    let (a, rest) = nodes.split_at_mut(1);
    cache_hot_keys(&mut a[0], &mut rest[0]);
    let mut b = nodes.remove(1);
    for restarted in [0, 1] {
        let spec = specs[if restarted == 0 { 0 } else { 2 }].clone();
        let (calls, loads, repairs) = (b.stat("source_calls"), b.stat("loads"), b.stat("repairs"));
        let down = Instant::now();
        nodes.remove(0).kill();
        let mut again = start(&spec);
        wait_for_peers(&mut again, 2);
        wait_for_peers(&mut b, 2);
        // The new incarnation is a possible loss: b checks its entries and keeps them.
        wait_for_stat(&mut b, "repairs", repairs + 1);
        wait_for_health(&mut b, "healthy");
        let gated = down.elapsed();
        let (reads, hits, _) = read_hot_keys(&mut b, Duration::from_millis(300));
        let calls = b.stat("source_calls") - calls;
        let loads = b.stat("loads") - loads;
        let repairs = b.stat("repairs") - repairs;
        println!(
            "restart of {}: {calls} source calls on b ({loads} loads), {hits} hits of {reads} reads",
            spec.name
        );
        let stats = b.ask("stats");
        assert_eq!(
            stats["entries"], HOT_KEYS as u64,
            "b dropped entries: {stats}"
        );
        // A flush would cost a load per key (100 calls); checking costs one call per pass (a
        // pass per repair, and one per half lease while the gate was closed: how long that
        // is depends on how fast the machine restarts a process). A read that comes before
        // the pass has checked its key loads it: on a busy machine a few do.
        let passes = gated.as_millis() as u64 / (LEASE.as_millis() as u64 / 2) + 1 + repairs;
        let checks = calls - loads;
        assert!(
            checks <= passes + 3,
            "{checks} version checks for one restart ({repairs} repairs, gate closed for {gated:?})"
        );
        assert!(
            loads < HOT_KEYS as u64 / 2,
            "{loads} loads for one restart: the entries were flushed, not checked"
        );
        nodes.push(again);
    }
}

#[test]
fn revalidate_every_catches_a_write_that_bypasses_the_application() {
    let cluster = Cluster::new();
    let specs = cluster.mesh_specs(&["a", "b"]);
    let every = Duration::from_millis(300);
    let b_spec = specs[1].clone().arg("--revalidate-every-ms").arg("300");
    let mut a = start(&specs[0]);
    let mut b = start(&b_spec);
    wait_for_peers(&mut a, 1);
    wait_for_health(&mut b, "healthy");
    wait_for_health(&mut a, "healthy");
    put(&mut a, "k", "v1");
    wait_for_stat(&mut b, "invalidations_received", 1);
    assert_eq!(a.value("k").as_deref(), Some("v1"));
    assert_eq!(b.value("k").as_deref(), Some("v1"));

    write_directly(&cluster.db(), "k", "v2").expect("the row exists");
    let committed = Instant::now();
    // b checks every 300 ms: served within that plus one check.
    let took = served_within(&mut b, "k", "v2", committed, every + LEASE);
    println!("b served the outside write after {took:?}");
    // a checks only after a possible loss: every lease is valid, so it still serves v1 (the
    // weakness the setting exists for).
    let read = a.ask("get k");
    assert_eq!(
        (read["value"].as_str(), read["hit"].as_bool()),
        (Some("v1"), Some(true))
    );
    assert!(b.stat("revalidations") >= 1);
}

#[test]
fn a_partitioned_peer_s_writes_are_served_within_the_lease_by_a_node_that_cannot_hear_it() {
    let cluster = Cluster::new();
    // a listens; b dials it through a fault proxy: cutting the proxy partitions them.
    let mut a = start(&cluster.proxied_spec("a"));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut b_spec = cluster.proxied_spec("b");
    b_spec.peers.push(proxy.addr());
    let mut b = start(&b_spec);
    wait_for_peers(&mut a, 1);
    wait_for_peers(&mut b, 1);
    wait_for_health(&mut b, "healthy");
    cache_hot_keys(&mut a, &mut b);

    proxy.partition();
    // a keeps writing; none of its invalidations reach b. b's lease from a runs out, and b
    // serves only what it checked against the shared source less than a lease ago.
    put(&mut a, &key(3), "v2");
    let committed = Instant::now();
    let took = served_within(&mut b, &key(3), "v2", committed, LEASE);
    println!("b served a's partitioned write {took:?} after its commit");
    stat_at_least(&mut b, "revalidations", 1);
    let (hits, calls) = (b.stat("hits"), b.stat("source_calls"));
    for i in 0..HOT_KEYS {
        assert!(b.value(&key(i)).is_some());
    }
    let (hits, calls) = (b.stat("hits") - hits, b.stat("source_calls") - calls);
    println!("partitioned: {hits} hits of {HOT_KEYS} reads, {calls} source calls");
    assert!(
        hits >= HOT_KEYS as u64 / 2,
        "b stopped serving its heap: {hits} hits"
    );
    proxy.heal();
}

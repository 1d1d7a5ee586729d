//! Single ractor_cluster frames dropped or duplicated between two node processes: a lost
//! invalidation is detected by the next heartbeat and repaired; a duplicate changes nothing.
//! Eventual mode, so that only the repair (not the lease) can make the new value visible.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::Instant;

use cluster::proxy::{Dir, FaultProxy};
use cluster::{
    eventually, put, start, wait_for_joins, wait_for_stat, Cluster, NodeProcess, DEADLINE,
};

/// `a` listens; `b` dials it through a proxy; both in eventual mode, 200 ms heartbeats.
fn proxied_pair(cluster: &Cluster) -> (NodeProcess, NodeProcess, FaultProxy) {
    let mut a = start(&cluster.proxied_spec("a").arg("--mode").arg("eventual"));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut spec = cluster.proxied_spec("b").arg("--mode").arg("eventual");
    spec.peers.push(proxy.addr());
    let mut b = start(&spec);
    cluster::wait_for_peers(&mut a, 1);
    cluster::wait_for_peers(&mut b, 1);
    wait_for_joins(&mut b, 1);
    (a, b, proxy)
}

#[test]
fn a_lost_invalidation_is_detected_by_the_next_heartbeat_and_repaired() {
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    put(&mut a, "precious-key", "old");
    // Let the first invalidation pass before tampering, so the proxy cannot pick its frame.
    wait_for_stat(&mut b, "invalidations_received", 1);
    assert_eq!(b.value("precious-key").as_deref(), Some("old"));
    assert_eq!(b.ask("get precious-key")["hit"], true);

    // The invalidation envelope names the key: drop exactly that frame on its way to b.
    proxy.drop_next(Dir::ToDialer, b"precious-key");
    put(&mut a, "precious-key", "new");
    let written = Instant::now();
    let repaired = eventually(DEADLINE, || {
        (b.value("precious-key").as_deref() == Some("new")).then(|| written.elapsed())
    });
    let took = repaired.expect("b never repaired the lost invalidation");
    println!("lost invalidation repaired after {took:?}");
    assert_eq!(proxy.tampered().0, 1, "the frame was not dropped");
    wait_for_stat(&mut b, "gaps", 1);
    assert_eq!(b.stat("gaps"), 1, "{}", b.ask("stats"));
    assert_eq!(
        b.stat("invalidations_received"),
        1,
        "only the first put's arrived"
    );
}

#[test]
fn a_duplicated_invalidation_changes_nothing() {
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    put(&mut a, "twice", "v1");
    wait_for_stat(&mut b, "invalidations_received", 1);
    assert_eq!(b.value("twice").as_deref(), Some("v1"));
    proxy.duplicate_next(Dir::ToDialer, b"twice");
    put(&mut a, "twice", "v2");
    let b_ref = &mut b;
    let seen = eventually(DEADLINE, || (b_ref.stat("duplicates") == 1).then_some(()));
    assert!(seen.is_some(), "b never saw the duplicate");
    assert_eq!(proxy.tampered().1, 1);
    let read = b.ask("get twice");
    assert_eq!(read["value"], "v2", "{read} {}", b.ask("stats"));
    assert_eq!(b.stat("gaps"), 0);
    // A cache applies a duplicate again (idempotent: a forged sequence number must not hide
    // later invalidations); it is counted, and repairs nothing.
    assert_eq!(b.stat("invalidations_received"), 3);
    let read = b.ask("get twice");
    assert_eq!(read["value"], "v2", "{read}");
}

#[test]
fn eventual_mode_serves_stale_during_a_partition_and_catches_up_after_it() {
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    put(&mut a, "k", "before");
    wait_for_stat(&mut b, "invalidations_received", 1);
    assert_eq!(b.value("k").as_deref(), Some("before"));
    assert_eq!(b.ask("get k")["hit"], true);

    proxy.partition();
    put(&mut a, "k", "during");
    // Eventual mode keeps serving the cached value: that is the trade it makes.
    let read = b.ask("get k");
    assert_eq!(
        (read["value"].as_str(), read["hit"].as_bool()),
        (Some("before"), Some(true))
    );
    proxy.heal();
    let b_ref = &mut b;
    let repaired = eventually(DEADLINE, || {
        (b_ref.value("k").as_deref() == Some("during")).then_some(())
    });
    assert!(
        repaired.is_some(),
        "b never caught up after the partition healed"
    );
}

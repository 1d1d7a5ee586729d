//! The clock leases use does not count time the system spends suspended, so a lease taken
//! just before a suspension would look valid for as long again after it. Each node compares
//! that clock with `CLOCK_BOOTTIME` at every heartbeat; here the boot clock is made to jump an
//! hour (fault injection), as a suspension of the system would make it.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, wait_for_health, wait_for_stat, wait_for_value, Cluster};

#[test]
fn a_detected_suspension_closes_the_gates_until_fresh_heartbeats_and_repairs() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b"]));
    put(&mut nodes[0], "k", "v1");
    let b = &mut nodes[1];
    assert_eq!(b.value("k").as_deref(), Some("v1"));
    assert_eq!(b.stat("suspensions"), 0, "a suspension seen with none");
    let (expiries, repairs) = (b.stat("lease_expiries"), b.stat("repairs"));

    assert_eq!(b.ask("simulate-suspend 3600000")["ok"], "simulate-suspend");
    wait_for_stat(b, "suspensions", 1);
    // Every lease ended at once (the gate closed), and the cache checks its entries again.
    // (The watchdog counts the suspension just before it ends the leases.)
    wait_for_stat(b, "lease_expiries", expiries + 1);
    wait_for_stat(b, "repairs", repairs + 1);
    // Heartbeats sent after the wake-up renew the leases.
    wait_for_health(b, "healthy");
    assert_eq!(b.stat("suspensions"), 1, "one jump was seen twice");
    put(&mut nodes[0], "k", "v2");
    wait_for_value(&mut nodes[1], "k", "v2");
}

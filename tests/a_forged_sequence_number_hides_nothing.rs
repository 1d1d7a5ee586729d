//! A peer with the cluster's cookie forges a publish under another node's name, incarnation
//! and a sequence number of 10^9. Sequence numbers would then call every later invalidation
//! from that node a duplicate, while its real heartbeats keep its lease valid: stale without
//! bound. The forged cast does not prove its origin (it does not echo the secret c sends over
//! its session with a), so it moves no sequence number; and invalidations are idempotent, so a
//! cache would apply a "duplicate" anyway: the forged number hides nothing.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{
    eventually, put, served_within, wait_for_health, wait_for_stat, wait_for_value, Cluster,
    DEADLINE,
};

const LEASE: Duration = Duration::from_secs(1);

#[test]
fn a_forged_sequence_number_does_not_hide_the_real_nodes_invalidations() {
    let cluster = Cluster::new();
    let specs = cluster.mesh_specs(&["a", "b", "c"]);
    let mut nodes = cluster.start_mesh(&specs);
    let (a, rest) = nodes.split_first_mut().unwrap();
    let (b, rest) = rest.split_first_mut().unwrap();
    let c = &mut rest[0];

    put(a, "key", "v1");
    assert_eq!(c.value("key").as_deref(), Some("v1"));
    assert_eq!(c.value("key").as_deref(), Some("v1"));
    let stats = a.ask("stats");
    let origin = stats["name"].as_str().expect("a's name").to_owned();
    let incarnation = stats["incarnation"]
        .as_u64()
        .expect("a's topic incarnation");

    // b forges "a published message 1 000 000 000" (an invalidation of another key).
    let (duplicates, unverified) = (c.stat("duplicates"), c.stat("unverified"));
    let forged = b.ask(&format!(
        "inject forge {origin} {incarnation} 1000000000 decoy"
    ));
    assert_eq!(forged["ok"], "inject", "{forged}");
    eventually(DEADLINE, || {
        (c.stat("unverified") > unverified).then_some(())
    })
    .expect("c never saw the forged envelope");

    // a's real next invalidation carries a far lower sequence number. The commit is known to
    // be done once `put` returns: a read sent more than a lease after that must be fresh.
    put(a, "key", "v2");
    let committed = Instant::now();
    let delay = served_within(c, "key", "v2", committed, LEASE);
    println!(
        "after a forged sequence number, c first served a's write to a read sent {delay:?} after its commit"
    );
    assert_eq!(
        c.stat("duplicates"),
        duplicates,
        "the forged sequence number made the real invalidation a duplicate"
    );
}

/// Publishes under 300 made-up names: none enters the peer table (each would be echoed in
/// every heartbeat, and ~150 000 of them made heartbeats too large to encode), none triggers a
/// repair, and nothing they say is applied.
#[test]
fn made_up_origins_are_dropped_and_cost_nothing() {
    let cluster = Cluster::new();
    let specs = cluster.mesh_specs(&["a", "b"]);
    let mut nodes = cluster.start_mesh(&specs);
    let (a, rest) = nodes.split_first_mut().unwrap();
    let b = &mut rest[0];
    put(a, "key", "v1");
    assert_eq!(b.value("key").as_deref(), Some("v1"));
    assert_eq!(b.value("key").as_deref(), Some("v1"));
    let (repairs, applied) = (b.stat("repairs"), b.stat("invalidations_received"));
    for i in 0..300 {
        let forged = a.ask(&format!("inject forge ghost{i}@10.0.0.1 7 5 key"));
        assert_eq!(forged["ok"], "inject", "{forged}");
    }
    // A real write after them, on the same path: once b serves it, b has taken them all.
    put(a, "other", "w");
    eventually(DEADLINE, || {
        (b.value("other").as_deref() == Some("w")).then_some(())
    })
    .expect("b never saw the real write");
    // Its invalidation arrives after them all (b may have loaded "other" before it did).
    wait_for_stat(b, "invalidations_received", applied + 1);
    assert_eq!(
        b.stat("repairs"),
        repairs,
        "a made-up origin caused a repair"
    );
    assert_eq!(
        b.stat("invalidations_received"),
        applied + 1,
        "a made-up origin's invalidation was applied (only the real write's should be)"
    );
    assert!(
        b.stat("unknown_origins") >= 300,
        "the made-up origins were not all dropped"
    );
    wait_for_health(b, "healthy");
}

/// A peer with the cluster's credentials gossips 20 000 made-up members (about 1.2 MB per
/// heartbeat). The other node admits a bounded number of them (64 not reached yet per
/// reporter), refuses and counts the rest, keeps every session up (its heartbeats and the
/// gossiper's still go out), still serves a write within the lease, and is healthy again, with
/// the gossiper, once the operator removes what it admitted on one node.
#[test]
fn gossip_of_twenty_thousand_made_up_members_is_bounded_and_silences_nobody() {
    let cluster = Cluster::new();
    let specs = cluster.mesh_specs(&["a", "b"]);
    let mut nodes = cluster.start_mesh(&specs);
    let (a, rest) = nodes.split_first_mut().unwrap();
    let b = &mut rest[0];
    put(b, "key", "v1");
    assert_eq!(a.value("key").as_deref(), Some("v1"));
    wait_for_health(a, "healthy");
    let down = (a.stat("peers_declared_down"), b.stat("peers_declared_down"));

    let injected = b.ask("inject gossip 20000");
    assert_eq!(injected["ok"], "inject", "{injected}");
    wait_for_stat(a, "members_refused", 19_000);
    let members = a.stat("members");
    assert!(
        members <= 1 + 64,
        "a keeps {members} members: more than b and the 64 it may introduce"
    );
    // Bypassing while members it cannot reach are listed: writes are served within the lease.
    put(b, "key", "v2");
    let committed = Instant::now();
    let delay = served_within(a, "key", "v2", committed, LEASE);
    println!("with 20 000 made-up members gossiped, a served b's write {delay:?} after its commit");

    // Made-up members are kept (a member nobody here reached may be a real node writing
    // behind a partition) until there is evidence they are gone: the operator removes them on
    // one node, which stops listing them, and the others drop what it dropped.
    let stopped = b.ask("inject gossip 0");
    assert_eq!(stopped["ok"], "inject", "{stopped}");
    // (A heartbeat b sent before it stopped may still bring a few in: remove until healthy.)
    let mut removed = 0;
    eventually(DEADLINE, || {
        let listed = a.ask("members");
        let made_up: Vec<String> = listed["members"]
            .as_array()
            .expect("a list of members")
            .iter()
            .filter(|m| m["state"] != "left") // removed ones are listed as left
            .filter_map(|m| m["name"].as_str())
            .filter(|name| name.starts_with("made-up-"))
            .map(str::to_owned)
            .collect();
        for name in &made_up {
            let reply = a.ask(&format!("remove-member {name}"));
            assert_eq!(reply["ok"], "remove-member", "{reply}");
            removed += 1;
        }
        (made_up.is_empty() && a.ask("stats")["health"] == "healthy").then_some(())
    })
    .unwrap_or_else(|| panic!("a never became healthy: {}", a.ask("stats")));
    assert!(removed >= members - 1, "removed {removed} of {members}");
    wait_for_health(a, "healthy");
    wait_for_health(b, "healthy");
    assert!(
        a.stat("members") <= 1,
        "made-up members outlived their removal"
    );
    assert!(
        b.stat("members") <= 1,
        "b kept the made-up members a removed"
    );
    assert_eq!(
        (a.stat("peers_declared_down"), b.stat("peers_declared_down")),
        down,
        "a session was declared down: heartbeats stopped going out"
    );
    put(b, "key", "v3");
    wait_for_value(a, "key", "v3");
}

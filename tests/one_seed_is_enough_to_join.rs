//! Membership by gossip: nodes that each name one seed form a full mesh, late joiners come in
//! through a seed and through a chain, every node serves a write through the newest one, and a
//! node that restarts under a new incarnation rejoins without ghosts of its old one.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, start, wait_for_health, wait_for_value, Cluster, NodeProcess, DEADLINE};
use nix::sys::signal::Signal;

/// Waits until every node has a ready session with exactly every other one.
fn wait_for_full_mesh(nodes: &mut [&mut NodeProcess]) {
    let names: Vec<String> = nodes
        .iter()
        .map(|n| format!("{}@127.0.0.1", n.spec.name))
        .collect();
    for node in nodes.iter_mut() {
        let me = format!("{}@127.0.0.1", node.spec.name);
        let mut others: Vec<String> = names.iter().filter(|n| **n != me).cloned().collect();
        others.sort();
        let seen = cluster::eventually(DEADLINE, || {
            let peers = node.peers();
            (peers == others).then_some(peers)
        });
        assert!(
            seen.is_some(),
            "{me} never had sessions with exactly {others:?}: {:?}",
            node.peers()
        );
    }
}

#[test]
fn nodes_seeded_with_one_peer_mesh_and_late_joiners_come_in_through_a_seed_or_a_chain() {
    let cluster = Cluster::new();
    let a_spec = cluster.spec("a");
    let b_spec = cluster.spec("b").peer(&a_spec);
    let c_spec = cluster.spec("c").peer(&a_spec);
    let (mut a, mut b, mut c) = (start(&a_spec), start(&b_spec), start(&c_spec));
    // b and c name only the seed: gossip makes them meet.
    wait_for_full_mesh(&mut [&mut a, &mut b, &mut c]);

    let d_spec = cluster.spec("d").peer(&c_spec);
    let mut d = start(&d_spec);
    wait_for_full_mesh(&mut [&mut a, &mut b, &mut c, &mut d]);
    // A chain: e knows only d, which joined through c.
    let e_spec = cluster.spec("e").peer(&d_spec);
    let mut e = start(&e_spec);
    wait_for_full_mesh(&mut [&mut a, &mut b, &mut c, &mut d, &mut e]);

    for node in [&mut a, &mut b, &mut c, &mut d, &mut e] {
        wait_for_health(node, "healthy");
        assert_eq!(node.value("user:1"), None);
    }
    put(&mut e, "user:1", "alice");
    for node in [&mut a, &mut b, &mut c, &mut d] {
        wait_for_value(node, "user:1", "alice");
    }

    // e dies and comes back under a new incarnation: the mesh re-forms with it once.
    cluster::signal(&e, Signal::SIGKILL);
    drop(e);
    let mut e = start(&e_spec);
    wait_for_full_mesh(&mut [&mut a, &mut b, &mut c, &mut d, &mut e]);
    put(&mut e, "user:1", "alicia");
    for node in [&mut a, &mut b, &mut c, &mut d] {
        wait_for_value(node, "user:1", "alicia");
    }
    for node in [a, b, c, d, e] {
        node.quit().expect("clean quit");
    }
}

/// A member learnt from gossip that already opened a session to this node is not dialled a
/// second time: no connection is opened and refused over and over while the mesh is at rest
/// (each one a TCP connection and, with TLS, a full handshake).
#[test]
fn a_member_that_dialled_in_is_not_dialled_again_at_rest() {
    let cluster = Cluster::new();
    // Quick handshake timeouts and redials: a needless dial comes round within a second.
    let quick = |spec: cluster::NodeSpec| {
        spec.arg("--handshake-timeout-ms")
            .arg("300")
            .arg("--redial-max-ms")
            .arg("200")
    };
    // As a fleet grows: each node names those started before it, the last one seed only.
    let a_spec = quick(cluster.spec("a"));
    let b_spec = quick(cluster.spec("b")).peer(&a_spec);
    let c_spec = quick(cluster.spec("c")).peer(&a_spec).peer(&b_spec);
    let d_spec = quick(cluster.spec("d")).peer(&a_spec);
    let (mut a, mut b, mut c) = (start(&a_spec), start(&b_spec), start(&c_spec));
    wait_for_full_mesh(&mut [&mut a, &mut b, &mut c]);
    let mut d = start(&d_spec);
    // Each node learns some others from gossip only, some of which dialled it first.
    wait_for_full_mesh(&mut [&mut a, &mut b, &mut c, &mut d]);
    let mut nodes = [a, b, c, d];
    let dials = |nodes: &mut [NodeProcess; 4]| -> Vec<u64> {
        nodes.iter_mut().map(|n| n.stat("dials")).collect()
    };
    // Settled: the dials of the mesh's forming are over.
    let before = cluster::eventually(DEADLINE, || {
        let before = dials(&mut nodes);
        std::thread::sleep(std::time::Duration::from_millis(500));
        (dials(&mut nodes) == before).then_some(before)
    })
    .expect("the nodes never stopped dialling");
    // Ten handshake timeouts long: a needless dial would come round within one.
    cluster::unchanged_for(
        std::time::Duration::from_secs(3),
        "dials at rest",
        before,
        || dials(&mut nodes),
    );
    for node in &mut nodes {
        assert_eq!(node.peers().len(), 3, "{} lost a session", node.spec.name);
    }
    for node in nodes {
        node.quit().expect("clean quit");
    }
}

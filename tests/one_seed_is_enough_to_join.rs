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

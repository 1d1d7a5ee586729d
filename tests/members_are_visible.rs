//! `members` lists every other member a node knows of with its address and state, as the
//! cluster changes: reached through a seed, crashed, left cleanly.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{eventually, start, wait_for_peers, Cluster, NodeProcess, DEADLINE};

/// `name → state` from the node's `members` reply.
fn states(node: &mut NodeProcess) -> Vec<(String, String)> {
    let reply = node.ask("members");
    assert_eq!(reply["ok"], "members", "{reply}");
    let members = reply["members"].as_array().expect("a list of members");
    members
        .iter()
        .map(|m| {
            assert!(m["addr"].as_str().is_some_and(|a| a.contains(':')), "{m}");
            let name = m["name"].as_str().unwrap_or("").to_owned();
            (name, m["state"].as_str().unwrap_or("").to_owned())
        })
        .collect()
}

fn wait_for_states(node: &mut NodeProcess, expected: &[(&str, &str)]) {
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, s)| (format!("{n}@127.0.0.1"), s.to_string()))
        .collect();
    let seen = eventually(DEADLINE, || {
        let states = states(node);
        (states == expected).then_some(())
    });
    if seen.is_none() {
        let name = node.spec.name.clone();
        panic!("{name} never listed {expected:?}: {:?}", states(node));
    }
}

#[test]
fn members_follow_joins_crashes_and_clean_leaves() {
    let cluster = Cluster::new();
    let a_spec = cluster.spec("a");
    let a = start(&a_spec);
    let mut b = start(&cluster.spec("b").peer(&a_spec));
    let c = start(&cluster.spec("c").peer(&a_spec));
    wait_for_peers(&mut b, 2);
    wait_for_states(&mut b, &[("a", "ready"), ("c", "ready")]);
    assert_eq!(b.stat("members"), 2);

    c.kill();
    wait_for_states(&mut b, &[("a", "ready"), ("c", "down")]);
    assert_eq!(b.stat("members"), 2, "a crashed member still counts");

    a.quit().expect("a quits cleanly");
    wait_for_states(&mut b, &[("a", "left"), ("c", "down")]);
    assert_eq!(b.stat("members"), 1, "a member that left still counts");
}

//! Malformed commands and undecodable network bytes are answered or counted, never fatal.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, start, wait_for_value, Cluster, DEADLINE};

#[test]
fn malformed_commands_get_an_error_line_and_the_node_lives() {
    let cluster = Cluster::new();
    let mut node = start(&cluster.spec("a"));
    for bad in [
        "",
        "bogus",
        "put",
        "put onlykey",
        "get",
        "get two keys",
        "peers now",
        "inject zz",
        "inject 123",
    ] {
        let reply = node.ask(bad);
        assert!(reply["error"].is_string(), "{bad:?} gave {reply}");
    }
    node.send_raw(b"\xff\xfe not utf-8\n").unwrap();
    assert!(
        node.next_reply().unwrap()["error"].is_string(),
        "invalid UTF-8 was not refused"
    );
    let long = format!("get {}\n", "x".repeat(2 << 20));
    node.send_raw(long.as_bytes()).unwrap();
    assert!(
        node.next_reply().unwrap()["error"].is_string(),
        "an over-long line was not refused"
    );

    assert_eq!(put(&mut node, "k", "v with spaces"), 1);
    assert_eq!(node.value("k").as_deref(), Some("v with spaces"));
    assert!(node.is_running());
    node.quit().expect("clean quit");
}

#[test]
fn undecodable_envelopes_are_counted_repaired_and_not_fatal() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b"]));
    put(&mut nodes[0], "k", "v1");
    assert_eq!(nodes[1].value("k").as_deref(), Some("v1"));
    let repairs_before = nodes[1].stat("repairs");

    // Garbage, a future envelope version, and a message of a foreign type.
    for injection in ["inject deadbeef", "inject 52435309ff", "inject foreign"] {
        let reply = nodes[0].ask(injection);
        assert_eq!(reply["ok"], "inject", "{injection}: {reply}");
    }
    let b = &mut nodes[1];
    let counted = cluster::eventually(DEADLINE, || (b.stat("decode_failures") == 3).then_some(()));
    assert!(
        counted.is_some(),
        "b counted {} decode failures",
        b.stat("decode_failures")
    );
    assert!(b.stat("repairs") >= repairs_before + 3, "b did not repair");
    // The repair checks b's entries against the source instead of dropping them: k did not
    // change, so it is served from the heap again once checked.
    let checked = cluster::eventually(DEADLINE, || {
        let read = b.ask("get k");
        (read["hit"] == true && read["value"] == "v1").then_some(())
    });
    assert!(
        checked.is_some(),
        "b never served k again: {}",
        b.ask("stats")
    );
    assert!(b.stat("revalidated_keys") >= 1, "{}", b.ask("stats"));

    // b is alive and invalidations still flow.
    assert_eq!(b.value("k").as_deref(), Some("v1"));
    put(&mut nodes[0], "k", "v2");
    wait_for_value(&mut nodes[1], "k", "v2");
}

//! Hostile input, before and after authentication: garbage and idle sockets do not keep a
//! legitimate peer out or crash a node; a wrong cookie never joins; a rogue peer with valid
//! credentials is counted and repaired around, never poisons a cache, and legitimate
//! invalidations keep flowing.

#[path = "support/cluster.rs"]
mod cluster;

use std::io::Write;
use std::net::TcpStream;
use std::time::Instant;

use cluster::{put, start, wait_for_peers, wait_for_stat, wait_for_value, Cluster};

#[test]
fn pre_auth_garbage_and_idle_sockets_do_not_keep_a_peer_out() {
    let cluster = Cluster::new();
    let mut a = start(&cluster.spec("a"));
    let target = a.spec.listen;
    let mut hostile = Vec::new();
    // A 2^62 length prefix, random garbage, a half-sent frame.
    for bytes in [
        (1u64 << 62).to_be_bytes().to_vec(),
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect(),
        [100u64.to_be_bytes().to_vec(), vec![7; 10]].concat(),
    ] {
        let mut stream = TcpStream::connect(target).unwrap();
        let _ = stream.write_all(&bytes);
        hostile.push(stream);
    }
    // 500 idle sockets that never say a word.
    for _ in 0..500 {
        hostile.push(TcpStream::connect(target).unwrap());
    }
    let started = Instant::now();
    let mut b = start(&cluster.spec("b").peer(&a.spec));
    wait_for_peers(&mut b, 1);
    println!(
        "legitimate peer joined {:?} after 503 hostile connections",
        started.elapsed()
    );
    assert!(a.is_running());
    put(&mut a, "k", "v");
    assert_eq!(b.value("k").as_deref(), Some("v"));
    drop(hostile);
}

#[test]
fn a_wrong_cookie_never_joins() {
    let cluster = Cluster::new();
    let mut a = start(&cluster.spec("a"));
    let mut intruder_spec = cluster.spec("intruder").peer(&a.spec);
    intruder_spec.cookie = "not-the-cluster-cookie-0123456789".to_owned();
    let mut intruder = start(&intruder_spec);
    // A legitimate peer joining after the intruder started dialling is the sync point.
    let mut b = start(&cluster.spec("b").peer(&a.spec));
    wait_for_peers(&mut b, 1);
    assert_eq!(a.peers(), ["b@127.0.0.1"]);
    assert!(intruder.peers().is_empty());
}

#[test]
fn a_rogue_peer_with_valid_credentials_is_contained() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["rogue", "b"]));
    put(&mut nodes[0], "k", "truth");
    wait_for_stat(&mut nodes[1], "invalidations_received", 1);
    assert_eq!(nodes[1].value("k").as_deref(), Some("truth"));

    let failures = nodes[1].stat("decode_failures");
    for injection in [
        "inject deadbeef",
        "inject other-topic",
        "inject flood 10000",
    ] {
        assert_eq!(nodes[0].ask(injection)["ok"], "inject", "{injection}");
    }
    wait_for_stat(&mut nodes[1], "decode_failures", failures + 10_002);
    // A 16 MiB message: over ractor_cluster's inbound frame limit, so the receiver drops the
    // session; it is dialled again and the receiver repairs when the rogue rejoins.
    assert_eq!(nodes[0].ask("inject size 16777216")["ok"], "inject");
    let b = &mut nodes[1];
    assert!(b.is_running(), "b crashed");
    wait_for_peers(b, 1);
    // Nothing poisoned: b serves only what the source of truth holds.
    assert_eq!(b.value("k").as_deref(), Some("truth"));
    put(&mut nodes[0], "k", "still-flowing");
    wait_for_value(&mut nodes[1], "k", "still-flowing");
}

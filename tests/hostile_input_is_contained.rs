//! Hostile input, before and after authentication: garbage and idle sockets do not keep a
//! legitimate peer out or crash a node; a wrong cookie never joins; a rogue peer with valid
//! credentials is counted and repaired around, never poisons a cache, no node serves a stale
//! value while it attacks, and legitimate invalidations keep flowing.

#[path = "support/cluster.rs"]
mod cluster;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::scenario::{read_loop, write_loop, History};
use cluster::{put, start, wait_for_peers, wait_for_stat, wait_for_value, Cluster};

const LEASE: Duration = Duration::from_secs(1);

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
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["rogue", "b", "c", "d"]));
    let (rogue, rest) = nodes.split_first_mut().unwrap();
    let (b, rest) = rest.split_first_mut().unwrap();
    let (c, rest) = rest.split_first_mut().unwrap();
    let d = &mut rest[0];
    put(rogue, "fact", "truth");
    wait_for_stat(b, "invalidations_received", 1);
    assert_eq!(b.value("fact").as_deref(), Some("truth"));

    // While the rogue attacks, c keeps writing and d keeps reading one key: every read is
    // checked offline against every commit, with no tolerance beyond the lease.
    let history = History::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| write_loop(c, &history, &stop, Duration::from_millis(20)));
        s.spawn(|| read_loop(d, &history, &stop, Duration::from_millis(5)));

        let failures = b.stat("decode_failures");
        for injection in [
            "inject deadbeef",
            "inject other-topic",
            "inject flood 10000",
        ] {
            assert_eq!(rogue.ask(injection)["ok"], "inject", "{injection}");
        }
        wait_for_stat(b, "decode_failures", failures + 10_002);
        // A 16 MiB message: over ractor_cluster's inbound frame limit, so the receiver drops
        // the session; it is dialled again and the receiver repairs when the rogue rejoins.
        assert_eq!(rogue.ask("inject size 16777216")["ok"], "inject");
        assert!(b.is_running(), "b crashed");
        wait_for_peers(b, 3);
        stop.store(true, Ordering::Relaxed);
    });
    assert!(d.is_running(), "d crashed");
    let verdict = history.check(LEASE);
    verdict.report_and_assert("reads during the attack");
    assert!(
        verdict.reads > 50 && verdict.puts > 5,
        "too little traffic to tell"
    );

    // Nothing poisoned: b serves only what the source of truth holds.
    assert_eq!(b.value("fact").as_deref(), Some("truth"));
    put(rogue, "fact", "still-flowing");
    wait_for_value(b, "fact", "still-flowing");
}

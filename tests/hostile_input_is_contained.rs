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
use cluster::{eventually, put, start, wait_for_peers, wait_for_stat, wait_for_value, Cluster};

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

/// CPU time (user + system, in clock ticks) the process `pid` has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start past the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| {
        fields
            .get(n)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12) // utime, stime (fields 14 and 15 of the whole line)
}

/// Idle sockets keep arriving at a node whose open-files limit is 1 024, past that limit and
/// on: it neither spins (accept errors back off) nor keeps a legitimate peer out (the oldest
/// unauthenticated sessions are shed past 256).
#[test]
fn idle_sockets_past_the_open_files_limit_do_not_keep_a_peer_out() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // This test holds thousands of sockets itself.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(16_384), hard).unwrap();

    let cluster = Cluster::new();
    let spec = cluster.spec("a");
    let command = spec
        .command_under(["prlimit", "--nofile=1024:1024", "--"])
        .unwrap();
    let mut a = cluster::NodeProcess::spawn(spec, command).expect("a starts under prlimit");
    let target = a.spec.listen;
    let stop = AtomicBool::new(false);
    let opened = std::sync::atomic::AtomicUsize::new(0);
    let (joined, spun) = std::thread::scope(|s| {
        let flood = s.spawn(|| {
            let mut held = Vec::new();
            // 1 100 at once, then 20 more every 10 ms until the peer is in (at most 6 000).
            for _ in 0..1_100 {
                if let Ok(socket) = TcpStream::connect(target) {
                    held.push(socket);
                    opened.fetch_add(1, Ordering::Relaxed);
                }
            }
            while !stop.load(Ordering::Relaxed) && held.len() < 6_000 {
                for _ in 0..20 {
                    if let Ok(socket) = TcpStream::connect(target) {
                        held.push(socket);
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            held.len()
        });
        // Let the flood pass the limit first, then measure over 1.5 s of it.
        eventually(cluster::DEADLINE, || {
            (opened.load(Ordering::Relaxed) >= 1_100).then_some(())
        })
        .expect("the flood never got 1 100 sockets in");
        let (ticks, started) = (cpu_ticks(a.pid()), Instant::now());
        let mut b = start(&cluster.spec("b").peer(&a.spec));
        wait_for_peers(&mut b, 1);
        let joined = started.elapsed();
        std::thread::sleep(Duration::from_millis(1_500).saturating_sub(joined));
        let window = started.elapsed().as_secs_f64();
        let spun = (cpu_ticks(a.pid()) - ticks) as f64 / 100.0 / window;
        stop.store(true, Ordering::Relaxed);
        let held = flood.join().unwrap();
        println!(
            "legitimate peer joined {joined:?} into a flood of {held} idle sockets against a 1 024-file limit; the node used {:.0} % of a core meanwhile",
            spun * 100.0
        );
        put(&mut a, "k", "v");
        assert_eq!(b.value("k").as_deref(), Some("v"));
        // ractor_cluster's own listener stops accepting at the limit (it retries `accept`
        // without pause): the flood stalls at ~1 140 sockets, the kernel's backlog full. How
        // far past that a flood gets in 1.5 s depends on the machine's load (3 720 idle, 2 020
        // with the whole test suite running): a few hundred past the stall tells them apart.
        assert!(
            held >= 1_500,
            "connections stopped being accepted past the open-files limit: {held} got in"
        );
        (joined, spun)
    });
    assert!(a.is_running(), "a died");
    assert!(joined < cluster::DEADLINE);
    // A spinning accept loop takes a whole core (measured: 103 %).
    assert!(
        spun < 0.9,
        "the node spun at {:.0} % of a core",
        spun * 100.0
    );
}

//! Thirty seconds of churn: every node writes and reads random keys while the links between
//! them are partitioned, stalled one way and cut at random; then a zombie session (a silent
//! drop, a kill, a restart and a heal). Every read is checked offline against every commit.

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cluster::proxy::{Dir, FaultProxy};
use cluster::scenario::{History, Read};
use cluster::{eventually, start, wait_for_health, wait_for_peers, write_directly};
use cluster::{Cluster, NodeProcess, DEADLINE};

const LEASE: Duration = Duration::from_secs(1);
const KEYS: usize = 5;
/// Rows only the outside writer updates (no node writes them, every node reads them).
const OUTSIDE_KEYS: usize = 3;

/// A small xorshift generator: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    nanos.as_nanos() as u64 | 1
}

/// Random puts (30 %) and gets (70 %) of `KEYS` keys on one node until `stop`.
fn churn(node: &mut NodeProcess, history: &History, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let outside = rng.below(4) == 0;
        let key = if outside {
            format!("outside{}", rng.below(OUTSIDE_KEYS as u64))
        } else {
            format!("key{}", rng.below(KEYS as u64))
        };
        if !outside && rng.below(10) < 3 {
            n += 1;
            let reply = node.ask(&format!("put {key} {}-{n}", node.spec.name));
            history.record_put(&key, reply["version"].as_u64().expect("a version"));
        } else {
            let sent = Instant::now();
            let reply = node.ask(&format!("get {key}"));
            let read = Read {
                node: node.spec.name.clone(),
                key,
                sent,
                version: reply["version"].as_u64().unwrap_or(0),
                hit: reply["hit"] == true,
            };
            history.reads.lock().unwrap().push(read);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Updates a random outside row straight in the database every 20–120 ms until `stop`, as a
/// SQL session would: no node invalidates it.
fn outside_writer(db: &std::path::Path, history: &History, stop: &AtomicBool, seed: u64) {
    let mut rng = Rng(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("outside{}", rng.below(OUTSIDE_KEYS as u64));
        n += 1;
        let version = write_directly(db, &key, &format!("outside-{n}")).expect("the row exists");
        history.record_put(&key, version);
        std::thread::sleep(Duration::from_millis(20 + rng.below(100)));
    }
    println!("the outside writer wrote {n} rows");
}

/// a listens; b dials a, c dials a and b, each through its own proxy; every node started with
/// `args` too.
fn proxied_triangle(cluster: &Cluster, args: &[&str]) -> (Vec<NodeProcess>, Vec<FaultProxy>) {
    let spec = |name: &str| {
        args.iter()
            .fold(cluster.proxied_spec(name), |s, a| s.arg(a))
    };
    let a = start(&spec("a"));
    let ab = FaultProxy::start(a.spec.listen);
    let mut spec_b = spec("b");
    spec_b.peers.push(ab.addr());
    let b = start(&spec_b);
    let (ac, bc) = (
        FaultProxy::start(a.spec.listen),
        FaultProxy::start(b.spec.listen),
    );
    let mut spec_c = spec("c");
    spec_c.peers.extend([ac.addr(), bc.addr()]);
    let c = start(&spec_c);
    let mut nodes = vec![a, b, c];
    for node in &mut nodes {
        wait_for_peers(node, 2);
        wait_for_health(node, "healthy");
    }
    (nodes, vec![ab, ac, bc])
}

fn converge(nodes: &mut [NodeProcess], history: &History) {
    let keys = (0..KEYS).map(|k| format!("key{k}"));
    let outside = (0..OUTSIDE_KEYS).map(|k| format!("outside{k}"));
    for key in keys.chain(outside) {
        let last = history.last_version_of(&key);
        if last == 0 {
            continue; // never written in this run
        }
        for node in nodes.iter_mut() {
            let name = node.spec.name.clone();
            let done = eventually(DEADLINE, || {
                (node.ask(&format!("get {key}"))["version"] == last).then_some(())
            });
            assert!(done.is_some(), "{name} never served {key} v{last}");
        }
    }
}

#[test]
fn thirty_seconds_of_churn_under_random_faults() {
    let cluster = Cluster::new();
    // An outside writer updates rows straight in the database as well: nodes check every entry
    // every 500 ms, so its writes are served within that period plus one check.
    let (mut nodes, proxies) = proxied_triangle(&cluster, &["--revalidate-every-ms", "500"]);
    let history = History::default();
    for key in (0..OUTSIDE_KEYS).map(|k| format!("outside{k}")) {
        let reply = nodes[0].ask(&format!("put {key} created"));
        history.record_put(&key, reply["version"].as_u64().expect("a version"));
    }
    let stop = AtomicBool::new(false);
    let base = seed();
    println!("churn seed {base}");
    let faults = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for (i, node) in nodes.iter_mut().enumerate() {
            let (h, st) = (&history, &stop);
            s.spawn(move || churn(node, h, st, base.wrapping_add(i as u64 * 7919)));
        }
        let (h, st, db) = (&history, &stop, cluster.db());
        s.spawn(move || outside_writer(&db, h, st, base ^ 0x7a11));
        let mut rng = Rng(base ^ 0x5eed);
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            let proxy = &proxies[rng.below(3) as usize];
            let fault = match rng.below(5) {
                0 => {
                    proxy.partition();
                    "partition"
                }
                1 => {
                    proxy.stall(Dir::ToListener, true);
                    "stall to listener"
                }
                2 => {
                    proxy.stall(Dir::ToDialer, true);
                    "stall to dialer"
                }
                3 => {
                    proxy.cut();
                    "cut"
                }
                _ => "calm",
            };
            faults.lock().unwrap().push(fault);
            std::thread::sleep(Duration::from_millis(200 + rng.below(1500)));
            proxy.heal();
            std::thread::sleep(Duration::from_millis(rng.below(500)));
        }
        stop.store(true, Ordering::Relaxed);
    });
    for proxy in &proxies {
        proxy.heal();
    }
    converge(&mut nodes, &history);
    println!("churn seed {base}, faults {:?}", faults.lock().unwrap());
    // Writes through the nodes are bounded by the lease, exactly. Writes straight in the
    // database are found by a timer's check (every 500 ms): their bound is that period plus
    // the check, which a busy machine stretches; allow two leases for it.
    let outside_bound = Duration::from_millis(500) + 2 * LEASE;
    history
        .check_each(|key| {
            if key.starts_with("outside") {
                outside_bound
            } else {
                LEASE
            }
        })
        .report_and_assert("churn");
}

#[test]
fn a_zombie_session_leaves_no_ghosts() {
    // a and b through a proxy: the link goes silent, a is killed and restarted while b still
    // holds the old session, then the link heals.
    let cluster = Cluster::new();
    let a = start(&cluster.proxied_spec("a"));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut spec_b = cluster.proxied_spec("b");
    spec_b.peers.push(proxy.addr());
    let mut b = start(&spec_b);
    let spec_a = a.spec.clone();
    let mut a = a;
    for node in [&mut a, &mut b] {
        wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
    cluster::put(&mut a, "k", "v1");
    assert_eq!(b.value("k").as_deref(), Some("v1"));

    proxy.partition();
    a.kill();
    let mut a = start(&spec_a);
    cluster::put(&mut a, "k", "v2"); // b cannot hear of this yet
    proxy.heal();

    // One session, with the new incarnation, and no ghost member of the old one: both
    // healthy again, b serving v2 from its cache.
    for node in [&mut a, &mut b] {
        wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
    cluster::wait_for_value(&mut b, "k", "v2");
    let read = b.ask("get k");
    assert_eq!(
        (read["value"].as_str(), read["hit"].as_bool()),
        (Some("v2"), Some(true))
    );
    assert_eq!(b.peers(), ["a@127.0.0.1"]);
}

/// Quicker forgetting than the defaults, so that a killed joiner does not keep the others
/// reading from the source for long.
fn forgetful(spec: cluster::NodeSpec) -> cluster::NodeSpec {
    spec.arg("--forget-after-ms")
        .arg("3000")
        .arg("--forget-members-after-ms")
        .arg("3000")
}

#[test]
fn nodes_join_through_a_seed_and_leave_while_writes_and_reads_run() {
    let cluster = Cluster::new();
    let a_spec = forgetful(cluster.spec("a"));
    let b_spec = forgetful(cluster.spec("b")).peer(&a_spec);
    let c_spec = forgetful(cluster.spec("c")).peer(&a_spec);
    let mut nodes = vec![start(&a_spec), start(&b_spec), start(&c_spec)];
    for node in &mut nodes {
        wait_for_peers(node, 2);
        wait_for_health(node, "healthy");
    }
    let history = History::default();
    let stop = AtomicBool::new(false);
    let base = seed();
    println!("join/leave seed {base}");
    let mut events = Vec::new();
    std::thread::scope(|s| {
        for (i, node) in nodes.iter_mut().enumerate() {
            let (h, st) = (&history, &stop);
            s.spawn(move || churn(node, h, st, base.wrapping_add(i as u64 * 104_729)));
        }
        let mut rng = Rng(base ^ 0x101e);
        let end = Instant::now() + Duration::from_secs(15);
        let mut round = 0;
        while Instant::now() < end {
            round += 1;
            // A newcomer that knows only the seed joins, writes, reads, and leaves.
            let spec = forgetful(cluster.spec(&format!("joiner{round}"))).peer(&a_spec);
            let mut joiner = start(&spec);
            wait_for_peers(&mut joiner, 3);
            for n in 0..5 {
                let key = format!("key{}", rng.below(KEYS as u64));
                let reply = joiner.ask(&format!("put {key} joiner{round}-{n}"));
                history.record_put(&key, reply["version"].as_u64().expect("a version"));
            }
            let clean = rng.below(2) == 0;
            if clean {
                joiner.quit().expect("the joiner quits cleanly");
            } else {
                joiner.kill();
            }
            events.push(if clean { "join, quit" } else { "join, SIGKILL" });
            std::thread::sleep(Duration::from_millis(rng.below(1000)));
        }
        stop.store(true, Ordering::Relaxed);
    });
    converge(&mut nodes, &history);
    println!("join/leave seed {base}, rounds {events:?}");
    history.check(LEASE).report_and_assert("join and leave");
}

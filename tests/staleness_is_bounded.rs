//! Bounded staleness under real faults: no read returns a value more than one lease (1 s)
//! older than a committed write, whatever happens to the network or the processes — and every
//! node converges once the fault ends.
//!
//! Writers and readers run in threads against real node processes; sessions run through a
//! TCP fault proxy; the history is checked offline (`support/scenario.rs`).

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cluster::proxy::{Dir, FaultProxy};
use cluster::scenario::{read_loop, write_loop, History, KEY};
use cluster::{eventually, signal, start, wait_for_health, Cluster, NodeProcess, DEADLINE};
use nix::sys::signal::Signal;

const LEASE: Duration = Duration::from_secs(1);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Runs the writer and readers, calls `fault` after a warm-up (it applies a fault, waits and
/// heals), lets them run on, then waits until every reader serves the last write, and checks.
fn run(
    name: &str,
    writer: &mut NodeProcess,
    readers: &mut [&mut NodeProcess],
    fault: impl FnOnce(),
) {
    let history = History::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (h, st) = (&history, &stop);
        s.spawn(move || write_loop(writer, h, st, ms(20)));
        for reader in readers.iter_mut() {
            s.spawn(move || read_loop(reader, h, st, ms(3)));
        }
        // Warm up, fault, watch for a while after the heal; then go on until there is
        // enough traffic to judge, however slow the machine.
        std::thread::sleep(ms(500));
        h.wait_for_traffic(20, 5, DEADLINE);
        fault();
        std::thread::sleep(ms(1500));
        h.wait_for_traffic(101, 21, DEADLINE);
        stop.store(true, Ordering::Relaxed);
    });
    let last = history.last_version();
    for reader in readers.iter_mut() {
        let name = reader.spec.name.clone();
        let converged = eventually(DEADLINE, || {
            (reader.ask(&format!("get {KEY}"))["version"] == last).then_some(())
        });
        assert!(
            converged.is_some(),
            "{name} never served v{last} after the fault"
        );
    }
    let verdict = history.check(LEASE);
    verdict.report_and_assert(name);
    assert!(
        verdict.reads > 100 && verdict.puts > 20,
        "{name}: too little traffic to judge"
    );
}

/// `a` listens; `b` dials it through a fault proxy. Waits until both are healthy.
fn proxied_pair(cluster: &Cluster) -> (NodeProcess, NodeProcess, FaultProxy) {
    let a = start(&cluster.proxied_spec("a"));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut spec = cluster.proxied_spec("b");
    spec.peers.push(proxy.addr());
    let b = start(&spec);
    let (mut a, mut b) = (a, b);
    for node in [&mut a, &mut b] {
        cluster::wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
    (a, b, proxy)
}

#[test]
fn short_silent_partition() {
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    run("short silent partition", &mut a, &mut [&mut b], || {
        proxy.partition();
        std::thread::sleep(ms(500));
        proxy.heal();
    });
}

#[test]
fn long_silent_partition_closes_the_session_and_the_mesh_reforms() {
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    run("long silent partition", &mut a, &mut [&mut b], || {
        proxy.partition();
        std::thread::sleep(ms(10_000));
        proxy.heal();
    });
    // The watchdogs declared the silent peer down; after the heal the mesh re-formed with one
    // session each way and no ghost members: both are healthy (a ghost would keep them
    // bypassing).
    assert!(a.stat("peers_declared_down") + b.stat("peers_declared_down") > 0);
    for node in [&mut a, &mut b] {
        cluster::wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
}

#[test]
fn one_way_partition() {
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    run("one-way partition", &mut a, &mut [&mut b], || {
        proxy.stall(Dir::ToDialer, true); // a → b black-holed, b → a flows
        std::thread::sleep(ms(2000));
        proxy.heal();
    });
}

#[test]
fn paused_reader() {
    let cluster = Cluster::new();
    let (mut a, mut b, _proxy) = proxied_pair(&cluster);
    let pid_b = nix::unistd::Pid::from_raw(b.pid() as i32);
    run("paused reader", &mut a, &mut [&mut b], || {
        nix::sys::signal::kill(pid_b, Signal::SIGSTOP).unwrap();
        std::thread::sleep(ms(2000));
        nix::sys::signal::kill(pid_b, Signal::SIGCONT).unwrap();
    });
}

#[test]
fn hung_third_peer() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_mesh(&cluster.mesh_specs(&["a", "b", "c"]));
    let (a, rest) = nodes.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    let hung = nix::unistd::Pid::from_raw(a[0].pid() as i32);
    // c writes, b reads, a hangs: b cannot know a is not writing, so it must stop trusting.
    run("hung peer", &mut c[0], &mut [&mut b[0]], || {
        nix::sys::signal::kill(hung, Signal::SIGSTOP).unwrap();
        std::thread::sleep(ms(2000));
        nix::sys::signal::kill(hung, Signal::SIGCONT).unwrap();
    });
    signal(&a[0], Signal::SIGCONT);
}

#[test]
fn non_transitive_partition() {
    // a–c runs through a proxy that gets cut; b sees both.
    let cluster = Cluster::new();
    let mut a = start(&cluster.proxied_spec("a"));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut b = start(&cluster.proxied_spec("b").peer(&a.spec));
    let mut spec_c = cluster.proxied_spec("c").peer(&b.spec);
    spec_c.peers.push(proxy.addr());
    let mut c = start(&spec_c);
    for node in [&mut a, &mut b, &mut c] {
        cluster::wait_for_peers(node, 2);
        wait_for_health(node, "healthy");
    }
    run(
        "non-transitive partition",
        &mut a,
        &mut [&mut b, &mut c],
        || {
            proxy.cut();
            std::thread::sleep(ms(2000));
            proxy.heal();
        },
    );
}

#[test]
fn crash_and_restart_of_the_writer() {
    let cluster = Cluster::new();
    let (a, mut b, _proxy) = proxied_pair(&cluster);
    let spec_a = a.spec.clone();
    let history = History::default();
    let stop = AtomicBool::new(false);
    let mut a = Some(a);
    std::thread::scope(|s| {
        let (h, st) = (&history, &stop);
        let reader = &mut b;
        s.spawn(move || read_loop(reader, h, st, ms(3)));
        let mut writer = a.take().unwrap();
        for n in 0..20 {
            let v = writer.ask(&format!("put {KEY} before-{n}"))["version"]
                .as_u64()
                .unwrap();
            h.record_put(KEY, v);
        }
        writer.kill(); // SIGKILL: no clean leave
        let mut writer = start(&spec_a);
        for n in 0..20 {
            let v = writer.ask(&format!("put {KEY} after-{n}"))["version"]
                .as_u64()
                .unwrap();
            h.record_put(KEY, v);
            std::thread::sleep(ms(20));
        }
        std::thread::sleep(ms(1500));
        stop.store(true, Ordering::Relaxed);
        a = Some(writer);
    });
    let last = history.last_version();
    let converged = eventually(DEADLINE, || {
        (b.ask(&format!("get {KEY}"))["version"] == last).then_some(())
    });
    assert!(converged.is_some(), "b never served v{last}");
    let verdict = history.check(LEASE);
    verdict.report_and_assert("crash and restart of the writer");
}

//! Dialling a stopped peer (SIGSTOP: its kernel still completes TCP connections, its node
//! never answers the handshake) closes every session that never became ready, so a dialler
//! holds no more sockets after many attempts than before; the peer is back once resumed.

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{eventually, signal, start, wait_for_peers, Cluster, NodeSpec, DEADLINE};
use nix::sys::signal::Signal;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the node's file descriptors")
        .count()
}

/// Quick timeouts, so that many dials fit in a short test.
fn quick(spec: NodeSpec) -> NodeSpec {
    [
        ("--handshake-timeout-ms", "300"),
        ("--redial-max-ms", "200"),
        ("--heartbeat-ms", "100"),
        ("--peer-timeout-ms", "600"),
    ]
    .into_iter()
    .fold(spec, |s, (flag, value)| s.arg(flag).arg(value))
}

#[test]
fn dialling_a_stopped_peer_leaks_no_sockets_and_reconnects_once_it_resumes() {
    let cluster = Cluster::new();
    let b_spec = quick(cluster.spec("b"));
    let a_spec = quick(cluster.spec("a")).peer(&b_spec);
    let mut b = start(&b_spec);
    let mut a = start(&a_spec);
    wait_for_peers(&mut a, 1);
    wait_for_peers(&mut b, 1);
    let before = open_fds(a.pid());

    signal(&b, Signal::SIGSTOP);
    // a declares b down, then every dial connects (b's kernel accepts) and times out.
    let attempts = 6;
    eventually(DEADLINE, || {
        (a.stat("handshakes_timed_out") >= attempts).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "a never timed out {attempts} handshakes: {}",
            a.ask("stats")
        )
    });
    let after = open_fds(a.pid());
    let stats = a.ask("stats");
    assert!(
        stats["handshakes_in_progress"].as_u64() <= Some(1),
        "sessions that never became ready pile up: {stats}"
    );
    // One dial may be in flight now; each one abandoned without closing would be one more.
    assert!(
        after <= before + 1,
        "{} handshakes timed out and a holds {after} descriptors, {before} before",
        stats["handshakes_timed_out"]
    );

    signal(&b, Signal::SIGCONT);
    wait_for_peers(&mut a, 1);
    wait_for_peers(&mut b, 1);
    a.quit().expect("a quits cleanly");
    b.quit().expect("b quits cleanly");
}

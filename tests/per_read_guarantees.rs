//! Per-read guarantees across real node processes: `a` writes, `b` reads through a fault
//! proxy that holds back everything from `a` to `b` right before each write, so `b` hears of
//! the write late. A plain `get` on `b` then serves the old version from its heap (within the
//! lease: the bound allows it), while `get-at-least KEY VERSION` with the write's version, and
//! `get-within KEY MS` once the write is `MS` old, never do.

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::proxy::{Dir, FaultProxy};
use cluster::{eventually, put, start, wait_for_health, Cluster, NodeProcess, DEADLINE};
use serde_json::Value;

/// `a` listens; `b` dials it through a fault proxy. Waits until both are healthy.
fn proxied_pair(cluster: &Cluster) -> (NodeProcess, NodeProcess, FaultProxy) {
    let mut a = start(&cluster.proxied_spec("a"));
    let proxy = FaultProxy::start(a.spec.listen);
    let mut spec = cluster.proxied_spec("b");
    spec.peers.push(proxy.addr());
    let mut b = start(&spec);
    for node in [&mut a, &mut b] {
        cluster::wait_for_peers(node, 1);
        wait_for_health(node, "healthy");
    }
    (a, b, proxy)
}

/// The version a `get`-shaped reply carries (0 for a key that does not exist).
fn version_of(reply: &Value) -> u64 {
    assert_eq!(reply["ok"], "get", "{reply}");
    reply["version"].as_u64().unwrap_or(0)
}

/// Waits until `b` serves `key` at `at_least` from its heap.
fn cached_on(b: &mut NodeProcess, key: &str, at_least: u64) {
    eventually(DEADLINE, || {
        let reply = b.ask(&format!("get {key}"));
        (version_of(&reply) >= at_least && reply["hit"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("b never cached {key} at {at_least}"));
}

#[test]
fn reads_that_name_a_version_or_a_budget_never_return_what_they_exclude() {
    const ROUNDS: usize = 100;
    const BUDGET_MS: u64 = 30;
    // One key per kind of read, so that no read refreshes the entry another one is judged on.
    const KEYS: [&str; 3] = ["at-least", "within-0", "within-budget"];
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    let mut committed = [0; 3];
    for (key, version) in KEYS.iter().zip(&mut committed) {
        *version = put(&mut a, key, "v0");
        cached_on(&mut b, key, *version);
    }

    let (mut stale_gets, mut waited) = (0, Vec::new());
    for round in 1..=ROUNDS {
        // Everything a sends b from now on waits in the proxy: b hears of the writes late.
        proxy.stall(Dir::ToDialer, true);
        for (key, version) in KEYS.iter().zip(&mut committed) {
            let previous = *version;
            *version = put(&mut a, key, &format!("v{round}"));
            assert!(*version > previous);
        }
        let written = Instant::now();
        let [at_least, now, budget] = KEYS;
        let [v_at_least, v_now, v_budget] = committed;

        // A plain read may serve the old version: within the lease, the bound allows it.
        if version_of(&b.ask(&format!("get {at_least}"))) < v_at_least {
            stale_gets += 1;
        }
        let reply = b.ask(&format!("get-at-least {at_least} {v_at_least}"));
        assert!(
            version_of(&reply) >= v_at_least,
            "round {round}: get-at-least {v_at_least} returned {reply}"
        );
        waited.push(reply["waited_ms"].as_f64().expect("waited_ms"));
        let reply = b.ask(&format!("get-within {now} 0"));
        assert!(
            version_of(&reply) >= v_now,
            "round {round}: get-within 0 returned {reply}"
        );
        // Plain reads go on while the link is held (and serve the old version) until the
        // write is older than the budget; then a read within the budget must not.
        while written.elapsed() < Duration::from_millis(BUDGET_MS) {
            if version_of(&b.ask(&format!("get {budget}"))) < v_budget {
                stale_gets += 1;
            }
        }
        let reply = b.ask(&format!("get-within {budget} {BUDGET_MS}"));
        assert!(
            version_of(&reply) >= v_budget,
            "round {round}: get-within {BUDGET_MS} sent {:?} after the write returned {reply}",
            written.elapsed()
        );

        proxy.stall(Dir::ToDialer, false);
        for (key, version) in KEYS.iter().zip(&committed) {
            cached_on(&mut b, key, *version);
        }
    }
    waited.sort_by(f64::total_cmp);
    println!(
        "{ROUNDS} rounds: plain gets served the old version {stale_gets} times (within the lease); get-at-least, get-within 0 and get-within {BUDGET_MS} (each over {BUDGET_MS} ms after its write) never; get-at-least took {:.2} ms median",
        waited[waited.len() / 2]
    );
    assert!(
        stale_gets > 0,
        "the held-back link never showed: every plain get was already fresh"
    );
}

/// `put` on `a`: (version, token).
fn put_with_token(a: &mut NodeProcess, key: &str, value: &str) -> (u64, String) {
    let reply = a.ask(&format!("put {key} {value}"));
    let version = reply["version"].as_u64().expect("a version");
    let token = reply["token"].as_str().expect("a token").to_owned();
    assert!(!token.contains(char::is_whitespace), "{token:?}");
    (version, token)
}

/// The link from a to b holds each write back for 50 ms: `get-after` with the write's token
/// waits for it (about the hold, one hop after the link is released) and never returns the
/// version before; held back past the deadline (the lease), it fails rather than answer old.
/// Forged and garbled tokens fail; none answers wrong.
#[test]
fn a_read_after_a_write_token_waits_for_the_write_and_never_returns_what_came_before() {
    const ROUNDS: usize = 100;
    const HOLD: Duration = Duration::from_millis(50);
    let cluster = Cluster::new();
    let (mut a, mut b, proxy) = proxied_pair(&cluster);
    let key = "after";
    let (mut committed, _) = put_with_token(&mut a, key, "v0");
    cached_on(&mut b, key, committed);

    let (mut stale_gets, mut waited) = (0, Vec::new());
    for round in 1..=ROUNDS {
        proxy.stall(Dir::ToDialer, true);
        let (version, token) = put_with_token(&mut a, key, &format!("v{round}"));
        assert!(version > committed);
        committed = version;
        if version_of(&b.ask(&format!("get {key}"))) < committed {
            stale_gets += 1; // allowed: within the lease
        }
        let reply = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(HOLD); // the link's delay, not a synchronisation
                proxy.stall(Dir::ToDialer, false);
            });
            b.ask(&format!("get-after {token} {key}"))
        });
        assert!(
            version_of(&reply) >= committed,
            "round {round}: get-after the write of {committed} returned {reply}"
        );
        waited.push(reply["waited_ms"].as_f64().expect("waited_ms"));
        cached_on(&mut b, key, committed);
    }
    waited.sort_by(f64::total_cmp);
    println!(
        "{ROUNDS} writes held back {HOLD:?}: plain gets served the old version {stale_gets} times (within the lease), get-after never; it waited {:.1} ms median, {:.1} ms at most",
        waited[waited.len() / 2],
        waited[waited.len() - 1]
    );
    assert!(stale_gets > 0, "the held-back link never showed");

    // Held back past the deadline: an error, not the old version.
    proxy.stall(Dir::ToDialer, true);
    let (_, token) = put_with_token(&mut a, key, "late");
    let reply = b.ask(&format!("get-after {token} {key}"));
    assert!(reply["error"].is_string(), "held past the lease: {reply}");
    proxy.stall(Dir::ToDialer, false);

    // A token naming a write nobody made waits for the deadline and fails; garbage fails now.
    let forged = token + "-676f7374.1.1"; // and a write of "gost", incarnation 1
    let reply = b.ask(&format!("get-after {forged} {key}"));
    assert!(reply["error"].is_string(), "a forged token: {reply}");
    let reply = b.ask(&format!("get-after not-a-token {key}"));
    assert!(reply["error"].is_string(), "a garbled token: {reply}");
}

/// The writer is SIGKILLed right after its write, whose invalidation is still held in the
/// link: a read after its token is answered once what follows covers it (the held frames
/// delivered, or the repair its loss causes) or fails at the deadline — never with the
/// version before the write.
#[test]
fn a_token_whose_writer_was_killed_right_after_the_write_never_reads_older() {
    let (mut answered, mut failed) = (0, 0);
    for round in 0..3 {
        let cluster = Cluster::new();
        let (mut a, mut b, proxy) = proxied_pair(&cluster);
        let key = "killed";
        let (first, _) = put_with_token(&mut a, key, "v0");
        cached_on(&mut b, key, first);
        proxy.stall(Dir::ToDialer, true);
        let (committed, token) = put_with_token(&mut a, key, "v1");
        a.kill();
        proxy.stall(Dir::ToDialer, false);
        let reply = b.ask(&format!("get-after {token} {key}"));
        if reply["error"].is_string() {
            failed += 1;
        } else {
            assert!(
                version_of(&reply) >= committed,
                "round {round}: get-after a killed writer's token returned {reply}"
            );
            answered += 1;
        }
    }
    println!("a killed writer's token: {answered} reads answered fresh, {failed} failed at the deadline, none old");
}

//! A node started with `--max-entries` reads a stream of 20 000 distinct keys (a scan, as a
//! client enumerating rows would) while it keeps reading a hot set that another node keeps
//! writing: the heap stays within the bound, the hot set keeps being served from it, and no
//! read is staler than the lease allows.

#[path = "support/cluster.rs"]
mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cluster::scenario::{History, Read};
use cluster::Cluster;

const LEASE: Duration = Duration::from_secs(1);
const CAPACITY: u64 = 1_000;
const COLD: usize = 20_000;
const HOT: u64 = 50;

/// Rows `cold0..` and `hot0..`, written straight into the database in one transaction.
fn fill(db: &std::path::Path) {
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO kv (key, value, version) VALUES (?1, ?2, 0)")
            .unwrap();
        for i in 0..COLD {
            insert.execute((format!("cold{i}"), "cold")).unwrap();
        }
        for i in 0..HOT {
            insert.execute((format!("hot{i}"), "hot")).unwrap();
        }
    }
    tx.commit().unwrap();
}

#[test]
fn a_scan_keeps_the_heap_bounded_and_the_hot_set_served_within_the_lease() {
    let cluster = Cluster::new();
    let a = cluster
        .spec("a")
        .arg("--max-entries")
        .arg(&CAPACITY.to_string());
    let b = cluster.spec("b").peer(&a);
    let mut nodes = cluster.start_mesh(&[a, b]);
    let mut writer = nodes.pop().unwrap();
    let mut reader = nodes.pop().unwrap();
    fill(&cluster.db());

    let history = History::default();
    let stop = AtomicBool::new(false);
    let mut most = 0;
    let (mut hot_reads, mut hot_hits) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("hot{}", n % HOT);
                let reply = writer.ask(&format!("put {key} w{n}"));
                history.record_put(&key, reply["version"].as_u64().expect("a version"));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for i in 0..COLD {
            let reply = reader.ask(&format!("get cold{i}"));
            assert_eq!(reply["value"], "cold", "cold{i}: {reply}");
            if i % 4 == 0 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = format!("hot{}", x % HOT);
                let sent = Instant::now();
                let reply = reader.ask(&format!("get {key}"));
                let hit = reply["hit"] == true;
                // The first pass over the scan warms the hot set up.
                if i >= 2_000 {
                    hot_reads += 1;
                    hot_hits += u64::from(hit);
                }
                let version = reply["version"].as_u64().unwrap_or(0);
                let node = "a".to_owned();
                let read = Read {
                    node,
                    key,
                    sent,
                    version,
                    hit,
                };
                history.reads.lock().unwrap().push(read);
            }
            if i % 1_000 == 999 {
                most = most.max(reader.stat("entries"));
            }
        }
        stop.store(true, Ordering::Relaxed);
    });

    let stats = reader.ask("stats");
    println!(
        "bounded node: most entries seen {most}, evictions {}, hot-set hits {hot_hits}/{hot_reads}",
        stats["evictions"]
    );
    assert!(
        most <= CAPACITY,
        "held {most} entries with --max-entries {CAPACITY}"
    );
    assert!(
        stats["evictions"].as_u64().unwrap() >= (COLD as u64) - CAPACITY,
        "the scan did not evict: {stats}"
    );
    assert!(
        hot_hits * 100 >= hot_reads * 90,
        "the scan pushed the hot set out: {hot_hits}/{hot_reads} hits"
    );
    history
        .check(LEASE)
        .report_and_assert("bounded node under a scan");
    assert!(
        history.puts.lock().unwrap().len() > 10,
        "the writer barely wrote"
    );
}

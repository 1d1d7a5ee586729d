//! The change feed's figures (part of `--scale`): what a node following the database's feed
//! costs at rest as the cluster grows, how soon a write made straight in the database is served
//! by every node (against polling with `revalidate_every`), and what the feed costs the
//! database.

use std::time::{Duration, Instant};

use ractor_cache_sync_testkit::NodeSpec;
use serde_json::{json, Map, Value};

use crate::report::row;
use crate::{scale, spawn_with, Proc};

/// The largest cluster the feed's idle figure is measured at (what a 2-core machine runs).
const MAX_NODES: usize = 32;

/// Rates relaxed to liveness with a feed on: the feed vouches every 100 ms, so the mesh only
/// needs to notice a dead node (1 s heartbeats, 5 s peer timeout; the peers' lease, 3 s, is
/// the bound only while the feed is down).
const RELAXED: [(&str, &str); 2] = [("RCS_HEARTBEAT_MS", "1000"), ("RCS_LEASE_MS", "3000")];

/// A full mesh of `n` nodes with `env`; waits until every node is ready.
fn cluster_with(n: usize, env: &[(&str, &str)]) -> Vec<Proc> {
    let logs = std::env::temp_dir().join("rcs-bench-feed.log");
    let mut specs: Vec<NodeSpec> = Vec::new();
    for i in 0..n {
        let spec = specs
            .iter()
            .fold(NodeSpec::new(&format!("f{i}"), &logs), |s, p| s.peer(p));
        specs.push(spec);
    }
    let mut nodes: Vec<Proc> = specs.iter().map(|s| spawn_with(s, None, env)).collect();
    for node in &mut nodes {
        node.ask(&format!("wait-peers {}", n - 1));
    }
    nodes
}

/// Writes straight into the database, as a SQL session would: no node hears of it.
enum Writer {
    Sqlite(rusqlite::Connection),
    Postgres(tokio::runtime::Runtime, tokio_postgres::Client),
}

impl Writer {
    fn open(db: &str) -> Self {
        if db.starts_with("postgres://") {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let client = runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(db, tokio_postgres::NoTls)
                    .await
                    .expect("connect to PostgreSQL");
                tokio::spawn(connection);
                client
            });
            return Self::Postgres(runtime, client);
        }
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        Self::Sqlite(conn)
    }

    fn put(&self, key: &str, value: &str) {
        let sql = "INSERT INTO kv (key, value, version) VALUES ($1, $2, 0)
                   ON CONFLICT (key) DO UPDATE SET value = excluded.value";
        match self {
            Self::Sqlite(conn) => {
                conn.execute(sql, rusqlite::params![key, value]).unwrap();
            }
            Self::Postgres(runtime, client) => {
                runtime
                    .block_on(client.execute(sql, &[&key, &value]))
                    .unwrap();
            }
        }
    }
}

/// `rounds` writes of one key straight into `db`; for each, how long after its commit every
/// node of the cluster served it: nodes following the feed, or (`poll_ms`) checking every entry
/// that often instead. Milliseconds, sorted.
fn outside_writes(db: &str, poll_ms: Option<&str>, rounds: usize) -> Vec<f64> {
    let writer = Writer::open(db);
    let key = format!("outside-{}", std::process::id());
    writer.put(&key, "v0");
    let env = match poll_ms {
        None => vec![("RCS_FEED_DB", db)],
        Some(every) => vec![("RCS_TABLE_DB", db), ("RCS_REVALIDATE_MS", every)],
    };
    let mut nodes = cluster_with(4, &env);
    let mut took = Vec::new();
    for round in 1..=rounds {
        let old = format!("v{}", round - 1);
        for node in &mut nodes {
            let deadline = Instant::now() + Duration::from_secs(20);
            while node.ask(&format!("get {key}"))["value"] != old.as_str() {
                assert!(Instant::now() < deadline, "a node never loaded {key}");
            }
        }
        let fresh = format!("v{round}");
        writer.put(&key, &fresh);
        let committed = Instant::now();
        let mut last = Duration::ZERO;
        for node in &mut nodes {
            let deadline = committed + Duration::from_secs(20);
            loop {
                let sent = Instant::now();
                if node.ask(&format!("get {key}"))["value"] == fresh.as_str() {
                    last = last.max(sent - committed);
                    break;
                }
                assert!(sent < deadline, "a node never served {key} = {fresh}");
            }
        }
        took.push(last.as_secs_f64() * 1e3);
    }
    for node in nodes {
        drop(node);
    }
    took.sort_by(f64::total_cmp);
    took
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Source calls per second per node (the median node), idle and while `writes_per_s` writes
/// of 100 keys every node has cached go straight into the database.
fn database_load(db: &str, writes_per_s: u32) -> (f64, f64) {
    let mut nodes = cluster_with(4, &[("RCS_FEED_DB", db)]);
    let writer = Writer::open(db);
    for i in 0..100 {
        writer.put(&format!("load-{i}"), "v");
    }
    for node in &mut nodes {
        for i in 0..100 {
            node.ask(&format!("get load-{i}"));
        }
    }
    let calls = |nodes: &mut Vec<Proc>| -> Vec<u64> {
        nodes
            .iter_mut()
            .map(|n| n.ask("source-calls")["source_calls"].as_u64().unwrap_or(0))
            .collect()
    };
    let rate = |before: &[u64], after: &[u64], seconds: f64| -> f64 {
        let mut per: Vec<f64> = before
            .iter()
            .zip(after)
            .map(|(b, a)| (a - b) as f64 / seconds)
            .collect();
        per.sort_by(f64::total_cmp);
        per[per.len() / 2]
    };
    let window = Duration::from_secs(3);
    let before = calls(&mut nodes);
    std::thread::sleep(window);
    let idle = rate(&before, &calls(&mut nodes), window.as_secs_f64());
    let before = calls(&mut nodes);
    let started = Instant::now();
    let every = Duration::from_secs(1) / writes_per_s;
    let mut i = 0u64;
    while started.elapsed() < window {
        writer.put(&format!("load-{}", i % 100), &format!("w{i}"));
        i += 1;
        let next = started + every * u32::try_from(i).unwrap_or(u32::MAX);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait); // the write rate's pace
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let busy = rate(&before, &calls(&mut nodes), seconds);
    println!(
        "      ({:.0} writes/s straight into the database during the busy window)",
        i as f64 / seconds
    );
    (idle, busy)
}

pub fn figures(out: &mut Map<String, Value>) {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = dir.path().join("feed.db").display().to_string();
    let feed_env = [("RCS_FEED_DB", sqlite.as_str()), RELAXED[0], RELAXED[1]];
    println!(
        "  {:<44} {:>12} {:<8}",
        "change feed (SQLite)", "value", "unit"
    );
    for nodes in [16, MAX_NODES] {
        let on = scale::measure_with(nodes, 1, &feed_env);
        let label = format!("idle CPU per node, {nodes} nodes, feed on (median)");
        row(&label, on.idle_cpu_pct_median, "% core", None);
        let off = scale::measure_with(nodes, 1, &[]);
        let label = format!("idle CPU per node, {nodes} nodes, feed off (median)");
        row(&label, off.idle_cpu_pct_median, "% core", None);
        if nodes == 16 {
            out.insert(
                "idle_cpu_pct_per_node_feed_16".into(),
                json!(on.idle_cpu_pct_median),
            );
        } else {
            out.insert(
                "idle_cpu_pct_per_node_feed_max_nodes".into(),
                json!(on.idle_cpu_pct_median),
            );
            out.insert("feed_max_nodes".into(), json!(nodes));
            out.insert(
                format!("idle_cpu_pct_per_node_{nodes}x1"),
                json!(off.idle_cpu_pct_median),
            );
        }
    }
    let fresh = outside_writes(&sqlite, None, 50);
    let (p50, p99) = (pct(&fresh, 0.5), pct(&fresh, 0.99));
    row("outside write -> every node fresh p50", p50, "ms", None);
    row("outside write -> every node fresh p99", p99, "ms", None);
    out.insert("outside_write_fresh_p50_ms".into(), json!(p50));
    out.insert("outside_write_fresh_p99_ms".into(), json!(p99));
    let polled = outside_writes(&sqlite, Some("300"), 20);
    let (q50, q99) = (pct(&polled, 0.5), pct(&polled, 0.99));
    row("  polling every 300 ms instead, p50", q50, "ms", Some(p50));
    row("  polling every 300 ms instead, p99", q99, "ms", Some(p99));
    out.insert("outside_write_fresh_p50_ms_polling_300".into(), json!(q50));
    out.insert("outside_write_fresh_p99_ms_polling_300".into(), json!(q99));
    let (idle, busy) = database_load(&sqlite, 1_000);
    row("source calls/s per node, idle", idle, "/s", None);
    row("source calls/s per node, 1 000 writes/s", busy, "/s", None);
    println!("      (besides, each SQLite feed reads its log on every write to the file, and 10 times a second)");
    out.insert("feed_source_calls_per_s_idle".into(), json!(idle));
    out.insert("feed_source_calls_per_s_1000_writes".into(), json!(busy));

    if let Ok(url) = std::env::var("RCS_TEST_POSTGRES_URL") {
        println!(
            "  {:<44} {:>12} {:<8}",
            "change feed (PostgreSQL)", "value", "unit"
        );
        let fresh = outside_writes(&url, None, 50);
        let (p50, p99) = (pct(&fresh, 0.5), pct(&fresh, 0.99));
        row("outside write -> every node fresh p50", p50, "ms", None);
        row("outside write -> every node fresh p99", p99, "ms", None);
        out.insert("outside_write_fresh_p50_ms_postgres".into(), json!(p50));
        out.insert("outside_write_fresh_p99_ms_postgres".into(), json!(p99));
        let (idle, busy) = database_load(&url, 1_000);
        row("source calls/s per node, idle", idle, "/s", None);
        row("source calls/s per node, 1 000 writes/s", busy, "/s", None);
        println!("      (besides, each PostgreSQL feed sends itself 10 barriers a second)");
        out.insert("feed_source_calls_per_s_idle_postgres".into(), json!(idle));
        out.insert(
            "feed_source_calls_per_s_1000_writes_postgres".into(),
            json!(busy),
        );
    } else {
        println!("  (PostgreSQL feed figures: set RCS_TEST_POSTGRES_URL, see .ci/postgres.sh)");
    }
    println!();
}

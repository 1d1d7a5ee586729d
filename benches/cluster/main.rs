//! The cluster benchmark: real node processes on 127.0.0.1, the crate's invalidation path side
//! by side with plain ractor_cluster messaging measured in the same run.
//!
//! ```text
//! cargo bench --bench cluster -- [--scale] [--json PATH] [--plot PATH] [--samples N]
//! cargo bench --bench cluster -- --feed [--json PATH]    # the change feed's figures alone
//! cargo bench --bench cluster -- --idle 16x8             # one size's idle cost alone
//! ```
//!
//! With `RCS_TEST_POSTGRES_URL` set (see `.ci/postgres.sh`), the feed figures include
//! PostgreSQL's.
//!
//! This binary is both the orchestrator and, re-executed with `RCS_BENCH_ROLE=node`, each node.

mod feed;
mod node;
mod report;
mod scale;

use std::process::Command;
use std::time::Duration;

use ractor_cache_sync_testkit::{NodeProcess, NodeSpec};
use report::{row, Latency};
use serde_json::{json, Value};

/// One benchmark node: this binary again, in the node role, driven with the test kit.
type Proc = NodeProcess;

/// Starts node `spec` (dialling `spec.peers`), with SQLite as its source if given.
fn spawn(spec: &NodeSpec, sqlite: Option<&std::path::Path>) -> Proc {
    spawn_with(spec, sqlite, &[])
}

/// Like [`spawn`], with more environment for the node role.
fn spawn_with(spec: &NodeSpec, sqlite: Option<&std::path::Path>, env: &[(&str, &str)]) -> Proc {
    let peers: Vec<String> = spec.peers.iter().map(|p| p.to_string()).collect();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env("RCS_BENCH_ROLE", "node")
        .env("RCS_NAME", &spec.name)
        .env("RCS_LISTEN", spec.listen.to_string())
        .env("RCS_PEERS", peers.join(","))
        .env(
            "RCS_SQLITE",
            sqlite.map(|p| p.display().to_string()).unwrap_or_default(),
        )
        .envs(env.iter().copied());
    NodeProcess::spawn(spec.clone(), command)
        .expect("spawn a node")
        .reply_timeout(Duration::from_secs(300))
}

/// A full mesh of `n` nodes (each dials those before it); waits until every node is ready.
fn cluster(n: usize, sqlite: Option<&std::path::Path>) -> Vec<Proc> {
    let logs = std::env::temp_dir().join("rcs-bench.db");
    let mut specs: Vec<NodeSpec> = Vec::new();
    for i in 0..n {
        let spec = specs
            .iter()
            .fold(NodeSpec::new(&format!("n{i}"), &logs), |s, p| s.peer(p));
        specs.push(spec);
    }
    let mut nodes: Vec<Proc> = specs.iter().map(|spec| spawn(spec, sqlite)).collect();
    for node in &mut nodes {
        node.ask(&format!("wait-peers {}", n - 1));
    }
    nodes
}

fn samples(reply: &Value) -> Vec<u64> {
    numbers(&reply["samples_ns"])
}

fn numbers(list: &Value) -> Vec<u64> {
    let list = list.as_array().cloned().unwrap_or_default();
    list.iter().filter_map(Value::as_u64).collect()
}

/// Round trips from the first node: until every peer answered, and until each answer.
#[derive(Default)]
struct RoundTrips {
    base: Vec<u64>,
    inv: Vec<u64>,
    base_each: Vec<u64>,
    inv_each: Vec<u64>,
}

/// Baseline and crate round trips from the first node, `rounds` each, measured in four
/// alternating blocks so that both see the same drift of a shared machine.
fn interleaved(nodes: &mut [Proc], rounds: u64) -> RoundTrips {
    let mut trips = RoundTrips::default();
    for _ in 0..4 {
        let reply = nodes[0].ask(&format!("rtt-base {}", rounds / 4));
        trips.base.extend(samples(&reply));
        trips.base_each.extend(numbers(&reply["each_ns"]));
        arm(nodes);
        let reply = nodes[0].ask(&format!("rtt-crate {}", rounds / 4));
        trips.inv.extend(samples(&reply));
        trips.inv_each.extend(numbers(&reply["each_ns"]));
    }
    trips
}

/// Caches the keys the crate's round trips invalidate (a repair may have dropped them).
fn arm(nodes: &mut [Proc]) {
    for node in &mut nodes[1..] {
        node.ask("arm");
    }
    nodes[0].ask("arm pongs");
}

/// Keys per second from the first node to all others, coalescing on.
/// Returns (keys/s, envelopes the keys travelled in, whole-cache escalations).
fn keys_per_sec(nodes: &mut [Proc], keys: u64) -> (f64, u64, u64) {
    let before: Vec<Value> = nodes[1..].iter_mut().map(|n| n.ask("counts")).collect();
    let start = nodes[0].ask(&format!("burst {keys}"))["start_ns"]
        .as_u64()
        .unwrap();
    let (mut done, mut envelopes, mut alls) = (0, 0, 0);
    for (node, b) in nodes[1..].iter_mut().zip(before) {
        let target = b["keys"].as_u64().unwrap() + keys;
        let reply = node.ask(&format!("await-keys {target} {}", b["alls"]));
        done = done.max(reply["done_ns"].as_u64().unwrap());
        envelopes = reply["envelopes"].as_u64().unwrap() - b["envelopes"].as_u64().unwrap();
        alls = reply["alls"].as_u64().unwrap() - b["alls"].as_u64().unwrap();
    }
    (keys as f64 / ((done - start) as f64 / 1e9), envelopes, alls)
}

/// The run with the median rate out of `runs`.
fn median_of<T>(runs: usize, mut run: impl FnMut() -> (f64, T)) -> (f64, T) {
    let mut results: Vec<(f64, T)> = (0..runs).map(|_| run()).collect();
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    results.swap_remove(runs / 2)
}

fn casts_per_sec(nodes: &mut [Proc], casts: u64) -> f64 {
    let before = nodes[1].ask("counts")["pings"].as_u64().unwrap();
    let start = nodes[0].ask(&format!("cast-burst {casts}"))["start_ns"]
        .as_u64()
        .unwrap();
    let done = nodes[1].ask(&format!("await-pings {}", before + casts))["done_ns"]
        .as_u64()
        .unwrap();
    casts as f64 / ((done - start) as f64 / 1e9)
}

/// The `--scale` figures: 4 and 16 nodes, 8 cache topics each, and 16 nodes with one topic
/// (idle cost should not depend on the number of topics).
fn scale_figures(out: &mut serde_json::Map<String, Value>) {
    println!("  {:<44} {:>12} {:<8}", "scale figure", "value", "unit");
    for (nodes, topics) in [(4, 8), (16, 8), (16, 1)] {
        let s = scale::measure(nodes, topics);
        if topics != 8 {
            let label = format!("idle CPU per node, {nodes}x{topics} (median)");
            row(&label, s.idle_cpu_pct_median, "% core", None);
            let key = format!("idle_cpu_pct_per_node_{nodes}x{topics}");
            out.insert(key, json!(s.idle_cpu_pct_median));
            continue;
        }
        row(
            &format!("seed join, {} nodes", s.nodes),
            s.seed_join_ms,
            "ms",
            None,
        );
        let label = format!("idle CPU per node, {}x{} (median)", s.nodes, s.topics);
        row(&label, s.idle_cpu_pct_median, "% core", None);
        let label = format!("idle CPU per node, {}x{} (max)", s.nodes, s.topics);
        row(&label, s.idle_cpu_pct_max, "% core", None);
        let key = |what: &str| format!("{what}_{}x{}", s.nodes, s.topics);
        out.insert(key("idle_cpu_pct_per_node"), json!(s.idle_cpu_pct_median));
        out.insert(key("idle_cpu_pct_per_node_max"), json!(s.idle_cpu_pct_max));
        out.insert(format!("seed_join_ms_{}", s.nodes), json!(s.seed_join_ms));
    }
    println!();
}

/// A peer SIGKILLed (not yet forgotten): source calls per second on a node reading 100 hot keys
/// in a loop, and how many reads its heap answered. Before the cache checked versions in bulk,
/// every such read went to the source (about 8 000 loads a second for one reader here).
fn peer_down_figures(out: &mut serde_json::Map<String, Value>) {
    let mut nodes = cluster(3, None);
    nodes[0].ask("fill 100");
    nodes.pop().expect("three nodes").kill();
    let reply = nodes[0].ask("read-hot 100 3000");
    let seconds = reply["seconds"].as_f64().unwrap_or(1.0);
    let calls = reply["source_calls"].as_f64().unwrap_or(0.0) / seconds;
    let reads = reply["reads"].as_f64().unwrap_or(0.0);
    let hits = reply["hits"].as_f64().unwrap_or(0.0);
    let hit_pct = if reads > 0.0 {
        hits / reads * 100.0
    } else {
        0.0
    };
    row(
        "source calls/s, a peer down, 100 hot keys",
        calls,
        "/s",
        None,
    );
    row(
        "reads answered from the heap, a peer down",
        hit_pct,
        "%",
        None,
    );
    println!("      ({} while reading)", reply["health"]);
    out.insert("source_calls_per_s_peer_down".into(), json!(calls));
    out.insert("hit_pct_peer_down".into(), json!(hit_pct));
    for mut node in nodes {
        let _ = node.request("quit");
    }
    println!();
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    if std::env::var("RCS_BENCH_ROLE").as_deref() == Ok("node") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        return runtime.block_on(node::run());
    }
    let rounds: u64 = arg("--samples")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let mut out = serde_json::Map::new();
    if let Some(size) = arg("--idle") {
        // One cluster size's idle cost alone (NODESxTOPICS), e.g. to profile a node.
        let (nodes, topics) = size
            .split_once('x')
            .and_then(|(n, t)| Some((n.parse().ok()?, t.parse().ok()?)))
            .filter(|&(n, t): &(usize, usize)| n >= 2 && t >= 1)
            .expect("--idle NODESxTOPICS, e.g. 16x8");
        let s = scale::measure(nodes, topics);
        let label = format!("idle CPU per node, {nodes}x{topics} (median)");
        row(&label, s.idle_cpu_pct_median, "% core", None);
        let label = format!("idle CPU per node, {nodes}x{topics} (max)");
        row(&label, s.idle_cpu_pct_max, "% core", None);
        return;
    }
    if std::env::args().any(|a| a == "--scale") {
        scale_figures(&mut out);
        peer_down_figures(&mut out);
        feed::figures(&mut out);
    } else if std::env::args().any(|a| a == "--feed") {
        // The change feed's figures alone.
        feed::figures(&mut out);
        if let Some(path) = arg("--json") {
            std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        }
        return;
    }
    println!(
        "cluster benchmark: {rounds} samples per latency, loopback, {} cores\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let mut pair = cluster(2, None);
    let trips = interleaved(&mut pair, rounds);
    let base = Latency::one_way("ractor_cluster cast (baseline)", &trips.base);
    let inv = Latency::one_way("publish -> remote invalidated", &trips.inv);
    let base_rate = median_of(3, || (casts_per_sec(&mut pair, 200_000), ())).0;
    let keys_1 = median_of(5, || {
        let (rate, envelopes, alls) = keys_per_sec(&mut pair, 1_000_000);
        (rate, (envelopes, alls))
    });
    let keys_1 = (keys_1.0, keys_1.1 .0, keys_1.1 .1);
    let idle = pair[1].ask("rss")["rss_kib"].as_u64().unwrap();
    pair[1].ask("fill 200000");
    let filled = pair[1].ask("rss")["rss_kib"].as_u64().unwrap();
    drop(pair);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "journal_mode", "WAL")
        .unwrap();
    let mut sqlite_pair = cluster(2, Some(&db));
    arm(&mut sqlite_pair);
    let reload = Latency::one_way(
        "publish -> remote reload (SQLite)",
        &samples(&sqlite_pair[0].ask(&format!("rtt-crate {rounds}"))),
    );
    drop(sqlite_pair);

    let mut fan_out = Vec::new();
    let mut keys_n = Vec::new();
    for n in [3usize, 4, 5, 8] {
        let mut nodes = cluster(n, None);
        if n == 3 || n == 5 {
            let (rate, (envelopes, alls)) = median_of(3, || {
                let (rate, envelopes, alls) = keys_per_sec(&mut nodes, 1_000_000);
                (rate, (envelopes, alls))
            });
            keys_n.push((n - 1, (rate, envelopes, alls)));
        }
        if n == 4 || n == 8 {
            let trips = interleaved(&mut nodes, rounds / 2);
            let lat = Latency::one_way(&format!("{n} nodes"), &trips.inv);
            let base = Latency::one_way(&format!("{n} nodes, baseline"), &trips.base);
            let each = Latency::one_way(&format!("{n} nodes, each"), &trips.inv_each);
            let base_each =
                Latency::one_way(&format!("{n} nodes, baseline, each"), &trips.base_each);
            fan_out.push((n, lat, base, each, base_each));
        }
    }

    let b50 = base.p(0.5);
    let b99 = base.p(0.99);
    println!(
        "  {:<44} {:>12} {:<8} vs baseline",
        "figure", "value", "unit"
    );
    row("baseline one-way p50", b50, "µs", None);
    row("baseline one-way p99", b99, "µs", None);
    row(
        "publish -> remote invalidated p50",
        inv.p(0.5),
        "µs",
        Some(b50),
    );
    row(
        "publish -> remote invalidated p99",
        inv.p(0.99),
        "µs",
        Some(b99),
    );
    row(
        "publish -> remote reload (SQLite) p50",
        reload.p(0.5),
        "µs",
        Some(b50),
    );
    row(
        "baseline casts/s (one message each)",
        base_rate,
        "msg/s",
        None,
    );
    row(
        "invalidated keys/s, 1 peer (coalescing)",
        keys_1.0,
        "keys/s",
        Some(base_rate),
    );
    println!(
        "      ({} envelopes, {} escalated to invalidate_all)",
        keys_1.1, keys_1.2
    );
    for (peers, (rate, envelopes, alls)) in &keys_n {
        row(
            &format!("invalidated keys/s, {peers} peers"),
            *rate,
            "keys/s",
            Some(base_rate),
        );
        println!("      ({envelopes} envelopes, {alls} escalated to invalidate_all)");
    }
    row("invalidate p50, 2 nodes", inv.p(0.5), "µs", None);
    for (n, lat, base, each, base_each) in &fan_out {
        row(
            &format!("baseline p50, {n} nodes (all peers)"),
            base.p(0.5),
            "µs",
            Some(b50),
        );
        row(
            &format!("invalidate p50, {n} nodes (all peers)"),
            lat.p(0.5),
            "µs",
            Some(inv.p(0.5)),
        );
        row(
            &format!("invalidate p99, {n} nodes (all peers)"),
            lat.p(0.99),
            "µs",
            Some(inv.p(0.99)),
        );
        println!(
            "      (invalidate / baseline at {n} nodes: {:.2}x)",
            lat.p(0.5) / base.p(0.5)
        );
        row(
            &format!("baseline p50, {n} nodes (each answer)"),
            base_each.p(0.5),
            "µs",
            Some(b50),
        );
        row(
            &format!("invalidate p50, {n} nodes (each answer)"),
            each.p(0.5),
            "µs",
            Some(inv.p(0.5)),
        );
    }
    let per_entry = (filled.saturating_sub(idle) as f64 * 1024.0) / 200_000.0;
    // Key "fill-00000000" (13 bytes) and value "v" (1 byte), each in a String.
    let beyond = per_entry - (13.0 + 1.0);
    row("idle node RSS", idle as f64 / 1024.0, "MiB", None);
    row("bytes per cached entry (RSS delta)", per_entry, "B", None);
    row("  of which beyond key and value bytes", beyond, "B", None);

    let fan = |n: usize| fan_out.iter().find(|f| f.0 == n).map(|f| f.1.p(0.5));
    let fan_base = |n: usize| fan_out.iter().find(|f| f.0 == n).map(|f| f.2.p(0.5));
    let figures = json!({
        "samples": rounds,
        "baseline_one_way_p50_us": b50,
        "baseline_one_way_p99_us": b99,
        "invalidate_p50_us": inv.p(0.5),
        "invalidate_p99_us": inv.p(0.99),
        "reload_p50_us": reload.p(0.5),
        "reload_p99_us": reload.p(0.99),
        "baseline_casts_per_sec": base_rate,
        "keys_per_sec_1_peer": keys_1.0,
        "keys_1_peer_envelopes": keys_1.1,
        "keys_1_peer_escalations": keys_1.2,
        "keys_per_sec_2_peers": keys_n.first().map(|k| k.1 .0),
        "keys_per_sec_4_peers": keys_n.get(1).map(|k| k.1 .0),
        "invalidate_p50_us_2_nodes": inv.p(0.5),
        "invalidate_p50_us_4_nodes": fan(4),
        "invalidate_p50_us_8_nodes": fan(8),
        "baseline_one_way_p50_us_4_nodes": fan_base(4),
        "baseline_one_way_p50_us_8_nodes": fan_base(8),
        "invalidate_4_vs_2_nodes": fan(4).map(|f| f / inv.p(0.5)),
        "invalidate_p50_us_4_nodes_each_answer": fan_out.iter().find(|f| f.0 == 4).map(|f| f.3.p(0.5)),
        "baseline_one_way_p50_us_4_nodes_each_answer": fan_out.iter().find(|f| f.0 == 4).map(|f| f.4.p(0.5)),
        "baseline_4_vs_2_nodes": fan_base(4).map(|f| f / b50),
        "idle_rss_kib": idle,
        "bytes_per_entry": per_entry,
        "bytes_per_entry_beyond_key_value": beyond,
    });
    out.extend(figures.as_object().unwrap().clone());
    if let Some(path) = arg("--json") {
        std::fs::write(&path, serde_json::to_string_pretty(&out).unwrap()).unwrap();
        println!("\n  wrote {path}");
    }
    let plot = arg("--plot").unwrap_or_else(|| "target/cluster-latency-cdf.svg".to_owned());
    match report::plot_cdf(std::path::Path::new(&plot), &[&base, &inv, &reload]) {
        Ok(()) => println!("  wrote {plot}"),
        Err(e) => eprintln!("  plot failed: {e}"),
    }
}

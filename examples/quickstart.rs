//! The whole job in one command: three node processes over one SQLite file, a write on one
//! node, and the other two reloading it.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! It builds the `node` example if needed, creates a temporary database, starts three nodes on
//! free loopback ports, waits for the full mesh, writes through node `a`, measures how long `b`
//! and `c` take to serve the new value, shows a cache hit and shuts everything down.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use ractor_cache_sync_testkit::{eventually, node_binary, NodeProcess, NodeSpec};

const KEY: &str = "greeting";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("quickstart failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    println!("ractor_cache_sync quickstart: 3 nodes, 1 SQLite file, 1 write\n");
    build_node_example()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let db = dir.path().join("kv.db");
    println!("  database   {}", db.display());

    let a = NodeSpec::new("a", &db);
    let b = NodeSpec::new("b", &db).peer(&a);
    let c = NodeSpec::new("c", &db).peer(&a).peer(&b);
    let started = Instant::now();
    let mut nodes = [&a, &b, &c]
        .into_iter()
        .map(NodeProcess::start)
        .collect::<Result<Vec<_>, _>>()?;
    let listing: Vec<String> = nodes
        .iter()
        .map(|n| format!("{} {}", n.spec.name, n.spec.listen))
        .collect();
    println!("  started    {}", listing.join(", "));

    wait_for_mesh(&mut nodes)?;
    println!(
        "  mesh       formed in {} ms: every node has 2 ready peers and a lease from each",
        started.elapsed().as_millis()
    );

    let v1 = put(&mut nodes[0], "hello, cluster")?;
    for node in &mut nodes[1..] {
        node.request(&format!("get {KEY}"))?;
    }
    println!("  put        {KEY} = \"hello, cluster\" (v{v1}) via a; b and c load and cache it");

    let v2 = put(&mut nodes[0], "hello again")?;
    let written = Instant::now();
    println!(
        "  put        {KEY} = \"hello again\" (v{v2}) via a, which invalidates it cluster-wide"
    );
    for node in &mut nodes[1..] {
        let seen = eventually(Duration::from_secs(10), || {
            let reply = node.request(&format!("get {KEY}")).ok()?;
            (reply["version"] == v2).then(|| written.elapsed())
        })
        .ok_or_else(|| format!("{} never served v{v2}", node.spec.name))?;
        let reloads = node.request("stats")?["reloads"].clone();
        println!(
            "  {}          serves v{v2} {:.2} ms after the write (background reloads so far: {reloads})",
            node.spec.name,
            seen.as_secs_f64() * 1e3
        );
    }

    let read = nodes[1].request(&format!("get {KEY}"))?;
    println!(
        "  read       b: get {KEY} -> {} (v{}, hit: {})",
        read["value"], read["version"], read["hit"]
    );
    if read["hit"] != true {
        return Err("the read after the reload was not a hit".into());
    }

    for node in nodes {
        node.quit()?;
    }
    println!("  shutdown   all 3 nodes quit cleanly\n\nok");
    Ok(())
}

fn put(node: &mut NodeProcess, value: &str) -> Result<u64, String> {
    let reply = node.request(&format!("put {KEY} {value}"))?;
    reply["version"]
        .as_u64()
        .ok_or_else(|| format!("put failed: {reply}"))
}

/// Waits until every node has a session with both others and holds a valid lease from each
/// (until then, bounded mode reads go to the database rather than trust the cache).
fn wait_for_mesh(nodes: &mut [NodeProcess]) -> Result<(), String> {
    for node in nodes.iter_mut() {
        eventually(Duration::from_secs(20), || {
            let reply = node.request("peers").ok()?;
            (reply["peers"].as_array()?.len() == 2).then_some(())
        })
        .ok_or_else(|| format!("{} did not see both peers", node.spec.name))?;
    }
    for node in nodes.iter_mut() {
        eventually(Duration::from_secs(20), || {
            let reply = node.request("stats").ok()?;
            (reply["health"] == "healthy").then_some(())
        })
        .ok_or_else(|| format!("{} never held leases from both peers", node.spec.name))?;
    }
    Ok(())
}

/// `cargo run --example quickstart` builds only the quickstart; build the node binary it
/// drives, with the same profile, using the cargo that runs us.
fn build_node_example() -> Result<(), String> {
    if std::env::var_os("RCS_QUICKSTART_NO_BUILD").is_some() {
        return Ok(()); // the caller built it (the test suite does)
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let release = node_binary()
        .components()
        .any(|c| c.as_os_str() == "release");
    let mut command = std::process::Command::new(cargo);
    command.args(["build", "--quiet", "--example", "node"]);
    if release {
        command.arg("--release");
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "building the node example failed".to_owned())
}

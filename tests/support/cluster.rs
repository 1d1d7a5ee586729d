//! Shared test harness: real node processes (`examples/node`) on 127.0.0.1 over one SQLite
//! file in a temporary directory, driven with the test kit.
#![allow(dead_code)] // each test file uses a different part

use std::path::PathBuf;
use std::time::Duration;

#[allow(unused_imports)] // each test file uses a different part
pub use ractor_cache_sync_testkit::{eventually, free_port, node_binary, NodeProcess, NodeSpec};
#[allow(unused_imports)] // each test file uses a different part
pub use ractor_cache_sync_testkit::{proxy, staleness as scenario};

/// Generous: a liveness bound for a loaded 2-core CI machine, not a performance claim.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A temporary directory holding the cluster's database and the nodes' logs.
pub struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temporary directory"),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("kv.db")
    }

    /// A node spec on a free port sharing the cluster's database.
    pub fn spec(&self, name: &str) -> NodeSpec {
        NodeSpec::new(name, &self.db())
    }

    /// A node spec for links through the fault proxy: it dials only the addresses it is given,
    /// so gossip does not route around the proxy by dialling the peers' own addresses.
    pub fn proxied_spec(&self, name: &str) -> NodeSpec {
        self.spec(name).arg("--no-gossip-dial")
    }

    /// Starts one node per spec and waits until each has a ready session with all others.
    pub fn start_mesh(&self, specs: &[NodeSpec]) -> Vec<NodeProcess> {
        let mut nodes: Vec<NodeProcess> = specs.iter().map(start).collect();
        let others = nodes.len() - 1;
        for node in &mut nodes {
            wait_for_peers(node, others);
        }
        for node in &mut nodes {
            wait_for_health(node, "healthy");
        }
        nodes
    }

    /// A full mesh of `names` over the PostgreSQL server at `RCS_TEST_POSTGRES_URL` instead
    /// of the SQLite file, started and healthy.
    pub fn start_postgres_mesh(&self, names: &[&str]) -> Vec<NodeProcess> {
        self.start_postgres_mesh_with(names, &[])
    }

    /// As [`start_postgres_mesh`](Self::start_postgres_mesh), each node given `args` too.
    pub fn start_postgres_mesh_with(&self, names: &[&str], args: &[&str]) -> Vec<NodeProcess> {
        let mut specs = self.mesh_specs(names);
        for spec in &mut specs {
            spec.db = postgres_url().into();
            for arg in args {
                spec.extra.push((*arg).to_owned());
            }
        }
        self.start_mesh(&specs)
    }

    /// Specs for `names`, each dialling every node listed before it (a full mesh).
    pub fn mesh_specs(&self, names: &[&str]) -> Vec<NodeSpec> {
        let mut specs: Vec<NodeSpec> = Vec::new();
        for name in names {
            let spec = specs.iter().fold(self.spec(name), |s, p| s.peer(p));
            specs.push(spec);
        }
        specs
    }
}

pub fn start(spec: &NodeSpec) -> NodeProcess {
    NodeProcess::start(spec).unwrap_or_else(|e| panic!("starting {}: {e}", spec.name))
}

pub fn wait_for_peers(node: &mut NodeProcess, count: usize) {
    let name = node.spec.name.clone();
    eventually(DEADLINE, || (node.peers().len() == count).then_some(()))
        .unwrap_or_else(|| panic!("{name} never had {count} ready peers"));
}

/// Polls `get key` on `node` until it returns `expected`.
/// Caches `key` = `value` on `node`: reads until a read is a hit with that value.
pub fn cache(node: &mut NodeProcess, key: &str, value: &str) {
    let name = node.spec.name.clone();
    eventually(DEADLINE, || {
        let read = node.ask(&format!("get {key}"));
        (read["value"] == value && read["hit"] == true).then_some(())
    })
    .unwrap_or_else(|| panic!("{name} never cached {key} = {value}"));
}

pub fn wait_for_value(node: &mut NodeProcess, key: &str, expected: &str) {
    let name = node.spec.name.clone();
    eventually(DEADLINE, || {
        (node.value(key).as_deref() == Some(expected)).then_some(())
    })
    .unwrap_or_else(|| panic!("{name} never served {key} = {expected:?}"));
}

/// `put key value` on `node`, returning the committed version.
pub fn put(node: &mut NodeProcess, key: &str, value: &str) -> u64 {
    let reply = node.ask(&format!("put {key} {value}"));
    reply["version"]
        .as_u64()
        .unwrap_or_else(|| panic!("put failed: {reply}"))
}

/// Waits until `node` has seen `count` peers join its topic and is healthy again.
pub fn wait_for_joins(node: &mut NodeProcess, count: u64) {
    let name = node.spec.name.clone();
    eventually(DEADLINE, || {
        let stats = node.ask("stats");
        let joins = stats["peer_joins"].as_u64()?;
        (joins >= count && stats["health"] == "healthy").then_some(())
    })
    .unwrap_or_else(|| panic!("{name} never saw {count} peers join"));
}

/// Writes `key = value` straight into the cluster's SQLite file, as a SQL session, a
/// migration or another service would: no node hears of it, and the statement does not touch
/// the version (the database's triggers give it one). Returns the version it got, or `None`
/// if there is no such row.
pub fn write_directly(db: &std::path::Path, key: &str, value: &str) -> Option<u64> {
    let conn = rusqlite::Connection::open(db).expect("open the database");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let updated = conn
        .execute(
            "UPDATE kv SET value = ?2 WHERE key = ?1",
            rusqlite::params![key, value],
        )
        .expect("write the row");
    if updated == 0 {
        return None;
    }
    let version: i64 = conn
        .query_row(
            "SELECT version FROM kv WHERE key = ?1",
            rusqlite::params![key],
            |row| row.get(0),
        )
        .expect("read the version");
    Some(version as u64)
}

/// The test server's URL.
pub fn postgres_url() -> String {
    std::env::var("RCS_TEST_POSTGRES_URL").expect("RCS_TEST_POSTGRES_URL is set")
}

/// Runs `sql` straight on the PostgreSQL test server, as a SQL session would (no node hears
/// of it); returns the rows it changed.
pub fn postgres_directly(sql: &str) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(&postgres_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to PostgreSQL");
        let driver = tokio::spawn(connection);
        let changed = client.execute(sql, &[]).await.expect("run the statement");
        drop(client);
        let _ = driver.await;
        changed
    })
}

/// Reads `key` on `node` until it serves `fresh`, which was committed before
/// `committed`; fails if a read sent more than `lease` after that served anything else (the
/// staleness bound). Returns how long after `committed` the first fresh read was sent.
pub fn served_within(
    node: &mut NodeProcess,
    key: &str,
    fresh: &str,
    committed: std::time::Instant,
    lease: Duration,
) -> Duration {
    let name = node.spec.name.clone();
    let deadline = committed + DEADLINE;
    loop {
        let sent = std::time::Instant::now();
        let read = node.ask(&format!("get {key}"));
        if read["value"].as_str() == Some(fresh) {
            return sent - committed;
        }
        assert!(
            sent <= committed + lease,
            "{name} served {read} {:?} after {key} = {fresh:?} was committed (lease {lease:?})",
            sent - committed
        );
        assert!(sent < deadline, "{name} never served {key} = {fresh:?}");
        std::thread::yield_now();
    }
}

/// Polls `stats` until the node's cache reports `health` (`healthy`, `repairing`, `bypassing`).
pub fn wait_for_health(node: &mut NodeProcess, health: &str) {
    let name = node.spec.name.clone();
    eventually(DEADLINE, || {
        (node.ask("stats")["health"] == health).then_some(())
    })
    .unwrap_or_else(|| panic!("{name} never became {health}: {}", node.ask("stats")));
}

/// Sends `signal` (e.g. `SIGSTOP`, `SIGCONT`) to the node's process.
pub fn signal(node: &NodeProcess, signal: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(node.pid() as i32);
    nix::sys::signal::kill(pid, signal).expect("signal the node");
}

/// Polls `stats` until `counter` reaches at least `at_least`.
pub fn wait_for_stat(node: &mut NodeProcess, counter: &str, at_least: u64) {
    let name = node.spec.name.clone();
    eventually(DEADLINE, || (node.stat(counter) >= at_least).then_some(()))
        .unwrap_or_else(|| panic!("{name}: {counter} never reached {at_least}"));
}

/// Reads `figures` every 100 ms for `window` and fails, naming `what`, as soon as they differ
/// from `before` (read before the fault began): for figures that must not move while it lasts.
pub fn unchanged_for<T: PartialEq + std::fmt::Debug>(
    window: Duration,
    what: &str,
    before: T,
    mut figures: impl FnMut() -> T,
) {
    let started = std::time::Instant::now();
    while started.elapsed() < window {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(figures(), before, "{what} moved");
    }
}

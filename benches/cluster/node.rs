//! One benchmark node (this binary re-executed with `RCS_BENCH_ROLE=node`): a crate cache on
//! topic `bench` and, beside it, a plain remote-capable ractor actor for the baseline. Driven by
//! one command per stdin line, answering one JSON line each.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cache_sync::{
    Cache, Invalidation, Node, NodeConfig, Source, SyncConfig, Topic, Version,
};
use ractor_cluster::RactorClusterMessage;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

const BASE_GROUP: &str = "bench-baseline";

/// The baseline: ractor_cluster messaging with no crate code.
#[derive(RactorClusterMessage)]
pub enum BaseMsg {
    /// First byte 1: answer with a pong.
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

struct BaseActor {
    pings: Arc<AtomicU64>,
    pongs: mpsc::UnboundedSender<()>,
}

#[cfg_attr(feature = "async-trait", ractor::async_trait)]
impl Actor for BaseActor {
    type Msg = BaseMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, me: ActorRef<BaseMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        ractor::pg::join(BASE_GROUP.to_owned(), vec![me.get_cell()]);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<BaseMsg>,
        msg: BaseMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BaseMsg::Ping(bytes) => {
                self.pings.fetch_add(1, Ordering::Relaxed);
                if bytes.first() == Some(&1) {
                    for member in remote_base_members() {
                        let _ = member.cast(BaseMsg::Pong(bytes.clone()));
                    }
                }
            }
            BaseMsg::Pong(_) => {
                let _ = self.pongs.send(());
            }
        }
        Ok(())
    }
}

fn remote_base_members() -> Vec<ActorRef<BaseMsg>> {
    let members = ractor::pg::get_members(&BASE_GROUP.to_owned());
    members
        .into_iter()
        .filter(|c| !c.get_id().is_local())
        .map(Into::into)
        .collect()
}

/// The crate's source: constant values. With SQLite (the reload figure) it reads SQLite first,
/// and loading `ping` answers with a `pong-<me>` invalidation, loading `pong-*` reports to the
/// driver; without, the remote-invalidation hook does that as soon as the keys are dropped.
struct BenchSource {
    me: OnceLock<(String, Cache<String, String>)>,
    pongs: mpsc::UnboundedSender<()>,
    version: AtomicU64,
    sqlite: Option<std::sync::Mutex<rusqlite::Connection>>,
}

#[async_trait::async_trait]
impl Source<String, String> for BenchSource {
    async fn load(&self, key: &String) -> ractor_cache_sync::Result<Option<(String, Version)>> {
        // The filled keys never change: one version, which a bulk check confirms.
        if key.starts_with("fill-") {
            return Ok(Some(("v".to_owned(), 1)));
        }
        if let Some(conn) = &self.sqlite {
            let conn = conn.lock().unwrap();
            let read: rusqlite::Result<i64> = conn.query_row("SELECT 1", [], |r| r.get(0));
            read.map_err(ractor_cache_sync::Error::from_source)?;
        }
        let version = self.version.fetch_add(1, Ordering::Relaxed);
        if self.sqlite.is_none() {
            return Ok(Some(("v".to_owned(), version)));
        }
        if key == "ping" {
            if let Some((name, cache)) = self.me.get() {
                let _ = cache.invalidate(&format!("pong-{name}"));
            }
        } else if key.starts_with("pong-") && version > 0 {
            let _ = self.pongs.send(());
        }
        Ok(Some(("v".to_owned(), version)))
    }

    async fn versions(&self, keys: &[String]) -> ractor_cache_sync::Result<Vec<Option<Version>>> {
        let current = self.version.load(Ordering::Relaxed);
        let version = |key: &String| if key.starts_with("fill-") { 1 } else { current };
        Ok(keys.iter().map(|key| Some(version(key))).collect())
    }
}

/// The `bench` topic's source and change feed when `RCS_FEED_DB` (or, source only,
/// `RCS_TABLE_DB`) names a database (a SQLite file or a `postgres://` URL): the crate's
/// table-backed sources, table `kv`.
async fn feed_source(
    db: &str,
) -> (
    Arc<dyn Source<String, String>>,
    Box<dyn ractor_cache_sync::cache::ChangeFeed<String>>,
) {
    if db.starts_with("postgres://") {
        let source = ractor_cache_sync_postgres::PostgresSource::connect(db, "kv")
            .await
            .expect("PostgreSQL");
        let feed = source.change_feed(Default::default()).await.expect("feed");
        (Arc::new(source), Box::new(feed))
    } else {
        let source = ractor_cache_sync_sqlite::SqliteSource::open(db, "kv").expect("SQLite");
        let feed = source.change_feed(Default::default()).await.expect("feed");
        (Arc::new(source), Box::new(feed))
    }
}

pub async fn run() {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let ms = |k: &str| env(k).parse::<u64>().ok().map(Duration::from_millis);
    let mut config = NodeConfig::new(env("RCS_NAME"), "bench-cookie-0123456789abcdef")
        .listen(env("RCS_LISTEN").parse().expect("RCS_LISTEN"));
    // Relaxed rates (the feed figures): node and topic heartbeats, lease, peer timeout.
    if let Some(heartbeat) = ms("RCS_HEARTBEAT_MS") {
        config = config.heartbeat(heartbeat).peer_timeout(heartbeat * 5);
    }
    for peer in env("RCS_PEERS").split(',').filter(|p| !p.is_empty()) {
        config = config.peer(peer);
    }
    let node = Node::start(config).await.expect("node starts");
    let (pong_tx, mut pongs) = mpsc::unbounded_channel();
    let hook_pongs = pong_tx.clone();
    let sqlite = (!env("RCS_SQLITE").is_empty()).then(|| {
        std::sync::Mutex::new(rusqlite::Connection::open(env("RCS_SQLITE")).expect("sqlite"))
    });
    let source = Arc::new(BenchSource {
        me: OnceLock::new(),
        pongs: pong_tx,
        version: AtomicU64::new(0),
        sqlite,
    });
    // Publish -> remote invalidated: each node answers the moment the keys are dropped.
    let me = Arc::new(OnceLock::<(String, Cache<String, String>)>::new());
    let hook_me = me.clone();
    let react_in_hook = source.sqlite.is_none();
    let hook = move |applied: &Invalidation<String>| {
        let Invalidation::Keys(keys) = applied else {
            return;
        };
        for (key, _) in keys {
            if key == "ping" {
                if let Some((name, cache)) = hook_me.get() {
                    let _ = cache.invalidate(&format!("pong-{name}"));
                }
            } else if key.starts_with("pong-") {
                let _ = hook_pongs.send(());
            }
        }
    };
    // A backlog bound above what a 2 M-key burst can leave unacknowledged between heartbeats.
    let mut sync = SyncConfig::default().max_backlog(512 << 20);
    if let (Some(heartbeat), Some(lease)) = (ms("RCS_HEARTBEAT_MS"), ms("RCS_LEASE_MS")) {
        sync = sync.heartbeat(heartbeat).lease(lease);
    }
    let (feed_db, table_db) = (env("RCS_FEED_DB"), env("RCS_TABLE_DB"));
    let mut builder = if !feed_db.is_empty() {
        let (db, feed) = feed_source(&feed_db).await;
        Cache::builder(Topic::new("bench"), db).change_feed(feed)
    } else if !table_db.is_empty() {
        let (db, _) = feed_source(&table_db).await;
        Cache::builder(Topic::new("bench"), db)
    } else {
        Cache::builder(Topic::new("bench"), source.clone())
    }
    .sync(sync);
    if let Some(every) = ms("RCS_REVALIDATE_MS") {
        builder = builder.revalidate_every(every);
    }
    if react_in_hook {
        builder = builder.on_remote_invalidation(hook);
    }
    let cache: Cache<String, String> = builder.spawn(&node).await.expect("cache");
    // More cache topics beside `bench` (the scale figures), idle unless used.
    let topics: usize = env("RCS_TOPICS").parse().unwrap_or(1);
    let mut others = Vec::new();
    for i in 1..topics {
        let topic = Topic::new(format!("bench-{i}"));
        let other: Cache<String, String> = Cache::builder(topic, source.clone())
            .sync(sync)
            .spawn(&node)
            .await
            .expect("cache");
        others.push(other);
    }
    let _ = me.set((node.name().to_owned(), cache.clone()));
    let _ = source.me.set((node.name().to_owned(), cache.clone()));
    let pings = Arc::new(AtomicU64::new(0));
    let (base_tx, mut base_pongs) = mpsc::unbounded_channel();
    let base = BaseActor {
        pings: pings.clone(),
        pongs: base_tx,
    };
    Actor::spawn(None, base, ()).await.expect("baseline actor");
    println!("{}", json!({ "ok": "ready", "pid": std::process::id() }));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let reply = match words.first().copied().unwrap_or("") {
            "wait-peers" => {
                let ok = node
                    .wait_for_peers(n(1) as usize, Duration::from_secs(60))
                    .await
                    .is_ok();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
                while cache.health() != ractor_cache_sync::Health::Healthy
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let healthy = cache.health() == ractor_cache_sync::Health::Healthy;
                json!({ "ok": ok && healthy, "peers": node.peers() })
            }
            "arm" => {
                // Cache what the next round trips invalidate here: `ping` on every peer, and on
                // the measuring node (`arm pongs`) each peer's answer. Only the nodes that read a
                // key hold it, as in a real cluster.
                let _ = cache.get(&"ping".to_owned()).await;
                if words.get(1) == Some(&"pongs") {
                    for peer in node.peers() {
                        let _ = cache.get(&format!("pong-{peer}")).await;
                    }
                }
                json!({ "entries": cache.entry_count() })
            }
            "rtt-crate" => {
                let peers = node.peers().len();
                let (all, each) = rtt(n(1), peers, &mut pongs, || {
                    let _ = cache.invalidate(&"ping".to_owned());
                })
                .await;
                json!({ "samples_ns": all, "each_ns": each })
            }
            "rtt-base" => {
                let peers = node.peers().len();
                let (all, each) = rtt(n(1), peers, &mut base_pongs, || {
                    for member in remote_base_members() {
                        let _ = member.cast(BaseMsg::Ping(vec![1; 64]));
                    }
                })
                .await;
                json!({ "samples_ns": all, "each_ns": each })
            }
            "burst" => {
                let start = mono_ns();
                // One key buffer: the keys an application invalidates already exist.
                let mut key = String::with_capacity(24);
                for i in 0..n(1) {
                    key.clear();
                    let _ = write!(key, "key-{i}");
                    let _ = cache.invalidate(&key);
                    if i % 1024 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                json!({ "start_ns": start })
            }
            "cast-burst" => {
                let start = mono_ns();
                let members = remote_base_members();
                for i in 0..n(1) {
                    for member in &members {
                        let _ = member.cast(BaseMsg::Ping(vec![0; 64]));
                    }
                    if i % 1024 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                json!({ "start_ns": start })
            }
            "await-keys" => {
                // Done when every key arrived, or a whole-cache invalidation (the batch cap
                // escalated) that came after them.
                let alls = n(2);
                loop {
                    let stats = cache.stats();
                    if stats.invalidations_received >= n(1) || stats.invalidate_alls_received > alls
                    {
                        break;
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                let stats = cache.stats();
                json!({ "done_ns": mono_ns(), "envelopes": stats.sync.received, "alls": stats.invalidate_alls_received })
            }
            "await-pings" => {
                while pings.load(Ordering::Relaxed) < n(1) {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
                json!({ "done_ns": mono_ns() })
            }
            "fill" => {
                for i in 0..n(1) {
                    let _ = cache.get(&format!("fill-{i:08}")).await;
                }
                json!({ "entries": cache.entry_count() })
            }
            "read-hot" => {
                // Waits (10 s at most) until some peer's lease has run out, then reads the first
                // `n(1)` filled keys in a loop for `n(2)` ms, as a reader task would.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                while cache.health() == ractor_cache_sync::Health::Healthy
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let before = cache.stats();
                let started = std::time::Instant::now();
                let mut reads = 0u64;
                while started.elapsed() < Duration::from_millis(n(2)) {
                    for i in 0..n(1) {
                        let _ = cache.get(&format!("fill-{i:08}")).await;
                        reads += 1;
                    }
                    tokio::task::yield_now().await;
                }
                let after = cache.stats();
                json!({
                    "reads": reads,
                    "hits": after.hits - before.hits,
                    "source_calls": after.source_calls - before.source_calls,
                    "seconds": started.elapsed().as_secs_f64(),
                    "health": cache.health().to_string(),
                })
            }
            "rss" => json!({ "rss_kib": rss_kib() }),
            "get" => {
                let key = words.get(1).copied().unwrap_or("").to_owned();
                let value = cache.get(&key).await.ok().flatten();
                json!({ "value": value })
            }
            "source-calls" => json!({ "source_calls": cache.stats().source_calls }),
            "counts" => json!({
                "pings": pings.load(Ordering::Relaxed),
                "keys": cache.stats().invalidations_received,
                "alls": cache.stats().invalidate_alls_received,
                "envelopes": cache.stats().sync.received,
            }),
            "quit" => break,
            other => json!({ "error": format!("unknown command {other:?}") }),
        };
        println!("{reply}");
    }
    let _ = cache
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(1)))
        .await;
    node.shutdown().await;
}

/// `rounds` round trips after 500 warm-up ones: `send`, then wait for one pong per peer.
/// Returns the time until every peer answered, and the time of each answer.
async fn rtt(
    rounds: u64,
    peers: usize,
    pongs: &mut mpsc::UnboundedReceiver<()>,
    send: impl Fn(),
) -> (Vec<u64>, Vec<u64>) {
    let mut all = Vec::with_capacity(rounds as usize);
    let mut each = Vec::with_capacity(rounds as usize * peers);
    for round in 0..rounds + 500 {
        while pongs.try_recv().is_ok() {}
        let start = std::time::Instant::now();
        send();
        for _ in 0..peers {
            if tokio::time::timeout(Duration::from_secs(5), pongs.recv())
                .await
                .is_err()
            {
                break;
            }
            if round >= 500 {
                each.push(start.elapsed().as_nanos() as u64);
            }
        }
        if round >= 500 {
            all.push(start.elapsed().as_nanos() as u64);
        }
    }
    (all, each)
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process on the machine.
pub fn mono_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .unwrap_or("VmRSS: 0 kB");
    line.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

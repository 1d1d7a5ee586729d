//! One cluster node as a process: a cache of string keys → string values over a SQLite table,
//! driven by one command per line on stdin, answering each with one JSON object per line on
//! stdout (logs go to stderr).
//!
//! ```text
//! cargo run --release --example node -- --name a --listen 127.0.0.1:4001 \
//!     [--peer 127.0.0.1:4002]... [--discover HOST:PORT]... --db /tmp/kv.db [--cookie SECRET]
//! ```
//!
//! Commands: `put KEY VALUE`, `put-confirmed KEY VALUE`, `get KEY`, `get-after TOKEN KEY`,
//! `get-at-least KEY VERSION`, `get-within KEY MS`, `peers`, `members`, `stats`,
//! `burst N`, `inject ...` (fault injection), `kill-sync`, `kill-liveness`, `simulate-suspend MS`,
//! `quit`.
//! See `examples/README.md` for the reply formats.

mod command;
mod database;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use ractor_cache_sync::fault_injection::FaultInjector;
use ractor_cache_sync::node::MemberState;
use ractor_cache_sync::{Cache, Health, Invalidation, Mode, Node, NodeConfig, SyncConfig, Topic};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use command::{Command, Injection};
use database::Database;

/// Longest command line accepted; longer lines are refused and skipped.
const MAX_LINE: usize = 1 << 20;

#[derive(Parser, Debug)]
#[command(about = "One ractor_cache_sync cluster node, driven over stdin/stdout")]
struct Args {
    /// This node's name, unique in the cluster (peers see it as NAME@HOST).
    #[arg(long)]
    name: String,
    /// Address to listen on for peers.
    #[arg(long)]
    listen: SocketAddr,
    /// A peer to keep a session with (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// A DNS name (HOST:PORT) to discover peers by: every address it resolves to, other than
    /// this node's, is dialled; it is resolved again every --discover-every-ms (repeatable).
    #[arg(long = "discover")]
    discover: Vec<String>,
    /// The host name peers know this node by and dial it at (its name becomes NAME@HOST);
    /// default: the listen address's IP.
    #[arg(long)]
    advertise: Option<String>,
    /// Dial only --peer and --discover addresses, not the members gossip reports (links that
    /// must go through a proxy); gossiped members still close the gate while unreachable.
    #[arg(long)]
    no_gossip_dial: bool,
    /// How long a clean leave is remembered, and a silent member that --discover no longer
    /// lists is kept (milliseconds); silence alone never forgets a member.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    forget_members_after_ms: u64,
    /// How often discovery names are resolved again, in milliseconds.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    discover_every_ms: u64,
    /// The source of truth shared by the cluster's nodes: a SQLite file (created if missing),
    /// or a `postgres://user:password@host:port/database` URL.
    #[arg(long)]
    db: String,
    /// Cluster cookie (shared secret).
    #[arg(long, env = "RACTOR_CACHE_SYNC_COOKIE", hide_env_values = true)]
    cookie: String,
    /// Topic (process group) of the cache; nodes only sync with nodes of the same topic.
    #[arg(long, default_value = "kv")]
    topic: String,
    /// bounded: serve cached values only while every peer's lease is valid (staleness bounded
    /// by the lease); eventual: always serve cached values, repair on detected loss.
    #[arg(long, value_enum, default_value_t = ModeArg::Bounded)]
    mode: ModeArg,
    /// Lease in milliseconds: the staleness bound of bounded mode.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(3..=3_600_000))]
    lease_ms: u64,
    /// Heartbeat interval in milliseconds (at most a third of the lease).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..=1_200_000))]
    heartbeat_ms: u64,
    /// How long a silent peer's topic state is kept, in milliseconds (at least the lease); the
    /// node keeps checking entries until there is evidence the peer is gone.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(3..=86_400_000))]
    forget_after_ms: u64,
    /// Check every cached entry's version against the database this often (milliseconds),
    /// so that a change made straight in the database is served within this plus one check
    /// (default: off; entries are then checked only after a possible loss or while a peer's
    /// lease has lapsed).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    revalidate_every_ms: Option<u64>,
    /// Follow the database's committed changes (installing its change-log triggers): every
    /// write — made through any node, or straight in the database — is applied here within
    /// milliseconds, and while the feed is current the database vouches for the cache whatever
    /// the peers' state.
    #[arg(long)]
    change_feed: bool,
    /// Keys per bulk version check when entries are revalidated.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    revalidation_chunk: u64,
    /// Most entries this node caches (default: unbounded); past it the eviction policy makes
    /// room for each new one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_entries: Option<u64>,
    /// Most bytes of keys and values this node caches (default: unbounded).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_bytes: Option<u64>,
    /// An entry is served for at most this long (milliseconds) after its load, then loaded
    /// again (default: off).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=2_592_000_000))]
    ttl_ms: Option<u64>,
    /// Also cache "no such key", so reads of missing keys stop reaching the database.
    #[arg(long)]
    cache_absent: bool,
    /// Bytes of this node's messages a peer may leave unacknowledged before its session is
    /// closed (bounds memory under a stopped peer).
    #[arg(long, default_value_t = 32 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_backlog_bytes: u64,
    /// This node's certificate (PEM), signed by the cluster CA; enables mutual TLS.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// The cluster CA certificate (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<std::path::PathBuf>,
    /// With TLS, admit only peers whose certificate names this node (repeatable; default: any
    /// node certified by the CA).
    #[arg(long = "tls-allow")]
    tls_allow: Vec<String>,
    /// With TLS, check the certificate, key and CA files for changes every this many
    /// milliseconds; changed files are read again (a bad set is refused, the old one kept).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=2_592_000_000))]
    tls_reload_ms: u64,
    /// Allow listening on a non-loopback address without encryption (trusted networks only).
    #[arg(long)]
    insecure: bool,
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
    /// A peer silent for this long (milliseconds) is declared down: its session is closed and
    /// dialled again.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    peer_timeout_ms: u64,
    /// How long a connection may take to become a ready session (milliseconds) before it is
    /// closed (and a dialled peer dialled again).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    handshake_timeout_ms: u64,
    /// Longest wait between two dials of an unreachable peer (milliseconds); the first is
    /// 100 ms, doubling up to this.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    redial_max_ms: u64,
    /// Fault injection: a second cache on this topic whose remote-invalidation hook blocks
    /// its thread for N ms when key `block-N` is invalidated (`inject block N` on another node
    /// sends one): a slow subscriber, to show it delays no other topic.
    #[arg(long)]
    slow_topic: Option<String>,
    /// How long `put-confirmed` waits for every peer to apply the invalidation (milliseconds).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    confirm_timeout_ms: u64,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum ModeArg {
    Bounded,
    Eventual,
}

struct NodeProcess {
    node: Node,
    cache: Cache<String, String>,
    source: Database,
    topic: String,
    /// How long `put-confirmed` waits for every peer to apply.
    confirm_timeout: Duration,
    /// The lease: how long `get-at-least` and `get-within` wait before they give up.
    lease: Duration,
    /// The `--slow-topic` cache, if any.
    slow: Option<Cache<String, String>>,
    /// The keys of the last invalidation another node sent ("*" for everything), as seen by
    /// the cache's remote-invalidation hook.
    last_remote: Arc<std::sync::Mutex<Option<Vec<String>>>>,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let process = match start(&args).await {
        Ok(process) => process,
        Err(error) => {
            emit(&json!({ "error": error })).await;
            std::process::exit(1);
        }
    };
    emit(&json!({ "ok": "ready", "name": args.name, "listen": args.listen.to_string() })).await;
    process.serve_stdin().await;
}

async fn start(args: &Args) -> Result<NodeProcess, String> {
    if let Some(addr) = args.metrics_addr {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    }
    let source = Database::open(&args.db).await?;
    let mut config = NodeConfig::new(&args.name, &args.cookie);
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls_cert, &args.tls_key, &args.tls_ca) {
        config = config
            .tls(ractor_cache_sync::node::TlsFiles::new(cert, key, ca))
            .tls_reload_every(Duration::from_millis(args.tls_reload_ms));
    }
    let config = args.peers.iter().fold(config, |c, p| c.peer(p));
    let config = match &args.advertise {
        Some(host) => config.hostname(host),
        None => config,
    };
    let config = args
        .discover
        .iter()
        .fold(config, |c, name| c.discover(name))
        .discover_every(ms(args.discover_every_ms))
        .dial_gossiped(!args.no_gossip_dial)
        .forget_members_after(ms(args.forget_members_after_ms))
        .listen(args.listen)
        .allow_insecure(args.insecure)
        .heartbeat(ms(args.heartbeat_ms))
        .peer_timeout(ms(args.peer_timeout_ms))
        .handshake_timeout(ms(args.handshake_timeout_ms))
        .redial_backoff(ms(100), ms(args.redial_max_ms));
    let config = args
        .tls_allow
        .iter()
        .fold(config, |c, name| c.allow_peer(name));
    let node = Node::start(config).await.map_err(|e| e.to_string())?;
    let mode = match args.mode {
        ModeArg::Bounded => Mode::Bounded,
        ModeArg::Eventual => Mode::Eventual,
    };
    let sync = SyncConfig::default()
        .lease(ms(args.lease_ms))
        .heartbeat(ms(args.heartbeat_ms))
        .forget_after(ms(args.forget_after_ms))
        .max_backlog(args.max_backlog_bytes);
    let last_remote = Arc::new(std::sync::Mutex::new(None));
    let seen = last_remote.clone();
    let mut builder = Cache::builder(Topic::new(args.topic.clone()), Arc::new(source.clone()));
    if let Some(every) = args.revalidate_every_ms {
        builder = builder.revalidate_every(ms(every));
    }
    if args.change_feed {
        builder = builder.change_feed(source.change_feed().await?);
    }
    if let Some(entries) = args.max_entries {
        builder = builder.max_capacity(entries);
    }
    if let Some(bytes) = args.max_bytes {
        builder = builder
            .weigher(|key: &String, value: &String| {
                u32::try_from(key.len() + value.len()).unwrap_or(u32::MAX)
            })
            .max_weight(bytes);
    }
    if let Some(ttl) = args.ttl_ms {
        builder = builder.time_to_live(ms(ttl));
    }
    let cache = builder
        .on_remote_invalidation(move |applied| {
            let keys = match applied {
                Invalidation::Keys(keys) => keys.iter().map(|(k, _)| k.clone()).collect(),
                _ => vec!["*".to_owned()],
            };
            tracing::debug!(?keys, "remote invalidation applied");
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(keys);
        })
        .mode(mode)
        .sync(sync)
        .revalidation_chunk(args.revalidation_chunk as usize)
        .cache_absent(args.cache_absent)
        .spawn(&node)
        .await
        .map_err(|e| e.to_string())?;
    let slow = match &args.slow_topic {
        Some(topic) => Some(slow_cache(topic, &source, sync, &node).await?),
        None => None,
    };
    Ok(NodeProcess {
        node,
        cache,
        source,
        topic: args.topic.clone(),
        confirm_timeout: ms(args.confirm_timeout_ms),
        lease: ms(args.lease_ms),
        slow,
        last_remote,
    })
}

/// A cache whose remote-invalidation hook blocks its thread for N ms on key `block-N` (as a
/// subscriber doing blocking work would; `block_in_place` lets the runtime move other tasks
/// off the thread).
async fn slow_cache(
    topic: &str,
    source: &Database,
    sync: SyncConfig,
    node: &Node,
) -> Result<Cache<String, String>, String> {
    Cache::builder(Topic::new(topic), Arc::new(source.clone()))
        .on_remote_invalidation(|applied| {
            let Invalidation::Keys(keys) = applied else {
                return;
            };
            for (key, _) in keys {
                if let Some(n) = key.strip_prefix("block-").and_then(|n| n.parse().ok()) {
                    tokio::task::block_in_place(|| std::thread::sleep(ms(n)));
                }
            }
        })
        .sync(sync)
        .spawn(node)
        .await
        .map_err(|e| e.to_string())
}

impl NodeProcess {
    /// The fault-injection hooks of this node and its cache.
    fn faults(&self) -> FaultInjector<'_> {
        FaultInjector::new(&self.node).cache(&self.cache)
    }

    async fn serve_stdin(self) {
        let mut stdin = BufReader::new(tokio::io::stdin());
        // stdin closed (or unreadable): shut down as on quit.
        while let Some(line) = read_line(&mut stdin).await {
            let parsed = match line {
                Ok(line) => Command::parse(&line),
                Err(error) => Err(error),
            };
            let reply = match parsed {
                Ok(Command::Quit) => break,
                Ok(command) => self.run(command).await,
                Err(error) => json!({ "error": error }),
            };
            emit(&reply).await;
        }
        self.quit().await;
    }

    async fn run(&self, command: Command) -> Value {
        let result = match command {
            Command::Put { key, value } => self.put(key, value).await,
            Command::PutConfirmed { key, value } => self.put_confirmed(key, value).await,
            Command::Burst(n) => self.burst(n).await,
            Command::Get { key } => self.get(key).await,
            Command::GetAtLeast { key, version } => {
                let started = std::time::Instant::now();
                let read = self.cache.get_at_least(&key, version, self.lease).await;
                Self::got(key, read, started)
            }
            Command::GetAfter { token, key } => self.get_after(&token, key).await,
            Command::GetWithin { key, max_age_ms } => {
                let started = std::time::Instant::now();
                let read = self.cache.get_within(&key, ms(max_age_ms));
                let read = tokio::time::timeout(self.lease, read).await;
                let read = read.unwrap_or(Err(ractor_cache_sync::Error::Timeout(self.lease)));
                Self::got(key, read, started)
            }
            Command::Peers => Ok(json!({ "ok": "peers", "peers": self.node.peers() })),
            Command::Stats => Ok(self.stats()),
            Command::Members => Ok(self.members()),
            Command::RemoveMember(name) => {
                let removed = self.node.remove_member(&name);
                Ok(json!({ "ok": "remove-member", "member": name, "removed": removed }))
            }
            Command::Inject(injection) => self.inject(injection),
            Command::KillLiveness => {
                self.faults().kill_node_level_actor();
                Ok(json!({ "ok": "kill-liveness" }))
            }
            Command::SimulateSuspend(ms) => {
                self.faults().simulate_suspension(Duration::from_millis(ms));
                Ok(json!({ "ok": "simulate-suspend" }))
            }
            Command::KillSync => match self.cache.synchronization_actor() {
                Some(actor) => {
                    actor.kill();
                    Ok(json!({ "ok": "kill-sync" }))
                }
                None => Err("no synchronization actor running".to_owned()),
            },
            Command::Quit => unreachable!("handled by the caller"),
        };
        result.unwrap_or_else(|error| json!({ "error": error }))
    }

    /// Writes the row; on any error the outcome of the commit may be unknown (the connection
    /// broke after COMMIT was sent), so the key is invalidated anyway before the error is
    /// reported: a spare invalidation costs a reload, a missing one a stale read.
    async fn write(&self, key: &str, value: String) -> Result<u64, String> {
        match self.source.put(key.to_owned(), value).await {
            Ok(version) => Ok(version),
            Err(error) => {
                let _ = self.cache.invalidate(&key.to_owned());
                Err(error.to_string())
            }
        }
    }

    async fn put(&self, key: String, value: String) -> Result<Value, String> {
        let version = self.write(&key, value).await?;
        let token = self
            .cache
            .invalidate_with_token(&key, Some(version))
            .map_err(|e| e.to_string())?;
        let token = token.to_string();
        Ok(json!({ "ok": "put", "key": key, "version": version, "token": token }))
    }

    async fn put_confirmed(&self, key: String, value: String) -> Result<Value, String> {
        let version = self.write(&key, value).await?;
        let confirmation = self
            .cache
            .invalidate_confirmed(&key, Some(version), self.confirm_timeout)
            .await
            .map_err(|e| e.to_string())?;
        Ok(json!({
            "ok": "put", "key": key, "version": version,
            "applied": confirmation.applied, "missing": confirmation.missing,
        }))
    }

    async fn burst(&self, n: u64) -> Result<Value, String> {
        let started = std::time::Instant::now();
        for i in 0..n {
            self.cache
                .invalidate(&format!("burst-{i}"))
                .map_err(|e| e.to_string())?;
            if i % 4096 == 0 {
                tokio::task::yield_now().await;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        Ok(json!({ "ok": "burst", "sent": n, "seconds": secs }))
    }

    async fn get(&self, key: String) -> Result<Value, String> {
        let lookup = self.cache.lookup(&key).await.map_err(|e| e.to_string())?;
        let (value, version) = lookup.value.unzip();
        Ok(
            json!({ "ok": "get", "key": key, "value": value, "version": version, "hit": lookup.hit }),
        )
    }

    async fn get_after(&self, token: &str, key: String) -> Result<Value, String> {
        let started = std::time::Instant::now();
        let token: ractor_cache_sync::cache::WriteToken = token
            .parse()
            .map_err(|e: ractor_cache_sync::cache::BadToken| e.to_string())?;
        let read = self.cache.get_after(&token, &key, self.lease).await;
        Self::got(key, read, started)
    }

    /// A `get` reply, plus how long the read took.
    fn got(
        key: String,
        read: ractor_cache_sync::Result<ractor_cache_sync::cache::Lookup<String>>,
        started: std::time::Instant,
    ) -> Result<Value, String> {
        let lookup = read.map_err(|e| e.to_string())?;
        let (value, version) = lookup.value.unzip();
        let waited_ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(json!({
            "ok": "get", "key": key, "value": value, "version": version, "hit": lookup.hit,
            "waited_ms": waited_ms, "age_ms": lookup.age.as_secs_f64() * 1e3,
        }))
    }

    fn members(&self) -> Value {
        let members: Vec<Value> = self
            .node
            .members()
            .iter()
            .map(|m| json!({ "name": m.name, "addr": m.addr, "state": m.state.as_str() }))
            .collect();
        json!({ "ok": "members", "members": members })
    }

    fn stats(&self) -> Value {
        let s = self.cache.stats();
        let (health, reason) = match self.cache.health() {
            Health::Healthy => ("healthy", None),
            Health::Repairing => ("repairing", None),
            Health::Bypassing { reason } => ("bypassing", Some(reason)),
            other => ("unknown", Some(other.to_string())),
        };
        let mut stats = json!({
            "ok": "stats", "health": health, "health_reason": reason,
            "entries": s.entries, "weighted_size": s.weighted_size,
            "peers": self.node.peers().len(), "name": self.node.name(),
            "incarnation": self.faults().topic_incarnation(),
            "node_incarnation": self.faults().node_incarnation(),
            "members": self.node.members().iter().filter(|m| m.state != MemberState::Left).count(),
            "liveness_restarts": self.node.liveness_restarts(),
            "handshakes_in_progress": self.node.handshakes_in_progress(),
            "tls_reloads": self.node.tls_reloads(), "tls_reload_failures": self.node.tls_reload_failures(),
            "last_remote_invalidation": self.last_remote.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        });
        // Every counter of the cache, its topic and the node, under its field name.
        let node = self.node.stats();
        for (name, _, value) in s.counters().chain(s.sync.counters()).chain(node.counters()) {
            stats[name] = value.into();
        }
        stats
    }

    fn inject(&self, injection: Injection) -> Result<Value, String> {
        let sent = match injection {
            Injection::Bytes(bytes) => {
                let len = bytes.len();
                self.faults().send_raw(bytes).map_err(|e| e.to_string())?;
                json!(len)
            }
            Injection::Block(n) => {
                let slow = self.slow.as_ref().ok_or("no --slow-topic")?;
                slow.invalidate(&format!("block-{n}"))
                    .map_err(|e| e.to_string())?;
                json!(n)
            }
            Injection::Size(n) => {
                self.faults()
                    .send_raw(vec![0xA5; n])
                    .map_err(|e| e.to_string())?;
                json!(n)
            }
            Injection::Flood(n) => {
                for i in 0..n {
                    let garbage = i.to_be_bytes().to_vec();
                    self.faults().send_raw(garbage).map_err(|e| e.to_string())?;
                }
                json!(n)
            }
            Injection::OtherTopic => {
                let envelope =
                    ractor_cache_sync::fault_injection::encode_for_peers(b"x", 1).remove(0);
                let len = envelope.len();
                self.faults()
                    .send_raw(envelope)
                    .map_err(|e| e.to_string())?;
                json!(len)
            }
            Injection::Forge(origin, incarnation, seq, key) => {
                let message = Invalidation::Keys(vec![(key, None)]);
                let payload = postcard::to_allocvec(&message).map_err(|e| e.to_string())?;
                let envelope = ractor_cache_sync::fault_injection::encode_publish(
                    &self.topic,
                    &origin,
                    incarnation,
                    seq,
                    &payload,
                );
                let len = envelope.len();
                self.faults()
                    .send_raw(envelope)
                    .map_err(|e| e.to_string())?;
                json!(len)
            }
            Injection::Impersonate(origin, incarnation) => {
                self.faults()
                    .impersonate(&origin, incarnation)
                    .map_err(|e| e.to_string())?;
                json!(0)
            }
            Injection::Leave(origin, incarnation) => {
                self.faults().forge_leave(&origin, incarnation);
                json!(0)
            }
            Injection::Gossip(count) => {
                self.faults().gossip_made_up_members(count);
                json!(count)
            }
            Injection::Foreign => {
                let group = self.cache_topic_members();
                for member in &group {
                    let actor: ractor::ActorRef<String> = member.clone().into();
                    let _ = actor.cast("not an envelope".to_owned());
                }
                json!(group.len())
            }
        };
        Ok(json!({ "ok": "inject", "sent": sent }))
    }

    fn cache_topic_members(&self) -> Vec<ractor::ActorCell> {
        ractor::pg::get_scoped_members(
            &ractor_cache_sync::fault_injection::PG_SCOPE.to_owned(),
            &self.topic,
        )
        .into_iter()
        .filter(|cell| !cell.get_id().is_local())
        .collect()
    }

    async fn quit(self) {
        // Leave the topic first, so peers drop this node's member before the session closes.
        let _ = self
            .cache
            .actor()
            .stop_and_wait(None, Some(Duration::from_secs(2)))
            .await;
        self.node.shutdown().await;
        emit(&json!({ "ok": "quit" })).await;
    }
}

/// Reads one line of at most `MAX_LINE` bytes; `None` at end of input. An over-long line is
/// skipped to its end and reported as an error, as is one that is not UTF-8.
async fn read_line(input: &mut (impl AsyncBufRead + Unpin)) -> Option<Result<String, String>> {
    let mut line = Vec::new();
    let read = input
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await;
    if read.ok()? == 0 {
        return None;
    }
    if line.len() > MAX_LINE {
        while !line.ends_with(b"\n") {
            line.clear();
            if input
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
                .ok()?
                == 0
            {
                return None;
            }
        }
        return Some(Err(format!("line longer than {MAX_LINE} bytes")));
    }
    Some(String::from_utf8(line).map_err(|_| "line is not valid UTF-8".to_owned()))
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

async fn emit(reply: &Value) {
    let mut stdout = tokio::io::stdout();
    let mut line = reply.to_string();
    line.push('\n');
    // A closed stdout means nobody listens any more; there is no one to report that to.
    let _ = stdout.write_all(line.as_bytes()).await;
    let _ = stdout.flush().await;
}

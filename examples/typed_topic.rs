//! A typed topic without a cache: nodes broadcast a message type of your own (`Event`, on
//! topic `events`) to every other node, and each node's subscriber receives it decoded.
//!
//! Run two or three processes by hand, each in its own terminal (the cookie comes from
//! `RACTOR_CACHE_SYNC_COOKIE` or `--cookie`):
//!
//! ```text
//! export RACTOR_CACHE_SYNC_COOKIE=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
//! cargo run --example typed_topic -- --name a --listen 127.0.0.1:4101
//! cargo run --example typed_topic -- --name b --listen 127.0.0.1:4102 --peer 127.0.0.1:4101
//! cargo run --example typed_topic -- --name c --listen 127.0.0.1:4103 \
//!     --peer 127.0.0.1:4101 --peer 127.0.0.1:4102
//! ```
//!
//! Then type commands, one per line; each gets one JSON line back (logs go to stderr):
//! `publish ID TENANT` (sends `Event::UserUpdated` to the other nodes), `received` (the events
//! that arrived, in order), `stats`, `peers`, `quit`.
//!
//! With `--wrong-type` the process joins the same topic name with `String` messages instead:
//! `publish 7 acme` then sends the string `"7 acme"`, which is not an encoded `Event`, so the
//! other nodes count a decode failure (`stats`) and deliver nothing. Messages carry no type
//! tag, though: a foreign type whose bytes happened to form a valid `Event` would be accepted.
//! Every node must use the same type for a topic name.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use clap::Parser;
use ractor_cache_sync::synchronization::Delivery;
use ractor_cache_sync::{Node, NodeConfig, Synchronization, Topic};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

/// What the nodes tell each other.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Event {
    UserUpdated { id: u64, tenant: String },
}

#[derive(Parser, Debug)]
#[command(about = "Broadcast a user-defined message type to the other nodes of a cluster")]
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
    /// Cluster cookie (shared secret).
    #[arg(long, env = "RACTOR_CACHE_SYNC_COOKIE", hide_env_values = true)]
    cookie: String,
    /// Join `events` with `String` messages instead of `Event`s (a misconfigured node).
    #[arg(long)]
    wrong_type: bool,
}

/// The topic handle: the right type, or the wrong one.
enum Publisher {
    Events(Synchronization<Event>),
    Strings(Synchronization<String>),
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let config = NodeConfig::new(&args.name, &args.cookie).listen(args.listen);
    let node = Node::start(args.peers.iter().fold(config, |c, p| c.peer(p))).await?;

    // Arrivals, in the order the subscriber saw them (it runs in the actor's task).
    let received = Arc::new(Mutex::new(Vec::new()));
    let publisher = if args.wrong_type {
        Publisher::Strings(Synchronization::spawn(Topic::new("events"), &node).await?)
    } else {
        let events = Synchronization::<Event>::spawn(Topic::new("events"), &node).await?;
        let log = received.clone();
        events.subscribe(move |delivery| match delivery {
            Delivery::Message {
                origin,
                message: Event::UserUpdated { id, tenant },
                ..
            } => log
                .lock()
                .unwrap()
                .push(json!({"origin": origin, "id": id, "tenant": tenant})),
            Delivery::PossiblyMissed(cause) => tracing::info!(?cause, "possibly missed events"),
            _ => {}
        })?;
        Publisher::Events(events)
    };
    println!("{}", json!({"ok": "ready"}));

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["publish", id, tenant] => match id.parse() {
                Ok(id) => publish(&publisher, id, tenant),
                Err(_) => json!({"error": "usage: publish ID TENANT (ID a number)"}),
            },
            ["received"] => {
                json!({"ok": "received", "events": *received.lock().unwrap()})
            }
            ["stats"] => stats(&publisher),
            ["peers"] => json!({"ok": "peers", "peers": node.peers()}),
            ["quit"] => break,
            _ => json!({"error": "expected publish ID TENANT, received, stats, peers or quit"}),
        };
        println!("{reply}");
    }
    node.shutdown().await;
    println!("{}", json!({"ok": "quit"}));
    Ok(())
}

fn publish(publisher: &Publisher, id: u64, tenant: &str) -> Value {
    let published = match publisher {
        Publisher::Events(events) => events.publish(&Event::UserUpdated {
            id,
            tenant: tenant.to_owned(),
        }),
        Publisher::Strings(strings) => strings.publish(&format!("{id} {tenant}")),
    };
    match published {
        Ok(()) => json!({"ok": "publish"}),
        Err(error) => json!({"error": error.to_string()}),
    }
}

fn stats(publisher: &Publisher) -> Value {
    let (stats, health) = match publisher {
        Publisher::Events(events) => (events.stats(), events.health()),
        Publisher::Strings(strings) => (strings.stats(), strings.health()),
    };
    // `peer_joins` and `health` tell when the other nodes' actors are members of the topic
    // here and heard from: from then on, what this node publishes reaches them.
    json!({
        "ok": "stats",
        "published": stats.published,
        "received": stats.received,
        "decode_failures": stats.decode_failures,
        "peer_joins": stats.peer_joins,
        "health": health.to_string(),
    })
}

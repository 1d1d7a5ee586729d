//! The crate as a web service's cache invalidation layer: an axum service whose replicas share
//! one SQLite database and keep their in-memory caches of it in sync.
//!
//! - `GET /users/{id}` reads through the cache:
//!   `200 {"id":1,"name":"ada","version":2,"hit":true,"waited_ms":0.0}`, `404` if there is no
//!   such user, `400` if the id is not a number.
//! - `PUT /users/{id}` with `{"name":"..."}` commits the row (the table's triggers give it a
//!   new version, `ractor_cache_sync_sqlite`), then invalidates the key on every replica:
//!   `200 {"id":1,"name":"ada","version":3,"token":"wt1.…"}`. Commit and invalidation run
//!   together on a task of their own (`Cache::write_through_with_token`): a client that hangs
//!   up mid-commit cannot skip the invalidation, and this replica keeps the new name.
//! - **Read your writes on any replica**: a PUT's reply carries a write token, in the body, in
//!   the `X-Write-Token` header and in a `write_token` cookie (combined with the token of the
//!   session's earlier writes). A GET that sends it back (the header, or the cookie) is answered
//!   only once this replica has applied those writes — typically one network hop after them —
//!   or, if that takes longer than a second, from the database; `waited_ms` says how long it
//!   waited. Behind a load balancer, the PUT and the next GET may land on different replicas:
//!   the GET still sees the PUT.
//! - `GET /health` says whether this replica serves from its cache: `healthy`, `repairing` or
//!   `bypassing: REASON`.
//! - `GET /stats` gives the cache's counters as JSON, each under its field name
//!   (`{"hits":12,"source_calls":3,...}`).
//!
//! Three replicas by hand, in three terminals (Ctrl-C or end of input stops one):
//!
//! ```text
//! export RACTOR_CACHE_SYNC_COOKIE=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
//! cargo run --example web_service -- --db /tmp/users.db --http 127.0.0.1:8081 \
//!     --name a --listen 127.0.0.1:4201
//! cargo run --example web_service -- --db /tmp/users.db --http 127.0.0.1:8082 \
//!     --name b --listen 127.0.0.1:4202 --peer 127.0.0.1:4201
//! cargo run --example web_service -- --db /tmp/users.db --http 127.0.0.1:8083 \
//!     --name c --listen 127.0.0.1:4203 --peer 127.0.0.1:4201 --peer 127.0.0.1:4202
//! ```
//!
//! and in a fourth:
//!
//! ```text
//! curl -X PUT -H 'content-type: application/json' -d '{"name":"ada"}' localhost:8081/users/1
//! curl localhost:8082/users/1    # a miss: b loads it from SQLite
//! curl localhost:8082/users/1    # a hit: served from b's heap
//! curl -X PUT -H 'content-type: application/json' -d '{"name":"grace"}' localhost:8083/users/1
//! curl localhost:8082/users/1    # b dropped its copy when c committed: "grace"
//! curl localhost:8082/health
//! ```
//!
//! With `--change-feed`, each replica follows the table's change log
//! (`ractor_cache_sync_sqlite`): a user renamed straight in SQLite — a SQL session, a
//! migration, another service — is served renamed by every replica within milliseconds.
//!
//! Once serving, it prints `{"ok":"ready","http":"ADDR"}` on stdout; logs go to stderr.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use ractor_cache_sync::cache::WriteToken;
use ractor_cache_sync::{Cache, Error, Node, NodeConfig, Topic};
use ractor_cache_sync_sqlite::{SqliteSource, Table};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(about = "A web service replica whose user cache stays in sync with the others")]
struct Args {
    /// This replica's name, unique in the cluster (peers see it as NAME@HOST).
    #[arg(long)]
    name: String,
    /// Address to listen on for the other replicas (the cluster).
    #[arg(long)]
    listen: SocketAddr,
    /// Address to serve HTTP on.
    #[arg(long)]
    http: SocketAddr,
    /// Another replica's cluster address (repeatable).
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// The SQLite file all replicas share (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Dial only the `--peer` addresses, not members learnt from gossip (for clusters whose
    /// links go through a proxy).
    #[arg(long)]
    no_gossip_dial: bool,
    /// Cluster cookie (shared secret).
    #[arg(long, env = "RACTOR_CACHE_SYNC_COOKIE", hide_env_values = true)]
    cookie: String,
    /// Follow the database's committed changes: a user renamed straight in SQLite (a SQL
    /// session, a migration, another service) is served renamed by every replica within
    /// milliseconds, and while the feed is current the database vouches for the cache.
    #[arg(long)]
    change_feed: bool,
}

#[derive(Clone)]
struct App {
    users: Arc<SqliteSource<u64>>,
    cache: Cache<u64, String>,
}

#[derive(Deserialize)]
struct Rename {
    name: String,
}

/// How long a GET waits for the writes its token names before it reads the database.
const TOKEN_WAIT: Duration = Duration::from_secs(1);

/// The write token a request carries: the `X-Write-Token` header and the `write_token`
/// cookie, combined. Garbage counts as none.
fn token_of(headers: &HeaderMap) -> Option<WriteToken> {
    let header = headers
        .get_all("x-write-token")
        .iter()
        .filter_map(|value| value.to_str().ok());
    let cookies = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("write_token="));
    let mut tokens = header
        .chain(cookies)
        .filter_map(|text| text.parse::<WriteToken>().ok());
    let mut combined = tokens.next()?;
    for token in tokens {
        combined.combine(&token);
    }
    Some(combined)
}

async fn get_user(
    State(app): State<App>,
    Path(id): Path<u64>,
    headers: HeaderMap,
) -> Result<Response, Internal> {
    let started = Instant::now();
    let lookup = match token_of(&headers) {
        // Once this replica has applied the writes the token names; past the wait, from the
        // database (never an answer older than those writes).
        Some(token) => match app.cache.get_after(&token, &id, TOKEN_WAIT).await {
            Err(Error::Timeout(_) | Error::Config(_)) => {
                app.cache.get_within(&id, Duration::ZERO).await?
            }
            read => read?,
        },
        None => app.cache.lookup(&id).await?,
    };
    let waited_ms = started.elapsed().as_secs_f64() * 1e3;
    let Some((name, version)) = lookup.value else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let user = json!({
        "id": id, "name": name, "version": version, "hit": lookup.hit, "waited_ms": waited_ms,
    });
    Ok(Json(user).into_response())
}

async fn put_user(
    State(app): State<App>,
    Path(id): Path<u64>,
    headers: HeaderMap,
    Json(body): Json<Rename>,
) -> Result<Response, Internal> {
    let (users, name) = (app.users.clone(), body.name.clone());
    // Once committed, every replica drops what it holds of an older version, even if this
    // handler is dropped first (its client hung up while the commit waited for a lock).
    let commit = async move {
        let version = users.put(id, name.clone()).await?;
        Ok::<_, Error>((version, name, version))
    };
    // This replica keeps the new name (its next GET is a hit); the token is for the others.
    let (version, token) = app.cache.write_through_with_token(id, commit).await?;
    // The session's token: this write and the earlier ones its cookie named.
    let mut session = token.clone();
    if let Some(earlier) = token_of(&headers) {
        let mut combined = earlier;
        if combined.combine(&token) {
            session = combined;
        }
    }
    let user = json!({"id": id, "name": body.name, "version": version, "token": token.to_string()});
    let cookie = format!("write_token={session}; Path=/; HttpOnly; SameSite=Lax");
    let headers = [
        (
            header::HeaderName::from_static("x-write-token"),
            token.to_string(),
        ),
        (header::SET_COOKIE, cookie),
    ];
    Ok((headers, Json(user)).into_response())
}

async fn health(State(app): State<App>) -> String {
    app.cache.health().to_string()
}

async fn stats(State(app): State<App>) -> Json<Value> {
    let stats = app.cache.stats();
    let counters = stats.counters().chain(stats.sync.counters());
    let counters = counters.map(|(name, _, value)| (name.to_owned(), Value::from(value)));
    Json(Value::Object(counters.collect()))
}

/// A failed load, commit or invalidation: `500` with the error.
struct Internal(Error);

impl From<Error> for Internal {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl IntoResponse for Internal {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, self.0.to_string()).into_response()
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    // The table `users(id INTEGER, name TEXT, version INTEGER)`: its triggers version every
    // write, also those made outside the service; bulk `load_many` and `versions`.
    let table = Table::new("users")
        .key_column("id", "INTEGER")
        .value_column("name");
    let users = Arc::new(SqliteSource::<u64>::open_table(&args.db, table)?);
    let config = NodeConfig::new(&args.name, &args.cookie)
        .listen(args.listen)
        .dial_gossiped(!args.no_gossip_dial);
    let node = Node::start(args.peers.iter().fold(config, |c, p| c.peer(p))).await?;
    let mut builder = Cache::builder(Topic::new("users"), users.clone());
    if args.change_feed {
        builder = builder.change_feed(users.change_feed(Default::default()).await?);
    }
    let cache = builder.spawn(&node).await?;

    let app = App {
        users,
        cache: cache.clone(),
    };
    let router = Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/health", get(health))
        .route("/stats", get(stats))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(args.http).await?;
    let http = listener.local_addr()?.to_string();
    println!("{}", json!({"ok": "ready", "http": http}));
    axum::serve(listener, router)
        .with_graceful_shutdown(stopped())
        .await?;

    // Leave the topic first, so the other replicas drop this one at once.
    let _ = cache
        .actor()
        .stop_and_wait(None, Some(Duration::from_secs(2)))
        .await;
    node.shutdown().await;
    Ok(())
}

/// Ctrl-C, or the end of standard input (the parent process is gone).
async fn stopped() {
    let (mut stdin, mut sink) = (tokio::io::stdin(), tokio::io::sink());
    let end_of_input = tokio::io::copy(&mut stdin, &mut sink);
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = end_of_input => {}
    }
}

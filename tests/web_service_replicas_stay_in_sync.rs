//! Three replicas of `examples/web_service.rs` over one SQLite file: a user written through
//! any replica is served by the others, from their caches once loaded, and a rename through
//! one replica replaces the old name on every other within the deadline.
//!
//! HTTP/1.1 is spoken by hand over `std::net::TcpStream` (one request per connection), so the
//! test needs no HTTP client crate.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ractor_cache_sync_testkit::process::example_binary;
use ractor_cache_sync_testkit::{eventually, free_port, NodeProcess, NodeSpec};
use serde_json::Value;

/// Generous: a liveness bound for a loaded 2-core machine, not a performance claim.
const DEADLINE: Duration = Duration::from_secs(20);

/// One HTTP response.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    /// The first value of header `name` (lower case).
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{self:?} is not JSON: {e}"))
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Reply> {
    http_with(addr, method, path, body, &[])
}

/// As [`http`], with extra request headers.
fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    extra: &[(&str, &str)],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in extra {
        request += &format!("{name}: {value}\r\n");
    }
    if let Some(body) = body {
        request += "Content-Type: application/json\r\n";
        request += &format!("Content-Length: {}\r\n\r\n{body}", body.len());
    } else {
        request += "\r\n";
    }
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    parse(&String::from_utf8_lossy(&response))
        .ok_or_else(|| std::io::Error::other(format!("malformed response {response:?}")))
}

/// Status line, headers, and a body of `Content-Length` bytes or in chunks.
fn parse(response: &str) -> Option<Reply> {
    let (head, rest) = response.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()?
        .strip_prefix("HTTP/1.1 ")?
        .get(..3)?
        .parse()
        .ok()?;
    let headers: Vec<(String, String)> = lines
        .map(|line| line.split_once(':'))
        .map(|pair| pair.map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned())))
        .collect::<Option<_>>()?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding") == Some("chunked") {
        unchunk(rest)?
    } else {
        let length = header("content-length").map_or(Some(rest.len()), |v| v.parse().ok())?;
        rest.get(..length)?.to_owned()
    };
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn unchunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body += after.get(..size)?;
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// A running replica and its HTTP address.
struct Replica {
    name: String,
    http: SocketAddr,
    process: NodeProcess,
}

impl Replica {
    fn start(spec: NodeSpec) -> Self {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let spec = spec
            .program(example_binary("web_service"))
            .arg("--http")
            .arg(&http.to_string());
        let process =
            NodeProcess::start(&spec).unwrap_or_else(|e| panic!("starting {}: {e}", spec.name));
        Self {
            name: spec.name,
            http,
            process,
        }
    }

    fn request(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        http(self.http, method, path, body)
            .unwrap_or_else(|e| panic!("{} {method} {path}: {e}", self.name))
    }

    /// `GET /users/{id}`, which must succeed: (name, version, hit).
    fn user(&self, id: u64) -> (String, u64, bool) {
        let reply = self.request("GET", &format!("/users/{id}"), None);
        assert_eq!(reply.status, 200, "{}: {reply:?}", self.name);
        let user = reply.json();
        assert_eq!(user["id"], id, "{}: {user}", self.name);
        match (
            user["name"].as_str(),
            user["version"].as_u64(),
            user["hit"].as_bool(),
        ) {
            (Some(name), Some(version), Some(hit)) => (name.to_owned(), version, hit),
            _ => panic!("{}: malformed user {user}", self.name),
        }
    }

    /// `PUT /users/{id}`, returning the committed version.
    fn put(&self, id: u64, name: &str) -> u64 {
        let body = serde_json::json!({ "name": name }).to_string();
        let reply = self.request("PUT", &format!("/users/{id}"), Some(&body));
        assert_eq!(reply.status, 200, "{}: {reply:?}", self.name);
        let put = reply.json();
        assert_eq!(
            (put["id"].as_u64(), put["name"].as_str()),
            (Some(id), Some(name))
        );
        put["version"]
            .as_u64()
            .unwrap_or_else(|| panic!("no version in {put}"))
    }

    fn wait_until_healthy(&self) {
        let mut last = None;
        eventually(DEADLINE, || {
            let reply = http(self.http, "GET", "/health", None).ok()?;
            let healthy = reply.status == 200 && reply.body == "healthy";
            last = Some(reply);
            healthy.then_some(())
        })
        .unwrap_or_else(|| panic!("{} never became healthy: {last:?}", self.name));
    }
}

#[test]
fn a_write_through_any_replica_is_served_by_every_other() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("users.db");
    let a = NodeSpec::new("a", &db);
    let b = NodeSpec::new("b", &db).peer(&a);
    let c = NodeSpec::new("c", &db).peer(&a).peer(&b);
    let replicas: Vec<Replica> = [a, b, c].into_iter().map(Replica::start).collect();
    for replica in &replicas {
        replica.wait_until_healthy();
    }
    let [a, b, c] = &replicas[..] else {
        unreachable!()
    };

    let first = a.put(1, "ada");
    for replica in [b, c] {
        assert_eq!(
            replica.user(1),
            ("ada".to_owned(), first, false),
            "{} loads",
            replica.name
        );
        // A hit from now on, once nothing (a peer's join, a lease renewal) stands in the way.
        eventually(DEADLINE, || {
            let (name, version, hit) = replica.user(1);
            assert_eq!((name.as_str(), version), ("ada", first), "{}", replica.name);
            hit.then_some(())
        })
        .unwrap_or_else(|| panic!("{} never served user 1 from its cache", replica.name));
    }

    let second = c.put(1, "grace");
    assert!(second > first, "versions go up: {first} then {second}");
    let (name, version, _) = c.user(1);
    assert_eq!(
        (name.as_str(), version),
        ("grace", second),
        "the writer reads its write"
    );
    for replica in [a, b] {
        // The new name is visible on c: no other replica may serve the old one for longer
        // than the deadline.
        eventually(DEADLINE, || {
            let (name, version, _) = replica.user(1);
            (name == "grace" && version == second).then_some(())
        })
        .unwrap_or_else(|| panic!("{} still serves {:?}", replica.name, replica.user(1)));
    }
    // And none goes back to the old name.
    for replica in &replicas {
        for _ in 0..5 {
            let (name, version, _) = replica.user(1);
            assert_eq!(
                (name.as_str(), version),
                ("grace", second),
                "{}",
                replica.name
            );
        }
    }

    for replica in &replicas {
        let unknown = replica.request("GET", "/users/404", None);
        assert_eq!(unknown.status, 404, "{}: {unknown:?}", replica.name);
        let not_a_number = replica.request("GET", "/users/ada", None);
        assert_eq!(
            not_a_number.status, 400,
            "{}: {not_a_number:?}",
            replica.name
        );
    }
}

#[test]
fn a_put_whose_client_hangs_up_mid_commit_still_reaches_every_replica() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("users.db");
    let a = NodeSpec::new("a", &db);
    let b = NodeSpec::new("b", &db).peer(&a);
    let replicas: Vec<Replica> = [a, b].into_iter().map(Replica::start).collect();
    for replica in &replicas {
        replica.wait_until_healthy();
    }
    let [a, b] = &replicas[..] else {
        unreachable!()
    };
    let first = a.put(1, "ada");
    for replica in [a, b] {
        eventually(DEADLINE, || {
            let (name, version, hit) = replica.user(1);
            assert_eq!((name.as_str(), version), ("ada", first), "{}", replica.name);
            hit.then_some(())
        })
        .unwrap_or_else(|| panic!("{} never served user 1 from its cache", replica.name));
    }

    // Another writer's long transaction holds the database's write lock...
    let holder = rusqlite::Connection::open(&db).expect("open the database");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    // ...while a client sends a rename through a and hangs up before the reply.
    let mut client = TcpStream::connect_timeout(&a.http, Duration::from_secs(5)).expect("connect");
    let body = r#"{"name":"grace"}"#;
    let request = format!(
        "PUT /users/1 HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        a.http,
        body.len()
    );
    client.write_all(request.as_bytes()).expect("send the PUT");
    // No reply while the lock is held: the handler is in its commit, waiting for the lock.
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("read timeout");
    let mut early = [0u8; 1];
    match client.read(&mut early) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("the PUT was answered while the write lock was held: {other:?}"),
    }
    client
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    client.shutdown(std::net::Shutdown::Write).expect("hang up");
    // The server closes a connection whose client hung up mid-request: no reply means the
    // handler was dropped while its commit waited for the lock.
    let mut reply = Vec::new();
    client.read_to_end(&mut reply).expect("the server closes");
    assert!(
        reply.is_empty(),
        "the PUT was answered while the write lock was held: {}",
        String::from_utf8_lossy(&reply)
    );
    drop(holder); // the other writer rolls back: the rename commits now

    let committed = std::time::Instant::now();
    let check = rusqlite::Connection::open(&db).expect("open the database");
    let row = || -> Option<(String, u64)> {
        check
            .query_row("SELECT name, version FROM users WHERE id = 1", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .ok()
    };
    let second = eventually(DEADLINE, || match row() {
        Some((name, version)) if name == "grace" => Some(version),
        _ => None,
    })
    .unwrap_or_else(|| panic!("the rename never committed: {:?}", row()));
    for replica in [a, b] {
        eventually(DEADLINE, || {
            let (name, version, _) = replica.user(1);
            (name == "grace" && version == second).then_some(())
        })
        .unwrap_or_else(|| panic!("{} still serves {:?}", replica.name, replica.user(1)));
        eprintln!(
            "{} serves the rename {:?} after it committed",
            replica.name,
            committed.elapsed()
        );
    }
}

/// With a replica SIGKILLed, the survivor cannot hear its invalidations any more: it checks
/// its entries against SQLite in bulk (the example's `versions`, one statement per chunk)
/// every half lease and serves what the checks vouch for, so unchanged users stay hits and a
/// row changed straight in the database is served within the lease.
#[test]
fn with_a_replica_killed_the_bulk_checks_keep_hits_and_catch_outside_writes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("users.db");
    let a = NodeSpec::new("a", &db);
    let b = NodeSpec::new("b", &db).peer(&a);
    let mut replicas: Vec<Replica> = [a, b].into_iter().map(Replica::start).collect();
    for replica in &replicas {
        replica.wait_until_healthy();
    }
    let users: Vec<u64> = (1..=40).collect();
    let mut versions = Vec::new();
    for &id in &users {
        versions.push(replicas[0].put(id, &format!("user {id}")));
    }
    let b = replicas.pop().expect("b");
    let a = replicas.pop().expect("a");
    let all_hits = |b: &Replica| {
        users.iter().zip(&versions).all(|(&id, &version)| {
            let (name, served, hit) = b.user(id);
            assert_eq!(
                (name, served),
                (format!("user {id}"), version),
                "b: user {id}"
            );
            hit
        })
    };
    eventually(DEADLINE, || all_hits(&b).then_some(()))
        .expect("b never served every user from its cache");
    let stat = |b: &Replica, name: &str| {
        let stats = b.request("GET", "/stats", None).json();
        stats[name]
            .as_u64()
            .unwrap_or_else(|| panic!("no {name} in {stats}"))
    };
    let (passes, calls) = (stat(&b, "revalidations"), stat(&b, "source_calls"));

    a.process.kill();
    // A row changed where no replica sees it.
    let outside = rusqlite::Connection::open(&db).expect("open the database");
    outside
        .execute(
            "UPDATE users SET name = 'renamed', version = version + 1 WHERE id = 7",
            [],
        )
        .expect("update");
    let written = std::time::Instant::now();
    eventually(DEADLINE, || (b.user(7).0 == "renamed").then_some(()))
        .unwrap_or_else(|| panic!("b still serves {:?}", b.user(7)));
    eprintln!(
        "b serves the outside write {:?} after it",
        written.elapsed()
    );
    // The others, checked and unchanged, are hits again (not loads on every read).
    let others: Vec<(u64, u64)> = users
        .iter()
        .copied()
        .zip(versions.iter().copied())
        .filter(|&(id, _)| id != 7)
        .collect();
    eventually(DEADLINE, || {
        others
            .iter()
            .all(|&(id, version)| {
                let (name, served, hit) = b.user(id);
                assert_eq!(
                    (name, served),
                    (format!("user {id}"), version),
                    "b: user {id}"
                );
                hit
            })
            .then_some(())
    })
    .expect("b no longer serves unchanged users from its cache with a replica down");
    // Each check of the 40 entries is one statement (`versions`), not one load per key: the
    // source calls are the passes plus the reloads of user 7 (once per pass at most).
    let (passes, calls) = (
        stat(&b, "revalidations") - passes,
        stat(&b, "source_calls") - calls,
    );
    assert!(passes > 0, "no check ran with a replica down");
    assert!(
        calls <= 2 * passes + 2,
        "{calls} source calls for {passes} checks of 40 entries: not bulk"
    );
    eprintln!("{passes} checks of 40 entries took {calls} source calls");
}

/// Read-your-writes across replicas: a PUT through a, then at once a GET through b carrying
/// the PUT's write token (the header, or the cookie the PUT set): b answers only once it has
/// applied the write, so the GET never returns the old name.
#[test]
fn a_get_with_the_put_s_token_sees_the_put_on_another_replica() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("users.db");
    let a = NodeSpec::new("a", &db);
    let b = NodeSpec::new("b", &db).peer(&a);
    let replicas: Vec<Replica> = [a, b].into_iter().map(Replica::start).collect();
    for replica in &replicas {
        replica.wait_until_healthy();
    }
    let [a, b] = &replicas[..] else {
        unreachable!()
    };
    a.put(1, "n0");
    eventually(DEADLINE, || b.user(1).2.then_some(())).expect("b never cached user 1");

    let mut waited = Vec::new();
    for round in 1..=30 {
        let name = format!("n{round}");
        let body = serde_json::json!({ "name": name }).to_string();
        let put = a.request("PUT", "/users/1", Some(&body));
        assert_eq!(put.status, 200, "{put:?}");
        let token = put.json()["token"].as_str().expect("a token").to_owned();
        assert_eq!(put.header("x-write-token"), Some(token.as_str()));
        let cookie = put
            .header("set-cookie")
            .and_then(|c| c.split(';').next())
            .expect("a cookie")
            .to_owned();
        assert!(cookie.starts_with("write_token="), "{cookie}");
        // The header on even rounds, the cookie on odd ones.
        let carried = if round % 2 == 0 {
            ("X-Write-Token", token.as_str())
        } else {
            ("Cookie", cookie.as_str())
        };
        let get = http_with(b.http, "GET", "/users/1", None, &[carried]).expect("GET");
        assert_eq!(get.status, 200, "{get:?}");
        let user = get.json();
        assert_eq!(
            user["name"], name,
            "round {round}: b answered a GET carrying the PUT's token with {user}"
        );
        waited.push(user["waited_ms"].as_f64().expect("waited_ms"));
    }
    waited.sort_by(f64::total_cmp);
    eprintln!(
        "GETs with the PUT's token on the other replica: 30 of 30 fresh, waited {:.2} ms median, {:.2} ms at most",
        waited[waited.len() / 2],
        waited[waited.len() - 1]
    );
}

/// The same through a link that holds back every write from a to b for 150 ms: a GET right
/// after the PUT without the token serves the old name (within the lease), with the token it
/// waits for the write and never does.
#[test]
fn through_a_held_back_link_a_get_with_the_token_waits_and_one_without_does_not() {
    use ractor_cache_sync_testkit::proxy::{Dir, FaultProxy};
    const HOLD: Duration = Duration::from_millis(150);
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("users.db");
    let a = NodeSpec::new("a", &db).arg("--no-gossip-dial");
    let proxy = FaultProxy::start(a.listen);
    let mut b = NodeSpec::new("b", &db).arg("--no-gossip-dial");
    b.peers.push(proxy.addr());
    let replicas: Vec<Replica> = [a, b].into_iter().map(Replica::start).collect();
    for replica in &replicas {
        replica.wait_until_healthy();
    }
    let [a, b] = &replicas[..] else {
        unreachable!()
    };
    a.put(1, "n0");
    eventually(DEADLINE, || b.user(1).2.then_some(())).expect("b never cached user 1");

    let (mut stale, mut waited) = (0, Vec::new());
    for round in 1..=10 {
        proxy.stall(Dir::ToDialer, true);
        let name = format!("n{round}");
        let body = serde_json::json!({ "name": name }).to_string();
        let put = a.request("PUT", "/users/1", Some(&body));
        assert_eq!(put.status, 200, "{put:?}");
        let token = put.json()["token"].as_str().expect("a token").to_owned();
        if b.user(1).0 != name {
            stale += 1; // allowed: within the lease
        }
        let get = std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(HOLD); // the link's delay, not a synchronisation
                proxy.stall(Dir::ToDialer, false);
            });
            http_with(
                b.http,
                "GET",
                "/users/1",
                None,
                &[("X-Write-Token", &token)],
            )
            .expect("GET")
        });
        let user = get.json();
        assert_eq!(
            user["name"], name,
            "round {round}: with the token, b answered {user}"
        );
        waited.push(user["waited_ms"].as_f64().expect("waited_ms"));
        eventually(DEADLINE, || {
            (b.user(1) == (name.clone(), user["version"].as_u64().unwrap(), true)).then_some(())
        })
        .expect("b never cached the new name");
    }
    waited.sort_by(f64::total_cmp);
    eprintln!(
        "10 PUTs held back {HOLD:?}: GETs without the token served the old name {stale} times, with it never, waiting {:.1} ms median",
        waited[waited.len() / 2]
    );
    assert!(stale > 0, "the held-back link never showed");
}

/// With `--change-feed`, a user renamed straight in SQLite (a SQL session: no replica hears of
/// it, and nothing polls) is served renamed by every replica within milliseconds; without it,
/// a replica keeps serving the old name from its cache.
#[test]
fn with_the_change_feed_a_rename_made_straight_in_the_database_reaches_every_replica() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = dir.path().join("users.db");
    let a = NodeSpec::new("a", &db).arg("--change-feed");
    let b = NodeSpec::new("b", &db).peer(&a).arg("--change-feed");
    let c = NodeSpec::new("c", &db).peer(&a).peer(&b);
    let replicas: Vec<Replica> = [a, b, c].into_iter().map(Replica::start).collect();
    for replica in &replicas {
        replica.wait_until_healthy();
    }
    let mut took = Vec::new();
    let outside = rusqlite::Connection::open(&db).expect("open the database");
    outside
        .busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    replicas[0].put(1, "name 0");
    for round in 1..=10 {
        let old = format!("name {}", round - 1);
        for replica in &replicas {
            eventually(DEADLINE, || {
                let (name, _, hit) = replica.user(1);
                (name == old && hit).then_some(())
            })
            .unwrap_or_else(|| panic!("{} never cached {old}", replica.name));
        }
        let fresh = format!("name {round}");
        outside
            .execute("UPDATE users SET name = ?1 WHERE id = 1", [&fresh])
            .expect("update");
        let committed = Instant::now();
        for replica in &replicas[..2] {
            let served = eventually(DEADLINE, || (replica.user(1).0 == fresh).then_some(()));
            served.unwrap_or_else(|| panic!("{} never served {fresh}", replica.name));
            took.push(committed.elapsed());
            assert!(
                committed.elapsed() < Duration::from_secs(1),
                "past the lease"
            );
        }
        // c follows no feed and no replica wrote: its cache still vouches for the old name.
        let (name, _, hit) = replicas[2].user(1);
        assert_eq!((name.as_str(), hit), (old.as_str(), true), "c");
        // c catches up the way it would without a feed: a write through the service.
        replicas[2].put(1, &fresh);
    }
    took.sort();
    eprintln!(
        "replicas following the feed served a rename made straight in SQLite {:?} after it (median of {}), {:?} at worst",
        took[took.len() / 2],
        took.len(),
        took[took.len() - 1]
    );
}

//! A node started with `--metrics-addr` serves Prometheus metrics whose counters follow what
//! the cache does.

#[path = "support/cluster.rs"]
mod cluster;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use cluster::{eventually, put, Cluster, DEADLINE};

fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(body)
}

fn value(body: &str, series: &str) -> Option<f64> {
    let line = body.lines().find(|l| l.starts_with(series))?;
    line.rsplit(' ').next()?.parse().ok()
}

#[test]
fn prometheus_counters_move_with_the_cache() {
    let cluster = Cluster::new();
    let metrics: SocketAddr = format!("127.0.0.1:{}", cluster::free_port())
        .parse()
        .unwrap();
    let mut specs = cluster.mesh_specs(&["a", "b"]);
    specs[1] = specs[1]
        .clone()
        .arg("--metrics-addr")
        .arg(&metrics.to_string());
    let mut nodes = cluster.start_mesh(&specs);
    put(&mut nodes[0], "k", "v1");
    let hits = r#"ractor_cache_sync_hits_total{topic="kv"}"#;
    let mut last = None;
    let seen = eventually(DEADLINE, || {
        // Reads are hits only while b's lease from a is valid, which takes a heartbeat or two
        // after the mesh forms: keep reading until the scrape shows them.
        for _ in 0..5 {
            nodes[1].value("k");
        }
        let body = scrape(metrics)?;
        last = Some(body.clone());
        let moved = value(&body, hits)? >= 4.0
            && value(&body, r#"ractor_cache_sync_loads_total{topic="kv"}"#)? >= 1.0
            && value(&body, "ractor_cache_sync_peers_up")? == 1.0;
        moved.then_some(body)
    });
    let body = seen.unwrap_or_else(|| {
        panic!(
            "the counters never showed the reads; last scrape: {last:?}; b: {}",
            nodes[1].ask("stats")
        )
    });
    assert!(body.contains("ractor_cache_sync_health"), "{body}");
    put(&mut nodes[0], "k", "v2");
    let applied = eventually(DEADLINE, || {
        let body = scrape(metrics)?;
        (value(
            &body,
            r#"ractor_cache_sync_invalidations_applied_total{topic="kv"}"#,
        )? >= 1.0)
            .then_some(())
    });
    assert!(applied.is_some(), "applied invalidations never showed");
}

//! Three node processes over a real PostgreSQL server as the shared source of truth.
//!
//! Needs a server: `.ci/run` installs and starts one (`.ci/postgres.sh`) and runs this test with
//! `RCS_TEST_POSTGRES_URL` set. Locally:
//! `RCS_TEST_POSTGRES_URL=$(bash .ci/postgres.sh) cargo test --test postgres_source_cluster -- --ignored`

#[path = "support/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{cache, postgres_directly, put, served_within, wait_for_value, Cluster};

#[test]
#[ignore = "needs a PostgreSQL server: set RCS_TEST_POSTGRES_URL (see .ci/postgres.sh) and pass --ignored"]
fn a_put_through_postgres_reaches_every_node() {
    let cluster = Cluster::new();
    let mut nodes = cluster.start_postgres_mesh(&["a", "b", "c"]);
    // The database outlives test runs: a fresh key each run.
    let key = format!("pg-{}", std::process::id());
    let first = put(&mut nodes[0], &key, "one");
    // Versions carry the server's timeline (1 or more) above bit 40: those written after a
    // failover (a higher timeline) are higher than any written before it.
    assert!(first >> 40 >= 1, "version {first} carries no timeline");
    for node in &mut nodes {
        assert_eq!(node.value(&key).as_deref(), Some("one"));
    }
    assert!(
        put(&mut nodes[1], &key, "two") > first,
        "versions went backwards"
    );
    for node in [0, 2] {
        wait_for_value(&mut nodes[node], &key, "two");
    }
    put(&mut nodes[2], &key, "three");
    for node in [0, 1] {
        wait_for_value(&mut nodes[node], &key, "three");
    }
    let hit = nodes[0].ask(&format!("get {key}"));
    assert_eq!(
        (hit["value"].as_str(), hit["hit"].as_bool()),
        (Some("three"), Some(true))
    );
}

#[test]
#[ignore = "needs a PostgreSQL server: set RCS_TEST_POSTGRES_URL (see .ci/postgres.sh) and pass --ignored"]
fn with_the_change_feed_rows_updated_straight_in_postgres_are_served_everywhere_within_milliseconds(
) {
    const LEASE: Duration = Duration::from_secs(1);
    let cluster = Cluster::new();
    let mut nodes = cluster.start_postgres_mesh_with(&["a", "b", "c"], &["--change-feed"]);
    let key = format!("pg-feed-{}", std::process::id());
    put(&mut nodes[0], &key, "v0");
    let mut took = Vec::new();
    for round in 1..=20 {
        for node in &mut nodes {
            cache(node, &key, &format!("v{}", round - 1));
        }
        // A SQL session: no node hears of it, and no --revalidate-every-ms.
        let changed = postgres_directly(&format!(
            "UPDATE kv SET value = 'v{round}' WHERE key = '{key}'"
        ));
        assert_eq!(changed, 1);
        let committed = Instant::now();
        for node in &mut nodes {
            took.push(served_within(
                node,
                &key,
                &format!("v{round}"),
                committed,
                LEASE,
            ));
        }
    }
    took.sort();
    println!(
        "a row updated straight in PostgreSQL was served after {:?} (median of {}), {:?} at worst",
        took[took.len() / 2],
        took.len(),
        took[took.len() - 1]
    );

    // A bulk update of more rows than are notified one by one: one "check everything".
    let prefix = format!("pg-bulk-{}-", std::process::id());
    postgres_directly(&format!(
        "INSERT INTO kv (key, value, version)
         SELECT '{prefix}' || i, 'old', 0 FROM generate_series(1, 20000) AS i"
    ));
    let bulk_key = format!("{prefix}7");
    for node in &mut nodes {
        cache(node, &bulk_key, "old");
    }
    let repairs: Vec<u64> = nodes.iter_mut().map(|n| n.stat("feed_repairs")).collect();
    let changed = postgres_directly(&format!(
        "UPDATE kv SET value = 'new' WHERE key LIKE '{prefix}%'"
    ));
    assert_eq!(changed, 20_000);
    let committed = Instant::now();
    for (node, before) in nodes.iter_mut().zip(repairs) {
        let took = served_within(node, &bulk_key, "new", committed, LEASE);
        println!(
            "{} served a bulk update of 20 000 rows {took:?} after it",
            node.spec.name
        );
        assert!(
            node.stat("feed_repairs") > before,
            "the bulk update was not a repair"
        );
    }
    postgres_directly(&format!("DELETE FROM kv WHERE key LIKE '{prefix}%'"));
}

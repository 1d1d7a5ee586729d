//! Three node processes over a real PostgreSQL server as the shared source of truth.
//!
//! Needs a server: `.ci/run` installs and starts one (`.ci/postgres.sh`) and runs this test with
//! `RCS_TEST_POSTGRES_URL` set. Locally:
//! `RCS_TEST_POSTGRES_URL=$(bash .ci/postgres.sh) cargo test --test postgres_source_cluster -- --ignored`

#[path = "support/cluster.rs"]
mod cluster;

use cluster::{put, wait_for_value, Cluster};

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

//! The PostgreSQL source and its change feed against a real server, each test on a table of
//! its own. Needs a server: `.ci/run` starts one (`.ci/postgres.sh`) and runs these with
//! `RCS_TEST_POSTGRES_URL` set. Locally:
//! `RCS_TEST_POSTGRES_URL=$(bash .ci/postgres.sh) cargo test -p ractor_cache_sync_postgres -- --ignored`

use std::time::Duration;

use ractor_cache_sync::cache::{ChangeFeed, FeedEvent, Stamp};
use ractor_cache_sync_postgres::{FeedSettings, PostgresFeed, PostgresSource};

fn url() -> String {
    std::env::var("RCS_TEST_POSTGRES_URL").expect("RCS_TEST_POSTGRES_URL is set")
}

/// A table name of this test run's own, padded to `len` bytes.
fn table(tag: &str, len: usize) -> String {
    let mut name = format!("t_{tag}_{}_", std::process::id());
    while name.len() < len {
        name.push('x');
    }
    name
}

/// Runs `sql` as a plain SQL session would: no feed, no cache.
async fn sql(statement: &str) -> u64 {
    let (client, connection) = tokio_postgres::connect(&url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    let driver = tokio::spawn(connection);
    let n = client
        .execute(statement, &[])
        .await
        .expect("run the statement");
    drop(client);
    let _ = driver.await;
    n
}

async fn drop_table(name: &str) {
    sql(&format!("DROP TABLE IF EXISTS {name} CASCADE")).await;
    sql(&format!("DROP SEQUENCE IF EXISTS {name}_version")).await;
    sql(&format!(
        "DROP FUNCTION IF EXISTS {name}_notify_changes(), {name}_next_version()"
    ))
    .await;
}

/// The next event other than a barrier, within a generous deadline.
async fn next_change(feed: &mut PostgresFeed) -> FeedEvent<String> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match feed.next().await.expect("the feed ended") {
                FeedEvent::Barrier(_) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("no change within 20 s")
}

/// Changes until `count` keys were reported; fails on anything but changes and barriers.
async fn changes(feed: &mut PostgresFeed, count: usize) -> Vec<(String, Option<u64>)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        match next_change(feed).await {
            FeedEvent::Changed(changes) => seen.extend(changes),
            other => panic!("unexpected {other:?} after {} changes", seen.len()),
        }
    }
    seen
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server: set RCS_TEST_POSTGRES_URL (see .ci/postgres.sh) and pass --ignored"]
async fn outside_writes_come_in_commit_order_with_their_versions_and_barriers_after_them() {
    // The longest table name allowed: every name derived from it still fits.
    let t = table("order", 40);
    drop_table(&t).await;
    let source = PostgresSource::connect(&url(), &t).await.expect("connect");
    let v1 = source.put("a".into(), "1".into()).await.unwrap();
    let mut feed = source.change_feed(FeedSettings::default()).await.unwrap();
    sql(&format!("UPDATE {t} SET value = '2' WHERE key = 'a'")).await;
    sql(&format!(
        "INSERT INTO {t} (key, value, version) VALUES ('b', 'x', 0)"
    ))
    .await;
    sql(&format!("DELETE FROM {t} WHERE key = 'a'")).await;
    sql(&format!("UPDATE {t} SET key = 'c' WHERE key = 'b'")).await;
    let committed = Stamp::now();
    let seen = changes(&mut feed, 5).await;
    let (a2, b) = (seen[0].1.unwrap(), seen[1].1.unwrap());
    assert!(a2 > v1 && b > a2, "{seen:?}");
    assert_eq!(seen[2], ("a".into(), None));
    // The rename: the new key with its version, the old one gone.
    assert!(seen[3..].contains(&("b".into(), None)), "{seen:?}");
    assert!(
        seen[3..].iter().any(|(k, v)| k == "c" && v.is_some()),
        "{seen:?}"
    );
    // A barrier stamped after those commits comes, and nothing before it was left out.
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match feed.next().await.expect("the feed ended") {
                FeedEvent::Barrier(stamp) if stamp > committed => return,
                FeedEvent::Barrier(_) => {}
                other => panic!("a change after every commit was reported: {other:?}"),
            }
        }
    })
    .await
    .expect("no barrier after the commits");
    drop_table(&t).await;
}

#[tokio::test]
#[ignore = "needs a PostgreSQL server: set RCS_TEST_POSTGRES_URL (see .ci/postgres.sh) and pass --ignored"]
async fn what_cannot_be_told_key_by_key_is_a_loss_never_silence() {
    let t = table("loss", 20);
    drop_table(&t).await;
    let source = PostgresSource::connect(&url(), &t).await.expect("connect");
    let settings = FeedSettings::default().max_rows(100);
    let mut feed = source.change_feed(settings).await.unwrap();

    // One statement over PostgreSQL's 8 000-byte payload limit: every key arrives, in several
    // notifications.
    sql(&format!(
        "INSERT INTO {t} (key, value, version)
         SELECT 'long-key-' || i || '-' || repeat('k', 200), 'v', 0 FROM generate_series(1, 90) AS i"
    ))
    .await;
    let seen = changes(&mut feed, 90).await;
    assert_eq!(seen.len(), 90);
    sql(&format!(
        "INSERT INTO {t} (key, value, version) SELECT 'short-' || i, 'v', 0 FROM generate_series(1, 60) AS i"
    ))
    .await;
    assert_eq!(changes(&mut feed, 60).await.len(), 60);

    // More rows (150) than are told one by one (100); a key too long to tell; a TRUNCATE (no row
    // trigger fires): each a loss, so the cache checks everything.
    for statement in [
        format!("UPDATE {t} SET value = 'w'"),
        format!("INSERT INTO {t} (key, value, version) VALUES (repeat('x', 7500), 'v', 0)"),
        format!("TRUNCATE {t}"),
    ] {
        sql(&statement).await;
        match next_change(&mut feed).await {
            FeedEvent::Lost(_) => {}
            other => panic!("{statement}: {other:?}"),
        }
    }
    // And the feed goes on.
    source.put("after".into(), "v".into()).await.unwrap();
    assert_eq!(changes(&mut feed, 1).await[0].0, "after");
    drop_table(&t).await;
}

use std::time::Duration;

use ractor_cache_sync::cache::{ChangeFeed, FeedEvent};
use ractor_cache_sync::Source;

use super::*;

/// The next event that is not a barrier, within a generous deadline.
async fn next_change<K: Key + std::fmt::Debug>(feed: &mut SqliteFeed<K>) -> FeedEvent<K> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match feed.next().await.expect("the feed ended") {
                FeedEvent::Barrier(_) => {}
                other => return other,
            }
        }
    })
    .await
    .expect("no change within 10 s")
}

fn outside(path: &Path) -> Connection {
    connect(path).unwrap()
}

#[tokio::test]
async fn writes_made_outside_the_application_are_reported_in_commit_order_with_their_versions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let source = SqliteSource::open(&path, "kv").unwrap();
    let v1 = source.put("a".into(), "1".into()).await.unwrap();
    let mut feed = source.change_feed(FeedSettings::default()).await.unwrap();

    // A plain SQL session: no version given, none raised by hand.
    let sql = outside(&path);
    sql.execute("UPDATE kv SET value = '2' WHERE key = 'a'", [])
        .unwrap();
    sql.execute(
        "INSERT INTO kv (key, value, version) VALUES ('b', 'x', 0)",
        [],
    )
    .unwrap();
    sql.execute("DELETE FROM kv WHERE key = 'a'", []).unwrap();
    sql.execute("UPDATE kv SET key = 'c' WHERE key = 'b'", [])
        .unwrap();

    let mut seen = Vec::new();
    while seen.len() < 5 {
        match next_change(&mut feed).await {
            FeedEvent::Changed(changes) => seen.extend(changes),
            other => panic!("unexpected {other:?}"),
        }
    }
    let (a2, b) = (seen[0].1.unwrap(), seen[1].1.unwrap());
    assert!(a2 > v1, "the update got a higher version");
    assert!(b > a2);
    assert_eq!(
        seen,
        vec![
            ("a".into(), Some(a2)),
            ("b".into(), Some(b)),
            ("a".into(), None),
            ("b".into(), None),
            ("c".into(), None),
        ]
    );
    // The versions reported are the table's.
    assert_eq!(source.versions(&["c".into()]).await.unwrap(), vec![Some(b)]);
}

#[tokio::test]
async fn a_barrier_comes_after_every_change_committed_before_its_stamp() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let source = SqliteSource::open(&path, "kv").unwrap();
    let mut feed = source.change_feed(FeedSettings::default()).await.unwrap();
    for round in 0..20 {
        let key = format!("k{round}");
        source.put(key.clone(), "v".into()).await.unwrap();
        let committed = ractor_cache_sync::cache::Stamp::now();
        let mut reported = false;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), feed.next())
                .await
                .expect("the feed went quiet")
                .expect("the feed ended")
            {
                FeedEvent::Changed(changes) => {
                    reported |= changes.iter().any(|(k, _)| *k == key);
                }
                FeedEvent::Barrier(stamp) if stamp > committed => {
                    assert!(
                        reported,
                        "a barrier after the commit came before its change"
                    );
                    break;
                }
                FeedEvent::Barrier(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_log_pruned_past_the_feed_or_a_bulk_change_is_a_loss_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    let source = SqliteSource::open(&path, "kv").unwrap();
    source.put("a".into(), "1".into()).await.unwrap();
    let settings = FeedSettings {
        max_backlog: 50,
        ..FeedSettings::default()
    };
    let mut feed = source.change_feed(settings).await.unwrap();
    source.put("a".into(), "2".into()).await.unwrap();
    assert!(matches!(
        next_change(&mut feed).await,
        FeedEvent::Changed(_)
    ));

    // Another process prunes rows this feed has not read (in the same transaction as the
    // writes, so that the feed cannot read them in between).
    let sql = outside(&path);
    sql.execute_batch(
        "BEGIN;
         UPDATE kv SET value = '3' WHERE key = 'a';
         UPDATE kv SET value = '4' WHERE key = 'a';
         DELETE FROM kv_changes WHERE seq = (SELECT MAX(seq) - 1 FROM kv_changes);
         COMMIT;",
    )
    .unwrap();
    match next_change(&mut feed).await {
        FeedEvent::Lost(why) => assert!(why.contains("pruned"), "{why}"),
        other => panic!("a pruned log went unnoticed: {other:?}"),
    }

    // A bulk update past the backlog limit.
    sql.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200)
         INSERT INTO kv (key, value, version) SELECT 'bulk' || i, 'v', 0 FROM n;",
    )
    .unwrap();
    match next_change(&mut feed).await {
        FeedEvent::Lost(why) => assert!(why.contains("200 changes"), "{why}"),
        other => panic!("a bulk change was read row by row: {other:?}"),
    }
    // And the feed goes on after it.
    source.put("a".into(), "5".into()).await.unwrap();
    match next_change(&mut feed).await {
        FeedEvent::Changed(changes) => assert_eq!(changes[0].0, "a"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn table_names_are_plain_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.db");
    for bad in ["", "kv; DROP TABLE x", "1kv", "k v", &"x".repeat(49)] {
        assert!(
            matches!(SqliteSource::open(&path, bad), Err(Error::Config(_))),
            "{bad:?}"
        );
    }
    assert!(SqliteSource::open(&path, "kv_2").is_ok());
}

#[tokio::test]
async fn a_table_of_its_own_layout_with_integer_keys_has_versions_and_a_feed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let table = Table::new("users")
        .key_column("id", "INTEGER")
        .value_column("name");
    let users: SqliteSource<u64> = SqliteSource::open_table(&path, table).unwrap();
    let v1 = users.put(7, "ada".into()).await.unwrap();
    let mut feed = users.change_feed(FeedSettings::default()).await.unwrap();
    // A SQL session renames user 7 the way the service's own schema would.
    outside(&path)
        .execute("UPDATE users SET name = 'grace' WHERE id = 7", [])
        .unwrap();
    match next_change(&mut feed).await {
        FeedEvent::Changed(changes) => {
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].0, 7u64);
            assert!(changes[0].1 > Some(v1), "{changes:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        users
            .load(&7)
            .await
            .unwrap()
            .map(|(name, _)| name)
            .as_deref(),
        Some("grace")
    );
    assert_eq!(users.versions(&[7, 8]).await.unwrap()[1], None);
    for bad in [
        Table::new("users").key_column("id; --", "INTEGER"),
        Table::new("users").key_column("id", "INTEGER PRIMARY KEY"),
        Table::new("users").value_column("version"),
    ] {
        assert!(matches!(
            SqliteSource::<u64>::open_table(&path, bad),
            Err(Error::Config(_))
        ));
    }
}

#[tokio::test]
async fn a_key_the_key_type_cannot_hold_or_a_hole_in_the_log_is_a_loss_and_the_feed_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.db");
    let table = Table::new("users")
        .key_column("id", "INTEGER")
        .value_column("name");
    let users: SqliteSource<u64> = SqliteSource::open_table(&path, table).unwrap();
    let mut feed = users.change_feed(FeedSettings::default()).await.unwrap();
    let sql = outside(&path);
    // A negative id: no `u64` holds it.
    sql.execute(
        "INSERT INTO users (id, name, version) VALUES (-5, 'x', 0)",
        [],
    )
    .unwrap();
    match next_change(&mut feed).await {
        FeedEvent::Lost(why) => assert!(why.contains("cannot read"), "{why}"),
        other => panic!("an unreadable key went unnoticed: {other:?}"),
    }
    // Three rows in one transaction, the middle one pruned before the feed read them.
    sql.execute_batch(
        "BEGIN;
         INSERT INTO users (id, name, version) VALUES (1, 'a', 0), (2, 'b', 0), (3, 'c', 0);
         DELETE FROM users_changes WHERE seq = (SELECT MAX(seq) - 1 FROM users_changes);
         COMMIT;",
    )
    .unwrap();
    match next_change(&mut feed).await {
        FeedEvent::Lost(why) => assert!(why.contains("misses rows"), "{why}"),
        other => panic!("a hole in the log went unnoticed: {other:?}"),
    }
    users.put(9, "after".into()).await.unwrap();
    match next_change(&mut feed).await {
        FeedEvent::Changed(changes) => assert_eq!(changes[0].0, 9),
        other => panic!("the feed stopped: {other:?}"),
    }
}

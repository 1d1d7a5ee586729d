#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

mod feed;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ractor_cache_sync::{Error, Result, Source, Version};
use tokio_postgres::NoTls;

pub use self::feed::{FeedSettings, PostgresFeed};

/// Connections kept open per source.
const POOL_SIZE: usize = 8;

/// Serialises the schema set-up of nodes starting at the same time.
const SCHEMA_LOCK: i64 = 0x5243_5301;

/// A table `(key TEXT PRIMARY KEY, value TEXT, version BIGINT)` in PostgreSQL, as a
/// [`Source`].
///
/// Versions are set by a trigger on every insert and update — also those made outside the
/// application (a SQL session, a migration) — so a bulk version check sees every write. A
/// version is the server's timeline (bits 40 and up) over a database sequence: a sequence can
/// resume lower after a failover (the promoted replica had not received the last values, or
/// `synchronous_commit = off` lost them), but every promotion starts a higher timeline, so
/// versions written after it are still higher than any written before it, lost ones included.
/// This covers physical failover (a streaming replica promoted). A move to another cluster
/// that starts again at timeline 1 (a dump restored, a logical-replication switchover) is not:
/// an update still gets at least its row's version plus one, but after such a move call
/// `Cache::invalidate_all` once, or start the sequence above the old versions.
#[derive(Clone)]
pub struct PostgresSource {
    pool: Pool,
    /// For the change feed's own connection.
    config: Arc<tokio_postgres::Config>,
    table: Arc<str>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// `name` if it is a plain lower-case SQL identifier (so that PostgreSQL does not fold it),
/// at most 40 bytes so that the names derived from it (`<table>_changes_on_truncate`) fit in
/// PostgreSQL's 63.
fn identifier(name: &str) -> Result<&str> {
    let plain = !name.is_empty()
        && name.len() <= 40
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(name)
    } else {
        Err(Error::Config(format!(
            "table name {name:?}: use lower-case letters, digits and '_' (at most 40, not starting with a digit)"
        )))
    }
}

impl PostgresSource {
    /// Connects (`postgres://user:password@host:port/database`) and creates the table, the
    /// version sequence and its trigger if needed.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a bad URL or table name; the source's error if the server cannot
    /// be reached or the schema set up.
    pub async fn connect(url: &str, table: &str) -> Result<Self> {
        let table = identifier(table)?;
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Config(format!("bad PostgreSQL URL: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(Error::from_source)?;
        let source = Self {
            pool,
            config: Arc::new(config),
            table: table.into(),
        };
        source.install(&schema(table)).await?;
        Ok(source)
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Runs `sql` in one transaction under the schema lock.
    async fn install(&self, sql: &str) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::from_source)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(Error::from_source)?;
        tx.batch_execute(sql).await.map_err(Error::from_source)?;
        tx.commit().await.map_err(Error::from_source)
    }

    /// Installs the notification triggers (if they are not yet) and starts a feed listening to
    /// them: see [`PostgresFeed`]. Every write to the table notifies from then on, at commit.
    ///
    /// # Errors
    ///
    /// The source's error if the triggers cannot be installed or the feed's first connection
    /// fails.
    pub async fn change_feed(&self, settings: FeedSettings) -> Result<PostgresFeed> {
        self.install(&feed::triggers(&self.table, settings.max_rows))
            .await?;
        PostgresFeed::start((*self.config).clone(), &self.table, settings).await
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(Error::from_source)
    }

    /// Writes `value` under `key` in one statement (one transaction) and returns the version
    /// the trigger gave it.
    ///
    /// # Errors
    ///
    /// The source's error.
    pub async fn put(&self, key: String, value: String) -> Result<Version> {
        let t = &self.table;
        let row = self
            .client()
            .await?
            .query_one(
                &format!(
                    "INSERT INTO {t} (key, value, version) VALUES ($1, $2, 0)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                     RETURNING version"
                ),
                &[&key, &value],
            )
            .await
            .map_err(Error::from_source)?;
        Ok(row.get::<_, i64>(0) as Version)
    }

    /// Deletes `key`; whether it existed.
    ///
    /// # Errors
    ///
    /// The source's error.
    pub async fn delete(&self, key: String) -> Result<bool> {
        let t = &self.table;
        let n = self
            .client()
            .await?
            .execute(&format!("DELETE FROM {t} WHERE key = $1"), &[&key])
            .await
            .map_err(Error::from_source)?;
        Ok(n > 0)
    }
}

/// One answer per key, in the order asked.
fn in_order<T>(keys: &[String], mut found: HashMap<String, T>) -> Vec<Option<T>> {
    keys.iter().map(|key| found.remove(key)).collect()
}

#[async_trait::async_trait]
impl Source<String, String> for PostgresSource {
    async fn load(&self, key: &String) -> Result<Option<(String, Version)>> {
        let t = &self.table;
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT value, version FROM {t} WHERE key = $1"),
                &[key],
            )
            .await
            .map_err(Error::from_source)?;
        Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as Version)))
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<(String, Version)>>> {
        let t = &self.table;
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT key, value, version FROM {t} WHERE key = ANY($1)"),
                &[&keys],
            )
            .await
            .map_err(Error::from_source)?;
        let found = rows
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get::<_, i64>(2) as Version)))
            .collect();
        Ok(in_order(keys, found))
    }

    async fn versions(&self, keys: &[String]) -> Result<Vec<Option<Version>>> {
        let t = &self.table;
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT key, version FROM {t} WHERE key = ANY($1)"),
                &[&keys],
            )
            .await
            .map_err(Error::from_source)?;
        let found = rows
            .into_iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as Version))
            .collect();
        Ok(in_order(keys, found))
    }
}

/// The table, its sequence and the trigger that versions every write.
fn schema(t: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
             key TEXT PRIMARY KEY,
             value TEXT NOT NULL,
             version BIGINT NOT NULL
         );
         DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_class WHERE relname = '{t}_version') THEN
                 CREATE SEQUENCE {t}_version;
                 -- A table written before versions came from the sequence: start above it.
                 PERFORM setval('{t}_version', GREATEST((SELECT MAX(version) FROM {t}), 1));
             END IF;
         END $$;
         -- The timeline of the WAL being written (the first 8 hex digits of its file name)
         -- over the sequence: 2^40 versions per timeline. And never below the row's own
         -- version plus one (a table restored into a new cluster starts at timeline 1).
         CREATE OR REPLACE FUNCTION {t}_next_version() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             NEW.version := GREATEST(
                 (('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
                     << 40)
                 + nextval('{t}_version'),
                 CASE WHEN TG_OP = 'UPDATE' THEN OLD.version + 1 ELSE 0 END);
             RETURN NEW;
         END $$;
         DO $$ BEGIN
             IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = '{t}_version_on_write') THEN
                 CREATE TRIGGER {t}_version_on_write BEFORE INSERT OR UPDATE ON {t}
                     FOR EACH ROW EXECUTE FUNCTION {t}_next_version();
             END IF;
         END $$;"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_lower_case_identifiers() {
        for bad in ["", "Kv", "kv; drop table x", "1kv", "k v", &"x".repeat(41)] {
            assert!(matches!(identifier(bad), Err(Error::Config(_))), "{bad:?}");
        }
        assert!(identifier("kv_2").is_ok());
    }
}

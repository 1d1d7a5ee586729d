//! A PostgreSQL-backed source of truth, for clusters that span machines (a SQLite file cannot be
//! shared across hosts): the same `kv(key, value, version)` table as the SQLite source.
//!
//! Connections come from a pool (`deadpool-postgres`) that replaces a broken connection on the
//! next call, so a restarted server or a dropped connection costs the calls in flight, not
//! every later one. Versions are set by a trigger on every insert and update — also those made
//! outside the application (a SQL session, a migration) — so a bulk version check sees every
//! write. A version is the server's timeline (bits 40 and up) over a database sequence: a
//! sequence can resume lower after a failover (the promoted replica had not received the last
//! values, or `synchronous_commit = off` lost them), but every promotion starts a higher
//! timeline, so versions written after it are still higher than any written before it, lost
//! ones included, and no node keeps a lost value that later writes would not replace. This
//! covers physical failover (a streaming replica promoted). A move to another cluster that
//! starts again at timeline 1 (a dump restored, a logical-replication switchover) is not: an
//! update still gets at least its row's version plus one, but after such a move call
//! `invalidate_all` once, or start the sequence above the old versions. (Timelines past 2^23
//! would overflow: no cluster gets there.)

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use ractor_cache_sync::{Error, Result, Source, Version};
use tokio_postgres::NoTls;

/// Connections kept open per node.
const POOL_SIZE: usize = 8;

#[derive(Clone)]
pub struct PostgresSource {
    pool: Pool,
}

/// Serialises the schema set-up of nodes starting at the same time.
const SCHEMA_LOCK: i64 = 0x5243_5301;

impl PostgresSource {
    /// Connects (`postgres://user:password@host:port/database`) and creates the table, the
    /// version sequence and its trigger if needed.
    pub async fn connect(url: &str) -> std::result::Result<Self, String> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| format!("bad URL: {e}"))?;
        let manager = Manager::from_config(
            config,
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
            .map_err(|e| e.to_string())?;
        let source = Self { pool };
        source.set_up().await.map_err(|e| e.to_string())?;
        Ok(source)
    }

    async fn set_up(&self) -> Result<()> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(Error::from_source)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
            .await
            .map_err(Error::from_source)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY,
                 value TEXT NOT NULL,
                 version BIGINT NOT NULL
             );
             DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_class WHERE relname = 'kv_version') THEN
                     CREATE SEQUENCE kv_version;
                     -- A table written before versions came from the sequence: start above it.
                     PERFORM setval('kv_version', GREATEST((SELECT MAX(version) FROM kv), 1));
                 END IF;
             END $$;
             -- The timeline of the WAL being written (the first 8 hex digits of its file name)
             -- over the sequence: 2^40 versions per timeline. And never below the row's own
             -- version plus one (a table restored into a new cluster starts at timeline 1).
             CREATE OR REPLACE FUNCTION kv_next_version() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 NEW.version := GREATEST(
                     (('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint
                         << 40)
                     + nextval('kv_version'),
                     CASE WHEN TG_OP = 'UPDATE' THEN OLD.version + 1 ELSE 0 END);
                 RETURN NEW;
             END $$;
             DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'kv_version_on_write') THEN
                     CREATE TRIGGER kv_version_on_write BEFORE INSERT OR UPDATE ON kv
                         FOR EACH ROW EXECUTE FUNCTION kv_next_version();
                 END IF;
             END $$;",
        )
        .await
        .map_err(Error::from_source)?;
        tx.commit().await.map_err(Error::from_source)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(Error::from_source)
    }

    /// Writes `value` under `key` in one statement (one transaction) and returns the version
    /// the trigger gave it.
    pub async fn put(&self, key: String, value: String) -> Result<Version> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO kv (key, value, version) VALUES ($1, $2, 0)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                 RETURNING version",
                &[&key, &value],
            )
            .await
            .map_err(Error::from_source)?;
        Ok(row.get::<_, i64>(0) as Version)
    }
}

#[async_trait::async_trait]
impl Source<String, String> for PostgresSource {
    async fn load(&self, key: &String) -> Result<Option<(String, Version)>> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT value, version FROM kv WHERE key = $1", &[key])
            .await
            .map_err(Error::from_source)?;
        Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as Version)))
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<(String, Version)>>> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT key, value, version FROM kv WHERE key = ANY($1)",
                &[&keys],
            )
            .await
            .map_err(Error::from_source)?;
        let found = rows
            .into_iter()
            .map(|r| (r.get(0), (r.get(1), r.get::<_, i64>(2) as Version)))
            .collect();
        Ok(crate::database::in_order(keys, found))
    }

    async fn versions(&self, keys: &[String]) -> Result<Vec<Option<Version>>> {
        let rows = self
            .client()
            .await?
            .query("SELECT key, version FROM kv WHERE key = ANY($1)", &[&keys])
            .await
            .map_err(Error::from_source)?;
        let found = rows
            .into_iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as Version))
            .collect();
        Ok(crate::database::in_order(keys, found))
    }
}

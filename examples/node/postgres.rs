//! A PostgreSQL-backed source of truth, for clusters that span machines (a SQLite file cannot be
//! shared across hosts): the same `kv(key, value, version)` table as the SQLite source.

use std::sync::Arc;

use ractor_cache_sync::{Error, Result, Source, Version};
use tokio_postgres::{Client, NoTls};

#[derive(Clone)]
pub struct PostgresSource {
    client: Arc<Client>,
}

impl PostgresSource {
    /// Connects (`postgres://user:password@host:port/database`) and creates the table if needed.
    pub async fn connect(url: &str) -> std::result::Result<Self, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::error!(%error, "postgres connection closed");
            }
        });
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS kv (
                     key TEXT PRIMARY KEY,
                     value TEXT NOT NULL,
                     version BIGINT NOT NULL
                 )",
            )
            .await?;
        Ok(Self {
            client: Arc::new(client),
        })
    }

    /// Writes `value` under `key` with version = previous + 1, in one statement (one
    /// transaction), and returns the committed version.
    pub async fn put(&self, key: String, value: String) -> Result<Version> {
        let row = self
            .client
            .query_one(
                "INSERT INTO kv (key, value, version) VALUES ($1, $2, 1)
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, version = kv.version + 1
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
            .client
            .query_opt("SELECT value, version FROM kv WHERE key = $1", &[key])
            .await
            .map_err(Error::from_source)?;
        Ok(row.map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as Version)))
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<(String, Version)>>> {
        let rows = self
            .client
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
        Ok(crate::sqlite::in_order(keys, found))
    }

    async fn versions(&self, keys: &[String]) -> Result<Vec<Option<Version>>> {
        let rows = self
            .client
            .query("SELECT key, version FROM kv WHERE key = ANY($1)", &[&keys])
            .await
            .map_err(Error::from_source)?;
        let found = rows
            .into_iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as Version))
            .collect();
        Ok(crate::sqlite::in_order(keys, found))
    }
}

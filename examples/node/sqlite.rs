//! A SQLite-backed source of truth: one table `kv(key, value, version)` in a real file, in WAL
//! mode so several node processes on one machine can share it.
//!
//! Versions come from one counter for the whole table (`kv_version`), set by triggers on every
//! insert and on every update of a value — also those made outside the application (a SQL
//! session, a migration) — so a version is never reused and a bulk version check sees every
//! write; the same rule as the PostgreSQL source's sequence.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use ractor_cache_sync::{Error, Result, Source, Version};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

/// Reads and writes the `kv` table. One connection per role, each behind a mutex and used from
/// `spawn_blocking`, so SQLite's blocking calls never stall the async runtime.
#[derive(Clone)]
pub struct SqliteSource {
    reader: Arc<Mutex<Connection>>,
    writer: Arc<Mutex<Connection>>,
}

impl SqliteSource {
    /// Opens (creating if needed) the database file and the table.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let writer = connect(path)?;
        writer.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY NOT NULL,
                 value TEXT NOT NULL,
                 version INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS kv_version (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 last INTEGER NOT NULL
             );
             -- A table written before versions came from the counter: start above it.
             INSERT OR IGNORE INTO kv_version (id, last) SELECT 0, COALESCE(MAX(version), 0) FROM kv;
             CREATE TRIGGER IF NOT EXISTS kv_version_on_insert AFTER INSERT ON kv BEGIN
                 UPDATE kv_version SET last = last + 1 WHERE id = 0;
                 UPDATE kv SET version = (SELECT last FROM kv_version WHERE id = 0)
                     WHERE rowid = NEW.rowid;
             END;
             CREATE TRIGGER IF NOT EXISTS kv_version_on_update AFTER UPDATE OF value ON kv BEGIN
                 UPDATE kv_version SET last = last + 1 WHERE id = 0;
                 UPDATE kv SET version = (SELECT last FROM kv_version WHERE id = 0)
                     WHERE rowid = NEW.rowid;
             END;",
        )?;
        Ok(Self {
            reader: Arc::new(Mutex::new(connect(path)?)),
            writer: Arc::new(Mutex::new(writer)),
        })
    }

    /// Writes `value` under `key` in one transaction and returns the version the triggers gave
    /// it.
    pub async fn put(&self, key: String, value: String) -> Result<Version> {
        let writer = self.writer.clone();
        blocking(move || {
            let mut conn = writer.lock().expect("sqlite writer mutex poisoned");
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO kv (key, value, version) VALUES (?1, ?2, 0)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
            let version: i64 = tx.query_row(
                "SELECT version FROM kv WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(version as Version)
        })
        .await
    }
}

#[async_trait::async_trait]
impl Source<String, String> for SqliteSource {
    async fn load(&self, key: &String) -> Result<Option<(String, Version)>> {
        let reader = self.reader.clone();
        let key = key.clone();
        blocking(move || {
            let conn = reader.lock().expect("sqlite reader mutex poisoned");
            let row = conn
                .query_row(
                    "SELECT value, version FROM kv WHERE key = ?1",
                    params![key],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
                )
                .optional()?;
            Ok(row.map(|(value, version)| (value, version as Version)))
        })
        .await
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<(String, Version)>>> {
        let rows = self
            .select(
                keys,
                "SELECT key, value, version FROM kv WHERE key IN",
                |row| Ok((row.get::<_, String>(1)?, row.get::<_, i64>(2)? as Version)),
            )
            .await?;
        Ok(crate::database::in_order(keys, rows))
    }

    async fn versions(&self, keys: &[String]) -> Result<Vec<Option<Version>>> {
        let rows = self
            .select(keys, "SELECT key, version FROM kv WHERE key IN", |row| {
                Ok(row.get::<_, i64>(1)? as Version)
            })
            .await?;
        Ok(crate::database::in_order(keys, rows))
    }
}

/// Most keys one statement names (SQLite's default limit on parameters is 32 766).
const KEYS_PER_STATEMENT: usize = 1_000;

impl SqliteSource {
    /// Runs `select` (ending in `WHERE key IN`) for `keys`, one statement per
    /// [`KEYS_PER_STATEMENT`] keys in one read transaction, and maps each row (its first
    /// column the key) with `read`.
    async fn select<T: Send + 'static>(
        &self,
        keys: &[String],
        select: &'static str,
        read: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<HashMap<String, T>> {
        let reader = self.reader.clone();
        let keys = keys.to_vec();
        blocking(move || {
            let mut conn = reader.lock().expect("sqlite reader mutex poisoned");
            let tx = conn.transaction()?;
            let mut found = HashMap::with_capacity(keys.len());
            for part in keys.chunks(KEYS_PER_STATEMENT) {
                let marks = vec!["?"; part.len()].join(",");
                let mut statement = tx.prepare(&format!("{select} ({marks})"))?;
                let mut rows = statement.query(rusqlite::params_from_iter(part))?;
                while let Some(row) = rows.next()? {
                    found.insert(row.get::<_, String>(0)?, read(row)?);
                }
            }
            Ok(found)
        })
        .await
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> rusqlite::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Error::from_source),
        Err(join) => Err(Error::from_source(join.to_string())),
    }
}

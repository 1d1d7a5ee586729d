#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

mod feed;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor_cache_sync::{Error, Result, Source, Version};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub use self::feed::{FeedSettings, SqliteFeed};

/// Most keys one statement names (SQLite's default limit on parameters is 32 766).
const KEYS_PER_STATEMENT: usize = 1_000;

/// A table `(key TEXT PRIMARY KEY, value TEXT, version INTEGER)` in a SQLite file, as a
/// [`Source`].
///
/// One connection per role (reads, writes), each behind a mutex and used from
/// `spawn_blocking`, so SQLite's blocking calls never stall the async runtime. The file is in
/// WAL mode, so several processes on one machine can share it.
///
/// Versions come from one counter for the whole table (`<table>_version`), set by triggers on
/// every insert and on every update of a value — also those made outside the application (a
/// SQL session, a migration) — so a version is never reused and a bulk version check sees
/// every write.
#[derive(Clone)]
pub struct SqliteSource {
    path: PathBuf,
    table: Arc<str>,
    reader: Arc<Mutex<Connection>>,
    writer: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for SqliteSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSource")
            .field("path", &self.path)
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

/// `name` if it is a plain SQL identifier (letters, digits, `_`, not starting with a digit, at
/// most 48 bytes so that the names derived from it fit), else a configuration error.
pub(crate) fn identifier(name: &str) -> Result<&str> {
    let plain = !name.is_empty()
        && name.len() <= 48
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        Ok(name)
    } else {
        Err(Error::Config(format!(
            "table name {name:?}: use letters, digits and '_' (at most 48, not starting with a digit)"
        )))
    }
}

impl SqliteSource {
    /// Opens (creating if needed) the file, the table, its version counter and triggers.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a table name that is not a plain identifier; the source's error
    /// if the file cannot be opened or the schema set up.
    pub fn open(path: impl AsRef<Path>, table: &str) -> Result<Self> {
        let table = identifier(table)?;
        let path = path.as_ref().to_path_buf();
        let writer = connect(&path).map_err(Error::from_source)?;
        writer
            .execute_batch(&schema(table))
            .map_err(Error::from_source)?;
        Ok(Self {
            reader: Arc::new(Mutex::new(connect(&path).map_err(Error::from_source)?)),
            writer: Arc::new(Mutex::new(writer)),
            table: table.into(),
            path,
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Installs the change log (if it is not yet) and starts a feed reading it: see
    /// [`SqliteFeed`]. Every writer of the file logs its changes from then on, in the same
    /// transaction as the change.
    ///
    /// # Errors
    ///
    /// The source's error if the log cannot be installed or read.
    pub fn change_feed(&self, settings: FeedSettings) -> Result<SqliteFeed> {
        {
            let mut conn = lock(&self.writer);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(Error::from_source)?;
            tx.execute_batch(&change_log(&self.table))
                .map_err(Error::from_source)?;
            tx.commit().map_err(Error::from_source)?;
        }
        let conn = connect(&self.path).map_err(Error::from_source)?;
        SqliteFeed::start(conn, &self.path, &self.table, settings)
    }

    /// Writes `value` under `key` in one transaction and returns the version the triggers gave
    /// it.
    ///
    /// # Errors
    ///
    /// The source's error.
    pub async fn put(&self, key: String, value: String) -> Result<Version> {
        let writer = self.writer.clone();
        let table = self.table.clone();
        blocking(move || {
            let mut conn = lock(&writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                &format!(
                    "INSERT INTO {table} (key, value, version) VALUES (?1, ?2, 0)
                     ON CONFLICT(key) DO UPDATE SET value = excluded.value"
                ),
                params![key, value],
            )?;
            let version: i64 = tx.query_row(
                &format!("SELECT version FROM {table} WHERE key = ?1"),
                params![key],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(version as Version)
        })
        .await
    }

    /// Deletes `key`; whether it existed.
    ///
    /// # Errors
    ///
    /// The source's error.
    pub async fn delete(&self, key: String) -> Result<bool> {
        let writer = self.writer.clone();
        let table = self.table.clone();
        blocking(move || {
            let conn = lock(&writer);
            let n = conn.execute(&format!("DELETE FROM {table} WHERE key = ?1"), params![key])?;
            Ok(n > 0)
        })
        .await
    }

    /// Runs `select` (ending in `WHERE key IN`) for `keys`, one statement per
    /// [`KEYS_PER_STATEMENT`] keys in one read transaction, and maps each row (its first
    /// column the key) with `read`.
    async fn select<T: Send + 'static>(
        &self,
        keys: &[String],
        columns: &'static str,
        read: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<HashMap<String, T>> {
        let reader = self.reader.clone();
        let table = self.table.clone();
        let keys = keys.to_vec();
        blocking(move || {
            let mut conn = lock(&reader);
            let tx = conn.transaction()?;
            let mut found = HashMap::with_capacity(keys.len());
            for part in keys.chunks(KEYS_PER_STATEMENT) {
                let marks = vec!["?"; part.len()].join(",");
                let sql = format!("SELECT {columns} FROM {table} WHERE key IN ({marks})");
                let mut statement = tx.prepare_cached(&sql)?;
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

/// One answer per key, in the order asked.
fn in_order<T>(keys: &[String], mut found: HashMap<String, T>) -> Vec<Option<T>> {
    keys.iter().map(|key| found.remove(key)).collect()
}

#[async_trait::async_trait]
impl Source<String, String> for SqliteSource {
    async fn load(&self, key: &String) -> Result<Option<(String, Version)>> {
        let reader = self.reader.clone();
        let table = self.table.clone();
        let key = key.clone();
        blocking(move || {
            let conn = lock(&reader);
            let row = conn
                .prepare_cached(&format!(
                    "SELECT value, version FROM {table} WHERE key = ?1"
                ))?
                .query_row(params![key], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?;
            Ok(row.map(|(value, version)| (value, version as Version)))
        })
        .await
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<(String, Version)>>> {
        let rows = self
            .select(keys, "key, value, version", |row| {
                Ok((row.get::<_, String>(1)?, row.get::<_, i64>(2)? as Version))
            })
            .await?;
        Ok(in_order(keys, rows))
    }

    async fn versions(&self, keys: &[String]) -> Result<Vec<Option<Version>>> {
        let rows = self
            .select(keys, "key, version", |row| {
                Ok(row.get::<_, i64>(1)? as Version)
            })
            .await?;
        Ok(in_order(keys, rows))
    }
}

/// The table, its counter and the triggers that version every write. A table written before
/// versions came from the counter starts the counter above it. Triggers already there (with
/// the change log, see [`change_log`]) are kept.
fn schema(t: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
             key TEXT PRIMARY KEY NOT NULL,
             value TEXT NOT NULL,
             version INTEGER NOT NULL
         );
         CREATE TABLE IF NOT EXISTS {t}_version (
             id INTEGER PRIMARY KEY CHECK (id = 0),
             last INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO {t}_version (id, last) SELECT 0, COALESCE(MAX(version), 0) FROM {t};
         CREATE TRIGGER IF NOT EXISTS {t}_version_on_insert AFTER INSERT ON {t} BEGIN
             UPDATE {t}_version SET last = last + 1 WHERE id = 0;
             UPDATE {t} SET version = (SELECT last FROM {t}_version WHERE id = 0)
                 WHERE rowid = NEW.rowid;
         END;
         CREATE TRIGGER IF NOT EXISTS {t}_version_on_update AFTER UPDATE OF value ON {t} BEGIN
             UPDATE {t}_version SET last = last + 1 WHERE id = 0;
             UPDATE {t} SET version = (SELECT last FROM {t}_version WHERE id = 0)
                 WHERE rowid = NEW.rowid;
         END;"
    )
}

/// The change log and the triggers that fill it, in the same transaction as each write: the
/// version triggers again, each also logging the key and its new version; a delete and a
/// renamed key log the key with no version. `at` (seconds since the epoch) is what pruning
/// goes by.
fn change_log(t: &str) -> String {
    let now = "CAST(strftime('%s', 'now') AS INTEGER)";
    format!(
        "CREATE TABLE IF NOT EXISTS {t}_changes (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             key TEXT NOT NULL,
             version INTEGER,
             at INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS {t}_changes_at ON {t}_changes (at);
         DROP TRIGGER IF EXISTS {t}_version_on_insert;
         CREATE TRIGGER {t}_version_on_insert AFTER INSERT ON {t} BEGIN
             UPDATE {t}_version SET last = last + 1 WHERE id = 0;
             UPDATE {t} SET version = (SELECT last FROM {t}_version WHERE id = 0)
                 WHERE rowid = NEW.rowid;
             INSERT INTO {t}_changes (key, version, at)
                 VALUES (NEW.key, (SELECT last FROM {t}_version WHERE id = 0), {now});
         END;
         DROP TRIGGER IF EXISTS {t}_version_on_update;
         CREATE TRIGGER {t}_version_on_update AFTER UPDATE OF value ON {t} BEGIN
             UPDATE {t}_version SET last = last + 1 WHERE id = 0;
             UPDATE {t} SET version = (SELECT last FROM {t}_version WHERE id = 0)
                 WHERE rowid = NEW.rowid;
             INSERT INTO {t}_changes (key, version, at)
                 VALUES (NEW.key, (SELECT last FROM {t}_version WHERE id = 0), {now});
         END;
         CREATE TRIGGER IF NOT EXISTS {t}_changes_on_delete AFTER DELETE ON {t} BEGIN
             INSERT INTO {t}_changes (key, version, at) VALUES (OLD.key, NULL, {now});
         END;
         CREATE TRIGGER IF NOT EXISTS {t}_changes_on_rename AFTER UPDATE OF key ON {t}
             WHEN OLD.key <> NEW.key BEGIN
             INSERT INTO {t}_changes (key, version, at) VALUES (OLD.key, NULL, {now});
             INSERT INTO {t}_changes (key, version, at) VALUES (NEW.key, NULL, {now});
         END;"
    )
}

pub(crate) fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// A lock whose holder panicked still guards a usable connection (a transaction it left open
/// is rolled back when dropped).
pub(crate) fn lock(mutex: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> rusqlite::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(Error::from_source),
        Err(join) => Err(Error::from_source(join.to_string())),
    }
}

#[cfg(test)]
mod tests;

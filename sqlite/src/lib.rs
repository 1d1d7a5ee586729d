#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub, missing_debug_implementations)]

mod feed;

use std::collections::HashMap;
use std::hash::Hash;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor_cache_sync::{Error, Result, Source, Version};
use rusqlite::types::{FromSql, ToSql};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub use self::feed::{FeedSettings, SqliteFeed};

/// What a key must be to live in a SQLite column: `String` (a `TEXT` key), `u64` or `i64` (an
/// `INTEGER` key), or any type of your own that rusqlite reads and writes.
pub trait Key: ToSql + FromSql + Clone + Eq + Hash + Send + Sync + 'static {}

impl<K: ToSql + FromSql + Clone + Eq + Hash + Send + Sync + 'static> Key for K {}

/// Which table a [`SqliteSource`] reads, and which of its columns hold the key and the value
/// (the version is always the `version` column, an `INTEGER`). Default layout: `key TEXT`,
/// `value TEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    name: String,
    key: String,
    key_type: String,
    value: String,
}

impl Table {
    /// The table `name`, with columns `key TEXT`, `value TEXT`, `version INTEGER`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            key: "key".into(),
            key_type: "TEXT".into(),
            value: "value".into(),
        }
    }

    /// The key's column and its SQL type (`TEXT`, `INTEGER`; used only if the table is
    /// created).
    #[must_use]
    pub fn key_column(mut self, column: &str, sql_type: &str) -> Self {
        self.key = column.to_owned();
        self.key_type = sql_type.to_owned();
        self
    }

    /// The value's column (`TEXT`).
    #[must_use]
    pub fn value_column(mut self, column: &str) -> Self {
        self.value = column.to_owned();
        self
    }

    /// Every name checked: plain identifiers (no quoting, no injection).
    fn checked(self) -> Result<Self> {
        identifier(&self.name)?;
        identifier(&self.key)?;
        identifier(&self.value)?;
        if !matches!(
            self.key_type.to_ascii_uppercase().as_str(),
            "TEXT" | "INTEGER" | "BLOB"
        ) {
            return Err(Error::Config(format!(
                "key type {:?}: use TEXT, INTEGER or BLOB",
                self.key_type
            )));
        }
        if [&self.key, &self.value].iter().any(|c| *c == "version") || self.key == self.value {
            return Err(Error::Config(
                "the key, value and version columns must be three different columns".into(),
            ));
        }
        Ok(self)
    }
}

/// Most keys one statement names (SQLite's default limit on parameters is 32 766).
const KEYS_PER_STATEMENT: usize = 1_000;

/// A table `(key TEXT PRIMARY KEY, value TEXT, version INTEGER)` in a SQLite file, as a
/// [`Source`] (other column names and key types: [`Table`], [`SqliteSource::open_table`]).
///
/// One connection per role (reads, writes), each behind a mutex and used from
/// `spawn_blocking`, so SQLite's blocking calls never stall the async runtime. The file is in
/// WAL mode, so several processes on one machine can share it.
///
/// Versions come from one counter for the whole table (`<table>_version`), set by triggers on
/// every insert and on every update of a value — also those made outside the application (a
/// SQL session, a migration) — so a version is never reused and a bulk version check sees
/// every write.
pub struct SqliteSource<K = String> {
    path: PathBuf,
    table: Arc<Table>,
    reader: Arc<Mutex<Connection>>,
    writer: Arc<Mutex<Connection>>,
    _key: PhantomData<fn() -> K>,
}

impl<K> Clone for SqliteSource<K> {
    fn clone(&self) -> Self {
        Self {
            path: self.path.clone(),
            table: self.table.clone(),
            reader: self.reader.clone(),
            writer: self.writer.clone(),
            _key: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for SqliteSource<K> {
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

impl SqliteSource<String> {
    /// Opens (creating if needed) the file, the table `(key TEXT, value TEXT, version
    /// INTEGER)`, its version counter and triggers.
    ///
    /// # Errors
    ///
    /// As [`open_table`](Self::open_table).
    pub fn open(path: impl AsRef<Path>, table: &str) -> Result<Self> {
        Self::open_table(path, Table::new(table))
    }
}

impl<K: Key> SqliteSource<K> {
    /// Opens (creating if needed) the file, the table laid out as `table` says, its version
    /// counter and triggers.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a name that is not a plain identifier; the source's error if the
    /// file cannot be opened or the schema set up.
    pub fn open_table(path: impl AsRef<Path>, table: Table) -> Result<Self> {
        let table = table.checked()?;
        let path = path.as_ref().to_path_buf();
        let writer = connect(&path).map_err(Error::from_source)?;
        writer
            .execute_batch(&schema(&table))
            .map_err(Error::from_source)?;
        Ok(Self {
            reader: Arc::new(Mutex::new(connect(&path).map_err(Error::from_source)?)),
            writer: Arc::new(Mutex::new(writer)),
            table: Arc::new(table),
            path,
            _key: PhantomData,
        })
    }

    /// The table's name.
    pub fn table(&self) -> &str {
        &self.table.name
    }

    /// Installs the change log (if it is not yet) and starts a feed reading it: see
    /// [`SqliteFeed`]. Every writer of the file logs its changes from then on, in the same
    /// transaction as the change.
    ///
    /// The installation waits for the database's write lock (another writer's transaction),
    /// on a blocking thread, not the async runtime's.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for settings out of range; the source's error if the log cannot be
    /// installed or read.
    pub async fn change_feed(&self, settings: FeedSettings) -> Result<SqliteFeed<K>> {
        let (writer, table, path) = (self.writer.clone(), self.table.clone(), self.path.clone());
        let started = tokio::task::spawn_blocking(move || {
            {
                let mut conn = lock(&writer);
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(Error::from_source)?;
                tx.execute_batch(&change_log(&table))
                    .map_err(Error::from_source)?;
                tx.commit().map_err(Error::from_source)?;
            }
            let conn = connect(&path).map_err(Error::from_source)?;
            SqliteFeed::start(conn, &path, &table.name, settings)
        })
        .await;
        started.map_err(|join| Error::from_source(join.to_string()))?
    }

    /// Writes `value` under `key` in one transaction and returns the version the triggers gave
    /// it.
    ///
    /// # Errors
    ///
    /// The source's error.
    pub async fn put(&self, key: K, value: String) -> Result<Version> {
        let writer = self.writer.clone();
        let table = self.table.clone();
        blocking(move || {
            let Table {
                name: t,
                key: k,
                value: v,
                ..
            } = &*table;
            let mut conn = lock(&writer);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                &format!(
                    "INSERT INTO {t} ({k}, {v}, version) VALUES (?1, ?2, 0)
                     ON CONFLICT({k}) DO UPDATE SET {v} = excluded.{v}"
                ),
                params![key, value],
            )?;
            let version: i64 = tx.query_row(
                &format!("SELECT version FROM {t} WHERE {k} = ?1"),
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
    pub async fn delete(&self, key: K) -> Result<bool> {
        let writer = self.writer.clone();
        let table = self.table.clone();
        blocking(move || {
            let (t, k) = (&table.name, &table.key);
            let conn = lock(&writer);
            let n = conn.execute(&format!("DELETE FROM {t} WHERE {k} = ?1"), params![key])?;
            Ok(n > 0)
        })
        .await
    }

    /// Selects the key, then `value, version` (`with_value`) or `version`, for `keys`, one
    /// statement per [`KEYS_PER_STATEMENT`] keys in one read transaction, and maps each row
    /// with `read`.
    async fn select<T: Send + 'static>(
        &self,
        keys: &[K],
        with_value: bool,
        read: fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<HashMap<K, T>> {
        let reader = self.reader.clone();
        let table = self.table.clone();
        let keys = keys.to_vec();
        blocking(move || {
            let (t, k, v) = (&table.name, &table.key, &table.value);
            let columns = if with_value {
                format!("{k}, {v}, version")
            } else {
                format!("{k}, version")
            };
            let mut conn = lock(&reader);
            let tx = conn.transaction()?;
            let mut found = HashMap::with_capacity(keys.len());
            for part in keys.chunks(KEYS_PER_STATEMENT) {
                let marks = vec!["?"; part.len()].join(",");
                let sql = format!("SELECT {columns} FROM {t} WHERE {k} IN ({marks})");
                let mut statement = tx.prepare_cached(&sql)?;
                let mut rows = statement.query(rusqlite::params_from_iter(part))?;
                while let Some(row) = rows.next()? {
                    found.insert(row.get::<_, K>(0)?, read(row)?);
                }
            }
            Ok(found)
        })
        .await
    }
}

/// One answer per key, in the order asked.
fn in_order<K: Key, T>(keys: &[K], mut found: HashMap<K, T>) -> Vec<Option<T>> {
    keys.iter().map(|key| found.remove(key)).collect()
}

#[async_trait::async_trait]
impl<K: Key> Source<K, String> for SqliteSource<K> {
    async fn load(&self, key: &K) -> Result<Option<(String, Version)>> {
        let reader = self.reader.clone();
        let table = self.table.clone();
        let key = key.clone();
        blocking(move || {
            let (t, k, v) = (&table.name, &table.key, &table.value);
            let conn = lock(&reader);
            let row = conn
                .prepare_cached(&format!("SELECT {v}, version FROM {t} WHERE {k} = ?1"))?
                .query_row(params![key], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
                .optional()?;
            Ok(row.map(|(value, version)| (value, version as Version)))
        })
        .await
    }

    async fn load_many(&self, keys: &[K]) -> Result<Vec<Option<(String, Version)>>> {
        let rows = self
            .select(keys, true, |row| {
                Ok((row.get::<_, String>(1)?, row.get::<_, i64>(2)? as Version))
            })
            .await?;
        Ok(in_order(keys, rows))
    }

    async fn versions(&self, keys: &[K]) -> Result<Vec<Option<Version>>> {
        let rows = self
            .select(keys, false, |row| Ok(row.get::<_, i64>(1)? as Version))
            .await?;
        Ok(in_order(keys, rows))
    }
}

/// The table, its counter and the triggers that version every write. A table written before
/// versions came from the counter starts the counter above it. Triggers already there (with
/// the change log, see [`change_log`]) are kept.
fn schema(table: &Table) -> String {
    let Table {
        name: t,
        key: k,
        key_type,
        value: v,
    } = table;
    format!(
        "CREATE TABLE IF NOT EXISTS {t} (
             {k} {key_type} PRIMARY KEY NOT NULL,
             {v} TEXT NOT NULL,
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
         CREATE TRIGGER IF NOT EXISTS {t}_version_on_update AFTER UPDATE OF {v} ON {t} BEGIN
             UPDATE {t}_version SET last = last + 1 WHERE id = 0;
             UPDATE {t} SET version = (SELECT last FROM {t}_version WHERE id = 0)
                 WHERE rowid = NEW.rowid;
         END;"
    )
}

/// The change log and the triggers that fill it, in the same transaction as each write: the
/// version triggers again, each also logging the key and its new version; a delete and a
/// renamed key log the key with no version. `at` (seconds since the epoch) is what pruning
/// goes by. The log's key column has no type: keys keep theirs.
fn change_log(table: &Table) -> String {
    let Table {
        name: t,
        key: k,
        value: v,
        ..
    } = table;
    let now = "CAST(strftime('%s', 'now') AS INTEGER)";
    format!(
        "CREATE TABLE IF NOT EXISTS {t}_changes (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             key NOT NULL,
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
                 VALUES (NEW.{k}, (SELECT last FROM {t}_version WHERE id = 0), {now});
         END;
         DROP TRIGGER IF EXISTS {t}_version_on_update;
         CREATE TRIGGER {t}_version_on_update AFTER UPDATE OF {v} ON {t} BEGIN
             UPDATE {t}_version SET last = last + 1 WHERE id = 0;
             UPDATE {t} SET version = (SELECT last FROM {t}_version WHERE id = 0)
                 WHERE rowid = NEW.rowid;
             INSERT INTO {t}_changes (key, version, at)
                 VALUES (NEW.{k}, (SELECT last FROM {t}_version WHERE id = 0), {now});
         END;
         CREATE TRIGGER IF NOT EXISTS {t}_changes_on_delete AFTER DELETE ON {t} BEGIN
             INSERT INTO {t}_changes (key, version, at) VALUES (OLD.{k}, NULL, {now});
         END;
         CREATE TRIGGER IF NOT EXISTS {t}_changes_on_rename AFTER UPDATE OF {k} ON {t}
             WHEN OLD.{k} <> NEW.{k} BEGIN
             INSERT INTO {t}_changes (key, version, at) VALUES (OLD.{k}, NULL, {now});
             INSERT INTO {t}_changes (key, version, at) VALUES (NEW.{k}, NULL, {now});
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

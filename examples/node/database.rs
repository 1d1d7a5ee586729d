//! The node's source of truth: a SQLite file, or PostgreSQL when `--db` is a `postgres://` URL.

use std::collections::HashMap;

use ractor_cache_sync::{Result, Source, Version};

use crate::postgres::PostgresSource;
use crate::sqlite::SqliteSource;

/// One answer per key, in the order asked: what `load_many` and `versions` return from the rows
/// a bulk statement found.
pub fn in_order<T>(keys: &[String], mut found: HashMap<String, T>) -> Vec<Option<T>> {
    keys.iter().map(|key| found.remove(key)).collect()
}

#[derive(Clone)]
pub enum Database {
    Sqlite(SqliteSource),
    Postgres(PostgresSource),
}

impl Database {
    pub async fn open(db: &str) -> std::result::Result<Self, String> {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            let source = PostgresSource::connect(db).await;
            return source
                .map(Self::Postgres)
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"));
        }
        let source = SqliteSource::open(std::path::Path::new(db));
        source
            .map(Self::Sqlite)
            .map_err(|e| format!("cannot open database: {e}"))
    }

    pub async fn put(&self, key: String, value: String) -> Result<Version> {
        match self {
            Self::Sqlite(db) => db.put(key, value).await,
            Self::Postgres(db) => db.put(key, value).await,
        }
    }
}

#[async_trait::async_trait]
impl Source<String, String> for Database {
    async fn load(&self, key: &String) -> Result<Option<(String, Version)>> {
        match self {
            Self::Sqlite(db) => db.load(key).await,
            Self::Postgres(db) => db.load(key).await,
        }
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<(String, Version)>>> {
        match self {
            Self::Sqlite(db) => db.load_many(keys).await,
            Self::Postgres(db) => db.load_many(keys).await,
        }
    }

    async fn versions(&self, keys: &[String]) -> Result<Vec<Option<Version>>> {
        match self {
            Self::Sqlite(db) => db.versions(keys).await,
            Self::Postgres(db) => db.versions(keys).await,
        }
    }
}

//! The node's source of truth: a SQLite file (`ractor_cache_sync_sqlite`, table `kv`), or
//! PostgreSQL when `--db` is a `postgres://` URL; and, with `--change-feed`, its change feed.

use ractor_cache_sync::{Result, Source, Version};

use ractor_cache_sync::cache::ChangeFeed;
use ractor_cache_sync_postgres::PostgresSource;
use ractor_cache_sync_sqlite::SqliteSource;

#[derive(Clone)]
pub enum Database {
    Sqlite(SqliteSource),
    Postgres(PostgresSource),
}

impl Database {
    pub async fn open(db: &str) -> std::result::Result<Self, String> {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            let source = PostgresSource::connect(db, "kv").await;
            return source
                .map(Self::Postgres)
                .map_err(|e| format!("cannot connect to PostgreSQL: {e}"));
        }
        let source = SqliteSource::open(db, "kv");
        source
            .map(Self::Sqlite)
            .map_err(|e| format!("cannot open database: {e}"))
    }

    /// The database's change feed (installing its triggers if needed).
    pub async fn change_feed(&self) -> std::result::Result<Box<dyn ChangeFeed<String>>, String> {
        match self {
            Self::Sqlite(db) => db
                .change_feed(Default::default())
                .await
                .map(|feed| Box::new(feed) as Box<dyn ChangeFeed<String>>),
            Self::Postgres(db) => db
                .change_feed(Default::default())
                .await
                .map(|feed| Box::new(feed) as Box<dyn ChangeFeed<String>>),
        }
        .map_err(|e| format!("cannot start the change feed: {e}"))
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

//! The change feed: a thread of its own polling the change log.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ractor_cache_sync::feed::{ChangeFeed, FeedEvent, Stamp};
use ractor_cache_sync::{Error, Result, Version};
use rusqlite::{params, Connection};
use tokio::sync::mpsc;

/// Most log rows one poll reads; more wait for the next poll (at once, with no barrier before).
const ROWS_PER_POLL: i64 = 10_000;

/// How a [`SqliteFeed`] polls and prunes the change log.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FeedSettings {
    /// How often the log is read: a change reaches the cache about this long after its
    /// commit, and the feed's lease is renewed as often. Default 10 ms; at most a tenth of the
    /// cache's lease is sensible.
    pub poll_every: Duration,
    /// Log rows older than this are pruned. A feed that falls further behind (its process was
    /// stopped) finds the log pruned past its position and reports a loss (the cache checks
    /// every entry). Default 10 minutes.
    pub retention: Duration,
    /// A backlog larger than this many rows (a bulk update) is not read row by row: the feed
    /// skips it and reports a loss, so the cache checks its entries in bulk. Default 100 000.
    pub max_backlog: u64,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            poll_every: Duration::from_millis(10),
            retention: Duration::from_secs(600),
            max_backlog: 100_000,
        }
    }
}

impl FeedSettings {
    /// Sets [`poll_every`](Self::poll_every).
    #[must_use]
    pub fn poll_every(mut self, every: Duration) -> Self {
        self.poll_every = every;
        self
    }

    /// Sets [`retention`](Self::retention).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }
}

/// The change feed of a [`SqliteSource`](crate::SqliteSource) table, from its change log.
///
/// SQLite serialises writers and logs each change in the transaction that makes it, so the
/// log's order (`seq`) is commit order, and a read transaction sees every commit finished
/// before it began: after each read the feed reports a barrier stamped just before the read.
/// Each poll runs on the feed's own thread; it stops when the feed is dropped.
pub struct SqliteFeed {
    events: mpsc::Receiver<FeedEvent<String>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SqliteFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteFeed").finish_non_exhaustive()
    }
}

impl SqliteFeed {
    pub(crate) fn start(conn: Connection, table: &str, settings: FeedSettings) -> Result<Self> {
        if settings.poll_every.is_zero() || settings.poll_every > Duration::from_secs(60) {
            return Err(Error::Config(
                "poll_every must be between 1 ns and 60 s".into(),
            ));
        }
        // Reads in WAL mode never wait for writers; pruning may, and must not hold up the
        // barriers for long.
        conn.busy_timeout(Duration::from_millis(100))
            .map_err(Error::from_source)?;
        let mut log = Log {
            conn,
            table: table.to_owned(),
            settings,
            position: 0,
            pruned_at: Instant::now(),
        };
        log.position = log.last().map_err(Error::from_source)?;
        let (tx, events) = mpsc::channel(64);
        let thread = std::thread::Builder::new()
            .name(format!("{table}-change-feed"))
            .spawn(move || log.run(&tx))
            .map_err(Error::from_source)?;
        Ok(Self {
            events,
            thread: Some(thread),
        })
    }
}

impl Drop for SqliteFeed {
    fn drop(&mut self) {
        // The thread notices at its next send; no need to wait for it.
        self.events.close();
        drop(self.thread.take());
    }
}

#[async_trait::async_trait]
impl ChangeFeed<String> for SqliteFeed {
    async fn next(&mut self) -> Option<FeedEvent<String>> {
        self.events.recv().await
    }
}

/// The poller's state.
struct Log {
    conn: Connection,
    table: String,
    settings: FeedSettings,
    /// The last log row delivered.
    position: i64,
    pruned_at: Instant,
}

/// What one read of the log found.
enum Read {
    /// Rows after the position, complete up to the read (`complete`) or not.
    Rows {
        rows: Vec<(i64, String, Option<Version>)>,
        complete: bool,
    },
    /// Rows after the position are gone (pruned) or too many: skipped to `to`.
    Skipped { to: i64, why: String },
}

impl Log {
    fn run(mut self, tx: &mpsc::Sender<FeedEvent<String>>) {
        loop {
            let stamp = Stamp::now();
            match self.read() {
                Ok(Read::Rows { rows, complete }) => {
                    if let Some(&(last, _, _)) = rows.last() {
                        self.position = last;
                        let changes = rows.into_iter().map(|(_, k, v)| (k, v)).collect();
                        if tx.blocking_send(FeedEvent::Changed(changes)).is_err() {
                            return;
                        }
                    }
                    if !complete {
                        continue;
                    }
                    if tx.blocking_send(FeedEvent::Barrier(stamp)).is_err() {
                        return;
                    }
                }
                Ok(Read::Skipped { to, why }) => {
                    self.position = to;
                    if tx.blocking_send(FeedEvent::Lost(why)).is_err() {
                        return;
                    }
                    continue;
                }
                // No barrier: the feed's lease lapses while the log cannot be read.
                Err(error) => {
                    tracing::warn!(table = %self.table, %error, "cannot read the change log")
                }
            }
            if tx.is_closed() {
                return;
            }
            self.prune();
            std::thread::sleep(self.settings.poll_every);
        }
    }

    /// The highest row number the log ever gave.
    fn last(&self) -> rusqlite::Result<i64> {
        let t = &self.table;
        self.conn.query_row(
            &format!(
                "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{t}_changes'), 0)"
            ),
            [],
            |row| row.get(0),
        )
    }

    /// The rows after the position, in one read transaction.
    fn read(&mut self) -> rusqlite::Result<Read> {
        let t = self.table.clone();
        let position = self.position;
        let tx = self.conn.transaction()?;
        // The log is dense (AUTOINCREMENT, and SQLite's writers one at a time): the rows after
        // the position are exactly position + 1 ..= the highest number ever given.
        let (first, last): (Option<i64>, i64) = tx.query_row(
            &format!(
                "SELECT (SELECT MIN(seq) FROM {t}_changes WHERE seq > ?1),
                        COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{t}_changes'), 0)"
            ),
            params![position],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        if last < position {
            // The log starts again below us: the file was replaced or the log recreated.
            return Ok(Read::Skipped {
                to: last,
                why: format!("the change log of {t} starts again below this feed's position"),
            });
        }
        if last == position {
            return Ok(Read::Rows {
                rows: Vec::new(),
                complete: true,
            });
        }
        if first != Some(position + 1) {
            return Ok(Read::Skipped {
                to: last,
                why: format!("the change log of {t} was pruned past this feed's position"),
            });
        }
        let backlog = u64::try_from(last - position).unwrap_or(0);
        if backlog > self.settings.max_backlog {
            return Ok(Read::Skipped {
                to: last,
                why: format!("{backlog} changes to {t} at once: checking every entry instead"),
            });
        }
        let mut statement = tx.prepare_cached(&format!(
            "SELECT seq, key, version FROM {t}_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))?;
        let rows = statement
            .query_map(params![position, ROWS_PER_POLL], |row| {
                let version: Option<i64> = row.get(2)?;
                Ok((row.get(0)?, row.get(1)?, version.map(|v| v as Version)))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let complete = rows.last().is_none_or(|&(seq, _, _)| seq >= last);
        Ok(Read::Rows { rows, complete })
    }

    /// Deletes rows past the retention, about once a second (any feed of the file may).
    fn prune(&mut self) {
        if self.pruned_at.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.pruned_at = Instant::now();
        let t = &self.table;
        let retention = i64::try_from(self.settings.retention.as_secs()).unwrap_or(i64::MAX);
        let pruned = self.conn.execute(
            &format!(
                "DELETE FROM {t}_changes WHERE at < CAST(strftime('%s', 'now') AS INTEGER) - ?1"
            ),
            params![retention],
        );
        if let Err(error) = pruned {
            tracing::debug!(table = %t, %error, "could not prune the change log (tried again later)");
        }
    }
}

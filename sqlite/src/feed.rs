//! The change feed: a thread of its own polling the change log.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ractor_cache_sync::cache::{ChangeFeed, FeedEvent, Stamp};
use ractor_cache_sync::{Error, Result, Version};
use rusqlite::{params, Connection};

use crate::Key;
use tokio::sync::mpsc;

/// How often a barrier is handed to the cache while nothing changes (each renews the feed's
/// lease, which lasts a whole lease: no need to wake the cache at every read where reads are
/// frequent).
const IDLE_BARRIER_EVERY: Duration = Duration::from_millis(50);

/// Reads again, after 0.25, 0.5, 1 and 2 ms, when a read right after a write's wake found
/// nothing new.
const RECHECKS: u32 = 4;

/// Most log rows one poll reads; more wait for the next poll (at once, with no barrier before).
const ROWS_PER_POLL: i64 = 10_000;

/// How a [`SqliteFeed`] reads and prunes the change log.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FeedSettings {
    /// How often the log is read where the feed cannot be woken by writes to the database's
    /// files (other systems than Linux, or inotify unavailable): a change reaches the cache
    /// about this long after its commit. Default 10 ms.
    pub poll_every: Duration,
    /// On Linux the log is read as soon as the database's files are written (inotify), and
    /// at least this often otherwise; each read renews the feed's lease. Default 100 ms; at
    /// most a tenth of the cache's lease is sensible.
    pub idle_every: Duration,
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
            idle_every: Duration::from_millis(100),
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

    /// Sets [`idle_every`](Self::idle_every).
    #[must_use]
    pub fn idle_every(mut self, every: Duration) -> Self {
        self.idle_every = every;
        self
    }

    /// Sets [`max_backlog`](Self::max_backlog).
    #[must_use]
    pub fn max_backlog(mut self, rows: u64) -> Self {
        self.max_backlog = rows;
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
pub struct SqliteFeed<K = String> {
    events: mpsc::Receiver<FeedEvent<K>>,
    thread: Option<JoinHandle<()>>,
}

impl<K> std::fmt::Debug for SqliteFeed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteFeed").finish_non_exhaustive()
    }
}

impl<K: Key> SqliteFeed<K> {
    pub(crate) fn start(
        conn: Connection,
        path: &std::path::Path,
        table: &str,
        settings: FeedSettings,
    ) -> Result<Self> {
        let sensible = |d: Duration| !d.is_zero() && d <= Duration::from_secs(60);
        if !sensible(settings.poll_every) || !sensible(settings.idle_every) {
            return Err(Error::Config(
                "poll_every and idle_every must be between 1 ns and 60 s".into(),
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
            writes: Writes::watch(path),
            _key: std::marker::PhantomData,
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

impl<K> Drop for SqliteFeed<K> {
    fn drop(&mut self) {
        // The thread notices at its next send; no need to wait for it.
        self.events.close();
        drop(self.thread.take());
    }
}

#[async_trait::async_trait]
impl<K: Key> ChangeFeed<K> for SqliteFeed<K> {
    async fn next(&mut self) -> Option<FeedEvent<K>> {
        self.events.recv().await
    }
}

/// The poller's state.
struct Log<K> {
    conn: Connection,
    table: String,
    settings: FeedSettings,
    /// The last log row delivered.
    position: i64,
    pruned_at: Instant,
    writes: Writes,
    _key: std::marker::PhantomData<fn() -> K>,
}

/// What one read of the log found.
enum Read<K> {
    /// Rows after the position, complete up to the read (`complete`) or not.
    Rows {
        rows: Vec<(i64, K, Option<Version>)>,
        complete: bool,
    },
    /// Rows after the position are gone (pruned) or too many: skipped to `to`.
    Skipped { to: i64, why: String },
}

impl<K: Key> Log<K> {
    fn run(mut self, tx: &mpsc::Sender<FeedEvent<K>>) {
        let mut barrier_at = Instant::now() - IDLE_BARRIER_EVERY;
        // Woken by a write to the files, and how many reads since found nothing new: a writer
        // writes its log file before it publishes the commit to readers (in shared memory,
        // which wakes nobody), so a read right after the wake can miss it.
        let (mut woken, mut rechecks) = (false, 0u32);
        loop {
            let stamp = Stamp::now();
            let mut changed = false;
            match self.read() {
                Ok(Read::Rows { rows, complete }) => {
                    changed = !rows.is_empty();
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
                    // After changes at once (they may have closed nothing, but the barrier
                    // behind them is what vouches); idle, often enough to keep the lease.
                    if changed || barrier_at.elapsed() >= IDLE_BARRIER_EVERY {
                        barrier_at = Instant::now();
                        if tx.blocking_send(FeedEvent::Barrier(stamp)).is_err() {
                            return;
                        }
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
            if woken && !changed && rechecks < RECHECKS {
                std::thread::sleep(Duration::from_micros(250 << rechecks));
                rechecks += 1;
                continue;
            }
            rechecks = 0;
            woken = self.writes.wait(&self.settings);
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

    /// The first row after `position` and the highest number the log ever gave, from one
    /// statement (its own read transaction when run outside one).
    fn head(conn: &Connection, t: &str, position: i64) -> rusqlite::Result<(Option<i64>, i64)> {
        conn.prepare_cached(&format!(
            "SELECT (SELECT MIN(seq) FROM {t}_changes WHERE seq > ?1),
                    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = '{t}_changes'), 0)"
        ))?
        .query_row(params![position], |row| Ok((row.get(0)?, row.get(1)?)))
    }

    /// The rows after the position, in one read transaction.
    fn read(&mut self) -> rusqlite::Result<Read<K>> {
        let t = self.table.clone();
        let position = self.position;
        // Idle, one statement: nothing new since the position.
        if Self::head(&self.conn, &t, position)?.1 == position {
            return Ok(Read::Rows {
                rows: Vec::new(),
                complete: true,
            });
        }
        let tx = self.conn.transaction()?;
        // The log is dense (AUTOINCREMENT, and SQLite's writers one at a time): the rows after
        // the position are exactly position + 1 ..= the highest number ever given.
        let (first, last) = Self::head(&tx, &t, position)?;
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
        // Keys are read as whatever SQLite holds, then decoded: a row whose key the key type
        // cannot hold (a negative id for `u64`, a blob) is a loss to repair, not a poll that
        // fails for ever.
        let read = statement
            .query_map(params![position, ROWS_PER_POLL], |row| {
                let version: Option<i64> = row.get(2)?;
                let key: rusqlite::types::Value = row.get(1)?;
                Ok((row.get::<_, i64>(0)?, key, version.map(|v| v as Version)))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut rows = Vec::with_capacity(read.len());
        for (expected, (seq, key, version)) in (position + 1..).zip(read) {
            if seq != expected {
                // A hole in the middle: rows pruned (a clock stepped back) or lost.
                return Ok(Read::Skipped {
                    to: last,
                    why: format!("the change log of {t} misses rows after {}", expected - 1),
                });
            }
            let decoded = K::column_result(rusqlite::types::ValueRef::from(&key));
            let Ok(key) = decoded else {
                return Ok(Read::Skipped {
                    to: last,
                    why: format!("the change log of {t} holds a key this cache's key type cannot read ({key:?})"),
                });
            };
            rows.push((seq, key, version));
        }
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
        let cutoff = "CAST(strftime('%s', 'now') AS INTEGER) - ?1";
        // A read first: a delete is a write, which would wake every feed of the file.
        let due = self
            .conn
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM {t}_changes WHERE at < {cutoff})"
            ))
            .and_then(|mut s| s.query_row(params![retention], |row| row.get::<_, bool>(0)));
        if !due.unwrap_or(false) {
            return;
        }
        let pruned = self.conn.execute(
            &format!("DELETE FROM {t}_changes WHERE at < {cutoff}"),
            params![retention],
        );
        if let Err(error) = pruned {
            tracing::debug!(table = %t, %error, "could not prune the change log (tried again later)");
        }
    }
}

/// Wakes the feed when the database's files are written (inotify on their directory, on
/// Linux: the write-ahead log is deleted and created again as connections come and go), so
/// that a commit is read at once and an idle feed reads only every `idle_every`; elsewhere, or
/// if inotify cannot be had, it sleeps `poll_every`. Only latency rides on it: what the lease
/// rests on is the read that follows, whenever it comes.
struct Writes {
    #[cfg(target_os = "linux")]
    inotify: Option<nix::sys::inotify::Inotify>,
    /// The database file's name: events of other files in the directory are not writes.
    #[cfg(target_os = "linux")]
    name: std::ffi::OsString,
}

#[cfg(target_os = "linux")]
impl Writes {
    fn watch(path: &std::path::Path) -> Self {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => std::path::Path::new("."),
        };
        let flags = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE;
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .and_then(|i| i.add_watch(dir, flags).map(|_| i))
            .map_err(|error| {
                tracing::debug!(%error, "no inotify: the change log is polled");
            })
            .ok();
        Self {
            inotify,
            name: path.file_name().unwrap_or_default().to_owned(),
        }
    }

    /// Waits; whether a write to the database's files woke it.
    fn wait(&mut self, settings: &FeedSettings) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let Some(inotify) = &self.inotify else {
            std::thread::sleep(settings.poll_every);
            return false;
        };
        let ours = |name: &Option<std::ffi::OsString>| {
            name.as_ref().is_some_and(|n| {
                n.as_encoded_bytes()
                    .starts_with(self.name.as_encoded_bytes())
            })
        };
        let deadline = Instant::now() + settings.idle_every;
        loop {
            // Whole milliseconds, rounded up: a timeout of 0 would spin.
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = left.as_micros().div_ceil(1_000);
            if ms == 0 {
                return false;
            }
            let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(n) if n > 0 => {
                    // Drain the events: one read of the log covers them all.
                    let mut written = false;
                    while let Ok(events) = inotify.read_events() {
                        if events.is_empty() {
                            break;
                        }
                        written |= events.iter().any(|e| ours(&e.name));
                    }
                    if written {
                        return true;
                    }
                }
                Ok(_) => return false,
                Err(nix::errno::Errno::EINTR) => {}
                Err(error) => {
                    tracing::debug!(%error, "inotify failed: the change log is polled");
                    self.inotify = None;
                    std::thread::sleep(settings.poll_every);
                    return false;
                }
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
impl Writes {
    fn watch(_: &std::path::Path) -> Self {
        Self {}
    }

    fn wait(&mut self, settings: &FeedSettings) -> bool {
        std::thread::sleep(settings.poll_every);
        false
    }
}

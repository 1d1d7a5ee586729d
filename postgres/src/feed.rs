//! The change feed: statement-level triggers that `pg_notify` what changed, and a task of its
//! own listening on a connection of its own.

use std::collections::VecDeque;
use std::time::Duration;

use ractor_cache_sync::cache::{ChangeFeed, FeedEvent, Stamp};
use ractor_cache_sync::{Error, Result, Version};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls, Notification};

/// Bytes of one notification's payload at most (PostgreSQL's limit is 8 000).
const PAYLOAD_BYTES: usize = 7_000;

/// Barriers sent and not yet back past which the connection is taken as broken.
const BARRIERS_IN_FLIGHT: usize = 16;

/// How a [`PostgresFeed`] listens.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct FeedSettings {
    /// How often the feed sends itself a barrier (a `NOTIFY` on its own channel): the feed's
    /// lease is renewed as often. Default 100 ms; at most a tenth of the cache's lease is
    /// sensible. Each is one tiny transaction on the server.
    pub barrier_every: Duration,
    /// A statement changing more rows than this notifies `*` ("check everything") instead of
    /// every key, so bulk updates cost one notification. Default 10 000.
    pub max_rows: u32,
    /// The longest wait between two connection attempts after the connection broke (the
    /// first is at once, then it doubles from 100 ms). Default 5 s.
    pub max_backoff: Duration,
}

impl Default for FeedSettings {
    fn default() -> Self {
        Self {
            barrier_every: Duration::from_millis(100),
            max_rows: 10_000,
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl FeedSettings {
    /// Sets [`barrier_every`](Self::barrier_every).
    #[must_use]
    pub fn barrier_every(mut self, every: Duration) -> Self {
        self.barrier_every = every;
        self
    }

    /// Sets [`max_rows`](Self::max_rows) (used when the triggers are installed).
    #[must_use]
    pub fn max_rows(mut self, rows: u32) -> Self {
        self.max_rows = rows;
        self
    }
}

/// The statement-level triggers that notify the table's changes on channel `<table>_changes`:
/// a JSON array of `[key, version]` pairs (`version` null for a deleted or renamed-away key),
/// as many notifications as PostgreSQL's payload limit needs, or `*` for a statement changing
/// more than `max_rows` rows, a key too long to describe, or a `TRUNCATE` (which fires no
/// row or delete trigger).
pub(crate) fn triggers(t: &str, max_rows: u32) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {t}_notify_changes() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE
             items text[];
             item text;
             payload text := '';
         BEGIN
             IF TG_OP = 'TRUNCATE' THEN
                 PERFORM pg_notify('{t}_changes', '*');
                 RETURN NULL;
             ELSIF TG_OP = 'INSERT' THEN
                 SELECT array_agg(json_build_array(key, version)::text) INTO items FROM changed;
             ELSIF TG_OP = 'UPDATE' THEN
                 SELECT array_agg(x) INTO items FROM (
                     SELECT json_build_array(key, version)::text AS x FROM changed
                     UNION ALL
                     SELECT json_build_array(g.key, NULL)::text FROM gone g
                         WHERE NOT EXISTS (SELECT 1 FROM changed c WHERE c.key = g.key)
                 ) s;
             ELSE
                 SELECT array_agg(json_build_array(key, NULL)::text) INTO items FROM gone;
             END IF;
             IF items IS NULL THEN
                 RETURN NULL;
             END IF;
             IF cardinality(items) > {max_rows} THEN
                 PERFORM pg_notify('{t}_changes', '*');
                 RETURN NULL;
             END IF;
             FOREACH item IN ARRAY items LOOP
                 IF octet_length(item) > {PAYLOAD_BYTES} THEN
                     PERFORM pg_notify('{t}_changes', '*');
                 ELSE
                     IF octet_length(payload) + octet_length(item) + 2 > {PAYLOAD_BYTES} THEN
                         PERFORM pg_notify('{t}_changes', '[' || payload || ']');
                         payload := '';
                     END IF;
                     payload := CASE WHEN payload = '' THEN item ELSE payload || ',' || item END;
                 END IF;
             END LOOP;
             IF payload <> '' THEN
                 PERFORM pg_notify('{t}_changes', '[' || payload || ']');
             END IF;
             RETURN NULL;
         END $$;
         DROP TRIGGER IF EXISTS {t}_changes_on_insert ON {t};
         CREATE TRIGGER {t}_changes_on_insert AFTER INSERT ON {t}
             REFERENCING NEW TABLE AS changed
             FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify_changes();
         DROP TRIGGER IF EXISTS {t}_changes_on_update ON {t};
         CREATE TRIGGER {t}_changes_on_update AFTER UPDATE ON {t}
             REFERENCING OLD TABLE AS gone NEW TABLE AS changed
             FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify_changes();
         DROP TRIGGER IF EXISTS {t}_changes_on_truncate ON {t};
         CREATE TRIGGER {t}_changes_on_truncate AFTER TRUNCATE ON {t}
             FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify_changes();
         DROP TRIGGER IF EXISTS {t}_changes_on_delete ON {t};
         CREATE TRIGGER {t}_changes_on_delete AFTER DELETE ON {t}
             REFERENCING OLD TABLE AS gone
             FOR EACH STATEMENT EXECUTE FUNCTION {t}_notify_changes();"
    )
}

/// What a notification on the changes channel says.
fn parse(payload: &str) -> std::result::Result<Vec<(String, Option<Version>)>, String> {
    if payload == "*" {
        return Err("a statement changed more rows than are notified one by one (or a key too long to describe)".into());
    }
    let pairs: Vec<(String, Option<i64>)> = serde_json::from_str(payload)
        .map_err(|e| format!("a notification that does not parse ({e})"))?;
    Ok(pairs
        .into_iter()
        .map(|(key, version)| (key, version.map(|v| v as Version)))
        .collect())
}

/// The change feed of a [`PostgresSource`](crate::PostgresSource) table.
///
/// A task of its own keeps one connection that `LISTEN`s to the table's channel and to a
/// barrier channel of its own, and every [`barrier_every`](FeedSettings::barrier_every) sends
/// itself a `NOTIFY` on the latter, stamped just before: notifications are delivered in commit
/// order, so when it arrives every change committed before the stamp has been delivered. A
/// broken connection is replaced with backoff; once listening again the feed reports
/// [`FeedEvent::Reconnected`]. The task stops when the feed is dropped.
pub struct PostgresFeed {
    events: mpsc::Receiver<FeedEvent<String>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for PostgresFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresFeed").finish_non_exhaustive()
    }
}

impl Drop for PostgresFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait::async_trait]
impl ChangeFeed<String> for PostgresFeed {
    async fn next(&mut self) -> Option<FeedEvent<String>> {
        self.events.recv().await
    }
}

/// How one connection ended.
enum Ended {
    /// The feed was dropped.
    Dropped,
    /// The connection broke (or never came up); whether any barrier came back on it first
    /// (if none did, the next connection waits out the backoff: a fault that breaks every
    /// session at once must not become a reconnect, and a repair, in a tight loop).
    Broken(String, bool),
}

struct Listener {
    config: tokio_postgres::Config,
    changes: String,
    barriers: String,
    settings: FeedSettings,
    events: mpsc::Sender<FeedEvent<String>>,
    next_barrier: u64,
}

impl PostgresFeed {
    pub(crate) async fn start(
        config: tokio_postgres::Config,
        table: &str,
        settings: FeedSettings,
    ) -> Result<Self> {
        if settings.barrier_every.is_zero() || settings.barrier_every > Duration::from_secs(60) {
            return Err(Error::Config(
                "barrier_every must be between 1 ns and 60 s".into(),
            ));
        }
        // A channel only this feed listens to: std's per-process random hash keys are random
        // enough for a name.
        let id = {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
        let (events, rx) = mpsc::channel(256);
        let listener = Listener {
            config,
            changes: format!("{table}_changes"),
            // At most 28 bytes, whatever the table's name (PostgreSQL's limit is 63).
            barriers: format!("rcs_barrier_{id:016x}"),
            settings,
            events,
            next_barrier: 0,
        };
        // The first connection is made before the feed is handed out: a bad URL or a server
        // that refuses it is the caller's error now.
        let (client, driver) = listener.connect().await.map_err(Error::from_source)?;
        let task = tokio::spawn(async move { listener.run(client, driver).await });
        Ok(Self { events: rx, task })
    }
}

type Incoming = mpsc::UnboundedReceiver<Notification>;

impl Listener {
    /// Connects and listens; the notifications come through the returned channel.
    async fn connect(
        &self,
    ) -> std::result::Result<(tokio_postgres::Client, (Incoming, JoinHandle<()>)), String> {
        let connect = self.config.connect(NoTls);
        let (client, mut connection) = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| "connecting timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "the change feed's connection broke");
                        return;
                    }
                }
            }
        });
        let listen = format!("LISTEN {}; LISTEN {}", self.changes, self.barriers);
        if let Err(error) = client.batch_execute(&listen).await {
            driver.abort();
            return Err(error.to_string());
        }
        Ok((client, (rx, driver)))
    }

    async fn run(mut self, client: tokio_postgres::Client, driver: (Incoming, JoinHandle<()>)) {
        let mut session = Some((client, driver));
        let mut backoff = Duration::from_millis(100);
        loop {
            let (client, (incoming, driver)) = match session.take() {
                Some(session) => session,
                None => match self.connect().await {
                    Ok(session) => {
                        // Listening again: whatever was committed while the connection was
                        // down is covered by the cache's check, which starts after this.
                        if self.events.send(FeedEvent::Reconnected).await.is_err() {
                            return;
                        }
                        session
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?backoff, "the change feed cannot connect; trying again");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.settings.max_backoff);
                        continue;
                    }
                },
            };
            let ended = self.listen(&client, incoming).await;
            driver.abort();
            match ended {
                Ended::Dropped => return,
                Ended::Broken(error, true) => {
                    tracing::warn!(%error, "the change feed lost its connection; reconnecting");
                    backoff = Duration::from_millis(100);
                }
                Ended::Broken(error, false) => {
                    tracing::warn!(%error, ?backoff, "the change feed's connection broke before any barrier came back; reconnecting after the backoff");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.settings.max_backoff);
                }
            }
        }
    }

    /// Forwards notifications and sends barriers until the connection breaks.
    async fn listen(&mut self, client: &tokio_postgres::Client, mut incoming: Incoming) -> Ended {
        let mut pending: VecDeque<(u64, Stamp)> = VecDeque::new();
        let mut delivered = false;
        let mut tick = tokio::time::interval(self.settings.barrier_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                notification = incoming.recv() => {
                    let Some(n) = notification else {
                        return Ended::Broken("the connection closed".into(), delivered);
                    };
                    let event = if n.channel() == self.barriers {
                        let Ok(id) = n.payload().parse::<u64>() else { continue };
                        let mut stamp = None;
                        while pending.front().is_some_and(|&(sent, _)| sent <= id) {
                            stamp = pending.pop_front().map(|(_, s)| s);
                        }
                        match stamp {
                            Some(stamp) => {
                                delivered = true;
                                FeedEvent::Barrier(stamp)
                            }
                            None => continue,
                        }
                    } else {
                        match parse(n.payload()) {
                            Ok(changes) => FeedEvent::Changed(changes),
                            Err(why) => FeedEvent::Lost(why),
                        }
                    };
                    if self.events.send(event).await.is_err() {
                        return Ended::Dropped;
                    }
                }
                _ = tick.tick() => {
                    if self.events.is_closed() {
                        return Ended::Dropped;
                    }
                    if pending.len() >= BARRIERS_IN_FLIGHT {
                        return Ended::Broken(format!("{BARRIERS_IN_FLIGHT} barriers never came back"), delivered);
                    }
                    self.next_barrier += 1;
                    let id = self.next_barrier;
                    pending.push_back((id, Stamp::now()));
                    let payload = id.to_string();
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&self.barriers, &payload];
                    let sent = client.execute("SELECT pg_notify($1, $2)", &params);
                    match tokio::time::timeout(Duration::from_secs(5), sent).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return Ended::Broken(error.to_string(), delivered),
                        Err(_) => return Ended::Broken("a barrier took over 5 s to send".into(), delivered),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_to_changes_and_anything_else_is_a_loss() {
        assert_eq!(
            parse(r#"[["a",5],["b",null]]"#),
            Ok(vec![("a".into(), Some(5)), ("b".into(), None)])
        );
        assert!(parse("*").is_err());
        assert!(parse("not json").is_err());
        assert!(parse(r#"[["a","five"]]"#).is_err());
    }
}

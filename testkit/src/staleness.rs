//! Runs a writer and readers against real node processes while a fault is applied, records
//! every committed write and every read with the time it was sent, and checks the staleness
//! bound offline.
//!
//! The bound, checked exactly: a read *sent* at least `lease` after a put's reply must return
//! that put's version or a newer one. (A node serves a cached value only while it holds a
//! lease anchored at the send time of one of its own heartbeats that the writer echoed after
//! every earlier publish; such a heartbeat left before the put's reply, so the lease ends
//! before `reply + lease`.) Every process on the machine shares one monotonic clock.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::process::NodeProcess;

/// One read: when it was sent, what came back.
#[derive(Debug, Clone)]
pub struct Read {
    pub node: String,
    pub key: String,
    pub sent: Instant,
    pub version: u64,
    pub hit: bool,
}

/// Everything that happened in one scenario.
#[derive(Debug, Default)]
pub struct History {
    /// (reply received, key, committed version).
    pub puts: Mutex<Vec<(Instant, String, u64)>>,
    pub reads: Mutex<Vec<Read>>,
}

/// What the checker found.
#[derive(Debug)]
pub struct Verdict {
    pub reads: usize,
    pub hits: usize,
    pub puts: usize,
    /// Longest time any read returned a version after a newer one had been committed.
    pub worst_staleness: Duration,
    pub violations: Vec<String>,
}

pub const KEY: &str = "k";

/// Writes `KEY` on `writer` every `pace` until `stop`.
pub fn write_loop(writer: &mut NodeProcess, history: &History, stop: &AtomicBool, pace: Duration) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let reply = writer.ask(&format!("put {KEY} value-{n}"));
        let version = reply["version"].as_u64().expect("put returns a version");
        history.record_put(KEY, version);
        std::thread::sleep(pace);
    }
}

/// Reads `KEY` on `reader` every `pace` until `stop`.
pub fn read_loop(reader: &mut NodeProcess, history: &History, stop: &AtomicBool, pace: Duration) {
    while !stop.load(Ordering::Relaxed) {
        let sent = Instant::now();
        let Ok(reply) = reader.request(&format!("get {KEY}")) else {
            return; // the node was killed on purpose
        };
        let read = Read {
            node: reader.spec.name.clone(),
            key: KEY.to_owned(),
            sent,
            version: reply["version"].as_u64().unwrap_or(0),
            hit: reply["hit"] == true,
        };
        history.reads.lock().unwrap().push(read);
        std::thread::sleep(pace);
    }
}

impl Verdict {
    /// Prints the figures under `label` and fails the test on any violation.
    pub fn report_and_assert(&self, label: &str) {
        println!(
            "{label}: {} puts, {} reads ({} hits), worst staleness {:?}, {} violations",
            self.puts,
            self.reads,
            self.hits,
            self.worst_staleness,
            self.violations.len()
        );
        let shown = &self.violations[..self.violations.len().min(5)];
        assert!(self.violations.is_empty(), "{label}: {shown:#?}");
    }
}

impl History {
    /// Waits until at least `reads` reads and `puts` puts are recorded, for at most
    /// `deadline`: a scenario then has enough traffic to judge however slow the machine is.
    ///
    /// # Panics
    ///
    /// If there is still too little traffic at the deadline.
    pub fn wait_for_traffic(&self, reads: usize, puts: usize, deadline: Duration) {
        let counts = || {
            let r = self.reads.lock().unwrap_or_else(|e| e.into_inner()).len();
            let p = self.puts.lock().unwrap_or_else(|e| e.into_inner()).len();
            (r, p)
        };
        let enough = crate::process::eventually(deadline, || {
            let (r, p) = counts();
            (r >= reads && p >= puts).then_some(())
        });
        let (r, p) = counts();
        assert!(
            enough.is_some(),
            "too little traffic to judge: {r} reads, {p} puts"
        );
    }

    pub fn record_put(&self, key: &str, version: u64) {
        let put = (Instant::now(), key.to_owned(), version);
        self.puts.lock().unwrap().push(put);
    }

    /// Checks every read against the puts of its key: exact bound `lease`, no tolerance.
    pub fn check(&self, lease: Duration) -> Verdict {
        self.check_each(|_| lease)
    }

    /// Checks every read against the puts of its key, with the bound `bound(key)` for that
    /// key (writes that bypass the nodes are only caught by a timer's check: their bound is a
    /// latency, not the lease).
    pub fn check_each(&self, bound: impl Fn(&str) -> Duration) -> Verdict {
        let puts = self.puts.lock().unwrap().clone();
        let reads = self.reads.lock().unwrap().clone();
        let mut violations = Vec::new();
        let mut worst = Duration::ZERO;
        for read in &reads {
            let lease = bound(&read.key);
            let same_key = || puts.iter().filter(|(_, key, _)| *key == read.key);
            let required = same_key()
                .filter(|(reply, _, _)| *reply + lease <= read.sent)
                .map(|&(_, _, v)| v)
                .max()
                .unwrap_or(0);
            if read.version < required {
                violations.push(format!(
                    "{} read {} v{} but v{} was committed over {:?} before the read was sent",
                    read.node, read.key, read.version, required, lease
                ));
            }
            // The first newer version committed, if any, and how long before this read.
            let newer = same_key()
                .filter(|(_, _, v)| *v > read.version)
                .map(|(at, _, _)| *at)
                .min();
            if let Some(newer_at) = newer {
                worst = worst.max(read.sent.saturating_duration_since(newer_at));
            }
        }
        Verdict {
            reads: reads.len(),
            hits: reads.iter().filter(|r| r.hit).count(),
            puts: puts.len(),
            worst_staleness: worst,
            violations,
        }
    }

    /// The last committed version of `key`.
    pub fn last_version_of(&self, key: &str) -> u64 {
        let puts = self.puts.lock().unwrap();
        puts.iter()
            .filter(|(_, k, _)| k == key)
            .map(|&(_, _, v)| v)
            .max()
            .unwrap_or(0)
    }

    /// The last committed version of [`KEY`].
    pub fn last_version(&self) -> u64 {
        self.last_version_of(KEY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(sent: Instant, version: u64) -> Read {
        Read {
            node: "b".into(),
            key: KEY.into(),
            sent,
            version,
            hit: true,
        }
    }

    #[test]
    fn a_read_one_lease_after_a_reply_must_see_that_write() {
        let lease = Duration::from_millis(100);
        let start = Instant::now();
        let history = History::default();
        history.puts.lock().unwrap().push((start, KEY.into(), 2));
        let reads = [
            read(start + Duration::from_millis(99), 1), // inside the lease: allowed
            read(start + Duration::from_millis(100), 2),
            read(start + Duration::from_millis(150), 1), // past the lease: a violation
        ];
        history.reads.lock().unwrap().extend(reads);
        let verdict = history.check(lease);
        assert_eq!(verdict.violations.len(), 1, "{:?}", verdict.violations);
        assert!(verdict.violations[0].contains("v1 but v2"));
        assert_eq!(verdict.worst_staleness, Duration::from_millis(150));
        assert_eq!((verdict.puts, verdict.reads, verdict.hits), (1, 3, 3));
    }
}

//! One node-level heartbeat per peer for every topic. Each topic's Synchronization actor, when
//! it heartbeats, deposits its encoded heartbeat here instead of casting it to every peer; the
//! node-level actor sends the latest deposit of every topic inside its own heartbeat, and the
//! receiving node-level actor hands each to the local actor of its topic, which reads it as if
//! it had come on its own. Idle cost is one message per peer per interval, whatever the number
//! of topics.
//!
//! What a bundled heartbeat announces was true when it was deposited (every invalidation
//! accepted before it is covered, as for a heartbeat sent at once), and the stamp it carries
//! is the deposit's: it reaches the peer later, so a lease anchored at it is, if anything,
//! shorter. A deposit younger than [`MIN_AGE_US`] is held back for the next round, so that the
//! publishes it announces (which travel on the topic's own path) are cast well before it.
//!
//! On arrival, a topic heartbeat that announces nothing the topic has yet to apply (the peer's
//! incarnation as known, its last sequence number already applied) is taken at once on the
//! node-level actor's task, through the topic's [`BeatSink`]: no message to the topic's actor,
//! so a node's idle cost does not grow with its number of topics. Any other (a gap to repair, a
//! restart, a first contact) is queued to the topic's actor, behind the publishes that reached
//! its mailbox first, as a topic heartbeat sent on its own would be.
//!
//! Process-wide like `ractor::pg`: there is one node per process. A topic bundles only while a
//! node-level actor is running and heartbeats at least as often as the topic does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

/// A deposit this recent waits for the next node-level heartbeat.
const MIN_AGE_US: u64 = 5_000;

struct Deposit {
    envelope: Vec<u8>,
    at: u64,
    previous: Option<Vec<u8>>,
}

fn deposits() -> &'static Mutex<HashMap<String, Deposit>> {
    static DEPOSITS: OnceLock<Mutex<HashMap<String, Deposit>>> = OnceLock::new();
    DEPOSITS.get_or_init(Mutex::default)
}

/// The node-level heartbeat interval (µs) while a node-level actor runs, else 0.
static NODE_INTERVAL_US: AtomicU64 = AtomicU64::new(0);

fn with<T>(f: impl FnOnce(&mut HashMap<String, Deposit>) -> T) -> T {
    f(&mut deposits().lock().unwrap_or_else(|e| e.into_inner()))
}

/// The node-level actor started (interval in µs) or stopped (0).
pub(crate) fn set_node_interval(interval_us: u64) {
    NODE_INTERVAL_US.store(interval_us, Ordering::Release);
}

/// Whether a topic that heartbeats every `interval_us` should deposit its heartbeats here.
pub(crate) fn bundles(interval_us: u64) -> bool {
    let node = NODE_INTERVAL_US.load(Ordering::Acquire);
    node > 0 && node <= interval_us
}

/// Deposits `topic`'s latest encoded heartbeat, made at `now`.
pub(crate) fn deposit(topic: &str, envelope: Vec<u8>, now: u64) {
    with(|all| {
        let previous = all.remove(topic).map(|d| d.envelope);
        let deposit = Deposit {
            envelope,
            at: now,
            previous,
        };
        all.insert(topic.to_owned(), deposit);
    });
}

/// The topic's actor stopped: nothing more of it goes out.
pub(crate) fn withdraw(topic: &str) {
    with(|all| all.remove(topic));
}

/// Every topic's heartbeat to send at `now`: the latest deposit, or the one before it when the
/// latest is too recent. A deposit whose actor is gone without withdrawing it (killed: no
/// clean-up runs) is dropped, so that peers stop hearing of an actor that no longer exists.
pub(crate) fn collect(now: u64) -> Vec<(String, Vec<u8>)> {
    let live: std::collections::HashSet<String> = with_sinks(|sinks| {
        sinks
            .iter()
            .filter(|(_, sink)| sink.strong_count() > 0)
            .map(|(topic, _)| topic.clone())
            .collect()
    });
    with(|all| {
        all.retain(|topic, _| live.contains(topic));
        all.iter()
            .filter_map(|(topic, d)| {
                let envelope = if now.saturating_sub(d.at) >= MIN_AGE_US {
                    Some(&d.envelope)
                } else {
                    d.previous.as_ref()
                };
                envelope.map(|e| (topic.clone(), e.clone()))
            })
            .collect()
    })
}

/// A topic's actor state, as the node-level actor reaches it.
pub(crate) trait BeatSink: Send + Sync {
    /// Takes the encoded topic heartbeat now if it announces nothing this topic has yet to
    /// apply; `false` (nothing done) to have it queued to the topic's actor instead (so too
    /// when the topic is busy: the caller never waits for it). `token`
    /// is the metadata of the cast that carried it.
    fn offer(&self, envelope: &[u8], token: Option<&[u8]>) -> bool;
    /// This node's clock missed time (the system was suspended): close the lease gate until
    /// heartbeats sent after now renew it, and repair.
    fn slept(&self);
}

/// Tells every topic of this process that the clock missed time.
pub(crate) fn slept() {
    let sinks: Vec<Arc<dyn BeatSink>> =
        with_sinks(|all| all.values().filter_map(Weak::upgrade).collect());
    for sink in sinks {
        sink.slept();
    }
}

type Sinks = HashMap<String, Weak<dyn BeatSink>>;

fn sinks() -> &'static Mutex<Sinks> {
    static SINKS: OnceLock<Mutex<Sinks>> = OnceLock::new();
    SINKS.get_or_init(Mutex::default)
}

fn with_sinks<T>(f: impl FnOnce(&mut Sinks) -> T) -> T {
    f(&mut sinks().lock().unwrap_or_else(|e| e.into_inner()))
}

/// The topic's actor started: bundled heartbeats for it may be taken through `sink`. What an
/// earlier actor of the topic deposited goes (it would otherwise travel, as the "previous"
/// deposit, after the new actor's first heartbeat).
pub(crate) fn register(topic: &str, sink: Weak<dyn BeatSink>) {
    with_sinks(|all| all.insert(topic.to_owned(), sink));
    withdraw(topic);
}

/// The topic's actor behind `sink` stopped (a later actor's registration is kept).
pub(crate) fn unregister(topic: &str, sink: &Weak<dyn BeatSink>) {
    with_sinks(|all| {
        if all
            .get(topic)
            .is_some_and(|s| std::ptr::addr_eq(s.as_ptr(), sink.as_ptr()))
        {
            all.remove(topic);
        }
    });
}

/// The sink of each topic in `topics` that has one, in the same order.
pub(crate) fn sinks_of<'t>(
    topics: impl Iterator<Item = &'t str>,
) -> Vec<Option<Arc<dyn BeatSink>>> {
    with_sinks(|all| {
        topics
            .map(|topic| all.get(topic).and_then(Weak::upgrade))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sink;

    impl BeatSink for Sink {
        fn offer(&self, _: &[u8], _: Option<&[u8]>) -> bool {
            false
        }
        fn slept(&self) {}
    }

    fn collected(topic: &str, now: u64) -> Option<Vec<u8>> {
        collect(now)
            .into_iter()
            .find(|(t, _)| t == topic)
            .map(|(_, envelope)| envelope)
    }

    #[test]
    fn a_killed_actor_s_deposit_stops_going_out() {
        // Process-wide: a topic name of this test's own.
        let topic = "bundle-killed-actor";
        let sink: Arc<dyn BeatSink> = Arc::new(Sink);
        register(topic, Arc::downgrade(&sink));
        deposit(topic, vec![1, 2, 3], 1_000);
        assert_eq!(collected(topic, 1_000 + MIN_AGE_US), Some(vec![1, 2, 3]));

        // Killed: its state (the sink) is dropped, and neither `withdraw` nor `unregister` ran.
        drop(sink);
        assert_eq!(collected(topic, 2_000 + MIN_AGE_US), None);
        assert!(with(|all| !all.contains_key(topic)), "the deposit is kept");

        // A new actor of the topic bundles again.
        let sink: Arc<dyn BeatSink> = Arc::new(Sink);
        register(topic, Arc::downgrade(&sink));
        deposit(topic, vec![4], 3_000);
        assert_eq!(collected(topic, 3_000 + MIN_AGE_US), Some(vec![4]));
        unregister(topic, &Arc::downgrade(&sink));
        withdraw(topic);
    }

    #[test]
    fn a_new_actor_of_the_topic_never_carries_the_previous_one_s_heartbeat() {
        let topic = "bundle-new-actor";
        let old: Arc<dyn BeatSink> = Arc::new(Sink);
        register(topic, Arc::downgrade(&old));
        deposit(topic, vec![1], 1_000);
        // Spawned again while the old state still lives (a kill is cleaned up later).
        let new: Arc<dyn BeatSink> = Arc::new(Sink);
        register(topic, Arc::downgrade(&new));
        assert_eq!(collected(topic, 1_000 + MIN_AGE_US), None);
        // Its first heartbeat, too recent to go out, has no old one to stand in for it.
        deposit(topic, vec![2], 2_000);
        assert_eq!(
            collected(topic, 2_001),
            None,
            "the old actor's heartbeat went out"
        );
        assert_eq!(collected(topic, 2_000 + MIN_AGE_US), Some(vec![2]));
        unregister(topic, &Arc::downgrade(&new));
        withdraw(topic);
    }
}

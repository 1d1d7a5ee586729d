//! One node-level heartbeat per peer for every topic. Each topic's Synchronization actor, when
//! it heartbeats, deposits its heartbeat here instead of casting it to every peer; the
//! node-level actor sends the latest deposit of every topic inside its own heartbeat, and the
//! receiving node-level actor hands each to the local actor of its topic, which reads it as if
//! it had come on its own. Idle cost is one message per peer per interval, whatever the number
//! of topics.
//!
//! A deposit is kept unencoded ([`TopicBeat`]): the node-level actor encodes it for each peer
//! with that peer's echo alone, as it does its own heartbeat. A receiver reads only the echo
//! about itself, so a heartbeat that listed every peer's would carry (and make every receiver
//! decode) a cluster's worth of names per topic to each peer: bytes that grow with the square of
//! the cluster.
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
//! A topic that heartbeats at the node's rate keeps no timer: the node's watchdog ticks it
//! ([`Bundle::tick_topics`]) on its own task, half an interval after the node-level heartbeat,
//! so that an idle node wakes once per interval for all of its topics; a topic busy with a
//! message is asked by message instead (its [`Kick`]), and ticks right after.
//!
//! Each [`Bundle`] is one node's: its `Node` makes it and keeps it, registered under the
//! node's name, and a topic actor finds it by the node name it is spawned with, so two nodes in
//! one process (tests) never carry each other's heartbeats; only `ractor::pg` is process-wide.
//! A topic bundles only while its node's node-level actor is running and heartbeats at least
//! as often as the topic does.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::protocol::envelope::{self, Body, Echo};

/// A deposit this recent waits for the next node-level heartbeat.
const MIN_AGE_US: u64 = 5_000;

/// A topic's heartbeat as deposited: encoded for each peer when the node-level heartbeat
/// carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicBeat {
    /// The sending node's name.
    pub(crate) origin: String,
    /// The topic's incarnation on this node.
    pub(crate) incarnation: u64,
    /// When it was made (this node's clock, µs).
    pub(crate) stamp: u64,
    /// The last sequence number the topic published.
    pub(crate) last_seq: u64,
    /// What the topic knows of each of its peers.
    pub(crate) echoes: Vec<Echo>,
}

impl TopicBeat {
    /// The heartbeat as `topic`'s envelope for `peer` (see [`echoes_for`]).
    pub(crate) fn encode_for(
        &self,
        topic: &str,
        peer: Option<&str>,
    ) -> Result<Vec<u8>, crate::error::Error> {
        let body = Body::Heartbeat {
            stamp: self.stamp,
            last_seq: self.last_seq,
            echoes: echoes_for(&self.echoes, peer),
            members: Vec::new(),
            bundled: Vec::new(),
        };
        envelope::encode(topic, &self.origin, self.incarnation, &body)
    }
}

/// The echoes a heartbeat to `peer` carries: the one about it (a receiver reads no other), or
/// all of them for a member whose node is not known by name.
pub(crate) fn echoes_for(echoes: &[Echo], peer: Option<&str>) -> Vec<Echo> {
    match peer {
        Some(peer) => echoes.iter().filter(|e| e.peer == peer).cloned().collect(),
        None => echoes.to_vec(),
    }
}

struct Deposit {
    beat: Arc<TopicBeat>,
    previous: Option<Arc<TopicBeat>>,
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
    /// The topic's heartbeat is due: ticks it now, on the caller's task, unless the topic is
    /// busy (`false`: nothing done, the caller asks its actor instead).
    fn tick(&self) -> bool {
        true
    }
}

/// Asks a topic's actor for a tick (a message to its mailbox), for when its state is busy.
pub(crate) type Kick = Arc<dyn Fn() + Send + Sync>;

/// A topic actor's state as the node reaches it, and, for a topic whose heartbeats the node
/// drives, how to ask its actor for one.
struct Registered {
    sink: Weak<dyn BeatSink>,
    kick: Option<Kick>,
}

type Sinks = HashMap<String, Registered>;

/// A lock whose holder panicked still guards consistent maps (every section is a single
/// insert, remove or read): recover it.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// One node's bundled topic heartbeats: each topic's latest deposit, each topic actor's sink,
/// and the node-level heartbeat interval.
#[derive(Default)]
pub(crate) struct Bundle {
    /// Each topic's latest encoded heartbeat (and the one before it).
    deposits: Mutex<HashMap<String, Deposit>>,
    /// The node-level heartbeat interval (µs) while a node-level actor runs, else 0.
    node_interval_us: AtomicU64,
    /// Each topic actor's state, as the node-level actor reaches it.
    sinks: Mutex<Sinks>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("node_interval_us", &self.node_interval_us)
            .finish_non_exhaustive()
    }
}

/// The bundles of the nodes of this process, by node name (each owned by its `Node`).
fn registry() -> &'static Mutex<HashMap<String, Weak<Bundle>>> {
    static NODES: OnceLock<Mutex<HashMap<String, Weak<Bundle>>>> = OnceLock::new();
    NODES.get_or_init(Mutex::default)
}

impl Bundle {
    /// A new bundle for the node named `node`, which keeps it: topic actors spawned with that
    /// name find it (a node started again under the same name replaces it).
    pub(crate) fn for_node(node: &str) -> Arc<Self> {
        let bundle = Arc::new(Self::default());
        let mut nodes = lock(registry());
        nodes.retain(|_, b| b.strong_count() > 0);
        nodes.insert(node.to_owned(), Arc::downgrade(&bundle));
        bundle
    }

    /// The bundle of the node named `node`; a topic spawned under a name no running node has
    /// gets one of its own, with no node-level actor: it never bundles.
    pub(crate) fn of(node: &str) -> Arc<Self> {
        lock(registry())
            .get(node)
            .and_then(Weak::upgrade)
            .unwrap_or_default()
    }

    /// The node-level actor started (interval in µs) or stopped (0).
    pub(crate) fn set_node_interval(&self, interval_us: u64) {
        self.node_interval_us.store(interval_us, Ordering::Release);
    }

    /// Whether a topic that heartbeats every `interval_us` should deposit its heartbeats here.
    pub(crate) fn bundles(&self, interval_us: u64) -> bool {
        let node = self.node_interval_us.load(Ordering::Acquire);
        node > 0 && node <= interval_us
    }

    /// Deposits `topic`'s latest heartbeat (made at its stamp).
    pub(crate) fn deposit(&self, topic: &str, beat: TopicBeat) {
        let mut all = lock(&self.deposits);
        let previous = all.remove(topic).map(|d| d.beat);
        let deposit = Deposit {
            beat: Arc::new(beat),
            previous,
        };
        all.insert(topic.to_owned(), deposit);
    }

    /// The topic's actor stopped: nothing more of it goes out.
    pub(crate) fn withdraw(&self, topic: &str) {
        lock(&self.deposits).remove(topic);
    }

    /// Every topic's heartbeat to send at `now`: the latest deposit, or the one before it when
    /// the latest is too recent. A deposit whose actor is gone without withdrawing it (killed:
    /// no clean-up runs) is dropped, so that peers stop hearing of an actor that no longer
    /// exists.
    pub(crate) fn collect(&self, now: u64) -> Vec<(String, Arc<TopicBeat>)> {
        let live: HashSet<String> = lock(&self.sinks)
            .iter()
            .filter(|(_, r)| r.sink.strong_count() > 0)
            .map(|(topic, _)| topic.clone())
            .collect();
        let mut all = lock(&self.deposits);
        all.retain(|topic, _| live.contains(topic));
        all.iter()
            .filter_map(|(topic, d)| {
                let beat = if now.saturating_sub(d.beat.stamp) >= MIN_AGE_US {
                    Some(&d.beat)
                } else {
                    d.previous.as_ref()
                };
                beat.map(|b| (topic.clone(), b.clone()))
            })
            .collect()
    }

    /// Tells every topic of this node that the clock missed time.
    pub(crate) fn slept(&self) {
        let sinks: Vec<Arc<dyn BeatSink>> = lock(&self.sinks)
            .values()
            .filter_map(|r| r.sink.upgrade())
            .collect();
        for sink in sinks {
            sink.slept();
        }
    }

    /// The node-level interval (µs) while a node-level actor runs, else 0.
    pub(crate) fn node_interval(&self) -> u64 {
        self.node_interval_us.load(Ordering::Acquire)
    }

    /// Ticks every topic whose heartbeats the node drives (registered with a [`Kick`]), on
    /// the caller's task: the node's watchdog calls it once per node-level interval, half an
    /// interval after the node-level heartbeat, so that each deposit is well over
    /// [`MIN_AGE_US`] old when that heartbeat carries it. A busy topic's actor is asked by
    /// message instead, and ticks once its current message is done.
    pub(crate) fn tick_topics(&self) {
        let driven: Vec<(Arc<dyn BeatSink>, Kick)> = lock(&self.sinks)
            .values()
            .filter_map(|r| Some((r.sink.upgrade()?, r.kick.clone()?)))
            .collect();
        for (sink, kick) in driven {
            // A panic in one topic's tick must not end the caller (the node's watchdog): the
            // topic's actor is asked instead, and finds the state as the panic left it.
            let ticked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sink.tick()));
            if !ticked.unwrap_or_else(|_| {
                tracing::error!("a topic's heartbeat tick panicked: its actor is asked instead");
                false
            }) {
                kick();
            }
        }
    }

    /// The topic's actor started: bundled heartbeats for it may be taken through `sink`. What
    /// an earlier actor of the topic deposited goes (it would otherwise travel, as the
    /// "previous" deposit, after the new actor's first heartbeat).
    /// With `kick`, the node drives the topic's heartbeats ([`tick_topics`](Self::tick_topics)):
    /// its actor keeps no timer.
    pub(crate) fn register(&self, topic: &str, sink: Weak<dyn BeatSink>, kick: Option<Kick>) {
        lock(&self.sinks).insert(topic.to_owned(), Registered { sink, kick });
        self.withdraw(topic);
    }

    /// The topic's actor behind `sink` stopped (a later actor's registration is kept).
    pub(crate) fn unregister(&self, topic: &str, sink: &Weak<dyn BeatSink>) {
        let mut all = lock(&self.sinks);
        if all
            .get(topic)
            .is_some_and(|r| std::ptr::addr_eq(r.sink.as_ptr(), sink.as_ptr()))
        {
            all.remove(topic);
        }
    }

    /// The sink of each topic in `topics` that has one, in the same order.
    pub(crate) fn sinks_of<'t>(
        &self,
        topics: impl Iterator<Item = &'t str>,
    ) -> Vec<Option<Arc<dyn BeatSink>>> {
        let all = lock(&self.sinks);
        topics
            .map(|topic| all.get(topic).and_then(|r| r.sink.upgrade()))
            .collect()
    }
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

    /// A topic heartbeat told apart by its last sequence number, made at `stamp`.
    fn beat(last_seq: u64, stamp: u64) -> TopicBeat {
        TopicBeat {
            origin: "me@here".into(),
            incarnation: 1,
            stamp,
            last_seq,
            echoes: Vec::new(),
        }
    }

    /// The last sequence number of the heartbeat of `topic` that goes out at `now`.
    fn collected(bundle: &Bundle, topic: &str, now: u64) -> Option<u64> {
        bundle
            .collect(now)
            .into_iter()
            .find(|(t, _)| t == topic)
            .map(|(_, beat)| beat.last_seq)
    }

    #[test]
    fn a_peer_s_copy_of_a_topic_heartbeat_carries_its_own_echo_alone() {
        let echo = |peer: &str, stamp| Echo {
            peer: peer.into(),
            incarnation: 7,
            stamp,
            applied: 3,
        };
        let beat = TopicBeat {
            echoes: vec![echo("a@h", 10), echo("b@h", 20), echo("c@h", 30)],
            ..beat(5, 1_000)
        };
        let echoes_in =
            |peer| match envelope::Envelope::decode(&beat.encode_for("t", peer).unwrap())
                .unwrap()
                .body
            {
                Body::Heartbeat {
                    echoes, last_seq, ..
                } => {
                    assert_eq!(last_seq, 5);
                    echoes
                }
                _ => unreachable!(),
            };
        assert_eq!(echoes_in(Some("b@h")), vec![echo("b@h", 20)]);
        assert_eq!(
            echoes_in(Some("new@h")),
            Vec::<Echo>::new(),
            "not heard yet"
        );
        assert_eq!(echoes_in(None), beat.echoes, "a member not known by name");
    }

    /// A topic the node drives: ticked on the caller's task, or, when busy, kicked.
    struct Driven {
        busy: bool,
        panics: bool,
        ticks: AtomicU64,
    }

    impl BeatSink for Driven {
        fn offer(&self, _: &[u8], _: Option<&[u8]>) -> bool {
            false
        }
        fn slept(&self) {}
        fn tick(&self) -> bool {
            assert!(!self.panics, "a subscriber panicked");
            if self.busy {
                return false;
            }
            self.ticks.fetch_add(1, Ordering::Relaxed);
            true
        }
    }

    #[test]
    fn the_node_ticks_the_topics_it_drives_and_asks_a_busy_one_s_actor() {
        let bundle = Bundle::default();
        let kicks = Arc::new(AtomicU64::new(0));
        let kick = || -> Kick {
            let kicks = kicks.clone();
            Arc::new(move || {
                kicks.fetch_add(1, Ordering::Relaxed);
            })
        };
        let idle = Arc::new(Driven {
            busy: false,
            panics: false,
            ticks: AtomicU64::new(0),
        });
        let busy = Arc::new(Driven {
            busy: true,
            panics: false,
            ticks: AtomicU64::new(0),
        });
        let own_timer = Arc::new(Driven {
            busy: false,
            panics: false,
            ticks: AtomicU64::new(0),
        });
        bundle.register("idle", Arc::downgrade(&idle) as _, Some(kick()));
        bundle.register("busy", Arc::downgrade(&busy) as _, Some(kick()));
        bundle.register("own", Arc::downgrade(&own_timer) as _, None);
        bundle.tick_topics();
        bundle.tick_topics();
        assert_eq!(idle.ticks.load(Ordering::Relaxed), 2);
        assert_eq!(
            kicks.load(Ordering::Relaxed),
            2,
            "the busy topic's actor is asked"
        );
        assert_eq!(
            own_timer.ticks.load(Ordering::Relaxed),
            0,
            "it ticks on its own"
        );

        // A killed actor's topic (its state dropped) is neither ticked nor kicked.
        drop(busy);
        bundle.tick_topics();
        assert_eq!(kicks.load(Ordering::Relaxed), 2);
        assert_eq!(idle.ticks.load(Ordering::Relaxed), 3);

        // A tick that panics ends neither the caller nor the other topics' ticks: its actor
        // is asked.
        let panicking = Arc::new(Driven {
            busy: false,
            panics: true,
            ticks: AtomicU64::new(0),
        });
        bundle.register("panics", Arc::downgrade(&panicking) as _, Some(kick()));
        bundle.tick_topics();
        assert_eq!(kicks.load(Ordering::Relaxed), 3);
        assert_eq!(idle.ticks.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_killed_actor_s_deposit_stops_going_out() {
        let (bundle, topic) = (Bundle::default(), "t");
        let sink: Arc<dyn BeatSink> = Arc::new(Sink);
        bundle.register(topic, Arc::downgrade(&sink), None);
        bundle.deposit(topic, beat(123, 1_000));
        assert_eq!(collected(&bundle, topic, 1_000 + MIN_AGE_US), Some(123));

        // Killed: its state (the sink) is dropped, and neither `withdraw` nor `unregister` ran.
        drop(sink);
        assert_eq!(collected(&bundle, topic, 2_000 + MIN_AGE_US), None);
        assert!(
            !lock(&bundle.deposits).contains_key(topic),
            "the deposit is kept"
        );

        // A new actor of the topic bundles again.
        let sink: Arc<dyn BeatSink> = Arc::new(Sink);
        bundle.register(topic, Arc::downgrade(&sink), None);
        bundle.deposit(topic, beat(4, 3_000));
        assert_eq!(collected(&bundle, topic, 3_000 + MIN_AGE_US), Some(4));
    }

    #[test]
    fn a_new_actor_of_the_topic_never_carries_the_previous_one_s_heartbeat() {
        let (bundle, topic) = (Bundle::default(), "t");
        let old: Arc<dyn BeatSink> = Arc::new(Sink);
        bundle.register(topic, Arc::downgrade(&old), None);
        bundle.deposit(topic, beat(1, 1_000));
        // Spawned again while the old state still lives (a kill is cleaned up later).
        let new: Arc<dyn BeatSink> = Arc::new(Sink);
        bundle.register(topic, Arc::downgrade(&new), None);
        assert_eq!(collected(&bundle, topic, 1_000 + MIN_AGE_US), None);
        // Its first heartbeat, too recent to go out, has no old one to stand in for it.
        bundle.deposit(topic, beat(2, 2_000));
        assert_eq!(
            collected(&bundle, topic, 2_001),
            None,
            "the old actor's heartbeat went out"
        );
        assert_eq!(collected(&bundle, topic, 2_000 + MIN_AGE_US), Some(2));
    }

    #[test]
    fn two_nodes_in_one_process_carry_only_their_own_topics() {
        let a = Bundle::for_node("bundle-test-a@here");
        let b = Bundle::for_node("bundle-test-b@here");
        let sink: Arc<dyn BeatSink> = Arc::new(Sink);
        // A topic actor of node a finds a's bundle by its node name, and deposits there.
        Bundle::of("bundle-test-a@here").register("t", Arc::downgrade(&sink), None);
        Bundle::of("bundle-test-a@here").deposit("t", beat(1, 1_000));
        assert_eq!(collected(&a, "t", 1_000 + MIN_AGE_US), Some(1));
        assert_eq!(collected(&b, "t", 1_000 + MIN_AGE_US), None);
        a.set_node_interval(200_000);
        assert!(a.bundles(200_000) && !b.bundles(200_000));
        // A name no node has: a bundle of its own that never bundles.
        assert!(!Bundle::of("nobody@here").bundles(u64::MAX));
        // The node gone, its bundle goes with it.
        drop(a);
        assert!(!Bundle::of("bundle-test-a@here").bundles(u64::MAX));
    }
}

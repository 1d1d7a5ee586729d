//! A model test of the protocol core: one to three writers W and one reader R exchange
//! publishes and heartbeats over a simulated network that drops, duplicates, reorders and
//! delays messages, partitions each writer, and crashes and restarts writers. Every writer
//! writes the same key in a shared source; R caches it and serves it only while its leases from
//! every member are valid. Invariant, checked at every read: R never serves a version older
//! than one committed at least one lease before the read.
//!
//! What the model covers besides the table:
//! - **coalescing**: a writer may hold an accepted invalidation in its batch and publish it
//!   later; every heartbeat publishes the batch first (the rule the bound rests on);
//! - **loads that take time**: a miss starts a load that reads the source when it starts and
//!   installs when it finishes, unless an invalidation or a repair came in between; a read
//!   joins a load only if it started less than a lease ago;
//! - **forgetting**: a writer silent for `forget_after` is forgotten from the table (a repair);
//! - **membership**: the reader's member set, whose size the gate compares with the table.
//!   A writer is a member from the moment its session is ready (before any heartbeat), and
//!   stops being one only on evidence that it is gone: its clean leave (after which it writes
//!   nothing until it starts again under a new incarnation). Silence is no evidence: a writer
//!   partitioned away for any length of time stays a member and may go on writing to the
//!   shared source. (`Membership` holds the two earlier rules, forgetting on silence and
//!   membership from the first heartbeat, for the schedules that show what they broke.)
//! - **forgeries**: a peer posing as a writer sends heartbeats echoing R's latest stamp (it
//!   receives R's heartbeats too) and publishes with absurd sequence numbers. They do not prove
//!   their origin (see `sessions::verify`), so R applies their invalidations and feeds nothing
//!   of them to the table, as the Synchronization actor does.
//!
//! - **change feeds**: in half the random schedules R also follows the source's change feed
//!   (every commit queued in commit order while it is connected, barriers stamped when asked
//!   for, a broken connection losing what it had queued and reporting its return, which R
//!   takes as a repair); R then serves its entry while either the peers' leases or the feed's
//!   lease (one lease past the last barrier delivered) are valid.
//!
//! R also repairs when an incarnation of a writer it has never heard of first reaches it: in
//! the real system that is the process-group join of the writer's new actor, which ractor hands
//! to R's Synchronization actor before any message of that actor (the join travels on the
//! session ahead of the actor's casts, and supervision events are handled before messages).

use proptest::prelude::*;

use super::{Beat, LeaseParams, PeerTable};
use crate::protocol::arrival::Arrival;

const LEASE: u64 = 1_000;
const FORGET_AFTER: u64 = 3 * LEASE;
const MAX_WRITERS: usize = 3;

#[derive(Debug, Clone)]
enum Body {
    Publish {
        inc: u64,
        seq: u64,
        version: u64,
    },
    Beat {
        inc: u64,
        stamp: u64,
        last_seq: u64,
        echo: Option<u64>,
    },
    /// A clean leave after publishing up to `last_seq`.
    Leave {
        inc: u64,
        last_seq: u64,
    },
}

#[derive(Debug, Clone)]
struct Msg {
    from: usize,
    /// Whether the cast proves it came from `from` (false for forgeries).
    verified: bool,
    body: Body,
}

#[derive(Debug, Clone)]
enum Step {
    /// A writer commits a new version; `batch`: its invalidation waits in the batch.
    Write {
        writer: usize,
        batch: bool,
    },
    /// The coalescing window ends: the batch is published.
    Flush(usize),
    WriterBeat(usize),
    ReaderBeat,
    Deliver {
        to_reader: bool,
        pick: usize,
        duplicate: bool,
    },
    Drop {
        to_reader: bool,
        pick: usize,
    },
    Advance(u64),
    Read,
    FinishLoad(usize),
    /// The reader's actor ticks: silent peers are forgotten.
    Tick,
    /// A read after the token of one earlier immediate write (see `World::read_after`).
    ReadAfter(usize),
    /// A writer crashes, and starts again under a new incarnation (also after a leave).
    CrashWriter(usize),
    /// A writer leaves cleanly: it publishes its batch, announces its last sequence number,
    /// and writes nothing more until it starts again.
    Leave(usize),
    Partition {
        writer: usize,
        on: bool,
    },
    ForgeBeat {
        writer: usize,
        last_seq: u64,
    },
    ForgePublish {
        writer: usize,
        seq: u64,
    },
    /// The reader's change feed asks for a barrier, stamped now.
    FeedBarrier,
    /// The change feed delivers its oldest item (changes and barriers, in commit order).
    FeedDeliver,
    /// The change feed's connection breaks: what it had not delivered is lost, and commits
    /// made while it is down are never reported.
    FeedDisconnect,
    /// The change feed is listening again, and reports it.
    FeedReconnect,
}

fn step() -> impl Strategy<Value = Step> {
    let w = 0..MAX_WRITERS;
    prop_oneof![
        3 => (w.clone(), any::<bool>()).prop_map(|(writer, batch)| Step::Write { writer, batch }),
        2 => w.clone().prop_map(Step::Flush),
        4 => w.clone().prop_map(Step::WriterBeat),
        3 => Just(Step::ReaderBeat),
        10 => (any::<bool>(), 0usize..8, prop::bool::weighted(0.1))
            .prop_map(|(to_reader, pick, duplicate)| Step::Deliver { to_reader, pick, duplicate }),
        2 => (any::<bool>(), 0usize..8).prop_map(|(to_reader, pick)| Step::Drop { to_reader, pick }),
        4 => (1u64..400).prop_map(Step::Advance),
        6 => Just(Step::Read),
        3 => (0usize..4).prop_map(Step::FinishLoad),
        1 => Just(Step::Tick),
        3 => (0usize..16).prop_map(Step::ReadAfter),
        1 => w.clone().prop_map(Step::CrashWriter),
        1 => w.clone().prop_map(Step::Leave),
        1 => (w.clone(), any::<bool>()).prop_map(|(writer, on)| Step::Partition { writer, on }),
        1 => (w.clone(), prop_oneof![Just(0u64), Just(1u64), Just(1_000_000_000)])
            .prop_map(|(writer, last_seq)| Step::ForgeBeat { writer, last_seq }),
        1 => (w, prop_oneof![Just(1u64), Just(1_000_000_000)])
            .prop_map(|(writer, seq)| Step::ForgePublish { writer, seq }),
        2 => Just(Step::FeedBarrier),
        4 => Just(Step::FeedDeliver),
        1 => Just(Step::FeedDisconnect),
        1 => Just(Step::FeedReconnect),
    ]
}

#[derive(Default)]
struct Writer {
    inc: u64,
    seq: u64,
    /// The highest heartbeat stamp received from the reader (the reader's clock).
    reader_stamp: Option<u64>,
    /// Versions whose invalidation waits in the batch.
    batch: Vec<u64>,
    to_writer: Vec<u64>, // reader heartbeat stamps on their way to this writer
    partitioned: bool,
    /// Left cleanly: writes and sends nothing until it starts again.
    gone: bool,
    /// The reader knows this incarnation: it has had a ready session with it (the writers the
    /// model starts with count as known, as members reported by gossip would). An incarnation
    /// started while partitioned from the reader is unknown to it until the partition heals,
    /// and writes nothing until then: a node that has reached nobody in the cluster is outside
    /// what the mesh can vouch for (see `docs/semantics.md`, *Membership*).
    known: bool,
}

/// How the reader's member set changes. The default is the rule the crate follows; each flag
/// brings back an earlier rule, for the schedules that show what it broke.
#[derive(Debug, Default, Clone, Copy)]
struct Membership {
    /// Forget a member not heard from for `forget_after`, as the table does.
    forget_on_silence: bool,
    /// Count a writer as a member only once one of its heartbeats arrived.
    from_first_beat: bool,
    /// A change feed that comes back from a broken connection without saying so.
    silent_reconnect: bool,
}

/// What the reader's change feed delivers, in order.
#[derive(Debug, Clone, Copy)]
enum FeedItem {
    Changed(u64),
    Barrier(u64),
    Reconnected,
}

/// The reader's change feed from the shared source (see `crate::feed`): every commit is
/// queued in commit order while it is connected; a barrier stamped `t` vouches for every
/// commit before `t` once it is delivered, for one lease past `t`.
#[derive(Debug)]
struct Feed {
    queue: std::collections::VecDeque<FeedItem>,
    connected: bool,
    /// The stamp of the last barrier delivered.
    anchor: Option<u64>,
}

/// A load in flight on the reader.
struct Load {
    started: u64,
    /// What the source held when the load read it.
    version: u64,
    /// An invalidation or a repair came in after it started: it must not install.
    overtaken: bool,
}

struct World {
    now: u64,
    committed: Vec<(u64, u64)>, // (commit time, version)
    writers: Vec<Writer>,
    table: PeerTable,
    cached: Option<u64>,
    loads: Vec<Load>,
    to_reader: Vec<Msg>,
    /// The reader's latest heartbeat stamp, which a forger receives like every peer.
    reader_stamp: Option<u64>,
    /// (writer, incarnation) pairs whose join R has seen.
    joined: Vec<(usize, u64)>,
    /// The reader's member set: which writers it counts.
    member: Vec<bool>,
    /// Tokens of immediate writes: (writer, incarnation, sequence number, version).
    tokens: Vec<(usize, u64, u64, u64)>,
    /// What the reader has applied of each writer, as the Synchronization actor publishes it
    /// for write tokens.
    applied: crate::protocol::progress::Applied,
    /// When the reader last heard from each writer (a verified message).
    heard_at: Vec<u64>,
    rule: Membership,
    /// The reader's change feed, if it has one.
    feed: Option<Feed>,
}

fn name(writer: usize) -> String {
    format!("w{writer}")
}

impl World {
    fn new(writers: usize, rule: Membership) -> Self {
        let params = LeaseParams {
            lease: LEASE,
            forget_after: FORGET_AFTER,
        };
        Self {
            now: 1,
            committed: vec![(0, 0)],
            writers: (0..writers)
                .map(|_| Writer {
                    inc: 1,
                    known: true,
                    ..Writer::default()
                })
                .collect(),
            table: PeerTable::new(params),
            cached: None,
            loads: Vec::new(),
            to_reader: Vec::new(),
            reader_stamp: None,
            joined: Vec::new(),
            member: vec![!rule.from_first_beat; writers],
            tokens: Vec::new(),
            applied: Default::default(),
            heard_at: vec![1; writers],
            rule,
            feed: None,
        }
    }

    /// The reader follows the source's change feed from the start.
    fn with_feed(mut self) -> Self {
        self.feed = Some(Feed {
            queue: Default::default(),
            connected: true,
            anchor: None,
        });
        self
    }

    /// A writer's session became ready (it started, or started again).
    fn ready(&mut self, w: usize) {
        if !self.rule.from_first_beat {
            self.member[w] = true;
        }
    }

    fn current_version(&self) -> u64 {
        self.committed.last().map_or(0, |&(_, v)| v)
    }

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        let n = self.writers.len();
        match step {
            Step::Write { writer, .. }
            | Step::Flush(writer)
            | Step::WriterBeat(writer)
            | Step::Leave(writer)
                if self.writers[writer % n].gone || !self.writers[writer % n].known => {}
            Step::Write { writer, batch } => {
                let w = writer % n;
                let version = self.current_version() + 1;
                self.committed.push((self.now, version));
                if let Some(feed) = self.feed.as_mut().filter(|f| f.connected) {
                    feed.queue.push_back(FeedItem::Changed(version));
                }
                if batch {
                    self.writers[w].batch.push(version);
                } else {
                    self.publish(w, version);
                    let writer = &self.writers[w];
                    self.tokens.push((w, writer.inc, writer.seq, version));
                }
            }
            Step::Flush(w) => self.flush(w % n),
            Step::WriterBeat(w) => {
                let w = w % n;
                // Every heartbeat covers every invalidation accepted before it.
                self.flush(w);
                let writer = &self.writers[w];
                let body = Body::Beat {
                    inc: writer.inc,
                    stamp: self.now,
                    last_seq: writer.seq,
                    echo: writer.reader_stamp,
                };
                self.send(w, body);
            }
            Step::ReaderBeat => {
                self.reader_stamp = Some(self.now);
                for writer in self.writers.iter_mut().filter(|w| !w.partitioned) {
                    writer.to_writer.push(self.now);
                }
            }
            Step::Deliver {
                to_reader: true,
                pick,
                duplicate,
            } if !self.to_reader.is_empty() => {
                let at = pick % self.to_reader.len();
                let msg = if duplicate {
                    self.to_reader[at].clone()
                } else {
                    self.to_reader.remove(at)
                };
                self.receive(msg);
            }
            Step::Deliver {
                to_reader: false,
                pick,
                ..
            } => {
                let writer = &mut self.writers[pick % n];
                if !writer.to_writer.is_empty() {
                    let stamp = writer.to_writer.remove(pick % writer.to_writer.len());
                    writer.reader_stamp = Some(writer.reader_stamp.map_or(stamp, |s| s.max(stamp)));
                }
            }
            Step::Drop {
                to_reader: true,
                pick,
            } if !self.to_reader.is_empty() => {
                let at = pick % self.to_reader.len();
                self.to_reader.remove(at);
            }
            Step::Drop {
                to_reader: false,
                pick,
            } => {
                let writer = &mut self.writers[pick % n];
                if !writer.to_writer.is_empty() {
                    let at = pick % writer.to_writer.len();
                    writer.to_writer.remove(at);
                }
            }
            Step::Advance(by) => self.now += by,
            Step::Read => return self.read().map(|_| ()),
            Step::ReadAfter(pick) => return self.read_after(pick),
            Step::FinishLoad(pick) if !self.loads.is_empty() => {
                let load = self.loads.remove(pick % self.loads.len());
                if !load.overtaken {
                    self.cached = Some(load.version);
                }
            }
            Step::Tick => {
                let forgotten = self.table.forget_silent(self.now);
                if !forgotten.is_empty() {
                    self.repair();
                }
                if self.rule.forget_on_silence {
                    for w in 0..n {
                        if self.now.saturating_sub(self.heard_at[w]) > FORGET_AFTER {
                            self.member[w] = false;
                        }
                    }
                }
            }
            Step::Leave(w) => {
                let w = w % n;
                self.flush(w);
                let writer = &mut self.writers[w];
                writer.gone = true;
                let body = Body::Leave {
                    inc: writer.inc,
                    last_seq: writer.seq,
                };
                self.send(w, body);
            }
            Step::CrashWriter(w) => {
                let w = w % n;
                // Its session dies with whatever it had not sent, its batch included; a
                // heartbeat of it may still arrive late, carried by its node's next bundle,
                // after the new incarnation's first messages.
                self.writers[w] = Writer {
                    inc: self.writers[w].inc + 1,
                    partitioned: self.writers[w].partitioned,
                    ..Writer::default()
                };
                self.to_reader
                    .retain(|m| m.from != w || !m.verified || matches!(m.body, Body::Beat { .. }));
                if !self.writers[w].partitioned {
                    self.writers[w].known = true;
                    self.ready(w);
                }
            }
            Step::Partition { writer, on } => {
                let w = writer % n;
                self.writers[w].partitioned = on;
                if !on && !self.writers[w].known {
                    self.writers[w].known = true;
                    self.ready(w);
                }
            }
            Step::ForgeBeat { writer, last_seq } => {
                let w = writer % n;
                let body = Body::Beat {
                    inc: self.writers[w].inc,
                    stamp: self.now,
                    last_seq,
                    echo: self.reader_stamp,
                };
                self.forge(w, body);
            }
            Step::ForgePublish { writer, seq } => {
                let w = writer % n;
                let body = Body::Publish {
                    inc: self.writers[w].inc,
                    seq,
                    version: self.current_version(),
                };
                self.forge(w, body);
            }
            Step::FeedBarrier => {
                let now = self.now;
                if let Some(feed) = self.feed.as_mut().filter(|f| f.connected) {
                    feed.queue.push_back(FeedItem::Barrier(now));
                }
            }
            Step::FeedDeliver => {
                let item = self.feed.as_mut().and_then(|f| f.queue.pop_front());
                match item {
                    Some(FeedItem::Changed(version)) => self.invalidate(version),
                    Some(FeedItem::Barrier(stamp)) => {
                        let feed = self.feed.as_mut().expect("a feed");
                        feed.anchor = Some(feed.anchor.map_or(stamp, |a| a.max(stamp)));
                    }
                    Some(FeedItem::Reconnected) => self.repair(),
                    None => {}
                }
            }
            Step::FeedDisconnect => {
                if let Some(feed) = self.feed.as_mut() {
                    feed.connected = false;
                    feed.queue.clear();
                }
            }
            Step::FeedReconnect => {
                let silent = self.rule.silent_reconnect;
                if let Some(feed) = self.feed.as_mut().filter(|f| !f.connected) {
                    feed.connected = true;
                    if !silent {
                        feed.queue.push_back(FeedItem::Reconnected);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn publish(&mut self, w: usize, version: u64) {
        let writer = &mut self.writers[w];
        writer.seq += 1;
        let body = Body::Publish {
            inc: writer.inc,
            seq: writer.seq,
            version,
        };
        self.send(w, body);
    }

    /// One envelope for the whole batch, as the cache's coalescing sends it.
    fn flush(&mut self, w: usize) {
        if let Some(&version) = self.writers[w].batch.iter().max() {
            self.writers[w].batch.clear();
            self.publish(w, version);
        }
    }

    fn send(&mut self, from: usize, body: Body) {
        if !self.writers[from].partitioned {
            self.to_reader.push(Msg {
                from,
                verified: true,
                body,
            });
        }
    }

    /// A forger is never partitioned from the reader.
    fn forge(&mut self, from: usize, body: Body) {
        self.to_reader.push(Msg {
            from,
            verified: false,
            body,
        });
    }

    /// Everything cached, and every load in flight, may be older than a lost invalidation.
    fn repair(&mut self) {
        self.cached = None;
        for load in &mut self.loads {
            load.overtaken = true;
        }
    }

    /// An invalidation of the key at `version`.
    fn invalidate(&mut self, version: u64) {
        if self.cached.is_some_and(|c| c < version) {
            self.cached = None;
        }
        for load in self.loads.iter_mut().filter(|l| l.version < version) {
            load.overtaken = true;
        }
    }

    fn receive(&mut self, msg: Msg) {
        let origin = name(msg.from);
        if !msg.verified {
            // What the Synchronization actor does with an envelope that does not prove its
            // origin: its invalidation is applied, and nothing of it reaches the table.
            if let Body::Publish { version, .. } = msg.body {
                self.invalidate(version);
            }
            return;
        }
        let (Body::Publish { inc, .. } | Body::Beat { inc, .. } | Body::Leave { inc, .. }) =
            msg.body;
        self.heard_at[msg.from] = self.now;
        if !self.joined.contains(&(msg.from, inc)) {
            self.joined.push((msg.from, inc));
            self.repair(); // the join's repair (PeerJoined)
        }
        match msg.body {
            Body::Publish { inc, seq, version } => {
                let arrival = self.table.on_publish(&origin, inc, seq, self.now);
                if matches!(arrival, Arrival::Gap { .. } | Arrival::NewIncarnation) {
                    self.repair();
                }
                // A cache applies what the sequence numbers call a duplicate too.
                self.invalidate(version);
            }
            Body::Beat {
                inc,
                stamp,
                last_seq,
                echo,
            } => {
                let beat = Beat {
                    incarnation: inc,
                    stamp,
                    last_seq,
                    echo,
                    acked: None,
                };
                if self.table.on_beat(&origin, beat, self.now).is_some() {
                    self.repair();
                }
                self.member[msg.from] = true;
            }
            Body::Leave { inc, last_seq } => {
                if self
                    .table
                    .on_leave(&origin, inc, last_seq, self.now)
                    .is_some()
                {
                    self.repair();
                }
                // Evidence it is gone, if it is the incarnation that runs now.
                if self.writers[msg.from].inc == inc {
                    self.member[msg.from] = false;
                }
                // As the Synchronization actor does: all it published is applied or repaired.
                self.applied.set(&origin, inc, last_seq);
                return;
            }
        }
        // As the Synchronization actor does after each verified envelope (and its repair).
        if let Some((inc, applied)) = self.table.progress(&origin) {
            self.applied.set(&origin, inc, applied);
        }
    }

    fn read(&mut self) -> Result<u64, TestCaseError> {
        let members = self.member.iter().filter(|m| **m).count();
        let feed_vouches = self
            .feed
            .as_ref()
            .and_then(|f| f.anchor)
            .is_some_and(|anchor| self.now < anchor + LEASE);
        let served = match self.cached {
            Some(version) if self.now < self.table.valid_until(members) || feed_vouches => version,
            // A miss (or a bypass): join a load that started less than a lease ago, or start
            // one. Either answers with what the source held at its start, which is no older
            // than a lease before this read.
            _ => {
                let recent = self.now.saturating_sub(LEASE);
                // A load an invalidation or a repair overtook is no longer in the flight map:
                // nobody joins it.
                let joined = self
                    .loads
                    .iter()
                    .filter(|l| l.started > recent && !l.overtaken)
                    .map(|l| l.version)
                    .max();
                match joined {
                    Some(version) => version,
                    None => {
                        let version = self.current_version();
                        self.loads.push(Load {
                            started: self.now,
                            version,
                            overtaken: false,
                        });
                        version
                    }
                }
            }
        };
        let required = self
            .committed
            .iter()
            .filter(|&&(at, _)| at + LEASE <= self.now)
            .map(|&(_, v)| v)
            .max()
            .unwrap_or(0);
        prop_assert!(
            served >= required,
            "at {} served v{served}, but v{required} was committed a lease earlier",
            self.now
        );
        Ok(served)
    }

    /// A read after the token of one immediate write, if this reader has applied what the
    /// token names (as `Cache::get_after` would answer): it must serve that write's version or
    /// a newer one.
    fn read_after(&mut self, pick: usize) -> Result<(), TestCaseError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let (w, inc, seq, version) = self.tokens[pick % self.tokens.len()];
        if !self.applied.covers(&name(w), inc, seq) {
            return Ok(()); // the read would wait, or fail at its deadline
        }
        let served = self.read()?;
        prop_assert!(
            served >= version,
            "at {} a read after the token of v{version} (w{w} incarnation {inc} seq {seq}) served v{served}",
            self.now
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn a_reader_never_serves_a_value_older_than_one_lease(
        writers in 1..=MAX_WRITERS,
        feed in any::<bool>(),
        steps in prop::collection::vec(step(), 1..300)
    ) {
        let mut world = World::new(writers, Membership::default());
        if feed {
            world = world.with_feed();
        }
        for step in steps {
            world.run(step)?;
        }
    }
}

/// Runs a hand-written schedule; the error names the read that broke the bound.
fn run_schedule(writers: usize, steps: Vec<Step>) -> Result<(), TestCaseError> {
    run_schedule_under(Membership::default(), writers, steps)
}

fn run_schedule_under(
    rule: Membership,
    writers: usize,
    steps: Vec<Step>,
) -> Result<(), TestCaseError> {
    let mut world = World::new(writers, rule);
    if let Some(&Step::Partition { writer, on: true }) = steps.first() {
        world.writers[writer].partitioned = true; // from the start: never heard from
    }
    steps.into_iter().try_for_each(|step| world.run(step))
}

const TO_READER: Step = Step::Deliver {
    to_reader: true,
    pick: 0,
    duplicate: false,
};

/// Delivers the oldest reader heartbeat to writer `w`.
fn to_writer(w: usize) -> Step {
    Step::Deliver {
        to_reader: false,
        pick: w,
        duplicate: false,
    }
}

/// The first steps of every schedule: the writers' leases set up (each heard, and each
/// echoing a reader heartbeat), the key cached at v0, and time at 1.
fn established(writers: usize) -> Vec<Step> {
    let mut steps = Vec::new();
    for w in 0..writers {
        steps.extend([Step::WriterBeat(w), TO_READER]);
    }
    steps.push(Step::ReaderBeat);
    for w in 0..writers {
        steps.extend([to_writer(w), Step::WriterBeat(w), TO_READER]);
    }
    steps.extend([Step::Read, Step::FinishLoad(0)]);
    steps
}

/// The overtaking schedule: an invalidation waits in the writer's batch while a reader
/// heartbeat reaches the writer, and the writer's next heartbeat echoes it. Were that
/// heartbeat sent without publishing the batch first, it would renew the lease past the
/// invalidation it does not cover, and the reader would serve v0 more than a lease after v1.
#[test]
fn a_heartbeat_never_renews_a_lease_past_an_invalidation_still_in_the_batch() {
    let mut steps = established(1);
    steps.extend([
        Step::Advance(10),
        Step::Write {
            writer: 0,
            batch: true,
        },
        Step::Advance(10),
        Step::ReaderBeat,
        to_writer(0),
        Step::WriterBeat(0),
        TO_READER,
        TO_READER,
        // Past v1's commit by a lease, before the lease that heartbeat would give ends.
        Step::Advance(995),
        Step::Read,
    ]);
    run_schedule(1, steps).unwrap();
}

/// A member never heard from (partitioned from the start) keeps the gate closed, however
/// valid the other members' leases are.
#[test]
fn a_member_never_heard_from_keeps_the_gate_closed() {
    let mut steps = vec![Step::Partition {
        writer: 1,
        on: true,
    }];
    steps.extend(established(1));
    steps.extend([
        Step::Write {
            writer: 1,
            batch: false,
        },
        Step::Advance(LEASE),
        Step::ReaderBeat,
        to_writer(0),
        Step::WriterBeat(0),
        TO_READER,
        Step::Read,
    ]);
    run_schedule(2, steps).unwrap();
}

/// A peer posing as a partitioned writer echoes the reader's latest stamps in heartbeats of
/// its own: they renew nothing, and the writer's lease runs out.
#[test]
fn forged_heartbeats_renew_no_lease() {
    let mut steps = established(1);
    steps.extend([
        Step::Partition {
            writer: 0,
            on: true,
        },
        Step::Write {
            writer: 0,
            batch: false,
        },
    ]);
    for _ in 0..3 {
        steps.extend([
            Step::Advance(400),
            Step::ReaderBeat,
            Step::ForgeBeat {
                writer: 0,
                last_seq: 0,
            },
            TO_READER,
        ]);
    }
    steps.push(Step::Read);
    run_schedule(1, steps).unwrap();
}

/// A writer restarts before any message of its first incarnation reached the reader, and its
/// new incarnation has published nothing yet: its heartbeats speak for the new incarnation
/// only, so only the repair of its process-group join keeps the reader from serving v0 past
/// the lease after v1 (committed by the first incarnation, whose invalidation died with it).
#[test]
fn a_restart_before_the_first_message_arrived_is_caught_by_the_join() {
    let steps = vec![
        Step::Read,
        Step::FinishLoad(0),
        Step::Advance(10),
        Step::Write {
            writer: 0,
            batch: false,
        },
        Step::CrashWriter(0),
        Step::Advance(10),
        Step::ReaderBeat,
        to_writer(0),
        Step::WriterBeat(0),
        TO_READER,
        Step::Advance(995),
        Step::Read,
    ];
    run_schedule(1, steps).unwrap();
}

/// Keeps writer 0's lease valid through `LEASE` of time: the reader heartbeats, writer 0
/// echoes it.
fn renew_writer_0() -> Vec<Step> {
    vec![
        Step::Advance(LEASE / 2),
        Step::ReaderBeat,
        to_writer(0),
        Step::WriterBeat(0),
        TO_READER,
    ]
}

/// A partition longer than `forget_after`: writer 1 is cut off, forgotten by the table, and
/// writes. Silence is no evidence that it is gone, so it stays a member and the reader serves
/// only what it loads; forgetting members on silence (the earlier rule) reopens the gate and
/// serves v0 with no time limit.
#[test]
fn a_partition_longer_than_forget_after_keeps_the_gate_closed() {
    let mut steps = established(2);
    steps.push(Step::Partition {
        writer: 1,
        on: true,
    });
    for _ in 0..8 {
        steps.extend(renew_writer_0());
    }
    // Past forget_after: the table forgets writer 1 (a repair), the key is loaded again.
    steps.extend([Step::Tick, Step::Read, Step::FinishLoad(0)]);
    steps.push(Step::Write {
        writer: 1,
        batch: false,
    });
    for _ in 0..3 {
        steps.extend(renew_writer_0());
    }
    steps.push(Step::Read);
    run_schedule(2, steps.clone()).unwrap();
    let forgetting = Membership {
        forget_on_silence: true,
        ..Membership::default()
    };
    assert!(
        run_schedule_under(forgetting, 2, steps).is_err(),
        "the schedule no longer shows what forgetting on silence breaks"
    );
}

/// Writer 1's session is ready but none of its heartbeats has arrived when it writes, its
/// invalidation is lost and it vanishes. It is a member from the moment its session is ready,
/// so the reader serves only what it loads; counting members from their first heartbeat (the
/// earlier rule) leaves the gate open on writer 0's lease alone and serves v0 with no time
/// limit.
#[test]
fn a_member_is_counted_from_its_ready_session_not_its_first_heartbeat() {
    let mut steps = established(1);
    steps.extend([
        Step::Write {
            writer: 1,
            batch: false,
        },
        Step::Drop {
            to_reader: true,
            pick: 0,
        },
        Step::Partition {
            writer: 1,
            on: true,
        },
    ]);
    for _ in 0..3 {
        steps.extend(renew_writer_0());
    }
    steps.push(Step::Read);
    run_schedule(2, steps.clone()).unwrap();
    let from_first_beat = Membership {
        from_first_beat: true,
        ..Membership::default()
    };
    assert!(
        run_schedule_under(from_first_beat, 2, steps).is_err(),
        "the schedule no longer shows what counting members from their first heartbeat breaks"
    );
}

/// Runs a schedule with the reader following the change feed.
fn run_feed_schedule(rule: Membership, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let mut world = World::new(1, rule).with_feed();
    world.writers[0].partitioned = true; // never heard from over the mesh
    steps.into_iter().try_for_each(|step| world.run(step))
}

/// The only writer is partitioned from the reader from the start, so no peer lease ever
/// vouches: the feed alone does. Its barriers keep the cached value served, a write reaches
/// the reader through the feed ahead of the next barrier, and a write made while the feed's
/// connection was down is caught by the repair its reconnection reports; a feed that comes
/// back silently would serve v1 past the lease after v2.
#[test]
fn the_feed_alone_keeps_the_bound_and_a_silent_reconnect_would_break_it() {
    let mut steps = vec![Step::Read, Step::FinishLoad(0)];
    for _ in 0..4 {
        steps.extend([
            Step::Advance(LEASE / 2),
            Step::FeedBarrier,
            Step::FeedDeliver,
            Step::Read,
        ]);
    }
    steps.extend([
        Step::Write {
            writer: 0,
            batch: false,
        },
        Step::Advance(10),
        Step::FeedBarrier,
        Step::FeedDeliver, // the change
        Step::FeedDeliver, // the barrier
        Step::Read,
        Step::FinishLoad(0),
        // The connection breaks, v2 is committed meanwhile, the feed comes back.
        Step::FeedDisconnect,
        Step::Write {
            writer: 0,
            batch: false,
        },
        Step::FeedReconnect,
        Step::Advance(10),
        Step::FeedBarrier,
        Step::FeedDeliver,
        Step::FeedDeliver,
        Step::Advance(LEASE),
        Step::FeedBarrier,
        Step::FeedDeliver,
        Step::Read,
    ]);
    run_feed_schedule(Membership::default(), steps.clone()).unwrap();
    let silent = Membership {
        silent_reconnect: true,
        ..Membership::default()
    };
    assert!(
        run_feed_schedule(silent, steps).is_err(),
        "the schedule no longer shows what a silent reconnection breaks"
    );
}

//! A model test of the protocol core: one writer W and one reader R exchange publishes and
//! heartbeats over a simulated network that drops, duplicates, reorders and delays messages,
//! partitions, and crashes and restarts W. R caches one key and serves it only while its lease
//! from W is valid. Invariant, checked at every read: R never serves a version older than one
//! committed at least one lease earlier.
//!
//! Besides the table, R repairs when an incarnation of W it has never heard of first reaches
//! it: in the real system that is the process-group join of W's new actor, which ractor hands to
//! R's Synchronization actor before any message of that actor (the join travels on the session
//! ahead of the actor's casts, and supervision events are handled before messages).

use proptest::prelude::*;

use super::{Beat, LeaseParams, PeerTable};
use crate::protocol::arrival::Arrival;

const LEASE: u64 = 1_000;

#[derive(Debug, Clone)]
enum Msg {
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
}

#[derive(Debug, Clone)]
enum Step {
    Write,
    WriterBeat,
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
    CrashWriter,
    Partition(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => Just(Step::Write),
        3 => Just(Step::WriterBeat),
        3 => Just(Step::ReaderBeat),
        8 => (any::<bool>(), 0usize..8, prop::bool::weighted(0.1))
            .prop_map(|(to_reader, pick, duplicate)| Step::Deliver { to_reader, pick, duplicate }),
        2 => (any::<bool>(), 0usize..8).prop_map(|(to_reader, pick)| Step::Drop { to_reader, pick }),
        4 => (1u64..400).prop_map(Step::Advance),
        6 => Just(Step::Read),
        1 => Just(Step::CrashWriter),
        1 => any::<bool>().prop_map(Step::Partition),
    ]
}

#[derive(Default)]
struct Writer {
    inc: u64,
    seq: u64,
    /// The highest heartbeat stamp received from the reader (the reader's clock).
    reader_stamp: Option<u64>,
}

struct World {
    now: u64,
    committed: Vec<(u64, u64)>, // (commit time, version)
    writer: Writer,
    table: PeerTable,
    cached: Option<u64>,
    to_reader: Vec<Msg>,
    to_writer: Vec<u64>, // reader heartbeat stamps
    partitioned: bool,
    /// Incarnations of W whose join R has seen.
    joined: Vec<u64>,
}

impl World {
    fn new() -> Self {
        let params = LeaseParams {
            lease: LEASE,
            forget_after: 1_000_000,
        };
        Self {
            now: 1,
            committed: vec![(0, 0)],
            writer: Writer {
                inc: 1,
                ..Writer::default()
            },
            table: PeerTable::new(params),
            cached: None,
            to_reader: Vec::new(),
            to_writer: Vec::new(),
            partitioned: false,
            joined: Vec::new(),
        }
    }

    fn current_version(&self) -> u64 {
        self.committed.last().map_or(0, |&(_, v)| v)
    }

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        match step {
            Step::Write => {
                let version = self.current_version() + 1;
                self.committed.push((self.now, version));
                self.writer.seq += 1;
                let (inc, seq) = (self.writer.inc, self.writer.seq);
                self.send_to_reader(Msg::Publish { inc, seq, version });
            }
            Step::WriterBeat => {
                let w = &self.writer;
                let (inc, last_seq, echo) = (w.inc, w.seq, w.reader_stamp);
                let stamp = self.now;
                self.send_to_reader(Msg::Beat {
                    inc,
                    stamp,
                    last_seq,
                    echo,
                });
            }
            Step::ReaderBeat if !self.partitioned => self.to_writer.push(self.now),
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
            } if !self.to_writer.is_empty() => {
                let stamp = self.to_writer.remove(pick % self.to_writer.len());
                let w = &mut self.writer;
                w.reader_stamp = Some(w.reader_stamp.map_or(stamp, |s| s.max(stamp)));
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
            } if !self.to_writer.is_empty() => {
                let at = pick % self.to_writer.len();
                self.to_writer.remove(at);
            }
            Step::Advance(by) => self.now += by,
            Step::Read => return self.read(),
            Step::CrashWriter => {
                self.writer = Writer {
                    inc: self.writer.inc + 1,
                    ..Writer::default()
                };
                self.to_reader.clear();
                self.to_writer.clear();
            }
            Step::Partition(on) => self.partitioned = on,
            _ => {}
        }
        Ok(())
    }

    fn send_to_reader(&mut self, msg: Msg) {
        if !self.partitioned {
            self.to_reader.push(msg);
        }
    }

    fn receive(&mut self, msg: Msg) {
        let (Msg::Publish { inc, .. } | Msg::Beat { inc, .. }) = msg;
        if !self.joined.contains(&inc) {
            self.joined.push(inc);
            self.cached = None; // the join's repair (PeerJoined)
        }
        match msg {
            Msg::Publish { inc, seq, version } => {
                let arrival = self.table.on_publish("w", inc, seq, self.now);
                if matches!(arrival, Arrival::Gap { .. } | Arrival::NewIncarnation) {
                    self.cached = None; // repair
                }
                if arrival != Arrival::Duplicate && self.cached.is_some_and(|c| c < version) {
                    self.cached = None;
                }
            }
            Msg::Beat {
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
                if self.table.on_beat("w", beat, self.now).is_some() {
                    self.cached = None; // repair
                }
            }
        }
    }

    fn read(&mut self) -> Result<(), TestCaseError> {
        let served = match self.cached {
            Some(version) if self.now < self.table.valid_until(1) => version,
            _ => {
                let version = self.current_version();
                self.cached = Some(version);
                version
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
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn a_reader_never_serves_a_value_older_than_one_lease(
        steps in prop::collection::vec(step(), 1..300)
    ) {
        let mut world = World::new();
        for step in steps {
            world.run(step)?;
        }
    }
}

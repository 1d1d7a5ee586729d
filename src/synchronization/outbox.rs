//! The sending side of one topic on this node: sequence numbers, one encoding per message and
//! the casts, behind one lock shared by the actor and every handle (with the backlog of
//! unacknowledged bytes).
//!
//! Publishing needs no message to the actor: the caller's task takes the lock, numbers the
//! message, encodes the envelope once and casts the same bytes to every remote member. The
//! actor's heartbeats go through the same lock, so a heartbeat never announces a sequence
//! number whose publish has not been cast yet, and casts leave in sequence order.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};

use ractor::{pg, ActorRef};

use super::bundle::Bundle;
use super::message::SyncMessage;
use super::shared::SyncShared;
use super::TopicMessage;
use crate::clock::now_us;
use crate::counter::{add, bump};
use crate::protocol::backlog::Backlog;
use crate::protocol::envelope::{self, Body, Echo, Member};
use crate::topic::PG_SCOPE;

pub(crate) struct Outbox<M> {
    group: String,
    node_name: String,
    incarnation: u64,
    shared: Arc<SyncShared>,
    /// The node's bundled heartbeats: where this topic's go when they ride on the node's.
    bundle: Arc<Bundle>,
    state: Mutex<State>,
    _message: PhantomData<fn() -> M>,
}

#[derive(Default)]
struct State {
    last_seq: u64,
    backlog: Backlog,
    /// Set once the leave announcement went out: nothing may follow it.
    closed: bool,
}

impl<M: TopicMessage> Outbox<M> {
    pub(crate) fn new(
        group: String,
        node_name: String,
        incarnation: u64,
        shared: Arc<SyncShared>,
        bundle: Arc<Bundle>,
    ) -> Self {
        Self {
            group,
            node_name,
            incarnation,
            shared,
            bundle,
            state: Mutex::default(),
            _message: PhantomData,
        }
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The node's bundled heartbeats.
    pub(crate) fn bundle(&self) -> &Arc<Bundle> {
        &self.bundle
    }

    /// Whether a payload of `len` bytes fits in one envelope of this topic.
    pub(crate) fn fits(&self, len: usize) -> bool {
        envelope::publish_fits(&self.group, &self.node_name, len)
    }

    /// Numbers and sends one encoded message; `None` once closed.
    pub(crate) fn publish(&self, payload: Vec<u8>) -> Option<u64> {
        let mut state = self.lock();
        (!state.closed).then(|| self.publish_locked(&mut state, payload))
    }

    /// Takes the next sequence number without sending anything (a message that cannot be
    /// encoded): peers see the gap at the next heartbeat and repair. `None` once closed.
    pub(crate) fn skip(&self) -> Option<u64> {
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        state.last_seq += 1;
        let seq = state.last_seq;
        state.backlog.record(seq, 0);
        Some(seq)
    }

    fn publish_locked(&self, state: &mut State, payload: Vec<u8>) -> u64 {
        state.last_seq += 1;
        let seq = state.last_seq;
        bump(&self.shared.counters.published);
        let _span = tracing::debug_span!("publish", topic = %self.group, seq).entered();
        let sent = self.send(Body::Publish { seq, payload });
        state.backlog.record(seq, sent);
        seq
    }

    /// Sends a heartbeat carrying the last sequence number published, and `bundled`: the
    /// other topics' heartbeats, on the node-level topic.
    pub(crate) fn heartbeat(
        &self,
        echoes: Vec<Echo>,
        members: Vec<Member>,
        bundled: Vec<(String, Vec<u8>)>,
    ) {
        let Some((_, body)) = self.heartbeat_body(echoes, members, bundled) else {
            return;
        };
        match envelope::encode(&self.group, &self.node_name, self.incarnation, &body) {
            Ok(bytes) => self.cast_to_remote_members(bytes),
            Err(error) => match body {
                Body::Heartbeat {
                    stamp,
                    last_seq,
                    echoes,
                    members,
                    bundled,
                } if !bundled.is_empty() => {
                    let beat = |bundled| Body::Heartbeat {
                        stamp,
                        last_seq,
                        echoes: echoes.clone(),
                        members: members.clone(),
                        bundled,
                    };
                    self.send_split(&beat, bundled);
                }
                _ => tracing::error!(%error, topic = %self.group, "heartbeat not sent"),
            },
        }
    }

    /// A node-level heartbeat too large for one envelope goes out as several, each complete
    /// (stamp, echoes, members: a receiver reads each as the heartbeat it is) with as many of
    /// the topics' heartbeats as fit.
    fn send_split(&self, beat: &dyn Fn(Vec<(String, Vec<u8>)>) -> Body, bundled: Bundled) {
        let encode =
            |body: &Body| envelope::encode(&self.group, &self.node_name, self.incarnation, body);
        let base = match encode(&beat(Vec::new())) {
            Ok(bytes) => bytes.len(),
            Err(error) => {
                return tracing::error!(%error, topic = %self.group, "heartbeat not sent");
            }
        };
        let budget = envelope::MAX_ENVELOPE_BYTES.saturating_sub(base + SPLIT_MARGIN);
        let (mut parts, dropped) = split_bundled(bundled, budget);
        if parts.is_empty() {
            parts.push(Vec::new()); // the members and echoes go out whatever was left out
        }
        bump(&self.shared.counters.heartbeats_split);
        if dropped > 0 {
            add(&self.shared.counters.bundled_dropped, dropped as u64);
            tracing::error!(dropped, topic = %self.group, "topic heartbeats too large to carry: left out");
        }
        for part in parts {
            match encode(&beat(part)) {
                Ok(bytes) => self.cast_to_remote_members(bytes),
                Err(error) => {
                    tracing::error!(%error, topic = %self.group, "heartbeat part not sent")
                }
            }
        }
    }

    /// Encodes a heartbeat carrying the last sequence number published and leaves it for the
    /// node-level heartbeat to carry (see `bundle`).
    pub(crate) fn deposit_heartbeat(&self, echoes: Vec<Echo>, members: Vec<Member>) {
        let Some((stamp, body)) = self.heartbeat_body(echoes, members, Vec::new()) else {
            return;
        };
        match envelope::encode(&self.group, &self.node_name, self.incarnation, &body) {
            Ok(bytes) => self.bundle.deposit(&self.group, bytes, stamp),
            Err(error) => tracing::error!(%error, topic = %self.group, "heartbeat not encoded"),
        }
    }

    /// A heartbeat stamped now, with the last sequence number published; `None` once closed.
    /// (Publishes take the same lock: none is numbered but not yet cast when it is read.)
    fn heartbeat_body(
        &self,
        echoes: Vec<Echo>,
        members: Vec<Member>,
        bundled: Vec<(String, Vec<u8>)>,
    ) -> Option<(u64, Body)> {
        let state = self.lock();
        if state.closed {
            return None;
        }
        let stamp = now_us();
        let body = Body::Heartbeat {
            stamp,
            last_seq: state.last_seq,
            echoes,
            members,
            bundled,
        };
        Some((stamp, body))
    }

    /// Announces a clean leave; every later publish is refused.
    pub(crate) fn leave(&self) {
        let mut state = self.lock();
        if !state.closed {
            state.closed = true;
            self.bundle.withdraw(&self.group);
            let last_seq = state.last_seq;
            self.send(Body::Leave { last_seq });
        }
    }

    /// Refuses every later publish without announcing anything (the actor failed).
    pub(crate) fn close(&self) {
        self.lock().closed = true;
    }

    pub(crate) fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }

    /// This node's name, as its envelopes carry it.
    pub(crate) fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Lends `acks` the count of bytes published after a given acknowledged sequence number.
    pub(crate) fn unacked<T>(&self, acks: impl FnOnce(&dyn Fn(u64) -> u64) -> T) -> T {
        let state = self.lock();
        acks(&|acked| state.backlog.unacked_since(acked))
    }

    /// Encodes once and casts the same bytes to every remote member; returns the size.
    fn send(&self, body: Body) -> usize {
        match envelope::encode(&self.group, &self.node_name, self.incarnation, &body) {
            Ok(bytes) => {
                let size = bytes.len();
                self.cast_to_remote_members(bytes);
                size
            }
            // Peers notice the skipped sequence number at the next heartbeat and repair.
            Err(error) => {
                tracing::error!(%error, topic = %self.group, "envelope not sent");
                0
            }
        }
    }

    /// Remote `ActorRef`s are never cached: stub ids change when a session is re-established,
    /// so pg is read on every send. ractor_cluster takes an owned buffer per remote actor: all
    /// members but one get a copy of the one encoding.
    /// Each cast carries the token of the session it goes over (`sessions::tokens_for`).
    pub(crate) fn cast_to_remote_members(&self, bytes: Vec<u8>) {
        let members = remote_members(&self.group);
        let tokens = crate::sessions::tokens_for(members.iter().map(|c| c.get_id().node()));
        let buffers = crate::protocol::envelope::per_peer(bytes, members.len());
        for ((cell, buffer), token) in members.into_iter().zip(buffers).zip(tokens) {
            let member: ActorRef<SyncMessage<M>> = cell.into();
            // A stub whose session just died refuses the cast; that peer repairs on rejoin.
            if member.cast(SyncMessage::Wire(buffer, token)).is_ok() {
                bump(&self.shared.counters.envelopes_sent);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The topic's members on other nodes.
/// A Synchronization actor's name: `NODE/TOPIC` (node names hold no `/`).
pub(crate) fn actor_name(node: &str, topic: &str) -> String {
    format!("{node}/{topic}")
}

/// The nodes the topic's remote members say they run on (their stubs carry the actors'
/// names); members without such a name (another build, a foreign actor) are left out.
pub(crate) fn remote_member_nodes(group: &str) -> Vec<String> {
    remote_members(group)
        .iter()
        .filter_map(|cell| {
            let name = cell.get_name()?;
            let (node, topic) = name.split_once('/')?;
            (topic == group).then(|| node.to_owned())
        })
        .collect()
}

pub(crate) fn remote_members(group: &str) -> Vec<ractor::ActorCell> {
    let mut members = pg::get_scoped_members(&PG_SCOPE.to_owned(), &group.to_owned());
    members.retain(|c| !c.get_id().is_local());
    members
}

/// Topic heartbeats carried by a node-level heartbeat: (topic, encoded envelope).
type Bundled = Vec<(String, Vec<u8>)>;

/// Room kept in each part of a split heartbeat for the encoding's length prefixes.
const SPLIT_MARGIN: usize = 1024;

/// Splits `bundled` into parts whose entries take at most `budget` bytes each (an entry: its
/// topic, its bytes and their length prefixes), in order; entries larger than `budget` alone
/// are left out and counted.
fn split_bundled(bundled: Bundled, budget: usize) -> (Vec<Bundled>, usize) {
    let mut parts: Vec<Bundled> = Vec::new();
    let (mut part, mut used, mut dropped) = (Vec::new(), 0, 0);
    for (topic, bytes) in bundled {
        let cost = topic.len() + bytes.len() + 20;
        if cost > budget {
            dropped += 1;
            continue;
        }
        if used + cost > budget {
            parts.push(std::mem::take(&mut part));
            used = 0;
        }
        used += cost;
        part.push((topic, bytes));
    }
    if !part.is_empty() {
        parts.push(part);
    }
    (parts, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_goes_out_after_the_leave() {
        // A topic nobody else serves: nothing is cast.
        let outbox: Outbox<u8> = Outbox::new(
            "outbox-test".into(),
            "me@here".into(),
            7,
            Arc::default(),
            Arc::default(),
        );
        assert_eq!(outbox.publish(vec![1]), Some(1));
        outbox.leave();
        assert_eq!(outbox.publish(vec![2]), None);
        assert_eq!(outbox.last_seq(), 1);
    }

    fn node(i: usize) -> String {
        format!("node-{i:04}@10.0.{}.{}", i / 256, i % 256)
    }

    fn echoes(peers: usize) -> Vec<Echo> {
        (1..=peers)
            .map(|i| Echo {
                peer: node(i),
                incarnation: 0x1234_5678_9abc_def0 + i as u64,
                stamp: 1_700_000_000 + i as u64,
                applied: 10_000 + i as u64,
            })
            .collect()
    }

    /// The node-level heartbeat one node of `nodes` sends each peer with `topics` topics, every
    /// field as large as a long-running cluster makes it; and its topic heartbeats.
    fn heartbeat(nodes: usize, topics: usize) -> (Body, Bundled) {
        let peers = nodes - 1;
        let bundled: Bundled = (0..topics)
            .map(|t| {
                let topic = format!("app.topic-{t:03}");
                let body = Body::Heartbeat {
                    stamp: 1_700_000_000,
                    last_seq: 123_456,
                    echoes: echoes(peers),
                    members: Vec::new(),
                    bundled: Vec::new(),
                };
                let bytes = envelope::encode(&topic, &node(0), u64::MAX / 3, &body).unwrap();
                (topic, bytes)
            })
            .collect();
        let members = (1..=peers)
            .map(|i| Member {
                name: node(i),
                incarnation: 0x1234_5678_9abc_def0 + i as u64,
                addr: format!("10.0.{}.{}:4001", i / 256, i % 256),
                ready: true,
            })
            .collect();
        let body = Body::Heartbeat {
            stamp: 1_700_000_000,
            last_seq: 0,
            echoes: echoes(peers),
            members,
            bundled: bundled.clone(),
        };
        (body, bundled)
    }

    #[test]
    fn a_heartbeat_over_the_envelope_limit_is_split_not_silenced() {
        let shared: Arc<SyncShared> = Arc::default();
        let outbox: Outbox<u8> = Outbox::new(
            "outbox-split".into(),
            node(0),
            7,
            shared.clone(),
            Arc::default(),
        );
        let (body, bundled) = heartbeat(1024, 120);
        let Body::Heartbeat {
            echoes, members, ..
        } = body
        else {
            unreachable!()
        };
        outbox.heartbeat(echoes.clone(), members.clone(), bundled);
        let stats = shared.counters.snapshot();
        assert_eq!((stats.heartbeats_split, stats.bundled_dropped), (1, 0));

        // A topic heartbeat that cannot fit even alone is left out, and counted.
        let huge = vec![("huge".to_owned(), vec![0; envelope::MAX_ENVELOPE_BYTES])];
        outbox.heartbeat(echoes, members, huge);
        let stats = shared.counters.snapshot();
        assert_eq!((stats.heartbeats_split, stats.bundled_dropped), (2, 1));
    }

    #[test]
    fn a_split_keeps_every_topic_in_order_within_the_budget() {
        let entry = |t: &str, n: usize| (t.to_owned(), vec![0u8; n]);
        let (parts, dropped) = split_bundled(
            vec![
                entry("a", 40),
                entry("b", 40),
                entry("c", 200),
                entry("d", 10),
            ],
            130,
        );
        assert_eq!(dropped, 1, "c alone is over the budget");
        let topics: Vec<Vec<&str>> = parts
            .iter()
            .map(|p| p.iter().map(|(t, _)| t.as_str()).collect())
            .collect();
        assert_eq!(topics, [vec!["a", "b"], vec!["d"]]);
        let (parts, dropped) = split_bundled(vec![entry("a", 40), entry("b", 40)], 1_000);
        assert_eq!((parts.len(), dropped), (1, 0), "what fits goes in one");
    }

    /// Bytes per node-level heartbeat as the cluster grows (printed: `cargo test --lib
    /// heartbeat_size -- --nocapture`), and the largest sizes split into envelopes that fit.
    #[test]
    fn heartbeat_size_grows_with_topics_times_peers_and_the_largest_are_split() {
        for (nodes, topics) in [(16, 8), (32, 8), (100, 20), (1024, 8), (1024, 120)] {
            let (body, bundled) = heartbeat(nodes, topics);
            let whole = envelope::encode("ractor_cache_sync.node", &node(0), 1, &body);
            let size = whole.as_ref().map_or(None, |b| Some(b.len()));
            let Body::Heartbeat {
                stamp,
                last_seq,
                echoes,
                members,
                ..
            } = body
            else {
                unreachable!()
            };
            let beat = |bundled| Body::Heartbeat {
                stamp,
                last_seq,
                echoes: echoes.clone(),
                members: members.clone(),
                bundled,
            };
            let base = envelope::encode("ractor_cache_sync.node", &node(0), 1, &beat(vec![]))
                .unwrap()
                .len();
            let budget = envelope::MAX_ENVELOPE_BYTES - base - SPLIT_MARGIN;
            let (parts, dropped) = split_bundled(bundled, budget);
            assert_eq!(dropped, 0);
            assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), topics);
            for part in parts.iter().cloned() {
                let bytes =
                    envelope::encode("ractor_cache_sync.node", &node(0), 1, &beat(part)).unwrap();
                assert!(bytes.len() <= envelope::MAX_ENVELOPE_BYTES);
            }
            let size = size.map_or_else(
                || "over the 4 MiB envelope limit".to_owned(),
                |s| format!("{s} bytes per peer, {} to all peers", s * (nodes - 1)),
            );
            println!(
                "{nodes} nodes x {topics} topics: one heartbeat {size}; sent as {} envelope(s)",
                parts.len()
            );
            if nodes * topics <= 2_000 {
                assert_eq!(parts.len(), 1, "{nodes} x {topics} fits in one envelope");
                assert!(whole.is_ok());
            }
        }
        // The cliff the split removes: 1 024 nodes x 120 topics does not fit in one envelope.
        let (body, _) = heartbeat(1024, 120);
        assert!(envelope::encode("ractor_cache_sync.node", &node(0), 1, &body).is_err());
    }
}

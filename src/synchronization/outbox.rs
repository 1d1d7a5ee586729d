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

use super::bundle::{echoes_for, Bundle, TopicBeat};
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

    /// Sends a heartbeat carrying the last sequence number published to every remote member,
    /// each with the echo about it alone (a receiver reads no other); on the node-level topic,
    /// with `bundled`: the other topics' heartbeats, each encoded for that member the same way.
    pub(crate) fn heartbeat(
        &self,
        echoes: Vec<Echo>,
        members: Vec<Member>,
        bundled: Vec<(String, Arc<TopicBeat>)>,
    ) {
        let Some((stamp, last_seq)) = self.stamp() else {
            return;
        };
        let cells = remote_members(&self.group);
        let routes = crate::sessions::named_tokens_for(cells.iter().map(|c| c.get_id().node()));
        let mut body = Body::Heartbeat {
            stamp,
            last_seq,
            echoes: Vec::new(),
            members,
            bundled: Vec::new(),
        };
        for (cell, route) in cells.into_iter().zip(routes) {
            let (peer, token) = route.unzip();
            let peer = peer.as_deref();
            let carried = bundled
                .iter()
                .filter_map(|(topic, beat)| match beat.encode_for(topic, peer) {
                    Ok(bytes) => Some((topic.clone(), bytes)),
                    Err(error) => {
                        bump(&self.shared.counters.bundled_dropped);
                        tracing::error!(%error, %topic, "topic heartbeat not encoded: left out");
                        None
                    }
                })
                .collect();
            if let Body::Heartbeat {
                echoes: to_peer,
                bundled,
                ..
            } = &mut body
            {
                *to_peer = echoes_for(&echoes, peer);
                *bundled = carried;
            }
            let member: ActorRef<SyncMessage<M>> = cell.into();
            for bytes in self.heartbeat_envelopes(&mut body) {
                // A stub whose session just died refuses the cast; that peer repairs on rejoin.
                if member.cast(SyncMessage::Wire(bytes, token.clone())).is_ok() {
                    bump(&self.shared.counters.envelopes_sent);
                }
            }
        }
    }

    /// One member's heartbeat, encoded: one envelope, or, if the topics' heartbeats it carries
    /// make it too large, several, each complete (stamp, echoes, members: a receiver reads
    /// each as the heartbeat it is) with as many of them as fit.
    fn heartbeat_envelopes(&self, body: &mut Body) -> Vec<Vec<u8>> {
        let encode =
            |body: &Body| envelope::encode(&self.group, &self.node_name, self.incarnation, body);
        let error = match encode(body) {
            Ok(bytes) => return vec![bytes],
            Err(error) => error,
        };
        let Body::Heartbeat { bundled, .. } = body else {
            return Vec::new();
        };
        if bundled.is_empty() {
            tracing::error!(%error, topic = %self.group, "heartbeat not sent");
            return Vec::new();
        }
        let all = std::mem::take(bundled);
        let base = match encode(body) {
            Ok(bytes) => bytes.len(),
            Err(error) => {
                tracing::error!(%error, topic = %self.group, "heartbeat not sent");
                return Vec::new();
            }
        };
        let budget = envelope::MAX_ENVELOPE_BYTES.saturating_sub(base + SPLIT_MARGIN);
        let (mut parts, dropped) = split_bundled(all, budget);
        if parts.is_empty() {
            parts.push(Vec::new()); // the members and echoes go out whatever was left out
        }
        bump(&self.shared.counters.heartbeats_split);
        if dropped > 0 {
            add(&self.shared.counters.bundled_dropped, dropped as u64);
            tracing::error!(dropped, topic = %self.group, "topic heartbeats too large to carry: left out");
        }
        let mut envelopes = Vec::with_capacity(parts.len());
        for part in parts {
            if let Body::Heartbeat { bundled, .. } = &mut *body {
                *bundled = part;
            }
            match encode(body) {
                Ok(bytes) => envelopes.push(bytes),
                Err(error) => {
                    tracing::error!(%error, topic = %self.group, "heartbeat part not sent")
                }
            }
        }
        envelopes
    }

    /// Leaves a heartbeat carrying the last sequence number published for the node-level
    /// heartbeat to carry (see `bundle`).
    pub(crate) fn deposit_heartbeat(&self, echoes: Vec<Echo>) {
        let Some((stamp, last_seq)) = self.stamp() else {
            return;
        };
        let beat = TopicBeat {
            origin: self.node_name.clone(),
            incarnation: self.incarnation,
            stamp,
            last_seq,
            echoes,
        };
        self.bundle.deposit(&self.group, beat);
    }

    /// A heartbeat's stamp (now) and the last sequence number published; `None` once closed.
    /// (Publishes take the same lock: none is numbered but not yet cast when it is read.)
    fn stamp(&self) -> Option<(u64, u64)> {
        let state = self.lock();
        (!state.closed).then(|| (now_us(), state.last_seq))
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

    /// The node-level heartbeat one node of `nodes` with `topics` topics sends `peer` (`None`: a
    /// member whose node it does not know by name, which gets every echo), every field as large
    /// as a long-running cluster makes it.
    fn heartbeat(nodes: usize, topics: usize, peer: Option<&str>) -> Body {
        let peers = nodes - 1;
        let bundled: Bundled = (0..topics)
            .map(|t| {
                let topic = format!("app.topic-{t:03}");
                let beat = TopicBeat {
                    origin: node(0),
                    incarnation: u64::MAX / 3,
                    stamp: 1_700_000_000,
                    last_seq: 123_456,
                    echoes: echoes(peers),
                };
                let bytes = beat.encode_for(&topic, peer).unwrap();
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
        Body::Heartbeat {
            stamp: 1_700_000_000,
            last_seq: 0,
            echoes: echoes_for(&echoes(peers), peer),
            members,
            bundled,
        }
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
        // Every echo in every topic's heartbeat: over the limit at 1 024 nodes x 120 topics.
        let mut body = heartbeat(1024, 120, None);
        let envelopes = outbox.heartbeat_envelopes(&mut body);
        assert!(envelopes.len() > 1);
        let carried: usize = envelopes
            .iter()
            .map(
                |bytes| match envelope::Envelope::decode(bytes).unwrap().body {
                    Body::Heartbeat { bundled, .. } => bundled.len(),
                    _ => unreachable!(),
                },
            )
            .sum();
        assert_eq!(carried, 120, "every topic's heartbeat goes out");
        let stats = shared.counters.snapshot();
        assert_eq!((stats.heartbeats_split, stats.bundled_dropped), (1, 0));

        // A topic heartbeat that cannot fit even alone is left out, and counted.
        if let Body::Heartbeat { bundled, .. } = &mut body {
            *bundled = vec![("huge".to_owned(), vec![0; envelope::MAX_ENVELOPE_BYTES])];
        }
        assert_eq!(outbox.heartbeat_envelopes(&mut body).len(), 1);
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
    /// heartbeat_size -- --nocapture`): each peer's carries its own echo alone, so it grows
    /// with the members and the topics, not with the topics times the peers; and the largest
    /// sizes (every echo, as to a member not known by name) split into envelopes that fit.
    #[test]
    fn heartbeat_size_grows_with_members_plus_topics_and_the_largest_are_split() {
        let outbox: Outbox<u8> = Outbox::new(
            "ractor_cache_sync.node".into(),
            node(0),
            1,
            Arc::default(),
            Arc::default(),
        );
        let size = |body: &Body| envelope::encode("ractor_cache_sync.node", &node(0), 1, body);
        for (nodes, topics) in [(16, 8), (32, 8), (100, 20), (1024, 8), (1024, 120)] {
            let to_one = size(&heartbeat(nodes, topics, Some(&node(1))))
                .expect("a peer's own heartbeat fits in one envelope")
                .len();
            let with_every_echo = heartbeat(nodes, topics, None);
            let whole = size(&with_every_echo).map_or_else(
                |_| "over the 4 MiB envelope limit".to_owned(),
                |b| format!("{} bytes", b.len()),
            );
            let parts = outbox.heartbeat_envelopes(&mut with_every_echo.clone());
            assert!(parts
                .iter()
                .all(|b| b.len() <= envelope::MAX_ENVELOPE_BYTES));
            println!(
                "{nodes} nodes x {topics} topics: {to_one} bytes to each peer, {} to all; \
                 with every echo {whole}, sent as {} envelope(s)",
                to_one * (nodes - 1),
                parts.len()
            );
            if nodes * topics <= 2_000 {
                assert_eq!(parts.len(), 1, "{nodes} x {topics} fits in one envelope");
            }
        }
        // Each echo is about one peer: 16 nodes x 8 topics carry one per topic, not fifteen.
        let to_one = size(&heartbeat(16, 8, Some(&node(1)))).unwrap().len();
        let with_every_echo = size(&heartbeat(16, 8, None)).unwrap().len();
        assert!(
            to_one * 3 < with_every_echo,
            "{to_one} bytes with one echo, {with_every_echo} with all"
        );
        // The cliff the split removes: 1 024 nodes x 120 topics with every echo does not fit.
        assert!(size(&heartbeat(1024, 120, None)).is_err());
    }
}

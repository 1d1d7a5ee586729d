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

use super::message::SyncMessage;
use super::shared::SyncShared;
use super::TopicMessage;
use crate::clock::now_us;
use crate::counter::bump;
use crate::protocol::backlog::Backlog;
use crate::protocol::envelope::{self, Body, Echo, Member};
use crate::topic::PG_SCOPE;

pub(crate) struct Outbox<M> {
    group: String,
    node_name: String,
    incarnation: u64,
    shared: Arc<SyncShared>,
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
    ) -> Self {
        Self {
            group,
            node_name,
            incarnation,
            shared,
            state: Mutex::default(),
            _message: PhantomData,
        }
    }

    pub(crate) fn incarnation(&self) -> u64 {
        self.incarnation
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
        if let Some((_, body)) = self.heartbeat_body(echoes, members, bundled) {
            self.send(body);
        }
    }

    /// Encodes a heartbeat carrying the last sequence number published and leaves it for the
    /// node-level heartbeat to carry (see `bundle`).
    pub(crate) fn deposit_heartbeat(&self, echoes: Vec<Echo>, members: Vec<Member>) {
        let Some((stamp, body)) = self.heartbeat_body(echoes, members, Vec::new()) else {
            return;
        };
        match envelope::encode(&self.group, &self.node_name, self.incarnation, &body) {
            Ok(bytes) => super::bundle::deposit(&self.group, bytes, stamp),
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
            super::bundle::withdraw(&self.group);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_goes_out_after_the_leave() {
        // A topic nobody else serves: nothing is cast.
        let outbox: Outbox<u8> =
            Outbox::new("outbox-test".into(), "me@here".into(), 7, Arc::default());
        assert_eq!(outbox.publish(vec![1]), Some(1));
        outbox.leave();
        assert_eq!(outbox.publish(vec![2]), None);
        assert_eq!(outbox.last_seq(), 1);
    }
}

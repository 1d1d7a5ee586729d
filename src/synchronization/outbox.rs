//! The sending side of one topic on this node: sequence numbers, the envelope header, the
//! backlog of unacknowledged bytes and the coalescing state, behind one lock shared by the
//! actor and every handle.
//!
//! Publishing needs no message to the actor: the caller's task takes the lock, numbers the
//! message, encodes the envelope once and casts the same bytes to every remote member. The
//! actor's heartbeats go through the same lock, so a heartbeat never announces a sequence
//! number whose publish has not been cast yet, and casts leave in sequence order.

use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ractor::{pg, ActorRef};

use super::message::{Drainer, SyncMessage};
use super::shared::SyncShared;
use super::TopicMessage;
use crate::clock::now_us;
use crate::counter::bump;
use crate::protocol::backlog::Backlog;
use crate::protocol::envelope::{self, Body, Echo};
use crate::topic::PG_SCOPE;

/// A flush finding the previous envelope less than this long ago, with one key in it, takes
/// it as a burst from a tight loop and starts coalescing; one round trip between two nodes
/// takes longer, so lone and ping-pong invalidations always go out at once.
const BURST_GAP_US: u64 = 10;

/// What a coalescing flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// Published what was pending under this sequence number (`None`: nothing was pending).
    Done(Option<u64>),
    /// A burst is under way: drain again after this long (one pending drain at a time).
    Later(Duration),
    /// Someone else's drain is already due; the pending items wait for it.
    Scheduled,
    /// The actor has stopped; the pending items stay for its successor.
    Closed,
}

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
    /// When (µs) a coalescing batch was last drained, how many items it carried, and whether a
    /// delayed drain is pending.
    last_drain: u64,
    last_drain_items: usize,
    drain_scheduled: bool,
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

    /// Numbers and sends one encoded message; `None` once closed.
    pub(crate) fn publish(&self, payload: Vec<u8>) -> Option<u64> {
        let mut state = self.lock();
        (!state.closed).then(|| self.publish_locked(&mut state, payload))
    }

    /// Publishes a coalescing batch now, unless the previous envelope went out less than
    /// `window` ago and a burst is under way (it carried several items, or followed the one
    /// before it within [`BURST_GAP_US`]): then the caller must drain again later.
    pub(crate) fn flush(&self, take: &Drainer<M>, window: Duration) -> Flush {
        self.flush_at(now_us(), take, window)
    }

    fn flush_at(&self, now: u64, take: &Drainer<M>, window: Duration) -> Flush {
        let mut state = self.lock();
        if state.closed {
            return Flush::Closed;
        }
        if state.drain_scheduled {
            return Flush::Scheduled;
        }
        let window_us = window.as_micros() as u64;
        let since = now.saturating_sub(state.last_drain);
        let burst = state.last_drain_items > 1 || since < BURST_GAP_US;
        if since < window_us && burst {
            state.drain_scheduled = true;
            return Flush::Later(Duration::from_micros(window_us - since));
        }
        Flush::Done(self.drain_locked(&mut state, now, take))
    }

    /// Publishes a coalescing batch now (the delayed drain a [`Flush::Later`] asked for).
    pub(crate) fn drain_now(&self, take: &Drainer<M>) -> Flush {
        self.drain_at(now_us(), take)
    }

    fn drain_at(&self, now: u64, take: &Drainer<M>) -> Flush {
        let mut state = self.lock();
        state.drain_scheduled = false;
        if state.closed {
            return Flush::Closed;
        }
        Flush::Done(self.drain_locked(&mut state, now, take))
    }

    fn drain_locked(&self, state: &mut State, now: u64, take: &Drainer<M>) -> Option<u64> {
        state.last_drain = now;
        let Some((message, items)) = take() else {
            state.last_drain_items = 0;
            return None;
        };
        state.last_drain_items = items;
        match postcard::to_stdvec(&message) {
            Ok(payload) => Some(self.publish_locked(state, payload)),
            Err(error) => {
                tracing::error!(%error, topic = %self.group, "batch not encoded");
                None
            }
        }
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

    /// Sends a heartbeat carrying the last sequence number published.
    pub(crate) fn heartbeat(&self, echoes: Vec<Echo>) {
        let state = self.lock();
        if !state.closed {
            let stamp = now_us();
            let last_seq = state.last_seq;
            self.send(Body::Heartbeat {
                stamp,
                last_seq,
                echoes,
            });
        }
    }

    /// Announces a clean leave; every later publish is refused.
    pub(crate) fn leave(&self) {
        let mut state = self.lock();
        if !state.closed {
            state.closed = true;
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
    pub(crate) fn cast_to_remote_members(&self, bytes: Vec<u8>) {
        let members = remote_members(&self.group);
        let buffers = crate::protocol::envelope::per_peer(bytes, members.len());
        for (cell, buffer) in members.into_iter().zip(buffers) {
            let member: ActorRef<SyncMessage<M>> = cell.into();
            // A stub whose session just died refuses the cast; that peer repairs on rejoin.
            if member.cast(SyncMessage::Wire(buffer)).is_ok() {
                bump(&self.shared.counters.envelopes_sent);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The topic's members on other nodes.
pub(crate) fn remote_members(group: &str) -> Vec<ractor::ActorCell> {
    let mut members = pg::get_scoped_members(&PG_SCOPE.to_owned(), &group.to_owned());
    members.retain(|c| !c.get_id().is_local());
    members
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An outbox for a topic nobody else serves (nothing is cast), and a drainer that yields
    /// `items` items as long as it is asked.
    fn outbox(items: usize) -> (Outbox<u8>, Drainer<u8>, Arc<AtomicUsize>) {
        let outbox = Outbox::new("outbox-test".into(), "me@here".into(), 7, Arc::default());
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let take: Drainer<u8> = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Some((1, items))
        });
        (outbox, take, taken)
    }

    const WINDOW: Duration = Duration::from_millis(1);

    #[test]
    fn lone_messages_go_out_at_once_even_back_to_back() {
        let (outbox, take, _) = outbox(1);
        assert_eq!(outbox.flush_at(1_000, &take, WINDOW), Flush::Done(Some(1)));
        // A ping-pong pace: one message per round trip, well inside the window.
        assert_eq!(outbox.flush_at(1_030, &take, WINDOW), Flush::Done(Some(2)));
        assert_eq!(outbox.flush_at(1_060, &take, WINDOW), Flush::Done(Some(3)));
    }

    #[test]
    fn a_tight_loop_is_coalesced_and_the_delay_stays_within_the_window() {
        let (outbox, take, taken) = outbox(1);
        assert_eq!(outbox.flush_at(1_000, &take, WINDOW), Flush::Done(Some(1)));
        assert_eq!(
            outbox.flush_at(1_002, &take, WINDOW),
            Flush::Later(Duration::from_micros(998))
        );
        assert_eq!(outbox.flush_at(1_003, &take, WINDOW), Flush::Scheduled);
        assert_eq!(
            taken.load(Ordering::SeqCst),
            1,
            "nothing taken while waiting"
        );
        assert_eq!(outbox.drain_at(2_000, &take), Flush::Done(Some(2)));
    }

    #[test]
    fn after_a_multi_item_batch_the_next_waits_for_the_window() {
        let (outbox, take, _) = outbox(500);
        assert_eq!(outbox.flush_at(1_000, &take, WINDOW), Flush::Done(Some(1)));
        assert_eq!(
            outbox.flush_at(1_400, &take, WINDOW),
            Flush::Later(Duration::from_micros(600))
        );
        assert_eq!(outbox.drain_at(2_000, &take), Flush::Done(Some(2)));
        // Once the window has passed, the next goes out at once again.
        assert_eq!(outbox.flush_at(3_001, &take, WINDOW), Flush::Done(Some(3)));
    }

    #[test]
    fn a_zero_window_never_delays() {
        let (outbox, take, _) = outbox(500);
        for (i, now) in (1_000..1_005).enumerate() {
            let seq = i as u64 + 1;
            assert_eq!(
                outbox.flush_at(now, &take, Duration::ZERO),
                Flush::Done(Some(seq))
            );
        }
    }

    #[test]
    fn nothing_goes_out_after_the_leave() {
        let (outbox, take, taken) = outbox(1);
        assert_eq!(outbox.publish(vec![1]), Some(1));
        outbox.leave();
        assert_eq!(outbox.publish(vec![2]), None);
        assert_eq!(outbox.flush_at(5_000, &take, WINDOW), Flush::Closed);
        assert_eq!(outbox.drain_at(5_000, &take), Flush::Closed);
        assert_eq!(
            taken.load(Ordering::SeqCst),
            0,
            "pending items stay for the successor"
        );
        assert_eq!(outbox.last_seq(), 1);
    }
}

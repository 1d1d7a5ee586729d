//! Per-origin sequence tracking: tells an in-order envelope from a duplicate, a gap or a
//! restarted sender. Plain data, no actors, so it is tested without a network.

use std::collections::HashMap;

/// What one arriving envelope means for the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The first envelope seen from this origin (any sequence number). Messages it sent before
    /// this node was connected are covered by the repair every new peer session triggers.
    FirstContact,
    /// The next sequence number: nothing was missed.
    InOrder,
    /// Seen before (or older than the last one): drop it.
    Duplicate,
    /// `missed` envelopes between the last one and this one never arrived.
    Gap { missed: u64 },
    /// The origin restarted (a new incarnation): whatever it sent in between may be lost.
    NewIncarnation,
}

impl Arrival {
    /// Whether the receiver may have missed messages and must repair.
    #[cfg(test)]
    pub(crate) fn possibly_missed(self) -> bool {
        matches!(self, Self::Gap { .. } | Self::NewIncarnation)
    }

    /// Whether the envelope's content should be delivered.
    pub(crate) fn deliver(self) -> bool {
        !matches!(self, Self::Duplicate)
    }
}

#[derive(Debug, Clone, Copy)]
struct OriginState {
    incarnation: u64,
    last_seq: u64,
}

/// Last (incarnation, sequence) seen per origin node.
#[derive(Debug, Default)]
pub(crate) struct SequenceTracker {
    origins: HashMap<String, OriginState>,
}

impl SequenceTracker {
    /// Records an envelope and classifies it.
    pub(crate) fn observe(&mut self, origin: &str, incarnation: u64, seq: u64) -> Arrival {
        let Some(state) = self.origins.get_mut(origin) else {
            self.origins.insert(
                origin.to_owned(),
                OriginState {
                    incarnation,
                    last_seq: seq,
                },
            );
            return Arrival::FirstContact;
        };
        if state.incarnation != incarnation {
            *state = OriginState {
                incarnation,
                last_seq: seq,
            };
            return Arrival::NewIncarnation;
        }
        if seq <= state.last_seq {
            return Arrival::Duplicate;
        }
        let missed = seq - state.last_seq - 1;
        state.last_seq = seq;
        if missed == 0 {
            Arrival::InOrder
        } else {
            Arrival::Gap { missed }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classifies_in_order_duplicate_gap_and_restart() {
        let mut t = SequenceTracker::default();
        assert_eq!(t.observe("a", 7, 1), Arrival::FirstContact);
        assert_eq!(t.observe("a", 7, 2), Arrival::InOrder);
        assert_eq!(t.observe("a", 7, 2), Arrival::Duplicate);
        assert_eq!(t.observe("a", 7, 1), Arrival::Duplicate);
        assert_eq!(t.observe("a", 7, 5), Arrival::Gap { missed: 2 });
        assert_eq!(t.observe("a", 8, 1), Arrival::NewIncarnation);
        assert_eq!(t.observe("a", 8, 2), Arrival::InOrder);
    }

    #[test]
    fn origins_are_independent() {
        let mut t = SequenceTracker::default();
        t.observe("a", 1, 1);
        assert_eq!(t.observe("b", 1, 9), Arrival::FirstContact);
        assert_eq!(t.observe("a", 1, 2), Arrival::InOrder);
        assert_eq!(t.observe("b", 1, 10), Arrival::InOrder);
    }

    proptest! {
        /// Over a lossy, duplicating, reordering link from one origin, the receiver flags a
        /// possible miss whenever an envelope it never delivered is older than one it did.
        #[test]
        fn every_loss_before_a_delivered_envelope_is_flagged(
            fates in proptest::collection::vec(0u8..4, 1..200)
        ) {
            let mut t = SequenceTracker::default();
            let mut delivered = std::collections::BTreeSet::new();
            let mut flagged_up_to = 0u64;
            let mut queue = Vec::new();
            for (i, fate) in fates.iter().enumerate() {
                let seq = i as u64 + 1;
                match fate {
                    0 => {}                                   // lost
                    1 => { queue.push(seq); queue.push(seq); } // duplicated
                    _ => queue.push(seq),
                }
            }
            for seq in queue {
                let arrival = t.observe("a", 1, seq);
                if arrival.possibly_missed() { flagged_up_to = seq; }
                if arrival.deliver() { prop_assert!(delivered.insert(seq), "delivered twice"); }
            }
            let (Some(&first), Some(&max)) = (delivered.first(), delivered.last()) else {
                return Ok(());
            };
            let lost_inside = (first..=max).any(|s| !delivered.contains(&s));
            if lost_inside { prop_assert!(flagged_up_to > first); }
        }
    }
}

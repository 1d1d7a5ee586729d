//! Classifying one arriving sequence number against the highest one applied.

/// What one arriving envelope means for the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The first envelope seen from this origin, and nothing came before it.
    FirstContact,
    /// The next sequence number: nothing was missed.
    InOrder,
    /// Seen before (or older than the last one): drop it.
    Duplicate,
    /// `missed` envelopes between the last one and this one never arrived.
    Gap { missed: u64 },
    /// The origin restarted (a new incarnation): whatever it sent in between may be lost.
    NewIncarnation,
    /// The cast did not prove it came from the origin it names: delivered, but it says nothing
    /// about the origin's sequence (the peer table is left alone).
    Unverified,
}

impl Arrival {
    /// Classifies `seq` given that everything up to `applied` was applied.
    pub(crate) fn after(applied: u64, seq: u64) -> Self {
        match seq.checked_sub(applied) {
            None | Some(0) => Self::Duplicate,
            Some(1) => Self::InOrder,
            Some(step) => Self::Gap { missed: step - 1 },
        }
    }

    /// Whether the receiver may have missed messages and must repair.
    #[cfg(test)]
    pub(crate) fn possibly_missed(self) -> bool {
        matches!(self, Self::Gap { .. } | Self::NewIncarnation)
    }

    /// Whether the envelope's content should be delivered.
    #[cfg(test)]
    pub(crate) fn deliver(self) -> bool {
        !matches!(self, Self::Duplicate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_against_the_applied_sequence() {
        assert_eq!(Arrival::after(0, 1), Arrival::InOrder);
        assert_eq!(Arrival::after(4, 5), Arrival::InOrder);
        assert_eq!(Arrival::after(4, 4), Arrival::Duplicate);
        assert_eq!(Arrival::after(4, 2), Arrival::Duplicate);
        assert_eq!(Arrival::after(4, 7), Arrival::Gap { missed: 2 });
        assert!(Arrival::Gap { missed: 1 }.possibly_missed());
        assert!(!Arrival::Duplicate.deliver());
    }
}

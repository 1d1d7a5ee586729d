//! Bytes sent but not yet acknowledged: peers acknowledge our sequence numbers in their
//! heartbeats, and a peer whose unacknowledged bytes pass the bound has its session closed.

use std::collections::VecDeque;

/// How many recent publishes are remembered; an acknowledgement older than that counts as
/// "everything since is unacknowledged".
const REMEMBERED: usize = 1 << 16;

#[derive(Debug, Default)]
pub(crate) struct Backlog {
    /// (sequence number, bytes sent before it), oldest first, sequence numbers consecutive.
    sent: VecDeque<(u64, u64)>,
    total: u64,
}

impl Backlog {
    pub(crate) fn record(&mut self, seq: u64, bytes: usize) {
        self.sent.push_back((seq, self.total));
        self.total += bytes as u64;
        if self.sent.len() > REMEMBERED {
            self.sent.pop_front();
        }
    }

    /// Bytes sent after sequence number `acked`.
    pub(crate) fn unacked_since(&self, acked: u64) -> u64 {
        let Some(&(first, _)) = self.sent.front() else {
            return 0;
        };
        let next = acked.saturating_add(1);
        if next < first {
            return u64::MAX; // older than we remember: assume the worst
        }
        match self.sent.get((next - first) as usize) {
            Some(&(_, before)) => self.total - before,
            None => 0, // everything acknowledged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_after_the_acknowledged_sequence() {
        let mut b = Backlog::default();
        assert_eq!(b.unacked_since(0), 0);
        b.record(1, 10);
        b.record(2, 20);
        b.record(3, 30);
        assert_eq!(b.unacked_since(0), 60);
        assert_eq!(b.unacked_since(1), 50);
        assert_eq!(b.unacked_since(3), 0);
        assert_eq!(b.unacked_since(9), 0);
    }

    #[test]
    fn an_acknowledgement_older_than_memory_is_the_worst_case() {
        let mut b = Backlog::default();
        for seq in 1..=(REMEMBERED as u64 + 10) {
            b.record(seq, 1);
        }
        assert_eq!(b.unacked_since(0), u64::MAX);
        assert_eq!(b.unacked_since(REMEMBERED as u64 + 9), 1);
    }
}

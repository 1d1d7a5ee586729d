//! What this node has applied of each origin, per incarnation: the rule write tokens are
//! judged by. Plain data; the topic's actor publishes it, readers ask it.

use std::collections::HashMap;

/// How many superseded incarnations of one origin are remembered.
const SUPERSEDED_KEPT: usize = 8;

/// What this node has applied of one origin.
#[derive(Debug)]
struct Progress {
    incarnation: u64,
    seq: u64,
    /// Earlier incarnations, replaced by this one: a repair covered all they published.
    superseded: Vec<u64>,
}

/// Per origin: its incarnation, the highest sequence number applied here or covered by a
/// repair, and the incarnations it replaced.
#[derive(Debug, Default)]
pub(crate) struct Applied {
    origins: HashMap<String, Progress>,
}

impl Applied {
    /// Records what this node has applied of `origin` (or a repair covered); whether that
    /// changed anything. A higher incarnation (a later start: incarnations carry their start
    /// time) supersedes the one before, whose replacement caused a repair that covers whatever
    /// it published. A late message of an older incarnation changes nothing: taking it as new
    /// would call the live incarnation covered. (Incarnations of builds that drew them at
    /// random may then be ignored: a read after their tokens waits for its deadline, never
    /// answers older.)
    pub(crate) fn set(&mut self, origin: &str, incarnation: u64, seq: u64) -> bool {
        let progress = self.origins.entry(origin.to_owned()).or_insert(Progress {
            incarnation,
            seq: 0,
            superseded: Vec::new(),
        });
        if incarnation < progress.incarnation {
            return false;
        }
        if progress.incarnation != incarnation {
            progress.superseded.push(progress.incarnation);
            if progress.superseded.len() > SUPERSEDED_KEPT {
                progress.superseded.remove(0);
            }
            progress.incarnation = incarnation;
            progress.seq = seq;
        } else if seq > progress.seq {
            progress.seq = seq;
        } else {
            return false;
        }
        true
    }

    /// Whether this node has applied (or a repair covered) what `origin` published at
    /// `incarnation` up to `seq`.
    pub(crate) fn covers(&self, origin: &str, incarnation: u64, seq: u64) -> bool {
        self.origins.get(origin).is_some_and(|p| {
            (p.incarnation == incarnation && p.seq >= seq) || p.superseded.contains(&incarnation)
        })
    }
}

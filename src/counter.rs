//! Lock-free counters, bumped on hot paths and summed when read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

/// A counter bumped on every cache hit from many threads: one cache line per stripe, so that
/// readers on different cores do not fight over one line. Summed when read.
#[derive(Debug, Default)]
pub(crate) struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

const STRIPES: usize = 16;

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

impl StripedCounter {
    pub(crate) fn bump(&self) {
        self.stripes[stripe_of_this_thread()]
            .0
            .fetch_add(1, Relaxed);
    }

    pub(crate) fn sum(&self) -> u64 {
        self.stripes.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

fn stripe_of_this_thread() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}

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

/// A counter whose value can be read for a snapshot.
pub(crate) trait Read {
    fn read(&self) -> u64;
}

impl Read for AtomicU64 {
    fn read(&self) -> u64 {
        self.load(Relaxed)
    }
}

impl Read for StripedCounter {
    fn read(&self) -> u64 {
        self.sum()
    }
}

/// Declares a table of counters once: each counter's field (its name in snapshots and in the
/// node example's `stats`), its doc, the atomic it is bumped on and its metric name. From it
/// come the public snapshot struct (plus `extra` fields that are not counters), the internal
/// counters struct, reading one into the other, and `counters()`, which lists every counter
/// with its metric name for whoever publishes them.
macro_rules! counter_table {
    (
        $(#[$meta:meta])*
        pub struct $Stats:ident from $Counters:ident {
            $( $(#[doc = $doc:literal])* $field:ident: $Kind:ty => $metric:literal, )*
        }
        extra {
            $( $(#[doc = $xdoc:literal])* $xfield:ident: $Xty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $Stats {
            $( $(#[doc = $doc])* pub $field: u64, )*
            $( $(#[doc = $xdoc])* pub $xfield: $Xty, )*
        }

        #[derive(Debug, Default)]
        pub(crate) struct $Counters {
            $( pub(crate) $field: $Kind, )*
        }

        impl $Counters {
            /// `stats` with every counter read now.
            pub(crate) fn read_into(&self, mut stats: $Stats) -> $Stats {
                $( stats.$field = $crate::counter::Read::read(&self.$field); )*
                stats
            }
        }

        impl $Stats {
            /// Every counter: its field name, its metric name and its value.
            pub fn counters(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> {
                [ $( (stringify!($field), $metric, self.$field), )* ].into_iter()
            }
        }
    };
}
pub(crate) use counter_table;

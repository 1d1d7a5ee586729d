//! This process's monotonic clock in microseconds: the only clock leases use. No clock sync
//! between nodes is needed, because a node only ever compares its own timestamps.

use std::sync::OnceLock;
use std::time::Instant;

/// Microseconds since this process first asked; never 0, so 0 can mean "never".
pub(crate) fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_micros() as u64 + 1
}

//! This process's monotonic clock in microseconds: the only clock leases use. No clock sync
//! between nodes is needed, because a node only ever compares its own timestamps.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// The longest any duration setting may be: far beyond any sensible value, and small enough
/// that every sum and multiple the crate computes from one stays exact in µs.
pub(crate) const LONGEST_SETTING: Duration = Duration::from_secs(30 * 24 * 3600);

/// Refuses a duration setting over [`LONGEST_SETTING`] with a `Config` error naming `what`.
pub(crate) fn at_most_30_days(what: &str, setting: Duration) -> Result<()> {
    if setting > LONGEST_SETTING {
        return Err(Error::Config(format!("{what} must be at most 30 days")));
    }
    Ok(())
}

/// Microseconds since this process first asked; never 0, so 0 can mean "never".
///
/// Read through tokio's clock: in a build without tokio's `test-util` feature that is the
/// system's monotonic clock, unchanged; in tests it follows a paused runtime's clock, so
/// leases, time to live and refresh can be tested with `tokio::time::pause` and `advance`.
pub(crate) fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_micros() as u64 + 1
}

//! This process's monotonic clock in microseconds: the only clock leases use. No clock sync
//! between nodes is needed, because a node only ever compares its own timestamps (the system
//! clock only sets the phase of the heartbeat, see [`aligned_interval`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

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

/// Time since boot including time suspended (`CLOCK_BOOTTIME`), in µs; `None` where the
/// system has no such clock. Only compared with itself, to notice that [`now_us`] missed time.
pub(crate) fn boottime_us() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
        let us = (now.tv_sec() as u64) * 1_000_000 + (now.tv_nsec() as u64) / 1_000;
        Some(us + injected_sleep_us())
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// Time a test says the system slept (fault injection): added to [`boottime_us`] only.
#[cfg(feature = "fault-injection")]
static INJECTED_SLEEP_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[cfg(feature = "fault-injection")]
fn injected_sleep_us() -> u64 {
    INJECTED_SLEEP_US.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(not(feature = "fault-injection"))]
fn injected_sleep_us() -> u64 {
    0
}

/// Makes [`boottime_us`] jump by `sleep` as a suspension of the system would, while
/// [`now_us`] does not (fault injection).
#[cfg(feature = "fault-injection")]
pub(crate) fn inject_sleep(sleep: Duration) {
    let us = u64::try_from(sleep.as_micros()).unwrap_or(u64::MAX);
    INJECTED_SLEEP_US.fetch_add(us, std::sync::atomic::Ordering::Relaxed);
}

/// Notices that [`now_us`] missed time: between two readings, the clock that counts
/// suspended time advanced more than it by over `threshold` µs. Fed explicit readings, so
/// that it is tested with any clock.
#[derive(Debug, Default)]
pub(crate) struct SuspendDetector {
    last: Option<(u64, u64)>,
}

impl SuspendDetector {
    /// Takes one pair of readings (`now_us`, `boottime_us`); returns how long the process
    /// was suspended since the previous pair, if it was by more than `threshold`.
    pub(crate) fn observe(&mut self, mono: u64, boot: u64, threshold: u64) -> Option<u64> {
        let jumped = self.last.and_then(|(last_mono, last_boot)| {
            let mono = mono.saturating_sub(last_mono);
            let boot = boot.saturating_sub(last_boot);
            (boot > mono.saturating_add(threshold)).then(|| boot - mono)
        });
        self.last = Some((mono, boot));
        jumped
    }
}

/// `CLOCK_MONOTONIC` (or its coarse variant) in µs since boot.
fn read_us(clock: rustix::time::ClockId) -> u64 {
    let now = rustix::time::clock_gettime(clock);
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000
}

/// This process's first reading of `CLOCK_MONOTONIC`, less 1 µs: every reading of the crate's
/// clocks is taken relative to it (and so is never 0).
fn epoch_us() -> u64 {
    static EPOCH: OnceLock<u64> = OnceLock::new();
    *EPOCH.get_or_init(|| read_us(rustix::time::ClockId::Monotonic).saturating_sub(1))
}

/// µs since this process first asked, on the system's monotonic clock (`CLOCK_MONOTONIC`,
/// which neither stops nor goes back); never 0, so 0 can mean "never". What leases, expiry
/// and flights are kept on ([`now_us`] outside the crate's unit tests).
fn monotonic_us() -> u64 {
    read_us(rustix::time::ClockId::Monotonic)
        .saturating_sub(epoch_us())
        .max(1)
}

/// `CLOCK_MONOTONIC_COARSE` on the same scale: the monotonic clock as of the kernel's last
/// timekeeping update (at most a tick or so behind it, never ahead).
fn coarse_us() -> u64 {
    read_us(rustix::time::ClockId::MonotonicCoarse).saturating_sub(epoch_us())
}

/// How far ahead of the coarse clock a hit takes the time to be: six of its ticks (the kernel
/// updates it every tick, and another CPU takes the update over when the one charged with it
/// stalls for a few ticks). `None` where that would be over 25 ms (a kernel ticking slower
/// than 250 Hz): hits read the monotonic clock there.
fn hit_ahead_us() -> Option<u64> {
    static AHEAD: OnceLock<Option<u64>> = OnceLock::new();
    *AHEAD.get_or_init(|| {
        let tick = rustix::time::clock_getres(rustix::time::ClockId::MonotonicCoarse);
        let tick_us = u64::try_from(tick.tv_sec).ok()? * 1_000_000
            + u64::try_from(tick.tv_nsec).ok()?.div_ceil(1_000);
        let ahead = tick_us.checked_mul(6)?;
        (tick_us > 0 && ahead <= 25_000).then_some(ahead)
    })
}

/// How close to a deadline (a lease gate's end, an entry's time to live) a hit decides by the
/// precise clock instead of [`hit_now_us`]: far beyond the coarse clock's normal lag, and
/// beyond the watchdog's tick at the default heartbeat, so a lag long enough to matter is seen.
pub(crate) const HIT_EDGE_US: u64 = 250_000;

/// Set once the coarse clock was found further behind than [`hit_ahead_us`]: hits read the
/// monotonic clock from then on.
static COARSE_FAILED: AtomicBool = AtomicBool::new(false);

/// The time a cache hit decides by: ahead of [`monotonic_us`] by at most [`hit_ahead_us`]
/// (a few ms) — a lease or a time to live ends that much early on a hit — and never behind it
/// while the kernel updates the coarse clock within that many ticks ([`check_hit_clock`]
/// watches for it; [`HIT_EDGE_US`] bounds what a longer lag could do).
///
/// A hit must not stall the pipeline: reading the precise monotonic clock (`clock_gettime` in
/// the vDSO) orders the time-stamp counter read behind every load before it, and even an
/// unfenced counter read does on some virtual machines, so consecutive hits cannot overlap
/// their cache misses — over 100 000 random keys one such read takes a bare map lookup from
/// ~40 ns to ~250 ns. The coarse clock is a few plain loads from the kernel's page.
fn real_hit_now_us() -> u64 {
    match hit_ahead_us() {
        Some(ahead) if !COARSE_FAILED.load(Ordering::Relaxed) => {
            coarse_us().saturating_add(ahead).max(1)
        }
        _ => monotonic_us(),
    }
}

/// The node's watchdog asks at every heartbeat: if the coarse clock is further behind the
/// monotonic one than hits allow for, hits read the monotonic clock for good from now on,
/// and this returns how far behind it was (µs) — leases a hit judged meanwhile may have been
/// judged too late, so the caller ends them.
pub(crate) fn check_hit_clock() -> Option<u64> {
    let ahead = hit_ahead_us()?;
    if COARSE_FAILED.load(Ordering::Relaxed) {
        return None;
    }
    // The coarse reading is taken after `before`: it is at least this far behind.
    let before = monotonic_us();
    let behind = before.saturating_sub(coarse_us());
    (behind > ahead).then(|| {
        COARSE_FAILED.store(true, Ordering::Relaxed);
        behind
    })
}

/// Microseconds since this process first asked; never 0, so 0 can mean "never": the system's
/// monotonic clock ([`monotonic_us`]). Hits read [`hit_now_us`] instead.
#[cfg(not(test))]
pub(crate) fn now_us() -> u64 {
    monotonic_us()
}

/// The time a cache hit decides by ([`real_hit_now_us`]).
#[cfg(not(test))]
pub(crate) fn hit_now_us() -> u64 {
    real_hit_now_us()
}

/// In the crate's unit tests: [`now_us`], so that paused time drives hits too.
#[cfg(test)]
pub(crate) fn hit_now_us() -> u64 {
    now_us()
}

/// In the crate's unit tests: tokio's clock, so that leases, time to live and refresh can be
/// tested with paused time (`tokio::time::pause`, `advance`).
#[cfg(test)]
pub(crate) fn now_us() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    epoch.elapsed().as_micros() as u64 + 1
}

/// An interval of `period` whose ticks fall `offset` after the multiples of `period` on the
/// system clock, the first one period or less from now. Every node's heartbeats then go out
/// together (the nodes' clocks agree to within a few milliseconds): a node receives its peers'
/// heartbeats in one burst and wakes once for them all rather than once per peer. Only the
/// phase is taken from the system clock; the ticks are the monotonic clock's, so a step of the
/// system clock moves nothing. A tick that falls late is skipped, not made up: the next one
/// keeps the phase.
pub(crate) fn aligned_interval(period: Duration, offset: Duration) -> tokio::time::Interval {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let until = until_next_multiple(since_epoch.saturating_sub(offset), period);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + until, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticks
}

/// How long from `since_epoch` to the next multiple of `period` (a whole period when on one).
fn until_next_multiple(since_epoch: Duration, period: Duration) -> Duration {
    let period_us = period.as_micros().max(1);
    Duration::from_micros((period_us - since_epoch.as_micros() % period_us) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_fall_on_the_multiples_of_the_period_whenever_a_node_starts() {
        let ms = Duration::from_millis;
        let period = ms(200);
        // Two nodes started 70 ms apart tick at the same instants, within one period.
        assert_eq!(until_next_multiple(ms(1_000_030), period), ms(170));
        assert_eq!(until_next_multiple(ms(1_000_100), period), ms(100));
        assert_eq!(until_next_multiple(ms(1_000_000), period), period);
        assert_eq!(
            until_next_multiple(ms(7), Duration::ZERO),
            Duration::from_micros(1)
        );
    }

    #[test]
    fn a_jump_of_the_boot_clock_past_the_monotonic_one_is_a_suspension() {
        let mut detector = SuspendDetector::default();
        assert_eq!(detector.observe(1_000, 50_000, 100), None, "first reading");
        // Both advance alike (a little jitter): no suspension.
        assert_eq!(detector.observe(201_000, 250_050, 100), None);
        // The boot clock moves an hour more than the monotonic one.
        let hour = 3_600_000_000;
        assert_eq!(detector.observe(401_000, 450_050 + hour, 100), Some(hour));
        // And then alike again.
        assert_eq!(detector.observe(601_000, 650_050 + hour, 100), None);
        // A clock that stepped back is no suspension.
        assert_eq!(detector.observe(801_000, 10, 100), None);
    }

    #[test]
    fn a_hit_never_takes_the_time_to_be_earlier_than_the_monotonic_clock() {
        for _ in 0..10_000 {
            let before = monotonic_us();
            let hit = real_hit_now_us();
            assert!(hit >= before, "hit clock {hit} behind {before}");
            if let Some(ahead) = hit_ahead_us() {
                let after = monotonic_us();
                assert!(
                    hit <= after + ahead,
                    "hit clock {hit} more than {ahead} past {after}"
                );
            }
        }
        assert_eq!(check_hit_clock(), None, "the coarse clock fell behind");
    }

    #[test]
    fn the_boot_clock_reads_on_this_system() {
        if cfg!(target_os = "linux") {
            let (a, b) = (boottime_us().unwrap(), boottime_us().unwrap());
            assert!(b >= a);
        }
    }
}

//! This process's monotonic clock in microseconds: the only clock leases use. No clock sync
//! between nodes is needed, because a node only ever compares its own timestamps.

use std::sync::atomic::{AtomicI64, Ordering};
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

/// Notices that [`now_us`] stopped or went back: between two readings, the system's monotonic
/// clock advanced by at least `MIN_SPAN_US` and [`now_us`] by less than half as much. (A
/// suspension makes the monotonic clock the slower one, never this.) Fed explicit readings,
/// so that it is tested with any clock.
#[derive(Debug, Default)]
pub(crate) struct StallDetector {
    last: Option<(u64, u64)>,
}

impl StallDetector {
    /// Readings closer than this are not judged: jitter, not a stall.
    const MIN_SPAN_US: u64 = 20_000;

    /// Takes one pair of readings (`now_us`, monotonic µs); says whether `now_us` fell behind.
    pub(crate) fn observe(&mut self, now: u64, mono: u64) -> bool {
        let Some((last_now, last_mono)) = self.last else {
            self.last = Some((now, mono));
            return false;
        };
        let mono_span = mono.saturating_sub(last_mono);
        if mono_span < Self::MIN_SPAN_US {
            return false;
        }
        self.last = Some((now, mono));
        now < last_now || now - last_now < mono_span / 2
    }

    /// Forgets the last readings (the clock was replaced).
    pub(crate) fn reset(&mut self) {
        self.last = None;
    }
}

/// µs since this process first asked, on the system's monotonic clock (`CLOCK_MONOTONIC`):
/// what [`StallDetector`] holds [`now_us`] against, and what [`now_us`] reads once the
/// time-stamp counter has failed.
pub(crate) fn monotonic_us() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `i64::MIN` while [`now_us`] reads the time-stamp counter; once that failed, what to add to
/// [`monotonic_us`] to continue where the counter left off.
static SHIFT: AtomicI64 = AtomicI64::new(i64::MIN);

/// The time-stamp counter stopped or went back: from now on [`now_us`] reads the system's
/// monotonic clock, continuing from just past `highest` (the highest reading handed out that
/// the caller knows of), so it never goes back. Returns the new reading.
pub(crate) fn abandon_counter(highest: u64) -> u64 {
    let shift = i64::try_from(highest.saturating_add(1)).unwrap_or(i64::MAX)
        - i64::try_from(monotonic_us()).unwrap_or(i64::MAX);
    SHIFT.store(shift.max(i64::MIN + 1), Ordering::Release);
    shifted(monotonic_us(), shift)
}

/// `mono` moved by `shift`, never 0.
fn shifted(mono: u64, shift: i64) -> u64 {
    mono.saturating_add_signed(shift).max(1)
}

/// Microseconds since this process first asked; never 0, so 0 can mean "never".
///
/// A cache hit reads it (the lease check, expiry), so it must not stall the pipeline: the
/// system's monotonic clock (`clock_gettime` in the vDSO) orders the time-stamp counter read
/// behind every load before it, so consecutive hits can no longer overlap their cache misses —
/// measured on random reads over 100 000 entries, that alone takes a bare map lookup from
/// 97 ns to 274 ns. `quanta` reads the invariant time-stamp counter without that fence,
/// calibrated against the monotonic clock (and falls back to the monotonic clock where the
/// counter is not usable). Skew between cores is nanoseconds, far below the microsecond unit.
///
/// Should the counter ever stop or go back (some platforms reset it on resume from
/// suspend-to-RAM; a live migration can move it), the node's watchdog notices within a tick
/// and switches this to the system's monotonic clock for good ([`abandon_counter`]).
#[cfg(not(test))]
pub(crate) fn now_us() -> u64 {
    let shift = SHIFT.load(Ordering::Relaxed);
    if shift != i64::MIN {
        return shifted(monotonic_us(), shift);
    }
    static CLOCK: OnceLock<(quanta::Clock, u64)> = OnceLock::new();
    let (clock, start) = CLOCK.get_or_init(|| {
        let clock = quanta::Clock::new();
        let start = clock.raw();
        (clock, start)
    });
    clock.delta_as_nanos(*start, clock.raw()) / 1_000 + 1
}

/// In the crate's unit tests: tokio's clock, so that leases, time to live and refresh can be
/// tested with paused time (`tokio::time::pause`, `advance`).
#[cfg(test)]
pub(crate) fn now_us() -> u64 {
    static EPOCH: OnceLock<tokio::time::Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(tokio::time::Instant::now);
    epoch.elapsed().as_micros() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_counter_that_stops_or_goes_back_is_noticed_a_suspension_is_not() {
        let mut detector = StallDetector::default();
        assert!(!detector.observe(1_000, 5_000), "first reading");
        // Both advance alike.
        assert!(!detector.observe(201_000, 205_100));
        // Too close together to judge.
        assert!(!detector.observe(201_000, 210_000));
        // Stopped: the monotonic clock moved 200 ms, the counter not at all.
        assert!(detector.observe(201_000, 405_100));
        // Went back.
        assert!(detector.observe(50_000, 605_100));
        detector.reset();
        assert!(!detector.observe(50_000, 605_100));
        // A suspension: the monotonic clock stood still while the counter ran on.
        assert!(!detector.observe(10_050_000, 625_100));
    }

    #[test]
    fn the_monotonic_fallback_continues_past_the_highest_reading() {
        // (In unit tests `now_us` reads tokio's clock, so switching here changes nothing else.)
        let highest = monotonic_us() + 7_000_000;
        let first = abandon_counter(highest);
        assert!(first > highest, "went back: {first} after {highest}");
        let shift = SHIFT.load(Ordering::Acquire);
        assert_ne!(shift, i64::MIN, "still on the counter");
        let later = shifted(monotonic_us(), shift);
        assert!(later >= first, "{later} after {first}");
        // Far behind (the counter had run ahead of the monotonic clock): still never 0.
        assert_eq!(shifted(0, -5), 1);
    }

    #[test]
    fn the_boot_clock_reads_on_this_system() {
        if cfg!(target_os = "linux") {
            let (a, b) = (boottime_us().unwrap(), boottime_us().unwrap());
            assert!(b >= a);
        }
    }
}

//! The two clocks: a monotonic one decides staleness, the wall clock is what `lastOnline`
//! reports. Store and sweeper take `Now` as an argument, so tests drive time by hand.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::model::Now;

/// Monotonic milliseconds since the clock's origin; only compared, never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mono(pub u64);

impl Mono {
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_millis(d)))
    }
}

/// Milliseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallMillis(pub i64);

/// Whole milliseconds of `d`, rounded up so that a non-zero duration never becomes zero.
pub fn duration_millis(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The process's clock. Cheap to copy; every copy shares the same origin.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    pub fn now(&self) -> Now {
        let mono = Mono(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX));
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Now {
            mono,
            wall: WallMillis(wall),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_millisecond_durations_round_up() {
        assert_eq!(duration_millis(Duration::from_micros(1)), 1);
        assert_eq!(duration_millis(Duration::from_millis(250)), 250);
        assert_eq!(duration_millis(Duration::from_micros(1500)), 2);
    }

    #[test]
    fn the_monotonic_clock_never_goes_back() {
        let clock = Clock::new();
        let a = clock.now();
        let b = clock.now();
        assert!(b.mono >= a.mono);
        assert!(a.wall.0 > 1_600_000_000_000);
    }
}

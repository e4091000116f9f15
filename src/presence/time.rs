//! The two clocks: a monotonic one decides staleness, the wall clock is what `lastOnline`
//! reports. Store and sweeper take `Now` as an argument; the running server reads one
//! [`Clock`] everywhere (store calls, sweeper, credentials, CSRF windows, rate limits), so
//! tests can drive the whole server's time with [`Clock::mock`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use governor::clock::{QuantaClock, QuantaInstant, Reference as _};
use governor::nanos::Nanos;

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

impl WallMillis {
    /// Appends this instant as the API writes every time (`lastOnline`, `invisibleUntil`):
    /// RFC 3339 in UTC with milliseconds and `Z`, `2026-12-06T03:00:00.000Z`. False, and
    /// nothing written, for an instant chrono cannot hold.
    pub fn write_rfc3339(self, out: &mut Vec<u8>) -> bool {
        use chrono::{DateTime, Datelike as _, Timelike as _, Utc};
        let Some(t) = DateTime::<Utc>::from_timestamp_millis(self.0) else {
            return false;
        };
        let year = t.year();
        if !(0..=9999).contains(&year) {
            out.extend_from_slice(t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string().as_bytes());
            return true;
        }
        let ms = t.timestamp_subsec_millis();
        let digits = [
            (year as u32 / 100, 2),
            (year as u32 % 100, 2),
            (t.month(), 2),
            (t.day(), 2),
            (t.hour(), 2),
            (t.minute(), 2),
            (t.second(), 2),
            (ms, 3),
        ];
        for (i, (value, width)) in digits.into_iter().enumerate() {
            out.extend_from_slice(match i {
                2 | 3 => b"-",
                4 => b"T",
                5 | 6 => b":",
                7 => b".",
                _ => b"",
            });
            if width == 3 {
                out.push(b'0' + (value / 100) as u8);
            }
            out.push(b'0' + (value / 10 % 10) as u8);
            out.push(b'0' + (value % 10) as u8);
        }
        out.push(b'Z');
        true
    }
}

impl WallMillis {
    /// The same instant as a `SystemTime` (the epoch for times before it).
    pub fn to_system_time(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

/// Whole milliseconds of `d`, rounded up so that a non-zero duration never becomes zero.
pub fn duration_millis(d: Duration) -> u64 {
    let ms = d.as_millis() + u128::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The server's clock: monotonic and wall time, and the instants the rate limiter counts
/// in. Cheap to clone; every clone shares the same origin (and, for a mock, the same time).
///
/// [`Clock::system`] reads the operating system's clocks, with no lock and no shared state.
/// [`Clock::mock`] stands still until its [`MockClock`] handle moves it: monotonic and wall
/// time then advance together, by exactly the amount given.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    System(SystemSource),
    Mock(Arc<MockState>),
}

#[derive(Debug, Clone)]
struct SystemSource {
    origin: Instant,
    /// The rate limiter's time, read as `governor` reads it by default (a TSC-backed clock
    /// where the CPU has one): limits are checked on every request.
    limiter: QuantaClock,
    limiter_origin: QuantaInstant,
}

#[derive(Debug)]
struct MockState {
    /// Wall time at the mock's origin.
    wall_origin: WallMillis,
    /// Nanoseconds the mock has been moved on since its origin.
    elapsed: AtomicU64,
}

/// The handle that moves a [`Clock::mock`] on; clones move the same clock.
#[derive(Debug, Clone)]
pub struct MockClock {
    state: Arc<MockState>,
}

impl MockClock {
    /// Moves the clock on by `by`: monotonic time, wall time and the rate limiter's time.
    pub fn increment(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .state
            .elapsed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_add(by))
            });
    }

    /// How far the clock has been moved on since it was made.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.state.elapsed.load(Ordering::Acquire))
    }
}

impl Clock {
    /// The operating system's clocks, with the monotonic origin at this call.
    pub fn system() -> Self {
        let limiter = QuantaClock::default();
        let limiter_origin = governor::clock::Clock::now(&limiter);
        Self {
            source: Source::System(SystemSource {
                origin: Instant::now(),
                limiter,
                limiter_origin,
            }),
        }
    }

    /// Same as [`Clock::system`].
    pub fn new() -> Self {
        Self::system()
    }

    /// A clock that moves only when told to, and the handle that moves it. It starts at
    /// the current wall time rounded down to a whole second (so that whole-second times
    /// such as a credential's `exp` fall on exact offsets from it) and at monotonic zero.
    pub fn mock() -> (Self, MockClock) {
        let start = system_wall();
        Self::mock_at(WallMillis(start.0 - start.0.rem_euclid(1000)))
    }

    /// A clock that moves only when told to, starting at wall time `wall`.
    pub fn mock_at(wall: WallMillis) -> (Self, MockClock) {
        let state = Arc::new(MockState {
            wall_origin: wall,
            elapsed: AtomicU64::new(0),
        });
        let clock = Self {
            source: Source::Mock(Arc::clone(&state)),
        };
        (clock, MockClock { state })
    }

    pub fn now(&self) -> Now {
        match &self.source {
            Source::System(system) => Now {
                mono: Mono(u64::try_from(system.origin.elapsed().as_millis()).unwrap_or(u64::MAX)),
                wall: system_wall(),
            },
            Source::Mock(mock) => {
                let ms = mock.elapsed.load(Ordering::Acquire) / 1_000_000;
                Now {
                    mono: Mono(ms),
                    wall: WallMillis(
                        mock.wall_origin
                            .0
                            .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
                    ),
                }
            }
        }
    }

    /// True for a [`Clock::mock`]. A backend with a clock of its own (Redis) runs on this
    /// clock instead when it is a mock, so that tests drive every backend's time alike.
    pub fn is_mock(&self) -> bool {
        matches!(self.source, Source::Mock(_))
    }

    /// Wall time only, in milliseconds since the Unix epoch.
    pub fn wall(&self) -> WallMillis {
        match &self.source {
            Source::System(_) => system_wall(),
            Source::Mock(_) => self.now().wall,
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

/// The rate limiter's time: nanoseconds since the clock's origin.
impl governor::clock::Clock for Clock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        match &self.source {
            Source::System(system) => {
                governor::clock::Clock::now(&system.limiter).duration_since(system.limiter_origin)
            }
            Source::Mock(mock) => Nanos::new(mock.elapsed.load(Ordering::Acquire)),
        }
    }
}

fn system_wall() -> WallMillis {
    WallMillis(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
    )
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
        let clock = Clock::system();
        let a = clock.now();
        let b = clock.now();
        assert!(b.mono >= a.mono);
        assert!(a.wall.0 > 1_600_000_000_000);
        let (l1, l2) = (
            governor::clock::Clock::now(&clock),
            governor::clock::Clock::now(&clock),
        );
        assert!(l2 >= l1);
    }

    #[test]
    fn a_mock_clock_stands_still_until_moved_and_moves_all_its_times_together() {
        let (clock, mock) = Clock::mock_at(WallMillis(1_700_000_000_000));
        let copy = clock.clone();
        let a = clock.now();
        assert_eq!(a.mono, Mono(0));
        assert_eq!(a.wall, WallMillis(1_700_000_000_000));
        assert_eq!(clock.now(), a);
        mock.increment(Duration::from_millis(1500));
        let b = copy.now();
        assert_eq!(b.mono, Mono(1500));
        assert_eq!(b.wall, WallMillis(1_700_000_001_500));
        assert_eq!(clock.wall(), b.wall);
        assert_eq!(
            governor::clock::Clock::now(&clock),
            Nanos::from(Duration::from_millis(1500))
        );
        assert_eq!(mock.elapsed(), Duration::from_millis(1500));
    }

    #[test]
    fn a_mock_clock_starts_on_a_whole_second_near_now() {
        let (clock, _mock) = Clock::mock();
        let wall = clock.now().wall;
        assert_eq!(wall.0 % 1000, 0);
        assert!((system_wall().0 - wall.0).abs() < 60_000);
    }
}

//! The two clocks: a monotonic one decides staleness, the wall clock is what `lastOnline`
//! reports. Store and sweeper take `Now` as an argument; the running server reads one
//! [`Clock`] everywhere (store calls, sweeper, credentials, CSRF windows, rate limits), so
//! tests can drive the whole server's time with [`Clock::mock`].

use std::cell::Cell;
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
        const DAY: i64 = 86_400_000;
        thread_local! {
            /// The day last written on this thread and its `YYYY-MM-DD`: the instants of
            /// one answer mostly fall on one day, whose date is then copied, not computed.
            static LAST_DATE: Cell<(i64, [u8; 10])> = const { Cell::new((i64::MIN, [0; 10])) };
        }
        let days = self.0.div_euclid(DAY);
        let date = match LAST_DATE.with(Cell::get) {
            (day, date) if day == days => date,
            _ => {
                let (year, month, day) = civil_from_days(days);
                if !(0..=9999).contains(&year) {
                    // Rare (and the bounds of what may be shown at all): chrono writes them.
                    use chrono::{DateTime, Utc};
                    let Some(t) = DateTime::<Utc>::from_timestamp_millis(self.0) else {
                        return false;
                    };
                    let text = t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
                    out.extend_from_slice(text.as_bytes());
                    return true;
                }
                let mut date = *b"0000-00-00";
                let year = year as u32;
                for (at, value) in [(0, year / 100), (2, year % 100), (5, month), (8, day)] {
                    date[at] = b'0' + (value / 10) as u8;
                    date[at + 1] = b'0' + (value % 10) as u8;
                }
                LAST_DATE.with(|last| last.set((days, date)));
                date
            }
        };
        let ms = self.0.rem_euclid(DAY) as u32;
        let (hour, minute) = (ms / 3_600_000, ms / 60_000 % 60);
        let (second, milli) = (ms / 1000 % 60, ms % 1000);
        let mut text = *b"0000-00-00T00:00:00.000Z";
        text[..10].copy_from_slice(&date);
        for (at, value) in [(11, hour), (14, minute), (17, second)] {
            text[at] = b'0' + (value / 10) as u8;
            text[at + 1] = b'0' + (value % 10) as u8;
        }
        text[20] = b'0' + (milli / 100) as u8;
        text[21] = b'0' + (milli / 10 % 10) as u8;
        text[22] = b'0' + (milli % 10) as u8;
        out.extend_from_slice(&text);
        true
    }
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01: the calendar's
/// 400-year cycle of 146,097 days, counted in years that begin on March 1 so that the
/// leap day ends each one.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468; // Days since 0000-03-01.
    let cycle = shifted.div_euclid(146_097);
    let day_of_cycle = shifted.rem_euclid(146_097); // 0..=146_096
    let year_of_cycle =
        (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524 - day_of_cycle / 146_096) / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_cycle + cycle * 400 + i64::from(month <= 2);
    (year, month, day)
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

    /// The calendar arithmetic writes what chrono writes, over the years the API shows,
    /// around every kind of leap year and at every edge of a day.
    #[test]
    fn rfc3339_matches_chrono() {
        use chrono::{DateTime, Utc};
        let check = |ms: i64| {
            let mut ours = Vec::new();
            assert!(WallMillis(ms).write_rfc3339(&mut ours));
            let theirs = DateTime::<Utc>::from_timestamp_millis(ms)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string();
            assert_eq!(String::from_utf8(ours).unwrap(), theirs, "at {ms}");
        };
        let first = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
        let last = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        for ms in [first, first + 1, last, last - 1, 0, -1, 1, 951_782_400_000] {
            check(ms);
        }
        let mut rng = crate::test_rng::XorShift::new(0x3339);
        for _ in 0..200_000 {
            check(first + rng.below((last - first + 1) as u64) as i64);
        }
        // Every day of 1900-2100, at its first and last millisecond.
        for day in -25_567..=47_482 {
            check(day * 86_400_000);
            check(day * 86_400_000 + 86_399_999);
        }
        let mut out = Vec::new();
        assert!(WallMillis(first - 1).write_rfc3339(&mut out));
        assert!(out.starts_with(b"-0001-12-31T23:59:59.999"));
        assert!(!WallMillis(i64::MAX).write_rfc3339(&mut Vec::new()));
    }
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

//! Background threads that run a task every interval until stopped: the sweeper and the
//! snapshot writer. Each is owned by the application, which stops and joins it on shutdown.
//!
//! A task that panics does not take its thread down: the panic is caught, logged, counted
//! through the `restarted` callback, and the task runs again after a backoff that doubles
//! with each consecutive panic (from one interval up to [`MAX_BACKOFF`]).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest wait between two runs of a task that keeps panicking.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A named thread running `task` every `interval`.
///
/// A plain thread rather than a task on the HTTP runtime: sweeps and snapshots are CPU and
/// disk work that must not sit on a worker's event loop, and `recv_timeout` on the stop
/// channel gives both the period and a prompt stop.
#[derive(Debug)]
pub struct Periodic {
    name: &'static str,
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Periodic {
    /// Starts the thread. `restarted` is called each time `task` panicked and is about to be
    /// run again.
    pub fn spawn(
        name: &'static str,
        interval: Duration,
        mut task: impl FnMut() + Send + 'static,
        restarted: impl Fn() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                // A fixed rate: each run is due `interval` after the previous one was due,
                // so the time a run takes does not push every later one back (a run that
                // overran is followed at once by the next, never by a burst).
                let mut due = Instant::now() + interval;
                // The pause after a panic, doubled by each consecutive one.
                let mut pause = interval;
                loop {
                    let wait = due.saturating_duration_since(Instant::now());
                    if !matches!(stopped.recv_timeout(wait), Err(RecvTimeoutError::Timeout)) {
                        break;
                    }
                    match catch_unwind(AssertUnwindSafe(&mut task)) {
                        Ok(()) => {
                            pause = interval;
                            due += interval;
                            due = due.max(Instant::now());
                        }
                        Err(panic) => {
                            pause = backoff(pause, interval);
                            tracing::error!(
                                thread = name,
                                panic = panic_message(&*panic),
                                retry_in = ?pause,
                                "background task panicked; restarting it"
                            );
                            restarted();
                            due = Instant::now() + pause;
                        }
                    }
                }
            })?;
        Ok(Self { name, stop, thread })
    }

    /// Asks the thread to stop, then waits until the task in progress (if any) is done.
    pub fn stop(self) {
        // A send error means the thread already ended; joining is still right.
        let _ = self.stop.send(());
        if self.thread.join().is_err() {
            tracing::error!(thread = self.name, "background thread panicked");
        }
    }
}

/// The wait after another panic: twice the last one, at least one interval, at most
/// [`MAX_BACKOFF`] (or the interval, if that is longer).
fn backoff(last: Duration, interval: Duration) -> Duration {
    last.saturating_mul(2)
        .max(interval)
        .min(MAX_BACKOFF.max(interval))
}

/// The text a panic was raised with, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn the_task_runs_repeatedly_until_stopped_and_not_after() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&runs);
        let periodic = Periodic::spawn(
            "test-periodic",
            Duration::from_millis(1),
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
            },
            || {},
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(
                Instant::now() < deadline,
                "the task did not run three times"
            );
            std::thread::yield_now();
        }
        periodic.stop();
        // The thread has been joined and the task dropped with it (the test holds the
        // only counter left), so the task can never run again: no need to wait and see.
        assert_eq!(Arc::strong_count(&runs), 1);
    }

    #[test]
    fn a_task_that_panics_is_restarted_and_counted() {
        let runs = Arc::new(AtomicUsize::new(0));
        let restarts = Arc::new(AtomicUsize::new(0));
        let (counter, restarted) = (Arc::clone(&runs), Arc::clone(&restarts));
        let periodic = Periodic::spawn(
            "test-panicking",
            Duration::from_millis(1),
            move || {
                // The first two runs fail; the task keeps running after them.
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    panic!("injected failure");
                }
            },
            move || {
                restarted.fetch_add(1, Ordering::SeqCst);
            },
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 4 {
            assert!(Instant::now() < deadline, "the task was not restarted");
            std::thread::yield_now();
        }
        periodic.stop();
        assert_eq!(restarts.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_backoff_doubles_from_one_interval_up_to_its_bound() {
        let ms = Duration::from_millis;
        assert_eq!(backoff(ms(10), ms(10)), ms(20));
        assert_eq!(backoff(ms(20), ms(10)), ms(40));
        assert_eq!(backoff(ms(50_000), ms(10)), MAX_BACKOFF);
        // An interval longer than the bound is never shortened.
        let hour = Duration::from_secs(3600);
        assert_eq!(backoff(hour, hour), hour);
    }
}

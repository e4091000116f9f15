//! Background threads that run a task every interval until stopped: the sweeper and the
//! snapshot writer. Each is owned by the application, which stops and joins it on shutdown.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

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
    pub fn spawn(
        name: &'static str,
        interval: Duration,
        mut task: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Self> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    task();
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
        let periodic = Periodic::spawn("test-periodic", Duration::from_millis(1), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
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
}

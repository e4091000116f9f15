//! Tasks the application spawns for a connection's lifetime (a live stream's, which owns
//! its socket once it is handed over), counted so that shutdown can wait until each has
//! ended its connection properly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The open tasks of one kind. Cheap to share; each task holds a [`Running`] for as long
/// as it runs.
#[derive(Debug, Default)]
pub struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: AtomicUsize,
    ended: Notify,
}

/// Held by a running task; dropping it (when the task ends, or is dropped unfinished)
/// counts the task out.
#[derive(Debug)]
pub struct Running(Arc<Inner>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

impl Tasks {
    /// Counts a task in until the returned guard is dropped.
    pub fn start(&self) -> Running {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        Running(self.inner.clone())
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Waits until no task runs, at most `within`; whether none does.
    pub async fn ended(&self, within: Duration) -> bool {
        let wait = async {
            loop {
                let ended = self.inner.ended.notified();
                if self.running() == 0 {
                    return;
                }
                ended.await;
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_running_tasks_and_no_longer() {
        let tasks = Tasks::default();
        assert!(tasks.ended(Duration::from_millis(1)).await);
        let running = tasks.start();
        assert_eq!(tasks.running(), 1);
        assert!(!tasks.ended(Duration::from_millis(20)).await);
        let done = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(running);
        });
        assert!(tasks.ended(Duration::from_secs(10)).await);
        done.await.unwrap();
    }
}

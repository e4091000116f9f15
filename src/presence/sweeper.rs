//! The expiry loop and its owner, which stops it.
//!
//! On memory, sweeps are CPU work on the map: they run on a thread of their own (see
//! [`Periodic`]). On Redis, sweeps are network calls: they run as a task on the
//! application's runtime, which also refreshes the backend's sample of Redis's clock every
//! second. Either way, after each sweep `swept` is called with what it did and how long it
//! took.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::sync::Notify;

use super::memory::store::SweepReport;
use super::redis::{RedisBackend, CLOCK_SAMPLE_EVERY};
use super::service::Presence;
use crate::periodic::Periodic;

/// The running sweeper. [`Sweeper::stop`] ends it; dropping it unstopped leaves a memory
/// sweeper's thread running and aborts a Redis sweeper's task.
pub struct Sweeper {
    inner: Inner,
}

enum Inner {
    Thread(Periodic),
    Task {
        stop: Arc<Notify>,
        task: AbortOnDrop,
    },
}

/// A task aborted if its owner is dropped without stopping it.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

impl Sweeper {
    /// Starts sweeping `presence` every `interval`. `restarted` is called each time a sweep
    /// panicked and the sweeper goes on.
    pub fn start(
        presence: &Presence,
        interval: Duration,
        swept: impl Fn(&SweepReport, Duration) + Send + Sync + 'static,
        restarted: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        if let Some(redis) = presence.redis_backend() {
            let stop = Arc::new(Notify::new());
            let task = tokio::spawn(run_on_redis(
                presence.clone(),
                redis.clone(),
                interval,
                Arc::clone(&stop),
                swept,
                restarted,
            ));
            return Ok(Self {
                inner: Inner::Task {
                    stop,
                    task: AbortOnDrop(Some(task)),
                },
            });
        }
        let presence = presence.clone();
        let thread = Periodic::spawn(
            "presence-sweeper",
            interval,
            move || {
                let started = Instant::now();
                let Some(store) = presence.memory_store() else {
                    return;
                };
                let report = store.sweep(presence.clock().now());
                presence.end_invisibility_on_memory();
                swept(&report, started.elapsed());
            },
            restarted,
        )?;
        Ok(Self {
            inner: Inner::Thread(thread),
        })
    }

    /// Stops the sweeper and waits until the sweep in progress, if any, is done.
    pub async fn stop(self) {
        match self.inner {
            Inner::Thread(thread) => {
                if tokio::task::spawn_blocking(move || thread.stop())
                    .await
                    .is_err()
                {
                    tracing::error!("the sweeper thread could not be joined");
                }
            }
            Inner::Task { stop, mut task } => {
                stop.notify_one();
                let Some(task) = task.0.take() else {
                    return;
                };
                if let Err(e) = task.await {
                    if e.is_panic() {
                        tracing::error!("the sweeper task panicked");
                    }
                }
            }
        }
    }
}

/// The Redis sweeper: samples Redis's clock every [`CLOCK_SAMPLE_EVERY`] and sweeps every
/// `interval`, until `stop` is notified. A failed sweep is logged and tried again at the
/// next interval; one that panics is counted through `restarted`.
async fn run_on_redis(
    presence: Presence,
    redis: RedisBackend,
    interval: Duration,
    stop: Arc<Notify>,
    swept: impl Fn(&SweepReport, Duration) + Send + Sync + 'static,
    restarted: impl Fn() + Send + Sync + 'static,
) {
    let mut sweeps = tokio::time::interval(interval);
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = tokio::time::interval(CLOCK_SAMPLE_EVERY);
    samples.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = stop.notified() => break,
            _ = samples.tick() => {
                // A failure shows in the next sweep or request; nothing to do here.
                let _ = redis.refresh_clock().await;
            }
            _ = sweeps.tick() => {
                let started = Instant::now();
                let sweep = async {
                    let report = redis.sweep().await?;
                    // Ends of invisibility are re-sent after the sweep; a failure is
                    // retried at the next one (the users stay due).
                    let _ = presence.end_invisibility().await;
                    Ok::<_, super::redis::PartialSweep>(report)
                };
                match AssertUnwindSafe(sweep).catch_unwind().await {
                    Ok(Ok(report)) => {
                        if failing {
                            tracing::info!("sweeps on Redis succeed again");
                            failing = false;
                        }
                        swept(&report, started.elapsed());
                    }
                    Ok(Err(partial)) => {
                        // What the claims that answered did happened: it is counted.
                        if partial.done != SweepReport::default() {
                            swept(&partial.done, started.elapsed());
                        }
                        if !failing {
                            tracing::warn!(
                                error = %partial.error,
                                expired = partial.done.expired,
                                "sweep failed (what it did is counted); retrying every \
                                 sweep_interval"
                            );
                            failing = true;
                        }
                    }
                    Err(_) => {
                        tracing::error!("a sweep panicked; the sweeper goes on");
                        restarted();
                    }
                }
            }
        }
    }
}

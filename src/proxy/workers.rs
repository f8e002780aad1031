//! Thread-per-core serving: `[runtime] workers = N` serves connections on N threads, each
//! with its own single-threaded runtime, as Envoy's workers do.
//!
//! The accept loops run on the main runtime (worker 0), which hands each new connection
//! to the worker with the fewest open connections (the next in turn among equals). The
//! connection then lives on that thread for its whole life, and so do the upstream
//! connections its requests use: every worker has its own pools (picked by
//! [`per_worker::current`]), and its own copy of the request counters.
//! Nothing on the request path crosses threads, so a request costs what it costs on the
//! single-threaded default. The price is balance: a busy long-lived connection (an HTTP/2
//! one from a peer sidecar) stays on the worker that got it.

use std::future::Future;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

use crate::per_worker;

/// The threads connections are handed to.
pub struct Workers {
    /// Runtimes of workers 1.. (worker 0 is the main runtime).
    others: Vec<Handle>,
    /// Open connections per worker.
    open: Vec<AtomicUsize>,
    /// Where the search for the least busy worker starts next.
    next: AtomicUsize,
    stop: CancellationToken,
}

/// A connection's place on a worker; dropping it frees the place.
pub struct Assignment {
    /// The worker the connection runs on.
    pub worker: usize,
    workers: Option<Arc<Workers>>,
}

impl Drop for Assignment {
    fn drop(&mut self) {
        if let Some(workers) = &self.workers {
            workers.open[self.worker].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Workers {
    /// Starts `count - 1` worker threads beside the calling runtime.
    pub fn start(count: NonZeroUsize) -> io::Result<Self> {
        let stop = CancellationToken::new();
        let others = (1..count.get())
            .map(|index| spawn_worker(index, stop.clone()))
            .collect::<io::Result<_>>()?;
        Ok(Self {
            others,
            open: (0..count.get()).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// How many workers serve connections, the main runtime included.
    pub fn count(&self) -> usize {
        self.others.len() + 1
    }

    /// A worker for a new connection: the one with the fewest open, the next in turn
    /// among equals.
    pub fn assign(self: &Arc<Self>) -> Assignment {
        let count = self.count();
        if count == 1 {
            return Assignment {
                worker: 0,
                workers: None,
            };
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let worker = (start..start + count)
            .map(|turn| turn % count)
            .min_by_key(|&worker| self.open[worker].load(Ordering::Relaxed))
            .unwrap_or(0);
        self.open[worker].fetch_add(1, Ordering::Relaxed);
        Assignment {
            worker,
            workers: Some(self.clone()),
        }
    }

    /// Runs `task` on worker `index` (1 or more: worker 0 spawns with `tokio::spawn`).
    /// After [`Workers::stop`] the task is dropped unrun.
    pub fn spawn(&self, index: usize, task: impl Future<Output = ()> + Send + 'static) {
        self.others[index - 1].spawn(task);
    }

    /// Ends the worker threads; what still runs on them is dropped.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for Workers {
    /// The threads end when nothing can hand them work any more (a sidecar that failed to
    /// start); a running one is stopped by its `App`, since its tasks hold these workers.
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_worker(index: usize, stop: CancellationToken) -> io::Result<Handle> {
    let runtime = Builder::new_current_thread().enable_all().build()?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name(format!("idgate-worker-{index}"))
        .spawn(move || {
            per_worker::enter(index);
            runtime.block_on(stop.cancelled());
        })?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_goes_to_the_least_busy_worker_and_runs_on_its_thread() {
        let workers = Arc::new(Workers::start(NonZeroUsize::new(3).unwrap()).unwrap());
        assert_eq!(workers.count(), 3);
        let mut first: Vec<Assignment> = (0..3).map(|_| workers.assign()).collect();
        let mut spread: Vec<usize> = first.iter().map(|a| a.worker).collect();
        spread.sort_unstable();
        assert_eq!(spread, [0, 1, 2], "one each while all are equally busy");
        let freed = first.remove(1).worker;
        assert_eq!(
            workers.assign().worker,
            freed,
            "the one that lost a connection"
        );
        drop(first);
        for index in 1..3 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            workers.spawn(index, async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send((per_worker::current(), name));
            });
            let (seen, name) = rx.await.unwrap();
            assert_eq!(seen, index);
            assert_eq!(
                name.as_deref(),
                Some(format!("idgate-worker-{index}").as_str())
            );
        }
        assert_eq!(per_worker::current(), 0);
        workers.stop();
    }

    #[tokio::test]
    async fn dropping_the_workers_ends_their_threads() {
        let workers = Workers::start(NonZeroUsize::new(2).unwrap()).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        // Held by a task on the worker: it is dropped (unsent) when the thread's runtime ends.
        workers.spawn(1, async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        assert!(
            matches!(ended, Ok(Err(_))),
            "the worker's runtime was not shut down"
        );
    }

    #[tokio::test]
    async fn one_worker_is_the_main_runtime_alone() {
        let workers = Arc::new(Workers::start(NonZeroUsize::MIN).unwrap());
        assert_eq!(workers.count(), 1);
        assert!((0..3).all(|_| workers.assign().worker == 0));
    }
}

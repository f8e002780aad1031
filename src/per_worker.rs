//! Which worker thread is running, and per-worker copies of the counters every request
//! writes.
//!
//! A counter that every worker increments moves its cache line between cores on every
//! request. [`PerWorker`] gives each worker its own copy, made on that worker's first
//! write; readers (a scrape, the admin API) add the copies up. A sidecar with one worker
//! makes exactly one copy. There are as many places for copies as CPUs the process may
//! use (its cgroup's quota included), so workers beyond that share copies: still
//! correct, a little slower.

use std::cell::Cell;
use std::sync::OnceLock;
use std::thread::available_parallelism;

use crossbeam_utils::CachePadded;

/// Places for copies at most, however many CPUs there are.
const MAX_COPIES: usize = 64;

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The worker the calling thread is: 0 on the main runtime (and on any other thread).
pub fn current() -> usize {
    CURRENT.get()
}

/// Marks the calling thread as worker `index` for the rest of its life.
pub(crate) fn enter(index: usize) {
    CURRENT.set(index);
}

/// One `T` per worker that has used it, each on cache lines of its own.
#[derive(Debug)]
pub struct PerWorker<T> {
    copies: Box<[OnceLock<Box<CachePadded<T>>>]>,
}

impl<T> Default for PerWorker<T> {
    /// Places for as many copies as the process has CPUs.
    fn default() -> Self {
        static CPUS: OnceLock<usize> = OnceLock::new();
        let cpus = *CPUS.get_or_init(|| available_parallelism().map_or(1, |n| n.get()));
        Self::with_places(cpus)
    }
}

impl<T> PerWorker<T> {
    /// Places for `places` copies (1 to [`MAX_COPIES`]).
    fn with_places(places: usize) -> Self {
        Self {
            copies: (0..places.clamp(1, MAX_COPIES))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The calling worker's copy, made by `init` on its first use.
    pub fn local_or_init(&self, init: impl FnOnce() -> T) -> &T {
        self.copies[current() % self.copies.len()]
            .get_or_init(|| Box::new(CachePadded::new(init())))
    }

    /// Every copy made so far.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.copies
            .iter()
            .filter_map(OnceLock::get)
            .map(|copy| &***copy)
    }
}

impl<T: Default> PerWorker<T> {
    /// The calling worker's copy, made with `T::default()` on its first use.
    pub fn local(&self) -> &T {
        self.local_or_init(T::default)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn each_worker_writes_its_own_copy_and_readers_see_them_all() {
        let counts = PerWorker::<AtomicU64>::with_places(3);
        counts.local().fetch_add(1, Ordering::Relaxed);
        std::thread::scope(|scope| {
            for index in [1, 2, 5] {
                let counts = &counts;
                scope.spawn(move || {
                    enter(index);
                    counts.local().fetch_add(10, Ordering::Relaxed);
                });
            }
        });
        let copies: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        // Worker 5 shares worker 2's place.
        assert_eq!(copies, [1, 10, 20]);
        assert_eq!(current(), 0, "other threads are worker 0");
    }
}

//! A stall clock: ends what stops moving. It watches a body (an upstream's response body
//! or a client's request body) and a byte relay (a TCP relay, an upgraded connection).
//!
//! Once its head has arrived a response is no longer bounded by the response timeout, so
//! an upstream that stalls mid-body would hold the client (and its stream or connection)
//! for ever; a client that stalls mid-body holds an upstream stream or connection the same
//! way; a relay whose ends both fall silent holds two connections. What moves nothing for
//! its limit (a body: the listener's `body` timeout; a relay: its `idle`) is ended
//! instead. The clock is read and the timer armed only once the watched thing has had to
//! wait (a small body that comes whole costs neither); after that progress only notes the
//! time, never touching the timer: a timer that fires early re-arms itself for the time
//! still left.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The clock of one body or relay: a timer, and when it last moved, once it has had to
/// wait. A body that never waits (the usual small one, whole in the first read) reads no
/// clock and arms no timer. Small (24 bytes) while it has not waited: every response
/// body carries one, and each byte of it is copied wherever the body moves.
pub struct StallWatch {
    limit: Duration,
    waiting: Option<Box<Waiting>>,
}

/// The clock once the watched thing has waited.
struct Waiting {
    timer: Pin<Box<Sleep>>,
    last_progress: Instant,
}

/// What the watch ends: nothing moved for its whole limit (the limit).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("nothing moved for {0:?}")]
pub struct Stalled(pub Duration);

impl StallWatch {
    /// A watch over something that may wait at most `limit` between two moves (a body's
    /// frames, a relay's bytes), the first counted from when it first waits.
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            waiting: None,
        }
    }

    /// It moved (a body delivered a frame, a relay moved bytes).
    pub fn progressed(&mut self) {
        if let Some(waiting) = &mut self.waiting {
            waiting.last_progress = Instant::now();
        }
    }

    /// It has nothing to move now: `Err` once it has waited for the whole limit, else the
    /// timer wakes `cx` when it will have. Reads no clock after the first wait.
    pub fn waiting(&mut self, cx: &mut Context<'_>) -> Result<(), Stalled> {
        let limit = self.limit;
        let waiting = self.waiting.get_or_insert_with(|| {
            let now = Instant::now();
            Box::new(Waiting {
                timer: Box::pin(tokio::time::sleep_until(now + limit)),
                last_progress: now,
            })
        });
        while waiting.timer.as_mut().poll(cx).is_ready() {
            // Fired: stalled for good, or it moved since the timer was set and waits on.
            match waiting.last_progress.checked_add(limit) {
                Some(due) if due > waiting.timer.deadline() => waiting.timer.as_mut().reset(due),
                _ => return Err(Stalled(limit)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poll_waiting(watch: &mut StallWatch) -> Result<(), Stalled> {
        let waker = std::task::Waker::noop();
        watch.waiting(&mut Context::from_waker(waker))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_waits_for_the_whole_limit_is_stalled() {
        let mut watch = StallWatch::new(Duration::from_secs(10));
        assert!(poll_waiting(&mut watch).is_ok());
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(poll_waiting(&mut watch).is_ok());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll_waiting(&mut watch).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn each_frame_gives_the_body_the_whole_limit_again() {
        let mut watch = StallWatch::new(Duration::from_secs(10));
        for _ in 0..5 {
            assert!(poll_waiting(&mut watch).is_ok());
            tokio::time::advance(Duration::from_secs(8)).await;
            watch.progressed();
        }
        assert!(poll_waiting(&mut watch).is_ok());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(poll_waiting(&mut watch).is_err());
    }
}

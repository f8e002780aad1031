//! Cuts a body that stops moving: an upstream's response body or a client's request body.
//!
//! Once its head has arrived a response is no longer bounded by the response timeout, so
//! an upstream that stalls mid-body would hold the client (and its stream or connection)
//! for ever; a client that stalls mid-body holds an upstream stream or connection the same
//! way. A body that delivers nothing for the listener's `body` timeout ends with an error
//! instead, which resets the stream (HTTP/2) or closes the connection (HTTP/1.1) it
//! travels on. The clock is read and the timer armed only once a body has had to wait (a
//! small body that comes whole costs neither); after that a frame only notes the time,
//! and a timer that fires early re-arms itself for the time still left.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The clock of one body: a timer, and when the body last moved, once it has had to wait.
/// A body that never waits (the usual small one, whole in the first read) reads no clock
/// and arms no timer.
pub struct StallWatch {
    limit: Duration,
    waiting: Option<Waiting>,
}

/// A body's clock once it has waited.
struct Waiting {
    timer: Pin<Box<Sleep>>,
    last_progress: Instant,
}

/// A body that delivered nothing for too long.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("nothing of the body came for {0:?} (timeouts.body): cut")]
pub struct Stalled(pub Duration);

impl StallWatch {
    /// A watch over a body that may wait at most `limit` between two frames (the first
    /// counted from when it first waits).
    pub fn new(limit: Duration) -> Self {
        Self {
            limit,
            waiting: None,
        }
    }

    /// The body delivered a frame.
    pub fn progressed(&mut self) {
        if let Some(waiting) = &mut self.waiting {
            waiting.last_progress = Instant::now();
        }
    }

    /// The body has nothing yet: `Err` once it has waited for the whole limit, else the
    /// timer wakes `cx` when it will have.
    pub fn waiting(&mut self, cx: &mut Context<'_>) -> Result<(), Stalled> {
        let limit = self.limit;
        let waiting = self.waiting.get_or_insert_with(|| {
            let now = Instant::now();
            Waiting {
                timer: Box::pin(tokio::time::sleep_until(now + limit)),
                last_progress: now,
            }
        });
        let deadline = waiting.last_progress + limit;
        if waiting.timer.deadline() != deadline {
            waiting.timer.as_mut().reset(deadline);
        }
        match waiting.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Err(Stalled(limit)),
            Poll::Pending => Ok(()),
        }
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

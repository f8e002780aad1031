//! Requests in flight on one served connection, and since when it has had none: what its
//! idle timeout counts from.
//!
//! A request counts from the call of the connection's service until its response body is
//! done or dropped, so a long response (a download, a gRPC watch) keeps its connection
//! busy. It costs each request a few uncontended atomic operations and a clock read, never
//! an allocation; it never ends a connection itself. On an HTTP/2 connection, whose
//! streams run as tasks of their own, each request also holds a token of the listener's
//! task tracker: a drain then waits until a request cut with its connection has been
//! dropped (and logged), without wrapping every stream's task. [`Cut`] tells a request
//! whose future is dropped unfinished whether its connection was closed under it, and
//! why.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Frame, SizeHint};
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::respond::Body;

/// One connection's requests in flight, and when the last of them ended.
pub struct Activity {
    started: Instant,
    /// What tracks the connection's requests when they outlive its task (HTTP/2 streams).
    streams: Option<TaskTracker>,
    in_flight: AtomicUsize,
    /// Milliseconds from `started` to the end of the latest request (0: none yet).
    last_end: AtomicU64,
}

impl Activity {
    /// A connection starting now, with no request yet; `streams` tracks its requests when
    /// they run as tasks of their own (HTTP/2).
    pub fn new(streams: Option<TaskTracker>) -> Arc<Self> {
        Arc::new(Self {
            started: Instant::now(),
            streams,
            in_flight: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
        })
    }

    /// When the connection started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Since when the connection has had no request in flight; `None` while it has one.
    pub fn idle_since(&self) -> Option<Instant> {
        // Acquire: pairs with the release in `InFlight::drop`, so a request seen ended
        // has its end time seen too.
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last_end = self.last_end.load(Ordering::Relaxed);
        Some(self.started + Duration::from_millis(last_end))
    }
}

/// A request in flight on a connection, from its start until this is dropped.
pub struct InFlight {
    activity: Arc<Activity>,
    /// Keeps the listener's drain waiting while the request lives (HTTP/2).
    _stream: Option<TaskTrackerToken>,
}

impl InFlight {
    /// Counts a request starting now on `activity`'s connection.
    pub fn start(activity: &Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Self {
            activity: activity.clone(),
            _stream: activity.streams.as_ref().map(TaskTracker::token),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.activity;
        let ended = u64::try_from(activity.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.last_end.store(ended, Ordering::Relaxed);
        activity.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Why a connection was closed under its open requests, once it has been: set by its
/// HTTP server when a drain passes (shutdown, revocation, expiry), read by the requests
/// whose futures that close drops. Lives in the connection's own state: no allocation.
#[derive(Debug, Default)]
pub struct Cut(OnceLock<Cow<'static, str>>);

impl Cut {
    /// Records that the connection is being closed under its open requests, for `reason`
    /// (the first reason stays).
    pub fn mark(&self, reason: Cow<'static, str>) {
        let _ = self.0.set(reason);
    }

    /// Why the connection was closed under its requests; `None` while it was not.
    pub fn reason(&self) -> Option<&str> {
        self.0.get().map(|reason| reason.as_ref())
    }
}

/// A response body that keeps its request counted in flight until it is done or dropped.
pub struct CountedBody {
    body: Body,
    _in_flight: InFlight,
}

impl CountedBody {
    /// `body`, whose request stays in flight while it lives.
    pub fn new(body: Body, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl hyper::body::Body for CountedBody {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_idle_only_with_no_request_in_flight() {
        let activity = Activity::new(None);
        assert_eq!(activity.idle_since(), Some(activity.started()));
        let first = InFlight::start(&activity);
        let second = InFlight::start(&activity);
        assert_eq!(activity.idle_since(), None);
        drop(first);
        assert_eq!(
            activity.idle_since(),
            None,
            "one request is still in flight"
        );
        drop(second);
        let idle_since = activity.idle_since().expect("no request in flight");
        assert!(idle_since >= activity.started() && idle_since <= Instant::now());
    }

    #[test]
    fn a_drain_waits_for_the_http2_requests_still_in_flight() {
        use std::future::Future;
        let streams = TaskTracker::new();
        streams.close();
        let activity = Activity::new(Some(streams.clone()));
        let request = InFlight::start(&activity);
        let mut drained = std::pin::pin!(streams.wait());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(
            drained.as_mut().poll(&mut cx).is_pending(),
            "the request is still in flight"
        );
        drop(request);
        assert!(drained.as_mut().poll(&mut cx).is_ready());
    }
}

//! Write coalescing for connections that carry many requests at once (HTTP/2 between
//! sidecars).
//!
//! The h2 codec flushes after every DATA frame it does not copy, so each response would
//! leave in its own TLS record and its own `writev`, and on loopback every write also
//! runs the receiver's TCP stack. Under a [`FlushAtEnd`] task, a [`Coalesce`] stream
//! takes the bytes and the flushes of one poll of that task and writes them all at the
//! end of the poll: the responses that became ready together leave together.
//! Outside such a task (or when the buffer fills), it writes at once, as any stream does.
//! A write too big to hold (an HTTP/2 DATA frame of a large body) leaves together with what
//! is held, in one vectored write: one TLS write and one system call instead of two.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before they are written regardless of flushes (one TLS record's worth).
const LIMIT: usize = 16 * 1024;

/// Room a new batch starts with: a few small responses' frames.
const BATCH_ROOM: usize = 4 * 1024;

/// Slices passed on in one vectored write (what is held, then the caller's).
const MAX_SLICES: usize = 16;

thread_local! {
    /// Streams that asked for a flush during the [`FlushAtEnd`] polls in progress on this
    /// thread; each such poll owns the entries from its mark on.
    static OWED: RefCell<Vec<Arc<dyn Deferred>>> = const { RefCell::new(Vec::new()) };
    /// Where the innermost [`FlushAtEnd`] poll's entries start (`None`: no such poll).
    static MARK: Cell<Option<usize>> = const { Cell::new(None) };
}

/// A stream that buffers small writes and, under [`FlushAtEnd`], defers flushes to the
/// end of the task's poll.
pub struct Coalesce<T> {
    state: Arc<Shared<T>>,
}

struct Shared<T> {
    inner: Mutex<State<T>>,
}

struct State<T> {
    io: T,
    pending: Vec<u8>,
    /// A flush was promised and is still owed.
    flush_owed: bool,
    /// A deferred flush failed; the next operation reports it.
    failed: Option<io::Error>,
}

/// A flush owed by some stream, paid at the end of a poll.
trait Deferred: Send + Sync {
    /// Writes what is buffered and flushes; `Pending` keeps the debt.
    fn pay(&self, cx: &mut Context<'_>) -> Poll<()>;

    /// Gives the debt back to the stream (its task ended): the next flush pays it.
    fn release(&self);
}

impl<T> Coalesce<T> {
    /// Wraps `io`.
    pub fn new(io: T) -> Self {
        Self {
            state: Arc::new(Shared {
                inner: Mutex::new(State {
                    io,
                    pending: Vec::new(),
                    flush_owed: false,
                    failed: None,
                }),
            }),
        }
    }

    /// Runs `f` on the wrapped stream.
    pub fn with_ref<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.state.lock().io)
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while holding the lock aborts the process (panic = "abort"), so a
        // poisoned lock only means a test thread panicked; its state is still whole.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: AsyncWrite + Unpin> State<T> {
    /// Writes everything buffered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = 0;
        let result = loop {
            if written == self.pending.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.pending[written..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(error)) => break Poll::Ready(Err(error)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.consume(written);
        result
    }

    /// Drops the first `written` bytes held.
    fn consume(&mut self, written: usize) {
        self.pending.drain(..written);
        if self.pending.is_empty() {
            // An idle connection keeps no buffer (one allocation per batch is cheap).
            self.pending = Vec::new();
        }
    }

    fn poll_drain_and_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Takes the caller's bytes: holds them while they fit, writes what is held first when
    /// they do not, and writes a buffer too big to hold at once, after what is held.
    fn poll_take(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total >= LIMIT {
            return self.poll_write_after_held(cx, bufs);
        }
        if self.pending.len() + total > LIMIT {
            ready!(self.poll_drain(cx))?;
        }
        if self.pending.capacity() == 0 {
            // Room for a batch up front: a response comes in several writes (frame
            // headers, then the data), and growing the buffer write by write reallocated
            // it about 1.5 times per request.
            self.pending.reserve(total.max(BATCH_ROOM));
        }
        for buf in bufs {
            self.pending.extend_from_slice(buf);
        }
        Poll::Ready(Ok(total))
    }

    /// Writes what is held and then (a prefix of) `bufs`, in one vectored write when the
    /// stream takes them; returns how much of `bufs` was written.
    fn poll_write_after_held(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            let held = self.pending.len();
            if held == 0 {
                return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            slices[0] = IoSlice::new(&self.pending);
            let count = 1 + bufs.len().min(MAX_SLICES - 1);
            slices[1..count].copy_from_slice(&bufs[..count - 1]);
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.consume(written.min(held));
            if written > held {
                return Poll::Ready(Ok(written - held));
            }
        }
    }
}

impl<T> State<T> {
    fn take_failure(&mut self) -> io::Result<()> {
        self.failed.take().map_or(Ok(()), Err)
    }
}

impl<T: AsyncWrite + Unpin + Send> Deferred for Shared<T> {
    fn pay(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.lock();
        if !state.flush_owed {
            return Poll::Ready(());
        }
        match state.poll_drain_and_flush(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(error)) => {
                // The connection sees it at its next read or write; make sure it comes.
                state.failed = Some(error);
                cx.waker().wake_by_ref();
            }
        }
        state.flush_owed = false;
        Poll::Ready(())
    }

    fn release(&self) {
        self.lock().flush_owed = false;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut state = self.state.lock();
        state.take_failure()?;
        Pin::new(&mut state.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.state.lock();
        state.take_failure()?;
        state.poll_take(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.state.lock();
        state.take_failure()?;
        state.poll_take(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Small slices are gathered into the buffer, large ones passed on together.
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state.lock();
        state.take_failure()?;
        if MARK.get().is_some() {
            // Owed to the FlushAtEnd poll in progress (listed once: a debt already listed
            // is paid by the poll or task that holds it, or released when that task ends).
            if !state.flush_owed {
                OWED.with(|owed| owed.borrow_mut().push(self.state.clone()));
                state.flush_owed = true;
            }
            return Poll::Ready(Ok(()));
        }
        ready!(state.poll_drain_and_flush(cx))?;
        state.flush_owed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut state = self.state.lock();
        state.take_failure()?;
        ready!(state.poll_drain_and_flush(cx))?;
        state.flush_owed = false;
        Pin::new(&mut state.io).poll_shutdown(cx)
    }
}

/// Runs a connection future so that the [`Coalesce`] streams it flushes write once, at
/// the end of each of its polls.
pub struct FlushAtEnd<F> {
    future: Pin<Box<F>>,
    /// Flushes that could not finish (the socket was full); retried at the next poll.
    owed: Vec<Arc<dyn Deferred>>,
}

impl<F> FlushAtEnd<F> {
    /// Wraps `future`.
    pub fn new(future: F) -> Self {
        Self {
            future: Box::pin(future),
            owed: Vec::new(),
        }
    }

    /// The wrapped future, e.g. to start its graceful shutdown.
    pub fn inner(&mut self) -> Pin<&mut F> {
        self.future.as_mut()
    }
}

impl<F: Future> Future for FlushAtEnd<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let start = OWED.with(|owed| owed.borrow().len());
        let outer = MARK.replace(Some(start));
        let result = this.future.as_mut().poll(cx);
        MARK.set(outer);
        OWED.with(|owed| this.owed.extend(owed.borrow_mut().drain(start..)));
        this.owed.retain(|stream| stream.pay(cx).is_pending());
        result
    }
}

impl<F> Drop for FlushAtEnd<F> {
    fn drop(&mut self) {
        // Flushes the socket could not take before the task ended go back to their
        // streams, so whoever flushes next (an upgraded connection's tunnel) pays them.
        for stream in self.owed.drain(..) {
            stream.release();
        }
    }
}

/// A hyper executor whose tasks (client connections) run under [`FlushAtEnd`].
#[derive(Clone, Copy, Debug, Default)]
pub struct FlushingExecutor;

impl<F> hyper::rt::Executor<F> for FlushingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(FlushAtEnd::new(future));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;

    /// Counts the writes that reach it and keeps their bytes.
    #[derive(Clone, Default)]
    struct Recorder {
        writes: Arc<AtomicUsize>,
        bytes: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        /// One write for all the slices, as `writev` is one system call.
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            let mut bytes = self.bytes.lock().unwrap();
            bufs.iter().for_each(|buf| bytes.extend_from_slice(buf));
            Poll::Ready(Ok(bufs.iter().map(|buf| buf.len()).sum()))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_large_write_leaves_together_with_what_is_held() {
        // An HTTP/2 DATA frame's 9-byte header is held; its 16 KiB payload must not
        // leave in a write (a TLS record and a system call) of its own after it.
        let recorder = Recorder::default();
        let mut stream = Coalesce::new(recorder.clone());
        let payload = vec![7u8; LIMIT];
        FlushAtEnd::new(async {
            stream.write_all(b"header").await.unwrap();
            stream.write_all(&payload).await.unwrap();
            stream.flush().await.unwrap();
        })
        .await;
        assert_eq!(recorder.writes.load(Ordering::Relaxed), 1);
        let written = recorder.bytes.lock().unwrap();
        assert_eq!(&written[..6], b"header");
        assert_eq!(&written[6..], &payload[..]);
    }

    #[tokio::test]
    async fn small_vectored_writes_are_gathered_until_the_flush() {
        let recorder = Recorder::default();
        let mut stream = Coalesce::new(recorder.clone());
        assert!(stream.is_write_vectored());
        FlushAtEnd::new(async {
            for (head, body) in [(&b"h1 "[..], &b"b1 "[..]), (b"h2 ", b"b2")] {
                let bufs = [IoSlice::new(head), IoSlice::new(body)];
                let taken = stream.write_vectored(&bufs).await.unwrap();
                assert_eq!(taken, head.len() + body.len());
                stream.flush().await.unwrap();
            }
        })
        .await;
        assert_eq!(recorder.writes.load(Ordering::Relaxed), 1);
        assert_eq!(&recorder.bytes.lock().unwrap()[..], b"h1 b1 h2 b2");
    }

    #[tokio::test]
    async fn flushes_within_one_poll_leave_in_one_write() {
        let recorder = Recorder::default();
        let mut stream = Coalesce::new(recorder.clone());
        FlushAtEnd::new(async {
            for frame in [&b"one "[..], b"two ", b"three"] {
                stream.write_all(frame).await.unwrap();
                stream.flush().await.unwrap();
            }
        })
        .await;
        assert_eq!(recorder.writes.load(Ordering::Relaxed), 1);
        assert_eq!(&recorder.bytes.lock().unwrap()[..], b"one two three");
    }

    #[tokio::test]
    async fn outside_a_flush_at_end_task_a_flush_writes_at_once() {
        let recorder = Recorder::default();
        let mut stream = Coalesce::new(recorder.clone());
        stream.write_all(b"one").await.unwrap();
        assert_eq!(recorder.writes.load(Ordering::Relaxed), 0);
        stream.flush().await.unwrap();
        assert_eq!(recorder.writes.load(Ordering::Relaxed), 1);
        stream.write_all(b"two").await.unwrap();
        stream.shutdown().await.unwrap();
        assert_eq!(&recorder.bytes.lock().unwrap()[..], b"onetwo");
    }

    /// A stream whose FlushAtEnd task ended while the socket (a 64-byte pipe) was full, as
    /// an HTTP/1.1 connection's does when it upgrades; the pipe's far end and the payload.
    async fn stream_owing_a_flush() -> (Coalesce<DuplexStream>, DuplexStream, Vec<u8>) {
        let (client, server) = tokio::io::duplex(64);
        let mut stream = Coalesce::new(client);
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        FlushAtEnd::new(async {
            stream.write_all(&payload).await.unwrap();
            stream.flush().await.unwrap();
        })
        .await;
        (stream, server, payload)
    }

    /// Reads `len` bytes from a pipe's far end; fails after 5 s.
    async fn receive(server: &mut DuplexStream, len: usize) -> Vec<u8> {
        let mut received = vec![0u8; len];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_exact(server, &mut received),
        )
        .await
        .expect("every byte arrived")
        .unwrap();
        received
    }

    #[tokio::test]
    async fn a_flush_owed_by_a_finished_task_is_paid_by_the_next_flush() {
        // Whoever flushes next must still get the bytes out.
        let (mut stream, mut server, payload) = stream_owing_a_flush().await;
        let reader = tokio::spawn(async move {
            let mut received = vec![0u8; 10_000];
            tokio::io::AsyncReadExt::read_exact(&mut server, &mut received)
                .await
                .map(|_| received)
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.flush())
            .await
            .expect("the flush finished")
            .unwrap();
        let received = tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("every byte arrived");
        assert_eq!(received.unwrap().unwrap(), payload);
    }

    #[tokio::test]
    async fn a_flush_owed_by_a_finished_task_is_paid_by_the_next_task() {
        // The next flush comes from another FlushAtEnd task: the ended task's debt must
        // have been given back, or nobody would list it again.
        let (mut stream, mut server, payload) = stream_owing_a_flush().await;
        let next = tokio::spawn(FlushAtEnd::new(async move {
            stream.flush().await.unwrap();
            // Keep the stream (and so the pending bytes) alive until the reader is done.
            std::future::pending::<()>().await;
        }));
        assert_eq!(receive(&mut server, payload.len()).await, payload);
        next.abort();
    }

    #[tokio::test]
    async fn a_full_buffer_is_written_without_waiting_for_a_flush() {
        let recorder = Recorder::default();
        let mut stream = Coalesce::new(recorder.clone());
        let big = vec![7u8; LIMIT - 10];
        stream.write_all(&big).await.unwrap();
        stream.write_all(&[8u8; 20]).await.unwrap();
        assert_eq!(recorder.writes.load(Ordering::Relaxed), 1);
        assert_eq!(recorder.bytes.lock().unwrap().len(), LIMIT - 10);
    }

    /// Fails every write, as a reset connection does.
    struct Broken;

    impl AsyncWrite for Broken {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_deferred_flush_that_fails_is_reported_by_the_next_write() {
        let mut stream = Coalesce::new(Broken);
        let mut first = true;
        let failing = FlushAtEnd::new(std::future::poll_fn(|cx| {
            let mut stream = Pin::new(&mut stream);
            if first {
                // The bytes are taken and the flush promised; the write fails at the end
                // of this poll, which wakes the task to see it.
                first = false;
                assert!(matches!(
                    stream.as_mut().poll_write(cx, b"frame"),
                    Poll::Ready(Ok(5))
                ));
                assert!(matches!(
                    stream.as_mut().poll_flush(cx),
                    Poll::Ready(Ok(()))
                ));
                return Poll::Pending;
            }
            match stream.as_mut().poll_write(cx, b"more") {
                Poll::Ready(Err(error)) => Poll::Ready(error),
                other => panic!("the failed flush was lost: {other:?}"),
            }
        }));
        // Without the wake-up the task would never run again (checked first, so a late
        // poll by the timer cannot pass for one).
        let error = tokio::select! {
            biased;
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {
                panic!("the task was not woken to see the failure")
            }
            error = failing => error,
        };
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset);
    }

    #[tokio::test]
    async fn large_writes_after_held_bytes_reach_a_full_socket_whole_and_in_order() {
        // Every write of the pipe takes at most 64 bytes: what is held and the large
        // buffers after it leave in many partial writes.
        let (client, mut server) = tokio::io::duplex(64);
        let mut stream = Coalesce::new(client);
        let mut expected = Vec::new();
        let frames: Vec<(Vec<u8>, Vec<u8>)> = (0..4u8)
            .map(|i| {
                (
                    vec![i; 9],
                    (0..LIMIT + 100).map(|j| (j % 251) as u8 ^ i).collect(),
                )
            })
            .collect();
        for (header, payload) in &frames {
            expected.extend_from_slice(header);
            expected.extend_from_slice(payload);
        }
        let writer = tokio::spawn(FlushAtEnd::new(async move {
            for (header, payload) in &frames {
                stream.write_all(header).await.unwrap();
                let mut rest = &payload[..];
                while !rest.is_empty() {
                    let bufs = [IoSlice::new(&[]), IoSlice::new(rest)];
                    let n = stream.write_vectored(&bufs).await.unwrap();
                    rest = &rest[n..];
                }
                stream.flush().await.unwrap();
            }
            std::future::pending::<()>().await;
        }));
        let received = receive(&mut server, expected.len()).await;
        assert!(received == expected, "bytes lost or reordered");
        writer.abort();
    }

    #[tokio::test]
    async fn a_socket_that_is_full_at_the_end_of_a_poll_gets_the_bytes_later() {
        // A real socket pair with a tiny receive side: the deferred flush meets a full
        // send buffer, and the task must come back to finish it.
        let (client, mut server) = tokio::io::duplex(64);
        let mut stream = Coalesce::new(client);
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let expected = payload.clone();
        let writer = tokio::spawn(FlushAtEnd::new(async move {
            for chunk in payload.chunks(1000) {
                stream.write_all(chunk).await.unwrap();
                stream.flush().await.unwrap();
            }
            // Keep the stream (and so the pending bytes) alive until the reader is done.
            std::future::pending::<()>().await;
        }));
        assert_eq!(receive(&mut server, expected.len()).await, expected);
        writer.abort();
    }

    #[tokio::test]
    async fn owed_bytes_leave_once_an_idle_tunnel_starts() {
        // As after an HTTP/1.1 upgrade whose 101 could not be written before the
        // connection's FlushAtEnd task ended: the tunnel takes the stream over, but
        // neither side has anything to send yet (the client waits for the 101).
        let (mut stream, mut server, payload) = stream_owing_a_flush().await;
        let (mut app_side, _app) = tokio::io::duplex(1024);
        let tunnel = tokio::spawn(async move {
            let mut copy = crate::proxy::copy::BothWays::new(std::time::Duration::from_secs(3600));
            copy.run(&mut stream, &mut app_side).await
        });
        assert_eq!(receive(&mut server, payload.len()).await, payload);
        tunnel.abort();
    }
}

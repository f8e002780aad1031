//! Copying bytes both ways between two streams (TCP relays, upgraded connections), holding
//! no buffer while a direction is idle, and giving up once no byte has moved either way for
//! an idle timeout.
//!
//! A relayed connection spends most of its life waiting (a database pool's connections, a
//! WebSocket), so a direction takes a buffer only while bytes flow and gives it back as
//! soon as its reader has nothing more. Reads start at 16 KiB and grow to 64 KiB while they
//! come back full, so a bulk transfer moves in large writes (four full TLS records each)
//! and a chatty one never holds more than it uses. EOF on one side becomes a shutdown of
//! the other side's write half, as with `tokio::io::copy_bidirectional`. The idle clock is
//! a [`StallWatch`], armed at the first wait (the copy's start) and kept for its whole
//! life: bytes that move cost a clock read per wake-up, never a timer reset; the timer
//! moves only when it fires and finds that bytes moved since it was set.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::poll_read_buf;

use super::stall::StallWatch;

/// The first read of a burst (small enough for the allocator's thread cache).
const FIRST_READ: usize = 16 * 1024;

/// The largest read, reached while reads keep filling the buffer.
const MAX_READ: usize = 64 * 1024;

/// How a copy both ways ended, when it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Both sides reached EOF (and each was passed on as a shutdown of the other side).
    Done,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// A copy both ways whose counts outlive it: what crossed before an error, before it went
/// idle, or before its owner stopped it (a revoked relay, a connection at its maximum age),
/// is still known.
pub struct BothWays {
    a_to_b: Direction,
    b_to_a: Direction,
    idle: Duration,
}

impl BothWays {
    /// A copy that ends once no byte has moved either way for `idle`.
    pub fn new(idle: Duration) -> Self {
        Self {
            a_to_b: Direction::Copying(Pipe::new()),
            b_to_a: Direction::Copying(Pipe::new()),
            idle,
        }
    }

    /// Copies `a` to `b` and `b` to `a` until both have reached EOF (shutting down the
    /// other side's write half at each EOF), or until no byte has moved for the idle
    /// timeout; [`BothWays::copied`] tells the bytes copied each way.
    ///
    /// Both streams are flushed as soon as their direction has nothing to read: a stream
    /// may come with bytes written but not yet flushed (an upgraded connection's `101`,
    /// whose flush the ended HTTP task handed back to the stream), and the other side may
    /// wait for them before it sends anything.
    pub async fn run<A, B>(&mut self, a: &mut A, b: &mut B) -> io::Result<Ended>
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let mut watch = StallWatch::new(self.idle);
        let mut moved = self.moved();
        poll_fn(|cx| {
            let forward = self.a_to_b.poll(cx, Pin::new(&mut *a), Pin::new(&mut *b))?;
            let backward = self.b_to_a.poll(cx, Pin::new(&mut *b), Pin::new(&mut *a))?;
            if forward.is_ready() && backward.is_ready() {
                return Poll::Ready(Ok(Ended::Done));
            }
            let now_moved = self.moved();
            if now_moved != moved {
                moved = now_moved;
                watch.progressed();
            }
            // Both directions wait for their streams now, whether or not bytes moved first.
            match watch.waiting(cx) {
                Ok(()) => Poll::Pending,
                Err(_) => Poll::Ready(Ok(Ended::Idle)),
            }
        })
        .await
    }

    /// Bytes read so far from `a` (for `b`) and from `b` (for `a`).
    pub fn copied(&self) -> (u64, u64) {
        (self.a_to_b.copied(), self.b_to_a.copied())
    }

    /// A count that grows whenever a byte is read or written, either way.
    fn moved(&self) -> u64 {
        self.a_to_b.moved() + self.b_to_a.moved()
    }
}

/// One direction of the copy.
enum Direction {
    Copying(Pipe),
    ShuttingDown(u64),
    Done(u64),
}

impl Direction {
    /// Bytes read so far in this direction.
    fn copied(&self) -> u64 {
        match self {
            Direction::Copying(pipe) => pipe.copied,
            Direction::ShuttingDown(copied) | Direction::Done(copied) => *copied,
        }
    }

    /// Bytes read plus bytes written so far in this direction (what it read and has not
    /// written yet is still buffered).
    fn moved(&self) -> u64 {
        let buffered = match self {
            Direction::Copying(pipe) => pipe.buf.len() as u64,
            Direction::ShuttingDown(_) | Direction::Done(_) => 0,
        };
        2 * self.copied() - buffered
    }

    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            match self {
                Direction::Copying(pipe) => {
                    let copied = ready!(pipe.poll_copy(cx, reader.as_mut(), writer.as_mut()))?;
                    *self = Direction::ShuttingDown(copied);
                }
                Direction::ShuttingDown(copied) => {
                    ready!(writer.as_mut().poll_shutdown(cx))?;
                    *self = Direction::Done(*copied);
                }
                Direction::Done(copied) => return Poll::Ready(Ok(*copied)),
            }
        }
    }
}

/// Moves bytes from a reader to a writer through a buffer that exists only while they flow.
struct Pipe {
    /// Read but not yet written; no allocation while idle.
    buf: BytesMut,
    /// The size of the next read.
    read_size: usize,
    read_done: bool,
    /// Bytes were written since the last flush, or no flush was made yet (the writer may
    /// hold bytes written before the copy began).
    need_flush: bool,
    copied: u64,
}

impl Pipe {
    fn new() -> Self {
        Self {
            buf: BytesMut::new(),
            read_size: FIRST_READ,
            read_done: false,
            need_flush: true,
            copied: 0,
        }
    }

    /// Copies until the reader's EOF, then flushes; returns the bytes copied.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.buf.is_empty() && !self.read_done {
                // Reuses the buffer's whole capacity, or allocates after an idle spell.
                self.buf.reserve(self.read_size);
                let room = self.buf.capacity();
                match poll_read_buf(reader.as_mut(), cx, &mut self.buf) {
                    Poll::Pending => {
                        if self.need_flush {
                            ready!(writer.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        // Nothing is buffered: hold no memory until bytes come again.
                        self.buf = BytesMut::new();
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                    Poll::Ready(Ok(0)) => self.read_done = true,
                    Poll::Ready(Ok(n)) => {
                        self.copied += n as u64;
                        if n == room {
                            self.read_size = (self.read_size * 2).min(MAX_READ);
                        }
                    }
                }
            }
            while !self.buf.is_empty() {
                let n = ready!(writer.as_mut().poll_write(cx, &self.buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.buf.advance(n);
                self.need_flush = true;
            }
            if self.read_done {
                ready!(writer.as_mut().poll_flush(cx))?;
                self.need_flush = false;
                return Poll::Ready(Ok(self.copied));
            }
        }
    }

    /// Memory held for buffering (tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.buf.capacity()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn bytes_cross_both_ways_and_eof_shuts_the_other_side_down() {
        let (mut client, mut a) = duplex(4096);
        let (mut b, mut server) = duplex(4096);
        let relay = tokio::spawn(async move {
            let mut transfer = BothWays::new(HOUR);
            let ended = transfer.run(&mut a, &mut b).await.unwrap();
            (ended, transfer.copied())
        });
        let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
        let (up_sent, down_sent) = (up.clone(), down.clone());
        let client_side = tokio::spawn(async move {
            client.write_all(&up_sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == up, "client to server bytes changed");
        server.write_all(&down_sent).await.unwrap();
        server.shutdown().await.unwrap();
        assert!(
            client_side.await.unwrap() == down,
            "server to client bytes changed"
        );
        let (ended, counts) = relay.await.unwrap();
        assert_eq!(ended, Ended::Done);
        assert_eq!(counts, (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn what_crossed_is_known_when_the_copy_is_stopped() {
        let (mut client, mut a) = duplex(64 * 1024);
        let (mut b, mut server) = duplex(64 * 1024);
        client.write_all(&[7; 50_000]).await.unwrap();
        server.write_all(&[9; 1_234]).await.unwrap();
        let mut transfer = BothWays::new(HOUR);
        // The client never closes: the copy is stopped, as a revoked relay's is.
        let stopped =
            tokio::time::timeout(Duration::from_millis(200), transfer.run(&mut a, &mut b)).await;
        assert!(
            stopped.is_err(),
            "the copy cannot end while both sides are open"
        );
        assert_eq!(transfer.copied(), (50_000, 1_234));
        let mut got = vec![0; 50_000];
        server.read_exact(&mut got).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_that_moves_no_byte_for_the_idle_timeout_ends_then() {
        let (mut client, mut a) = duplex(4096);
        let (mut b, mut server) = duplex(4096);
        let idle = Duration::from_secs(60);
        let relay = tokio::spawn(async move {
            let mut transfer = BothWays::new(idle);
            let ended = transfer.run(&mut a, &mut b).await.unwrap();
            (ended, transfer.copied(), Instant::now())
        });
        // One way, then the other, 50 s apart: each keeps the copy open past the timer
        // it had set.
        tokio::time::sleep(Duration::from_secs(50)).await;
        client.write_all(b"ping").await.unwrap();
        let mut ping = [0; 4];
        server.read_exact(&mut ping).await.unwrap();
        tokio::time::sleep(Duration::from_secs(50)).await;
        server.write_all(b"pong!").await.unwrap();
        let mut pong = [0; 5];
        client.read_exact(&mut pong).await.unwrap();
        let last_byte = Instant::now();
        // Bounded, so that a copy that never ends fails rather than hangs.
        let ended = tokio::time::timeout(10 * idle, relay).await;
        let (ended, copied, at) = ended.expect("still copying").unwrap();
        assert_eq!(ended, Ended::Idle);
        assert_eq!(copied, (4, 5), "the bytes that crossed before it went idle");
        let quiet = at - last_byte;
        assert!(
            quiet >= idle && quiet < idle + Duration::from_millis(10),
            "ended {quiet:?} after the last byte, idle timeout {idle:?}"
        );
    }

    /// Drives `pipe` once from `reader` to `writer` with a no-op waker.
    fn poll_once(
        pipe: &mut Pipe,
        reader: &mut tokio::io::DuplexStream,
        writer: &mut tokio::io::DuplexStream,
    ) -> Poll<io::Result<u64>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        pipe.poll_copy(&mut cx, Pin::new(reader), Pin::new(writer))
    }

    #[tokio::test]
    async fn an_idle_direction_holds_no_buffer() {
        let (mut source, mut reader) = duplex(1 << 20);
        let (mut writer, mut sink) = duplex(1 << 20);
        let mut pipe = Pipe::new();
        assert!(poll_once(&mut pipe, &mut reader, &mut writer).is_pending());
        assert_eq!(pipe.held(), 0);
        source.write_all(&[7u8; 5000]).await.unwrap();
        assert!(poll_once(&mut pipe, &mut reader, &mut writer).is_pending());
        assert_eq!(pipe.held(), 0, "the buffer outlived the burst");
        let mut got = vec![0u8; 5000];
        sink.read_exact(&mut got).await.unwrap();
        assert_eq!(got, vec![7u8; 5000]);
    }

    #[tokio::test]
    async fn reads_grow_while_they_come_back_full() {
        let (mut source, mut reader) = duplex(1 << 20);
        let (mut writer, mut sink) = duplex(1 << 20);
        let mut pipe = Pipe::new();
        source.write_all(&vec![1u8; 512 * 1024]).await.unwrap();
        assert!(poll_once(&mut pipe, &mut reader, &mut writer).is_pending());
        assert_eq!(pipe.read_size, MAX_READ);
        let mut got = vec![0u8; 512 * 1024];
        sink.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 1));
    }
}

//! The byte streams the proxy talks to upstreams over, and the connectors that open them.
//!
//! One stream type for TCP, Unix sockets and mTLS, so every upstream client shares the
//! pooling code. Connectors only connect: they never look at requests.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustls::pki_types::ServerName;
use rustls::HandshakeKind;
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::coalesce::Coalesce;
use crate::config::Target;
use crate::tls::{DialFailures, PeerCheck, PeerIdentity};

/// A connected upstream byte stream.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// Unix domain socket.
    Unix(UnixStream),
    /// mTLS over TCP, with the verified server identity; writes are coalesced.
    Tls(Box<Coalesce<TlsStream<TcpStream>>>, Option<PeerIdentity>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tls(s, _) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl Stream {
    /// The verified identity of an mTLS peer.
    pub fn peer(&self) -> Option<&PeerIdentity> {
        match self {
            Stream::Tls(_, peer) => peer.as_ref(),
            _ => None,
        }
    }

    /// True when the TLS handshake agreed on HTTP/2 (ALPN `h2`).
    pub fn negotiated_http2(&self) -> bool {
        match self {
            Stream::Tls(tls, _) => {
                tls.with_ref(|tls| tls.get_ref().1.alpn_protocol() == Some(b"h2"))
            }
            _ => false,
        }
    }
}

/// Where a connector dials.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// `host:port`, resolved at each connect.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

/// Dials a fixed endpoint (whatever the request URI says), optionally wrapping it in mTLS.
#[derive(Clone)]
pub struct Connector {
    endpoint: Endpoint,
    tls: Option<MtlsDialer>,
    connect_timeout: Duration,
}

/// What an mTLS connector adds to dialing.
#[derive(Clone)]
struct MtlsDialer {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// What a resumed session's server must still pass.
    servers: PeerCheck,
    /// Counts the connections that resumed a session.
    resumed: Counter,
    /// Counts the handshakes that failed.
    failures: DialFailures,
}

/// A connect failure, telling timeouts apart (504) from refusals (502). Cloneable, so
/// requests that waited for one attempt all get its outcome.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(String, Duration),
    #[error("connect to {0}: {1}")]
    Io(String, Arc<io::Error>),
    #[error("mTLS handshake with {0}: {reason}", reason = crate::tls::describe(.1))]
    Handshake(String, Arc<io::Error>),
}

impl Connector {
    /// A plain connector.
    pub fn plain(endpoint: Endpoint, connect_timeout: Duration) -> Self {
        Self {
            endpoint,
            tls: None,
            connect_timeout,
        }
    }

    /// An mTLS connector to a peer sidecar whose server `servers` checks again when a
    /// session resumes; `resumed` counts its resumed sessions, `failures` its failed
    /// handshakes (a timeout included).
    pub fn mtls(
        target: &Target,
        config: Arc<rustls::ClientConfig>,
        servers: PeerCheck,
        connect_timeout: Duration,
        resumed: Counter,
        failures: DialFailures,
    ) -> Self {
        let server_name = ServerName::try_from(target.host.clone()).unwrap_or_else(|_| {
            ServerName::try_from("idgate.invalid").expect("static name is valid")
        });
        Self {
            endpoint: Endpoint::Tcp(target.to_string()),
            tls: Some(MtlsDialer {
                connector: TlsConnector::from(config),
                server_name,
                servers,
                resumed,
                failures,
            }),
            connect_timeout,
        }
    }

    /// True for an mTLS connector.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Opens one connection (and, for mTLS, completes the handshake).
    pub async fn connect(self) -> Result<Stream, ConnectError> {
        let label = match &self.endpoint {
            Endpoint::Tcp(addr) => addr.clone(),
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
        };
        let dial = async {
            match &self.endpoint {
                Endpoint::Tcp(addr) => {
                    let tcp = TcpStream::connect(addr.as_str()).await?;
                    tcp.set_nodelay(true)?;
                    Ok(Stream::Tcp(tcp))
                }
                Endpoint::Unix(path) => UnixStream::connect(path).await.map(Stream::Unix),
            }
        };
        let stream = tokio::time::timeout(self.connect_timeout, dial)
            .await
            .map_err(|_| ConnectError::Timeout(label.clone(), self.connect_timeout))?
            .map_err(|e| ConnectError::Io(label.clone(), Arc::new(e)))?;
        let (dialer, tcp) = match (self.tls, stream) {
            (Some(dialer), Stream::Tcp(tcp)) => (dialer, tcp),
            (_, plain) => return Ok(plain),
        };
        give_up_on_a_silent_peer(&tcp).map_err(|e| ConnectError::Io(label.clone(), Arc::new(e)))?;
        let handshake = dialer.connector.connect(dialer.server_name, tcp);
        let failures = &dialer.failures;
        let tls = tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| {
                failures.count(&io::ErrorKind::TimedOut.into());
                ConnectError::Timeout(label.clone(), self.connect_timeout)
            })?
            .map_err(|e| {
                failures.count(&e);
                ConnectError::Handshake(label.clone(), Arc::new(e))
            })?;
        let session = tls.get_ref().1;
        let peer = PeerIdentity::of_connection(session, &dialer.servers).map_err(|e| {
            failures.count(&e);
            ConnectError::Handshake(label, Arc::new(e))
        })?;
        if session.handshake_kind() == Some(HandshakeKind::Resumed) {
            dialer.resumed.inc();
        }
        Ok(Stream::Tls(Box::new(Coalesce::new(tls)), peer))
    }
}

/// How long a peer sidecar may leave sent data unacknowledged, or keepalive probes
/// unanswered, before its connection is given up.
const PEER_SILENCE: Duration = Duration::from_secs(30);

/// Idle time before the first keepalive probe on a connection to a peer sidecar, and
/// the time between probes.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// A peer whose node crashed or lost its network sends no FIN or RST: without these, the
/// pooled connection to it would take every request (each ending in a timeout) until the
/// kernel gave up retransmitting, about 15 minutes. With them it ends within
/// [`PEER_SILENCE`] of going silent, busy or idle, and the next request dials afresh.
/// Probes are answered by the peer's kernel: they cost neither side's process anything.
fn give_up_on_a_silent_peer(tcp: &TcpStream) -> io::Result<()> {
    let socket = SockRef::from(tcp);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    socket.set_tcp_keepalive(&keepalive)?;
    socket.set_tcp_user_timeout(Some(PEER_SILENCE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_to_a_peer_gives_up_on_silence() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let tcp = TcpStream::connect(listener.local_addr().expect("addr"))
            .await
            .expect("connect");
        give_up_on_a_silent_peer(&tcp).expect("socket options");
        let socket = SockRef::from(&tcp);
        assert_eq!(socket.tcp_user_timeout().expect("get"), Some(PEER_SILENCE));
        assert!(socket.keepalive().expect("get"));
        assert_eq!(socket.tcp_keepalive_time().expect("get"), KEEPALIVE_IDLE);
        assert_eq!(
            socket.tcp_keepalive_interval().expect("get"),
            KEEPALIVE_INTERVAL
        );
    }
}

//! idgate's HTTP/2 as it looks on the wire at both ends of a sidecar-to-sidecar
//! connection, read frame by frame:
//! - the settings it advertises: a peer may send large bodies in 64 KiB DATA frames (four
//!   full TLS records per write) instead of the protocol's default 16 KiB;
//! - how its header blocks are encoded: request and trace IDs, new in every message, are
//!   literals never indexed, so neither end's HPACK table fills with them.

mod support;

use std::sync::{Arc, Mutex};

use support::frames::*;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// SETTINGS_MAX_FRAME_SIZE (RFC 9113, 6.5.2).
const MAX_FRAME_SIZE: u16 = 0x5;

/// How HPACK represents one header field (RFC 7541, 6).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Field {
    Indexed,
    /// A literal the receiver adds to its table.
    Incremental,
    WithoutIndexing,
    NeverIndexed,
    TableSizeUpdate,
}

/// An HPACK integer with an `prefix`-bit prefix (RFC 7541, 5.1).
fn integer(block: &mut &[u8], prefix: u32) -> usize {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(block[0]) & max;
    *block = &block[1..];
    if value == max {
        let mut shift = 0;
        loop {
            let byte = block[0];
            *block = &block[1..];
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    value
}

/// The representation of each field of a header block, in order (names and values
/// skipped, Huffman-coded or not).
fn fields(mut block: &[u8]) -> Vec<Field> {
    let mut fields = Vec::new();
    while let Some(&first) = block.first() {
        let (field, prefix) = match first {
            b if b & 0x80 != 0 => (Field::Indexed, 7),
            b if b & 0xc0 == 0x40 => (Field::Incremental, 6),
            b if b & 0xe0 == 0x20 => (Field::TableSizeUpdate, 5),
            b if b & 0xf0 == 0x10 => (Field::NeverIndexed, 4),
            _ => (Field::WithoutIndexing, 4),
        };
        let name_index = integer(&mut block, prefix);
        if !matches!(field, Field::Indexed | Field::TableSizeUpdate) {
            let strings = if name_index == 0 { 2 } else { 1 };
            for _ in 0..strings {
                let len = integer(&mut block, 7);
                block = &block[len..];
            }
        }
        fields.push(field);
    }
    fields
}

/// How many fields of `block` are represented as `field`.
fn count(block: &[u8], field: Field) -> usize {
    fields(block).into_iter().filter(|f| *f == field).count()
}

#[tokio::test]
async fn the_inbound_accepts_64_kib_frames() {
    let mesh = Mesh::start(ALLOW_ALL_FRONTEND).await;
    let frontend = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&frontend), &[b"h2"]);
    let mut tls = mtls_connect(mesh.server.inbound(), config)
        .await
        .expect("mTLS connection");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(CLIENT_PREFACE).await.expect("preface");
    let settings = first_settings(&mut tls).await;
    assert_eq!(settings.get(&MAX_FRAME_SIZE), Some(&65_536), "{settings:?}");
}

/// An outbound sidecar whose peer is the test: a listener and the TLS acceptor of
/// `SERVER_ID`, offering only `h2`.
struct OutboundToThisTest {
    outbound: Sidecar,
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    /// Holds the sidecar's certificates and config.
    _pki: Pki,
}

impl OutboundToThisTest {
    async fn start() -> Self {
        let pki = Pki::new(TD);
        let acceptor = tls_acceptor(&pki.svid(SERVER_ID), &[b"h2"]);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let peer = listener.local_addr().expect("address");
        let toml = pki.outbound_toml("frontend", FRONTEND_ID, peer, &[SERVER_ID]);
        let outbound = Sidecar::start(pki.dir.path(), "frontend", &toml).await;
        Self {
            outbound,
            listener,
            acceptor,
            _pki: pki,
        }
    }

    /// The outbound's connection, its TLS handshake done (ALPN `h2`) and its HTTP/2
    /// preface read.
    async fn accept_http2(&self) -> tokio_rustls::server::TlsStream<tokio::net::TcpStream> {
        let (tcp, _) = self.listener.accept().await.expect("the outbound connects");
        let mut stream = self.acceptor.accept(tcp).await.expect("TLS handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let mut preface = [0u8; 24];
        stream.read_exact(&mut preface).await.expect("preface");
        assert_eq!(&preface, &CLIENT_PREFACE[..24]);
        stream
    }
}

#[tokio::test]
async fn the_outbound_accepts_64_kib_frames() {
    // A peer inbound that only reads what the outbound says when it connects.
    let to_test = OutboundToThisTest::start().await;
    let url = to_test.outbound.url("/");
    let request = tokio::spawn(async move { get(&url, &[]).await });
    let mut stream = to_test.accept_http2().await;
    let settings = first_settings(&mut stream).await;
    assert_eq!(settings.get(&MAX_FRAME_SIZE), Some(&65_536), "{settings:?}");
    request.abort();
}

/// Messages sent in each header-encoding test.
const MESSAGES: usize = 8;

/// Every block has `ids` fields never indexed, and after the first no field the receiver
/// would add to its table: everything else in these messages repeats.
fn assert_ids_never_indexed(blocks: &[Vec<u8>], ids: usize) {
    assert_eq!(blocks.len(), MESSAGES);
    for (n, block) in blocks.iter().enumerate() {
        let fields = fields(block);
        assert_eq!(
            count(block, Field::NeverIndexed),
            ids,
            "message {n}: {fields:?}"
        );
        if n > 0 {
            assert_eq!(
                count(block, Field::Incremental),
                0,
                "message {n}: {fields:?}"
            );
        }
    }
}

/// An HTTP/1.1 app answering every request with an `x-request-id` it never sends again;
/// every other field repeats (the `date` too, else hyper would add the current one).
async fn unique_id_app() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU64, Ordering};
    let next = Arc::new(AtomicU64::new(0));
    let (addr, _) = counting_server(move |stream| {
        let next = next.clone();
        async move {
            let mut stream = tokio::io::BufReader::new(stream);
            let mut line = String::new();
            loop {
                loop {
                    line.clear();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let id = next.fetch_add(1, Ordering::Relaxed);
                let response = format!(
                    "HTTP/1.1 200 OK\r\ndate: Fri, 27 Nov 2026 16:00:00 GMT\r\ncontent-length: 0\r\nx-request-id: app-{id:08}\r\n\r\n"
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    addr
}

#[tokio::test]
async fn the_inbound_never_indexes_the_request_ids_of_responses() {
    let app = unique_id_app().await;
    let mesh = Mesh::start_upstream(ALLOW_ALL_FRONTEND, &format!("http://{app}"), "").await;
    let frontend = mesh.pki.svid(FRONTEND_ID);
    let config = tls_client(&mesh.pki.ca.root_pem(), Some(&frontend), &[b"h2"]);
    let mut tls = mtls_connect(mesh.server.inbound(), config)
        .await
        .expect("mTLS connection");
    tls.write_all(CLIENT_PREFACE).await.expect("preface");
    // GET https://bench/: method, scheme and path from the static table, the authority a
    // literal without indexing.
    const GET: &[u8] = b"\x82\x87\x84\x01\x05bench";
    let mut blocks = Vec::new();
    for stream in (1..).step_by(2).take(MESSAGES) {
        write_frame(&mut tls, HEADERS, END_STREAM | END_HEADERS, stream, GET).await;
        loop {
            let frame = read_frame(&mut tls).await;
            if acknowledge_settings(&mut tls, &frame).await || frame.stream != stream {
                continue;
            }
            if frame.kind == HEADERS {
                blocks.push(header_block(&frame));
            }
            if matches!(frame.kind, HEADERS | DATA) && frame.flags & END_STREAM != 0 {
                break;
            }
        }
    }
    assert_ids_never_indexed(&blocks, 1);
}

#[tokio::test]
async fn the_outbound_never_indexes_request_and_trace_ids() {
    let to_test = OutboundToThisTest::start().await;
    let url = to_test.outbound.url("/");
    // A peer inbound that keeps each request's header block and answers 200.
    let blocks = Arc::new(Mutex::new(Vec::new()));
    let kept = blocks.clone();
    let peer = tokio::spawn(async move {
        let mut stream = to_test.accept_http2().await;
        write_frame(&mut stream, SETTINGS, 0, 0, &[]).await;
        loop {
            let frame = next_headers(&mut stream).await;
            kept.lock().expect("blocks").push(header_block(&frame));
            answer_200(&mut stream, frame.stream).await;
        }
    });
    for n in 0..MESSAGES {
        let request_id = format!("req-{n}");
        let traceparent = format!("00-{n:032x}-{n:016x}-01");
        let headers = [
            ("x-request-id", &*request_id),
            ("traceparent", &*traceparent),
        ];
        let reply = get(&url, &headers).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    peer.abort();
    assert_ids_never_indexed(&blocks.lock().expect("blocks"), 2);
}

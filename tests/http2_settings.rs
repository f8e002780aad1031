//! The HTTP/2 settings idgate advertises at both ends of a sidecar-to-sidecar connection,
//! read off the wire: a peer may send large bodies in 64 KiB DATA frames (four full TLS
//! records per write) instead of the protocol's default 16 KiB.

mod support;

use std::collections::HashMap;

use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// SETTINGS_MAX_FRAME_SIZE (RFC 9113, 6.5.2).
const MAX_FRAME_SIZE: u16 = 0x5;

/// The client connection preface (RFC 9113, 3.4) followed by an empty SETTINGS frame.
const CLIENT_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads frames until the first SETTINGS frame that is not an acknowledgement and
/// returns its parameters.
async fn first_settings(io: &mut (impl AsyncRead + Unpin)) -> HashMap<u16, u32> {
    loop {
        let mut head = [0u8; 9];
        io.read_exact(&mut head).await.expect("frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await.expect("frame payload");
        let (kind, ack) = (head[3], head[4] & 0x1 != 0);
        if kind == 0x4 && !ack {
            return payload
                .chunks_exact(6)
                .map(|p| {
                    (
                        u16::from_be_bytes([p[0], p[1]]),
                        u32::from_be_bytes([p[2], p[3], p[4], p[5]]),
                    )
                })
                .collect();
        }
    }
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

#[tokio::test]
async fn the_outbound_accepts_64_kib_frames() {
    // A peer inbound that only reads what the outbound says when it connects.
    let pki = Pki::new(TD);
    let acceptor = tls_acceptor(&pki.svid(SERVER_ID), &[b"h2"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let peer = listener.local_addr().expect("address");
    let toml = format!(
        "{}\n[[outbound]]\nname = \"to-api\"\nlisten = \"127.0.0.1:0\"\ntarget = \"{peer}\"\nserver_ids = [\"{SERVER_ID}\"]\n",
        pki.identity_toml("frontend", FRONTEND_ID)
    );
    let client = Sidecar::start(pki.dir.path(), "frontend", &toml).await;
    let url = client.url("/");
    let request = tokio::spawn(async move { get(&url, &[]).await });

    let (tcp, _) = listener.accept().await.expect("the outbound connects");
    let mut stream = acceptor.accept(tcp).await.expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut preface = [0u8; 24];
    stream.read_exact(&mut preface).await.expect("preface");
    assert_eq!(&preface, &CLIENT_PREFACE[..24]);
    let settings = first_settings(&mut stream).await;
    assert_eq!(settings.get(&MAX_FRAME_SIZE), Some(&65_536), "{settings:?}");
    request.abort();
}

//! Raw HTTP/2 frames (RFC 9113, 4 and 6), for tests that play one end of a connection
//! by hand: to read what idgate sends frame by frame, or to answer it in ways a hyper
//! server never would.

use std::collections::HashMap;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Frame types and flags (RFC 9113, 6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

/// Error codes (RFC 9113, 7).
pub const NO_ERROR: u32 = 0x0;
pub const INTERNAL_ERROR: u32 = 0x2;

/// The client connection preface (RFC 9113, 3.4) followed by an empty SETTINGS frame.
pub const CLIENT_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// One frame off the wire.
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// The next frame from `io`, which must not be a GOAWAY (the connection was closed).
pub async fn read_frame(io: &mut (impl AsyncRead + Unpin)) -> Frame {
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.expect("frame header");
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.expect("frame payload");
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    assert_ne!(head[3], GOAWAY, "the connection was closed: {payload:?}");
    Frame {
        kind: head[3],
        flags: head[4],
        stream,
        payload,
    }
}

/// Writes one frame and flushes it.
pub async fn write_frame(
    io: &mut (impl AsyncWrite + Unpin),
    kind: u8,
    flags: u8,
    stream: u32,
    payload: &[u8],
) {
    let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    io.write_all(&frame).await.expect("write frame");
    io.flush().await.expect("flush");
}

/// Reads frames until the first SETTINGS frame that is not an acknowledgement and
/// returns its parameters.
pub async fn first_settings(io: &mut (impl AsyncRead + Unpin)) -> HashMap<u16, u32> {
    loop {
        let frame = read_frame(io).await;
        if frame.kind == SETTINGS && frame.flags & ACK == 0 {
            return frame
                .payload
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

/// Acknowledges a peer's SETTINGS frame; returns whether `frame` was one.
pub async fn acknowledge_settings(io: &mut (impl AsyncWrite + Unpin), frame: &Frame) -> bool {
    let settings = frame.kind == SETTINGS && frame.flags & ACK == 0;
    if settings {
        write_frame(io, SETTINGS, ACK, 0, &[]).await;
    }
    settings
}

/// Reads frames, acknowledging SETTINGS, until a HEADERS frame, and returns it.
pub async fn next_headers(io: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> Frame {
    loop {
        let frame = read_frame(io).await;
        if !acknowledge_settings(io, &frame).await && frame.kind == HEADERS {
            return frame;
        }
    }
}

/// The header block fragment of a HEADERS frame sent whole (no CONTINUATION).
pub fn header_block(frame: &Frame) -> Vec<u8> {
    assert_ne!(
        frame.flags & END_HEADERS,
        0,
        "header block split over frames"
    );
    let mut block = &frame.payload[..];
    let mut padding = 0;
    if frame.flags & PADDED != 0 {
        padding = block[0] as usize;
        block = &block[1..];
    }
    if frame.flags & PRIORITY != 0 {
        block = &block[5..];
    }
    block[..block.len() - padding].to_vec()
}

/// Answers `stream` with a bodiless 200 (`:status 200` from the HPACK static table).
pub async fn answer_200(io: &mut (impl AsyncWrite + Unpin), stream: u32) {
    write_frame(io, HEADERS, END_STREAM | END_HEADERS, stream, b"\x88").await;
}

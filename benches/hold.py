#!/usr/bin/env python3
"""Opens N keep-alive connections to a listener, sends one request on each (so the proxy
holds per-connection HTTP state), then keeps them all open until stdin closes or a line
arrives. Prints "ready N" once every connection has its response. Used by benches/mesh.sh
to measure a proxy's memory per idle connection.

usage: hold.py HOST PORT N [CERT KEY]   (with CERT and KEY: mTLS, server not verified)

With HOLD_HTTP2=R in the environment (mTLS only) each connection speaks HTTP/2, as a
peer sidecar's does, and carries R requests one after the other before it idles.
"""
import os
import socket
import ssl
import struct
import sys

# HPACK for GET https://bench/: static-table :method GET, :scheme https, :path /, then
# :authority "bench" as a literal with incremental indexing (RFC 7541, appendix A) the
# first time, and from then on by its index in the dynamic table (62), as real encoders do.
HTTP2_GET_FIRST = b"\x82\x87\x84\x41\x05bench"
HTTP2_GET_AGAIN = b"\x82\x87\x84\xbe"


def frame(kind, flags, stream, payload=b""):
    """One HTTP/2 frame (RFC 9113, 4.1)."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed mid-frame")
        data += chunk
    return data


def http2_requests(sock, count):
    """Sends the preface, then `count` GETs one at a time, each read to its end."""
    sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(0x4, 0, 0))
    for n in range(count):
        stream = 1 + 2 * n
        get = HTTP2_GET_AGAIN if n else HTTP2_GET_FIRST
        sock.sendall(frame(0x1, 0x5, stream, get))  # HEADERS, END_STREAM | END_HEADERS
        while True:
            head = read_exact(sock, 9)
            length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            on = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
            read_exact(sock, length)
            if kind == 0x4 and not flags & 0x1:
                sock.sendall(frame(0x4, 0x1, 0))  # SETTINGS ACK
            if kind == 0x3 and on == stream:
                raise ConnectionError("stream reset")
            if on == stream and kind in (0x0, 0x1) and flags & 0x1:
                break


def read_response(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response body")
        body += chunk
    return head.split(b"\r\n")[0]


def main():
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    http2 = int(os.environ.get("HOLD_HTTP2", "0"))
    context = None
    if len(sys.argv) > 5:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(sys.argv[4], sys.argv[5])
        context.set_alpn_protocols(["h2" if http2 else "http/1.1"])
    held = []
    failed = 0
    for _ in range(count):
        try:
            sock = socket.create_connection((host, port), timeout=10)
            # As real clients do: without it, Nagle holds the request until the server
            # ACKs the last handshake flight (a delayed ACK, up to 40 ms, when the server
            # sends no session ticket to piggyback it on).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None:
                sock = context.wrap_socket(sock)
            if http2:
                if context is None or sock.selected_alpn_protocol() != "h2":
                    raise ConnectionError("HTTP/2 needs mTLS and a server that chooses h2")
                http2_requests(sock, http2)
            else:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                read_response(sock)
            held.append(sock)
        except (OSError, ConnectionError) as error:
            failed += 1
            if failed == 1:
                print(f"hold.py: {error}", file=sys.stderr)
    print(f"ready {len(held)}", flush=True)
    sys.stdin.readline()
    for sock in held:
        sock.close()


if __name__ == "__main__":
    main()

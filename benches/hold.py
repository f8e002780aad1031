#!/usr/bin/env python3
"""Opens N keep-alive connections to a listener, sends one request on each (so the proxy
holds per-connection HTTP state), then keeps them all open until stdin closes or a line
arrives. Prints "ready N" once every connection has its response. Used by benches/mesh.sh
to measure a proxy's memory per idle connection.

usage: hold.py HOST PORT N [CERT KEY]   (with CERT and KEY: mTLS, server not verified)
"""
import socket
import ssl
import sys


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
    context = None
    if len(sys.argv) > 5:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(sys.argv[4], sys.argv[5])
        context.set_alpn_protocols(["http/1.1"])
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

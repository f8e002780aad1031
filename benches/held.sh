#!/usr/bin/env bash
# Memory an inbound holds per idle mTLS connection, idgate against HAProxy, as a peer
# sidecar's connections leave it: HTTP/2 after some requests each (an HPACK table fills
# with what those responses carried), or HTTP/1.1 after one.
#
# usage: benches/held.sh [IDGATE_BIN...]    (default: target/release/idgate)
# Knobs: CONNS=300 (connections held) REQUESTS=50 (per HTTP/2 connection; 0 = HTTP/1.1,
# one request each) ROUNDS=2 BASE_PORT=25000.
# The app is nginx answering 1 KiB with a unique `X-Request-Id` per response, as request
# and trace IDs are. Prints KiB of RSS per held connection for each binary and HAProxy.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-300} REQUESTS=${REQUESTS:-50} ROUNDS=${ROUNDS:-2} BASE_PORT=${BASE_PORT:-25000}
(($#)) || set -- target/release/idgate
for tool in nginx haproxy python3; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (apt-get install nginx haproxy python3)" >&2; exit 1; }
done
APP=$((BASE_PORT + 80)) LISTEN=$((BASE_PORT + 402)) ADMIN=$((BASE_PORT + 404))
WORK=$(mktemp -d /tmp/idgate-held.XXXXXX)
chmod 755 "$WORK"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

c=$WORK/certs
"$1" certs dev --out "$c" --trust-domain example.org \
  --id spiffe://example.org/ns/shop/sa/frontend --id spiffe://example.org/ns/billing/sa/api >/dev/null
cat "$c/api.pem" "$c/api-key.pem" >"$c/server-combined.pem"
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<EOF
worker_processes 1; daemon off; error_log $WORK/nginx/error.log warn; pid $WORK/nginx/pid;
events { worker_connections 8192; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$APP;
    location / { add_header X-Request-Id \$request_id always; return 200 "$(head -c 1024 /dev/zero | tr '\0' x)"; } } }
EOF
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >/dev/null 2>&1 &
pids+=($!)
printf 'default = "allow"\n' >"$WORK/policy.toml"
cat >"$WORK/idgate.toml" <<EOF
[identity]
source = "files"
cert = "$c/api.pem"
key = "$c/api-key.pem"
bundle = "$c/bundle.pem"
[[inbound]]
name = "in"
listen = "127.0.0.1:$LISTEN"
upstream = "http://127.0.0.1:$APP"
policy = "$WORK/policy.toml"
[admin]
listen = "127.0.0.1:$ADMIN"
[runtime]
workers = 2
EOF
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 8000
  tune.ssl.cachesize 0
defaults
  mode http
  timeout connect 5s
  timeout client 90s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend in
  bind 127.0.0.1:$LISTEN ssl crt $c/server-combined.pem ca-file $c/bundle.pem verify required alpn h2,http/1.1 no-tls-tickets
  default_backend app
backend app
  server app 127.0.0.1:$APP
EOF

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# measure NAME PID: RSS before and while CONNS connections are held.
measure() {
  local name=$1 pid=$2 base held ready count
  for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$LISTEN") 2>/dev/null && break; sleep 0.1; done
  sleep 1
  base=$(rss_kib "$pid")
  coproc HOLDER { HOLD_HTTP2=$REQUESTS python3 benches/hold.py 127.0.0.1 "$LISTEN" "$CONNS" \
    "$c/frontend.pem" "$c/frontend-key.pem" 2>"$WORK/hold.log"; }
  read -r ready count <&"${HOLDER[0]}" || true
  sleep 2
  held=$(rss_kib "$pid")
  echo done >&"${HOLDER[1]}"
  wait "$HOLDER_PID" 2>/dev/null || true
  [[ ${count:-0} == "$CONNS" ]] || echo "WARNING: $name held only ${count:-0} of $CONNS ($(head -1 "$WORK/hold.log"))" >&2
  awk -v n="$name" -v a="$base" -v b="$held" -v c="$CONNS" \
    'BEGIN { printf "%-32s %6.1f KiB per connection (RSS %.1f -> %.1f MiB)\n", n, (b - a) / c, a / 1024, b / 1024 }'
}

if ((REQUESTS)); then kind="HTTP/2, $REQUESTS requests each"; else kind="HTTP/1.1, one request each"; fi
echo "$CONNS idle mTLS connections into the inbound ($kind); $ROUNDS rounds"
for _ in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    "$bin" run --config "$WORK/idgate.toml" >"$WORK/idgate.log" 2>&1 &
    pid=$!
    measure "$bin" "$pid"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
  haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
  pid=$!
  measure haproxy "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

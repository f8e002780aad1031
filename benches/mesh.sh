#!/usr/bin/env bash
# Side-by-side benchmark of the two-sidecar path on loopback:
#
#   load -> outbound proxy -> mTLS -> inbound proxy -> backend (nginx `return 200`, 1 KiB)
#
# for idgate (release build with PGO, docker/build-pgo.sh), HAProxy and nginx (Debian
# packages) and ghostunnel (go install, when Go is present), plus the direct
# `load -> backend` floor. Every contender runs as two processes (outbound sidecar, inbound
# sidecar) with the same dev certificates from `idgate certs dev`. HAProxy and nginx check
# the chain but cannot check a SPIFFE ID; ghostunnel checks the peer's URI SAN but is L4
# only (no HTTP, no per-request policy), so idgate-tcp, idgate's L4 mode (`protocol =
# "tcp"` on both sidecars), runs beside it for a like-for-like comparison.
# idgate's inbound has a 1,000-rule policy loaded (idgate-tcp: the same rules' `from`)
# and writes its decision log to a file.
# Every contender gets one thread per core: HAProxy nbthread, nginx worker_processes,
# ghostunnel GOMAXPROCS, idgate `[runtime] workers` (IDGATE_WORKERS).
# Two reference paths run beside them: `direct` (load -> backend) and `relay`, two plain
# TCP relays (HAProxy `mode tcp`, no TLS, no HTTP): what any two hops cost on this
# machine, the floor under every sidecar pair's added latency and CPU per request.
#
# Large bodies (BULK=1): 1 MiB responses (`GET /bulk`) and 1 MiB uploads (`POST /upload`)
# through every path, wrk with BULK_CONNS connections: MiB/s and CPU ms per MiB. nginx's
# sidecars keep bodies in memory (no temporary files).
#
# Usage: benches/mesh.sh            (about 15-20 minutes on 2 cores; env knobs below)
# Knobs: ROUNDS=3 DURATION=5 (seconds per run) RATE=1000 CONNS=32 HOLD=1000 RULES=1000
#        BULK=1 (0: skip the large bodies) BULK_CONNS=8
#        CONTENDERS="idgate idgate-tcp haproxy nginx ghostunnel" BASE_PORT=20000
#        KEEP=1 (keep $WORK) FLOOR=0 (skip the `relay` reference path)
#        IDGATE_BIN=path (skip the build) PGO=0 (plain `cargo build --release` instead of
#        docker/build-pgo.sh) IDGATE_WORKERS=$(nproc)
#        IDGATE_STATIC_BIN=path (also the idle RSS of the static musl binary the container
#        ships, from docker/build-static.sh) IDGATE_BENCH_CACHE=dir (oha, ghostunnel)
# Loopback only: every address below is 127.0.0.1. Every process it starts, it stops.
set -euo pipefail
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cd "$(dirname "$0")/.."
# shellcheck source=benches/backend.sh
source benches/backend.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
RATE=${RATE:-1000}
CONNS=${CONNS:-32}
HOLD=${HOLD:-1000}
RULES=${RULES:-1000}
BULK=${BULK:-1}
BULK_CONNS=${BULK_CONNS:-8}
BASE_PORT=${BASE_PORT:-20000}
IDGATE_WORKERS=${IDGATE_WORKERS:-$(nproc)}
IDGATE_STATIC_BIN=${IDGATE_STATIC_BIN:-}
PGO=${PGO:-1}
CONTENDERS=${CONTENDERS:-"idgate idgate-tcp haproxy nginx ghostunnel"}
CACHE=${IDGATE_BENCH_CACHE:-$HOME/.cache/idgate/bench}
KEEP=${KEEP:-0}
FLOOR=${FLOOR:-1}
WORK=$(mktemp -d /tmp/idgate-mesh.XXXXXX)
# Searchable by others: the backend's nginx workers (nobody, under root) read a file below.
chmod o+x "$WORK"
TD=bench.local
CLIENT_ID=spiffe://$TD/ns/bench/sa/client
SERVER_ID=spiffe://$TD/ns/bench/sa/server
BACKEND_PORT=$((BASE_PORT + 80))
export PATH="$CACHE/bin:$PATH"

log() { printf '[mesh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes we start
STARTED=()
any_alive() {
  local pid
  for pid in "${STARTED[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done
  return 1
}
cleanup() {
  local pid i
  for pid in "${STARTED[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Up to 5 s to drain and exit (an instrumented build writes its profile at exit).
  for ((i = 0; i < 50; i++)); do any_alive || break; sleep 0.1; done
  for pid in "${STARTED[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  if [[ $KEEP == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background, logging to $WORK/NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$WORK/$name.log" 2>&1 &
  STARTED+=($!)
  echo $! >"$WORK/$name.pid"
}

wait_port() {
  local port=$1 i
  for ((i = 0; i < 100; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  die "nothing listens on 127.0.0.1:$port (see $WORK/*.log)"
}

# pids NAME: the process and its children (nginx workers).
pids() {
  local pid
  pid=$(cat "$WORK/$1.pid")
  echo "$pid" $(pgrep -P "$pid" || true)
}

# cpu_ticks NAME: user+system clock ticks of a process and its children, so far.
cpu_ticks() {
  local total=0 pid stat
  for pid in $(pids "$1"); do
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    set -- $stat
    total=$((total + ${12} + ${13}))
  done
  echo "$total"
}

# rss_kib NAME [FIELD]: summed VmRSS (or VmHWM) of a process and its children, in KiB.
rss_kib() {
  local field=${2:-VmRSS} total=0 pid kib
  for pid in $(pids "$1"); do
    kib=$(awk -v f="$field:" '$1 == f { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# ---------------------------------------------------------------- tools
install_tools() {
  local need=()
  command -v nginx >/dev/null || need+=(nginx)
  if [[ " $CONTENDERS " == *" haproxy "* || $FLOOR == 1 ]]; then
    command -v haproxy >/dev/null || need+=(haproxy)
  fi
  command -v wrk >/dev/null || need+=(wrk)
  command -v python3 >/dev/null || need+=(python3)
  command -v curl >/dev/null || need+=(curl)
  command -v openssl >/dev/null || need+=(openssl)
  command -v pgrep >/dev/null || need+=(procps)
  if ((${#need[@]})); then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  if ! command -v oha >/dev/null; then
    log "cargo install oha --locked (cached in $CACHE, once)"
    cargo install oha --locked --root "$CACHE" >"$WORK/oha-install.log" 2>&1 ||
      die "cargo install oha failed (see $WORK/oha-install.log)"
  fi
  if [[ " $CONTENDERS " == *" ghostunnel "* ]] && ! command -v ghostunnel >/dev/null; then
    if command -v go >/dev/null; then
      local gv=${GHOSTUNNEL_VERSION:-v1.8.4}
      log "go install ghostunnel $gv (cached in $CACHE, once)"
      # In a module of its own: this proxy does not serve ghostunnel's version list (which
      # `go install pkg@version` reads), and the checksum database lacks one landlock
      # pseudo-version that ghostunnel pins.
      (mkdir -p "$CACHE/ghostunnel-mod" && cd "$CACHE/ghostunnel-mod" &&
        { [[ -f go.mod ]] || go mod init ghostunnel-bench; } &&
        GONOSUMDB=github.com/landlock-lsm go get -tool "github.com/ghostunnel/ghostunnel@$gv" &&
        GOBIN="$CACHE/bin" go install github.com/ghostunnel/ghostunnel) \
        >"$WORK/ghostunnel-install.log" 2>&1 || log "ghostunnel did not build; skipping it"
    fi
    command -v ghostunnel >/dev/null || CONTENDERS=${CONTENDERS//ghostunnel/}
  fi
  if [[ -z ${IDGATE_BIN:-} && $PGO == 1 ]]; then
    log "docker/build-pgo.sh (instrumented build, training run, optimised build)"
    IDGATE_BIN=$(docker/build-pgo.sh)
  elif [[ -z ${IDGATE_BIN:-} ]]; then
    log "cargo build --release"
    cargo build --release --locked --quiet
    IDGATE_BIN=${CARGO_TARGET_DIR:-target}/release/idgate
  fi
  [[ -x $IDGATE_BIN ]] || die "no idgate binary at $IDGATE_BIN"
  IDGATE_BIN=$(realpath "$IDGATE_BIN")
}

# ---------------------------------------------------------------- certificates and policy
make_certs() {
  "$IDGATE_BIN" certs dev --out "$WORK/certs" --trust-domain "$TD" \
    --id "$CLIENT_ID" --id "$SERVER_ID" >/dev/null
  local c=$WORK/certs
  # HAProxy wants chain and key in one file.
  cat "$c/client.pem" "$c/client-key.pem" >"$c/client-combined.pem"
  cat "$c/server.pem" "$c/server-key.pem" >"$c/server-combined.pem"
  # nginx and ghostunnel's client always check the server's host name, so their
  # inbounds present the same SPIFFE ID from the same dev CA plus a DNS name to check.
  openssl ecparam -name prime256v1 -genkey -noout 2>/dev/null |
    openssl pkcs8 -topk8 -nocrypt -out "$c/server-dns-key.pem"
  openssl req -new -key "$c/server-dns-key.pem" -subj "/O=idgate dev/CN=server" -out "$c/server-dns.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
    "extendedKeyUsage=serverAuth,clientAuth" "subjectAltName=URI:$SERVER_ID,DNS:server.$TD" >"$c/server-dns.ext"
  openssl x509 -req -in "$c/server-dns.csr" -CA "$c/ca.pem" -CAkey "$c/ca-key.pem" -CAcreateserial \
    -days 2 -extfile "$c/server-dns.ext" -out "$c/server-dns.pem" 2>/dev/null
}

# A RULES-rule policy in the shape of benches/micro.rs: exact IDs, ID patterns, exact,
# prefix and suffix paths, methods, headers, some deny rules; one rule admits the client.
# policy-tcp.toml has the same rules without what a TCP listener cannot judge (methods,
# paths, headers).
make_policy() {
  policy_rules http >"$WORK/policy.toml"
  policy_rules tcp >"$WORK/policy-tcp.toml"
}
policy_rules() {
  python3 - "$RULES" "$CLIENT_ID" "$1" <<'EOF'
import sys
n, client, kind_of_listener = int(sys.argv[1]), sys.argv[2], sys.argv[3]
tcp = kind_of_listener == "tcp"
td = "spiffe://bench.local"
print('mode = "enforce"\ndefault = "deny"')
for i in range(n - 1):
    ns = i % 97
    kind = i % 10
    if kind <= 3:
        frm, paths = f"{td}/ns/ns{ns}/sa/svc{i}", f'"/api/v1/res{i}", "/api/v1/res{i}/*"'
    elif kind <= 5:
        frm, paths = f"{td}/ns/ns{ns}/*", f'"/api/v2/items{i}/*"'
    elif kind == 6:
        frm, paths = f"{td}/ns/*/sa/svc{i}", f'"/reports/r{i}"'
    elif kind == 7:
        frm, paths = f"{td}/*", f'"/shared/doc{i}"'
    elif kind == 8:
        frm, paths = f"{td}/ns/ns{ns}/sa/svc{i}", f'"*.json", "/static{i}/*"'
    else:
        frm, paths = f"{td}/ns/ns{ns}/sa/svc{i}", '"/*"'
    action = "deny" if i % 25 == 24 else "allow"
    print(f'\n[[rule]]\nname = "r{i}"\naction = "{action}"\nfrom = ["{frm}"]')
    if not tcp:
        print(f'paths = [{paths}]')
        if i % 3 == 0:
            print('methods = ["GET", "POST"]')
        if i % 10 == 9:
            print('headers = { "x-scan-status" = "passed" }')
    if i == n // 2:
        print(f'\n[[rule]]\nname = "bench-client"\naction = "allow"\nfrom = ["{client}"]')
        if not tcp:
            print('methods = ["GET", "POST"]\npaths = ["/", "/api/*", "/bulk", "/upload"]')
EOF
}

# ---------------------------------------------------------------- contenders
declare -A OUT IN
OUT[direct]=$BACKEND_PORT

start_backend() {
  backend_config "$WORK/backend" "127.0.0.1:$BACKEND_PORT"
  start backend nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend"
  wait_port "$BACKEND_PORT"
}

# start_idgate_pair NAME PORT PROTOCOL POLICY [BIN]: an idgate outbound on PORT+1 and
# inbound on PORT+2 (admin PORT+3, PORT+4), HTTP or TCP on both sides; BIN defaults to
# IDGATE_BIN.
start_idgate_pair() {
  local name=$1 port=$2 protocol=$3 policy=$4 bin=${5:-$IDGATE_BIN}
  local out=$((port + 1)) in=$((port + 2)) c=$WORK/certs
  # Decision logs go to a directory of their own: idgate watches the policy's directory
  # and any write there triggers a reload check.
  mkdir -p "$WORK/logs"
  cat >"$WORK/$name-out.toml" <<EOF
[identity]
source = "files"
cert = "$c/client.pem"
key = "$c/client-key.pem"
bundle = "$c/bundle.pem"
[[outbound]]
name = "bench-out"
listen = "127.0.0.1:$out"
target = "127.0.0.1:$in"
server_ids = ["$SERVER_ID"]
protocol = "$protocol"
[admin]
listen = "127.0.0.1:$((port + 3))"
[log]
decisions = "$WORK/logs/$name-out-decisions.log"
[runtime]
workers = $IDGATE_WORKERS
EOF
  cat >"$WORK/$name-in.toml" <<EOF
[identity]
source = "files"
cert = "$c/server.pem"
key = "$c/server-key.pem"
bundle = "$c/bundle.pem"
[[inbound]]
name = "bench-in"
listen = "127.0.0.1:$in"
upstream = "$protocol://127.0.0.1:$BACKEND_PORT"
protocol = "$protocol"
policy = "$policy"
# Every contender's new-connection row measures full handshakes (checked below).
session_resumption = false
[admin]
listen = "127.0.0.1:$((port + 4))"
[log]
decisions = "$WORK/logs/$name-in-decisions.log"
[runtime]
workers = $IDGATE_WORKERS
EOF
  start "$name-in" "$bin" run --config "$WORK/$name-in.toml"
  start "$name-out" "$bin" run --config "$WORK/$name-out.toml"
  OUT[$name]=$out IN[$name]=$in
}

start_idgate() { start_idgate_pair idgate $((BASE_PORT + 100)) http "$WORK/policy.toml"; }

# idgate's L4 mode (`protocol = "tcp"` on both sides, the rules' `from` only): the
# like-for-like comparison with ghostunnel.
start_idgate-tcp() { start_idgate_pair idgate-tcp $((BASE_PORT + 120)) tcp "$WORK/policy-tcp.toml"; }

start_haproxy() {
  local out=$((BASE_PORT + 201)) in=$((BASE_PORT + 202)) c=$WORK/certs
  local global="global
  nbthread $(nproc)
  maxconn 8000
  tune.ssl.cachesize 0
  ssl-default-bind-options no-tls-tickets
defaults
  mode http
  timeout connect 5s
  timeout client 90s
  timeout server 60s
  option http-keep-alive
  http-reuse always"
  cat >"$WORK/haproxy-out.cfg" <<EOF
$global
frontend out
  bind 127.0.0.1:$out
  default_backend peer
backend peer
  server in 127.0.0.1:$in ssl crt $c/client-combined.pem ca-file $c/bundle.pem verify required alpn h2
EOF
  cat >"$WORK/haproxy-in.cfg" <<EOF
$global
frontend in
  bind 127.0.0.1:$in ssl crt $c/server-combined.pem ca-file $c/bundle.pem verify required alpn h2,http/1.1 no-tls-tickets
  http-request del-header x-forwarded-client-cert
  http-request set-header x-forwarded-client-cert "Hash=%[ssl_c_der,sha2(256),hex]"
  default_backend app
backend app
  server app 127.0.0.1:$BACKEND_PORT
EOF
  start haproxy-in haproxy -db -f "$WORK/haproxy-in.cfg"
  start haproxy-out haproxy -db -f "$WORK/haproxy-out.cfg"
  OUT[haproxy]=$out IN[haproxy]=$in
}

# Large bodies through nginx without temporary files: request bodies buffered in memory
# (nginx's default buffering, which also keeps an early upstream answer from cutting the
# client off), responses streamed through 64 KiB buffers.
NGINX_STREAMING="      client_max_body_size 2m;
      client_body_buffer_size 2m;
      proxy_max_temp_file_size 0;
      proxy_buffers 8 64k;
      proxy_busy_buffers_size 128k;"

start_nginx() {
  local out=$((BASE_PORT + 301)) in=$((BASE_PORT + 302)) c=$WORK/certs side
  for side in out in; do
    mkdir -p "$WORK/nginx-$side"
  done
  local head="worker_processes $(nproc);
daemon off;
master_process on;
worker_rlimit_nofile 20000;
events { worker_connections 10000; }"
  cat >"$WORK/nginx-out/nginx.conf" <<EOF
$head
error_log $WORK/nginx-out/error.log warn;
pid $WORK/nginx-out/nginx.pid;
http {
  access_log off;
  keepalive_requests 1000000;
  upstream peer { server 127.0.0.1:$in; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$out backlog=4096;
    location / {
      proxy_pass https://peer;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_certificate $c/client.pem;
      proxy_ssl_certificate_key $c/client-key.pem;
      proxy_ssl_trusted_certificate $c/bundle.pem;
      proxy_ssl_verify on;
      proxy_ssl_verify_depth 3;
      proxy_ssl_name server.$TD;
$NGINX_STREAMING
    }
  }
}
EOF
  cat >"$WORK/nginx-in/nginx.conf" <<EOF
$head
error_log $WORK/nginx-in/error.log warn;
pid $WORK/nginx-in/nginx.pid;
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$BACKEND_PORT; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:$in ssl http2 backlog=4096;
    ssl_certificate $c/server-dns.pem;
    ssl_certificate_key $c/server-dns-key.pem;
    ssl_client_certificate $c/bundle.pem;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-Client-Cert "Hash=\$ssl_client_fingerprint";
$NGINX_STREAMING
    }
  }
}
EOF
  start nginx-in nginx -c "$WORK/nginx-in/nginx.conf" -p "$WORK/nginx-in"
  start nginx-out nginx -c "$WORK/nginx-out/nginx.conf" -p "$WORK/nginx-out"
  OUT[nginx]=$out IN[nginx]=$in
}

# The `relay` reference path: two plain TCP relays, no TLS and no HTTP (HAProxy `mode
# tcp`, one thread per core), between the load and the backend.
start_relay() {
  local out=$((BASE_PORT + 501)) in=$((BASE_PORT + 502)) side listen target
  for side in out in; do
    if [[ $side == out ]]; then listen=$out target=$in; else listen=$in target=$BACKEND_PORT; fi
    cat >"$WORK/relay-$side.cfg" <<EOF
global
  nbthread $(nproc)
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 90s
  timeout server 90s
listen relay
  bind 127.0.0.1:$listen
  server next 127.0.0.1:$target
EOF
    start "relay-$side" haproxy -db -f "$WORK/relay-$side.cfg"
  done
  OUT[relay]=$out IN[relay]=$in
}

start_ghostunnel() {
  local out=$((BASE_PORT + 401)) in=$((BASE_PORT + 402)) c=$WORK/certs
  start ghostunnel-in ghostunnel server --listen "127.0.0.1:$in" --target "127.0.0.1:$BACKEND_PORT" \
    --cert "$c/server-dns.pem" --key "$c/server-dns-key.pem" --cacert "$c/bundle.pem" \
    --allow-uri "$CLIENT_ID" --quiet=conns
  start ghostunnel-out ghostunnel client --listen "127.0.0.1:$out" --target "127.0.0.1:$in" \
    --cert "$c/client.pem" --key "$c/client-key.pem" --cacert "$c/bundle.pem" \
    --verify-uri "$SERVER_ID" --override-server-name "server.$TD" --quiet=conns
  OUT[ghostunnel]=$out IN[ghostunnel]=$in
}

# ---------------------------------------------------------------- measurements
RES=$WORK/results
mkdir -p "$RES"
record() { echo "$3" >>"$RES/$1.$2"; } # record METRIC CONTENDER VALUE

# to_ms VALUE-WITH-UNIT (wrk prints 512.00us, 1.20ms, 1.01s)
to_ms() {
  awk -v v="$1" 'BEGIN {
    n = v + 0
    if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000
    printf "%.3f", n }'
}

# cpu_per TICKS COUNT SCALE FORMAT: CPU seconds (clock ticks) per COUNT, times SCALE.
cpu_per() {
  awk -v t="$1" -v n="$2" -v s="$3" -v f="$4" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf f, t / hz / n * s }'
}

ticks_of() { # ticks_of CONTENDER SIDE
  [[ $1 == direct ]] && echo 0 || cpu_ticks "$1-$2"
}

run_wrk() {
  local name=$1 port=${OUT[$1]} before_out before_in out
  before_out=$(ticks_of "$name" out) before_in=$(ticks_of "$name" in)
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/")
  local after_out after_in requests rps p50 p99 errors
  after_out=$(ticks_of "$name" out) after_in=$(ticks_of "$name" in)
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
  p50=$(to_ms "$(awk '$1 == "50%" { print $2 }' <<<"$out")")
  p99=$(to_ms "$(awk '$1 == "99%" { print $2 }' <<<"$out")")
  errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [[ -z $errors ]] || log "$name wrk: $errors"
  record wrk_rps "$name" "$rps"
  record wrk_p50 "$name" "$p50"
  record wrk_p99 "$name" "$p99"
  if [[ $name != direct ]]; then
    record cpu_out "$name" "$(cpu_per $((after_out - before_out)) "$requests" 10000 %.3f)"
    record cpu_in "$name" "$(cpu_per $((after_in - before_in)) "$requests" 10000 %.3f)"
  fi
  log "$name wrk: $rps req/s, p50 $p50 ms, p99 $p99 ms"
}

# oha_json ARGS...: run oha with JSON output, print "rps p50 p99 p999 success" (ms).
oha_json() {
  oha --no-tui --output-format json "$@" 2>/dev/null | python3 -c '
import json, sys
d = json.load(sys.stdin)
s, p = d["summary"], d["latencyPercentiles"]
ms = lambda v: 1000 * (v or 0)
print("%.1f %.3f %.3f %.3f %.4f" % (s["requestsPerSec"], ms(p["p50"]), ms(p["p99"]), ms(p["p99.9"]), s["successRate"]))'
}

run_fixed() {
  local name=$1 port=${OUT[$1]} rps p50 p99 p999 ok before_out before_in
  before_out=$(ticks_of "$name" out) before_in=$(ticks_of "$name" in)
  read -r rps p50 p99 p999 ok < <(oha_json -z "${DURATION}s" -q "$RATE" --latency-correction \
    -c 8 "http://127.0.0.1:$port/")
  record fixed_p50 "$name" "$p50"
  record fixed_p99 "$name" "$p99"
  record fixed_p999 "$name" "$p999"
  if [[ $name != direct ]]; then
    local requests
    requests=$((RATE * DURATION))
    record fixcpu_out "$name" "$(cpu_per $(($(ticks_of "$name" out) - before_out)) "$requests" 1e6 %.1f)"
    record fixcpu_in "$name" "$(cpu_per $(($(ticks_of "$name" in) - before_in)) "$requests" 1e6 %.1f)"
  fi
  log "$name at $RATE req/s: p50 $p50 ms, p99 $p99 ms, p99.9 $p999 ms (success $ok)"
}

run_handshakes() {
  local name=$1 port=${IN[$1]} c=$WORK/certs rps p50 p99 p999 ok before
  before=$(ticks_of "$name" in)
  read -r rps p50 p99 p999 ok < <(oha_json -z "${DURATION}s" -c "$CONNS" --disable-keepalive \
    --insecure --cert "$c/client.pem" --key "$c/client-key.pem" "https://127.0.0.1:$port/")
  local ticks=$(($(ticks_of "$name" in) - before))
  record hs_rps "$name" "$rps"
  record hs_cpu "$name" "$(cpu_per "$ticks" "$DURATION" 1 %.2f)"
  log "$name new mTLS connections through inbound: $rps/s (success $ok)"
}

# run_bulk NAME DIRECTION: 1 MiB responses (down) or uploads (up) through NAME, wrk with
# BULK_CONNS connections; each request moves 1 MiB, so req/s is MiB/s.
run_bulk() {
  local name=$1 direction=$2 port=${OUT[$1]} path=/bulk args=() before_out before_in out
  [[ $direction == up ]] && path=/upload args=(-s "$WORK/upload.lua")
  before_out=$(ticks_of "$name" out) before_in=$(ticks_of "$name" in)
  out=$(wrk -t2 -c"$BULK_CONNS" -d"${DURATION}s" "${args[@]}" "http://127.0.0.1:$port$path")
  local after_out after_in requests rps errors
  after_out=$(ticks_of "$name" out) after_in=$(ticks_of "$name" in)
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
  errors=$(awk '/Non-2xx|Socket errors/' <<<"$out")
  [[ -z $errors ]] || log "$name bulk $direction: $errors"
  record "bulk_$direction" "$name" "$rps"
  if [[ $name != direct ]]; then
    record "bulkcpu_${direction}_out" "$name" "$(cpu_per $((after_out - before_out)) "$requests" 1000 %.2f)"
    record "bulkcpu_${direction}_in" "$name" "$(cpu_per $((after_in - before_in)) "$requests" 1000 %.2f)"
  fi
  log "$name bulk $direction: $rps MiB/s"
}

# check_pair NAME: GET / through both sidecars answers 200, and the resumption check.
check_pair() {
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${OUT[$1]}/" || true)
  [[ $status == 200 ]] || die "$1: GET / through both sidecars gave $status (see $WORK/$1-*.log)"
  check_resumption "$1"
}

# check_bulk NAME PORT: 1 MiB comes back whole from GET /bulk, POST /upload of 1 MiB is 200.
check_bulk() {
  local got status
  got=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "http://127.0.0.1:$2/bulk" || true)
  [[ $got == "200 1048576" ]] || die "$1: GET /bulk gave '$got' instead of '200 1048576'"
  status=$(head -c 1048576 /dev/zero | curl -s -o /dev/null -w '%{http_code}' \
    --data-binary @- -H 'Content-Type: application/octet-stream' "http://127.0.0.1:$2/upload" || true)
  [[ $status == 200 ]] || die "$1: POST /upload (1 MiB) gave $status"
}

# Resumption check: a second connection offering the first one's session must not resume.
check_resumption() {
  local name=$1 port=${IN[$1]} c=$WORK/certs sess=$WORK/sess.$1 out
  rm -f "$sess"
  # stdin stays open a moment so that a TLS 1.3 ticket, sent after the handshake, arrives.
  sleep 0.3 | openssl s_client -connect "127.0.0.1:$port" -cert "$c/client.pem" \
    -key "$c/client-key.pem" -sess_out "$sess" >/dev/null 2>&1 || true
  out=$(sleep 0.3 | openssl s_client -connect "127.0.0.1:$port" -cert "$c/client.pem" \
    -key "$c/client-key.pem" -sess_in "$sess" 2>/dev/null || true)
  if grep -q '^Reused' <<<"$out"; then
    log "WARNING: $name resumed a TLS session: its handshake numbers are not full handshakes"
    RESUMES[$name]=yes
  else
    RESUMES[$name]=no
  fi
}

# measure_idle NAME SIDE: RSS and anonymous memory of an idle sidecar.
measure_idle() {
  record "rss_idle_$2" "$1" "$(rss_kib "$1-$2")"
  record "anon_idle_$2" "$1" "$(rss_kib "$1-$2" RssAnon)"
}

# measure_hold NAME SIDE: RSS before and while HOLD idle keep-alive connections are open.
measure_hold() {
  local name=$1 side=$2 port args=() base held
  if [[ $side == out ]]; then port=${OUT[$name]}; else
    port=${IN[$name]}
    args=("$WORK/certs/client.pem" "$WORK/certs/client-key.pem")
  fi
  base=$(rss_kib "$name-$side")
  coproc HOLDER { python3 benches/hold.py 127.0.0.1 "$port" "$HOLD" "${args[@]}" 2>"$WORK/hold.log"; }
  local ready count
  read -r ready count <&"${HOLDER[0]}" || true
  sleep 0.5
  held=$(rss_kib "$name-$side")
  echo done >&"${HOLDER[1]}"
  wait "$HOLDER_PID" 2>/dev/null || true
  [[ ${count:-0} == "$HOLD" ]] || log "WARNING: $name $side held only ${count:-0} of $HOLD connections ($(head -1 "$WORK/hold.log"))"
  record "rss_base_$side" "$name" "$base"
  record "rss_held_$side" "$name" "$held"
  log "$name $side: RSS $((base / 1024)) MiB, with ${count:-0} connections $((held / 1024)) MiB"
}

# The idle RSS of the static musl binary (IDGATE_STATIC_BIN) as a second idgate pair with
# the same configs on ports of its own, measured like the others (idle, after one request
# through both sidecars and the resumption probe), then stopped. The glibc build also maps
# the C library, libm and the loader: about 2 MiB resident.
measure_static() {
  local side
  start_idgate_pair idgate-static $((BASE_PORT + 110)) http "$WORK/policy.toml" "$IDGATE_STATIC_BIN"
  wait_port "${OUT[idgate-static]}"
  wait_port "${IN[idgate-static]}"
  check_pair idgate-static
  # Idle as the others are when measured (seconds after their probes): jemalloc hands
  # freed pages back after about a second.
  sleep 2
  for side in out in; do
    measure_idle idgate-static "$side"
    kill "$(cat "$WORK/idgate-static-$side.pid")"
  done
  log "static idgate: RSS idle $(($(m rss_idle_out idgate-static) / 1024)) / $(($(m rss_idle_in idgate-static) / 1024)) MiB"
}

median() { # median FILE
  [[ -s $1 ]] || { echo "-"; return; }
  sort -g "$1" | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
m() { median "$RES/$1.$2"; }

# ---------------------------------------------------------------- run
install_tools
cat >"$WORK/upload.lua" <<'EOF'
wrk.method = "POST"
wrk.body = string.rep("x", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
EOF
make_certs
make_policy
start_backend
read -ra NAMES <<<"$CONTENDERS"
for name in "${NAMES[@]}"; do "start_$name"; done
for name in "${NAMES[@]}"; do wait_port "${OUT[$name]}"; wait_port "${IN[$name]}"; done
declare -A RESUMES
for name in "${NAMES[@]}"; do check_pair "$name"; done
REFS=(direct)
if [[ $FLOOR == 1 ]]; then
  start_relay
  wait_port "${OUT[relay]}"
  [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${OUT[relay]}/" || true) == 200 ]] ||
    die "relay: GET / through both relays failed (see $WORK/relay-*.log)"
  REFS+=(relay)
fi
log "all contenders answer 200 through both sidecars; work dir $WORK"

log "memory: idle, then $HOLD idle keep-alive connections per listener"
# Idle: settled (jemalloc hands freed pages back after about a second), and before any
# hold. The inbound holds first: an L4 outbound relays its held connections to its inbound.
sleep 2
for name in "${NAMES[@]}"; do
  measure_idle "$name" out
  measure_idle "$name" in
done
for name in "${NAMES[@]}"; do
  measure_hold "$name" in
  measure_hold "$name" out
done
[[ -z $IDGATE_STATIC_BIN || " ${NAMES[*]} " != *" idgate "* ]] || measure_static

ALL=("${REFS[@]}" "${NAMES[@]}")
# After the memory readings: a sidecar that has carried large bodies may keep some of it.
if [[ $BULK == 1 ]]; then
  for name in "${ALL[@]}"; do check_bulk "$name" "${OUT[$name]}"; done
fi
log "warm-up"
for name in "${ALL[@]}"; do
  wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${OUT[$name]}/" >/dev/null
done
for ((round = 1; round <= ROUNDS; round++)); do
  log "round $round/$ROUNDS"
  # Alternate (A B C A B C ...) and rotate the start so no contender always goes first.
  order=("${ALL[@]:round % ${#ALL[@]}}" "${ALL[@]:0:round % ${#ALL[@]}}")
  for name in "${order[@]}"; do run_wrk "$name"; done
  for name in "${order[@]}"; do run_fixed "$name"; done
  for name in "${order[@]}"; do [[ " ${REFS[*]} " == *" $name "* ]] || run_handshakes "$name"; done
  if [[ $BULK == 1 ]]; then
    for name in "${order[@]}"; do run_bulk "$name" down; done
    for name in "${order[@]}"; do run_bulk "$name" up; done
  fi
done

# ---------------------------------------------------------------- report
for name in "${NAMES[@]}"; do
  for side in out in; do record "peak_$side" "$name" "$(rss_kib "$name-$side" VmHWM)"; done
done

kib_mib() { [[ $1 == - ]] && echo - || awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
per_conn() { awk -v a="$1" -v b="$2" -v n="$HOLD" 'BEGIN { printf "%.1f", (b - a) / n }'; }

echo
echo "## idgate mesh benchmark: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo), kernel $(uname -r)"
echo "ROUNDS=$ROUNDS DURATION=${DURATION}s RATE=$RATE CONNS=$CONNS HOLD=$HOLD RULES=$RULES IDGATE_WORKERS=$IDGATE_WORKERS; medians of $ROUNDS rounds; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "### Keep-alive throughput (wrk, $CONNS connections) and fixed-rate latency (oha -q $RATE --latency-correction)"
echo
printf '| %-10s | %9s | %7s | %7s | %8s | %8s | %8s | %10s | %10s |\n' path "req/s" "p50 ms" "p99 ms" "p50 ms" "p99 ms" "p99.9 ms" "+p50 ms" "+p99 ms"
printf '|%s|\n' "------------|-----------|---------|---------|----------|----------|----------|------------|------------"
# added PERCENTILE NAME: NAME's fixed-rate latency minus the direct path's, in ms.
added() { awk -v a="$(m "fixed_$1" "$2")" -v b="$(m "fixed_$1" direct)" 'BEGIN { printf "%.3f", a - b }'; }
for name in "${ALL[@]}"; do
  f50=$(m fixed_p50 "$name") f99=$(m fixed_p99 "$name")
  add50=$(added p50 "$name") add99=$(added p99 "$name")
  [[ $name == direct ]] && add50=- add99=-
  printf '| %-10s | %9.0f | %7s | %7s | %8s | %8s | %8s | %10s | %10s |\n' "$name" "$(m wrk_rps "$name")" \
    "$(m wrk_p50 "$name")" "$(m wrk_p99 "$name")" "$f50" "$f99" "$(m fixed_p999 "$name")" "$add50" "$add99"
done
if [[ $FLOOR == 1 ]]; then
  echo
  echo "relay: two plain TCP relays (HAProxy mode tcp, no TLS, no HTTP), the floor of any two hops here;"
  echo "CPU per request, out / in: $(m cpu_out relay) / $(m cpu_in relay) s per 10k requests saturated, $(m fixcpu_out relay) / $(m fixcpu_in relay) us at $RATE req/s."
fi
echo
echo "### Handshakes, CPU and memory (per sidecar: outbound / inbound)"
echo
printf '| %-10s | %13s | %14s | %17s | %15s | %15s | %15s | %17s | %15s |\n' proxy "mTLS conns/s" "inbound CPU %" "CPU s/10k req" "us/req @${RATE}/s" "RSS idle MiB" "anon idle MiB" "RSS +${HOLD} conns" "KiB per conn"
printf '|%s|\n' "------------|---------------|----------------|-------------------|-----------------|-----------------|-----------------|-------------------|-----------------"
for name in "${NAMES[@]}"; do
  printf '| %-10s | %13.0f | %14s | %17s | %15s | %15s | %15s | %17s | %15s |\n' "$name" "$(m hs_rps "$name")" \
    "$(awk -v c="$(m hs_cpu "$name")" 'BEGIN { printf "%.0f", c * 100 }')" \
    "$(m cpu_out "$name") / $(m cpu_in "$name")" \
    "$(m fixcpu_out "$name") / $(m fixcpu_in "$name")" \
    "$(kib_mib "$(m rss_idle_out "$name")") / $(kib_mib "$(m rss_idle_in "$name")")" \
    "$(kib_mib "$(m anon_idle_out "$name")") / $(kib_mib "$(m anon_idle_in "$name")")" \
    "$(kib_mib "$(m rss_held_out "$name")") / $(kib_mib "$(m rss_held_in "$name")")" \
    "$(per_conn "$(m rss_base_out "$name")" "$(m rss_held_out "$name")") / $(per_conn "$(m rss_base_in "$name")" "$(m rss_held_in "$name")")"
done
echo
echo "Peak RSS over the whole run (VmHWM, MiB, out / in): $(for n in "${NAMES[@]}"; do printf '%s %s / %s; ' "$n" "$(kib_mib "$(m peak_out "$n")")" "$(kib_mib "$(m peak_in "$n")")"; done)"
echo "TLS session resumption offered by the inbound listener: $(for n in "${NAMES[@]}"; do printf '%s %s; ' "$n" "${RESUMES[$n]}"; done)"
echo "RSS sums VmRSS over a sidecar's processes (nginx: master + $(nproc) workers, which overcounts shared pages);"
echo "anon is RssAnon (heap and stacks), i.e. RSS without the program's and libraries' mapped files."

if [[ $BULK == 1 ]]; then
  echo
  echo "### Large bodies: 1 MiB responses (GET) and uploads (POST), wrk, $BULK_CONNS connections"
  echo
  printf '| %-10s | %10s | %8s | %22s | %22s |\n' path "down MiB/s" "up MiB/s" "CPU ms/MiB down o / i" "CPU ms/MiB up o / i"
  printf '|%s|\n' "------------|------------|----------|------------------------|------------------------"
  for name in "${ALL[@]}"; do
    cpu_down=- cpu_up=-
    if [[ $name != direct ]]; then
      cpu_down="$(m bulkcpu_down_out "$name") / $(m bulkcpu_down_in "$name")"
      cpu_up="$(m bulkcpu_up_out "$name") / $(m bulkcpu_up_in "$name")"
    fi
    printf '| %-10s | %10.0f | %8.0f | %22s | %22s |\n' "$name" "$(m bulk_down "$name")" "$(m bulk_up "$name")" "$cpu_down" "$cpu_up"
  done
fi

if [[ " ${NAMES[*]} " == *" idgate "* ]]; then
  echo
  echo "### idgate against each peer (ratio idgate / peer; throughput and handshakes: higher is better, the rest: lower)"
  echo
  printf '| %-10s | %10s | %8s | %8s | %10s | %12s | %10s | %10s | %10s |\n' peer "req/s" "wrk p99" "1k p99" "handshakes" "CPU/req o+i" "RSS idle" "1 MiB down" "1 MiB up"
  printf '|%s|\n' "------------|------------|----------|----------|------------|--------------|------------|------------|------------"
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0 || a == "-" || b == "-") print "-"; else printf "%.2fx", a / b }'; }
  sum2() { awk -v a="$1" -v b="$2" 'BEGIN { print a + b }'; }
  ratio_row() { # ratio_row OURS PEER
    printf '| %-10s | %10s | %8s | %8s | %10s | %12s | %10s | %10s | %10s |\n' "$2" \
      "$(ratio "$(m wrk_rps "$1")" "$(m wrk_rps "$2")")" \
      "$(ratio "$(m wrk_p99 "$1")" "$(m wrk_p99 "$2")")" \
      "$(ratio "$(m fixed_p99 "$1")" "$(m fixed_p99 "$2")")" \
      "$(ratio "$(m hs_rps "$1")" "$(m hs_rps "$2")")" \
      "$(ratio "$(sum2 "$(m cpu_out "$1")" "$(m cpu_in "$1")")" "$(sum2 "$(m cpu_out "$2")" "$(m cpu_in "$2")")")" \
      "$(ratio "$(sum2 "$(m rss_idle_out "$1")" "$(m rss_idle_in "$1")")" "$(sum2 "$(m rss_idle_out "$2")" "$(m rss_idle_in "$2")")")" \
      "$(ratio "$(m bulk_down "$1")" "$(m bulk_down "$2")")" "$(ratio "$(m bulk_up "$1")" "$(m bulk_up "$2")")"
  }
  for peer in "${NAMES[@]}"; do
    [[ $peer == idgate || $peer == idgate-tcp ]] || ratio_row idgate "$peer"
  done
  if [[ " ${NAMES[*]} " == *" idgate-tcp "* && " ${NAMES[*]} " == *" ghostunnel "* ]]; then
    echo
    echo "L4 against L4 (ratio idgate-tcp / ghostunnel: both relay bytes after the mTLS handshake):"
    echo
    ratio_row idgate-tcp ghostunnel
  fi
  echo
  echo "### idgate against the issue's targets"
  echo
  verdict() { if awk "BEGIN { exit !($1) }"; then echo met; else echo "NOT met"; fi; }
  i_rps=$(m wrk_rps idgate) i_p99=$(m wrk_p99 idgate)
  if [[ " ${NAMES[*]} " == *" haproxy "* ]]; then
    h_rps=$(m wrk_rps haproxy) h_p99=$(m wrk_p99 haproxy)
    echo "- keep-alive throughput >= 1.2x HAProxy ($i_rps vs $h_rps req/s): $(verdict "$i_rps >= 1.2 * $h_rps")"
    echo "- keep-alive p99 <= HAProxy's ($i_p99 vs $h_p99 ms): $(verdict "$i_p99 <= $h_p99")"
    echo "- handshakes >= HAProxy's ($(m hs_rps idgate) vs $(m hs_rps haproxy)/s): $(verdict "$(m hs_rps idgate) >= $(m hs_rps haproxy)")"
  fi
  a50=$(added p50 idgate) a99=$(added p99 idgate)
  floor() { [[ $FLOOR != 1 ]] || echo "; two plain TCP relays add $(added "$1" relay) ms"; }
  echo "- added p50 at $RATE req/s <= 0.10 ms ($a50 ms$(floor p50)): $(verdict "$a50 <= 0.10")"
  echo "- added p99 at $RATE req/s <= 0.20 ms ($a99 ms$(floor p99)): $(verdict "$a99 <= 0.20")"
  co=$(m cpu_out idgate) ci=$(m cpu_in idgate)
  echo "- CPU <= 50 us per request per proxy (saturated: out $(awk -v c="$co" 'BEGIN { printf "%.0f", c * 100 }') us, in $(awk -v c="$ci" 'BEGIN { printf "%.0f", c * 100 }') us; at $RATE req/s: out $(m fixcpu_out idgate) us, in $(m fixcpu_in idgate) us): $(verdict "$co <= 0.5 && $ci <= 0.5 && $(m fixcpu_out idgate) <= 50 && $(m fixcpu_in idgate) <= 50")"
  hs=$(m hs_rps idgate) hc=$(m hs_cpu idgate)
  echo "- handshakes >= 2,000/s per core ($hs/s using $(awk -v c="$hc" 'BEGIN { printf "%.2f", c }') cores of the inbound = $(awk -v h="$hs" -v c="$hc" 'BEGIN { printf "%.0f", h / (c > 0 ? c : 1) }')/s per core busy): $(verdict "$hs / ($hc > 0 ? $hc : 1) >= 2000")"
  io=$(m rss_idle_out idgate) ii=$(m rss_idle_in idgate)
  echo "- RSS <= 10 MiB per sidecar idle (out $(kib_mib "$io"), in $(kib_mib "$ii") MiB): $(verdict "$io <= 10240 && $ii <= 10240") (anonymous memory only: out $(kib_mib "$(m anon_idle_out idgate)"), in $(kib_mib "$(m anon_idle_in idgate)") MiB)"
  so=$(m rss_idle_out idgate-static) si=$(m rss_idle_in idgate-static)
  [[ $so == - ]] || echo "- the same for the static musl binary the container ships (out $(kib_mib "$so"), in $(kib_mib "$si") MiB): $(verdict "$so <= 10240 && $si <= 10240")"
  po=$(per_conn "$(m rss_base_out idgate)" "$(m rss_held_out idgate)") pi=$(per_conn "$(m rss_base_in idgate)" "$(m rss_held_in idgate)")
  echo "- <= 32 KiB per idle connection (out $po, in $pi KiB): $(verdict "$po <= 32 && $pi <= 32")"
fi

#!/usr/bin/env bash
# Instructions per proxied request in each sidecar, counted by valgrind (callgrind): a
# number that does not move with the machine's noise, for A/B of a data-path change that
# wall-clock runs (a few percent apart run to run) cannot tell apart.
#
#   oha (1 connection, keep-alive) -> outbound -> mTLS, HTTP/2 -> inbound -> backend
#
# Both sidecars run one worker under callgrind, with a deny-by-default policy (one allow
# rule for the client) and decision logs on; the backend is the benchmarks' nginx (1 KiB).
# Requests go one at a time, each alone in the pipeline, as at a low request rate. Each
# binary runs twice, WARM then WARM + REQUESTS requests: the difference over REQUESTS is
# the cost of one request in steady state, without start-up, first handshakes and
# shutdown. Counts are user-space instructions (no kernel, no waiting); repeated runs of
# one binary agree within about 0.1 %.
#
# usage: benches/instructions.sh [IDGATE_BIN...]    (default: target/release/idgate)
# Knobs: REQUESTS=2000 WARM=500 BASE_PORT=26000 KEEP=1 (keep the callgrind files, to read
# with callgrind_annotate; a build with symbols: CARGO_PROFILE_RELEASE_STRIP=false
# CARGO_PROFILE_RELEASE_DEBUG=1).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/backend.sh
source benches/backend.sh
REQUESTS=${REQUESTS:-2000} WARM=${WARM:-500} BASE_PORT=${BASE_PORT:-26000} KEEP=${KEEP:-0}
CACHE=${IDGATE_BENCH_CACHE:-$HOME/.cache/idgate/bench}
export PATH="$CACHE/bin:$PATH"
(($#)) || set -- target/release/idgate
for tool in valgrind nginx oha; do
  command -v "$tool" >/dev/null || {
    echo "error: $tool not found (apt-get install valgrind nginx; oha: run benches/mesh.sh once)" >&2
    exit 1
  }
done
APP=$((BASE_PORT + 80)) OUT=$((BASE_PORT + 401)) IN=$((BASE_PORT + 402))
OUT_ADMIN=$((BASE_PORT + 403)) IN_ADMIN=$((BASE_PORT + 404))
WORK=$(mktemp -d /tmp/idgate-instructions.XXXXXX)
chmod o+x "$WORK"
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  if ((KEEP)); then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

CLIENT=spiffe://example.org/ns/shop/sa/frontend SERVER=spiffe://example.org/ns/billing/sa/api
c=$WORK/certs
"$1" certs dev --out "$c" --trust-domain example.org --id "$CLIENT" --id "$SERVER" >/dev/null
backend_config "$WORK/backend" "127.0.0.1:$APP"
nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" >/dev/null 2>&1 &
pids+=($!)
cat >"$WORK/policy.toml" <<EOF
default = "deny"
[[rule]]
name = "frontend-reads"
action = "allow"
from = ["$CLIENT"]
methods = ["GET"]
paths = ["/*"]
EOF
# sidecar NAME ADMIN_PORT SECTION: a one-worker config for NAME's SVID with its
# decision log.
sidecar() {
  cat <<EOF
[identity]
source = "files"
cert = "$c/$1.pem"
key = "$c/$1-key.pem"
bundle = "$c/bundle.pem"
$3
[admin]
listen = "127.0.0.1:$2"
[log]
decisions = "$WORK/$1-decisions.log"
[runtime]
workers = 1
EOF
}
sidecar api "$IN_ADMIN" "[[inbound]]
name = \"in\"
listen = \"127.0.0.1:$IN\"
upstream = \"http://127.0.0.1:$APP\"
policy = \"$WORK/policy.toml\"" >"$WORK/in.toml"
sidecar frontend "$OUT_ADMIN" "[[outbound]]
name = \"out\"
listen = \"127.0.0.1:$OUT\"
target = \"127.0.0.1:$IN\"
server_ids = [\"$SERVER\"]" >"$WORK/out.toml"

# counted BIN REQUESTS TAG: runs the pair under callgrind for REQUESTS requests; leaves
# $WORK/TAG.{out,in}.cg.
counted() {
  local bin=$1 requests=$2 tag=$3 side ready ok
  local -a pair=()
  for side in in out; do
    valgrind --tool=callgrind --callgrind-out-file="$WORK/$tag.$side.cg" \
      "$bin" run --config "$WORK/$side.toml" >"$WORK/$tag.$side.log" 2>&1 &
    pair+=($!)
  done
  pids+=("${pair[@]}")
  for ((ready = 0; ; ready++)); do
    curl -sf -o /dev/null "http://127.0.0.1:$IN_ADMIN/readyz" &&
      curl -sf -o /dev/null "http://127.0.0.1:$OUT_ADMIN/readyz" && break
    ((ready < 240)) || { echo "error: the sidecars did not get ready ($WORK/$tag.*.log)" >&2; exit 1; }
    sleep 0.25
  done
  ok=$(oha --no-tui --output-format json -n "$requests" -c 1 "http://127.0.0.1:$OUT/" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["statusCodeDistribution"].get("200", 0))')
  kill -TERM "${pair[@]}"
  wait "${pair[@]}" 2>/dev/null || true
  ((ok == requests)) || { echo "error: $ok of $requests requests answered 200 ($WORK/$tag.*.log)" >&2; exit 1; }
}

# total FILE: instructions a callgrind file counted.
total() { awk '/^(summary|totals):/ { print $2; exit }' "$1"; }

printf '%-40s %12s %12s\n' "binary" "outbound" "inbound"
n=0
for bin in "$@"; do
  n=$((n + 1))
  counted "$bin" "$WARM" "$n-warm"
  counted "$bin" "$((WARM + REQUESTS))" "$n-full"
  printf '%-40s' "$bin"
  for side in out in; do
    printf ' %12d' $((($(total "$WORK/$n-full.$side.cg") - $(total "$WORK/$n-warm.$side.cg")) / REQUESTS))
  done
  echo
done

#!/usr/bin/env bash
# What TLS session resumption saves on new connections: idgate against itself, the same
# binary with `session_resumption = true` (A, the default) and `false` (B), alternating
# A B A B, on loopback with nginx `return 200` (1 KiB) behind. Two paths:
#
#   inbound: oha -> idgate HTTP inbound (mTLS, one request per connection, oha resumes
#            sessions as rustls clients do) -> nginx
#   tcp:     oha -> idgate TCP outbound -> mTLS -> idgate TCP inbound -> nginx (every
#            app connection is a new mTLS connection between the sidecars)
#
# Prints, per round: connections per second, the share that resumed (from
# idgate_tls_sessions_resumed_total) and CPU microseconds per connection of each sidecar.
# Usage: benches/resumption.sh   (about 2 minutes; run benches/mesh.sh once first, or
#        have oha on PATH)
# Knobs: ROUNDS=3 DURATION=8 CONNS=4 (concurrent new connections; rustls clients keep at
#        most 8 tickets per server, so beyond 8 some connections are full handshakes)
#        IDGATE_BIN=path (default: cargo build --release) BASE_PORT=21000
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/backend.sh
source benches/backend.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
CONNS=${CONNS:-4}
BASE_PORT=${BASE_PORT:-21000}
export PATH="${IDGATE_BENCH_CACHE:-$HOME/.cache/idgate/bench}/bin:$PATH"
WORK=$(mktemp -d /tmp/idgate-resumption.XXXXXX)
CLIENT_ID=spiffe://bench.local/ns/bench/sa/client
SERVER_ID=spiffe://bench.local/ns/bench/sa/server
BACKEND=127.0.0.1:$((BASE_PORT + 80))
PIDS=()
cleanup() {
  kill "${PIDS[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v oha >/dev/null || { echo "oha not found: run benches/mesh.sh once (it installs oha)" >&2; exit 1; }
if [[ -z ${IDGATE_BIN:-} ]]; then
  cargo build --release --quiet
  IDGATE_BIN=target/release/idgate
fi

"$IDGATE_BIN" certs dev --out "$WORK/certs" --trust-domain bench.local \
  --id "$CLIENT_ID" --id "$SERVER_ID" >/dev/null
C=$WORK/certs
backend_config "$WORK/nginx" "$BACKEND"
nginx -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >/dev/null 2>&1 &
PIDS+=($!)
printf 'default = "allow"\n' >"$WORK/policy.toml"

# sidecar NAME ADMIN_PORT IDENTITY TABLE: start idgate with one listener table.
sidecar() {
  cat >"$WORK/$1.toml" <<EOF
[identity]
source = "files"
cert = "$C/$3.pem"
key = "$C/$3-key.pem"
bundle = "$C/bundle.pem"
$4
[admin]
listen = "127.0.0.1:$2"
[log]
decisions = "$WORK/$1-decisions.log"
EOF
  "$IDGATE_BIN" run --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  PID[$1]=$!
  ADMIN[$1]=$2
}

inbound() { # NAME PORT PROTOCOL RESUMPTION
  sidecar "$1" $(($2 + 50)) server "[[inbound]]
name = \"in\"
listen = \"127.0.0.1:$2\"
upstream = \"$3://$BACKEND\"
protocol = \"$3\"
policy = \"$WORK/policy.toml\"
session_resumption = $4"
}

outbound() { # NAME PORT TARGET_PORT RESUMPTION
  sidecar "$1" $(($2 + 50)) client "[[outbound]]
name = \"out\"
listen = \"127.0.0.1:$2\"
target = \"127.0.0.1:$3\"
server_ids = [\"$SERVER_ID\"]
protocol = \"tcp\"
session_resumption = $4"
}

declare -A PID ADMIN URL OHA_ARGS
port=$BASE_PORT
for variant in A B; do
  resume=$([[ $variant == A ]] && echo true || echo false)
  inbound "inbound-$variant" $((port += 1)) http "$resume"
  URL[inbound-$variant]=https://127.0.0.1:$port/
  OHA_ARGS[inbound-$variant]="--insecure --cert $C/client.pem --key $C/client-key.pem"
  inbound "tcp-in-$variant" $((port += 1)) tcp "$resume"
  outbound "tcp-$variant" $((port + 1)) "$port" "$resume"
  URL[tcp-$variant]=http://127.0.0.1:$((port += 1))/
  OHA_ARGS[tcp-$variant]=""
done
sleep 1.5

ticks() { awk '{ print $14 + $15 }' "/proc/${PID[$1]}/stat"; }
resumed() { curl -s "127.0.0.1:${ADMIN[$1]}/metrics" | awk '/^idgate_tls_sessions_resumed_total/ { n += $2 } END { print n + 0 }'; }

# run PATH VARIANT: one oha run; prints a table row.
run() {
  local name=$1-$2 side=$1-$2 other="" t0 o0 r0 json
  [[ $1 == tcp ]] && other=tcp-in-$2
  t0=$(ticks "$side") r0=$(resumed "${other:-$side}")
  [[ -n $other ]] && o0=$(ticks "$other")
  # shellcheck disable=SC2086 # OHA_ARGS holds separate words on purpose
  json=$(oha --no-tui --output-format json --disable-keepalive -c "$CONNS" -z "${DURATION}s" \
    ${OHA_ARGS[$name]} "${URL[$name]}" 2>/dev/null)
  local t1 r1 o1=0
  t1=$(ticks "$side") r1=$(resumed "${other:-$side}")
  [[ -n $other ]] && o1=$(ticks "$other")
  python3 - "$1" "$2" "$json" $((t1 - t0)) $((o1 - ${o0:-0})) $((r1 - r0)) "$(getconf CLK_TCK)" <<'EOF'
import json, sys
path, variant, raw, ticks, other, resumed, hz = sys.argv[1:]
d = json.loads(raw)
n = sum(d["statusCodeDistribution"].values())
us = lambda t: int(t) / int(hz) / n * 1e6
cpu = f"{us(ticks):.0f}" + (f" / {us(other):.0f}" if path == "tcp" else "")
print(f"| {path} | {'on' if variant == 'A' else 'off'} | {d['summary']['requestsPerSec']:.0f} "
      f"| {int(resumed) / n * 100:.0f} % | {cpu} | {d['summary']['successRate'] * 100:.1f} % |")
EOF
}

echo "| path | resumption | connections/s | resumed | CPU us per connection (tcp: out / in) | success |"
echo "|---|---|---:|---:|---:|---:|"
for _ in $(seq "$ROUNDS"); do
  for path in inbound tcp; do
    for variant in A B; do run "$path" "$variant"; done
  done
done

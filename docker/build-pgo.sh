#!/usr/bin/env bash
# Builds idgate with profile-guided optimisation (PGO) and prints the binary's path.
#
#   docker/build-pgo.sh [TARGET]     (default: the host's target, x86_64-unknown-linux-gnu here)
#
# 1. An instrumented release build (-Cprofile-generate), in a target directory of its own
#    so that it never evicts the normal build from the cache.
# 2. Training: benches/mesh.sh with idgate alone, one short round of what a sidecar pair
#    does all day: keep-alive HTTP/1.1 into the outbound, HTTP/2 over mTLS between the
#    sidecars, a 1,000-rule policy and the decision log on the inbound, fixed-rate load,
#    full mTLS handshakes, 1 MiB bodies both ways and held idle connections. Needs what mesh.sh needs (nginx, wrk,
#    oha; it installs them).
# 3. llvm-profdata (rustup's llvm-tools component, added when missing) merges the profiles.
# 4. The release build with -Cprofile-use: $CARGO_TARGET_DIR/TARGET/release/idgate. The
#    profile's file name carries its hash, so cargo rebuilds every crate when it changes.
# The training report and the profile stay in $CARGO_TARGET_DIR/pgo/TARGET.
set -euo pipefail
cd "$(dirname "$0")/.."
host=$(rustc -vV | sed -n 's/^host: //p')
target=${1:-$host}
out=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && realpath "${CARGO_TARGET_DIR:-target}")
pgo=$out/pgo/$target
profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
log() { printf '[pgo %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

if [[ ! -x $profdata ]]; then
  log "rustup component add llvm-tools (for llvm-profdata)"
  rustup component add llvm-tools >&2
fi
if [[ -v RUSTFLAGS || -v CARGO_ENCODED_RUSTFLAGS ]]; then
  log "error: unset RUSTFLAGS: set, even empty, it replaces the target's rustflags (.cargo/config.toml), which this script extends with the PGO flags"
  exit 1
fi
rm -rf "$pgo" && mkdir -p "$pgo/raw"
# The PGO flag, merged with the target's rustflags from .cargo/config.toml.
rustflags() { printf 'target.%s.rustflags=["%s"]' "$target" "$1"; }

log "instrumented build for $target"
CARGO_TARGET_DIR=$out/pgo-instrumented cargo build --release --locked --quiet --target "$target" \
  --bin idgate --config "$(rustflags "-Cprofile-generate=$pgo/raw")" >&2

log "training run (benches/mesh.sh, idgate only; report in $pgo/training.txt)"
LLVM_PROFILE_FILE="$pgo/raw/idgate-%p-%m.profraw" \
  IDGATE_BIN=$out/pgo-instrumented/$target/release/idgate \
  CONTENDERS=idgate FLOOR=0 ROUNDS=1 DURATION=3 HOLD=200 \
  benches/mesh.sh >"$pgo/training.txt" 2>&1 ||
  { tail -20 "$pgo/training.txt" >&2; log "error: the training run failed"; exit 1; }
shopt -s nullglob
raw=("$pgo"/raw/*.profraw)
((${#raw[@]} >= 2)) || { log "error: no profiles from the training run's sidecars"; exit 1; }
"$profdata" merge -o "$pgo/merged.profdata" "${raw[@]}"
profile=$pgo/idgate-$(sha256sum "$pgo/merged.profdata" | cut -c1-16).profdata
mv "$pgo/merged.profdata" "$profile"

log "optimised build for $target"
cargo build --release --locked --quiet --target "$target" --bin idgate \
  --config "$(rustflags "-Cprofile-use=$profile")" >&2
echo "$out/$target/release/idgate"

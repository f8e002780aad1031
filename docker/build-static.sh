#!/usr/bin/env bash
# Builds the static musl binary the container image ships (FROM scratch) and checks that
# it is static and runs. Usage: docker/build-static.sh   (prints the binary's path)
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
# ring's C parts build with the system gcc; no musl-tools needed (STACK-NOTES.md).
CC_x86_64_unknown_linux_musl=gcc cargo build --release --locked --target "$target" >&2
binary="${CARGO_TARGET_DIR:-target}/$target/release/idgate"
if ldd "$binary" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then :; else
  echo "error: $binary is not statically linked:" >&2
  ldd "$binary" >&2
  exit 1
fi
"$binary" --version >&2
"$binary" validate --config config/idgate.toml >/dev/null
echo "$binary"

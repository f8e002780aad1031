#!/usr/bin/env bash
# Builds the static musl binary the container image ships (FROM scratch) and checks that
# it is static and runs. Usage: docker/build-static.sh   (prints the binary's path)
# It is a PGO build (docker/build-pgo.sh: instrumented build, training run, optimised
# build); PGO=0 builds it with plain `cargo build --release` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
# jemalloc's C parts must build against musl's headers: musl-gcc (Debian's musl-tools,
# which tests/setup.sh installs). ring builds with it too.
command -v musl-gcc >/dev/null || { echo "error: musl-gcc not found (apt-get install musl-tools)" >&2; exit 1; }
export CC_x86_64_unknown_linux_musl=musl-gcc
if [[ ${PGO:-1} == 1 ]]; then
  binary=$(docker/build-pgo.sh "$target")
else
  cargo build --release --locked --target "$target" >&2
  binary="${CARGO_TARGET_DIR:-target}/$target/release/idgate"
fi
if ldd "$binary" 2>&1 | grep -Eq 'statically linked|not a dynamic executable'; then :; else
  echo "error: $binary is not statically linked:" >&2
  ldd "$binary" >&2
  exit 1
fi
"$binary" --version >&2
"$binary" validate --config config/idgate.toml >/dev/null
echo "$binary"

#!/usr/bin/env bash
# Installs what the test suite uses beyond Rust: Debian packages (PostgreSQL for the TCP
# tests, docker-compose for the static deployment checks, python3-venv, musl-tools, nginx,
# wrk and openssl for the static PGO build),
# SPIRE v1.13.3 built with `go install` (cached in ~/.cache/idgate), and the
# kubernetes-validate venv. Idempotent: a second run installs nothing.
# Usage: tests/setup.sh && cargo test
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# musl-gcc: .ci/run's static build (docker/build-static.sh) compiles jemalloc with it;
# nginx, wrk, openssl: that build's PGO training run (docker/build-pgo.sh, benches/mesh.sh).
for tool in curl:curl kill:procps docker-compose:docker-compose python3:python3-venv \
  musl-gcc:musl-tools nginx:nginx wrk:wrk openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
# tests/postgres.rs runs a real server (initdb, postgres) and psql.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
if ((${#need[@]})); then
  echo "installing: ${need[*]}"
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
fi

export PATH="$PATH:/usr/local/go/bin:$HOME/go/bin"
command -v go >/dev/null 2>&1 || { echo "error: Go is needed to build SPIRE for the tests" >&2; exit 1; }
tests/spire/install.sh
tests/k8s/validate.sh --install

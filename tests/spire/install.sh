#!/usr/bin/env bash
# Installs SPIRE server and agent v1.13.3 from the Go module proxy into a cache folder.
# Usage: tests/spire/install.sh [BIN_DIR]   (default: $IDGATE_SPIRE_BIN or ~/.cache/idgate/spire-1.13.3)
# A second run is a no-op when both binaries are already there.
set -euo pipefail
version=v1.13.3
bin_dir=${1:-${IDGATE_SPIRE_BIN:-$HOME/.cache/idgate/spire-${version#v}}}
if [[ -x "$bin_dir/spire-server" && -x "$bin_dir/spire-agent" ]]; then
  echo "spire $version already in $bin_dir"
  exit 0
fi
mkdir -p "$bin_dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init idgate-spire-tools >/dev/null 2>&1
go get -tool "github.com/spiffe/spire/cmd/spire-server@$version"
go get -tool "github.com/spiffe/spire/cmd/spire-agent@$version"
GOBIN="$bin_dir" go install github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent
echo "spire $version installed in $bin_dir"

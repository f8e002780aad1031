#!/usr/bin/env bash
# Checks config/systemd/idgate.service: `systemd-analyze verify` (with ExecStart pointed at
# $IDGATE_BIN, since /usr/local/bin/idgate is not installed here) where systemd-analyze
# exists, and always the hardening the unit promises (a static check).
set -euo pipefail
unit="$(dirname "$0")/../../config/systemd/idgate.service"
fail() { echo "error: $unit: $*" >&2; exit 1; }

for line in 'DynamicUser=yes' 'ProtectSystem=strict' 'NoNewPrivileges=yes' \
            'ExecReload=/bin/kill -HUP $MAINPID' 'CapabilityBoundingSet=' 'AmbientCapabilities=' \
            'PrivateTmp=yes' 'ProtectHome=yes' 'RestartPreventExitStatus=2'; do
  grep -qxF -- "$line" "$unit" || fail "missing line: $line"
done
# Capabilities only for ports < 1024, and the sample listens above.
if grep -qE '^AmbientCapabilities=.+' "$unit"; then
  fail "AmbientCapabilities set, but the documented ports (8443, 15000) need none"
fi

if command -v systemd-analyze >/dev/null 2>&1; then
  bin=${IDGATE_BIN:?set IDGATE_BIN to an idgate binary}
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  sed "s#^ExecStart=/usr/local/bin/idgate #ExecStart=$bin #" "$unit" > "$work/idgate.service"
  out=$(SYSTEMD_LOG_LEVEL=notice systemd-analyze verify --man=no "$work/idgate.service" 2>&1) || { echo "$out" >&2; fail "systemd-analyze verify failed"; }
  # verify exits 0 on some warnings: treat anything about our unit as a failure.
  if grep -F "idgate.service" <<<"$out"; then fail "systemd-analyze verify reported problems"; fi
  echo "systemd-analyze verify: ok"
else
  echo "systemd-analyze not found: static checks only"
fi
echo "static checks: ok"

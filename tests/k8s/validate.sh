#!/usr/bin/env bash
# Validates Kubernetes YAML against the real Kubernetes OpenAPI schemas, strictly (unknown
# fields are errors), with the `kubernetes-validate` package from PyPI (it ships the schemas).
#
#   tests/k8s/validate.sh --install      # create the venv (CI runs this; idempotent)
#   tests/k8s/validate.sh FILE...        # validate; exit 0 only if every object passed
#
# `kind: List` documents are split into their items first (List has no schema of its own).
# A missing validator is an error, never a skip: tests/inject.rs relies on that.
set -euo pipefail

VERSION=1.37.0                      # kubernetes-validate release (schemas up to 1.37)
K8S=${IDGATE_K8S_VERSION:-1.33.0}   # native sidecars (initContainers restartPolicy) are GA in 1.33
VENV=${IDGATE_K8S_VALIDATE_VENV:-$HOME/.cache/idgate/kubernetes-validate-$VERSION}

if [[ ${1:-} == --install ]]; then
  if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$VERSION"
  fi
  "$VENV/bin/kubernetes-validate" --version
  exit 0
fi

if [[ ! -x $VENV/bin/kubernetes-validate ]]; then
  echo "error: kubernetes-validate is not installed in $VENV: run tests/k8s/validate.sh --install" >&2
  exit 3
fi
(($#)) || { echo "usage: $0 --install | FILE..." >&2; exit 2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$VENV/bin/python" - "$work" "$@" <<'PY'
import os, sys, yaml
out, files = sys.argv[1], sys.argv[2:]
n = 0
for path in files:
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    objects = []
    for d in docs:
        if isinstance(d, dict) and str(d.get("kind", "")).endswith("List") and "items" in d:
            objects.extend(d["items"])
        else:
            objects.append(d)
    if not objects:
        sys.exit(f"error: {path}: no Kubernetes object")
    for o in objects:
        n += 1
        base = os.path.basename(path).rsplit(".", 1)[0]
        with open(os.path.join(out, f"{n:03d}-{base}.yaml"), "w") as f:
            yaml.safe_dump(o, f)
PY

set +e
report=$("$VENV/bin/kubernetes-validate" --strict -k "$K8S" "$work"/*.yaml 2>&1)
rc=$?
set -e
printf '%s\n' "$report"
if ((rc != 0)) || grep -qvE '^INFO ' <<<"$report"; then
  echo "error: schema validation failed (see above)" >&2
  exit 1
fi

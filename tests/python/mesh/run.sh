#!/usr/bin/env bash
# The mesh driven through boto3: trellis-control, trellis-proxy sidecars and
# two apps on loopback. Shares the App Mesh suite's venv; builds the two
# binaries unless TRELLIS_CONTROL_BIN and TRELLIS_PROXY_BIN name them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${APPMESH_VENV:-/tmp/venv-appmesh}"
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r "$here/../appmesh/requirements.txt"
fi
if [ -z "${TRELLIS_CONTROL_BIN:-}" ] || [ -z "${TRELLIS_PROXY_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet -p trellis-control -p trellis-proxy --bins)
fi
cd "$here"
exec timeout 300 "$venv/bin/pytest" -q -p no:cacheprovider "$@"

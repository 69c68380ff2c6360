#!/usr/bin/env bash
# Runs the `sh` blocks of the docs, in order and as written, so that the
# commands they show cannot rot: each page gets a fresh trellis-control
# (`serve` with its defaults) in an empty folder holding a link to
# examples/ (so paths read as from the repository's root), with
# trellis-control, trellis-proxy and the AWS CLI on PATH. Blocks fenced as
# `text` or `yaml` are shown, not run. Whatever a page starts in the
# background is stopped when it ends, even if a command fails.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${DOCS_VENV:-$HOME/.cache/trellis/venv-docs}"
if ! "$venv/bin/python" -c 'import boto3, awscli' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet awscli boto3
fi
bin_dir="$(dirname "${TRELLIS_CONTROL_BIN:-$root/target/debug/trellis-control}")"
export PATH="$bin_dir:$venv/bin:$PATH"

# The `sh` blocks of a markdown file, one script.
blocks() {
    awk '/^```sh$/ {on=1; next} /^```/ {on=0} on' "$1"
}

for page in docs/migration.md docs/operations.md examples/README.md; do
    work="$(mktemp -d)"
    script="$work/page.sh"
    { echo 'set -euo pipefail'; blocks "$root/$page"; } > "$script"
    ln -s "$root/examples" "$work/examples"
    (
        cd "$work"
        trellis-control serve --data-dir ./trellis-data >"$work/control.log" 2>&1 &
        control=$!
        page_group=""
        stop() {
            # The page's script leads its own process group (setsid below).
            if [[ -n "$page_group" ]]; then
                kill -- "-$page_group" 2>/dev/null || true
            fi
            kill "$control" 2>/dev/null || true
            wait 2>/dev/null || true
        }
        trap stop EXIT
        for _ in $(seq 100); do
            curl -s -o /dev/null http://127.0.0.1:9080/ && break
            sleep 0.1
        done
        echo "== $page"
        setsid bash "$script" &
        page_group=$!
        if ! wait "$page_group"; then
            echo "a command of $page failed; control plane log:" >&2
            cat "$work/control.log" >&2
            exit 1
        fi
    )
    rm -rf "$work"
done
echo "docs: every sh block ran"

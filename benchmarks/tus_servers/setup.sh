#!/usr/bin/env bash
# Install the reference tus servers that run.py benchmarks beside boothsync:
# @tus/server and @tus/file-store from package-lock.json into node_modules/,
# and tuspyserver into benchmarks/.venv-peers, a venv apart from boothsync's.
#
# Needs Node.js 20.19 or later with npm, and Python 3.11 (override with
# PYTHON=/path/to/python3.11).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
peers_venv="$here/../.venv-peers"
python="${PYTHON:-python3.11}"

npm ci --prefix "$here"

if [ ! -x "$peers_venv/bin/python" ]; then
    "$python" -m venv "$peers_venv"
fi
"$peers_venv/bin/pip" install --quiet -r "$here/requirements-peers.txt"

echo "installed: $(node --version) with @tus/server and @tus/file-store in $here/node_modules;"
echo "tuspyserver in $peers_venv ($("$peers_venv/bin/python" --version))"

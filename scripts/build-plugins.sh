#!/usr/bin/env bash
# Builds every WebAssembly component the tests and the demo use:
#   - the Rust plugins and fixtures, for wasm32-wasip2 (installs the target if missing);
#   - the Python fixture, with componentize-py in a private virtualenv under target/.
# Idempotent and incremental: re-running it only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "installing the wasm32-wasip2 target"
    rustup target add wasm32-wasip2
fi
cargo build --release --target wasm32-wasip2 \
    -p haven-plugin-example -p haven-plugin-lab -p haven-fixture-hostile \
    -p haven-script-smoke -p haven-fixture-hostile-script

venv=target/tools/py
if [ ! -x "$venv/bin/componentize-py" ]; then
    echo "installing componentize-py into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet componentize-py==0.25.1
fi
mkdir -p target/plugins
out=target/plugins/python-fixture.wasm
src=tests/fixtures/python-plugin/app.py
if [ ! -f "$out" ] || [ "$src" -nt "$out" ] || [ -n "$(find wit -newer "$out" -name '*.wit' | head -1)" ]; then
    "$venv/bin/componentize-py" -d wit/since_v0.1.0 -w haven:connector/inventory-connector@0.1.0 \
        componentize app -p tests/fixtures/python-plugin -o "$out"
fi

#!/usr/bin/env bash
# Haven's test command (README's second command; `.ci/run` runs exactly this):
# installs what is missing, builds the plugin components, checks formatting
# and lints, then runs every test of the workspace and prints the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build-plugins.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --target wasm32-wasip2 --quiet -p haven-plugin-sdk -p haven-plugin-example -p haven-plugin-lab -p haven-fixture-hostile -p haven-script-smoke -p haven-fixture-hostile-script -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
else
    cargo test --workspace --no-fail-fast
fi

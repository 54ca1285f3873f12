#!/usr/bin/env bash
# Prints "<sha256>  <dir>" for a released WIT directory under wit/: the hash of
# every file's relative path and content, in sorted order. The contract test
# recomputes it to prove released versions never change.
set -euo pipefail
cd "$(dirname "$0")/../wit"
dir=${1:?usage: scripts/wit-hash.sh since_vX.Y.Z (connectors) or script/since_vX.Y.Z (scripts)}
hash=$(cd "$dir" && find . -type f -name '*.wit' | LC_ALL=C sort | while read -r f; do
    printf '%s\n' "$f"; cat "$f"; done | sha256sum | cut -d' ' -f1)
echo "$hash  $dir"

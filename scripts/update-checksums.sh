#!/usr/bin/env bash
# Rebuilds the bundles of the committed fixtures and writes their SHA-256 to checksums/fixtures.sha256.
# Run it only when a change to the bundle bytes is intended (format, tool version, fixture), and say so in the commit.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
{
  echo "# sha256 of 'mm1pack convert fixtures/<name> -o <name>.mm1' (default options); checked by ChecksumTests"
  for d in fixtures/*/; do
    [ -f "$d/expected.json" ] || continue  # images/, tokenizer/ are inputs, not checkpoints
    n=$(basename "$d")
    .build/release/mm1pack convert "$d" -o "$out/$n.mm1" --quiet
    (cd "$out" && sha256sum "$n.mm1")
  done
} > checksums/fixtures.sha256
cat checksums/fixtures.sha256

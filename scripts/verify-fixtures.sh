#!/usr/bin/env bash
# CI: verifies the bundles built from every committed fixture with the mm1pack executable, end to end:
#   - the converted bundle's SHA-256 equals checksums/fixtures.sha256;
#   - `verify --reference <the fixture>`: the bundle against its own source (exit 0, KLD 0);
#   - int8 and int4 quantization, then `verify` with the reference the bundle carries (exit 0, recipe limits);
#   - a limit that cannot hold exits 1, a byte changed behind the digest exits 2 naming the tensor;
#   - the HTML report of one int4 bundle renders in headless Chromium with its chart (check-verify-report.sh).
#   MM1PACK=path/to/mm1pack scripts/verify-fixtures.sh      (default .build/debug/mm1pack)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
M=$(realpath "${MM1PACK:-.build/debug/mm1pack}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

expect() {  # expect STATUS command...
  local want=$1; shift
  set +e; "$@" >"$work/out" 2>"$work/err"; local got=$?; set -e
  if [ "$got" != "$want" ]; then
    echo "verify-fixtures: '$*' exited $got, expected $want" >&2; cat "$work/out" "$work/err" >&2; exit 1
  fi
}

n=0
for exp in fixtures/*/expected.json; do
  name=$(basename "$(dirname "$exp")")
  b="$work/$name.mm1"
  "$M" convert "fixtures/$name" -o "$b" -q
  (cd "$work" && grep " $name.mm1\$" "$repo/checksums/fixtures.sha256" | sha256sum -c --quiet -)
  expect 0 "$M" verify "$b" --reference "fixtures/$name" -q
  for bits in 8 4; do
    "$M" quantize "$b" -o "$work/$name-q$bits.mm1" --bits "$bits" -q
    expect 0 "$M" verify "$work/$name-q$bits.mm1" --json "$work/$name-q$bits.json"
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert r['passed'] and r['integrity']['ok'], r" "$work/$name-q$bits.json"
  done
  n=$((n + 1))
done

# Failure modes, on one bundle.
q4="$work/axlearn-moe-q4.mm1"
expect 1 "$M" verify "$q4" --max-mean-kld 1e-12 -q
python3 - "$q4" "$work/stale.mm1" <<'PY'
import json, struct, sys
data = bytearray(open(sys.argv[1], "rb").read())
hlen, doff = struct.unpack_from("<QQ", data, 16)
header = json.loads(data[96:96 + hlen])
t = next(t for t in header["tensors"] if t["name"] == "llm.layers.1.attn.q.weight")
data[doff + t["offset"]] ^= 0x01  # one bit of the first byte; the digest in the header stays as it was
open(sys.argv[2], "wb").write(data)
PY
expect 2 "$M" verify "$work/stale.mm1" -q
grep -q "llm.layers.1.attn.q.weight" "$work/err" || { echo "verify-fixtures: the error does not name the tensor" >&2; cat "$work/err" >&2; exit 1; }

"$M" verify "$q4" --html "$work/report.html" -q
scripts/check-verify-report.sh "$work/report.html" "$work/report.png"
echo "verify-fixtures: $n fixtures converted, checksummed, verified against their sources, quantized to int8 and int4 and verified; failure exits checked"

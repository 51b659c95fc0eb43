#!/usr/bin/env bash
# Install the gateway as operators do, from a built wheel, and use it outside the checkout.
# Usage: bash tests/wheel_check.sh          (CI runs it from .ci/run)
#
# Builds the wheel from a copy of the sources (so no build/ or *.egg-info is left in the tree),
# installs it into a fresh venv in a temporary folder, and from that folder runs what the README
# promises: `gateway demo`, a dev PKI (`gateway pki init` / `issue`), `gateway validate`,
# `gateway sign`, and `gateway verify` on the signed package (exit 0) and on a copy changed after
# signing (exit 1). Fails when any of it fails, e.g. when the schemas, the migrations or the
# demo's samples are missing from the wheel or read from the repository.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d -t gateway-wheel.XXXXXX)"
trap 'rm -rf "$work"' EXIT
started=$SECONDS

echo "== wheel: build"
mkdir "$work/src"
# what setuptools packages: the sources, the schemas the gateway/envelope/xsd link points at
(cd "$repo" && tar -c --exclude=__pycache__ pyproject.toml README.md gateway adapters xsd) \
  | tar -x -C "$work/src"
quiet() {  # run a command, showing its output only when it fails (pip warns about mirrors)
  "$@" >"$work/out.log" 2>&1 || { cat "$work/out.log"; echo "error: $*"; exit 1; }
}
quiet "$repo/.venv/bin/python" -m pip wheel -q --no-deps -w "$work/dist" "$work/src"
wheel=$(ls "$work"/dist/edxml_gateway-*.whl)
echo "   $(basename "$wheel")"

echo "== wheel: install into a fresh venv outside the checkout"
python3 -m venv "$work/venv"
quiet "$work/venv/bin/python" -m pip install -q "$wheel"
gateway="$work/venv/bin/gateway"
run="$work/run"
mkdir "$run"
cd "$run"  # nothing below can read the checkout by a relative path
"$work/venv/bin/python" - "$repo" <<'EOF'
import sys
from pathlib import Path

import gateway

where = Path(gateway.__file__).resolve()
checkout = Path(sys.argv[1]).resolve()
assert checkout not in where.parents, f"gateway imported from the checkout: {where}"
print(f"   gateway {gateway.__version__} from {where.parent}")
EOF

echo "== wheel: gateway demo"
"$gateway" demo >demo.log 2>&1 || { tail -40 demo.log; echo "error: gateway demo failed"; exit 1; }
tail -2 demo.log | sed 's/^/   /'

echo "== wheel: gateway pki, validate, sign, verify"
"$gateway" pki init pki >/dev/null
"$gateway" pki issue pki --agency 000.00.00.H49 >/dev/null
# an unsigned package from the demo's field sample, shipped in the wheel
"$work/venv/bin/python" -c '
import sys
from gateway.dev.samples import document
sys.stdout.buffer.write(document("000.00.00.H49", ["000.00.00.G12"], subject="wheel check"))
' >doc.edxml
"$gateway" validate doc.edxml
"$gateway" sign doc.edxml --key pki/000.00.00.H49.key.pem --cert pki/000.00.00.H49.cert.pem \
  -o signed.edxml
"$gateway" verify signed.edxml --trust pki/ca.cert.pem --crl pki/crl.pem >verify.txt \
  || { cat verify.txt; echo "error: gateway verify refused the signed package"; exit 1; }
head -1 verify.txt | sed 's/^/   /'
sed 's/wheel check/wheel CHECK/' signed.edxml >tampered.edxml
cmp -s signed.edxml tampered.edxml && { echo "error: the tampered copy is unchanged"; exit 1; }
status=0
"$gateway" verify tampered.edxml --trust pki/ca.cert.pem --crl pki/crl.pem >verify.txt \
  || status=$?
if [ "$status" != 1 ]; then
  cat verify.txt
  echo "error: gateway verify of a package changed after signing exited $status, not 1"
  exit 1
fi
grep -q SIGNATURE_DIGEST_MISMATCH verify.txt
echo "   tampered.edxml: INVALID (exit 1, SIGNATURE_DIGEST_MISMATCH)"
echo "== wheel: ok in $((SECONDS - started)) s"

#!/usr/bin/env bash
# Build dist/jumpgate.pyz: one executable zipapp (shiv) holding Jumpgate and its
# dependencies, for hosts that have python3 of the same minor version and nothing else.
#
# The wheels of every dependency are kept in build/_wheels (JUMPGATE_WHEELS): a build first
# tries them alone, with no package index, and goes to the index only for what is missing;
# so once one build has succeeded, later ones work offline. The zipapp is written to a
# temporary file and renamed over the old one only when it is complete: a failed build says
# why and leaves the previous pyz as it was.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-dist/jumpgate.pyz}
WHEELS=${JUMPGATE_WHEELS:-build/_wheels}
mkdir -p "$(dirname "$OUT")" "$WHEELS"
rm -rf build/lib  # setuptools reuses it: a module deleted from the tree would still ship
log=$(mktemp)
tmp=$(mktemp "$(dirname "$OUT")/.jumpgate.pyz.XXXXXX")
trap 'rm -f "$tmp" "$log"' EXIT

fail() {
    echo "build_pyz: $1; $OUT was left as it was" >&2
    sed -e 's/^/    /' "$log" | tail -n 15 >&2
    exit 1
}

# Our own wheel and every dependency's (setuptools and wheel too: they build ours).
wheel() { "$PY" -m pip wheel -q --disable-pip-version-check --find-links "$WHEELS" -w "$WHEELS" "$@" \
              . setuptools wheel >"$log" 2>&1; }
if ! wheel --no-index; then
    wheel --retries 2 --timeout 15 || fail "cannot get the dependencies: no package index reachable, and $WHEELS does not hold them all"
fi
"$PY" -m shiv --compressed --reproducible --compile-pyc \
    -p '/usr/bin/env python3' \
    -e appliance.cli.main:main \
    -o "$tmp" \
    --no-index --find-links "$WHEELS" jumpgate >"$log" 2>&1 || fail "shiv could not assemble the zipapp"
"$PY" build/fast_main.py "$tmp" >"$log" 2>&1 || fail "could not add the fast entry point"
chmod 0755 "$tmp"
mv -f "$tmp" "$OUT"
trap 'rm -f "$log"' EXIT
echo "built $OUT ($(du -h "$OUT" | cut -f1))"

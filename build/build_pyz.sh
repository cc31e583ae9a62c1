#!/usr/bin/env bash
# Build dist/jumpgate.pyz: one executable zipapp (shiv) holding Jumpgate and its
# dependencies, for hosts that have python3 of the same minor version and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
mkdir -p dist
rm -rf build/lib  # setuptools reuses it: a module deleted from the tree would still ship
rm -f dist/jumpgate.pyz
"$PY" -m shiv --compressed --reproducible --compile-pyc \
    -p '/usr/bin/env python3' \
    -e appliance.cli.main:main \
    -o dist/jumpgate.pyz \
    . >/dev/null
"$PY" build/fast_main.py dist/jumpgate.pyz  # skip shiv's bootstrap once extracted
echo "built dist/jumpgate.pyz ($(du -h dist/jumpgate.pyz | cut -f1))"

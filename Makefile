# Jumpgate developer entry points.  `make test` works on a fresh Debian machine.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PYTEST_WORKERS ?= 2

.PHONY: test test-fast typecheck docs venv system-deps pyz vendor vendor-check demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,build,docs]'
	touch $@

venv: $(VENV)/.installed

# Debian's real OpenSSH is the interop peer, and its chromium the browser of the web UI tests
# (Playwright drives it: tests/e2e/test_web_ui.py; no browser download); install them when missing.
system-deps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null || ! command -v rsync >/dev/null \
	    || ! command -v sftp >/dev/null || [ ! -x /usr/lib/openssh/sftp-server ]; then \
	  echo "installing openssh-client openssh-server rsync"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-client openssh-server rsync; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  echo "installing chromium"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	fi
	@mkdir -p /run/sshd

# One executable zipapp with every dependency inside (shiv), rebuilt only when a source
# changed; dependency wheels are kept in build/_wheels so a rebuild needs no package index.
PYZ_SOURCES := pyproject.toml build/build_pyz.sh build/fast_main.py \
	$(shell find appliance ssh_proto web_static -type f ! -path '*/__pycache__/*' ! -path '*/node_modules/*' ! -name '*.pyc' 2>/dev/null)

# xterm.js and its fit addon, from the npm registry at the versions web_static/package-lock.json pins:
# `make vendor` runs `npm ci` into web_static/node_modules (ignored by git) and copies the built
# files into web_static/vendor/, which is committed with the lock's digest, so that a pyz builds
# offline and without npm. A build refreshes vendor/ only when the lock no longer matches that
# digest (a fresh clone never needs npm; a changed lock does).
VENDOR = web_static/vendor
vendor:
	cd web_static && npm ci --no-audit --no-fund --ignore-scripts
	mkdir -p $(VENDOR)
	cp web_static/node_modules/@xterm/xterm/lib/xterm.js web_static/node_modules/@xterm/xterm/css/xterm.css \
	   web_static/node_modules/@xterm/addon-fit/lib/addon-fit.js $(VENDOR)/
	cp web_static/node_modules/@xterm/xterm/LICENSE $(VENDOR)/LICENSE.xterm
	cp web_static/node_modules/@xterm/addon-fit/LICENSE $(VENDOR)/LICENSE.addon-fit
	sha256sum web_static/package-lock.json | cut -d' ' -f1 > $(VENDOR)/lock.sha256

vendor-check:
	@if [ "$$(sha256sum web_static/package-lock.json | cut -d' ' -f1)" != "$$(cat $(VENDOR)/lock.sha256 2>/dev/null)" ]; then \
	  echo "web_static/package-lock.json changed: refreshing web_static/vendor (npm ci)"; $(MAKE) vendor; fi

# The venv is only the tool that builds (order-only): reinstalling it changes nothing inside the pyz.
dist/jumpgate.pyz: $(PYZ_SOURCES) | $(VENV)/.installed vendor-check
	PY=$(PY) bash build/build_pyz.sh

pyz: dist/jumpgate.pyz

# The all-in-one appliance (auth, proxy, node, web; embedded SQLite) on the usual ports.
demo: pyz
	./dist/jumpgate.pyz start

# Everything: the tests, the doctests of ssh_proto/ and appliance/ (pyproject.toml's testpaths
# and --doctest-modules), mypy on ssh_proto (tests/test_typecheck.py), real OpenSSH (interop)
# and the built pyz as processes (e2e).
test: venv system-deps
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q tests ssh_proto appliance

# ssh_proto passes mypy (pyproject.toml's [tool.mypy]); `make test` runs it as tests/test_typecheck.py.
typecheck: venv
	$(PY) -m mypy

# ssh_proto's API reference, from its docstrings, in build/docs/ (ignored by git). Every
# module is named: pdoc follows ssh_proto's __all__, which lists names, not submodules (the
# subpackages have none, so their modules come with them).
DOC_MODULES = ssh_proto ssh_proto.trio_io ssh_proto.examples \
	$(subst /,.,$(basename $(filter-out %/__init__.py %/_record.py,$(wildcard ssh_proto/*.py))))

docs: venv
	rm -rf build/docs
	$(PY) -m pdoc --docformat restructuredtext -o build/docs $(DOC_MODULES)

# The inner loop: the same without the interop and e2e tests (no OpenSSH, no pyz build).
test-fast: venv
	$(PY) -m pytest -n $(PYTEST_WORKERS) -q -m "not interop" --ignore=tests/interop --ignore=tests/e2e \
	    tests ssh_proto appliance

bench: venv system-deps
	$(PY) tests/bench/bench_ssh.py
	$(PY) tests/bench/bench_cold_start.py
	$(PY) tests/bench/bench_appliance.py

clean:
	rm -rf $(VENV) dist build/_work build/_wheels build/docs .pytest_cache .mypy_cache

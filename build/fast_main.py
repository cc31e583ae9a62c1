"""Give a shiv-built zipapp a ``__main__.py`` that skips shiv's bootstrap once it has run.

    python build/fast_main.py dist/jumpgate.pyz

shiv's bootstrap extracts site-packages to ``~/.shiv/<pyz name>_<build id>/`` on the first
run, and on every run imports compileall, subprocess, shutil, zipfile, json and its own
modules (compiled from the zip each time) to find that directory again: about a third of
``jumpgate ssh``'s time when the session daemon serves it. The ``__main__.py`` written
here knows the build id (read from the archive's ``environment.json`` at build time) and,
when the extracted directory exists and no ``SHIV_*`` variable asks for shiv's special
behaviour, puts it on ``sys.path`` as the bootstrap does (``site.addsitedir``, placed
before other site-packages) and calls the entry point; otherwise it runs shiv's bootstrap,
unchanged. The archive is rewritten entry by entry, keeping its shebang and dates.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile

TEMPLATE = '''\
# Jumpgate's entry (written by build/fast_main.py): shiv's bootstrap, skipped when
# site-packages was already extracted (the bootstrap itself extracts it on first run).
import os
import sys

BUILD_ID = {build_id!r}
ENTRY_MODULE, ENTRY_FUNCTION = {module!r}, {function!r}


def _extracted_site_packages():
    if any(name.startswith("SHIV_") for name in os.environ):
        return None
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    path = os.path.join(os.path.expanduser("~/.shiv"), name + "_" + BUILD_ID, "site-packages")
    return path if os.path.isdir(path) else None


def _use(site_packages):
    import site
    length = len(sys.path)
    first = next((i for i, p in enumerate(sys.path)
                  if os.path.basename(p.rstrip("/")) in ("site-packages", "dist-packages")), None)
    index = first or length  # as shiv's bootstrap: an index of 0 counts as none
    site.addsitedir(site_packages)
    sys.path[:] = sys.path[:index] + sys.path[length:] + sys.path[index:length]


_site_packages = _extracted_site_packages()
if _site_packages is None:
    import _bootstrap
    _bootstrap.bootstrap()
else:
    _use(_site_packages)
    import importlib
    sys.exit(getattr(importlib.import_module(ENTRY_MODULE), ENTRY_FUNCTION)())
'''


def _shebang(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(512)
    return head[:head.index(b"\n") + 1] if head.startswith(b"#!") else b""


def rewrite(path: str) -> None:
    with zipfile.ZipFile(path) as archive:
        env = json.loads(archive.read("environment.json"))
        if env.get("script") or env.get("preamble") or env.get("no_modify") or not env.get("entry_point"):
            raise SystemExit("fast_main: only plain entry-point zipapps are supported")
        module, _, function = env["entry_point"].partition(":")
        main = TEMPLATE.format(build_id=env["build_id"], module=module, function=function)
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    tmp = path + ".tmp"
    with open(tmp, "wb") as out:
        out.write(_shebang(path))
        with zipfile.ZipFile(out, "w") as archive:
            for info, data in entries:
                if info.filename == "__main__.py":
                    data = main.encode()
                archive.writestr(info, data)
    os.chmod(tmp, os.stat(path).st_mode)
    os.replace(tmp, path)


if __name__ == "__main__":
    rewrite(sys.argv[1])

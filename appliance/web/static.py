"""The web UI's static files: the ``web_static`` package's data, read with importlib.resources.

``web_static/`` is a package (an ``__init__.py`` and package data in pyproject.toml) so that
the wheel, and so shiv's pyz, carry it, and so that it is read the same way from a checkout, a
wheel or a zipapp. The files are read once, at start, into a table by name: a request names a
key of that table or gets a 404, so no request path ever reaches the file system.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["StaticFile", "load_static"]

CONTENT_TYPES: Mapping[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str


def _walk(folder: Traversable, prefix: str = "") -> Iterator[tuple[str, Traversable]]:
    for entry in folder.iterdir():
        if entry.name.startswith((".", "_")) or entry.name == "node_modules":
            continue
        if entry.is_dir():
            yield from _walk(entry, f"{prefix}{entry.name}/")
        else:
            yield f"{prefix}{entry.name}", entry


def load_static(package: str = "web_static") -> dict[str, StaticFile]:
    """Every servable file of ``package`` by its relative name (``app.css``, ``vendor/x.js``).

    >>> table = load_static()
    >>> table["app.css"].content_type
    'text/css; charset=utf-8'
    """
    table = {}
    for name, entry in _walk(resources.files(package)):
        suffix = name[name.rfind("."):] if "." in name else ""
        if suffix in CONTENT_TYPES:
            table[name] = StaticFile(entry.read_bytes(), CONTENT_TYPES[suffix])
    return table

"""The Trio layer drives the sans-IO core through the Connection facade only (STYLE.md, issue 13).

As h11's ``Connection`` is all a caller touches, ``ssh_proto/trio_io/`` may call nothing on
the core but :class:`ssh_proto.connection.Connection`'s public methods and properties: not
its layers (``transport``, ``channels``, ``client_auth``, ``server_auth``), not a private
field of anything reached through it. When the Trio layer needs something, the facade grows
a method. The scan reads the source (an AST), so it fails the moment an edit reaches in.
"""
from __future__ import annotations

import ast
import pathlib

import pytest

import ssh_proto
from ssh_proto.connection import Connection

TRIO_IO = pathlib.Path(ssh_proto.__file__).parent / "trio_io"
#: The core's layers: behind the facade.
LAYERS = frozenset({"transport", "channels", "client_auth", "server_auth"})


def _chain(node: ast.AST) -> list[str]:
    """``self.conn.core.transport.x`` -> ['self', 'conn', 'core', 'transport', 'x']."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        names.append(node.id)
    return names[::-1]


def reaches_behind_the_facade(source: str) -> list[str]:
    """Every ``….core.<layer>`` and ``….core.<…>._private`` access, and any attribute named
    after a layer, in ``source``; as 'line: dotted.name' strings."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        chain = _chain(node)
        if node.attr in LAYERS:
            found.append(f"{node.lineno}: {'.'.join(chain)}")
        elif "core" in chain[:-1] and any(part.startswith("_") and not part.startswith("__")
                                          for part in chain[chain.index("core") + 1:]):
            found.append(f"{node.lineno}: {'.'.join(chain)}")
    return sorted(set(found))


def test_the_scan_finds_what_it_is_meant_to_find():
    bad = ("self.core.transport.peer_ext_info\n"
           "conn.core.channels.send_data(1, b'')\n"
           "x = self.conn.core.server_auth._pending\n"
           "core.client_auth.request_none()\n"
           "self.core._events.clear()\n")
    assert {hit.split(":")[0] for hit in reaches_behind_the_facade(bad)} == {"1", "2", "3", "4", "5"}
    assert reaches_behind_the_facade("self.core.send_data(1, b'')\nself._channels[1]\n") == []


@pytest.mark.parametrize("path", sorted(TRIO_IO.glob("*.py")), ids=lambda p: p.name)
def test_trio_io_drives_the_core_through_the_facade_only(path):
    assert reaches_behind_the_facade(path.read_text()) == [], f"{path.name} reaches behind the Connection facade"


def test_trio_io_calls_only_what_the_facade_has():
    """Every ``core.<name>`` used in trio_io is a public member of Connection."""
    public = {name for name in dir(Connection) if not name.startswith("_")}
    public |= {"role", "options", "username", "closed", "no_more_sessions"}  # instance attributes
    used = set()
    for path in TRIO_IO.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "core":
                used.add(node.attr)
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "core":
                used.add(node.attr)
    assert used and used <= public - LAYERS, sorted(used - public)


def test_the_pairs_example_uses_the_facade():
    import pairs
    assert "channels.send_data" not in pairs.__doc__ and "pair.client.send_data(" in pairs.__doc__

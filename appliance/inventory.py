"""The node inventory's one record: what the cluster knows about a server, everywhere.

The auth service stores a :class:`NodeRecord` per registered server (``storage``), lists them
to admins and to proxies (the auth API's ``list_nodes``, the push stream), and the proxy
routes by them and hands them to ``jumpgate ls`` (``jumpgate-nodes``). It is the same record
at every step, so that a rule such as "how is a tunnelled node written" is answered once:

* ``kind`` is ``node`` or ``proxy`` (joined with a token; they heartbeat) or ``openssh`` (an
  agentless sshd an admin added).
* ``addr`` is where the proxy dials it, ``host:port`` (``[v6]:port``), set at the join or by
  the admin; ``""`` when there is none. A node reachable through a reverse tunnel says so
  with ``tunnel`` (set by its heartbeats), never with a made-up address: the proxy dials
  :attr:`NodeRecord.endpoint`, and ``jumpgate ls`` shows :attr:`NodeRecord.shown_addr`.
* ``addresses`` and ``host_key`` are what its host certificate was issued for; they stay
  with the auth service (:meth:`NodeRecord.to_wire`, the listing form, leaves them out).

>>> web = NodeRecord("web1", "node", "10.0.0.5:3022", {"env": "dev"})
>>> web.endpoint, web.shown_addr, NodeRecord("edge", "node", tunnel=True).shown_addr
(('10.0.0.5', 3022), '10.0.0.5:3022', 'tunnel')
>>> NodeRecord.from_wire(web.to_wire()) == web
True
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .addresses import AddressError, parse_endpoint

__all__ = ["NODE_KINDS", "NodeRecord", "NodeRecordError"]

#: What a registered server may be.
NODE_KINDS = ("node", "proxy", "openssh")
MAX_NAME = 253            # a DNS name
MAX_LABELS_ON_WIRE = 128  # a bound on what a peer may send, above what the auth service stores
MAX_LABEL_TEXT = 256


class NodeRecordError(ValueError):
    """A node map from the wire is malformed (the message says which field)."""


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A registered server (see the module docstring for each field's rule)."""

    name: str
    kind: str
    addr: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    last_seen: float = 0.0
    tunnel: bool = False
    addresses: tuple[str, ...] = ()
    host_key: bytes | None = None
    created: float = 0.0

    @property
    def endpoint(self) -> tuple[str, int] | None:
        """Where the proxy connects: the registered host and port (None: no address to dial)."""
        try:
            return parse_endpoint(self.addr) if self.addr else None
        except AddressError:
            return None

    @property
    def shown_addr(self) -> str:
        """The address column of ``jumpgate ls`` and ``ctl nodes ls``."""
        return self.addr or ("tunnel" if self.tunnel else "-")

    def to_wire(self) -> dict[str, Any]:
        """The listing form (the auth API's ``list_nodes``, ``jumpgate-nodes``, ``ls --format
        json``): no host key and no certified addresses."""
        return {"name": self.name, "kind": self.kind, "addr": self.addr, "labels": dict(self.labels),
                "last_seen": self.last_seen, "tunnel": self.tunnel}

    @classmethod
    def from_wire(cls, data: Any) -> NodeRecord:
        """Validate one node map (from the auth API or from the proxy): types and sizes,
        so a peer cannot hand us anything else; NodeRecordError if not."""
        if not isinstance(data, Mapping):
            raise NodeRecordError("a node must be a map")
        name, addr, kind = (_text(data.get(k, d), k, MAX_NAME) for k, d in
                            (("name", None), ("addr", None), ("kind", "node")))
        if not name:
            raise NodeRecordError("a node needs a name")
        last_seen = data.get("last_seen") or 0.0
        if isinstance(last_seen, bool) or not isinstance(last_seen, (int, float)) or not math.isfinite(last_seen):
            raise NodeRecordError("node field 'last_seen' must be a number")
        tunnel = data.get("tunnel", False)
        if not isinstance(tunnel, bool):
            raise NodeRecordError("node field 'tunnel' must be true or false")
        return cls(name, kind, addr, _labels(data.get("labels") or {}), float(last_seen), tunnel)


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise NodeRecordError(f"node field {name!r} must be a string of at most {limit} characters")
    return value


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_LABELS_ON_WIRE:
        raise NodeRecordError("labels must be a small map of strings")
    return {_text(k, "label name", MAX_LABEL_TEXT): _text(v, "label value", MAX_LABEL_TEXT)
            for k, v in value.items()}

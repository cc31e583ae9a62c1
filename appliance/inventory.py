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
* ``offline`` is not stored: the auth service sets it when it lists nodes (:func:`is_offline`).

**Liveness.** A joined node or proxy heartbeats every :data:`HEARTBEAT_INTERVAL` seconds; one
that has missed :data:`MISSED_HEARTBEATS` in a row (nothing for three intervals) is *offline*:
``jumpgate ls`` and ``jumpgate ssh LABEL=VALUE`` leave it out (``ls --all`` shows it, marked),
until its next heartbeat brings it back. An agentless ``openssh`` node never heartbeats, so it
is never offline for that. The auth service may also be told that a node went away at once
(``mark_offline``: a dropped reverse tunnel), which its next heartbeat undoes.

**Labels** are ``key=value`` pairs, and their rules are here too, for everyone who reads or
writes one (``start --labels``, the TOML ``[node] labels``, command labels, ``ctl nodes add
--labels``, ``jumpgate ls`` filters, the auth service):

* a key is a letter or digit, then letters, digits and ``_ . / -``, at most 63 in all
  (``env``, ``team/db``, ``k8s.io/app``); a value is printable text of at most 256
  characters (``""`` included); a node has at most 32 labels;
* written as text they are ``key=value`` items separated by commas (:func:`parse_labels`,
  what ``--labels`` and Teleport's ``tsh ls env=prod,role=web`` take); ``jumpgate ls``
  also takes them as separate words. A key given twice is refused, whatever its values:
  ``env=a,env=b`` is a typo, not a choice;
* a filter matches a node that carries every one of its pairs (:func:`labels_match`).

>>> web = NodeRecord("web1", "node", "10.0.0.5:3022", {"env": "dev"})
>>> is_offline(web, now=60.0), is_offline(NodeRecord("db1", "node", last_seen=100.0), now=100.0 + 91)
(False, True)
>>> web.endpoint, web.shown_addr, NodeRecord("edge", "node", tunnel=True).shown_addr
(('10.0.0.5', 3022), '10.0.0.5:3022', 'tunnel')
>>> NodeRecord.from_wire(web.to_wire()) == web
True
>>> parse_labels("env=prod,role=web"), parse_labels(["env=prod", "role=web"]), format_labels({"b": "2", "a": "1"})
({'env': 'prod', 'role': 'web'}, {'env': 'prod', 'role': 'web'}, 'a=1,b=2')
>>> parse_labels("env=a,env=b")
Traceback (most recent call last):
...
appliance.inventory.LabelError: label 'env' is given twice (env=a, env=b): give each key once
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .addresses import AddressError, parse_endpoint

__all__ = ["HEARTBEAT_INTERVAL", "HEARTBEAT_KINDS", "MAX_LABELS", "MISSED_HEARTBEATS", "NODE_KINDS", "LabelError", "NodeRecord", "NodeRecordError", "check_label",
           "check_labels", "format_labels", "is_offline", "labels_match", "parse_labels"]

#: What a registered server may be.
NODE_KINDS = ("node", "proxy", "openssh")
#: What heartbeats: joined with a token (an agentless ``openssh`` node does not).
HEARTBEAT_KINDS = ("node", "proxy")
#: Seconds between a node's heartbeats, and how many it may miss before it counts as offline.
HEARTBEAT_INTERVAL = 30.0
MISSED_HEARTBEATS = 3
MAX_NAME = 253            # a DNS name
MAX_LABELS = 32
MAX_LABEL_VALUE = 256
MAX_LABELS_ON_WIRE = 128  # a bound on what a peer may send, above what the auth service stores
MAX_LABEL_TEXT = 256
LABEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_./-]{0,62}")


class NodeRecordError(ValueError):
    """A node map from the wire is malformed (the message says which field)."""


class LabelError(ValueError):
    """A label breaks the rules above; the message names it and says what is allowed."""


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
    offline: bool = False
    tunnel_addr: str = ""   # a proxy's: where nodes dial its reverse tunnels (its heartbeat says)

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
                "last_seen": self.last_seen, "tunnel": self.tunnel, "offline": self.offline}

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
        tunnel, offline = data.get("tunnel", False), data.get("offline", False)
        if not isinstance(tunnel, bool) or not isinstance(offline, bool):
            raise NodeRecordError("node fields 'tunnel' and 'offline' must be true or false")
        return cls(name, kind, addr, _labels(data.get("labels") or {}), float(last_seen), tunnel, offline=offline)


def is_offline(node: NodeRecord, now: float, interval: float = HEARTBEAT_INTERVAL) -> bool:
    """Whether ``node`` has missed :data:`MISSED_HEARTBEATS` heartbeats of ``interval`` seconds
    by ``now`` (never for a node that does not heartbeat)."""
    return node.kind in HEARTBEAT_KINDS and now - node.last_seen > MISSED_HEARTBEATS * interval


def _text(value: Any, name: str, limit: int) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise NodeRecordError(f"node field {name!r} must be a string of at most {limit} characters")
    return value


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or len(value) > MAX_LABELS_ON_WIRE:
        raise NodeRecordError("labels must be a small map of strings")
    return {_text(k, "label name", MAX_LABEL_TEXT): _text(v, "label value", MAX_LABEL_TEXT)
            for k, v in value.items()}


# ------------------------------------------------------------------------------ labels

def check_label(key: Any, value: Any) -> None:
    """One ``key=value`` pair by the rules above; LabelError if not."""
    if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
        raise LabelError(f"invalid label name {str(key)[:40]!r}: a letter or digit, then letters, digits "
                         "and _ . / - (at most 63)")
    if not isinstance(value, str) or len(value) > MAX_LABEL_VALUE or not value.isprintable():
        raise LabelError(f"label {key!r}: the value must be printable text of at most {MAX_LABEL_VALUE} characters")


def check_labels(labels: Any) -> dict[str, str]:
    """A node's labels (a map; None is none) by the rules above, as a dict; LabelError if not."""
    if labels is None:
        return {}
    if not isinstance(labels, Mapping) or len(labels) > MAX_LABELS:
        raise LabelError(f"labels must be a map of at most {MAX_LABELS} entries")
    for key, value in labels.items():
        check_label(key, value)
    return dict(labels)


def parse_labels(text: str | Iterable[str]) -> dict[str, str]:
    """``"env=dev,team=db"`` (or several such words) -> ``{"env": "dev", "team": "db"}``;
    LabelError for an item without ``=``, a key given twice or a pair that breaks the rules."""
    words = [text] if isinstance(text, str) else list(text)
    labels: dict[str, str] = {}
    for item in (p.strip() for word in words for p in word.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LabelError(f"bad label {item[:64]!r}: expected key=value (several: key=value,key=value)")
        if key in labels:
            raise LabelError(f"label {key[:40]!r} is given twice ({key}={labels[key]}, {item[:64]}): "
                             "give each key once")
        check_label(key, value)
        labels[key] = value
    if len(labels) > MAX_LABELS:
        raise LabelError(f"at most {MAX_LABELS} labels")
    return labels


def format_labels(labels: Mapping[str, str]) -> str:
    """The text form :func:`parse_labels` reads back: ``key=value`` pairs by key, comma separated."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items()))


def labels_match(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    """Every wanted key=value pair is among the node's labels."""
    return all(labels.get(k) == v for k, v in wanted.items())

"""Names the cluster's host CA vouches for: node names, addresses, the cluster name.

This module owns the syntax rules every service and the client share (docs/security.md
"Joining the cluster" J1, J5, J9); it does no I/O but reading the public suffix list once.

* A **node name** (nodes, proxies, agentless OpenSSH nodes) is one lower-case DNS label,
  ``[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?``: it becomes the principals ``NAME`` (for
  ``ssh -J proxy root@NAME``) and ``NAME.CLUSTER``, a ``Host`` line in ``jumpgate
  config`` and a known_hosts pattern. A dotted name such as ``github.com`` would extend
  the cluster's host CA to a host on the internet, so it is refused (J1).
* An **address** (a host certificate principal besides the names) is an IP address or a
  DNS name. Only an admin approves one (J3).
* The **cluster name** is a DNS name that is not a public suffix (``com``, ``prod``,
  ``co.uk``, ``github.io``, ...: the kept Public Suffix List of the ``publicsuffixlist``
  package, ICANN and private sections, without its "unknown TLDs are public" default):
  it becomes ``Host *.CLUSTER`` in users' ssh_config and ``*.CLUSTER`` in their
  known_hosts, and ``*.com`` there would trust the cluster's CA for every ``.com`` host.
* A node's **qualified name** is ``NAME.CLUSTER`` (:func:`qualified`), a principal of its host
  certificate beside ``NAME``; :func:`strip_cluster` is the one place that takes the
  ``.CLUSTER`` off again (the proxy's routing, the client's host check), case-insensitively
  and only as a suffix; :func:`under_cluster` tells a name at or below the cluster's domain.

>>> check_node_name("DB1"), is_node_name("github.com"), is_public_suffix("prod"), is_public_suffix("acme")
('db1', False, True, False)
>>> qualified("db1", "acme"), strip_cluster("DB1.Acme", "acme"), strip_cluster("db1.acme.io", "acme")
('db1.acme', 'DB1', 'db1.acme.io')
"""
from __future__ import annotations

import functools
import ipaddress
import re
from typing import Any

__all__ = ["InvalidName", "check_dns_name", "check_node_name", "is_dns_name", "is_ip_address", "is_node_name",
           "is_public_suffix", "qualified", "strip_cluster", "under_cluster"]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NODE_NAME = re.compile(_LABEL)
_DNS_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


class InvalidName(ValueError):
    """A name breaks these rules; the message says what is allowed."""


def is_node_name(name: Any) -> bool:
    """One lower-case DNS label (already folded: ``DB1`` is not one, ``db1`` is)."""
    return isinstance(name, str) and _NODE_NAME.fullmatch(name) is not None


def is_dns_name(name: Any) -> bool:
    """A lower-case DNS name of one or more labels, at most 253 characters."""
    return isinstance(name, str) and _DNS_NAME.fullmatch(name) is not None


def is_ip_address(text: Any) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def check_node_name(name: Any, what: str = "node name") -> str:
    """``name`` folded to lower case if it is one DNS label (J1); else InvalidName."""
    text = name.lower() if isinstance(name, str) else ""
    if not is_node_name(text):
        raise InvalidName(f"invalid {what} {str(name)[:64]!r}: use one DNS label (a-z, 0-9 and '-', "
                         "at most 63 characters, no dots)")
    return text


def check_dns_name(name: Any, what: str = "name") -> str:
    """``name`` folded to lower case if it is a DNS name; else InvalidName."""
    text = name.lower() if isinstance(name, str) else ""
    if not is_dns_name(text):
        raise InvalidName(f"invalid {what} {str(name)[:64]!r}: use a DNS name (a-z, 0-9, '-', '.')")
    return text


@functools.cache
def _suffix_list():
    # Imported here: only login, config and the auth service's start need it (~20 ms to parse).
    from publicsuffixlist import PublicSuffixList
    return PublicSuffixList(only_icann=False, accept_unknown=False)


def is_public_suffix(name: str) -> bool:
    """True when ``name`` is listed as a public suffix (``com``, ``prod``, ``co.uk``), so
    that ``*.name`` names hosts of many owners (J9)."""
    return bool(name) and _suffix_list().is_public(name.lower().rstrip("."))


def qualified(name: str, cluster: str) -> str:
    """``NAME.CLUSTER``, the name a node's host certificate carries under the cluster's domain
    (just ``NAME`` when there is no cluster name)."""
    return f"{name}.{cluster}" if cluster else name


def strip_cluster(host: str, cluster: str) -> str:
    """``host`` without its ``.CLUSTER`` suffix (case-insensitively; the rest as written), or
    ``host`` itself when it does not end in one (``.CLUSTER`` alone is not a name)."""
    suffix = "." + cluster.lower()
    if cluster and host.lower().endswith(suffix) and len(host) > len(suffix):
        return host[:-len(suffix)]
    return host


def under_cluster(name: str, cluster: str) -> bool:
    """``name`` is the cluster name or below it (a node's ``NAME.CLUSTER``)."""
    name, cluster = name.lower(), cluster.lower()
    return name == cluster or name.endswith("." + cluster)


def named_node(target: str, cluster: str) -> str | None:
    """The node name ``target`` asks for (``db1``, ``db1.CLUSTER``, folded), None when it is
    an address (an IP, or a host name of more than one label): the proxy routes a name to
    the address the node registered, an address to the node registered there."""
    name = strip_cluster(target.lower(), cluster)
    return name if is_node_name(name) else None


def port_ignored_warning(target: str, cluster: str, port: int | None, flag: str = "-p") -> str | None:
    """Why ``flag PORT`` does nothing for ``target``, or None when it applies (no port, or an address).

    A named node is reached at the port it registered (``ssh -J proxy root@web1`` asks for
    port 22 while the node listens on 3022): ignoring the port is the rule, said aloud."""
    name = named_node(target, cluster) if port else None
    if name is None:
        return None
    return (f"{flag} {port} ignored: node {name!r} is reached at the address it registered "
            f"({flag} applies to a node given by its address)")

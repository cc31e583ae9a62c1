"""What the client trusts the cluster's host CA for, and how it checks a proxy and a node.

This module owns the client's half of docs/security.md "Joining the cluster":

* J6 — **the known_hosts line** ``jumpgate login`` writes (and ``jumpgate config``
  refreshes) trusts the host CA for the cluster's names only, never ``*``: the proxy's
  SSH address as users dial it, ``*.CLUSTER`` (unless the cluster name is a public suffix,
  J9), and each node's bare name as ``ssh -J proxy root@NAME`` reaches it (``NAME`` on
  port 22, ``[NAME]:*`` on others). OpenSSH cannot check what kind of host a certificate is
  for, so the patterns are what keeps a cluster certificate from vouching for
  ``github.com``.
* J7 — **bare names** come from the proxy's node list and are used only when they are one
  DNS label (:func:`appliance.names.is_node_name`): a node registered as ``github.com``
  before J1 never reaches a ``Host`` line or a pattern.
* J8 — **the certificate's kind**. ``jumpgate ssh`` (and the session daemon) accept the
  proxy only with a ``proxy:NAME`` host certificate valid for the address dialled, and a
  node only with a ``node:NAME`` one — ``NAME`` being the node asked for when it is asked
  for by name — valid for the name typed and issued by a CA the known_hosts trusts for
  ``NAME.CLUSTER`` (reached through the authenticated proxy, which routes to registered
  nodes only). A node's valid certificate presented where the proxy is expected is refused.

>>> known_hosts_patterns("acme", [("jump.acme.io", 3023)], ["db1", "github.com"])
['[jump.acme.io]:3023', '*.acme', '[*.acme]:*', 'db1', '[db1]:*']
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from ssh_proto.certs import validate_host_certificate
from ssh_proto.errors import CertificateError, HostKeyNotVerifiable
from ssh_proto.keys import CERT_TYPE_HOST, Certificate, PublicKey
from ssh_proto.known_hosts import MARKER_CERT_AUTHORITY, KnownHosts

from ..names import is_dns_name, is_node_name, named_node, qualified

__all__ = ["HostCheck", "cluster_wildcard_allowed", "host_ca_of", "known_hosts_line", "known_hosts_patterns",
           "node_host_check", "proxy_host_check", "safe_node_names"]

HostCheck = Callable[[PublicKey | Certificate], None]


def cluster_wildcard_allowed(cluster: str) -> bool:
    """``*.CLUSTER`` may name the cluster's hosts: a DNS name that is not a public suffix (J9)."""
    if not is_dns_name(cluster):
        return False
    from ..names import is_public_suffix  # reads the suffix list: login and config only
    return not is_public_suffix(cluster)


def safe_node_names(names: Iterable[str]) -> list[str]:
    """J7: the names usable as ``Host`` lines and patterns (one DNS label each), in order."""
    return list(dict.fromkeys(n for n in names if is_node_name(n)))


def _endpoint_pattern(host: str, port: int) -> str:
    return host.lower() if port == 22 else f"[{host.lower()}]:{port}"


def known_hosts_patterns(cluster: str, proxies: Sequence[tuple[str, int]], node_names: Iterable[str]) -> list[str]:
    """J6: the host patterns of the ``@cert-authority`` line, in a stable order."""
    patterns = [_endpoint_pattern(host, port) for host, port in proxies if host]
    if cluster_wildcard_allowed(cluster):
        patterns += [f"*.{cluster}", f"[*.{cluster}]:*"]
    for name in safe_node_names(node_names):
        patterns += [name, f"[{name}]:*"]
    return list(dict.fromkeys(patterns))


def known_hosts_line(host_ca: PublicKey, patterns: Sequence[str], comment: str = "jumpgate host CA") -> str:
    if not patterns:
        raise ValueError("a @cert-authority line needs host patterns")
    return f"@cert-authority {','.join(patterns)} {host_ca.to_line(comment)}\n"


def host_ca_of(known_hosts: KnownHosts) -> PublicKey | None:
    """The first host CA the file trusts (the one ``jumpgate login`` wrote)."""
    for entry in known_hosts.entries:
        if entry.marker == MARKER_CERT_AUTHORITY and isinstance(entry.key, PublicKey):
            return entry.key
    return None


def _host_certificate(key: PublicKey | Certificate, kind: str, where: str) -> Certificate:
    if not isinstance(key, Certificate) or key.cert_type != CERT_TYPE_HOST:
        raise HostKeyNotVerifiable(f"{where} presented no host certificate")
    if not key.key_id.startswith(f"{kind}:"):
        raise HostKeyNotVerifiable(f"{where} presented the certificate of {key.key_id[:80]!r}, not of a "
                                   f"{kind} ({kind}:NAME)")
    return key


def proxy_host_check(known_hosts: KnownHosts, host: str, port: int) -> HostCheck:
    """J8: the proxy at host:port, by a ``proxy:`` certificate the known_hosts trusts there."""
    def verify(key: PublicKey | Certificate) -> None:
        cert = _host_certificate(key, "proxy", f"the host at {host}:{port}")
        known_hosts.check(host, port, cert)

    return verify


_named = named_node  # the node name ``target`` asks for, None for an address


def node_host_check(known_hosts: KnownHosts, cluster: str, target: str, port: int) -> HostCheck:
    """J8: the node asked for as ``target`` (a name or an address), through the proxy."""
    wanted = _named(target, cluster)

    def verify(key: PublicKey | Certificate) -> None:
        cert = _host_certificate(key, "node", f"node {target!r}")
        name = cert.key_id.partition(":")[2]
        if wanted is not None and name != wanted:
            raise HostKeyNotVerifiable(f"node {target!r} presented the certificate of node {name[:64]!r}")
        try:  # the CA is trusted for the cluster's names
            known_hosts.check(qualified(name, cluster) if cluster else target, 22, cert)
        except HostKeyNotVerifiable:
            known_hosts.check(target, port, cert)  # e.g. no *.CLUSTER (J9): the bare name's pattern
        try:  # and the certificate names what the user typed
            validate_host_certificate(cert, hostname=target.lower(), trusted_cas=[cert.signature_key])
        except CertificateError as exc:
            raise HostKeyNotVerifiable(f"node {target!r}: {exc}") from None

    return verify

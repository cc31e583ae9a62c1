"""The accounting key of a client address: what every per-source bound of the appliance counts by.

One host usually owns a whole IPv6 /64 (SLAAC, privacy addresses: RFC 4941 rotates the low
64 bits at will), so counting IPv6 clients by their full address gives one host 2**64
identities. Every per-source bound in ``appliance/`` — the web service's connection cap and
rate limit (docs/security.md W1), the audit log's coalescing of refusals (U2) — counts by
:func:`accounting_key` instead, so that they agree on who "one source" is:

* IPv4: the address itself;
* IPv4-mapped IPv6 (``::ffff:10.0.0.1``, what a dual-stack socket reports): the IPv4 address;
* other IPv6: the /64 network, e.g. ``2001:db8::/64``;
* anything else (a Unix socket path, ``"?"``): the text as it is.

>>> accounting_key("2001:db8::1") == accounting_key("2001:db8::ffff:2") == "2001:db8::/64"
True
>>> accounting_key("::ffff:10.0.0.1"), accounting_key("10.0.0.1"), accounting_key("?")
('10.0.0.1', '10.0.0.1', '?')
"""
from __future__ import annotations

import ipaddress

__all__ = ["IPV6_PREFIX", "accounting_key"]

#: The IPv6 prefix length one client is assumed to own.
IPV6_PREFIX = 64


def accounting_key(address: str) -> str:
    """The key per-source limits count ``address`` under (see the module docstring)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.ip_network(f"{parsed}/{IPV6_PREFIX}", strict=False))
    return str(parsed)

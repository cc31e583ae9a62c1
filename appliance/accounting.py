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

:class:`Slots` counts open connections in total and per key, the way every such cap does.

>>> accounting_key("2001:db8::1") == accounting_key("2001:db8::ffff:2") == "2001:db8::/64"
True
>>> accounting_key("::ffff:10.0.0.1"), accounting_key("10.0.0.1"), accounting_key("?")
('10.0.0.1', '10.0.0.1', '?')
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

__all__ = ["IPV6_PREFIX", "Slots", "accounting_key"]

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


@dataclass(slots=True)
class Slots:
    """Connections held, at most ``total`` in all and ``per_source`` per accounting key
    (None: no per-key cap, the case of a tunnel pool).

    >>> slots = Slots(total=3, per_source=2)
    >>> [slots.take("10.0.0.1") for _ in range(3)], slots.take("10.0.0.2"), slots.take("10.0.0.3")
    ([True, True, False], True, False)
    >>> slots.give_back("10.0.0.1"); slots.take("10.0.0.3"), slots.held
    (True, 3)
    """

    total: int
    per_source: int | None = None
    held: int = 0
    _by_source: dict[str, int] = field(default_factory=dict)

    def take(self, source: str) -> bool:
        """Hold one slot for ``source`` if both caps allow; False (nothing held) if not."""
        count = self._by_source.get(source, 0)
        if self.held >= self.total or (self.per_source is not None and count >= self.per_source):
            return False
        self.held += 1
        self._by_source[source] = count + 1
        return True

    def give_back(self, source: str) -> None:
        """Release a slot :meth:`take` gave ``source``."""
        self.held -= 1
        left = self._by_source.pop(source) - 1
        if left:
            self._by_source[source] = left

"""Addresses: the ``host:port`` syntax and the default port of every service, in one place.

Every address a user types (``--auth-server``, ``--proxy``, ``ctl nodes add --addr``, the
TOML file), every address a node advertises and every address the proxy dials is read by
:func:`parse_endpoint`, so they all follow one rule:

* ``HOST:PORT``, ``HOST``, ``[V6]:PORT`` or ``[V6]``; a port is a decimal 1..65535. Where
  the caller has a default port, ``HOST`` and ``[V6]`` take it, and so does a bare IPv6
  address (``::1``: with several colons and no brackets there is no port to read); where
  it has none, the port must be written, and IPv6 needs its brackets (``[::1]:22``).
* Brackets are for IPv6 addresses only. A host is an IP address or a DNS name
  (:func:`appliance.names.is_dns_name`, upper case allowed: letters, digits and ``-`` in
  dot-separated labels of at most 63 characters, 253 in all).

:func:`format_endpoint` writes one back (brackets around IPv6) and :func:`canonical_endpoint`
gives the form the auth service stores (a lower-case name, a compressed IP);
:func:`canonical_ip` is that form of an IP address alone.

>>> parse_endpoint("jump.example.com:3023"), parse_endpoint("[::1]", 3025), parse_endpoint("::1", 22)
(('jump.example.com', 3023), ('::1', 3025), ('::1', 22))
>>> format_endpoint("2001:db8::1", 22), canonical_endpoint("DB1.Example.com:22")
('[2001:db8::1]:22', 'db1.example.com:22')
>>> parse_endpoint("db1:99999")
Traceback (most recent call last):
...
appliance.addresses.AddressError: invalid address 'db1:99999': the port must be a number 1-65535
"""
from __future__ import annotations

import ipaddress
from typing import Any

from .names import is_dns_name

__all__ = ["AUTH_PORT", "DEFAULT_PORTS", "NODE_PORT", "PROXY_PORT", "TUNNEL_PORT", "WEB_PORT", "AddressError",
           "canonical_endpoint", "canonical_ip", "format_endpoint", "host_of", "parse_endpoint", "parse_host",
           "parse_port"]

NODE_PORT = 3022     # a node's SSH server
PROXY_PORT = 3023    # the proxy's SSH server: users' first hop
TUNNEL_PORT = 3024   # reserved for reverse tunnels from nodes
AUTH_PORT = 3025     # the auth service: the CA and the cluster API over SSH
WEB_PORT = 3080      # the web service: HTTPS invite, signup and login
DIAG_PORT = 3081     # the diagnostics endpoint (off unless --diag-addr): /healthz, /readyz, /metrics
#: The port of each service ``jumpgate start`` runs, by the name of its ``--NAME-port`` flag.
DEFAULT_PORTS = {"node": NODE_PORT, "proxy": PROXY_PORT, "tunnel": TUNNEL_PORT, "auth": AUTH_PORT,
                 "web": WEB_PORT}

MAX_ADDRESS = 300


class AddressError(ValueError):
    """An address or port breaks the syntax above; the message quotes it and says why."""


def parse_port(value: Any, what: str = "port") -> int:
    """A TCP port 1..65535, from an int or a string of digits; AddressError if not."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise AddressError(f"invalid {what} {str(value)[:16]!r}: a port is a number 1-65535")
    return value


def parse_host(text: Any, what: str = "host") -> str:
    """An IP address or a DNS name (see the module rules), as given; AddressError if not."""
    if isinstance(text, str) and (_ip(text) is not None or is_dns_name(text.lower())):
        return text
    raise AddressError(f"invalid {what} {str(text)[:64]!r}: expected an IP address or a DNS name")


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def canonical_ip(text: str) -> str:
    """The canonical text of an IP address (``::ffff:10.0.0.5`` stays as written), "" if not one."""
    ip = _ip(text) if isinstance(text, str) else None
    return str(ip) if ip is not None else ""


def _split(text: str) -> tuple[str, str | None, bool]:
    """(host, port text or None, bracketed)."""
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError("unbalanced brackets")
        return inner, (rest[1:] if rest else None), True
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port, False
    return text, None, False


def parse_endpoint(text: Any, default_port: int | None = None, what: str = "address") -> tuple[str, int]:
    """``host[:port]`` -> (host, port), brackets removed; AddressError if it breaks the rules.
    Without ``default_port`` the port must be written."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_ADDRESS:
        raise AddressError(f"invalid {what} {str(text)[:64]!r}: expected HOST:PORT")
    shown = text.strip()
    try:
        host, port_text, bracketed = _split(shown)
    except ValueError:
        raise AddressError(f"invalid {what} {shown[:64]!r}: write IPv6 addresses as [ADDR]:PORT") from None
    ip = _ip(host)
    if bracketed and not isinstance(ip, ipaddress.IPv6Address):
        raise AddressError(f"invalid {what} {shown[:64]!r}: brackets are only for IPv6 addresses")
    if ":" in host and not bracketed and (default_port is None or ip is None):
        raise AddressError(f"invalid {what} {shown[:64]!r}: write IPv6 addresses as [ADDR]:PORT")
    if port_text is None:
        if default_port is None:
            raise AddressError(f"invalid {what} {shown[:64]!r}: expected HOST:PORT")
        port = default_port
    else:
        try:
            port = parse_port(port_text)
        except AddressError:
            raise AddressError(f"invalid {what} {shown[:64]!r}: the port must be a number 1-65535") from None
    try:
        return parse_host(host), port
    except AddressError:
        raise AddressError(f"invalid {what} {shown[:64]!r}: the host must be an IP address or a DNS name") from None


def format_endpoint(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical_endpoint(text: Any, default_port: int | None = None, what: str = "address") -> str:
    """The stored form of an address: a lower-case name or a compressed IP, and its port."""
    host, port = parse_endpoint(text, default_port, what)
    ip = _ip(host)
    return format_endpoint(str(ip) if ip is not None else host.lower(), port)


def host_of(text: str) -> str:
    """The host part of ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address (``""``
    when it is none of them)."""
    try:
        return parse_endpoint(text, default_port=1)[0]  # any default: only the host is read
    except AddressError:
        return ""

"""The proxy's signed word to a node about whom it relays, sans-IO.

A node reached through the proxy sees the proxy's TCP address, not the user's. So that
the node's audit events, ``SSH_CLIENT``/``SSH_CONNECTION`` and a certificate's
``source-address`` option (docs/security.md C14) see the real client, the proxy
sends one line in front of the relayed SSH stream, as Teleport's proxy sends a signed
PROXY header (the line's framing is :mod:`ssh_proto.preamble`)::

    JUMPGATE-RELAY <base64 of: string certificate || string statement || string signature> CR LF

    statement = string "jumpgate-relay-v1" || string client ip || uint32 client port
                || string relay ip || uint32 relay port || string node name
                || uint64 issued at (Unix seconds) || string nonce (16 bytes)

signed by the proxy's host key, whose host certificate comes along. A node believes the
line only if every rule holds, and otherwise closes the connection (a line it cannot
believe is an attack or a bug, never something to repair):

1. the certificate is a host certificate of a trusted host CA, valid now, with the key id
   ``proxy:<name>`` and ``<name>`` among its principals: only a proxy may vouch;
2. the signature over the statement is the certificate's key's;
3. the statement names this node, and the relay address is the TCP peer the node sees
   (a statement cannot be carried to another node, nor sent from another host);
4. it was issued within :data:`WINDOW` seconds of now (either side: clocks drift);
5. its nonce was not seen in the last ``2 * WINDOW`` seconds (no replay);
6. the proxy is still registered with the cluster, with that host key (the auth server's
   push stream says which proxies are; a removed proxy's certificate stops counting within
   seconds, not when it expires — docs/security.md R3).

The node then reports the client's address as the connection's peer, as a
:class:`RelayedPeer` that also names the proxy. A node that sees no line keeps the TCP
peer: direct connections to a node work as before.
"""
from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ssh_proto.certs import validate_host_certificate
from ssh_proto.errors import CertificateError, ProtocolError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey, parse_public_blob
from ssh_proto.preamble import MAX_PREAMBLE, PreambleError
from ssh_proto.wire import Reader, encode_string, encode_uint32, encode_uint64

__all__ = ["NONCE_SIZE", "RELAY_PREFIX", "WINDOW", "RelayVerifier", "RelayedPeer", "relay_line"]

RELAY_PREFIX = b"JUMPGATE-RELAY "
CONTEXT = b"jumpgate-relay-v1"
WINDOW = 60                # seconds a statement is good for, either side of now
NONCE_SIZE = 16
MAX_FIELD = 4096           # a certificate or signature inside the line
MAX_NAME = 253
MAX_NONCES = 100_000       # remembered nonces; past this, the oldest go first
PROXY_KEY_ID = "proxy:"


@dataclass(frozen=True, slots=True)
class _Statement:
    client: tuple[str, int]
    relay: tuple[str, int]
    node: str
    issued: int
    nonce: bytes

    def encode(self) -> bytes:
        return b"".join((encode_string(CONTEXT), encode_string(self.client[0]), encode_uint32(self.client[1]),
                         encode_string(self.relay[0]), encode_uint32(self.relay[1]), encode_string(self.node),
                         encode_uint64(self.issued), encode_string(self.nonce)))

    @classmethod
    def decode(cls, data: bytes) -> _Statement:
        try:
            r = Reader(data)
            context = r.string(MAX_NAME)
            client = (_ip(r.ascii(64)), _port(r.uint32()))
            relay = (_ip(r.ascii(64)), _port(r.uint32()))
            node, issued, nonce = r.utf8(MAX_NAME), r.uint64(), r.string(NONCE_SIZE)
            r.finish()
        except PreambleError:
            raise
        except ProtocolError as exc:
            raise PreambleError(f"malformed relay statement: {exc.description}") from None
        if context != CONTEXT:
            raise PreambleError("relay statement of an unknown kind")
        if len(nonce) != NONCE_SIZE:
            raise PreambleError("relay statement nonce of the wrong size")
        return cls(client, relay, node, issued, nonce)


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise PreambleError("relay statement with a malformed IP address") from None


def _port(value: int) -> int:
    if not 0 < value < 65536:
        raise PreambleError("relay statement with a port out of range")
    return value


def _plain(address: tuple) -> tuple[str, int]:
    """(ip, port) of a socket address, an IPv4-mapped IPv6 address written as IPv4."""
    ip = ipaddress.ip_address(str(address[0]).split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(address[1])


def _peer(address: tuple) -> tuple[str, int] | None:
    """The TCP peer as (ip, port); None when it is not an IP socket address."""
    try:
        return _plain(address)
    except (ValueError, IndexError, TypeError):
        return None


def relay_line(*, client: tuple, relay: tuple, node: str, host_key: PrivateKey, host_cert: Certificate,
               now: float | None = None, nonce: bytes | None = None) -> bytes:
    """The whole line (CR LF included) the proxy sends before relaying ``client`` to ``node``.

    ``relay`` is the proxy's own end of its TCP connection to the node (``getsockname``).
    """
    statement = _Statement(_plain(client), _plain(relay), node, int(time.time() if now is None else now),
                           os.urandom(NONCE_SIZE) if nonce is None else nonce)
    signed = statement.encode()
    body = encode_string(host_cert.blob) + encode_string(signed) + encode_string(host_key.sign(signed))
    line = RELAY_PREFIX + base64.b64encode(body) + b"\r\n"
    if len(line) > MAX_PREAMBLE:
        raise ValueError("the relay line would exceed the preamble limit")
    return line


class RelayedPeer(tuple):
    """``(ip, port)`` of a relayed client, as a plain tuple, and ``via``: the proxy that vouched."""

    via: str

    def __new__(cls, client: tuple[str, int], via: str) -> RelayedPeer:
        peer = super().__new__(cls, client)
        peer.via = via
        return peer


ProxyCheck = Callable[[str, bytes], bool]


class RelayVerifier:
    """A node's check of relay lines (rules 1-6 of the module), for ``ssh_proto.RelayPreamble``.

    ``node_name`` and ``host_cas`` are read at each line (a node's identity can be renewed);
    ``proxy_registered(name, host_key_blob)`` is rule 6 (None: not checked).
    """

    def __init__(self, node_name: Callable[[], str], host_cas: Callable[[], Iterable[PublicKey]], *,
                 clock: Callable[[], float] = time.time, window: int = WINDOW, max_nonces: int = MAX_NONCES,
                 proxy_registered: ProxyCheck | None = None):
        self._node_name = node_name
        self._host_cas = host_cas
        self._proxy_registered = proxy_registered
        self._clock = clock
        self._window = window
        self._max_nonces = max_nonces
        self._nonces: OrderedDict[bytes, float] = OrderedDict()  # nonce -> when it may be forgotten

    def check(self, line: bytes, peer: tuple | None) -> RelayedPeer:
        """The client's (ip, port) the line vouches for, or PreambleError saying why not."""
        cert, signed, signature = _parse_line(line)
        now = self._clock()
        proxy = _check_proxy_certificate(cert, tuple(self._host_cas()), now)
        if not cert.verify(signature, signed):
            raise PreambleError(f"relay line from {proxy}: bad signature")
        statement = _Statement.decode(signed)
        self._check_binding(statement, proxy, peer, now)
        if self._proxy_registered is not None and not self._proxy_registered(proxy, cert.public_key.blob):
            raise PreambleError(f"relay line from {proxy}, which is not a registered proxy (removed?)")
        self._remember(statement.nonce, proxy, now)
        return RelayedPeer(statement.client, proxy)

    def _check_binding(self, statement: _Statement, proxy: str, peer: tuple | None, now: float) -> None:
        if statement.node.casefold() != self._node_name().casefold():
            raise PreambleError(f"relay line from {proxy} is for node {statement.node!r}")
        if peer is None or statement.relay != _peer(peer):
            raise PreambleError(f"relay line from {proxy} names relay {statement.relay[0]}:{statement.relay[1]}, "
                                f"not this connection's peer")
        if abs(now - statement.issued) > self._window:
            raise PreambleError(f"relay line from {proxy} issued {int(now - statement.issued)}s from now")

    def _remember(self, nonce: bytes, proxy: str, now: float) -> None:
        while self._nonces and next(iter(self._nonces.values())) < now:
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise PreambleError(f"relay line from {proxy} replayed")
        if len(self._nonces) >= self._max_nonces:
            self._nonces.popitem(last=False)
        self._nonces[nonce] = now + 2 * self._window


def _parse_line(line: bytes) -> tuple[Certificate, bytes, bytes]:
    if not line.startswith(RELAY_PREFIX):
        raise PreambleError("not a relay line")
    try:
        body = base64.b64decode(line[len(RELAY_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise PreambleError("relay line is not base64") from None
    try:
        r = Reader(body)
        blob, signed, signature = r.string(MAX_FIELD), r.string(MAX_FIELD), r.string(MAX_FIELD)
        r.finish()
        cert = parse_public_blob(blob)
    except ProtocolError as exc:
        raise PreambleError(f"malformed relay line: {exc.description}") from None
    if not isinstance(cert, Certificate):
        raise PreambleError("relay line without a certificate")
    return cert, signed, signature


def _check_proxy_certificate(cert: Certificate, host_cas: tuple[PublicKey, ...], now: float) -> str:
    """Rule 1: the proxy's name, when ``cert`` is a proxy's valid host certificate."""
    if not cert.key_id.startswith(PROXY_KEY_ID) or len(cert.key_id) == len(PROXY_KEY_ID):
        raise PreambleError(f"relay line signed by {cert.key_id!r}, which is not a proxy")
    name = cert.key_id[len(PROXY_KEY_ID):]
    try:
        validate_host_certificate(cert, hostname=name, trusted_cas=host_cas, now=now)
    except CertificateError as exc:
        raise PreambleError(f"relay line from {name}: {exc}") from None
    if name.casefold() not in (p.casefold() for p in cert.principals):  # a pattern principal is not a name
        raise PreambleError(f"relay line from {name}: the certificate does not name {name!r} exactly")
    return name

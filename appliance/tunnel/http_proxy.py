"""An explicit HTTP proxy on the way out: ``HTTPS_PROXY``, ``NO_PROXY`` and the CONNECT exchange.

Sites that allow only HTTPS out often force it through an HTTP proxy. A node reaches its
proxy's web port through one the way curl does (docs/security.md W9):

* **Which proxy.** ``https_proxy``, else ``HTTPS_PROXY`` (curl's order; an empty value is
  unset): ``[http://][USER[:PASSWORD]@]HOST[:PORT]`` (port 3128, Squid's, when none is
  written). User and password are percent-decoded. Only ``http://`` proxies: the CONNECT itself is in clear text, what
  goes through it is TLS.
* **Which hosts bypass it.** ``no_proxy``, else ``NO_PROXY``: comma-separated entries; ``*``
  bypasses every host; ``example.com`` or ``.example.com`` bypasses that name and every name
  under it; an IP address or a CIDR network (``10.0.0.0/8``) bypasses the addresses in it;
  ``ENTRY:PORT`` only that port. Names are compared without case, IP addresses as addresses.
* **The exchange** (RFC 9110 §9.3.6): ``CONNECT HOST:PORT HTTP/1.1`` with ``Host`` and, when the
  URL holds a user, ``Proxy-Authorization: Basic`` (RFC 7617). h11 parses the answer and bounds
  its head (:data:`MAX_RESPONSE_HEAD`); the whole exchange has a deadline. A 2xx answer makes
  the connection the tunnel; anything else is one :class:`ProxyError` saying what the proxy
  said (407: credentials missing or refused, 403: the proxy forbids the target).

The proxy's password goes to the proxy only, in that header; it is never logged nor put in an
error message (they name the proxy as ``HOST:PORT``).

>>> proxy = parse_proxy_url("http://alice:s%40cret@squid.corp:8080")
>>> proxy.host, proxy.port, proxy.username, proxy.password, str(proxy)
('squid.corp', 8080, 'alice', 's@cret', 'squid.corp:8080')
>>> proxy_for("db.corp", 443, {"HTTPS_PROXY": "squid:3128", "NO_PROXY": ".corp"}) is None
True
"""
from __future__ import annotations

import base64
import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

import h11
import trio

from ..addresses import AddressError, format_endpoint, parse_port

__all__ = ["DEFAULT_PROXY_PORT", "MAX_RESPONSE_HEAD", "HTTPProxy", "ProxyError", "bypasses_proxy",
           "connect_through", "parse_proxy_url", "proxy_for"]

DEFAULT_PROXY_PORT = 3128
#: The most of the proxy's answer (status line and headers) we buffer before giving up.
MAX_RESPONSE_HEAD = 16 * 1024
CONNECT_TIMEOUT = 15.0
_RECEIVE_SIZE = 4096


class ProxyError(OSError):
    """The HTTP proxy could not be used or refused the CONNECT; the message says which and why.
    ``status`` is the proxy's HTTP status when it answered one (407, 403, ...)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HTTPProxy:
    """An explicit HTTP proxy; ``str()`` is ``HOST:PORT``, never the credentials."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        return format_endpoint(self.host, self.port)

    def __repr__(self) -> str:   # a repr in a log or traceback must not carry the password either
        return f"HTTPProxy({str(self)!r}, user={self.username!r})"

    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value (RFC 7617 Basic), or None without a user."""
        if self.username is None:
            return None
        pair = f"{self.username}:{self.password or ''}".encode("utf-8")
        return "Basic " + base64.b64encode(pair).decode("ascii")


def parse_proxy_url(url: str) -> HTTPProxy:
    """``[http://][USER[:PASSWORD]@]HOST[:PORT]`` -> :class:`HTTPProxy`; ProxyError if not."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError:
        raise ProxyError("HTTPS_PROXY is not a proxy URL (http://[USER:PASSWORD@]HOST:PORT)") from None
    if parts.scheme.lower() != "http":
        raise ProxyError(f"HTTPS_PROXY: only http:// proxies are supported, not {parts.scheme}://")
    if not parts.hostname:
        raise ProxyError("HTTPS_PROXY names no host (http://[USER:PASSWORD@]HOST:PORT)")
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return HTTPProxy(parts.hostname, port or DEFAULT_PROXY_PORT, username, password)


def _env(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name.lower()) or environ.get(name.upper()) or ""


def proxy_for(host: str, port: int, environ: Mapping[str, str] = os.environ) -> HTTPProxy | None:
    """The proxy to reach ``host``:``port`` through, or None (no ``HTTPS_PROXY``, or ``NO_PROXY``
    says to go direct)."""
    url = _env(environ, "https_proxy")
    if not url or bypasses_proxy(host, port, _env(environ, "no_proxy")):
        return None
    return parse_proxy_url(url)


def bypasses_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether the ``NO_PROXY`` list sends ``host``:``port`` direct (rules in the module docstring).

    >>> [bypasses_proxy(h, 3080, "example.com, 10.0.0.0/8,[::1],jump:3080") for h in
    ...  ("example.com", "a.EXAMPLE.com", "badexample.com", "10.1.2.3", "::1", "jump", "11.0.0.1")]
    [True, True, False, True, True, True, False]
    >>> bypasses_proxy("jump", 443, "jump:3080"), bypasses_proxy("anything", 1, " * ")
    (False, True)
    """
    for entry in (item.strip() for item in no_proxy.split(",")):
        if entry == "*":
            return True
        pattern, entry_port = _split_port(entry)
        if pattern and (entry_port is None or entry_port == port) and _host_matches(host, pattern):
            return True
    return False


def _split_port(entry: str) -> tuple[str, int | None]:
    """``name:port``, ``[v6]:port``, ``v4:port`` -> (pattern, port); a bare IPv6 or CIDR keeps its colons."""
    if entry.startswith("["):
        address, _, rest = entry[1:].partition("]")
        return address, _port(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        pattern, _, text = entry.partition(":")
        return pattern, _port(text)
    return entry, None


def _port(text: str) -> int | None:
    try:
        return parse_port(text)
    except AddressError:
        return -1   # a malformed port matches no port


def _host_matches(host: str, pattern: str) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    if address is not None:
        try:
            return address in ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return False
    name, suffix = host.lower().rstrip("."), pattern.lower().lstrip(".").rstrip(".")
    return bool(suffix) and (name == suffix or name.endswith("." + suffix))


# ----------------------------------------------------------------------- the exchange


def _connect_request(proxy: HTTPProxy, target: str) -> h11.Request:
    headers = [("Host", target), ("User-Agent", "jumpgate")]
    if (credentials := proxy.authorization()) is not None:
        headers.append(("Proxy-Authorization", credentials))
    return h11.Request(method="CONNECT", target=target, headers=headers)


def _refusal(proxy: HTTPProxy, target: str, response: h11.Response) -> ProxyError:
    status, reason = response.status_code, response.reason.decode("latin-1", "replace")[:80]
    said = f"{status} {reason}".strip()
    if status == 407:
        fix = ("refused the credentials in HTTPS_PROXY" if proxy.username is not None else
               "asks for credentials: give them as HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT")
        return ProxyError(f"the HTTP proxy {proxy} {fix} ({said})", status)
    if status == 403:
        return ProxyError(f"the HTTP proxy {proxy} forbids CONNECT to {target} ({said}): ask its admin "
                          f"to allow it, or list the host in NO_PROXY if it is reachable directly", status)
    return ProxyError(f"the HTTP proxy {proxy} answered {said} to CONNECT {target}", status)


async def _exchange(stream: trio.abc.Stream, proxy: HTTPProxy, target: str) -> bytes:
    """Send CONNECT, read the answer; return what the proxy sent after its head (tunnel bytes)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    await stream.send_all(conn.send(_connect_request(proxy, target)) + conn.send(h11.EndOfMessage()))
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            what = ("sent an answer head over %d bytes" % MAX_RESPONSE_HEAD
                    if exc.error_status_hint == 431 else "did not answer in HTTP")
            raise ProxyError(f"the HTTP proxy {proxy} {what} to CONNECT {target}") from None
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
        elif isinstance(event, h11.InformationalResponse):
            continue   # 1xx before the answer: RFC 9110 §15.2 lets a proxy send them
        elif isinstance(event, h11.Response):
            if not 200 <= event.status_code < 300:
                raise _refusal(proxy, target, event)
            data, _closed = conn.trailing_data
            return bytes(data)
        else:   # ConnectionClosed
            raise ProxyError(f"the HTTP proxy {proxy} closed the connection before answering CONNECT {target}")


async def connect_through(proxy: HTTPProxy, host: str, port: int, *,
                          timeout: float = CONNECT_TIMEOUT) -> tuple[trio.abc.Stream, bytes]:
    """A TCP connection to ``proxy`` made a tunnel to ``host``:``port`` by CONNECT, and the bytes
    the proxy already relayed from the target (usually none: the caller replays them).
    Raises :class:`ProxyError` (an OSError) with the reason."""
    target = format_endpoint(host, port)
    try:
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(proxy.host, proxy.port)
    except trio.TooSlowError:
        raise ProxyError(f"the HTTP proxy {proxy} did not accept a connection within {timeout:g}s") from None
    except OSError as exc:
        raise ProxyError(f"cannot reach the HTTP proxy {proxy}: {exc.strerror or exc}") from None
    try:
        with trio.fail_after(timeout):
            early = await _exchange(stream, proxy, target)
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise ProxyError(f"the HTTP proxy {proxy} did not answer CONNECT {target} within {timeout:g}s") from None
    except (trio.BrokenResourceError, OSError) as exc:
        await trio.aclose_forcefully(stream)
        if isinstance(exc, ProxyError):
            raise
        raise ProxyError(f"the HTTP proxy {proxy} broke the connection during CONNECT {target}") from None
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream, early

"""A pinned HTTPS JSON client for the web service (``jumpgate signup`` and ``login``).

The web service's certificate is usually self-signed, so the usual CA chain check cannot
vouch for it. Instead the client checks the **pin** of the certificate the server
presents (``sha256:`` + base64url of the SHA-256 of its SubjectPublicKeyInfo, see
:mod:`appliance.web.tls`) against the one it was given by an invite token, a saved
profile or ``--ca-pin``, comparing in constant time. Only ``--insecure`` skips the check,
and it must be asked for: with neither a pin nor ``insecure`` no request is sent.

HTTP/1.1 framing is h11's; one request per connection (``Connection: close``); every
step runs under one deadline, and the response body is bounded.

>>> async def main():                                                    # doctest: +SKIP
...     info = await request_json("jump.example.com:3080", "GET", "/v1/ping",
...                               pin="sha256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU")
"""
from __future__ import annotations

import hmac
import json
import ssl
from dataclasses import dataclass
from typing import Any

import h11
import trio

from appliance.addresses import WEB_PORT, AddressError, parse_endpoint
from appliance.web.tls import TLSSetupError, parse_pin, pin_of

__all__ = ["ApiError", "JSONResponse", "WebClientError", "request", "request_json",
           "split_addr"]

DEFAULT_WEB_PORT = WEB_PORT
MAX_RESPONSE = 1024 * 1024
_RECEIVE_SIZE = 16 * 1024


class WebClientError(Exception):
    """The request could not be made or answered; the message is one line for the user."""


class ApiError(WebClientError):
    """The server answered with an error: ``status``, its ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True, slots=True)
class JSONResponse:
    status: int
    body: dict[str, Any]
    peer_pin: str       # the pin of the certificate the server presented


def split_addr(addr: str, default_port: int = DEFAULT_WEB_PORT) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` (:func:`appliance.addresses.parse_endpoint`), also
    written as a URL ``https://host:port/`` → (host, port)."""
    text = addr.strip().removeprefix("https://").rstrip("/")
    try:
        return parse_endpoint(text, default_port, "web address")
    except AddressError as exc:
        raise WebClientError(str(exc)) from None


def _context() -> ssl.SSLContext:
    # The chain is not checked here: the pin check after the handshake replaces it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    return context


def _check_pin(addr: str, stream: trio.SSLStream, pin: str | None) -> str:
    der = stream.getpeercert(binary_form=True)
    if not der:
        raise WebClientError(f"{addr} presented no TLS certificate")
    try:
        actual = pin_of(der)
    except TLSSetupError:
        raise WebClientError(f"{addr} presented an unreadable TLS certificate") from None
    if pin is not None and not hmac.compare_digest(actual.encode(), pin.encode()):
        raise WebClientError(
            f"TLS pin mismatch for {addr}: expected {pin}, the server presented {actual}. "
            f"This is not the proxy you were told about (or its certificate changed); "
            f"check the address and the pin with your administrator")
    return actual


def _encode_request(conn: h11.Connection, host: str, method: str, path: str,
                    body: Any) -> bytes:
    payload = b"" if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
    headers = [("host", host), ("accept", "application/json"), ("connection", "close"),
               ("user-agent", "jumpgate"), ("content-length", str(len(payload)))]
    if body is not None:
        headers.append(("content-type", "application/json"))
    out = conn.send(h11.Request(method=method, target=path, headers=headers))
    return out + conn.send(h11.Data(data=payload)) + conn.send(h11.EndOfMessage())


async def _read_response(conn: h11.Connection, stream: trio.SSLStream) -> tuple[int, bytes]:
    status, body = 0, bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE_SIZE))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_RESPONSE:
                raise WebClientError("the server's answer is too large")
        elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return status, bytes(body)


def _decode(addr: str, status: int, raw: bytes) -> dict[str, Any]:
    if status == 0:
        raise WebClientError(f"{addr} closed the connection without answering")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        value = None
    if status >= 400:
        error = value.get("error") if isinstance(value, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            raise _api_error(status, str(error.get("code", "error")), error["message"])
        raise _api_error(status, "http_error", f"{addr} answered HTTP {status}")
    if not isinstance(value, dict):
        raise WebClientError(f"{addr} did not answer with a JSON object (HTTP {status})")
    return value


def _api_error(status: int, code: str, message: str) -> ApiError:
    # Server text is shown to the user on one line: no control characters from the wire.
    clean = "".join(ch if ch.isprintable() else " " for ch in message)[:300]
    return ApiError(status, code[:40], clean)


def _resolve_pin(pin: str | None, insecure: bool) -> str | None:
    if pin is None and not insecure:
        raise WebClientError(
            "cannot verify the proxy's TLS certificate: pass --ca-pin sha256:... (ask your "
            "administrator for the pin) or --insecure to skip the check")
    if pin is None:
        return None
    try:
        return parse_pin(pin)
    except ValueError as exc:
        raise WebClientError(f"bad pin: {exc}") from None


async def _exchange(addr: str, method: str, path: str, body: Any, pin: str | None) -> JSONResponse:
    host, port = split_addr(addr)
    stream = await trio.open_ssl_over_tcp_stream(host, port, ssl_context=_context(),
                                                 https_compatible=True)
    try:
        await stream.do_handshake()
        peer_pin = _check_pin(addr, stream, pin)
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(_encode_request(conn, host if port == 443 else f"{host}:{port}",
                                              method, path, body))
        status, raw = await _read_response(conn, stream)
    finally:
        await trio.aclose_forcefully(stream)
    return JSONResponse(status, _decode(addr, status, raw), peer_pin)


async def request(addr: str, method: str, path: str, body: Any = None, *,
                  pin: str | None = None, insecure: bool = False,
                  timeout: float = 30) -> JSONResponse:
    """Like :func:`request_json`, also returning the status and the server's pin."""
    checked_pin = _resolve_pin(pin, insecure)
    try:
        with trio.fail_after(timeout):
            return await _exchange(addr, method, path, body, checked_pin)
    except trio.TooSlowError:
        raise WebClientError(f"{addr} did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise WebClientError(f"cannot reach {addr}: {exc.strerror or exc}") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        detail = f": {getattr(cause, 'reason', None) or cause}" if cause else ""
        raise WebClientError(f"connection to {addr} failed{detail}") from None
    except h11.ProtocolError:
        raise WebClientError(f"{addr} does not speak HTTP/1.1 as expected") from None


async def request_json(addr: str, method: str, path: str, body: Any = None, *,
                       pin: str | None = None, insecure: bool = False,
                       timeout: float = 30) -> dict[str, Any]:
    """Send one JSON request to the web service at ``addr`` ("host:port"); return the JSON answer.

    The server must present a certificate whose pin equals ``pin``, unless ``insecure``.
    Raises :class:`ApiError` for an error answer (``status``, ``code``, ``message``) and
    :class:`WebClientError` for anything else (unreachable, timeout, pin mismatch, ...).
    """
    response = await request(addr, method, path, body, pin=pin, insecure=insecure,
                             timeout=timeout)
    return response.body

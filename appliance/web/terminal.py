"""The browser terminal: one WebSocket relayed to a pty session on a node, as ``jumpgate ssh`` would.

The path is the proxy's, in process (docs/security.md W11-W13): the node is reached through
:class:`~appliance.proxy.gate.NodeGate` — the same routing, dialler, signed relay line (naming
the browser's address), ``port`` audit and R4 tracking as a ``direct-tcpip`` channel at the
proxy — and the SSH connection over that stream authenticates to the node with the browser
session's in-memory key and certificate (never a profile on disk). The node checks the
certificate and the login, records the session and audits it as for any other client; the
node's host certificate is checked here against the cluster's host CA, for the node's name.

The WebSocket speaks two kinds of message (RFC 6455 §5.6):

* **binary**: terminal bytes — browser → node is keyboard input (UTF-8, as xterm.js encodes
  it), node → browser is the pty's output, relayed as it comes (xterm.js decodes UTF-8 across
  message boundaries);
* **text**: one JSON object of control — from the browser ``{"type": "resize", "cols": C,
  "rows": R}`` (a window-change, RFC 4254 §6.7); to the browser ``{"type": "exit", "status": N}``
  when the shell ends, or ``{"type": "error", "message": ...}`` when the node cannot be reached.

Each message from the browser is bounded by ``WebLimits.max_ws_message`` and at most
``ws_queue`` of them wait (trio-websocket enforces both); a text message that is not a
well-formed resize closes the socket (1008, policy violation). The relay's tasks live in one
nursery under the browser session's cancel scope: logout, expiry or revocation ends them.

>>> parse_control('{"type": "resize", "cols": 120, "rows": 40}')
Resize(cols=120, rows=40)
>>> parse_control('{"type": "resize", "cols": 0, "rows": 40}')
Traceback (most recent call last):
...
appliance.web.terminal.TerminalMessageError: resize needs cols 1-1000 and rows 1-1000
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

import ssh_proto
from ssh_proto.certs import CERT_TYPE_HOST, validate_host_certificate
from ssh_proto.errors import CertificateError, HostKeyNotVerifiable, SSHError
from ssh_proto.keys import Certificate, PublicKey

from ..addresses import NODE_PORT
from ..proxy.gate import Caller, NodeGate, NodeRefused

__all__ = ["MAX_SIZE", "Resize", "TerminalMessageError", "Terminals", "parse_control"]

log = logging.getLogger("jumpgate.web")

MAX_SIZE = 1000            # columns or rows: OpenSSH's sshd takes any, a pty beyond this is a bug or a bomb
TERM = "xterm-256color"    # what xterm.js emulates
CONNECT_TIMEOUT = 15.0     # the node's SSH handshake and auth, as jumpgate ssh's
_OUTPUT_CHUNK = 16 * 1024
WS_POLICY_VIOLATION = 1008


class TerminalMessageError(Exception):
    """A control message from the browser that is not one we take."""


@dataclass(frozen=True, slots=True)
class Resize:
    cols: int
    rows: int


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIZE else None


def parse_control(text: str) -> Resize:
    """A text message from the browser: a resize, or :class:`TerminalMessageError`."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise TerminalMessageError("a control message must be JSON") from None
    if not isinstance(value, dict) or value.get("type") != "resize" or set(value) != {"type", "cols", "rows"}:
        raise TerminalMessageError('the only control message is {"type": "resize", "cols": C, "rows": R}')
    cols, rows = _size(value["cols"]), _size(value["rows"])
    if cols is None or rows is None:
        raise TerminalMessageError(f"resize needs cols 1-{MAX_SIZE} and rows 1-{MAX_SIZE}")
    return Resize(cols, rows)


def node_host_check(host_ca: PublicKey, node: str) -> Callable[[Any], None]:
    """J8 for the web terminal: a ``node:<node>`` host certificate of the cluster's host CA,
    valid for the name ``node``."""
    def verify(key: PublicKey | Certificate) -> None:
        if not isinstance(key, Certificate) or key.cert_type != CERT_TYPE_HOST:
            raise HostKeyNotVerifiable(f"node {node!r} presented no host certificate")
        if key.key_id != f"node:{node}":
            raise HostKeyNotVerifiable(f"node {node!r} presented the certificate of {key.key_id[:80]!r}")
        try:
            validate_host_certificate(key, hostname=node.lower(), trusted_cas=[host_ca])
        except CertificateError as exc:
            raise HostKeyNotVerifiable(f"node {node!r}: {exc}") from None
    return verify


class Terminals:
    """Opens browser terminals on nodes through ``gate`` (see the module docstring).

    >>> terminals = Terminals(gate, host_ca=host_ca)                       # doctest: +SKIP
    >>> await terminals.run(ws, session, node="web1", login="root", client=("10.0.0.9", 5000))  # doctest: +SKIP
    """

    def __init__(self, gate: NodeGate, *, host_ca: PublicKey | Callable[[], PublicKey],
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self._gate = gate
        self._host_ca = host_ca if callable(host_ca) else (lambda: host_ca)
        self._timeout = connect_timeout

    async def run(self, ws: Any, session: Any, *, node: str, login: str, client: tuple[str, int],
                  size: Resize = Resize(80, 24)) -> None:
        """Relay ``ws`` to a shell on ``node`` as ``login`` until one side ends; the caller
        holds the browser session's cancel scope around this."""
        caller = Caller(session.user, login, client, session.generation, "web", f"{client[0]}:{client[1]}")
        cert, _ = ssh_proto.parse_public_line(session.cert)
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(self._timeout):
                    stream = await self._gate.open(node, NODE_PORT, caller=caller, nursery=nursery)
            except (NodeRefused, trio.TooSlowError) as exc:
                return await _fail(ws, str(exc) if isinstance(exc, NodeRefused) else f"node {node!r} did not answer")
            try:
                async with ssh_proto.connect(node, NODE_PORT, username=login, client_keys=[(session.key, cert)],
                                             known_hosts=node_host_check(self._host_ca(), node), stream=stream,
                                             connect_timeout=self._timeout) as conn:
                    proc = await conn.open_session(pty=True, term=TERM, cols=size.cols, rows=size.rows,
                                                   env={"LANG": "C.UTF-8"})
                    await _relay(ws, proc)
            except (SSHError, OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                await _fail(ws, _why(exc, node, login))
            nursery.cancel_scope.cancel()


def _why(exc: BaseException, node: str, login: str) -> str:
    if isinstance(exc, ssh_proto.AuthError):
        return f"node {node!r} refused login {login!r}"
    if isinstance(exc, trio.TooSlowError):
        return f"node {node!r} did not answer within {CONNECT_TIMEOUT:g}s"
    return f"the connection to node {node!r} failed: {exc}"


async def _fail(ws: Any, message: str) -> None:
    log.info("web terminal: %s", message)
    await ws.send_message(json.dumps({"type": "error", "message": message}))
    await ws.aclose(1011, message[:120])


async def _relay(ws: Any, proc: Any) -> None:
    """Both ways until the shell ends (exit message, close 1000) or the browser goes."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_from_browser, ws, proc, nursery.cancel_scope)
        while chunk := await proc.receive_some(_OUTPUT_CHUNK):
            await ws.send_message(bytes(chunk))
        status = await proc.wait()
        await ws.send_message(json.dumps({"type": "exit", "status": status}))
        await ws.aclose(1000, "the session ended")
        nursery.cancel_scope.cancel()


async def _from_browser(ws: Any, proc: Any, scope: trio.CancelScope) -> None:
    import trio_websocket
    try:
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                await proc.send_all(message)
                continue
            try:
                resize = parse_control(message)
            except TerminalMessageError as exc:
                await ws.aclose(WS_POLICY_VIOLATION, str(exc)[:120])
                return
            await proc.resize(resize.cols, resize.rows)
    except trio_websocket.ConnectionClosed:
        pass
    finally:
        scope.cancel()

"""Reverse tunnels that arrive on the web port: the hand-off from the web listener to the tunnel server.

A node behind a firewall that lets only HTTPS out dials the proxy's web port (3080) and offers
the ALPN protocol :data:`~appliance.web.tls.TUNNEL_ALPN` (``jumpgate-tunnel``, RFC 7301). The
web listener runs the TLS handshake as for any client; a connection that negotiated
``jumpgate-tunnel`` is handed, as the TLS stream, to the *tunnel handler* registered with
:func:`~appliance.web.server.serve_web` (the tunnel server's ``serve_tunnel_stream``) instead
of to h11 (docs/security.md W8).

The rules this module keeps:

* **Its own pool.** A tunnel holds a slot of :class:`~appliance.limits.TunnelLimits`, never of
  the web caps (512 connections, 32 per client): a site behind one NAT address may be
  thousands of nodes. The pool has no per-client cap, as the tunnel listener (3024) has none.
* **Not a way around the web caps.** Claiming the ALPN buys a connection nothing the tunnel
  listener would not give it: the tunnel handler's own limits (its SSH admission, login grace)
  apply from the first byte, and this module bounds the tunnels not yet through their SSH
  handshake (``max_pending``) and how long that may take (``handshake_timeout``): a tunnel
  still handshaking then is cut.
* **The inner SSH is the trust** (docs/security.md W10). The outer TLS certificate is not
  what authenticates either side; the handler checks host certificates inside.

The contract with the handler is that of Trio's ``nursery.start`` (but the handler runs in the
web listener's task, and may return without starting: a tunnel its own limits refused); ``peer`` is the client's address,
``local`` the address it dialled (the TLS stream has no socket to ask)::

    async def handler(stream: trio.abc.Stream, peer: tuple[str, int], local: tuple[str, int], *,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
        ...                                # the SSH handshake, host certificates both ways
        task_status.started()              # authenticated: the deadline stops here
        ...                                # serve the tunnel until it closes

Until ``task_status.started()`` the hand-off's deadline runs; the handler owns the stream
from its first call (the web listener still closes it after the handler returns).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ..accounting import Slots
from ..limits import TunnelLimits

__all__ = ["TunnelHandler", "TunnelHandoff"]

log = logging.getLogger("jumpgate.web")

#: ``await nursery.start(handler, stream, peer, local)``: see the module docstring.
TunnelHandler = Callable[..., Awaitable[Any]]

_ALL = "*"   # the tunnel pool counts connections in total only


class TunnelHandoff:
    """Counts the tunnels the web listener hands to ``handler`` and enforces their deadline.

    >>> handoff = TunnelHandoff(serve_tunnel_stream, TunnelLimits())   # doctest: +SKIP
    >>> await handoff.serve(tls_stream, ("192.0.2.7", 40022), ("192.0.2.1", 3080))  # doctest: +SKIP
    """

    def __init__(self, handler: TunnelHandler, limits: TunnelLimits = TunnelLimits()) -> None:
        self._handler = handler
        self.limits = limits
        self.open = Slots(limits.max_tunnels)
        self.pending = Slots(limits.max_pending)
        self.cut = 0          # tunnels cut for not completing their SSH handshake in time
        self.refused = 0      # tunnels refused because a pool was full

    async def serve(self, stream: trio.abc.Stream, peer: tuple[str, int], local: tuple[str, int]) -> None:
        """Serve one tunnel until its handler returns; the caller closes ``stream`` afterwards."""
        if not self.open.take(_ALL):
            self._refuse(peer, f"{self.limits.max_tunnels} tunnels are open")
            return
        try:
            if not self.pending.take(_ALL):
                self._refuse(peer, f"{self.limits.max_pending} tunnels are in their SSH handshake")
                return
            status = _Started(self.pending, trio.CancelScope(deadline=trio.current_time() + self.limits.handshake_timeout))
            try:
                with status.deadline:
                    await self._handler(stream, peer, local, task_status=status)
            finally:
                status.release()
            if status.deadline.cancelled_caught:
                self.cut += 1
                log.info("web: tunnel from %s did not complete its SSH handshake within %gs: cut",
                         _where(peer), self.limits.handshake_timeout)
        finally:
            self.open.give_back(_ALL)

    def _refuse(self, peer: tuple[str, int], why: str) -> None:
        self.refused += 1
        log.warning("web: refused a tunnel from %s: %s", _where(peer), why)


class _Started:
    """The ``task_status`` a handler gets: ``started()`` ends the deadline and frees the pending
    slot. As ``nursery.start``'s, except that a handler may also return without starting (a
    tunnel its own limits refused) without that being an error."""

    def __init__(self, pending: Slots, deadline: trio.CancelScope) -> None:
        self._pending, self.deadline = pending, deadline
        self._released = False

    def started(self, value: object = None) -> None:
        self.deadline.deadline = math.inf
        self.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pending.give_back(_ALL)


def _where(peer: tuple[str, int]) -> str:
    return f"{peer[0]} port {peer[1]}"

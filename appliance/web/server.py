"""The web service: HTTPS (Trio + ``ssl`` + h11, no framework) on :3080 — :func:`serve_web`.

The parts, one idea each:

* :mod:`.limits` — sizes, deadlines, the connection caps and the per-client rate limit;
* :mod:`.transport` — TCP accept, TLS, h11, and the hand-off of an upgraded stream to
  trio-websocket (replaying the request h11 already read);
* :mod:`.app` — routes and handlers: the JSON API of ``jumpgate signup``/``login``, the
  browser's pages, sessions and WebSockets (the route table is in its docstring);
* :mod:`.sessions` — browser sessions, revocable through the cluster view;
* :mod:`.nodes` — the node list the UI shows, kept current;
* :mod:`.terminal` — the browser terminal, relayed to a node through the proxy's node gate;
* :mod:`.static`, :mod:`.pages` — the ``web_static`` files and the server-made pages.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .app import HTTPError, WebApp, WebRequest, WebResponse, WebUpgrade
from .limits import RateLimiter, WebLimits
from .nodes import REFRESH_INTERVAL, NodeFeed
from .sessions import IDLE_TIMEOUT, SESSION_LIFETIME, SessionStore
from ..limits import TunnelLimits
from .tls import HTTP_ALPN, TUNNEL_ALPN, load_certificate, pin_of, server_ssl_context
from .terminal import Terminals
from .tunnels import TunnelHandler, TunnelHandoff
from .transport import serve_connections

__all__ = [
    "HTTPError",
    "RateLimiter",
    "WebApp",
    "WebEndpoint",
    "WebLimits",
    "WebRequest",
    "WebResponse",
    "WebUpgrade",
    "serve_web",
]


@dataclass(frozen=True, slots=True)
class WebEndpoint:
    """What :func:`serve_web` hands to ``task_status.started``."""

    host: str
    port: int
    pin: str
    app: WebApp | None = None     # for tests and the caller's diagnostics


async def serve_web(service: Any, tls_cert_path: str, tls_key_path: str, host: str | None,
                    port: int, *, proxy_ssh_addr: str, public_addr: str | None = None,
                    limits: WebLimits = WebLimits(), listeners: Sequence[trio.SocketListener] | None = None,
                    view: Any = None, clock: Callable[[], float] = time.time,
                    idle_timeout: float = IDLE_TIMEOUT, session_lifetime: float = SESSION_LIFETIME,
                    node_refresh: float = REFRESH_INTERVAL,
                    tunnel_handler: TunnelHandler | None = None, tunnel_limits: TunnelLimits = TunnelLimits(),
                    terminals: Terminals | None = None,
                    task_status: trio.TaskStatus[WebEndpoint] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the web service until cancelled.

    ``service`` has the AuthService methods named in :class:`WebApp`. ``proxy_ssh_addr``
    ("host:3023") is returned by login; ``public_addr`` ("host:3080") is what the invite
    page tells users to pass to ``--proxy`` (default: the request's Host header). ``view``
    (a :class:`~appliance.cluster_view.ClusterView`, fed by the push stream) ends the browser
    sessions of deleted or reset users and tells the node list of inventory changes at once;
    ``clock`` is the wall clock of sessions. Port 0 binds a free port;
    ``task_status.started`` gets a :class:`WebEndpoint`.

    With ``tunnel_handler`` (the tunnel server's ``serve_tunnel_stream``) the listener also
    offers ALPN ``jumpgate-tunnel`` and hands the connections that negotiate it to the
    handler, counted by ``tunnel_limits`` (see :mod:`appliance.web.tunnels`); without one it
    speaks HTTP/1.1 only.

    ``terminals`` (:class:`~appliance.web.terminal.Terminals` over the proxy's node gate, when
    the proxy runs in this process) serves the browser terminal; without it
    ``/web/ws/terminal`` answers 503.

    >>> async def main(service):                                          # doctest: +SKIP
    ...     async with trio.open_nursery() as nursery:
    ...         web = await nursery.start(functools.partial(
    ...             serve_web, service, "tls.crt", "tls.key", "0.0.0.0", 3080,
    ...             proxy_ssh_addr="jump.example.com:3023"))
    ...         print("web on", web.port, "pin", web.pin)
    """
    alpn = (HTTP_ALPN,) if tunnel_handler is None else (HTTP_ALPN, TUNNEL_ALPN)
    context = server_ssl_context(tls_cert_path, tls_key_path, alpn)
    tunnels = None if tunnel_handler is None else TunnelHandoff(tunnel_handler, tunnel_limits)
    pin = pin_of(load_certificate(tls_cert_path))
    sessions = SessionStore(idle=idle_timeout, lifetime=session_lifetime, clock=clock,
                            live=view.live if view is not None else None)
    nodes = NodeFeed(service, refresh=node_refresh)
    if view is not None:
        view.on_nodes_changed(nodes.poke)
    app = WebApp(service, proxy_ssh_addr=proxy_ssh_addr, public_addr=public_addr, limits=limits,
                 sessions=sessions, nodes=nodes, terminals=terminals)
    if listeners is None:  # else bound beforehand by a caller that had to know the port was free
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    async with trio.open_nursery() as nursery:
        await nursery.start(nodes.run)
        await serve_connections(app.handle, context, limits, list(listeners), nursery, tunnels)
        bound = listeners[0].socket.getsockname()
        task_status.started(WebEndpoint(bound[0], bound[1], pin, app))

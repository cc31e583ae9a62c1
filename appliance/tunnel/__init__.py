"""Reverse tunnels: nodes behind firewalls dial the proxy, which reaches them back through it.

:mod:`~appliance.tunnel.protocol` is what travels on a tunnel, :mod:`~appliance.tunnel.server`
the proxy's end (:func:`serve_tunnel_stream` over any stream, :func:`serve_tunnel` on the
tunnel port), :mod:`~appliance.tunnel.agent` the node's (:class:`TunnelAgent`),
:mod:`~appliance.tunnel.transport` how the node reaches the proxy (TCP to 3024, TLS with ALPN
``jumpgate-tunnel`` to 3080, through an HTTP proxy: :mod:`~appliance.tunnel.http_proxy`). The
rules are docs/security.md § Reverse tunnels (N1-N5) and § Web (W8-W10).
"""
from .agent import TunnelAgent, join_stream, tcp_connector, verify_proxy
from .server import TunnelService, serve_tunnel, serve_tunnel_stream

__all__ = ["TunnelAgent", "TunnelService", "join_stream", "serve_tunnel", "serve_tunnel_stream", "tcp_connector",
           "verify_proxy"]

"""Reverse tunnels: nodes that listen on no port dial the proxy (issue 15).

Modules: :mod:`.transport` (how a node reaches the proxy: TCP, TLS with ALPN, an HTTP proxy),
:mod:`.http_proxy` (HTTPS_PROXY, NO_PROXY, CONNECT).
"""

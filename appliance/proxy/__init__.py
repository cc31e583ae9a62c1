"""The proxy service: an SSH server on port 3023 through which users reach registered nodes.

* :mod:`.server`: :func:`serve_proxy`, :class:`ProxyServer` (user-certificate auth,
  direct-tcpip to nodes only, the ``jumpgate-nodes`` subsystem, audit), :class:`ProxyIdentity`.
* :mod:`.routing`: which node of which cluster a requested host names (:class:`Routes` of
  :class:`NodeDirectory`, the pushed inventory, :class:`NodeKey` ``(cluster, name)``) and the
  node-list frames of ``jumpgate ls``.
* :mod:`.dialing`: how a node is reached — the ``dial(key, node)`` seam, TCP or a node's
  reverse tunnel (:class:`TunnelRegistry`, which the tunnel server registers into).

Example::

    directory = NodeDirectory(lambda: api.list_nodes(labels={}), cluster="prod", view=view)
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve_proxy, ProxyIdentity(host_key, host_cert), [user_ca],
                                       Routes(directory), "0.0.0.0", 3023)
"""
# Submodules are imported by name (``from appliance.proxy.routing import ...``): the client
# needs the routing helpers without loading the server side.

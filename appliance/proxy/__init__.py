"""The proxy service: an SSH server on port 3023 through which users reach registered nodes.

* :mod:`.server`: :func:`serve_proxy`, :class:`ProxyServer` (user-certificate auth,
  direct-tcpip to nodes only, the ``jumpgate-nodes`` subsystem, audit), :class:`ProxyIdentity`.
* :mod:`.routing`: which node a requested host names (:class:`NodeDirectory`, a cached view
  of the auth API's node list) and the node-list frames of ``jumpgate ls``.

Example::

    directory = NodeDirectory(lambda: api.list_nodes(labels={}))
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve_proxy, ProxyIdentity(host_key, host_cert), [user_ca],
                                       "prod", directory.resolve, directory.list_nodes, "0.0.0.0", 3023)
"""
# Submodules are imported by name (``from appliance.proxy.routing import ...``): the client
# needs the routing helpers without loading the server side.

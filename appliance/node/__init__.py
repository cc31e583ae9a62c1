"""The node service: an SSH server on port 3022 that runs sessions as OS users.

* :mod:`.server`: :class:`NodeServer` (user-certificate auth, sessions, forwarding, audit),
  :func:`node_server_factory`, :func:`serve_node`, :class:`NodeIdentity`.
* :mod:`.process`: spawning the login's shell, command or sftp-server, on pipes or a pty.
* :mod:`.labels`: static and command labels (:class:`LabelSet`, :class:`CommandLabel`).

Example::

    identity = NodeIdentity(host_key, host_cert, (user_ca,), cluster="example", name="node1",
                            host_cas=(host_ca,))   # the proxies it believes about clients
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve_node, lambda: identity, "0.0.0.0", 3022)
"""
# Submodules are imported by name (``from appliance.proxy.routing import ...``): the client
# needs the routing helpers without loading the server side.

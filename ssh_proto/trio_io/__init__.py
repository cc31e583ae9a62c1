"""The Trio layer of ssh_proto: the only part of the library that does I/O.

Modules: ``connection`` (the pump between a stream and the sans-IO core), ``channel``
(channels as Trio streams), ``session`` (client process handle, server session),
``client`` (connect), ``server`` (SSHServer, listeners), ``forwarding``, ``agent``.
The public names are re-exported by the ``ssh_proto`` package itself.
"""

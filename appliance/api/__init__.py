"""The internal API between Jumpgate services: msgpack frames on an SSH subsystem.

Nodes, proxies and ``jumpgate ctl`` call the auth service's
:class:`~appliance.auth.service.AuthService` over SSH (port 3025, subsystem
``jumpgate-api``), authenticated by host and user certificates.

* :mod:`.protocol` — the sans-IO wire format (frames, messages, decoder).
* :mod:`.client` — :class:`ApiClient`, the caller's side.
* :mod:`.server` — :func:`serve_api_channel`, the allow-table per caller kind and dispatch.

>>> async with ApiClient.connect("auth:3025", identity=(key, cert), host_ca_key=ca) as api:  # doctest: +SKIP
...     await api.heartbeat(addr="10.0.0.5:3022", labels={"env": "dev"})
"""
# Submodules are imported by name (``from appliance.api.client import ApiClient``) so that
# a client command does not pay for importing the server side, the auth service and storage.

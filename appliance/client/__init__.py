"""The client side of Jumpgate: the profile in ~/.jumpgate, the pinned HTTPS client, the SSH hops.

Modules: :mod:`.home` (where the profile lives), :mod:`.profile` (profile, key, certificate
and known_hosts files), :mod:`.http` (pinned HTTPS JSON requests to the web service),
:mod:`.ssh` (the proxy and node hops, scp), :mod:`.terminal` and :mod:`.localio` (a session
relayed to local descriptors), and the session daemon: :mod:`.mux` (its protocol),
:mod:`.muxclient` (the thin ``jumpgate ssh``, standard library only) and :mod:`.muxd` (the
daemon). Nothing is re-exported so that each command imports only what it uses
(``jumpgate --version`` and the thin ``jumpgate ssh`` must start fast).
"""

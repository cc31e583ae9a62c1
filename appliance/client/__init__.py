"""The client side of Jumpgate: the profile in ~/.jumpgate and the pinned HTTPS client.

Modules: :mod:`.profile` (profile, key, certificate and known_hosts files),
:mod:`.http` (pinned HTTPS JSON requests to the web role). Nothing is re-exported so
that each command imports only what it uses (``jumpgate --version`` must start fast).
"""

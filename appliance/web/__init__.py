"""The web service: HTTPS on :3080 for the invite page and the signup/login JSON API.

Modules: :mod:`.tls` (the certificate and its pin), :mod:`.server` (Trio + ssl + h11
server, routes, limits), :mod:`.pages` (the HTML pages). Nothing is re-exported here so
that importing :mod:`appliance.web.tls` (as the client does, for pins) stays cheap.
"""

"""The web service: HTTPS on :3080 for the signup/login JSON API and the browser UI.

Modules: :mod:`.tls` (the certificate and its pin), :mod:`.server` (:func:`serve_web`, which
puts the rest together), :mod:`.limits`, :mod:`.transport` (TLS, h11, the WebSocket hand-off),
:mod:`.app` (routes), :mod:`.sessions` (browser sessions), :mod:`.nodes` (the live node list),
:mod:`.static` and :mod:`.pages`. Nothing is re-exported here so that importing
:mod:`appliance.web.tls` (as the client does, for pins) stays cheap.
"""

"""What a user whose certificate was refused is told, in words they can act on.

The node and the proxy accept certificates only, and offer only ``publickey`` (ssh_proto
offers the methods a server implements, docs/security.md T12b), so plain OpenSSH with a
stale certificate is refused at once instead of being asked for passwords. Before that
refusal they send an SSH banner (USERAUTH_BANNER, which OpenSSH prints on stderr) saying why
(docs/security.md C16):

* the facts the certificate itself shows, checked in this order: it comes from a CA
  this cluster does not trust, it expired, it is not valid yet, it does not list the login;
* that its user was deleted or reset (its generation is revoked, R1);
* that the node does not run as root, so it cannot switch to the login asked for (it names
  the one account it runs as; decided by the login's name alone, before any lookup);
* for a plain key, that only Jumpgate certificates are accepted (once, and only when no
  certificate got a hint on the connection: OpenSSH offers a certificate's key after it).

Nothing is said about the host's accounts or the node's allowed logins: a refusal does not
tell who exists (T13), and the certificate's holder already knows what it shows. A hint
is sent once per connection, however often the client offers the key.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

from ssh_proto.keys import Certificate, PublicKey

__all__ = ["PLAIN_KEY", "REVOKED", "certificate_hint", "not_root_hint", "proxy_name_hint"]

LOGIN = "run `jumpgate login`"
PLAIN_KEY = f"jumpgate: this server accepts Jumpgate certificates only; {LOGIN}"
REVOKED = f"jumpgate: your certificate was revoked (your user was reset or removed); {LOGIN}"


def _utc(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(min(epoch, 2**37)))


def certificate_hint(cert: Certificate, *, trusted_cas: Iterable[PublicKey], login: str | None = None,
                     now: float | None = None) -> str | None:
    """The first thing wrong with ``cert`` that its holder can act on, as one line, or None.

    ``login`` is the login asked for when the certificate must list it (the node);
    ``now`` defaults to the clock.
    """
    now = time.time() if now is None else now
    if cert.signature_key.blob not in {ca.blob for ca in trusted_cas}:
        return f"jumpgate: your certificate is not from this cluster's user CA; {LOGIN} for this cluster"
    if now >= cert.valid_before:
        return f"jumpgate: your certificate expired at {_utc(cert.valid_before)}; {LOGIN}"
    if now < cert.valid_after:
        return f"jumpgate: your certificate is not valid before {_utc(cert.valid_after)} (check this computer's clock)"
    if login is not None and login not in cert.principals:
        allowed = ", ".join(cert.principals) or "none"
        return f"jumpgate: your certificate does not allow the login {login!r} (it allows: {allowed})"
    return None


def not_root_hint(own: str, login: str) -> str:
    """A node that does not run as root cannot switch users: it can log in only its own account.
    (Said whatever ``login`` is, before any lookup: it tells nothing of the host's accounts.)"""
    return (f"jumpgate: this node does not run as root, so it cannot switch users: it can log in only its own "
            f"account {own!r}, not {login!r}")


def proxy_name_hint(username: str, cert: Certificate) -> str:
    """At the proxy the SSH user name is the cluster user or one of the certificate's logins."""
    allowed = ", ".join(cert.principals) or "none"
    return (f"jumpgate: at the proxy, log in as your Jumpgate user or one of your certificate's logins "
            f"({allowed}), not {username!r}")

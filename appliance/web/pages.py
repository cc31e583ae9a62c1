"""The HTML pages of the web service: the invite page and a plain error page.

Pages are small, static and self-contained (no script, no external resource) so that the
Content-Security-Policy in :data:`PAGE_HEADERS` can forbid everything but inline style.
Every value shown is HTML-escaped here; callers pass plain text. The full browser signup
UI is a later issue: for now the invite page tells the user which command to run.
"""
from __future__ import annotations

import html

from ..timestamps import format_time

__all__ = ["PAGE_HEADERS", "error_page", "invite_page"]

# The invite URL holds a secret: never leak it through Referer, framing or a cache.
PAGE_HEADERS = (
    ("content-security-policy",
     "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; "
     "base-uri 'none'; form-action 'none'"),
    ("x-frame-options", "DENY"),
)

_STYLE = ("body{font-family:system-ui,sans-serif;max-width:42rem;margin:3rem auto;"
          "padding:0 1rem;color:#222}pre{background:#f3f3f3;padding:1rem;"
          "white-space:pre-wrap;word-break:break-all}")


def _document(title: str, body: str) -> bytes:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>\n").encode("utf-8")


def _when(epoch: float) -> str:
    return format_time(epoch)


def invite_page(*, user: str, cluster: str, expires: float, signup_command: str,
                login_command: str) -> bytes:
    """The page an invite URL opens: who is invited, and the command that finishes signup."""
    e = html.escape
    body = (f"<h1>Jumpgate: {e(cluster)}</h1>"
            f"<p>You are invited to sign up as <b>{e(user)}</b>. The invite works once and "
            f"is valid until {e(_when(expires))}.</p>"
            f"<p>Finish signing up in a terminal. You will choose a password (at least 12 "
            f"characters) and enrol an authenticator app with a QR code:</p>"
            f"<pre>{e(signup_command)}</pre>"
            f"<p>Then log in with:</p><pre>{e(login_command)}</pre>")
    return _document(f"Jumpgate invite for {user}", body)


def error_page(title: str, message: str) -> bytes:
    """A page for a failed request: a heading and one sentence."""
    return _document(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>")

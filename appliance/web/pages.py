"""The HTML pages of the web service: signup (from an invite), login, the node list, errors.

A page is a small server-made document that links the stylesheet and one ES module from
``/web/static/`` (the ``web_static`` package): no inline script or style anywhere, so the
Content-Security-Policy in :data:`PAGE_HEADERS` allows scripts, styles and connections to this
origin only (docs/security.md W6). Every value shown is HTML-escaped here; callers pass plain
text. Values a script needs go in ``data-`` attributes of ``<main>``.
"""
from __future__ import annotations

import html

import segno

from ..timestamps import format_time

__all__ = ["PAGE_HEADERS", "error_page", "invite_page", "login_page", "nodes_page", "qr_svg", "terminal_headers",
           "terminal_page"]

_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'{style}; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# The invite URL holds a secret: never leak it through Referer, framing or a cache.
PAGE_HEADERS = (
    ("content-security-policy", _CSP.format(style="")),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)


def terminal_headers(nonce: str) -> tuple[tuple[str, str], ...]:
    """The terminal page's headers: :data:`PAGE_HEADERS`, except that ``<style>`` elements
    carrying ``nonce`` are allowed (xterm.js's DOM renderer injects its theme and cell sizes as
    ``<style>`` elements; terminal.js gives them the nonce). Scripts stay ``'self'`` only (W12)."""
    return (("content-security-policy", _CSP.format(style=f" 'nonce-{nonce}'")),) + PAGE_HEADERS[1:]

e = html.escape


def _document(title: str, body: str, *, script: str | None = None, data: str = "", head: str = "") -> bytes:
    module = head + (f'<script type="module" src="/web/static/{e(script)}"></script>' if script else "")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1">'
            f'<meta name="referrer" content="no-referrer">'
            f"<title>{e(title)}</title>"
            f'<link rel="stylesheet" href="/web/static/app.css">{module}</head>'
            f"<body><main{data}>{body}</main></body></html>\n").encode("utf-8")


def _when(epoch: float) -> str:
    return format_time(epoch)


def qr_svg(text: str) -> str:
    """``text`` as an inline SVG QR code (segno; error correction M, as authenticator apps scan)."""
    return segno.make(text, error="m").svg_inline(scale=4, border=2, title="TOTP enrolment QR code")


def invite_page(*, user: str, cluster: str, expires: float, otp_uri: str,
                signup_command: str, login_command: str) -> bytes:
    """The page an invite URL opens: set a password, scan the code, confirm a code."""
    body = (f"<h1>Jumpgate: {e(cluster)}</h1>"
            f"<p>You are invited to sign up as <b>{e(user)}</b>. The invite works once and "
            f"is valid until {e(_when(expires))}.</p>"
            f'<form id="signup" novalidate>'
            f'<label for="password">Password (12 characters or more)</label>'
            f'<input id="password" type="password" autocomplete="new-password" minlength="12" required>'
            f'<label for="password2">Password again</label>'
            f'<input id="password2" type="password" autocomplete="new-password" required>'
            f"<p>Scan this code with an authenticator app, then type the code it shows:</p>"
            f'<figure class="qr">{qr_svg(otp_uri)}</figure>'
            f'<details><summary>Cannot scan it?</summary><pre>{e(otp_uri)}</pre></details>'
            f'<label for="otp_code">One-time code</label>'
            f'<input id="otp_code" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9]{{6}}" required>'
            f'<button type="submit">Sign up</button>'
            f'<p id="message" role="status" aria-live="polite"></p></form>'
            f"<h2>Or in a terminal</h2><pre>{e(signup_command)}</pre>"
            f"<p>and then log in with:</p><pre>{e(login_command)}</pre>")
    return _document(f"Jumpgate invite for {user}", body, script="signup.js")


def login_page(cluster: str) -> bytes:
    body = (f"<h1>Jumpgate: {e(cluster)}</h1>"
            f'<form id="login" novalidate>'
            f'<label for="user">User</label><input id="user" autocomplete="username" required>'
            f'<label for="password">Password</label>'
            f'<input id="password" type="password" autocomplete="current-password" required>'
            f'<label for="otp_code">One-time code</label>'
            f'<input id="otp_code" inputmode="numeric" autocomplete="one-time-code" required>'
            f'<button type="submit">Log in</button>'
            f'<p id="message" role="status" aria-live="polite"></p></form>')
    return _document(f"Jumpgate: log in to {cluster}", body, script="login.js")


def nodes_page(cluster: str) -> bytes:
    body = (f'<header><h1>Jumpgate: {e(cluster)}</h1><span id="who"></span>'
            f'<button id="logout" type="button">Log out</button></header>'
            f'<div class="filters">'
            f'<label for="search">Search</label>'
            f'<input id="search" type="search" placeholder="name, address or label">'
            f'<label for="selector">Labels</label>'
            f'<input id="selector" placeholder="env=prod,team=db">'
            f'</div>'
            f'<p id="status" role="status" aria-live="polite">Connecting…</p>'
            f'<table id="nodes"><caption>Nodes</caption><thead><tr><th scope="col">Name</th>'
            f'<th scope="col">Address</th><th scope="col">Labels</th><th scope="col">State</th>'
            f'<th scope="col">Terminal</th></tr>'
            f'</thead><tbody></tbody></table>')
    return _document(f"Jumpgate: nodes of {cluster}", body, script="nodes.js")


def terminal_page(cluster: str, nonce: str) -> bytes:
    """A terminal on a node: xterm.js and its fit addon (classic scripts from ``vendor/``,
    copied there from the npm packages by ``make pyz``), then terminal.js. The node and the
    login come from the page's query string; the nonce is the one of :func:`terminal_headers`."""
    head = ('<link rel="stylesheet" href="/web/static/vendor/xterm.css">'
            '<script src="/web/static/vendor/xterm.js"></script>'
            '<script src="/web/static/vendor/addon-fit.js"></script>')
    body = (f'<header><h1>Jumpgate: {e(cluster)}</h1><span id="where"></span>'
            f'<a href="/web/nodes">Nodes</a>'
            f'<button id="logout" type="button">Log out</button></header>'
            f'<p id="status" role="status" aria-live="polite">Connecting…</p>'
            f'<div id="terminal" class="terminal"></div>')
    return _document(f"Jumpgate: terminal ({cluster})", body, script="terminal.js", head=head,
                     data=f' data-style-nonce="{e(nonce)}"')


def error_page(title: str, message: str) -> bytes:
    """A page for a failed request: a heading and one sentence."""
    return _document(title, f"<h1>{e(title)}</h1><p>{e(message)}</p>")

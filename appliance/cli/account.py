"""``jumpgate signup``, ``login``, ``status`` and ``logout``: the user's account on this machine.

Each function takes the argparse Namespace of its subcommand, returns the exit status
and raises :class:`~appliance.cli.errors.CliError` for a failure. The attributes read
(``cli/main.py`` defines the flags)::

    signup  proxy: str | None   --proxy HOST:3080 (optional when TOKEN is the invite URL)
            token: str          positional: the invite token <secret>.<pin>, or its URL
                                (the token carries the web certificate's pin: no --ca-pin)
    login   proxy: str | None   --proxy HOST:3080 (default: the saved profile's)
            user: str | None    --user NAME (default: the saved profile's)
            ttl: str | None     --ttl 8h / 30m / 1h30m / 3600 (default: the cluster's, 12 h)
            ca_pin: str | None  --ca-pin sha256:... (default: the pin saved by signup/login)
            insecure: bool      --insecure: skip the pin check (first login elsewhere)
    status  (none)              exit 0 when logged in, 1 when not logged in or expired
    logout  (none)

Prompts (password, then the TOTP code) read one line each from stdin when it is not a
terminal, in that order; signup asks the password twice, then the code.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from appliance.client.http import JSONResponse, WebClientError, request, split_addr
from appliance.client.muxclient import connect_daemon, mux_enabled, restart_daemon, stop_daemon
from appliance.client.profile import ClientPaths, Profile, ProfileError
from appliance.timestamps import format_time
from appliance.web.tls import pin_from_token, parse_pin
from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import CERT_TYPE_USER, Certificate, PrivateKey, PublicKey, parse_public_line

from .errors import CliError
from .prompts import prompt

__all__ = ["login", "logout", "signup", "status"]

MIN_PASSWORD = 12
MAX_PASSWORD = 128
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,128}\.[A-Za-z0-9_-]{43}")
_TTL = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_INVITE_PATH = "/web/invite/"
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


def _run(async_fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    """Run one client request to completion; its failures become CliError."""
    try:
        return trio.run(functools.partial(async_fn, *args, **kwargs))
    except WebClientError as exc:
        raise CliError(str(exc)) from None


def _when(epoch: float) -> str:
    return format_time(epoch, local=True)   # the user's own certificate: their time zone


def _load_profile(paths: ClientPaths) -> Profile | None:
    try:
        return Profile.load(paths)
    except ProfileError as exc:
        raise CliError(str(exc)) from None


def _same_proxy(a: str, b: str) -> bool:
    try:
        return split_addr(a) == split_addr(b)
    except WebClientError:
        return False


def parse_ttl(text: str) -> int:
    """``8h``, ``30m``, ``1h30m``, ``1d``, ``90s`` or plain seconds → seconds."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    found = _TTL.fullmatch(text)
    if not text or not found:
        raise CliError(f"bad --ttl {text!r}: use e.g. 8h, 30m, 1h30m or seconds")
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _text_field(result: dict[str, Any], name: str) -> str:
    value = result.get(name)
    if not isinstance(value, str) or not value:
        raise CliError(f"the proxy's answer has no valid {name!r}")
    return value


# ---------------------------------------------------------------------------- signup


def _signup_target(proxy: str | None, token: str) -> tuple[str, str]:
    """(proxy address, token) from ``--proxy`` and a token or a whole invite URL."""
    token = token.strip()
    if token.startswith("https://") and _INVITE_PATH in token:
        url_host, _, token = token.removeprefix("https://").partition(_INVITE_PATH)
        proxy = proxy or url_host
    if not _TOKEN.fullmatch(token):
        raise CliError("that is not an invite token: copy the whole <secret>.<pin> token or URL")
    if not proxy:
        raise CliError("pass the proxy address: jumpgate signup --proxy HOST:3080 TOKEN")
    return proxy, token


def _print_otp(otp_uri: str) -> None:
    import segno  # only signup draws QR codes; keep it off every other command's start

    print("Add this account to your authenticator app: scan the QR code, or enter the URI.")
    print(otp_uri)
    drawing = io.StringIO()
    segno.make(otp_uri, error="m").terminal(out=drawing, compact=True)
    try:
        sys.stdout.write(drawing.getvalue())
    except UnicodeEncodeError:  # e.g. an ASCII-only output encoding: the URI must do
        print("(this terminal cannot show the QR code: enter the URI above instead)")
    sys.stdout.flush()


def _new_password(user: str) -> str:
    password = prompt(f"Choose a password for {user} (at least {MIN_PASSWORD} characters): ",
                      secret=True)
    if len(password) < MIN_PASSWORD:
        raise CliError(f"the password must have at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise CliError(f"the password must have at most {MAX_PASSWORD} characters")
    if prompt("Repeat the password: ", secret=True) != password:
        raise CliError("the passwords do not match")
    return password


def signup(args: argparse.Namespace) -> int:
    """Finish an invite: password, TOTP enrolment, confirmation code; save the proxy's pin."""
    proxy, token = _signup_target(getattr(args, "proxy", None), args.token)
    try:
        pin = pin_from_token(token)
    except ValueError as exc:
        raise CliError(f"bad invite token: {exc}") from None
    invite = _run(request, proxy, "GET", f"/v1/invite/{token}", pin=pin).body
    user, cluster = _text_field(invite, "user"), _text_field(invite, "cluster")
    otp_uri = _text_field(invite, "otp_uri")
    if not otp_uri.startswith("otpauth://"):
        raise CliError("the proxy sent an invalid otpauth:// URI")
    print(f"Signing up {user} on cluster {cluster} ({proxy}).")
    _print_otp(otp_uri)
    password = _new_password(user)
    code = prompt("Enter the current code from your authenticator app: ").strip()
    _run(request, proxy, "POST", "/v1/signup",
         {"token": token, "password": password, "otp_code": code}, pin=pin)
    _save(_signed_up_profile(ClientPaths.default(), proxy, user, cluster, pin))
    print(f"Signed up as {user}. Log in with: jumpgate login --proxy {proxy} --user {user}")
    return 0


def _signed_up_profile(paths: ClientPaths, proxy: str, user: str, cluster: str,
                       pin: str) -> Profile:
    """The profile after signup: the same identity keeps its login, another replaces it."""
    previous = _load_existing(paths)
    if previous is not None and previous.user == user and _same_proxy(previous.proxy, proxy):
        return dataclasses.replace(previous, proxy=proxy, cluster=cluster, web_pin=pin)
    try:
        paths.remove_credentials()  # a profile is one identity: drop the other one's key
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    return Profile(proxy=proxy, user=user, cluster=cluster, web_pin=pin, paths=paths)


def _load_existing(paths: ClientPaths) -> Profile | None:
    """The saved profile, if readable; a corrupt one is about to be replaced anyway."""
    try:
        return Profile.load(paths)
    except ProfileError:
        return None


def _save(profile: Profile) -> None:
    try:
        profile.save()
    except ProfileError as exc:
        raise CliError(str(exc)) from None


# ----------------------------------------------------------------------------- login


def _login_target(args: argparse.Namespace,
                  saved: Profile | None) -> tuple[str, str, str | None, bool]:
    """(proxy, user, pin, insecure) from the flags, falling back to the saved profile."""
    proxy = getattr(args, "proxy", None) or (saved.proxy if saved else None)
    if not proxy:
        raise CliError("pass the proxy address: jumpgate login --proxy HOST:3080 --user NAME")
    same = saved is not None and _same_proxy(saved.proxy, proxy)
    user = getattr(args, "user", None) or (saved.user if saved and same else None)
    if not user:
        raise CliError("pass your user name: jumpgate login --user NAME")
    ca_pin = getattr(args, "ca_pin", None)
    insecure = bool(getattr(args, "insecure", False))
    if ca_pin:
        try:
            return proxy, user, parse_pin(ca_pin), False  # a pin given wins over --insecure
        except ValueError as exc:
            raise CliError(f"bad --ca-pin: {exc}") from None
    pin = saved.web_pin if saved is not None and same and saved.web_pin else None
    if pin is None and not insecure:
        raise CliError(f"no pin saved for {proxy}: pass --ca-pin sha256:... (ask your "
                       f"administrator) or --insecure to skip the TLS certificate check")
    return proxy, user, pin, insecure and pin is None


def _host_ca_key(line: str) -> PublicKey | Certificate:
    """The key of a host CA given as a key line or as an ``@cert-authority`` known_hosts line."""
    fields = line.split(None, 2)
    if fields and fields[0] == "@cert-authority":
        if len(fields) < 3:
            raise KeyFormatError("incomplete @cert-authority line")
        line = fields[2]
    return parse_public_line(line)[0]


def _parse_login_result(result: dict[str, Any], key: PrivateKey) -> tuple[Certificate, PublicKey]:
    """The certificate (checked to be a user certificate for ``key``) and the host CA."""
    try:
        cert, _ = parse_public_line(_text_field(result, "cert"))
        host_ca = _host_ca_key(_text_field(result, "host_ca"))
        user_ca = parse_public_line(result["user_ca"])[0] if result.get("user_ca") else None
    except (KeyFormatError, TypeError) as exc:
        raise CliError(f"the proxy sent an invalid key or certificate: {exc}") from None
    if (not isinstance(cert, Certificate) or cert.cert_type != CERT_TYPE_USER
            or cert.public_key != key.public_key or not cert.principals):
        raise CliError("the proxy sent a certificate that is not a user certificate for our key")
    if user_ca is not None and cert.signature_key != user_ca:
        raise CliError("the proxy sent a certificate not signed by the cluster's user CA")
    if not isinstance(host_ca, PublicKey):
        raise CliError("the proxy sent a host CA that is not a plain public key")
    return cert, host_ca


def login(args: argparse.Namespace) -> int:
    """Password + TOTP → a fresh key and a short-lived certificate in the profile."""
    paths = ClientPaths.default()
    saved = _load_existing(paths)
    proxy, user, pin, insecure = _login_target(args, saved)
    ttl = parse_ttl(args.ttl) if getattr(args, "ttl", None) else None
    password = prompt(f"Password for {user}: ", secret=True)
    code = prompt("Code from your authenticator app: ").strip()
    key = PrivateKey.generate("ssh-ed25519")
    body = {"user": user, "password": password, "otp_code": code,
            "public_key": key.public_key.to_line()}
    if ttl is not None:
        body["ttl"] = ttl
    restart_daemon(paths.home)  # the old one holds the old certificate; the new one starts meanwhile
    response: JSONResponse = _run(request, proxy, "POST", "/v1/login", body, pin=pin,
                                  insecure=insecure)
    cert, host_ca = _parse_login_result(response.body, key)
    cluster = _text_field(response.body, "cluster")
    proxy_ssh = response.body.get("proxy_ssh")
    profile = Profile(proxy=proxy, user=user, cluster=cluster, web_pin=response.peer_pin,
                      proxy_ssh=proxy_ssh if isinstance(proxy_ssh, str) else "",
                      expires=float(cert.valid_before), logins=cert.principals, paths=paths)
    _write_credentials(profile, key, cert, host_ca)
    _save(profile)
    if mux_enabled():
        problem = connect_daemon(paths.home)  # the first `jumpgate ssh` finds the proxy hop done
        if problem is not None:
            print(f"jumpgate: note: the session daemon is not connected yet ({problem}); "
                  "the first `jumpgate ssh` will connect", file=sys.stderr)
    print(f"logged in as {user}, valid until {_when(cert.valid_before)}")
    _trust_node_names(profile)
    return 0


def _write_credentials(profile: Profile, key: PrivateKey, cert: Certificate, host_ca: PublicKey) -> None:
    """Key, certificate, and the host CA trusted for the proxy and ``*.CLUSTER`` (docs/security.md J6)."""
    from appliance.client.ssh import ConnectError, proxy_endpoint
    from appliance.client.trust import cluster_wildcard_allowed, known_hosts_patterns
    try:
        patterns = known_hosts_patterns(profile.cluster, [proxy_endpoint(profile)], ())
        profile.paths.write_credentials(key, cert, host_ca, comment=f"{profile.user}@{profile.cluster}",
                                        trusted_for=patterns)
    except (ProfileError, ConnectError) as exc:
        raise CliError(str(exc)) from None
    if not cluster_wildcard_allowed(profile.cluster):
        print(f"jumpgate: warning: the cluster name {profile.cluster!r} is a public suffix: "
              f"'*.{profile.cluster}' is left out of known_hosts; reach nodes by their bare names",
              file=sys.stderr)


def _trust_node_names(profile: Profile) -> None:
    """Add the nodes' bare names to known_hosts, from the proxy's node list (best effort)."""
    from appliance.cli.remote import refresh_trusted_names
    problem = refresh_trusted_names(profile)
    if problem is not None:
        print(f"jumpgate: note: node names are not in known_hosts yet ({problem}); "
              "`jumpgate config` adds them", file=sys.stderr)


# ---------------------------------------------------------------------- status, logout


def status(args: argparse.Namespace) -> int:
    """Print user, logins, cluster, proxy and expiry; 1 when not logged in or expired."""
    profile = _load_profile(ClientPaths.default())
    if profile is None or profile.expires <= 0 or not profile.cert_path.exists():
        print("not logged in")
        return 1
    expired = profile.expires <= time.time()
    proxy = profile.proxy + (f" (SSH {profile.proxy_ssh})" if profile.proxy_ssh else "")
    rows = [("User", profile.user), ("Logins", ", ".join(profile.logins)),
            ("Cluster", profile.cluster), ("Proxy", proxy),
            ("Expired" if expired else "Valid until", _when(profile.expires))]
    for label, value in rows:
        print(f"{label + ':':<13}{value}")
    if expired:
        print(f"expired: run jumpgate login --proxy {profile.proxy} --user {profile.user}")
        return 1
    return 0


def logout(args: argparse.Namespace) -> int:
    """Remove the key, the certificate, known_hosts and the profile."""
    paths = ClientPaths.default()
    profile = _load_existing(paths)
    stop_daemon(paths.home)  # running sessions finish; no new one starts
    try:
        removed = paths.clear()
    except ProfileError as exc:
        raise CliError(str(exc)) from None
    print(f"logged out {profile.user}" if profile and removed else "not logged in")
    return 0

"""``jumpgate signup``, ``login`` and ``logout``: the user's profiles on this machine
(``status`` is :mod:`.status`; where profiles live, :mod:`appliance.client.profiles`).

Each function takes the argparse Namespace of its subcommand, returns the exit status
and raises :class:`~appliance.cli.errors.CliError` for a failure. The attributes read
(``cli/main.py`` defines the flags)::

    signup  proxy: str | None   --proxy HOST:3080 (optional when TOKEN is the invite URL)
            token: str          positional: the invite token <secret>.<pin>, or its URL
                                (the token carries the web certificate's pin: no --ca-pin)
    login   proxy: str | None   --proxy HOST:3080 (default: the current profile's, else the
                                only proxy this machine knows)
            user: str | None    --user NAME (default: the current profile's)
            ttl: str | None     --ttl 8h / 30m / 1h30m / 3600 (default: the cluster's, 12 h)
            ca_pin: str | None  --ca-pin sha256:... (default: the pin kept for the proxy)
            insecure: bool      --insecure: skip the pin check when none is kept (warns)
    logout  proxy, user: str | None, all: bool   which profiles (default: the current one)

Flows forgive mistakes and check before they ask (issue 14 item 9): signup asks again after
a short password, a mismatch or a wrong code (:data:`ATTEMPTS` times; the invite is used only
by a signup that succeeds); login first pings the proxy (address, pin, the cluster's TTL
limits), then asks for the password and the code. A login as a user whose profile here holds
a valid certificate switches to it without asking. No flow writes outside its own profile
(docs/security.md F3).

Prompts read one line each from stdin when it is not a terminal, in the order asked (a retry
reads the next lines).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from appliance.client.http import ApiError, JSONResponse, WebClientError, request, split_addr
from appliance.client.muxclient import connect_daemon, mux_enabled, restart_daemon, stop_daemon
from appliance.client.profile import ClientPaths, Profile, ProfileError
from appliance.client.profiles import ProfileStore
from appliance.timestamps import format_time
from appliance.web.tls import pin_from_token, parse_pin
from ssh_proto.errors import KeyFormatError
from ssh_proto.keys import CERT_TYPE_USER, Certificate, PrivateKey, PublicKey, parse_public_line

from .errors import CliError
from .prompts import prompt

__all__ = ["login", "logout", "signup"]

MIN_PASSWORD = 12
MAX_PASSWORD = 128
#: How many times signup asks again after a short password, a mismatch or a wrong code.
ATTEMPTS = 3
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
    """A new password, asked again (up to :data:`ATTEMPTS` times) when too short, too long or
    not repeated the same."""
    problem = ""
    for _ in range(ATTEMPTS):
        password = prompt(f"Choose a password for {user} (at least {MIN_PASSWORD} characters): ",
                          secret=True)
        if len(password) < MIN_PASSWORD:
            problem = f"the password must have at least {MIN_PASSWORD} characters"
        elif len(password) > MAX_PASSWORD:
            problem = f"the password must have at most {MAX_PASSWORD} characters"
        elif prompt("Repeat the password: ", secret=True) != password:
            problem = "the passwords do not match"
        else:
            return password
        print(f"jumpgate: {problem}; try again", file=sys.stderr)
    raise CliError(f"{problem} ({ATTEMPTS} tries); run the same `jumpgate signup` again")


def _confirm_code(proxy: str, token: str, password: str, pin: str) -> None:
    """Send the signup with a current code, asking for another when the proxy says it is
    wrong (the invite is only used by a signup that succeeds), up to :data:`ATTEMPTS` times."""
    for attempt in range(1, ATTEMPTS + 1):
        code = prompt("Enter the current code from your authenticator app: ").strip()
        try:
            trio.run(functools.partial(request, proxy, "POST", "/v1/signup",
                                       {"token": token, "password": password, "otp_code": code}, pin=pin))
            return
        except ApiError as exc:
            if exc.code != "access_denied" or attempt == ATTEMPTS:
                raise CliError(str(exc)) from None
            print(f"jumpgate: {exc.message}; try the next code", file=sys.stderr)
        except WebClientError as exc:
            raise CliError(str(exc)) from None


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
    store = _open_store()
    _checked(store.paths_for, proxy, user)  # a name this machine can keep a profile for
    print(f"Signing up {user} on cluster {cluster} ({proxy}).")
    _print_otp(otp_uri)
    password = _new_password(user)
    _confirm_code(proxy, token, password, pin)
    _checked(store.remember, proxy, pin, cluster)
    _save_signed_up(store, proxy, user, cluster, pin)
    print(f"Signed up as {user}. Log in with: jumpgate login --proxy {proxy} --user {user}")
    return 0


def _save_signed_up(store: ProfileStore, proxy: str, user: str, cluster: str, pin: str) -> None:
    """The user's own profile (its key and certificate, if any, kept); it becomes current
    only when the current one holds no valid certificate: another user's login is never
    undone by a signup (issue 14 item 19)."""
    paths = _checked(store.paths_for, proxy, user)
    previous = _load_existing(paths)
    if previous is not None:
        profile = dataclasses.replace(previous, proxy=proxy, cluster=cluster, web_pin=pin)
    else:
        profile = Profile(proxy=proxy, user=user, cluster=cluster, web_pin=pin, paths=paths)
    _save(profile)
    current = _current_or_none(store)
    if current is None or current.paths.home == paths.home or not current.logged_in():
        _checked(store.switch, paths)


def _open_store() -> ProfileStore:
    return _checked(ProfileStore.open)


def _checked(func: Callable[..., T], *args: Any) -> T:
    """``func(*args)``, its ProfileError one line for the user."""
    try:
        return func(*args)
    except ProfileError as exc:
        raise CliError(str(exc)) from None


def _load_existing(paths: ClientPaths) -> Profile | None:
    """The saved profile, if readable; a corrupt one is about to be replaced anyway."""
    try:
        return Profile.load(paths)
    except ProfileError:
        return None


def _save(profile: Profile) -> None:
    _checked(profile.save)


# ----------------------------------------------------------------------------- login


def _default_proxy(args: argparse.Namespace, store: ProfileStore, current: Profile | None) -> str:
    """``--proxy``, else the current profile's, else the only proxy this machine knows."""
    proxy = getattr(args, "proxy", None) or (current.proxy if current else None)
    if not proxy:
        known = _checked(store.known_proxies)
        proxy = known[0] if len(known) == 1 else None
    if not proxy:
        raise CliError("pass the proxy address: jumpgate login --proxy HOST:3080 --user NAME")
    return proxy


def _login_target(args: argparse.Namespace, store: ProfileStore,
                  current: Profile | None) -> tuple[str, str, str | None, bool]:
    """(proxy, user, pin, insecure) from the flags, falling back to the current profile and
    to the pins this machine keeps for the proxies it knows (across logouts)."""
    proxy = _default_proxy(args, store, current)
    same = current is not None and _same_proxy(current.proxy, proxy)
    user = getattr(args, "user", None) or (current.user if current and same else None)
    if not user:
        raise CliError("pass your user name: jumpgate login --user NAME")
    ca_pin = getattr(args, "ca_pin", None)
    insecure = bool(getattr(args, "insecure", False))
    if ca_pin:
        if insecure:
            print("jumpgate: note: --insecure ignored: the --ca-pin given is checked", file=sys.stderr)
        try:
            return proxy, user, parse_pin(ca_pin), False
        except ValueError as exc:
            raise CliError(f"bad --ca-pin: {exc}") from None
    pin = _known_pin(store, proxy)
    if pin is not None:
        if insecure:
            print(f"jumpgate: note: --insecure ignored: the pin this machine keeps for {proxy} is checked",
                  file=sys.stderr)
        return proxy, user, pin, False
    if not insecure:
        raise CliError(f"no pin saved for {proxy}: pass --ca-pin sha256:... (`jumpgate ctl status` on the "
                       f"auth host shows it, ask your administrator) or --insecure to skip the TLS "
                       f"certificate check")
    print(f"jumpgate: WARNING: --insecure: the TLS certificate of {proxy} is NOT checked; whoever answers "
          f"at that address gets your password and one-time code. Prefer --ca-pin sha256:... "
          f"(`jumpgate ctl status` on the auth host shows it).", file=sys.stderr)
    return proxy, user, None, True


def _known_pin(store: ProfileStore, proxy: str) -> str | None:
    """The pin kept for ``proxy`` (clusters.json, else a profile of that proxy's)."""
    pin = _checked(store.known_pin, proxy)
    if pin is None:
        pin = next((p.web_pin for p in store.profiles() if p.web_pin and _same_proxy(p.proxy, proxy)), None)
    return pin


def _check_first(proxy: str, pin: str | None, insecure: bool, ttl: int | None) -> str:
    """Before asking for secrets: the proxy answers at ``proxy`` with the pinned certificate
    (``/v1/ping``), and ``ttl`` is within the cluster's limits. Returns the pin the proxy
    presented, which the login itself is then held to (an ``--insecure`` login included)."""
    try:
        response: JSONResponse = trio.run(functools.partial(request, proxy, "GET", "/v1/ping", pin=pin,
                                                            insecure=insecure))
    except WebClientError as exc:
        raise CliError(f"cannot reach the proxy at {proxy}: {exc}") from None
    limits = response.body.get("cert_ttl")
    if ttl is not None and isinstance(limits, dict):
        low, high = limits.get("min"), limits.get("max")
        if isinstance(high, int) and ttl > high:
            raise CliError(f"--ttl {_span(ttl)} is above the cluster's limit of {_span(high)}")
        if isinstance(low, int) and ttl < low:
            raise CliError(f"--ttl {_span(ttl)} is below the cluster's minimum of {_span(low)}")
    return response.peer_pin


def _span(seconds: float) -> str:
    """``12h``, ``1h30m``, ``45s``: how a TTL is written on the command line."""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return text or "0s"


def _switch_to(store: ProfileStore, profile: Profile) -> int:
    """``jumpgate login`` as a user whose profile here still holds a valid certificate: make
    it current (no password asked), and have the session daemon serve it, not the old one."""
    stop_daemon(store.home)  # it served the previous profile: the next one starts for this one
    _checked(store.switch, profile.paths)
    if mux_enabled():
        connect_daemon(store.home)
    print(f"switched to {profile.user} at {profile.proxy}, valid until {_when(profile.expires)}")
    return 0


def _host_ca_key(line: str) -> PublicKey | Certificate:
    """The key of a host CA given as a key line or as an ``@cert-authority`` known_hosts line."""
    fields = line.split(None, 2)
    if fields and fields[0] == "@cert-authority":
        if len(fields) < 3:
            raise KeyFormatError("incomplete @cert-authority line")
        line = fields[2]
    return parse_public_line(line)[0]


def _parse_login_result(result: dict[str, Any],
                        key: PrivateKey) -> tuple[Certificate, PublicKey, PublicKey | None]:
    """The certificate (checked to be a user certificate for ``key``), the host CA and the
    user CA (which signed it; ``jumpgate status`` checks the certificate against it)."""
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
    if user_ca is not None and not isinstance(user_ca, PublicKey):
        raise CliError("the proxy sent a user CA that is not a plain public key")
    return cert, host_ca, user_ca


def login(args: argparse.Namespace) -> int:
    """Password + TOTP → a fresh key and a short-lived certificate in the profile of this
    proxy and user, which becomes current; a valid profile of another user is switched to."""
    store = _open_store()
    current = _current_or_none(store)
    proxy, user, pin, insecure = _login_target(args, store, current)
    ttl = parse_ttl(args.ttl) if getattr(args, "ttl", None) else None
    paths = _checked(store.paths_for, proxy, user)
    existing = _load_existing(paths)
    if existing is not None and ttl is None and existing.logged_in() and \
            (current is None or current.paths.home != paths.home):
        return _switch_to(store, existing)
    pin = _check_first(proxy, pin, insecure, ttl)  # the login is held to what the ping saw
    password = prompt(f"Password for {user}: ", secret=True)
    code = prompt("Code from your authenticator app: ").strip()
    key = PrivateKey.generate("ssh-ed25519")
    body = {"user": user, "password": password, "otp_code": code,
            "public_key": key.public_key.to_line()}
    if ttl is not None:
        body["ttl"] = ttl
    restart_daemon(store.home)  # the old one holds the old certificate; the new one starts meanwhile
    response: JSONResponse = _run(request, proxy, "POST", "/v1/login", body, pin=pin)
    cert, host_ca, user_ca = _parse_login_result(response.body, key)
    cluster = _text_field(response.body, "cluster")
    proxy_ssh = response.body.get("proxy_ssh")
    profile = Profile(proxy=proxy, user=user, cluster=cluster, web_pin=response.peer_pin,
                      proxy_ssh=proxy_ssh if isinstance(proxy_ssh, str) else "",
                      expires=float(cert.valid_before), logins=cert.principals,
                      user_ca=user_ca.to_line() if user_ca is not None else "", paths=paths)
    _write_credentials(profile, key, cert, host_ca)
    _save(profile)
    _checked(store.remember, proxy, response.peer_pin, cluster)
    _checked(store.switch, paths)
    if mux_enabled():
        problem = connect_daemon(store.home)  # the first `jumpgate ssh` finds the proxy hop done
        if problem is not None:
            print(f"jumpgate: note: the session daemon is not connected yet ({problem}); "
                  "the first `jumpgate ssh` will connect", file=sys.stderr)
    print(f"logged in as {user}, valid until {_when(cert.valid_before)}")
    if insecure:
        print(f"jumpgate: {proxy}'s certificate {response.peer_pin} is pinned from now on", file=sys.stderr)
    _trust_node_names(profile)
    return 0


def _current_or_none(store: ProfileStore) -> Profile | None:
    """The current profile; an unreadable one counts as none (a login replaces it)."""
    try:
        return store.current()
    except ProfileError:
        return None


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


# ---------------------------------------------------------------------------- logout


def _logout_targets(args: argparse.Namespace, store: ProfileStore) -> list[Profile]:
    """The profiles ``logout`` removes: ``--all``, the one ``--proxy``/``--user`` name, or the current."""
    if getattr(args, "all", False):
        return store.profiles()
    proxy, user = getattr(args, "proxy", None), getattr(args, "user", None)
    current = _current_or_none(store)
    if not proxy and not user:
        return [current] if current is not None else []
    return [p for p in store.profiles()
            if (not user or p.user == user) and (not proxy or _same_proxy(p.proxy, proxy))]


def logout(args: argparse.Namespace) -> int:
    """Remove one profile's key, certificate and known_hosts (the current one, or the one
    ``--proxy``/``--user`` name, or ``--all``); the others stay, and so do the proxies' pins."""
    store = _open_store()
    targets = _logout_targets(args, store)
    if any(store.is_current(p) for p in targets):
        stop_daemon(store.home)  # running sessions finish; no new one starts
    removed = [p for p in targets if _checked(store.remove, p)]
    if not removed:
        print("not logged in")
    for profile in removed:
        print(f"logged out {profile.user} at {profile.proxy}")
    return 0

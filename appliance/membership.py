"""Cluster membership: joining the cluster and staying in it, for nodes and proxies alike.

This module owns a joined host's :class:`Membership` (its host key, host certificate and
the cluster's CAs) on disk, and its conversation with the auth API after the join. (It
was ``appliance/node/agent.py``: it has nothing to do with SSH agents, and proxies use it
as much as nodes.)

* :func:`join` — a join token (``<secret>.<host CA pin>``) becomes a host certificate.
  The auth server is verified by the pin (no trust on first use), the host's own host
  key is made here and never leaves the host; the join request carries a re-join proof
  signed with it (:mod:`appliance.auth.rejoin`: a name already registered to this key is
  a re-join, docs/security.md J2); what comes back is checked (a host certificate for
  *our* key and name, signed by the pinned CA) before it is saved.
* :func:`load_membership` — the saved membership, checked the same way.
* :func:`heartbeat_loop` — tell the auth server we are alive every ``interval``
  seconds, reconnecting with a bounded, jittered exponential backoff, and renew the
  host certificate when less than half of its life remains (the same key; the new
  certificate replaces the old one on disk and in the :class:`MembershipHolder`).

Files, in ``<data_dir>/<kind>/`` (directory 0700; the names are those release 0.1.0
wrote, so a data dir joined then keeps loading)::

    host_key             the node's or proxy's private host key (0600)
    host_key-cert.pub    its host certificate, key id "<kind>:<name>"
    user_ca.pub          the cluster user CA (whom a node lets in)
    host_ca.pub          the cluster host CA (how we know the auth server and proxies)
    identity.json        {"v": 1, "kind", "name", "cluster", "auth_server"}; written last

>>> member = load_membership(data_dir, "node") or await join(              # doctest: +SKIP
...     "auth.example.com:3025", token, kind="node", name="db1",
...     addresses=["10.0.0.5"], labels={"env": "dev"}, data_dir=data_dir)
>>> holder = MembershipHolder(member)                                      # doctest: +SKIP
>>> await nursery.start(partial(heartbeat_loop, holder.api_factory("auth.example.com:3025"),
...     "db1", "10.0.0.5:3022", lambda: {"env": "dev"}, holder=holder))   # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import random
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncContextManager

import trio

from ssh_proto.certs import validate_host_certificate
from ssh_proto.errors import CertificateError, KeyFormatError, SSHError
from ssh_proto.keys import (CERT_TYPE_HOST, Certificate, PrivateKey, PublicKey, load_private_key, load_public_file,
                            parse_public_line, write_private_key, write_public_file)

from .api.client import ApiClient, ApiError
from .auth import rejoin
from .auth.ca import pin_matches
from .files import private_dir, write_atomic
from .inventory import HEARTBEAT_INTERVAL
from .timestamps import format_time

__all__ = ["MembershipError", "Backoff", "Membership", "MembershipHolder", "heartbeat_loop", "host_key_for", "join",
           "load_membership", "parse_token", "renew_if_needed"]

log = logging.getLogger("jumpgate.membership")

KINDS = ("node", "proxy")
HOST_KEY = "host_key"
HOST_CERT = "host_key-cert.pub"
USER_CA = "user_ca.pub"
HOST_CA = "host_ca.pub"
IDENTITY = "identity.json"
IDENTITY_VERSION = 1
MAX_BACKOFF = 60.0
_MAX_FILE = 64 * 1024

ApiFactory = Callable[[], AsyncContextManager[ApiClient]]


class MembershipError(Exception):
    """Joining failed, or the saved membership is unusable (one line; no secrets)."""


@dataclass(frozen=True, slots=True)
class Membership:
    """A joined node's or proxy's credentials, as saved in ``<data_dir>/<kind>/``."""

    kind: str
    name: str
    cluster: str
    host_key: PrivateKey
    host_cert: Certificate
    user_ca: PublicKey
    host_ca: PublicKey
    auth_server: str
    directory: Path

    def needs_renewal(self, now: float) -> bool:
        """True when less than half of the certificate's life remains."""
        life = self.host_cert.valid_before - self.host_cert.valid_after
        return self.host_cert.valid_before - now < life / 2

    def expired(self, now: float) -> bool:
        return now >= self.host_cert.valid_before


class MembershipHolder:
    """The current membership of a running node or proxy; renewal swaps it in place.

    Servers read ``holder.current`` at each new connection, so a renewed certificate
    is used without a restart.
    """

    def __init__(self, membership: Membership):
        self.current = membership

    def api_factory(self, auth_addr: str, *, connect_timeout: float = 30.0,
                    first_stream: Callable[[], trio.abc.Stream | None] = lambda: None) -> ApiFactory:
        """Connections to the auth API with whatever membership is current at the time.
        ``first_stream()`` is asked at each connection for a stream already open to
        ``auth_addr`` (the start-up probe's, :class:`appliance.tunnel.transport.HandOff`);
        None, as it is after the first, means dial."""
        @contextlib.asynccontextmanager
        async def factory() -> AsyncIterator[ApiClient]:
            ident = self.current
            stream = first_stream()
            try:
                async with ApiClient.connect(auth_addr, identity=(ident.host_key, ident.host_cert),
                                             host_ca_key=ident.host_ca, connect_timeout=connect_timeout,
                                             stream=stream) as api:
                    yield api
            finally:
                if stream is not None:
                    await trio.aclose_forcefully(stream)
        return factory


def parse_token(token: str) -> tuple[str, str]:
    """``<secret>.<pin>`` -> (secret, "sha256:<pin>"); MembershipError when malformed."""
    secret, sep, pin = token.strip().partition(".")
    if not sep or not secret or not pin or "." in pin or len(token) > 256:
        raise MembershipError("malformed join token: expected <secret>.<pin> as printed by "
                         "'jumpgate ctl tokens add'")
    return secret, "sha256:" + pin.removeprefix("sha256:")


# ---------------------------------------------------------------------------- files

def _kind_dir(data_dir: str | os.PathLike[str], kind: str) -> Path:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    return Path(data_dir) / kind


def _load_host_key(path: Path) -> PrivateKey:
    mode = os.stat(path).st_mode
    if stat.S_IMODE(mode) & 0o077:
        raise MembershipError(f"{path} is readable by other users (chmod 600 it)")
    try:
        return load_private_key(path)
    except KeyFormatError as exc:
        raise MembershipError(f"{path}: {exc}") from None


def host_key_for(directory: Path) -> PrivateKey:
    """The host key kept in ``directory``, generated (ed25519, mode 0600) on first use."""
    path = private_dir(directory) / HOST_KEY
    if path.exists():
        return _load_host_key(path)
    key = PrivateKey.generate("ssh-ed25519")
    write_private_key(path, key, comment=f"jumpgate-{directory.name}-host-key")
    return key


def _save(member: Membership) -> None:
    d = private_dir(member.directory)
    write_public_file(d / HOST_CERT, member.host_cert)
    write_public_file(d / USER_CA, member.user_ca, f"jumpgate-user-ca@{member.cluster}")
    write_public_file(d / HOST_CA, member.host_ca, f"jumpgate-host-ca@{member.cluster}")
    meta = {"v": IDENTITY_VERSION, "kind": member.kind, "name": member.name,
            "cluster": member.cluster, "auth_server": member.auth_server}
    write_atomic(d / IDENTITY, json.dumps(meta, indent=2).encode() + b"\n", 0o600)


# ---------------------------------------------------------------------------- checks

def _parse_key_line(text: Any, what: str) -> PublicKey:
    """A key line, optionally behind ``@cert-authority <patterns>`` (known_hosts form)."""
    if not isinstance(text, str):
        raise MembershipError(f"the auth server sent no {what}")
    fields = text.split()
    if fields and fields[0] == "@cert-authority":
        fields = fields[2:]
    try:
        key, _ = parse_public_line(" ".join(fields))
    except KeyFormatError as exc:
        raise MembershipError(f"the auth server sent an invalid {what}: {exc}") from None
    if not isinstance(key, PublicKey):
        raise MembershipError(f"the {what} must be a plain key")
    return key


def _check_cert(cert: Any, key: PrivateKey, kind: str, name: str, host_ca: PublicKey, now: float) -> Certificate:
    """Our key, our name, host type, signed by the host CA and valid now."""
    if not isinstance(cert, Certificate) or cert.cert_type != CERT_TYPE_HOST:
        raise MembershipError("the host certificate is not a host certificate")
    if cert.public_key != key.public_key:
        raise MembershipError("the host certificate is for another key")
    if cert.key_id != f"{kind}:{name}":
        raise MembershipError(f"the host certificate is for {cert.key_id!r}, not {kind}:{name}")
    try:
        validate_host_certificate(cert, hostname=name, trusted_cas=[host_ca], now=now)
    except CertificateError as exc:
        raise MembershipError(f"the host certificate is not usable: {exc}") from None
    return cert


def _membership_from_result(result: Any, key: PrivateKey, kind: str, name: str, auth_server: str,
                          directory: Path, now: float) -> Membership:
    if not isinstance(result, Mapping):
        raise MembershipError("the auth server sent a malformed join result")
    host_ca = _parse_key_line(result.get("host_ca"), "host CA")
    user_ca = _parse_key_line(result.get("user_ca"), "user CA")
    try:
        cert, _ = parse_public_line(str(result.get("host_cert", "")))
    except KeyFormatError as exc:
        raise MembershipError(f"the auth server sent an invalid host certificate: {exc}") from None
    cluster = result.get("cluster")
    if not isinstance(cluster, str) or not cluster:
        raise MembershipError("the auth server sent no cluster name")
    cert = _check_cert(cert, key, kind, name, host_ca, now)
    return Membership(kind, name, cluster, key, cert, user_ca, host_ca, auth_server, directory)


# ---------------------------------------------------------------------------- join

async def join(auth_addr: str, token: str, *, kind: str, name: str, addresses: Sequence[str] = (),
               labels: Mapping[str, str] | None = None, data_dir: str | os.PathLike[str], addr: str = "",
               clock: Callable[[], float] = time.time, connect_timeout: float = 30.0,
               via: Callable[[str], AsyncContextManager[trio.abc.Stream]] | None = None,
               stream: trio.abc.Stream | None = None) -> Membership:
    """Join the cluster as ``kind`` ("node" or "proxy") named ``name``; save and return the membership.

    ``addresses`` become certificate principals (besides name and name.CLUSTER);
    ``addr`` is where the proxy reaches us (host:port), "" if not known yet.
    With ``via`` (a node joining through a proxy's tunnel port, :func:`appliance.tunnel.agent.join_stream`),
    ``via(pin)`` gives the stream to the auth API and ``auth_addr`` is the name its certificate
    must carry (``auth``). ``stream`` is a connection already open to ``auth_addr`` (the
    start-up probe's: then the join costs the auth port no connection of its own); it is closed.
    Raises :class:`ApiError` when the auth server refuses (``already_used``,
    ``expired``, ...), ``HostKeyNotVerifiable`` when the server does not match the
    token's pin, MembershipError for a malformed token or answer.
    """
    async with contextlib.AsyncExitStack() as stack:
        if stream is not None:
            stack.push_async_callback(trio.aclose_forcefully, stream)
        secret, pin = parse_token(token)
        directory = _kind_dir(data_dir, kind)
        key = await trio.to_thread.run_sync(host_key_for, directory)
        if stream is None and via is not None:
            stream = await stack.enter_async_context(via(pin))
        api = await stack.enter_async_context(ApiClient.connect_join(auth_addr, secret, pin, stream=stream,
                                                                     connect_timeout=connect_timeout))
        # Signed every time: it counts only when the name is taken, by this key (a re-join, J2).
        proof = rejoin.sign_proof(key, api.session_id, kind, name)
        result = await api.join(kind=kind, name=name, host_public_key_blob=key.public_key.blob,
                                addresses=list(addresses), labels=dict(labels or {}), addr=addr, proof=proof)
    name = result.get("name", name) if isinstance(result, Mapping) else name
    member = _membership_from_result(result, key, kind, name, auth_addr, directory, clock())
    if not pin_matches(pin, member.host_ca.blob):
        raise MembershipError("the host CA sent by the auth server does not match the token's pin")
    _warn_dropped(result, kind, name)
    await trio.to_thread.run_sync(_save, member)
    log.info("joined cluster %s as %s:%s (certificate valid until %s)", member.cluster, kind, name,
             format_time(member.host_cert.valid_before))
    return member


def _warn_dropped(result: Mapping[str, Any], kind: str, name: str) -> None:
    """Say which requested addresses the certificate does not name (J3: nobody vouched)."""
    dropped = result.get("dropped") or ()
    if isinstance(dropped, (list, tuple)) and dropped:
        shown = ", ".join(str(a)[:64] for a in dropped[:16])
        log.warning("the %s certificate of %s does not name %s: the join token did not approve "
                    "these addresses (jumpgate ctl tokens add --addr ...)", kind, name, shown)


def _read_text(path: Path) -> str:
    with open(path, "rb") as f:
        data = f.read(_MAX_FILE + 1)
    if len(data) > _MAX_FILE:
        raise MembershipError(f"{path} is too large")
    return data.decode("utf-8", "replace")


def _load(directory: Path, kind: str, now: float | None) -> Membership | None:
    try:
        meta = json.loads(_read_text(directory / IDENTITY))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, OSError) as exc:
        raise MembershipError(f"{directory / IDENTITY} is unreadable: {exc}") from None
    if not isinstance(meta, dict) or meta.get("v") != IDENTITY_VERSION or meta.get("kind") != kind:
        raise MembershipError(f"{directory / IDENTITY} is not a {kind} membership of this version")
    try:
        key = _load_host_key(directory / HOST_KEY)
        cert, _ = load_public_file(directory / HOST_CERT)
        user_ca = _parse_key_line(_read_text(directory / USER_CA), "user CA")
        host_ca = _parse_key_line(_read_text(directory / HOST_CA), "host CA")
    except (OSError, KeyFormatError) as exc:
        raise MembershipError(f"the saved {kind} membership in {directory} is incomplete: {exc}") from None
    name, cluster = meta.get("name"), meta.get("cluster")
    if not isinstance(name, str) or not isinstance(cluster, str):
        raise MembershipError(f"{directory / IDENTITY} lacks the name or the cluster")
    # An expired certificate is still loaded (the caller says "join again"), hence the
    # check at its own valid_after when no time is given.
    check_time = cert.valid_after if now is None and isinstance(cert, Certificate) else now
    cert = _check_cert(cert, key, kind, name, host_ca, check_time)
    return Membership(kind, name, cluster, key, cert, user_ca, host_ca, str(meta.get("auth_server", "")), directory)


def load_membership(data_dir: str | os.PathLike[str], kind: str = "node", *, now: float | None = None) -> Membership | None:
    """The membership saved by :func:`join`, or None when this node or proxy never joined.

    With ``now``, a certificate not valid at that time is an MembershipError; without, an
    expired one is returned (``member.expired(now)`` tells).
    """
    return _load(_kind_dir(data_dir, kind), kind, now)


# ---------------------------------------------------------------------------- renewal

async def renew_if_needed(api: ApiClient, holder: MembershipHolder, *, now: float) -> bool:
    """Renew the host certificate when less than half its life remains; True if renewed."""
    ident = holder.current
    if not ident.needs_renewal(now):
        return False
    result = await api.renew_host_cert(name=ident.name, host_public_key_blob=ident.host_key.public_key.blob)
    renewed = _membership_from_result(result, ident.host_key, ident.kind, ident.name, ident.auth_server,
                                    ident.directory, now)
    if renewed.host_ca != ident.host_ca:
        raise MembershipError("the renewed certificate comes from another host CA")
    renewed = replace(ident, host_cert=renewed.host_cert, user_ca=renewed.user_ca)
    await trio.to_thread.run_sync(_save, renewed)
    holder.current = renewed
    log.info("renewed the %s host certificate of %s (valid until %s)", ident.kind, ident.name,
             format_time(renewed.host_cert.valid_before))
    return True


# ---------------------------------------------------------------------------- heartbeat

@dataclass(slots=True)
class Backoff:
    """Exponential backoff with jitter, bounded by ``maximum`` seconds."""

    initial: float = 1.0
    maximum: float = MAX_BACKOFF
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        delay = min(self.maximum, self.initial * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return delay * self.rng.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.attempt = 0


async def _labels(provider: Callable[[], Any]) -> dict[str, str]:
    value = provider()
    if inspect.isawaitable(value):
        value = await value
    return dict(value or {})


async def _beat_until_error(api: ApiClient, name: str, addr: str, labels_provider: Callable[[], Any], *,
                            interval: float, tunnel: bool, holder: MembershipHolder | None,
                            clock: Callable[[], float], on_heartbeat: Callable[[], None],
                            on_beat: Callable[[], None], tunnel_addr: str = "") -> None:
    """Heartbeat (and renew) on one connection until it fails."""
    warned = False
    extra = {"tunnel_addr": tunnel_addr} if tunnel_addr else {}  # a proxy's tunnel port (N6)
    while True:
        result = await api.heartbeat(name=name, addr=addr, labels=await _labels(labels_provider), tunnel=tunnel,
                                     **extra)
        on_heartbeat()
        registered = result.get("addr") if isinstance(result, Mapping) else None
        if isinstance(registered, str) and registered != addr and not warned:
            warned = True  # once per connection: the heartbeat cannot move it (J4)
            log.warning("%s advertises %s but the proxy dials it at %s, the address of its join: "
                        "join again (with a new token) to move it", name, addr or "no address",
                        registered or "no address")
        if holder is not None:
            try:
                await renew_if_needed(api, holder, now=clock())
            except (ApiError, MembershipError) as exc:
                log.warning("could not renew the host certificate of %s: %s", name, exc)
        on_beat()
        await trio.sleep(interval)


async def heartbeat_loop(api_factory: ApiFactory, name: str, addr: str, labels_provider: Callable[[], Any], *,
                         interval: float = HEARTBEAT_INTERVAL, tunnel: bool = False,
                         holder: MembershipHolder | None = None,
                         clock: Callable[[], float] = time.time, max_backoff: float = MAX_BACKOFF,
                         backoff: Backoff | None = None, on_beat: Callable[[], None] = lambda: None,
                         tunnel_addr: str = "", task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Heartbeat forever; reconnect after a failure with a bounded backoff.

    ``api_factory()`` opens an :class:`ApiClient` (e.g. :meth:`MembershipHolder.api_factory`);
    ``labels_provider()`` (sync or async) gives the current labels. With ``holder`` the
    host certificate is renewed when due. ``nursery.start`` returns after the first
    attempt, successful or not, so a node or proxy can start while the auth server is down.
    The waits are Trio's (``trio.sleep``: a ``MockClock`` drives them); ``backoff`` (its
    ``rng``) and ``clock`` (wall time, for the certificate) are injectable, and ``on_beat()``
    is called after each heartbeat that was answered (and its renewal check). A proxy gives
    ``tunnel_addr``, where it takes reverse tunnels (nodes learn it by the push stream).
    """
    backoff = backoff if backoff is not None else Backoff(maximum=max_backoff)
    started = False

    def answered() -> None:
        nonlocal started
        backoff.reset()
        if not started:
            started = True
            task_status.started()

    while True:
        if holder is not None and holder.current.expired(clock()):
            log.error("the host certificate of %s has expired: join again with a new token", name)
        try:
            async with api_factory() as api:
                await _beat_until_error(api, name, addr, labels_provider, interval=interval, tunnel=tunnel,
                                        holder=holder, clock=clock, on_heartbeat=answered, on_beat=on_beat,
                                        tunnel_addr=tunnel_addr)
        except (ApiError, SSHError, OSError, trio.TooSlowError) as exc:
            log.warning("heartbeat of %s to the auth server failed: %s", name, exc)
        if not started:
            started = True
            task_status.started()
        await trio.sleep(backoff.next_delay())

"""`jumpgate ctl`: administer the cluster.

On the auth host ctl opens the auth service's storage in the data dir (found through the same
``--data-dir`` / ``--config`` as ``start``) and applies the same AuthService rules; from
elsewhere it calls the auth API over SSH (``--auth-server HOST:3025 --identity KEY`` with
an admin certificate beside the key). Either way every change is an audit event.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import trio

from ..addresses import AUTH_PORT, WEB_PORT, AddressError, format_endpoint, parse_endpoint
from ..config import ConfigError, load_config
from ..inventory import LabelError, format_labels, parse_labels
from .errors import CliError

AUTH_SIGN_USER_TTL = 3600
AUTH_SIGN_HOST_TTL = 30 * 86400


def ctl(args) -> int:
    return trio.run(_ctl, args)


async def _ctl(args) -> int:
    handler = _HANDLERS[(args.ctl_command, getattr(args, "action", None))]
    async with _backend(args) as backend:
        return await handler(backend, args) or 0


# ---------------------------------------------------------------------------- backends

class _Backend:
    """``await backend.call(method, **params)`` → wire-form result (dicts and lists)."""

    def __init__(self, call, *, data_dir: Path | None, host: str, web_port: int, actor: str,
                 auth_port: int = AUTH_PORT):
        self.call = call
        self.data_dir = data_dir
        self.host = host
        self.web_port = web_port
        self.auth_port = auth_port
        self.actor = actor

    def web_pin(self, args) -> str:
        if getattr(args, "web_pin", None):
            return args.web_pin
        if self.data_dir is not None:
            from ..web.tls import load_certificate, pin_of
            path = self.data_dir / "web-tls.crt"
            if path.exists():
                return pin_of(load_certificate(path))
        raise CliError("the web certificate's pin is unknown here: run ctl on the auth host or pass --web-pin")


@contextlib.asynccontextmanager
async def _backend(args) -> AsyncIterator[_Backend]:
    if args.auth_server:
        async with _remote(args) as backend:
            yield backend
        return
    async with _local(args) as backend:
        yield backend


@contextlib.asynccontextmanager
async def _local(args) -> AsyncIterator[_Backend]:
    from ..auth.service import AuthService, AuthServiceError, to_wire
    from ..storage.sqlite import SQLiteStorage

    try:
        cfg = load_config(args.config, data_dir=args.data_dir)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    db = cfg.data_dir / "auth" / "jumpgate.db"
    if not db.exists():
        raise CliError(f"no cluster in {cfg.data_dir}: run `jumpgate start` first (or pass --data-dir/--config)")
    state = _cluster_state(cfg.data_dir)
    cluster = state.get("cluster") or cfg.cluster_name
    host = state.get("host") or cfg.host_name
    ports = {**cfg.ports, **state.get("ports", {})}
    storage = SQLiteStorage(db)
    try:
        service = await AuthService.create(storage, cluster)
    except AuthServiceError as exc:
        await storage.aclose()
        raise CliError(exc.message) from None
    actor = f"ctl:{os.environ.get('SUDO_USER') or os.environ.get('USER') or 'root'}@{socket.gethostname()}"

    async def call(method: str, **params: Any) -> Any:
        try:
            return to_wire(await getattr(service, method)(**params))
        except AuthServiceError as exc:
            raise CliError(exc.message) from None

    try:
        yield _Backend(call, data_dir=cfg.data_dir, host=host, web_port=int(ports["web"]), actor=actor,
                       auth_port=int(ports["auth"]))
    finally:
        try:
            await service.audit_log.flush()  # refusals are queued (docs/security.md U3)
        finally:
            await storage.aclose()


def _cluster_state(data_dir: Path) -> dict:
    """What `start` recorded about the running cluster (name, host, ports)."""
    path = data_dir / "auth" / "cluster.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


@contextlib.asynccontextmanager
async def _remote(args) -> AsyncIterator[_Backend]:
    from ssh_proto import SSHError
    from ssh_proto.keys import Certificate, load_public_file
    from ..api.client import ApiClient, ApiError
    from ..client.keyfile import UnprotectedKeyError, load_private_key_file

    if not args.identity:
        raise CliError("--auth-server needs --identity KEYFILE (with KEYFILE-cert.pub, an admin certificate)")
    identity = os.path.expanduser(args.identity)
    try:
        key = load_private_key_file(identity)  # refused when others can read it, as OpenSSH does
        cert, _ = load_public_file(f"{identity}-cert.pub")
    except FileNotFoundError as exc:
        raise CliError(f"cannot load {exc.filename}: no such file (the certificate goes beside the key, "
                       f"as {args.identity}-cert.pub)") from None
    except UnprotectedKeyError as exc:
        raise CliError(str(exc)) from None
    except (OSError, SSHError) as exc:
        raise CliError(f"cannot load {args.identity}: {exc}") from None
    if not isinstance(cert, Certificate) or cert.public_key != key.public_key:
        raise CliError(f"{args.identity}-cert.pub is not a certificate for the key {args.identity}")
    try:
        host, auth_port = parse_endpoint(args.auth_server, AUTH_PORT, "--auth-server")
    except AddressError as exc:
        raise CliError(str(exc)) from None

    from ..client.profile import ClientPaths, Profile, ProfileError
    known_hosts = ClientPaths.default().known_hosts_path  # trusts the host CA since `jumpgate login`
    if not known_hosts.exists():
        raise CliError(f"no {known_hosts}: log in once (`jumpgate login`) so the auth server can be verified")
    try:
        profile = Profile.load()
    except ProfileError:
        profile = None
    # invites point at the web service the admin logged in through, pinned as it was then
    try:
        web_host, web_port = parse_endpoint(profile.proxy, WEB_PORT) if profile and profile.proxy else (host, WEB_PORT)
    except AddressError as exc:
        raise CliError(f"the profile's proxy address: {exc}") from None
    if profile is not None and profile.web_pin and not args.web_pin:
        args.web_pin = profile.web_pin
    host_ca = _host_ca_of(known_hosts)
    try:
        async with ApiClient.connect((host, auth_port), identity=(key, cert), host_ca_key=host_ca) as api:
            async def call(method: str, **params: Any) -> Any:
                try:
                    return await api.call(method, **params)
                except ApiError as exc:
                    raise CliError(exc.message) from None
            yield _Backend(call, data_dir=None, host=web_host, web_port=int(web_port), actor="",
                           auth_port=auth_port)
    except (OSError, SSHError) as exc:
        raise CliError(f"cannot reach the auth server {args.auth_server}: {exc}") from None


def _host_ca_of(known_hosts: Path):
    """The cluster host CA of the login's known_hosts. Its ``@cert-authority`` line names the
    cluster's hosts only (docs/security.md J6), and the auth server may be reached by another
    name: it is verified by that CA, its ``auth:`` key id and the name dialled instead."""
    from ssh_proto import SSHError
    from ssh_proto.keys import PublicKey
    from ssh_proto.known_hosts import MARKER_CERT_AUTHORITY, KnownHosts
    try:
        entries = KnownHosts.load(known_hosts).entries
    except (OSError, SSHError) as exc:
        raise CliError(f"cannot read {known_hosts}: {exc}") from None
    cas = [e.key for e in entries if e.marker == MARKER_CERT_AUTHORITY and isinstance(e.key, PublicKey)]
    if not cas:
        raise CliError(f"{known_hosts} trusts no host CA: log in again (`jumpgate login`)")
    return cas[0]


# ---------------------------------------------------------------------------- helpers

def _when(ts: float) -> str:
    from ..timestamps import format_time
    return format_time(ts) if ts else "-"   # 0: never (a node that never heartbeat)


def _table(rows: list[list[str]], header: list[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())


def _labels(text: str) -> dict[str, str]:
    """``--labels key=value,...``; a bad one is a one-line error."""
    try:
        return parse_labels(text)
    except LabelError as exc:
        raise CliError(f"--labels: {exc}") from None


def _ttl(text: str, default: int) -> int:
    from .account import parse_ttl
    return parse_ttl(text) if text else default


def _split(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def _print_invite(backend: _Backend, args, invite: dict) -> None:
    from ..web.tls import invite_token
    token = invite_token(invite["token"], backend.web_pin(args))
    proxy = format_endpoint(backend.host, backend.web_port)
    print(f"User {invite['user']!r}: invite valid until {_when(invite['expires'])} (single use):")
    print(f"    https://{proxy}/web/invite/{token}")
    print("or on the user's machine:")
    print(f"    jumpgate signup --proxy {proxy} {token}")


# ---------------------------------------------------------------------------- users

async def _users_add(backend: _Backend, args) -> None:
    invite = await backend.call("create_user", name=args.name, logins=_split(args.logins),
                                roles=_split(args.roles), actor=backend.actor)
    _print_invite(backend, args, invite)


def _user_status(user: dict) -> str:
    """``locked until 2026-12-02 10:30:00 UTC`` for a locked user (``ctl users unlock`` lifts it)."""
    if user["status"] == "locked" and user.get("locked_until"):
        return f"locked until {_when(user['locked_until'])}"
    return user["status"]


async def _users_ls(backend: _Backend, args) -> None:
    users = await backend.call("list_users")
    _table([[u["name"], ",".join(u["logins"]), ",".join(u["roles"]) or "-", _user_status(u)] for u in users],
           ["USER", "LOGINS", "ROLES", "STATUS"])


async def _users_unlock(backend: _Backend, args) -> None:
    before = await backend.call("unlock_user", name=args.name, actor=backend.actor)
    if before["status"] == "locked":
        print(f"user {args.name!r} unlocked (it was locked until {_when(before['locked_until'])}); "
              "password and second factor unchanged")
    else:
        print(f"user {args.name!r} was not locked; its count of failed logins is reset")


async def _users_rm(backend: _Backend, args) -> None:
    await backend.call("delete_user", name=args.name, actor=backend.actor)
    print(f"user {args.name!r} removed")


async def _users_reset(backend: _Backend, args) -> None:
    invite = await backend.call("reset_user", name=args.name, actor=backend.actor)
    _print_invite(backend, args, invite)


# ---------------------------------------------------------------------------- tokens

async def _tokens_add(backend: _Backend, args) -> None:
    addresses = [a for item in getattr(args, "addr", None) or () for a in _split(item)]
    name = getattr(args, "name", "") or ""
    created = await backend.call("create_token", kind=args.kind, ttl_seconds=_ttl(args.ttl, 1800), name=name,
                                 addresses=addresses, actor=backend.actor)
    services = "node" if args.kind == "node" else "proxy,web"
    bound = f" as {created['name']!r}" if created.get("name") else ""
    print(f"Join token for a {args.kind}{bound}, valid until {_when(created['expires'])}, single use:")
    print(f"    {created['token']}")
    if created.get("addresses"):
        print(f"Approved addresses (besides the one it joins from): {', '.join(created['addresses'])}")
    if created.get("name") and await _registered(backend, created["name"]):
        print(f"{created['name']!r} is registered: only the host holding its key can re-join with this token "
              f"(a new host needs `jumpgate ctl nodes rm {created['name']}` first)")
    nodename = f" --nodename {created['name']}" if created.get("name") and args.kind == "node" else ""
    print("On the new host:")
    auth_server = format_endpoint(backend.host, backend.auth_port)
    print(f"    jumpgate start --services {services} --auth-server {auth_server}{nodename} --token {created['token']}")


async def _registered(backend: _Backend, name: str) -> bool:
    nodes = await backend.call("list_nodes", labels={}, include_proxies=True)
    return any(n["name"] == name for n in nodes)


async def _tokens_ls(backend: _Backend, args) -> None:
    tokens = await backend.call("list_tokens")
    _table([[t["id"], t["kind"], t["status"], _when(t["expires"]), t.get("name") or "-",
             ",".join(t.get("addresses") or ()) or "-", t.get("used_by") or "-"] for t in tokens],
           ["ID", "TYPE", "STATUS", "EXPIRES", "NAME", "ADDRESSES", "USED BY"])


async def _tokens_rm(backend: _Backend, args) -> None:
    await backend.call("delete_token", token_id=args.token_id, actor=backend.actor)
    print(f"token {args.token_id} removed")


# ---------------------------------------------------------------------------- nodes

async def _nodes_add(backend: _Backend, args) -> None:
    node = await backend.call("add_node", name=args.name, addr=args.addr, labels=_labels(args.labels),
                              actor=backend.actor)
    print(f"node {node['name']!r} ({node['addr']}) registered")


async def _nodes_update(backend: _Backend, args) -> None:
    if args.addr is None and args.labels is None:
        raise CliError("nodes update needs --addr or --labels (or both)")
    labels = _labels(args.labels) if args.labels is not None else None
    node = await backend.call("update_node", name=args.name, addr=args.addr, labels=labels, actor=backend.actor)
    print(f"node {node['name']!r} ({node['addr']}) updated; labels: {format_labels(node['labels']) or '-'}")


async def _nodes_ls(backend: _Backend, args) -> None:
    from ..inventory import NodeRecord
    nodes = [NodeRecord.from_wire(n) for n in await backend.call("list_nodes", labels={})]
    _table([[n.name, n.shown_addr, n.kind, format_labels(n.labels), _when(n.last_seen)] for n in nodes],
           ["NAME", "ADDRESS", "KIND", "LABELS", "LAST SEEN"])


async def _nodes_rm(backend: _Backend, args) -> None:
    await backend.call("remove_node", name=args.name, actor=backend.actor)
    print(f"node {args.name!r} removed")


# ---------------------------------------------------------------------------- auth

async def _auth_export(backend: _Backend, args) -> None:
    exported = await backend.call("export_ca", kind=args.kind)
    if isinstance(exported, str):
        exported = (exported + "\n").encode()
    if args.out:
        _replace_file(Path(args.out), exported)
    elif isinstance(exported, bytes) and args.kind == "krl" and sys.stdout.isatty():
        raise CliError("a KRL is binary: pass --out FILE (e.g. /etc/ssh/jumpgate.krl)")
    else:
        sys.stdout.buffer.write(exported)
        sys.stdout.flush()


def _replace_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (0644: sshd reads it): sshd reading its RevokedKeys
    never sees half a file (a missing or unreadable KRL makes it refuse everyone)."""
    from ..files import write_atomic
    write_atomic(path, data, mode=0o644)


async def _auth_sign(backend: _Backend, args) -> None:
    if args.host:
        await _sign_host(backend, args)
    else:
        await _sign_user(backend, args)


async def _sign_host(backend: _Backend, args) -> None:
    from ssh_proto.keys import PrivateKey, write_private_key
    if not args.out:
        raise CliError("--host needs --out DIR (the host key and certificate are written there)")
    out = Path(args.out)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = PrivateKey.generate("ssh-ed25519")
    result = await backend.call("sign_host_cert", name=args.host, public_key_blob=key.public_key.blob,
                                principals=_split(args.principals or ""), ttl=_ttl(args.ttl, AUTH_SIGN_HOST_TTL),
                                actor=backend.actor)
    key_path = out / "ssh_host_ed25519_key"
    write_private_key(str(key_path), key)
    Path(f"{key_path}.pub").write_text(key.public_key.to_line(f"{args.host}") + "\n")
    cert_path = Path(f"{key_path}-cert.pub")
    cert_path.write_text(result["cert"].strip() + "\n")
    user_ca = out / "jumpgate_user_ca.pub"
    user_ca.write_text(await backend.call("export_ca", kind="user") + "\n")
    krl = out / "jumpgate.krl"
    _replace_file(krl, await backend.call("export_ca", kind="krl"))
    print(f"host certificate for {', '.join(result['principals'])}, valid until {_when(result['expires'])}")
    print("sshd_config:")
    print(f"    HostKey {key_path.resolve()}")
    print(f"    HostCertificate {cert_path.resolve()}")
    print(f"    TrustedUserCAKeys {user_ca.resolve()}")
    print(f"    RevokedKeys {krl.resolve()}")
    print(f"refresh the KRL after removing or resetting a user (e.g. from cron):\n"
          f"    jumpgate ctl auth export --type krl --out {krl.resolve()}")


async def _sign_user(backend: _Backend, args) -> None:
    from ssh_proto import KeyFormatError
    from ssh_proto.keys import load_public_file
    if not args.pubkey:
        raise CliError("--user needs --pubkey FILE")
    try:
        key, _ = load_public_file(args.pubkey)
    except (OSError, KeyFormatError) as exc:
        raise CliError(f"cannot read {args.pubkey}: {exc}") from None
    result = await backend.call("sign_user_cert", name=args.user, public_key_blob=key.blob,
                                ttl=_ttl(args.ttl, AUTH_SIGN_USER_TTL), actor=backend.actor)
    if args.out:
        Path(args.out).write_text(result["cert"].strip() + "\n")
        print(f"certificate for {args.user} ({', '.join(result['principals'])}) written to {args.out}, "
              f"valid until {_when(result['expires'])}", file=sys.stderr)
    else:
        print(result["cert"].strip())


async def _events(backend: _Backend, args) -> None:
    events = await backend.call("list_audit", limit=args.limit)
    for e in reversed(events):
        fields = " ".join(f"{k}={v}" for k, v in sorted((e.get("fields") or {}).items()))
        ok = "" if e.get("success", True) else " FAILED"
        print(f"{_when(e['time'])} {e['code']} {e['event']}{ok} user={e.get('user') or '-'} {fields}".rstrip())


_HANDLERS = {
    ("users", "add"): _users_add, ("users", "ls"): _users_ls, ("users", "rm"): _users_rm,
    ("users", "reset"): _users_reset,
    ("users", "unlock"): _users_unlock,
    ("tokens", "add"): _tokens_add, ("tokens", "ls"): _tokens_ls, ("tokens", "rm"): _tokens_rm,
    ("nodes", "add"): _nodes_add, ("nodes", "update"): _nodes_update, ("nodes", "ls"): _nodes_ls,
    ("nodes", "rm"): _nodes_rm,
    ("auth", "export"): _auth_export, ("auth", "sign"): _auth_sign,
    ("events", None): _events,
}

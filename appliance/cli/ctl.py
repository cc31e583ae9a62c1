"""`jumpgate ctl`: administer the cluster.

On the auth host ctl opens the auth service's storage in the data dir (found through the same
``--data-dir`` / ``--config`` as ``start``) and applies the same AuthService rules; from
elsewhere it calls the auth API over SSH (``--auth-server HOST:3025 --identity KEY`` with
an admin certificate beside the key). Either way every change is an audit event.
"""
from __future__ import annotations

import base64
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
                 auth_port: int = AUTH_PORT, watch=None):
        self.call = call
        #: ``await backend.watch(on_push)``: follow the push stream (an admin's: the audit log).
        self.watch = watch
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
    from ..api.server import SYNCED_METHODS
    from ..auth.service import AuthService, AuthServiceError, to_wire
    from ..auth.watch import SYNC_SOCKET, request_sync
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
    from ..sessions.store import FileRecordingStore
    try:
        service = await AuthService.create(storage, cluster,
                                           recordings=FileRecordingStore(cfg.data_dir / "auth" / "recordings"))
    except AuthServiceError as exc:
        await storage.aclose()
        raise CliError(exc.message) from None
    actor = f"ctl:{os.environ.get('SUDO_USER') or os.environ.get('USER') or 'root'}@{socket.gethostname()}"

    async def call(method: str, **params: Any) -> Any:
        try:
            result = to_wire(await getattr(service, method)(**params))
        except AuthServiceError as exc:
            raise CliError(exc.message) from None
        if method in SYNCED_METHODS:
            # the running auth service pushes it to the proxies before we say it is done
            await request_sync(cfg.data_dir / "auth" / SYNC_SOCKET)
        return result

    async def watch(on_push) -> None:
        # The same database the running auth service writes: follow it with a ChangeFeed of
        # our own, which reads storage as the service's does (and bounds us the same way).
        from ..auth.watch import ChangeFeed, running
        async with running(ChangeFeed(storage)) as feed:
            with feed.subscribe("admin") as subscriber:
                on_push(await feed.snapshot("admin"))
                async for _change_id, push in subscriber.receive:
                    on_push(push)

    try:
        yield _Backend(call, data_dir=cfg.data_dir, host=host, web_port=int(ports["web"]), actor=actor,
                       auth_port=int(ports["auth"]), watch=watch)
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
            async def watch(on_push) -> None:
                try:
                    await api.watch(on_push)
                except ApiError as exc:
                    raise CliError(exc.message) from None
            yield _Backend(call, data_dir=None, host=web_host, web_port=int(web_port), actor="",
                           auth_port=auth_port, watch=watch)
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


def _json_value(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON")


def print_json(value: Any) -> None:
    """``--format json``: the API's own wire form (bytes as base64), one document."""
    print(json.dumps(value, indent=2, sort_keys=True, default=_json_value))


def _as_json(args) -> bool:
    return getattr(args, "format", "text") == "json"


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
    if _as_json(args):
        return print_json(users)
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


# ---------------------------------------------------------------------------- bots

async def _bots_add(backend: _Backend, args) -> None:
    if args.token_only:
        created = await backend.call("add_bot_token", name=args.name, token_ttl=_ttl(args.ttl, 3600),
                                     actor=backend.actor)
    else:
        if not args.logins:
            raise CliError("bots add needs --logins (the OS logins its certificates name)")
        created = await backend.call("create_bot", name=args.name, logins=_split(args.logins),
                                     roles=_split(args.roles), token_ttl=_ttl(args.ttl, 3600), actor=backend.actor)
        print(f"Bot {created['name']!r} (logins {','.join(created['logins'])}) added: no password, no second factor.")
    print(f"Bot token, valid until {_when(created['expires'])}, single use (ID {created['token_id']}):")
    print(f"    {created['token']}")
    print("On the automation host (keeps a renewed certificate in the directory):")
    print(f"    jumpgate bot start --auth-server {format_endpoint(backend.host, backend.auth_port)} "
          f"--token {created['token']} --out /var/lib/jumpgate-bot/{created['name']}")
    print(f"or certificates for a key of its own: jumpgate ctl auth sign --bot {created['name']} --pubkey KEY.pub")


async def _bots_ls(backend: _Backend, args) -> None:
    bots = await backend.call("list_bots")
    if _as_json(args):
        return print_json(bots)
    _table([[b["name"], ",".join(b["logins"]), ",".join(b["roles"]) or "-", _when(b["created"])] for b in bots],
           ["BOT", "LOGINS", "ROLES", "CREATED"])


async def _bots_rm(backend: _Backend, args) -> None:
    await backend.call("delete_bot", name=args.name, actor=backend.actor)
    print(f"bot {args.name!r} removed: its certificates stop working and its sessions end within seconds")


# ---------------------------------------------------------------------------- tokens

async def _tokens_add(backend: _Backend, args) -> None:
    if args.labels and args.kind != "node":
        raise CliError("--labels is for node tokens (a proxy has no labels)")
    _labels(args.labels or "")  # a bad label is refused before a token is made
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
    print("On the new host:")
    print(f"    {_join_command(backend, args, created, services)}")
    if args.kind == "node" and not args.labels:
        print("(add --labels key=value,... to label the node; `jumpgate ls` filters by them)")


def _join_command(backend: _Backend, args, created: dict, services: str) -> str:
    """The `start` line for the new host: the flags the token binds, and the labels asked for."""
    words = ["jumpgate", "start", "--services", services,
             "--auth-server", format_endpoint(backend.host, backend.auth_port)]
    if created.get("name") and args.kind == "node":
        words += ["--nodename", created["name"]]
    if args.labels:
        words += ["--labels", format_labels(_labels(args.labels))]
    return " ".join(words + ["--token", created["token"]])


async def _registered(backend: _Backend, name: str) -> bool:
    nodes = await backend.call("list_nodes", labels={}, include_proxies=True)
    return any(n["name"] == name for n in nodes)


async def _tokens_ls(backend: _Backend, args) -> None:
    tokens = await backend.call("list_tokens")
    if _as_json(args):
        return print_json(tokens)
    _table([[t["id"], t["kind"], t["status"], _when(t["expires"]), t.get("name") or "-",
             ",".join(t.get("addresses") or ()) or "-", t.get("used_by") or "-"] for t in tokens],
           ["ID", "TYPE", "STATUS", "EXPIRES", "NAME", "ADDRESSES", "USED BY"])


async def _tokens_rm(backend: _Backend, args) -> None:
    removed = await backend.call("delete_token", token_id=args.token_id, actor=backend.actor)
    print(f"token {removed or args.token_id} removed")  # its id: a token value is not echoed


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
    listed = await backend.call("list_nodes", labels={})
    if _as_json(args):
        return print_json(listed)
    nodes = [NodeRecord.from_wire(n) for n in listed]
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
    bot = getattr(args, "bot", None)
    flag, name = ("--bot", bot) if bot else ("--user", args.user)
    if not args.pubkey:
        raise CliError(f"{flag} needs --pubkey FILE")
    try:
        key, _ = load_public_file(args.pubkey)
    except (OSError, KeyFormatError) as exc:
        raise CliError(f"cannot read {args.pubkey}: {exc}") from None
    method = "sign_bot_cert" if bot else "sign_user_cert"
    result = await backend.call(method, name=name, public_key_blob=key.blob,
                                ttl=_ttl(args.ttl, AUTH_SIGN_USER_TTL), actor=backend.actor)
    if args.out:
        Path(args.out).write_text(result["cert"].strip() + "\n")
        print(f"certificate {result['key_id']} ({', '.join(result['principals'])}) written to {args.out}, "
              f"valid until {_when(result['expires'])}", file=sys.stderr)
    else:
        print(result["cert"].strip())


# ---------------------------------------------------------------------------- audit

#: Pushes a follower holds before printing them; one that cannot keep up is cut, not buffered.
FOLLOW_QUEUE = 1024


class _FellBehind(Exception):
    pass


def _audit_filters(args) -> dict[str, Any]:
    from .account import parse_ttl
    filters: dict[str, Any] = {"types": _split(args.type or ""), "user": args.user or "", "since": 0.0,
                               "session": getattr(args, "session", None) or "", "node": getattr(args, "node", None) or ""}
    if args.since:
        filters["since"] = _parse_since(args.since, parse_ttl)
    return filters


def _parse_since(text: str, parse_ttl) -> float:
    """``--since``: a duration back from now (``90m``, ``2h``, ``7d``) or a UTC date/time
    (``2026-12-01``, ``2026-12-01T10:00``)."""
    import calendar
    import time as _time
    from datetime import datetime
    try:
        return _time.time() - parse_ttl(text)
    except CliError:
        pass
    try:
        return float(calendar.timegm(datetime.fromisoformat(text).timetuple()))
    except ValueError:
        raise CliError(f"--since {text!r}: give a duration (30m, 2h, 7d) or a UTC time "
                       "(2026-12-01 or 2026-12-01T10:00)") from None


def _matches(event: dict, filters: dict[str, Any]) -> bool:
    types, user = filters["types"], filters["user"]
    fields = event.get("fields") or {}
    if any(filters.get(name) and fields.get(key) != filters[name]
           for name, key in (("session", "session_id"), ("node", "node"))):
        return False
    if types and not any(event["event"] == t or (t.endswith(".*") and event["event"].startswith(t[:-1]))
                         for t in types):
        return False
    return (not user or event.get("user") == user) and event["time"] >= filters["since"]


def _event_line(e: dict) -> str:
    fields = " ".join(f"{k}={v}" for k, v in sorted((e.get("fields") or {}).items()))
    ok = "" if e.get("success", True) else " FAILED"
    return f"{_when(e['time'])} {e['code']} {e['event']}{ok} user={e.get('user') or '-'} {fields}".rstrip()


async def _audit(backend: _Backend, args) -> None:
    """``ctl audit`` (``ctl events``): the newest ``--limit`` events matching the filters,
    oldest first; ``--follow`` then prints each new one as it is recorded."""
    filters = _audit_filters(args)
    if not args.follow:
        events = list(reversed(await backend.call("list_audit", limit=args.limit, **filters)))
        if _as_json(args):
            return print_json(events)
        for e in events:
            print(_event_line(e))
        return
    await _follow(backend, args, filters)


async def _follow(backend: _Backend, args, filters: dict[str, Any]) -> None:
    """Subscribe first, then list the backlog, then print pushes newer than it: nothing falls
    between. JSON is one event per line here (JSON Lines), for a stream."""
    send, receive = trio.open_memory_channel[Any](FOLLOW_QUEUE)

    def on_push(push) -> None:
        try:
            send.send_nowait(push)
        except trio.WouldBlock:
            raise _FellBehind() from None

    def show(event: dict) -> None:
        print(json.dumps(event, sort_keys=True, default=_json_value) if _as_json(args) else _event_line(event),
              flush=True)

    async def watch() -> None:
        try:
            await backend.watch(on_push)
        finally:
            send.close()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            first = await receive.receive()  # the snapshot: we are subscribed
            assert first.kind == "snapshot"
            backlog = list(reversed(await backend.call("list_audit", limit=args.limit, **filters)))
            last = max([e["id"] for e in backlog], default=0)
            for event in backlog:
                show(event)
            async for push in receive:
                if push.kind == "audit" and push.data["id"] > last and _matches(push.data, filters):
                    last = push.data["id"]
                    show(dict(push.data))
    except* _FellBehind:
        raise CliError("the audit stream was cut: this follower fell behind; run `ctl audit --follow` "
                       "again (with --since to fill the gap)") from None
    raise CliError("the audit stream ended (the auth server was stopped or cut this follower for "
                   "falling behind); run `ctl audit --follow` again")


# ---------------------------------------------------------------------------- status

async def _status(backend: _Backend, args) -> None:
    """``tctl status``: the cluster, its CAs and pins, versions, services and hosts."""
    from .main import VERSION
    status = await backend.call("cluster_status")
    try:
        web_pin = backend.web_pin(args)
    except CliError:
        web_pin = ""
    report = {**status, "ctl_version": VERSION, "web_pin": web_pin,
              "services": await _local_services(backend) if backend.data_dir is not None else None}
    if _as_json(args):
        return print_json(report)
    print(f"Cluster:      {status['cluster']}")
    print(f"Version:      jumpgate {status['version']} (auth service; storage schema {status['schema_version']}), "
          f"ctl {VERSION}")
    print(f"User CA:      {status['user_ca_fingerprint']}")
    print(f"Host CA:      {status['host_ca_fingerprint']}")
    print(f"CA pin:       {status['host_ca_pin']}   (the host CA's; join tokens carry it)")
    print(f"Web pin:      {web_pin or 'unknown here (pass --web-pin)'}   (jumpgate login --ca-pin)")
    if report["services"] is not None:
        print("Services:     " + ", ".join(f"{s['name']} {s['addr']} {s['state']}" for s in report["services"]))
    hosts = status["hosts"]
    print("Hosts:        " + (", ".join(f"{h['name']} ({h['kind']}) {h['state']}, last seen {_when(h['last_seen'])}"
                                        for h in hosts) or "none joined"))


async def _local_services(backend: _Backend) -> list[dict]:
    """The services `start` recorded in the data dir, each probed on its port (a TCP connect)."""
    state = _cluster_state(backend.data_dir)
    services = state.get("services") or []
    ports = dict(state.get("ports") or {})
    host = state.get("listen_addr") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    found = [{"name": name, "addr": format_endpoint(host, int(ports[name])), "port": int(ports[name])}
             for name in services if name in ports]
    if state.get("diag_addr"):
        found.append({"name": "diag", "addr": state["diag_addr"],
                      "port": int(parse_endpoint(state["diag_addr"], 0)[1])})
    for service in found:
        service["state"] = "up" if await _answers(service["addr"]) else "down"
    return found


async def _answers(addr: str) -> bool:
    host, port = parse_endpoint(addr, 0)
    with trio.move_on_after(2):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            return False
        await stream.aclose()
        return True
    return False


_HANDLERS = {
    ("users", "add"): _users_add, ("users", "ls"): _users_ls, ("users", "rm"): _users_rm,
    ("users", "reset"): _users_reset,
    ("users", "unlock"): _users_unlock,
    ("tokens", "add"): _tokens_add, ("tokens", "ls"): _tokens_ls, ("tokens", "rm"): _tokens_rm,
    ("nodes", "add"): _nodes_add, ("nodes", "update"): _nodes_update, ("nodes", "ls"): _nodes_ls,
    ("nodes", "rm"): _nodes_rm,
    ("auth", "export"): _auth_export, ("auth", "sign"): _auth_sign,
    ("events", None): _audit, ("audit", None): _audit,
    ("bots", "add"): _bots_add, ("bots", "ls"): _bots_ls, ("bots", "rm"): _bots_rm,
    ("status", None): _status,
    ("sessions", "ls"): lambda backend, args: _recordings().sessions_ls(backend, args),
    ("sessions", "search"): lambda backend, args: _recordings().sessions_search(backend, args),
}


def _recordings():
    from . import recordings
    return recordings

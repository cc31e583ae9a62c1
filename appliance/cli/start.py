"""`jumpgate start`: run the configured services in one Trio program.

The all-in-one default runs the auth, proxy, node and web services (``--services``, or
``--roles`` as Teleport spells it; a user's roles are another thing). Services talk to the
auth service over SSH even inside one process: the node and the proxy join it with a
one-minute token like any remote host would (and keep their membership in the data dir),
then heartbeat, send audit events and look nodes up through the auth API. A host without
the auth service joins a remote one with ``--auth-server HOST:3025 --token TOKEN``.

One service failing stops them all, at once and loudly (docs/security.md L7): every
long-running task of a service (its listener, its heartbeat, its connection to the auth API,
its audit queue, its command labels) runs under :func:`supervised`, and one that fails is
logged as ``service S failed`` with its traceback, cancels the other services, and ``jumpgate
start`` exits with status 70 (EX_SOFTWARE) and one line on stderr naming the service. No
service is restarted in-process: a failure this code did not expect leaves state nobody has
reasoned about, and a service manager (systemd ``Restart=on-failure``) restarts the whole
process cleanly. Listeners do not fail for running out of descriptors (they wait, L1), and
a service's limits are in :mod:`appliance.limits`.

At start the soft RLIMIT_NOFILE is raised to the hard limit (L5); session processes on
the node get the soft limit the process was started with back.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

import trio

from ..addresses import DEFAULT_PORTS, format_endpoint, host_of, parse_endpoint
from ..config import Config, ConfigError, default_data_dir, load_config
from ..limits import raise_nofile_limit
from .errors import CliError

log = logging.getLogger("jumpgate.start")

JOIN_TOKEN_TTL = 60  # seconds: the token a local node or proxy uses to join its own process's auth
FIRST_VIEW_TIMEOUT = 5.0  # seconds a proxy or node waits for the push stream before serving
EXIT_SERVICE_FAILED = 70  # EX_SOFTWARE (sysexits.h): a service failed and every service was stopped


class ServiceFailed(Exception):
    """A service's long-running task failed: the whole process stops (rule L7)."""

    def __init__(self, service: str, error: BaseException):
        super().__init__(f"the {service} service failed ({type(error).__name__}: {error})")
        self.service = service


async def supervised(service: str, run, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run ``run(task_status=...)``, one long-running task of ``service``, as ``nursery.start``
    would. Failing before it started raises as is (a service that cannot start says why);
    failing after raises :class:`ServiceFailed`, after one log line with the traceback."""
    started = False

    class _Status:
        def started(self, value=None) -> None:
            nonlocal started
            started = True
            task_status.started(value)

    try:
        await run(task_status=_Status())
    except Exception as exc:
        if not started:
            raise
        log.critical("service %s failed; stopping every service", service, exc_info=True)
        raise ServiceFailed(service, exc) from exc


def start(args) -> int:
    if getattr(args, "print_config", False):
        from ..config import default_config_text
        print(default_config_text(), end="")
        return 0
    try:
        cfg = load_config(
            args.config, data_dir=args.data_dir,
            services=args.services,
            cluster_name=args.cluster_name, public_addr=args.public_addr, listen_addr=args.listen_addr,
            auth_server=args.auth_server, token=args.token, node_name=args.nodename,
            tunnel_addr=getattr(args, "tunnel_addr", None),
            labels=args.labels, command_labels=getattr(args, "label_commands", None) or (),
            audit_retention_days=args.audit_retention_days,
            diag_addr=getattr(args, "diag_addr", None),
            port_overrides={name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS
                            if getattr(args, f"{name}_port") is not None})
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    from ssh_proto.allocator import tune_allocator
    tune_allocator()
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("jumpgate").setLevel(logging.INFO)
    session_nofile = raise_nofile_limit()
    try:
        trio.run(run_services, cfg, session_nofile)
    except KeyboardInterrupt:
        print("jumpgate: stopped", file=sys.stderr)
    except BaseExceptionGroup as group:
        failed = group.subgroup(ServiceFailed)
        if failed is not None:
            raise CliError(f"{_first(failed)}; every service was stopped", EXIT_SERVICE_FAILED) from None
        # a service that cannot start says so in one line (CliError), whatever nursery it was in
        failures = group.subgroup(CliError)
        if failures is None:
            raise
        raise _first(failures) from None
    return 0


def _first(group: BaseExceptionGroup) -> BaseException:
    exc = group.exceptions[0]
    return _first(exc) if isinstance(exc, BaseExceptionGroup) else exc


def prepare_data_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as exc:
        raise CliError(f"cannot use data dir {path}: {exc.strerror or exc}") from None
    return path


def local_address_towards(host: str) -> str:
    """The address of this host's interface that routes to ``host`` (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def advertised_host(cfg: Config, auth_host: str) -> str:
    if cfg.public_addr:
        return cfg.public_addr
    if "auth" in cfg.services:
        return "127.0.0.1"
    return local_address_towards(auth_host)


class Diag:
    """What the diagnostics endpoint reads (:mod:`appliance.diag`): this process's metrics, its
    readiness checks and the listeners its services serve on. One per ``run_services``."""

    def __init__(self, cfg: Config) -> None:
        from ..diag import Metrics, Readiness
        self.metrics, self.readiness = Metrics(), Readiness()
        self.expected = [s for s in cfg.services if s != "tunnel"]
        self.metrics.services = list(self.expected)
        self.listeners: dict[str, object] = {}
        self.metrics.gauge("up", lambda: {s: 1 for s in self.listeners})
        self.metrics.gauge("connections", self._connections)
        self.readiness.add("listeners", self._listeners_up)

    def listening(self, service: str, listener: object) -> None:
        self.listeners[service] = listener

    def _connections(self) -> dict[str, float]:
        counts = {}
        for service, listener in self.listeners.items():
            admission = getattr(listener, "admission", None)
            if admission is not None:
                counts[service] = admission.startups + admission.authenticated
        return counts

    async def _listeners_up(self) -> str:
        missing = [s for s in self.expected if s not in self.listeners]
        return f"not listening yet: {', '.join(missing)}" if missing else ""

    def counted_sink(self, service: str, emit):
        async def sink(event: dict) -> None:
            self.metrics.observe_audit(service, event)
            await emit(event)
        return sink

    def beat(self, service: str):
        return lambda: self.metrics.count("heartbeats", service)


async def _start_diag(nursery: trio.Nursery, cfg: Config, diag: Diag) -> None:
    from ..addresses import parse_endpoint
    from ..diag import serve_diag
    host, port = parse_endpoint(cfg.diag_addr, 0)
    listeners = await bind_listeners("diag", host, port)
    bound = await nursery.start(supervised, "diag", functools.partial(
        serve_diag, host, port, diag.metrics, diag.readiness, listeners=listeners))
    log.info("diagnostics on http://%s/ (healthz, readyz, metrics)", format_endpoint(*bound))


async def run_services(cfg: Config, session_nofile: int | None = None) -> None:
    """Every configured service, until one fails (ServiceFailed) or the program is cancelled.
    ``session_nofile`` is the soft descriptor limit node sessions get (None: the process's)."""
    data_dir = prepare_data_dir(cfg.data_dir)
    diag = Diag(cfg)
    async with trio.open_nursery() as nursery:
        if cfg.diag_addr:
            await _start_diag(nursery, cfg, diag)
        auth_service = None
        if "auth" in cfg.services:
            auth_service = await _start_auth(nursery, cfg, data_dir, diag)
            auth_addr = format_endpoint("127.0.0.1", cfg.ports["auth"])
        else:
            auth_addr = cfg.auth_server
        host = advertised_host(cfg, host_of(auth_addr))
        cluster = auth_service.cluster if auth_service is not None else ""
        if "node" in cfg.services:
            cluster = await _start_node(nursery, cfg, data_dir, auth_addr, host, auth_service, session_nofile,
                                        diag) or cluster
        if "proxy" in cfg.services or "web" in cfg.services:
            cluster = await _start_proxy_and_web(nursery, cfg, data_dir, auth_addr, host, auth_service, diag) or cluster
        _print_banner(cfg, cluster)


# ---------------------------------------------------------------------------------- auth

async def _start_auth(nursery: trio.Nursery, cfg: Config, data_dir: Path, diag: Diag):
    from ssh_proto.keys import PrivateKey, load_private_key, write_private_key
    from ..auth.server import serve_auth
    from ..auth.service import AuthService, AuthServiceError
    from ..auth.watch import SYNC_SOCKET, ChangeFeed
    from ..storage.sqlite import SQLiteStorage

    from ..sessions.store import FileRecordingStore
    auth_dir = prepare_data_dir(data_dir / "auth")
    storage = SQLiteStorage(auth_dir / "jumpgate.db")
    try:
        auth_service = await AuthService.create(storage, cfg.cluster_name,
                                           audit_retention_days=cfg.audit_retention_days,
                                           audit_refusals_per_source=cfg.audit_refusals_per_source,
                                           recordings=FileRecordingStore(auth_dir / "recordings"))
    except AuthServiceError as exc:
        raise CliError(f"auth: {exc.message}") from None
    for warning in auth_service.warnings:  # an installed cluster that breaks a newer rule (J9)
        print(f"jumpgate: auth: {warning}", file=sys.stderr, flush=True)
    await nursery.start(supervised, "auth", auth_service.run)  # the audit log's writer and retention, rehashes
    # what `jumpgate ctl` on this host needs to know about the running cluster
    (auth_dir / "cluster.json").write_text(json.dumps({
        "cluster": auth_service.cluster, "host": cfg.host_name, "ports": cfg.ports,
        "services": list(cfg.services), "listen_addr": cfg.listen_addr, "diag_addr": cfg.diag_addr,
        "pid": os.getpid(), "started": time.time()}) + "\n")
    key_path = auth_dir / "host_key"
    if key_path.exists():
        key = load_private_key(str(key_path))
    else:
        key = PrivateKey.generate("ssh-ed25519")
        write_private_key(str(key_path), key)
    names = sorted({"localhost", "127.0.0.1", socket.gethostname(), cfg.public_addr} - {""})
    result = await auth_service.sign_auth_cert(key.public_key.blob, principals=names)
    from ssh_proto.keys import parse_public_line
    cert, _ = parse_public_line(result.cert)
    feed = ChangeFeed(storage)
    await nursery.start(supervised, "auth", feed.run)
    # `jumpgate ctl` on this host writes the database itself, then knocks here (issue 14 item 6)
    await nursery.start(supervised, "auth", functools.partial(feed.serve_sync, auth_dir / SYNC_SOCKET))
    try:
        listener = await nursery.start(supervised, "auth", functools.partial(
            serve_auth, auth_service, auth_service.ca, (key, cert), cfg.listen_addr, cfg.ports["auth"], feed=feed))
    except OSError as exc:
        raise CliError(f"auth: cannot listen on port {cfg.ports['auth']}: {exc.strerror or exc}") from None
    diag.listening("auth", listener)

    async def storage_answers() -> str:
        await storage.last_change_id()
        return ""

    async def ca_loaded() -> str:
        return "" if auth_service.ca.user_ca_public and auth_service.ca.host_ca_public else "no CA"

    diag.readiness.add("storage", storage_answers)
    diag.readiness.add("ca", ca_loaded)
    log.info("auth API listening on %s:%d (cluster %s)", cfg.listen_addr, cfg.ports["auth"], auth_service.cluster)
    return auth_service


# ---------------------------------------------------------------------------------- listeners

async def bind_listeners(service: str, host: str, port: int) -> list[trio.SocketListener]:
    """Bind a service's port *before* anything that cannot be undone (docs/security.md J10):
    a node or proxy that joined and then found its port taken would have spent its
    single-use token for nothing. The failure names the port and says the token is unused."""
    try:
        return await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise CliError(f"{service}: cannot listen on {format_endpoint(host or '0.0.0.0', port)}: "
                       f"{exc.strerror or exc} (nothing was joined: a join token is still unused)") from None


async def _close_all(listeners: list[trio.SocketListener]) -> None:
    for listener in listeners:
        await listener.aclose()


# ---------------------------------------------------------------------------------- identities

async def _membership(cfg: Config, data_dir: Path, kind: str, name: str, auth_addr: str, host: str,
                    addr: str, auth_service, via=None, via_addr: str = "", first_stream=lambda: None):
    """The saved membership of this node or proxy, or a new one by joining (locally or with --token).
    ``first_stream()`` may give a connection already open to ``auth_addr`` for the join (the probe's).

    A saved membership keeps its name (docs/security.md J2): a different configured name is
    reported, not applied. Joining again (an expired certificate) with the saved host key
    is a re-join of the same name; a name registered to another host is refused.
    """
    from ..api.client import ApiError
    from ..membership import MembershipError, join, load_membership

    member = load_membership(data_dir, kind)
    if member is not None and member.name != name:
        _warn_saved_name(data_dir, kind, member.name, name)
        name = member.name
    if member is not None and not member.expired(time.time()):
        return member
    if auth_service is not None:
        # This process is the admin of its own cluster: it approves the addresses it serves on.
        created = await auth_service.create_token(kind, JOIN_TOKEN_TTL, name=name, addresses=_local_addresses(cfg, kind, host),
                                             actor=f"{kind}:{name} (local)")
        token = created.token
    elif cfg.token:
        token = cfg.token
    else:
        raise CliError(f"{kind}: not joined yet: pass --token from `jumpgate ctl tokens add --type {kind}`")
    try:
        return await join(auth_addr, token, kind=kind, name=name, addresses=_local_addresses(cfg, kind, host),
                          labels=dict(cfg.labels), data_dir=data_dir, addr=addr, via=via, stream=first_stream())
    except (ApiError, MembershipError, OSError, trio.TooSlowError) as exc:
        if via is not None:
            raise CliError(f"{kind}: cannot join the cluster through the proxy at {via_addr}: "
                           f"{exc or 'no answer'}") from None
        raise CliError(f"{kind}: cannot join the cluster at {auth_addr}: {exc}") from None
    except Exception as exc:  # ssh_proto errors: a refused token, a pin mismatch, ...
        from ssh_proto import SSHError
        if isinstance(exc, SSHError):
            raise CliError(f"{kind}: cannot join the cluster at {auth_addr}: {exc}") from None
        raise


async def _first_view(view) -> None:
    """Wait a little for the push stream's first snapshot, so revocation is enforced from the
    first connection; serve without it if the auth server is slow (best effort, logged)."""
    with trio.move_on_after(FIRST_VIEW_TIMEOUT):
        await view.ready.wait()
        return
    log.warning("no revocation view from the auth server within %gs: serving without it until it comes",
                FIRST_VIEW_TIMEOUT)


def _local_addresses(cfg: Config, kind: str, host: str) -> list[str]:
    """The addresses this node or proxy asks to be certified for: where it is dialled (``host``) and,
    for the proxy, the public name users reach it by. A remote auth grants only those the
    token approved or it saw the join come from (J3)."""
    wanted = [host] + ([cfg.host_name] if kind == "proxy" else [])
    return list(dict.fromkeys(a for a in wanted if a))


def _warn_saved_name(data_dir: Path, kind: str, saved: str, configured: str) -> None:
    print(f"jumpgate: warning: {kind}: this data dir is joined as {saved!r} (saved in "
          f"{data_dir / kind / 'identity.json'}); the name {configured!r} asked for is ignored. To rename: "
          f"`jumpgate ctl nodes rm {saved}`, remove {data_dir / kind} and start again with a new token",
          file=sys.stderr, flush=True)


async def _audit_sink(nursery: trio.Nursery, pool, service: str):
    """Where a node or proxy sends its audit events: queued, delivered in order by one task."""
    from ..api.audit_sink import AuditForwarder
    forwarder = AuditForwarder(pool.emit_audit)
    await nursery.start(supervised, service, forwarder.run)
    return forwarder.emit


# ---------------------------------------------------------------------------------- node

async def _start_node(nursery: trio.Nursery, cfg: Config, data_dir: Path, auth_addr: str, host: str, auth_service,
                      session_nofile: int | None = None, diag: Diag | None = None) -> str:
    """A node: tunnelled (``--tunnel-addr``, or ``--auth-server`` a proxy's web port) or
    listening. ``--auth-server`` is probed once, and that connection is handed on."""
    from ..tunnel.transport import HandOff, tls_connector

    if cfg.tunnel_addr:
        from ..addresses import TUNNEL_PORT
        from ..tunnel.transport import tcp_connector
        connect = tcp_connector(*parse_endpoint(cfg.tunnel_addr, TUNNEL_PORT))
        return await _start_tunnelled_node(nursery, cfg, data_dir, session_nofile, diag, connect, cfg.tunnel_addr)
    hand_off = None
    if auth_service is None:
        probed = await _probe(cfg.auth_server)
        hand_off = HandOff(probed.stream)
        if probed.kind == "tls":
            # --auth-server PROXY:3080: the web port of a proxy, the only address such a node needs;
            # its first tunnel (the join's, or the node's own) runs on the probed connection
            connect = hand_off.first_then(tls_connector(probed.host, probed.port), lambda _: probed.start_tls())
            try:
                return await _start_tunnelled_node(nursery, cfg, data_dir, session_nofile, diag, connect,
                                                   cfg.auth_server)
            finally:
                await hand_off.aclose()
    try:
        return await _start_listening_node(nursery, cfg, data_dir, auth_addr, host, auth_service, session_nofile,
                                           diag, hand_off)
    finally:
        if hand_off is not None:
            await hand_off.aclose()


async def _start_listening_node(nursery: trio.Nursery, cfg: Config, data_dir: Path, auth_addr: str, host: str,
                                auth_service, session_nofile: int | None, diag: Diag | None, hand_off) -> str:
    """Today's node: it listens on the node port. ``hand_off`` holds the start-up probe's
    connection to ``--auth-server`` (None on the auth host): the join runs on it, or, for a
    node already joined, the first API connection, so starting costs the auth port no
    connection that hangs up unauthenticated (docs/security.md L9)."""
    from ..api.pool import ApiPool
    from ..membership import MembershipHolder, heartbeat_loop
    from ..node.labels import CommandLabel, LabelSet
    from ..cluster_view import ClusterView
    from ..node.server import NodeIdentity, serve_node

    first_stream = hand_off.take if hand_off is not None else (lambda: None)
    addr = format_endpoint(host, cfg.ports["node"])
    listeners = await bind_listeners("node", cfg.listen_addr, cfg.ports["node"])
    try:
        member = await _membership(cfg, data_dir, "node", cfg.node_name, auth_addr, host, addr, auth_service,
                                   first_stream=first_stream)
    except BaseException:
        await _close_all(listeners)
        raise
    holder = MembershipHolder(member)
    view = ClusterView()
    pool = ApiPool(holder.api_factory(auth_addr, first_stream=first_stream), view=view)
    await nursery.start(supervised, "node", pool.run)
    await _first_view(view)

    def provider() -> NodeIdentity:
        ident = holder.current
        return NodeIdentity(ident.host_key, ident.host_cert, (ident.user_ca,), ident.cluster, ident.name,
                            host_cas=(ident.host_ca,))

    diag = diag or Diag(cfg)
    hub, recording = await _start_recording(nursery, cfg, data_dir, pool)
    listener = await nursery.start(supervised, "node", functools.partial(
        serve_node, provider, cfg.listen_addr, cfg.ports["node"],
        audit=diag.counted_sink("node", await _audit_sink(nursery, pool, "node")),
        session_nofile=session_nofile, view=view, listeners=listeners, hub=hub, recording=recording))
    diag.listening("node", listener)
    labels = LabelSet(cfg.labels, {name: CommandLabel(list(c.command), c.period)
                                   for name, c in cfg.command_labels.items()})
    await nursery.start(supervised, "node", labels.run)
    await nursery.start(supervised, "node", functools.partial(
        heartbeat_loop, holder.api_factory(auth_addr), member.name, addr, labels.current, holder=holder,
        on_beat=diag.beat("node")))
    log.info("node %s serving SSH on %s:%d", member.name, cfg.listen_addr, cfg.ports["node"])
    return member.cluster


async def _start_recording(nursery: trio.Nursery, cfg: Config, data_dir: Path, pool):
    """The node's session hub and, unless recording is off, its uploader: first it reports the
    sessions a previous run lost (interrupted), then it uploads as sessions seal chunks."""
    from ..sessions.hub import SessionHub
    from ..sessions.settings import RecordingSettings
    from ..sessions.uploader import Uploader
    hub = SessionHub()
    root = data_dir / "node" / "recordings"
    uploader = Uploader(root, pool.call, live=hub)
    await nursery.start(supervised, "node", uploader.run)
    if cfg.recording != "node":
        return hub, None
    return hub, RecordingSettings(root, cfg.recording, record_input=cfg.recording_input, on_sealed=uploader.kick)


async def _probe(auth_server: str):
    """The connection to ``--auth-server`` and what it speaks, ``"ssh"`` (an auth port) or
    ``"tls"`` (a proxy's web port): who speaks first (:func:`appliance.tunnel.transport.open_probed`,
    through HTTPS_PROXY if set). The caller hands the connection on (HandOff)."""
    from ..tunnel.transport import open_probed
    try:
        return await open_probed(auth_server)
    except OSError as exc:
        raise CliError(f"node: cannot reach the auth server {auth_server}: {exc}") from None


async def _start_tunnelled_node(nursery: trio.Nursery, cfg: Config, data_dir: Path, session_nofile: int | None,
                                diag: Diag | None, connect, where: str) -> str:
    """A node behind a firewall (``--tunnel-addr PROXY:3024``, or ``--auth-server PROXY:3080``:
    ``connect`` dials the tunnel, TCP or TLS with ALPN): no listening socket at all. It joins,
    heartbeats, sends its audit events and follows the push stream through channels of its
    tunnel to the proxy at ``where``, which reaches it back through the same connection
    (docs/security.md N1, W8), and keeps a tunnel to each other proxy the push stream names (N6)."""
    from ..api.pool import ApiPool
    from ..cluster_view import ClusterView
    from ..membership import MembershipHolder, heartbeat_loop
    from ..node.labels import CommandLabel, LabelSet
    from ..node.server import NodeIdentity, tunnelled_node
    from ..tunnel.agent import AUTH_NAME, TunnelAgent, join_stream
    from ..tunnel.fleet import TunnelFleet

    member = await _membership(cfg, data_dir, "node", cfg.node_name, AUTH_NAME, "", "", None,
                               via=lambda pin: join_stream(connect, pin), via_addr=where)
    holder = MembershipHolder(member)
    view = ClusterView()

    def provider() -> NodeIdentity:
        ident = holder.current
        return NodeIdentity(ident.host_key, ident.host_cert, (ident.user_ca,), ident.cluster, ident.name,
                            host_cas=(ident.host_ca,))

    diag = diag or Diag(cfg)
    api_pool = ApiPool(lambda: fleet.api_factory()(), view=view)
    hub, recording = await _start_recording(nursery, cfg, data_dir, api_pool)  # recorded as a listening node is
    serve = tunnelled_node(provider, audit=diag.counted_sink("node", await _audit_sink(nursery, api_pool, "node")),
                           view=view, session_nofile=session_nofile, hub=hub, recording=recording)
    agent = TunnelAgent(connect, holder, serve)
    fleet = TunnelFleet(agent, holder, serve, view)  # and one tunnel to each other proxy (N6)
    await nursery.start(supervised, "node", fleet.run)
    await nursery.start(supervised, "node", api_pool.run)
    await _first_view(view)
    diag.listening("node", fleet)
    labels = LabelSet(cfg.labels, {name: CommandLabel(list(c.command), c.period)
                                   for name, c in cfg.command_labels.items()})
    await nursery.start(supervised, "node", labels.run)
    await nursery.start(supervised, "node", functools.partial(
        heartbeat_loop, fleet.api_factory(), member.name, "", labels.current, holder=holder, tunnel=True,
        on_beat=diag.beat("node")))
    log.info("node %s reached through the tunnel to %s (listening on no port)", member.name, where)
    return member.cluster


# ---------------------------------------------------------------------------------- proxy + web

async def _start_proxy_and_web(nursery: trio.Nursery, cfg: Config, data_dir: Path, auth_addr: str, host: str,
                               auth_service, diag: Diag | None = None) -> None:
    from ..api.pool import ApiPool
    from ..cluster_view import ClusterView
    from ..membership import MembershipHolder, heartbeat_loop
    from ..proxy.dialing import ProxyDialer
    from ..proxy.routing import NodeDirectory, Routes
    from ..proxy.server import ProxyIdentity, serve_proxy
    from ..web.server import serve_web
    from ..web.tls import TLSSetupError, ensure_web_tls

    name = f"{cfg.node_name}-proxy"  # node and proxy names share one inventory
    # users reach the proxy by the host's public name (in its certificate's principals)
    proxy_addr = format_endpoint(cfg.host_name, cfg.ports["proxy"])
    reserved = {service: await bind_listeners(service, cfg.listen_addr, cfg.ports[service])
                for service in ("proxy", "tunnel", "web") if service in cfg.services or
                (service == "tunnel" and "proxy" in cfg.services)}
    try:
        member = await _membership(cfg, data_dir, "proxy", name, auth_addr, host, proxy_addr, auth_service)
    except BaseException:
        for listeners in reserved.values():
            await _close_all(listeners)
        raise
    diag = diag or Diag(cfg)
    holder = MembershipHolder(member)
    view = ClusterView()
    pool = ApiPool(holder.api_factory(auth_addr), view=view)
    await nursery.start(supervised, "proxy" if "proxy" in cfg.services else "web", pool.run)
    await _first_view(view)
    tunnels = terminals = None
    if "proxy" in cfg.services:
        directory = NodeDirectory(lambda: pool.list_nodes(labels={}), cluster=member.cluster,
                                  lookup=_node_lookup(pool), view=view)
        view.on_nodes_changed(directory.invalidate)

        def provider() -> ProxyIdentity:
            return ProxyIdentity(holder.current.host_key, holder.current.host_cert)

        audit = diag.counted_sink("proxy", await _audit_sink(nursery, pool, "proxy"))
        tunnels = await _start_tunnel_server(nursery, cfg, holder, pool, auth_addr, audit, reserved["tunnel"], diag)
        dialer = ProxyDialer(tunnels.registry)  # one seam for the SSH proxy and the web terminal
        listener = await nursery.start(supervised, "proxy", functools.partial(
            serve_proxy, provider, [member.user_ca], Routes(directory), cfg.listen_addr, cfg.ports["proxy"],
            audit=audit, view=view, listeners=reserved["proxy"], dialer=dialer))
        diag.listening("proxy", listener)
        terminals = _web_terminals(Routes(directory), dialer, member.cluster, provider,
                                   view, audit, holder)
        await nursery.start(supervised, "proxy", functools.partial(
            heartbeat_loop, holder.api_factory(auth_addr), member.name, proxy_addr, lambda: {}, holder=holder,
            on_beat=diag.beat("proxy"), tunnel_addr=format_endpoint(cfg.host_name, cfg.ports["tunnel"])))
        log.info("proxy serving SSH on %s:%d", cfg.listen_addr, cfg.ports["proxy"])
    if "web" in cfg.services:
        try:
            tls = ensure_web_tls(data_dir, hostname=cfg.host_name, addresses=[host],
                                 cert_path=cfg.web_cert or None, key_path=cfg.web_key or None)
        except TLSSetupError as exc:
            raise CliError(f"web: {exc}") from None
        endpoint = await nursery.start(supervised, "web", functools.partial(
            serve_web, pool, tls.cert_path, tls.key_path, cfg.listen_addr, cfg.ports["web"], view=view,
            proxy_ssh_addr=proxy_addr, public_addr=web_public_addr(cfg), listeners=reserved["web"],
            tunnel_handler=None if tunnels is None else _web_tunnel_handler(tunnels), terminals=terminals))
        diag.listening("web", endpoint)
        log.info("web serving HTTPS on %s:%d (certificate pin %s)", cfg.listen_addr, cfg.ports["web"], tls.pin)
    return member.cluster


def _web_terminals(routes, dialer, cluster: str, identity, view, audit, holder):
    """The web terminal's way to nodes: the proxy's node gate in this process (its routes,
    dialer, relay identity, revocation and audit), never SSH to ourselves (docs/security.md W11)."""
    from ..proxy.gate import NodeGate
    from ..web.terminal import Terminals

    gate = NodeGate(routes.resolve, dialer, cluster=cluster, identity=identity, view=view, audit=audit)
    return Terminals(gate, host_ca=lambda: holder.current.host_ca)


def _web_tunnel_handler(service):
    """The web listener's tunnel handler (ALPN ``jumpgate-tunnel`` on 3080, docs/security.md W8):
    the tunnel server's ``serve_tunnel_stream`` over the TLS stream, a peer's SSH failure one log
    line (as on the tunnel port), never a traceback."""
    import ssh_proto
    from ssh_proto.errors import SSHError

    from ..tunnel.server import serve_tunnel_stream

    async def handler(stream: trio.abc.Stream, peer: tuple[str, int], local: tuple[str, int], *,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await serve_tunnel_stream(stream, service, peer_address=peer, local_address=local,
                                      task_status=task_status)
        except* SSHError as group:
            log.info("tunnel connection over the web port ended: %s", group.exceptions[0])
        except* ssh_proto.LimitExceeded:
            pass
    return handler


async def _start_tunnel_server(nursery: trio.Nursery, cfg: Config, holder, pool, auth_addr: str, audit,
                               listeners: list[trio.SocketListener], diag: Diag):
    """The proxy's tunnel port (3024): nodes behind firewalls dial in here; their API channels
    are forwarded to ``auth_addr`` and a tunnel that ends marks its node offline at once."""
    from ..tunnel.server import TunnelService, serve_tunnel

    auth_host, auth_port = parse_endpoint(auth_addr, cfg.ports["auth"])

    async def open_auth() -> trio.abc.Stream:
        with trio.fail_after(10):
            return await trio.open_tcp_stream(auth_host, auth_port)

    async def down(name: str) -> None:
        await pool.mark_node_offline(name=name)

    service = TunnelService(holder.current.cluster, lambda: (holder.current.host_key, holder.current.host_cert),
                            lambda: holder.current.host_ca, open_auth, audit=audit, on_down=down)
    await nursery.start(supervised, "proxy", functools.partial(serve_tunnel, service, listeners))
    diag.listening("tunnel", service)
    log.info("proxy accepting reverse tunnels on %s:%d", cfg.listen_addr, cfg.ports["tunnel"])
    return service


def _node_lookup(pool):
    """The auth server's answer about one name (the directory asks before refusing it)."""
    from ..api.client import ApiError

    async def lookup(name: str):
        try:
            return await pool.get_node(name=name)
        except ApiError as exc:
            if exc.code in ("not_found", "bad_request"):
                return None
            raise
    return lookup


def web_public_addr(cfg: Config) -> str | None:
    """What the invite page tells users to pass as ``--proxy``: the public address when one is
    configured, else None — the page then uses the address the browser used (its Host
    header), which reaches the host by definition; the listening address need not."""
    return format_endpoint(cfg.public_addr, cfg.ports["web"]) if cfg.public_addr else None


def _first_logins(cfg: Config) -> str:
    """The logins to suggest for the first user: ``alice,root``, unless this host's node runs as
    another account, which can log in no one but itself (it cannot switch users)."""
    if "node" in cfg.services and os.geteuid() != 0:
        from ..node.process import own_account_name
        return f"{own_account_name()}    # this node does not run as root: it can log in only its own account"
    return "alice,root"


def _print_banner(cfg: Config, cluster: str) -> None:
    """What is running, and (on the auth host) how to add the first user and more nodes."""
    services = ", ".join(cfg.services)
    lines = [f"jumpgate: cluster {cluster or cfg.cluster_name!r} is running ({services}); data in {cfg.data_dir}"]
    if "auth" in cfg.services:
        data = "" if cfg.data_dir == default_data_dir() else f" --data-dir {cfg.data_dir}"
        lines += ["", "Add the first user (an invite link, valid 1 h, is printed):",
                  f"    jumpgate ctl{data} users add alice --logins {_first_logins(cfg)}",
                  "Add a node on another host:",
                  f"    jumpgate ctl{data} tokens add --type node",
                  f"    jumpgate start --services node --auth-server {format_endpoint(cfg.host_name, cfg.ports['auth'])}"
                  " --token TOKEN"]
    print("\n".join(lines), flush=True)

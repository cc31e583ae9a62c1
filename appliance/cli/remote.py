"""The client commands that reach nodes: ``jumpgate ls``, ``ssh``, ``scp`` and ``config``.

Each command takes the argparse Namespace built in ``cli/main.py``, runs its Trio part
with ``trio.run`` and returns the process exit status; failures raise :class:`CliError`
(one line). Flags (as OpenSSH's where they exist)::

    jumpgate ls [key=value ...] [--all] [--format text|json|names]
    jumpgate ssh [-v] [-p PORT] [-o Name=value]... [-L [bind:]port:host:hostport]...
                 [-R [bind:]port:host:hostport]... [-A] [-t | -T] [-N] [login@]NODE [command ...]
    jumpgate ssh [--max-parallel N] [login@]key=value[,key=value] command ...   (every match)
    jumpgate scp [-v] [-q] [-r] [-P PORT] [-p(preserve)] [-o Name=value]... SRC... DST
                                                           (remote paths: [login@]NODE:path)
    jumpgate config [--offline]

``-p``/``-P`` is the port of a node given by its address; a node given by name is reached
at the address it registered, so the port is ignored there, with a warning. ``-o`` takes the
OpenSSH options of :mod:`appliance.client.options`; ``-v`` prints, on stderr, each step of
the connection (the ``jumpgate.client`` log at DEBUG: certificate, proxy, host certificates).

``jumpgate ssh`` exits with the remote command's exit status (255 when the connection
fails or the command dies of a signal, as ssh does). Without a command and with a terminal
on stdin it opens an interactive session on a pty: the local terminal is put in raw mode
(and restored on exit), SIGWINCH becomes a window-change request. Without a terminal, no
pty unless ``-t``. The login defaults to the local user name when the certificate allows
it, else to the certificate's first login. ``jumpgate ssh`` starts in ``cli/sshcmd.py``,
which hands most sessions to the session daemon; :func:`ssh` here is the in-process path
(port forwarding, ``JUMPGATE_MUX=0``, no daemon to be had), with the same behaviour.

``jumpgate config`` prints an ssh_config block (see :func:`render_ssh_config`) so that
OpenSSH's ``ssh NODE.CLUSTER``, ``ssh -J USER@PROXY:3023 LOGIN@NODE``, ``scp``, ``sftp``
and ``rsync -e ssh`` use the issued certificate and verify hosts by the cluster's host CA;
it rewrites the profile's known_hosts for the same names (docs/security.md J6).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from pathlib import Path

import trio

import ssh_proto
from ssh_proto.errors import AgentError, ChannelError, ChannelOpenError, SSHError

from ..addresses import NODE_PORT
from ..client.escape import EscapeFilter, parse_escape_char
from ..client.localio import EXIT_FAILURE, exit_status, relay
from ..client.options import ClientOptions, OptionError, parse_options
from ..client.profile import Profile, ProfileError
from ..client.ssh import (ConnectError, Credentials, KeepAlive, connect_node, default_login, list_nodes,
                          has_glob, load_credentials, resolve_target, scp_download, scp_upload,
                          session_lost_reason)
from ..client.terminal import raw_terminal, session_env, term_name, terminal_size
from ..client.trust import cluster_wildcard_allowed, host_ca_of, known_hosts_patterns, safe_node_names
from .. import inventory
from ..inventory import NodeRecord
from ..names import port_ignored_warning
from .errors import CliError

__all__ = ["config", "ls", "refresh_trusted_names", "render_ssh_config", "scp", "ssh", "trust_cluster_names"]


# ------------------------------------------------------------------------------ shared

def _credentials() -> tuple[Profile, Credentials]:
    try:
        profile = Profile.load()
        return profile, load_credentials(profile)
    except (ProfileError, ConnectError) as exc:
        raise CliError(str(exc)) from None


def _leaf_error(exc: BaseException) -> BaseException:
    """The error worth reporting inside (possibly nested) exception groups."""
    while isinstance(exc, BaseExceptionGroup):
        wanted = [e for e in exc.exceptions if not isinstance(e, trio.Cancelled)]
        exc = (wanted or exc.exceptions)[0]
    return exc


def _run(async_fn: Callable[..., Awaitable[int]], *args, exit_code: int = 1) -> int:
    """trio.run, turning connection failures into one-line CliErrors."""
    try:
        return trio.run(async_fn, *args)
    except BaseException as exc:  # unwrap exception groups, re-raise what is not ours
        leaf = _leaf_error(exc)
        if isinstance(leaf, CliError):
            raise leaf from None
        if isinstance(leaf, ConnectError):
            raise CliError(str(leaf), exit_code) from None
        if isinstance(leaf, SSHError):
            raise CliError(f"connection lost: {leaf}", exit_code) from None
        if isinstance(leaf, OSError):
            raise CliError(leaf.strerror or str(leaf), exit_code) from None
        if isinstance(leaf, KeyboardInterrupt):
            raise leaf from None
        raise


def client_options(args) -> ClientOptions:
    """The ``-o`` settings of ``args``; CliError naming the first one refused."""
    try:
        return parse_options(getattr(args, "options", None) or ())
    except OptionError as exc:
        raise CliError(str(exc)) from None


def escape_char(args) -> int | None:
    """``-e`` (default ``~``; None for ``-e none``), or CliError."""
    try:
        return parse_escape_char(getattr(args, "escape_char", None))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def log_verbosely(args) -> None:
    """``-v``: the client's DEBUG log (``jumpgate.client``) on stderr, as ``debug1:`` lines (with
    ``--debug`` every logger already prints, with timestamps)."""
    if not getattr(args, "verbose", 0) or getattr(args, "debug", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("debug1: %(message)s"))
    logger = logging.getLogger("jumpgate.client")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def warn_ignored_port(node: str, cluster: str, port: int | None, flag: str = "-p") -> None:
    warning = port_ignored_warning(node, cluster, port, flag)
    if warning:
        print(f"jumpgate: warning: {warning}", file=sys.stderr)


def split_login(target: str, creds: Credentials, login: str | None = None) -> tuple[str, str]:
    """``[login@]node`` -> (login, node); ``login`` (``-l``) wins."""
    try:
        return resolve_target(target, creds, login)
    except ValueError as exc:
        raise CliError(str(exc)) from None


# ------------------------------------------------------------------------------ ls

def _status(node: NodeRecord) -> str:
    if node.kind not in inventory.HEARTBEAT_KINDS:
        return "agentless"   # it never heartbeats: neither known online nor offline
    return "offline" if node.offline else "online"


def format_nodes(nodes: Sequence[NodeRecord], *, show_status: bool = False, hidden: int = 0) -> str:
    """A table sorted by name: node name, address (or "tunnel"), labels (``show_status``: and
    online/offline/agentless), then a count line (saying how many offline nodes it leaves out)."""
    rows = [("Node Name", *(("Status",) if show_status else ()), "Address", "Labels")]
    for n in sorted(nodes, key=lambda n: n.name):
        rows.append((n.name, *((_status(n),) if show_status else ()), n.shown_addr,
                     inventory.format_labels(n.labels)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join([*(f"{c:<{w}}" for c, w in zip(r, widths)), r[-1]]).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 6)
    count = f"{len(nodes)} node{'' if len(nodes) == 1 else 's'}"
    if hidden:
        count += f" ({hidden} offline not shown: jumpgate ls --all)"
    return "\n".join([*lines, "", count])


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``ls`` filters: ``key=value`` words, each also a comma list (``env=prod,role=web``)."""
    try:
        return inventory.parse_labels(items)
    except inventory.LabelError as exc:
        raise CliError(f"label filter: {exc}") from None


def select_nodes(nodes: Sequence[NodeRecord], *, include_offline: bool = False) -> list[NodeRecord]:
    """What ``ls`` shows and ``ssh LABEL=VALUE`` runs on: sorted by name, offline nodes only if asked."""
    return sorted((n for n in nodes if include_offline or not n.offline), key=lambda n: n.name)


def ls(args) -> int:
    """``jumpgate ls [key=value ...] [--all] [--format text|json|names]``: the nodes of the
    cluster carrying every one of those labels."""
    labels = parse_labels(getattr(args, "labels", []) or [])
    show_all = bool(getattr(args, "all", False))
    _, creds = _credentials()
    listed = _run(list_nodes, creds, labels)
    nodes = select_nodes(listed, include_offline=show_all)
    how = getattr(args, "format", "text")
    if how == "json":
        print(json.dumps([n.to_wire() for n in nodes], indent=2, sort_keys=True))
    elif how == "names":
        print("".join(f"{n.name}\n" for n in nodes), end="")
    else:
        print(format_nodes(nodes, show_status=show_all, hidden=len(listed) - len(nodes)))
    return 0


# ------------------------------------------------------------------------------ ssh: the terminal

async def _forward_window_changes(proc: ssh_proto.SSHProcess) -> None:
    with trio.open_signal_receiver(signal.SIGWINCH) as signals:
        async for _ in signals:
            cols, rows = terminal_size()
            with contextlib.suppress(ChannelError, trio.BrokenResourceError):
                await proc.resize(cols, rows)


def _timed_out(node: str) -> CliError:
    return CliError(f"Timeout, node {node!r} not responding (ServerAliveInterval)", EXIT_FAILURE)


async def run_session(conn: ssh_proto.SSHClientConnection, command: str | None, *, pty: bool,
                      agent_forwarding: bool = False, keepalive: KeepAlive | None = None, node: str = "",
                      escape: int | None = None) -> int:
    """Relay stdin/stdout/stderr to a session on ``conn``; returns the remote exit status."""
    cols, rows = terminal_size()
    try:
        proc = await conn.open_session(command, pty=pty, term=term_name(), cols=cols, rows=rows,
                                       env=session_env(), agent_forwarding=agent_forwarding)
    except ChannelError as exc:
        raise CliError(f"the node refused the session: {exc}", EXIT_FAILURE) from None
    interactive = pty and os.isatty(0)
    side_tasks = [partial(_forward_window_changes, proc)] if interactive else []
    if keepalive is not None:
        side_tasks.append(keepalive.run)
    escapes = EscapeFilter(escape) if pty and escape is not None else None  # OpenSSH: only with a pty
    with raw_terminal(0, interactive):
        await relay(proc, (0, 1, 2), side_tasks, escapes=escapes, disconnect=conn.aclose)
    if escapes is not None and escapes.disconnected:
        raise CliError(f"Connection to {node} closed.", EXIT_FAILURE)
    status, signame = exit_status(proc)
    if keepalive is not None and keepalive.dead and proc.exit_status is None:
        raise _timed_out(node)
    if proc.exit_status is None and signame is None:
        reason = session_lost_reason(conn, getattr(conn, "carrier", None))
        if reason:
            raise CliError(f"the session ended: {reason}", EXIT_FAILURE)
    if signame:
        print(f"jumpgate: remote command killed by signal {signame}", file=sys.stderr)
    return status


# ------------------------------------------------------------------------------ ssh: forwarding

def parse_forward(spec: str, *, remote: bool) -> tuple[str, int, str, int]:
    """``[bind:]port:host:hostport`` (IPv6 in brackets) -> (bind, port, host, hostport)."""
    parts, buf, depth = [], "", 0
    for ch in spec:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == ":" and depth == 0:
            parts.append(buf)
            buf = ""
            continue
        buf += ch
    parts.append(buf)
    if len(parts) == 3:
        parts.insert(0, "localhost")  # as OpenSSH: loopback unless a bind address is given
    if len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit() or not parts[2]:
        raise CliError(f"bad forwarding specification {spec!r}: use [bind:]port:host:hostport")
    bind, port, host, hostport = (p.strip("[]") if i in (0, 2) else p for i, p in enumerate(parts))
    if not 0 <= int(port) < 65536 or not 0 < int(hostport) < 65536 or (not remote and int(port) == 0):
        raise CliError(f"bad port in forwarding specification {spec!r}")
    return bind or "localhost", int(port), host, int(hostport)


async def _start_forwards(conn: ssh_proto.SSHClientConnection, nursery: trio.Nursery, local: Sequence[tuple],
                          remote: Sequence[tuple]) -> None:
    for bind, port, host, hostport in local:
        try:
            await nursery.start(partial(conn.forward_local_port, bind, port, host, hostport,
                                        on_open_failed=_report_refused_forward))
        except OSError as exc:
            raise CliError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}", EXIT_FAILURE) from None
    for bind, port, host, hostport in remote:
        try:
            bound = await conn.forward_remote_port(bind, port, host, hostport)
        except ChannelOpenError:
            print(f"jumpgate: warning: remote port forwarding failed for listen port {port}", file=sys.stderr)
            continue
        if port == 0:
            print(f"Allocated port {bound} for remote forward to {host}:{hostport}", file=sys.stderr)


def _report_refused_forward(host: str, port: int, listen_port: int, exc: ChannelOpenError) -> None:
    """A ``-L`` connection the far side would not carry: say which target and why (as ssh's
    "channel 2: open failed: connect failed: Connection refused")."""
    reason = _OPEN_REASONS.get(exc.reason, f"reason {exc.reason}")
    print(f"jumpgate: -L {listen_port}: the node refused to connect to {host}:{port}: {reason}"
          f"{': ' + exc.description if exc.description else ''}", file=sys.stderr)


_OPEN_REASONS = {1: "administratively prohibited", 2: "connect failed", 3: "unknown channel type",
                 4: "resource shortage"}  # RFC 4254 §5.1


async def _ssh_main(profile: Profile, creds: Credentials, login: str, node: str, args, command: str | None,
                    pty: bool) -> int:
    local = [parse_forward(s, remote=False) for s in args.local_forwards or ()]
    remote = [parse_forward(s, remote=True) for s in args.remote_forwards or ()]
    options = client_options(args)
    agent = _agent() if args.forward_agent else None
    try:
        async with connect_node(profile, node, login, port=args.port, creds=creds, options=options) as conn:
            conn.agent = agent  # served on auth-agent@openssh.com channels the node opens
            keepalive = KeepAlive(conn, options.server_alive_interval, options.server_alive_count_max)
            async with trio.open_nursery() as nursery:
                await _start_forwards(conn, nursery, local, remote)
                if getattr(args, "no_command", False):
                    nursery.start_soon(keepalive.run)
                    await conn.closed.wait()
                    if keepalive.dead:
                        raise _timed_out(node)
                    status = 0
                else:
                    status = await run_session(conn, command, pty=pty, agent_forwarding=agent is not None,
                                               keepalive=keepalive, node=node, escape=escape_char(args))
                nursery.cancel_scope.cancel()
    finally:
        if agent is not None:
            await agent.aclose()
    return status


def _agent() -> ssh_proto.AgentClient:
    try:
        return ssh_proto.AgentClient()
    except AgentError as exc:
        raise CliError(f"cannot forward the agent: {exc}", EXIT_FAILURE) from None


def ssh(args) -> int:
    """``jumpgate ssh [options] [login@]node [command...]``; returns the remote exit status."""
    client_options(args)  # a refused -o or -e before anything else
    escape_char(args)
    log_verbosely(args)
    profile, creds = _credentials()
    login, node = split_login(args.target, creds, getattr(args, "login", None))
    if not getattr(args, "port_warned", False):
        warn_ignored_port(node, creds.cluster, args.port)
    command = " ".join(args.command) if args.command else None  # joined with spaces, as ssh does
    if args.force_tty and args.no_tty:
        raise CliError("-t and -T contradict each other")
    pty = bool(args.force_tty) or (command is None and not args.no_tty and os.isatty(0))
    return _run(_ssh_main, profile, creds, login, node, args, command, pty, exit_code=EXIT_FAILURE)


# ------------------------------------------------------------------------------ scp

def parse_remote_path(arg: str) -> tuple[str | None, str, str] | None:
    """``[login@]node:path`` -> (login, node, path); None for a local path (OpenSSH's rule:
    a colon before any slash makes it remote; ``[v6]`` hosts in brackets)."""
    if arg.startswith(":"):
        return None
    i, bracket = 0, False
    while i < len(arg):
        ch = arg[i]
        if ch == "[" and (i == 0 or arg[i - 1] == "@"):
            bracket = True
        elif ch == "]":
            bracket = False
        elif ch == ":" and not bracket:
            break
        elif ch == "/" and not bracket:
            return None
        i += 1
    else:
        return None
    host, path = arg[:i], arg[i + 1:]
    login, sep, node = host.rpartition("@")
    node = node[1:-1] if node.startswith("[") and node.endswith("]") else node
    if not node or (sep and not login):
        raise CliError(f"not a [login@]node:path: {arg!r}")
    return (login if sep else None), node, path


def _scp_warn(message: str) -> None:
    print(message if message.startswith("scp:") else f"scp: {message}", file=sys.stderr)


def _scp_plan(paths: Sequence[str], creds: Credentials):
    """("upload", login, node, local sources, remote target) or ("download", ...)."""
    *sources, destination = paths
    if not sources:
        raise CliError("scp needs a source and a destination")
    remote_sources = [parse_remote_path(s) for s in sources]
    remote_dest = parse_remote_path(destination)
    if remote_dest is not None and not any(remote_sources):
        login, node, path = remote_dest
        return "upload", login or default_login(creds), node, list(sources), path
    if remote_dest is None and all(remote_sources):
        hosts = {(r[0], r[1]) for r in remote_sources}
        if len(hosts) != 1:
            raise CliError("all remote sources must be on the same node, as the same login")
        login, node = hosts.pop()
        if (len(sources) > 1 or any(has_glob(r[2]) for r in remote_sources)) and not Path(destination).is_dir():
            raise CliError(f"{destination}: not a directory (several sources, or a wildcard)")
        return "download", login or default_login(creds), node, [r[2] for r in remote_sources], destination
    raise CliError("copy between this machine and one node: scp SRC... [login@]node:DST "
                   "or scp [login@]node:SRC... DST")


def _progress(args):
    """The meter factory for scp, when stdout is a terminal and -q was not given (as OpenSSH)."""
    if getattr(args, "quiet", False) or not os.isatty(1):
        return None
    from ..client.progress import ProgressMeter

    def write(line: str) -> None:
        sys.stdout.write(line)
        sys.stdout.flush()

    def meter(name: str, size: int) -> ProgressMeter:
        return ProgressMeter(name, size, write, width=os.get_terminal_size(1).columns)
    return meter


async def _scp_main(profile: Profile, creds: Credentials, plan, args) -> int:
    direction, login, node, sources, target = plan
    options = {"recursive": bool(args.recursive), "preserve": bool(getattr(args, "preserve", False)),
               "progress": _progress(args)}
    ok = True
    async with connect_node(profile, node, login, port=getattr(args, "port", None), creds=creds,
                            options=client_options(args)) as conn:
        if direction == "upload":
            ok = await scp_upload(conn, sources, target, _scp_warn, **options)
        else:
            for source in sources:
                ok = await scp_download(conn, source, Path(target), _scp_warn, **options) and ok
    return 0 if ok else 1


def scp(args) -> int:
    """``jumpgate scp [-r] SRC... DST``: copy between this machine and a node (scp protocol)."""
    client_options(args)
    log_verbosely(args)
    profile, creds = _credentials()
    paths = [*args.sources, args.destination] if hasattr(args, "destination") else list(args.paths)
    plan = _scp_plan(paths, creds)
    warn_ignored_port(plan[2], creds.cluster, getattr(args, "port", None), "-P")
    return _run(_scp_main, profile, creds, plan, args)


# ------------------------------------------------------------------------------ config

def _quote(value: str | os.PathLike) -> str:
    text = os.fspath(value)
    return f'"{text}"' if any(c.isspace() for c in text) or not text else text


def render_ssh_config(*, cluster: str, user: str, proxy_host: str, proxy_port: int, identity: Path,
                      certificate: Path, known_hosts: Path, node_names: Sequence[str] = (),
                      cluster_wildcard: bool = True) -> str:
    """The ssh_config block of ``jumpgate config``: it names exactly ``*.CLUSTER``, the proxy
    and the nodes' bare names (docs/security.md J6, J7).

    * ``Host CLUSTER-proxy``: the proxy on its SSH port, as the Jumpgate user, with the
      certificate; host verified by the host CA only (StrictHostKeyChecking yes).
    * ``Host *.CLUSTER``: every node by its cluster-qualified name, through that proxy
      (``ProxyJump``), host certificates verified by the CA (the node's certificate lists
      ``name.CLUSTER``). Plain ``ssh web1.CLUSTER``, scp, sftp, rsync -e ssh all use it.
      Left out when ``cluster_wildcard`` is false (a public-suffix cluster name, J9).
    * ``Host PROXY_HOST [node names]``: certificate and CA known_hosts for
      ``ssh -J USER@PROXY_HOST:3023 LOGIN@NODE``; your own ~/.ssh/known_hosts stays first
      (it is where ssh records new keys), and no port or proxy is forced on these names.
      Only names that are one DNS label are listed (J7).
    """
    id_lines = [f"    IdentityFile {_quote(identity)}", f"    CertificateFile {_quote(certificate)}"]
    kh = _quote(known_hosts)
    alias = f"{cluster}-proxy"
    blocks = [
        f"# Jumpgate cluster {cluster!r}: generated by `jumpgate config` for {user}.",
        "# Append to ~/.ssh/config (or use ssh -F FILE). Hosts are verified by the cluster's host CA.",
        "",
        f"Host {alias}",
        f"    HostName {proxy_host}",
        f"    Port {proxy_port}",
        f"    User {user}",
        *id_lines,
        "    IdentitiesOnly yes",
        f"    UserKnownHostsFile {kh}",
        "    StrictHostKeyChecking yes",
        "",
    ]
    if cluster_wildcard:
        blocks += [
            f"Host *.{cluster}",
            f"    Port {NODE_PORT}",
            f"    ProxyJump {alias}",
            *id_lines,
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {kh}",
            "    StrictHostKeyChecking yes",
            "",
        ]
    blocks += [
        f"Host {' '.join(dict.fromkeys([proxy_host, *safe_node_names(node_names)]))}",
        *id_lines,
        f"    UserKnownHostsFile ~/.ssh/known_hosts {kh}",
    ]
    return "\n".join(blocks) + "\n"


async def _node_names(creds: Credentials) -> list[str]:
    return [n.name for n in await list_nodes(creds, {})]


def trust_cluster_names(profile: Profile, creds: Credentials, node_names: Sequence[str]) -> None:
    """Rewrite known_hosts for the proxy, ``*.CLUSTER`` and these bare names (J6)."""
    host_ca = host_ca_of(creds.known_hosts)
    if host_ca is None:
        raise CliError(f"{profile.known_hosts_path} trusts no host CA; run `jumpgate login`")
    patterns = known_hosts_patterns(profile.cluster, [(creds.proxy_host, creds.proxy_port)], node_names)
    try:
        profile.paths.write_known_hosts(host_ca, patterns)
    except ProfileError as exc:
        raise CliError(str(exc)) from None


def refresh_trusted_names(profile: Profile) -> str | None:
    """After a login: add the nodes' bare names from the proxy to known_hosts (J6).
    Returns why they were left out, or None."""
    try:
        creds = load_credentials(profile)
        names = _run(_node_names, creds)
    except (CliError, ConnectError) as exc:
        return str(exc)
    trust_cluster_names(profile, creds, names)
    return None


def _warn_public_suffix(cluster: str) -> None:
    print(f"jumpgate: warning: the cluster name {cluster!r} is a public suffix: '*.{cluster}' is left out "
          f"of known_hosts and ssh_config (it would trust the cluster's host CA for other owners' hosts); "
          "reach nodes by their bare names", file=sys.stderr)


def config(args) -> int:
    """``jumpgate config``: print the ssh_config block for this profile (and bring known_hosts
    up to date with the same names)."""
    profile, creds = _credentials()
    names: list[str] = []
    cluster = profile.cluster or "jumpgate"
    wildcard = cluster_wildcard_allowed(cluster)
    if not wildcard:
        _warn_public_suffix(cluster)
    if not getattr(args, "offline", False):
        try:
            names = safe_node_names(_run(_node_names, creds))
        except CliError as exc:
            print(f"jumpgate: warning: node names left out ({exc}); use NODE.{profile.cluster}", file=sys.stderr)
        else:
            trust_cluster_names(profile, creds, names)
    print(render_ssh_config(cluster=cluster, user=creds.user, proxy_host=creds.proxy_host,
                            proxy_port=creds.proxy_port, identity=profile.identity_path,
                            certificate=profile.cert_path, known_hosts=profile.known_hosts_path,
                            node_names=names, cluster_wildcard=wildcard), end="")
    return 0

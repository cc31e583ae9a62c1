"""Reaching nodes through the proxy as the logged-in user: connect, list nodes, copy files.

This module owns the client side of the proxy path and of the classic scp protocol:

* :func:`connect_node` (an async context manager): SSH to the proxy (port 3023) with the
  profile's key and user certificate, the proxy verified by the cluster's host CA (the
  profile's ``@cert-authority`` known_hosts: no TOFU); a ``direct-tcpip`` channel (RFC 4254
  §7.2) to the node; and over that channel, used as the byte stream, a second SSH
  connection to the node as ``login``, whose host certificate is checked for the name the
  user typed (``web1``, ``web1.CLUSTER`` or an address: the host CA lists all of them).
  This is what ``ssh -J`` does, with both hops in one process.
* :func:`list_nodes`: the proxy's ``jumpgate-nodes`` subsystem (``jumpgate ls``).
* :func:`scp_upload` / :func:`scp_download`: the scp protocol (OpenSSH's rcp-derived
  ``scp -t`` sink / ``scp -f`` source, run on the node over an exec channel), with ``-r``
  directories and ``-p`` times and modes. Downloads trust nothing the node sends: every
  name is one path component (never ``..`` or containing ``/``), the top-level name must be
  the one asked for (CVE-2019-6111), and only one top-level entry is accepted — unless the
  path has a glob (``*``, ``?``, ``[a-z]``), which the login's shell on the node expands as
  OpenSSH's scp lets it: then each top-level name must match the last component's pattern
  (as OpenSSH 8.0's fix checks), and several may come. A ``progress`` callback draws a meter.

Every failure to connect becomes :class:`ConnectError`, one line that says what to do;
the node and the proxy audit the refusals themselves. Each step (the certificate used, the
proxy, the hosts' certificates as checked, the node hop) is logged at DEBUG on the
``jumpgate.client`` logger: what ``jumpgate ssh -v`` and ``--debug`` print.

>>> remote_scp_command("t", "~/my dir", recursive=True)
"scp -t -r -- ~/'my dir'"
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import getpass
import logging
import os
import re
import shlex
import stat
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager as AsyncContextManager
from pathlib import Path

import trio

import ssh_proto
from ssh_proto.errors import AuthError, ChannelError, ChannelOpenError, HostKeyNotVerifiable, KeyFormatError, SSHError
from ssh_proto.keys import Certificate, PrivateKey, PublicKey, load_public_file
from ssh_proto.messages import OPEN_ADMINISTRATIVELY_PROHIBITED
from ssh_proto.known_hosts import MARKER_CERT_AUTHORITY, KnownHosts

from ..addresses import NODE_PORT, PROXY_PORT, WEB_PORT, AddressError, parse_endpoint
from ..api.protocol import MAX_FRAME, ApiProtocolError
from ..errors import ChannelProtocolError
from ..inventory import NodeRecord
from ..timestamps import format_time
from ..proxy.routing import NODES_SUBSYSTEM, decode_list_response, encode_list_request
from .keyfile import UnprotectedKeyError, load_private_key_file
from .options import ClientOptions
from .trust import HostCheck, node_host_check, proxy_host_check

__all__ = ["PROXY_PORT", "NODE_PORT", "ConnectError", "Credentials", "ScpProtocolError", "connect_node",
           "certificate_problem", "connect_over", "connect_proxy", "proxy_endpoint", "default_login", "list_nodes", "load_credentials", "open_node_channel",
           "remote_scp_command", "resolve_target", "scp_download", "scp_upload", "KeepAlive"]

log = logging.getLogger("jumpgate.client")

CONNECT_TIMEOUT = 15.0
COPY_CHUNK = 256 * 1024
MAX_SCP_LINE = 8192          # a C/D/T record: mode, size, and a file name
LOGIN_HINT = "run `jumpgate login`"


class ConnectError(Exception):
    """Reaching the proxy or a node failed; ``str()`` is one line for the user."""


class ScpProtocolError(ChannelProtocolError):
    """The remote scp broke the protocol (or ended it with a fatal error); not an SSH error."""


# ------------------------------------------------------------------------------ credentials

@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """What a connection through the proxy needs, read once from the profile."""

    key: PrivateKey
    cert: Certificate
    known_hosts: KnownHosts
    proxy_host: str
    proxy_port: int
    user: str
    cluster: str = ""

    @property
    def logins(self) -> tuple[str, ...]:
        return self.cert.principals

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.cert.valid_before

    @property
    def client_keys(self) -> list[tuple[PrivateKey, Certificate]]:
        return [(self.key, self.cert)]


def proxy_endpoint(profile) -> tuple[str, int]:
    """The proxy's SSH (host, port) as the profile names it; ConnectError if malformed."""
    try:
        spec = profile.proxy_ssh or parse_endpoint(profile.proxy, WEB_PORT)[0]
        return parse_endpoint(spec, PROXY_PORT)
    except AddressError:
        raise ConnectError(f"the profile's proxy address {profile.proxy_ssh or profile.proxy!r} is not "
                           f"host[:port]; {LOGIN_HINT}") from None


def default_login(creds: Credentials) -> str:
    """The local user name when the certificate allows it, else its first login."""
    try:
        local = getpass.getuser()
    except (KeyError, OSError):
        local = ""
    return local if local in creds.logins or not creds.logins else creds.logins[0]


def resolve_target(target: str, creds: Credentials, login: str | None = None) -> tuple[str, str]:
    """``[login@]node`` -> (login, node); ``login`` (``-l``) wins. ValueError if malformed."""
    user, sep, node = target.rpartition("@")
    if not node or (sep and not user):
        raise ValueError(f"not a [login@]node: {target!r}")
    return login or (user if sep else default_login(creds)), node


def load_credentials(profile) -> Credentials:
    """Key, certificate and host-CA known_hosts of ``profile`` (a client Profile), or ConnectError."""
    if profile is None:
        raise ConnectError("not logged in; run `jumpgate login --proxy HOST:3080 --user NAME`")
    try:
        key = load_private_key_file(profile.identity_path)
        cert, _ = load_public_file(profile.cert_path)
        known_hosts = KnownHosts.load(profile.known_hosts_path)
    except FileNotFoundError:
        raise ConnectError(f"no key or certificate in {profile.identity_path.parent}; {LOGIN_HINT}") from None
    except UnprotectedKeyError as exc:
        raise ConnectError(str(exc)) from None
    except (OSError, KeyFormatError) as exc:
        raise ConnectError(f"cannot read your credentials: {exc}; {LOGIN_HINT}") from None
    if not isinstance(cert, Certificate) or cert.public_key != key.public_key:
        raise ConnectError(f"{profile.cert_path} is not a certificate for your key; {LOGIN_HINT}")
    if not any(e.marker == MARKER_CERT_AUTHORITY for e in known_hosts.entries):
        raise ConnectError(f"{profile.known_hosts_path} trusts no host CA; {LOGIN_HINT}")
    host, port = proxy_endpoint(profile)
    log.debug("certificate %s: key id %r, serial %d, logins %s, valid until %s", profile.cert_path, cert.key_id,
              cert.serial, ",".join(cert.principals) or "(none)", _when(cert.valid_before))
    return Credentials(key, cert, known_hosts, host, port, profile.user, profile.cluster)


def _when(epoch: int) -> str:
    return format_time(epoch, local=True)   # the user's own certificate: their time zone


def certificate_problem(creds: Credentials) -> str | None:
    """Why the certificate cannot be used now (expired, not yet valid), or None."""
    now = time.time()
    if creds.expired(now):
        return f"your certificate expired at {_when(creds.cert.valid_before)}; {LOGIN_HINT}"
    if now < creds.cert.valid_after:
        return f"your certificate is not valid before {_when(creds.cert.valid_after)} (check the clock)"
    return None


# ------------------------------------------------------------------------------ connecting

def _proxy_failure(exc: BaseException, creds: Credentials, timeout: float = CONNECT_TIMEOUT) -> ConnectError:
    where = f"{creds.proxy_host}:{creds.proxy_port}"
    if isinstance(exc, trio.TooSlowError):
        return ConnectError(f"the proxy at {where} did not answer within {timeout:g}s")
    if isinstance(exc, OSError):
        return ConnectError(f"cannot reach the proxy at {where}: {exc.strerror or exc}")
    if isinstance(exc, HostKeyNotVerifiable):
        return ConnectError(f"the proxy at {where} is not certified by the cluster's host CA as its proxy ({exc})")
    if isinstance(exc, AuthError):
        problem = certificate_problem(creds)
        return ConnectError(problem or f"the proxy at {where} refused your certificate (revoked, or issued by "
                                       f"another cluster's CA); {LOGIN_HINT}")
    return ConnectError(f"connection to the proxy at {where} failed: {exc}")


def _node_failure(exc: BaseException, node: str, login: str, creds: Credentials,
                  timeout: float = CONNECT_TIMEOUT) -> ConnectError:
    if isinstance(exc, trio.TooSlowError):
        return ConnectError(f"node {node!r} did not answer within {timeout:g}s")
    if isinstance(exc, HostKeyNotVerifiable):
        return ConnectError(f"node {node!r} is not certified by the cluster's host CA for that name ({exc})")
    if isinstance(exc, AuthError):
        if login not in creds.logins:
            return ConnectError(f"login {login!r} is not allowed by your certificate "
                                f"(your logins: {', '.join(creds.logins)})")
        problem = certificate_problem(creds)
        told = [_printable(b.strip().removeprefix("jumpgate: ")) for b in exc.banners if b.strip()]
        return ConnectError(problem or (f"node {node!r}: {told[0]}" if told else
                                        f"node {node!r} refused login {login!r} (no such account there?)"))
    return ConnectError(f"connection to node {node!r} failed: {exc}")


def _printable(text: str) -> str:
    """A server's text made safe for the user's terminal (no escape sequences), as OpenSSH's strnvis."""
    return "".join(c if c.isprintable() else "?" for c in text[:500])


@contextlib.asynccontextmanager
async def _connected(connecting: AsyncContextManager[ssh_proto.SSHClientConnection],
                     failure: Callable[[BaseException], ConnectError]) -> AsyncIterator[ssh_proto.SSHClientConnection]:
    """``connecting`` entered; a failure to connect becomes ``failure(exc)``, while errors
    raised once connected (the caller's own, or the connection's) pass through unchanged."""
    established = False
    try:
        async with connecting as conn:
            established = True
            yield conn
    except (OSError, SSHError, trio.TooSlowError) as exc:
        if established:
            raise
        raise failure(exc) from None


def _logged_check(check: HostCheck, what: str) -> HostCheck:
    """``check``, and a DEBUG line naming the host certificate it accepted."""
    def verify(key: PublicKey | Certificate) -> None:
        check(key)
        if isinstance(key, Certificate):
            log.debug("%s: host certificate %r (serial %d, for %s) signed by host CA %s, valid until %s: accepted",
                      what, key.key_id, key.serial, ",".join(key.principals), key.signature_key.fingerprint(),
                      _when(key.valid_before))
    return verify


def _log_connected(conn: ssh_proto.SSHClientConnection, what: str) -> None:
    algorithms = conn.negotiated
    if algorithms is not None:
        log.debug("%s: %s, kex %s, host key %s, cipher %s", what, conn.peer_version or "?", algorithms.kex,
                  algorithms.host_key, algorithms.cipher_cs)


@contextlib.asynccontextmanager
async def connect_proxy(creds: Credentials, *,
                        connect_timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[ssh_proto.SSHClientConnection]:
    """An authenticated connection to the proxy (username = the cluster user)."""
    where = f"{creds.proxy_host}:{creds.proxy_port}"
    log.debug("connecting to the proxy %s as %r (timeout %gs)", where, creds.user, connect_timeout)
    check = _logged_check(proxy_host_check(creds.known_hosts, creds.proxy_host, creds.proxy_port), f"proxy {where}")
    connecting = ssh_proto.connect(creds.proxy_host, creds.proxy_port, username=creds.user,
                                   client_keys=creds.client_keys, known_hosts=check, connect_timeout=connect_timeout)
    async with _connected(connecting, lambda exc: _proxy_failure(exc, creds, connect_timeout)) as conn:
        _log_connected(conn, f"authenticated to the proxy {where} with the certificate")
        yield conn


async def open_node_channel(proxy: ssh_proto.SSHClientConnection, node: str, port: int, *,
                            connect_timeout: float = CONNECT_TIMEOUT) -> ssh_proto.SSHChannel:
    """A ``direct-tcpip`` channel through ``proxy`` to ``node``; ConnectError when the proxy refuses.

    A proxy connection that died raises its own error (SSHError, BrokenResourceError), so
    that a caller holding a long-lived proxy connection can tell it from a refusal.
    """
    log.debug("asking the proxy for a channel to %r port %d", node, port)
    try:
        with trio.fail_after(connect_timeout):
            channel = await proxy.open_direct_tcpip(node, port)
    except ChannelOpenError as exc:
        log.debug("the proxy refused the channel: reason %d, %r", exc.reason, exc.description)
        raise ConnectError(_node_refusal(node, exc)) from None
    except trio.TooSlowError:
        raise ConnectError(f"the proxy did not connect to node {node!r} within {connect_timeout:g}s") from None
    log.debug("the proxy connected the channel to %r", node)
    return channel


def _node_refusal(node: str, exc: ChannelOpenError) -> str:
    """The proxy's refusal as one line: by its RFC 4254 §5.1 reason, in the proxy's words."""
    if exc.reason == OPEN_ADMINISTRATIVELY_PROHIBITED and exc.description:
        return exc.description  # the proxy will not route there ("unknown node 'x' in cluster 'y'")
    return f"cannot reach node {node!r}: {exc.description or 'refused by the proxy'}"


@contextlib.asynccontextmanager
async def connect_over(channel: ssh_proto.SSHChannel, creds: Credentials, node: str, login: str,
                       port: int = NODE_PORT, *,
                       connect_timeout: float = CONNECT_TIMEOUT) -> AsyncIterator[ssh_proto.SSHClientConnection]:
    """The SSH connection to ``node`` as ``login`` over ``channel`` (from :func:`open_node_channel`).

    The node's ``node:`` host certificate must name ``node`` (the name the user typed, J8). Failures to
    connect become :class:`ConnectError`; errors of the caller's block pass through.
    """
    log.debug("connecting to node %r as %r over that channel", node, login)
    check = _logged_check(node_host_check(creds.known_hosts, creds.cluster, node, port), f"node {node!r}")
    connecting = ssh_proto.connect(node, port, username=login, client_keys=creds.client_keys, known_hosts=check,
                                   stream=channel, connect_timeout=connect_timeout)
    async with _connected(connecting, lambda exc: _node_failure(exc, node, login, creds, connect_timeout)) as conn:
        _log_connected(conn, f"authenticated to node {node!r} as {login!r}")
        conn.carrier = channel  # for session_lost_reason
        yield conn


def session_lost_reason(conn: ssh_proto.SSHClientConnection, channel: ssh_proto.SSHChannel | None = None) -> str | None:
    """Why a session ended without an exit status, when its connection went: the reason a
    server gave in its DISCONNECT (the node's, or the proxy's that carried the channel —
    e.g. "the certificate of alice was revoked") before a plain lost connection."""
    proxy = channel.conn if channel is not None else None
    errors = [e for e in (conn.error, proxy.error if proxy is not None else None) if e is not None]
    told = [e for e in errors if isinstance(e, ssh_proto.DisconnectError)
            and not isinstance(e, ssh_proto.ConnectionLost) and e.description]
    if told:
        return told[0].description
    return str(errors[0]) if errors else None


@contextlib.asynccontextmanager
async def connect_node(profile, node: str, login: str, *, port: int | None = None,
                       creds: Credentials | None = None,
                       options: ClientOptions = ClientOptions()) -> AsyncIterator[ssh_proto.SSHClientConnection]:
    """An SSH connection to ``node`` as ``login``, through the profile's proxy.

    ``node`` is a node name, ``name.CLUSTER`` or a registered address; ``port`` (default
    3022) matters only for an address, the proxy uses a named node's registered port.
    Raises :class:`ConnectError` (one line) when the proxy or the node cannot be reached
    or refuses; errors raised by the caller's block pass through unchanged::

        async with connect_node(Profile.load(), "web1", "root") as conn:
            result = await conn.run("uptime")
    """
    creds = creds or load_credentials(profile)
    port = port or NODE_PORT
    timeout = options.connect_timeout or CONNECT_TIMEOUT
    async with connect_proxy(creds, connect_timeout=timeout) as proxy:
        channel = await open_node_channel(proxy, node, port, connect_timeout=timeout)
        async with connect_over(channel, creds, node, login, port, connect_timeout=timeout) as conn:
            yield conn


class KeepAlive:
    """OpenSSH's ServerAliveInterval / ServerAliveCountMax for one connection (to a node).

    Every ``interval`` seconds a ``keepalive@openssh.com`` global request goes out (any
    reply, success or failure, shows the peer alive: replies come in order, so one reply
    answers every probe before it). When ``count_max`` probes in a row are unanswered the
    peer is taken for dead: :meth:`run` closes the connection, which ends its sessions, and
    :attr:`dead` tells the caller why they ended. A dead node behind a live proxy never
    breaks the TCP connection, so without this a session would hang for good.
    """

    def __init__(self, conn: ssh_proto.SSHClientConnection, interval: float, count_max: int):
        self.conn, self.interval, self.count_max = conn, interval, count_max
        self.unanswered = 0
        self.dead = False

    async def run(self) -> None:
        if self.interval <= 0:
            return
        async with trio.open_nursery() as probes:
            while not self.conn.closed.is_set():
                await trio.sleep(self.interval)
                if self.unanswered >= self.count_max:  # (OpenSSH: sent count_max, the next interval cuts)
                    self.dead = True
                    log.debug("%d keepalives unanswered: closing the connection", self.unanswered)
                    probes.cancel_scope.cancel()
                    break
                self.unanswered += 1
                probes.start_soon(self._probe)
        if self.dead:
            await self.conn.aclose(description="keepalive timeout")

    async def _probe(self) -> None:
        with contextlib.suppress(SSHError, trio.BrokenResourceError, trio.ClosedResourceError):
            await self.conn.global_request("keepalive@openssh.com")
            self.unanswered = 0


async def list_nodes(creds: Credentials, labels: Mapping[str, str]) -> list[NodeRecord]:
    """The nodes carrying every ``labels`` pair, from the proxy's ``jumpgate-nodes`` subsystem."""
    async with connect_proxy(creds) as proxy:
        try:
            proc = await proxy.open_session(subsystem=NODES_SUBSYSTEM)
            await proc.send_all(encode_list_request(labels))
            await proc.send_eof()
            data = await _read_bounded(proc, MAX_FRAME + 4)
            await proc.wait()
            return decode_list_response(data)
        except (ChannelError, ApiProtocolError) as exc:
            raise ConnectError(f"listing nodes failed: {exc}") from None


async def _read_bounded(stream: trio.abc.ReceiveStream, limit: int) -> bytes:
    parts, size = [], 0
    while data := await stream.receive_some(65536):
        size += len(data)
        if size > limit:
            raise ApiProtocolError("the proxy's answer is too large")
        parts.append(data)
    return b"".join(parts)


# ------------------------------------------------------------------------------ scp

Warn = Callable[[str], None]
Progress = Callable[[str, int], "ProgressMeter"]   # (file name, size) -> a meter for that file

# What stays unquoted for the remote shell to expand: *, ? and a bracket of plain characters.
# A backslash makes the next character literal (``\*``), as in the shell.
_GLOB_TOKEN = re.compile(r"\\.|\*|\?|\[!?[A-Za-z0-9._-]+\]", re.DOTALL)


def has_glob(path: str) -> bool:
    """Whether ``path`` has a wildcard the remote shell would expand (see :data:`_GLOB_TOKEN`)."""
    return any(not m.group().startswith("\\") for m in _GLOB_TOKEN.finditer(path))


def _quote_keeping_globs(text: str) -> str:
    """Shell-quote ``text`` except its wildcards: ``/var/log/*.log`` -> ``/var/log/*.log``,
    ``a b*`` -> ``'a b'*``; nothing else reaches the shell unquoted (no injection)."""
    out, position = [], 0
    for match in _GLOB_TOKEN.finditer(text):
        literal = text[position:match.start()]
        token = match.group()
        if token.startswith("\\"):
            literal, token = literal + token[1], ""
        if literal:
            out.append(shlex.quote(literal))
        out.append(token)
        position = match.end()
    if position < len(text):
        out.append(shlex.quote(text[position:]))
    return "".join(out)


def _quote_remote_path(path: str, glob: bool = False) -> str:
    """Quote for the login's POSIX shell, keeping ``~`` expansion (and with ``glob``, wildcards)."""
    quote = _quote_keeping_globs if glob else shlex.quote
    if not path:
        return "."
    if path == "~":
        return "~"
    if path.startswith("~/"):
        rest = path[2:]
        return "~/" + quote(rest) if rest else "~/"
    return quote(path)


def remote_scp_command(mode: str, path: str, *, recursive: bool = False, preserve: bool = False,
                       directory: bool = False, glob: bool = False) -> str:
    """The command line of the remote end: ``scp -t`` (we upload) or ``scp -f`` (we download;
    ``glob``: the path's wildcards are left to the remote shell, as OpenSSH's scp does)."""
    if mode not in ("t", "f"):
        raise ValueError("mode is 't' (sink) or 'f' (source)")
    flags = ["-" + mode] + ["-r"] * recursive + ["-p"] * preserve + ["-d"] * directory
    return " ".join(["scp", *flags, "--", _quote_remote_path(path, glob)])


class _Incoming:
    """Buffered reads from the remote scp: one byte, one line, or exactly n bytes."""

    def __init__(self, stream: trio.abc.ReceiveStream):
        self._stream = stream
        self._buf = bytearray()
        self._eof = False

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self._stream.receive_some(COPY_CHUNK)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def byte(self) -> int | None:
        """The next byte, or None at a clean end of stream."""
        if not self._buf and not await self._fill():
            return None
        value = self._buf[0]
        del self._buf[0]
        return value

    async def line(self) -> str:
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_SCP_LINE:
                raise ScpProtocolError("the remote scp sent an overlong line")
            if not await self._fill():
                raise ScpProtocolError("the remote scp ended inside a line")
        raw = bytes(self._buf[:end])
        del self._buf[:end + 1]
        if end > MAX_SCP_LINE:
            raise ScpProtocolError("the remote scp sent an overlong line")
        return raw.decode("utf-8", "replace")

    async def chunks(self, size: int) -> AsyncIterator[bytes]:
        """Exactly ``size`` bytes, in pieces."""
        while size:
            if not self._buf and not await self._fill():
                raise ScpProtocolError("the remote scp ended inside a file")
            piece = bytes(self._buf[:min(size, COPY_CHUNK)])
            del self._buf[:len(piece)]
            size -= len(piece)
            yield piece


@dataclasses.dataclass(frozen=True, slots=True)
class _Record:
    """A C (file) or D (directory) record: ``C0644 1234 name``."""

    kind: str
    mode: int
    size: int
    name: str


def _parse_record(kind: str, line: str) -> _Record:
    mode_text, _, rest = line.partition(" ")
    size_text, _, name = rest.partition(" ")
    if not (len(mode_text) == 4 and all(c in "01234567" for c in mode_text)) or not size_text.isdigit():
        raise ScpProtocolError(f"malformed scp record {kind}{line[:80]!r}")
    size = int(size_text)
    if size >= 2**63 or (kind == "D" and size != 0):
        raise ScpProtocolError(f"bad size in scp record {kind}{line[:80]!r}")
    if not name or "/" in name or name == ".." or "\0" in name:
        raise ScpProtocolError(f"the remote scp sent an unsafe file name {name[:80]!r}")
    return _Record(kind, int(mode_text, 8) & 0o7777, size, name)


def _parse_times(line: str) -> tuple[int, int]:
    """``T<mtime> <usec> <atime> <usec>`` -> (atime, mtime)."""
    parts = line.split(" ")
    if len(parts) != 4 or not all(p.isdigit() for p in parts) or max(map(int, parts)) >= 2**40:
        raise ScpProtocolError(f"malformed scp times record T{line[:80]!r}")
    return int(parts[2]), int(parts[0])


class _ScpPeer:
    """What both directions share: the channel, reading replies, counting errors."""

    def __init__(self, proc: ssh_proto.SSHProcess, warn: Warn, *, recursive: bool, preserve: bool,
                 progress: Progress | None = None):
        self.proc = proc
        self.incoming = _Incoming(proc)
        self.warn = warn
        self.recursive = recursive
        self.preserve = preserve
        self.progress = progress
        self.ok = True

    def error(self, message: str) -> None:
        self.ok = False
        self.warn(message)

    async def send(self, data: bytes | str) -> None:
        await self.proc.send_all(data.encode("utf-8") if isinstance(data, str) else data)

    async def ack(self) -> bool:
        """The remote's reply: \\0 ok, \\1 error (go on), \\2 fatal (ScpProtocolError)."""
        code = await self.incoming.byte()
        if code == 0:
            return True
        if code is None:
            raise ScpProtocolError("the remote scp closed the connection")
        if code not in (1, 2):
            raise ScpProtocolError(f"unexpected reply {code:#x} from the remote scp")
        message = await self.incoming.line()
        if code == 2:
            raise ScpProtocolError(message or "the remote scp failed")
        self.error(message)
        return False


class _Source(_ScpPeer):
    """We send files to ``scp -t`` on the node."""

    async def run(self, sources: Sequence[str]) -> None:
        if not await self.ack():  # the sink speaks first
            return
        for source in sources:
            await self.send_path(source, ())

    async def send_path(self, path: str, ancestors: tuple[tuple[int, int], ...]) -> None:
        try:
            st = os.stat(path)
        except OSError as exc:
            return self.error(f"{path}: {exc.strerror}")
        name = os.path.basename(path.rstrip("/")) or path
        if "\n" in name:
            return self.error(f"{path}: a file name with a newline cannot be copied with scp")
        if stat.S_ISDIR(st.st_mode):
            if not self.recursive:
                return self.error(f"{path}: is a directory (use -r)")
            if (st.st_dev, st.st_ino) in ancestors:
                return self.error(f"{path}: directory loop (symbolic link), skipped")
            return await self._send_dir(path, name, st, ancestors + ((st.st_dev, st.st_ino),))
        if not stat.S_ISREG(st.st_mode):
            return self.error(f"{path}: not a regular file")
        await self._send_file(path, name, st)

    async def _send_times(self, st: os.stat_result) -> bool:
        if not self.preserve:
            return True
        await self.send(f"T{int(st.st_mtime)} 0 {int(st.st_atime)} 0\n")
        return await self.ack()

    async def _send_file(self, path: str, name: str, st: os.stat_result) -> None:
        try:
            f = open(path, "rb")
        except OSError as exc:
            return self.error(f"{path}: {exc.strerror}")
        with f:
            if not await self._send_times(st):
                return
            await self.send(f"C{stat.S_IMODE(st.st_mode):04o} {st.st_size} {name}\n")
            if not await self.ack():
                return
            meter = self.progress(name, st.st_size) if self.progress else None
            problem = await self._send_contents(f, st.st_size, meter)
            if meter is not None:
                meter.finish()
        await self.send(f"\x01scp: {path}: {problem}\n" if problem else b"\0")
        if problem:
            self.error(f"{path}: {problem}")
        await self.ack()

    async def _send_contents(self, f, size: int, meter=None) -> str | None:
        """Send exactly ``size`` bytes (zero padding if the file shrank): the protocol needs them."""
        problem, total = None, size
        while size:
            try:
                data = await trio.to_thread.run_sync(f.read, min(size, COPY_CHUNK))
            except OSError as exc:
                data, problem = b"", exc.strerror
            if not data:
                problem = problem or "file shrank while being copied"
                data = bytes(min(size, COPY_CHUNK))
            await self.send(data)
            size -= len(data)
            if meter is not None:
                meter.update(total - size)
        return problem

    async def _send_dir(self, path: str, name: str, st: os.stat_result,
                        ancestors: tuple[tuple[int, int], ...]) -> None:
        try:
            entries = sorted(e.name for e in os.scandir(path))
        except OSError as exc:
            return self.error(f"{path}: {exc.strerror}")
        if not await self._send_times(st):
            return
        await self.send(f"D{stat.S_IMODE(st.st_mode):04o} 0 {name}\n")
        if not await self.ack():
            return
        for entry in entries:
            await self.send_path(os.path.join(path, entry), ancestors)
        await self.send("E\n")
        await self.ack()


class _Sink(_ScpPeer):
    """We receive files from ``scp -f`` on the node, into ``target``."""

    def __init__(self, proc, warn, *, recursive: bool, preserve: bool, target: Path, expected: str | None,
                 glob: bool = False, progress: Progress | None = None):
        super().__init__(proc, warn, recursive=recursive, preserve=preserve, progress=progress)
        self.target = target
        self.expected = expected        # the top-level name asked for (None: cannot tell, e.g. "~")
        self.glob = glob                # expected is a pattern; several top-level entries may match
        self.dirs: list[tuple[Path, tuple[int, int] | None]] = []
        self.times: tuple[int, int] | None = None
        self.top_level_seen = False

    async def run(self) -> None:
        await self.send(b"\0")
        while (code := await self.incoming.byte()) is not None:
            line = await self.incoming.line()
            if code in (1, 2):  # the source reports an error (2: and gives up)
                self.error(line)
                if code == 2:
                    return
                continue
            await self._record(chr(code), line)
        if self.dirs:
            raise ScpProtocolError("the remote scp ended inside a directory")

    async def _record(self, kind: str, line: str) -> None:
        if kind == "T":
            self.times = _parse_times(line)
            await self.send(b"\0")
        elif kind == "E":
            if line or not self.dirs:
                raise ScpProtocolError("unexpected end-of-directory record from the remote scp")
            path, times = self.dirs.pop()
            self._apply_times(path, times)
            await self.send(b"\0")
        elif kind in ("C", "D"):
            record = _parse_record(kind, line)
            times, self.times = self.times, None
            path = self._destination(record)
            if kind == "D":
                await self._enter_dir(path, record, times)
            else:
                await self._receive_file(path, record, times)
        else:
            raise ScpProtocolError(f"unexpected record {kind!r} from the remote scp")

    def _destination(self, record: _Record) -> Path:
        if record.name == "." and (self.dirs or self.expected != "."):
            raise ScpProtocolError("the remote scp sent '.' where a file name belongs")
        if self.dirs:
            return self.dirs[-1][0] / record.name
        if self.top_level_seen and not self.glob:
            raise ScpProtocolError("the remote scp sent more than what was asked for")
        self.top_level_seen = True
        if self.expected is not None and not self._expected(record.name):
            raise ScpProtocolError(f"the remote scp sent {record.name!r} when {self.expected!r} was asked for")
        if record.kind == "D" and not self.recursive:
            raise ScpProtocolError("the remote scp sent a directory without -r")
        return self.target / record.name if self.target.is_dir() else self.target

    def _expected(self, name: str) -> bool:
        if not self.glob:
            return name == self.expected
        return name != "." and fnmatch.fnmatchcase(name, _fnmatch_pattern(self.expected))

    async def _refuse(self, message: str) -> None:
        self.error(message)
        await self.send(f"\x01scp: {message}\n")

    async def _enter_dir(self, path: Path, record: _Record, times) -> None:
        if not self.recursive:
            raise ScpProtocolError("the remote scp sent a directory without -r")
        try:
            if path.is_dir():
                if self.preserve:
                    path.chmod(record.mode)
            else:
                path.mkdir(mode=record.mode | 0o700)  # writable until filled, as OpenSSH does
        except OSError as exc:
            return await self._refuse(f"{path}: {exc.strerror}")
        self.dirs.append((path, times))
        await self.send(b"\0")

    async def _receive_file(self, path: Path, record: _Record, times) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, record.mode & 0o777)
        except OSError as exc:
            return await self._refuse(f"{path}: {exc.strerror}")
        problem, received = None, 0
        meter = self.progress(record.name, record.size) if self.progress else None
        with open(fd, "wb") as f:
            await self.send(b"\0")
            async for piece in self.incoming.chunks(record.size):
                received += len(piece)
                if meter is not None:
                    meter.update(received)
                if problem is None:
                    try:
                        await trio.to_thread.run_sync(f.write, piece)
                    except OSError as exc:
                        problem = exc.strerror  # keep reading: the bytes are on the wire anyway
            if problem is None and self.preserve:
                os.fchmod(f.fileno(), record.mode)
        if meter is not None:
            meter.finish()
        if not await self.ack():  # the source's own verdict on what it sent
            return
        if problem:
            return await self._refuse(f"{path}: {problem}")
        self._apply_times(path, times)
        await self.send(b"\0")

    def _apply_times(self, path: Path, times: tuple[int, int] | None) -> None:
        if times is not None and self.preserve:
            try:
                os.utime(path, times)
            except OSError as exc:
                self.error(f"{path}: cannot set times: {exc.strerror}")


async def _run_scp(conn: ssh_proto.SSHClientConnection, command: str, peer_factory, work) -> bool:
    """Run the remote scp, ``work(peer)`` against it; the remote's stderr lines count as errors."""
    proc = await conn.open_session(command)
    peer = peer_factory(proc)

    async def relay_stderr() -> None:
        buf = b""
        while data := await proc.receive_stderr():
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                peer.error(line.decode("utf-8", "replace"))
        if buf.strip():
            peer.error(buf.decode("utf-8", "replace"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay_stderr)
        try:
            await work(peer)
        except ScpProtocolError as exc:
            peer.error(f"scp: {exc.description}")
            await proc.aclose()  # out of step with the remote: stop it, do not wait for it
        else:
            await proc.send_eof()
        await proc.wait()
    if proc.exit_status not in (0, None) and peer.ok:
        peer.error(f"the remote scp exited with status {proc.exit_status}")
    return peer.ok


async def scp_upload(conn: ssh_proto.SSHClientConnection, sources: Sequence[str], target: str, warn: Warn, *,
                     recursive: bool = False, preserve: bool = False, progress: Progress | None = None) -> bool:
    """Copy local ``sources`` to ``target`` on the node (``scp [-r] [-p] SRC... node:TARGET``).

    Problems are passed to ``warn`` (one line each); returns True when everything was copied.
    """
    command = remote_scp_command("t", target, recursive=recursive, preserve=preserve, directory=len(sources) > 1)
    make = lambda proc: _Source(proc, warn, recursive=recursive, preserve=preserve, progress=progress)  # noqa: E731
    return await _run_scp(conn, command, make, lambda peer: peer.run(sources))


def _fnmatch_pattern(pattern: str) -> str:
    """Our glob syntax as fnmatch's: a backslashed character becomes a one-character class."""
    return _GLOB_TOKEN.sub(lambda m: f"[{m.group()[1]}]" if m.group().startswith("\\") else m.group(), pattern)


def _expected_name(remote_path: str) -> str | None:
    """The top-level name ``scp -f PATH`` must send, when we can know it (not for ``~``)."""
    if remote_path in ("", "."):
        return "."
    trimmed = remote_path.rstrip("/")
    if not trimmed:
        return None  # "/" itself: the parser refuses the empty name it would send
    name = trimmed.rsplit("/", 1)[-1]
    return None if name.startswith("~") else name


async def scp_download(conn: ssh_proto.SSHClientConnection, source: str, target: Path, warn: Warn, *,
                       recursive: bool = False, preserve: bool = False, progress: Progress | None = None) -> bool:
    """Copy ``source`` on the node to local ``target`` (a directory, or the new file's name).

    Wildcards in ``source`` are expanded by the remote shell (``/var/log/*.log``); every name
    that comes back must match the pattern of its last component.
    """
    glob = has_glob(source)
    command = remote_scp_command("f", source, recursive=recursive, preserve=preserve, glob=glob)
    expected = _expected_name(source)
    make = lambda proc: _Sink(proc, warn, recursive=recursive, preserve=preserve,  # noqa: E731
                              target=Path(target), expected=expected, glob=glob, progress=progress)
    return await _run_scp(conn, command, make, lambda peer: peer.run())

"""Session processes on a node: who runs them, with what, and how their ends meet a channel.

This module owns everything between an accepted SSH session and an OS process:

* :class:`LoginAccount` / :func:`lookup_account`: the passwd entry a login maps to.
* :func:`session_environment`: the environment sshd would give the login (HOME, USER,
  LOGNAME, SHELL, PATH, TERM, SSH_CLIENT / SSH_CONNECTION / SSH_TTY, SSH_AUTH_SOCK,
  SSH_ORIGINAL_COMMAND, and LANG / LC_* from the client's ``env`` requests).
* :func:`session_argv`: the login shell, as sshd runs it: ``-sh`` (a login shell) for an
  interactive session, ``sh -c COMMAND`` for exec and for the sftp subsystem.
* :class:`SessionProcess`: spawns a :class:`SpawnSpec` as the login (``user=``, ``group=``,
  ``extra_groups=`` of :mod:`subprocess` when the node runs as root), on pipes or on a pty
  (RFC 4254 §6.2; terminal modes of §8 applied), and relays it to a channel: stdin and
  EOF in, stdout and stderr out, window-change (§6.7) as TIOCSWINSZ, signals (§6.9) to
  the process group, break (RFC 4335) as tcsendbreak, and the exit status or signal (§6.10).

It knows the channel only as a stream (``receive_some`` / ``send_all`` / ``send_stderr``),
so it does not depend on ssh_proto's classes.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import grp
import ipaddress
import logging
import math
import os
import pwd
import resource
import signal
import struct
import subprocess
import sys
import termios
from typing import Mapping, Protocol

import trio

from ssh_proto import PtyInfo
from ssh_proto.errors import ProtocolError
from ssh_proto.wire import Reader

log = logging.getLogger("jumpgate.node")

SFTP_SERVER = "/usr/lib/openssh/sftp-server"
DEFAULT_SHELL = "/bin/sh"  # what sshd runs for an empty passwd shell field (_PATH_BSHELL)
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SESSION_UMASK = 0o022
RELAY_CHUNK = 64 * 1024
#: After the process exits, pty output still buffered is relayed until the pty has been
#: idle this long (a background job may keep the slave open, so EIO may never come).
PTY_DRAIN_IDLE = 0.2
#: How long a hung-up session's process group has to exit before SIGKILL.
HANGUP_GRACE = 2.0
#: Signal names of RFC 4254 §6.10; anything else is not sent, nor reported by name.
RFC_SIGNALS = frozenset({"ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT", "SEGV", "TERM",
                         "USR1", "USR2"})
_CLIENT_ENV_MAX = 4096  # longest LANG / LC_* value passed through


class SpawnError(Exception):
    """The session's process could not be started; ``str()`` is safe to show the user."""


class Channel(Protocol):
    """The session end a process is relayed to (``ssh_proto.ServerSession`` fits)."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes: ...

    async def send_all(self, data: bytes) -> None: ...

    async def send_stderr(self, data: bytes) -> None: ...

    async def wait_closed(self) -> None: ...


# ----------------------------------------------------------------------------- accounts


@dataclasses.dataclass(frozen=True, slots=True)
class LoginAccount:
    """An OS account a session runs as (from the passwd database)."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[int, ...]  # supplementary groups (initgroups), the primary one included


def lookup_account(name: str) -> LoginAccount:
    """The passwd entry of login ``name``; raises KeyError when there is none.

    Blocking (NSS may ask a directory service): call it through ``trio.to_thread``.
    """
    if not name or "\0" in name or "/" in name:
        raise KeyError(name)
    entry = pwd.getpwnam(name)
    try:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except OSError:
        groups = (entry.pw_gid,)
    return LoginAccount(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir or "/",
                        entry.pw_shell or DEFAULT_SHELL, groups)


def running_as_root() -> bool:
    """True when sessions switch to the login's account (the node can setuid)."""
    return os.geteuid() == 0


def own_account_name() -> str:
    """The name of the account the node runs as (its uid's passwd entry, else the uid as text):
    a node that is not root can log in only this account."""
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


# ----------------------------------------------------------------------------- environment


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoints:
    """Both ends of the SSH connection, for SSH_CLIENT and SSH_CONNECTION."""

    remote_ip: str
    remote_port: int
    local_ip: str
    local_port: int

    @classmethod
    def from_addresses(cls, remote: tuple | None, local: tuple | None) -> Endpoints:
        rip, rport = (remote[0], remote[1]) if remote else ("0.0.0.0", 0)
        lip, lport = (local[0], local[1]) if local else ("0.0.0.0", 0)
        return cls(_plain_ip(rip), int(rport), _plain_ip(lip), int(lport))

    @property
    def ssh_client(self) -> str:
        return f"{self.remote_ip} {self.remote_port} {self.local_port}"

    @property
    def ssh_connection(self) -> str:
        return f"{self.remote_ip} {self.remote_port} {self.local_ip} {self.local_port}"


def _plain_ip(address: str) -> str:
    """An IPv4-mapped IPv6 address written as IPv4, as sshd reports it."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


def _client_variable(name: str, value: str) -> bool:
    """LANG and LC_* from the client's env requests; nothing that could not be a variable."""
    if name != "LANG" and not name.startswith("LC_"):
        return False
    if "=" in name or "\0" in name or "\0" in value or len(value) > _CLIENT_ENV_MAX:
        return False
    return name.replace("_", "").isalnum() and name.isascii()


def session_environment(account: LoginAccount, endpoints: Endpoints, *, term: str | None = None,
                        tty: str | None = None, client_env: Mapping[str, str] = {},
                        auth_sock: str | None = None, original_command: str | None = None) -> dict[str, str]:
    """The environment of a session process (nothing of the node's own environment leaks in)."""
    env = {name: value for name, value in client_env.items() if _client_variable(name, value)}
    env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell,
               PATH=ROOT_PATH if account.uid == 0 else USER_PATH,
               SSH_CLIENT=endpoints.ssh_client, SSH_CONNECTION=endpoints.ssh_connection)
    if term and "\0" not in term:
        env["TERM"] = term
    if tty is not None:
        env["SSH_TTY"] = tty
    if auth_sock is not None:
        env["SSH_AUTH_SOCK"] = auth_sock
    if original_command is not None and "\0" not in original_command:
        env["SSH_ORIGINAL_COMMAND"] = original_command
    return env


def session_argv(account: LoginAccount, command: str | None) -> tuple[str, tuple[str, ...]]:
    """(executable, argv) for the login's shell: a login shell, or ``shell -c command``.

    A login shell is marked by argv[0] starting with "-" (what login(1) and sshd do).
    """
    shell = account.shell
    name = os.path.basename(shell) or "sh"
    if command is None:
        return shell, ("-" + name,)
    if "\0" in command:
        raise SpawnError("command contains a NUL byte")
    return shell, (name, "-c", command)


# ----------------------------------------------------------------------------- terminal modes

_LINUX_IUTF8 = 0o040000  # missing from some builds of the termios module


def _mode_table() -> dict[int, tuple[str, int]]:
    """RFC 4254 §8 (and RFC 8160 IUTF8) opcode -> ("cc" / termios flag word, constant)."""
    t = termios
    names = {
        1: ("cc", "VINTR"), 2: ("cc", "VQUIT"), 3: ("cc", "VERASE"), 4: ("cc", "VKILL"), 5: ("cc", "VEOF"),
        6: ("cc", "VEOL"), 7: ("cc", "VEOL2"), 8: ("cc", "VSTART"), 9: ("cc", "VSTOP"), 10: ("cc", "VSUSP"),
        11: ("cc", "VDSUSP"), 12: ("cc", "VREPRINT"), 13: ("cc", "VWERASE"), 14: ("cc", "VLNEXT"),
        16: ("cc", "VSWTCH"), 17: ("cc", "VSTATUS"), 18: ("cc", "VDISCARD"),
        30: ("iflag", "IGNPAR"), 31: ("iflag", "PARMRK"), 32: ("iflag", "INPCK"), 33: ("iflag", "ISTRIP"),
        34: ("iflag", "INLCR"), 35: ("iflag", "IGNCR"), 36: ("iflag", "ICRNL"), 37: ("iflag", "IUCLC"),
        38: ("iflag", "IXON"), 39: ("iflag", "IXANY"), 40: ("iflag", "IXOFF"), 41: ("iflag", "IMAXBEL"),
        42: ("iflag", "IUTF8"),
        50: ("lflag", "ISIG"), 51: ("lflag", "ICANON"), 52: ("lflag", "XCASE"), 53: ("lflag", "ECHO"),
        54: ("lflag", "ECHOE"), 55: ("lflag", "ECHOK"), 56: ("lflag", "ECHONL"), 57: ("lflag", "NOFLSH"),
        58: ("lflag", "TOSTOP"), 59: ("lflag", "IEXTEN"), 60: ("lflag", "ECHOCTL"), 61: ("lflag", "ECHOKE"),
        62: ("lflag", "PENDIN"),
        70: ("oflag", "OPOST"), 71: ("oflag", "OLCUC"), 72: ("oflag", "ONLCR"), 73: ("oflag", "OCRNL"),
        74: ("oflag", "ONOCR"), 75: ("oflag", "ONLRET"),
        90: ("cflag", "CS7"), 91: ("cflag", "CS8"), 92: ("cflag", "PARENB"), 93: ("cflag", "PARODD"),
    }
    table = {}
    for opcode, (word, name) in names.items():
        value = getattr(t, name, _LINUX_IUTF8 if name == "IUTF8" and sys.platform.startswith("linux") else None)
        if value is not None:
            table[opcode] = (word, value)
    return table


_MODES = _mode_table()
_FLAG_WORDS = {"iflag": 0, "oflag": 1, "cflag": 2, "lflag": 3}
_TTY_OP_END = 0
_FIRST_UNDEFINED_OPCODE = 160  # 160..255 have unknown arguments: parsing stops (RFC 4254 §8)


def parse_terminal_modes(modes: bytes) -> list[tuple[int, int]]:
    """The (opcode, value) pairs of an encoded terminal modes string, up to TTY_OP_END.

    Like sshd, a truncated list or an opcode of unknown size ends the list (the pty keeps
    its defaults for the rest) rather than failing the session.
    """
    r = Reader(modes)
    pairs = []
    try:
        while r.remaining:
            opcode = r.byte()
            if opcode == _TTY_OP_END or opcode >= _FIRST_UNDEFINED_OPCODE:
                break
            pairs.append((opcode, r.uint32()))
    except ProtocolError:
        log.debug("truncated terminal modes ignored")
    return pairs


def apply_terminal_modes(fd: int, modes: bytes) -> None:
    """Set the modes the client sent (its own terminal's) on the pty ``fd``."""
    pairs = parse_terminal_modes(modes)
    if not pairs:
        return
    attrs = termios.tcgetattr(fd)
    cc = attrs[6]
    for opcode, value in pairs:
        known = _MODES.get(opcode)
        if known is None:
            continue  # speeds (128/129) and modes this OS lacks
        word, constant = known
        if word == "cc":
            cc[constant] = bytes([0 if value == 255 else value & 0xFF])  # 255: disabled
        elif value:
            attrs[_FLAG_WORDS[word]] |= constant
        else:
            attrs[_FLAG_WORDS[word]] &= ~constant
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def set_window_size(fd: int, cols: int, rows: int, width: int = 0, height: int = 0) -> None:
    """TIOCSWINSZ; the kernel then sends SIGWINCH to the pty's foreground process group."""
    clamp = lambda n: max(0, min(int(n), 0xFFFF))  # noqa: E731 - struct winsize fields are u16
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", clamp(rows), clamp(cols), clamp(width), clamp(height)))


# ----------------------------------------------------------------------------- spawning


@dataclasses.dataclass(frozen=True, slots=True)
class SpawnSpec:
    """What to run for a session, and as whom."""

    executable: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: str
    account: LoginAccount
    switch_user: bool
    pty: PtyInfo | None = None  # the session's pty-req (RFC 4254 §6.2)
    #: The soft RLIMIT_NOFILE the session gets: what the node was started with, before it
    #: raised its own to the hard limit (docs/security.md L5). None: inherit the node's.
    nofile: int | None = None


def session_cwd(account: LoginAccount) -> tuple[str, str | None]:
    """(working directory, warning): HOME, or / with sshd's warning when HOME is missing."""
    if os.path.isdir(account.home):
        return account.home, None
    return "/", f"Could not chdir to home directory {account.home}: No such file or directory"


def _user_options(spec: SpawnSpec) -> dict:
    """subprocess arguments that switch to the login (initgroups, setgid, setuid in the child)."""
    if not spec.switch_user:
        return {}
    return {"user": spec.account.uid, "group": spec.account.gid, "extra_groups": list(spec.account.groups)}


_UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def _default_signals() -> None:
    # Runs in the child: what the node ignores or blocks (started by nohup, or with & from a
    # script, a node ignores SIGHUP/SIGINT/SIGQUIT) is inherited through exec, and the user's
    # ^C, hang-up and `kill` would do nothing. sshd resets them too. Little beyond
    # sigaction and sigprocmask may run here (fork safety).
    for signum in signal.valid_signals():
        if signum not in _UNCATCHABLE:
            try:
                signal.signal(signum, signal.SIG_DFL)
            except (OSError, ValueError):
                pass  # a signal number the C library reserves for itself
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _acquire_controlling_tty() -> None:
    # Runs in the child after setsid(): default signals, then the pty slave (fd 0) becomes the
    # controlling terminal, so job control, ^C and SIGHUP on hang-up work.
    _default_signals()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _child_setup(spec: SpawnSpec):
    """The preexec_fn of a session: default signals (and the pty as controlling terminal),
    then the descriptor limit the node started with (rule L5). It runs in the child after
    the switch to the login: lowering a soft limit needs no privilege."""
    first = _acquire_controlling_tty if spec.pty is not None else _default_signals
    if spec.nofile is None:
        return first
    nofile = spec.nofile

    def setup() -> None:
        first()
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(nofile, hard), hard))
    return setup


def _tty_group() -> int | None:
    try:
        return grp.getgrnam("tty").gr_gid
    except KeyError:
        return None


def _prepare_pty(spec: SpawnSpec) -> tuple[int, int, str]:
    """Open a pty pair sized and moded as requested; the slave owned by the login (as sshd)."""
    master, slave = os.openpty()
    try:
        req = spec.pty
        set_window_size(slave, req.cols, req.rows, req.width, req.height)
        try:
            apply_terminal_modes(slave, req.modes)
        except termios.error as exc:
            log.debug("terminal modes not applied: %s", exc)
        if spec.switch_user:
            tty_gid = _tty_group()
            os.fchown(slave, spec.account.uid, spec.account.gid if tty_gid is None else tty_gid)
            os.fchmod(slave, 0o620)
        return master, slave, os.ttyname(slave)
    except BaseException:
        os.close(master)
        os.close(slave)
        raise


class SessionProcess:
    """A running session process and the fds that connect it to its channel.

    >>> proc = await SessionProcess.spawn(spec)          # doctest: +SKIP
    >>> session.on_resize = proc.resize                  # doctest: +SKIP
    >>> status, signame = await proc.relay(session)      # doctest: +SKIP
    """

    def __init__(self, process: trio.Process, master: trio.lowlevel.FdStream | None, tty: str | None):
        self.process = process
        self._master = master
        self.tty = tty
        self._read_scope: trio.CancelScope | None = None
        self._exited = False

    @classmethod
    async def spawn(cls, spec: SpawnSpec) -> SessionProcess:
        """Start ``spec``; raises :class:`SpawnError` with a user-safe message on failure."""
        try:
            if spec.pty is None:
                return await cls._spawn_pipes(spec)
            return await cls._spawn_pty(spec)
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            what = getattr(exc, "strerror", None) or str(exc)
            raise SpawnError(f"cannot run {spec.executable}: {what}") from None

    @classmethod
    async def _spawn_pipes(cls, spec: SpawnSpec) -> SessionProcess:
        process = await trio.lowlevel.open_process(
            list(spec.argv), executable=spec.executable, env=dict(spec.env), cwd=spec.cwd,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=_child_setup(spec), umask=SESSION_UMASK, **_user_options(spec))
        return cls(process, None, None)

    @classmethod
    async def _spawn_pty(cls, spec: SpawnSpec) -> SessionProcess:
        master, slave, tty = _prepare_pty(spec)
        env = {**spec.env, "SSH_TTY": tty}
        try:
            process = await trio.lowlevel.open_process(
                list(spec.argv), executable=spec.executable, env=env, cwd=spec.cwd,
                stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                preexec_fn=_child_setup(spec), umask=SESSION_UMASK, **_user_options(spec))
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # the child has it; our copy would hide the EIO that means "all gone"
        return cls(process, trio.lowlevel.FdStream(master), tty)

    # ---- requests while running -----------------------------------------------------------
    def resize(self, cols: int, rows: int, width: int = 0, height: int = 0) -> None:
        """window-change (RFC 4254 §6.7); ignored without a pty or after it closed."""
        if self._master is not None and self._master.fileno() >= 0:
            try:
                set_window_size(self._master.fileno(), cols, rows, width, height)
            except OSError as exc:
                log.debug("window-change failed: %s", exc)

    def signal(self, name: str) -> bool:
        """Deliver RFC 4254 §6.9 signal ``name`` to the session's process group."""
        if name not in RFC_SIGNALS:
            return False
        self._kill_group(getattr(signal, "SIG" + name))
        return True

    def send_break(self, length_ms: int) -> None:
        """RFC 4335 break: a break condition on the pty (what sshd does); no-op on pipes."""
        if self._master is not None and self._master.fileno() >= 0:
            try:
                termios.tcsendbreak(self._master.fileno(), 0)
            except termios.error as exc:
                log.debug("break failed: %s", exc)

    def _kill_group(self, signum: int) -> None:
        # start_new_session made the process a group leader: its pid is the group id, and
        # signalling the group reaches what it started too (sh -c 'a; b', pipelines). On a
        # pty, an interactive shell runs its foreground job in a group of its own: that
        # group gets the signal too, as if typed at the terminal.
        groups = {self.process.pid}
        if self._master is not None and self._master.fileno() >= 0:
            try:
                groups.add(os.tcgetpgrp(self._master.fileno()))
            except OSError:
                pass  # no foreground group (the shell already left the terminal)
        for pgid in groups - {0, 1, os.getpgrp()}:  # never ourselves, never "every process"
            try:
                os.killpg(pgid, signum)
            except (ProcessLookupError, PermissionError):
                pass  # that group is gone already

    # ---- relaying --------------------------------------------------------------------------
    async def relay(self, channel: Channel) -> tuple[int | None, str | None]:
        """Relay until the process exited and its output is delivered.

        Returns (exit status, None) or (None, RFC 4254 signal name). Hangs up the process
        group if the relay is cancelled or the channel breaks.
        """
        try:
            async with trio.open_nursery() as guard:
                guard.start_soon(self._hang_up_when_closed, channel)
                if self._master is None:
                    await self._relay_pipes(channel)
                else:
                    await self._relay_pty(channel)
                guard.cancel_scope.cancel()
        finally:
            await self.aclose()
        return exit_outcome(self.process.returncode)

    async def _hang_up_when_closed(self, channel: Channel) -> None:
        """The client closed the channel: nobody will read or write any more, so hang up."""
        await channel.wait_closed()
        self._kill_group(signal.SIGHUP)
        await trio.sleep(HANGUP_GRACE)
        self._kill_group(signal.SIGKILL)  # it ignored the hang-up

    async def _relay_pipes(self, channel: Channel) -> None:
        proc = self.process

        async def copy_out(stream: trio.abc.ReceiveStream, send) -> None:
            try:
                while data := await stream.receive_some(RELAY_CHUNK):
                    await send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._kill_group(signal.SIGHUP)  # the client is gone: nobody reads the rest

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_copy_in, channel, proc.stdin)
            async with trio.open_nursery() as outputs:
                outputs.start_soon(copy_out, proc.stdout, channel.send_all)
                outputs.start_soon(copy_out, proc.stderr, channel.send_stderr)
            # like sshd, the session ends when the process exited *and* its output closed
            await proc.wait()
            nursery.cancel_scope.cancel()

    async def _relay_pty(self, channel: Channel) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._copy_to_pty, channel)
            nursery.start_soon(self._watch_exit)
            await self._copy_from_pty(channel)
            await self.process.wait()
            nursery.cancel_scope.cancel()

    async def _copy_to_pty(self, channel: Channel) -> None:
        # Client EOF is not passed on: a pty cannot be half-closed (sshd does the same).
        try:
            while data := await channel.receive_some(RELAY_CHUNK):
                await self._master.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def _watch_exit(self) -> None:
        await self.process.wait()
        self._exited = True
        if self._read_scope is not None:
            self._read_scope.deadline = min(self._read_scope.deadline, trio.current_time() + PTY_DRAIN_IDLE)

    async def _copy_from_pty(self, channel: Channel) -> None:
        while True:
            deadline = trio.current_time() + PTY_DRAIN_IDLE if self._exited else math.inf
            data = b""
            with trio.CancelScope(deadline=deadline) as self._read_scope:
                data = await _read_pty(self._master)
            self._read_scope = None
            if not data:
                return  # EIO (every holder of the slave side is gone), or idle after the exit
            try:
                await channel.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._kill_group(signal.SIGHUP)
                return

    async def aclose(self) -> None:
        """Hang up: SIGHUP the group if still running, SIGKILL after a grace; reap; close fds."""
        with trio.CancelScope(shield=True):
            if self.process.returncode is None:
                self._kill_group(signal.SIGHUP)
                with trio.move_on_after(HANGUP_GRACE):
                    await self.process.wait()
                if self.process.returncode is None:
                    self._kill_group(signal.SIGKILL)
                    await self.process.wait()
            if self._master is not None:
                await self._master.aclose()
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    await stream.aclose()


async def _copy_in(channel: Channel, stdin: trio.abc.SendStream) -> None:
    """Client data to the process's stdin; client EOF closes it."""
    try:
        while data := await channel.receive_some(RELAY_CHUNK):
            await stdin.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the process closed its stdin; the rest of the input has nowhere to go
    finally:
        with trio.CancelScope(shield=True):
            await stdin.aclose()


async def _read_pty(master: trio.lowlevel.FdStream) -> bytes:
    try:
        return await master.receive_some(RELAY_CHUNK)
    except trio.BrokenResourceError as exc:
        # Reading a pty master whose slave side is closed everywhere gives EIO: that is EOF.
        if not (isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.EIO):
            log.info("pty read failed: %s", exc.__cause__ or exc)
        return b""


def exit_outcome(returncode: int | None) -> tuple[int | None, str | None]:
    """(status, None) for a normal exit; (None, name) for death by an RFC 4254 signal.

    A signal without an RFC name is reported as status 128 + n, as a shell would.
    """
    if returncode is None:
        return 255, None
    if returncode >= 0:
        return returncode, None
    try:
        name = signal.Signals(-returncode).name[3:]
    except ValueError:
        name = ""
    if name in RFC_SIGNALS:
        return None, name
    return 128 - returncode, None

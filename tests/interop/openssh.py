"""The real OpenSSH as a test peer: throw-away users, keys and certificates, sshd, ssh, sftp.

This module owns everything needed to run Debian's OpenSSH binaries against Jumpgate in
tests and benchmarks.  It knows nothing of pytest (the fixtures in ``conftest.py`` wrap it)
so that ``tests/bench`` can use it from a plain script.

- :func:`create_throwaway_user` / :func:`remove_throwaway_user`: an OS account with
  ``/bin/sh`` as its shell and a temporary home.  Tests never log in as root: root's
  ``~/.bashrc`` on these machines runs ``pyenv init`` and adds ~100 ms to every session.
- :class:`KeyFactory`: keys made by the real ``ssh-keygen`` (ed25519, ECDSA P-256/384/521,
  RSA 3072), a user CA and a host CA, and certificates signed with ``ssh-keygen -s``
  (the format of PROTOCOL.certkeys).
- :func:`start_sshd` -> :class:`SshdHandle`: a private ``/usr/sbin/sshd`` on a free loopback
  port, logging at DEBUG3 to its own file, with known_hosts files that trust it.
- :func:`run_ssh`, :func:`run_sftp` (and :func:`ssh_command` / :func:`sftp_command` for
  ``trio.run_process``): the real clients with no user or system configuration involved.
- :func:`run_ssh_audit`: ssh-audit's policy scan of any SSH server.

Everything here is blocking and thread-safe; from a Trio test call it through
``trio.to_thread.run_sync`` or run the argv from ``ssh_command`` with ``trio.run_process``.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

SSHD = Path("/usr/sbin/sshd")
SSH = Path("/usr/bin/ssh")
SFTP = Path("/usr/bin/sftp")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")
PRIVSEP_DIR = Path("/run/sshd")
LOOPBACK = "127.0.0.1"

# kind -> (ssh-keygen -t, -b).  The kinds tests may ask for.
KEY_KINDS: dict[str, tuple[str, int | None]] = {
    "ed25519": ("ed25519", None),
    "ecdsa256": ("ecdsa", 256),
    "ecdsa384": ("ecdsa", 384),
    "ecdsa521": ("ecdsa", 521),
    "rsa3072": ("rsa", 3072),
}
ALL_KEY_KINDS: tuple[str, ...] = tuple(KEY_KINDS)

# Host key algorithms each host key kind can serve (an RSA key serves two; PROTOCOL.certkeys
# adds a -cert-v01@openssh.com form of each).
HOST_KEY_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "ed25519": ("ssh-ed25519",),
    "ecdsa256": ("ecdsa-sha2-nistp256",),
    "ecdsa384": ("ecdsa-sha2-nistp384",),
    "ecdsa521": ("ecdsa-sha2-nistp521",),
    "rsa3072": ("rsa-sha2-512", "rsa-sha2-256"),
}

_INSTALL_HINT = (
    "install Debian's OpenSSH with `make system-deps` "
    "(apt-get install -y openssh-client openssh-server)"
)


class OpensshMissing(RuntimeError):
    """A binary of the real OpenSSH is not installed; the interop tests cannot run."""


class SshdStartError(RuntimeError):
    """sshd exited or never listened; the message carries the tail of its log."""


def require_openssh(*binaries: Path) -> None:
    """Raise :class:`OpensshMissing` naming every absent binary (default: all of them)."""
    wanted = binaries or (SSHD, SSH, SFTP, SSH_KEYGEN, SFTP_SERVER)
    missing = [str(b) for b in wanted if not os.access(b, os.X_OK)]
    if missing:
        raise OpensshMissing(f"missing {', '.join(missing)}: {_INSTALL_HINT}")


# --------------------------------------------------------------------------- users

_STALE_USER = re.compile(r"jgt_[a-z0-9]+_(\d+)")


@dataclasses.dataclass(frozen=True, slots=True)
class ThrowawayUser:
    """An OS account made for one test session; its shell is /bin/sh."""

    name: str
    uid: int
    gid: int
    home: Path

    def set_password(self, password: str) -> None:
        """Give the account a password (sshd with ``UsePAM no`` checks /etc/shadow)."""
        _run_checked(["chpasswd"], input=f"{self.name}:{password}\n".encode())


def throwaway_user_name(tag: str) -> str:
    """``jgt_<tag>_<pid>``: unique per process, recognisable by :func:`sweep_stale_users`."""
    return f"jgt_{re.sub('[^a-z0-9]', '', tag.lower())[:16] or 'x'}_{os.getpid()}"


def create_throwaway_user(name: str) -> ThrowawayUser:
    """Create account ``name`` (<= 32 chars) with home ``/tmp/<name>_home`` (0700, its own).

    Call :func:`sweep_stale_users` first: a killed run leaves its account behind.
    """
    if len(name) > 32 or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a usable account name: {name!r}")
    home = Path(tempfile.gettempdir()) / f"{name}_home"
    if _user_exists(name):
        remove_throwaway_user(name)
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700)
    argv = ["useradd", "-M", "-d", str(home), "-s", "/bin/sh", "-p", "*", name]
    retry_on_passwd_lock(argv)
    entry = pwd.getpwnam(name)
    os.chown(home, entry.pw_uid, entry.pw_gid)
    return ThrowawayUser(name, entry.pw_uid, entry.pw_gid, home)


def remove_throwaway_user(user: ThrowawayUser | str) -> None:
    """Delete the account (its leftover session processes first) and its home directory."""
    name = user if isinstance(user, str) else user.name
    if not _user_exists(name):
        return
    entry = pwd.getpwnam(name)
    for _ in range(50):
        _terminate_pids(_pids_of_uid(entry.pw_uid))
        done = subprocess.run(["userdel", name], capture_output=True)
        if done.returncode == 0 or not _user_exists(name):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"userdel {name} failed: {done.stderr.decode(errors='replace')}")
    if isinstance(user, ThrowawayUser):
        shutil.rmtree(user.home, ignore_errors=True)


def sweep_stale_users() -> list[str]:
    """Remove ``jgt_<tag>_<pid>`` accounts whose creating process is gone; return their names."""
    removed = []
    for entry in pwd.getpwall():
        match = _STALE_USER.fullmatch(entry.pw_name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            remove_throwaway_user(entry.pw_name)
            home = Path(entry.pw_dir)
            # Only ever delete a home this module made: a temp dir named for the account.
            if home == Path(tempfile.gettempdir()) / f"{entry.pw_name}_home":
                shutil.rmtree(home, ignore_errors=True)
            removed.append(entry.pw_name)
    return removed


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def retry_on_passwd_lock(argv: list[str]) -> None:
    """Run a shadow-utils command (useradd, usermod...); retry for ~5 s while /etc/passwd is locked.

    Parallel xdist workers run useradd/userdel at the same moment; shadow-utils fails
    (exit 1 or 10) instead of waiting when another one holds /etc/passwd's lock.
    Any other failure raises at once.
    """
    for _ in range(50):
        done = subprocess.run(argv, capture_output=True)
        if done.returncode == 0:
            return
        if b"lock" not in done.stderr:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.decode(errors='replace')}")


def _pids_of_uid(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except FileNotFoundError:
                continue
    return pids


# --------------------------------------------------------------------------- keys


@dataclasses.dataclass(frozen=True, slots=True)
class KeyPair:
    """A key pair in OpenSSH's files: ``private`` (0600) and ``public`` (``private``.pub)."""

    kind: str
    private: Path

    @property
    def public(self) -> Path:
        return self.private.with_name(self.private.name + ".pub")

    @property
    def public_line(self) -> str:
        """``<algorithm> <base64>`` without the comment, as authorized_keys wants it."""
        algorithm, blob = self.public.read_text().split()[:2]
        return f"{algorithm} {blob}"

    @property
    def algorithm(self) -> str:
        """The key's type name, e.g. ``ssh-ed25519`` or ``ssh-rsa``."""
        return self.public_line.split()[0]


class KeyFactory:
    """Keys and certificates made by the real ssh-keygen, cached for the factory's life.

    >>> keys = KeyFactory(Path("/tmp/keys"))                                  # doctest: +SKIP
    >>> alice = keys.user_key("ecdsa384")                                     # doctest: +SKIP
    >>> cert = keys.sign_user_cert(alice, ["alice"], validity="-5m:+1h", options=["no-pty"])  # doctest: +SKIP
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        self._cache: dict[str, KeyPair] = {}
        self._serial = 0
        self._lock = threading.Lock()

    def user_key(self, kind: str = "ed25519") -> KeyPair:
        """The session's client key of ``kind`` (one of :data:`KEY_KINDS`)."""
        return self._cached(f"user_{kind}", kind)

    def host_key(self, kind: str = "ed25519") -> KeyPair:
        """The session's host key of ``kind``; every sshd of the session serves it."""
        return self._cached(f"host_{kind}", kind)

    def ca_key(self, role: str, kind: str = "ed25519") -> KeyPair:
        """A certificate authority key; ``role`` names it (``user``, ``host``, ``rogue``...)."""
        return self._cached(f"ca_{role}_{kind}", kind)

    @property
    def user_ca(self) -> KeyPair:
        return self.ca_key("user")

    @property
    def host_ca(self) -> KeyPair:
        return self.ca_key("host")

    def new_key(self, kind: str = "ed25519", comment: str = "jgt") -> KeyPair:
        """A fresh key, never cached (for tests that need a key nobody trusts)."""
        return self._generate(f"fresh_{kind}_{self._next_serial()}", kind, comment)

    def sign_user_cert(self, key: KeyPair, principals: Sequence[str], **how: object) -> Path:
        """Sign ``key`` as a user certificate; ``how`` as for :meth:`sign_cert`."""
        how.setdefault("ca", self.user_ca)
        return self.sign_cert(key, principals, host=False, **how)  # type: ignore[arg-type]

    def sign_host_cert(
        self, key: KeyPair, principals: Sequence[str] = (LOOPBACK, "localhost"), **how: object
    ) -> Path:
        """Sign ``key`` as a host certificate; ``how`` as for :meth:`sign_cert`."""
        how.setdefault("ca", self.host_ca)
        return self.sign_cert(key, principals, host=True, **how)  # type: ignore[arg-type]

    def sign_cert(
        self,
        key: KeyPair,
        principals: Sequence[str],
        *,
        ca: KeyPair,
        host: bool = False,
        identity: str | None = None,
        validity: str | None = None,
        options: Sequence[str] = (),
        serial: int | None = None,
        signature_algorithm: str | None = None,
    ) -> Path:
        """Run ``ssh-keygen -s`` and return the new certificate's path (a fresh file each call).

        ``validity`` is ssh-keygen's ``-V`` (e.g. ``-5m:+1h``; None: forever), ``options``
        its ``-O`` values (``no-pty``, ``force-command=...``, ``source-address=...``,
        ``clear``, ``critical:name=value``...), ``signature_algorithm`` its ``-t`` for RSA CAs.
        An empty ``principals`` signs a certificate valid for any principal.
        """
        n = self._next_serial()
        stem = self.directory / "certs" / f"{key.private.name}-{n}"
        stem.parent.mkdir(mode=0o755, exist_ok=True)
        shutil.copyfile(key.public, stem.with_name(stem.name + ".pub"))
        argv = [str(SSH_KEYGEN), "-q", "-s", str(ca.private), "-I", identity or f"jgt-{n}"]
        argv += ["-z", str(n if serial is None else serial)]
        if principals:
            argv += ["-n", ",".join(principals)]
        if validity is not None:
            argv += ["-V", validity]
        for option in options:
            argv += ["-O", option]
        if signature_algorithm is not None:
            argv += ["-t", signature_algorithm]
        if host:
            argv.append("-h")
        _run_checked([*argv, str(stem.with_name(stem.name + ".pub"))])
        return stem.with_name(stem.name + "-cert.pub")

    def _cached(self, name: str, kind: str) -> KeyPair:
        with self._lock:
            if name not in self._cache:
                self._cache[name] = self._generate(name, kind, f"jgt-{name}")
            return self._cache[name]

    def _generate(self, name: str, kind: str, comment: str) -> KeyPair:
        try:
            keytype, bits = KEY_KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown key kind {kind!r}; one of {ALL_KEY_KINDS}") from None
        path = self.directory / name
        argv = [str(SSH_KEYGEN), "-q", "-t", keytype, "-N", "", "-C", comment, "-f", str(path)]
        if bits is not None:
            argv += ["-b", str(bits)]
        _run_checked(argv)
        return KeyPair(kind, path)

    def _next_serial(self) -> int:
        with self._lock:
            self._serial += 1
            return self._serial


# --------------------------------------------------------------------------- sshd


class SshEndpoint(Protocol):
    """What the client runners need to reach and trust a server."""

    host: str
    port: int
    username: str
    known_hosts: Path


@dataclasses.dataclass(frozen=True, slots=True)
class SshTarget:
    """A server that is not an :class:`SshdHandle` (Jumpgate's own, asyncssh...)."""

    host: str
    port: int
    username: str
    known_hosts: Path


class SshdHandle:
    """A running private sshd.  Stop it with :meth:`stop` (fixtures do it for you).

    ``known_hosts`` trusts its plain host keys as ``[127.0.0.1]:PORT``;
    ``known_hosts_ca`` trusts only the host CA through an ``@cert-authority`` line.
    """

    def __init__(
        self,
        *,
        process: subprocess.Popen[bytes],
        port: int,
        user: ThrowawayUser,
        workdir: Path,
        host_keys: dict[str, KeyPair],
        host_certificates: dict[str, Path],
        keys: KeyFactory,
    ) -> None:
        self.process = process
        self.host = LOOPBACK
        self.port = port
        self.user = user
        self.workdir = workdir
        self.host_keys = host_keys
        self.host_certificates = host_certificates
        self.user_ca = keys.user_ca
        self.host_ca = keys.host_ca
        self.config_path = workdir / "sshd_config"
        self.log_path = workdir / "sshd.log"
        self.authorized_keys = workdir / "authorized_keys"
        self.known_hosts = workdir / "known_hosts"
        self.known_hosts_ca = workdir / "known_hosts_ca"
        self._write_known_hosts()

    @property
    def username(self) -> str:
        return self.user.name

    @property
    def pid(self) -> int:
        return self.process.pid

    def host_pattern(self) -> str:
        """How known_hosts names this server: ``[127.0.0.1]:PORT``."""
        return f"[{self.host}]:{self.port}"

    def known_hosts_lines(self) -> list[str]:
        return [f"{self.host_pattern()} {key.public_line}" for key in self.host_keys.values()]

    def add_authorized_key(self, key: KeyPair | str, options: str = "") -> None:
        """Authorize another key (sshd reads the file at every authentication)."""
        line = key.public_line if isinstance(key, KeyPair) else key
        with self.authorized_keys.open("a") as f:
            f.write(f"{options} {line}\n" if options else f"{line}\n")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Stop the listener and any per-connection sshd processes it forked; idempotent."""
        children = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        _terminate_pids(children)

    def __enter__(self) -> SshdHandle:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _write_known_hosts(self) -> None:
        self.known_hosts.write_text("".join(f"{line}\n" for line in self.known_hosts_lines()))
        ca_line = f"@cert-authority {self.host_pattern()} {self.host_ca.public_line}\n"
        self.known_hosts_ca.write_text(ca_line)


def start_sshd(
    workdir: Path,
    user: ThrowawayUser,
    keys: KeyFactory,
    *,
    authorized_keys: Iterable[KeyPair | str] | None = None,
    host_key_kinds: Sequence[str] = ALL_KEY_KINDS,
    host_certificates: bool = False,
    trust_user_ca: bool = True,
    pubkey_authentication: bool = True,
    password_authentication: bool = False,
    kbd_interactive_authentication: bool = False,
    kex_algorithms: Sequence[str] | None = None,
    host_key_algorithms: Sequence[str] | None = None,
    ciphers: Sequence[str] | None = None,
    macs: Sequence[str] | None = None,
    log_level: str = "DEBUG3",
    extra_config: Sequence[str] = (),
    startup_timeout: float = 10.0,
) -> SshdHandle:
    """Start ``/usr/sbin/sshd -D`` for ``user``, its files in the (empty or new) ``workdir``.

    ``authorized_keys`` defaults to ``keys.user_key("ed25519")``; pass ``()`` for none.
    ``extra_config`` lines come before the generated ones (sshd keeps the first value it
    reads for a keyword, so they override the defaults) and any ``Match`` block goes last.
    The algorithm lists become ``KexAlgorithms``/``HostKeyAlgorithms``/``Ciphers``/``MACs``.
    """
    require_openssh(SSHD, SFTP_SERVER)
    workdir.mkdir(mode=0o755, parents=True, exist_ok=True)
    # sshd reads AuthorizedKeysFile with the user's uid: the path must be traversable by it.
    workdir.chmod(0o755)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    host_keys = {kind: keys.host_key(kind) for kind in host_key_kinds}
    certs = {k: keys.sign_host_cert(key) for k, key in host_keys.items()} if host_certificates else {}
    if authorized_keys is None:
        authorized_keys = [keys.user_key("ed25519")]
    lines = [k.public_line if isinstance(k, KeyPair) else k for k in authorized_keys]
    (workdir / "authorized_keys").write_text("".join(f"{line}\n" for line in lines))
    (workdir / "authorized_keys").chmod(0o644)
    (workdir / "user_ca.pub").write_text(keys.user_ca.public_line + "\n")
    settings = _SshdSettings(
        user=user, host_keys=host_keys, host_certificates=certs, trust_user_ca=trust_user_ca,
        auth=(pubkey_authentication, password_authentication, kbd_interactive_authentication),
        algorithms={"KexAlgorithms": kex_algorithms, "HostKeyAlgorithms": host_key_algorithms,
                    "Ciphers": ciphers, "MACs": macs},
        log_level=log_level, extra=tuple(extra_config),
    )
    for _ in range(5):
        port = _free_port()
        process = _spawn_sshd(workdir, settings, port)
        if _await_listening(process, port, workdir / "sshd.log", startup_timeout):
            return SshdHandle(process=process, port=port, user=user, workdir=workdir,
                              host_keys=host_keys, host_certificates=certs, keys=keys)
    raise SshdStartError(f"sshd kept losing the race for a free port:\n{_tail(workdir / 'sshd.log')}")


@dataclasses.dataclass(frozen=True, slots=True)
class _SshdSettings:
    user: ThrowawayUser
    host_keys: dict[str, KeyPair]
    host_certificates: dict[str, Path]
    trust_user_ca: bool
    auth: tuple[bool, bool, bool]  # pubkey, password, keyboard-interactive
    algorithms: dict[str, Sequence[str] | None]
    log_level: str
    extra: tuple[str, ...]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _sshd_config(workdir: Path, settings: _SshdSettings, port: int) -> str:
    pubkey, password, kbdint = settings.auth
    first_match = next(
        (i for i, line in enumerate(settings.extra) if line.strip().lower().startswith("match ")),
        len(settings.extra),
    )
    lines = list(settings.extra[:first_match])
    lines += [
        f"Port {port}", f"ListenAddress {LOOPBACK}", f"PidFile {workdir / 'sshd.pid'}",
        f"LogLevel {settings.log_level}", "StrictModes no", "UsePAM no", "UseDNS no",
        "PermitRootLogin no", f"AllowUsers {settings.user.name}",
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
        f"PubkeyAuthentication {_yes(pubkey)}", f"PasswordAuthentication {_yes(password)}",
        f"KbdInteractiveAuthentication {_yes(kbdint)}", "PermitEmptyPasswords no",
        "AllowTcpForwarding yes", "AllowAgentForwarding yes", "AllowStreamLocalForwarding yes",
        "X11Forwarding no", "PrintMotd no", "PrintLastLog no",
        # The default 10:30:100 drops concurrent unauthenticated connections at random.
        "MaxStartups 1000:30:1000", "MaxSessions 100",
        f"Subsystem sftp {SFTP_SERVER}",
    ]
    if settings.trust_user_ca:
        lines.append(f"TrustedUserCAKeys {workdir / 'user_ca.pub'}")
    lines += [f"HostKey {key.private}" for key in settings.host_keys.values()]
    lines += [f"HostCertificate {cert}" for cert in settings.host_certificates.values()]
    lines += [f"{kw} {','.join(v)}" for kw, v in settings.algorithms.items() if v is not None]
    lines += settings.extra[first_match:]
    return "".join(f"{line}\n" for line in lines)


def _spawn_sshd(workdir: Path, settings: _SshdSettings, port: int) -> subprocess.Popen[bytes]:
    config = workdir / "sshd_config"
    config.write_text(_sshd_config(workdir, settings, port))
    log = workdir / "sshd.log"
    log.unlink(missing_ok=True)
    # -E sends sshd's log to the file; its stderr joins it for anything printed before.
    with log.open("ab") as stderr:
        return subprocess.Popen(
            [str(SSHD), "-D", "-e", "-E", str(log), "-f", str(config)],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
        )


def _await_listening(process: subprocess.Popen[bytes], port: int, log: Path, timeout: float) -> bool:
    """True once ``process`` listens on ``port``; False if it lost the port to another process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = _tail(log)
            if "Address already in use" in text:
                return False
            raise SshdStartError(f"sshd exited with {process.returncode}:\n{text}")
        # Watch the kernel's socket table instead of connecting: a probe connection would
        # fork an sshd child and leave a "[preauth]" line in every log.
        inode = _listening_inode(port)
        if inode is not None and inode in _socket_inodes(process.pid):
            return True
        time.sleep(0.01)
    process.kill()
    process.wait()
    raise SshdStartError(f"sshd did not listen on port {port} within {timeout}s:\n{_tail(log)}")


def _listening_inode(port: int) -> str | None:
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if fields[1] == wanted and fields[3] == "0A":  # 0A: TCP_LISTEN
                return fields[9]
    return None


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return inodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (sshd forks several per connection)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _terminate_pids(pids: Iterable[int]) -> None:
    """SIGTERM then SIGKILL the given processes (all started by our sshd or our user)."""
    pids = list(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _is_zombie(p)]
            time.sleep(0.01)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------- clients


def client_options(
    target: SshEndpoint,
    *,
    identity: KeyPair | Path | None = None,
    certificate: Path | None = None,
    known_hosts: Path | None = None,
) -> list[str]:
    """``-F /dev/null`` and the ``-o`` options shared by ssh and sftp: no user or system
    config, no agent, no prompts, only the given identity, strict host key checking."""
    key = identity.private if isinstance(identity, KeyPair) else identity
    options = {
        "BatchMode": "yes", "StrictHostKeyChecking": "yes", "IdentitiesOnly": "yes",
        "UserKnownHostsFile": str(known_hosts or target.known_hosts),
        "GlobalKnownHostsFile": "/dev/null", "UpdateHostKeys": "no", "IdentityAgent": "none",
        "IdentityFile": str(key) if key is not None else "none",
        "CertificateFile": str(certificate) if certificate is not None else "none",
        "ControlMaster": "no", "ControlPath": "none", "ConnectTimeout": "10",
        "Port": str(target.port), "User": target.username,
    }
    argv = ["-F", "/dev/null"]
    for name, value in options.items():
        argv += ["-o", f"{name}={value}"]
    return argv


def ssh_command(
    args: Sequence[str] | str,
    *,
    target: SshEndpoint,
    options: Sequence[str] = (),
    **trust: KeyPair | Path | None,
) -> list[str]:
    """The argv of the real ``ssh`` running ``args`` on ``target``.

    ``options`` are extra ssh arguments placed before the host (``-v``, ``-o Ciphers=...``,
    ``-N -L ...``); ``trust`` is ``identity``/``certificate``/``known_hosts`` as for
    :func:`client_options`.
    """
    remote = [args] if isinstance(args, str) else list(args)
    return [str(SSH), *client_options(target, **trust), *options, target.host, *remote]


def run_ssh(
    args: Sequence[str] | str,
    *,
    target: SshEndpoint,
    options: Sequence[str] = (),
    input: bytes | None = None,
    timeout: float = 30.0,
    check: bool = False,
    **trust: KeyPair | Path | None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the real ssh to completion; stdout and stderr captured as bytes.

    Exit status 255 means ssh itself failed (connection, host key, authentication).
    """
    argv = ssh_command(args, target=target, options=options, **trust)
    return subprocess.run(
        argv, input=input, capture_output=True, timeout=timeout, check=check,
        stdin=subprocess.DEVNULL if input is None else None,
    )


def sftp_command(
    *, target: SshEndpoint, batch: str = "-", options: Sequence[str] = (), **trust: KeyPair | Path | None
) -> list[str]:
    """The argv of ``sftp -b BATCH`` (``-`` reads the batch from stdin) against ``target``."""
    return [str(SFTP), "-b", batch, *client_options(target, **trust), *options, target.host]


def run_sftp(
    batch: str,
    *,
    target: SshEndpoint,
    options: Sequence[str] = (),
    timeout: float = 30.0,
    **trust: KeyPair | Path | None,
) -> subprocess.CompletedProcess[bytes]:
    """Run sftp's batch mode on the commands in ``batch``; any failing command aborts it."""
    argv = sftp_command(target=target, options=options, **trust)
    return subprocess.run(argv, input=batch.encode(), capture_output=True, timeout=timeout)


def run_ssh_audit(host: str, port: int, policy: Path, *, timeout: float = 60.0) -> tuple[int, str]:
    """ssh-audit's policy scan (``-P policy``) of ``host:port``; returns (exit code, output).

    Exit code 0 means the server passed; ssh-audit uses 1 for a connection error and 3 for
    a policy failure.
    """
    argv = [sys.executable, "-m", "ssh_audit", "-n", "-t", "10", "-P", str(policy),
            "-p", str(port), host]
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(argv, capture_output=True, timeout=timeout, env=env)
    return done.returncode, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")


def _run_checked(argv: list[str], input: bytes | None = None) -> None:
    done = subprocess.run(argv, input=input, capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr.decode(errors='replace')}")

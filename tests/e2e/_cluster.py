"""Run the built ``dist/jumpgate.pyz`` as separate processes, as a user and an admin would.

This module owns the end-to-end harness; it knows nothing of pytest (``conftest.py`` wraps
it in fixtures):

- :func:`build_pyz`: build the zipapp once (``build/build_pyz.sh``), serialised between
  xdist workers by an ``fcntl`` lock on ``dist/.build.lock``, rebuilt only when a source
  file is newer; each worker then runs its own copy, so a rebuild by someone else in the
  middle of a run cannot pull the binary from under a test.
- :class:`Jumpgate`: the binary, run with this interpreter (the pyz needs the same minor
  version); :meth:`Jumpgate.run` returns a :class:`Result` (text stdout/stderr, status).
- :class:`Daemon`: one ``jumpgate start`` process (all-in-one or a joining node), its
  output in a log file, ready once the banner is printed, stopped by SIGTERM then SIGKILL.
- :class:`Cluster`: the all-in-one daemon plus ``ctl`` on its data dir.
- :class:`EventWatch`, :func:`find_event`, :func:`poll`: reading ``ctl events``. A node's or
  proxy's events are queued (``appliance/api/audit_sink.py``) and reach the auth role a
  moment after the action that caused them: a test polls for them up to :data:`AUDIT_DELAY`.
- :class:`Client`: one ``$JUMPGATE_HOME`` (signup, login, ls, ssh, scp, config); the session
  daemon its ``jumpgate ssh`` starts is stopped with the cluster.
- :func:`run_openssh`: the real ``ssh``/``scp``/``sftp`` beside it, no agent involved.
- :class:`Authenticator`: the TOTP app of a user, fed by the ``otpauth://`` URI signup
  prints. The server accepts one step either side of the current one and refuses a step
  not later than the last one used, so codes come from strictly increasing steps and no
  test waits for the clock unless it logs in more than twice in one 30 s step.
"""
from __future__ import annotations

import calendar
import dataclasses
import fcntl
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pyotp

from appliance.client.muxclient import stop_daemon

REPO = Path(__file__).resolve().parents[2]
DIST_PYZ = REPO / "dist" / "jumpgate.pyz"
BUILD_LOCK = REPO / "dist" / ".build.lock"
ENV_PYZ = "JUMPGATE_E2E_PYZ"
SOURCE_DIRS = ("appliance", "ssh_proto", "web_static")
LOOPBACK = "127.0.0.1"
BANNER = re.compile(r"jumpgate: cluster '([^']+)' is running")
PASSWORD = "correct horse battery staple"  # >= 12 characters, as the policy wants
PORTS = ("node", "proxy", "tunnel", "auth", "web")  # the services with a --NAME-port flag
AUDIT_DELAY = 10.0  # the longest wait for a queued node/proxy event to show in ctl events

T = TypeVar("T")


class HarnessError(RuntimeError):
    """The harness could not set the scene (build, start); the message carries the log tail."""


# --------------------------------------------------------------------------- build


def _newest_source_mtime() -> float:
    """What the Makefile's dist/jumpgate.pyz rule depends on, as mtimes."""
    newest = max((REPO / name).stat().st_mtime for name in ("pyproject.toml", "build/build_pyz.sh",
                                                            "build/fast_main.py"))
    for top in SOURCE_DIRS:
        for path in (REPO / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                newest = max(newest, path.stat().st_mtime)
    return newest


def _stale(pyz: Path) -> bool:
    return not pyz.exists() or pyz.stat().st_mtime < _newest_source_mtime()


def build_pyz(copy_to: Path) -> Path:
    """Build ``dist/jumpgate.pyz`` if stale, copy it into ``copy_to`` and warm its extraction.

    Under an exclusive lock: a second xdist worker waits for the first one's build.
    ``$JUMPGATE_E2E_PYZ`` names a pyz to test instead (a release artifact): no build then.
    """
    BUILD_LOCK.parent.mkdir(exist_ok=True)
    copy_to.mkdir(parents=True, exist_ok=True)
    target = copy_to / "jumpgate.pyz"
    given = os.environ.get(ENV_PYZ)
    source = Path(given) if given else DIST_PYZ
    with BUILD_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not given and _stale(DIST_PYZ):
            done = subprocess.run(["bash", str(REPO / "build" / "build_pyz.sh")], cwd=REPO,
                                  env={**os.environ, "PY": sys.executable},
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise HarnessError(f"build_pyz.sh failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        shutil.copy2(source, target)
        # The first run unpacks the zipapp into ~/.shiv: do it here, once, under the lock.
        warm = subprocess.run([sys.executable, str(target), "--version"], capture_output=True,
                              text=True, timeout=120)
        if warm.returncode != 0:
            raise HarnessError(f"{target} --version failed:\n{warm.stderr}")
    return target


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass(frozen=True, slots=True)
class Result:
    """A finished command: its argv (for messages), status and text output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(f"{' '.join(self.argv[2:])} exited {self.returncode}:\n"
                                 f"stdout: {self.stdout}\nstderr: {self.stderr}")
        return self

    @property
    def error_lines(self) -> list[str]:
        """stderr without the prompts signup/login write there (they end with ': ')."""
        return [line for line in self.stderr.splitlines() if line.strip() and not _is_prompt(line)]


def _is_prompt(line: str) -> bool:
    # A scripted prompt is written to stderr as "Question: " and then a newline.
    return line.rstrip("\n").endswith(": ") or line.endswith(":")


class Jumpgate:
    """The built binary, run as ``sys.executable PYZ ARGS`` (same minor version as the build)."""

    def __init__(self, pyz: Path):
        self.pyz = pyz

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(self.pyz), *args]

    @staticmethod
    def env(home: Path | None = None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("SSH_AUTH_SOCK", "JUMPGATE_HOME") and not k.startswith("PYTEST_")}
        env["LANG"] = "C.UTF-8"
        if home is not None:
            env["JUMPGATE_HOME"] = str(home)
        env.update(extra or {})
        return env

    def run(self, *args: str, home: Path | None = None, input: str | None = None, timeout: float = 60,
            stdin: int | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Result:
        argv = self.argv(*args)
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout,
                              env=self.env(home, env), cwd=cwd,
                              stdin=stdin if stdin is not None else (None if input is not None else subprocess.DEVNULL))
        return Result(tuple(argv), done.returncode, done.stdout, done.stderr)


def run_openssh(argv: Sequence[str], *, input: str | None = None,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a real OpenSSH client (ssh, scp, sftp) with no agent; text output captured."""
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL,
                          env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"})


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nobody listens on right now (the kernel picks them)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_refuses(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) != 0


def tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class Daemon:
    """One ``jumpgate start ...`` process; stdout and stderr go to ``log``; ``nofile``
    (soft, hard) sets its RLIMIT_NOFILE."""

    def __init__(self, jg: Jumpgate, args: Sequence[str], log: Path, nofile: tuple[int, int] | None = None):
        self.jg = jg
        self.args = list(args)
        self.log = log
        self.nofile = nofile
        self.process: subprocess.Popen[bytes] | None = None

    def _preexec(self) -> None:
        if self.nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self.nofile)

    def start(self, timeout: float = 30) -> Daemon:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.jg.argv("start", *self.args), stdin=subprocess.DEVNULL,
                                            stdout=out, stderr=subprocess.STDOUT, env=self.jg.env(),
                                            start_new_session=True, preexec_fn=self._preexec)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if BANNER.search(self.log.read_text(errors="replace")):
                return self
            if self.process.poll() is not None:
                raise HarnessError(f"jumpgate start exited {self.process.returncode}:\n{self.log_tail()}")
            time.sleep(0.05)
        self.stop()
        raise HarnessError(f"jumpgate start printed no banner in {timeout}s:\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return tail(self.log, lines)


def start_daemon(jg: Jumpgate, log: Path, args: Sequence[str], port_names: Iterable[str],
                 attempts: int = 3, nofile: tuple[int, int] | None = None) -> tuple[Daemon, dict[str, int]]:
    """Start ``jumpgate start ARGS --<name>-port P...`` on free ports; retry if one was taken."""
    names = list(port_names)
    for attempt in range(attempts):
        ports = dict(zip(names, free_ports(len(names))))
        flags = [x for name, port in ports.items() for x in (f"--{name}-port", str(port))]
        daemon = Daemon(jg, [*args, *flags], log, nofile)
        try:
            return daemon.start(), ports
        except HarnessError as exc:
            if "cannot listen" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- cluster


class Cluster:
    """The all-in-one appliance (auth, proxy, node, web) in ``workdir`` and ``ctl`` beside it."""

    def __init__(self, jg: Jumpgate, workdir: Path, name: str = "e2e", node_name: str = "node1",
                 labels: str = "env=prod,team=core", nofile: tuple[int, int] | None = None):
        self.jg = jg
        self.nofile = nofile
        self.workdir = workdir
        self.name = name
        self.node_name = node_name
        self.labels = labels
        self.data_dir = workdir / "data"
        self.daemon: Daemon | None = None
        self.ports: dict[str, int] = {}
        self.client_homes: list[Path] = []  # their session daemons stop with the cluster

    def start(self) -> Cluster:
        # Every refusal these tests cause comes from 127.0.0.1, and each is looked for in the
        # log: let them all be written in full (docs/security.md U2 would count most of them).
        config = self.workdir / "jumpgate.toml"
        config.write_text("[audit]\nrefusals_per_source = 100000\n")
        args = ["--config", str(config), "--data-dir", str(self.data_dir), "--cluster-name", self.name,
                "--nodename", self.node_name, "--labels", self.labels, "--public-addr", LOOPBACK,
                "--listen-addr", LOOPBACK]
        self.daemon, self.ports = start_daemon(self.jg, self.workdir / "cluster.log", args, PORTS, nofile=self.nofile)
        return self

    def stop(self) -> None:
        for home in self.client_homes:
            stop_daemon(home)
        if self.daemon is not None:
            self.daemon.stop()

    @property
    def web(self) -> str:
        return f"{LOOPBACK}:{self.ports['web']}"

    @property
    def auth(self) -> str:
        return f"{LOOPBACK}:{self.ports['auth']}"

    def ctl(self, *args: str, check: bool = True) -> Result:
        result = self.jg.run("ctl", "--data-dir", str(self.data_dir), *args)
        return result.check() if check else result

    def add_user(self, name: str, logins: Sequence[str], roles: Sequence[str] = ()) -> str:
        """``ctl users add``; returns the invite token from the printed signup command."""
        args = ["users", "add", name, "--logins", ",".join(logins)]
        if roles:
            args += ["--roles", ",".join(roles)]
        return signup_token(self.ctl(*args).stdout)

    def reset_user(self, name: str) -> str:
        return signup_token(self.ctl("users", "reset", name).stdout)

    def node_token(self, ttl: str = "30m", addr: str | None = LOOPBACK, name: str | None = None) -> str:
        """``ctl tokens add --type node [--addr ADDR] [--name NAME]``; the token from the printed
        ``start`` line. Every node of these tests runs on 127.0.0.1, where node1 and the proxy
        already are: a second host there is certified for it (and dialled at it) only when the
        admin approves the address (docs/security.md J3, J4), as ``addr`` does by default."""
        flags = [*(("--addr", addr) if addr else ()), *(("--name", name) if name else ())]
        out = self.ctl("tokens", "add", "--type", "node", "--ttl", ttl, *flags).stdout
        found = re.search(r"jumpgate start .*--token (\S+)", out)
        assert found, f"no start line in:\n{out}"
        return found.group(1)

    def events(self, limit: int = 500) -> list[str]:
        """``ctl events`` lines, oldest first: ``DATE TIME UTC CODE EVENT [FAILED] user=U k=v...``."""
        return self.ctl("events", "--limit", str(limit)).stdout.splitlines()

    def events_since(self, since: float, limit: int = 500) -> list[str]:
        """The events recorded at or after epoch ``since`` (the listing has whole seconds)."""
        return [line for line in self.events(limit) if event_time(line) >= int(since)]

    def user_status(self, name: str) -> str:
        """The STATUS column of ``ctl users ls`` (``active``, ``locked until ...``)."""
        for line in self.ctl("users", "ls").stdout.splitlines()[1:]:
            fields = line.split()
            if fields and fields[0] == name:
                return " ".join(fields[3:])
        raise AssertionError(f"user {name} not in ctl users ls")

    def log_tail(self, lines: int = 60) -> str:
        return self.daemon.log_tail(lines) if self.daemon else "(not started)"


def signup_token(ctl_output: str) -> str:
    found = re.search(r"jumpgate signup --proxy \S+ (\S+)", ctl_output)
    assert found, f"no signup line in:\n{ctl_output}"
    return found.group(1)


def event_time(line: str) -> int:
    """The epoch second of a ``ctl events`` line (``2026-11-25 14:06:56 UTC ...``)."""
    stamp = " ".join(line.split()[:2])
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))


# --------------------------------------------------------------------------- audit events


def poll(fetch: Callable[[], T], done: Callable[[T], object], timeout: float = AUDIT_DELAY,
         interval: float = 0.3) -> T:
    """``fetch()`` until ``done(result)`` is true or ``timeout`` s have passed; returns the
    last result either way (the caller asserts on it, with its own message)."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def find_event(lines: Sequence[str], event: str, *, failed: bool, **fields: str) -> str:
    """The first ``ctl events`` line for ``event`` (FAILED or not) carrying ``fields``."""
    for line in lines:
        parts = line.split()
        if len(parts) < 5 or parts[4] != event:
            continue
        if ("FAILED" in parts) != failed:
            continue
        if all(re.search(rf"\b{re.escape(k)}=\[?'?{re.escape(v)}\b", line) for k, v in fields.items()):
            return line
    raise AssertionError(f"no {'failed ' if failed else ''}{event} event with {fields} in:\n" + "\n".join(lines))


class EventWatch:
    """``with EventWatch(cluster) as w: ...`` then ``w.new``: the events recorded since it began
    (to the second: an event of the same second just before may be among them, so match
    on fields of this test's own action)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.new: list[str] = []

    def __enter__(self) -> EventWatch:
        self.since = time.time()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.refresh()

    def refresh(self) -> list[str]:
        self.new = self.cluster.events_since(self.since)
        return self.new

    def wait_for(self, event: str, *, failed: bool, timeout: float = AUDIT_DELAY, **fields: str) -> str:
        """The first new ``event`` carrying ``fields`` (see :func:`find_event`), polled for:
        events of the node and the proxy reach the auth role a moment later."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return find_event(self.new, event, failed=failed, **fields)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
                self.refresh()


# --------------------------------------------------------------------------- client side


class Authenticator:
    """A user's TOTP app: codes of strictly increasing time steps, each used once.

    The server takes steps ``now-1 .. now+1`` and refuses one not later than the last used.
    ``now`` and ``now+1`` stay valid for at least 30 s whatever the clock does; ``now-1`` is
    offered only in the first third of a step, so a loaded machine has 20 s to use it.
    """

    PERIOD = 30
    PREVIOUS_STEP_UNTIL = 10.0  # seconds into a step after which step now-1 is not offered

    def __init__(self, secret: str):
        self.totp = pyotp.TOTP(secret)
        self.secret = secret
        self.last_step = -1

    @classmethod
    def from_uri(cls, uri: str) -> Authenticator:
        query = urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)
        return cls(query["secret"][0])

    def _usable_steps(self, now: float) -> list[int]:
        step, into = divmod(now, self.PERIOD)
        steps = [int(step), int(step) + 1]
        if into < self.PREVIOUS_STEP_UNTIL:
            steps.insert(0, int(step) - 1)
        return [s for s in steps if s > self.last_step]

    def code(self) -> str:
        """The next unused code; sleeps into the next step only when all three are spent."""
        while True:
            steps = self._usable_steps(time.time())
            if steps:
                self.last_step = steps[0]
                return self.totp.generate_otp(steps[0])
            time.sleep(self.PERIOD - time.time() % self.PERIOD + 0.2)

    def peek(self) -> str:
        """A valid code that is not marked used here: for attempts the server will refuse
        anyway (a wrong password), which do not use up the code's step."""
        steps = self._usable_steps(time.time())
        return self.totp.generate_otp(steps[-1] if steps else int(time.time() // self.PERIOD) + 1)

    def unused_wrong_code(self) -> str:
        """A code that matches none of the steps the server would accept now."""
        now = time.time()
        valid = {self.totp.at(now + k * self.PERIOD) for k in (-2, -1, 0, 1, 2)}
        for n in range(1_000_000):
            candidate = f"{(n * 7919 + 123457) % 1_000_000:06d}"
            if candidate not in valid:
                return candidate
        raise AssertionError("unreachable")


class Client:
    """A user's machine: one ``$JUMPGATE_HOME`` for the ``jumpgate`` client commands."""

    def __init__(self, jg: Jumpgate, home: Path, cluster: Cluster):
        self.jg = jg
        self.home = home
        self.cluster = cluster
        cluster.client_homes.append(home)
        self.user = ""
        self.authenticator: Authenticator | None = None

    def run(self, *args: str, input: str | None = None, timeout: float = 60, stdin: int | None = None,
            cwd: Path | None = None) -> Result:
        return self.jg.run(*args, home=self.home, input=input, timeout=timeout, stdin=stdin, cwd=cwd)

    def signup(self, token: str, password: str = PASSWORD, proxy: str | None = None,
               code: Callable[[Authenticator], str] = Authenticator.code) -> tuple[Result, Authenticator | None]:
        """Drive ``jumpgate signup`` interactively: read the otpauth:// URI it prints, then
        answer password, password again and ``code(authenticator)`` on stdin."""
        argv = self.jg.argv("signup", "--proxy", proxy or self.cluster.web, token)
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=self.jg.env(self.home))
        assert proc.stdout is not None and proc.stdin is not None
        head, authenticator = [], None
        for line in proc.stdout:
            head.append(line)
            if line.startswith("otpauth://"):
                authenticator = Authenticator.from_uri(line.strip())
                break
        if authenticator is not None:
            stdin_text = f"{password}\n{password}\n{code(authenticator)}\n"
        else:
            stdin_text = ""
        try:
            out, err = proc.communicate(stdin_text, timeout=60)
        except BrokenPipeError:
            out, err = proc.communicate(timeout=60)
        result = Result(tuple(argv), proc.returncode, "".join(head) + out, err)
        return result, authenticator

    def login(self, user: str, authenticator: Authenticator, password: str = PASSWORD,
              code: str | None = None, extra: Sequence[str] = ()) -> Result:
        answer = code if code is not None else authenticator.code()
        return self.run("login", "--proxy", self.cluster.web, "--user", user, *extra,
                        input=f"{password}\n{answer}\n")

    def enrol(self, user: str, logins: Sequence[str]) -> Client:
        """Add ``user`` on the cluster, sign up and log in; raises if any step fails."""
        result, authenticator = self.signup(self.cluster.add_user(user, logins))
        result.check()
        assert authenticator is not None
        self.user, self.authenticator = user, authenticator
        self.login(user, authenticator).check()
        return self

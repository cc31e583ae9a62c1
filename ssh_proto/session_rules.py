"""What a session channel's requests may do (RFC 4254 §6), decided from bytes: the server's rules.

:class:`SessionRequests` answers one server session channel's CHANNEL_REQUESTs, sans-IO:
:meth:`~SessionRequests.receive` takes the request's type and data and returns what to do
(:data:`REFUSED`, :data:`ACCEPTED`, :data:`STARTED`, or a :class:`Resize`, :class:`Signal`
or :class:`Break` to hand to the application); the I/O layer (``trio_io/session.py``) only
carries that out and sends the reply. The rules:

* Before the program starts: ``pty-req`` — refused without ``permit_pty`` (a certificate's
  permit-pty, docs/security.md C14), a second time, with more than 1024 bytes of terminal
  modes or more than 10,000 columns or rows; ``env`` — at most 64 variables, only the
  names the filter accepts (:func:`default_env_filter`: TERM, LANG and LC_*, as Debian's
  sshd AcceptEnv); ``auth-agent-req@openssh.com`` — refused without
  ``permit_agent_forwarding``; ``x11-req`` — always refused.
* ``exec``, ``shell`` or ``subsystem`` starts the program, once. ``force_command`` (C14)
  replaces all three with an exec of the forced command, the request kept as
  :attr:`~SessionRequests.original_command` (the node's SSH_ORIGINAL_COMMAND).
* An exec command is a string, not text (RFC 4254 §6.5): one that is not UTF-8 cannot be
  given to the application as one, so that request is refused (CHANNEL_FAILURE) — the
  channel and the connection stay, and the client may send another.
* After the start: ``window-change`` resizes the pty, ``signal`` and ``break`` go to the
  application; anything else, and anything unknown at any time, is refused.
* Request data that does not parse is a :class:`~ssh_proto.errors.ProtocolError`, as any
  malformed message.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from . import messages as m

MAX_ENV = 64
MAX_PTY_MODES = 1024
MAX_PTY_CELLS = 10000   # columns or rows


@dataclasses.dataclass(frozen=True, slots=True)
class PtyInfo:
    term: str
    cols: int
    rows: int
    width: int = 0
    height: int = 0
    modes: bytes = b""


@dataclasses.dataclass(slots=True)
class SessionPolicy:
    """What a session may do, from server policy merged with a certificate's options."""

    permit_pty: bool = True
    permit_agent_forwarding: bool = True
    permit_port_forwarding: bool = True
    permit_x11_forwarding: bool = False
    force_command: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class _Outcome:
    name: str


#: The request is refused (CHANNEL_FAILURE when the client wants a reply).
REFUSED = _Outcome("refused")
#: The request is granted; nothing for the application to do now.
ACCEPTED = _Outcome("accepted")
#: exec, shell or subsystem: the program starts now (``kind``, ``command`` ... are set).
STARTED = _Outcome("started")


@dataclasses.dataclass(frozen=True, slots=True)
class Resize:
    """window-change (RFC 4254 §6.7): the pty (if any) has already been resized."""

    cols: int
    rows: int
    width: int
    height: int


@dataclasses.dataclass(frozen=True, slots=True)
class Signal:
    """signal (RFC 4254 §6.9), e.g. ``"INT"``."""

    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class Break:
    """break (RFC 4335)."""

    length_ms: int


Outcome = _Outcome | Resize | Signal | Break


def default_env_filter(name: str, value: str) -> bool:
    """TERM, LANG and LC_*: what Debian's sshd accepts (AcceptEnv LANG LC_*) and a terminal needs."""
    return name == "TERM" or name == "LANG" or name.startswith("LC_")


class SessionRequests:
    """One server session channel's requests, in order (see the module docstring for the rules)."""

    def __init__(self, policy: SessionPolicy, accept_env: Callable[[str, str], bool] | None = None):
        self.policy = policy
        self._accept_env = accept_env or default_env_filter
        self.kind: str | None = None             # "shell", "exec" or "subsystem", once started
        self.command: str | None = None          # the command to run, force-command applied
        self.original_command: str | None = None # the client's exec command
        self.subsystem: str | None = None
        self.pty: PtyInfo | None = None
        self.env: dict[str, str] = {}
        self.agent_forwarding = False

    @property
    def started(self) -> bool:
        return self.kind is not None

    def receive(self, request_type: str, data: bytes) -> Outcome:
        """The client's request ``request_type`` with its type-specific ``data``."""
        if self.kind is None:
            handler = _BEFORE_START.get(request_type)
        else:
            handler = _AFTER_START.get(request_type)
        return REFUSED if handler is None else handler(self, data)

    # ---- before the start ---------------------------------------------------------------
    def _pty(self, data: bytes) -> Outcome:
        req = m.PtyRequest.decode(data)
        if not self.policy.permit_pty or self.pty is not None or len(req.modes) > MAX_PTY_MODES:
            return REFUSED
        if req.cols > MAX_PTY_CELLS or req.rows > MAX_PTY_CELLS:
            return REFUSED
        self.pty = PtyInfo(req.term, req.cols, req.rows, req.width, req.height, req.modes)
        return ACCEPTED

    def _env(self, data: bytes) -> Outcome:
        req = m.EnvRequest.decode(data)
        if len(self.env) >= MAX_ENV or not self._accept_env(req.name, req.value):
            return REFUSED
        self.env[req.name] = req.value
        return ACCEPTED

    def _agent(self, data: bytes) -> Outcome:
        m.Empty.decode(data)
        if not self.policy.permit_agent_forwarding:
            return REFUSED
        self.agent_forwarding = True
        return ACCEPTED

    def _x11(self, data: bytes) -> Outcome:
        return REFUSED  # X11 forwarding is not implemented (C14: x11-req is always refused)

    def _exec(self, data: bytes) -> Outcome:
        raw = m.ExecRequest.decode(data).command
        try:
            command = raw.decode("utf-8")
        except UnicodeDecodeError:
            return REFUSED  # this request only: the channel and the connection stay
        self.original_command = command
        return self._start("exec")

    def _shell(self, data: bytes) -> Outcome:
        m.Empty.decode(data)
        return self._start("shell")

    def _subsystem(self, data: bytes) -> Outcome:
        self.subsystem = m.SubsystemRequest.decode(data).name
        return self._start("subsystem")

    def _start(self, kind: str) -> Outcome:
        if self.policy.force_command is not None:
            # docs/security.md C14: force-command replaces exec, shell and subsystem
            self.kind, self.command, self.subsystem = "exec", self.policy.force_command, None
        else:
            self.kind, self.command = kind, self.original_command
        return STARTED

    # ---- after the start ----------------------------------------------------------------
    def _window_change(self, data: bytes) -> Outcome:
        w = m.WindowChange.decode(data)
        if self.pty is not None:
            self.pty = dataclasses.replace(self.pty, cols=w.cols, rows=w.rows, width=w.width, height=w.height)
        return Resize(w.cols, w.rows, w.width, w.height)

    def _signal(self, data: bytes) -> Outcome:
        return Signal(m.SignalRequest.decode(data).signal)

    def _break(self, data: bytes) -> Outcome:
        return Break(m.BreakRequest.decode(data).length_ms)


_BEFORE_START: dict[str, Callable[[SessionRequests, bytes], Outcome]] = {
    "pty-req": SessionRequests._pty,
    "env": SessionRequests._env,
    "auth-agent-req@openssh.com": SessionRequests._agent,
    "x11-req": SessionRequests._x11,
    "exec": SessionRequests._exec,
    "shell": SessionRequests._shell,
    "subsystem": SessionRequests._subsystem,
}

_AFTER_START: dict[str, Callable[[SessionRequests, bytes], Outcome]] = {
    "window-change": SessionRequests._window_change,
    "signal": SessionRequests._signal,
    "break": SessionRequests._break,
}

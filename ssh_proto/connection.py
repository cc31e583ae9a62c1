"""One SSH connection, sans-IO: transport + service request + user auth + channels.

:class:`Connection` is the object the I/O layer drives, in the style of h11: feed it bytes
(:meth:`receive_data`), send what :meth:`data_to_send` returns, and handle what
:meth:`next_event` gives back (classes in :mod:`.events`). It moves through the phases of
:mod:`.state` (key exchange → service → auth → open) and checks every upper-layer message
against that table before acting on it.

A client starts user authentication itself once the handshake is done (SERVICE_REQUEST
"ssh-userauth"); the I/O layer then drives :attr:`Connection.client_auth`. A server answers
authentication events through :attr:`Connection.server_auth`.

Output a peer does not read (docs/security.md L6). Before authentication the peer owes us
nothing but a login, so a server stops reading while more than
``max_unsent_before_auth`` bytes of its output wait to be sent (:meth:`reading_paused`; the
I/O layer asks before each read): a peer that never reads cannot make replies pile up, and
the login grace time ends it. After authentication the I/O layer must keep reading (two
peers pushing bulk data at each other would deadlock otherwise): channel data is bounded by
the peer's windows, and the output no window bounds — replies, window adjusts — may reach
``max_unsent_control`` bytes before the next input is refused with a protocol error. A
server allows ``max_kex_before_auth`` key exchanges before authentication.
"""
from __future__ import annotations

import dataclasses
from collections import deque

from . import events as ev
from . import messages as m
from .auth import SERVICE_USERAUTH, ClientAuth, ServerAuth
from .channels import (DEFAULT_MAX_CHANNELS, DEFAULT_MAX_PACKET, DEFAULT_WINDOW, DEFAULT_WINDOW_BUDGET,
                       PENDING_SESSION_WINDOW, ChannelTable)
from .errors import ConnectionLost, DisconnectError, DisconnectReason, ProtocolError
from .state import Phase, Role, check_phase
from .transport import Algorithms, Transport

MAX_PENDING_GLOBAL_REPLIES = 64
MAX_UNSENT_BEFORE_AUTH = 64 * 1024    # L6: a server stops reading past this much unsent output
MAX_UNSENT_CONTROL = 1024 * 1024      # L6: unread replies (no window bounds them) that end a connection
MAX_KEX_BEFORE_AUTH = 1               # L10: the first key exchange only; re-exchange after login
DEFAULT_MAX_REMOTE_FORWARDS = 64      # L3: tcpip-forward listeners per connection (server)


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """Tunables shared by client and server; defaults follow OpenSSH where it has one.

    The limits (docs/security.md § Limits) bound what one peer can make us hold:
    ``max_channels`` channels open at once, ``max_sessions`` of them sessions (None: no
    separate cap), ``window_budget`` bytes of receive window advertised over all channels
    (the most a connection can make us buffer), ``max_remote_forwards`` tcpip-forward
    listeners (server), and the pre-authentication bounds of the module docstring.
    """

    algorithms: Algorithms = Algorithms()
    rekey_bytes: int | None = None         # None: the cipher's own limit (RFC 4344)
    rekey_seconds: float = 3600.0
    window: int = DEFAULT_WINDOW
    max_packet: int = DEFAULT_MAX_PACKET
    max_channels: int = DEFAULT_MAX_CHANNELS
    max_sessions: int | None = None
    window_budget: int = DEFAULT_WINDOW_BUDGET
    max_unsent_control: int = MAX_UNSENT_CONTROL
    # server only
    auth_methods: tuple[str, ...] = ("publickey", "password", "keyboard-interactive")
    max_auth_attempts: int = 6
    banner: str | None = None
    max_remote_forwards: int = DEFAULT_MAX_REMOTE_FORWARDS
    pending_session_window: int = PENDING_SESSION_WINDOW
    max_unsent_before_auth: int = MAX_UNSENT_BEFORE_AUTH
    max_kex_before_auth: int = MAX_KEX_BEFORE_AUTH


class Connection:
    """Sans-IO SSH connection for either role."""

    def __init__(self, role: Role, options: ConnectionOptions = ConnectionOptions(), *,
                 host_keys=(), verify_host_key=None, username: str | None = None, clock=None):
        self.role = role
        self.options = options
        kw = {"clock": clock} if clock is not None else {}
        self.transport = Transport(role, algorithms=options.algorithms, host_keys=host_keys,
                                   verify_host_key=verify_host_key, rekey_bytes=options.rekey_bytes,
                                   rekey_seconds=options.rekey_seconds, **kw)
        if role is Role.SERVER:
            self.transport.max_kex = options.max_kex_before_auth
        self.phase = Phase.KEX_INITIAL
        self.username = username
        self.client_auth: ClientAuth | None = None
        self.server_auth: ServerAuth | None = None
        self.channels = ChannelTable(
            self.transport.send, window=options.window, max_packet=options.max_packet,
            max_channels=options.max_channels, max_sessions=options.max_sessions,
            window_budget=options.window_budget,
            pending_session_window=options.pending_session_window if role is Role.SERVER else None)
        self._events: deque[ev.Event] = deque()
        self._global_replies: deque[list] = deque()  # [token, answer | None, data]
        self._global_requests_out = 0
        self._next_token = 0
        self.no_more_sessions = False
        self.closed = False

    # ---- I/O ----------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes; raises ProtocolError (the caller then sends disconnect and closes)."""
        if not data:
            self.closed = True
            raise ConnectionLost("connection closed by peer")
        if self.transport.control_backlog > self.options.max_unsent_control:
            raise ProtocolError("the peer does not read our replies", DisconnectReason.BY_APPLICATION)
        try:
            self.transport.receive_data(data)
        except DisconnectError:
            self.closed = True
            raise

    def data_to_send(self) -> bytes:
        return self.transport.data_to_send()

    def reading_paused(self, in_flight: int = 0) -> bool:
        """Should the I/O layer wait for its output to drain before reading more?

        ``in_flight`` is what it took from :meth:`data_to_send` and has not finished
        sending. True only for a server before authentication (rule L6).
        """
        # Held payloads do not count: they leave only once a key exchange ends, which
        # needs more input (pausing for them would deadlock).
        return (self.role is Role.SERVER and self.phase is not Phase.OPEN
                and self.transport.unsent_output + in_flight > self.options.max_unsent_before_auth)

    def next_event(self) -> ev.Event | None:
        while not self._events:
            if self.phase is Phase.KEX_INITIAL:
                if not self.transport.handshake_complete:
                    return None
                self._handshake_done()
                continue
            payload = self.transport.next_payload()
            if payload is None:
                return None
            event = self._dispatch(payload)
            if event is not None:
                return event
        return self._events.popleft()

    def disconnect(self, reason: int = DisconnectReason.BY_APPLICATION, description: str = "") -> None:
        self.transport.disconnect(reason, description)
        self.closed = True

    def send_protocol_error(self, err: ProtocolError) -> None:
        """Send the DISCONNECT matching ``err`` (call after receive_data raised it)."""
        self.disconnect(err.reason, err.description)

    @property
    def session_id(self) -> bytes | None:
        return self.transport.session_id

    @property
    def authenticated(self) -> bool:
        return self.phase is Phase.OPEN

    # ---- phases ---------------------------------------------------------------------------
    def _handshake_done(self) -> None:
        self.phase = Phase.SERVICE
        self._events.append(ev.HandshakeComplete())
        if self.role is Role.CLIENT:
            self.transport.send(m.ServiceRequest(SERVICE_USERAUTH).encode())
            # Requests may follow SERVICE_REQUEST without waiting for SERVICE_ACCEPT (the
            # server handles messages in order): one round trip less per connection.
            self.client_auth = ClientAuth(self.transport.send, self.session_id, self.username or "")

    def _dispatch(self, payload: bytes) -> ev.Event | None:
        t = payload[0]
        check_phase(t, sender=self.role.peer, phase=self.phase)
        if t >= m.MSG_GLOBAL_REQUEST:
            if t >= m.MSG_CHANNEL_OPEN:
                if t == m.MSG_CHANNEL_OPEN:
                    return self._on_channel_open(payload)
                return self.channels.receive(payload)
            return self._on_global(payload)
        if t >= m.MSG_USERAUTH_REQUEST:
            return self._on_auth(payload)
        if t == m.MSG_SERVICE_REQUEST:
            return self._on_service_request(payload)
        if t == m.MSG_SERVICE_ACCEPT:
            msg = m.ServiceAccept.decode(payload)
            if msg.service != SERVICE_USERAUTH:
                raise ProtocolError("server accepted a service we did not ask for")
            self.phase = Phase.AUTH
            return ev.ServiceAccepted()
        raise ProtocolError(f"unexpected message {t}")

    def _on_service_request(self, payload: bytes) -> None:
        msg = m.ServiceRequest.decode(payload)
        if msg.service != SERVICE_USERAUTH:
            raise ProtocolError(f"service {msg.service!r} not available", DisconnectReason.SERVICE_NOT_AVAILABLE)
        o = self.options
        self.server_auth = ServerAuth(self.transport.send, self.session_id, methods=o.auth_methods,
                                      max_attempts=o.max_auth_attempts, banner=o.banner)
        self.transport.send(m.ServiceAccept(SERVICE_USERAUTH).encode())
        self.phase = Phase.AUTH
        return None

    def _on_auth(self, payload: bytes) -> ev.Event | None:
        if self.role is Role.SERVER:
            if self.phase is Phase.OPEN:
                return None  # RFC 4252 §5.1: requests after success are ignored
            return self.server_auth.receive(payload)
        event = self.client_auth.receive(payload)
        if isinstance(event, ev.AuthResult) and event.success:
            self._enter_open()
        return event

    def _enter_open(self) -> None:
        self.phase = Phase.OPEN  # the transport itself starts delayed compression (T18)
        self.transport.max_kex = None  # re-exchange as often as the rekey limits want (T8)

    # ---- server auth answers (thin wrappers keeping phase in step) ----------------------------
    def auth_accept(self) -> None:
        self.server_auth.accept()
        self._enter_open()
        self._events.append(ev.AuthSucceeded(self.server_auth.username))

    # ---- global requests (RFC 4254 §4) ---------------------------------------------------------
    def _on_global(self, payload: bytes) -> ev.Event | None:
        t = payload[0]
        if t == m.MSG_GLOBAL_REQUEST:
            msg = m.GlobalRequest.decode(payload)
            if msg.name == "no-more-sessions@openssh.com" and self.role is Role.SERVER:
                self.no_more_sessions = True
                if msg.want_reply:
                    self._queue_global_reply(True)
                return None
            token = self._queue_global_reply(None) if msg.want_reply else -1
            return ev.GlobalRequestReceived(msg.name, msg.want_reply, msg.data, token)
        if self._global_requests_out <= 0:
            raise ProtocolError("global request reply without a request")
        self._global_requests_out -= 1
        if t == m.MSG_REQUEST_SUCCESS:
            return ev.GlobalRequestReplied(True, m.RequestSuccess.decode(payload).data)
        m.RequestFailure.decode(payload)
        return ev.GlobalRequestReplied(False, b"")

    def _queue_global_reply(self, answer) -> int:
        if len(self._global_replies) >= MAX_PENDING_GLOBAL_REPLIES:
            raise ProtocolError("too many unanswered global requests")
        token = self._next_token
        self._next_token += 1
        self._global_replies.append([token, answer, b""])
        self._flush_global_replies()
        return token

    def reply_global_request(self, token: int, success: bool, data: bytes = b"") -> None:
        for entry in self._global_replies:
            if entry[0] == token:
                entry[1], entry[2] = success, data
                break
        else:
            raise RuntimeError("unknown global request token")
        self._flush_global_replies()

    def _flush_global_replies(self) -> None:
        q = self._global_replies
        while q and q[0][1] is not None:
            _, ok, data = q.popleft()
            self.transport.send(m.RequestSuccess(data).encode() if ok else m.RequestFailure().encode())

    def send_global_request(self, name: str, data: bytes = b"", want_reply: bool = True) -> None:
        if want_reply:
            self._global_requests_out += 1
        self.transport.send(m.GlobalRequest(name, want_reply, data).encode())

    # ---- channels ---------------------------------------------------------------------------
    def _on_channel_open(self, payload: bytes) -> ev.Event | None:
        event = self.channels.receive(payload)
        if (isinstance(event, ev.ChannelOpenRequest) and event.channel_type == "session"
                and self.no_more_sessions):
            self.channels.reject(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "no more sessions")
            return None
        return event


"""One SSH connection, sans-IO: transport + service request + user auth + channels.

:class:`Connection` is the object the I/O layer drives, in the style of h11: feed it bytes
(:meth:`receive_data`), send what :meth:`data_to_send` returns, and handle what
:meth:`next_event` gives back (classes in :mod:`.events`). It moves through the phases of
:mod:`.state` (key exchange → service → auth → open); its transport checks every message
either side sends against that table, so what reaches this class is on it.

A client starts user authentication itself once the handshake is done (SERVICE_REQUEST
"ssh-userauth"); the I/O layer then sends its requests (:meth:`Connection.auth_password`,
:meth:`~Connection.auth_publickey`, ...). A server answers authentication events with
:meth:`~Connection.auth_accept`, :meth:`~Connection.auth_reject`, ... Channels are opened,
fed and closed with the channel methods (:meth:`~Connection.open_channel`,
:meth:`~Connection.send_data`, ...), which take the channel's local id from the events.

The facade is the only door (as h11's ``Connection``): the I/O layer (``trio_io``) calls
nothing but this class's public methods and properties. The layers behind it
(:attr:`transport`, :attr:`channels`, :attr:`client_auth`, :attr:`server_auth`) stay
attributes for tests that play a misbehaving peer; ``tests/ssh_proto/test_facade.py`` keeps
``trio_io`` off them. Misusing the facade raises :class:`~ssh_proto.errors.LocalError`.

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
from .errors import ConnectionLost, DisconnectError, DisconnectReason, LocalError, ProtocolError
from .state import Phase, Role
from .transport import Algorithms, Transport

MAX_PENDING_GLOBAL_REPLIES = 64
MAX_UNSENT_BEFORE_AUTH = 64 * 1024    # L6: a server stops reading past this much unsent output
MAX_UNSENT_CONTROL = 1024 * 1024      # L6: unread replies (no window bounds them) that end a connection
MAX_KEX_BEFORE_AUTH = 1               # L10: the first key exchange only; re-exchange after login
DEFAULT_MAX_REMOTE_FORWARDS = 64      # L3: tcpip-forward listeners per connection (server)
ALL_AUTH_METHODS = ("publickey", "password", "keyboard-interactive")


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
    #: The user-auth methods offered. None: for ``serve``/``SSHListener``, the methods the
    #: SSHServer implements (docs/security.md T12b); for a bare Connection, all three.
    auth_methods: tuple[str, ...] | None = None
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
        self._handshake_seen = False
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
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes; raises ProtocolError (the caller then sends disconnect and closes).

        ``data`` may be a buffer the caller reuses (as ``receive_some`` may return)."""
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
        """The bytes to write to the peer now (empty when there are none); call after every input."""
        return self.transport.data_to_send()

    def reading_paused(self, in_flight: int = 0) -> bool:
        """Should the I/O layer wait for its output to drain before reading more?

        ``in_flight`` is what it took from :meth:`data_to_send` and has not finished
        sending. True only for a server before authentication (rule L6).
        """
        # Held payloads do not count: they leave only once a key exchange ends, which
        # needs more input (pausing for them would deadlock).
        return (self.role is Role.SERVER and not self.authenticated
                and self.transport.unsent_output + in_flight > self.options.max_unsent_before_auth)

    def next_event(self) -> ev.Event | None:
        """The next :mod:`~ssh_proto.events` event, or None until more bytes are received."""
        while not self._events:
            if not self._handshake_seen:
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
        """Queue SSH_MSG_DISCONNECT with ``reason`` and close: nothing is sent or received after it."""
        self.transport.disconnect(reason, description)
        self.closed = True

    def send_protocol_error(self, err: ProtocolError) -> None:
        """Send the DISCONNECT matching ``err`` (call after receive_data raised it)."""
        self.disconnect(err.reason, err.description)

    @property
    def session_id(self) -> bytes | None:
        """The session identifier (the first key exchange's hash); None before it."""
        return self.transport.session_id

    @property
    def phase(self) -> Phase:
        """Our own phase in the table of :mod:`.state` (the peer's may differ for a moment)."""
        return self.transport.state.phase(self.role)

    @property
    def authenticated(self) -> bool:
        """USERAUTH_SUCCESS went out (server), or came in answering our request (client)."""
        auth = self.client_auth if self.role is Role.CLIENT else self.server_auth
        return auth is not None and auth.authenticated

    # ---- phases ---------------------------------------------------------------------------
    def _handshake_done(self) -> None:
        self._handshake_seen = True
        self._events.append(ev.HandshakeComplete())
        if self.role is Role.CLIENT:
            self.transport.send(m.ServiceRequest(SERVICE_USERAUTH).encode())
            # Requests may follow SERVICE_REQUEST without waiting for SERVICE_ACCEPT (the
            # server handles messages in order): one round trip less per connection.
            self.client_auth = ClientAuth(self.transport.send, self._established_session_id(), self.username or "")

    def _dispatch(self, payload: bytes) -> ev.Event | None:
        t = payload[0]  # the transport's table let it through (docs/security.md T11)
        if t >= m.MSG_GLOBAL_REQUEST:
            if t >= m.MSG_CHANNEL_OPEN:
                if t == m.MSG_CHANNEL_OPEN:
                    return self._on_channel_open(payload)
                return self.channels.receive(payload)
            return self._on_global(payload)
        if t >= m.MSG_USERAUTH_REQUEST:
            return self._on_auth(payload)
        if t == m.MSG_SERVICE_REQUEST:
            self._on_service_request(payload)
            return None
        if t == m.MSG_SERVICE_ACCEPT:
            msg = m.ServiceAccept.decode(payload)
            if msg.service != SERVICE_USERAUTH:
                raise ProtocolError("server accepted a service we did not ask for")
            return ev.ServiceAccepted()
        raise ProtocolError(f"unexpected message {t}")

    def _established_session_id(self) -> bytes:
        session_id = self.session_id
        if session_id is None:  # the table admits auth only after the first key exchange
            raise AssertionError("no session id before the first key exchange")
        return session_id

    def _on_service_request(self, payload: bytes) -> None:
        msg = m.ServiceRequest.decode(payload)
        if msg.service != SERVICE_USERAUTH:
            raise ProtocolError(f"service {msg.service!r} not available", DisconnectReason.SERVICE_NOT_AVAILABLE)
        o = self.options
        methods = o.auth_methods if o.auth_methods is not None else ALL_AUTH_METHODS
        self.server_auth = ServerAuth(self.transport.send, self._established_session_id(), methods=methods,
                                      max_attempts=o.max_auth_attempts, banner=o.banner)
        self.transport.send(m.ServiceAccept(SERVICE_USERAUTH).encode())
        return None

    def _on_auth(self, payload: bytes) -> ev.Event | None:
        if self.role is Role.SERVER:
            if self.authenticated:
                return None  # RFC 4252 §5.1: requests after success are ignored
            return self._server_auth().receive(payload)
        event = self._client_auth().receive(payload)
        if isinstance(event, ev.AuthResult) and event.success:
            self._enter_open()
        return event

    def _enter_open(self) -> None:
        # the table moved both parties to OPEN at USERAUTH_SUCCESS; the transport itself
        # starts delayed compression (T18)
        self.transport.max_kex = None  # re-exchange as often as the rekey limits want (T8)

    # ---- transport facts -------------------------------------------------------------------
    @property
    def pending_output(self) -> int:
        """Bytes produced and not yet collected, what a running key exchange holds included (T8)."""
        return self.transport.pending_output

    def check_rekey_timer(self) -> None:
        """Call now and then (the I/O layer: every minute): a re-exchange once ``rekey_seconds`` passed."""
        self.transport.check_rekey_timer()

    @property
    def negotiated(self):
        """The algorithms of the last key exchange (:class:`~ssh_proto.transport.Negotiated`), or None."""
        return self.transport.negotiated

    @property
    def peer_version(self) -> bytes | None:
        """The peer's version line (``SSH-2.0-...``) without CR LF; None before it arrives."""
        return self.transport.peer_version

    @property
    def host_key(self):
        """Client: the server's verified host key or certificate (after the handshake)."""
        return self.transport.host_key

    @property
    def session_signature(self) -> bytes | None:
        """Client: the server's signature over the first exchange hash (for session-bind@openssh.com)."""
        return self.transport.session_signature

    @property
    def peer_extensions(self) -> dict[str, bytes]:
        """What the peer's EXT_INFO messages said (RFC 8308), e.g. ``server-sig-algs``."""
        return dict(self.transport.peer_ext_info)

    # ---- client authentication (RFC 4252) ---------------------------------------------------
    def _client_auth(self) -> ClientAuth:
        if self.client_auth is None:
            raise LocalError("authentication requests start after the handshake, on a client")
        return self.client_auth

    def auth_none(self) -> None:
        """Client: try the ``none`` method (the server answers with the methods it accepts)."""
        self._client_auth().request_none()

    def auth_publickey_data(self, key, algorithm: str) -> bytes:
        """The bytes a publickey request for ``key`` under ``algorithm`` signs (RFC 4252 §7)."""
        return self._client_auth().signed_data(key, algorithm)

    def auth_publickey(self, key, algorithm: str, signature: bytes) -> None:
        """Send a signed publickey request; ``signature`` is over :meth:`auth_publickey_data`."""
        self._client_auth().request_publickey(key, algorithm, signature)

    def auth_password(self, password: str) -> None:
        """Client: try ``password`` authentication with ``password``."""
        self._client_auth().request_password(password)

    def auth_kbdint(self, submethods: str = "") -> None:
        """Client: start keyboard-interactive authentication (RFC 4256), asking for ``submethods``."""
        self._client_auth().request_kbdint(submethods)

    def auth_respond(self, responses) -> None:
        """Answer the keyboard-interactive prompts of the last AuthInfoRequest."""
        self._client_auth().respond(tuple(responses))

    # ---- server authentication answers ----------------------------------------------------------
    def _server_auth(self) -> ServerAuth:
        if self.server_auth is None:
            raise LocalError("no authentication is running on this connection")
        return self.server_auth

    @property
    def auth_pending(self) -> bool:
        """Server: an authentication event awaits the application's answer."""
        return self.server_auth is not None and self.server_auth.decision_pending

    @property
    def auth_requests(self) -> int:
        """Server: USERAUTH_REQUESTs received so far."""
        return self.server_auth.requests if self.server_auth is not None else 0

    def auth_accept(self) -> None:
        """Let the user in: USERAUTH_SUCCESS (an AuthSucceeded event follows)."""
        auth = self._server_auth()
        auth.accept()
        self._enter_open()
        self._events.append(ev.AuthSucceeded(auth.username or ""))

    def auth_reject(self) -> None:
        """Server: refuse the pending authentication request (SSH_MSG_USERAUTH_FAILURE)."""
        self._server_auth().reject()

    def auth_partial(self, methods: tuple[str, ...] | None = None) -> None:
        """This method passed; ``methods`` (default: the offered ones) must still succeed."""
        self._server_auth().partial(methods)

    def auth_pk_ok(self) -> None:
        """Answer a key query (AuthPublicKeyQuery): the client may sign with that key."""
        self._server_auth().pk_ok()

    def auth_challenge(self, name: str, instruction: str, prompts: tuple[tuple[str, bool], ...]) -> None:
        """A keyboard-interactive round; the answers come as AuthKbdIntResponse."""
        self._server_auth().challenge(name, instruction, prompts)

    def auth_banner(self, message: str) -> None:
        """Send USERAUTH_BANNER (RFC 4252 §5.4): text the client shows, any time before success."""
        self._server_auth().send_banner(message)

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
        """Answer the global request ``token`` names; replies go out in the order the requests came
        (RFC 4254 §4)."""
        for entry in self._global_replies:
            if entry[0] == token:
                entry[1], entry[2] = success, data
                break
        else:
            raise LocalError("unknown global request token")
        self._flush_global_replies()

    def _flush_global_replies(self) -> None:
        q = self._global_replies
        while q and q[0][1] is not None:
            _, ok, data = q.popleft()
            self.transport.send(m.RequestSuccess(data).encode() if ok else m.RequestFailure().encode())

    def send_global_request(self, name: str, data: bytes = b"", want_reply: bool = True) -> None:
        """Send SSH_MSG_GLOBAL_REQUEST ``name``; with ``want_reply`` its answer comes as an event."""
        self.transport.send(m.GlobalRequest(name, want_reply, data).encode())
        if want_reply:
            self._global_requests_out += 1

    # ---- channels ---------------------------------------------------------------------------
    def open_channel(self, channel_type: str, data: bytes = b"", *, window: int | None = None,
                     max_packet: int | None = None) -> int:
        """Send CHANNEL_OPEN; returns the channel's local id. The answer comes as
        ChannelOpenConfirmed or ChannelOpenFailed; ChannelOpenError past our own limits (L4)."""
        return self.channels.open(channel_type, data, window=window, max_packet=max_packet)

    def accept_channel(self, channel_id: int, data: bytes = b"") -> None:
        """Confirm a channel the peer opened (a ChannelOpenRequest)."""
        self.channels.accept(channel_id, data)

    def reject_channel(self, channel_id: int, reason: int, description: str = "") -> None:
        """Refuse a channel the peer opened, with an RFC 4254 §5.1 reason code."""
        self.channels.reject(channel_id, reason, description)

    def send_capacity(self, channel_id: int) -> int:
        """Bytes :meth:`send_data` would send now (the peer's window; 0 once we sent EOF or CLOSE)."""
        return self.channels.send_capacity(channel_id)

    def send_data(self, channel_id: int, data, data_type: int = 0) -> int:
        """Send as much of ``data`` as the peer's window allows (``data_type`` 1: stderr);
        returns the bytes sent. LocalError on a channel that is not open for sending."""
        return self.channels.send_data(channel_id, data, data_type)

    def send_eof(self, channel_id: int) -> None:
        """Send SSH_MSG_CHANNEL_EOF on ``channel_id``: we send no more data on it."""
        self.channels.send_eof(channel_id)

    def close_channel(self, channel_id: int) -> None:
        """Send CLOSE (once); a ChannelCloseReceived event follows the peer's."""
        self.channels.close(channel_id)

    def send_channel_request(self, channel_id: int, request_type: str, data: bytes = b"",
                             want_reply: bool = False) -> None:
        """A channel request; with ``want_reply`` the answer comes as ChannelRequestReplied."""
        self.channels.send_request(channel_id, request_type, data, want_reply)

    def reply_channel_request(self, channel_id: int, token: int, success: bool) -> None:
        """Answer a ChannelRequestReceived (replies go out in arrival order, RFC 4254 §5.4)."""
        self.channels.reply_request(channel_id, token, success)

    def data_consumed(self, channel_id: int, n: int) -> None:
        """The application took ``n`` bytes of the channel's data: its window may grow (T19)."""
        self.channels.consumed(channel_id, n)

    def grow_window(self, channel_id: int, target: int | None = None) -> int:
        """Raise the window we advertise towards ``target`` (default: the full window, L4)."""
        return self.channels.grow_window(channel_id, target)

    def _on_channel_open(self, payload: bytes) -> ev.Event | None:
        event = self.channels.receive(payload)
        if (isinstance(event, ev.ChannelOpenRequest) and event.channel_type == "session"
                and self.no_more_sessions):
            self.channels.reject(event.channel_id, m.OPEN_ADMINISTRATIVELY_PROHIBITED, "no more sessions")
            return None
        return event


"""Channels of the SSH connection protocol (RFC 4254 §5) as a sans-IO table.

:class:`ChannelTable` allocates channel ids, tracks each channel's state and both flow
control windows, and turns CHANNEL_* messages into events. Rules enforced here:
- a recipient id must name a channel we allocated and that is in the right state for the
  message (open confirmation/failure only while opening, data only while open; data after
  our CLOSE is ignored) — rule T20; ids are reused only after both CLOSEs;
- incoming data larger than our max packet or our window is a protocol error, and a
  WINDOW_ADJUST that would overflow 2^32-1 is a protocol error — rule T19;
- outgoing data never exceeds the peer's window or max packet;
- replies to channel requests go out in the order the requests arrived (RFC 4254 §5.4),
  whatever order the application answers in.

Limits (docs/security.md § Limits, L4). What the peer may make us hold is bounded here, at
CHANNEL_OPEN, whatever the application later does with a channel:
- at most ``max_channels`` channels exist at once (opened, not only started), of which at
  most ``max_sessions`` are sessions;
- the receive windows we advertise add up to at most ``window_budget`` bytes: that is the
  most the peer can make us buffer on a connection, since a channel never holds more
  than its window (window + buffered + consumed-not-yet-returned = the window granted).
  A channel gets the full ``window`` while the budget has room beyond one ``max_packet``
  for each channel that may still open (so ``max_channels`` channels always fit), less
  when it is short — at least one ``max_packet`` — and is refused when not even that fits.
  A channel granted less grows back towards ``window`` as it is read and the budget frees;
- a session channel the peer opens starts with ``pending_session_window`` only (when
  set: a server) and gets its full window from :meth:`grow_window` once its shell, exec
  or subsystem starts, so sessions opened and never started pin little.
A refused open is answered with CHANNEL_OPEN_FAILURE (resource shortage, the reason in its
description) and reported as :class:`~ssh_proto.events.ChannelOpenRefused`; opening a
channel ourselves past a limit raises :class:`~ssh_proto.errors.ChannelOpenError`.
"""
from __future__ import annotations

import dataclasses
import enum
import struct
from collections import deque
from typing import Callable

from . import events as ev
from . import messages as m
from .errors import ChannelOpenError, LocalError, ProtocolError
from .packets import MAX_PAYLOAD_SIZE

MAX_WINDOW = 0xFFFFFFFF
DEFAULT_WINDOW = 2 * 1024 * 1024
DEFAULT_MAX_PACKET = 32 * 1024   # what OpenSSH uses; larger values cost memory per packet
MAX_MAX_PACKET = MAX_PAYLOAD_SIZE - 16  # CHANNEL_(EXTENDED_)DATA header included, one packet
DEFAULT_MAX_CHANNELS = 1024
DEFAULT_WINDOW_BUDGET = 64 * 1024 * 1024   # 32 channels at the full window, then smaller ones
PENDING_SESSION_WINDOW = 64 * 1024         # a session's window until it starts (server)

_HDR = struct.Struct(">BII")       # msg, recipient, length  (CHANNEL_DATA)
_EXT_HDR = struct.Struct(">BIII")  # msg, recipient, type, length  (CHANNEL_EXTENDED_DATA)
_U32x2 = struct.Struct(">II")


class ChannelState(enum.Enum):
    OPENING = "opening"          # we sent CHANNEL_OPEN
    PEER_OPENING = "peer-opening"  # the peer sent CHANNEL_OPEN; the application decides
    OPEN = "open"
    CLOSED = "closed"            # we sent CLOSE, waiting for the peer's


@dataclasses.dataclass(slots=True)
class Channel:
    local_id: int
    channel_type: str
    state: ChannelState
    local_window: int
    local_window_max: int
    local_max_packet: int
    remote_id: int = 0
    remote_window: int = 0
    remote_max_packet: int = 0
    consumed: int = 0             # bytes delivered but not yet returned to the peer's window
    sent_eof: bool = False
    got_eof: bool = False
    sent_close: bool = False
    got_close: bool = False
    requests_out: int = 0         # our requests awaiting a reply
    replies: deque = dataclasses.field(default_factory=deque)  # [token, answer|None] in arrival order


class ChannelTable:
    """All channels of one connection. ``send`` queues an outgoing payload."""

    def __init__(self, send: Callable[[bytes], None], *, window: int = DEFAULT_WINDOW,
                 max_packet: int = DEFAULT_MAX_PACKET, max_channels: int = DEFAULT_MAX_CHANNELS,
                 max_sessions: int | None = None, window_budget: int = DEFAULT_WINDOW_BUDGET,
                 pending_session_window: int | None = None):
        if not 0 < max_packet <= MAX_MAX_PACKET or not 0 < window <= MAX_WINDOW:
            raise LocalError("bad window or max_packet")
        if window_budget < min(window, max_packet) or (pending_session_window is not None
                                                       and pending_session_window <= 0):
            raise LocalError("bad window budget or pending session window")
        self._send = send
        self.window = window
        self.max_packet = max_packet
        self.max_channels = max_channels
        self.max_sessions = max_sessions
        self.window_budget = window_budget
        self.pending_session_window = None if pending_session_window is None else min(pending_session_window, window)
        self._channels: dict[int, Channel] = {}
        self._granted = 0    # sum of local_window_max: what the peer may make us buffer
        self._sessions = 0   # session channels among _channels
        self._next_token = 0

    def __getitem__(self, local_id: int) -> Channel:
        return self._channels[local_id]

    def __contains__(self, local_id: int) -> bool:
        return local_id in self._channels

    def __len__(self) -> int:
        return len(self._channels)

    @property
    def window_granted(self) -> int:
        """Receive window advertised over all channels: the most the peer can make us buffer."""
        return self._granted

    def _refusal(self, channel_type: str, window: int, max_packet: int) -> str | None:
        """Why a new channel cannot be had (rule L4), or None."""
        if len(self._channels) >= self.max_channels:
            return f"too many channels on this connection (limit {self.max_channels})"
        if channel_type == "session" and self.max_sessions is not None and self._sessions >= self.max_sessions:
            return f"too many sessions on this connection (limit {self.max_sessions})"
        if self.window_budget - self._granted < min(window, max_packet):
            return f"receive window budget of this connection exhausted ({self.window_budget} bytes)"
        return None

    def _room(self, opening: int) -> int:
        """Window budget a channel may take now: what is free, less one max_packet kept for
        each channel slot that would still be free (``opening``: channels being added)."""
        slots = max(0, self.max_channels - len(self._channels) - opening)
        return max(0, self.window_budget - self._granted - slots * self.max_packet)

    def _allocate(self, channel_type: str, state: ChannelState, window: int, max_packet: int) -> Channel:
        """A new channel with as much of ``window`` as the budget allows, at least one packet's
        worth (call _refusal first)."""
        local_id = 0
        while local_id in self._channels:
            local_id += 1
        window = max(min(window, max_packet), min(window, self._room(1)))
        ch = Channel(local_id, channel_type, state, window, window, max_packet)
        self._channels[local_id] = ch
        self._granted += window
        if channel_type == "session":
            self._sessions += 1
        return ch

    def _free(self, ch: Channel) -> None:
        del self._channels[ch.local_id]
        self._granted -= ch.local_window_max
        if ch.channel_type == "session":
            self._sessions -= 1

    # ---- our actions -------------------------------------------------------------------
    def open(self, channel_type: str, data: bytes = b"", *, window: int | None = None,
             max_packet: int | None = None) -> int:
        """Send CHANNEL_OPEN; the answer arrives as ChannelOpenConfirmed / ChannelOpenFailed.

        Raises ChannelOpenError (resource shortage) past a limit of this table."""
        window = self.window if window is None else window
        max_packet = self.max_packet if max_packet is None else max_packet
        reason = self._refusal(channel_type, window, max_packet)
        if reason is not None:
            raise ChannelOpenError(m.OPEN_RESOURCE_SHORTAGE, reason)
        ch = self._allocate(channel_type, ChannelState.OPENING, window, max_packet)
        try:
            self._send(m.ChannelOpen(channel_type, ch.local_id, ch.local_window, ch.local_max_packet, data).encode())
        except LocalError:  # e.g. before authentication (T11, our side): nothing was opened
            self._free(ch)
            raise
        return ch.local_id

    def accept(self, local_id: int, data: bytes = b"") -> None:
        ch = self._get_state(local_id, ChannelState.PEER_OPENING)
        ch.state = ChannelState.OPEN
        self._send(m.ChannelOpenConfirmation(ch.remote_id, ch.local_id, ch.local_window,
                                             ch.local_max_packet, data).encode())

    def reject(self, local_id: int, code: int, description: str = "") -> None:
        ch = self._get_state(local_id, ChannelState.PEER_OPENING)
        self._free(ch)
        self._send(m.ChannelOpenFailure(ch.remote_id, code, description, b"").encode())

    def send_capacity(self, local_id: int) -> int:
        """Bytes that may be sent now (the peer's window)."""
        ch = self._channels.get(local_id)
        if ch is None or ch.state is not ChannelState.OPEN or ch.sent_eof or ch.sent_close:
            return 0
        return ch.remote_window

    def send_data(self, local_id: int, data, data_type: int = 0) -> int:
        """Send as much of ``data`` as the peer's window allows; returns the bytes sent."""
        ch = self._channels.get(local_id)
        if ch is None or ch.state is not ChannelState.OPEN or ch.sent_eof or ch.sent_close:
            raise LocalError(f"channel {local_id} is not open for sending")
        total = min(len(data), ch.remote_window)
        step = ch.remote_max_packet
        pos = 0
        mv = memoryview(data)
        while pos < total:
            n = min(step, total - pos)
            chunk = mv[pos:pos + n]
            if data_type:
                self._send(_EXT_HDR.pack(m.MSG_CHANNEL_EXTENDED_DATA, ch.remote_id, data_type, n) + chunk)
            else:
                self._send(_HDR.pack(m.MSG_CHANNEL_DATA, ch.remote_id, n) + chunk)
            pos += n
        ch.remote_window -= total
        return total

    def send_eof(self, local_id: int) -> None:
        ch = self._channels.get(local_id)
        if ch is None or ch.state is not ChannelState.OPEN or ch.sent_eof or ch.sent_close:
            return
        ch.sent_eof = True
        self._send(m.ChannelEof(ch.remote_id).encode())

    def close(self, local_id: int) -> None:
        """Send CLOSE (once); the id is freed when the peer's CLOSE arrives too."""
        ch = self._channels.get(local_id)
        if ch is None or ch.sent_close or ch.state in (ChannelState.OPENING, ChannelState.PEER_OPENING):
            return
        ch.sent_close = True
        self._send(m.ChannelClose(ch.remote_id).encode())
        if ch.got_close:
            self._free(ch)
        else:
            ch.state = ChannelState.CLOSED

    def send_request(self, local_id: int, request_type: str, data: bytes = b"", want_reply: bool = False) -> None:
        ch = self._channels.get(local_id)
        if ch is None or ch.state is not ChannelState.OPEN or ch.sent_close:
            raise LocalError(f"channel {local_id} is not open")
        self._send(m.ChannelRequest(ch.remote_id, request_type, want_reply, data).encode())
        if want_reply:
            ch.requests_out += 1

    def reply_request(self, local_id: int, token: int, success: bool) -> None:
        ch = self._channels.get(local_id)
        if ch is None:
            return
        for entry in ch.replies:
            if entry[0] == token:
                entry[1] = success
                break
        else:
            raise LocalError("unknown channel request token")
        while ch.replies and ch.replies[0][1] is not None:
            _, ok = ch.replies.popleft()
            if not ch.sent_close:
                cls = m.ChannelSuccess if ok else m.ChannelFailure
                self._send(cls(ch.remote_id).encode())

    def grow_window(self, local_id: int, target: int | None = None) -> int:
        """Raise the window we advertise on an open channel towards ``target`` (default: the
        table's ``window``), as far as the budget allows; returns the increase sent."""
        ch = self._channels.get(local_id)
        if ch is None or ch.state is not ChannelState.OPEN or ch.got_eof or ch.sent_close:
            return 0
        target = self.window if target is None else min(target, MAX_WINDOW)
        increase = min(target - ch.local_window_max, self._room(0))
        if increase <= 0:
            return 0
        ch.local_window_max += increase
        ch.local_window += increase
        self._granted += increase
        self._send(m.ChannelWindowAdjust(ch.remote_id, increase).encode())
        return increase

    def consumed(self, local_id: int, n: int) -> None:
        """The application took ``n`` bytes: grow the peer's window when half is used."""
        ch = self._channels.get(local_id)
        if ch is None or ch.state is not ChannelState.OPEN:
            return
        ch.consumed += n
        if ch.consumed >= ch.local_window_max // 2 and not ch.got_eof and not ch.sent_close:
            inc, ch.consumed = ch.consumed, 0
            if ch.local_window_max < self.window:  # granted less than a full window: grow back (L4)
                grow = min(self.window - ch.local_window_max, self._room(0))
                if grow > 0:
                    ch.local_window_max += grow
                    self._granted += grow
                    inc += grow
            ch.local_window += inc
            self._send(m.ChannelWindowAdjust(ch.remote_id, inc).encode())

    # ---- incoming ----------------------------------------------------------------------
    def _get(self, recipient: int) -> Channel:
        ch = self._channels.get(recipient)
        if ch is None:
            raise ProtocolError(f"message for unknown channel {recipient}")
        return ch

    def _get_state(self, local_id: int, state: ChannelState) -> Channel:
        ch = self._channels.get(local_id)
        if ch is None or ch.state is not state:
            raise LocalError(f"channel {local_id} is not {state.value}")
        return ch

    def receive(self, payload: bytes) -> ev.Event | None:
        t = payload[0]
        if t == m.MSG_CHANNEL_DATA:
            return self._on_data(payload)
        handler = _HANDLERS.get(t)
        if handler is None:
            raise ProtocolError(f"unexpected message {t}")
        return handler(self, payload)

    def _on_data(self, payload: bytes) -> ev.Event | None:
        if len(payload) < 9:
            raise ProtocolError("truncated CHANNEL_DATA")
        recipient, n = _U32x2.unpack_from(payload, 1)
        if n != len(payload) - 9:
            raise ProtocolError("bad CHANNEL_DATA length")
        return self._deliver(recipient, payload[9:], 0)

    def _on_extended_data(self, payload: bytes) -> ev.Event | None:
        msg = m.ChannelExtendedData.decode(payload)
        return self._deliver(msg.recipient, msg.data, msg.data_type)

    def _deliver(self, recipient: int, data: bytes, data_type: int) -> ev.Event | None:
        ch = self._get(recipient)
        n = len(data)
        if ch.state is ChannelState.CLOSED:
            return None  # in flight when we closed (T20)
        if ch.state is not ChannelState.OPEN or ch.got_eof or ch.got_close:
            raise ProtocolError("data on a channel that is not open")
        if n > ch.local_max_packet:
            raise ProtocolError("channel data larger than the maximum packet")
        if n > ch.local_window:
            raise ProtocolError("peer ignored the channel window")
        ch.local_window -= n
        return ev.ChannelDataReceived(ch.local_id, data, data_type) if n else None

    def _on_open(self, payload: bytes) -> ev.Event | None:
        msg = m.ChannelOpen.decode(payload)
        if msg.max_packet == 0:
            raise ProtocolError("channel max packet of zero")
        window = self.window
        if msg.channel_type == "session" and self.pending_session_window is not None:
            window = self.pending_session_window
        reason = self._refusal(msg.channel_type, window, self.max_packet)
        if reason is not None:
            self._send(m.ChannelOpenFailure(msg.sender, m.OPEN_RESOURCE_SHORTAGE, reason, b"").encode())
            return ev.ChannelOpenRefused(msg.channel_type, reason)
        ch = self._allocate(msg.channel_type, ChannelState.PEER_OPENING, window, self.max_packet)
        ch.remote_id, ch.remote_window, ch.remote_max_packet = msg.sender, msg.window, min(msg.max_packet, MAX_MAX_PACKET)
        return ev.ChannelOpenRequest(ch.local_id, msg.channel_type, msg.data)

    def _on_open_confirmation(self, payload: bytes) -> ev.Event:
        msg = m.ChannelOpenConfirmation.decode(payload)
        ch = self._get(msg.recipient)
        if ch.state is not ChannelState.OPENING:
            raise ProtocolError("open confirmation for a channel that is not opening")
        if msg.max_packet == 0:
            raise ProtocolError("channel max packet of zero")
        ch.remote_id, ch.remote_window, ch.remote_max_packet = msg.sender, msg.window, min(msg.max_packet, MAX_MAX_PACKET)
        ch.state = ChannelState.OPEN
        return ev.ChannelOpenConfirmed(ch.local_id, msg.data)

    def _on_open_failure(self, payload: bytes) -> ev.Event:
        msg = m.ChannelOpenFailure.decode(payload)
        ch = self._get(msg.recipient)
        if ch.state is not ChannelState.OPENING:
            raise ProtocolError("open failure for a channel that is not opening")
        self._free(ch)
        return ev.ChannelOpenFailed(ch.local_id, msg.reason, msg.description)

    def _on_window_adjust(self, payload: bytes) -> ev.Event | None:
        msg = m.ChannelWindowAdjust.decode(payload)
        ch = self._get(msg.recipient)
        if ch.state is ChannelState.CLOSED:
            return None
        if ch.state is not ChannelState.OPEN:
            raise ProtocolError("window adjust for a channel that is not open")
        if ch.remote_window + msg.increment > MAX_WINDOW:
            raise ProtocolError("channel window overflow")
        ch.remote_window += msg.increment
        return ev.ChannelWindowAdjusted(ch.local_id)

    def _on_eof(self, payload: bytes) -> ev.Event | None:
        msg = m.ChannelEof.decode(payload)
        ch = self._get(msg.recipient)
        if ch.state is ChannelState.CLOSED:
            return None
        if ch.state is not ChannelState.OPEN or ch.got_eof or ch.got_close:
            raise ProtocolError("unexpected channel EOF")
        ch.got_eof = True
        return ev.ChannelEofReceived(ch.local_id)

    def _on_close(self, payload: bytes) -> ev.Event:
        msg = m.ChannelClose.decode(payload)
        ch = self._get(msg.recipient)
        if ch.state not in (ChannelState.OPEN, ChannelState.CLOSED) or ch.got_close:
            raise ProtocolError("unexpected channel CLOSE")
        ch.got_close = True
        if not ch.sent_close:
            ch.sent_close = True
            self._send(m.ChannelClose(ch.remote_id).encode())
        self._free(ch)
        return ev.ChannelCloseReceived(ch.local_id)

    def _on_request(self, payload: bytes) -> ev.Event | None:
        msg = m.ChannelRequest.decode(payload)
        ch = self._get(msg.recipient)
        if ch.state is ChannelState.CLOSED:
            return None
        if ch.state is not ChannelState.OPEN or ch.got_close:
            raise ProtocolError("request on a channel that is not open")
        token = self._next_token
        self._next_token += 1
        if msg.want_reply:
            if len(ch.replies) >= 64:
                raise ProtocolError("too many unanswered channel requests")
            ch.replies.append([token, None])
        return ev.ChannelRequestReceived(ch.local_id, msg.request_type, msg.want_reply, msg.data, token)

    def _on_request_reply(self, payload: bytes) -> ev.Event | None:
        cls = m.ChannelSuccess if payload[0] == m.MSG_CHANNEL_SUCCESS else m.ChannelFailure
        msg = cls.decode(payload)
        ch = self._get(msg.recipient)
        if ch.requests_out <= 0:
            if ch.state is ChannelState.CLOSED:
                return None
            raise ProtocolError("channel request reply without a request")
        ch.requests_out -= 1
        return ev.ChannelRequestReplied(ch.local_id, cls is m.ChannelSuccess)


_HANDLERS = {
    m.MSG_CHANNEL_EXTENDED_DATA: ChannelTable._on_extended_data,
    m.MSG_CHANNEL_OPEN: ChannelTable._on_open,
    m.MSG_CHANNEL_OPEN_CONFIRMATION: ChannelTable._on_open_confirmation,
    m.MSG_CHANNEL_OPEN_FAILURE: ChannelTable._on_open_failure,
    m.MSG_CHANNEL_WINDOW_ADJUST: ChannelTable._on_window_adjust,
    m.MSG_CHANNEL_EOF: ChannelTable._on_eof,
    m.MSG_CHANNEL_CLOSE: ChannelTable._on_close,
    m.MSG_CHANNEL_REQUEST: ChannelTable._on_request,
    m.MSG_CHANNEL_SUCCESS: ChannelTable._on_request_reply,
    m.MSG_CHANNEL_FAILURE: ChannelTable._on_request_reply,
}

"""In-memory client/server pairs for the sans-IO core (no sockets, no Trio).

The pattern of Go's ``mempipe_test.go`` and OpenSSH's ``regress/unittests/kex/test_kex.c``:
a client :class:`~ssh_proto.connection.Connection` and a server one, whose outputs are
fed to each other until neither has anything left to say. Every event either side
produces is collected, so a test scripts the application's answers and then checks
what came out.

Fault injection, three ways:

* ``c2s`` / ``s2c`` filters see every chunk of bytes on its way (a man in the middle:
  flip bits, insert or rewrite plaintext packets of the initial key exchange);
* :meth:`Pair.inject` makes one side *send* an arbitrary payload, protected with the
  keys of the moment (a misbehaving peer), bypassing the hold queue of a running kex;
* ``client_transport`` / ``server_transport`` swap in a :class:`Transport` subclass for
  one side (a peer that omits strict kex, signs with the wrong host key, ...).

Typical use::

    pair = authenticated_pair()
    cid = pair.open_session()
    pair.client.send_data(cid, b"hello")
    pair.pump()
    assert pair.data_received(Role.SERVER, pair.server_id(cid)) == b"hello"

The scripts here drive both sides through the :class:`~ssh_proto.connection.Connection`
facade, as the Trio layer does; only the fault injection reaches behind it, on purpose.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable
from unittest import mock

from ssh_proto import connection as connection_module
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.connection import Connection, ConnectionOptions
from ssh_proto.errors import DisconnectError, ProtocolError
from ssh_proto.keys import PrivateKey
from ssh_proto.packets import PacketReader, PacketWriter
from ssh_proto.state import Role
from ssh_proto.transport import Algorithms, Transport, accept_any_host_key

C, S = Role.CLIENT, Role.SERVER

USERNAME = "alice"
PASSWORD = "correct horse"


@functools.cache
def _key(purpose: str, key_type: str) -> PrivateKey:
    return PrivateKey.generate(key_type, bits=2048) if key_type == "ssh-rsa" else PrivateKey.generate(key_type)


def host_key(key_type: str = "ssh-ed25519") -> PrivateKey:
    """One host key per type for the whole run (RSA generation is slow)."""
    return _key("host", key_type)


def user_key(key_type: str = "ssh-ed25519") -> PrivateKey:
    """One user key per type for the whole run, distinct from the host keys."""
    return _key("user", key_type)


class FakeClock:
    """An injectable monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def transport_without(*names: str) -> type[Transport]:
    """A Transport whose KEXINITs leave out the pseudo-algorithms ``names``.

    Stands for a peer without strict kex (``kex-strict-*``) or ext-info support.
    """

    class _Without(Transport):
        def _make_kexinit(self) -> m.KexInit:
            msg = super()._make_kexinit()
            return msg.replace(kex_algorithms=tuple(a for a in msg.kex_algorithms if a not in names))

    return _Without


def _build(role: Role, transport_cls: type[Transport] | None, **kw) -> Connection:
    if transport_cls is None:
        return Connection(role, **kw)
    with mock.patch.object(connection_module, "Transport", transport_cls):
        return Connection(role, **kw)


Filter = Callable[[bytes], bytes]


@dataclasses.dataclass
class Pair:
    """A client and a server Connection wired back to back in memory."""

    client: Connection
    server: Connection
    c2s: Filter | None = None
    s2c: Filter | None = None
    client_events: list = dataclasses.field(default_factory=list)
    server_events: list = dataclasses.field(default_factory=list)
    failed: Role | None = None          # the side whose receive_data/next_event raised
    error: BaseException | None = None

    # ---- plumbing ------------------------------------------------------------------
    def side(self, role: Role) -> Connection:
        return self.client if role is C else self.server

    def events(self, role: Role) -> list:
        return self.client_events if role is C else self.server_events

    def _drain(self, role: Role) -> bool:
        conn, got = self.side(role), False
        try:
            while (event := conn.next_event()) is not None:
                self.events(role).append(event)
                got = True
        except (ProtocolError, DisconnectError) as exc:
            self.failed, self.error = role, exc
            raise
        return got

    def transfer(self, src: Role, *, drain: bool = True) -> int:
        """Move what ``src`` has to send to its peer once; return the bytes moved.

        With ``drain=False`` the receiver's events are left unread, so the receiver has
        not yet acted on them (a client that finished the kex has not yet sent its
        SERVICE_REQUEST, for instance).
        """
        data = self.side(src).data_to_send()
        if not data:
            return 0
        flt = self.c2s if src is C else self.s2c
        if flt is not None:
            data = flt(data)
        dst = src.peer
        if data:
            try:
                self.side(dst).receive_data(data)
            except (ProtocolError, DisconnectError) as exc:
                self.failed, self.error = dst, exc
                raise
            if drain:
                self._drain(dst)
        return len(data)

    def pump(self, max_rounds: int = 100_000) -> None:
        """Exchange bytes and collect events until both sides are quiet."""
        for _ in range(max_rounds):
            busy = self._drain(C) | self._drain(S)
            busy |= bool(self.transfer(C)) | bool(self.transfer(S))
            if not busy:
                return
        raise AssertionError("pair did not quiesce")

    def expect_error(self, role: Role, exc_type: type[BaseException] = ProtocolError) -> BaseException:
        """Pump; assert that ``role`` fails with ``exc_type``; deliver its DISCONNECT.

        Returns the error. The peer then sees the DISCONNECT (a DisconnectError whose
        reason is the error's), which is checked too.
        """
        try:
            self.pump()
        except (ProtocolError, DisconnectError):
            pass
        assert self.failed is role, f"expected the {role.value} to fail, got {self.failed} ({self.error!r})"
        assert isinstance(self.error, exc_type), repr(self.error)
        err = self.error
        if isinstance(err, ProtocolError):
            self.side(role).send_protocol_error(err)
            data = self.side(role).data_to_send()
            peer = self.side(role.peer)
            if data and not peer.closed:
                try:
                    peer.receive_data(data)
                    while peer.next_event() is not None:
                        pass
                except DisconnectError as exc:
                    assert exc.reason == err.reason
                except ProtocolError:
                    pass  # the peer may fail on bytes it still had in flight (a MITM's flip)
        return err

    # ---- injection -------------------------------------------------------------------
    def inject(self, src: Role, payload: bytes) -> None:
        """Make ``src`` send ``payload`` now, with its current keys, even mid key exchange.

        This reaches into the transport's writer on purpose: it is how a test plays a
        peer that breaks the rules (the public send() would hold it during a kex).
        """
        t = self.side(src).transport
        t._out.append(t._writer.write(payload))

    # ---- events ----------------------------------------------------------------------
    def take(self, role: Role, cls: type = ev.Event) -> list:
        """Remove and return the collected events of ``role`` that are ``cls`` instances."""
        events = self.events(role)
        hit = [e for e in events if isinstance(e, cls)]
        events[:] = [e for e in events if not isinstance(e, cls)]
        return hit

    def data_received(self, role: Role, channel_id: int, data_type: int = 0) -> bytes:
        """Concatenate (and remove) the data events of one channel, returning the bytes."""
        events = self.events(role)
        mine = [e for e in events if isinstance(e, ev.ChannelDataReceived)
                and e.channel_id == channel_id and e.data_type == data_type]
        taken = {id(e) for e in mine}
        events[:] = [e for e in events if id(e) not in taken]
        for e in mine:
            self.side(role).data_consumed(channel_id, len(e.data))
        return b"".join(e.data for e in mine)

    # ---- common scripts ----------------------------------------------------------------
    def authenticate(self, username: str = USERNAME, password: str = PASSWORD) -> None:
        """Run password authentication to success (the server's app accepts it)."""
        self.pump()
        assert self.take(C, ev.ServiceAccepted), "no SERVICE_ACCEPT"
        self.client.auth_password(password)
        self.pump()
        (req,) = self.take(S, ev.AuthPassword)
        assert (req.username, req.password) == (username, password)
        self.server.auth_accept()
        self.pump()
        (res,) = self.take(C, ev.AuthResult)
        assert res.success and self.client.authenticated and self.server.authenticated

    def open_session(self, channel_type: str = "session", data: bytes = b"", **kw) -> int:
        """Client opens a channel, server accepts it; returns the client's channel id."""
        cid = self.client.open_channel(channel_type, data, **kw)
        self.pump()
        (req,) = self.take(S, ev.ChannelOpenRequest)
        assert req.channel_type == channel_type
        self.server.accept_channel(req.channel_id)
        self.pump()
        (ok,) = self.take(C, ev.ChannelOpenConfirmed)
        assert ok.channel_id == cid
        return cid

    def server_id(self, client_channel: int) -> int:
        """The server's local id of the client's channel ``client_channel``."""
        return self.client.channels[client_channel].remote_id


def make_pair(*, options: ConnectionOptions = ConnectionOptions(),
              client_options: ConnectionOptions | None = None,
              server_options: ConnectionOptions | None = None,
              host_keys=None, verify_host_key=accept_any_host_key, username: str = USERNAME,
              clock=None, client_transport: type[Transport] | None = None,
              server_transport: type[Transport] | None = None,
              c2s: Filter | None = None, s2c: Filter | None = None) -> Pair:
    """A fresh pair before any byte moved (call pump() to run the handshake)."""
    if host_keys is None:
        host_keys = ((host_key("ssh-ed25519"), None),)
    client = _build(C, client_transport, options=client_options or options, verify_host_key=verify_host_key,
                    username=username, clock=clock)
    server = _build(S, server_transport, options=server_options or options, host_keys=tuple(host_keys),
                    clock=clock)
    return Pair(client, server, c2s=c2s, s2c=s2c)


def handshaken_pair(**kw) -> Pair:
    pair = make_pair(**kw)
    pair.pump()
    assert pair.client.transport.handshake_complete and pair.server.transport.handshake_complete
    return pair


def authenticated_pair(**kw) -> Pair:
    pair = handshaken_pair(**kw)
    pair.authenticate()
    return pair


def algorithms(*, kex: str | None = None, cipher: str | None = None, mac: str | None = None,
               host_key_alg: str | None = None) -> Algorithms:
    """Algorithms with one choice forced (the others keep their defaults)."""
    a = Algorithms()
    return dataclasses.replace(
        a,
        kex=(kex,) if kex else a.kex,
        ciphers=(cipher,) if cipher else a.ciphers,
        macs=(mac,) if mac else a.macs,
        host_keys=(host_key_alg,) if host_key_alg else a.host_keys,
    )


# ---- man-in-the-middle helpers for the plaintext initial key exchange ------------------

def plain_packet(payload: bytes) -> bytes:
    """``payload`` framed as an unprotected packet (what travels before the first NEWKEYS)."""
    return PacketWriter().write(payload)


class PlainRewriter:
    """A stream filter that edits the unprotected packets of the initial key exchange.

    ``edit(payload)`` returns the list of payloads to send instead of ``payload`` (``[]``
    drops it, ``[extra, payload]`` inserts one before it). Packets are parsed until the
    sender's NEWKEYS; everything after it passes through untouched. The version line is
    passed through too.
    """

    def __init__(self, edit: Callable[[bytes], list[bytes]]):
        self._edit = edit
        self._buf = bytearray()
        self._version_seen = False
        self._done = False

    def __call__(self, data: bytes) -> bytes:
        if self._done:
            return data
        self._buf += data
        out = bytearray()
        if not self._version_seen:
            nl = self._buf.find(b"\n")
            if nl < 0:
                return b""
            out += self._buf[: nl + 1]
            del self._buf[: nl + 1]
            self._version_seen = True
        while not self._done and len(self._buf) >= 4:
            plen = int.from_bytes(self._buf[:4], "big")
            if len(self._buf) < 4 + plen:
                break
            packet = bytes(self._buf[: 4 + plen])
            del self._buf[: 4 + plen]
            payload = packet[5: 4 + plen - packet[4]]
            for p in self._edit(payload):
                out += plain_packet(p)
            if payload[:1] == bytes((m.MSG_NEWKEYS,)):
                self._done = True
        if self._done:
            out += self._buf
            self._buf.clear()
        return bytes(out)


def insert_before(msg_type: int, extra: bytes) -> PlainRewriter:
    """Insert the payload ``extra`` once, just before the first packet of ``msg_type``."""
    state = {"done": False}

    def edit(payload: bytes) -> list[bytes]:
        if payload[0] == msg_type and not state["done"]:
            state["done"] = True
            return [extra, payload]
        return [payload]

    return PlainRewriter(edit)


# ---- a log of every packet written and read ---------------------------------------------

@dataclasses.dataclass
class PacketLog:
    """Every payload written or read while installed, with its sequence number."""

    written: list = dataclasses.field(default_factory=list)  # (writer, seq, payload)
    read: list = dataclasses.field(default_factory=list)     # (reader, seq, payload)

    def sent(self, conn: Connection) -> list[tuple[int, bytes]]:
        w = conn.transport._writer
        return [(seq, p) for obj, seq, p in self.written if obj is w]

    def received(self, conn: Connection) -> list[tuple[int, bytes]]:
        r = conn.transport._reader
        return [(seq, p) for obj, seq, p in self.read if obj is r]


def record_packets(monkeypatch) -> PacketLog:
    """Log every packet of every PacketWriter / PacketReader (undone by ``monkeypatch``)."""
    log = PacketLog()
    write, next_packet = PacketWriter.write, PacketReader.next_packet

    def logged_write(self, payload):
        log.written.append((self, self.seq, bytes(payload)))
        return write(self, payload)

    def logged_next(self):
        payload = next_packet(self)
        if payload is not None:
            log.read.append((self, self.seq_of_last, bytes(payload)))
        return payload

    monkeypatch.setattr(PacketWriter, "write", logged_write)
    monkeypatch.setattr(PacketReader, "next_packet", logged_next)
    return log


# ---- hypothesis strategies for messages -----------------------------------------------------

def _field_strategy(kind: str):
    from hypothesis import strategies as st
    name = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
                   min_size=1, max_size=20)
    return {
        "byte": st.integers(0, 255),
        "bool": st.booleans(),
        "u32": st.integers(0, 2**32 - 1),
        "u64": st.integers(0, 2**64 - 1),
        "string": st.binary(max_size=64),
        "text": st.text(max_size=32),
        "name": st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=24),
        "names": st.lists(name, max_size=6).map(tuple),
        "mpint": st.integers(-(2**200), 2**200),
        "cookie": st.binary(min_size=16, max_size=16),
        "rest": st.binary(max_size=64),
        "texts": st.lists(st.text(max_size=16), max_size=8).map(tuple),
    }[kind]


def message_strategy(cls):
    """Instances of a message (or body) class with arbitrary field values."""
    from hypothesis import strategies as st
    return st.builds(cls, *(_field_strategy(kind) for _, kind in cls._fields))


def all_message_classes() -> list[type]:
    """Every class built with ``messages.message`` (messages and request bodies)."""
    return [v for v in vars(m).values()
            if isinstance(v, type) and issubclass(v, m.Message) and v is not m.Message]

"""The SSH transport layer as a sans-IO state machine (RFC 4253, RFC 4344, RFC 8308).

:class:`Transport` owns the version exchange, the binary packet streams in both directions,
algorithm negotiation, key exchange and re-exchange, strict key exchange (OpenSSH
PROTOCOL §1.9, rule T1), and EXT_INFO. It does no I/O: feed it bytes with
:meth:`receive_data`, collect bytes to send with :meth:`data_to_send`, and pull the
payloads meant for the layers above (service, user auth, connection) with
:meth:`next_payload`.

It decides nothing about which message may come when: every packet it reads, every
payload handed to :meth:`send` and every key-exchange message it writes is checked by
:attr:`state`, a :class:`~ssh_proto.state.ConnectionState` (the one table of
docs/security.md T11: phases, key-exchange steps and direction, NEWKEYS, EXT_INFO's
place). The handlers below run only for what the table let through.

Outgoing upper-layer payloads given to :meth:`send` while a key exchange is running are held
until it completes (RFC 4253 §7.1: after KEXINIT only messages 1-49 may be sent).

Output no SSH window bounds (docs/security.md L6): everything but CHANNEL_DATA and
CHANNEL_EXTENDED_DATA is *control* output — replies, window adjusts, key exchange. The
transport counts the control bytes produced and not yet collected (:attr:`control_backlog`),
so the connection can tell a peer that stopped reading our replies from one that is merely
slow with bulk data. A server may also be limited to ``max_kex`` key exchanges
(:attr:`max_kex`; the connection sets it until authentication): a further KEXINIT is a
protocol error before any key-exchange work is done for it.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from typing import Callable

from . import kex as kexmod
from . import messages as m
from .ciphers import CIPHERS, DEFAULT_CIPHERS, DEFAULT_MACS, MACS, cipher_needs_mac
from .errors import DisconnectError, DisconnectReason, HostKeyNotVerifiable, KeyExchangeError, LocalError, ProtocolError
from .keys import DEFAULT_SIGNATURE_ALGORITHMS, Certificate, PrivateKey, PublicKey, algorithm_matches_key, parse_public_blob
from .packets import PacketReader, PacketWriter
from .state import HANDLE, KEX_METHOD_MESSAGES, UNIMPLEMENTED, ConnectionState, Role

SOFTWARE_VERSION = "Jumpgate_0.1"
MAX_VERSION_LINE = 255          # RFC 4253 §4.2, CR LF included
MAX_PRE_BANNER_LINES = 64       # rule T17: lines a server may send before its version
MAX_PRE_BANNER_BYTES = 8192

STRICT_KEX_CLIENT = "kex-strict-c-v00@openssh.com"
STRICT_KEX_SERVER = "kex-strict-s-v00@openssh.com"
EXT_INFO_CLIENT = "ext-info-c"
EXT_INFO_SERVER = "ext-info-s"
PSEUDO_KEX = frozenset({STRICT_KEX_CLIENT, STRICT_KEX_SERVER, EXT_INFO_CLIENT, EXT_INFO_SERVER})

#: RFC 8308 server-sig-algs: the user-auth signature algorithms a server verifies.
SERVER_SIG_ALGS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
                   "rsa-sha2-512", "rsa-sha2-256")

REKEY_PACKETS = 1 << 31          # OpenSSH's MAX_PACKETS, rule T8
_CHANNEL_DATA, _CHANNEL_EXTENDED_DATA = m.MSG_CHANNEL_DATA, m.MSG_CHANNEL_EXTENDED_DATA  # bounded by a window
_DATA_MESSAGES = (_CHANNEL_DATA, _CHANNEL_EXTENDED_DATA)
DEFAULT_REKEY_SECONDS = 3600.0   # RFC 4253 §9


@dataclasses.dataclass(frozen=True, slots=True)
class Algorithms:
    """Algorithm preferences, most preferred first.

    ``kex=None`` means the role's default: :data:`~ssh_proto.kex.DEFAULT_KEX` for a client,
    :data:`~ssh_proto.kex.DEFAULT_SERVER_KEX` (no finite-field DH) for a server. Any list
    given explicitly is offered as is, DH groups and non-EtM MACs included::

        Algorithms(kex=("curve25519-sha256", "diffie-hellman-group14-sha256"),
                   macs=("hmac-sha2-256-etm@openssh.com", "hmac-sha2-256"))
    """

    kex: tuple[str, ...] | None = None
    host_keys: tuple[str, ...] = DEFAULT_SIGNATURE_ALGORITHMS
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    macs: tuple[str, ...] = DEFAULT_MACS
    compression: tuple[str, ...] = ("none",)

    def kex_for(self, role: "Role") -> tuple[str, ...]:
        """The key exchange methods ``role`` offers."""
        if self.kex is not None:
            return self.kex
        return kexmod.DEFAULT_SERVER_KEX if role is Role.SERVER else kexmod.DEFAULT_KEX


@dataclasses.dataclass(frozen=True, slots=True)
class Negotiated:
    """The outcome of one algorithm negotiation (RFC 4253 §7.1)."""

    kex: str
    host_key: str
    cipher_cs: str
    cipher_sc: str
    mac_cs: str | None
    mac_sc: str | None
    compression_cs: str
    compression_sc: str


def _choose(client: tuple[str, ...], server: tuple[str, ...], what: str) -> str:
    for name in client:
        if name in server and name not in PSEUDO_KEX:
            return name
    raise KeyExchangeError(f"no matching {what} algorithm")


@dataclasses.dataclass(slots=True)
class _KexState:
    """One key exchange in progress."""

    ours: bytes                      # our KEXINIT payload
    ours_msg: m.KexInit              # ... and its fields (not decoded again from the bytes)
    theirs: bytes | None = None      # peer's KEXINIT payload
    negotiated: Negotiated | None = None
    method: kexmod.KexClient | kexmod.KexServer | None = None
    result: kexmod.KexResult | None = None
    sent_newkeys: bool = False
    got_newkeys: bool = False

    # The state table orders the steps, so each is set before it is read; these say so to a
    # type checker and fail loudly should the table ever let a step through out of order.
    def chosen(self) -> Negotiated:
        """The negotiated algorithms (set once both KEXINITs are in)."""
        if self.negotiated is None:
            raise AssertionError("key exchange not negotiated yet")
        return self.negotiated

    def outcome(self) -> kexmod.KexResult:
        """The method's result (set once its messages are exchanged)."""
        if self.result is None:
            raise AssertionError("key exchange has no result yet")
        return self.result


class Transport:
    """Sans-IO SSH transport for one side of one connection.

    ``host_keys`` (server) are the private host keys with optional certificates, as
    ``(PrivateKey, Certificate | None)`` pairs. ``verify_host_key`` (client) receives the
    server's key or certificate and must return normally (None, or True) only if it is
    trusted; any other outcome (it raises, or returns False or anything else) fails the
    handshake with HostKeyNotVerifiable (rule T16).
    """

    def __init__(self, role: Role, *, algorithms: Algorithms = Algorithms(),
                 host_keys: tuple[tuple[PrivateKey, Certificate | None], ...] = (),
                 verify_host_key: Callable[[PublicKey | Certificate], object] | None = None,
                 rekey_bytes: int | None = None, rekey_seconds: float = DEFAULT_REKEY_SECONDS,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[int], bytes] = os.urandom,
                 version: str = SOFTWARE_VERSION):
        self.role = role
        self.algorithms = algorithms
        self._host_keys = host_keys
        self._verify_host_key = verify_host_key
        self._rekey_bytes = rekey_bytes
        self._rekey_seconds = rekey_seconds
        self._clock = clock
        self._rng = rng
        if role is Role.SERVER and not host_keys:
            raise LocalError("a server needs at least one host key")
        if role is Role.CLIENT and verify_host_key is None:
            raise LocalError("a client needs a verify_host_key policy (use accept_any_host_key to disable checks)")
        self.local_version = f"SSH-2.0-{version}".encode()
        self.peer_version: bytes | None = None
        self._inbuf = bytearray()  # only during the version exchange
        self._pre_banner_lines = 0
        self._reader = PacketReader()
        self._writer = PacketWriter()
        self._out: list[bytes] = [self.local_version + b"\r\n"]
        self._control_out = 0   # control bytes in _out (everything but channel data)
        self._control_held = 0  # ... and in _held
        self._payloads: deque[bytes] = deque()
        self._held: deque[bytes] = deque()
        self.max_kex: int | None = None  # key exchanges allowed (None: no limit)
        self._kex: _KexState | None = None
        self._first_kex_done = False
        self.strict_kex = False
        self.session_id: bytes | None = None
        self.negotiated: Negotiated | None = None
        self.host_key: PublicKey | Certificate | None = None
        self.session_signature: bytes | None = None  # the server's signature over the first H
        self._compression_started = False  # delayed compression began (after auth)
        self.peer_ext_info: dict[str, bytes] = {}
        self.peer_wants_ext_info = False
        self.state = ConnectionState()
        self._us, self._them = self.state.parties[role], self.state.parties[role.peer]
        self._keys_time = clock()
        self.closed = False
        self.kex_count = 0
        self._start_kex()

    # ---- public I/O -----------------------------------------------------------------
    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; decoded payloads become available via next_payload().

        ``data`` may be a buffer the caller reuses: what is kept is copied."""
        if self.closed:
            return
        if self.peer_version is None:
            self._inbuf += data
            self._parse_version()
            if self.peer_version is None:
                return
            data, self._inbuf = bytes(self._inbuf), bytearray()
        if data:
            self._reader.feed(data)
        self._pump()

    def next_payload(self) -> bytes | None:
        """The next payload for the upper layers, or None."""
        return self._payloads.popleft() if self._payloads else None

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        self._control_out = 0
        return out

    @property
    def unsent_output(self) -> int:
        """Bytes data_to_send() would return now (held payloads not included)."""
        return sum(map(len, self._out))

    @property
    def control_backlog(self) -> int:
        """Bytes of control output (not channel data) produced but not yet collected."""
        return self._control_out + self._control_held

    @property
    def pending_output(self) -> int:
        """Bytes produced but not yet collected by data_to_send(), held payloads included.

        Counting what a running key exchange holds back lets the I/O layer apply
        backpressure, so a peer that stalls its kex cannot make the hold queue grow
        without bound (rule T8).
        """
        return sum(map(len, self._out)) + sum(map(len, self._held))

    def send(self, payload: bytes) -> None:
        """Queue an upper-layer message (held while a key exchange is running)."""
        if self.closed:
            raise LocalError("the connection is closed")
        if payload[0] not in self._us.queueable:
            self.state.queue(self.role, payload[0])  # LocalError if off the table (T11)
        if self._kex is not None or self.peer_version is None:
            self._held.append(payload)
            if payload[0] not in _DATA_MESSAGES:
                self._control_held += len(payload)
            return
        self._write(payload)
        if self._rekey_due():
            self.start_rekey()

    def send_ignore(self, data: bytes = b"") -> None:
        self.send(m.Ignore(data).encode())

    def disconnect(self, reason: int = DisconnectReason.BY_APPLICATION, description: str = "") -> None:
        """Send DISCONNECT (even mid key-exchange) and stop processing input."""
        if not self.closed:
            # Our version line went out first (it is queued at construction), so a packet
            # may follow whether or not the peer's has been read: a listener refusing a
            # connection on its first bytes says why (docs/security.md L8).
            self._out.append(self._writer.write(m.Disconnect(int(reason), description, b"").encode()))
            self._held.clear()  # nothing may follow DISCONNECT
            self._control_held = 0
            self.closed = True

    @property
    def kex_running(self) -> bool:
        return self._kex is not None

    @property
    def handshake_complete(self) -> bool:
        return self._first_kex_done

    def start_rekey(self) -> None:
        """Begin a key re-exchange (no-op if one is already running)."""
        if self._kex is None and self._first_kex_done and not self.closed:
            self._start_kex()

    def check_rekey_timer(self) -> None:
        """Call now and then: starts a re-exchange once the time limit has passed."""
        if self._first_kex_done and self._clock() - self._keys_time >= self._rekey_seconds:
            self.start_rekey()

    def _enable_compression(self) -> None:
        """Start delayed compression (zlib@openssh.com, OpenSSH PROTOCOL §1.2, rule T18).

        It starts in both directions right after USERAUTH_SUCCESS, which the server
        marks by *writing* it (it may have been held by a key exchange) and the client
        by *reading* it (before any packet behind it is decoded), as OpenSSH packet.c.
        """
        n = self.negotiated
        if n is None:
            return
        self._compression_started = True
        if n.compression_cs == "zlib@openssh.com":
            (self._writer if self.role is Role.CLIENT else self._reader).enable_compression()
        if n.compression_sc == "zlib@openssh.com":
            (self._reader if self.role is Role.CLIENT else self._writer).enable_compression()

    # ---- version exchange (RFC 4253 §4.2) ----------------------------------------------
    def _parse_version(self) -> None:
        while True:
            nl = self._inbuf.find(b"\n")
            if nl < 0:
                if len(self._inbuf) > MAX_PRE_BANNER_BYTES or (
                        self._inbuf.startswith(b"SSH-") and len(self._inbuf) >= MAX_VERSION_LINE):
                    raise ProtocolError("identification line too long", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
                return
            line = bytes(self._inbuf[: nl + 1])
            del self._inbuf[: nl + 1]
            if line.startswith(b"SSH-"):
                self._accept_version(line)
                return
            # Only a server may send other lines before its version; a client may not.
            self._pre_banner_lines += 1
            if self.role is Role.SERVER or self._pre_banner_lines > MAX_PRE_BANNER_LINES or len(line) > MAX_PRE_BANNER_BYTES:
                raise ProtocolError("bad protocol identification", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED)

    def _accept_version(self, line: bytes) -> None:
        if len(line) > MAX_VERSION_LINE:
            raise ProtocolError("identification line too long", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
        version = line.rstrip(b"\n").removesuffix(b"\r")
        if not (version.startswith(b"SSH-2.0-") or version.startswith(b"SSH-1.99-")):
            raise ProtocolError("unsupported protocol version", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
        if any(c < 0x20 or c > 0x7E for c in version):
            raise ProtocolError("invalid character in identification", DisconnectReason.PROTOCOL_VERSION_NOT_SUPPORTED)
        self.peer_version = version
        # KEXINIT was queued behind the version; nothing else was sent yet.

    # ---- packet pump ---------------------------------------------------------------------
    def _pump(self) -> None:
        reader = self._reader
        while not self.closed:
            payload = reader.next_packet()
            if payload is None:
                break
            if not payload:
                raise ProtocolError("empty packet")
            self._dispatch(payload)
            if reader.seq_wrapped and not self._first_kex_done:
                raise ProtocolError("sequence number wrapped during initial key exchange")
        if self._rekey_due():
            self.start_rekey()

    def _dispatch(self, payload: bytes) -> None:
        msg_type = payload[0]
        verdict = HANDLE if msg_type in self._them.accepted else self.state.receive(self.role.peer, msg_type)
        if verdict is not HANDLE:
            if verdict is UNIMPLEMENTED:
                self.send(m.Unimplemented(self._reader.seq_of_last).encode())
            return  # or a wrongly guessed kex packet, ignored (RFC 4253 §7)
        handler = _TRANSPORT_HANDLERS.get(msg_type)
        if handler is not None:
            handler(self, payload)
        elif msg_type in KEX_METHOD_MESSAGES:
            self._on_kex_message(payload)
        else:
            self._payloads.append(payload)
            if msg_type == m.MSG_USERAUTH_SUCCESS and self.role is Role.CLIENT:
                self._enable_compression()

    # ---- generic transport messages ---------------------------------------------------------
    def _on_disconnect(self, payload: bytes) -> None:
        msg = m.Disconnect.decode(payload)
        self.closed = True
        raise DisconnectError(msg.reason, msg.description)

    def _on_ignore(self, payload: bytes) -> None:
        m.Ignore.decode(payload)

    def _on_debug(self, payload: bytes) -> None:
        m.Debug.decode(payload)

    def _on_unimplemented(self, payload: bytes) -> None:
        m.Unimplemented.decode(payload)

    def _on_ext_info(self, payload: bytes) -> None:
        """The table placed it (RFC 8308 §2.4, rule T9); a second one adds to the first."""
        msg = m.ExtInfo.decode(payload)
        self.peer_ext_info.update(dict(msg.extensions))

    # ---- key exchange (RFC 4253 §7) ------------------------------------------------------
    def _make_kexinit(self) -> m.KexInit:
        a = self.algorithms
        kex_names = list(a.kex_for(self.role))
        if not self._first_kex_done and self.kex_count == 0:
            # Pseudo-algorithms go in the first KEXINIT only (T1, T9).
            if self.role is Role.CLIENT:
                kex_names += [EXT_INFO_CLIENT, STRICT_KEX_CLIENT]
            else:
                kex_names += [EXT_INFO_SERVER, STRICT_KEX_SERVER]
        if self.role is Role.SERVER:
            host_algs = self._server_host_key_algorithms()
        else:
            host_algs = a.host_keys
        return m.KexInit(self._rng(16), tuple(kex_names), tuple(host_algs), a.ciphers, a.ciphers,
                         a.macs, a.macs, a.compression, a.compression, (), (), False, 0)

    def _host_key_candidates(self):
        """Each (key, cert) pair offers its certificate and its plain key, as sshd does."""
        for key, cert in self._host_keys:
            if cert is not None:
                yield key, cert
            yield key, None

    def _server_host_key_algorithms(self) -> tuple[str, ...]:
        return tuple(alg for alg in self.algorithms.host_keys
                     if any(algorithm_matches_key(alg, cert or key.public_key)
                            for key, cert in self._host_key_candidates()))

    def _start_kex(self) -> None:
        msg = self._make_kexinit()
        ours = msg.encode()
        self._kex = _KexState(ours=ours, ours_msg=msg)
        self._emit_kex(ours)

    def _emit_kex(self, payload: bytes) -> None:
        """Kex messages (and our EXT_INFO) bypass the hold queue; the table still checks them."""
        self.state.emit(self.role, payload[0])
        packet = self._writer.write(payload)
        self._out.append(packet)
        self._control_out += len(packet)

    def _on_kexinit(self, payload: bytes) -> None:
        msg = m.KexInit.decode(payload)
        if self._kex is None and self.max_kex is not None and self.kex_count >= self.max_kex:
            # the peer starts one more (a re-exchange we start ourselves is our own business)
            raise ProtocolError("too many key exchanges before authentication")
        if self._kex is None:
            self._start_kex()
        kx = self._current_kex()
        kx.theirs = payload
        first = not self._first_kex_done
        if first and self.kex_count == 0:
            self._note_first_kexinit(msg)
        client_msg = kx.ours_msg if self.role is Role.CLIENT else msg
        server_msg = msg if self.role is Role.CLIENT else kx.ours_msg
        kx.negotiated = self._negotiate(client_msg, server_msg)
        if msg.first_kex_packet_follows:
            guess_ok = (msg.kex_algorithms[:1] == (kx.negotiated.kex,) and
                        msg.server_host_key_algorithms[:1] == (kx.negotiated.host_key,))
            if not guess_ok:
                self.state.skip_guess(self.role.peer)
        method = kexmod.KEX_METHODS[kx.negotiated.kex]
        if self.role is Role.CLIENT:
            client = kx.method = method.client()
            self._emit_kex(client.init_message())
        else:
            kx.method = method.server()

    def _note_first_kexinit(self, msg: m.KexInit) -> None:
        ours = self._current_kex().ours_msg.kex_algorithms
        if self.role is Role.CLIENT:
            self.strict_kex = STRICT_KEX_SERVER in msg.kex_algorithms and STRICT_KEX_CLIENT in ours
            self.peer_wants_ext_info = EXT_INFO_SERVER in msg.kex_algorithms
        else:
            # Strict only if *both* first KEXINITs carry the marker, or the two sides
            # would disagree about resetting sequence numbers (OpenSSH kex.c).
            self.strict_kex = STRICT_KEX_CLIENT in msg.kex_algorithms and STRICT_KEX_SERVER in ours
            self.peer_wants_ext_info = EXT_INFO_CLIENT in msg.kex_algorithms
        client, server = (ours, msg.kex_algorithms) if self.role is Role.CLIENT else (msg.kex_algorithms, ours)
        self.state.negotiated(strict=self.strict_kex, client_ext_info=EXT_INFO_CLIENT in client,
                              server_ext_info=EXT_INFO_SERVER in server)
        # T1a: under strict kex the peer's KEXINIT must have been its packet number 0
        # (sequence numbers are not reset before the first NEWKEYS, so any IGNORE or
        # DEBUG sent first shows here).
        if self.strict_kex and self._reader.seq_of_last != 0:
            raise ProtocolError("strict key exchange: KEXINIT was not the first packet")

    def _negotiate(self, c: m.KexInit, s: m.KexInit) -> Negotiated:
        kex = _choose(c.kex_algorithms, s.kex_algorithms, "key exchange")
        host_key = _choose(c.server_host_key_algorithms, s.server_host_key_algorithms, "host key")
        cipher_cs = _choose(c.encryption_client_to_server, s.encryption_client_to_server, "cipher")
        cipher_sc = _choose(c.encryption_server_to_client, s.encryption_server_to_client, "cipher")
        mac_cs = _choose(c.mac_client_to_server, s.mac_client_to_server, "MAC") if cipher_needs_mac(cipher_cs) else None
        mac_sc = _choose(c.mac_server_to_client, s.mac_server_to_client, "MAC") if cipher_needs_mac(cipher_sc) else None
        comp_cs = _choose(c.compression_client_to_server, s.compression_client_to_server, "compression")
        comp_sc = _choose(c.compression_server_to_client, s.compression_server_to_client, "compression")
        for name in (kex,):
            if name not in kexmod.KEX_METHODS:
                raise KeyExchangeError(f"unsupported key exchange {name}")
        for name in (cipher_cs, cipher_sc):
            if name not in CIPHERS:
                raise KeyExchangeError(f"unsupported cipher {name}")
        for mac_name in (mac_cs, mac_sc):
            if mac_name is not None and mac_name not in MACS:
                raise KeyExchangeError(f"unsupported MAC {mac_name}")
        return Negotiated(kex, host_key, cipher_cs, cipher_sc, mac_cs, mac_sc, comp_cs, comp_sc)

    def _current_kex(self) -> _KexState:
        """The exchange in progress (the table admits key exchange messages only during one)."""
        if self._kex is None:
            raise AssertionError("no key exchange in progress")
        return self._kex

    def _exchange_inputs(self) -> kexmod.ExchangeInputs:
        kx = self._current_kex()
        if self.peer_version is None or kx.theirs is None:
            raise AssertionError("key exchange before both versions and KEXINITs")
        if self.role is Role.CLIENT:
            return kexmod.ExchangeInputs(self.local_version, self.peer_version, kx.ours, kx.theirs)
        return kexmod.ExchangeInputs(self.peer_version, self.local_version, kx.theirs, kx.ours)

    def _on_kex_message(self, payload: bytes) -> None:
        """The method's message: the table let only the client's INIT to a server and the
        server's REPLY to a client through, once per exchange, after the sender's KEXINIT."""
        kx = self._current_kex()
        method = kx.method
        if isinstance(method, kexmod.KexClient):
            kx.result = method.process_reply(payload, self._exchange_inputs())
            self._check_server_host_key(kx)
            self._send_newkeys()
        elif isinstance(method, kexmod.KexServer):
            key, cert = self._pick_host_key(kx.chosen().host_key)
            blob = (cert or key.public_key).blob
            sig_alg = _plain_signature_algorithm(kx.chosen().host_key)
            reply, kx.result = method.process_init(payload, self._exchange_inputs(), blob,
                                                      lambda h: key.sign(h, sig_alg))
            self._emit_kex(reply)
            self._send_newkeys()
        else:
            raise AssertionError("key exchange message before the method was chosen")

    def _pick_host_key(self, alg: str) -> tuple[PrivateKey, Certificate | None]:
        for key, cert in self._host_key_candidates():
            if algorithm_matches_key(alg, cert or key.public_key):
                return key, cert
        raise KeyExchangeError(f"no host key for {alg}")

    def _check_server_host_key(self, kx: _KexState) -> None:
        alg = kx.chosen().host_key
        result = kx.outcome()
        key = parse_public_blob(result.host_key_blob)
        if not algorithm_matches_key(alg, key):
            raise KeyExchangeError("host key does not match the negotiated algorithm")
        if not key.verify(result.signature, result.exchange_hash, algorithms=(_plain_signature_algorithm(alg),)):
            raise KeyExchangeError("bad host key signature")
        if self.host_key is not None and key != self.host_key:
            # A re-exchange must present the same host key (OpenSSH "server host key changed").
            raise HostKeyNotVerifiable("host key changed during key re-exchange")
        if self.host_key is None:
            self._run_host_key_policy(key)
            # kept for the agent's session-bind@openssh.com (PROTOCOL.agent)
            self.session_signature = result.signature
        self.host_key = key

    def _run_host_key_policy(self, key: PublicKey | Certificate) -> None:
        """Rule T16: a normal return (None, or True) is the one way to accept; all else rejects."""
        verify = self._verify_host_key
        if verify is None:  # a client without a policy trusts nothing
            raise HostKeyNotVerifiable("host key not accepted by the verification policy")
        try:
            verdict = verify(key)
        except HostKeyNotVerifiable:
            raise
        except Exception as exc:  # a policy bug must fail closed, as a typed error
            raise HostKeyNotVerifiable("host key not accepted by the verification policy") from exc
        if verdict is not None and verdict is not True:
            raise HostKeyNotVerifiable("host key not accepted by the verification policy")

    def _send_newkeys(self) -> None:
        kx = self._current_kex()
        if self.session_id is None:
            self.session_id = kx.outcome().exchange_hash
        self._emit_kex(m.NewKeys().encode())
        kx.sent_newkeys = True
        self._install_keys(self._writer, kx.chosen(), outgoing=True)
        if self.role is Role.SERVER and not self._first_kex_done and self.peer_wants_ext_info:
            self._emit_kex(self._server_ext_info())
        self._maybe_finish_kex()

    def _install_keys(self, direction, n, *, outgoing: bool) -> None:
        """New keys for one direction at NEWKEYS (RFC 4253 §7.2: client-to-server keys
        derive from letters A, C, E, server-to-client from B, D, F); compression restarts
        after the first exchange, and strict kex resets the sequence number."""
        if (self.role is Role.CLIENT) == outgoing:
            cipher, mac, compression, letters = n.cipher_cs, n.mac_cs, n.compression_cs, b"ACE"
        else:
            cipher, mac, compression, letters = n.cipher_sc, n.mac_sc, n.compression_sc, b"BDF"
        direction.set_keys(cipher, mac, *self._derive(cipher, mac, letters))
        if self._compression_started:
            direction.restart_compression(compression == "zlib@openssh.com")
        if self.strict_kex:
            direction.reset_sequence()

    def _server_ext_info(self) -> bytes:
        return m.ExtInfo((("server-sig-algs", ",".join(SERVER_SIG_ALGS).encode()),)).encode()

    def _on_newkeys(self, payload: bytes) -> None:
        """The table let it through only after the sender's method message, which we had
        answered with our own NEWKEYS already: this completes the exchange."""
        m.NewKeys.decode(payload)
        kx = self._current_kex()
        kx.got_newkeys = True
        self._install_keys(self._reader, kx.chosen(), outgoing=False)
        self._maybe_finish_kex()

    def _derive(self, cipher: str, mac: str | None, letters: bytes) -> tuple[bytes, bytes, bytes | None]:
        res = self._current_kex().outcome()
        session_id = self.session_id
        if session_id is None:
            raise AssertionError("keys derived before the session id is set")
        info = CIPHERS[cipher]

        def key(letter: bytes, size: int) -> bytes:
            return kexmod.derive_key(res.hash_name, res.shared_secret, res.exchange_hash, session_id, letter, size)

        iv = key(letters[0:1], info.iv_size) if info.iv_size else b""
        enc = key(letters[1:2], info.key_size)
        mac_key = key(letters[2:3], MACS[mac].key_size) if mac else None
        return enc, iv, mac_key

    def _maybe_finish_kex(self) -> None:
        kx = self._current_kex()
        if not (kx.sent_newkeys and kx.got_newkeys):
            return
        self.negotiated = kx.negotiated
        self._kex = None
        self.kex_count += 1
        self._keys_time = self._clock()
        if not self._first_kex_done:
            self._first_kex_done = True
        while self._held and self._kex is None:
            payload = self._held.popleft()
            if payload[0] not in _DATA_MESSAGES:
                self._control_held -= len(payload)
            self._write(payload)

    def _write(self, payload: bytes) -> None:
        packet = self._writer.write(payload)
        self._out.append(packet)
        t = payload[0]
        if t != _CHANNEL_DATA and t != _CHANNEL_EXTENDED_DATA:
            self._control_out += len(packet)
            if t == m.MSG_USERAUTH_SUCCESS and self.role is Role.SERVER:
                self._enable_compression()

    def _rekey_due(self) -> bool:
        if self._kex is not None or not self._first_kex_done:
            return False
        w, r = self._writer, self._reader
        limit = self._rekey_bytes
        if w.packets >= REKEY_PACKETS or r.packets >= REKEY_PACKETS:
            return True
        wl = w.rekey_limit_bytes if limit is None else min(limit, w.rekey_limit_bytes)
        rl = r.rekey_limit_bytes if limit is None else min(limit, r.rekey_limit_bytes)
        return w.bytes >= wl or r.bytes >= rl


def _plain_signature_algorithm(alg: str) -> str:
    """'rsa-sha2-256-cert-v01@openssh.com' -> 'rsa-sha2-256' (the signature over H uses the plain name)."""
    if alg.endswith("-cert-v01@openssh.com"):
        return alg[: -len("-cert-v01@openssh.com")]
    return alg


_TRANSPORT_HANDLERS = {
    m.MSG_DISCONNECT: Transport._on_disconnect,
    m.MSG_IGNORE: Transport._on_ignore,
    m.MSG_DEBUG: Transport._on_debug,
    m.MSG_UNIMPLEMENTED: Transport._on_unimplemented,
    m.MSG_EXT_INFO: Transport._on_ext_info,
    m.MSG_KEXINIT: Transport._on_kexinit,
    m.MSG_NEWKEYS: Transport._on_newkeys,
}


def accept_any_host_key(key) -> None:
    """A host-key policy that trusts every server: only for tests and known_hosts=None."""

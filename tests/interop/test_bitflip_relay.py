"""Tampering in transit is caught: a bit-flipping TCP relay (our version of OpenSSH's
``regress/modpipe`` as used by ``integrity.sh``; docs/security.md T5).

The relay sits between a client (ours, or OpenSSH ``ssh``) and our server. It follows the
unencrypted start of the chosen direction packet by packet until that side's
SSH_MSG_NEWKEYS, then XORs one byte ``OFFSET`` bytes after it: offset 0 is the first byte of
the first protected packet (its length field, clear for EtM/GCM, encrypted for chacha20),
the others land in the encrypted authentication phase and in bulk channel data. For every
cipher (and every MAC with one CTR cipher), in both directions:

- the connection fails with a clean :class:`ssh_proto.MACError` / :class:`ProtocolError`
  on the side that receives the damaged packet, a :class:`DisconnectError` on the other;
- the application never sees a damaged byte: what it received is a prefix of what was sent;
- the server keeps serving: the next (untouched) connection works.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from pathlib import Path

import pytest
import trio

import ours
import ssh_proto
from openssh import KeyFactory, SshTarget, ssh_command
from ssh_proto.keys import PrivateKey

pytestmark = pytest.mark.interop

CIPHERS = ("chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
           "aes128-ctr", "aes192-ctr", "aes256-ctr")
MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com", "hmac-sha2-256", "hmac-sha2-512")
OFFSETS = (0, 700, 30_000)  # bytes after the direction's NEWKEYS
SSH_MSG_NEWKEYS = 21
LINES = 100_000
EXPECTED = b"".join(b"%d\n" % i for i in range(1, LINES + 1))  # `seq 1 100000`, ~590 kB
UPLOAD = os.urandom(600_000)
TIMEOUT = 20
SSH_FAILED = 255


# --------------------------------------------------------------------- the relay


class NewkeysFinder:
    """Reads one direction's plaintext start: version line, then packets up to NEWKEYS.

    ``end`` becomes the stream offset just past that direction's first SSH_MSG_NEWKEYS
    packet; everything after it is protected by the negotiated cipher and MAC.
    """

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.position: int | None = None  # start of the next unparsed packet, once past the version
        self.end: int | None = None

    def feed(self, data: bytes) -> None:
        if self.end is not None:
            return
        self.buffer += data
        if self.position is None:
            # RFC 4253 §4.2: the version line ends in CR LF (a server may send lines before it)
            for match in re.finditer(rb"[^\n]*\n", bytes(self.buffer)):
                if match.group().startswith(b"SSH-"):
                    self.position = match.end()
                    break
            else:
                return
        while self.position + 6 <= len(self.buffer):
            length = int.from_bytes(self.buffer[self.position:self.position + 4], "big")
            if self.position + 4 + length > len(self.buffer):
                return
            message = self.buffer[self.position + 5]
            self.position += 4 + length
            if message == SSH_MSG_NEWKEYS:
                self.end = self.position
                return


@dataclasses.dataclass
class Flip:
    """XOR ``mask`` into the byte ``offset`` bytes after NEWKEYS in one direction."""

    to_server: bool
    offset: int
    mask: int = 0x01
    done: bool = False


async def _pump(source: trio.SocketStream, sink: trio.SocketStream, flip: Flip | None,
                relay: trio.CancelScope) -> None:
    """Copy ``source`` to ``sink``, flipping per ``flip``. A clean EOF is passed on as EOF (the
    other direction goes on); a reset or a failed send on either side ends the whole relay, so
    both peers see the connection go (a pump left waiting on a half the other side abandoned
    would hang the test)."""
    finder, total = NewkeysFinder(), 0
    try:
        while data := await source.receive_some(65536):
            if flip is not None and not flip.done:
                finder.feed(data)
                if finder.end is not None and total <= finder.end + flip.offset < total + len(data):
                    data = bytearray(data)
                    data[finder.end + flip.offset - total] ^= flip.mask
                    flip.done = True
            total += len(data)
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        relay.cancel()


async def serve_relay(nursery: trio.Nursery, upstream_port: int, flip: Flip) -> int:
    """A loopback relay to ``upstream_port`` that flips one byte per ``flip``; returns its port."""

    async def handle(downstream: trio.SocketStream) -> None:
        async with downstream, await trio.open_tcp_stream("127.0.0.1", upstream_port) as upstream:
            async with trio.open_nursery() as both:
                both.start_soon(_pump, downstream, upstream, flip if flip.to_server else None, both.cancel_scope)
                both.start_soon(_pump, upstream, downstream, None if flip.to_server else flip, both.cancel_scope)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


# --------------------------------------------------------------------- our server


@dataclasses.dataclass(frozen=True)
class Keys:
    host: ours.HostKeySet
    client: PrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(ours.HostKeySet.generate(["ed25519"]), PrivateKey.generate("ssh-ed25519"))


def _config(keys: Keys, connections: list, *extra_keys: bytes) -> ours.ServerConfig:
    # every MAC listed: the MAC-then-encrypt ones are flipped too, but offered only when asked for
    every_mac = ssh_proto.ConnectionOptions(algorithms=ssh_proto.Algorithms(macs=MACS))
    return ours.ServerConfig(keys.host.pairs(certificates=False), connections=connections, options=every_mac,
                             authorized_keys=frozenset({keys.client.public_key.blob, *extra_keys}))


def _prefix_of(received: bytes, sent: bytes) -> None:
    assert received == sent[:len(received)], "damaged data reached the application"
    assert len(received) < len(sent), "the whole stream arrived although a byte was flipped"


def _assert_clean_failure(error: BaseException | None, *, detected_here: bool) -> None:
    if detected_here:
        assert isinstance(error, ssh_proto.ProtocolError), repr(error)  # MACError is one
    else:
        assert isinstance(error, (ssh_proto.ProtocolError, ssh_proto.DisconnectError)), repr(error)


async def _server_still_serves(port: int, keys: Keys) -> None:
    with trio.fail_after(TIMEOUT):
        async with ssh_proto.connect("127.0.0.1", port, username=ours.USERNAME, client_keys=[keys.client],
                                     known_hosts=None) as conn:
            assert (await conn.run("echo still-up")).stdout == b"still-up\n"


# --------------------------------------------------------------------- our client


async def _our_client_through(relay_port: int, keys: Keys, cipher: str, mac: str | None,
                              to_server: bool) -> tuple[bytes, BaseException | None]:
    """Download ``seq`` (flip towards the client) or echo an upload (flip towards the server).

    Returns what the application received and the error the connection ended with.
    """
    algorithms = ssh_proto.Algorithms(ciphers=(cipher,), **({"macs": (mac,)} if mac else {}))
    received = bytearray()
    error: BaseException | None = None
    try:
        with trio.fail_after(TIMEOUT):
            async with ssh_proto.connect("127.0.0.1", relay_port, username=ours.USERNAME, client_keys=[keys.client],
                                         known_hosts=None,
                                         options=ssh_proto.ConnectionOptions(algorithms=algorithms)) as conn:
                try:
                    proc = await conn.open_session("cat" if to_server else f"seq 1 {LINES}")
                    async with trio.open_nursery() as nursery:
                        if to_server:
                            nursery.start_soon(_upload, proc)
                        while chunk := await proc.receive_some():
                            received += chunk
                    await proc.wait()
                finally:
                    error = conn.error
    except* (ssh_proto.SSHError, trio.BrokenResourceError) as group:
        # a read on the dying connection raises (never a clean EOF), possibly inside the
        # reading nursery's group
        error = error or group.exceptions[0]
    return bytes(received), error


async def _upload(proc: ssh_proto.SSHProcess) -> None:
    try:
        await proc.send_all(UPLOAD)
        await proc.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssh_proto.SSHError):
        pass  # the connection died under us: what matters is what the reader saw


CASES = [pytest.param(c, None, o, id=f"{c}-offset{o}") for c in CIPHERS for o in OFFSETS]
CASES += [pytest.param("aes128-ctr", m, 30_000, id=f"aes128-ctr-{m}-offset30000") for m in MACS]


@pytest.mark.parametrize("direction", ["to-client", "to-server"])
@pytest.mark.parametrize("cipher, mac, offset", CASES)
async def test_rule_t5_flipped_byte_ends_our_connection_cleanly(nursery: trio.Nursery, keys: Keys, cipher: str,
                                                               mac: str | None, offset: int, direction: str) -> None:
    to_server = direction == "to-server"
    connections: list[ssh_proto.SSHServerConnection] = []
    listener = await ours.start_server(nursery, _config(keys, connections))
    flip = Flip(to_server=to_server, offset=offset)
    relay_port = await serve_relay(nursery, listener.port, flip)

    received, client_error = await _our_client_through(relay_port, keys, cipher, mac, to_server)

    assert flip.done, "the relay never reached the offset: the test proved nothing"
    _prefix_of(received, UPLOAD if to_server else EXPECTED)
    _assert_clean_failure(client_error, detected_here=not to_server)
    with trio.fail_after(TIMEOUT):
        await connections[0].closed.wait()
    _assert_clean_failure(connections[0].error, detected_here=to_server)
    await _server_still_serves(listener.port, keys)


async def test_rule_t5_run_raises_when_connection_fails_mid_output(nursery: trio.Nursery, keys: Keys) -> None:
    # The application must learn that the output it got is cut short: conn.run (and a
    # channel's receive_some, as trio streams do) raises instead of reporting a normal end.
    listener = await ours.start_server(nursery, _config(keys, []))
    relay_port = await serve_relay(nursery, listener.port, Flip(to_server=False, offset=30_000))
    with trio.fail_after(TIMEOUT):
        async with ssh_proto.connect("127.0.0.1", relay_port, username=ours.USERNAME, client_keys=[keys.client],
                                     known_hosts=None) as conn:
            with pytest.raises((ssh_proto.SSHError, trio.BrokenResourceError)):
                result = await conn.run(f"seq 1 {LINES}")
                print(f"run returned {result.exit_status=} {result.exit_signal=} {len(result.stdout)=}; "
                      f"the connection had failed with {conn.error!r}")


# --------------------------------------------------------------------- OpenSSH's ssh

# What ssh 9.2 prints when a packet it receives fails (packet.c).
SSH_DETECTED = re.compile(r"Corrupted MAC on input|message authentication code incorrect|"
                          r"Bad packet length|padding error")
# What it prints when our server drops it. Usually our DISCONNECT (reason 5, MAC error)
# arrives; but ssh is still uploading when the server closes, and a close() with unread
# input sends a TCP RST that may overtake it (sshd behaves the same): then only EOF/reset.
SSH_DISCONNECTED = re.compile(r"Received disconnect from .*:5: |closed by remote host|Connection reset|"
                              r"Broken pipe")


@pytest.mark.parametrize("direction", ["to-client", "to-server"])
@pytest.mark.parametrize("cipher", CIPHERS)
async def test_rule_t5_flipped_byte_ends_openssh_connection_cleanly(nursery: trio.Nursery, keys: Keys,
                                                                    ssh_keys: KeyFactory, tmp_path: Path,
                                                                    cipher: str, direction: str) -> None:
    to_server = direction == "to-server"
    user_key = ssh_keys.user_key("ed25519")
    connections: list[ssh_proto.SSHServerConnection] = []
    ssh_user_key = ours.public_key_of(user_key.public_line).blob
    listener = await ours.start_server(nursery, _config(keys, connections, ssh_user_key))
    flip = Flip(to_server=to_server, offset=30_000)
    relay_port = await serve_relay(nursery, listener.port, flip)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{relay_port} {keys.host.keys['ed25519'].public_key.to_line()}\n")
    argv = ssh_command("cat" if to_server else f"seq 1 {LINES}", identity=user_key,
                       target=SshTarget("127.0.0.1", relay_port, ours.USERNAME, known_hosts),
                       options=["-o", f"Ciphers={cipher}"])

    with trio.fail_after(TIMEOUT):
        done = await trio.run_process(argv, stdin=UPLOAD if to_server else b"", capture_stdout=True,
                                      capture_stderr=True, check=False)

    assert flip.done, "the relay never reached the offset: the test proved nothing"
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == SSH_FAILED, stderr
    _prefix_of(done.stdout, UPLOAD if to_server else EXPECTED)
    assert (SSH_DISCONNECTED if to_server else SSH_DETECTED).search(stderr), stderr
    with trio.fail_after(TIMEOUT):
        await connections[0].closed.wait()
    _assert_clean_failure(connections[0].error, detected_here=to_server)
    await _server_still_serves(listener.port, keys)

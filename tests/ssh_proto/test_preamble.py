"""A relay's line in front of the client's SSH stream: ``ssh_proto.preamble`` and its Trio wrapper.

The sans-IO :class:`PreambleReader` is fed by hand, whole and in small pieces; the
contract is its module docstring (a line that starts with the prefix ends with CR LF
within ``max_length`` bytes; anything else passes through untouched, decided at the first
differing byte). :class:`PreambleStream` runs over ``trio.testing`` stream pairs, with the
lockstep pair when the test needs the input to arrive in exactly the pieces it sends.
"""
from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from ssh_proto.errors import ProtocolError
from ssh_proto.preamble import MAX_PREAMBLE, Preamble, PreambleError, PreambleReader
from ssh_proto.trio_io.preamble import PreambleStream, RelayPreamble

PREFIX = b"RELAY "
SSH = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n\x00\x00\x01\x2c\x0a\x14"


def feed_pieces(reader: PreambleReader, pieces) -> Preamble | None:
    """Feed ``pieces`` until the reader decides; None if it never did."""
    for piece in pieces:
        found = reader.feed(piece)
        if found is not None:
            return found
    return None


def bytewise(data: bytes) -> list[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# ---------------------------------------------------------------- the sans-IO reader


def test_plain_ssh_passes_through_at_once():
    assert PreambleReader(PREFIX).feed(SSH) == Preamble(None, SSH)


def test_plain_ssh_is_decided_on_its_first_byte():
    # A normal client must never wait on the relay logic: one differing byte decides.
    assert PreambleReader(PREFIX).feed(b"S") == Preamble(None, b"S")


def test_plain_input_diverging_inside_the_prefix_passes_through_whole():
    reader = PreambleReader(PREFIX)
    assert reader.feed(b"REL") is None
    assert reader.feed(b"AX and more\r\n") == Preamble(None, b"RELAX and more\r\n")


def test_plain_input_diverging_inside_the_prefix_at_once():
    assert PreambleReader(PREFIX).feed(b"RELAX\r\nSSH") == Preamble(None, b"RELAX\r\nSSH")


def test_relay_line_and_rest_at_once():
    data = PREFIX + b"from 10.0.0.7\r\n" + SSH
    assert PreambleReader(PREFIX).feed(data) == Preamble(PREFIX + b"from 10.0.0.7", SSH)


def test_relay_line_fed_byte_by_byte():
    reader = PreambleReader(PREFIX)
    line = PREFIX + b"from 10.0.0.7\r\n"
    for piece in bytewise(line)[:-1]:
        assert reader.feed(piece) is None
    assert reader.feed(line[-1:]) == Preamble(PREFIX + b"from 10.0.0.7", b"")


def test_rest_after_the_line_is_kept_exactly():
    rest = b"\r\n\n\x00RELAY again\r\n" + bytes(range(256))
    found = PreambleReader(PREFIX).feed(PREFIX + b"x\r\n" + rest)
    assert found == Preamble(PREFIX + b"x", rest)


def test_empty_feeds_change_nothing():
    reader = PreambleReader(PREFIX)
    assert reader.feed(b"") is None
    assert reader.feed(b"RE") is None
    assert reader.feed(b"") is None
    assert reader.feed(b"LAY a\r\nSSH") == Preamble(b"RELAY a", b"SSH")


def test_line_of_the_prefix_alone_is_returned():
    assert PreambleReader(PREFIX).feed(PREFIX + b"\r\n") == Preamble(PREFIX, b"")


def test_line_ended_by_lf_without_cr_is_refused():
    with pytest.raises(PreambleError):
        PreambleReader(PREFIX).feed(PREFIX + b"from 10.0.0.7\nSSH-2.0-x\r\n")


def test_line_ended_by_lf_without_cr_is_refused_bytewise():
    with pytest.raises(PreambleError):
        feed_pieces(PreambleReader(PREFIX), bytewise(PREFIX + b"abc\n"))


def test_cr_inside_the_line_is_part_of_it():
    found = PreambleReader(PREFIX).feed(PREFIX + b"a\rb\r\nrest")
    assert found == Preamble(PREFIX + b"a\rb", b"rest")


def test_preamble_error_is_a_protocol_error():
    # Raised inside the connection's reader, it must close the connection like any other.
    assert issubclass(PreambleError, ProtocolError)


# ---- the max_length bound: the whole line, CR LF included, fits in max_length bytes

LIMIT = 32


def line_of(total: int) -> bytes:
    """A relay line of exactly ``total`` bytes, CR LF included."""
    return PREFIX + b"x" * (total - len(PREFIX) - 2) + b"\r\n"


def test_line_of_exactly_max_length_is_accepted():
    line = line_of(LIMIT)
    assert PreambleReader(PREFIX, LIMIT).feed(line + b"SSH") == Preamble(line[:-2], b"SSH")


def test_line_of_exactly_max_length_is_accepted_bytewise():
    line = line_of(LIMIT)
    assert feed_pieces(PreambleReader(PREFIX, LIMIT), bytewise(line)) == Preamble(line[:-2], b"")


@pytest.mark.parametrize("bytewise_feed", [False, True])
def test_line_one_byte_over_max_length_is_refused(bytewise_feed):
    # max_length counts the whole line, CR LF included (relay_line refuses the same)
    line = line_of(LIMIT + 1)
    reader = PreambleReader(PREFIX, LIMIT)
    with pytest.raises(PreambleError):
        feed_pieces(reader, bytewise(line) if bytewise_feed else [line])


@pytest.mark.parametrize("bytewise_feed", [False, True])
def test_line_two_bytes_over_max_length_is_refused(bytewise_feed):
    line = line_of(LIMIT + 2)
    with pytest.raises(PreambleError):
        feed_pieces(PreambleReader(PREFIX, LIMIT), bytewise(line) if bytewise_feed else [line])


@pytest.mark.parametrize("bytewise_feed", [False, True])
def test_no_lf_within_max_length_is_refused(bytewise_feed):
    data = PREFIX + b"x" * (LIMIT + 1 - len(PREFIX))   # max_length + 1 bytes, no LF yet
    with pytest.raises(PreambleError):
        feed_pieces(PreambleReader(PREFIX, LIMIT), bytewise(data) if bytewise_feed else [data])


def test_partial_line_short_of_max_length_waits_for_more():
    reader = PreambleReader(PREFIX, LIMIT)
    assert reader.feed(line_of(LIMIT)[:-1]) is None    # max_length - 1 bytes, ending in CR
    assert reader.feed(b"\n") == Preamble(line_of(LIMIT)[:-2], b"")


def test_default_limit_is_max_preamble():
    reader = PreambleReader(PREFIX)
    assert reader.max_length == MAX_PREAMBLE
    assert reader.feed(line_of(MAX_PREAMBLE)) == Preamble(line_of(MAX_PREAMBLE)[:-2], b"")
    with pytest.raises(PreambleError):
        PreambleReader(PREFIX).feed(PREFIX + b"x" * MAX_PREAMBLE)


# ---- end of input


def test_eof_with_nothing_read_is_no_line():
    assert PreambleReader(PREFIX).eof() == Preamble(None, b"")


def test_eof_after_empty_feed_is_no_line():
    reader = PreambleReader(PREFIX)
    assert reader.feed(b"") is None
    assert reader.eof() == Preamble(None, b"")


@pytest.mark.parametrize("partial", [b"R", b"RELAY", PREFIX, PREFIX + b"from 10.0.0.7\r"])
def test_eof_inside_a_relay_line_is_refused(partial):
    reader = PreambleReader(PREFIX)
    assert reader.feed(partial) is None
    with pytest.raises(PreambleError):
        reader.eof()


# ---- the constructor


@pytest.mark.parametrize("prefix", [b"", b"SSH-", b"SSH-2.0-relay ", b"RELAY\n", b"\n", b"A\nB"])
def test_bad_prefix_is_refused(prefix):
    with pytest.raises(ValueError):
        PreambleReader(prefix)


@pytest.mark.parametrize("prefix", [b"SSH_RELAY ", b"SSX", b"JUMPGATE-RELAY ", b"X\r"])
def test_prefix_that_cannot_be_an_ssh_version_is_allowed(prefix):
    assert PreambleReader(prefix).feed(SSH) == Preamble(None, SSH)


@pytest.mark.parametrize("prefix", [b"S", b"SS", b"SSH"])
def test_prefix_that_every_ssh_version_starts_with_is_refused(prefix):
    # with such a prefix every plain client's "SSH-2.0-..." would be taken for a relay line
    with pytest.raises(ValueError):
        PreambleReader(prefix)


# ---- properties: chunking never changes the outcome, and only PreambleError escapes

lines = st.binary(max_size=80).map(lambda b: b.replace(b"\n", b""))


@st.composite
def inputs(draw):
    """(data, max_length, line content or None): an optional relay line, then anything."""
    max_length = draw(st.integers(min_value=len(PREFIX) + 2, max_value=64))
    kind = draw(st.sampled_from(["line", "broken", "plain"]))
    rest = draw(st.binary(max_size=60))
    if kind == "line":
        content = draw(lines)
        return PREFIX + content + b"\r\n" + rest, max_length, content
    if kind == "broken":
        head = PREFIX[:draw(st.integers(min_value=0, max_value=len(PREFIX)))]
        return head + rest, max_length, None
    return rest, max_length, None


def outcome(reader: PreambleReader, pieces) -> object:
    """The reader's Preamble, its rest followed by the pieces fed after the decision (as
    the stream would read them); after eof if undecided; or the PreambleError class."""
    try:
        for index, piece in enumerate(pieces):
            found = reader.feed(piece)
            if found is not None:
                return Preamble(found.line, found.rest + b"".join(pieces[index + 1:]))
        return reader.eof()
    except PreambleError:
        return PreambleError


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=200, deadline=None)
@given(inputs(), st.lists(st.integers(min_value=0, max_value=1000), max_size=12))
def test_property_chunking_never_changes_the_outcome(case, cuts):
    data, max_length, content = case
    whole = outcome(PreambleReader(PREFIX, max_length), [data])
    assert outcome(PreambleReader(PREFIX, max_length), split(data, cuts)) == whole
    if content is not None and len(PREFIX + content) + 2 <= max_length:
        assert whole == Preamble(PREFIX + content, data[len(PREFIX + content) + 2:])
    elif content is not None and len(PREFIX + content) + 2 > max_length + 1:
        assert whole is PreambleError
    if not data.startswith(PREFIX[:1]):
        assert whole == Preamble(None, data)


def usable_prefix(prefix: bytes) -> bool:
    """The constructor's contract, stated here on its own: non-empty, on one line, and neither
    a prefix of ``SSH-`` nor starting with it (either way an SSH version line could be taken for
    a relay line). The refusals are ``test_bad_prefix_is_refused`` and
    ``test_prefix_that_every_ssh_version_starts_with_is_refused`` above."""
    ssh = b"SSH-"
    return bool(prefix) and b"\n" not in prefix and prefix[:4] != ssh and ssh[:len(prefix)] != prefix


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=8).filter(usable_prefix),
       st.lists(st.binary(max_size=40), max_size=8), st.integers(min_value=0, max_value=64))
def test_property_feed_only_raises_preamble_error(prefix, pieces, max_length):
    reader = PreambleReader(prefix, max_length)
    try:
        found = feed_pieces(reader, pieces)
        if found is None:
            found = reader.eof()
    except PreambleError:
        return
    # Whatever was decided, no byte was lost or invented.
    line = b"" if found.line is None else found.line + b"\r\n"
    assert (line + found.rest) == b"".join(pieces)[:len(line + found.rest)]


# ---------------------------------------------------------------- the Trio stream

PEER = ("192.0.2.10", 40000)
CLIENT = ("203.0.113.5", 51234)


class Recorder:
    """The check and on_peer callbacks; records what they were given."""

    def __init__(self, answer=CLIENT, refuse: bool = False):
        self.answer, self.refuse = answer, refuse
        self.checked: list[tuple] = []
        self.peers: list[tuple] = []

    def check(self, line: bytes, peer):
        self.checked.append((line, peer))
        if self.refuse:
            raise PreambleError("not believed")
        return self.answer

    def wrap(self, stream, max_length: int = MAX_PREAMBLE) -> PreambleStream:
        return PreambleStream(stream, RelayPreamble(PREFIX, self.check, max_length), PEER, self.peers.append)


async def send_pieces(stream, pieces) -> None:
    for piece in pieces:
        await stream.send_all(piece)
    await stream.send_eof()


async def read_all(stream, max_bytes: int | None = None) -> bytes:
    out = b""
    while data := await stream.receive_some(max_bytes):
        out += data
    return out


async def run_lockstep(pieces, recorder: Recorder, max_bytes: int | None = None, **how) -> bytes:
    """Send ``pieces`` one send_all each (lockstep: each arrives on its own), read it all."""
    client, server = trio.testing.lockstep_stream_pair()
    wrapped = recorder.wrap(server, **how)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_pieces, client, pieces)
        return await read_all(wrapped, max_bytes)


@pytest.mark.parametrize("pieces", [[SSH], bytewise(SSH), [b"R", b"E", b"LAX\r\n", SSH], [SSH[:3], SSH[3:]]])
async def test_stream_plain_input_passes_through_byte_exact(pieces):
    recorder = Recorder()
    data = b"".join(pieces)
    assert await run_lockstep(pieces, recorder) == data
    assert recorder.checked == [] and recorder.peers == []


@pytest.mark.parametrize("max_bytes", [None, 1, 5])
async def test_stream_relay_line_is_removed_and_peer_reported(max_bytes):
    line = PREFIX + b"from 203.0.113.5"
    pieces = [line[:4], line[4:] + b"\r", b"\n" + SSH[:10], SSH[10:]]
    recorder = Recorder()
    assert await run_lockstep(pieces, recorder, max_bytes) == SSH
    assert recorder.checked == [(line, PEER)]
    assert recorder.peers == [CLIENT]


async def test_stream_relay_line_fed_bytewise():
    line = PREFIX + b"hello\r\n"
    recorder = Recorder()
    assert await run_lockstep(bytewise(line + SSH), recorder) == SSH
    assert recorder.checked == [(line[:-2], PEER)] and recorder.peers == [CLIENT]


async def test_stream_refused_line_surfaces_from_receive_some():
    client, server = trio.testing.memory_stream_pair()
    recorder = Recorder(refuse=True)
    wrapped = recorder.wrap(server)
    await client.send_all(PREFIX + b"forged\r\n" + SSH)
    with pytest.raises(PreambleError):
        await wrapped.receive_some()
    assert recorder.peers == []
    with pytest.raises(PreambleError):   # and stays refused: what follows is never read as SSH
        await wrapped.receive_some()


async def test_stream_malformed_line_surfaces_from_receive_some():
    client, server = trio.testing.memory_stream_pair()
    recorder = Recorder()
    wrapped = recorder.wrap(server, max_length=16)
    await client.send_all(PREFIX + b"x" * 40)
    with pytest.raises(PreambleError):
        await wrapped.receive_some()
    assert recorder.checked == []


async def test_stream_eof_before_any_byte_gives_empty():
    client, server = trio.testing.memory_stream_pair()
    recorder = Recorder()
    wrapped = recorder.wrap(server)
    await client.send_eof()
    assert await wrapped.receive_some() == b""
    assert recorder.checked == []


async def test_stream_eof_inside_a_relay_line_is_refused():
    client, server = trio.testing.memory_stream_pair()
    wrapped = Recorder().wrap(server)
    await client.send_all(PREFIX + b"cut sho")
    await client.send_eof()
    with pytest.raises(PreambleError):
        await wrapped.receive_some()


async def test_stream_line_alone_then_eof_gives_empty():
    recorder = Recorder()
    assert await run_lockstep([PREFIX + b"x\r\n"], recorder) == b""
    assert recorder.peers == [CLIENT]


async def test_stream_send_side_is_untouched():
    client, server = trio.testing.memory_stream_pair()
    wrapped = Recorder().wrap(server)
    await wrapped.send_all(b"SSH-2.0-Jumpgate\r\n")
    assert await client.receive_some() == b"SSH-2.0-Jumpgate\r\n"
    await wrapped.send_eof()
    assert await client.receive_some() == b""
    assert wrapped.socket is None
    await wrapped.aclose()


async def test_stream_decision_is_reported_once_line_or_not():
    """on_decided: the listener admits a relayed connection by the relay's word (L11)."""
    for pieces, expected in (([PREFIX + b"x\r\n", SSH], [CLIENT]), ([SSH], [None])):
        decided: list = []
        recorder = Recorder()
        client, server = trio.testing.lockstep_stream_pair()
        wrapped = PreambleStream(server, RelayPreamble(PREFIX, recorder.check), PEER, recorder.peers.append,
                                 on_decided=decided.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_pieces, client, pieces)
            assert await read_all(wrapped) == SSH
        assert decided == expected


async def test_stream_refused_line_is_not_reported_as_decided():
    decided: list = []
    client, server = trio.testing.memory_stream_pair()
    recorder = Recorder(refuse=True)
    wrapped = PreambleStream(server, RelayPreamble(PREFIX, recorder.check), PEER, recorder.peers.append,
                             on_decided=decided.append)
    await client.send_all(PREFIX + b"forged\r\n" + SSH)
    with pytest.raises(PreambleError):
        await wrapped.receive_some()
    assert decided == []

"""The session daemon's protocol (``appliance/client/mux.py``) and socket handling (``muxclient.py``).

No cluster and no daemon process: frames and requests are fed to the sans-IO core in
memory (and to hypothesis, which may only ever see :class:`MuxProtocolError`), and the
socket helpers run against real Unix sockets in a short directory under /tmp: the lock
and the socket a daemon claims, a stale socket left by a dead daemon, a profile path too
long for ``sun_path`` (that one in ``tmp_path``), and the thin client falling back
in-process when no daemon can be reached.
Nothing here forks (pytest-xdist workers must not), so ``spawn_daemon`` is replaced by
one that reports failure.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.client import muxclient
from appliance.client.mux import (LOCK_NAME, MAX_COMMAND, MAX_ENV, MAX_FRAME, MAX_NAME, MAX_SIZE, MUX_VERSION,
                                  SOCKET_NAME, FrameDecoder, MuxProtocolError, Resize, SessionRequest, Stop,
                                  VersionMismatch, encode_frame, parse_request, socket_path)

HEADER = struct.Struct(">I")
SUN_PATH_MAX = 107
FIELDS = ("target", "login", "port", "command", "pty", "term", "cols", "rows", "env")


def _session(**changes) -> dict:
    message = {"op": "session", "version": MUX_VERSION, "target": "alice@node1", "login": None, "port": None,
               "command": None, "pty": True, "term": "xterm-256color", "cols": 80, "rows": 24,
               "env": {"LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8"},
               "options": {"server_alive_interval": 0.0, "server_alive_count_max": 3, "connect_timeout": None},
               "escape": 126}
    message.update(changes)
    return message


def _without(key: str) -> dict:
    message = _session()
    del message[key]
    return message


def _raw_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------------------ frames

def test_frame_round_trip():
    message = {"op": "session", "text": "héllo \u2603", "n": [1, 2.5, None, True], "nested": {"a": {}}}
    frame = encode_frame(message)
    assert HEADER.unpack_from(frame)[0] == len(frame) - HEADER.size
    decoder = FrameDecoder()
    assert decoder.feed(frame) == [message]
    assert decoder.pending == 0


def test_frame_split_at_every_byte_boundary_decodes_once():
    message = {"op": "resize", "cols": 132, "rows": 43}
    frame = encode_frame(message)
    for cut in range(len(frame) + 1):
        decoder = FrameDecoder()
        first = decoder.feed(frame[:cut])
        assert decoder.pending == (cut if cut < len(frame) else 0)
        assert first + decoder.feed(frame[cut:]) == [message]
        assert decoder.pending == 0


def test_frame_fed_one_byte_at_a_time():
    message = _session()
    decoder = FrameDecoder()
    received = []
    for byte in encode_frame(message):
        received += decoder.feed(bytes([byte]))
    assert received == [message]


def test_several_frames_in_one_feed_come_out_in_order():
    messages = [{"op": "resize", "cols": c, "rows": 24} for c in range(5)] + [{"op": "stop", "version": 1}]
    data = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    partial = encode_frame({"event": "opened"})[:6]
    assert decoder.feed(data + partial) == messages
    assert decoder.pending == len(partial)


def test_pending_counts_the_bytes_of_an_unfinished_frame():
    decoder = FrameDecoder()
    assert decoder.pending == 0
    assert decoder.feed(b"\x00\x00") == []
    assert decoder.pending == 2
    frame = encode_frame({"event": "stopping"})
    assert decoder.feed(frame[2:-1]) == []
    assert decoder.pending == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [{"event": "stopping"}]
    assert decoder.pending == 0


def test_frame_of_exactly_max_frame_bytes_is_accepted():
    filler = "x" * (MAX_FRAME - len(b'{"a":""}'))
    frame = encode_frame({"a": filler})
    assert len(frame) == HEADER.size + MAX_FRAME
    assert FrameDecoder().feed(frame) == [{"a": filler}]


def test_oversized_message_refused_by_encode_frame():
    with pytest.raises(MuxProtocolError):
        encode_frame({"a": "x" * (MAX_FRAME - len(b'{"a":""}') + 1)})


@pytest.mark.parametrize("length", [MAX_FRAME + 1, 2**31, 2**32 - 1])
def test_oversized_length_header_rejected_before_the_body_arrives(length):
    decoder = FrameDecoder()
    with pytest.raises(MuxProtocolError):
        decoder.feed(HEADER.pack(length))  # the header alone: nothing is waited for or buffered


def test_oversized_length_header_after_a_good_frame_is_rejected():
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame({"event": "opened"})) == [{"event": "opened"}]
    with pytest.raises(MuxProtocolError):
        decoder.feed(HEADER.pack(MAX_FRAME + 1) + b"{")


@pytest.mark.parametrize("body", [
    b"", b"{", b"not json", b"{'single': 'quotes'}", b'{"a": 1} trailing', b"\x00\x01",
    b'{"a": "\xff\xfe"}', b"\xc3\x28", b"\xed\xa0\x80",            # not UTF-8 (the last: an encoded surrogate)
    b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true", b"1.5",   # JSON, but not an object
])
def test_frame_that_is_not_a_json_object_is_rejected(body):
    with pytest.raises(MuxProtocolError):
        FrameDecoder().feed(_raw_frame(body))


@pytest.mark.parametrize("body", [b"[" * 60_000, b'{"a":' * 10_000, b'{"a":' + b"[" * 60_000])
def test_deeply_nested_json_is_a_protocol_error(body):
    """json.loads raises RecursionError (not ValueError) for deep nesting; it must not escape."""
    with pytest.raises(MuxProtocolError):
        FrameDecoder().feed(_raw_frame(body))


def test_huge_integer_is_a_protocol_error():
    with pytest.raises(MuxProtocolError):
        FrameDecoder().feed(_raw_frame(b'{"a": ' + b"9" * 10_000 + b"}"))


# ------------------------------------------------------------------------------ requests

def test_valid_session_request():
    request = parse_request(_session(login="root", port=2222, command="uname -a", pty=False))
    assert isinstance(request, SessionRequest)
    assert (request.target, request.login, request.port, request.command) == ("alice@node1", "root", 2222, "uname -a")
    assert (request.pty, request.term, request.cols, request.rows) == (False, "xterm-256color", 80, 24)
    assert request.env == {"LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8"}
    assert request.agent is None
    assert parse_request(_session(agent="/run/user/1000/agent.sock")).agent == "/run/user/1000/agent.sock"
    assert request.escape == ord("~") and parse_request(_session(escape=None)).escape is None


def test_session_request_carries_the_dash_o_options():
    options = {"server_alive_interval": 5, "server_alive_count_max": 2, "connect_timeout": 4.5}
    request = parse_request(_session(options=options))
    assert (request.options.server_alive_interval, request.options.server_alive_count_max,
            request.options.connect_timeout) == (5.0, 2, 4.5)
    assert parse_request(request.to_message()).options == request.options


def test_session_request_optional_fields_may_be_null_or_absent():
    for message in (_session(), _without("login"), _without("port"), _without("command")):
        request = parse_request(message)
        assert request.login is None or request.login == message.get("login")
        assert request.port is None and request.command is None


def test_session_request_env_is_copied():
    message = _session()
    request = parse_request(message)
    message["env"]["LC_ALL"] = "C"
    assert "LC_ALL" not in request.env


@pytest.mark.parametrize("value", [1, 65535, None])
def test_session_port_limits_accepted(value):
    assert parse_request(_session(port=value)).port == value


@pytest.mark.parametrize("field,value", [("cols", 0), ("rows", 0), ("cols", MAX_SIZE), ("rows", MAX_SIZE)])
def test_session_size_limits_accepted(field, value):
    assert getattr(parse_request(_session(**{field: value})), field) == value


def test_session_text_limits_accepted():
    request = parse_request(_session(target="t" * MAX_NAME, login="l" * MAX_NAME, term="x" * MAX_NAME,
                                     command="c" * MAX_COMMAND))
    assert len(request.target) == len(request.login) == len(request.term) == MAX_NAME
    assert len(request.command) == MAX_COMMAND


def test_session_env_limits_accepted():
    env = {"LANG": "C"} | {f"LC_{i}": "v" * MAX_NAME for i in range(MAX_ENV - 1)}
    assert parse_request(_session(env=env)).env == env
    assert parse_request(_session(env={})).env == {}


def test_valid_resize_request():
    request = parse_request({"op": "resize", "cols": 100, "rows": 40})
    assert isinstance(request, Resize) and (request.cols, request.rows) == (100, 40)
    assert repr(request) == "Resize(cols=100, rows=40)"


def test_valid_stop_request():
    assert isinstance(parse_request({"op": "stop", "version": MUX_VERSION}), Stop)


BAD_FIELDS = [
    ("target", ""), ("target", "t" * (MAX_NAME + 1)), ("target", "node\0evil"), ("target", None), ("target", 5),
    ("target", ["node"]),
    ("login", ""), ("login", "l" * (MAX_NAME + 1)), ("login", "root\0"), ("login", 0), ("login", False),
    ("port", 0), ("port", 65536), ("port", -1), ("port", True), ("port", False), ("port", "22"), ("port", 22.0),
    ("pty", None), ("pty", 1), ("pty", 0), ("pty", "true"),
    ("term", ""), ("term", None), ("term", "x" * (MAX_NAME + 1)), ("term", "xterm\0"), ("term", 7),
    ("cols", -1), ("cols", MAX_SIZE + 1), ("cols", True), ("cols", 80.0), ("cols", "80"), ("cols", None),
    ("rows", -1), ("rows", MAX_SIZE + 1), ("rows", False), ("rows", 24.5), ("rows", "24"), ("rows", None),
    ("escape", -1), ("escape", 128), ("escape", "~"), ("escape", True), ("escape", 126.0),
    ("options", None), ("options", {}), ("options", {"server_alive_interval": 1, "server_alive_count_max": 0,
                                                     "connect_timeout": None}),
    ("options", {"server_alive_interval": -1, "server_alive_count_max": 3, "connect_timeout": None}),
    ("options", {"server_alive_interval": 1, "server_alive_count_max": 3, "connect_timeout": 0}),
    ("options", {"server_alive_interval": 1, "server_alive_count_max": 3, "connect_timeout": None, "x": 1}),
    ("command", ""), ("command", "c" * (MAX_COMMAND + 1)), ("command", "ls\0-la"), ("command", ["ls"]),
    ("env", None), ("env", []), ("env", "LANG=C"), ("env", {"PATH": "/tmp"}), ("env", {"LD_PRELOAD": "x.so"}),
    ("env", {"lang": "C"}), ("env", {"LANGUAGE": "de"}), ("env", {"XLC_ALL": "C"}), ("env", {"LANG": 1}),
    ("env", {"LC_ALL": None}), ("env", {"LANG": ["C"]}), ("env", {"LANG": "v" * (MAX_NAME + 1)}),
    ("env", {f"LC_{i}": "C" for i in range(MAX_ENV + 1)}), ("env", {"LANG": "C\0x"}), ("env", {"LC_\0": "C"}),
    ("env", {"LC_" + "x" * MAX_NAME: "C"}),
    ("agent", ""), ("agent", "agent.sock"), ("agent", "/tmp/a\0b"), ("agent", "/" + "a" * 4096), ("agent", 3),
    ("agent", ["/tmp/agent.sock"]),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)])
def test_session_field_of_wrong_type_or_beyond_its_limit_is_rejected(field, value):
    with pytest.raises(MuxProtocolError) as info:
        parse_request(_session(**{field: value}))
    assert not isinstance(info.value, VersionMismatch)


@pytest.mark.parametrize("field", ["target", "pty", "term", "cols", "rows", "env"])
def test_session_without_a_required_field_is_rejected(field):
    with pytest.raises(MuxProtocolError):
        parse_request(_without(field))


@pytest.mark.parametrize("message", [
    {"op": "resize", "cols": -1, "rows": 24}, {"op": "resize", "cols": 80, "rows": MAX_SIZE + 1},
    {"op": "resize", "cols": True, "rows": 24}, {"op": "resize", "cols": 80.0, "rows": 24}, {"op": "resize"},
])
def test_bad_resize_is_rejected(message):
    with pytest.raises(MuxProtocolError):
        parse_request(message)


@pytest.mark.parametrize("op", [None, "", "Session", "exec", "resize ", 1, ["session"], {"op": "stop"}])
def test_unknown_op_is_rejected(op):
    message = _session(op=op) if op is not None else _without("op")
    with pytest.raises(MuxProtocolError) as info:
        parse_request(message)
    assert not isinstance(info.value, VersionMismatch)


BAD_VERSIONS = [MUX_VERSION + 1, 0, -1, "1", None, [1], True, 1.0]


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_session_of_another_version_raises_version_mismatch(version):
    with pytest.raises(VersionMismatch):
        parse_request(_session(version=version))


@pytest.mark.parametrize("version", BAD_VERSIONS, ids=repr)
def test_stop_of_another_version_raises_version_mismatch(version):
    with pytest.raises(VersionMismatch):
        parse_request({"op": "stop", "version": version})


def test_version_mismatch_is_a_protocol_error_and_is_checked_before_the_fields():
    """A future client's request may carry fields we cannot parse: the daemon must still answer 'mismatch'."""
    assert issubclass(VersionMismatch, MuxProtocolError)
    with pytest.raises(VersionMismatch):
        parse_request({"op": "session", "version": MUX_VERSION + 1, "cols": "wide", "env": ["new"]})
    with pytest.raises(VersionMismatch):
        parse_request({"op": "stop"})


def test_session_request_to_message_round_trips_through_a_frame():
    request = SessionRequest(target="bob@db-1", login="admin", port=3022, command="echo 'é' && exit 3", pty=True,
                             term="screen-256color", cols=211, rows=61, env={"LANG": "fr_FR.UTF-8", "LC_ALL": "C"})
    message = request.to_message()
    assert (message["op"], message["version"]) == ("session", MUX_VERSION)
    (decoded,) = FrameDecoder().feed(encode_frame(message))
    parsed = parse_request(decoded)
    assert isinstance(parsed, SessionRequest)
    assert {k: getattr(parsed, k) for k in FIELDS} == {k: getattr(request, k) for k in FIELDS}


def test_session_request_with_nulls_round_trips():
    request = SessionRequest(target="node", login=None, port=None, command=None, pty=False, term="dumb",
                             cols=0, rows=0, env={})
    parsed = parse_request(FrameDecoder().feed(encode_frame(request.to_message()))[0])
    assert {k: getattr(parsed, k) for k in FIELDS} == {k: getattr(request, k) for k in FIELDS}


# ------------------------------------------------------------------------------ hypothesis

_FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
                 | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40))
_json_values = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=3)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=5)
_keys = st.sampled_from(("op", "version") + FIELDS) | st.text(max_size=8)
_field_values = (_json_values | st.sampled_from(["session", "stop", "resize", MUX_VERSION, "LANG", "C"])
                 | st.dictionaries(st.sampled_from(["LANG", "LC_ALL", "LC_", "PATH", ""]), _json_values, max_size=3))


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


_frame_pieces = st.one_of(
    st.binary(max_size=64),                                                # anything at all
    st.binary(max_size=64).map(_raw_frame),                                # a well-sized frame of junk
    st.dictionaries(st.text(max_size=8), _json_values, max_size=4).map(encode_frame),  # a good frame
)


@_FUZZ
@given(pieces=st.lists(_frame_pieces, max_size=6), cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_fuzz_frame_decoder_yields_objects_or_raises_protocol_error(pieces, cuts):
    data = b"".join(pieces)
    decoder = FrameDecoder()
    try:
        for chunk in _chunks(data, cuts):
            for message in decoder.feed(chunk):
                assert isinstance(message, dict)
    except MuxProtocolError:
        pass
    else:
        assert 0 <= decoder.pending <= len(data)


@_FUZZ
@given(messages=st.lists(st.dictionaries(st.text(max_size=8), _json_values, max_size=4), min_size=1, max_size=3),
       cuts=st.lists(st.integers(min_value=0), max_size=12))
def test_fuzz_good_frames_in_any_chunks_decode_to_the_same_objects(messages, cuts):
    data = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    received = [m for chunk in _chunks(data, cuts) for m in decoder.feed(chunk)]
    # compare through JSON: NaN != NaN, but it encodes to the same text
    assert [json.dumps(m, sort_keys=True) for m in received] == [json.dumps(m, sort_keys=True) for m in messages]
    assert decoder.pending == 0


def _check_parsed(request) -> None:
    """Whatever parse_request accepts satisfies the protocol's limits."""
    if isinstance(request, SessionRequest):
        assert isinstance(request.target, str) and 0 < len(request.target) <= MAX_NAME
        assert request.login is None or (isinstance(request.login, str) and "\0" not in request.login)
        assert request.port is None or (type(request.port) is int and 0 < request.port < 65536)
        assert type(request.pty) is bool
        assert all(k == "LANG" or k.startswith("LC_") for k in request.env) and len(request.env) <= MAX_ENV
    if isinstance(request, (SessionRequest, Resize)):
        assert type(request.cols) is int and type(request.rows) is int
        assert 0 <= request.cols <= MAX_SIZE and 0 <= request.rows <= MAX_SIZE
    else:
        assert isinstance(request, Stop)


@_FUZZ
@given(message=st.dictionaries(_keys, _field_values, max_size=10))
def test_fuzz_parse_request_of_arbitrary_objects_raises_only_protocol_errors(message):
    try:
        _check_parsed(parse_request(message))
    except MuxProtocolError:
        pass


@_FUZZ
@given(op=st.sampled_from(["session", "stop", "resize"]), changes=st.dictionaries(_keys, _field_values, max_size=4),
       removed=st.lists(st.sampled_from(("version",) + FIELDS), max_size=3))
def test_fuzz_parse_request_of_nearly_valid_requests_raises_only_protocol_errors(op, changes, removed):
    message = _session(op=op) | changes
    for key in removed:
        message.pop(key, None)
    message = json.loads(json.dumps(message))  # as it would arrive: through JSON
    try:
        _check_parsed(parse_request(message))
    except MuxProtocolError:
        pass


# ------------------------------------------------------------------------------ socket_path

def test_socket_path_of_a_short_home_is_the_path_itself():
    assert socket_path("/home/alice/.jumpgate/default") == "/home/alice/.jumpgate/default/mux.sock"
    assert socket_path(Path("/p"), dir_fd=7) == "/p/mux.sock"  # dir_fd is not needed, so not used


def test_socket_path_limit_is_107_bytes():
    home = "/" + "h" * (SUN_PATH_MAX - len("/" + SOCKET_NAME) - 1)
    assert len(os.path.join(home, SOCKET_NAME)) == SUN_PATH_MAX
    assert socket_path(home) == os.path.join(home, SOCKET_NAME)
    longer = home + "h"
    assert socket_path(longer) is None
    assert socket_path(longer, dir_fd=5) == f"/proc/self/fd/5/{SOCKET_NAME}"


def test_socket_path_limit_counts_bytes_not_characters():
    home = "/" + "é" * 60  # 61 characters, 121 bytes
    assert len(os.path.join(home, SOCKET_NAME)) <= SUN_PATH_MAX
    assert socket_path(home) is None
    assert socket_path(home, dir_fd=9) == f"/proc/self/fd/9/{SOCKET_NAME}"


@pytest.fixture
def long_home(tmp_path) -> Path:
    home = tmp_path / ("profile-" + "d" * 150)
    home.mkdir(mode=0o700)
    assert len(os.fsencode(home / SOCKET_NAME)) > SUN_PATH_MAX
    return home


@pytest.fixture
def home() -> Iterator[Path]:
    """A profile directory short enough that the tests' own sockets in it fit ``sun_path``
    (tmp_path may not leave room: long homes are ``long_home``'s subject)."""
    base = tempfile.mkdtemp(prefix="jg", dir="/tmp")
    home = Path(base) / "p"
    home.mkdir(mode=0o700)
    yield home
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def claims():
    """Claims a test took; released at teardown so no lock or socket outlives it."""
    taken = []
    yield taken
    for claim in taken:
        claim.release()


def _claim(home: Path, claims: list) -> muxclient.Claim:
    claim = muxclient.claim_socket(home)
    assert claim is not None
    claims.append(claim)
    return claim


def _exchange(claim: muxclient.Claim, client: socket.socket) -> None:
    """One frame each way between a connected client and the claim's listener."""
    client.settimeout(5)
    claim.listener.settimeout(5)
    server, _ = claim.listener.accept()
    with server:
        assert muxclient.peer_uid(server) == os.getuid()
        client.sendall(encode_frame({"op": "stop", "version": MUX_VERSION}))
        assert FrameDecoder().feed(server.recv(4096)) == [{"op": "stop", "version": MUX_VERSION}]
        server.sendall(encode_frame({"event": "stopping"}))
        assert FrameDecoder().feed(client.recv(4096)) == [{"event": "stopping"}]


def test_long_home_socket_is_reached_through_proc_self_fd(long_home, claims):
    assert socket_path(long_home) is None
    claim = _claim(long_home, claims)
    assert claim.listener.getsockname().startswith("/proc/self/fd/")
    assert stat.S_ISSOCK(os.stat(long_home / SOCKET_NAME).st_mode)  # bound in the profile directory itself
    client = muxclient.connect(long_home)
    assert client is not None
    with client:
        _exchange(claim, client)


def test_connect_to_a_missing_long_home_returns_none(tmp_path):
    missing = tmp_path / ("gone-" + "m" * 150)
    before = _open_fds()
    assert muxclient.connect(missing) is None
    assert muxclient.stop_daemon(missing) is False
    assert _open_fds() == before


# ------------------------------------------------------------------------------ claim_socket

def test_claim_creates_a_private_socket_and_a_lock_holding_the_pid(home, claims):
    claim = _claim(home, claims)
    sock_mode = os.stat(home / SOCKET_NAME, follow_symlinks=False).st_mode
    assert stat.S_ISSOCK(sock_mode)
    assert stat.S_IMODE(sock_mode) & 0o077 == 0
    lock = os.stat(home / LOCK_NAME, follow_symlinks=False)
    assert stat.S_ISREG(lock.st_mode) and stat.S_IMODE(lock.st_mode) == 0o600
    assert (home / LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert os.fspath(claim.home) == os.fspath(home)
    client = muxclient.connect(home)
    assert client is not None
    with client:
        _exchange(claim, client)


def test_claim_rewrites_a_lock_file_left_with_a_longer_pid(home, claims):
    (home / LOCK_NAME).write_text("99999999999999999\nleftover\n")
    os.chmod(home / LOCK_NAME, 0o600)
    _claim(home, claims)
    assert (home / LOCK_NAME).read_text() == f"{os.getpid()}\n"


def test_second_claim_is_refused_while_the_first_is_held(home, claims):
    first = _claim(home, claims)
    before = _open_fds()
    assert muxclient.claim_socket(home) is None
    assert _open_fds() == before  # the refused claim closed its descriptors
    inode = os.stat(home / SOCKET_NAME).st_ino
    assert inode == os.stat(SOCKET_NAME, dir_fd=first.dir_fd).st_ino  # and left the holder's socket alone
    client = muxclient.connect(home)
    assert client is not None
    client.close()


def test_release_lets_a_new_claim_succeed(home, claims):
    first = muxclient.claim_socket(home)
    assert first is not None
    first.release()
    assert not (home / SOCKET_NAME).exists()
    assert muxclient.connect(home) is None
    _claim(home, claims)
    assert muxclient.connect(home) is not None


def test_stale_socket_of_a_dead_daemon_is_replaced(home, claims):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(home / SOCKET_NAME))
    dead.listen(1)
    dead.close()  # the daemon died without unlinking its socket
    os.link(home / SOCKET_NAME, home.parent / "stale.sock")  # keeps its inode from being reused
    stale_inode = os.stat(home / SOCKET_NAME).st_ino
    assert muxclient.connect(home) is None
    claim = _claim(home, claims)
    assert os.stat(home / SOCKET_NAME).st_ino != stale_inode
    client = muxclient.connect(home)
    assert client is not None
    with client:
        _exchange(claim, client)


def test_release_leaves_a_successors_socket_alone(home, claims):
    first = muxclient.claim_socket(home)
    assert first is not None
    os.unlink(home / SOCKET_NAME)
    successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with successor:
        successor.bind(str(home / SOCKET_NAME))
        successor.listen(1)
        inode = os.stat(home / SOCKET_NAME).st_ino
        first.release()
        assert os.stat(home / SOCKET_NAME).st_ino == inode
        first.release()  # the daemon releases twice (on stop and on exit): the second does nothing
        assert os.stat(home / SOCKET_NAME).st_ino == inode
        assert muxclient.connect(home) is not None


def test_a_second_release_does_not_touch_the_next_claim(home, claims):
    first = muxclient.claim_socket(home)
    assert first is not None
    first.release()
    second = _claim(home, claims)
    first.release()
    assert os.stat(home / SOCKET_NAME).st_ino == os.stat(SOCKET_NAME, dir_fd=second.dir_fd).st_ino
    assert muxclient.claim_socket(home) is None  # the second claim still holds the lock
    client = muxclient.connect(home)
    assert client is not None
    with client:
        _exchange(second, client)


# ------------------------------------------------------------------------------ the thin client

def test_connect_returns_none_when_nothing_listens(home):
    before = _open_fds()
    assert muxclient.connect(home) is None
    assert _open_fds() == before


def test_connect_returns_none_for_a_socket_file_nobody_listens_on(home):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(home / SOCKET_NAME))
    dead.close()
    before = _open_fds()
    assert muxclient.connect(home) is None
    assert _open_fds() == before


def test_connect_returns_none_for_a_regular_file_named_like_the_socket(home):
    (home / SOCKET_NAME).write_text("not a socket")
    assert muxclient.connect(home) is None


def test_stop_daemon_returns_false_when_no_daemon_runs(home):
    assert muxclient.stop_daemon(home) is False
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(home / SOCKET_NAME))
    dead.close()
    assert muxclient.stop_daemon(home) is False


def test_peer_uid_of_a_socketpair_is_our_uid():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert muxclient.peer_uid(left) == os.getuid()
        assert muxclient.peer_uid(right) == os.getuid()


def _request() -> SessionRequest:
    return SessionRequest(target="node", login=None, port=None, command="true", pty=False, term="dumb",
                          cols=80, rows=24, env={})


@pytest.mark.parametrize("stale", [False, True], ids=["no-socket", "stale-socket"])
def test_run_session_returns_none_when_no_daemon_can_be_reached(home, monkeypatch, stale):
    if stale:
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(home / SOCKET_NAME))
        dead.close()
    spawned = []

    def spawn_failed(where: Path) -> bool:  # no fork inside a pytest-xdist worker
        spawned.append(where)
        return False

    monkeypatch.setattr(muxclient, "spawn_daemon", spawn_failed)
    before = _open_fds()
    assert muxclient.run_session(home, _request()) is None
    assert spawned == [home]  # it did try to start a daemon, then fell back
    assert _open_fds() == before


def test_a_session_the_daemon_ends_before_the_send_returns_is_not_run_again(home, monkeypatch):
    """A quick daemon may read the request, run it, answer and close before ``send_fds``
    returns. The client must then read the answer, not fall back (which would run the
    command a second time in-process): ``sendall(b"")`` on such a socket raises EPIPE."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(home / SOCKET_NAME))
    listener.listen(1)
    answered = threading.Event()
    requests = []

    def daemon() -> None:
        conn, _ = listener.accept()
        with conn:
            decoder = FrameDecoder()
            while not requests:
                data, fds, _, _ = socket.recv_fds(conn, 65536, 8)
                for fd in fds:
                    os.close(fd)
                requests.extend(decoder.feed(data))
            conn.sendall(encode_frame({"event": "opened"}) + encode_frame({"event": "exit", "status": 7}))
        answered.set()

    real_send_fds = socket.send_fds

    def send_fds_then_the_daemon_finishes(sock, buffers, fds):
        sent = real_send_fds(sock, buffers, fds)
        assert answered.wait(10), "the fake daemon did not answer"
        return sent

    monkeypatch.setattr(muxclient.socket, "send_fds", send_fds_then_the_daemon_finishes)
    monkeypatch.setattr(muxclient, "spawn_daemon", lambda where: pytest.fail("a daemon was listening"))
    server = threading.Thread(target=daemon)
    server.start()
    try:
        outcome = muxclient.run_session(home, _request())
    finally:
        server.join(10)
        listener.close()
    assert outcome is not None, "the client fell back in-process after the daemon ran the session"
    assert (outcome.status, outcome.message) == (7, None)
    assert [r["command"] for r in requests] == ["true"]


@pytest.mark.parametrize("requested,sent", [((132, 50), [{"op": "resize", "cols": 80, "rows": 24}]),
                                            ((80, 24), [])], ids=["changed", "unchanged"])
def test_a_resize_before_the_handler_is_installed_is_not_lost(monkeypatch, requested, sent):
    """The request carried ``requested``; if the terminal's size differs once the SIGWINCH
    handler is in (a resize in between would have had no handler), it is sent at once."""
    monkeypatch.setattr(muxclient, "terminal_size", lambda: (80, 24))
    ours, theirs = socket.socketpair()
    with ours, theirs:
        with muxclient._window_changes(muxclient._Link(ours), True, requested):
            pass
        ours.shutdown(socket.SHUT_WR)
        assert FrameDecoder().feed(theirs.recv(65536)) == sent

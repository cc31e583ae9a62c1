"""Message codec tests: every message and body class round-trips, the codec refuses
trailing bytes and wrong message numbers, and decoding arbitrary bytes raises only
ProtocolError (the contract of every parser of peer input, as in OpenSSH's fuzz harnesses).
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pairs import all_message_classes, message_strategy
from ssh_proto import messages as m
from ssh_proto.errors import ProtocolError
from ssh_proto.wire import encode_string, encode_uint32

CLASSES = all_message_classes()
#: Classes whose last field is not ``rest`` (a ``rest`` field absorbs anything that follows).
CLOSED_CLASSES = [c for c in CLASSES if not c._fields or c._fields[-1][1] != "rest"]


def test_every_wire_message_number_has_its_class():
    numbers = {c.number for c in CLASSES if c.number is not None}
    expected = {1, 2, 3, 4, 5, 6, 20, 21, 50, 51, 52, 53, 60, 61, 80, 81, 82} | set(range(90, 101))
    assert numbers == expected


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_message_class_round_trips(cls):
    msg = _sample(cls)
    wire = msg.encode()
    assert cls.decode(wire) == msg
    if cls.number is not None:
        assert wire[0] == cls.number


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CLASSES).flatmap(message_strategy))
def test_arbitrary_field_values_round_trip(msg):
    assert type(msg).decode(msg.encode()) == msg


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=30),
                          st.binary(max_size=100)), max_size=8).map(tuple))
def test_ext_info_round_trips(extensions):
    msg = m.ExtInfo(extensions)
    assert m.ExtInfo.decode(msg.encode()) == msg


@pytest.mark.parametrize("cls", CLOSED_CLASSES, ids=lambda c: c.__name__)
def test_trailing_bytes_are_refused(cls):
    with pytest.raises(ProtocolError):
        cls.decode(_sample(cls).encode() + b"\0")


@pytest.mark.parametrize("cls", [c for c in CLASSES if c.number is not None], ids=lambda c: c.__name__)
def test_wrong_message_number_is_refused(cls):
    with pytest.raises(ProtocolError):
        cls.decode(bytes([(cls.number + 1) % 256]) + bytes(64))


@pytest.mark.parametrize("cls", [c for c in CLASSES if c._fields], ids=lambda c: c.__name__)
def test_every_truncation_is_refused(cls):
    wire = _sample(cls).encode()
    start = 1 if cls.number is not None else 0
    for cut in range(start, len(wire)):
        try:
            decoded = cls.decode(wire[:cut])
        except ProtocolError:
            continue
        # Only a trailing ``rest`` field can absorb a cut; every length-prefixed field refuses it.
        assert cls._fields[-1][1] == "rest"
        assert decoded != _sample(cls)


def _sample(cls):
    values = {"byte": 7, "bool": True, "u32": 0x01020304, "u64": 2**40 + 5, "string": b"str\0ing",
              "text": "t\u00e9xt", "name": "name", "names": ("a", "b-c@d"), "mpint": -(2**70) + 3,
              "cookie": bytes(range(16)), "rest": b"rest", "texts": ("x", "y\u2603")}
    return cls(*(values[kind] for _, kind in cls._fields))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(CLASSES + [m.ExtInfo]), st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(cls, data):
    for payload in (data, bytes([cls.number or 0]) + data):
        try:
            cls.decode(payload)
        except ProtocolError:
            pass


# ---- limits -------------------------------------------------------------------------------------

def test_too_many_keyboard_interactive_responses_are_refused():
    payload = bytes([m.MSG_USERAUTH_INFO_RESPONSE]) + encode_uint32(65) + encode_string(b"") * 65
    with pytest.raises(ProtocolError):
        m.UserauthInfoResponse.decode(payload)
    ok = bytes([m.MSG_USERAUTH_INFO_RESPONSE]) + encode_uint32(64) + encode_string(b"") * 64
    assert len(m.UserauthInfoResponse.decode(ok).responses) == 64


def test_huge_response_count_is_refused_before_allocating():
    with pytest.raises(ProtocolError):
        m.UserauthInfoResponse.decode(bytes([m.MSG_USERAUTH_INFO_RESPONSE]) + encode_uint32(2**32 - 1))


def test_keyboard_interactive_prompts_round_trip_and_are_capped():
    prompts = (("Password: ", False), ("Code: ", True))
    assert m.decode_prompts(m.encode_prompts(prompts)) == prompts
    with pytest.raises(ProtocolError):
        m.decode_prompts(m.encode_prompts((("p", True),) * 65))
    with pytest.raises(ProtocolError):
        m.decode_prompts(m.encode_prompts(prompts) + b"\0")


def test_too_many_extensions_are_refused():
    ext = m.ExtInfo((("a", b""),) * 65).encode()
    with pytest.raises(ProtocolError):
        m.ExtInfo.decode(ext)


def test_invalid_utf8_in_text_is_refused():
    payload = bytes([m.MSG_USERAUTH_BANNER]) + encode_string(b"\xff\xfe") + encode_string(b"")
    with pytest.raises(ProtocolError):
        m.UserauthBanner.decode(payload)


def test_non_ascii_in_name_is_refused():
    with pytest.raises(ProtocolError):
        m.ServiceRequest.decode(bytes([m.MSG_SERVICE_REQUEST]) + encode_string("ssh-\u00fcserauth"))


@pytest.mark.parametrize("names", [b"a,,b", b",a", b"a,", b"a b", b"a\x7f"])
def test_malformed_name_lists_are_refused(names):
    payload = bytes([m.MSG_USERAUTH_FAILURE]) + encode_string(names) + b"\0"
    with pytest.raises(ProtocolError):
        m.UserauthFailure.decode(payload)


def test_messages_are_frozen():
    msg = m.ChannelData(1, b"x")
    with pytest.raises(AttributeError):
        msg.data = b"y"  # type: ignore[misc]

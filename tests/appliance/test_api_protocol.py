"""The internal API codec (appliance/api/protocol.py), sans-IO: bytes in, messages out.

Rules checked: frames are uint32-length-prefixed msgpack maps of at most MAX_FRAME bytes,
the length is refused before the body is buffered, messages carry exactly their fields
and version 1, and the decoder raises ApiProtocolError and nothing else, whatever it is fed.
"""
from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.api.protocol import (MAX_FRAME, ApiProtocolError, ErrorResponse, FrameDecoder, FrameTooLarge, Request,
                                    Response, encode_error, encode_request, encode_response)


def frame(obj) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def decode_one(data: bytes, decoder: FrameDecoder | None = None):
    dec = decoder or FrameDecoder.for_requests()
    dec.feed(data)
    return dec.next_message()


REQ = {"v": 1, "id": 7, "method": "list_nodes", "params": {"labels": {"env": "dev"}}}


# ------------------------------------------------------------------ round trips

def test_request_round_trips():
    req = Request(3, "create_user", {"name": "alice", "logins": ["alice", "root"], "blob": b"\x00\xff"})
    assert decode_one(encode_request(req)) == req


def test_tuples_and_mappings_are_sent_as_arrays_and_maps():
    req = Request(1, "join", {"addresses": ("10.0.0.1", "db1"), "blob": bytearray(b"k")})
    assert decode_one(encode_request(req)).params == {"addresses": ["10.0.0.1", "db1"], "blob": b"k"}


def test_response_and_error_round_trip():
    dec = FrameDecoder.for_responses()
    dec.feed(encode_response(Response(1, {"nodes": [{"name": "db1", "last_seen": 1.5}]})))
    dec.feed(encode_error(ErrorResponse(2, "already_used", "token already used")))
    assert dec.next_message() == Response(1, {"nodes": [{"name": "db1", "last_seen": 1.5}]})
    assert dec.next_message() == ErrorResponse(2, "already_used", "token already used")
    assert dec.next_message() is None


def test_frames_reassemble_from_single_bytes_and_split_across_feeds():
    data = encode_request(Request(1, "a", {})) + encode_request(Request(2, "b", {"x": 1}))
    dec = FrameDecoder.for_requests()
    got = []
    for i in range(len(data)):
        dec.feed(data[i:i + 1])
        while (msg := dec.next_message()) is not None:
            got.append(msg)
    assert got == [Request(1, "a", {}), Request(2, "b", {"x": 1})]
    assert not dec.pending


# ------------------------------------------------------------------ framing limits

def test_oversized_frame_refused_from_its_header_before_the_body_is_buffered():
    dec = FrameDecoder.for_requests()
    dec.feed(b"\x00\x10")           # half a header: nothing to decide yet
    with pytest.raises(FrameTooLarge):
        dec.feed(b"\x00\x01")       # 0x00100001 = MAX_FRAME + 1, no body byte sent
    assert not dec.pending


def test_oversized_frame_refused_even_when_body_bytes_arrive_with_the_header():
    dec = FrameDecoder.for_requests()
    with pytest.raises(FrameTooLarge):
        dec.feed(struct.pack(">I", 2**32 - 1) + b"\x00" * 1000)
    assert not dec.pending


def test_frame_of_exactly_max_size_is_accepted():
    body = msgpack.packb({"v": 1, "id": 1, "method": "m", "params": {"pad": b""}})
    pad = MAX_FRAME - len(body) - 3   # bin32 header: 5 bytes instead of bin8's 2
    data = frame({"v": 1, "id": 1, "method": "m", "params": {"pad": b"\x00" * pad}})
    assert len(data) == 4 + MAX_FRAME
    assert decode_one(data).params["pad"] == b"\x00" * pad


def test_empty_frame_refused():
    with pytest.raises(ApiProtocolError):
        decode_one(b"\x00\x00\x00\x00")


def test_encoder_refuses_a_result_larger_than_a_frame():
    with pytest.raises(FrameTooLarge):
        encode_response(Response(1, b"\x00" * MAX_FRAME))


def test_stream_ending_inside_a_frame_is_an_error_but_between_frames_is_not():
    dec = FrameDecoder.for_requests()
    dec.feed(encode_request(Request(1, "a", {})))
    dec.feed_eof()
    dec.feed(encode_request(Request(2, "a", {}))[:5])
    with pytest.raises(ApiProtocolError):
        dec.feed_eof()


def test_decoder_stays_broken_after_an_error():
    dec = FrameDecoder.for_requests()
    with pytest.raises(ApiProtocolError):
        dec.feed(b"\x00\x00\x00\x00")
    with pytest.raises(ApiProtocolError):
        dec.feed(encode_request(Request(1, "a", {})))
    with pytest.raises(ApiProtocolError):
        dec.next_message()


# ------------------------------------------------------------------ message shape

@pytest.mark.parametrize("change", [
    {"v": 2}, {"v": True}, {"v": 1.0}, {"v": "1"},
    {"id": -1}, {"id": 2**32}, {"id": True}, {"id": 1.0},
    {"method": ""}, {"method": "__class__"}, {"method": "List"}, {"method": "a" * 65}, {"method": 5},
    {"method": "x.y"}, {"params": []}, {"params": None}, {"extra": 1},
], ids=repr)
def test_request_with_wrong_version_or_field_is_refused(change):
    with pytest.raises(ApiProtocolError):
        decode_one(frame({**REQ, **change}))


@pytest.mark.parametrize("missing", sorted(REQ))
def test_request_missing_a_field_is_refused(missing):
    with pytest.raises(ApiProtocolError):
        decode_one(frame({k: v for k, v in REQ.items() if k != missing}))


@pytest.mark.parametrize("obj", [
    {"v": 1, "id": 1, "ok": True},
    {"v": 1, "id": 1, "ok": True, "result": 1, "error": {}},
    {"v": 1, "id": 1, "ok": False, "result": 1},
    {"v": 1, "id": 1, "ok": False, "error": {"code": "x"}},
    {"v": 1, "id": 1, "ok": False, "error": {"code": "Bad Code", "message": ""}},
    {"v": 1, "id": 1, "ok": False, "error": {"code": "x", "message": "m" * 5000}},
    {"v": 1, "id": 1, "ok": 1, "result": 1},
    {"v": 2, "id": 1, "ok": True, "result": 1},
    [1, 2, 3],
], ids=repr)
def test_malformed_response_is_refused(obj):
    with pytest.raises(ApiProtocolError):
        decode_one(frame(obj), FrameDecoder.for_responses())


def test_nested_map_keys_must_be_strings():
    body = msgpack.packb({"v": 1, "id": 1, "method": "m", "params": {"labels": {1: "x"}}},
                         strict_types=False)
    with pytest.raises(ApiProtocolError):
        decode_one(struct.pack(">I", len(body)) + body)


@pytest.mark.parametrize("value", [msgpack.ExtType(5, b"abc"), msgpack.Timestamp(1, 0)], ids=repr)
def test_extension_types_are_refused(value):
    with pytest.raises(ApiProtocolError):
        decode_one(frame({**REQ, "params": {"x": value}}))


def test_deep_nesting_is_refused():
    value = 1
    for _ in range(40):
        value = [value]
    with pytest.raises(ApiProtocolError):
        decode_one(frame({**REQ, "params": {"x": value}}))


def test_container_claiming_more_items_than_the_frame_holds_is_refused():
    body = b"\x84\xa1v\x01\xa2id\x01\xa6method\xa1m\xa6params\xdf\xff\xff\xff\xff"
    with pytest.raises(ApiProtocolError):
        decode_one(struct.pack(">I", len(body)) + body)


def test_invalid_utf8_string_is_refused():
    body = b"\x84\xa1v\x01\xa2id\x01\xa6method\xa2\xff\xfe\xa6params\x80"
    with pytest.raises(ApiProtocolError):
        decode_one(struct.pack(">I", len(body)) + body)


# ------------------------------------------------------------------ property tests

_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20) | \
    st.binary(max_size=20) | st.floats(allow_nan=False, allow_infinity=False)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) |
                       st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


_methods = st.builds(str.__add__, st.sampled_from("abmz"), st.text("az09_", max_size=20))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), _methods,
       st.dictionaries(st.text(max_size=10), _values, max_size=5))
def test_any_valid_request_round_trips(msg_id, method, params):
    req = Request(msg_id, method, params)
    assert decode_one(encode_request(req)) == req


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(1, 64), max_size=10), st.booleans())
def test_arbitrary_bytes_raise_only_api_protocol_error(data, cuts, responses):
    dec = FrameDecoder.for_responses() if responses else FrameDecoder.for_requests()
    try:
        pos = 0
        for cut in cuts + [len(data)]:
            dec.feed(data[pos:pos + cut])
            pos += cut
            while dec.next_message() is not None:
                pass
        dec.feed_eof()
    except ApiProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(_values, st.booleans())
def test_arbitrary_msgpack_values_raise_only_api_protocol_error(value, responses):
    dec = FrameDecoder.for_responses() if responses else FrameDecoder.for_requests()
    try:
        decode_one(frame(value), dec)
    except ApiProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "id", "method", "params", "ok", "result", "error", "x"]),
                       _values | st.just(1) | st.just({"code": "c", "message": "m"}), max_size=6), st.booleans())
def test_near_miss_messages_raise_only_api_protocol_error(obj, responses):
    dec = FrameDecoder.for_responses() if responses else FrameDecoder.for_requests()
    try:
        decode_one(frame(obj), dec)
    except ApiProtocolError:
        pass


# ---- the push stream (jumpgate-watch)


def test_push_round_trips_and_only_pushes_are_accepted_by_a_watcher():
    from appliance.api.protocol import Push, encode_push
    frame = encode_push(Push("user", {"name": "alice", "generation": 2, "exists": False}))
    decoder = FrameDecoder.for_pushes()
    decoder.feed(frame)
    assert decoder.next_message() == Push("user", {"name": "alice", "generation": 2, "exists": False})
    decoder = FrameDecoder.for_pushes()
    decoder.feed(encode_response(Response(1, {})))
    with pytest.raises(ApiProtocolError):
        decoder.next_message()


@pytest.mark.parametrize("body", [{"v": 1, "push": "user"}, {"v": 1, "push": "User", "data": {}},
                                  {"v": 1, "push": "user", "data": []}, {"v": 2, "push": "user", "data": {}},
                                  {"v": 1, "push": "user", "data": {}, "extra": 1}])
def test_malformed_push_refused(body):
    import msgpack
    raw = msgpack.packb(body)
    decoder = FrameDecoder.for_pushes()
    decoder.feed(len(raw).to_bytes(4, "big") + raw)
    with pytest.raises(ApiProtocolError):
        decoder.next_message()

"""The proxy's signed relay line and the node's check of it (``appliance.relay``), sans-IO.

Each test names the rule (1-5) of the module docstring it checks. Certificates are issued
with :func:`ssh_proto.certs.sign_certificate`; hostile statements are written field by field
with the :mod:`ssh_proto.wire` encoders and signed with the proxy's real key, so that they
get past rule 2 and reach the parser behind it. The verifier's clock is injected: every
check runs at a fixed ``NOW`` unless a test moves it.
"""
from __future__ import annotations

import base64
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.relay import NONCE_SIZE, RELAY_PREFIX, WINDOW, RelayVerifier, relay_line
from ssh_proto.certs import sign_certificate
from ssh_proto.keys import CERT_TYPE_HOST, CERT_TYPE_USER, PrivateKey
from ssh_proto.preamble import MAX_PREAMBLE, Preamble, PreambleError, PreambleReader
from ssh_proto.wire import Reader, encode_string, encode_uint32, encode_uint64

NOW = 1_750_000_000
HOUR = 3600
NODE = "node1"
PROXY = "proxy1"
CLIENT = ("203.0.113.5", 51234)
RELAY = ("192.0.2.10", 40022)   # the proxy's end of its TCP connection to the node
CONTEXT = b"jumpgate-relay-v1"

HOST_CA = PrivateKey.generate("ssh-ed25519")
OTHER_CA = PrivateKey.generate("ssh-ed25519")
USER_CA = PrivateKey.generate("ssh-ed25519")


def identity(*, ca: PrivateKey = HOST_CA, key_id: str = f"proxy:{PROXY}", principals=(PROXY, f"{PROXY}.testcl"),
             cert_type: int = CERT_TYPE_HOST, valid: tuple[int, int] = (NOW - HOUR, NOW + HOUR)):
    """(key, certificate) as the cluster's CA issues them; by default a valid proxy's."""
    key = PrivateKey.generate("ssh-ed25519")
    cert = sign_certificate(ca, key.public_key, cert_type=cert_type, key_id=key_id, principals=list(principals),
                            valid_after=valid[0], valid_before=valid[1])
    return key, cert


PROXY_KEY, PROXY_CERT = identity()


class Clock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now


def verifier(clock: Clock | None = None, node: str = NODE, cas=(HOST_CA,), **how) -> RelayVerifier:
    return RelayVerifier(lambda: node, lambda: [ca.public_key for ca in cas], clock=clock or Clock(), **how)


def make_line(*, client=CLIENT, relay=RELAY, node=NODE, key=PROXY_KEY, cert=PROXY_CERT, now=NOW, nonce=None) -> bytes:
    """The relay line as ``check`` gets it: without its CR LF."""
    line = relay_line(client=client, relay=relay, node=node, host_key=key, host_cert=cert, now=now, nonce=nonce)
    assert line.endswith(b"\r\n") and line.startswith(RELAY_PREFIX)
    return line[:-2]


def statement(*, context=CONTEXT, client=CLIENT, relay=RELAY, node=NODE, issued=NOW, nonce=b"n" * NONCE_SIZE,
              client_ip=None, relay_ip=None, trailer=b"") -> bytes:
    """A statement written by hand, fields as raw as a test needs them."""
    client_ip = client[0].encode() if client_ip is None else client_ip
    relay_ip = relay[0].encode() if relay_ip is None else relay_ip
    node = node.encode() if isinstance(node, str) else node
    return b"".join((encode_string(context), encode_string(client_ip), encode_uint32(client[1]),
                     encode_string(relay_ip), encode_uint32(relay[1]), encode_string(node),
                     encode_uint64(issued), encode_string(nonce))) + trailer


def pack(cert_blob: bytes, signed: bytes, signature: bytes, trailer: bytes = b"") -> bytes:
    body = encode_string(cert_blob) + encode_string(signed) + encode_string(signature) + trailer
    return RELAY_PREFIX + base64.b64encode(body)


def signed_line(signed: bytes, *, key=PROXY_KEY, cert=PROXY_CERT) -> bytes:
    """A line whose statement is ``signed``, truly signed by ``key`` (past rule 2)."""
    return pack(cert.blob, signed, key.sign(signed))


def unpack(line: bytes) -> tuple[bytes, bytes, bytes]:
    r = Reader(base64.b64decode(line[len(RELAY_PREFIX):]))
    fields = r.string(), r.string(), r.string()
    r.finish()
    return fields


def refused(line: bytes, peer=RELAY, v: RelayVerifier | None = None) -> str:
    with pytest.raises(PreambleError) as info:
        (v or verifier()).check(line, peer)
    return str(info.value)


# ---------------------------------------------------------------- round trips


def test_round_trip_ipv4_gives_the_client():
    assert verifier().check(make_line(), RELAY) == CLIENT


def test_round_trip_ipv6_client_and_relay():
    client, relay = ("2001:db8::5", 6000, 0, 0), ("2001:db8::a", 40022, 0, 0)
    line = make_line(client=client, relay=relay)
    assert verifier().check(line, relay) == ("2001:db8::5", 6000)


def test_round_trip_ipv6_is_written_canonically():
    line = make_line(client=("2001:0DB8:0:0::0005", 6000), relay=("2001:db8::a", 40022))
    assert verifier().check(line, ("2001:db8:0::a", 40022, 0, 0)) == ("2001:db8::5", 6000)


def test_round_trip_ipv4_mapped_client_and_relay_are_written_as_ipv4():
    line = make_line(client=("::ffff:203.0.113.5", 51234, 0, 0), relay=("::ffff:192.0.2.10", 40022, 0, 0))
    assert verifier().check(line, RELAY) == CLIENT
    # and a dual-stack node that sees its peer as IPv4-mapped matches it too
    line = make_line(nonce=b"m" * NONCE_SIZE)
    assert verifier().check(line, ("::ffff:192.0.2.10", 40022, 0, 0)) == CLIENT


def test_round_trip_ipv6_scoped_peer_matches():
    relay = ("fe80::1", 40022)
    line = make_line(relay=relay)
    assert verifier().check(line, ("fe80::1%eth0", 40022, 0, 2)) == CLIENT


def test_round_trip_through_the_preamble_reader():
    wire = relay_line(client=CLIENT, relay=RELAY, node=NODE, host_key=PROXY_KEY, host_cert=PROXY_CERT, now=NOW)
    found = PreambleReader(RELAY_PREFIX).feed(wire + b"SSH-2.0-x\r\n")
    assert isinstance(found, Preamble) and found.rest == b"SSH-2.0-x\r\n"
    assert verifier().check(found.line, RELAY) == CLIENT


def test_relay_line_uses_the_real_clock_and_a_fresh_nonce_by_default():
    now = int(time.time())
    key, cert = identity(valid=(now - HOUR, now + HOUR))
    a = relay_line(client=CLIENT, relay=RELAY, node=NODE, host_key=key, host_cert=cert)
    b = relay_line(client=CLIENT, relay=RELAY, node=NODE, host_key=key, host_cert=cert)
    assert unpack(a[:-2])[1][-NONCE_SIZE:] != unpack(b[:-2])[1][-NONCE_SIZE:]
    v = verifier(Clock(time.time()))
    assert v.check(a[:-2], RELAY) == CLIENT
    assert v.check(b[:-2], RELAY) == CLIENT


def test_relay_line_refuses_to_exceed_the_preamble_limit():
    with pytest.raises(ValueError):
        relay_line(client=CLIENT, relay=RELAY, node="n" * MAX_PREAMBLE, host_key=PROXY_KEY, host_cert=PROXY_CERT)


# ---------------------------------------------------------------- rule 1: only a proxy may vouch


def test_rule1_a_node_certificate_cannot_vouch():
    key, cert = identity(key_id=f"node:{NODE}", principals=[NODE])
    assert "not a proxy" in refused(make_line(key=key, cert=cert))


def test_rule1_a_user_certificate_cannot_vouch():
    key, cert = identity(ca=HOST_CA, cert_type=CERT_TYPE_USER)
    refused(make_line(key=key, cert=cert))


def test_rule1_a_user_ca_certificate_cannot_vouch():
    key, cert = identity(ca=USER_CA, cert_type=CERT_TYPE_USER)
    refused(make_line(key=key, cert=cert), v=verifier(cas=(HOST_CA,)))


def test_rule1_a_certificate_of_another_ca_cannot_vouch():
    key, cert = identity(ca=OTHER_CA)
    refused(make_line(key=key, cert=cert))


def test_rule1_trusted_cas_are_read_at_each_check():
    cas = [HOST_CA]
    v = RelayVerifier(lambda: NODE, lambda: [ca.public_key for ca in cas], clock=Clock())
    assert v.check(make_line(nonce=b"1" * NONCE_SIZE), RELAY) == CLIENT
    cas[:] = [OTHER_CA]
    refused(make_line(nonce=b"2" * NONCE_SIZE), v=v)


def test_rule1_no_trusted_ca_refuses_everything():
    refused(make_line(), v=verifier(cas=()))


def test_rule1_an_expired_certificate_cannot_vouch():
    key, cert = identity(valid=(NOW - 2 * HOUR, NOW))
    refused(make_line(key=key, cert=cert))


def test_rule1_a_not_yet_valid_certificate_cannot_vouch():
    key, cert = identity(valid=(NOW + 1, NOW + HOUR))
    refused(make_line(key=key, cert=cert))


def test_rule1_certificate_validity_follows_the_injected_clock():
    key, cert = identity(valid=(NOW - HOUR, NOW + 10))
    clock = Clock()
    v = verifier(clock)
    assert v.check(make_line(key=key, cert=cert, nonce=b"1" * NONCE_SIZE), RELAY) == CLIENT
    clock.now = NOW + 10
    refused(make_line(key=key, cert=cert, now=NOW + 10, nonce=b"2" * NONCE_SIZE), v=v)


def test_rule1_key_id_proxy_with_an_empty_name_cannot_vouch():
    # "*" would match the empty name: only the key id check stands in the way
    key, cert = identity(key_id="proxy:", principals=["*", PROXY])
    assert "not a proxy" in refused(make_line(key=key, cert=cert))


@pytest.mark.parametrize("key_id", [PROXY, f"Proxy:{PROXY}", f"proxy{PROXY}", f" proxy:{PROXY}",
                                    f"user:{PROXY}", f"node:proxy:{PROXY}"])
def test_rule1_key_id_not_of_the_proxy_form_cannot_vouch(key_id):
    key, cert = identity(key_id=key_id)
    refused(make_line(key=key, cert=cert))


def test_rule1_proxy_key_id_whose_name_is_not_a_principal_cannot_vouch():
    key, cert = identity(key_id="proxy:proxy2", principals=[PROXY, NODE])
    refused(make_line(key=key, cert=cert))


@pytest.mark.parametrize("principals", [["*"], ["proxy?"], ["prox*", "node1"]])
def test_rule1_a_pattern_principal_does_not_name_the_proxy(principals):
    key, cert = identity(principals=principals)
    assert "does not name 'proxy1' exactly" in refused(make_line(key=key, cert=cert))


def test_rule1_proxy_name_matches_a_principal_ignoring_case():
    # host names ignore case (validate_host_certificate); so does the key id's name
    key, cert = identity(key_id="proxy:Proxy1", principals=[PROXY])
    assert verifier().check(make_line(key=key, cert=cert), RELAY) == CLIENT


def test_rule1_a_plain_key_instead_of_a_certificate_cannot_vouch():
    signed = statement()
    line = pack(PROXY_KEY.public_key.blob, signed, PROXY_KEY.sign(signed))
    assert "without a certificate" in refused(line)


def test_rule1_the_ca_itself_cannot_vouch_without_a_certificate():
    signed = statement()
    refused(pack(HOST_CA.public_key.blob, signed, HOST_CA.sign(signed)))


# ---------------------------------------------------------------- rule 2: the certified key signed it


def test_rule2_signature_by_another_key_is_refused():
    other = PrivateKey.generate("ssh-ed25519")
    signed = statement()
    assert "bad signature" in refused(pack(PROXY_CERT.blob, signed, other.sign(signed)))


def test_rule2_signature_by_the_ca_is_refused():
    signed = statement()
    assert "bad signature" in refused(pack(PROXY_CERT.blob, signed, HOST_CA.sign(signed)))


def test_rule2_signature_by_another_proxy_with_this_proxys_certificate_is_refused():
    key, _ = identity()
    assert "bad signature" in refused(make_line(key=key, cert=PROXY_CERT))


@pytest.mark.parametrize("position", [0, 3, 4, 30, -17, -1])
def test_rule2_flipped_byte_in_the_statement_is_refused(position):
    cert, signed, signature = unpack(make_line())
    flipped = bytearray(signed)
    flipped[position] ^= 0x01
    assert "bad signature" in refused(pack(cert, bytes(flipped), signature))


@pytest.mark.parametrize("position", [3, 4, 12, 19, 20, 50, -1])
def test_rule2_flipped_byte_in_the_signature_is_refused(position):
    cert, signed, signature = unpack(make_line())
    flipped = bytearray(signature)
    flipped[position] ^= 0x80
    assert "bad signature" in refused(pack(cert, signed, bytes(flipped)))


def test_rule2_empty_signature_is_refused():
    cert, signed, _ = unpack(make_line())
    refused(pack(cert, signed, b""))


def test_rule2_signature_with_another_algorithm_name_is_refused():
    cert, signed, signature = unpack(make_line())
    r = Reader(signature)
    r.string()
    raw = r.string()
    refused(pack(cert, signed, encode_string("ecdsa-sha2-nistp256") + encode_string(raw)))


# ---------------------------------------------------------------- rule 3: this node, from that relay


def test_rule3_statement_for_another_node_is_refused():
    assert "is for node" in refused(make_line(node="node2"))


def test_rule3_node_name_matches_ignoring_case():
    assert verifier(node="NODE1").check(make_line(node="Node1"), RELAY) == CLIENT


def test_rule3_node_name_is_read_at_each_check():
    names = ["node1"]
    v = RelayVerifier(lambda: names[0], lambda: [HOST_CA.public_key], clock=Clock())
    assert v.check(make_line(nonce=b"1" * NONCE_SIZE), RELAY) == CLIENT
    names[0] = "node1-renamed"
    refused(make_line(nonce=b"2" * NONCE_SIZE), v=v)


def test_rule3_node_name_is_not_a_prefix_match():
    refused(make_line(node="node"))
    refused(make_line(node="node10"))


@pytest.mark.parametrize("peer", [("192.0.2.11", 40022), ("192.0.2.10", 40023), ("2001:db8::a", 40022),
                                  ("::ffff:192.0.2.11", 40022, 0, 0), (CLIENT[0], CLIENT[1])])
def test_rule3_relay_address_other_than_the_peer_is_refused(peer):
    assert "not this connection's peer" in refused(make_line(), peer=peer)


@pytest.mark.parametrize("peer", [None, "", "/run/node.sock", ("localhost", 40022), (), ("192.0.2.10",)])
def test_rule3_unknown_or_non_ip_peer_is_refused(peer):
    assert "not this connection's peer" in refused(make_line(), peer=peer)


# ---------------------------------------------------------------- rule 4: fresh, either side of now


@pytest.mark.parametrize("offset", [-WINDOW - 1, WINDOW + 1, -10 * WINDOW, 10 * WINDOW])
def test_rule4_issued_outside_the_window_is_refused(offset):
    assert "issued" in refused(make_line(now=NOW + offset))


@pytest.mark.parametrize("offset", [-WINDOW, WINDOW, 0, -1, 1])
def test_rule4_issued_within_the_window_is_accepted(offset):
    assert verifier().check(make_line(now=NOW + offset), RELAY) == CLIENT


def test_rule4_fractional_time_past_the_window_is_refused():
    refused(make_line(now=NOW), v=verifier(Clock(NOW + WINDOW + 0.5)))


def test_rule4_custom_window():
    v = verifier(window=5)
    refused(make_line(now=NOW - 6), v=v)
    assert v.check(make_line(now=NOW - 5), RELAY) == CLIENT


def test_rule4_issued_at_the_end_of_time_is_refused():
    refused(signed_line(statement(issued=2**64 - 1)))


# ---------------------------------------------------------------- rule 5: no replay


def test_rule5_the_same_line_twice_is_refused():
    v = verifier()
    line = make_line()
    assert v.check(line, RELAY) == CLIENT
    assert "replayed" in refused(line, v=v)


def test_rule5_replay_is_refused_until_the_line_itself_expires():
    # Checked first at the earliest moment rule 4 allows, replayed at the latest: the
    # nonce must still be remembered (2 * WINDOW covers the whole span of rule 4).
    clock = Clock(NOW - WINDOW)
    v = verifier(clock)
    line = make_line(now=NOW)
    assert v.check(line, RELAY) == CLIENT
    clock.now = NOW + WINDOW
    assert "replayed" in refused(line, v=v)


def test_rule5_nonce_is_accepted_again_after_two_windows():
    clock = Clock()
    v = verifier(clock)
    nonce = b"r" * NONCE_SIZE
    assert v.check(make_line(nonce=nonce), RELAY) == CLIENT
    clock.now = NOW + 2 * WINDOW
    assert "replayed" in refused(make_line(now=clock.now, nonce=nonce), v=v)
    clock.now = NOW + 2 * WINDOW + 1
    assert v.check(make_line(now=clock.now, nonce=nonce), RELAY) == CLIENT


def test_rule5_lines_with_different_nonces_are_all_accepted():
    v = verifier()
    for i in range(20):
        assert v.check(make_line(nonce=bytes([i]) * NONCE_SIZE), RELAY) == CLIENT


def test_rule5_max_nonces_evicts_the_oldest():
    v = verifier(max_nonces=2)
    first, second, third = (make_line(nonce=bytes([i]) * NONCE_SIZE) for i in (1, 2, 3))
    for line in (first, second, third):
        assert v.check(line, RELAY) == CLIENT
    assert "replayed" in refused(third, v=v)
    assert "replayed" in refused(second, v=v)
    assert v.check(first, RELAY) == CLIENT   # forgotten: the bound is what bounds memory


def test_rule5_refused_lines_are_not_remembered():
    # a line refused for another rule must not use up the proxy's nonce
    v = verifier()
    line = make_line()
    refused(line, peer=("192.0.2.99", 1), v=v)
    assert v.check(line, RELAY) == CLIENT


# ---------------------------------------------------------------- malformed lines


@pytest.mark.parametrize("tail", [b"", b"!!!!", b"QUJD\n", b"QU JD", b"QUJ", b"QUJDRA", "é".encode()])
def test_malformed_not_base64_is_refused(tail):
    refused(RELAY_PREFIX + tail)


def test_malformed_line_without_the_prefix_is_refused():
    line = make_line()
    assert "not a relay line" in refused(line[len(RELAY_PREFIX):])
    refused(b"JUMPGATE-RELAX" + line[len(RELAY_PREFIX) - 1:])


@pytest.mark.parametrize("junk", [b"\x00", b"junk", b"\x00\x00\x00\x05abc", b"\xff\xff\xff\xff" + b"a" * 8])
def test_malformed_base64_of_junk_is_refused(junk):
    refused(RELAY_PREFIX + base64.b64encode(junk))


def test_malformed_trailing_bytes_after_the_three_strings_are_refused():
    cert, signed, signature = unpack(make_line())
    assert "malformed" in refused(pack(cert, signed, signature, trailer=b"\x00"))


def test_malformed_missing_signature_is_refused():
    cert, signed, _ = unpack(make_line())
    refused(RELAY_PREFIX + base64.b64encode(encode_string(cert) + encode_string(signed)))


def test_malformed_oversized_fields_are_refused():
    cert, signed, signature = unpack(make_line())
    assert "malformed" in refused(pack(cert, signed, signature + b"\x00" * 4096))
    assert "malformed" in refused(pack(cert + b"\x00" * 4096, signed, signature))
    assert "malformed" in refused(pack(cert, signed + b"\x00" * 4096, signature))


def test_malformed_certificate_blob_is_refused():
    cert, signed, signature = unpack(make_line())
    refused(pack(cert[:-1], signed, signature))
    refused(pack(b"\x00\x00\x00\x07ssh-dss" + cert[11:], signed, signature))


def test_malformed_wrong_context_is_refused():
    assert "unknown kind" in refused(signed_line(statement(context=b"jumpgate-relay-v2")))
    refused(signed_line(statement(context=b"")))


@pytest.mark.parametrize("ip", [b"", b"localhost", b"10.0.0.256", b"10.0.0", b"1.2.3.4 ", b"::g", b"10.0.0.1/32",
                                b"\xff", b"1" * 65])
def test_malformed_bad_client_ip_text_is_refused(ip):
    refused(signed_line(statement(client_ip=ip)))


@pytest.mark.parametrize("ip", [b"", b"example.org", b"192.0.2.10:40022", b"\x00"])
def test_malformed_bad_relay_ip_text_is_refused(ip):
    refused(signed_line(statement(relay_ip=ip)))


@pytest.mark.parametrize("port", [0, 65536, 2**32 - 1])
def test_malformed_client_port_out_of_range_is_refused(port):
    assert "port" in refused(signed_line(statement(client=(CLIENT[0], port))))


@pytest.mark.parametrize("port", [0, 65536])
def test_malformed_relay_port_out_of_range_is_refused(port):
    assert "port" in refused(signed_line(statement(relay=(RELAY[0], port))), peer=(RELAY[0], port))


@pytest.mark.parametrize("port", [1, 65535])
def test_ports_at_the_range_edges_are_accepted(port):
    line = make_line(client=(CLIENT[0], port), relay=(RELAY[0], port))
    assert verifier().check(line, (RELAY[0], port)) == (CLIENT[0], port)


@pytest.mark.parametrize("size", [0, 1, NONCE_SIZE - 1, NONCE_SIZE + 1, 64])
def test_malformed_nonce_of_the_wrong_size_is_refused(size):
    refused(signed_line(statement(nonce=b"x" * size)))


def test_malformed_trailing_bytes_after_the_statement_are_refused():
    assert "malformed" in refused(signed_line(statement(trailer=b"\x00")))


def test_malformed_truncated_statement_is_refused():
    signed = statement()
    for cut in (0, 4, len(signed) // 2, len(signed) - 1):
        refused(signed_line(signed[:cut]))


@pytest.mark.parametrize("node", [b"\xff\xfe", b"n" * 254])
def test_malformed_node_name_is_refused(node):
    refused(signed_line(statement(node=node)))


def test_hand_built_statement_is_accepted_when_well_formed():
    # the hand encoder above agrees with the module's: malformed cases differ by one field
    assert verifier().check(signed_line(statement()), RELAY) == CLIENT


# ---------------------------------------------------------------- properties: only PreambleError


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_property_arbitrary_bytes_after_the_prefix_only_raise_preamble_error(tail):
    with pytest.raises(PreambleError):
        verifier().check(RELAY_PREFIX + tail, RELAY)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=200), st.binary(max_size=120),
       st.binary(max_size=8))
def test_property_arbitrary_fields_only_raise_preamble_error(cert, signed, signature, trailer):
    with pytest.raises(PreambleError):
        verifier().check(pack(cert, signed, signature, trailer), RELAY)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_property_any_change_to_a_valid_line_is_refused(data):
    body = bytearray(base64.b64decode(make_line()[len(RELAY_PREFIX):]))
    position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    body[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(PreambleError):
        verifier().check(RELAY_PREFIX + base64.b64encode(bytes(body)), RELAY)


ip_texts = st.one_of(st.ip_addresses().map(lambda a: str(a).encode()), st.binary(max_size=70),
                     st.sampled_from([b"", b"::ffff:1.2.3.4", b"fe80::1%eth0", b"1.2.3.4"]))


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.binary(max_size=200),
    st.builds(statement,
              context=st.sampled_from([CONTEXT, b"", b"jumpgate-relay-v0"]),
              client_ip=ip_texts, relay_ip=ip_texts,
              client=st.tuples(st.just(""), st.integers(min_value=0, max_value=2**32 - 1)),
              relay=st.tuples(st.just(""), st.integers(min_value=0, max_value=2**32 - 1)),
              node=st.one_of(st.text(max_size=20), st.binary(max_size=300), st.just(NODE)),
              issued=st.one_of(st.integers(min_value=0, max_value=2**64 - 1), st.just(NOW)),
              nonce=st.binary(max_size=20),
              trailer=st.one_of(st.just(b""), st.binary(max_size=4)))))
def test_property_signed_statements_only_raise_preamble_error(signed):
    # Signed by the real proxy, so every one reaches the statement parser and rules 3-5.
    try:
        answer = verifier().check(signed_line(signed), RELAY)
    except PreambleError:
        return
    ip, port = answer
    assert isinstance(ip, str) and 0 < port < 65536

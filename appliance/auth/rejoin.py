"""The re-join proof: how a joiner shows it holds the host key a taken name is registered with.

A join token proves that an admin let *a* host in; it says nothing about *which* host. When
the name a joiner asks for is already registered (docs/security.md J2), the join goes
through only if the joiner also signs, with the registered host key, this message::

    string  "jumpgate-rejoin-v1@jumpgate"
    string  session_id        the SSH session identifier of the join connection (RFC 4253 §7.2)
    string  kind              "node" or "proxy"
    string  name              the name asked for
    string  host key          the public key blob the new certificate is for

The session identifier binds the signature to the one connection it was made on, exactly
as an SSH ``publickey`` signature is bound (RFC 4252 §7): a proof seen on one join cannot
be replayed on another, and the auth server (verified by the token's CA pin) computes the
same value on its side, so no extra round trip or stored challenge is needed.

>>> data = proof_data(b"\\x01" * 32, "node", "db1", b"blob")
>>> data[:31]
b'\\x00\\x00\\x00\\x1bjumpgate-rejoin-v1@jumpgate'
"""
from __future__ import annotations

from ssh_proto.keys import PrivateKey, PublicKey
from ssh_proto.wire import Writer

__all__ = ["PROOF_CONTEXT", "proof_data", "sign_proof", "verify_proof"]

PROOF_CONTEXT = b"jumpgate-rejoin-v1@jumpgate"


def proof_data(session_id: bytes, kind: str, name: str, host_key_blob: bytes) -> bytes:
    """The bytes a re-joining host signs (see the module docstring)."""
    w = Writer()
    for part in (PROOF_CONTEXT, bytes(session_id), kind.encode(), name.encode(), bytes(host_key_blob)):
        w.string(part)
    return w.getvalue()


def sign_proof(key: PrivateKey, session_id: bytes, kind: str, name: str) -> bytes:
    """The joiner's side: an SSH signature blob over :func:`proof_data` for its own key."""
    return key.sign(proof_data(session_id, kind, name, key.public_key.blob))


def verify_proof(registered: PublicKey, proof: bytes, session_id: bytes, kind: str, name: str,
                 host_key_blob: bytes) -> bool:
    """The auth server's side: True only for a signature by ``registered`` over this
    connection's :func:`proof_data` (an empty session id never verifies)."""
    if not session_id or not isinstance(proof, (bytes, bytearray)) or not proof:
        return False
    return registered.verify(bytes(proof), proof_data(session_id, kind, name, host_key_blob))

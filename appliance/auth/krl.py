"""OpenSSH key revocation lists (KRL), sans-IO: what sshd's ``RevokedKeys`` reads.

Agentless OpenSSH nodes do not hear the auth server's push stream; an admin gives them a KRL
(``jumpgate ctl auth export --type krl > /etc/ssh/jumpgate.krl``, then ``RevokedKeys`` in
sshd_config) listing the serials of every user certificate that was revoked (its user deleted
or reset) and has not expired yet (docs/security.md R5). The format is OpenSSH's
PROTOCOL.krl: a header, then one certificates section for the user CA with a serial-list
subsection. No signature section (OpenSSH 9.4 and later refuse one): the file is handed over
by the admin, as sshd_config is.

>>> from ssh_proto.keys import PrivateKey
>>> blob = encode_krl(PrivateKey.generate("ssh-ed25519").public_key, [7, 3], generated=0)
>>> blob[:8], len(blob) > 40
(b'SSHKRL\\n\\x00', True)
"""
from __future__ import annotations

from collections.abc import Iterable

from ssh_proto.keys import PublicKey
from ssh_proto.wire import encode_string, encode_uint32, encode_uint64

__all__ = ["KRL_MAGIC", "encode_krl"]

KRL_MAGIC = b"SSHKRL\n\x00"
KRL_FORMAT_VERSION = 1
KRL_SECTION_CERTIFICATES = 1
KRL_SECTION_CERT_SERIAL_LIST = 0x20


def encode_krl(ca: PublicKey, serials: Iterable[int], *, generated: int, comment: str = "") -> bytes:
    """A KRL revoking ``serials`` of certificates signed by ``ca``; ``generated`` (Unix
    seconds) is also its version, so a newer export always has a higher one."""
    header = (KRL_MAGIC + encode_uint32(KRL_FORMAT_VERSION) + encode_uint64(generated)
              + encode_uint64(generated) + encode_uint64(0) + encode_string(b"")
              + encode_string(comment.encode()))
    ordered = sorted(set(int(s) for s in serials))
    if not ordered:
        return header
    serial_list = b"".join(encode_uint64(s) for s in ordered)
    section = (encode_string(ca.blob) + encode_string(b"")
               + bytes([KRL_SECTION_CERT_SERIAL_LIST]) + encode_string(serial_list))
    return header + bytes([KRL_SECTION_CERTIFICATES]) + encode_string(section)

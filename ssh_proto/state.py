"""Which messages each side may send in each phase of a connection: one table.

Everything that decides whether an incoming message number is acceptable lives in this
file (docs/security.md T11, the defence against the state-confusion bugs of
paramiko CVE-2018-7750 / CVE-2018-1000805 and Erlang/OTP CVE-2025-32433).

Theory of operation. A connection moves through the phases below in order; key
re-exchange can overlay any phase after the first key exchange. ``ALLOWED`` maps
``(phase, role of the *sender*)`` to the message numbers that sender may send. The
transport layer's own messages (DISCONNECT, IGNORE, UNIMPLEMENTED, DEBUG) are accepted in
every phase except during a *strict* initial key exchange (rule T1; DISCONNECT even then,
since it ends the connection all the same), and KEXINIT starts a
re-exchange in every phase after the first. While a key exchange is running only
key-exchange messages may arrive (RFC 4253 §7.1, rule T8). A known message number that is
not in the table for the current phase is a protocol error; a number from the ranges
reserved for unknown extensions (128-255) is answered with UNIMPLEMENTED (RFC 4253 §11.4).
"""
from __future__ import annotations

import enum

from . import messages as m
from .errors import ProtocolError


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> "Role":
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class Phase(enum.Enum):
    KEX_INITIAL = "kex-initial"   # before the first NEWKEYS in each direction
    SERVICE = "service"           # keys in place, service not yet accepted
    AUTH = "auth"                 # ssh-userauth running
    OPEN = "open"                 # authenticated: the connection protocol runs


TRANSPORT_GENERIC = frozenset({m.MSG_DISCONNECT, m.MSG_IGNORE, m.MSG_UNIMPLEMENTED, m.MSG_DEBUG})
KEX_MESSAGES = frozenset({m.MSG_KEXINIT, m.MSG_NEWKEYS} | set(range(30, 50)))
CONNECTION_MESSAGES = frozenset(range(m.MSG_GLOBAL_REQUEST, m.MSG_CHANNEL_FAILURE + 1))

C, S = Role.CLIENT, Role.SERVER

#: (phase, sender) -> message numbers that sender may send in that phase, besides the
#: transport-generic ones and KEXINIT.  EXT_INFO is further limited to one position by
#: the connection (RFC 8308 §2.4): right after NEWKEYS, or (server) before USERAUTH_SUCCESS.
ALLOWED: dict[tuple[Phase, Role], frozenset[int]] = {
    (Phase.SERVICE, C): frozenset({m.MSG_SERVICE_REQUEST, m.MSG_EXT_INFO}),
    (Phase.SERVICE, S): frozenset({m.MSG_SERVICE_ACCEPT, m.MSG_EXT_INFO}),
    (Phase.AUTH, C): frozenset({m.MSG_USERAUTH_REQUEST, m.MSG_USERAUTH_INFO_RESPONSE}),
    (Phase.AUTH, S): frozenset({m.MSG_USERAUTH_FAILURE, m.MSG_USERAUTH_SUCCESS, m.MSG_USERAUTH_BANNER,
                                m.MSG_USERAUTH_PK_OK, m.MSG_EXT_INFO}),
    # RFC 4252 §5.1: auth requests after success are ignored, not fatal.
    (Phase.OPEN, C): CONNECTION_MESSAGES | {m.MSG_USERAUTH_REQUEST},
    (Phase.OPEN, S): CONNECTION_MESSAGES,
}

#: Message numbers this implementation knows; anything else in 128-255 is "unimplemented".
KNOWN = frozenset(range(1, 128))


def is_known(msg_type: int) -> bool:
    """Numbers 128-255 are answered with UNIMPLEMENTED in every phase (RFC 4253 §11.4)."""
    return msg_type in KNOWN


def check_kex(msg_type: int, *, initial: bool, strict: bool) -> None:
    """While the peer's key exchange runs: only kex (and, unless strict-initial, generic) messages.

    DISCONNECT is always taken: it ends the connection as a violation would, and carries
    the peer's reason (a server refusing a login at its door, say) instead of ours.
    """
    if msg_type in KEX_MESSAGES or msg_type == m.MSG_DISCONNECT:
        return
    if initial and strict:
        raise ProtocolError(f"strict key exchange: unexpected message {msg_type} during initial key exchange")
    if msg_type in TRANSPORT_GENERIC:
        return
    raise ProtocolError(f"message {msg_type} not allowed during key exchange")


def check_phase(msg_type: int, *, sender: Role, phase: Phase) -> None:
    """Outside key exchange: is ``msg_type`` from ``sender`` on the table for ``phase``?"""
    if msg_type in TRANSPORT_GENERIC or msg_type == m.MSG_KEXINIT:
        return
    if msg_type not in ALLOWED[(phase, sender)]:
        raise ProtocolError(f"message {msg_type} not allowed from the {sender.value} in phase {phase.value}")

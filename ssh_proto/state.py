"""Which messages each party may send when: the tables, and the one object that applies them.

Everything that decides whether a message *number* is acceptable at this point of a
connection lives in this file: what each party may send in each phase, during its key
exchange (and in which direction, and NEWKEYS only after the method's message), where
EXT_INFO may go, and what may answer an outstanding user-auth request (docs/security.md
T11, the defence against the state-confusion bugs of paramiko CVE-2018-7750 /
CVE-2018-1000805 and Erlang/OTP CVE-2025-32433). The layers keep only the state the
tables are indexed by (the auth step, say); none of them decides on its own.

What the table cannot see stays with the layer that can, after the table let the number
through: a message's content (the service a SERVICE_REQUEST names, a user name, T12); a
reply matched to a request by count (global requests, RFC 4254 §4; channel requests) and
messages that name a channel (T20, T19: ``channels.py``); strict kex's "the peer's KEXINIT
is its packet 0" (T1), checked by sequence number in ``transport.py`` because strictness is
learnt from that very KEXINIT; and the limits that refuse what the protocol would allow (a
server's key exchanges before authentication, L10).

This file does not know which role we are playing, as h11's ``_state.py``: a
:class:`ConnectionState` holds the state of *each* party, and the same table judges what
the peer sends and what we send. A message of the peer's that is off the table raises
:class:`~ssh_proto.errors.ProtocolError` (the connection ends with DISCONNECT); one of ours
raises :class:`~ssh_proto.errors.LocalError` (a bug on our side, raised to the caller and
never sent). Each check is one set lookup on the path of every packet.

Theory of operation. Each party has a :class:`Phase`. Its own messages move it, as the
``TRANSITIONS`` table says (h11's ``EVENT_TRIGGERED_TRANSITIONS``): its first NEWKEYS ends
KEX_INITIAL, the client's SERVICE_REQUEST and the server's SERVICE_ACCEPT start AUTH for
their sender, and the server's USERAUTH_SUCCESS opens the connection for both. In its
phase a party may send what ``ALLOWED`` lists, the transport's generic messages
(DISCONNECT, IGNORE, UNIMPLEMENTED, DEBUG), and, after KEX_INITIAL, a KEXINIT.

A party's KEXINIT starts *its* key exchange (:class:`KexStep`): from then until its
NEWKEYS it may send only the key exchange's messages (RFC 4253 §7.1, rule T8), in the
order ``KEX_ALLOWED`` gives (the client sends the method's INIT, 30, the server its REPLY,
31), plus the generic ones — except in a *strict* initial exchange (rule T1), where only
DISCONNECT may interrupt. A key exchange overlays any phase after the first; what a party
hands the transport meanwhile is held, not sent, so our own sends are checked against the
phase table, and the kex messages the transport emits against ``KEX_ALLOWED``.

EXT_INFO is the one message placed by position, not phase (RFC 8308 §2.4,
:class:`ExtInfoSlot`, rule T9): each party may send one as its very first packet after its
first NEWKEYS when the other party offered ``ext-info-c``/``ext-info-s``, and the server a
second one in AUTH if the client offered ``ext-info-c`` — then USERAUTH_SUCCESS must be its
next message. (RFC 8308 §2.4: "a client that sent ext-info-c MUST accept a server's
EXT_INFO at both opportunities".)

A known number (1-127) off the table is a protocol error, stricter than RFC 4253 §11.4
asks; a number from the ranges for local extensions (128-255) is answered with
UNIMPLEMENTED, except during a key exchange, where it is off the table too.

User authentication runs inside the AUTH phase as a sequence of :class:`AuthStep`; the
same steps describe both ends (what the client is waiting for is what the server is
deciding). ``AUTH_ALLOWED`` says which USERAUTH messages each party may send in each step,
and :mod:`.auth` holds the step and asks.
"""
from __future__ import annotations

import dataclasses
import enum
import functools

from . import messages as m
from .errors import LocalError, ProtocolError


class Role(enum.Enum):
    """Which end of the connection a party is: the tables are indexed by it."""

    CLIENT = "client"
    SERVER = "server"

    @property
    def peer(self) -> "Role":
        """The other party's role."""
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class Phase(enum.Enum):
    """Where one party's messages are (each party has its own)."""

    KEX_INITIAL = "kex-initial"   # until the party's first NEWKEYS
    SERVICE = "service"           # keys in place, ssh-userauth not yet requested (client) / accepted (server)
    AUTH = "auth"                 # ssh-userauth running
    OPEN = "open"                 # authenticated: the connection protocol runs


class KexStep(enum.Enum):
    """Where one party is in a key exchange of its own: which kex message it may send next."""

    NONE = "none"          # no exchange of its own running: its phase's table applies
    KEXINIT = "kexinit"    # the initial exchange: its KEXINIT comes first
    METHOD = "method"      # its KEXINIT is out: the method's message (client INIT 30, server REPLY 31)
    GUESS = "guess"        # its wrongly guessed first kex packet comes next, to be ignored (RFC 4253 §7)
    NEWKEYS = "newkeys"    # its method message is out: NEWKEYS


class ExtInfoSlot(enum.Enum):
    """Where one party may place an EXT_INFO now (RFC 8308 §2.4)."""

    NONE = "none"                                # not here
    AFTER_NEWKEYS = "after-newkeys"              # its very next packet, the first after its first NEWKEYS
    BEFORE_AUTH_SUCCESS = "before-auth-success"  # (server, AUTH) a second one, right before USERAUTH_SUCCESS
    AUTH_SUCCESS_NEXT = "auth-success-next"      # it sent that second one: USERAUTH_SUCCESS must follow


class AuthStep(enum.Enum):
    """Where the user-auth exchange stands (RFC 4252 §5, §7; RFC 4256 §3): the same at both ends."""

    IDLE = "idle"            # no request outstanding: the client may send one
    REQUEST = "request"      # none, password or a signed publickey request: SUCCESS or FAILURE next
    QUERY = "query"          # a publickey query (no signature): PK_OK or FAILURE next
    KBDINT = "kbdint"        # keyboard-interactive: INFO_REQUEST, SUCCESS or FAILURE next
    CHALLENGE = "challenge"  # an INFO_REQUEST is out: the client's INFO_RESPONSE (or a new request) next


C, S = Role.CLIENT, Role.SERVER

TRANSPORT_GENERIC = frozenset({m.MSG_DISCONNECT, m.MSG_IGNORE, m.MSG_UNIMPLEMENTED, m.MSG_DEBUG})
#: RFC 4250 §4.1.2: numbers 30-49 are the key exchange *method*'s own messages.
KEX_METHOD_MESSAGES = frozenset(range(30, 50))
#: Everything a key exchange sends: KEXINIT, the method's messages, NEWKEYS.
KEX_MESSAGES = frozenset({m.MSG_KEXINIT, m.MSG_NEWKEYS}) | KEX_METHOD_MESSAGES
USERAUTH_MESSAGES = frozenset(range(m.MSG_USERAUTH_REQUEST, 80))
CONNECTION_MESSAGES = frozenset(range(m.MSG_GLOBAL_REQUEST, m.MSG_CHANNEL_FAILURE + 1))
#: Message numbers this implementation knows; anything in 128-255 is "unimplemented".
KNOWN = frozenset(range(1, 128))

#: (phase, sender) -> what that party may send in that phase outside a key exchange of its
#: own, besides the transport-generic messages and (after KEX_INITIAL) KEXINIT. EXT_INFO
#: is not here: its place is a position (``ExtInfoSlot``), not a phase.
ALLOWED: dict[tuple[Phase, Role], frozenset[int]] = {
    (Phase.KEX_INITIAL, C): frozenset(),
    (Phase.KEX_INITIAL, S): frozenset(),
    (Phase.SERVICE, C): frozenset({m.MSG_SERVICE_REQUEST}),
    (Phase.SERVICE, S): frozenset({m.MSG_SERVICE_ACCEPT}),
    (Phase.AUTH, C): frozenset({m.MSG_USERAUTH_REQUEST, m.MSG_USERAUTH_INFO_RESPONSE}),
    (Phase.AUTH, S): frozenset({m.MSG_USERAUTH_FAILURE, m.MSG_USERAUTH_SUCCESS, m.MSG_USERAUTH_BANNER,
                                m.MSG_USERAUTH_PK_OK}),
    # RFC 4252 §5.1: requests after success are ignored, not fatal.
    (Phase.OPEN, C): CONNECTION_MESSAGES | {m.MSG_USERAUTH_REQUEST},
    (Phase.OPEN, S): CONNECTION_MESSAGES,
}

#: (sender, its phase, message) -> the new phase of each party it moves.
TRANSITIONS: dict[tuple[Role, Phase, int], dict[Role, Phase]] = {
    (C, Phase.KEX_INITIAL, m.MSG_NEWKEYS): {C: Phase.SERVICE},
    (S, Phase.KEX_INITIAL, m.MSG_NEWKEYS): {S: Phase.SERVICE},
    (C, Phase.SERVICE, m.MSG_SERVICE_REQUEST): {C: Phase.AUTH},
    (S, Phase.SERVICE, m.MSG_SERVICE_ACCEPT): {S: Phase.AUTH},
    (S, Phase.AUTH, m.MSG_USERAUTH_SUCCESS): {S: Phase.OPEN, C: Phase.OPEN},
}

#: (kex step, sender) -> the key-exchange messages that party may send in that step.
KEX_ALLOWED: dict[tuple[KexStep, Role], frozenset[int]] = {
    (KexStep.KEXINIT, C): frozenset({m.MSG_KEXINIT}),
    (KexStep.KEXINIT, S): frozenset({m.MSG_KEXINIT}),
    (KexStep.METHOD, C): frozenset({m.MSG_KEX_INIT}),
    (KexStep.METHOD, S): frozenset({m.MSG_KEX_REPLY}),
    (KexStep.GUESS, C): KEX_METHOD_MESSAGES,
    (KexStep.GUESS, S): KEX_METHOD_MESSAGES,
    (KexStep.NEWKEYS, C): frozenset({m.MSG_NEWKEYS}),
    (KexStep.NEWKEYS, S): frozenset({m.MSG_NEWKEYS}),
}

#: (kex step, message) -> the step after it (a KEXINIT in step NONE starts a re-exchange).
KEX_TRANSITIONS: dict[tuple[KexStep, int], KexStep] = {
    (KexStep.KEXINIT, m.MSG_KEXINIT): KexStep.METHOD,
    (KexStep.NONE, m.MSG_KEXINIT): KexStep.METHOD,
    (KexStep.METHOD, m.MSG_KEX_INIT): KexStep.NEWKEYS,
    (KexStep.METHOD, m.MSG_KEX_REPLY): KexStep.NEWKEYS,
    **{(KexStep.GUESS, n): KexStep.METHOD for n in KEX_METHOD_MESSAGES},
    (KexStep.NEWKEYS, m.MSG_NEWKEYS): KexStep.NONE,
}

#: (step, sender) -> the user-auth messages that party may send in that step. BANNER may
#: come from the server at any point before USERAUTH_SUCCESS (RFC 4252 §5.4); a request
#: while the server decides another is refused; a new request abandons a challenge (RFC
#: 4256 §3.3). Number 60 is PK_OK after a query and INFO_REQUEST after keyboard-interactive.
AUTH_ALLOWED: dict[tuple[AuthStep, Role], frozenset[int]] = {
    (AuthStep.IDLE, C): frozenset({m.MSG_USERAUTH_REQUEST}),
    (AuthStep.IDLE, S): frozenset({m.MSG_USERAUTH_BANNER}),
    (AuthStep.REQUEST, C): frozenset(),
    (AuthStep.REQUEST, S): frozenset({m.MSG_USERAUTH_SUCCESS, m.MSG_USERAUTH_FAILURE, m.MSG_USERAUTH_BANNER}),
    (AuthStep.QUERY, C): frozenset(),
    (AuthStep.QUERY, S): frozenset({m.MSG_USERAUTH_PK_OK, m.MSG_USERAUTH_FAILURE, m.MSG_USERAUTH_BANNER}),
    (AuthStep.KBDINT, C): frozenset(),
    (AuthStep.KBDINT, S): frozenset({m.MSG_USERAUTH_PK_OK, m.MSG_USERAUTH_SUCCESS, m.MSG_USERAUTH_FAILURE,
                                     m.MSG_USERAUTH_BANNER}),
    (AuthStep.CHALLENGE, C): frozenset({m.MSG_USERAUTH_INFO_RESPONSE, m.MSG_USERAUTH_REQUEST}),
    (AuthStep.CHALLENGE, S): frozenset({m.MSG_USERAUTH_BANNER}),
}

#: (step, sender, message) -> the step after it; a USERAUTH_REQUEST's step is its method's
#: (:func:`auth_step_for_request`).
AUTH_TRANSITIONS: dict[tuple[AuthStep, Role, int], AuthStep] = {
    (AuthStep.REQUEST, S, m.MSG_USERAUTH_SUCCESS): AuthStep.IDLE,
    (AuthStep.REQUEST, S, m.MSG_USERAUTH_FAILURE): AuthStep.IDLE,
    (AuthStep.QUERY, S, m.MSG_USERAUTH_PK_OK): AuthStep.IDLE,
    (AuthStep.QUERY, S, m.MSG_USERAUTH_FAILURE): AuthStep.IDLE,
    (AuthStep.KBDINT, S, m.MSG_USERAUTH_PK_OK): AuthStep.CHALLENGE,   # INFO_REQUEST
    (AuthStep.KBDINT, S, m.MSG_USERAUTH_SUCCESS): AuthStep.IDLE,
    (AuthStep.KBDINT, S, m.MSG_USERAUTH_FAILURE): AuthStep.IDLE,
    (AuthStep.CHALLENGE, C, m.MSG_USERAUTH_INFO_RESPONSE): AuthStep.KBDINT,
}

_NAMES = {v: k.removeprefix("MSG_") for k, v in vars(m).items()
          if k.startswith("MSG_") and isinstance(v, int) and k != "MSG_USERAUTH_PK_OK"}
_NAMES[m.MSG_USERAUTH_PK_OK] = "USERAUTH_PK_OK/INFO_REQUEST"


def message_name(msg_type: int) -> str:
    """'KEXINIT' for 20, 'message 200' for a number without a name."""
    name = _NAMES.get(msg_type)
    return name if name is not None else f"message {msg_type}"


def is_known(msg_type: int) -> bool:
    """Numbers 128-255 are answered with UNIMPLEMENTED outside a key exchange (RFC 4253 §11.4)."""
    return msg_type in KNOWN


def auth_step_for_request(method: str, has_signature: bool) -> AuthStep:
    """The step a USERAUTH_REQUEST puts the exchange in."""
    if method == "publickey" and not has_signature:
        return AuthStep.QUERY
    if method == "keyboard-interactive":
        return AuthStep.KBDINT
    return AuthStep.REQUEST


def check_auth(step: AuthStep, sender: Role, msg_type: int, *, local: bool) -> AuthStep:
    """Is ``msg_type`` from ``sender`` on the table in auth ``step``? Returns the next step.

    A USERAUTH_REQUEST returns ``step`` unchanged: its next step is its method's. Off the
    table, the peer's message is a ProtocolError and ours (``local``) a LocalError.
    """
    if msg_type not in AUTH_ALLOWED[(step, sender)]:
        what = f"{message_name(msg_type)} not allowed from the {sender.value} in authentication step {step.value}"
        raise LocalError(what) if local else ProtocolError(what)
    return AUTH_TRANSITIONS.get((step, sender, msg_type), step)


@dataclasses.dataclass(slots=True)
class PartyState:
    """One party's place in the tables, and the sets its messages are checked against.

    ``accepted``: what it may send now without changing any state (one lookup per packet);
    anything else takes :meth:`ConnectionState.receive`'s slow path, which checks the
    whole table and applies the transitions. ``queueable``: the same for our own messages
    handed to the transport outside the key exchange (they wait out one, rule T8).
    """

    role: Role
    phase: Phase = Phase.KEX_INITIAL
    kex: KexStep = KexStep.KEXINIT
    ext_info: ExtInfoSlot = ExtInfoSlot.NONE
    accepted: frozenset[int] = frozenset()
    queueable: frozenset[int] = frozenset()


class Verdict(enum.Enum):
    """What the transport does with an incoming message the table accepted."""

    HANDLE = "handle"                # act on it
    SKIP = "skip"                    # a wrongly guessed kex packet: ignore it (RFC 4253 §7)
    UNIMPLEMENTED = "unimplemented"  # an unknown number: answer UNIMPLEMENTED (RFC 4253 §11.4)


HANDLE, SKIP, UNIMPLEMENTED = Verdict.HANDLE, Verdict.SKIP, Verdict.UNIMPLEMENTED


class ConnectionState:
    """Both parties' states; checks every message either sends against the tables above.

    The transport calls :meth:`receive` for each packet from the peer, :meth:`queue` for
    each upper-layer message of ours and :meth:`emit` for each key-exchange message of
    ours, and tells it what the first KEXINITs said (:meth:`negotiated`) and when the peer
    guessed its first kex packet wrong (:meth:`skip_guess`).
    """

    def __init__(self) -> None:
        self.parties = {C: PartyState(C), S: PartyState(S)}
        self.strict = False                              # strict kex negotiated (T1)
        self.ext_info_offered = {C: False, S: False}     # ext-info-c / ext-info-s in the first KEXINITs
        for party in self.parties.values():
            self._refresh(party)

    def phase(self, role: Role) -> Phase:
        return self.parties[role].phase

    def kex_step(self, role: Role) -> KexStep:
        return self.parties[role].kex

    # ---- what the transport learns ----------------------------------------------------
    def negotiated(self, *, strict: bool, client_ext_info: bool, server_ext_info: bool) -> None:
        """The first KEXINITs are known: strict kex, and who offered ext-info."""
        self.strict = strict
        self.ext_info_offered = {C: client_ext_info, S: server_ext_info}
        for party in self.parties.values():
            self._refresh(party)

    def skip_guess(self, sender: Role) -> None:
        """``sender`` set first_kex_packet_follows and guessed wrong: its next kex packet is ignored."""
        party = self.parties[sender]
        party.kex = KexStep.GUESS
        self._refresh(party)

    # ---- checks -----------------------------------------------------------------------
    def receive(self, sender: Role, msg_type: int) -> Verdict:
        """The peer ``sender`` sent ``msg_type``: check it, move the state; ProtocolError if off the table."""
        party = self.parties[sender]
        if msg_type in party.accepted:
            return HANDLE
        if msg_type not in KNOWN and party.kex is KexStep.NONE and party.ext_info is not ExtInfoSlot.AUTH_SUCCESS_NEXT:
            self._step_ext_info(party, msg_type)
            return UNIMPLEMENTED
        guess = party.kex is KexStep.GUESS and msg_type in KEX_METHOD_MESSAGES
        self._advance(party, msg_type, ProtocolError)
        return SKIP if guess else HANDLE

    def queue(self, sender: Role, msg_type: int) -> None:
        """We hand the transport ``msg_type`` (sent now, or held by a key exchange): LocalError if off the table."""
        party = self.parties[sender]
        if msg_type in party.queueable:
            return
        if msg_type not in _upper_layer_allowed(sender, party.phase):  # (kex messages never are)
            raise LocalError(f"{message_name(msg_type)} not allowed from the {sender.value} "
                             f"in phase {party.phase.value}")
        self._transition(party, msg_type)

    def emit(self, sender: Role, msg_type: int) -> None:
        """The transport writes a key-exchange message (or our EXT_INFO) of ours now."""
        self._advance(self.parties[sender], msg_type, LocalError)

    # ---- the slow path ---------------------------------------------------------------------
    def _advance(self, party: PartyState, msg_type: int, error: type) -> None:
        if msg_type not in _accepted(party.role, party.phase, party.kex, party.ext_info, self.strict):
            raise error(_refusal(party, msg_type, self.strict))
        self._transition(party, msg_type)

    def _transition(self, party: PartyState, msg_type: int) -> None:
        first_newkeys = party.phase is Phase.KEX_INITIAL and msg_type == m.MSG_NEWKEYS
        self._step_ext_info(party, msg_type)
        party.kex = KEX_TRANSITIONS.get((party.kex, msg_type), party.kex)
        moves = TRANSITIONS.get((party.role, party.phase, msg_type))
        if moves:
            for role, phase in moves.items():
                self._enter(self.parties[role], phase)
        if first_newkeys and self.ext_info_offered[party.role.peer]:
            party.ext_info = ExtInfoSlot.AFTER_NEWKEYS
        self._refresh(party)

    def _step_ext_info(self, party: PartyState, msg_type: int) -> None:
        slot = party.ext_info
        if slot is ExtInfoSlot.AFTER_NEWKEYS:
            party.ext_info = ExtInfoSlot.NONE   # the slot is one packet long, whatever it holds
        elif slot is ExtInfoSlot.BEFORE_AUTH_SUCCESS and msg_type == m.MSG_EXT_INFO:
            party.ext_info = ExtInfoSlot.AUTH_SUCCESS_NEXT
        else:
            return
        self._refresh(party)

    def _enter(self, party: PartyState, phase: Phase) -> None:
        party.phase = phase
        if phase is Phase.AUTH and party.role is S and self.ext_info_offered[C]:
            party.ext_info = ExtInfoSlot.BEFORE_AUTH_SUCCESS   # RFC 8308 §2.4's second opportunity
        elif phase is Phase.OPEN:
            party.ext_info = ExtInfoSlot.NONE
        self._refresh(party)

    def _refresh(self, party: PartyState) -> None:
        if party.ext_info is ExtInfoSlot.AFTER_NEWKEYS:
            # one packet long, whatever it holds: that packet takes the slow path and closes it
            party.accepted = party.queueable = frozenset()
            return
        party.accepted = (_accepted(party.role, party.phase, party.kex, party.ext_info, self.strict)
                          - _triggers(party.role, party.phase, party.kex, party.ext_info))
        party.queueable = (_upper_layer_allowed(party.role, party.phase)
                           - _triggers(party.role, party.phase, KexStep.NONE, party.ext_info))


@functools.cache
def _upper_layer_allowed(sender: Role, phase: Phase) -> frozenset[int]:
    return ALLOWED[(phase, sender)] | TRANSPORT_GENERIC


@functools.cache
def _accepted(sender: Role, phase: Phase, kex: KexStep, slot: ExtInfoSlot, strict: bool) -> frozenset[int]:
    """Everything ``sender`` may send in this state: the tables above, put together."""
    if slot is ExtInfoSlot.AUTH_SUCCESS_NEXT:
        return frozenset({m.MSG_USERAUTH_SUCCESS, m.MSG_DISCONNECT})
    if kex is not KexStep.NONE:
        generic = {m.MSG_DISCONNECT} if strict and phase is Phase.KEX_INITIAL else TRANSPORT_GENERIC
        allowed = KEX_ALLOWED[(kex, sender)] | generic
    else:
        allowed = ALLOWED[(phase, sender)] | TRANSPORT_GENERIC | {m.MSG_KEXINIT}
    if slot in (ExtInfoSlot.AFTER_NEWKEYS, ExtInfoSlot.BEFORE_AUTH_SUCCESS):
        allowed |= {m.MSG_EXT_INFO}
    return frozenset(allowed)


@functools.cache
def _triggers(sender: Role, phase: Phase, kex: KexStep, slot: ExtInfoSlot) -> frozenset[int]:
    """The messages that move this state (they take the slow path)."""
    moving = {msg for (role, ph, msg) in TRANSITIONS if (role, ph) == (sender, phase)}
    moving |= {msg for (step, msg) in KEX_TRANSITIONS if step is kex}
    if slot is not ExtInfoSlot.NONE:
        moving.add(m.MSG_EXT_INFO)
    return frozenset(moving)


def _refusal(party: PartyState, msg_type: int, strict: bool) -> str:
    name, who = message_name(msg_type), party.role.value
    if party.ext_info is ExtInfoSlot.AUTH_SUCCESS_NEXT:
        return f"{name} after the server's second EXT_INFO, where USERAUTH_SUCCESS must follow (RFC 8308 §2.4)"
    if party.kex is not KexStep.NONE:
        if strict and party.phase is Phase.KEX_INITIAL and msg_type in TRANSPORT_GENERIC:
            return f"strict key exchange: {name} from the {who} during the initial key exchange"
        return f"{name} not allowed from the {who} during its key exchange (step {party.kex.value})"
    if msg_type == m.MSG_EXT_INFO:
        return f"EXT_INFO out of place from the {who} (RFC 8308 §2.4)"
    return f"{name} not allowed from the {who} in phase {party.phase.value}"

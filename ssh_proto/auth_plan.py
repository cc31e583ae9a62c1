"""The client's choice of authentication method and signature algorithm, sans-IO.

:class:`AuthPlan` decides what a client tries next from what it holds (keys, a password,
a keyboard-interactive handler) and the server's last answer; the I/O layer carries the
attempt out (it may have to await an agent's signature or the user's answers) and feeds
the plan the next answer. A test drives it with :class:`~ssh_proto.events.AuthResult`
events and server-sig-algs bytes alone.

Rules (RFC 4252 §5, RFC 4256, RFC 8332, RFC 8308 §3.1):

* Holding nothing, the client first sends the ``none`` probe, whose failure lists the
  server's methods; holding something it starts with that at once, as if the server
  listed every method (one round trip less).
* Keys first, in the order given (a certificate before its own plain key, as the caller
  lists them), while the server lists ``publickey``. A key the signer refuses (an agent
  saying no) is skipped: the next attempt is the next key, on the same answer.
* Then the password: by ``password`` when there is no keyboard-interactive handler, else
  by ``keyboard-interactive``, whose prompts the handler answers (and a password answers a
  lone prompt that asks for a password); ``password`` after that if still listed. Each
  method once, except that keyboard-interactive may run again after a partial success.
* Nothing left to try: give up, naming what the server offers.
* The signature algorithm is the key's first, except for RSA, where it is the first of
  ``rsa-sha2-512``, ``rsa-sha2-256`` the server's ``server-sig-algs`` names (never SHA-1
  ``ssh-rsa``, which keys do not offer, docs/security.md T9).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from .keys import Certificate, PublicKey

ALL_METHODS = ("publickey", "keyboard-interactive", "password")
_RSA_TYPES = ("ssh-rsa", "ssh-rsa-cert-v01@openssh.com")


@dataclasses.dataclass(frozen=True, slots=True)
class TryNone:
    """Send the ``none`` probe."""


@dataclasses.dataclass(frozen=True, slots=True)
class TryPublicKey:
    """Sign with key number ``index`` (of those the plan was given) under ``algorithm``."""

    index: int
    algorithm: str


@dataclasses.dataclass(frozen=True, slots=True)
class TryPassword:
    """Send the password (method ``password``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class TryKbdInt:
    """Start keyboard-interactive; answer its prompts with :func:`kbdint_answers` or the handler."""


@dataclasses.dataclass(frozen=True, slots=True)
class GiveUp:
    """Nothing left that the server offers: ``methods`` is what it lists."""

    methods: tuple[str, ...]


Attempt = TryNone | TryPublicKey | TryPassword | TryKbdInt | GiveUp


def signature_algorithm(key: PublicKey | Certificate, server_sig_algs: bytes | None) -> str:
    """The algorithm to sign with: RSA follows the server's server-sig-algs (RFC 8332 §3.1)."""
    algorithms = key.signature_algorithms
    if server_sig_algs is None or key.key_type not in _RSA_TYPES:
        return algorithms[0]
    offered = server_sig_algs.decode("ascii", "replace").split(",")
    for alg in algorithms:
        if alg.removesuffix("-cert-v01@openssh.com") in offered:
            return alg
    return algorithms[0]


class AuthPlan:
    """What to try next; call :meth:`next` with each failure (None before the first)."""

    def __init__(self, keys: Sequence[PublicKey | Certificate], *, password: bool, kbdint_handler: bool):
        self._keys = tuple(keys)
        self._next_key = 0
        self._password = password
        self._kbdint_handler = kbdint_handler
        self._tried_password = self._tried_kbdint = False
        self._last: Attempt | None = None

    def next(self, methods: Sequence[str] | None, *, partial: bool = False,
             server_sig_algs: bytes | None = None) -> Attempt:
        """The next attempt after a failure listing ``methods`` (None: nothing tried yet)."""
        if methods is None:
            if not (self._keys or self._password or self._kbdint_handler):
                return self._chose(TryNone())
            methods = ALL_METHODS
        if isinstance(self._last, TryKbdInt) and partial:
            self._tried_kbdint = False  # a later round may ask again
        return self._chose(self._pick(set(methods), tuple(methods), server_sig_algs))

    def _chose(self, attempt: Attempt) -> Attempt:
        self._last = attempt
        return attempt

    def _pick(self, methods: set[str], listed: tuple[str, ...], server_sig_algs: bytes | None) -> Attempt:
        if "publickey" in methods and self._next_key < len(self._keys):
            index, self._next_key = self._next_key, self._next_key + 1
            return TryPublicKey(index, signature_algorithm(self._keys[index], server_sig_algs))
        if "password" in methods and self._password and not self._tried_password and not self._kbdint_handler:
            self._tried_password = True
            return TryPassword()
        if ("keyboard-interactive" in methods and not self._tried_kbdint
                and (self._kbdint_handler or self._password)):
            self._tried_kbdint = True
            return TryKbdInt()
        if "password" in methods and self._password and not self._tried_password:
            self._tried_password = True
            return TryPassword()
        return GiveUp(listed)


def kbdint_answers(prompts: Sequence[tuple[str, bool]], password: str | None) -> list[str]:
    """The answers when there is no handler to ask: the password for a lone prompt asking
    for one, empty answers otherwise (so the server fails this round and the next method
    is tried); none for a round without prompts."""
    if not prompts:
        return []
    if len(prompts) == 1 and password is not None and "password" in prompts[0][0].lower():
        return [password]
    return [""] * len(prompts)

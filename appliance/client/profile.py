"""One profile's files: who the client is logged in as at one proxy, and its credentials.

A profile lives in a directory of its own (:mod:`.profiles` keeps one per proxy and user
under ``~/.jumpgate``, ``$JUMPGATE_HOME`` overriding it, and points the top-level names
below at the current one). Files, all mode 0600 in a directory of mode 0700::

    profile.json    {"version": 1, proxy, user, cluster, web_pin, proxy_ssh, expires, logins,
                    user_ca (optional: the cluster's user CA, which ``jumpgate status`` checks
                    the certificate against)}
    key             the private key (ed25519, OpenSSH format), made fresh at every login
    key.pub         its public half
    key-cert.pub    the user certificate the cluster issued for it
    known_hosts     "@cert-authority <patterns> <host CA>": the host CA, trusted for the
                    cluster's names only (docs/security.md J6, :mod:`.trust`)

``key`` and ``key-cert.pub`` follow OpenSSH's naming, so ``ssh -i ~/.jumpgate/key`` and
:func:`ssh_proto.keys.load_identity` find the certificate on their own. Other commands
(``jumpgate ssh``, ``jumpgate config``) use :class:`ClientPaths` for the paths;
:meth:`Profile.load` of the top-level directory answers with the current profile's own
directory (``CURRENT_LINK`` resolved once), so that what it then writes lands there and a
key and its certificate are never read from two different profiles.

>>> paths = ClientPaths(Path("/home/alice/.jumpgate"))
>>> str(paths.identity_path), str(paths.cert_path)
('/home/alice/.jumpgate/key', '/home/alice/.jumpgate/key-cert.pub')
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ssh_proto.keys import Certificate, PrivateKey, PublicKey

from ..files import write_atomic
from .home import ENV_HOME, jumpgate_home
from .trust import known_hosts_line

__all__ = ["CURRENT_LINK", "ENV_HOME", "ClientPaths", "Profile", "ProfileError", "jumpgate_home"]

PROFILE_VERSION = 1
_MAX_PROFILE = 64 * 1024
#: In the top-level directory: a relative symlink to the current profile's directory.
CURRENT_LINK = "current"


class ProfileError(Exception):
    """The profile cannot be read or written; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class ClientPaths:
    """Where the client keeps its files; ``ClientPaths.default()`` honours ``$JUMPGATE_HOME``."""

    home: Path

    @classmethod
    def default(cls) -> ClientPaths:
        return cls(jumpgate_home())

    @property
    def profile_path(self) -> Path:
        return self.home / "profile.json"

    @property
    def identity_path(self) -> Path:
        return self.home / "key"

    @property
    def public_key_path(self) -> Path:
        return self.home / "key.pub"

    @property
    def cert_path(self) -> Path:
        return self.home / "key-cert.pub"

    @property
    def known_hosts_path(self) -> Path:
        return self.home / "known_hosts"

    def resolved(self) -> ClientPaths:
        """The directory whose files these are: the current profile's when ``home`` is the
        top-level directory of :mod:`.profiles` (its ``current`` link read once), else itself."""
        link = self.home / CURRENT_LINK
        try:
            target = os.readlink(link)
        except OSError:  # no link (a profile directory, the old layout, or nobody current)
            return self
        return ClientPaths(self.home / target)

    def ensure_home(self) -> None:
        """Create the directory and any missing parent (each 0700), or tighten it to 0700."""
        missing = [d for d in (self.home, *self.home.parents) if not d.exists()]
        try:
            for directory in reversed(missing):
                directory.mkdir(mode=0o700, exist_ok=True)
                directory.chmod(0o700)
            if self.home.stat().st_mode & 0o077:
                self.home.chmod(0o700)
        except OSError as exc:
            raise ProfileError(f"cannot create {self.home}: {exc.strerror}") from None

    def write_credentials(self, key: PrivateKey, cert: Certificate, host_ca: PublicKey,
                          comment: str = "", *, trusted_for: Sequence[str]) -> None:
        """Store a fresh key, its certificate and the host CA to trust (all 0600) for the
        host patterns ``trusted_for`` (:func:`.trust.known_hosts_patterns`, never ``*``)."""
        if cert.public_key != key.public_key:
            raise ProfileError("the certificate is not for this key")
        self.ensure_home()
        try:
            write_atomic(self.identity_path, key.to_openssh(comment=comment))
            write_atomic(self.public_key_path, (key.public_key.to_line(comment) + "\n").encode())
            write_atomic(self.cert_path, (cert.to_line(comment) + "\n").encode())
        except OSError as exc:
            raise ProfileError(f"cannot write credentials in {self.home}: {exc.strerror}") from None
        self.write_known_hosts(host_ca, trusted_for)

    def write_known_hosts(self, host_ca: PublicKey, trusted_for: Sequence[str]) -> None:
        """Replace known_hosts with one ``@cert-authority`` line for ``trusted_for``."""
        self.ensure_home()
        try:
            write_atomic(self.known_hosts_path, known_hosts_line(host_ca, trusted_for).encode())
        except OSError as exc:
            raise ProfileError(f"cannot write {self.known_hosts_path}: {exc.strerror}") from None

    def remove_credentials(self) -> bool:
        """Delete key, certificate and known_hosts; True if anything was there."""
        return self._remove(self.identity_path, self.public_key_path, self.cert_path,
                            self.known_hosts_path)

    def clear(self) -> bool:
        """Delete every file of the profile; True if anything was there."""
        return self._remove(self.profile_path) | self.remove_credentials()

    def _remove(self, *paths: Path) -> bool:
        removed = False
        for path in paths:
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise ProfileError(f"cannot remove {path}: {exc.strerror}") from None
        return removed


def _check_fields(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("version") != PROFILE_VERSION:
        raise ProfileError(f"{path}: not a version {PROFILE_VERSION} Jumpgate profile")
    kinds = {"proxy": str, "user": str, "cluster": str, "web_pin": str, "proxy_ssh": str,
             "expires": (int, float), "logins": list}
    values = {}
    for name, kind in kinds.items():
        value = raw.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProfileError(f"{path}: field {name!r} is missing or of the wrong type")
        values[name] = value
    if not all(isinstance(login, str) for login in values["logins"]):
        raise ProfileError(f"{path}: 'logins' must be a list of strings")
    values["logins"] = tuple(values["logins"])
    values["expires"] = float(values["expires"])
    user_ca = raw.get("user_ca", "")  # optional: profiles written before it was kept
    if not isinstance(user_ca, str):
        raise ProfileError(f"{path}: field 'user_ca' is of the wrong type")
    values["user_ca"] = user_ca
    return values


@dataclass(frozen=True, slots=True)
class Profile:
    """Who the client is logged in as, and where. ``expires`` 0 means: no certificate yet.

    >>> Profile(proxy="jump:3080", user="alice").logged_in(now=0.0)
    False
    """

    proxy: str
    user: str
    cluster: str = ""
    web_pin: str = ""
    proxy_ssh: str = ""
    expires: float = 0.0
    logins: tuple[str, ...] = ()
    user_ca: str = ""
    paths: ClientPaths = field(default_factory=ClientPaths.default, compare=False)

    @property
    def identity_path(self) -> Path:
        return self.paths.identity_path

    @property
    def cert_path(self) -> Path:
        return self.paths.cert_path

    @property
    def known_hosts_path(self) -> Path:
        return self.paths.known_hosts_path

    @classmethod
    def load(cls, paths: ClientPaths | None = None) -> Profile | None:
        """The saved profile, or None if there is none. A corrupt file raises ProfileError.
        ``paths`` of the top-level directory give the current profile, with its own paths."""
        return cls.read_at((paths or ClientPaths.default()).resolved())

    @classmethod
    def read_at(cls, paths: ClientPaths) -> Profile | None:
        """The profile.json of exactly ``paths`` (no ``current`` link followed), or None."""
        path = paths.profile_path
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_PROFILE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ProfileError(f"cannot read {path}: {exc.strerror}") from None
        if len(data) > _MAX_PROFILE:
            raise ProfileError(f"{path}: too large to be a profile")
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ProfileError(f"{path}: not valid JSON; remove it and log in again") from None
        return cls(**_check_fields(raw, path), paths=paths)

    def save(self) -> None:
        """Write profile.json (0600) in a 0700 directory, atomically."""
        record = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name != "paths"}
        record["logins"] = list(self.logins)
        data = json.dumps({"version": PROFILE_VERSION, **record}, indent=2, sort_keys=True)
        self.paths.ensure_home()
        try:
            write_atomic(self.paths.profile_path, (data + "\n").encode("utf-8"))
        except OSError as exc:
            raise ProfileError(f"cannot write {self.paths.profile_path}: {exc.strerror}") from None

    def clear(self) -> bool:
        """Delete the profile and its credentials; True if anything was there."""
        return self.paths.clear()

    def logged_in(self, now: float | None = None) -> bool:
        """Whether a certificate is stored and still valid at ``now``."""
        now = time.time() if now is None else now
        return self.expires > now and self.paths.cert_path.exists()

"""What the auth service's calls return: frozen dataclasses with ``to_wire()``.

A result travels as a msgpack-safe map (:func:`to_wire`): the API dispatcher sends it to a
node, a proxy or ``jumpgate ctl``, the web service turns it into JSON. Results carry no
secret that the caller is not meant to receive (an invite's or a token's secret goes to the
admin who asked for it, once).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ssh_proto.keys import Certificate

__all__ = ["CertResult", "ClusterInfo", "CreatedToken", "HeartbeatResult", "Invite", "InviteInfo", "JoinResult",
           "LoginResult", "TokenInfo", "UserInfo", "cert_result", "to_wire"]


class _Wire:
    """``to_wire()`` for result dataclasses: fields as a map, tuples as lists."""

    __slots__ = ()

    def to_wire(self) -> dict[str, Any]:
        return {f.name: to_wire(getattr(self, f.name)) for f in dataclasses.fields(self)}


def to_wire(value: Any) -> Any:
    """Convert a service result (dataclass, list, map, scalar) to msgpack-safe values."""
    if hasattr(value, "to_wire"):
        return value.to_wire()
    if isinstance(value, (list, tuple)):
        return [to_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_wire(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class Invite(_Wire):
    """A new invite. ``token`` is the secret; the web/ctl side appends ``.<TLS pin>``."""

    user: str
    token: str
    expires: float


@dataclass(frozen=True, slots=True)
class InviteInfo(_Wire):
    """What the signup page shows: the otpauth URI holds the TOTP seed to enrol."""

    user: str
    logins: tuple[str, ...]
    otp_uri: str
    expires: float
    cluster: str


@dataclass(frozen=True, slots=True)
class LoginResult(_Wire):
    """A login's certificate (``-cert.pub`` line) and the cluster trust lines."""

    user: str
    cert: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]
    expires: float
    host_ca: str  # @cert-authority known_hosts line
    user_ca: str
    cluster: str


@dataclass(frozen=True, slots=True)
class UserInfo(_Wire):
    name: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]
    status: str  # "invited" | "active" | "locked"
    created: float
    locked_until: float


@dataclass(frozen=True, slots=True)
class CreatedToken(_Wire):
    """A join token to hand to a node: ``token`` is ``<secret>.<host CA pin>``."""

    id: str
    kind: str
    token: str
    expires: float
    name: str = ""                      # the name it joins as ("" = the joiner's choice)
    addresses: tuple[str, ...] = ()     # addresses approved for its certificate (J3)


@dataclass(frozen=True, slots=True)
class TokenInfo(_Wire):
    id: str
    kind: str
    created: float
    expires: float
    status: str  # "active" | "expired" | "used"
    used_by: str = ""
    name: str = ""
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CertResult(_Wire):
    cert: str
    key_id: str
    principals: tuple[str, ...]
    expires: float
    serial: int


@dataclass(frozen=True, slots=True)
class JoinResult(_Wire):
    """What a joining (or renewing) node or proxy receives."""

    name: str
    kind: str
    host_cert: str
    expires: float
    user_ca: str
    host_ca: str
    cluster: str
    addr: str = ""                      # where the proxy dials it, as registered (J4)
    dropped: tuple[str, ...] = ()       # requested addresses nobody vouched for (J3)


@dataclass(frozen=True, slots=True)
class HeartbeatResult(_Wire):
    """What the auth server keeps for a node that heartbeats: its ``addr`` is the one
    registered at the join, whatever the heartbeat said (J4)."""

    addr: str


@dataclass(frozen=True, slots=True)
class ClusterInfo(_Wire):
    cluster: str
    host_ca: str
    user_ca: str
    host_ca_pin: str


@dataclass(frozen=True, slots=True)
class BotInfo(_Wire):
    """A bot as ``ctl bots ls`` lists it."""

    name: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]
    created: float


@dataclass(frozen=True, slots=True)
class CreatedBot(_Wire):
    """``ctl bots add``: the bot and its single-use bot token ``<secret>.<host CA pin>``."""

    name: str
    logins: tuple[str, ...]
    roles: tuple[str, ...]
    token: str
    token_id: str
    expires: float


@dataclass(frozen=True, slots=True)
class HostStatus(_Wire):
    """A joined node or proxy as ``ctl status`` shows it: ``state`` is "online" when it
    heartbeat within :data:`~appliance.auth.service.ONLINE_SECONDS`."""

    name: str
    kind: str
    last_seen: float
    state: str


@dataclass(frozen=True, slots=True)
class ClusterStatus(_Wire):
    """``ctl status`` (as ``tctl status``): the cluster, its CAs, versions and hosts."""

    cluster: str
    version: str
    schema_version: int
    user_ca_fingerprint: str
    host_ca_fingerprint: str
    host_ca_pin: str
    hosts: tuple[HostStatus, ...]


def cert_result(cert: Certificate) -> CertResult:
    return CertResult(cert.to_line(), cert.key_id, cert.principals, float(cert.valid_before),
                      cert.serial)

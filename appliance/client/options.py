"""``jumpgate ssh -o``: the OpenSSH client options that mean something here (standard library only).

A user with an OpenSSH habit types ``-o ServerAliveInterval=30``; each option either does
what it does in OpenSSH or is refused by name, never silently dropped. The syntax is
OpenSSH's: the keyword is case-insensitive and ends at ``=`` or white space
(``-o Name=value``, ``-o "Name value"``, ``-o "Name = value"``), and, as in OpenSSH, the
first value given for an option is the one used.

=========================  =================================================================
``ServerAliveInterval N``  every N seconds, a ``keepalive@openssh.com`` global request to the
                           node (0, the default: none)
``ServerAliveCountMax N``  that many unanswered in a row and the node is taken for dead: the
                           connection is cut, ``jumpgate ssh`` exits 255 (default 3)
``ConnectTimeout N``       the bound on each hop's connection: proxy, channel, node (default 15)
``StrictHostKeyChecking``  ``yes``, ``ask`` and ``accept-new`` are what Jumpgate always does
                           (hosts are verified by the cluster's host CA, nothing is learnt);
                           ``no``/``off`` are refused: the check cannot be turned off
=========================  =================================================================

Times take OpenSSH's format: ``90``, ``90s``, ``1m30s``, ``2h``.

>>> parse_options(["serveraliveinterval=5", "ServerAliveCountMax 2", "ServerAliveInterval=9"])
ClientOptions(server_alive_interval=5.0, server_alive_count_max=2, connect_timeout=None)
>>> parse_time("1m30s")
90.0
"""
from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["ClientOptions", "OptionError", "parse_options", "parse_time"]

_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TIME_PART = re.compile(r"(\d+)([smhdw]?)", re.IGNORECASE)
_KEYWORD = re.compile(r"\s*([A-Za-z][A-Za-z0-9]*)\s*(?:=\s*|\s+)(.*?)\s*$", re.DOTALL)
MAX_SECONDS = 10 * 365 * 86400


class OptionError(ValueError):
    """An ``-o`` that is malformed, unknown here, or asks for what Jumpgate will not do; one line."""


class ClientOptions:
    """The ``-o`` settings of one ``jumpgate ssh``/``scp``, with OpenSSH's defaults (immutable).

    A plain class, not a dataclass: the thin ``jumpgate ssh`` imports this module, and
    ``dataclasses`` alone costs it milliseconds.
    """

    __slots__ = ("server_alive_interval", "server_alive_count_max", "connect_timeout")
    _FIELDS = __slots__

    def __init__(self, server_alive_interval: float = 0.0, server_alive_count_max: int = 3,
                 connect_timeout: float | None = None):  # connect_timeout None: the client's own default
        for name, value in zip(self._FIELDS, (server_alive_interval, server_alive_count_max, connect_timeout)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError("ClientOptions is immutable")

    def __eq__(self, other) -> bool:
        return isinstance(other, ClientOptions) and self.to_wire() == other.to_wire()

    def __hash__(self) -> int:
        return hash(tuple(self.to_wire().values()))

    def __repr__(self) -> str:
        return f"ClientOptions({', '.join(f'{k}={v!r}' for k, v in self.to_wire().items())})"

    def to_wire(self) -> dict:
        return {name: getattr(self, name) for name in self._FIELDS}

    @classmethod
    def from_wire(cls, data: object) -> "ClientOptions":
        """From the session daemon's protocol; OptionError for anything off its types and ranges."""
        if not isinstance(data, dict) or set(data) != set(cls._FIELDS):
            raise OptionError("options must be an object of the known settings")
        interval, count, timeout = data["server_alive_interval"], data["server_alive_count_max"], \
            data["connect_timeout"]
        if type(interval) not in (int, float) or not 0 <= interval <= MAX_SECONDS:
            raise OptionError("server_alive_interval out of range")
        if type(count) is not int or not 1 <= count <= 1_000_000:
            raise OptionError("server_alive_count_max out of range")
        if timeout is not None and (type(timeout) not in (int, float) or not 0 < timeout <= MAX_SECONDS):
            raise OptionError("connect_timeout out of range")
        return cls(float(interval), count, None if timeout is None else float(timeout))


def parse_time(text: str) -> float:
    """OpenSSH's time format (``sshd_config(5)`` TIME FORMATS) -> seconds; ValueError if not one."""
    text = text.strip()
    position, total = 0, 0
    for match in _TIME_PART.finditer(text):
        if match.start() != position:
            break
        total += int(match.group(1)) * _TIME_UNITS[match.group(2).lower()]
        position = match.end()
    if not text or position != len(text) or total > MAX_SECONDS:
        raise ValueError(f"not a time: {text!r}")
    return float(total)


def _split(spec: str) -> tuple[str, str]:
    match = _KEYWORD.match(spec)
    if match is None or not match.group(2):
        raise OptionError(f"bad -o {spec!r}: use -o Name=value")
    return match.group(1), match.group(2).strip('"')


def _seconds(name: str, value: str, *, zero: bool) -> float:
    try:
        seconds = parse_time(value)
    except ValueError:
        raise OptionError(f"-o {name}: {value!r} is not a time (seconds, or e.g. 1m30s)") from None
    if seconds == 0 and not zero:
        raise OptionError(f"-o {name}: must be more than 0")
    return seconds


def _count(name: str, value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 1_000_000:
        raise OptionError(f"-o {name}: {value!r} is not a count (1 or more)")
    return int(value)


def _strict(name: str, value: str) -> None:
    if value.lower() in ("no", "off", "false"):
        raise OptionError(f"-o {name}={value} is not supported: the proxy and nodes are always verified "
                          "by the cluster's host CA")
    if value.lower() not in ("yes", "ask", "accept-new", "on", "true"):
        raise OptionError(f"-o {name}: {value!r} is not yes, ask, accept-new or no")


def parse_options(specs: Iterable[str]) -> ClientOptions:
    """The ``-o`` values, in order; OptionError naming the first one refused."""
    found: dict[str, object] = {}
    for spec in specs:
        name, value = _split(spec)
        key = name.lower()
        if key == "serveraliveinterval":
            setting = _seconds(name, value, zero=True)
        elif key == "serveralivecountmax":
            setting = _count(name, value)
        elif key == "connecttimeout":
            setting = None if value.lower() == "none" else _seconds(name, value, zero=False)
        elif key == "stricthostkeychecking":
            setting = _strict(name, value)
        else:
            raise OptionError(f"not supported: -o {name} (jumpgate ssh takes ServerAliveInterval, "
                              "ServerAliveCountMax, ConnectTimeout and StrictHostKeyChecking)")
        found.setdefault(key, setting)  # the first value wins, as in OpenSSH
    return ClientOptions(server_alive_interval=found.get("serveraliveinterval", 0.0),
                         server_alive_count_max=found.get("serveralivecountmax", 3),
                         connect_timeout=found.get("connecttimeout"))

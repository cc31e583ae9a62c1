"""Configuration of `jumpgate start` and `jumpgate ctl`: defaults < TOML file < flags.

Every setting is declared once, in :data:`SETTINGS`: its TOML key, its flag, its default, the
check that reads it, and the line that documents it. From that one table :func:`load_config`
reads the file (``--config jumpgate.toml``, with the stdlib ``tomllib``) and the flags with the
same rules, and :func:`default_config_text` writes the commented default file that ``jumpgate
start --print-config`` prints; ``docs/config.md`` is the reference a person reads (a test keeps
the three in step).

Rules:

* A key that is not a setting is refused, naming it and, when it can be found, its line
  (``tomllib`` gives no line numbers, so the file is searched for it): a misspelt
  ``[ports] nod = 3022`` must not leave the node on its default port unnoticed.
* Every value is checked when it is read, in the file and in a flag alike: ports are whole
  numbers 1-65535 and two services may not share one; addresses follow
  :mod:`appliance.addresses`; names :mod:`appliance.names`; labels :mod:`appliance.inventory`.
  A bad value is a :class:`ConfigError` naming the key or the flag and what is allowed,
  before anything listens (``--node-port 99999`` once logged "serving SSH on
  0.0.0.0:99999" while the node listened elsewhere).

>>> cfg = load_config(None, data_dir="/tmp/jg", port_overrides={"node": 4022})
>>> cfg.ports["node"], cfg.ports["proxy"], cfg.services
(4022, 3023, ('auth', 'proxy', 'node', 'web'))
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import inventory, names
from .addresses import AUTH_PORT, DEFAULT_PORTS, DIAG_PORT, AddressError, format_endpoint, parse_endpoint, parse_host, parse_port
from .audit import DEFAULT_REFUSALS_PER_SOURCE, DEFAULT_RETENTION_DAYS

__all__ = ["ALL_SERVICES", "SETTINGS", "CommandLabelConfig", "Config", "ConfigError", "default_config_text",
           "default_data_dir", "load_config", "parse_period"]

#: The services ``jumpgate start`` runs (Teleport calls them roles; a user's roles are another thing).
ALL_SERVICES = ("auth", "proxy", "node", "web")
DEFAULT_LABEL_PERIOD = 60.0


class ConfigError(Exception):
    """The configuration is invalid; the message says what to fix."""


def default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/jumpgate")
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "jumpgate"


@dataclasses.dataclass(frozen=True, slots=True)
class CommandLabelConfig:
    command: tuple[str, ...]
    period: float = DEFAULT_LABEL_PERIOD


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    data_dir: Path
    services: tuple[str, ...] = ALL_SERVICES
    cluster_name: str = ""
    public_addr: str = ""
    listen_addr: str = "0.0.0.0"
    auth_server: str = ""
    token: str = ""
    ports: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_PORTS))
    node_name: str = ""
    labels: dict = dataclasses.field(default_factory=dict)
    command_labels: dict = dataclasses.field(default_factory=dict)
    web_cert: str = ""
    web_key: str = ""
    audit_retention_days: int = DEFAULT_RETENTION_DAYS
    audit_refusals_per_source: int = DEFAULT_REFUSALS_PER_SOURCE
    diag_addr: str = ""
    recording: str = "node"
    recording_input: bool = False

    @property
    def host_name(self) -> str:
        return self.public_addr or socket.gethostname()

    def addr(self, service: str) -> tuple[str, int]:
        return self.listen_addr, self.ports[service]


# ------------------------------------------------------------------------------ checks
# Each takes the value as read (TOML or flag) and returns it as Config holds it; a ValueError
# says what is wrong and becomes a ConfigError naming the key or the flag.

def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _recording_mode(value: Any) -> str:
    if value not in ("node", "proxy", "off"):
        raise ValueError('expected "node", "proxy" or "off"')
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _whole(low: int) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"expected a whole number >= {low}")
        return value
    return check


def _services(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of services: {', '.join(ALL_SERVICES)}")
    bad = [v for v in value if v not in ALL_SERVICES]
    if bad:
        raise ValueError(f"unknown service(s) {', '.join(bad)} (known: {', '.join(ALL_SERVICES)})")
    if len(set(value)) != len(value):
        raise ValueError("a service is named twice")
    return tuple(value)


def _host(value: Any) -> str:
    try:
        return parse_host(_text(value))
    except AddressError as exc:
        raise ValueError(str(exc).removeprefix("invalid host ")) from None


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: "" if value == "" else check(value)


def _auth_server(value: Any) -> str:
    try:
        return format_endpoint(*parse_endpoint(_text(value), AUTH_PORT))
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _diag_addr(value: Any) -> str:
    """``HOST:PORT`` (or a port alone: loopback) of the diagnostics endpoint."""
    text = _text(value)
    if text.isdigit():
        text = f"127.0.0.1:{text}"
    try:
        return format_endpoint(*parse_endpoint(text, DIAG_PORT, "diag address"))
    except AddressError as exc:
        raise ValueError(str(exc)) from None


def _port(value: Any) -> int:
    if not isinstance(value, int):   # the file's "3022" is a string: the flags come as ints
        raise ValueError("a port is a whole number 1-65535")
    try:
        return parse_port(value)
    except AddressError:
        raise ValueError("a port is a whole number 1-65535") from None


def _cluster_name(value: Any) -> str:
    text = _text(value)
    if text and not names.is_dns_name(text.lower()):
        raise ValueError("expected a DNS name (letters, digits, '-' and '.')")
    return text


def _node_name(value: Any) -> str:
    text = _text(value)
    if text and not names.is_node_name(text.lower()):
        raise ValueError("expected one DNS label (a-z, 0-9 and '-', at most 63 characters, no dots)")
    return text


def _labels(value: Any) -> dict[str, str]:
    try:
        return inventory.parse_labels(value) if isinstance(value, str) else inventory.check_labels(value)
    except inventory.LabelError as exc:
        raise ValueError(str(exc)) from None


_PERIOD = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def parse_period(value: Any) -> float:
    """A command label's period: seconds (``60``, ``0.5``) or text (``"30s"``, ``"1m"``,
    ``"2h"``, ``"1h30m"``, ``"90"``) -> seconds; ValueError if it is not a positive time."""
    if isinstance(value, str):
        found = _PERIOD.fullmatch(value.strip().lower())
        if value.strip().isdigit():
            value = int(value)
        elif value.strip() and found:
            hours, minutes, seconds = (int(g or 0) for g in found.groups())
            value = (hours * 60 + minutes) * 60 + seconds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError("period must be a positive number of seconds, or a time such as \"30s\", \"1m\", \"2h\"")
    return float(value)


def _command_label(value: Any) -> CommandLabelConfig:
    if not isinstance(value, Mapping):
        raise ValueError('expected {command = ["prog", "arg", ...], period = "1m"}')
    unknown = sorted(set(value) - {"command", "period"})
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (a command label has command and period)")
    command = value.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(a, str) and a for a in command):
        raise ValueError("command must be a non-empty list of strings")
    return CommandLabelConfig(tuple(command), parse_period(value.get("period", DEFAULT_LABEL_PERIOD)))


def _label_command_flags(value: Any) -> dict[str, CommandLabelConfig]:
    """``--label-command NAME[@PERIOD]=COMMAND`` (repeated): COMMAND is one shell command line
    (``sh -c``), PERIOD as :func:`parse_period` (default 60 s). The period sits on the name's side
    of the first ``=``, where a label name never has an ``@``, so any command line fits."""
    out: dict[str, CommandLabelConfig] = {}
    for item in value:
        head, sep, command = item.partition("=")
        name, at, period = head.partition("@")
        if not sep or not name or not command.strip():
            raise ValueError(f"{item[:64]!r}: expected NAME=COMMAND or NAME@PERIOD=COMMAND "
                             "(e.g. kernel@1h='uname -r')")
        if name in out:
            raise ValueError(f"label {name!r} is given twice")
        try:
            inventory.check_label(name, "")
            out[name] = CommandLabelConfig(("sh", "-c", command), parse_period(period) if at else DEFAULT_LABEL_PERIOD)
        except ValueError as exc:
            raise ValueError(f"label {name!r}: {exc}") from None
    return out


def _command_labels(value: Any) -> dict[str, CommandLabelConfig]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of command labels")
    out = {}
    for name, spec in value.items():
        try:
            inventory.check_label(name, "")
            out[name] = _command_label(spec)
        except ValueError as exc:
            raise ValueError(f"label {name!r}: {exc}") from None
    return out


# ------------------------------------------------------------------------------ the settings

@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One setting: ``key`` in the TOML file (``table.name``), ``field`` of :class:`Config`,
    its ``flag`` of ``jumpgate start`` (if any), its default as the file writes it, and its
    one-line ``doc``."""

    key: str
    field: str
    check: Callable[[Any], Any]
    doc: str
    default: Any = None
    flag: str = ""
    example: Any = None   # shown (commented out) in the default file when there is no default


SETTINGS: tuple[Setting, ...] = (
    Setting("data_dir", "data_dir", _text, "state directory (CA, database, joined identities)",
            example="/var/lib/jumpgate", flag="--data-dir"),
    Setting("cluster_name", "cluster_name", _cluster_name,
            "the cluster's DNS name, not a public suffix; nodes are NAME.CLUSTER (default: this host's name)",
            example="acme.internal", flag="--cluster-name"),
    Setting("services", "services", _services, "what this process runs (\"roles\" is the same key, as Teleport "
            "names them)", default=list(ALL_SERVICES), flag="--services"),
    Setting("public_addr", "public_addr", _optional(_host),
            "the name or address users and nodes reach this host by (default: the host name)",
            example="jump.example.com", flag="--public-addr"),
    Setting("listen_addr", "listen_addr", _host, "the address every service listens on", default="0.0.0.0",
            flag="--listen-addr"),
    Setting("auth_server", "auth_server", _optional(_auth_server),
            "HOST[:PORT] of the auth service to join, for services without auth", example="auth.example.com:3025",
            flag="--auth-server"),
    Setting("token", "token", _text, "the join token from `jumpgate ctl tokens add` (needed once)",
            example="SECRET.PIN", flag="--token"),
    *(Setting(f"ports.{name}", f"ports.{name}", _port, what, default=DEFAULT_PORTS[name], flag=f"--{name}-port")
      for name, what in (("node", "the node's SSH server"), ("proxy", "the proxy's SSH server: users' first hop"),
                         ("tunnel", "reserved for reverse tunnels from nodes"),
                         ("auth", "the auth service: the CA and the cluster API over SSH"),
                         ("web", "HTTPS: invite, signup and login"))),
    Setting("node.name", "node_name", _node_name,
            "this node's name, one DNS label, fixed at its first join (the proxy is NAME-proxy; default: the "
            "host name)", example="db1", flag="--nodename"),
    Setting("node.labels", "labels", _labels, "static labels, key = \"value\" (jumpgate ls key=value)",
            example={"env": "prod"}, flag="--labels"),
    Setting("node.commands", "command_labels", _command_labels,
            "labels whose value is a command's output, refreshed every period (seconds, or \"30s\", \"1m\", "
            "\"2h\"; default 60 s); the flag takes NAME[@PERIOD]=SHELL-COMMAND, repeated",
            example={"kernel": {"command": ["uname", "-r"], "period": "1h"}}, flag="--label-command"),
    Setting("web.cert", "web_cert", _text, "a PEM certificate chain for HTTPS instead of the self-signed one",
            example="/etc/jumpgate/tls.crt"),
    Setting("web.key", "web_key", _text, "its unencrypted PEM private key", example="/etc/jumpgate/tls.key"),
    Setting("audit.retention_days", "audit_retention_days", _whole(0),
            "days the audit log keeps events; older ones are pruned hourly (0 keeps every event)",
            default=DEFAULT_RETENTION_DAYS, flag="--audit-retention-days"),
    Setting("audit.refusals_per_source", "audit_refusals_per_source", _whole(1),
            "refusals from one client written in full a minute; the rest are counted in one "
            "audit.coalesced event", default=DEFAULT_REFUSALS_PER_SOURCE),
    Setting("recording.mode", "recording", _recording_mode,
            "who records sessions: \"node\" (every shell and exec, on the node: the default), \"proxy\" (not "
            "built yet: nothing is recorded) or \"off\"", default="node"),
    Setting("recording.input", "recording_input", _boolean,
            "record what users type too (passwords typed at a prompt included: off by default)", default=False),
    Setting("diag.addr", "diag_addr", _optional(_diag_addr),
            "HOST:PORT of the diagnostics endpoint, plain HTTP: /healthz, /readyz, /metrics (off when unset; "
            "keep it on loopback or a private network)", example="127.0.0.1:3081", flag="--diag-addr"),
)
_BY_KEY = {s.key: s for s in SETTINGS}
_ALIASES = {"roles": "services"}
_TABLES = {key.split(".")[0] for key in _BY_KEY if "." in key}
_VALUE_TABLES = {"node.labels", "node.commands"}   # settings whose value is a table of the user's names


# ------------------------------------------------------------------------------ reading

def _line_of(text: str, key: str) -> int | None:
    """The line (1-based) where ``key`` (``table.name`` or ``name``) is set, if it can be found."""
    table, _, name = key.rpartition(".")
    current = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.fullmatch(r"\[\s*([^\]]+?)\s*\]\s*(#.*)?", stripped)
        if header:
            current = header.group(1).replace(" ", "")
            if current == key:
                return number
            continue
        assigned = re.match(r"([A-Za-z0-9_.\"-]+)\s*=", stripped)
        if assigned:
            full = ".".join(p for p in (current, assigned.group(1).replace('"', "")) if p)
            if full == key or (not table and current == "" and assigned.group(1) == name):
                return number
    return None


def _flatten(raw: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """``{"ports": {"node": 1}}`` -> ``[("ports.node", 1)]``, down to the settings' own depth
    (the keys as written: an alias is resolved by the caller)."""
    flat: list[tuple[str, Any]] = []
    for key, value in raw.items():
        if key in _TABLES and isinstance(value, Mapping):
            flat += [(f"{key}.{sub}", inner) for sub, inner in value.items()]
        else:
            flat.append((key, value))
    return flat


def _read_file(path: str) -> tuple[dict[str, Any], str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        return tomllib.loads(data.decode("utf-8")), data.decode("utf-8")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None


def _where(path: str, text: str, key: str) -> str:
    line = _line_of(text, key)
    return f"{path}, line {line}" if line else path


def _from_file(path: str) -> dict[str, Any]:
    """The settings of a TOML file, checked, by Config field."""
    raw, text = _read_file(path)
    if "roles" in raw and "services" in raw:
        raise ConfigError(f"{_where(path, text, 'roles')}: give services or roles (the same setting), not both")
    values: dict[str, Any] = {}
    for key, value in _flatten(raw):
        setting = _BY_KEY.get(_ALIASES.get(key, key))
        if setting is None and key in _TABLES:
            raise ConfigError(f"{_where(path, text, key)}: {key} must be a table ([{key}])")
        if setting is None:
            raise ConfigError(f"{_where(path, text, key)}: unknown setting {key!r} (the settings are: "
                              f"{', '.join(s.key for s in SETTINGS)}; see docs/config.md or "
                              "`jumpgate start --print-config`)")
        values[setting.field] = _checked(setting, value, f"{_where(path, text, key)}: {key}")
    return values


def _checked(setting: Setting, value: Any, where: str) -> Any:
    try:
        return setting.check(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _flag(field: str) -> Setting:
    return next(s for s in SETTINGS if s.field == field)


def _from_flags(overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(settings, port overrides, labels) given on the command line, checked; empty ones skipped."""
    values: dict[str, Any] = {}
    ports: dict[str, int] = {}
    labels: dict[str, str] = {}
    for key, value in overrides.items():
        if value in (None, "", (), {}):
            continue
        if key == "port_overrides":
            for name, port in value.items():
                ports[name] = _checked(_BY_KEY[f"ports.{name}"], port, f"--{name}-port")
        elif key == "labels":
            labels = _checked(_flag("labels"), value, "--labels")
        elif key == "command_labels":
            try:
                values[key] = _label_command_flags(value)
            except ValueError as exc:
                raise ConfigError(f"--label-command: {exc}") from None
        elif key in ("data_dir",):
            values[key] = Path(value)
        else:
            setting = _flag(key)
            values[key] = _checked(setting, value, setting.flag or key)
    return values, ports, labels


def _check_ports(cfg: Config) -> None:
    """Two services this process runs may not share a port (the second would not listen)."""
    used: dict[int, str] = {}
    for service in cfg.services:
        port = cfg.ports[service]
        if port in used:
            raise ConfigError(f"the {used[port]} and {service} services both use port {port} "
                              f"(--{used[port]}-port, --{service}-port or [ports] in the TOML file)")
        used[port] = service


def load_config(path: str | None = None, **overrides) -> Config:
    """Read ``path`` (if given) and apply non-empty ``overrides`` (from command-line flags:
    Config's field names, ``port_overrides={"node": 4022}``, and ``labels`` and
    ``command_labels`` (``--label-command`` words), merged over the file's); ConfigError for anything the rules above refuse."""
    values = _from_file(path) if path else {}
    flags, port_flags, label_flags = _from_flags(overrides)
    ports = dict(DEFAULT_PORTS)
    for key in list(values):
        if key.startswith("ports."):
            ports[key.removeprefix("ports.")] = values.pop(key)
    values["command_labels"] = {**values.get("command_labels", {}), **flags.pop("command_labels", {})}
    values.update(flags)
    values["ports"] = {**ports, **port_flags}
    values["labels"] = {**values.get("labels", {}), **label_flags}
    clash = sorted(values["labels"].keys() & values["command_labels"].keys())
    if clash:
        raise ConfigError(f"label {clash[0]!r} is both static (node.labels, --labels) and a command label "
                          "(node.commands, --label-command): give it once")
    values["data_dir"] = Path(values.get("data_dir") or default_data_dir())
    cfg = Config(**values)
    if (cfg.web_cert == "") != (cfg.web_key == ""):
        raise ConfigError("web.cert and web.key go together: give both or neither")
    if "auth" not in cfg.services and not cfg.auth_server:
        raise ConfigError("services without auth need --auth-server HOST:3025 (and --token to join)")
    _check_ports(cfg)
    if not cfg.cluster_name:
        cfg = dataclasses.replace(cfg, cluster_name=socket.gethostname().split(".")[0])
    if not cfg.node_name:
        cfg = dataclasses.replace(cfg, node_name=socket.gethostname().split(".")[0])
    return cfg


# ------------------------------------------------------------------------------ the default file

def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def default_config_text() -> str:
    """The commented default file of ``jumpgate start --print-config``: every setting with its
    default (or, commented out, an example), read back by :func:`load_config` as the defaults."""
    lines = ["# jumpgate.toml: the settings of `jumpgate start` and `jumpgate ctl` (docs/config.md).",
             "# Defaults < this file < flags. Unknown keys are refused. Uncomment to change.", ""]
    table = ""
    for setting in SETTINGS:
        section, _, name = setting.key.rpartition(".")
        if section != table:
            lines += ["", f"[{section}]"]
            table = section
        flag = f" ({setting.flag})" if setting.flag else ""
        lines.append(f"# {setting.doc}{flag}")
        if setting.key in _VALUE_TABLES:
            for label, value in setting.example.items():
                lines.append(f"# {name}.{label} = {_toml(value)}")
        elif setting.default is not None:
            lines.append(f"{name} = {_toml(setting.default)}")
        else:
            lines.append(f"# {name} = {_toml(setting.example)}")
    return "\n".join(lines) + "\n"

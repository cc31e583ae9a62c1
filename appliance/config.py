"""Configuration of `jumpgate start` and `jumpgate ctl`: defaults < TOML file < flags.

A TOML file (``--config jumpgate.toml``, read with the stdlib ``tomllib``) may hold::

    data_dir = "/var/lib/jumpgate"
    cluster_name = "example"
    services = ["auth", "proxy", "node", "web"]   # or "roles", as Teleport spells it
    public_addr = "jump.example.com"       # the name users and nodes reach this host by
    auth_server = "auth.example.com:3025"  # for services joining a remote auth
    [ports]
    node = 3022
    proxy = 3023
    tunnel = 3024
    auth = 3025
    web = 3080
    [node]
    name = "db1"
    labels = {env = "prod"}
    [node.commands]                         # dynamic labels: refreshed by running a command
    kernel = {command = ["uname", "-r"], period = 60}
    [web]
    cert = "/etc/jumpgate/tls.crt"           # optional: a certificate instead of the self-signed one
    key = "/etc/jumpgate/tls.key"
    [audit]
    retention_days = 365                    # audit events older than this are pruned; 0 = keep all
    refusals_per_source = 10                # refusals from one client written in full a minute;
                                            # the rest are counted in one audit.coalesced event
"""
from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from pathlib import Path

from . import inventory
from .addresses import DEFAULT_PORTS
from .audit import DEFAULT_REFUSALS_PER_SOURCE, DEFAULT_RETENTION_DAYS

#: The services ``jumpgate start`` runs (Teleport calls them roles; a user's roles are another thing).
ALL_SERVICES = ("auth", "proxy", "node", "web")


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
    period: float = 60.0


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

    @property
    def host_name(self) -> str:
        return self.public_addr or socket.gethostname()

    def addr(self, service: str) -> tuple[str, int]:
        return self.listen_addr, self.ports[service]


def parse_labels(text: str) -> dict[str, str]:
    """'env=dev,team=db' -> {'env': 'dev', 'team': 'db'} (:func:`appliance.inventory.parse_labels`)."""
    try:
        return inventory.parse_labels(text)
    except inventory.LabelError as exc:
        raise ConfigError(str(exc)) from None


def _check_audit(cfg: Config) -> None:
    days, refusals = cfg.audit_retention_days, cfg.audit_refusals_per_source
    if isinstance(days, bool) or not isinstance(days, int) or days < 0:
        raise ConfigError(f"audit retention_days must be a whole number of days >= 0 (0 keeps "
                          f"every event), not {days!r}")
    if isinstance(refusals, bool) or not isinstance(refusals, int) or refusals < 1:
        raise ConfigError(f"audit refusals_per_source must be a whole number >= 1, not {refusals!r}")


def load_config(path: str | None = None, **overrides) -> Config:
    """Read ``path`` (if given) and apply non-empty ``overrides`` (from command-line flags)."""
    raw: dict = {}
    if path:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from None
    ports = dict(DEFAULT_PORTS)
    ports.update({k: int(v) for k, v in raw.get("ports", {}).items() if k in DEFAULT_PORTS})
    node = raw.get("node", {})
    web = raw.get("web", {})
    audit = raw.get("audit", {})
    commands = {name: CommandLabelConfig(tuple(spec["command"]), float(spec.get("period", 60)))
                for name, spec in node.get("commands", {}).items()}
    values = dict(
        data_dir=Path(raw.get("data_dir") or default_data_dir()),
        services=tuple(raw.get("services", raw.get("roles", ALL_SERVICES))),
        cluster_name=raw.get("cluster_name", ""),
        public_addr=raw.get("public_addr", ""),
        listen_addr=raw.get("listen_addr", "0.0.0.0"),
        auth_server=raw.get("auth_server", ""),
        token=raw.get("token", ""),
        ports=ports,
        node_name=node.get("name", ""),
        labels=dict(node.get("labels", {})),
        command_labels=commands,
        web_cert=web.get("cert", ""),
        web_key=web.get("key", ""),
        audit_retention_days=audit.get("retention_days", DEFAULT_RETENTION_DAYS),
        audit_refusals_per_source=audit.get("refusals_per_source", DEFAULT_REFUSALS_PER_SOURCE),
    )
    for key, value in overrides.items():
        if value in (None, "", (), {}):
            continue
        if key == "port_overrides":
            values["ports"] = {**values["ports"], **value}
        elif key == "labels":
            values["labels"] = {**values["labels"], **value}
        elif key == "data_dir":
            values["data_dir"] = Path(value)
        else:
            values[key] = value
    cfg = Config(**values)
    _check_audit(cfg)
    bad = [r for r in cfg.services if r not in ALL_SERVICES]
    if bad:
        raise ConfigError(f"unknown service(s): {', '.join(bad)} (known: {', '.join(ALL_SERVICES)})")
    if "auth" not in cfg.services and not cfg.auth_server:
        raise ConfigError("services without auth need --auth-server HOST:3025 (and --token to join)")
    if not cfg.cluster_name:
        cfg = dataclasses.replace(cfg, cluster_name=socket.gethostname().split(".")[0])
    if not cfg.node_name:
        cfg = dataclasses.replace(cfg, node_name=socket.gethostname().split(".")[0])
    return cfg

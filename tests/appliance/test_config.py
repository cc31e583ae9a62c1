"""What `jumpgate start` reads (appliance/config.py): every setting declared once, checked when
it is read — in a flag and in the TOML file alike — and nothing ignored (issue 14 items 3, 15).

The tests do what a user did: pass a flag or write a file, run ``jumpgate start`` (the real
``main``), and read the one line it answers, before anything listens.
"""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from appliance.cli.main import build_parser, main
from appliance.config import SETTINGS, ConfigError, default_config_text, load_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "config.md"


def start(capsys, *args: str) -> tuple[int, str]:
    """``jumpgate start ARGS`` as a user runs it: (exit status, stderr)."""
    try:
        status = main(["start", *args])
    except SystemExit as exc:   # argparse refusing a flag
        status = exc.code
    return status, capsys.readouterr().err


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "jumpgate.toml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- ports and addresses (item 3)

@pytest.mark.parametrize("port", ["99999", "0", "65536", "-1", "22.5", "ssh"])
def test_a_port_flag_outside_1_to_65535_is_refused_when_the_flags_are_read(capsys, tmp_path, port):
    """--node-port 99999 logged 'serving SSH on 0.0.0.0:99999' and listened elsewhere."""
    status, err = start(capsys, "--data-dir", str(tmp_path / "data"), "--node-port", port)
    assert status == 2 and "argument --node-port: invalid port" in err
    assert not (tmp_path / "data").exists()   # nothing was started


def test_a_port_outside_1_to_65535_in_the_file_is_refused_naming_key_and_line(capsys, tmp_path):
    path = toml(tmp_path, "# ports\n[ports]\nproxy = 3023\nnode = 99999\n")
    status, err = start(capsys, "--config", path, "--data-dir", str(tmp_path / "data"))
    assert status == 1
    assert err.strip() == f"jumpgate: {path}, line 4: ports.node: a port is a whole number 1-65535"
    assert not (tmp_path / "data").exists()
    for bad in ("true", '"3022"', "3022.0"):
        with pytest.raises(ConfigError, match="ports.node: a port"):
            load_config(toml(tmp_path, f"[ports]\nnode = {bad}\n"))


def test_two_services_on_one_port_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="proxy and node services both use port 4000"):
        load_config(None, data_dir=str(tmp_path), port_overrides={"node": 4000, "proxy": 4000})
    # a service this process does not run does not count
    load_config(None, data_dir=str(tmp_path), services="node", auth_server="auth", port_overrides={"proxy": 3022})


@pytest.mark.parametrize("flag, value, why", [
    ("--listen-addr", "0.0.0.0:3022", "expected an IP address or a DNS name"),
    ("--listen-addr", "no such host", "expected an IP address or a DNS name"),
    ("--public-addr", "jump example", "expected an IP address or a DNS name"),
    ("--auth-server", "auth:99999", "1-65535"),
    ("--auth-server", "[auth]:3025", "brackets are only for IPv6"),
    ("--cluster-name", "Bad Cluster!", "DNS name"),
    ("--nodename", "db1.example.com", "one DNS label"),
    ("--services", "auth,nodes", "unknown service(s) nodes"),
    ("--labels", "env", "expected key=value"),
])
def test_addresses_names_and_lists_in_flags_are_checked_before_starting(capsys, tmp_path, flag, value, why):
    status, err = start(capsys, "--data-dir", str(tmp_path / "data"), flag, value)
    assert status == 1 and err.startswith(f"jumpgate: {flag}: ") and why in err and len(err.splitlines()) == 1
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("line, why", [
    ('listen_addr = "0.0.0.0:3022"', "listen_addr: '0.0.0.0:3022': expected an IP address"),
    ('auth_server = "auth:0"', "auth_server: invalid address"),
    ('public_addr = 5', "public_addr: expected a string"),
    ('services = ["auth", "auth"]', "services: a service is named twice"),
])
def test_the_same_values_in_the_file_are_checked_the_same_way(tmp_path, line, why):
    with pytest.raises(ConfigError, match=re.escape(why)):
        load_config(toml(tmp_path, line + "\n"))


def test_the_auth_server_is_kept_as_host_and_port():
    assert load_config(None, data_dir="/tmp/x", services="node", auth_server="auth.example.com").auth_server \
        == "auth.example.com:3025"
    assert load_config(None, data_dir="/tmp/x", services="node", auth_server="::1").auth_server == "[::1]:3025"


# ---------------------------------------------------------------- nothing ignored (item 15)

@pytest.mark.parametrize("text, key, line", [
    ("[ports]\nnod = 3022\n", "ports.nod", 2),
    ('cluster_name = "acme"\ncluster-name = "acme"\n', "cluster-name", 2),
    ("[nodes]\nname = \"db1\"\n", "nodes", 1),
    ('[node]\nname = "db1"\nlabel = {env = "prod"}\n', "node.label", 3),
    ("[audit]\nretention = 30\n", "audit.retention", 2),
    ("[web]\ncertificate = \"/x\"\n", "web.certificate", 2),
])
def test_an_unknown_key_is_refused_naming_it_and_its_line(capsys, tmp_path, text, key, line):
    path = toml(tmp_path, text)
    status, err = start(capsys, "--config", path, "--data-dir", str(tmp_path / "data"))
    assert status == 1 and f"{path}, line {line}: unknown setting {key!r}" in err
    assert "docs/config.md" in err and len(err.splitlines()) == 1


def test_an_unknown_key_of_a_command_label_is_refused(tmp_path):
    path = toml(tmp_path, '[node.commands]\nkernel = {command = ["uname"], perod = 5}\n')
    with pytest.raises(ConfigError, match="node.commands: label 'kernel': unknown key 'perod'"):
        load_config(path)


def test_a_table_given_as_a_value_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"line 1: ports must be a table \(\[ports\]\)"):
        load_config(toml(tmp_path, "ports = 3022\n"))


def test_a_file_that_is_not_toml_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(toml(tmp_path, "[ports\n"))


def test_every_setting_of_the_file_is_read(tmp_path):
    path = toml(tmp_path, """
data_dir = "/srv/jg"
cluster_name = "acme"
services = ["node"]
public_addr = "10.0.0.5"
listen_addr = "10.0.0.5"
auth_server = "auth.acme:4025"
token = "SECRET.PIN"
[ports]
node = 4022
[node]
name = "db1"
labels = {env = "prod"}
commands.kernel = {command = ["uname", "-r"], period = 5}
[web]
cert = "/etc/c.pem"
key = "/etc/k.pem"
[audit]
retention_days = 30
refusals_per_source = 3
""")
    cfg = load_config(path)
    assert (str(cfg.data_dir), cfg.cluster_name, cfg.services, cfg.public_addr, cfg.listen_addr, cfg.auth_server,
            cfg.token, cfg.ports["node"], cfg.node_name, cfg.labels, cfg.command_labels["kernel"].command,
            cfg.command_labels["kernel"].period, cfg.web_cert, cfg.web_key, cfg.audit_retention_days,
            cfg.audit_refusals_per_source) == \
        ("/srv/jg", "acme", ("node",), "10.0.0.5", "10.0.0.5", "auth.acme:4025", "SECRET.PIN", 4022, "db1",
         {"env": "prod"}, ("uname", "-r"), 5.0, "/etc/c.pem", "/etc/k.pem", 30, 3)


def test_flags_win_over_the_file_and_labels_add_to_it(tmp_path):
    path = toml(tmp_path, '[ports]\nnode = 4022\n[node]\nlabels = {env = "prod", team = "db"}\n')
    cfg = load_config(path, data_dir=str(tmp_path), port_overrides={"node": 5022}, labels="env=dev")
    assert cfg.ports["node"] == 5022 and cfg.labels == {"env": "dev", "team": "db"}


def test_web_cert_and_key_go_together(tmp_path):
    with pytest.raises(ConfigError, match="both or neither"):
        load_config(toml(tmp_path, '[web]\ncert = "/etc/c.pem"\n'))


def test_roles_is_the_same_setting_as_services_in_the_file_and_the_flag(tmp_path):
    assert load_config(toml(tmp_path, 'roles = ["auth"]\n')).services == ("auth",)
    with pytest.raises(ConfigError, match="services or roles"):
        load_config(toml(tmp_path, 'roles = ["auth"]\nservices = ["auth"]\n'))
    parser = build_parser("start")
    assert parser.parse_args(["start", "--roles", "node"]).services == "node" \
        == parser.parse_args(["start", "--services", "node"]).services


# ---------------------------------------------------------------- one table, three views

def test_print_config_prints_a_commented_file_that_reads_back_as_the_defaults(capsys, tmp_path):
    status, _ = start(capsys, "--print-config")
    printed = default_config_text()
    assert status == 0
    tomllib.loads(printed)
    path = toml(tmp_path, printed)
    assert load_config(path, data_dir=str(tmp_path)) == load_config(None, data_dir=str(tmp_path))
    for setting in SETTINGS:
        name = setting.key.rpartition(".")[2]
        assert re.search(rf"^#? ?{re.escape(name)}[ .=]", printed, re.M), setting.key


def test_print_config_writes_to_stdout_only(capsys):
    assert main(["start", "--print-config"]) == 0
    out, err = capsys.readouterr()
    assert out == default_config_text() and err == ""


def test_docs_config_md_documents_every_setting_and_flag():
    text = DOCS.read_text()
    for setting in SETTINGS:
        assert f"| `{setting.key}` |" in text, setting.key
        if setting.flag:
            assert f"`{setting.flag}`" in text, setting.flag


def test_every_start_flag_is_a_setting_but_config_and_print_config():
    parser = build_parser("start")
    sub = next(a for a in parser._actions if a.dest == "subcommand").choices["start"]
    flags = {opt for a in sub._actions for opt in a.option_strings if opt.startswith("--")}
    declared = {s.flag for s in SETTINGS if s.flag} | {"--roles", "--help", "--config", "--print-config",
                                                       "--debug"}  # the top-level flag, taken after any command too
    assert flags == declared


def test_the_readme_points_at_the_reference():
    readme = (DOCS.parents[1] / "README.md").read_text()
    assert "docs/config.md" in readme and "see `appliance/config.py`" not in readme


# ---------------------------------------------------------------- command labels (issue 15)

@pytest.mark.parametrize("period, seconds", [(60, 60.0), (0.5, 0.5), ('"30s"', 30.0), ('"1m"', 60.0),
                                             ('"2h"', 7200.0), ('"1h30m"', 5400.0), ('"90"', 90.0)])
def test_a_command_labels_period_is_seconds_or_a_time_such_as_1m(tmp_path, period, seconds):
    path = toml(tmp_path, f'[node.commands]\nkernel = {{command = ["uname", "-r"], period = {period}}}\n')
    assert load_config(path).command_labels["kernel"].period == seconds


@pytest.mark.parametrize("period", ['"1x"', '"m"', '""', "0", "-5", '"0s"', "true"])
def test_a_bad_period_is_refused_when_the_file_is_read_naming_the_label(capsys, tmp_path, period):
    path = toml(tmp_path, f'[node.commands]\nkernel = {{command = ["uname"], period = {period}}}\n')
    status, err = start(capsys, "--config", path, "--data-dir", str(tmp_path / "data"))
    assert status == 1 and f"{path}, line 1: node.commands: label 'kernel': period must be" in err


def test_label_command_flags_run_a_shell_line_with_a_period_on_the_name_side(tmp_path):
    cfg = load_config(None, data_dir=str(tmp_path), command_labels=[
        "kernel=uname -r", "containers@30s=docker ps --format '{{.Names}}' | paste -sd,", "mail@2h=echo a@b=c"])
    assert cfg.command_labels["kernel"].command == ("sh", "-c", "uname -r")
    assert cfg.command_labels["kernel"].period == 60.0
    assert cfg.command_labels["containers"].command[2] == "docker ps --format '{{.Names}}' | paste -sd,"
    assert cfg.command_labels["containers"].period == 30.0
    assert cfg.command_labels["mail"].command[2] == "echo a@b=c" and cfg.command_labels["mail"].period == 7200.0


def test_label_command_flags_add_to_the_files_and_win_by_name(tmp_path):
    path = toml(tmp_path, '[node.commands]\nkernel = {command = ["uname", "-r"]}\narch = {command = ["uname", "-m"]}\n')
    cfg = load_config(path, data_dir=str(tmp_path), command_labels=["kernel@5m=uname -v"])
    assert cfg.command_labels["kernel"].command == ("sh", "-c", "uname -v")
    assert cfg.command_labels["arch"].command == ("uname", "-m")


@pytest.mark.parametrize("flag, why", [("kernel", "expected NAME=COMMAND"), ("=uname", "expected NAME=COMMAND"),
                                       ("kernel=", "expected NAME=COMMAND"), ("bad name=true", "invalid label name"),
                                       ("kernel@soon=uname", "period must be")])
def test_a_bad_label_command_flag_is_refused_naming_the_flag(capsys, tmp_path, flag, why):
    status, err = start(capsys, "--label-command", flag, "--data-dir", str(tmp_path / "data"))
    assert status == 1 and err.startswith("jumpgate: --label-command: ") and why in err, err


def test_a_label_both_static_and_a_command_is_refused(capsys, tmp_path):
    status, err = start(capsys, "--labels", "kernel=6.1", "--label-command", "kernel=uname -r",
                        "--data-dir", str(tmp_path / "data"))
    assert status == 1 and "label 'kernel' is both static" in err

"""One syntax for every host:port (appliance/addresses.py), and one default port per service.

Each test names the rule; the callers (the auth service's stored node address, the proxy's
dial address, ``--auth-server``, ``--proxy``, the profile's proxy, the web Host header) all go
through :func:`parse_endpoint`, so the rule is checked here once.
"""
from __future__ import annotations

import pytest

from appliance import addresses
from appliance.addresses import (DEFAULT_PORTS, AddressError, canonical_endpoint, canonical_ip, format_endpoint,
                                 host_of, parse_endpoint, parse_host, parse_port)


@pytest.mark.parametrize("text, default, expected", [
    ("db1:22", None, ("db1", 22)),
    ("db1", 3022, ("db1", 3022)),
    ("10.0.0.5:3022", None, ("10.0.0.5", 3022)),
    ("[2001:db8::1]:22", None, ("2001:db8::1", 22)),
    ("[::1]", 3025, ("::1", 3025)),
    ("::1", 3025, ("::1", 3025)),
    (" jump.example.com:3023 ", None, ("jump.example.com", 3023)),
    ("DB1.Example.COM:22", None, ("DB1.Example.COM", 22)),
])
def test_endpoints_are_host_colon_port_with_ipv6_in_brackets(text, default, expected):
    assert parse_endpoint(text, default) == expected


@pytest.mark.parametrize("text, default", [
    ("db1", None),              # no port and no default
    ("::1", None),              # a bare IPv6 address cannot carry a port
    ("2001:db8::1:22", None),
    ("db1:0", 3022), ("db1:65536", 3022), ("db1:99999", 3022), ("db1:-1", 3022), ("db1:²", 3022),
    ("db1:x", 3022), ("db1:", 3022), (":22", 3022),
    ("[db1]:22", None),         # brackets are for IPv6 only
    ("[10.0.0.5]:22", None),
    ("[::1:22", 3022), ("[::1]x", 3022),
    ("a b:22", None), ("db_1:22", None), ("-db1:22", None), ("db1.:22", None), ("", 3022), ("   ", 3022),
    ("x" * 301 + ":22", None),
])
def test_anything_else_is_refused_with_a_reason(text, default):
    with pytest.raises(AddressError, match="invalid address"):
        parse_endpoint(text, default)


def test_an_address_error_is_a_value_error_and_quotes_what_it_was_given():
    with pytest.raises(ValueError, match=r"'db1:99999'.*1-65535"):
        parse_endpoint("db1:99999")


@pytest.mark.parametrize("value", [1, 22, 65535, "3022"])
def test_a_port_is_1_to_65535(value):
    assert parse_port(value) == int(value)


@pytest.mark.parametrize("value", [0, 65536, 99999, -1, True, 22.0, "22.0", "", None, "0x16"])
def test_port_zero_bools_and_floats_are_not_ports(value):
    with pytest.raises(AddressError):
        parse_port(value)


def test_hosts_are_ip_addresses_or_dns_names():
    for good in ("db1", "DB1.example.com", "10.0.0.5", "2001:db8::1", "localhost"):
        assert parse_host(good) == good
    for bad in ("db_1", "a b", "", "db1.", "[::1]", 5):
        with pytest.raises(AddressError):
            parse_host(bad)


def test_format_puts_ipv6_in_brackets_and_round_trips():
    for host, port in (("db1", 22), ("10.0.0.5", 3022), ("2001:db8::1", 22)):
        assert parse_endpoint(format_endpoint(host, port)) == (host, port)
    assert format_endpoint("::1", 3025) == "[::1]:3025"


def test_the_stored_form_folds_names_and_compresses_ips():
    assert canonical_endpoint("DB1.Example.com:022") == "db1.example.com:22"
    assert canonical_endpoint("[2001:DB8:0::1]:22") == "[2001:db8::1]:22"
    assert canonical_ip("10.000.0.5") == "" and canonical_ip("2001:DB8::1") == "2001:db8::1"


def test_host_of_takes_the_host_of_any_form_and_nothing_of_garbage():
    assert [host_of(a) for a in ("db1", "db1:22", "[::1]:22", "::1", "a b", "")] == ["db1", "db1", "::1", "::1", "", ""]


def test_each_service_has_one_default_port_and_the_modules_use_it():
    from appliance.api import client as api_client
    from appliance.auth import server as auth_server
    from appliance.cli import main
    from appliance.client import http, ssh
    from appliance.config import Config
    from appliance.node import server as node_server
    from appliance.proxy import server as proxy_server
    assert DEFAULT_PORTS == {"node": 3022, "proxy": 3023, "tunnel": 3024, "auth": 3025, "web": 3080}
    assert node_server.NODE_PORT == ssh.NODE_PORT == addresses.NODE_PORT
    assert proxy_server.PROXY_PORT == ssh.PROXY_PORT == addresses.PROXY_PORT
    assert auth_server.AUTH_PORT == api_client.DEFAULT_PORT == addresses.AUTH_PORT
    assert http.DEFAULT_WEB_PORT == addresses.WEB_PORT
    assert Config(data_dir="/tmp").ports == DEFAULT_PORTS
    start = main.build_parser("start").parse_args(["start"])
    assert all(getattr(start, f"{name}_port") is None for name in DEFAULT_PORTS)  # the defaults are Config's

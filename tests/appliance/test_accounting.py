"""The accounting key of a client address (appliance/accounting.py, docs/security.md W1):
IPv6 clients count by their /64, IPv4-mapped addresses as the IPv4 address they carry."""
from __future__ import annotations

import pytest

from appliance.accounting import accounting_key


@pytest.mark.parametrize("a, b", [
    ("2001:db8::1", "2001:db8::ffff:ffff:ffff:ffff"),   # one /64, any interface id
    ("::1", "::2"),
    ("::ffff:10.0.0.1", "10.0.0.1"),
    ("fe80::1%eth0", "fe80::2"),
])
def test_addresses_of_one_client_share_one_key(a, b):
    assert accounting_key(a) == accounting_key(b)


@pytest.mark.parametrize("a, b", [
    ("2001:db8::1", "2001:db8:0:1::1"),   # the next /64
    ("10.0.0.1", "10.0.0.2"),             # IPv4 counts by address
    ("::ffff:10.0.0.1", "::ffff:10.0.0.2"),
])
def test_different_clients_get_different_keys(a, b):
    assert accounting_key(a) != accounting_key(b)


def test_ipv6_key_is_the_slash_64_network_and_junk_stays_itself():
    assert accounting_key("2001:DB8::abcd") == "2001:db8::/64"
    assert accounting_key("?") == "?" and accounting_key("") == ""

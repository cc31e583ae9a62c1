"""The proxy role (appliance/proxy): authentication, routing to registered nodes, the node list.

A real NodeServer and a real proxy run in the test's nursery on loopback (see
``_proxy_helpers``); sessions run as a throw-away OS account. The clients are our own
(``appliance.client.ssh``) and the real OpenSSH ``ssh``/``scp``/``sftp``/``rsync`` with the
ssh_config that ``jumpgate config`` prints. Rule numbers are those of docs/security.md
(test_ruleN is CN, test_tN is TN), except in test_rule1_only_a_proxy_of_this_cluster_may_vouch_...,
which is rule 1 of :mod:`appliance.relay`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
from pathlib import Path

import pytest
import trio

import ssh_proto
from _proxy_helpers import CLUSTER, LOOPBACK, NODE, USER, host_identity, proxy_fixtures, run
from appliance.api.protocol import FrameDecoder, parse_response
from appliance.cli.remote import render_ssh_config, trust_cluster_names
from appliance.client.trust import node_host_check
from appliance.client.ssh import (NODE_PORT, ConnectError, connect_node, connect_over, connect_proxy, list_nodes,
                                  open_node_channel)
from appliance.proxy.routing import NODES_SUBSYSTEM, NodeDirectory
from appliance.inventory import NodeRecord
from appliance.proxy.routing import NodeListError, decode_list_response, find_node, node_from_wire, node_target
from appliance.relay import relay_line
from ssh_proto import messages as m
from ssh_proto.errors import AuthError, ChannelOpenError
from ssh_proto.keys import PrivateKey



login, cluster, profile = proxy_fixtures("proxy")


# ----------------------------------------------------------------------------- reaching nodes

async def test_connect_node_runs_a_command_as_the_login_and_returns_its_exit_status(cluster, profile, login):
    async with connect_node(profile, NODE, login.name) as conn:
        result = await conn.run("whoami; echo oops >&2; exit 7")
    assert (result.exit_status, result.stdout, result.stderr) == (7, f"{login.name}\n".encode(), b"oops\n")
    port = cluster.events("port", service="proxy")
    assert port and port[-1]["node"] == NODE and port[-1]["user"] == USER
    assert cluster.events("auth", service="proxy")[-1]["key_id"] == f"user:{USER}"


@pytest.mark.parametrize("target", [f"{NODE}.{CLUSTER}", "NODE1.TestCl", LOOPBACK])
async def test_node_is_reached_by_cluster_name_any_case_and_by_address(cluster, profile, login, target):
    # The host certificate is checked for the very name typed: it lists name, name.CLUSTER, address.
    async with connect_node(profile, target, login.name) as conn:
        assert (await conn.run("true")).exit_status == 0


async def test_requested_port_is_ignored_for_a_named_node(cluster, profile, login):
    async with connect_node(profile, NODE, login.name, port=22) as conn:   # ssh -J sends :22
        assert (await conn.run("true")).exit_status == 0


async def test_unknown_node_fails_with_a_clear_error_and_is_audited(cluster, profile, login):
    with pytest.raises(ConnectError, match="unknown node 'nosuch'"):
        async with connect_node(profile, "nosuch", login.name):
            pass
    refused = cluster.events("port", success=False, service="proxy")
    assert refused[-1]["reason"] == "unknown node" and refused[-1]["target"] == "nosuch:3022"


async def test_registered_but_dead_node_fails_with_unreachable(cluster, profile, login):
    with trio.socket.socket() as s:
        await s.bind((LOOPBACK, 0))
        closed_port = s.getsockname()[1]
    cluster.register("dead", f"{LOOPBACK}:{closed_port}")
    with pytest.raises(ConnectError, match="'dead'.*unreachable"):
        async with connect_node(profile, "dead", login.name):
            pass
    assert cluster.events("port", success=False, service="proxy")[-1]["node"] == "dead"


async def test_a_refused_channel_open_carries_its_reason_code_and_the_proxys_words(cluster, profile):
    """RFC 4254 §5.1: an unknown node is the proxy's refusal (ADMINISTRATIVELY_PROHIBITED), a
    node it cannot reach a failed connect (CONNECT_FAILED); the description is the proxy's
    own sentence, not an OSError's text to be parsed."""
    with trio.socket.socket() as s:
        await s.bind((LOOPBACK, 0))
        closed_port = s.getsockname()[1]
    cluster.register("dead", f"{LOOPBACK}:{closed_port}")
    async with connect_proxy(cluster.credentials(profile)) as proxy:
        with pytest.raises(ChannelOpenError) as unknown:
            await proxy.open_direct_tcpip("nosuch", 3022)
        with pytest.raises(ChannelOpenError) as dead:
            await proxy.open_direct_tcpip("dead", 3022)
    assert unknown.value.reason == m.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert unknown.value.description == f"unknown node 'nosuch' in cluster '{CLUSTER}'"
    assert dead.value.reason == m.OPEN_CONNECT_FAILED
    assert dead.value.description.startswith(f"node 'dead' at {LOOPBACK}:{closed_port} is unreachable: ")


async def test_t21_direct_tcpip_never_reaches_an_unregistered_port(cluster, profile, nursery):
    """The proxy is no open relay: an address target goes to the node registered there, else nowhere."""
    async def secret_service(stream):
        await stream.send_all(b"SECRET\r\n")
    listeners = await nursery.start(lambda task_status: trio.serve_tcp(secret_service, 0, host=LOOPBACK,
                                                                        task_status=task_status))
    secret_port = listeners[0].socket.getsockname()[1]
    async with connect_proxy(cluster.credentials(profile)) as proxy:
        channel = await proxy.open_direct_tcpip(LOOPBACK, secret_port)
        assert (await channel.receive_some(7)).startswith(b"SSH-2.0")   # the node, not the service
        await channel.aclose()
        cluster.register("other", f"{LOOPBACK}:{cluster.node_port + 1}")  # two nodes on one host: ambiguous
        with pytest.raises(ChannelOpenError, match="unknown node"):
            await proxy.open_direct_tcpip(LOOPBACK, secret_port)
        with pytest.raises(ChannelOpenError, match="unknown node"):
            await proxy.open_direct_tcpip("10.255.255.1", 22)


async def test_dead_proxy_fails_with_a_clear_error(cluster, login):
    with trio.socket.socket() as s:
        await s.bind((LOOPBACK, 0))
        closed_port = s.getsockname()[1]
    profile = cluster.write_profile("deadproxy")
    profile = dataclasses.replace(profile, proxy_ssh=f"{LOOPBACK}:{closed_port}")
    with pytest.raises(ConnectError, match=f"cannot reach the proxy at {LOOPBACK}:{closed_port}"):
        async with connect_node(profile, NODE, login.name):
            pass


# ----------------------------------------------------------------------------- authentication

async def test_rule12_expired_certificate_is_refused_at_the_proxy(cluster):
    profile = cluster.write_profile("expired", lifetime=(-7200, -3600))
    with pytest.raises(ConnectError, match="your certificate expired at .*jumpgate login"):
        async with connect_node(profile, NODE, cluster.login):
            pass
    # (the client offers the certified key alone after the certificate: refused as well)
    refused = cluster.events("auth", success=False, service="proxy")
    assert any("expired" in e["reason"] and e["user"] == USER and e["key_id"] == f"user:{USER}" for e in refused)


async def test_rule10_certificate_from_another_ca_is_refused_at_the_proxy(cluster):
    profile = cluster.write_profile("foreign", ca=PrivateKey.generate("ssh-ed25519"))
    with pytest.raises(ConnectError, match="refused your certificate"):
        async with connect_node(profile, NODE, cluster.login):
            pass
    assert any("rule 10" in e["reason"] for e in cluster.events("auth", success=False, service="proxy"))


async def test_proxy_username_is_the_user_or_one_of_the_logins_and_nothing_else(cluster, profile, login):
    creds = cluster.credentials(profile)

    def connect(username):
        return ssh_proto.connect(LOOPBACK, cluster.proxy_port, username=username, client_keys=creds.client_keys,
                                 known_hosts=creds.known_hosts)
    for username in (USER, login.name):
        async with connect(username) as conn:
            assert conn.session_id
    with pytest.raises(AuthError):
        async with connect("root"):
            pass
    assert any("neither a login" in e["reason"] and e["login"] == "root"
               for e in cluster.events("auth", success=False, service="proxy"))


async def test_plain_key_is_refused_at_the_proxy(cluster, profile):
    creds = cluster.credentials(profile)
    with pytest.raises(AuthError):
        async with ssh_proto.connect(LOOPBACK, cluster.proxy_port, username=USER, client_keys=[creds.key],
                                     known_hosts=creds.known_hosts):
            pass
    assert "user certificate is required" in cluster.events("auth", success=False, service="proxy")[-1]["reason"]


async def test_login_not_in_the_certificate_is_refused_by_the_node_with_a_clear_error(cluster, profile):
    with pytest.raises(ConnectError, match=r"login 'root' is not allowed by your certificate \(your logins: "):
        async with connect_node(profile, NODE, "root"):
            pass
    assert any(e.get("login") == "root" for e in cluster.events("auth", success=False))


# ----------------------------------------------------------------------------- what the proxy refuses

async def test_proxy_runs_no_shell_or_command_and_says_how_to_reach_a_node(cluster, profile):
    async with connect_proxy(cluster.credentials(profile)) as proxy:
        result = await proxy.run("id")
        assert result.exit_status == 1 and b"jumpgate ssh" in result.stderr and not result.stdout
        with pytest.raises(ChannelOpenError):
            await proxy.forward_remote_port("localhost", 0, LOOPBACK, 9)
        sftp = await proxy.open_session(subsystem="sftp")
        assert await sftp.wait() == 1 and b"no shell here" in await sftp.receive_stderr()
        assert not any(e["event"] == "session.start" for e in cluster.audit.events)


# ----------------------------------------------------------------------------- node list

async def test_node_list_subsystem_filters_by_labels(cluster, profile):
    cluster.register("web2", f"{LOOPBACK}:1", env="prod", team="web")
    creds = cluster.credentials(profile)
    assert {n.name for n in await list_nodes(creds, {})} == {NODE, "web2"}
    (web2,) = await list_nodes(creds, {"env": "prod"})
    assert (web2.name, web2.addr, dict(web2.labels)) == ("web2", f"{LOOPBACK}:1", {"env": "prod", "team": "web"})
    assert await list_nodes(creds, {"env": "prod", "team": "db"}) == []


async def test_node_list_subsystem_answers_a_malformed_request_with_an_error(cluster, profile):
    async with connect_proxy(cluster.credentials(profile)) as proxy:
        proc = await proxy.open_session(subsystem=NODES_SUBSYSTEM)
        await proc.send_all(b"\x00\x00\x00\x03abc")
        await proc.send_eof()
        answer = await proc.read_all()
        assert await proc.wait() == 1
    with pytest.raises(NodeListError, match="refused"):
        decode_list_response(answer)
    decoder = FrameDecoder(parse_response)
    decoder.feed(answer)
    assert decoder.next_message().code == "bad_request"


# ----------------------------------------------------------------------------- the client's address at the node

CLIENT_IP = "127.0.0.2"   # the client connects from here; the proxy reaches the node from 127.0.0.1


@contextlib.asynccontextmanager
async def _node_from(cluster, profile, login: str, source: str = CLIENT_IP):
    """A connection to the node through the proxy, made from the loopback address ``source``."""
    creds = cluster.credentials(profile)
    stream = await trio.open_tcp_stream(LOOPBACK, cluster.proxy_port, local_address=source)
    async with ssh_proto.connect(LOOPBACK, cluster.proxy_port, username=USER, client_keys=creds.client_keys,
                                 known_hosts=creds.known_hosts, stream=stream) as proxy:
        channel = await open_node_channel(proxy, NODE, NODE_PORT)
        async with connect_over(channel, creds, NODE, login) as conn:
            yield conn


async def test_relayed_node_sees_the_clients_address_in_its_environment_and_audit(cluster, profile, login):
    async with _node_from(cluster, profile, login.name) as conn:
        result = await conn.run('echo "$SSH_CLIENT|$SSH_CONNECTION"')
    client, connection = result.stdout.decode().strip().split("|")
    assert client.split()[0] == CLIENT_IP and connection.split()[0] == CLIENT_IP
    assert connection.split()[2:] == [LOOPBACK, str(cluster.node_port)]
    started = cluster.events("session.start")[-1]
    assert started["client_ip"] == CLIENT_IP and started["client_port"] == int(client.split()[1])
    assert cluster.events("port", service="proxy")[-1]["client_ip"] == CLIENT_IP


async def test_rule14_source_address_is_checked_against_the_relayed_client(cluster, login):
    """A certificate bound to the client's address works through the proxy: the node checks
    source-address against the client the proxy vouches for, not against the TCP peer."""
    profile = cluster.write_profile("bound", critical_options={"source-address": f"{CLIENT_IP}/32"})
    async with _node_from(cluster, profile, login.name) as conn:
        assert (await conn.run("true")).exit_status == 0
    key, cert = host_identity(cluster.host_ca, "proxy", "proxy2")
    with pytest.raises(AuthError):   # the same certificate, vouched for as another client
        await _direct_with_line(cluster, profile, login.name, lambda local: relay_line(
            client=("10.9.9.9", 4242), relay=local, node=NODE, host_key=key, host_cert=cert))
    refused = cluster.events("auth", success=False)[-1]
    assert refused["client_ip"] == "10.9.9.9" and "source-address does not allow 10.9.9.9" in refused["reason"]


async def _direct_with_line(cluster, profile, login: str, make_line) -> ssh_proto.RunResult:
    """A direct connection to the node that sends ``make_line(local address)`` first."""
    creds = cluster.credentials(profile)
    stream = await trio.open_tcp_stream(LOOPBACK, cluster.node_port)
    await stream.send_all(make_line(stream.socket.getsockname()))
    async with ssh_proto.connect(NODE, cluster.node_port, username=login, client_keys=creds.client_keys,
                                 known_hosts=node_host_check(creds.known_hosts, CLUSTER, NODE, cluster.node_port),
                                 stream=stream) as conn:
        return await conn.run('echo "$SSH_CLIENT"')


async def test_a_proxys_signed_line_sets_the_client_address_of_a_direct_connection(cluster, profile, login):
    key, cert = host_identity(cluster.host_ca, "proxy", "proxy2")
    result = await _direct_with_line(cluster, profile, login.name, lambda local: relay_line(
        client=("10.9.9.9", 4242), relay=local, node=NODE, host_key=key, host_cert=cert))
    assert result.stdout.decode().split()[:2] == ["10.9.9.9", "4242"]


@pytest.mark.parametrize("signer", ["node", "foreign-proxy"])
async def test_rule1_only_a_proxy_of_this_cluster_may_vouch_for_a_client(cluster, profile, login, signer, caplog):
    ca = cluster.host_ca if signer == "node" else PrivateKey.generate("ssh-ed25519")
    key, cert = host_identity(ca, signer.split("-")[-1], "impostor")
    with pytest.raises((ssh_proto.DisconnectError, ssh_proto.ProtocolError, trio.BrokenResourceError, OSError)):
        await _direct_with_line(cluster, profile, login.name, lambda local: relay_line(
            client=("10.9.9.9", 4242), relay=local, node=NODE, host_key=key, host_cert=cert))
    assert "refused a relayed connection" in caplog.text
    assert not any(e["client_ip"] == "10.9.9.9" for e in cluster.events("session.start"))


async def test_a_malformed_relay_line_closes_only_that_connection(cluster, profile, login, caplog):
    with pytest.raises((ssh_proto.DisconnectError, ssh_proto.ProtocolError, trio.BrokenResourceError, OSError)):
        await _direct_with_line(cluster, profile, login.name, lambda local: b"JUMPGATE-RELAY !!!\r\n")
    assert "relay line is not base64" in caplog.text
    async with connect_node(profile, NODE, login.name) as conn:   # the node serves on
        assert (await conn.run("true")).exit_status == 0


# ----------------------------------------------------------------------------- routing rules (no I/O)

NODES = [NodeRecord("web1", "node", "10.0.0.5:3022"), NodeRecord("db1", "node", "10.0.0.6:3022"),
         NodeRecord("sshd1", "openssh", "10.0.0.6:22"), NodeRecord("edge", "node", tunnel=True)]


@pytest.mark.parametrize("host,port,expected", [
    ("web1", 22, "web1"), ("WEB1", 0, "web1"), ("10.0.0.5", 22, "web1"),     # the only node on that host
    ("10.0.0.6", 22, "sshd1"), ("10.0.0.6", 3022, "db1"), ("10.0.0.6", 80, None),  # ambiguous host
    ("10.0.0.7", 3022, None), ("web", 3022, None), ("tunnel", 0, None),
])
def test_t21_targets_resolve_only_to_registered_nodes(host, port, expected):
    node = find_node(NODES, host, port)
    assert (node.name if node else None) == expected


def test_cluster_suffix_is_stripped_case_insensitively_but_only_as_a_suffix():
    assert node_target("web1.Prod", "prod") == "web1"
    assert node_target("web1.prod.example", "prod") == "web1.prod.example"
    assert node_target(".prod", "prod") == ".prod"
    assert node_target("web1.prod", "") == "web1.prod"


def test_the_proxy_and_the_client_strip_the_cluster_suffix_by_one_rule():
    from appliance.client.trust import _named
    from appliance.names import qualified, strip_cluster
    for target in ("web1.prod", "WEB1.PROD", "web1", "web1.prod.example", ".prod", "10.0.0.5", "db_1.prod"):
        assert node_target(target, "prod") == strip_cluster(target, "prod")
        expected = strip_cluster(target.lower(), "prod")
        assert _named(target, "prod") == (expected if expected.isalnum() else None)
    assert strip_cluster(qualified("web1", "prod"), "prod") == "web1"


def test_one_inventory_record_from_storage_to_the_proxy_and_ls_and_a_tunnel_is_a_flag():
    from appliance.storage.base import NodeRecord as StoredRecord
    assert StoredRecord is NodeRecord   # one inventory record, not one per module
    stored = NodeRecord("edge", "node", "", {"env": "prod"}, 5.0, True, ("10.0.0.9",), b"KEY", 1.0)
    wire = stored.to_wire()
    assert "host_key" not in wire and "addresses" not in wire   # they stay with the auth service
    listed = node_from_wire(wire)
    assert (listed.name, listed.kind, listed.addr, listed.tunnel, dict(listed.labels), listed.last_seen) == \
        ("edge", "node", "", True, {"env": "prod"}, 5.0)
    assert listed.endpoint is None and listed.shown_addr == "tunnel"   # never dialled, shown as a tunnel
    assert NodeRecord("gone", "openssh").shown_addr == "-"
    with pytest.raises(NodeListError, match="tunnel"):
        node_from_wire({**wire, "tunnel": "yes"})


async def test_directory_caches_and_refreshes_early_for_an_unknown_name():
    now = [0.0]
    fetched = []
    registry = [{"name": "web1", "addr": "10.0.0.5:3022"}]

    async def fetch():
        fetched.append(now[0])
        return list(registry)
    directory = NodeDirectory(fetch, ttl=5.0, min_refresh=1.0, clock=lambda: now[0])
    assert (await directory.resolve("web1", 22)).endpoint == ("10.0.0.5", 3022)
    registry.append({"name": "web2", "addr": "10.0.0.9:3022", "labels": {"env": "dev"}})
    assert await directory.resolve("web2", 22) is None          # cached < min_refresh ago: no new fetch
    now[0] = 1.5
    assert (await directory.resolve("web2", 22)).endpoint == ("10.0.0.9", 3022)   # early refresh on a miss
    assert await directory.resolve("nosuch", 22) is None
    assert fetched == [0.0, 1.5]
    now[0] = 7.0
    assert [n["name"] for n in await directory.list_nodes({"env": "dev"})] == ["web2"]
    assert fetched == [0.0, 1.5, 7.0]


async def test_directory_refuses_a_malformed_registry():
    async def fetch():
        return [{"name": "web1", "addr": 5}]
    with pytest.raises(NodeListError, match="addr"):
        await NodeDirectory(fetch).resolve("web1", 22)
    assert math.isinf(NodeDirectory(fetch)._fetched_at)


# ----------------------------------------------------------------------------- OpenSSH through the proxy

@pytest.fixture
def ssh_config(cluster, profile, tmp_path) -> Path:
    """What `jumpgate config` writes: the block, and known_hosts trusting the bare name too (J6)."""
    trust_cluster_names(profile, cluster.credentials(profile), [NODE])
    path = tmp_path / "ssh_config"
    path.write_text(render_ssh_config(cluster=CLUSTER, user=USER, proxy_host=LOOPBACK, proxy_port=cluster.proxy_port,
                                      identity=profile.identity_path, certificate=profile.cert_path,
                                      known_hosts=profile.known_hosts_path, node_names=[NODE]))
    return path


def _ssh(config: Path, *args: str) -> list[str]:
    return ["/usr/bin/ssh", "-F", str(config), "-o", "BatchMode=yes", *args]


async def test_openssh_reaches_node_dot_cluster_with_the_generated_config(cluster, ssh_config, login):
    done = await run(_ssh(ssh_config, f"{login.name}@{NODE}.{CLUSTER}", "whoami; exit 5"))
    assert done.returncode == 5, done.stderr
    assert done.stdout == f"{login.name}\n".encode()


async def test_openssh_dash_j_reaches_a_short_node_name_verified_by_the_host_ca(cluster, ssh_config, login):
    done = await run(_ssh(ssh_config, "-J", f"{USER}@{LOOPBACK}:{cluster.proxy_port}", f"{login.name}@{NODE}",
                          "echo via-J"))
    assert (done.returncode, done.stdout) == (0, b"via-J\n"), done.stderr


async def test_openssh_refuses_a_node_whose_certificate_does_not_name_it(cluster, ssh_config, login):
    # "node1-alias", registered as an agentless node (plain SSH from the proxy), resolves at
    # the proxy to node1's address, but node1's certificate does not list it.
    cluster.register("node1-alias", f"{LOOPBACK}:{cluster.node_port}", kind="openssh")
    done = await run(_ssh(ssh_config, f"{login.name}@node1-alias.{CLUSTER}", "true"))
    assert done.returncode == 255 and b"Host key verification failed" in done.stderr


async def test_a_node_refuses_a_relay_line_naming_another_node(cluster, ssh_config, login, caplog):
    # Registered as a Jumpgate node, the alias gets the proxy's relay line for "node1-alias":
    # node1 refuses it before any host key is shown (rule 3 of appliance.relay).
    cluster.register("node1-alias", f"{LOOPBACK}:{cluster.node_port}")
    done = await run(_ssh(ssh_config, f"{login.name}@node1-alias.{CLUSTER}", "true"))
    assert done.returncode == 255  # the DISCONNECT's text may lose the race with ssh's own writes
    assert "relay line from proxy1 is for node 'node1-alias'" in caplog.text
    assert cluster.events("session.start") == []


async def test_openssh_unknown_node_fails_cleanly(cluster, ssh_config, login):
    done = await run(_ssh(ssh_config, f"{login.name}@nosuch.{CLUSTER}", "true"))
    assert done.returncode == 255 and b"unknown node" in done.stderr


async def test_openssh_scp_sftp_and_rsync_through_the_proxy(cluster, ssh_config, login, tmp_path):
    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(300_000))
    remote = f"{login.name}@{NODE}.{CLUSTER}"
    home = login.home
    done = await run(["/usr/bin/scp", "-q", "-F", str(ssh_config), "-o", "BatchMode=yes", str(src), f"{remote}:up.bin"])
    assert done.returncode == 0, done.stderr
    assert (home / "up.bin").read_bytes() == src.read_bytes()
    back = tmp_path / "sftp_back.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"get up.bin {back}\n")
    done = await run(["/usr/bin/sftp", "-q", "-F", str(ssh_config), "-o", "BatchMode=yes", "-b", str(batch), remote])
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == src.read_bytes()
    if shutil.which("rsync") is None:
        pytest.skip("rsync is not installed (apt-get install rsync)")
    done = await run(["rsync", "-e", f"/usr/bin/ssh -F {ssh_config} -o BatchMode=yes", str(src),
                      f"{remote}:rsynced.bin"])
    assert done.returncode == 0, done.stderr
    assert (home / "rsynced.bin").read_bytes() == src.read_bytes()

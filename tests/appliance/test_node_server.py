"""The node's SSH server against the real OpenSSH clients and our own ssh_proto client.

A NodeServer runs in the test's nursery on a free loopback port, with a test cluster's
user CA and host certificate (appliance.node.serve_node). Sessions run as a throw-away
OS account (these tests run as root, so the node switches users). Rule numbers are those
of docs/security.md: test_ruleN is CN.
"""
from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess
from pathlib import Path

import pytest
import trio

import ssh_proto
from _node_helpers import LOOPBACK, SSH_ADD, AuditLog, ClientFiles, TestCluster, make_user, openssh_argv, \
    remove_user, run, start_node
from openssh import retry_on_passwd_lock  # tests/interop, put on sys.path by _node_helpers
from appliance.node import process as node_process
from appliance.node.server import NodeServer, node_server_factory, serve_node
from ssh_proto.certs import EXT_PERMIT_AGENT_FORWARDING, EXT_PERMIT_PORT_FORWARDING, EXT_PERMIT_PTY
from ssh_proto.keys import PrivateKey

pytestmark = pytest.mark.interop   # root-only tests skip through make_user (_node_helpers)

NO_PTY = {EXT_PERMIT_PORT_FORWARDING: b"", EXT_PERMIT_AGENT_FORWARDING: b""}
NO_FORWARDING = {EXT_PERMIT_PTY: b""}


@pytest.fixture(scope="module")
def login():
    user = make_user("nsrv")
    yield user
    remove_user(user)


@dataclasses.dataclass
class Node:
    cluster: TestCluster
    port: int
    audit: AuditLog
    login: str
    known_hosts: Path
    key: PrivateKey
    cert: ssh_proto.Certificate
    files: ClientFiles

    def ssh(self, *command: str, options=(), files: ClientFiles | None = None, login: str | None = None,
            agent: str | None = None) -> list[str]:
        return openssh_argv("ssh", command, port=self.port, login=login or self.login, files=files or self.files,
                            known_hosts=self.known_hosts, options=options, agent=agent)

    def connect(self, key=None, cert=None, *, login: str | None = None, **kwargs):
        return ssh_proto.connect(LOOPBACK, self.port, username=login or self.login,
                                 client_keys=[(key or self.key, cert or self.cert)],
                                 known_hosts=self.cluster.verify_host, **kwargs)

    def with_cert(self, name: str, **how) -> tuple[PrivateKey, ssh_proto.Certificate, ClientFiles]:
        return self.cluster.client_files(name, [self.login], **how)


@pytest.fixture
async def node(nursery, login, tmp_path) -> Node:
    cluster = TestCluster(tmp_path)
    audit = AuditLog()
    listener = await start_node(nursery, cluster, audit)
    key, cert, files = cluster.client_files("id_alice", [login.name, "root"])
    yield Node(cluster, listener.port, audit, login.name, cluster.known_hosts(listener.port), key, cert, files)
    assert audit.rejected == []  # every event the node emitted is one the auth role accepts


def _text(done: subprocess.CompletedProcess) -> str:
    return done.stdout.decode(errors="replace").replace("\r", "")


# ----------------------------------------------------------------------------- sessions


def _home(node) -> str:
    """The login's home directory (under the temporary directory: TMPDIR may move it)."""
    return pwd.getpwnam(node.login).pw_dir


async def test_exec_runs_as_the_login_user(node):
    done = await run(node.ssh("id -un; pwd"))
    assert done.returncode == 0, done.stderr
    assert _text(done).split() == [node.login, _home(node)]


async def test_session_environment_is_sshd_like(node):
    options = ["-o", "SetEnv=LANG=C.UTF-8 LC_MESSAGES=C FOO=bar"]
    done = await run(node.ssh("env", options=options))
    env = dict(line.split("=", 1) for line in _text(done).splitlines() if "=" in line)
    assert env["USER"] == env["LOGNAME"] == node.login and env["SHELL"] == "/bin/sh"
    assert env["HOME"] == _home(node) and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LANG"] == "C.UTF-8" and env["LC_MESSAGES"] == "C" and "FOO" not in env
    client_ip, client_port, server_port = env["SSH_CLIENT"].split()
    assert (client_ip, server_port) == (LOOPBACK, str(node.port))
    assert env["SSH_CONNECTION"] == f"{LOOPBACK} {client_port} {LOOPBACK} {node.port}"
    assert "SSH_TTY" not in env and "TERM" not in env and "SSH_AUTH_SOCK" not in env


async def test_pty_session_with_openssh_has_tty_and_term(node):
    # OpenSSH puts a SetEnv TERM into its pty-req (and sends it as an env request too)
    done = await run(node.ssh("tty; echo $SSH_TTY; echo $TERM", options=["-tt", "-o", "SetEnv=TERM=vt220"]))
    tty, ssh_tty, term = _text(done).splitlines()[:3]
    assert done.returncode == 0 and tty.startswith("/dev/pts/") and ssh_tty == tty
    assert term == "vt220"


async def test_interactive_shell_is_a_login_shell_and_window_change_resizes(node):
    async with node.connect() as conn:
        shell = await conn.open_session(pty=True, cols=80, rows=24)
        seen = bytearray()
        await shell.send_all(b"stty size; echo shell=$0\n")
        await _read_until(shell, b"shell=-sh\n", seen)
        await shell.resize(100, 40)
        await shell.send_all(b"stty size; exit 3\n")
        await _read_until(shell, b"40 100", seen)
        await shell.wait()
    assert b"24 80\r\n" in seen and b"40 100\r\n" in seen and shell.exit_status == 3


async def _read_until(stream, marker: bytes, seen: bytearray | None = None) -> bytes:
    seen = bytearray() if seen is None else seen
    with trio.fail_after(10):
        while marker not in seen.replace(b"\r", b""):
            data = await stream.receive_some()
            if not data:
                break
            seen += data
    return bytes(seen)


async def test_break_is_accepted_on_a_pty(node):
    async with node.connect() as conn:
        shell = await conn.open_session("sleep 1", pty=True)
        assert await shell.send_break(100) is True
        await shell.wait()


async def test_exit_status_propagates(node):
    assert (await run(node.ssh("exit 7"))).returncode == 7
    assert (await run(node.ssh("true"))).returncode == 0


async def test_stdin_and_eof_pass_through_both_ways(node):
    payload = os.urandom(300_000)
    done = await run(node.ssh("cat; echo done >&2"), input=payload)
    assert done.returncode == 0 and done.stdout == payload and done.stderr == b"done\n"


async def test_signal_request_ends_the_command_with_exit_signal(node):
    async with node.connect() as conn:
        sleeper = await conn.open_session("echo started; exec sleep 30")
        await _read_until(sleeper, b"started\n")   # the command runs: the signal has a process to end
        await sleeper.signal("TERM")
        with trio.fail_after(5):
            await sleeper.wait()
    assert sleeper.exit_status is None and sleeper.exit_signal == "TERM"


async def test_closing_the_channel_hangs_up_the_command(node):
    async with node.connect() as conn:
        sleeper = await conn.open_session("echo started; exec sleep 30")
        await _read_until(sleeper, b"started\n")
        await sleeper.aclose()
        with trio.fail_after(10):
            end, = await node.audit.wait_for("session.end")
    assert end["exit_signal"] == "HUP"


async def test_process_killed_by_a_signal_reports_exit_signal(node):
    async with node.connect() as conn:
        result = await conn.run("kill -KILL $$")
    assert result.exit_status is None and result.exit_signal == "KILL"


async def test_audit_records_session_start_and_end(node):
    await run(node.ssh("exit 5"))
    start, = node.audit.of("session.start")
    end, = node.audit.of("session.end")
    assert start["login"] == node.login and start["user"] == "alice" and start["node"] == "node1"
    assert start["command"] == "exit 5" and start["kind"] == "exec" and start["client_ip"] == LOOPBACK
    assert end["session_id"] == start["session_id"] and end["exit_status"] == 5
    accepted, = node.audit.of("auth")
    assert accepted["login"] == node.login and accepted["key_id"] == "user:alice"


# ----------------------------------------------------------------------------- file transfer


async def test_sftp_put_and_get_with_the_real_sftp(node, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(200_000))
    back = tmp_path / "down.bin"
    batch = tmp_path / "batch"
    batch.write_text(f"put {src} up.bin\nget up.bin {back}\n")
    done = await run(openssh_argv("sftp", ["-b", str(batch)], port=node.port, login=node.login, files=node.files,
                                  known_hosts=node.known_hosts))
    assert done.returncode == 0, done.stderr
    assert back.read_bytes() == src.read_bytes()
    stored = Path(_home(node)) / "up.bin"
    assert stored.stat().st_uid == node_process.lookup_account(node.login).uid  # written as the login
    assert node.audit.of("session.start")[0]["subsystem"] == "sftp"


@pytest.mark.parametrize("protocol", [[], ["-O"]], ids=["sftp", "legacy-scp"])
async def test_scp_both_ways_with_the_real_scp(node, tmp_path, protocol):
    src = tmp_path / "file.txt"
    src.write_bytes(b"scp payload\n" * 5000)
    back = tmp_path / "back.txt"
    remote = f"{node.login}@{LOOPBACK}:copy{len(protocol)}.txt"
    common = dict(port=node.port, login=node.login, files=node.files, known_hosts=node.known_hosts)
    up = await run(openssh_argv("scp", [*protocol, str(src), remote], **common))
    down = await run(openssh_argv("scp", [*protocol, remote, str(back)], **common))
    assert (up.returncode, down.returncode) == (0, 0), (up.stderr, down.stderr)
    assert back.read_bytes() == src.read_bytes()


async def test_huge_and_nul_commands_fail_cleanly_and_are_audited_bounded(node):
    async with node.connect() as conn:
        long = await conn.run("true " + "x" * 20_000)
        nul = await conn.run("echo a\0b")
    assert long.exit_status == 0
    assert nul.exit_status == 255 and b"NUL" in nul.stderr
    assert len(node.audit.of("session.start")[0]["command"]) == 1024


async def test_unknown_subsystem_fails_cleanly(node):
    async with node.connect() as conn:
        proc = await conn.open_session(subsystem="nope")
        result = await proc.communicate()
    assert result.exit_status == 1 and b"not supported" in result.stderr


# ----------------------------------------------------------------------------- certificate permissions


async def test_rule14_pty_refused_without_permit_pty(node):
    key, cert, files = node.with_cert("nopty", extensions=NO_PTY)
    done = await run(node.ssh("tty", options=["-tt"], files=files))
    assert done.returncode == 255 and b"PTY allocation request failed" in done.stderr
    async with node.connect(key, cert) as conn:
        with pytest.raises(ssh_proto.ChannelError, match="pty request refused"):
            await conn.open_session("tty", pty=True)


async def test_rule14_local_forward_refused_without_permit_port_forwarding(node, nursery):
    echo_port = await _echo_server(nursery)
    key, cert, files = node.with_cert("nofwd", extensions=NO_FORWARDING)
    done = await run(node.ssh(options=["-W", f"{LOOPBACK}:{echo_port}"], files=files), input=b"hello")
    assert done.returncode == 255 and b"administratively prohibited" in done.stderr
    async with node.connect(key, cert) as conn:
        with pytest.raises(ssh_proto.ChannelOpenError):
            await conn.open_direct_tcpip(LOOPBACK, echo_port)
        with pytest.raises(ssh_proto.ChannelOpenError):
            await conn.forward_remote_port(LOOPBACK, 0, LOOPBACK, echo_port)


async def test_local_forward_connects_to_the_target_when_permitted(node, nursery):
    echo_port = await _echo_server(nursery)
    done = await run(node.ssh(options=["-W", f"{LOOPBACK}:{echo_port}"]), input=b"through the node")
    assert done.returncode == 0 and done.stdout == b"through the node"
    assert node.audit.of("port")[0]["target"] == f"{LOOPBACK}:{echo_port}"


async def test_remote_forward_listens_when_permitted(node, nursery):
    echo_port = await _echo_server(nursery)
    async with node.connect() as conn:
        port = await conn.forward_remote_port(LOOPBACK, 0, LOOPBACK, echo_port)
        stream = await trio.open_tcp_stream(LOOPBACK, port)
        await stream.send_all(b"back through the client")
        await stream.send_eof()
        with trio.fail_after(5):
            assert await _read_all(stream) == b"back through the client"


async def test_remote_forward_refuses_privileged_ports_for_non_root_logins(node):
    async with node.connect() as conn:
        with pytest.raises(ssh_proto.ChannelOpenError):
            await conn.forward_remote_port(LOOPBACK, 80, LOOPBACK, 80)
    assert node.audit.of("port", success=False)[0]["listen"] == f"{LOOPBACK}:80"


async def test_rule14_force_command_replaces_the_command(node):
    key, cert, files = node.with_cert("forced", critical_options={"force-command": "echo forced:$SSH_ORIGINAL_COMMAND"})
    done = await run(node.ssh("echo asked", files=files))
    assert _text(done) == "forced:echo asked\n"


async def test_rule14_force_command_internal_sftp_serves_sftp(node, tmp_path):
    _, _, files = node.with_cert("sftponly", critical_options={"force-command": "internal-sftp"})
    batch = tmp_path / "batch"
    batch.write_text("pwd\n")
    done = await run(openssh_argv("sftp", ["-b", str(batch)], port=node.port, login=node.login, files=files,
                                  known_hosts=node.known_hosts))
    assert done.returncode == 0 and _home(node).encode() in done.stdout


async def test_rule14_source_address_mismatch_is_refused(node):
    _, _, files = node.with_cert("elsewhere", critical_options={"source-address": "192.0.2.0/24"})
    done = await run(node.ssh("true", files=files))
    assert done.returncode == 255 and b"Permission denied" in done.stderr


async def test_agent_forwarding_lists_the_clients_keys(node, nursery, sock_dir):
    agent = ssh_proto.InProcessAgent()
    await agent.add(PrivateKey.generate("ssh-ed25519"), comment="forwarded-key")
    sock = await nursery.start(agent.serve_unix, sock_dir / "sock")
    done = await run(node.ssh("ssh-add -l; ls -l $SSH_AUTH_SOCK", options=["-A"], agent=sock))
    listing = _text(done)
    assert done.returncode == 0, done.stderr
    assert "forwarded-key (ED25519)" in listing and f" {node.login} " in listing.splitlines()[-1]
    async with node.connect(agent=agent) as conn:
        result = await (await conn.open_session(f"{SSH_ADD} -L", agent_forwarding=True)).communicate()
    assert result.exit_status == 0 and b"forwarded-key" in result.stdout


async def test_rule14_agent_forwarding_refused_without_permit(node, nursery, sock_dir):
    agent = ssh_proto.InProcessAgent()
    await agent.add(PrivateKey.generate("ssh-ed25519"))
    sock = await nursery.start(agent.serve_unix, sock_dir / "sock")
    _, _, files = node.with_cert("noagent", extensions=NO_FORWARDING)
    done = await run(node.ssh("echo sock=$SSH_AUTH_SOCK", options=["-A"], files=files, agent=sock))
    assert _text(done) == "sock=\n"


# ----------------------------------------------------------------------------- authentication


async def _assert_refused_and_still_serving(node, files: ClientFiles, *, login: str | None = None) -> None:
    done = await run(node.ssh("true", files=files, login=login))
    assert done.returncode == 255 and b"Permission denied" in done.stderr
    assert (await run(node.ssh("true"))).returncode == 0  # the node keeps serving


async def test_rule12_expired_certificate_is_refused(node):
    _, _, files = node.with_cert("expired", lifetime=(-7200, -3600))
    await _assert_refused_and_still_serving(node, files)
    failure = node.audit.of("auth", success=False)[0]
    assert failure["login"] == node.login and "rule 12" in failure["reason"]


async def test_rule10_certificate_from_a_foreign_ca_is_refused(node):
    _, _, files = node.with_cert("foreign", ca=PrivateKey.generate("ssh-ed25519"))
    await _assert_refused_and_still_serving(node, files)


async def test_rule12_login_not_in_principals_is_refused(node):
    _, _, files = node.cluster.client_files("other", ["someone_else"])
    await _assert_refused_and_still_serving(node, files)


async def test_login_without_os_account_is_refused(node):
    _, _, files = node.cluster.client_files("ghost", ["jgt_no_such_acct"])
    await _assert_refused_and_still_serving(node, files, login="jgt_no_such_acct")
    assert "no OS account" in node.audit.of("auth", success=False)[0]["reason"]


async def test_plain_keys_and_passwords_are_refused(node):
    async with node.connect() as conn:
        assert (await conn.run("true")).exit_status == 0
    with pytest.raises(ssh_proto.AuthError):
        async with ssh_proto.connect(LOOPBACK, node.port, username=node.login, client_keys=[node.key],
                                     password="guess", known_hosts=node.cluster.verify_host):
            pass


async def test_node_not_running_as_root_accepts_only_its_own_account(node, monkeypatch):
    monkeypatch.setattr(node_process, "running_as_root", lambda: False)
    refused = await run(node.ssh("true"))
    assert refused.returncode == 255
    assert (await run(node.ssh("id -un", login="root"))).stdout == b"root\n"  # the node's own account


async def test_allow_users_limits_the_logins(node, nursery):
    listener = await start_node(nursery, node.cluster, node.audit, allow_users={"root"})
    limited = dataclasses.replace(node, port=listener.port, known_hosts=node.cluster.known_hosts(listener.port))
    assert (await run(limited.ssh("true"))).returncode == 255
    assert "not allowed on this node" in node.audit.of("auth", success=False)[0]["reason"]


async def test_host_certificate_is_read_from_the_identity_at_each_connection(tmp_path):
    cluster = TestCluster(tmp_path)
    first = cluster.identity
    renewed = TestCluster(tmp_path, node_name="node1").identity
    current = [first]
    seen = []
    server = node_server_factory(lambda: current[0])()
    assert isinstance(server, NodeServer) and server.identity is first
    async with trio.open_nursery() as nursery:
        listener = await nursery.start(serve_node, lambda: current[0], LOOPBACK, 0)
        for identity in (first, renewed):
            current[0] = identity
            with pytest.raises(ssh_proto.AuthError):  # no client key: only the host key matters here
                async with ssh_proto.connect(LOOPBACK, listener.port, username="nobody", known_hosts=seen.append):
                    pass
        nursery.cancel_scope.cancel()
    assert [key.blob for key in seen] == [first.host_cert.blob, renewed.host_cert.blob]


# ----------------------------------------------------------------------------- accounts that cannot log in


@pytest.fixture
def homeless():
    user = make_user("nhome")
    try:
        # the other xdist worker may hold /etc/passwd's lock (useradd/userdel): retry, bounded
        retry_on_passwd_lock(["usermod", "-d", "/nonexistent/jgt_home", user.name])
        yield user
    finally:
        remove_user(user)


async def test_missing_home_starts_in_root_with_a_warning(node, homeless):
    _, _, files = node.cluster.client_files("homeless", [homeless.name])
    done = await run(node.ssh("pwd", files=files, login=homeless.name))
    assert done.stdout == b"/\n" and b"Could not chdir to home directory /nonexistent/jgt_home" in done.stderr


async def test_shell_that_cannot_start_exits_255_with_a_message(node, homeless):
    retry_on_passwd_lock(["usermod", "-s", "/nonexistent/shell", homeless.name])
    _, _, files = node.cluster.client_files("shellless", [homeless.name])
    done = await run(node.ssh("true", files=files, login=homeless.name))
    assert done.returncode == 255 and b"cannot run /nonexistent/shell" in done.stderr
    assert node.audit.of("session.end")[0]["exit_status"] == 255
    assert "cannot run" in node.audit.of("exec", success=False)[0]["reason"]


# ----------------------------------------------------------------------------- helpers


async def _echo_server(nursery) -> int:
    async def echo(stream):
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
            await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
    listeners = await nursery.start(lambda task_status: trio.serve_tcp(echo, 0, host=LOOPBACK,
                                                                       task_status=task_status))
    return listeners[0].socket.getsockname()[1]


async def _read_all(stream) -> bytes:
    parts = []
    while data := await stream.receive_some(65536):
        parts.append(data)
    return b"".join(parts)

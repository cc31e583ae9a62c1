"""End to end: the built pyz as separate processes, driven as a user and an admin would.

One all-in-one appliance per module (auth, proxy, node ``node1``, web), a second node that
joins it with a token, and the real OpenSSH ``sshd`` registered as an agentless node. The
user ``alice`` signs up and logs in with TOTP codes computed from the ``otpauth://`` URI
signup prints, then uses ``jumpgate ls/ssh/scp`` and plain OpenSSH ``ssh``/``scp``/``sftp``
with the issued certificate.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import openssh
from _cluster import (LOOPBACK, Client, Cluster, Daemon, EventWatch, Jumpgate, run_openssh, signup_token,
                      start_daemon)

SSH = "/usr/bin/ssh"
SCP = "/usr/bin/scp"
SFTP = "/usr/bin/sftp"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def alice(jg: Jumpgate, cluster: Cluster, os_user: openssh.ThrowawayUser,
          tmp_path_factory: pytest.TempPathFactory) -> Client:
    """alice, allowed the throw-away OS login only, signed up and logged in."""
    return Client(jg, tmp_path_factory.mktemp("alice") / "jumpgate", cluster).enrol("alice", [os_user.name])


@pytest.fixture(scope="module")
def ssh_config(alice: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``jumpgate config`` written to a file for ``ssh -F``."""
    path = tmp_path_factory.mktemp("sshcfg") / "config"
    path.write_text(alice.run("config").check().stdout)
    return path


NODE2_LABEL_COMMANDS = ("--label-command", "greeting@1h=echo hello", "--label-command", "broken=exit 3",
                        "--label-command", "names@30s=printf 'a\\nb\\n' | paste -sd,")
NODE2_LABELS = "broken=<error: exit status 3>,env=dev,greeting=hello,names=a,b"


@pytest.fixture(scope="module")
def node2(jg: Jumpgate, cluster: Cluster, alice: Client,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """A second process, ``start --services node``, joined with a token from ``ctl tokens add``;
    ready once alice's ``jumpgate ls`` shows it (the proxy caches the node list a few seconds)."""
    token = cluster.node_token()
    workdir = tmp_path_factory.mktemp("node2")
    args = ["--services", "node", "--auth-server", cluster.auth, "--token", token, "--nodename", "node2",
            "--labels", "env=dev", "--public-addr", LOOPBACK, "--listen-addr", LOOPBACK,
            "--data-dir", str(workdir / "data"), *NODE2_LABEL_COMMANDS]
    daemon, _ = start_daemon(jg, workdir / "node2.log", args, ["node"])
    try:
        wait_listed(alice, "node2")
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def sshnode(cluster: Cluster, alice: Client, os_user: openssh.ThrowawayUser, keys: openssh.KeyFactory,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[openssh.SshdHandle]:
    """The real sshd with a host certificate from ``ctl auth sign --host`` and the cluster's
    user CA as TrustedUserCAKeys, registered with ``ctl nodes add``."""
    workdir = tmp_path_factory.mktemp("sshnode")
    workdir.chmod(0o755)
    out = cluster.ctl("auth", "sign", "--host", "sshnode", "--out", str(workdir / "hostkeys"),
                      "--principals", f"{LOOPBACK},sshnode").stdout
    sshd_lines = [line.strip() for line in out.splitlines()
                  if line.strip().startswith(("HostKey ", "HostCertificate ", "TrustedUserCAKeys "))]
    assert len(sshd_lines) == 3, out
    handle = openssh.start_sshd(workdir / "sshd", os_user, keys, authorized_keys=(), host_key_kinds=(),
                                trust_user_ca=False, log_level="VERBOSE", extra_config=sshd_lines)
    try:
        cluster.ctl("nodes", "add", "--name", "sshnode", "--addr", f"{LOOPBACK}:{handle.port}",
                    "--labels", "env=legacy")
        wait_listed(alice, "sshnode")
        yield handle
    finally:
        handle.stop()


def wait_listed(client: Client, name: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while name not in _node_rows(client.run("ls").check().stdout):
        assert time.monotonic() < deadline, f"{name} not in jumpgate ls after {timeout}s"
        time.sleep(0.5)


def openssh_opts(config: Path) -> list[str]:
    """``-F CONFIG`` plus what keeps the real ssh from prompting or using the agent."""
    return ["-F", str(config), "-o", "BatchMode=yes", "-o", "IdentityAgent=none"]


# --------------------------------------------------------------------------- account


def test_signup_and_login_with_totp_from_printed_uri(cluster: Cluster, new_client, os_user) -> None:
    client = new_client()
    token = cluster.add_user("carol", [os_user.name])
    signup, authenticator = client.signup(token)
    assert signup.returncode == 0, signup.stderr
    assert authenticator is not None and "otpauth://totp/" in signup.stdout
    assert "Signed up as carol" in signup.stdout
    login = client.login("carol", authenticator)
    assert login.returncode == 0, login.stderr
    assert login.stdout.startswith("logged in as carol")
    assert (client.home / "key-cert.pub").exists()
    events = "\n".join(cluster.events())
    assert re.search(r"user\.login\b.*user=carol", events), events


def test_status_shows_user_logins_cluster_and_expiry(alice: Client, cluster: Cluster, os_user) -> None:
    result = alice.run("status").check()
    fields = {k.strip(): v for k, v in re.findall(r"^[> ] ([A-Za-z ]+):\s+(.*)$", result.stdout, re.MULTILINE)}
    assert fields["User"] == "alice"
    assert fields["Logins"] == os_user.name
    assert fields["Cluster"] == cluster.name
    assert "Valid until" in fields, result.stdout
    when, _, left = fields["Valid until"].partition(" (")
    assert re.fullmatch(r"(11h 5\dm|12h) left\)", left), left  # the time remaining, too
    expiry = time.mktime(time.strptime(when.rsplit(" ", 1)[0], "%Y-%m-%d %H:%M:%S"))
    assert 11 * 3600 < expiry - time.time() <= 12 * 3600 + 60  # the default TTL is 12 h


def test_client_files_are_0600_in_a_0700_directory(alice: Client) -> None:
    assert stat.S_IMODE(alice.home.stat().st_mode) == 0o700
    files = sorted(p.name for p in alice.home.iterdir())
    assert {"key", "key-cert.pub", "known_hosts", "profile.json", "current", "profiles"} <= set(files), files
    for path in [alice.home, *alice.home.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISSOCK(mode):  # the session daemon's socket (login started it): its owner's alone
            assert stat.S_IMODE(mode) & 0o077 == 0, f"{path.name} is {oct(mode)}"
        elif stat.S_ISLNK(mode):  # the top-level names and `current`: links into the current profile
            assert path.parent == alice.home and path.resolve().is_relative_to(alice.home / "profiles"), path
        elif stat.S_ISDIR(mode):
            assert stat.S_IMODE(mode) == 0o700, f"{path} is {oct(mode)}"
        else:
            assert stat.S_ISREG(mode) and stat.S_IMODE(mode) == 0o600, f"{path} is {oct(mode)}"


# --------------------------------------------------------------------------- jumpgate ls / ssh / scp


def _node_rows(ls_output: str) -> dict[str, tuple[str, str]]:
    """``jumpgate ls`` table -> {name: (address, labels)} (the rows end at a blank line, before the count)."""
    rows = {}
    lines = ls_output.splitlines()
    assert lines[-1].endswith(("node", "nodes")) or "offline not shown" in lines[-1], lines
    for line in lines[2:lines.index("")]:
        fields = line.split(None, 2)   # labels last: a value may hold spaces
        rows[fields[0]] = (fields[1], fields[2] if len(fields) > 2 else "")
    return rows


def test_ls_lists_the_node_with_its_labels(alice: Client, cluster: Cluster) -> None:
    rows = _node_rows(alice.run("ls").check().stdout)
    assert rows["node1"] == (f"{LOOPBACK}:{cluster.ports['node']}", "env=prod,team=core")
    assert not any(name.endswith("-proxy") for name in rows), "the proxy is not a node"


def test_ls_filters_by_label(alice: Client, node2: Daemon) -> None:
    dev = _node_rows(alice.run("ls", "env=dev").check().stdout)
    assert "node2" in dev and "node1" not in dev
    prod = _node_rows(alice.run("ls", "env=prod", "team=core").check().stdout)
    assert list(prod) == ["node1"]
    assert _node_rows(alice.run("ls", "env=nowhere").check().stdout) == {}


def test_label_commands_given_to_start_show_in_ls_and_a_failing_one_as_an_error(alice: Client, node2: Daemon) -> None:
    """Issue 15: `start --label-command NAME[@PERIOD]=COMMAND` on a node without a config file."""
    assert _node_rows(alice.run("ls", "env=dev").check().stdout)["node2"][1] == NODE2_LABELS
    assert alice.run("ls", "--format", "names", "greeting=hello").check().stdout == "node2\n"


def test_ssh_with_a_label_selector_runs_the_command_on_the_matching_nodes(alice: Client, node2: Daemon,
                                                                          os_user) -> None:
    result = alice.run("ssh", "greeting=hello", "echo hi; id -un >&2; exit 2")
    assert result.returncode == 1, result.stderr
    assert result.stdout == "node2: hi\n"
    assert result.stderr == f"node2: {os_user.name}\njumpgate: 1 of 1 node failed:\n  node2: exit status 2\n"
    result = alice.run("ssh", f"{os_user.name}@env=prod", "echo from-$(hostname)").check()
    assert result.stdout.startswith("node1: from-") and result.stdout.count("\n") == 1


def test_ssh_exec_relays_stdout_stderr_and_exit_status(alice: Client, os_user) -> None:
    result = alice.run("ssh", f"{os_user.name}@node1", "id -un; echo oops >&2; exit 3")
    assert result.returncode == 3, result.stderr
    assert result.stdout == f"{os_user.name}\n"
    assert result.stderr == "oops\n"


def test_ssh_through_the_proxy_never_loses_the_nodes_first_bytes(alice: Client, os_user) -> None:
    """The node speaks first (its version line), right behind the proxy's OPEN_CONFIRMATION:
    data in the same read as the confirmation was once dropped and half the logins hung."""
    runs = [subprocess.Popen(alice.jg.argv("ssh", f"{os_user.name}@node1", "true"), env=alice.jg.env(alice.home),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(6)]
    failures = []
    for proc in runs:
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            failures.append(err.decode(errors="replace").strip())
    assert not failures, failures


def test_ssh_exec_passes_stdin_through(alice: Client, os_user) -> None:
    result = alice.run("ssh", f"{os_user.name}@node1", "tr a-z A-Z", input="hello node\n").check()
    assert result.stdout == "HELLO NODE\n"


def test_ssh_exec_environment_is_the_logins(alice: Client, os_user) -> None:
    out = alice.run("ssh", f"{os_user.name}@node1", 'echo "$USER $HOME $SHELL"; pwd').check().stdout
    assert out.splitlines() == [f"{os_user.name} {os_user.home} /bin/sh", str(os_user.home)]


def test_ssh_t_allocates_a_pty(alice: Client, os_user) -> None:
    master, slave = os.openpty()
    try:
        result = alice.run("ssh", "-t", f"{os_user.name}@node1", "tty; echo TERM=$TERM", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.replace("\r", "").splitlines()
    assert lines[0].startswith("/dev/pts/"), result.stdout
    assert lines[1].startswith("TERM=") and lines[1] != "TERM=", result.stdout


def test_interactive_shell_on_a_pty(alice: Client, os_user) -> None:
    """No command and a terminal on stdin: a login shell on a pty, typed into like a user."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen(alice.jg.argv("ssh", f"{os_user.name}@node1"), env=alice.jg.env(alice.home),
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.write(master, b"echo $((6*7)) $(tty)\rexit 3\r")
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode == 3, err
    assert re.search(rb"(^|\$ )42 /dev/pts/\d+\r\n", out, re.MULTILINE), out  # after the prompt


def test_ssh_without_t_and_without_a_terminal_has_no_pty(alice: Client, os_user) -> None:
    result = alice.run("ssh", f"{os_user.name}@node1", "tty")
    assert result.stdout.strip() == "not a tty"


def test_scp_upload_and_download(alice: Client, os_user, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    remote = f"{os_user.name}@node1:{os_user.home}/scp_up.bin"
    alice.run("scp", str(local), remote).check()
    assert (os_user.home / "scp_up.bin").read_bytes() == payload
    assert (os_user.home / "scp_up.bin").stat().st_uid == os_user.uid
    back = tmp_path / "down.bin"
    alice.run("scp", remote, str(back)).check()
    assert back.read_bytes() == payload


def test_scp_r_copies_a_tree_both_ways(alice: Client, os_user, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha\n")
    (tree / "sub" / "b.txt").write_text("beta\n")
    (tree / "sub" / "deeper" / "c.bin").write_bytes(os.urandom(70_000))
    alice.run("scp", "-r", str(tree), f"{os_user.name}@node1:{os_user.home}/tree_up").check()
    assert _tree(os_user.home / "tree_up") == _tree(tree)
    out = tmp_path / "back"
    out.mkdir()
    alice.run("scp", "-r", f"{os_user.name}@node1:{os_user.home}/tree_up", str(out)).check()
    assert _tree(out / "tree_up") == _tree(tree)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- OpenSSH with the issued certificate


def test_openssh_ssh_with_jumpgate_config(alice: Client, cluster: Cluster, ssh_config: Path, os_user) -> None:
    done = run_openssh([SSH, *openssh_opts(ssh_config), "-l", os_user.name, f"node1.{cluster.name}",
                        "id -un; exit 4"])
    assert done.returncode == 4, done.stderr
    assert done.stdout == f"{os_user.name}\n"


def test_openssh_ssh_J_through_the_proxy(alice: Client, cluster: Cluster, ssh_config: Path, os_user) -> None:
    # OpenSSH applies command-line -o options to the destination only, never to the jump
    # host: the jump hop finds the certificate and the CA known_hosts in `jumpgate config`.
    jump = f"alice@{LOOPBACK}:{cluster.ports['proxy']}"
    done = run_openssh([SSH, *openssh_opts(ssh_config), "-J", jump, f"{os_user.name}@node1", "id -un; exit 7"])
    assert done.returncode == 7, done.stderr
    assert done.stdout == f"{os_user.name}\n"


def _explicit_openssh(key: Path, cert: Path, known_hosts: Path, proxy_port: int, user: str,
                      hop_options: Sequence[str] = ()) -> list[str]:
    """ssh -F /dev/null with every option spelled out; the jump hop as a ProxyCommand, since
    OpenSSH applies command-line options to the destination only, never to a -J host."""
    common = ["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes",
              "-i", str(key), "-o", f"CertificateFile={cert}", "-o", f"UserKnownHostsFile={known_hosts}",
              "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes"]
    hop = " ".join([SSH, *common, *hop_options, "-p", str(proxy_port), "-W", "%h:%p", f"{user}@{LOOPBACK}"])
    return [SSH, *common, "-o", f"ProxyCommand={hop}"]


def test_openssh_with_only_the_issued_files_and_no_generated_config(alice: Client, cluster: Cluster,
                                                                    os_user) -> None:
    """-F /dev/null: the key, the certificate and the CA known_hosts from ~/.jumpgate are enough."""
    argv = _explicit_openssh(alice.home / "key", alice.home / "key-cert.pub", alice.home / "known_hosts",
                             cluster.ports["proxy"], "alice")
    done = run_openssh([*argv, f"{os_user.name}@node1", "id -un"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{os_user.name}\n"


def test_the_node_sees_the_clients_address_not_the_proxys(alice: Client, cluster: Cluster, os_user) -> None:
    """The jump hop binds 127.0.0.2; the proxy (127.0.0.1 to the node) vouches for it in its
    signed relay line, so SSH_CLIENT and the node's audit name the client."""
    argv = _explicit_openssh(alice.home / "key", alice.home / "key-cert.pub", alice.home / "known_hosts",
                             cluster.ports["proxy"], "alice", hop_options=["-o", "BindAddress=127.0.0.2"])
    with EventWatch(cluster) as watch:
        done = run_openssh([*argv, f"{os_user.name}@node1", 'echo "$SSH_CLIENT"'])
    assert done.returncode == 0, done.stderr
    client_ip, client_port = done.stdout.split()[:2]
    assert client_ip == "127.0.0.2"
    # this very session (its client port), whose event the node queues: polled for
    watch.wait_for("session.start", failed=False, login=os_user.name, client_ip="127.0.0.2",
                   client_port=client_port)


def test_ctl_auth_sign_user_certificate_for_automation(alice: Client, cluster: Cluster, keys: openssh.KeyFactory,
                                                       os_user, tmp_path: Path) -> None:
    robot = keys.new_key("ed25519")
    cert = tmp_path / "robot-cert.pub"
    cluster.ctl("auth", "sign", "--user", "alice", "--pubkey", str(robot.public), "--ttl", "1h", "--out", str(cert))
    assert cert.read_text().startswith("ssh-ed25519-cert-v01@openssh.com ")
    argv = _explicit_openssh(robot.private, cert, alice.home / "known_hosts", cluster.ports["proxy"], "alice")
    done = run_openssh([*argv, f"{os_user.name}@node1", "id -un"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{os_user.name}\n"


def _key_blob(line: str) -> str:
    """The base64 key of a key or known_hosts line (the field after the key type)."""
    fields = line.split()
    return next(fields[i + 1] for i, f in enumerate(fields) if f.startswith(("ssh-", "ecdsa-")))


def test_ctl_auth_export_matches_what_clients_trust(alice: Client, cluster: Cluster) -> None:
    user_ca = cluster.ctl("auth", "export", "--type", "user").stdout.strip()
    host_ca = cluster.ctl("auth", "export", "--type", "host").stdout.strip()
    assert user_ca.split()[0] == "ssh-ed25519", user_ca
    assert host_ca.startswith("@cert-authority "), host_ca
    # the client trusts exactly that host CA; its certificate is signed by that user CA
    trusted = {_key_blob(line) for line in (alice.home / "known_hosts").read_text().splitlines()
               if line.startswith("@cert-authority")}
    assert trusted == {_key_blob(host_ca)}, (trusted, host_ca)
    signer = subprocess.run(["ssh-keygen", "-L", "-f", str(alice.home / "key-cert.pub")], capture_output=True,
                            text=True, check=True).stdout
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=user_ca, capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    assert f"Signing CA: ED25519 {fingerprint}" in signer, signer


def test_openssh_scp_with_jumpgate_config(alice: Client, cluster: Cluster, ssh_config: Path, os_user,
                                          tmp_path: Path) -> None:
    src = tmp_path / "o.txt"
    src.write_text("through openssh scp\n")
    host = f"{os_user.name}@node1.{cluster.name}"
    done = run_openssh([SCP, *openssh_opts(ssh_config), str(src), f"{host}:{os_user.home}/openssh_scp.txt"])
    assert done.returncode == 0, done.stderr
    assert (os_user.home / "openssh_scp.txt").read_text() == "through openssh scp\n"
    back = tmp_path / "back.txt"
    done = run_openssh([SCP, *openssh_opts(ssh_config), f"{host}:{os_user.home}/openssh_scp.txt", str(back)])
    assert done.returncode == 0, done.stderr
    assert back.read_text() == "through openssh scp\n"


def test_openssh_sftp_batch_with_jumpgate_config(alice: Client, cluster: Cluster, ssh_config: Path, os_user,
                                                 tmp_path: Path) -> None:
    src = tmp_path / "s.bin"
    src.write_bytes(os.urandom(100_000))
    batch = (f"mkdir {os_user.home}/sftpdir\nput {src} {os_user.home}/sftpdir/s.bin\n"
             f"ls {os_user.home}/sftpdir\nget {os_user.home}/sftpdir/s.bin {tmp_path}/s.back\n")
    done = run_openssh([SFTP, *openssh_opts(ssh_config), "-b", "-", f"{os_user.name}@node1.{cluster.name}"],
                       input=batch)
    assert done.returncode == 0, done.stderr
    assert (os_user.home / "sftpdir" / "s.bin").read_bytes() == src.read_bytes()
    assert (tmp_path / "s.back").read_bytes() == src.read_bytes()


# --------------------------------------------------------------------------- a second node


def test_second_node_joins_with_a_token_and_serves(alice: Client, cluster: Cluster, node2: Daemon,
                                                   os_user) -> None:
    rows = _node_rows(alice.run("ls").check().stdout)
    assert rows["node2"][1] == NODE2_LABELS
    result = alice.run("ssh", f"{os_user.name}@node2", "id -un; exit 5")
    assert result.returncode == 5, result.stderr
    assert result.stdout == f"{os_user.name}\n"
    tokens = cluster.ctl("tokens", "ls").stdout
    assert re.search(r"node\s+used", tokens), tokens
    joins = [line for line in cluster.events() if re.search(r" node\.join user=\S+ .*\bnode=node2\b", line)]
    assert joins and "FAILED" not in joins[0], "no node.join event for node2"


def test_second_node_banner_names_the_cluster_it_joined(cluster: Cluster, node2: Daemon) -> None:
    assert f"jumpgate: cluster '{cluster.name}' is running (node)" in node2.log_text(), node2.log_tail()


def test_second_node_reachable_by_openssh(ssh_config: Path, cluster: Cluster, node2: Daemon,
                                          os_user) -> None:
    done = run_openssh([SSH, *openssh_opts(ssh_config), "-l", os_user.name, f"node2.{cluster.name}", "id -un"])
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{os_user.name}\n"


# --------------------------------------------------------------------------- OpenSSH sshd as an agentless node


def test_sshd_node_listed_and_reached_with_jumpgate_ssh(alice: Client, sshnode: openssh.SshdHandle,
                                                        os_user) -> None:
    rows = _node_rows(alice.run("ls").check().stdout)
    assert rows["sshnode"] == (f"{LOOPBACK}:{sshnode.port}", "env=legacy")
    result = alice.run("ssh", f"{os_user.name}@sshnode", "id -un; exit 6")
    assert result.returncode == 6, result.stderr + sshnode.log_tail()
    assert result.stdout == f"{os_user.name}\n"


def test_sshd_node_reached_with_openssh_and_the_config(ssh_config: Path, cluster: Cluster, alice: Client,
                                                       sshnode: openssh.SshdHandle, os_user) -> None:
    config = ssh_config.with_name("config_sshnode")
    config.write_text(alice.run("config").check().stdout)  # now names sshnode too
    done = run_openssh([SSH, *openssh_opts(config), "-l", os_user.name, f"sshnode.{cluster.name}", "id -un"])
    assert done.returncode == 0, done.stderr + sshnode.log_tail()
    assert done.stdout == f"{os_user.name}\n"


def test_sshd_node_scp_with_jumpgate_scp(alice: Client, sshnode: openssh.SshdHandle, os_user,
                                         tmp_path: Path) -> None:
    src = tmp_path / "to_sshd.txt"
    src.write_text("to the OpenSSH node\n")
    alice.run("scp", str(src), f"{os_user.name}@sshnode:{os_user.home}/to_sshd.txt").check()
    assert (os_user.home / "to_sshd.txt").read_text() == "to the OpenSSH node\n"


def test_r4_ctl_nodes_add_then_ssh_at_once_never_misses_and_rm_refuses_at_once(
        alice: Client, cluster: Cluster, ssh_config: Path, sshnode: openssh.SshdHandle, os_user) -> None:
    """Issue 14 item 6, as the user met it: `ctl nodes add` and then, at once, `jumpgate ssh`
    and OpenSSH `ssh -J` (each once missed 2 times in 5); `ctl nodes rm` and then, at once, a
    refusal (it was routed for ~4 s). Ten rounds, no sleep anywhere: ctl returns only once
    the proxy has the change (docs/security.md R4)."""
    config = ssh_config.with_name("config_r4")
    config.write_text(alice.run("config").check().stdout)  # names sshnode, for its known_hosts line
    jump = f"alice@{LOOPBACK}:{cluster.ports['proxy']}"
    addr = f"{LOOPBACK}:{sshnode.port}"
    try:
        for round_ in range(10):
            cluster.ctl("nodes", "rm", "sshnode")
            refused = alice.run("ssh", f"{os_user.name}@sshnode", "true")
            assert refused.returncode != 0 and "unknown node" in refused.stderr, (round_, refused.stderr)
            cluster.ctl("nodes", "add", "--name", "sshnode", "--addr", addr, "--labels", "env=legacy")
            reached = alice.run("ssh", f"{os_user.name}@sshnode", "echo $((40 + 2))")
            assert (reached.returncode, reached.stdout) == (0, "42\n"), (round_, reached.stderr)
            if round_ % 2:  # OpenSSH's -J on every other round: each add is followed by one ssh
                continue
            cluster.ctl("nodes", "rm", "sshnode")
            cluster.ctl("nodes", "add", "--name", "sshnode", "--addr", addr, "--labels", "env=legacy")
            done = run_openssh([SSH, *openssh_opts(config), "-J", jump, f"{os_user.name}@sshnode", "echo jumped"])
            assert (done.returncode, done.stdout) == (0, "jumped\n"), (round_, done.stderr)
    finally:  # the module's other tests expect sshnode registered as before
        if "sshnode" not in _node_rows(alice.run("ls").check().stdout):
            cluster.ctl("nodes", "add", "--name", "sshnode", "--addr", addr, "--labels", "env=legacy")


# --------------------------------------------------------------------------- ctl away from the auth host


def test_ctl_from_another_host_with_an_admin_certificate(cluster: Cluster, new_client, os_user) -> None:
    """`ctl --auth-server --identity`: an admin's login certificate drives the API over SSH;
    invites point at the web role the admin logged in through, pinned as then."""
    admin = new_client()
    result, authenticator = admin.signup(cluster.add_user("boss", [os_user.name], roles=["admin"]))
    result.check()
    admin.login("boss", authenticator).check()
    remote = ["ctl", "--auth-server", cluster.auth, "--identity", str(admin.home / "key")]
    users = admin.run(*remote, "users", "ls").check().stdout
    assert "boss" in users and "admin" in users
    invite = admin.run(*remote, "users", "add", "erin", "--logins", os_user.name).check().stdout
    assert f"--proxy {cluster.web} " in invite
    signed_up, _ = new_client().signup(signup_token(invite))  # the pin in the token verifies the web role
    signed_up.check()


def test_ctl_with_a_non_admin_certificate_is_refused(cluster: Cluster, alice: Client) -> None:
    result = alice.run("ctl", "--auth-server", cluster.auth, "--identity", str(alice.home / "key"), "users", "ls")
    assert result.returncode != 0
    assert len(result.error_lines) == 1, result.stderr


# --------------------------------------------------------------------------- names the cluster vouches for (J1..J8)


def _node_start_args(cluster: Cluster, token: str, name: str, data_dir: Path) -> list[str]:
    return ["--roles", "node", "--auth-server", cluster.auth, "--token", token, "--nodename", name,
            "--public-addr", LOOPBACK, "--listen-addr", LOOPBACK, "--data-dir", str(data_dir)]


def test_j2_a_second_host_with_a_fresh_token_and_a_taken_name_is_refused(
        jg: Jumpgate, cluster: Cluster, alice: Client, node2: Daemon, os_user, tmp_path: Path) -> None:
    """Seen from outside before J2: the second host "re-joined" as node2 and jumpgate ssh node2
    alternated between the two hosts. Now its start fails, saying what to do."""
    before = _node_rows(alice.run("ls").check().stdout)["node2"]
    port = str(openssh_free_port())
    with EventWatch(cluster) as watch:
        second = jg.run("start", *_node_start_args(cluster, cluster.node_token(), "node2", tmp_path / "data"),
                        "--node-port", port, timeout=60)
    assert second.returncode != 0
    assert len(second.error_lines) == 1, second.stderr
    assert "node2" in second.stderr and "jumpgate ctl nodes rm node2" in second.stderr, second.stderr
    watch.wait_for("node.join", failed=True, node="node2", reason="already_exists")
    assert _node_rows(alice.run("ls").check().stdout)["node2"] == before
    for _ in range(3):   # and node2 is the node that joined first, every time
        done = alice.run("ssh", f"{os_user.name}@node2", "true")
        assert done.returncode == 0, done.stderr


def openssh_free_port() -> int:
    from _cluster import free_ports
    return free_ports(1)[0]


def test_a_different_nodename_on_a_joined_data_dir_is_reported_not_silently_ignored(
        jg: Jumpgate, cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "data"
    first, _ = start_daemon(jg, tmp_path / "first.log", _node_start_args(cluster, cluster.node_token(), "node3", data),
                            ["node"])
    first.stop()
    again, _ = start_daemon(jg, tmp_path / "again.log",
                            _node_start_args(cluster, cluster.node_token(), "web1", data), ["node"])
    try:
        log = again.log_text()
        assert "this data dir is joined as 'node3'" in log and "'web1' asked for is ignored" in log, log
        assert "web1" not in cluster.ctl("nodes", "ls").stdout
    finally:
        again.stop()


def test_j6_openssh_with_the_login_known_hosts_refuses_a_host_outside_the_clusters_names(
        cluster: Cluster, alice: Client, os_user, keys: openssh.KeyFactory, tmp_path: Path) -> None:
    """A host with a valid certificate of the cluster's host CA for outside.example.org (here:
    from ctl auth sign, as a hijacked join could get before J3). The real ssh, with the
    known_hosts login wrote, refuses it under that name and accepts it under NAME.CLUSTER."""
    workdir = tmp_path / "outside"
    workdir.mkdir()
    workdir.chmod(0o755)
    out = cluster.ctl("auth", "sign", "--host", "outside", "--out", str(workdir / "hostkeys"),
                      "--principals", "outside.example.org").stdout
    sshd_lines = [line.strip() for line in out.splitlines()
                  if line.strip().startswith(("HostKey ", "HostCertificate ", "TrustedUserCAKeys "))]
    handle = openssh.start_sshd(workdir / "sshd", os_user, keys, authorized_keys=(), host_key_kinds=(),
                                trust_user_ca=False, extra_config=sshd_lines)
    try:
        base = [SSH, "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentityAgent=none", "-o", "IdentitiesOnly=yes",
                "-i", str(alice.home / "key"), "-o", f"CertificateFile={alice.home / 'key-cert.pub'}",
                "-o", f"UserKnownHostsFile={alice.home / 'known_hosts'}", "-o", "GlobalKnownHostsFile=/dev/null",
                "-o", "StrictHostKeyChecking=yes", "-p", str(handle.port), "-l", os_user.name]
        refused = run_openssh([*base, "-o", "HostKeyAlias=outside.example.org", LOOPBACK, "true"])
        assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, refused.stderr
        accepted = run_openssh([*base, "-o", f"HostKeyAlias=outside.{cluster.name}", LOOPBACK, "id -un"])
        assert accepted.returncode == 0, accepted.stderr + handle.log_tail()
        assert accepted.stdout == f"{os_user.name}\n"
    finally:
        handle.stop()


def test_j1_a_node_named_like_an_internet_host_is_refused(jg: Jumpgate, cluster: Cluster, tmp_path: Path) -> None:
    late = jg.run("start", *_node_start_args(cluster, cluster.node_token(), "github.com", tmp_path / "d"),
                  "--node-port", str(openssh_free_port()), timeout=60)
    assert late.returncode != 0 and "one DNS label" in late.stderr, late.stderr
    refused = cluster.ctl("nodes", "add", "--name", "github.com", "--addr", "127.0.0.9:22", check=False)
    assert refused.returncode != 0 and "one DNS label" in refused.stderr
    assert "github" not in cluster.ctl("nodes", "ls").stdout

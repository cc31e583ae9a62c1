"""End to end: one machine, several Jumpgate users (issue 14 items 8, 12, 19), with the built pyz.

A home written by the single-profile layout (every file at the top of ``$JUMPGATE_HOME``, the
paths ``jumpgate config`` put into ssh_config) is migrated by the first command and its
ssh_config keeps working with the real OpenSSH; a second user's signup and failed login leave
the first user's credentials alone; ``login`` switches between valid profiles without a
password and the session daemon then serves the new profile's certificate; ``status`` checks
what it shows; a private key others can read is refused, as OpenSSH refuses it.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import openssh
from _cluster import AUDIT_DELAY, Client, Cluster, EventWatch, Jumpgate, run_openssh

SSH = "/usr/bin/ssh"
LINKED = ("profile.json", "key", "key.pub", "key-cert.pub", "known_hosts")


def openssh_opts(config: Path) -> list[str]:
    return ["-F", str(config), "-o", "BatchMode=yes", "-o", "IdentityAgent=none"]


def single_profile_home(client: Client, old: Path) -> Path:
    """``client``'s profile laid out as the code before profiles kept it: regular files at the
    top (profile.json without ``user_ca``), and its ``jumpgate config`` naming those paths."""
    own = (client.home / "current").resolve()
    config = client.run("config").check().stdout  # names node1 too, and brings known_hosts up to date
    old.mkdir(parents=True, mode=0o700)
    for name in LINKED:
        shutil.copy2(own / name, old / name)
    record = json.loads((old / "profile.json").read_text())
    record.pop("user_ca", None)
    (old / "profile.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    path = old.parent / "ssh_config"
    path.write_text(config.replace(str(own), str(old)))
    assert str(own) not in path.read_text() and f"IdentityFile {old}/key" in path.read_text()
    return path


def ssh_id(config: Path, cluster: Cluster, os_user: openssh.ThrowawayUser) -> str:
    done = run_openssh([SSH, *openssh_opts(config), "-l", os_user.name, f"node1.{cluster.name}", "id -un"])
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_second_user_on_a_single_profile_home_keeps_the_first_users_ssh_config_and_switches(
        jg: Jumpgate, cluster: Cluster, new_client, os_user, tmp_path: Path) -> None:
    olga = new_client().enrol("olga", [os_user.name])
    old_home = tmp_path / "olga-machine" / ".jumpgate"
    config = single_profile_home(olga, old_home)
    assert ssh_id(config, cluster, os_user) == os_user.name  # the old layout, as it was

    machine = Client(jg, old_home, cluster)
    status = machine.run("status").check()  # the first command migrates the home
    assert re.search(r"^> Profile: +olga @", status.stdout, re.M), status.stdout
    assert all((old_home / name).is_symlink() for name in LINKED)
    assert ssh_id(config, cluster, os_user) == os_user.name  # the paths in ssh_config still work
    olga_files = {name: (old_home / name).read_bytes() for name in LINKED}

    # a second user signs up and fails a login on the same machine: olga's files stay
    signup, bob_codes = machine.signup(cluster.add_user("bobby", [os_user.name]))
    signup.check()
    failed = machine.login("bobby", bob_codes, password="not the password!", code=bob_codes.peek())
    assert failed.returncode != 0 and "access denied" in failed.stderr
    assert {name: (old_home / name).read_bytes() for name in LINKED} == olga_files
    assert ssh_id(config, cluster, os_user) == os_user.name

    # bobby logs in: a profile of its own becomes current; olga's stays, listed
    machine.login("bobby", bob_codes).check()
    listing = machine.run("status").check().stdout
    assert re.search(r"^> Profile: +bobby @", listing, re.M) and re.search(r"^  Profile: +olga @", listing, re.M)
    with EventWatch(cluster) as watch:
        machine.run("ssh", f"{os_user.name}@node1", "echo as-bobby").check()
    assert "user=bobby" in _session_of(watch, "echo as-bobby")

    # back to olga: her certificate is valid, so no password; the daemon serves her now
    switched = machine.run("login", "--user", "olga", input="")
    assert switched.returncode == 0 and switched.stdout.startswith("switched to olga"), switched.stderr
    with EventWatch(cluster) as watch:
        machine.run("ssh", f"{os_user.name}@node1", "echo as-olga").check()
    assert "user=olga" in _session_of(watch, "echo as-olga")
    assert ssh_id(config, cluster, os_user) == os_user.name

    machine.run("logout", "--user", "bobby").check()
    assert ssh_id(config, cluster, os_user) == os_user.name  # logging bobby out left olga
    machine.run("logout").check()
    relogin = machine.login("olga", olga.authenticator)  # no --ca-pin: the pin outlived the logout
    assert relogin.returncode == 0 and "--insecure" not in relogin.stderr, relogin.stderr
    machine.run("logout", "--all").check()


def _session_of(watch: EventWatch, command: str) -> str:
    """The session.start line of ``command`` (the audit line shows it unquoted, so a field
    match would stop at its first word and find the previous test step's `echo` as well)."""
    deadline = time.monotonic() + AUDIT_DELAY
    while True:
        lines = [line for line in watch.refresh() if " session.start " in line and f"command={command} " in line]
        if lines:
            return lines[-1]
        assert time.monotonic() < deadline, watch.new
        time.sleep(0.1)  # the node's events reach the auth role's log a moment later: a file to poll


def test_status_refuses_a_garbage_certificate_and_ssh_a_key_others_can_read(
        cluster: Cluster, new_client, os_user, keys: openssh.KeyFactory) -> None:
    pia = new_client().enrol("pia", [os_user.name])
    status = pia.run("status").check().stdout
    assert re.search(r"Valid until: .* \((11h 5\dm|12h) left\)", status), status

    key = pia.home / "key"
    key.chmod(0o644)
    refused = pia.run("ssh", f"{os_user.name}@node1", "true")
    assert refused.returncode != 0
    ours = f"Permissions 0644 for '{key.resolve()}' are too open"
    assert "UNPROTECTED PRIVATE KEY FILE!" in refused.stderr and ours in refused.stderr, refused.stderr
    # the same words as OpenSSH's own refusal of that file
    theirs = run_openssh(["/usr/bin/ssh-keygen", "-y", "-f", str(key.resolve())])
    assert "UNPROTECTED PRIVATE KEY FILE!" in theirs.stderr and ours in theirs.stderr, theirs.stderr
    key.chmod(0o600)
    pia.run("ssh", f"{os_user.name}@node1", "true").check()

    (pia.home / "key-cert.pub").resolve().write_text("ssh-ed25519-cert-v01@openssh.com AAAAgarbage pia\n")
    garbage = pia.run("status")
    assert garbage.returncode == 1 and "INVALID" in garbage.stdout and "Valid until" not in garbage.stdout

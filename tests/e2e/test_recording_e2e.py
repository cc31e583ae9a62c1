"""Session recording through the real appliance (issue 16): record, upload, list, replay,
export to asciicast checked by the real asciinema, and a SIGKILL of the node mid-session."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _cluster import Client, Cluster, Jumpgate, poll

ASCIINEMA = shutil.which("asciinema") or str(Path(sys.executable).with_name("asciinema"))
UPLOAD_WAIT = 20.0


def _sessions(cluster: Cluster, *flags: str) -> list[dict]:
    return json.loads(cluster.ctl("sessions", "ls", "--format", "json", *flags).stdout)


def _uploaded(cluster: Cluster, marker_user: str, state: str) -> dict:
    def done(found: list[dict]) -> bool:
        return any(s["user"] == marker_user and s["state"] == state and s["uploaded"] == s["chunks"] for s in found)
    found = poll(lambda: _sessions(cluster), done, timeout=UPLOAD_WAIT)
    return next(s for s in found if s["user"] == marker_user and s["state"] == state)


def _play(cluster: Cluster, *args: str) -> str:
    return cluster.jg.run("play", "--data-dir", str(cluster.data_dir), *args).check().stdout


@pytest.fixture(scope="module")
def alice(jg: Jumpgate, cluster: Cluster, os_user, tmp_path_factory) -> Client:
    return Client(jg, tmp_path_factory.mktemp("alice") / "jumpgate", cluster).enrol("alice", [os_user.name])


def test_an_exec_is_recorded_uploaded_listed_and_replays_what_the_user_saw(alice, cluster, os_user, tmp_path):
    result = alice.run("ssh", f"{os_user.name}@node1", "printf 'recorded-%s\\n' output; echo to-stderr >&2").check()
    session = _uploaded(cluster, "alice", "ended")
    assert session["node"] == "node1" and session["login"] == os_user.name and session["exit_status"] == 0
    text = _play(cluster, session["id"], "--format", "text")
    assert "recorded-output" in text and "to-stderr" in text
    raw = _play(cluster, session["id"], "--speed", "100")  # the terminal replay: stdout and stderr, as sent
    assert raw.replace("to-stderr\n", "", 1) == result.stdout
    # asciicast v2 that the real asciinema reads
    cast = tmp_path / "s.cast"
    _play(cluster, session["id"], "--format", "asciicast", "-o", str(cast))
    header = json.loads(cast.read_text().splitlines()[0])
    assert header["version"] == 2 and header["width"] > 0
    shown = subprocess.run([ASCIINEMA, "cat", str(cast)], capture_output=True, timeout=30, check=True)
    assert b"recorded-output" in shown.stdout
    # the audit log's session column: ctl audit --session
    lines = cluster.ctl("audit", "--session", session["id"]).stdout.splitlines()
    assert any(" session.start " in line for line in lines) and any(" session.end " in line for line in lines)
    assert all(session["id"] in line for line in lines)
    # full-text search over what sessions printed
    hits = cluster.ctl("sessions", "search", "recorded-output").stdout
    assert session["id"] in hits


def test_a_pty_session_records_the_terminal_and_window_size(alice, cluster, os_user, tmp_path):
    alice.run("ssh", "-t", f"{os_user.name}@node1", "echo pty-marker").check()
    found = poll(lambda: _sessions(cluster), lambda f: any(s["command"] == "echo pty-marker" and s["state"] == "ended"
                                                          and s["uploaded"] == s["chunks"] for s in f),
                 timeout=UPLOAD_WAIT)
    session = next(s for s in found if s["command"] == "echo pty-marker")
    assert session["header"]["pty"] is True
    assert "pty-marker" in _play(cluster, session["id"], "--format", "text")


def test_sigkill_of_the_node_loses_at_most_the_last_second_and_the_session_shows_interrupted_within_10s(
        jg, os_user, tmp_path):
    (tmp_path / "c").mkdir()
    cluster = Cluster(jg, tmp_path / "c").start()
    try:
        bob = Client(jg, tmp_path / "bob", cluster).enrol("bob", [os_user.name])
        cluster.client_homes.append(bob.home)
        ssh = subprocess.Popen(jg.argv("ssh", f"{os_user.name}@node1",
                                       "echo early-marker; sleep 1; echo late-marker; sleep 600"),
                               env=jg.env(bob.home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL)
        try:
            assert ssh.stdout.readline() == b"early-marker\n"
            assert ssh.stdout.readline() == b"late-marker\n"
            time.sleep(1.0)  # the recorder writes at least every second: late-marker is on disk now
            cluster.daemon.process.send_signal(signal.SIGKILL)
            cluster.daemon.process.wait(timeout=10)
        finally:
            ssh.kill()
            ssh.wait()
        subprocess.run(["pkill", "-KILL", "-u", os_user.name, "-x", "sleep"], check=False)
        cluster.daemon.log = tmp_path / "restarted.log"  # the banner is looked for in a fresh log
        cluster.daemon.start()
        restarted = time.monotonic()
        poll(lambda: _sessions(cluster), lambda f: any(s["state"] == "interrupted" for s in f), timeout=10)
        assert time.monotonic() - restarted < 10
        session = _uploaded(cluster, "bob", "interrupted")
        text = _play(cluster, session["id"], "--format", "text")
        assert "early-marker" in text and "late-marker" in text
        played = jg.run("play", "--data-dir", str(cluster.data_dir), session["id"], "--format", "text")
        assert "interrupted" in played.stderr
    finally:
        cluster.stop()


def test_s6_jumpgate_join_watches_a_live_session_to_its_end_and_is_audited(alice, cluster, os_user):
    """The owner's other terminal joins as an observer (the default) through the proxy: it is
    shown the screen so far, then the rest, and ends with the session; the log has the join."""
    import threading
    owner: dict = {}
    command = "echo owner-start; sleep 4; echo owner-end"
    thread = threading.Thread(target=lambda: owner.update(done=alice.run("ssh", f"{os_user.name}@node1", command)))
    thread.start()
    try:
        found = poll(lambda: _sessions(cluster, "--active"), lambda f: any(s["command"] == command for s in f),
                     timeout=UPLOAD_WAIT)
        session = next(s for s in found if s["command"] == command)
        time.sleep(0.5)  # owner-start is on the screen
        joined = alice.run("join", session["id"], f"{os_user.name}@node1", timeout=30)
    finally:
        thread.join(30)
    assert joined.returncode == 0, joined.stderr
    assert "owner-start" in joined.stdout and "owner-end" in joined.stdout
    assert "alice joined the session as observer" in joined.stderr
    assert owner["done"].check().stdout == "owner-start\nowner-end\n"
    lines = cluster.ctl("audit", "--session", session["id"]).stdout.splitlines()
    assert any(" session.join " in line for line in lines) and any(" session.leave " in line for line in lines)

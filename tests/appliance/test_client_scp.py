"""``jumpgate scp``: remote wildcards and the progress meter (issue 14 item 11).

As OpenSSH's scp: ``node:'/var/log/*.log'`` is expanded by the login's shell on the node, and
every name that comes back must match the pattern (OpenSSH 8.0's check against a node that
sends what was not asked for); a meter shows on a terminal, not in a pipe, not with ``-q``.
The commands run as subprocesses against a real proxy and node (``_proxy_helpers``).
"""
from __future__ import annotations

import os
import pty as ptylib
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from _proxy_helpers import NODE, REPO, jumpgate, proxy_fixtures
from appliance.client.ssh import ScpProtocolError, _Sink, has_glob, remote_scp_command

login, cluster, profile = proxy_fixtures("cliscp")

BOUND = 30.0


def _remote_files(login, names: dict[str, bytes], directory: str = "logs") -> None:
    """Files in the login's home, owned by the login (the node's scp runs as it)."""
    root = login.home / directory
    root.mkdir(exist_ok=True)
    os.chown(root, login.uid, login.gid)
    for name, data in names.items():
        (root / name).write_bytes(data)
        os.chown(root / name, login.uid, login.gid)


async def test_scp_expands_a_remote_wildcard_on_the_node(cluster, profile, login, tmp_path):
    tmp_path = tmp_path / "dest"
    tmp_path.mkdir()
    _remote_files(login, {"a.log": b"A", "b.log": b"B", "c.txt": b"C", "d e.log": b"DE"})
    done = await jumpgate(profile, "scp", f"{login.name}@{NODE}:logs/*.log", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log", "b.log", "d e.log"]
    assert (tmp_path / "d e.log").read_bytes() == b"DE"
    (tmp_path / "pick").mkdir()
    done = await jumpgate(profile, "scp", f"{login.name}@{NODE}:~/logs/[ab].log", str(tmp_path / "pick"))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "pick").iterdir()) == ["a.log", "b.log"]


async def test_scp_wildcard_that_matches_nothing_fails_as_openssh(cluster, profile, login, tmp_path):
    tmp_path = tmp_path / "dest"
    tmp_path.mkdir()
    _remote_files(login, {"a.log": b"A"})
    done = await jumpgate(profile, "scp", f"{login.name}@{NODE}:logs/*.nothing", str(tmp_path))
    assert done.returncode == 1 and b"No such file or directory" in done.stderr
    assert list(tmp_path.iterdir()) == []


async def test_scp_wildcard_needs_a_directory_to_copy_into(cluster, profile, login, tmp_path):
    done = await jumpgate(profile, "scp", f"{login.name}@{NODE}:logs/*.log", str(tmp_path / "one-file"))
    assert done.returncode == 1 and b"not a directory (several sources, or a wildcard)" in done.stderr


def test_only_wildcards_reach_the_remote_shell_unquoted():
    assert remote_scp_command("f", "/var/log/*.log", glob=True) == "scp -f -- /var/log/*.log"
    assert remote_scp_command("f", "~/my dir/a?[0-9].txt", glob=True) == "scp -f -- ~/'my dir/a'?[0-9].txt"
    assert remote_scp_command("f", "x; rm -rf ~ *", glob=True) == "scp -f -- 'x; rm -rf ~ '*"
    assert remote_scp_command("f", "[$(id)]*", glob=True) == "scp -f -- '[$(id)]'*"  # not a plain bracket
    assert remote_scp_command("f", "lit\\*eral*", glob=True) == "scp -f -- 'lit*'eral*"
    assert not has_glob("lit\\*eral") and has_glob("a[bc]") and not has_glob("plain")


async def _sink(records: bytes, tmp_path: Path, pattern: str) -> tuple[bool, list[str]]:
    ours, theirs = trio.testing.memory_stream_pair()
    warnings: list[str] = []
    sink = _Sink(ours, warnings.append, recursive=False, preserve=False, target=tmp_path, expected=pattern, glob=True)

    async def source():
        assert await theirs.receive_some(1) == b"\0"
        await theirs.send_all(records)
        await theirs.send_eof()
        while await theirs.receive_some():
            pass
    async with trio.open_nursery() as nursery:
        nursery.start_soon(source)
        try:
            await sink.run()
        except ScpProtocolError as exc:
            warnings.append(exc.description)
        await ours.aclose()
    return sink.ok, warnings


async def test_t22_a_wildcard_download_refuses_names_that_do_not_match(tmp_path):
    ok, warnings = await _sink(b"C0644 1 a.log\nx\0C0755 2 evil.sh\nxx\0", tmp_path, "*.log")
    assert "the remote scp sent 'evil.sh' when '*.log' was asked for" in warnings
    assert (tmp_path / "a.log").read_bytes() == b"x" and not (tmp_path / "evil.sh").exists()


async def test_t22_a_wildcard_download_still_refuses_traversal(tmp_path):
    ok, warnings = await _sink(b"C0644 1 ..\nx\0", tmp_path, "*")
    assert warnings and "unsafe file name" in warnings[0]


# ----------------------------------------------------------------------------- the progress meter

async def _scp_on_terminal(profile, *args: str) -> tuple[int, bytes]:
    """``jumpgate scp ARGS`` with stdout and stderr on a pty: (status, what the terminal shows)."""
    master, slave = ptylib.openpty()
    env = {**os.environ, "JUMPGATE_HOME": str(profile.paths.home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "scp", *args], stdin=subprocess.DEVNULL,
                            stdout=slave, stderr=slave, env=env, cwd=REPO)
    os.close(slave)
    screen = bytearray()
    try:
        with trio.fail_after(BOUND):
            while True:
                await trio.lowlevel.wait_readable(master)
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the client has gone, and so has every writer
                    break
                if not data:
                    break
                screen.extend(data)
            while proc.poll() is None:
                await trio.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        trio.lowlevel.notify_closing(master)
        os.close(master)
    return proc.returncode, bytes(screen)


async def test_scp_shows_a_progress_meter_on_a_terminal(cluster, profile, login, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3_000_000))
    status, screen = await _scp_on_terminal(profile, str(src), f"{login.name}@{NODE}:")
    assert status == 0, screen
    last = screen.rstrip(b"\r\n").rsplit(b"\r", 1)[-1].decode()
    assert last.startswith("big.bin ") and " 100% " in last and "KB" in last and "/s" in last, screen
    _remote_files(login, {"back.bin": b"y" * 100_000}, "dl")
    status, screen = await _scp_on_terminal(profile, f"{login.name}@{NODE}:dl/back.bin", str(tmp_path))
    assert status == 0 and b"back.bin" in screen and b"100%" in screen, screen


async def test_scp_is_quiet_with_dash_q_and_in_a_pipe(cluster, profile, login, tmp_path):
    src = tmp_path / "f.bin"
    src.write_bytes(b"z" * 50_000)
    status, screen = await _scp_on_terminal(profile, "-q", str(src), f"{login.name}@{NODE}:")
    assert (status, screen) == (0, b"")
    done = await jumpgate(profile, "scp", str(src), f"{login.name}@{NODE}:")
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")

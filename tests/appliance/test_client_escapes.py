"""``jumpgate ssh``'s escape sequences, as OpenSSH's ssh(1) ESCAPE CHARACTERS (issue 14 item 11).

The filter is sans-IO and tested by feeding it bytes; then the CLI runs on a real pty against a
real proxy and node (``_proxy_helpers``), in-process and through the session daemon, where the
escape is parsed by the daemon (it reads the terminal) and ``~.`` ends only that session.
"""
from __future__ import annotations

import fcntl
import os
import pty as ptylib
import struct
import subprocess
import sys
import termios

import pytest
import trio

from _proxy_helpers import NODE, REPO, proxy_fixtures
from appliance.client.escape import DISCONNECT, HELP, EscapeFilter, parse_escape_char

login, cluster, profile = proxy_fixtures("cliesc")

BOUND = 20.0


# ----------------------------------------------------------------------------- the filter

@pytest.mark.parametrize("typed,sent,actions", [
    (b"~.", b"", [DISCONNECT]),                       # at the very start of the session
    (b"ls\r~.", b"ls\r", [DISCONNECT]),
    (b"ls\n~.", b"ls\n", [DISCONNECT]),
    (b"a~.", b"a~.", []),                             # not after a newline: just text
    (b"\r~~.", b"\r~.", []),                          # ~~ sends one ~, and the line has begun
    (b"\r~?x", b"\rx", [HELP]),
    (b"\r~x", b"\r~x", []),                           # no such escape: both characters go
    (b"\r~.after", b"\r", [DISCONNECT]),              # nothing after ~. goes anywhere
])
def test_escapes_are_recognised_only_after_a_newline(typed, sent, actions):
    f = EscapeFilter()
    assert f.feed(typed) == (sent, actions)


def test_an_escape_split_across_reads_is_still_one():
    f = EscapeFilter()
    assert f.feed(b"echo\r") == (b"echo\r", [])
    assert f.feed(b"~") == (b"", [])
    assert f.feed(b".") == (b"", [DISCONNECT]) and f.disconnected
    assert f.feed(b"more") == (b"", [])


def test_dash_e_picks_another_character_or_none():
    assert parse_escape_char(None) == ord("~") and parse_escape_char("none") is None
    assert parse_escape_char("%") == ord("%") and parse_escape_char("^]") == 0x1d
    with pytest.raises(ValueError):
        parse_escape_char("ab")
    f = EscapeFilter(ord("%"))
    assert f.feed(b"~.\r%.") == (b"~.\r", [DISCONNECT])
    assert EscapeFilter(None).feed(b"~.") == (b"~.", [])


# ----------------------------------------------------------------------------- on a terminal

class Terminal:
    """``jumpgate ssh ARGS`` on a fresh pty as its controlling terminal."""

    def __init__(self, profile, *args: str, mux: str):
        self.master, self.slave = ptylib.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.before = termios.tcgetattr(self.slave)
        env = {**os.environ, "JUMPGATE_HOME": str(profile.paths.home), "TERM": "xterm", "JUMPGATE_MUX": mux,
               "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance.cli.main", "ssh", *args],
                                     stdin=self.slave, stdout=self.slave, stderr=self.slave, env=env,
                                     start_new_session=True, cwd=REPO,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        self.screen = bytearray()

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    async def expect(self, marker: bytes, timeout: float = BOUND) -> None:
        """Read the terminal until ``marker`` shows (waiting in Trio, bounded)."""
        with trio.move_on_after(timeout):
            while marker not in self.screen:
                with trio.move_on_after(0.1) as idle:
                    await trio.lowlevel.wait_readable(self.master)
                if not idle.cancelled_caught:
                    try:
                        self.screen.extend(os.read(self.master, 65536))
                    except OSError:  # EIO: every process on the slave side has gone
                        break
                elif self.proc.poll() is not None:
                    break
        assert marker in self.screen, f"no {marker!r} (status {self.proc.poll()}); screen {bytes(self.screen)!r}"

    async def exited(self) -> int:
        with trio.fail_after(BOUND):
            while self.proc.poll() is None:
                await trio.sleep(0.02)
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        trio.lowlevel.notify_closing(self.master)
        os.close(self.master)
        os.close(self.slave)


async def _shell(profile, login, mux: str, *extra: str) -> Terminal:
    term = Terminal(profile, *extra, f"{login.name}@{NODE}", mux=mux)
    term.type(b"echo shell-re''ady\r")       # the quotes keep the echo of the typing from matching
    await term.expect(b"shell-ready")
    return term


MUX = pytest.mark.parametrize("mux", ["0", "1"], ids=["in-process", "session-daemon"])


@MUX
async def test_tilde_dot_disconnects_and_restores_the_terminal(cluster, profile, login, mux):
    term = await _shell(profile, login, mux)
    try:
        term.type(b"echo a~~b\r")            # after text: not at a line start, both go as typed
        await term.expect(b"a~~b\r\n")
        term.type(b"~~echo tilde-sent\r")    # ~~ at a line start sends one ~
        await term.expect(b"~echo: not found")  # (sh: "~echo: not found")
        term.type(b"\r~?")
        await term.expect(b"Supported escape sequences:")
        await term.expect(b"~.   - terminate the session")
        term.type(b"\r~.")
        assert await term.exited() == 255
        await term.expect(f"jumpgate: Connection to {NODE} closed.".encode())
        assert termios.tcgetattr(term.slave) == term.before
    finally:
        term.close()
    await _until(lambda: cluster.events("session.end"), "the node's end of the session")


@MUX
async def test_dash_e_none_passes_the_tilde_through(cluster, profile, login, mux):
    term = await _shell(profile, login, mux, "-e", "none")
    try:
        term.type(b"\r~.\recho still-he''re\r")
        await term.expect(b"still-here")
        assert term.proc.poll() is None
        term.type(b"exit 3\r")
        assert await term.exited() == 3
    finally:
        term.close()


async def test_tilde_dot_through_the_daemon_ends_only_that_session(cluster, profile, login):
    first = await _shell(profile, login, "1")
    second = await _shell(profile, login, "1")
    try:
        first.type(b"\r~.")
        assert await first.exited() == 255
        second.type(b"echo second-al''ive\r")
        await second.expect(b"second-alive")
        second.type(b"exit 5\r")
        assert await second.exited() == 5
    finally:
        first.close()
        second.close()


async def _until(condition, what: str, timeout: float = BOUND) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.02)
    assert condition(), f"timed out waiting for {what}"

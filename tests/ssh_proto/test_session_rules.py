"""A server session channel's requests (ssh_proto/session_rules.py), decided from bytes.

The rules are fed CHANNEL_REQUEST type names and the bytes of their data, as they come
off the wire; one test runs them behind a sans-IO pair, where a non-UTF-8 exec command is
refused and the connection carries on.
"""
from __future__ import annotations

import pytest

from pairs import C, S, authenticated_pair
from ssh_proto import events as ev
from ssh_proto import messages as m
from ssh_proto.errors import ProtocolError
from ssh_proto.wire import encode_string
from ssh_proto.session_rules import (ACCEPTED, MAX_ENV, REFUSED, STARTED, Break, PtyInfo, Resize, SessionPolicy,
                                     SessionRequests, Signal, default_env_filter)


def _pty(cols: int = 80, rows: int = 24, modes: bytes = b"\0", term: str = "xterm") -> bytes:
    return m.PtyRequest(term, cols, rows, 640, 480, modes).encode()


def _exec(command: bytes) -> bytes:
    return m.ExecRequest(command).encode()


# ---- before the start -----------------------------------------------------------------------------

def test_pty_request_is_granted_once_and_recorded():
    s = SessionRequests(SessionPolicy())
    assert s.receive("pty-req", _pty(100, 30)) is ACCEPTED
    assert s.pty == PtyInfo("xterm", 100, 30, 640, 480, b"\0")
    assert s.receive("pty-req", _pty()) is REFUSED  # a second one


def test_rule14_pty_refused_without_permit_pty():
    s = SessionRequests(SessionPolicy(permit_pty=False))
    assert s.receive("pty-req", _pty()) is REFUSED and s.pty is None


@pytest.mark.parametrize("cols, rows, modes, granted", [
    (10000, 10000, b"\0" * 1024, True),     # the limits themselves
    (10001, 24, b"\0", False),
    (80, 10001, b"\0", False),
    (80, 24, b"\0" * 1025, False),
])
def test_pty_size_and_modes_are_bounded(cols, rows, modes, granted):
    s = SessionRequests(SessionPolicy())
    assert (s.receive("pty-req", _pty(cols, rows, modes)) is ACCEPTED) is granted


def test_env_filter_keeps_term_lang_and_lc_only():
    s = SessionRequests(SessionPolicy())
    for name, granted in (("LANG", True), ("LC_ALL", True), ("TERM", True), ("LD_PRELOAD", False),
                          ("PATH", False), ("BASH_ENV", False)):
        assert (s.receive("env", m.EnvRequest(name, "x").encode()) is ACCEPTED) is granted, name
    assert s.env == {"LANG": "x", "LC_ALL": "x", "TERM": "x"}


def test_env_takes_at_most_64_variables():
    s = SessionRequests(SessionPolicy())
    outcomes = [s.receive("env", m.EnvRequest(f"LC_{i}", "x").encode()) for i in range(MAX_ENV + 1)]
    assert outcomes[:MAX_ENV] == [ACCEPTED] * MAX_ENV and outcomes[MAX_ENV] is REFUSED


def test_env_filter_is_the_applications_choice():
    s = SessionRequests(SessionPolicy(), accept_env=lambda name, value: name == "EDITOR")
    assert s.receive("env", m.EnvRequest("EDITOR", "vi").encode()) is ACCEPTED
    assert s.receive("env", m.EnvRequest("LANG", "C").encode()) is REFUSED
    assert default_env_filter("LC_CTYPE", "C")


def test_rule14_agent_forwarding_needs_permit_agent_forwarding():
    assert SessionRequests(SessionPolicy()).receive("auth-agent-req@openssh.com", b"") is ACCEPTED
    refused = SessionRequests(SessionPolicy(permit_agent_forwarding=False))
    assert refused.receive("auth-agent-req@openssh.com", b"") is REFUSED and not refused.agent_forwarding


def test_x11_and_unknown_requests_are_refused():
    s = SessionRequests(SessionPolicy(permit_x11_forwarding=True))
    x11 = b"\0" + encode_string(b"MIT-MAGIC-COOKIE-1") + encode_string(b"00") + bytes(4)  # RFC 4254 §6.3.1
    assert s.receive("x11-req", x11) is REFUSED
    assert s.receive("x-unknown@example.com", b"anything") is REFUSED


# ---- the start ------------------------------------------------------------------------------------

def test_exec_starts_with_its_command():
    s = SessionRequests(SessionPolicy())
    assert s.receive("exec", _exec("ls -l é".encode())) is STARTED
    assert (s.kind, s.command, s.original_command) == ("exec", "ls -l é", "ls -l é")
    assert s.receive("exec", _exec(b"again")) is REFUSED  # started once


def test_a_non_utf8_exec_command_is_refused_not_a_protocol_error():
    """RFC 4254 §6.5: the command is a string, not text; we cannot hand it on as one, so we
    refuse that request — and only it: the same channel may still start a valid one."""
    s = SessionRequests(SessionPolicy())
    assert s.receive("exec", _exec(b"echo \xff\xfe")) is REFUSED
    assert not s.started and s.original_command is None
    assert s.receive("exec", _exec(b"echo ok")) is STARTED


@pytest.mark.parametrize("request_type, data", [
    ("exec", _exec(b"rm -rf /")), ("shell", b""), ("subsystem", m.SubsystemRequest("sftp").encode()),
])
def test_rule14_force_command_replaces_exec_shell_and_subsystem(request_type, data):
    s = SessionRequests(SessionPolicy(force_command="/usr/bin/true"))
    assert s.receive(request_type, data) is STARTED
    assert (s.kind, s.command, s.subsystem) == ("exec", "/usr/bin/true", None)
    assert s.original_command == ("rm -rf /" if request_type == "exec" else None)


def test_shell_and_subsystem_start():
    shell = SessionRequests(SessionPolicy())
    assert shell.receive("shell", b"") is STARTED and (shell.kind, shell.command) == ("shell", None)
    sub = SessionRequests(SessionPolicy())
    assert sub.receive("subsystem", m.SubsystemRequest("sftp").encode()) is STARTED
    assert (sub.kind, sub.subsystem) == ("subsystem", "sftp")


# ---- after the start ------------------------------------------------------------------------------

def test_after_the_start_window_change_signal_and_break_go_to_the_application():
    s = SessionRequests(SessionPolicy())
    s.receive("pty-req", _pty())
    s.receive("shell", b"")
    assert s.receive("window-change", m.WindowChange(120, 40, 0, 0).encode()) == Resize(120, 40, 0, 0)
    assert (s.pty.cols, s.pty.rows) == (120, 40)
    assert s.receive("signal", m.SignalRequest("INT").encode()) == Signal("INT")
    assert s.receive("break", m.BreakRequest(500).encode()) == Break(500)
    assert s.receive("pty-req", _pty()) is REFUSED and s.receive("env", m.EnvRequest("LANG", "C").encode()) is REFUSED


def test_window_change_before_the_start_is_refused():
    assert SessionRequests(SessionPolicy()).receive("window-change", m.WindowChange(1, 1, 0, 0).encode()) is REFUSED


@pytest.mark.parametrize("request_type, data", [
    ("pty-req", b"\0\0\0\x05xte"), ("env", b"\0\0\0\x04LANG"), ("exec", b"\0\0\0\x09ls"),
    ("shell", b"extra"), ("auth-agent-req@openssh.com", b"x"),
])
def test_malformed_request_data_is_a_protocol_error(request_type, data):
    with pytest.raises(ProtocolError):
        SessionRequests(SessionPolicy()).receive(request_type, data)


# ---- over a pair ----------------------------------------------------------------------------------

def _exec_over_pair(pair, cid: int, rules: SessionRequests, command: bytes) -> bool:
    """The client asks exec ``command``; the server's ``rules`` decide; the client's answer."""
    pair.client.send_channel_request(cid, "exec", _exec(command), want_reply=True)
    pair.pump()
    (req,) = pair.take(S, ev.ChannelRequestReceived)
    outcome = rules.receive(req.request_type, req.data)
    pair.server.reply_channel_request(req.channel_id, req.token, outcome is STARTED)
    pair.pump()
    (reply,) = pair.take(C, ev.ChannelRequestReplied)
    return reply.success


def test_a_non_utf8_exec_command_gets_channel_failure_and_the_connection_stays():
    pair = authenticated_pair()
    cid = pair.open_session()
    rules = SessionRequests(SessionPolicy())
    assert _exec_over_pair(pair, cid, rules, b"printf '\xff\xfe'") is False
    assert not pair.client.closed and not pair.server.closed and pair.failed is None
    assert _exec_over_pair(pair, cid, rules, b"printf ok") is True  # the same channel, a valid command
    other = pair.open_session()                              # and the connection carries on
    pair.client.send_data(other, b"still here")
    pair.pump()
    assert pair.data_received(S, pair.server_id(other)) == b"still here"

"""Joining a live session (issue 16, docs/security.md S6): two real clients on a real node.

The owner runs a shell on a pty through our ssh_proto client; joiners open the
``jumpgate-join@jumpgate`` subsystem on their own connections, as ``jumpgate join`` does.
The node records to a temporary directory, so the recording's join/leave frames are read back.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import msgpack
import pytest
import trio

import ssh_proto
from _node_helpers import LOOPBACK, AuditLog, TestCluster, make_user, remove_user, start_node
from appliance.auth.ca import ROLES_EXTENSION
from appliance.sessions import join
from appliance.sessions.format import decode_blocks
from appliance.sessions.settings import RecordingSettings
from ssh_proto.certs import DEFAULT_USER_EXTENSIONS
from ssh_proto.keys import PrivateKey

pytestmark = pytest.mark.interop   # root-only: the node switches to a throw-away account

ADMIN = {**DEFAULT_USER_EXTENSIONS, ROLES_EXTENSION: "admin"}


# ----------------------------------------------------------------------------- sans-IO

def test_s6_the_join_request_round_trips_and_keeps_what_follows_it():
    parser = join.RequestParser()
    frame = join.encode_request("abc-123", "peer")
    assert parser.feed(frame[:3]) is None
    assert parser.feed(frame[3:] + b"ls\n") == join.JoinRequest("abc-123", "peer")
    assert parser.rest == b"ls\n"


@pytest.mark.parametrize("body", [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
                                  b"\x00\x00\x00\x02\x81\xa1",  # not a map's whole
                                  join._LENGTH.pack(12) + msgpack.packb({"v": 1, "mode": "peer"}) + b"\0" * 2])
def test_s6_a_malformed_join_request_is_refused(body):
    with pytest.raises(join.JoinError):
        parser = join.RequestParser()
        if parser.feed(body) is None:
            raise parser.eof()


def test_s6_only_the_owner_and_admins_may_join_and_only_as_the_sessions_login():
    base = dict(joiner_roles=(), permit_pty=True, mode="peer", owner="alice", session_login="app",
                session_pty=True)
    assert join.join_refusal(joiner="alice", joiner_login="app", **base) is None
    assert join.join_refusal(joiner="mallory", joiner_login="app", **base) == join.NOT_JOINABLE
    assert "as that login" in join.join_refusal(joiner="alice", joiner_login="root", **base)
    assert join.join_refusal(joiner="root", joiner_login="app", **{**base, "joiner_roles": ("admin",)}) is None
    no_pty = {**base, "permit_pty": False}
    assert "observer" in join.join_refusal(joiner="alice", joiner_login="app", **no_pty)
    assert join.join_refusal(joiner="alice", joiner_login="app", **{**no_pty, "mode": "observer"}) is None


# ----------------------------------------------------------------------------- a real node

@pytest.fixture(scope="module")
def login():
    user = make_user("join")
    yield user
    remove_user(user)


@dataclasses.dataclass
class Node:
    cluster: TestCluster
    port: int
    audit: AuditLog
    login: str
    recordings: Path
    creds: dict

    def connect(self, who: str):
        key, cert = self.creds[who]
        return ssh_proto.connect(LOOPBACK, self.port, username=self.login, client_keys=[(key, cert)],
                                 known_hosts=self.cluster.verify_host)


@pytest.fixture
async def node(nursery, login, tmp_path) -> Node:
    cluster = TestCluster(tmp_path)
    audit = AuditLog()
    listener = await start_node(nursery, cluster, audit, recording=RecordingSettings(tmp_path / "rec"))
    creds = {}
    for who, ext in (("alice", DEFAULT_USER_EXTENSIONS), ("mallory", DEFAULT_USER_EXTENSIONS), ("root", ADMIN)):
        key = PrivateKey.generate("ssh-ed25519")
        creds[who] = (key, cluster.user_cert(key, [login.name], user=who, extensions=ext))
    yield Node(cluster, listener.port, audit, login.name, tmp_path / "rec", creds)
    assert node_rejected(audit) == []


def node_rejected(audit: AuditLog) -> list:
    return audit.rejected  # every event the node emitted is one the auth service accepts


class Screen:
    """What one party's terminal showed (stdout and stderr), read as it comes."""

    def __init__(self, proc: ssh_proto.SSHProcess):
        self.proc, self.out, self.err = proc, bytearray(), bytearray()

    async def until(self, marker: bytes, *, stderr: bool = False) -> None:
        seen = self.err if stderr else self.out
        receive = self.proc.receive_stderr if stderr else self.proc.receive_some
        with trio.fail_after(10):
            while marker not in seen.replace(b"\r", b""):
                data = await receive()
                if not data:
                    raise AssertionError(f"{marker!r} never came; saw {bytes(seen)!r}, stderr {bytes(self.err)!r}, "
                                         f"{await self.proc.receive_stderr()!r}")
                seen += data


async def _owner_shell(conn) -> Screen:
    screen = Screen(await conn.open_session(pty=True, cols=80, rows=24))
    await screen.proc.send_all(b"echo before-$((20+1))\n")
    await screen.until(b"before-21")
    return screen


async def _join(conn, sid: str, mode: str) -> Screen:
    screen = Screen(await conn.open_session(subsystem=join.SUBSYSTEM))
    await screen.proc.send_all(join.encode_request(sid, mode))
    return screen


def _frames(recordings: Path, sid: str) -> list:
    directory = recordings / sid
    frames = []
    for chunk in sorted(directory.glob("*.chunk")):
        frames += list(decode_blocks(chunk.read_bytes()))
    return frames


async def _session_id(node: Node) -> str:
    with trio.fail_after(10):
        [start] = await node.audit.wait_for("session.start")
    return start["session_id"]


async def test_s6_a_peer_sees_the_screen_types_and_the_owner_sees_it_and_the_recording_has_the_join(node):
    async with node.connect("alice") as owner_conn, node.connect("root") as admin_conn:
        owner = await _owner_shell(owner_conn)
        sid = await _session_id(node)
        peer = await _join(admin_conn, sid, "peer")
        await peer.until(b"before-21")                                # the screen before the join
        await peer.until(b"root joined the session as peer", stderr=True)
        await owner.until(b"root joined the session as peer", stderr=True)
        await peer.proc.send_all(b"echo from-peer-$((6*7))\n")
        await owner.until(b"from-peer-42")                            # the owner sees the peer's input run
        await peer.until(b"from-peer-42")
        await peer.proc.aclose()
        await owner.until(b"root (peer) left the session", stderr=True)
        await owner.proc.send_all(b"exit 5\n")                       # leaving did not end the session
        with trio.fail_after(10):
            assert await owner.proc.wait() == 5
    with trio.fail_after(10):
        [joined] = await node.audit.wait_for("session.join")
        [left] = await node.audit.wait_for("session.leave")
    assert (joined["user"], joined["mode"], joined["owner"], joined["session_id"]) == ("root", "peer", "alice", sid)
    assert (left["user"], left["session_id"], left["ended"]) == ("root", sid, False)
    with trio.fail_after(10):
        while not (node.recordings / sid / "end").exists():
            await trio.sleep(0.05)
    parties = [(f.kind, f.data["user"], f.data["mode"]) for f in _frames(node.recordings, sid) if f.kind in "jl"]
    assert parties[:3] == [("j", "alice", "owner"), ("j", "root", "peer"), ("l", "root", "peer")]
    assert msgpack.unpackb((node.recordings / sid / "end").read_bytes())["parties"] == ["root"]


async def test_s6_an_observer_cannot_type_and_the_owners_other_terminal_may_watch(node):
    async with node.connect("alice") as owner_conn, node.connect("alice") as other_terminal:
        owner = await _owner_shell(owner_conn)
        sid = await _session_id(node)
        observer = await _join(other_terminal, sid, "observer")
        await observer.until(b"alice joined the session as observer", stderr=True)
        await observer.proc.send_all(b"echo observer-typed-$((2*3))\n")   # tried: it must go nowhere
        await observer.proc.signal("KILL")                               # nor may it signal
        await trio.sleep(0.5)
        await owner.proc.send_all(b"echo owner-mark\n")
        await owner.until(b"owner-mark\n")
        await observer.until(b"owner-mark\n")
        for screen in (owner, observer):
            assert b"observer-typed" not in screen.out
        await owner.proc.send_all(b"exit 0\n")
        with trio.fail_after(10):
            assert await owner.proc.wait() == 0
            assert await observer.proc.wait() == 0    # the session ended: the observer ends with it


async def test_s6_a_stranger_with_the_login_is_refused_and_audited(node):
    async with node.connect("alice") as owner_conn, node.connect("mallory") as stranger_conn:
        owner = await _owner_shell(owner_conn)
        sid = await _session_id(node)
        for session_id in (sid, "no-such-session"):
            attempt = await _join(stranger_conn, session_id, "peer")
            await attempt.proc.send_all(b"echo stranger-$((3*3))\n")
            with trio.fail_after(10):
                assert await attempt.proc.wait() == 1
            await attempt.until(join.NOT_JOINABLE.encode(), stderr=True)  # the same words: ids cannot be probed
        await owner.proc.send_all(b"echo owner-mark\n")
        await owner.until(b"owner-mark\n")
        assert b"stranger" not in owner.out and b"mallory" not in owner.err
    refused = node.audit.of("session.join", success=False)
    assert [(e["user"], e["session_id"]) for e in refused] == [("mallory", sid), ("mallory", "no-such-session")]
    assert node.audit.of("session.join") == []


async def test_s6_the_owner_leaving_ends_the_session_for_its_joiners(node):
    async with node.connect("root") as admin_conn:
        async with node.connect("alice") as owner_conn:
            await _owner_shell(owner_conn)
            sid = await _session_id(node)
            peer = await _join(admin_conn, sid, "peer")
            await peer.until(b"joined the session", stderr=True)
        with trio.fail_after(10):
            await peer.proc.wait()            # the owner's connection went: the session is over
        with trio.fail_after(10):
            [left] = await node.audit.wait_for("session.leave")
            await node.audit.wait_for("session.end")
        assert left["ended"] is True


async def test_s6_an_owner_whose_channel_alone_closes_leaves_the_session_to_its_peers(node):
    async with node.connect("alice") as owner_conn, node.connect("root") as admin_conn:
        owner = await _owner_shell(owner_conn)
        sid = await _session_id(node)
        peer = await _join(admin_conn, sid, "peer")
        await peer.until(b"joined the session", stderr=True)
        await owner.proc.aclose()                       # the channel, not the connection
        await peer.until(b"alice (owner) left the session", stderr=True)
        await peer.proc.send_all(b"echo still-$((40+2))\n")
        await peer.until(b"still-42")
        await peer.proc.send_all(b"exit 7\n")
        with trio.fail_after(10):
            assert await peer.proc.wait() == 7

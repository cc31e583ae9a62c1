"""Session recording (issue 16): the format, the recorder's timing, the auth side's checks and
access rules, and a real node refusing sessions when its recording disk is full."""
from __future__ import annotations

import hashlib
import os
import subprocess
import uuid
from pathlib import Path

import msgpack
import pytest
import trio

from appliance.auth.checks import AuthServiceError
from appliance.auth.sessions import Sessions
from appliance.sessions.format import (CorruptRecording, Frame, TruncatedRecording, decode_blocks, encode_block,
                                       valid_prefix)
from appliance.sessions.player import TextStream, frames
from appliance.sessions.recorder import Recorder, RecordingUnavailable
from appliance.sessions.settings import RecordingSettings
from appliance.sessions.store import FileRecordingStore
from appliance.sessions.uploader import Uploader
from appliance.storage.sqlite import SQLiteStorage

from _node_helpers import LOOPBACK, AuditLog, TestCluster, make_user, openssh_argv, remove_user, run, start_node


def _header(sid: str, user: str = "alice") -> dict:
    return {"session_id": sid, "user": user, "login": "root", "node": "node1", "kind": "exec",
            "command": "echo hi", "started": 1000.0, "client_ip": "10.0.0.1", "cols": 80, "rows": 24}


# ---------------------------------------------------------------------------- the format

def test_a_block_that_fails_its_checksum_is_reported_corrupt_never_skipped():
    data = bytearray(encode_block([Frame(0, "o", b"first")]) + encode_block([Frame(5, "o", b"second")]))
    data[-3] ^= 0x01
    with pytest.raises(CorruptRecording, match="checksum"):
        list(decode_blocks(bytes(data)))


def test_a_recording_cut_inside_a_block_is_reported_truncated():
    data = encode_block([Frame(0, "o", b"first")]) + encode_block([Frame(5, "o", b"second")])[:-4]
    with pytest.raises(TruncatedRecording):
        list(decode_blocks(data))
    assert [f.data for f in decode_blocks(data, allow_partial_end=True)] == [b"first"]
    assert valid_prefix(data) == len(encode_block([Frame(0, "o", b"first")]))


def test_text_export_strips_escapes_split_across_frames():
    stream = TextStream()
    out = stream.feed(b"red: \x1b[3") + stream.feed(b"1mALERT\x1b[0m\r\n") + stream.close()
    assert out == b"red: ALERT\n"


# ---------------------------------------------------------------------------- the recorder

async def test_recorder_writes_at_least_every_second_without_a_close(tmp_path):
    """What a SIGKILL would leave: the output is on disk within a second, written by the
    recorder's own flusher (no flush or close is called here). Real time: a thread writes."""
    sid = str(uuid.uuid4())
    recorder = await Recorder.create(tmp_path, _header(sid))
    path = tmp_path / sid / "000000.open"

    def written() -> list[bytes]:
        return [f.data for f in decode_blocks(path.read_bytes()) if f.kind == "o"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(recorder.run)
        await recorder.output(b"typed at 0s")
        sent = trio.current_time()
        with trio.fail_after(10):
            while written() != [b"typed at 0s"]:
                await trio.sleep(0.02)
        assert trio.current_time() - sent < 1.0  # the rule: at most the last second is lost
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        assert oct(os.stat(tmp_path / sid).st_mode & 0o777) == "0o700"
        await recorder.close({"exit_status": 0})
        nursery.cancel_scope.cancel()
    assert (tmp_path / sid / "000000.chunk").exists() and (tmp_path / sid / "end").exists()


async def test_recorder_refuses_to_start_without_free_space(tmp_path):
    with pytest.raises(RecordingUnavailable, match="disk is full"):
        await Recorder.create(tmp_path, _header(str(uuid.uuid4())), min_free=2**62)


# ---------------------------------------------------------------------------- the auth side

@pytest.fixture
async def sessions(tmp_path):
    storage = SQLiteStorage(":memory:")
    yield Sessions(storage, FileRecordingStore(tmp_path / "recordings"), clock=lambda: 1000.0)
    await storage.aclose()


async def _recorded(sessions: Sessions, tmp_path: Path, user: str = "alice") -> str:
    """A recording made by the recorder and uploaded by the uploader, as a node does."""
    sid = str(uuid.uuid4())
    root = tmp_path / "node"
    recorder = await Recorder.create(root, _header(sid, user))
    await recorder.output(b"hello from the session\r\n")
    await recorder.close({"exit_status": 0})

    async def call(method, **params):
        return await getattr(sessions, method)(**params, node="node1")
    assert await Uploader(root, call).upload_pass()
    assert not (root / sid).exists()  # acknowledged: the node keeps nothing
    return sid


async def test_an_uploaded_recording_replays_and_is_searchable(sessions, tmp_path):
    sid = await _recorded(sessions, tmp_path)
    info = await sessions.get_session(sid)
    assert info["state"] == "ended" and info["uploaded"] == info["chunks"] == 1

    async def fetch(i):
        return await sessions.read_recording_chunk(sid, i)
    out = [f.data async for f in frames(fetch, info) if f.kind == "o"]
    assert out == [b"hello from the session\r\n"]
    hits = await sessions.search_sessions("from the session")
    assert [(h["session_id"], h["line"]) for h in hits] == [(sid, "hello from the session")]


async def test_a_chunk_corrupted_at_rest_is_detected_when_read(sessions, tmp_path):
    sid = await _recorded(sessions, tmp_path)
    [path] = (tmp_path / "recordings").rglob("000000.chunk")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(AuthServiceError, match="corrupt"):
        await sessions.read_recording_chunk(sid, 0)


async def test_a_chunk_that_does_not_match_its_checksum_is_refused_on_upload(sessions, tmp_path):
    sid = str(uuid.uuid4())
    await sessions.session_started(_header(sid), node="node1")
    block = encode_block([Frame(0, "o", b"x")])
    with pytest.raises(AuthServiceError, match="checksum"):
        await sessions.upload_recording_chunk(sid, 0, block, hashlib.sha256(b"other").hexdigest(), node="node1")


async def test_s5_a_user_sees_their_own_sessions_only_and_an_admin_sees_all(sessions, tmp_path):
    mine = await _recorded(sessions, tmp_path, user="alice")
    theirs = await _recorded(sessions, tmp_path, user="bob")
    assert {s["id"] for s in await sessions.list_sessions(viewer="alice")} == {mine}
    assert {s["id"] for s in await sessions.list_sessions(viewer="")} == {mine, theirs}
    for call in (sessions.get_session(theirs, viewer="alice"), sessions.read_recording_chunk(theirs, 0, viewer="alice")):
        with pytest.raises(AuthServiceError, match="no such session"):
            await call
    assert [h["session_id"] for h in await sessions.search_sessions("hello", viewer="alice")] == [mine]


async def test_a_node_cannot_write_another_nodes_session(sessions, tmp_path):
    sid = str(uuid.uuid4())
    await sessions.session_started(_header(sid), node="node1")
    with pytest.raises(AuthServiceError, match="no such session"):
        await sessions.finish_session(sid, {"chunks": 0}, node="node2")


async def test_a_crashed_run_is_recovered_as_interrupted_and_reported_before_its_chunks(sessions, tmp_path):
    sid = str(uuid.uuid4())
    root = tmp_path / "node"
    recorder = await Recorder.create(root, _header(sid))
    await recorder.output(b"kept\r\n")
    await recorder.flush()
    with open(root / sid / "000000.open", "ab") as f:
        f.write(encode_block([Frame(900, "o", b"lost")])[:-3])  # the block a SIGKILL cut
    recorder.abandon()
    calls = []

    async def call(method, **params):
        calls.append(method)
        return await getattr(sessions, method)(**params, node="node1")
    uploader = Uploader(root, call)
    assert await uploader.recover() == [sid]
    await uploader.upload_pass()
    assert calls[:2] == ["session_started", "finish_session"]  # interrupted shows before the upload
    info = await sessions.get_session(sid)
    assert info["state"] == "interrupted" and info["uploaded"] == info["chunks"] == 1
    data = await sessions.read_recording_chunk(sid, 0)
    assert [f.data for f in decode_blocks(data) if f.kind == "o"] == [b"kept\r\n"]


# ---------------------------------------------------------------------------- a real node

@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_s4_a_node_whose_recording_disk_is_full_refuses_new_sessions_with_a_clear_error(tmp_path, tmpfs,
                                                                                              nursery):
    user = make_user("recfull")
    try:
        cluster = TestCluster(tmp_path)
        _key, _cert, files = cluster.client_files("k", [user.name])
        audit = AuditLog()
        listener = await start_node(nursery, cluster, audit, recording=RecordingSettings(tmpfs / "rec"))
        argv = openssh_argv("ssh", ["echo", "recorded"], port=listener.port, login=user.name, files=files,
                            known_hosts=cluster.known_hosts(listener.port))
        ok = await run(argv)
        assert ok.returncode == 0 and ok.stdout == b"recorded\n"
        (tmpfs / "filler").write_bytes(b"\0" * (6 * 1024 * 1024))  # < MIN_FREE_BYTES (4 MiB) left
        refused = await run(argv)
        assert refused.returncode == 255 and refused.stdout == b""
        assert b"session refused: the node's recording disk is full" in refused.stderr
        [event] = audit.of("session.start", success=False)
        assert "recording unavailable" in event["reason"]
    finally:
        remove_user(user)

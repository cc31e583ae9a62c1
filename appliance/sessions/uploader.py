"""The node's uploader: recordings go to the auth server, retried with backoff until acknowledged.

One task per node (:meth:`Uploader.run`) works from what is on disk, not from a queue, so a
restarted node picks up exactly where the crashed one stopped. For each session directory
under the recordings root (:mod:`appliance.sessions.recorder` describes the layout):

1. announce the session (``session_started``; marker file ``announced``);
2. upload each sealed chunk (``upload_recording_chunk`` with its SHA-256), deleting it once
   acknowledged — so long sessions upload as they go, not only at the end;
3. once the ``end`` file exists and every chunk is acknowledged, ``finish_session`` and remove
   the directory.

At start (:meth:`recover`), a directory without ``end`` whose session is not live is a session
the node lost (a SIGKILL, a crash, a power cut): its open chunk is cut to its last whole block
(the at-most-one-second a SIGKILL loses) and sealed, and an ``end`` marked interrupted is
written. It is reported *first* (``finish_session`` before its chunks), so the session shows
interrupted in ``sessions ls`` within seconds of the restart however much is left to upload.
A failed call is retried after 1, 2, 4 ... up to :data:`MAX_BACKOFF` seconds.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Container
from pathlib import Path
from typing import Any

import msgpack
import trio

from .format import valid_prefix
from .recorder import make_private_dir, write_private
from .store import check_session_id

__all__ = ["MAX_BACKOFF", "Uploader"]

log = logging.getLogger("jumpgate.sessions")

MAX_BACKOFF = 30.0
RESCAN = 5.0

Call = Callable[..., Awaitable[Any]]


def _load(path: Path) -> dict[str, Any]:
    return msgpack.unpackb(path.read_bytes(), raw=False)


def _recover_dir(directory: Path) -> None:
    """Seal a crashed session's open chunk at its last whole block; mark it interrupted."""
    header = _load(directory / "meta")
    opened = sorted(directory.glob("*.open"))
    for path in opened:
        data = path.read_bytes()
        keep = valid_prefix(data)
        if keep:
            write_private(path.with_suffix(".chunk"), data[:keep])
        path.unlink()
    indexes = [int(p.stem) for p in directory.glob("*.chunk")]
    duration = 0
    last = max(indexes, default=-1)
    if last >= 0:
        from .format import decode_blocks
        for frame in decode_blocks((directory / f"{last:06d}.chunk").read_bytes(), allow_partial_end=True):
            duration = frame.t_ms
    end = {"exit_status": None, "exit_signal": None, "chunks": last + 1, "duration_ms": duration,
           "interrupted": True, "reason": "the node stopped during the session"}
    write_private(directory / "interrupted", b"")
    write_private(directory / "end", msgpack.packb(end, use_bin_type=True))
    log.warning("session %s (%s) was interrupted: %d chunks kept", header.get("session_id"), header.get("user"),
                last + 1)


class Uploader:
    """Uploads the recordings under ``root`` through ``call`` (an ApiPool's ``call``)."""

    def __init__(self, root: Path, call: Call, *, live: Container[str] = ()):
        self.root = Path(root)
        self._call = call
        self._live = live
        self._wake = trio.Event()
        self.idle = trio.Event()  # set whenever a pass found nothing left to do (tests wait on it)

    def kick(self) -> None:
        """Something was sealed: look again now (sync; safe from any task)."""
        self._wake.set()

    async def recover(self) -> list[str]:
        """Mark every session left by a previous run interrupted (before anything is live)."""
        def scan() -> list[str]:
            make_private_dir(self.root)
            lost = []
            for directory in sorted(self.root.iterdir()):
                if directory.is_dir() and not (directory / "end").exists() and (directory / "meta").exists() \
                        and directory.name not in self._live:
                    _recover_dir(directory)
                    lost.append(directory.name)
            return lost
        return await trio.to_thread.run_sync(scan)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await self.recover()
        task_status.started()
        backoff = 1.0
        while True:
            self._wake = trio.Event()
            try:
                done = await self.upload_pass()
                backoff = 1.0
            except Exception as exc:  # an API or disk failure: retried, never dropped
                log.warning("recording upload failed (retrying in %gs): %s", backoff, exc)
                done = False
                with trio.move_on_after(backoff):
                    await trio.sleep_forever()
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            if done:
                self.idle.set()
            with trio.move_on_after(RESCAN):
                await self._wake.wait()
            self.idle = trio.Event() if self.idle.is_set() else self.idle

    async def upload_pass(self) -> bool:
        """One pass over every recording; True when nothing is left to upload."""
        directories = await trio.to_thread.run_sync(
            lambda: sorted(d for d in self.root.iterdir() if d.is_dir()) if self.root.exists() else [])
        # interrupted sessions first: they must show in `sessions ls` within seconds
        ordered = sorted(directories, key=lambda d: not _interrupted(d))
        left = False
        for directory in ordered:
            left |= not await self._upload_one(directory)
        return not left

    async def _upload_one(self, directory: Path) -> bool:
        try:
            sid = check_session_id(directory.name)
        except ValueError:
            return True  # not ours
        if not (directory / "meta").exists():
            return True  # being created
        if not (directory / "announced").exists():
            header = await trio.to_thread.run_sync(_load, directory / "meta")
            await self._call("session_started", session=header)
            await trio.to_thread.run_sync(write_private, directory / "announced", b"")
        end_path = directory / "end"
        end = await trio.to_thread.run_sync(_load, end_path) if end_path.exists() else None
        if end is not None and end.get("interrupted") and not (directory / "reported").exists():
            await self._call("finish_session", session_id=sid, end=end)
            await trio.to_thread.run_sync(write_private, directory / "reported", b"")
        for chunk in sorted(directory.glob("*.chunk")):
            data = await trio.to_thread.run_sync(chunk.read_bytes)
            await self._call("upload_recording_chunk", session_id=sid, index=int(chunk.stem), data=data,
                             sha256=hashlib.sha256(data).hexdigest())
            await trio.to_thread.run_sync(chunk.unlink)
        if end is None:
            return True  # live: more chunks will come
        await self._call("finish_session", session_id=sid, end=end)
        await trio.to_thread.run_sync(shutil.rmtree, directory)
        return True


def _interrupted(directory: Path) -> bool:
    return (directory / "interrupted").exists()

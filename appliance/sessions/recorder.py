"""The node's recorder: one session's frames, batched, written and sealed into chunk files.

Layout of a recording on the node (under ``<data dir>/node/recordings``, a 0700 directory;
every file 0600)::

    <session id>/meta            msgpack: the header (also the first frame of chunk 0)
    <session id>/NNNNNN.open     the chunk being written (whole blocks, appended)
    <session id>/NNNNNN.chunk    a sealed chunk: fsync'd, renamed, waiting for upload
    <session id>/end             msgpack: how the session ended (written last, fsync'd)

What a recording guarantees (docs/security.md S2): frames are batched in memory and written
as one block at least every :data:`FLUSH_INTERVAL` (half a second) or as soon as
:data:`FLUSH_BYTES` are pending, so a SIGKILL of the node loses at most the last second; each
chunk is fsync'd when it is sealed and the ``end`` file when the session ends (power loss
loses at most the open chunk). A write that fails (a full disk) raises
:class:`RecordingFailed`: the session is ended, never run on unrecorded; a recording that
cannot start (:meth:`Recorder.create`, also when less than :data:`MIN_FREE_BYTES` are free)
raises :class:`RecordingUnavailable` and the session is refused (as Teleport does).

>>> recorder = await Recorder.create(root, header)        # doctest: +SKIP
>>> async with trio.open_nursery() as n:                   # doctest: +SKIP
...     n.start_soon(recorder.run)
...     await recorder.output(b"hello")
...     await recorder.close({"exit_status": 0})
"""
from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from .format import CHUNK_TARGET, FORMAT_VERSION, Frame, encode_block

__all__ = ["FLUSH_BYTES", "FLUSH_INTERVAL", "MIN_FREE_BYTES", "Recorder", "RecordingFailed",
           "RecordingUnavailable", "make_private_dir", "write_private"]

log = logging.getLogger("jumpgate.sessions")

FLUSH_INTERVAL = 0.5
FLUSH_BYTES = 64 * 1024
#: A node with less free space than this on its recording disk refuses new sessions.
MIN_FREE_BYTES = 4 * 1024 * 1024


class RecordingUnavailable(Exception):
    """A session cannot be recorded (``str()`` is the one line the user is shown)."""


class RecordingFailed(Exception):
    """Writing a running session's recording failed; the session is ended."""


def make_private_dir(path: Path) -> Path:
    """``path`` (and missing parents) as a 0700 directory."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes, *, sync: bool = True) -> None:
    """Write ``data`` to a new 0600 file beside ``path``, fsync, rename it over ``path``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _describe(exc: OSError) -> str:
    return "the node's recording disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
        f"the node cannot write its recording ({exc.strerror or exc})"


class Recorder:
    """The recording of one session (made by :meth:`create`; :meth:`run` is its flusher)."""

    def __init__(self, directory: Path, header: dict[str, Any], *, clock: Callable[[], float],
                 record_input: bool, on_sealed: Callable[[], None]):
        self.directory = directory
        self.record_input = record_input
        self._clock = clock
        self._start = clock()
        self._on_sealed = on_sealed
        self._pending: list[Frame] = [Frame(0, "h", header)]
        self._pending_bytes = 0
        self._chunk = 0
        self._chunk_bytes = 0
        self._fd = -1
        self._lock = trio.Lock()
        self._closed = False
        self._joined: set[str] = set()  # the users who joined (the end file lists them)

    @classmethod
    async def create(cls, root: Path, header: dict[str, Any], *, clock: Callable[[], float] = time.monotonic,
                     record_input: bool = False, on_sealed: Callable[[], None] = lambda: None,
                     min_free: int = MIN_FREE_BYTES) -> Recorder:
        """Start the recording of ``header["session_id"]``; its first block is on disk on return."""
        header = {"v": FORMAT_VERSION, **header}
        directory = root / header["session_id"]

        def prepare() -> None:
            make_private_dir(root)
            stat = os.statvfs(root)
            if stat.f_bavail * stat.f_frsize < min_free:
                raise OSError(errno.ENOSPC, "less than the minimum free")
            make_private_dir(directory)
            write_private(directory / "meta", msgpack.packb(header, use_bin_type=True))
        try:
            await trio.to_thread.run_sync(prepare)
            recorder = cls(directory, header, clock=clock, record_input=record_input, on_sealed=on_sealed)
            await recorder.flush()
        except (OSError, RecordingFailed) as exc:
            cause = exc.__cause__ if isinstance(exc, RecordingFailed) else exc
            raise RecordingUnavailable(_describe(cause) if isinstance(cause, OSError) else str(exc)) from None
        return recorder

    # ---- frames --------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return max(0, int((self._clock() - self._start) * 1000))

    async def _add(self, kind: str, data: Any, size: int = 16) -> None:
        if self._closed:
            return
        self._pending.append(Frame(self._now_ms(), kind, data))
        self._pending_bytes += size
        if self._pending_bytes >= FLUSH_BYTES:
            await self.flush()  # backpressure: output waits for the disk, memory stays bounded

    async def output(self, data: bytes, stream: str = "o") -> None:
        await self._add(stream, bytes(data), len(data))

    async def input(self, data: bytes) -> None:
        if self.record_input:
            await self._add("i", bytes(data), len(data))

    def resize(self, cols: int, rows: int) -> None:
        """A window-size change (small: written with the next block)."""
        if not self._closed:
            self._pending.append(Frame(self._now_ms(), "r", [int(cols), int(rows)]))

    def party(self, joined: bool, party: dict[str, Any]) -> None:
        """A party joined or left (small: written with the next block)."""
        if not self._closed:
            self._pending.append(Frame(self._now_ms(), "j" if joined else "l", party))
            if joined and party.get("mode") != "owner":
                self._joined.add(str(party.get("user", "")))

    # ---- writing -------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Flush at least every :data:`FLUSH_INTERVAL` until closed (raises RecordingFailed)."""
        task_status.started()
        while not self._closed:
            await trio.sleep(FLUSH_INTERVAL)
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending as one block (and seal the chunk once it is big enough)."""
        async with self._lock:
            if not self._pending:
                return
            block = encode_block(self._pending)
            self._pending, self._pending_bytes = [], 0
            try:
                await trio.to_thread.run_sync(self._write, block)
            except OSError as exc:
                self._closed = True
                raise RecordingFailed(_describe(exc)) from exc
            if self._chunk_bytes >= CHUNK_TARGET:
                await self._seal()

    def _open_path(self) -> Path:
        return self.directory / f"{self._chunk:06d}.open"

    def _write(self, block: bytes) -> None:
        if self._fd < 0:
            self._fd = os.open(self._open_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        view = memoryview(block)
        while view:
            view = view[os.write(self._fd, view):]
        self._chunk_bytes += len(block)

    async def _seal(self) -> None:
        if self._fd < 0:
            return

        def seal() -> None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._open_path(), self.directory / f"{self._chunk:06d}.chunk")
        try:
            await trio.to_thread.run_sync(seal)
        except OSError as exc:
            raise RecordingFailed(_describe(exc)) from exc
        self._chunk += 1
        self._chunk_bytes = 0
        self._on_sealed()

    async def close(self, end: dict[str, Any]) -> None:
        """The end frame, the last block, the chunk sealed, then the ``end`` file (fsync'd)."""
        if self._closed:
            return
        self._pending.append(Frame(self._now_ms(), "x", end))
        await self.flush()
        self._closed = True
        async with self._lock:
            await self._seal()
            info = {**end, "parties": sorted(self._joined), "chunks": self._chunk, "duration_ms": self._now_ms(), "interrupted": False}
            try:
                await trio.to_thread.run_sync(write_private, self.directory / "end",
                                              msgpack.packb(info, use_bin_type=True))
            except OSError as exc:
                raise RecordingFailed(_describe(exc)) from exc
        self._on_sealed()

    def abandon(self) -> None:
        """Close the open file without sealing (a failed recording: the uploader recovers it)."""
        self._closed = True
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

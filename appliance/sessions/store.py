"""Where the auth server keeps recordings: the :class:`RecordingStore` interface and its files.

Recordings are not blobs in the database: their chunks are files (``FileRecordingStore``:
``<auth data dir>/recordings/<id[:2]>/<id>/NNNNNN.chunk``, 0600 files in 0700 directories),
and the storage backend keeps their metadata, each chunk's SHA-256 and the text index
(:meth:`appliance.storage.base.Storage.add_session_chunk`). A PostgreSQL deployment can put
the chunks in an object store behind the same two methods.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Protocol

import trio

from .recorder import make_private_dir, write_private

__all__ = ["FileRecordingStore", "RecordingStore", "check_session_id"]

_SESSION_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_session_id(session_id: object) -> str:
    """A session id is a lowercase UUID (it names files: nothing else may pass)."""
    if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
        raise ValueError("a session id is a UUID")
    return session_id


class RecordingStore(Protocol):
    async def put_chunk(self, session_id: str, index: int, data: bytes) -> None:
        """Store chunk ``index`` durably (fsync'd) before returning; replacing is allowed."""
    async def get_chunk(self, session_id: str, index: int) -> bytes:
        """The chunk's bytes; FileNotFoundError if it is not stored."""


class FileRecordingStore:
    """Chunks as files under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, session_id: str, index: int) -> Path:
        check_session_id(session_id)
        return self.root / session_id[:2] / session_id / f"{int(index):06d}.chunk"

    async def put_chunk(self, session_id: str, index: int, data: bytes) -> None:
        path = self._path(session_id, index)

        def put() -> None:
            make_private_dir(self.root)
            make_private_dir(path.parent.parent)
            make_private_dir(path.parent)
            write_private(path, data)
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)  # the rename is durable too
            finally:
                os.close(fd)
        await trio.to_thread.run_sync(put)

    async def get_chunk(self, session_id: str, index: int) -> bytes:
        return await trio.to_thread.run_sync(self._path(session_id, index).read_bytes)

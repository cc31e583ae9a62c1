"""The auth service's half of session recording: what nodes upload, who may list, read, search.

Nodes call :meth:`Sessions.session_started`, :meth:`Sessions.upload_recording_chunk` and
:meth:`Sessions.finish_session` (the API fills ``node`` with the caller's own name: a node
writes only its own sessions). Readers call :meth:`list_sessions`, :meth:`get_session`,
:meth:`read_recording_chunk` and :meth:`search_sessions`, with ``viewer`` filled by the API:
``""`` for an admin (everything), the user's name for anyone else (the sessions they owned or
joined only: docs/security.md S5).

Every chunk's SHA-256 is checked when it arrives (against what the node computed) and again
each time it is read (against what was stored): a chunk damaged at rest is reported as
``corrupt``, never served (S3).
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..sessions.format import CorruptRecording, RecordingError, decode_blocks
from ..sessions.store import RecordingStore, check_session_id
from ..sessions.text import LineSplitter
from ..storage.base import SessionChunk, SessionRecord, Storage
from .checks import AuthServiceError, bad_request

__all__ = ["NODE_GONE_SECONDS", "Sessions"]

log = logging.getLogger("jumpgate.auth")

#: An active session whose node has not been heard of for this long is shown interrupted
#: (its node crashed and did not come back; if it does, it uploads what it holds).
NODE_GONE_SECONDS = 600.0
MAX_CHUNK = 1024 * 1024
#: The users who joined one session that its end may name (they may then see its recording, S5).
MAX_PARTIES = 256
MAX_LINES_PER_CHUNK = 20_000


def _text(value: Any, what: str, limit: int = 1024) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise bad_request(f"{what} must be text of at most {limit} characters")
    return value


def _sid(value: Any) -> str:
    try:
        return check_session_id(value)
    except ValueError as exc:
        raise bad_request(str(exc)) from None


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"{what} must be a number")
    return float(value)


def _denied() -> AuthServiceError:
    # the same answer for "no such session" and "not yours": ids are not probed
    return AuthServiceError("not_found", "no such session (or it is not yours to see)")


class Sessions:
    """Session metadata in storage, chunks in a :class:`RecordingStore`."""

    def __init__(self, storage: Storage, store: RecordingStore | None, *, clock: Callable[[], float]):
        self.storage = storage
        self.store = store
        self._clock = clock

    # ---- from nodes ------------------------------------------------------------------------
    async def session_started(self, session: Mapping[str, Any], node: str = "") -> None:
        """A node's session began (its recording header): it shows in ``sessions ls --active``."""
        if not isinstance(session, Mapping):
            raise bad_request("session must be a map")
        sid = _sid(session.get("session_id"))
        existing = await self.storage.get_session(sid)
        if existing is not None:
            if existing.node != node:
                raise _denied()
            return
        command = session.get("command")
        record = SessionRecord(
            sid, _text(session.get("user"), "user", 256), _text(session.get("login"), "login", 256), node,
            _text(session.get("kind"), "kind", 16), None if command is None else _text(command, "command"),
            _text(session.get("client_ip", ""), "client_ip", 64), _number(session.get("started"), "started"),
            header={k: v for k, v in session.items() if isinstance(v, (str, int, float, bool, type(None)))})
        await self.storage.put_session(record)

    async def _own(self, session_id: Any, node: str) -> SessionRecord:
        record = await self.storage.get_session(_sid(session_id))
        if record is None or record.node != node:
            raise _denied()
        return record

    async def upload_recording_chunk(self, session_id: str, index: int, data: bytes, sha256: str,
                                     node: str = "") -> dict[str, Any]:
        """Store chunk ``index`` (checked against ``sha256``) and index its text; idempotent."""
        record = await self._own(session_id, node)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < 1_000_000:
            raise bad_request("index must be a chunk number")
        if not isinstance(data, bytes) or len(data) > MAX_CHUNK:
            raise bad_request("a chunk is at most 1 MiB of bytes")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise bad_request("the chunk does not match its checksum (send it again)")
        if self.store is None:
            raise AuthServiceError("not_found", "this auth service stores no recordings")
        start_ms, lines = _index_text(data, f"chunk {index} of session {record.id}")
        await self.store.put_chunk(record.id, index, data)
        stored = await self.storage.add_session_chunk(SessionChunk(record.id, index, digest, len(data), start_ms),
                                                      lines)
        if stored.sha256 != digest:
            log.warning("node %s sent a different chunk %d of session %s; the first is kept", node, index, record.id)
        return {"index": index, "stored": True}

    async def finish_session(self, session_id: str, end: Mapping[str, Any], node: str = "") -> None:
        """The session ended (or, ``end["interrupted"]``, its node crashed): ``end["chunks"]``
        is how many chunks its recording has."""
        record = await self._own(session_id, node)
        if not isinstance(end, Mapping):
            raise bad_request("end must be a map")
        chunks = end.get("chunks")
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 0:
            raise bad_request("end.chunks must be a count")
        status, signal = end.get("exit_status"), end.get("exit_signal")
        duration = _number(end.get("duration_ms", 0), "duration_ms") / 1000.0
        parties = end.get("parties", [])
        if not isinstance(parties, list) or len(parties) > MAX_PARTIES:
            raise bad_request(f"end.parties must be a list of at most {MAX_PARTIES} users")
        joined = tuple(dict.fromkeys(_text(p, "party", 256) for p in parties))
        from dataclasses import replace
        await self.storage.put_session(replace(
            record, parties=tuple(dict.fromkeys((*record.parties, *joined))), state="interrupted" if end.get("interrupted") else "ended", chunks=chunks,
            ended=record.started + duration,
            exit_status=status if isinstance(status, int) and not isinstance(status, bool) else None,
            exit_signal=signal if isinstance(signal, str) else None))

    # ---- for readers -----------------------------------------------------------------------
    async def list_sessions(self, limit: int = 100, user: str = "", node: str = "", since: float = 0.0,
                            active: bool = False, viewer: str = "") -> list[dict[str, Any]]:
        """Newest first: every session for an admin, else the viewer's own and those they joined."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 10_000:
            raise bad_request("limit must be 1..10000")
        records = await self.storage.list_sessions(
            limit, user=_text(user, "user", 256), node=_text(node, "node", 256), since=_number(since, "since"),
            states=("active",) if active else (), party=viewer)
        seen = {n.name: n.last_seen for n in await self.storage.list_nodes()}
        return [await self._describe(r, seen) for r in records]

    async def _describe(self, record: SessionRecord, seen: Mapping[str, float] | None = None) -> dict[str, Any]:
        state = record.state
        if state == "active" and seen is not None and self._clock() - seen.get(record.node, 0.0) > NODE_GONE_SECONDS:
            state = "interrupted"  # its node is gone: docs/security.md S2
        chunks = await self.storage.list_session_chunks(record.id)
        return {"id": record.id, "user": record.user, "login": record.login, "node": record.node,
                "kind": record.kind, "command": record.command, "client_ip": record.client_ip,
                "started": record.started, "ended": record.ended, "state": state,
                "exit_status": record.exit_status, "exit_signal": record.exit_signal,
                "chunks": record.chunks, "uploaded": len(chunks), "parties": list(record.parties),
                "bytes": sum(c.size for c in chunks), "header": dict(record.header)}

    async def _visible(self, session_id: Any, viewer: str) -> SessionRecord:
        record = await self.storage.get_session(_sid(session_id))
        if record is None or (viewer and viewer != record.user and viewer not in record.parties):
            raise _denied()
        return record

    async def get_session(self, session_id: str, viewer: str = "") -> dict[str, Any]:
        record = await self._visible(session_id, viewer)
        return await self._describe(record, {n.name: n.last_seen for n in await self.storage.list_nodes()})

    async def read_recording_chunk(self, session_id: str, index: int, viewer: str = "") -> bytes:
        """Chunk ``index``'s bytes, after checking them against the stored SHA-256."""
        record = await self._visible(session_id, viewer)
        chunks = {c.index: c for c in await self.storage.list_session_chunks(record.id)}
        chunk = chunks.get(index) if isinstance(index, int) else None
        if chunk is None or self.store is None:
            raise AuthServiceError("not_found", f"chunk {index} of session {record.id} is not uploaded")
        try:
            data = await self.store.get_chunk(record.id, index)
        except FileNotFoundError:
            raise AuthServiceError("not_found", f"chunk {index} of session {record.id} is missing from the "
                                                "recording store") from None
        if hashlib.sha256(data).hexdigest() != chunk.sha256:
            raise AuthServiceError("bad_request", f"chunk {index} of session {record.id} is corrupt "
                                                  "(its checksum does not match)")
        return data

    async def search_sessions(self, text: str, limit: int = 100, user: str = "", since: float = 0.0,
                              viewer: str = "") -> list[dict[str, Any]]:
        """Lines sessions printed that hold ``text`` (words, matched as a phrase)."""
        text = _text(text, "text", 256)
        if not text.strip():
            raise bad_request("search for some text")
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= 10_000:
            raise bad_request("limit must be 1..10000")
        hits = await self.storage.search_sessions(text, limit, user=_text(user, "user", 256),
                                                  since=_number(since, "since"), party=viewer)
        return [{"session_id": h.session_id, "offset_ms": h.offset_ms, "line": h.line} for h in hits]


def _index_text(data: bytes, where: str) -> tuple[int, list[tuple[int, str]]]:
    """(time of the chunk's first frame, the text lines its output holds)."""
    splitter = LineSplitter()
    lines: list[tuple[int, str]] = []
    start_ms = -1
    try:
        for frame in decode_blocks(data, where=where):
            if start_ms < 0:
                start_ms = frame.t_ms
            if frame.kind in ("o", "e") and isinstance(frame.data, bytes) and len(lines) < MAX_LINES_PER_CHUNK:
                lines.extend(splitter.feed(frame.t_ms, frame.data))
    except (CorruptRecording, RecordingError) as exc:
        log.warning("indexed what decodes of a damaged chunk: %s", exc)  # stored as it is; play reports it
    lines.extend(splitter.close())
    return max(start_ms, 0), lines[:MAX_LINES_PER_CHUNK]

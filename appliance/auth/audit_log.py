"""The auth service's writer of the audit log: group commit, coalesced refusals, retention.

Every audit event of the cluster goes through one :class:`AuditLog` (the auth service's own
and those nodes and proxies report). What it guarantees (docs/security.md U3):

* **A success is durable before its call returns.** ``append`` of an event with ``success``
  true (a login, a certificate, a user or node change, a lock) returns its id only once the
  event is committed (SQLite ``synchronous=FULL``); a certificate is never handed out unaudited.
  It raises :class:`~appliance.storage.base.StorageError` if it could not be written.
* **A refusal does not wait.** An event with ``success`` false is admitted by the
  :class:`~appliance.auth.coalescer.RefusalCoalescer` (written in full, or counted in a later
  ``audit.coalesced`` event) and queued; ``append`` returns at once and the writer task
  commits it, normally within milliseconds. What a crash can lose is what is queued then: at
  most :data:`MAX_QUEUE` refusals and the counts of open windows. A refused client is not
  kept waiting by the disk, so a flood of refusals cannot hold up anyone's login.
* **Group commit.** One transaction writes everything queued (up to :data:`MAX_BATCH` events):
  a caller waiting for its event to be durable waits for at most the transaction running and
  the one that carries its event, however many callers are waiting with it.
* **Order and backpressure.** Events are committed in the order they were appended (ids
  increase in that order). When the queue holds :data:`MAX_QUEUE` events, the caller writes
  it itself before returning: the queue is bounded, and nothing is dropped.
* **Retention.** The log is append-only; :meth:`prune` (hourly, from :meth:`run`) is the one
  way events leave it: events older than ``retention_days`` (0 keeps them for ever), in
  chunks of :data:`PRUNE_BATCH`, and each prune that removed something is itself an
  ``audit.prune`` event (docs/security.md U4).

Without :meth:`run` (tests, ``jumpgate ctl``) nothing writes queued refusals in the
background: the next durable append, :meth:`flush` or a full queue writes them.

    audit_log = AuditLog(storage, retention_days=365)
    async with trio.open_nursery() as nursery:
        await nursery.start(audit_log.run)
        await audit_log.append(make_event("user.create", time=time.time(), user="alice"))
"""
from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from ..audit import DEFAULT_REFUSALS_PER_SOURCE, DEFAULT_RETENTION_DAYS, AuditEvent, make_event
from ..storage.base import Storage, StorageError
from .coalescer import TOTAL, RefusalCoalescer

__all__ = ["DEFAULT_RETENTION_DAYS", "MAX_BATCH", "MAX_QUEUE", "PRUNE_BATCH", "AuditLog"]

log = logging.getLogger("jumpgate.audit")

MAX_BATCH = 256
MAX_QUEUE = 4096
PRUNE_BATCH = 10_000
PRUNE_INTERVAL = 3600.0
#: How often the writer closes ended coalescing windows (writes their summaries).
EXPIRE_INTERVAL = 5.0
RETRY_DELAY = 1.0
FLUSH_TIMEOUT = 5.0
DAY = 86400.0


def check_retention_days(value: object) -> int:
    """A whole number of days >= 0 (0: keep every event for ever), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"the audit retention must be a whole number of days >= 0, not {value!r}")
    return value


def check_refusals_per_source(value: object) -> int:
    """A whole number >= 1 of refusals per source and minute, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"the refusals written per source must be a whole number >= 1, not {value!r}")
    return value


class AuditLog:
    """Appends events with the guarantees of the module docstring; prunes by retention."""

    def __init__(self, storage: Storage, *, clock: Callable[[], float] = time.time,
                 retention_days: int = DEFAULT_RETENTION_DAYS,
                 refusals_per_source: int = DEFAULT_REFUSALS_PER_SOURCE) -> None:
        self._storage = storage
        self._clock = clock
        self.retention_days = check_retention_days(retention_days)
        per_source = check_refusals_per_source(refusals_per_source)
        self._coalescer = RefusalCoalescer(per_source=per_source, total=max(TOTAL, per_source))
        self._queue: deque[tuple[int, AuditEvent]] = deque()
        self._queued_seq = 0       # the sequence number of the last event queued
        self._committed_seq = 0    # every event up to this one is committed
        self._ids: dict[int, int] = {}   # seq -> id, for the durable appends still waiting
        self._write_lock = trio.Lock()
        self._wakeup = trio.Event()

    def event(self, event: str, /, *, user: str = "", success: bool = True, **fields: Any) -> AuditEvent:
        """One of the auth service's own events, timed by the log's clock; empty fields are
        left out."""
        return make_event(event, time=self._clock(), user=user, success=success,
                          **{k: v for k, v in fields.items() if v not in (None, "")})

    async def record(self, event: str, /, *, user: str = "", success: bool = True, **fields: Any) -> int:
        """Append one of the auth service's own events (:meth:`event`): durable on return if a
        success, queued if a refusal."""
        return await self.append(self.event(event, user=user, success=success, **fields))

    async def append(self, event: AuditEvent) -> int:
        """Record ``event``: its id once committed if it is a success; 0 at once if it is a
        refusal (queued or counted, see the module docstring)."""
        [event_id] = await self.append_all([event])
        return event_id

    async def append_all(self, events: Sequence[AuditEvent]) -> list[int]:
        """:meth:`append` for several events, in order, their successes in one commit."""
        waiting: list[int] = []
        for event in events:
            if event.success:
                waiting.append(self._enqueue(event))
                self._ids[waiting[-1]] = 0
            else:
                for admitted in self._coalescer.admit(event, self._clock()):
                    self._enqueue(admitted)
                self._wakeup.set()
        try:
            if waiting:
                await self._commit_through(waiting[-1])
            elif len(self._queue) >= MAX_QUEUE:  # backpressure: the caller writes the queue
                await self._commit_through(self._queued_seq)
            ids = iter([self._ids[seq] for seq in waiting])
            return [next(ids) if event.success else 0 for event in events]
        finally:
            for seq in waiting:
                del self._ids[seq]

    async def flush(self) -> None:
        """Commit everything queued so far."""
        await self._commit_through(self._queued_seq)

    async def write_summaries(self) -> None:
        """Queue the ``audit.coalesced`` summaries of the windows that have ended, and commit
        everything queued (what :meth:`run` does every :data:`EXPIRE_INTERVAL` seconds)."""
        for summary in self._coalescer.expire(self._clock()):
            self._enqueue(summary)
        await self.flush()

    def _enqueue(self, event: AuditEvent) -> int:
        self._queued_seq += 1
        self._queue.append((self._queued_seq, event))
        log.info("audit %s %s user=%r %s", event.code, event.event, event.user,
                 " ".join(f"{k}={v!r}" for k, v in event.fields.items()))
        return self._queued_seq

    async def _commit_through(self, seq: int) -> None:
        """Return once every event up to ``seq`` is committed, writing batches as needed."""
        while self._committed_seq < seq:
            async with self._write_lock:
                if self._committed_seq < seq:
                    await self._write_batch()

    async def _write_batch(self) -> None:
        """One transaction with the oldest queued events (the caller holds the write lock).
        Shielded: a batch is committed or failed, never abandoned half way by a cancel."""
        batch = list(itertools.islice(self._queue, MAX_BATCH))
        if not batch:
            return
        with trio.CancelScope(shield=True):
            ids = await self._storage.append_audit_batch([event for _, event in batch])
        for (seq, _), event_id in zip(batch, ids):
            self._queue.popleft()
            if seq in self._ids:
                self._ids[seq] = event_id
        self._committed_seq = batch[-1][0]

    # -- retention ---------------------------------------------------------------------
    async def prune(self) -> int:
        """Delete the events older than the retention; audit the prune if it removed any."""
        if not self.retention_days:
            return 0
        now = self._clock()
        before = now - self.retention_days * DAY
        removed = 0
        while (chunk := await self._storage.prune_audit(before, PRUNE_BATCH)) > 0:
            removed += chunk
            if chunk < PRUNE_BATCH:
                break
            await trio.sleep(0)  # let logins reach the database between chunks
        if removed:
            await self.append(make_event("audit.prune", time=now, count=removed, before=before,
                                         retention_days=self.retention_days))
        return removed

    # -- the background task -------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued refusals and coalescing summaries as they come, prune hourly (the
        first time at once); on cancellation, write what is left (for up to FLUSH_TIMEOUT)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._prune_loop)
            task_status.started()
            await self._write_loop()

    async def _write_loop(self) -> None:
        try:
            while True:
                with trio.move_on_after(EXPIRE_INTERVAL):
                    await self._wakeup.wait()
                self._wakeup = trio.Event()
                await self._logged(self.write_summaries())
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                for summary in self._coalescer.close(self._clock()):
                    self._enqueue(summary)
                await self._logged(self.flush())

    async def _logged(self, write: Awaitable[None]) -> None:
        """Run a write; a failure is logged and retried later, never the writer's end."""
        try:
            await write
        except StorageError as exc:
            log.error("audit: %d events not written yet (%s); retrying", len(self._queue), exc)
            await trio.sleep(RETRY_DELAY)

    async def _prune_loop(self) -> None:
        while True:
            try:
                removed = await self.prune()
            except StorageError as exc:
                log.error("audit: retention prune failed (%s); trying again in an hour", exc)
            else:
                if removed:
                    log.info("audit: removed %d events older than %d days", removed,
                             self.retention_days)
            await trio.sleep(PRUNE_INTERVAL)

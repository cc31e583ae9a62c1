"""Audit events of a node or proxy, delivered to the auth server off the session's path.

A node used to await the auth server's answer for every event (``session.start`` before the
command ran, ``session.end`` before its exit status went out): two API round trips and two
SQLite commits in each session's latency. :class:`AuditForwarder` keeps Teleport's answer
to that: the service queues the event and carries on; one task delivers the queue in order
(``session.end`` never overtakes ``session.start``). The queue is bounded: when the auth
server falls behind by :data:`CAPACITY` events, emitters wait (sessions slow down) rather
than events being dropped. An event the auth server refuses or cannot take is logged with
its name, as before. On shutdown the task delivers what is queued for up to
:data:`FLUSH_TIMEOUT` seconds.

    forwarder = AuditForwarder(pool.emit_audit)
    await nursery.start(forwarder.run)
    serve_node(..., audit=forwarder.emit)
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .client import ApiError

__all__ = ["CAPACITY", "AuditForwarder"]

log = logging.getLogger("jumpgate.audit")

CAPACITY = 1024
FLUSH_TIMEOUT = 2.0


class AuditForwarder:
    """An ordered, bounded queue of audit events and the task that delivers them."""

    def __init__(self, deliver: Callable[..., Awaitable[object]], capacity: int = CAPACITY):
        self._deliver = deliver
        self._send, self._receive = trio.open_memory_channel[dict](capacity)

    async def emit(self, event: dict) -> None:
        """Queue ``event``; returns at once unless the queue is full."""
        await self._send.send(event)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            async for event in self._receive:
                await self._deliver_one(event)
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                while True:
                    try:
                        event = self._receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    await self._deliver_one(event)

    async def _deliver_one(self, event: dict) -> None:
        try:
            await self._deliver(event=event)
        except ApiError as exc:
            log.warning("audit event %s not delivered: %s", event.get("event"), exc)

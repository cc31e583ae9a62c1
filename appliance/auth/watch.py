"""The auth service's push stream: changes in storage, pushed to proxies and nodes.

A proxy or node opens the ``jumpgate-watch`` subsystem on the API connection it already
holds to the auth server (port 3025) and receives :class:`~appliance.api.protocol.Push`
frames until the connection ends. Revocation rides it today (docs/security.md R1-R4); the
inventory, user roles and locks of later features will too.

Theory of operation:

* Storage writes a row into its change feed in the transaction of every change that matters
  here: a user updated, deleted or reset (the last two bump the user's certificate
  generation), a node or proxy joined, added, updated or removed. Another process writing the
  same database — ``jumpgate ctl`` on the auth host — is seen the same way, and so would a
  second auth server on a shared database.
* :class:`ChangeFeed` polls the feed every :data:`POLL_INTERVAL` seconds and turns each change
  into a push built from the *current* state, so pushes are idempotent: applying one twice, or
  one the snapshot already contained, changes nothing.
* A watcher subscribes first, then receives a snapshot, then every push after it, in order.
  Its queue is bounded (:data:`SUBSCRIBER_QUEUE`): a watcher that falls that far behind is
  dropped (its channel closes) and reconnects for a fresh snapshot; it never slows the feed
  or the other watchers.
* What each caller may see: every node and proxy watcher gets users' certificate generations
  and the registered proxies with their host keys (a node checks a relay line's proxy against
  them); only proxies get the rest of the inventory. An **admin** watcher (``jumpgate ctl audit
  --follow``) gets the audit log instead, and nothing else: each event appended to it, read
  from storage by the same poll (events other processes append, ``ctl`` on the auth host, are
  seen too). Nodes and proxies never get audit events.
* A watcher that falls :data:`SUBSCRIBER_QUEUE` pushes behind is **cut**: its send is
  cancelled and its channel closed at once, even while a send is blocked on a peer that does
  not read (the SSH window is full); nothing more is kept for it.

Pushes::

    snapshot  {"users": {name: generation}, "proxies": {name: host_key},
               "nodes": [node map]  (proxies only)}
    user      {"name": str, "generation": int, "exists": bool}
    node      {"name": str, "node": node map | None}    (None: removed)
    audit     an audit event's wire map {"id", "event", "code", "time", "user", "success", "fields"}
              (admins only; their snapshot is {"audit_last_id": int})

A node map is ``{"name", "kind", "addr", "labels", "last_seen", "tunnel", "host_key"}``.
Generations are sent for users whose generation changed within :data:`REVOCATION_HORIZON`:
certificates of an older generation than that have all expired.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from ..api.protocol import Push, encode_push
from ..storage.base import ChangeRecord, NodeRecord, Storage
from .ca import BACKDATE_SECONDS

__all__ = ["POLL_INTERVAL", "REVOCATION_HORIZON", "SUBSCRIBER_QUEUE", "ChangeFeed", "node_map"]

log = logging.getLogger("jumpgate.auth.watch")

#: How often the change feed is read: the worst case between a change and its push.
POLL_INTERVAL = 0.5
#: Pushes a watcher may fall behind before it is dropped (it then resyncs).
SUBSCRIBER_QUEUE = 1024
#: The longest a user certificate lives (MaxCertDuration, 30 h), its backdating and a margin.
REVOCATION_HORIZON = 30 * 3600 + BACKDATE_SECONDS + 3600
#: Changes are kept this long (a watcher resyncs from a snapshot, never from old changes).
CHANGE_RETENTION = 86400.0
PURGE_INTERVAL = 3600.0
BATCH = 500


def node_map(node: NodeRecord) -> dict[str, Any]:
    """The listing form of the record and its host key (nodes verify proxies by it)."""
    return {**node.to_wire(), "host_key": node.host_key or b""}


class _Subscriber:
    def __init__(self, caller: str) -> None:
        self.caller = caller  # the watcher's caller kind: node, proxy or admin
        self.send, self.receive = trio.open_memory_channel[Push](SUBSCRIBER_QUEUE)
        self.overflowed = False
        #: Cancelled when the subscriber overflows: cuts a send blocked on a peer that does not read.
        self.scope = trio.CancelScope()

    def offer(self, push: Push) -> None:
        if self.overflowed:
            return
        try:
            self.send.send_nowait(push)
        except trio.WouldBlock:
            self.overflowed = True  # too far behind: it must resync from a snapshot
            self.send.close()
            self.scope.cancel()


class ChangeFeed:
    """Poll storage's change feed and push to the subscribed watchers.

    >>> feed = ChangeFeed(storage)                         # doctest: +SKIP
    >>> await nursery.start(feed.run)                      # doctest: +SKIP
    >>> await feed.serve(channel, caller="node")           # doctest: +SKIP
    """

    def __init__(self, storage: Storage, *, clock: Callable[[], float] | None = None,
                 poll_interval: float = POLL_INTERVAL):
        self.storage = storage
        self._clock = clock or time.time
        self._poll_interval = poll_interval
        self._subscribers: set[_Subscriber] = set()
        self._last_id = 0
        self._last_audit_id = 0
        self._last_purge = -math.inf

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Follow the feed until cancelled (``await nursery.start(feed.run)``)."""
        self._last_id = await self.storage.last_change_id()
        self._last_audit_id = await self.storage.last_audit_id()
        task_status.started()
        while True:
            await trio.sleep(self._poll_interval)
            try:
                await self.poll()
            except Exception:  # a storage hiccup: logged, the next poll tries again
                log.exception("reading the change feed failed")

    async def poll(self) -> int:
        """Push every change since the last poll; returns how many were read."""
        changes = await self.storage.list_changes(self._last_id, BATCH)
        for change in changes:
            for push in await self._pushes(change):
                self._publish(push)
            self._last_id = change.id
        await self._poll_audit()
        now = self._clock()
        if now - self._last_purge >= PURGE_INTERVAL:
            self._last_purge = now
            await self.storage.purge_changes(now - CHANGE_RETENTION)
        return len(changes)

    async def _poll_audit(self) -> None:
        """Push the audit events appended since the last poll to admin watchers (with none,
        just skip to the newest: a follower starts from its own backlog listing)."""
        if not any(s.caller == "admin" for s in self._subscribers):
            self._last_audit_id = await self.storage.last_audit_id()
            return
        for event in await self.storage.audit_after(self._last_audit_id, BATCH):
            self._publish(Push("audit", event.to_wire()))
            self._last_audit_id = event.id

    async def _pushes(self, change: ChangeRecord) -> list[Push]:
        if change.kind == "user":
            generation = await self.storage.get_generation(change.name)
            exists = await self.storage.get_user(change.name) is not None
            return [Push("user", {"name": change.name, "generation": generation, "exists": exists})]
        if change.kind == "node":
            node = await self.storage.get_node(change.name)
            return [Push("node", {"name": change.name, "node": node_map(node) if node is not None else None})]
        return []

    def _publish(self, push: Push) -> None:
        for subscriber in tuple(self._subscribers):
            if _visible(push, subscriber.caller):
                subscriber.offer(push)

    @contextlib.contextmanager
    def subscribe(self, caller: str):
        subscriber = _Subscriber(caller)
        self._subscribers.add(subscriber)
        try:
            yield subscriber
        finally:
            self._subscribers.discard(subscriber)
            subscriber.send.close()

    async def snapshot(self, caller: str) -> Push:
        if caller == "admin":
            return Push("snapshot", {"audit_last_id": self._last_audit_id})
        nodes = await self.storage.list_nodes()
        data: dict[str, Any] = {
            "users": await self.storage.list_generations(self._clock() - REVOCATION_HORIZON),
            "proxies": {n.name: n.host_key or b"" for n in nodes if n.kind == "proxy"},
        }
        if caller == "proxy":
            data["nodes"] = [node_map(n) for n in nodes]
        return Push("snapshot", data)

    async def serve(self, stream: trio.abc.SendStream, caller: str) -> None:
        """Stream a snapshot and then the pushes to one watcher until it goes away or falls
        too far behind (then the stream just ends: the watcher reconnects)."""
        with self.subscribe(caller) as subscriber:  # before the snapshot: nothing falls between
            with subscriber.scope:
                try:
                    await stream.send_all(encode_push(await self.snapshot(caller)))
                    async for push in subscriber.receive:
                        await stream.send_all(encode_push(push))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if subscriber.overflowed:
                log.warning("a %s watcher fell %d changes behind: dropped, it will resync", caller, SUBSCRIBER_QUEUE)


def _visible(push: Push, caller: str) -> bool:
    """Admins see the audit log only, and only admins see it; nodes learn about users and
    proxies only; a removed name is pushed to every node and proxy. ``caller`` is the
    watcher's caller kind (:data:`appliance.api.server.CALLER_KINDS`)."""
    if (caller == "admin") != (push.kind == "audit"):
        return False
    if caller in ("proxy", "admin") or push.kind != "node":
        return True
    node = push.data.get("node")
    return node is None or node.get("kind") == "proxy"


@contextlib.asynccontextmanager
async def running(feed: ChangeFeed) -> AsyncIterator[ChangeFeed]:
    """Run ``feed`` in a nursery of its own for the block (tests, embedded use)."""
    async with trio.open_nursery() as nursery:
        await nursery.start(feed.run)
        yield feed
        nursery.cancel_scope.cancel()

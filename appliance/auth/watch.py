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
* :class:`ChangeFeed` reads the feed when storage in this process says it wrote a change
  (:meth:`Storage.on_change <appliance.storage.base.Storage.on_change>`), when another process
  asks it to (:meth:`ChangeFeed.serve_sync`, the ``auth/feed.sock`` socket that ``jumpgate ctl``
  knocks on after a change), and at the latest every :data:`POLL_INTERVAL` seconds; it turns
  each change into a push built from the *current* state, so pushes are idempotent: applying
  one twice, or one the snapshot already contained, changes nothing.
* :meth:`ChangeFeed.sync` is the barrier a writer waits on: every change committed before the
  call has been read and handed to every watcher's stream (``send_all`` returned) when it
  returns. ``ctl nodes add`` and ``ctl nodes rm`` return only after it, so the proxies route
  to the node, or refuse it, from the moment the command returns (issue 14 item 6).
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
               "tunnels": {proxy name: tunnel address}  (proxies that take tunnels),
               "nodes": [node map]  (proxies only)}
    user      {"name": str, "generation": int, "exists": bool}
    node      {"name": str, "node": node map | None}    (None: removed)
    audit     an audit event's wire map {"id", "event", "code", "time", "user", "success", "fields"}
              (admins only; their snapshot is {"audit_last_id": int})

A node map is ``{"name", "kind", "addr", "labels", "last_seen", "tunnel", "host_key", "tunnel_addr"}``
(``tunnel_addr``: a proxy's tunnel port, "" for a node).
Generations are sent for users whose generation changed within :data:`REVOCATION_HORIZON`:
certificates of an older generation than that have all expired.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import trio

from ..api.protocol import Push, encode_push
from ..storage.base import ChangeRecord, NodeRecord, Storage
from .ca import BACKDATE_SECONDS

__all__ = ["POLL_INTERVAL", "REVOCATION_HORIZON", "SUBSCRIBER_QUEUE", "SYNC_SOCKET", "ChangeFeed", "node_map",
           "request_sync"]

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
#: The longest a writer waits at :meth:`ChangeFeed.sync` for slow watchers (a watcher that
#: falls behind must not stall an admin command; it resyncs on its own).
SYNC_TIMEOUT = 2.0
#: The socket in the auth data dir that another process knocks on after writing a change.
SYNC_SOCKET = "feed.sock"


def node_map(node: NodeRecord) -> dict[str, Any]:
    """The listing form of the record and its host key (nodes verify proxies by it)."""
    return {**node.to_wire(), "host_key": node.host_key or b"", "tunnel_addr": node.tunnel_addr}


class _Subscriber:
    def __init__(self, caller: str) -> None:
        self.caller = caller  # the watcher's caller kind: node, proxy or admin
        self.send, self.receive = trio.open_memory_channel[tuple[int, Push]](SUBSCRIBER_QUEUE)
        self.overflowed = False
        #: Cancelled when the subscriber overflows: cuts a send blocked on a peer that does not read.
        self.scope = trio.CancelScope()
        self.sent_id = 0          # every change up to this id is on the watcher's stream
        self._progress = trio.Event()

    def offer(self, change_id: int, push: Push) -> None:
        if self.overflowed:
            return
        try:
            self.send.send_nowait((change_id, push))
        except trio.WouldBlock:
            self.overflowed = True  # too far behind: it must resync from a snapshot
            self.send.close()
            self.scope.cancel()
            self.sent(change_id)

    def sent(self, change_id: int) -> None:
        self.sent_id = max(self.sent_id, change_id)
        self._progress.set()
        self._progress = trio.Event()

    async def wait_sent(self, change_id: int) -> None:
        while self.sent_id < change_id and not self.overflowed:
            await self._progress.wait()


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
        self._lock = trio.Lock()     # one reader of the feed at a time: pushes stay in order
        self._wake = trio.Event()
        storage.on_change(self.wake)

    def wake(self) -> None:
        """A change was written: read the feed now rather than at the next tick."""
        self._wake.set()

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Follow the feed until cancelled (``await nursery.start(feed.run)``)."""
        self._last_id = await self.storage.last_change_id()
        self._last_audit_id = await self.storage.last_audit_id()
        task_status.started()
        while True:
            with trio.move_on_after(self._poll_interval):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                await self.poll()
            except Exception:  # a storage hiccup: logged, the next poll tries again
                log.exception("reading the change feed failed")

    async def poll(self) -> int:
        """Push every change since the last poll; returns how many were read."""
        async with self._lock:
            changes = await self.storage.list_changes(self._last_id, BATCH)
            for change in changes:
                for push in await self._pushes(change):
                    self._publish(change.id, push)
                self._last_id = change.id
            await self._poll_audit()
            now = self._clock()
            if now - self._last_purge >= PURGE_INTERVAL:
                self._last_purge = now
                await self.storage.purge_changes(now - CHANGE_RETENTION)
            return len(changes)

    async def _poll_audit(self) -> None:
        """Push the audit events appended since the last poll to admin watchers (with none,
        just skip to the newest: a follower starts from its own backlog listing). Audit pushes
        are no change of the feed's (id 0): :meth:`sync` never waits for them."""
        if not any(s.caller == "admin" for s in self._subscribers):
            self._last_audit_id = await self.storage.last_audit_id()
            return
        for event in await self.storage.audit_after(self._last_audit_id, BATCH):
            self._publish(0, Push("audit", event.to_wire()))
            self._last_audit_id = event.id

    async def sync(self, timeout: float = SYNC_TIMEOUT) -> bool:
        """Push every change committed before this call and wait (at most ``timeout``) until
        each watcher's stream has taken it; False if a watcher was still behind then."""
        while await self.poll() == BATCH:
            pass
        target = self._last_id
        with trio.move_on_after(timeout):
            for subscriber in tuple(self._subscribers):
                await subscriber.wait_sent(target)
            return True
        return False

    async def _pushes(self, change: ChangeRecord) -> list[Push]:
        if change.kind == "user":
            generation = await self.storage.get_generation(change.name)
            exists = await self.storage.get_user(change.name) is not None
            return [Push("user", {"name": change.name, "generation": generation, "exists": exists})]
        if change.kind == "node":
            node = await self.storage.get_node(change.name)
            return [Push("node", {"name": change.name, "node": node_map(node) if node is not None else None})]
        return []

    def _publish(self, change_id: int, push: Push) -> None:
        for subscriber in tuple(self._subscribers):
            if _visible(push, subscriber.caller):
                subscriber.offer(change_id, push)
            else:
                subscriber.sent(change_id)  # nothing of it is for this watcher

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
            "tunnels": {n.name: n.tunnel_addr for n in nodes if n.kind == "proxy" and n.tunnel_addr},
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
                    async with self._lock:  # the snapshot holds every change read so far
                        snapshot, upto = await self.snapshot(caller), self._last_id
                    await stream.send_all(encode_push(snapshot))
                    subscriber.sent(upto)
                    async for change_id, push in subscriber.receive:
                        await stream.send_all(encode_push(push))
                        subscriber.sent(change_id)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            if subscriber.overflowed:
                log.warning("a %s watcher fell %d changes behind: dropped, it will resync", caller, SUBSCRIBER_QUEUE)


    async def serve_sync(self, path: str | os.PathLike[str], *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve the sync socket at ``path`` until cancelled: each connection is answered
        ``ok`` after :meth:`sync` (another process wrote a change and waits for it to be
        pushed: :func:`request_sync`). The socket lives in the auth data dir (mode 0700), so
        only the cluster's administrator can knock; a knock only makes the feed read now."""
        path = os.fspath(path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a process that was killed
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        try:
            await sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(16)
        except OSError as exc:  # e.g. a path longer than sun_path: writers fall back to the tick
            sock.close()
            log.warning("the change feed's sync socket %s cannot be served (%s): another process's "
                        "changes are pushed within %gs", path, exc, self._poll_interval)
            task_status.started()
            await trio.sleep_forever()
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                await trio.serve_listeners(self._answer_sync, [listener], handler_nursery=nursery)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _answer_sync(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await self.sync()
                await stream.send_all(b"ok\n")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            except Exception:
                log.exception("a sync request failed")


async def request_sync(path: str | os.PathLike[str], timeout: float = SYNC_TIMEOUT + 1.0) -> bool:
    """Ask the running auth service's feed (its sync socket ``path``) to push what this
    process just wrote, and wait until it has; False if no auth service answers (none running:
    there is nobody to push to) or it does not answer within ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_unix_socket(os.fspath(path))
        except OSError:
            return False
        async with stream:
            answer = b""
            with contextlib.suppress(trio.BrokenResourceError, OSError):
                while data := await stream.receive_some(16):
                    answer += data
            return answer.startswith(b"ok")
    return False


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

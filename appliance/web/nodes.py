"""The node list the web UI shows, kept current for its WebSockets.

Where the changes come from, and how late they are (docs/security.md W7 states the same):

* a node that joins, is added or removed: the push stream's inventory change
  (:meth:`~appliance.cluster_view.ClusterView.on_nodes_changed`, about 0.5 s after the change)
  pokes :class:`NodeFeed`, which lists the nodes again at once;
* what the push stream does not carry — heartbeats' labels, a listening node going offline
  after :data:`~appliance.inventory.MISSED_HEARTBEATS` missed heartbeats (90 s), a reverse
  tunnel that dropped (``mark_offline``) — is picked up by listing again every ``refresh``
  seconds (5 s) while at least one browser watches.

The listing is the auth service's ``list_nodes`` (the same call ``jumpgate ls`` is served
from), so "offline" means the same thing in both. One feed serves every browser: a watcher
waits for the version to move, never polls on its own.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import trio

from appliance.api.client import ApiError
from appliance.auth.service import AuthServiceError

__all__ = ["NodeFeed", "REFRESH_INTERVAL"]

log = logging.getLogger("jumpgate.web")

REFRESH_INTERVAL = 5.0
_FIELDS = ("name", "kind", "addr", "labels", "offline", "tunnel")


def _plain(node: Any) -> dict[str, Any]:
    if hasattr(node, "to_wire"):
        node = node.to_wire()
    elif dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = dataclasses.asdict(node)
    node = dict(node)
    shown = {k: node.get(k) for k in _FIELDS}
    shown["labels"] = {str(k): str(v) for k, v in dict(node.get("labels") or {}).items()}
    shown["offline"] = bool(shown["offline"])
    if shown["tunnel"]:
        shown["addr"] = "tunnel"
    shown.pop("tunnel")
    return shown


class NodeFeed:
    """The latest node list and a version that moves when it changes.

    >>> async def main(service):                                          # doctest: +SKIP
    ...     feed = NodeFeed(service)
    ...     nursery.start_soon(feed.run)
    ...     with feed.watching():
    ...         version, nodes = await feed.wait_newer(0)
    """

    def __init__(self, service: Any, *, refresh: float = REFRESH_INTERVAL) -> None:
        self._service = service
        self.refresh = refresh
        self.version = 0
        self.nodes: list[dict[str, Any]] = []
        self._fresh = False
        self._changed = trio.Event()
        self._poke = trio.Event()
        self._watchers = 0
        self._watched = trio.Event()

    def poke(self) -> None:
        """List again now (the cluster view's inventory changed)."""
        self._poke.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """List the nodes while someone watches: at each poke, and every ``refresh`` seconds."""
        task_status.started()
        while True:
            if not self._watchers:
                self._fresh = False
                await self._watched.wait()
            self._poke = trio.Event()
            await self._list()
            with trio.move_on_after(self.refresh):
                await self._poke.wait()

    async def _list(self) -> None:
        try:
            with trio.fail_after(30):
                listed = await self._service.list_nodes(labels={})
        except (trio.TooSlowError, OSError, ApiError, AuthServiceError) as exc:
            log.warning("web: cannot list nodes (keeping the last list): %s", exc)
            return
        nodes = sorted((_plain(n) for n in listed), key=lambda n: str(n["name"]))
        if nodes != self.nodes or not self._fresh:
            self.nodes, self._fresh = nodes, True
            self.version += 1
            self._changed.set()
            self._changed = trio.Event()

    @contextmanager
    def watching(self) -> Iterator[None]:
        """While inside, the feed lists (a browser's node-list WebSocket is open)."""
        self._watchers += 1
        self._watched.set()
        if not self._fresh:
            self.poke()
        try:
            yield
        finally:
            self._watchers -= 1
            if not self._watchers:
                self._watched = trio.Event()

    async def wait_newer(self, version: int) -> tuple[int, list[Mapping[str, Any]]]:
        """The list once its version is above ``version`` and it was listed for a watcher
        (call it inside :meth:`watching`)."""
        while self.version <= version or not self._fresh:
            await self._changed.wait()
        return self.version, self.nodes

"""A long-lived, self-healing connection to the auth API for a running service.

Services call the auth API often (heartbeats, audit events, node lookups, logins through
the web service); :class:`ApiPool` keeps one :class:`ApiClient` open in a task of its own and
reopens it after a failure, so a call pays for an SSH handshake only after an outage.
``await pool.list_nodes(labels={})`` works like the client's method sugar.
"""
from __future__ import annotations

import logging
from typing import Any, AsyncContextManager, Callable

import trio

from ssh_proto import SSHError

from ..cluster_view import ClusterView
from .client import ApiClient, ApiError, CallsByName

log = logging.getLogger("jumpgate.api")

E_UNAVAILABLE = "unavailable"


class ApiPool(CallsByName):
    """Run :meth:`run` in a nursery (``await nursery.start(pool.run)``), then call methods.

    With ``view``, the pool also follows the auth server's push stream on the same SSH
    connection and applies it to the view (:class:`appliance.cluster_view.ClusterView`); a
    lost stream is a lost connection: reconnected, and the view resynced by a new snapshot.
    """

    def __init__(self, factory: Callable[[], AsyncContextManager[ApiClient]], *, connect_timeout: float = 10.0,
                 view: ClusterView | None = None):
        self._factory = factory
        self._view = view
        self._client: ApiClient | None = None
        self._ready = trio.Event()
        self._broken = trio.Event()
        self._connect_timeout = connect_timeout

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        started = False
        delay = 0.5
        while True:
            try:
                async with self._factory() as client, trio.open_nursery() as nursery:
                    self._client, self._broken = client, trio.Event()
                    self._ready.set()
                    delay = 0.5
                    if self._view is not None:
                        nursery.start_soon(self._watch, client, self._broken)
                    if not started:
                        started = True
                        task_status.started()
                    await self._broken.wait()
                    nursery.cancel_scope.cancel()
            except (OSError, ApiError, SSHError, trio.TooSlowError, trio.BrokenResourceError) as exc:
                log.warning("auth API connection failed: %s", exc)
            self._client = None
            self._ready = trio.Event()
            if not started:
                started = True
                task_status.started()
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _watch(self, client: ApiClient, broken: trio.Event) -> None:
        try:
            await client.watch(self._view.apply)
            log.warning("the auth server ended the push stream; reconnecting")
        except ApiError as exc:
            log.warning("auth push stream failed: %s", exc)
        except (KeyError, TypeError, ValueError) as exc:  # a push we cannot read: resync
            log.warning("auth push stream sent something unreadable (%r); reconnecting", exc)
        broken.set()

    async def call(self, method: str, /, **params: Any) -> Any:
        """Call ``method`` on the auth API; ApiError("unavailable") if it cannot be reached."""
        with trio.move_on_after(self._connect_timeout):
            await self._ready.wait()
        client = self._client
        if client is None:
            raise ApiError(E_UNAVAILABLE, "the auth server cannot be reached")
        try:
            return await client.call(method, **params)
        except ApiError as exc:
            if exc.code == E_UNAVAILABLE:
                self._broken.set()
            raise
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._broken.set()
            raise ApiError(E_UNAVAILABLE, f"the auth server connection failed: {exc}") from None

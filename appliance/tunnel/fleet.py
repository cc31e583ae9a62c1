"""A tunnelled node's tunnels: one to each proxy of the cluster, so any proxy reaches it.

A node starts with one address (``--tunnel-addr PROXY:3024`` or ``--auth-server PROXY:3080``:
the *bootstrap* tunnel, maybe a load balancer's). Once its push stream runs, the auth server
tells it every proxy that takes tunnels and where (:attr:`ClusterView.proxy_tunnels
<appliance.cluster_view.ClusterView.proxy_tunnels>`, from each proxy's heartbeat:
docs/security.md N6). :class:`TunnelFleet` keeps a :class:`~appliance.tunnel.agent.TunnelAgent`
to each of them besides the bootstrap one:

* a proxy that appears is dialled at once (the push) and at the latest after
  ``reconcile_interval`` seconds; one that is removed from the cluster, or stops advertising
  a tunnel address, has its tunnel closed — the sessions on it end, as when a tunnel dies (N2);
* the proxy the bootstrap tunnel reached is not dialled twice: it is skipped while the
  bootstrap tunnel is up to it, and the bootstrap tunnel's proxy may change at each redial
  (a load balancer);
* each learnt tunnel checks that the proxy it reached is the one it dialled (its certificate's
  ``proxy:<name>``), so a stale address cannot make two tunnels to one proxy;
* the node's own API traffic (heartbeats, audit, the push stream) goes through whichever
  tunnel is up, the bootstrap one first: losing one proxy loses none of it for long.

The fleet owns its agents: they run in the nursery of :meth:`run`, and cancelling it closes
every tunnel.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import AsyncContextManager

import trio

from ..addresses import TUNNEL_PORT, AddressError, parse_endpoint
from ..api.client import ApiClient
from ..cluster_view import ClusterView
from ..membership import MembershipHolder
from .agent import CONNECT_TIMEOUT, ServeNode, TunnelAgent, api_factory_over
from .protocol import API_CHANNEL
from .transport import tcp_connector

__all__ = ["RECONCILE_INTERVAL", "TunnelFleet"]

log = logging.getLogger("jumpgate.tunnel")

#: At the latest this often the fleet compares its tunnels with the proxies the view lists
#: (a push makes it look at once); the issue asks for a new proxy within 30 s.
RECONCILE_INTERVAL = 10.0


class TunnelFleet:
    """The bootstrap tunnel and one per learnt proxy (see the module docstring).

    >>> fleet = TunnelFleet(bootstrap_agent, holder, serve_node, view)   # doctest: +SKIP
    >>> await nursery.start(fleet.run)                                   # doctest: +SKIP
    >>> pool = ApiPool(fleet.api_factory(), view=view)                   # doctest: +SKIP
    """

    def __init__(self, bootstrap: TunnelAgent, holder: MembershipHolder, serve_node: ServeNode, view: ClusterView,
                 *, reconcile_interval: float = RECONCILE_INTERVAL,
                 agent_factory: Callable[[str, str], TunnelAgent] | None = None):
        self.bootstrap = bootstrap
        self._holder = holder
        self._serve_node = serve_node
        self._view = view
        self.reconcile_interval = reconcile_interval
        self._make_agent = agent_factory or self._tcp_agent
        self.agents: dict[str, TunnelAgent] = {}          # learnt proxy name -> its agent
        self._addresses: dict[str, str] = {}
        self._scopes: dict[str, trio.CancelScope] = {}
        self._changed = trio.Event()                       # set when the set of agents changes

    def _tcp_agent(self, name: str, addr: str) -> TunnelAgent:
        return TunnelAgent(tcp_connector(*parse_endpoint(addr, TUNNEL_PORT)), self._holder, self._serve_node,
                           expect_proxy=name)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the bootstrap tunnel and keep the others in step with the view, until cancelled;
        ``nursery.start`` returns after the bootstrap tunnel's first attempt."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.bootstrap.run)
            task_status.started()
            while True:
                self._reconcile(nursery)
                with trio.move_on_after(self.reconcile_interval):
                    seen = dict(self._view.proxy_tunnels)
                    await self._view.wait_for(lambda: self._view.proxy_tunnels != seen)

    def _wanted(self) -> dict[str, str]:
        skip = self.bootstrap.proxy if self.bootstrap.connection is not None else None
        wanted = {}
        for name, addr in self._view.proxy_tunnels.items():
            if name == skip:
                continue
            try:
                parse_endpoint(addr, TUNNEL_PORT)
            except AddressError:
                log.warning("proxy %s advertises an unusable tunnel address %r", name, addr[:64])
                continue
            wanted[name] = addr
        return wanted

    def _reconcile(self, nursery: trio.Nursery) -> None:
        wanted = self._wanted()
        for name in [n for n in self.agents if self._addresses[n] != wanted.get(n)]:
            log.info("closing the tunnel to proxy %s (%s)", name,
                     "no longer in the cluster" if name not in wanted else f"it moved to {wanted[name]}")
            self._scopes.pop(name).cancel()
            del self.agents[name], self._addresses[name]
            self._signal()
        for name, addr in wanted.items():
            if name not in self.agents:
                log.info("keeping a tunnel to proxy %s at %s as well", name, addr)
                agent, scope = self._make_agent(name, addr), trio.CancelScope()
                self.agents[name], self._addresses[name], self._scopes[name] = agent, addr, scope
                nursery.start_soon(self._run_agent, agent, scope)
                self._signal()

    @staticmethod
    async def _run_agent(agent: TunnelAgent, scope: trio.CancelScope) -> None:
        with scope:
            await agent.run()

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition()`` holds, checked again whenever the fleet's agents change
        (the caller bounds the wait)."""
        while not condition():
            await self._changed.wait()

    # ---- the node's API traffic ----------------------------------------------------------
    def _up(self) -> TunnelAgent | None:
        for agent in (self.bootstrap, *self.agents.values()):
            if agent.connection is not None:
                return agent
        return None

    async def open_api_stream(self, timeout: float = CONNECT_TIMEOUT) -> trio.abc.Stream:
        """An API channel on a tunnel that is up (the bootstrap one first), waiting up to
        ``timeout`` for one."""
        with trio.fail_after(timeout):
            while (agent := self._up()) is None:
                await trio.sleep(0.1)  # each agent has its own "up" event: poll them, rarely needed
            conn = agent.connection
        return await conn.open_channel(API_CHANNEL)

    def api_factory(self) -> Callable[[], AsyncContextManager[ApiClient]]:
        """Connections to the auth API through any tunnel that is up, as
        :meth:`TunnelAgent.api_factory` makes them through one."""
        return api_factory_over(self.open_api_stream, self._holder, "no tunnel to a proxy is up")

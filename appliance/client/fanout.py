"""One command on every node a label selector matches: ``jumpgate ssh env=prod uptime``.

This module owns the rules of a fan-out, without the command line (``cli/fanout.py``):

* **The target.** A target holding ``=`` is a label selector, not a node (a node name never
  holds one): ``env=prod``, ``env=prod,role=db``, ``root@env=prod`` (a login before the first
  ``=``; a label value may hold ``@``). It selects what ``jumpgate ls`` with the same labels
  shows: the matching nodes that are not offline, by name.
* **Connections.** One connection to the proxy carries a ``direct-tcpip`` channel to each node
  (and over it the node's own SSH connection, as :func:`~appliance.client.ssh.connect_node`);
  at most ``max_parallel`` nodes at a time (a :class:`trio.CapacityLimiter`), at most
  :data:`MAX_PARALLEL` (the proxy's channel cap per connection is 64).
* **Output.** Each line a node writes is printed as ``NAME: line``: stdout lines to stdout,
  stderr lines to stderr, a line never broken into by another node's (one writer task per
  stream takes whole lines from a bounded channel). A line longer than :data:`MAX_LINE` is
  printed in pieces of that size, each prefixed (memory stays bounded); a last line without a
  newline gets one. The command's stdin is empty (EOF at once, as ``ssh -n``).
* **Outcome.** One :class:`NodeResult` per node, in name order: its exit status, or why it
  could not run (unreachable, refused, killed by a signal, the connection lost).

>>> parse_selector("root@env=prod,role=db")
('root', {'env': 'prod', 'role': 'db'})
>>> parse_selector("team=a@b"), is_selector("web1"), prefixed(b"db1", b"up 3 days")
((None, {'team': 'a@b'}), False, b'db1: up 3 days\\n')
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import trio

import ssh_proto
from ssh_proto.errors import ChannelError, SSHError

from .. import inventory
from ..addresses import NODE_PORT
from .localio import LocalFd
from .ssh import ConnectError, Credentials, connect_over, connect_proxy, open_node_channel, session_lost_reason

__all__ = ["DEFAULT_PARALLEL", "MAX_LINE", "MAX_PARALLEL", "NodeResult", "is_selector", "parse_selector",
           "prefixed", "run_on_nodes"]

DEFAULT_PARALLEL = 10
MAX_PARALLEL = 64
MAX_LINE = 64 * 1024
LINE_QUEUE = 256          # whole lines waiting for a writer, across all nodes


def is_selector(target: str) -> bool:
    """Whether ``jumpgate ssh``'s target is a label selector rather than ``[login@]node``."""
    return "=" in target


def parse_selector(target: str) -> tuple[str | None, dict[str, str]]:
    """``[login@]key=value[,key=value...]`` -> (login or None, labels); LabelError if malformed."""
    head, _, _ = target.partition("=")
    login, at, _ = head.partition("@")
    selector = target[len(login) + 1:] if at else target
    labels = inventory.parse_labels(selector)
    if not labels:
        raise inventory.LabelError("a label selector needs key=value")
    return (login or None) if at else None, labels


def prefixed(name: bytes, line: bytes) -> bytes:
    """The printed form of one output line of node ``name``."""
    return b"%s: %s\n" % (name, line.removesuffix(b"\n"))


@dataclasses.dataclass(frozen=True, slots=True)
class NodeResult:
    """How the command went on one node: ``status`` (its exit status), else ``error`` (why not)."""

    name: str
    status: int | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        return self.error if self.error is not None else f"exit status {self.status}"


async def _write_lines(receive: trio.MemoryReceiveChannel[bytes], out: LocalFd) -> None:
    """Print whole lines, one at a time; once our output is gone (``| head``), drop the rest
    rather than stop the nodes' commands half-way."""
    async with receive:
        async for line in receive:
            try:
                await out.write(line)
            except (trio.BrokenResourceError, OSError):
                break
        async for _ in receive:
            pass


async def _split_lines(read, name: bytes, send: trio.MemorySendChannel[bytes]) -> None:
    """Read one stream of a node, send each whole line prefixed (see the module rules)."""
    pending = b""
    while True:
        data = await read()
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        while len(pending) >= MAX_LINE:
            lines.append(pending[:MAX_LINE])
            pending = pending[MAX_LINE:]
        for line in lines:
            await send.send(prefixed(name, line))
    if pending:
        await send.send(prefixed(name, pending))


async def _run_one(proxy: ssh_proto.SSHClientConnection, creds: Credentials, name: str, login: str,
                   command: str, out: trio.MemorySendChannel[bytes], err: trio.MemorySendChannel[bytes]) -> NodeResult:
    channel = await open_node_channel(proxy, name, NODE_PORT)
    async with connect_over(channel, creds, name, login) as conn:
        try:
            proc = await conn.open_session(command)
        except ChannelError as exc:
            return NodeResult(name, error=f"the node refused the session: {exc}")
        await proc.send_eof()
        label = name.encode()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_split_lines, proc.receive_some, label, out)
            nursery.start_soon(_split_lines, proc.receive_stderr, label, err)
        await proc.wait()
        if proc.exit_status is not None:
            return NodeResult(name, proc.exit_status)
        if proc.exit_signal:
            return NodeResult(name, error=f"killed by signal {proc.exit_signal}")
        return NodeResult(name, error=f"the session ended: {session_lost_reason(conn, channel) or 'no exit status'}")


async def _guarded(limiter: trio.CapacityLimiter, results: dict[str, NodeResult],
                   proxy: ssh_proto.SSHClientConnection, creds: Credentials, name: str, login: str, command: str,
                   out: trio.MemorySendChannel[bytes], err: trio.MemorySendChannel[bytes]) -> None:
    """:func:`_run_one` within the bound; what goes wrong on one node becomes its result."""
    async with limiter:
        try:
            results[name] = await _run_one(proxy, creds, name, login, command, out, err)
        except ConnectError as exc:
            results[name] = NodeResult(name, error=str(exc))
        except (SSHError, trio.BrokenResourceError, OSError) as exc:
            if proxy.error is not None:
                raise  # the proxy connection itself is gone: every node fails, say it once
            results[name] = NodeResult(name, error=f"connection lost: {exc}")


async def run_on_nodes(creds: Credentials, names: Sequence[str], login: str, command: str, *,
                       max_parallel: int = DEFAULT_PARALLEL, stdout: int = 1, stderr: int = 2) -> list[NodeResult]:
    """Run ``command`` as ``login`` on each node of ``names`` through the proxy, printing their
    output on the descriptors ``stdout`` and ``stderr``; the results in name order. Failing to
    reach the proxy raises :class:`ConnectError`; a node that fails is a result, not an error."""
    if not 1 <= max_parallel <= MAX_PARALLEL:
        raise ValueError(f"at most {MAX_PARALLEL} nodes at a time (and at least 1)")
    limiter = trio.CapacityLimiter(max_parallel)
    results: dict[str, NodeResult] = {}
    writers = [LocalFd(stdout), LocalFd(stderr)]
    try:
        async with connect_proxy(creds) as proxy, trio.open_nursery() as outputs:
            channels = []
            for fd in writers:
                send, receive = trio.open_memory_channel[bytes](LINE_QUEUE)
                outputs.start_soon(_write_lines, receive, fd)
                channels.append(send)
            async with channels[0], channels[1], trio.open_nursery() as nodes:
                for name in sorted(names):
                    nodes.start_soon(_guarded, limiter, results, proxy, creds, name, login, command, *channels)
    finally:
        for fd in writers:
            await fd.aclose()
    return [results[name] for name in sorted(names)]

"""A forwarded stream is closed however its channel ends (docs/security.md L1: no descriptor
outlives its connection).

Found by the EMFILE flood of tests/e2e/test_appliance_limits.py: when a client's connection
went away while the server was closing a direct-tcpip channel, ``channel.aclose()`` raised
Cancelled, the line after it never ran, and the proxy's TCP stream to the node stayed open
(held by the revocation registry) — one descriptor per forward, for ever.
"""
from __future__ import annotations

import trio
import trio.testing

from ssh_proto.trio_io.forwarding import relay


class _ChannelClosedByACancelledConnection:
    """What a channel looks like to ``relay`` while its connection is torn down: no data,
    and closing it is a checkpoint, so it raises Cancelled inside a cancelled scope."""

    def __init__(self) -> None:
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        return b""

    async def send_all(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def test_the_stream_is_closed_when_closing_the_channel_is_cancelled():
    ours, theirs = trio.testing.memory_stream_pair()
    channel = _ChannelClosedByACancelledConnection()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay, channel, ours)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()  # the connection goes away
    assert channel.closed
    with trio.fail_after(10):
        assert await theirs.receive_some() == b""  # the far end sees the close: nothing is held

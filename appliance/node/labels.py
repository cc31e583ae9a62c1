"""Node labels: static ``key=value`` pairs and dynamic labels computed by commands.

This module owns what a node reports as its labels (``jumpgate ls env=dev``). Static labels
come from the configuration. Names and values follow the inventory's label rules
(:mod:`appliance.inventory`: what the auth service accepts in a heartbeat), checked here when
the set is made, so a node does not start with labels its heartbeats would carry in vain.
A command label runs its command every ``period`` seconds (Teleport's "dynamic labels") and
keeps the output as the value:

* the output is bounded (:data:`OUTPUT_LIMIT` bytes; a command writing more is stopped and
  its first bytes kept), trimmed of surrounding whitespace, and a character a label value
  may not hold (a newline, a tab, ...) becomes a space;
* a command has :data:`COMMAND_TIMEOUT` seconds; a timeout, a non-zero exit or a command
  that cannot start gives the value ``"<error: ...>"`` (``kernel=<error: exit status 1>`` in
  ``jumpgate ls``), not the last good value — a broken label never stops the node.

>>> labels = LabelSet({"env": "dev"}, {"kernel": CommandLabel(["uname", "-r"], period=3600)})
>>> labels.current()
{'env': 'dev', 'kernel': ''}

Run :meth:`LabelSet.run` in a nursery (``await nursery.start(labels.run)`` returns once every
command label has its first value), then read :meth:`LabelSet.current` at each heartbeat.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
from typing import Mapping, Sequence

import trio

from ..inventory import MAX_LABEL_VALUE, MAX_LABELS, LabelError, check_label

log = logging.getLogger("jumpgate.node.labels")

OUTPUT_LIMIT = 256       # bytes: at most the 256 characters a label value may hold
COMMAND_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class CommandLabel:
    """A label whose value is ``command``'s output, refreshed every ``period`` seconds."""

    command: tuple[str, ...]
    period: float

    def __post_init__(self) -> None:
        argv = tuple(self.command)
        if not argv or not argv[0] or not all(isinstance(a, str) and "\0" not in a for a in argv):
            raise ValueError("a command label needs a command: a list of strings without NUL bytes")
        if not (isinstance(self.period, (int, float)) and 0 < self.period < math.inf):
            raise ValueError("a command label's period must be a positive number of seconds")
        object.__setattr__(self, "command", argv)  # a list in, a tuple kept: hashable, immutable
        object.__setattr__(self, "period", float(self.period))


def _check(name: str, value: str) -> None:
    try:
        check_label(name, value)
    except LabelError as exc:
        raise ValueError(str(exc)) from None


class LabelSet:
    """Static labels plus command labels; :meth:`current` is always safe to read."""

    def __init__(self, static: Mapping[str, str] | None = None, commands: Mapping[str, CommandLabel] | None = None,
                 *, timeout: float = COMMAND_TIMEOUT, output_limit: int = OUTPUT_LIMIT):
        static = dict(static or {})
        commands = dict(commands or {})
        for name, value in static.items():
            _check(name, value)
        for name, label in commands.items():
            _check(name, "")
            if not isinstance(label, CommandLabel):
                raise TypeError(f"label {name!r}: expected a CommandLabel")
        clash = static.keys() & commands.keys()
        if clash:
            raise ValueError(f"labels defined both statically and by a command: {', '.join(sorted(clash))}")
        if len(static) + len(commands) > MAX_LABELS:
            raise ValueError(f"a node has at most {MAX_LABELS} labels, static and command ones together")
        self.static = static
        self.commands = commands
        self.timeout = timeout
        self.output_limit = output_limit
        self._values = {name: "" for name in commands}  # until the first run

    def current(self) -> dict[str, str]:
        """Every label with its latest value (command labels are "" before their first run)."""
        return {**self.static, **self._values}

    async def refresh(self, name: str) -> str:
        """Run command label ``name`` now; store and return its value."""
        label = self.commands[name]
        value = await run_label_command(label.command, timeout=self.timeout, limit=self.output_limit)
        self._values[name] = value
        return value

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Refresh command labels forever: all once, then each on its own period."""
        async with trio.open_nursery() as first:
            for name in self.commands:
                first.start_soon(self.refresh, name)
        task_status.started()
        async with trio.open_nursery() as nursery:
            for name in self.commands:
                nursery.start_soon(self._refresh_every, name)

    async def _refresh_every(self, name: str) -> None:
        period = self.commands[name].period
        while True:
            await trio.sleep(period)
            await self.refresh(name)


async def run_label_command(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT,
                            limit: int = OUTPUT_LIMIT) -> str:
    """The value a command label gets from ``argv``: its output, or ``"<error: ...>"``."""
    try:
        process = await trio.lowlevel.open_process(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                   stderr=subprocess.DEVNULL, start_new_session=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return _error(f"cannot run {argv[0]}: {getattr(exc, 'strerror', None) or exc}")
    try:
        with trio.move_on_after(timeout) as scope:
            output, truncated = await _read_bounded(process.stdout, limit)
            if truncated:
                process.kill()  # it has said all we will keep; do not wait for the rest
            status = await process.wait()
        if scope.cancelled_caught:
            return _error(f"timed out after {timeout:g}s")
        if status != 0 and not truncated:
            return _error(f"exit status {status}" if status > 0 else f"killed by signal {-status}")
        return _printable(output.decode("utf-8", "replace").strip())
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()


def _error(why: str) -> str:
    """The value of a label whose command failed: ``<error: exit status 1>``, visibly not output
    (and never the last good value, which would look current), within a label value's bounds."""
    return _printable(f"<error: {why}"[:MAX_LABEL_VALUE - 1] + ">")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text)


async def _read_bounded(stream: trio.abc.ReceiveStream, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of ``stream`` until EOF; (data, True) when there was more."""
    buf = bytearray()
    while len(buf) <= limit:
        chunk = await stream.receive_some(limit + 1 - len(buf))
        if not chunk:
            return bytes(buf), False
        buf += chunk
    return bytes(buf[:limit]), True

"""``jumpgate sessions ls|search`` and ``jumpgate play``: recorded sessions, listed and replayed.

They talk to the auth service as ``jumpgate ctl`` does (on the auth host through its data
directory, or with ``--auth-server`` and ``--identity``): an admin sees every session, a user
the sessions they owned or joined (docs/security.md S5). ``ctl sessions`` is the same command.
"""
from __future__ import annotations

import os
import sys
from typing import Any

import trio

from .ctl import _as_json, _backend, _parse_since, _table, _when, print_json
from .errors import CliError


def sessions(args) -> int:
    return trio.run(_sessions, args)


async def _sessions(args) -> int:
    async with _backend(args) as backend:
        if args.action == "ls":
            await sessions_ls(backend, args)
        else:
            await sessions_search(backend, args)
    return 0


def _since(args) -> float:
    from .account import parse_ttl
    return _parse_since(args.since, parse_ttl) if getattr(args, "since", None) else 0.0


def _state(s: dict[str, Any]) -> str:
    if s["state"] == "active":
        return "active"
    state = s["state"]
    if s["chunks"] >= 0 and s["uploaded"] < s["chunks"]:
        state += f" (uploading {s['uploaded']}/{s['chunks']})"
    return state


async def sessions_ls(backend, args) -> None:
    """Newest first; ``--active`` only the running ones."""
    found = await backend.call("list_sessions", limit=args.limit, user=args.user or "", node=args.node or "",
                               since=_since(args), active=bool(args.active))
    if _as_json(args):
        return print_json(found)
    _table([[s["id"], _when(s["started"]), s["user"], f"{s['login']}@{s['node']}", s["kind"],
             (s["command"] or "")[:40], _state(s)] for s in found],
           ["ID", "STARTED", "USER", "LOGIN@NODE", "KIND", "COMMAND", "STATE"])


async def sessions_search(backend, args) -> None:
    hits = await backend.call("search_sessions", text=args.text, limit=args.limit, user=args.user or "",
                              since=_since(args))
    if _as_json(args):
        return print_json(hits)
    for hit in hits:
        print(f"{hit['session_id']} {hit['offset_ms'] / 1000:.1f}s {hit['line']}")


def play(args) -> int:
    return trio.run(_play, args)


async def _play(args) -> int:
    from ..sessions.format import RecordingError
    from ..sessions.player import ending_note, frames
    async with _backend(args) as backend:
        session = await backend.call("get_session", session_id=args.session_id)

        async def fetch(index: int) -> bytes:
            return await backend.call("read_recording_chunk", session_id=session["id"], index=index)
        out = open(args.output, "wb") if args.output else sys.stdout.buffer
        try:
            await _render(args, session, frames(fetch, session), out)
        except RecordingError as exc:
            raise CliError(f"the recording is damaged: {exc}") from None
        finally:
            out.flush()
            if args.output:
                out.close()
        note = ending_note(session)
        if note:
            print(f"jumpgate: {note}", file=sys.stderr)
    return 0


async def _render(args, session: dict[str, Any], source, out) -> None:
    from ..sessions.player import TextStream, asciicast_event, asciicast_header, play, utf8_decoder
    if args.format == "asciicast":
        out.write((asciicast_header(session["header"]) + "\n").encode())
        decode = utf8_decoder()
        async for frame in source:
            line = asciicast_event(frame, decode)
            if line is not None:
                out.write(line.encode() + b"\n")
        return
    if args.format == "text":
        text = TextStream()
        async for frame in source:
            if frame.kind in ("o", "e"):
                out.write(text.feed(frame.data))
        out.write(text.close())
        return

    def write(data: bytes) -> None:
        out.write(data)
        out.flush()
    await play(source, write, speed=args.speed, skip_idle=args.skip_idle, at=args.at)


def add_backend_flags(p) -> None:
    p.add_argument("--config", help="TOML configuration file (as for start)")
    p.add_argument("--data-dir", help="the auth service's state directory (on the auth host)")
    p.add_argument("--auth-server", help="HOST:PORT of the auth service (with --identity)")
    p.add_argument("--identity", help="your key file with its -cert.pub (for --auth-server)")
    p.set_defaults(web_pin=None)


def add_sessions_parser(sub, *, ctl: bool = False) -> None:
    p = sub.add_parser("sessions", help="recorded sessions: list, search")
    if not ctl:
        add_backend_flags(p)
    actions = p.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", help="list sessions, newest first (interrupted ones marked)")
    ls.add_argument("--active", action="store_true", help="only running sessions")
    ls.add_argument("--user", help="only this user's sessions")
    ls.add_argument("--node", help="only sessions on this node")
    ls.add_argument("--since", help="only sessions since: a duration back (30m, 2h, 7d) or a UTC time")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--format", choices=("text", "json"), default="text")
    se = actions.add_parser("search", help="find text sessions printed (then `jumpgate play ID --at OFFSET`)")
    se.add_argument("text")
    se.add_argument("--user", help="only this user's sessions")
    se.add_argument("--since", help="only sessions since: a duration back or a UTC time")
    se.add_argument("--limit", type=int, default=100)
    se.add_argument("--format", choices=("text", "json"), default="text")
    if not ctl:
        p.set_defaults(func="appliance.cli.recordings:sessions", auth_server=None)


def add_play_parser(sub) -> None:
    p = sub.add_parser("play", help="replay a recorded session (or export it: asciicast, text)")
    add_backend_flags(p)
    p.add_argument("session_id", metavar="SESSION_ID")
    p.add_argument("--speed", type=float, default=1.0, help="play this many times faster (default 1)")
    p.add_argument("--skip-idle", type=float, metavar="SECONDS", help="cap every pause at SECONDS")
    p.add_argument("--at", type=float, default=0.0, metavar="OFFSET",
                   help="start at OFFSET seconds (what came before is shown at once)")
    p.add_argument("--format", choices=("terminal", "asciicast", "text"), default="terminal",
                   help="terminal: replay in real time; asciicast: asciinema v2; text: output without escapes")
    p.add_argument("-o", "--output", help="write to this file instead of standard output")
    p.set_defaults(func="appliance.cli.recordings:play")

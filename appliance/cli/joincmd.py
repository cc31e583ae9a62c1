"""``jumpgate join SESSION_ID LOGIN@NODE [--mode observer|peer]``: attach to a live session.

The session's node and login are what ``jumpgate sessions ls --active`` shows in its
LOGIN@NODE column. The client connects to that node through the proxy as ``jumpgate ssh``
does, opens the node's ``jumpgate-join@jumpgate`` subsystem and sends the join request
(:mod:`appliance.sessions.join`); from then on it is a terminal like ``ssh``'s: the local
terminal in raw mode, ``~.`` leaves. An observer's typing is dropped by the node. Leaving
does not end the session; when the session ends, ``join`` exits with its exit status.
"""
from __future__ import annotations

import os
import sys

import trio

from ..client.escape import EscapeFilter
from ..client.localio import EXIT_FAILURE, exit_status, relay
from ..client.ssh import connect_node
from ..client.terminal import raw_terminal
from ..sessions import join as join_protocol
from .errors import CliError
from .remote import _credentials, _run, client_options, escape_char, split_login

__all__ = ["join"]


def join(args) -> int:
    profile, creds = _credentials()
    login, node = split_login(args.target, creds)
    return _run(_join, profile, creds, login, node, args, exit_code=EXIT_FAILURE)


async def _join(profile, creds, login: str, node: str, args) -> int:
    request = join_protocol.encode_request(args.session_id, args.mode)
    async with connect_node(profile, node, login, creds=creds, options=client_options(args)) as conn:
        proc = await conn.open_session(subsystem=join_protocol.SUBSYSTEM)
        await proc.send_all(request)
        interactive = os.isatty(0)
        escape = escape_char(args)
        escapes = EscapeFilter(escape) if interactive and escape is not None else None
        if args.mode == "observer" and interactive:
            print(f"jumpgate: watching session {args.session_id} (read-only; ~. leaves)", file=sys.stderr)
        with raw_terminal(0, interactive):
            await relay(proc, (0, 1, 2), escapes=escapes, disconnect=conn.aclose)
        if escapes is not None and escapes.disconnected:
            return 0  # left the session; it goes on
        status, signame = exit_status(proc)
        if signame:
            print(f"jumpgate: the session ended: killed by signal {signame}", file=sys.stderr)
        return status


def add_join_parser(sub) -> None:
    p = sub.add_parser("join", help="join a live session (as sessions ls --active lists them)")
    p.add_argument("session_id", metavar="SESSION_ID")
    p.add_argument("target", metavar="LOGIN@NODE", help="the session's login and node (sessions ls --active)")
    p.add_argument("--mode", choices=join_protocol.MODES, default="observer",
                   help="observer: watch, read-only (the default); peer: type too")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                   help="an OpenSSH option, as for jumpgate ssh")
    p.add_argument("-e", dest="escape_char", metavar="CHAR",
                   help="escape character at the start of a line (default ~; none: no escapes)")
    p.set_defaults(func="appliance.cli.joincmd:join")

"""``jumpgate ssh``: through the session daemon when it can, else in-process.

This module is imported on every ``jumpgate ssh`` and uses the standard library only:
a session without forwarding is handed to the profile's session daemon
(:mod:`appliance.client.muxclient`, started on first use), which holds the proxy
connection, so the command costs an interpreter start rather than importing Trio and the
SSH stack; with ``-A`` the daemon connects to the client's ``SSH_AUTH_SOCK``. Port
forwarding (``-L``/``-R``/``-N``), ``-A`` without an agent, ``-v`` and ``--debug`` (what
they print is the connection's own), ``JUMPGATE_MUX=0`` and a profile without a valid
certificate run in this process (:func:`appliance.cli.remote.ssh`), which also reports what
is wrong. ``-o`` and ``-e`` are checked here, before anything starts, and travel with the
session request. A target holding ``=`` is a label selector (:mod:`appliance.cli.fanout`):
the command runs on every matching node.
"""
from __future__ import annotations

import json
import os
import sys
import time

from ..client.escape import parse_escape_char
from ..client.home import CERT_NAME, home_dir
from ..client.mux import SessionRequest
from ..client.options import ClientOptions, OptionError, parse_options
from ..client.terminal import session_env, term_name, terminal_size
from .errors import CliError

__all__ = ["ssh"]


def _wants_in_process(args) -> bool:
    from ..client.muxclient import mux_enabled
    agent_missing = args.forward_agent and not os.environ.get("SSH_AUTH_SOCK", "").startswith("/")
    troubleshooting = getattr(args, "verbose", 0) or getattr(args, "debug", False)
    return bool(args.local_forwards or args.remote_forwards or args.no_command or agent_missing or troubleshooting
                or not mux_enabled())


def _profile_record(home: str) -> dict:
    """profile.json as far as this module needs it ({} when unreadable)."""
    try:
        with open(os.path.join(home, "profile.json"), "rb") as f:
            record = json.loads(f.read(64 * 1024))
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def _logged_in(home: str, record: dict) -> bool:
    """A certificate that has not expired, by the profile's record of it (the daemon checks
    the certificate itself); anything else runs in-process, which explains what is wrong."""
    expires = record.get("expires")
    return os.path.exists(os.path.join(home, CERT_NAME)) and isinstance(expires, (int, float)) \
        and time.time() < expires


def _checked(args) -> tuple[ClientOptions, int | None]:
    """``-o`` and ``-e``, or CliError before anything starts."""
    try:
        options = parse_options(getattr(args, "options", None) or ())
        escape = parse_escape_char(getattr(args, "escape_char", None))
    except (OptionError, ValueError) as exc:
        raise CliError(str(exc)) from None
    return options, escape


def request_from(args, options: ClientOptions = ClientOptions(), escape: int | None = None) -> SessionRequest:
    """The session ``args`` ask for, with this terminal's size and environment."""
    command = " ".join(args.command) if args.command else None  # joined with spaces, as ssh does
    pty = bool(args.force_tty) or (command is None and not args.no_tty and os.isatty(0))
    cols, rows = terminal_size()
    agent = os.environ["SSH_AUTH_SOCK"] if args.forward_agent else None
    return SessionRequest(target=args.target, login=args.login or None, port=args.port, command=command, pty=pty,
                          term=term_name(), cols=cols, rows=rows, env=session_env(), agent=agent, options=options,
                          escape=escape)


def ssh(args) -> int:
    """``jumpgate ssh [options] [login@]node [command...]``; returns the remote exit status."""
    if args.force_tty and args.no_tty:
        raise CliError("-t and -T contradict each other")
    options, escape = _checked(args)
    if "=" in args.target:  # a label selector, not a node (cli/fanout.py): every match, or the one
        from .fanout import ssh as ssh_selected
        return ssh_selected(args, ssh)
    home = home_dir()
    record = _profile_record(home)
    if args.port:
        from ..names import port_ignored_warning  # (only then: the thin client's start is counted in ms)
        warning = port_ignored_warning(args.target.rpartition("@")[2], str(record.get("cluster") or ""), args.port)
        if warning:
            print(f"jumpgate: warning: {warning}", file=sys.stderr)
    args.port_warned = True
    if not _wants_in_process(args) and _logged_in(home, record):
        from ..client.muxclient import run_session
        outcome = run_session(home, request_from(args, options, escape))
        if outcome is not None:
            if outcome.message:
                raise CliError(outcome.message, outcome.status)
            if outcome.signal:
                print(f"jumpgate: remote command killed by signal {outcome.signal}", file=sys.stderr)
            return outcome.status
    from .remote import ssh as ssh_in_process
    return ssh_in_process(args)

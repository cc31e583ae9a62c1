"""``jumpgate ssh``: through the session daemon when it can, else in-process.

This module is imported on every ``jumpgate ssh`` and uses the standard library only:
a session without forwarding is handed to the profile's session daemon
(:mod:`appliance.client.muxclient`, started on first use), which holds the proxy
connection, so the command costs an interpreter start rather than importing Trio and the
SSH stack; with ``-A`` the daemon connects to the client's ``SSH_AUTH_SOCK``. Port
forwarding (``-L``/``-R``/``-N``), ``-A`` without an agent, ``JUMPGATE_MUX=0`` and a
profile without a valid certificate run in this process (:func:`appliance.cli.remote.ssh`),
which also reports what is wrong. A target holding ``=`` is a label selector
(:mod:`appliance.cli.fanout`): the command runs on every matching node.
"""
from __future__ import annotations

import json
import os
import sys
import time

from ..client.home import CERT_NAME, home_dir
from ..client.mux import SessionRequest
from ..client.terminal import session_env, term_name, terminal_size
from .errors import CliError

__all__ = ["ssh"]


def _wants_in_process(args) -> bool:
    from ..client.muxclient import mux_enabled
    agent_missing = args.forward_agent and not os.environ.get("SSH_AUTH_SOCK", "").startswith("/")
    return bool(args.local_forwards or args.remote_forwards or args.no_command or agent_missing or not mux_enabled())


def _logged_in(home: str) -> bool:
    """A certificate that has not expired, by the profile's record of it (the daemon checks
    the certificate itself); anything else runs in-process, which explains what is wrong."""
    try:
        with open(os.path.join(home, "profile.json"), "rb") as f:
            expires = json.loads(f.read(64 * 1024)).get("expires")
    except (OSError, ValueError, AttributeError, RecursionError):
        return False
    return os.path.exists(os.path.join(home, CERT_NAME)) and isinstance(expires, (int, float)) \
        and time.time() < expires


def request_from(args) -> SessionRequest:
    """The session ``args`` ask for, with this terminal's size and environment."""
    command = " ".join(args.command) if args.command else None  # joined with spaces, as ssh does
    pty = bool(args.force_tty) or (command is None and not args.no_tty and os.isatty(0))
    cols, rows = terminal_size()
    agent = os.environ["SSH_AUTH_SOCK"] if args.forward_agent else None
    return SessionRequest(target=args.target, login=args.login or None, port=args.port, command=command, pty=pty,
                          term=term_name(), cols=cols, rows=rows, env=session_env(), agent=agent)


def ssh(args) -> int:
    """``jumpgate ssh [options] [login@]node [command...]``; returns the remote exit status."""
    if args.force_tty and args.no_tty:
        raise CliError("-t and -T contradict each other")
    if "=" in args.target:  # a label selector, not a node (cli/fanout.py): every match, or the one
        from .fanout import ssh as ssh_selected
        return ssh_selected(args, ssh)
    home = home_dir()
    if not _wants_in_process(args) and _logged_in(home):
        from ..client.muxclient import run_session
        outcome = run_session(home, request_from(args))
        if outcome is not None:
            if outcome.message:
                raise CliError(outcome.message, outcome.status)
            if outcome.signal:
                print(f"jumpgate: remote command killed by signal {outcome.signal}", file=sys.stderr)
            return outcome.status
    from .remote import ssh as ssh_in_process
    return ssh_in_process(args)

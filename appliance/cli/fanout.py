"""``jumpgate ssh [login@]key=value[,...] [command]``: a label selector in place of the node.

With a command, it runs on every matching node in parallel (:mod:`appliance.client.fanout`:
``--max-parallel N`` at a time, default 10, at most 64), each output line prefixed ``NAME: ``,
stdout and stderr kept apart, then a summary of the nodes that failed on stderr. It exits 0
when the command succeeded everywhere, 1 when it exited non-zero somewhere, 255 when a node
could not be reached or its command did not finish (killed, connection lost). Without a
command it opens a shell on the one matching node, and refuses (listing them) when there are
none or several. Forwarding and pty flags (``-L -R -N -A -t``) are for one node: refused with
a command on a selector. The nodes are those ``jumpgate ls`` shows with the same labels (not
offline); the command's stdin is empty. The selector is one word (several pairs: commas):
``jumpgate ssh env=prod role=db`` runs ``role=db`` as the command, as ssh would.
"""
from __future__ import annotations

import sys
from functools import partial
from typing import Callable

from ..client.fanout import DEFAULT_PARALLEL, MAX_PARALLEL, NodeResult, parse_selector, run_on_nodes
from ..client.localio import EXIT_FAILURE
from ..client.ssh import default_login, list_nodes
from ..inventory import LabelError, format_labels
from .errors import CliError
from .remote import _credentials, _run, select_nodes

__all__ = ["ssh", "summary"]


def summary(results: list[NodeResult]) -> tuple[int, str]:
    """(exit status, the failure report for stderr, "" when every node succeeded)."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return 0, ""
    lines = [f"jumpgate: {len(failed)} of {len(results)} node{'s' if len(results) != 1 else ''} failed:",
             *(f"  {r.name}: {r.describe()}" for r in failed)]
    status = EXIT_FAILURE if any(r.status is None for r in failed) else 1
    return status, "\n".join(lines) + "\n"


def _refuse_single_node_flags(args) -> None:
    used = [flag for flag, on in (("-L", args.local_forwards), ("-R", args.remote_forwards), ("-N", args.no_command),
                                  ("-A", args.forward_agent), ("-t", args.force_tty)) if on]
    if used:
        raise CliError(f"{' '.join(used)} need one node: with a label selector and a command, the command runs "
                       "on every matching node without them", EXIT_FAILURE)


def ssh(args, ssh_one: Callable[[object], int]) -> int:
    """Run ``args.command`` on every node ``args.target`` selects, or hand the one match to
    ``ssh_one`` (``jumpgate ssh`` with that node as its target) for a shell."""
    try:
        login, labels = parse_selector(args.target)
    except LabelError as exc:
        raise CliError(f"label selector {args.target!r}: {exc}", EXIT_FAILURE) from None
    parallel = DEFAULT_PARALLEL if getattr(args, "max_parallel", None) is None else args.max_parallel
    if not 1 <= parallel <= MAX_PARALLEL:
        raise CliError(f"--max-parallel: 1 to {MAX_PARALLEL} nodes at a time", EXIT_FAILURE)
    _, creds = _credentials()
    login = args.login or login or default_login(creds)
    names = [n.name for n in select_nodes(_run(list_nodes, creds, labels, exit_code=EXIT_FAILURE))]
    wanted = format_labels(labels)
    if not names:
        raise CliError(f"no node matches {wanted} (`jumpgate ls --all {wanted}` shows offline ones too)",
                       EXIT_FAILURE)
    if not args.command:
        if len(names) > 1:
            raise CliError(f"{wanted} matches {len(names)} nodes ({', '.join(names)}): name one for a shell, "
                           "or give a command to run on all of them", EXIT_FAILURE)
        args.target = f"{login}@{names[0]}"
        return ssh_one(args)
    _refuse_single_node_flags(args)
    command = " ".join(args.command)
    results = _run(partial(run_on_nodes, creds, names, login, command, max_parallel=parallel),
                   exit_code=EXIT_FAILURE)
    status, report = summary(results)
    sys.stdout.flush()
    print(report, end="", file=sys.stderr)
    return status

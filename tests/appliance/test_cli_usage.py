"""The command line's own errors: each names the command the user typed (issue 14 item 10).

argparse hands the arguments a subcommand does not know up to the top-level parser, which
then prints ``usage: jumpgate [-h] [--version] [--debug] COMMAND ...``: no help for the flag
the user got wrong. Every command, ``ctl``'s nested ones included, prints its own usage.
"""
from __future__ import annotations

import argparse

import pytest

from appliance.cli.main import build_parser, main


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path with no subcommand below it: ("ssh",), ("ctl", "users", "add"), ..."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [path]
    return [leaf for name, child in subs[0].choices.items() if child.prog.endswith(f" {name}")  # not an alias
            for leaf in _commands(child, path + (name,))]


ALL_COMMANDS = _commands(build_parser())


def test_every_command_is_checked():
    assert ("ssh",) in ALL_COMMANDS and ("ctl", "users", "add") in ALL_COMMANDS and len(ALL_COMMANDS) > 20


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=" ".join)
def test_an_unknown_flag_after_a_command_prints_that_commands_usage(path, capsys):
    with pytest.raises(SystemExit) as exit:
        main([*path, "--no-such-flag"])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: jumpgate {' '.join(path)} "), err
    assert f"jumpgate {' '.join(path)}: error:" in err


def test_an_alias_prints_the_usage_of_the_command_it_names(capsys):
    with pytest.raises(SystemExit):
        main(["ctl", "events", "--no-such-flag"])  # `ctl events` is `ctl audit` (issue 14 item 17)
    assert capsys.readouterr().err.startswith("usage: jumpgate ctl audit ")


def test_an_unknown_flag_before_any_command_is_the_top_levels(capsys):
    with pytest.raises(SystemExit):
        main(["--no-such-flag"])
    assert capsys.readouterr().err.startswith("usage: jumpgate [-h]")


def test_debug_is_taken_after_the_command_too():
    assert build_parser("ssh").parse_args(["ssh", "--debug", "web1"]).debug is True
    assert build_parser("ssh").parse_args(["--debug", "ssh", "web1"]).debug is True
    assert build_parser("ssh").parse_args(["ssh", "web1"]).debug is False

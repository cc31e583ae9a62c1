"""appliance.node.labels: static labels, command labels and their refresh, bounds and errors.

The commands are real processes; periods are short so the whole file takes about a second.
"""
from __future__ import annotations

import pytest
import trio

from appliance.node.labels import OUTPUT_LIMIT, CommandLabel, LabelSet, run_label_command


def test_static_labels_are_current_as_given():
    labels = LabelSet({"env": "dev", "team/db": "core"})
    assert labels.current() == {"env": "dev", "team/db": "core"}


def test_command_labels_are_empty_before_their_first_run():
    labels = LabelSet({"env": "dev"}, {"arch": CommandLabel(["uname", "-m"], period=60)})
    assert labels.current() == {"env": "dev", "arch": ""}


async def test_run_gives_every_command_label_a_value_before_it_reports_started(nursery):
    labels = LabelSet({"env": "dev"}, {"greeting": CommandLabel(["echo", "  hello  "], period=60),
                                       "kernel": CommandLabel(["uname", "-s"], period=60)})
    await nursery.start(labels.run)
    assert labels.current() == {"env": "dev", "greeting": "hello", "kernel": "Linux"}


async def test_command_labels_are_refreshed_every_period(nursery, tmp_path):
    counter = tmp_path / "count"
    counter.write_text("0")
    script = f"n=$(($(cat {counter}) + 1)); echo $n > {counter}; echo $n"
    labels = LabelSet(commands={"runs": CommandLabel(["sh", "-c", script], period=0.05)})
    await nursery.start(labels.run)
    assert labels.current()["runs"] == "1"
    with trio.fail_after(5):
        while int(labels.current()["runs"]) < 3:
            await trio.sleep(0.02)


async def test_output_is_bounded():
    value = await run_label_command(["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' a; sleep 5"])
    assert value == "a" * OUTPUT_LIMIT


async def test_output_a_label_value_may_not_hold_becomes_spaces():
    """The auth service takes printable values only: a multi-line output would have made every
    heartbeat of the node fail."""
    assert await run_label_command(["printf", "  first\\nsecond\\tthird\\n"]) == "first second third"


async def test_a_command_that_hangs_times_out_with_an_error_value():
    with trio.fail_after(3):
        value = await run_label_command(["sleep", "30"], timeout=0.2)
    assert value == "error: timed out after 0.2s"


async def test_failures_become_error_values(nursery):
    assert await run_label_command(["sh", "-c", "echo partial; exit 3"]) == "error: exit status 3"
    assert (await run_label_command(["/nonexistent/labeller"])).startswith("error: cannot run /nonexistent/labeller")
    assert await run_label_command(["sh", "-c", "kill -TERM $$"]) == "error: killed by signal 15"


async def test_a_failing_label_leaves_the_others_working(nursery):
    labels = LabelSet({"env": "dev"}, {"bad": CommandLabel(["false"], period=60),
                                       "good": CommandLabel(["echo", "ok"], period=60)})
    await nursery.start(labels.run)
    assert labels.current() == {"env": "dev", "bad": "error: exit status 1", "good": "ok"}


@pytest.mark.parametrize("static, commands", [
    ({"bad name": "x"}, {}),
    ({"": "x"}, {}),
    ({"env": 3}, {}),
    ({}, {"bad=name": CommandLabel(["true"], period=1)}),
    ({"env": "dev"}, {"env": CommandLabel(["true"], period=1)}),
])
def test_invalid_label_definitions_are_refused(static, commands):
    with pytest.raises(ValueError):
        LabelSet(static, commands)


@pytest.mark.parametrize("command, period", [([], 1), ([""], 1), (["a\0b"], 1), (["true"], 0), (["true"], -1),
                                             (["true"], float("inf"))])
def test_invalid_command_labels_are_refused(command, period):
    with pytest.raises(ValueError):
        CommandLabel(command, period)


def test_command_label_keeps_an_immutable_argv():
    label = CommandLabel(["uname", "-r"], period=5)
    assert label.command == ("uname", "-r") and label.period == 5.0

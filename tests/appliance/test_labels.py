"""appliance.node.labels: static labels, command labels and their refresh, bounds and errors.

The commands are real processes, but for the refresh period, which runs on MockClock.
"""
from __future__ import annotations

import pytest
import trio

from appliance.node import labels as labels_module
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


async def test_command_labels_are_refreshed_every_period(autojump_clock, monkeypatch):
    """On MockClock: the runner is replaced by one that does no I/O (autojump would skip ahead
    while a real command runs), and records when each run started."""
    runs: list[float] = []
    third = trio.Event()

    async def run(argv, *, timeout, limit):
        runs.append(trio.current_time())
        if len(runs) == 3:
            third.set()
        return str(len(runs))
    monkeypatch.setattr(labels_module, "run_label_command", run)
    labels = LabelSet(commands={"runs": CommandLabel(["uname"], period=60)})
    async with trio.open_nursery() as nursery:
        await nursery.start(labels.run)
        assert labels.current()["runs"] == "1"     # the first value before run() reports started
        await third.wait()
        nursery.cancel_scope.cancel()
    assert [t - runs[0] for t in runs] == [0.0, 60.0, 120.0] and labels.current()["runs"] == "3"


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
    assert value == "<error: timed out after 0.2s>"


async def test_failures_become_error_values(nursery):
    assert await run_label_command(["sh", "-c", "echo partial; exit 3"]) == "<error: exit status 3>"
    assert (await run_label_command(["/nonexistent/labeller"])).startswith("<error: cannot run /nonexistent/labeller")
    assert await run_label_command(["sh", "-c", "kill -TERM $$"]) == "<error: killed by signal 15>"


async def test_a_failing_label_leaves_the_others_working(nursery):
    labels = LabelSet({"env": "dev"}, {"bad": CommandLabel(["false"], period=60),
                                       "good": CommandLabel(["echo", "ok"], period=60)})
    await nursery.start(labels.run)
    assert labels.current() == {"env": "dev", "bad": "<error: exit status 1>", "good": "ok"}


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


async def test_a_command_that_starts_failing_shows_the_error_not_its_last_good_value(tmp_path):
    source = tmp_path / "value"
    source.write_text("v1\n")
    labels = LabelSet(commands={"app": CommandLabel(["cat", str(source)], period=60)})
    assert await labels.refresh("app") == "v1"
    source.unlink()
    assert await labels.refresh("app") == "<error: exit status 1>" == labels.current()["app"]
    source.write_text("v2\n")
    assert await labels.refresh("app") == "v2"

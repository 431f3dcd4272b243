"""``pyprocsync status`` and what it is built on (``read_status``, ``format_status``).

Each state an event can be in, only the run asked for, who waits, who is missing and for
how long, and ``--watch`` (refreshing until Ctrl-C, in place on a terminal).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import pytest
import redis
from cli_support import (
    UNREACHABLE,
    Background,
    argv,
    environment,
    run,
    status_rows,
    sync_args,
)
from support import (
    assert_one_line_error,
    default_sigint,
    event_keys,
    join,
    start_thread,
    wait_until,
    waiting_members,
    watch_args,
)

from pyprocsync import ProcSync, ProtocolError, TimeOutError
from pyprocsync.tools.cli import ExitCode
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.status import EventStatus, MemberStatus, format_status, read_status

# -- status ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_status_of_a_run_without_events(server: EmbeddedServer, run_id: str) -> None:
    """``status --run RUN`` of a run with no events exits 0 with one line saying so."""
    done = run("status", "--run", run_id, "--redis", server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"no events of run {run_id!r} on {server.url}"
    assert done.stderr == ""


@pytest.mark.timeout(60)
def test_status_unreachable_server_exits_6() -> None:
    """``status`` against an unreachable server exits 6 with one line naming the URL."""
    done = run("status", "--run", "r", "--redis", UNREACHABLE)
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    assert_one_line_error(done.stderr, UNREACHABLE, "--redis")


@pytest.mark.timeout(60)
def test_status_lists_events_with_generation_counts_and_state(
    server: EmbeddedServer,
    run_id: str,
    client: redis.Redis,
    make_sync: Callable[..., ProcSync],
    background: Callable[..., Background],
) -> None:
    """``status`` lists every event of the run: generation, arrived/expected, state
    (``released`` after completed rounds, ``broken`` after a timeout, ``filling`` while a
    ``pyprocsync sync`` process waits, with that process in the waiting column), age;
    then the last released round of the run's record."""
    node = make_sync(0.01)
    for _ in range(3):
        node.sync("released", 1, 10)
    with pytest.raises(TimeOutError):
        node.sync("broken", 2, 0.2)
    waiter = background(*sync_args("filling", 2, run_id, "--redis", server.url, "--delay", "0.05"))
    wait_until(lambda: waiting_members(client, run_id, "filling"), 15, "the waiting process")

    done = run("status", "--run", run_id, "--redis", server.url)
    assert done.returncode == 0, done.stderr
    rows = status_rows(done.stdout)
    assert sorted(rows) == ["broken", "filling", "released"]
    assert rows["released"][:3] == ["3", "0/?", "released"]
    assert rows["broken"][:3] == ["0", "1/2", "broken"]
    assert rows["filling"][:3] == ["0", "1/2", "filling"]
    assert f":{waiter.pid}:" in " ".join(rows["filling"][5:])
    for row in rows.values():
        assert 0 <= float(row[3]) <= 60

    last = run(*sync_args("filling", 2, run_id, "--redis", server.url, "--delay", "0.05"))
    assert last.returncode == 0, last.stderr
    assert waiter.wait(15) == 0, waiter.stderr
    shown = run("status", "--run", run_id, "--redis", server.url).stdout
    assert status_rows(shown)["filling"][:3] == ["1", "0/?", "released"]
    # Both processes wrote their outcome before they exited: that round is the last.
    last = next(line for line in shown.splitlines() if line.startswith("last released"))
    assert last.startswith("last released round: 'filling' round 0 (first arrival "), last
    assert ", 2 participants, cell bound " in last, last


@pytest.mark.timeout(60)
def test_read_status_reports_each_state(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync]
) -> None:
    """``read_status`` gives, by event name: ``released`` (generation = rounds done,
    nobody waiting), ``broken`` (the timed-out round, 1 of 2 arrived), ``filling`` (with
    the waiting node's id), and ``released`` again once the filling round completes."""
    node = make_sync(0.01)
    assert read_status(client, run_id) == []
    for _ in range(2):
        node.sync("done", 1, 10)
    with pytest.raises(TimeOutError):
        node.sync("broke", 2, 0.2)
    outcome: list[BaseException | None] = []

    def wait() -> None:
        try:
            make_sync(0.01, node_id="the-waiter").sync("wait", 2, 30)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    try:
        wait_until(lambda: waiting_members(client, run_id, "wait"), 15, "the waiting thread")
        statuses = read_status(client, run_id)
        assert [s.event for s in statuses] == ["broke", "done", "wait"]
        broke, done, waiting = statuses
        assert (done.generation, done.state, done.arrived, done.expected, done.waiting) == (
            2,
            "released",
            0,
            None,
            (),
        )
        assert (broke.generation, broke.state, broke.arrived, broke.expected) == (
            0,
            "broken",
            1,
            2,
        )
        assert (waiting.generation, waiting.state, waiting.arrived, waiting.expected) == (
            0,
            "filling",
            1,
            2,
        )
        assert waiting.waiting == ("the-waiter",)
        for status in statuses:
            assert status.age is not None
            assert 0 <= status.age <= 60
        node.sync("wait", 2, 30)
    finally:
        thread.join(30)
    assert outcome == [None]
    [_, _, released] = read_status(client, run_id)
    assert (released.event, released.generation, released.state) == ("wait", 1, "released")
    assert read_status(client, run_id, retention=None)[0].age is None


@pytest.mark.timeout(60)
def test_read_status_lists_only_this_run(client: redis.Redis, run_id: str) -> None:
    """Events of runs whose ids start like this one's (``RUNx``, ``RUN-2``, ``RUN:x``),
    and of this run under another prefix, are not listed; event names with ``:``,
    braces, spaces and glob characters come back as they were given."""
    odd_name = "a:b {c}*?[d] é"
    nodes = [
        ProcSync(client, run_id, 0.01, on_late="proceed"),
        ProcSync(client, f"{run_id}x", 0.01, on_late="proceed"),
        ProcSync(client, f"{run_id}-2", 0.01, on_late="proceed"),
        ProcSync(client, f"{run_id}:x", 0.01, on_late="proceed"),
        ProcSync(client, run_id, 0.01, prefix="other", on_late="proceed"),
    ]
    try:
        nodes[0].sync("mine", 1, 10)
        nodes[0].sync(odd_name, 1, 10)
        for other in nodes[1:]:
            other.sync("theirs", 1, 10)
            other.sync("mine", 1, 10)
        assert [s.event for s in read_status(client, run_id)] == sorted(["mine", odd_name])
        assert [s.event for s in read_status(client, run_id, prefix="other")] == [
            "mine",
            "theirs",
        ]
        assert [s.event for s in read_status(client, f"{run_id}:x")] == ["mine", "theirs"]
    finally:
        for node in nodes:
            node.close()


@pytest.mark.timeout(60)
def test_read_status_after_reset_is_not_released(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync]
) -> None:
    """A broken round that was reset was never released: ``read_status`` must not call
    the event ``released`` ("the last round was released and nobody waits yet"); with
    nobody waiting and the break cleared it is ``idle``."""
    node = make_sync(0.01)
    with pytest.raises(TimeOutError):
        node.sync("again", 2, 0.2)
    assert node.reset("again") == 1
    [status] = read_status(client, run_id)
    assert (status.generation, status.arrived) == (1, 0)
    assert status.state == "idle"


# -- what an operator sees when a cell stands still -------------------------------------------


def server_seconds(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return float(seconds) + micros / 1e6


@pytest.mark.timeout(60)
def test_status_shows_who_waits_who_is_missing_and_for_how_long(
    server: EmbeddedServer, run_id: str, client: redis.Redis, make_sync: Callable[..., ProcSync]
) -> None:
    """With registered members (``member=True``): a filling round shows how long it has
    waited (by the server's clock, since its first arrival), who waits, and the
    registered members missing from it; the member table lists them live."""
    cell_a = make_sync(0.05, member=True, node_id="cell-a")
    cell_b = make_sync(0.05, member=True, node_id="cell-b")
    cell_b.reset("elsewhere")  # its first call registers it
    before = server_seconds(client)
    thread, outcome = start_thread(lambda: cell_a.sync("start", 3, 30))
    wait_until(lambda: waiting_members(client, run_id, "start"), 15, "cell-a waiting")
    done = run("status", "--run", run_id, "--redis", server.url)
    waited_bound = server_seconds(client) - before
    cell_a.reset("start")
    join([thread], 15)
    assert outcome.error is not None
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[-3:] == ["waited", "s", "waiting"]
    row = status_rows(done.stdout)["start"]
    assert row[:3] == ["0", "1/3", "filling"]
    assert 0 <= float(row[4]) <= waited_bound + 0.1
    assert row[5] == "cell-a"
    missing = next(line for line in lines if line.strip().startswith("missing:"))
    assert missing.split() == ["missing:", "cell-b"]
    members = {line.split()[0]: line.split()[1:] for line in lines[lines.index("") + 2 :]}
    assert sorted(members) == ["cell-a", "cell-b"]
    assert all(state == "live" and float(lease) > 0 for state, lease in members.values())


def test_format_status_names_lapsed_and_unnamed_missing_participants() -> None:
    """``format_status``: under a filling round, registered members not waiting are
    listed with ``(lapsed)`` when their registration lapsed; without registered members
    the number missing is given, unnamed; rounds that are not filling get no line."""
    filling = EventStatus("start", 4, "filling", 1, 3, 0.4, ("cell-a",), 12.25)
    released = EventStatus("done", 2, "released", 0, None, 3.0, ())
    members = [
        MemberStatus("cell-a", True, 8.0),
        MemberStatus("cell-b", False, -2.5),
        MemberStatus("cell-c", True, 9.0),
    ]
    lines = format_status("r", [released, filling], members)
    assert lines[1].split() == ["done", "2", "0/?", "released", "3.0", "-"]
    assert lines[2].split() == ["start", "4", "1/3", "filling", "0.4", "12.2", "cell-a"]
    assert lines[3] == "  missing: cell-b (lapsed), cell-c"
    assert lines[-2].split() == ["cell-b", "lapsed", "-2.5"]
    unnamed = format_status("r", [filling], [])
    assert unnamed[2] == "  missing: 2 (not named: no member=True registrations)"
    assert format_status("r", [], []) == ["no events of run 'r'"]


def watch_blocks(stdout: str) -> list[str]:
    """The refreshes of ``status --watch`` in its output (each starts with its header)."""
    return [block for block in stdout.split("\nrun ") if block.strip()]


@pytest.mark.timeout(60)
def test_status_watch_refreshes_until_ctrl_c(
    server: EmbeddedServer,
    run_id: str,
    client: redis.Redis,
    background: Callable[..., Background],
) -> None:
    """``status --watch`` into a file (not a terminal) prints plain repeated blocks, no
    terminal escapes; a change (a participant arriving) shows in a later block; SIGINT
    ends it with exit 130 and one line."""
    watcher = background(*watch_args(run_id, server.url), session=True)
    wait_until(lambda: len(watch_blocks(watcher.stdout)) >= 2 or watcher.poll() is not None, 15)
    assert f"no events of run {run_id!r}" in watch_blocks(watcher.stdout)[0]
    waiter = background(*sync_args("start", 2, run_id, "--redis", server.url, "--timeout", "30"))
    wait_until(lambda: "filling" in watcher.stdout or watcher.poll() is not None, 15, "a refresh")
    assert watcher.poll() is None, watcher.stderr
    os.killpg(watcher.pid, signal.SIGINT)
    assert watcher.wait(20) == ExitCode.INTERRUPTED
    assert watcher.stderr.strip() == "pyprocsync: interrupted"
    assert "\x1b" not in watcher.stdout
    header = watcher.stdout.splitlines()[0]
    assert header.startswith(f"run {run_id!r} on {server.url} at ")
    assert "every 0.2 s" in header
    waiter.kill()


@pytest.mark.timeout(60)
def test_status_watch_on_a_terminal_refreshes_in_place(server: EmbeddedServer, run_id: str) -> None:
    """``status --watch`` with a terminal on stdout starts each refresh by moving the
    cursor home and clearing the screen (ANSI); Ctrl-C (SIGINT) exits 130."""
    terminal, screen_side = os.openpty()
    try:
        process = subprocess.Popen(
            argv(*watch_args(run_id, server.url)),
            stdout=screen_side,
            stderr=subprocess.PIPE,
            env=environment(),
            start_new_session=True,
            preexec_fn=default_sigint,  # noqa: PLW1509  # only resets one signal
        )
    finally:
        os.close(screen_side)
    shown = b""
    try:
        deadline = time.monotonic() + 15
        while shown.count(b"\x1b[H\x1b[2J") < 2 and time.monotonic() < deadline:
            shown += os.read(terminal, 4096)
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        os.close(terminal)
    assert process.returncode == ExitCode.INTERRUPTED
    assert errors.strip() == b"pyprocsync: interrupted"
    assert shown.count(b"\x1b[H\x1b[2J") >= 2, shown
    assert f"no events of run {run_id!r}".encode() in shown


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["soon", "-5"])
def test_read_status_refuses_a_first_arrival_time_it_did_not_write(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync], value: str
) -> None:
    """The first arrival's time (field ``t``) of a filling round is read as written: a
    value pyprocsync does not write raises ProtocolError naming the event."""
    node = make_sync(0.05)
    thread, _outcome = start_thread(lambda: node.sync("held", 2, 30))
    wait_until(lambda: waiting_members(client, run_id, "held"), 15, "the waiting participant")
    assert read_status(client, run_id)[0].waited is not None
    client.hset(event_keys(run_id, "held").state, "t", value)
    with pytest.raises(ProtocolError, match="'held'"):
        read_status(client, run_id)
    node.reset("held")
    join([thread], 15)

"""``pyprocsync sync`` and ``pyprocsync reset``, run for real against a real server.

The exit codes of ``sync`` (timeout 3, too late 4, broken round 5, unreachable server 6,
Ctrl-C 130 with the arrival withdrawn), its defaults (``--timeout inf``, the empty run
id), the interruption of ``sync`` at the moment its arrival is counted (in-process), and
``reset`` breaking or freeing a round. Every subprocess has a hard timeout.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from cli_support import UNREACHABLE, Background, run, status_rows, sync_args, wait_all
from support import (
    assert_one_line_error,
    wait_until,
    waiting_members,
    without_warnings,
)

from pyprocsync import ProcSync, TimeOutError
from pyprocsync.tools.cli import ExitCode
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.status import read_status


@pytest.mark.timeout(60)
def test_sync_two_processes_exit_together(
    server: EmbeddedServer, run_id: str, background: Callable[..., Background]
) -> None:
    """Two ``pyprocsync sync NAME --nodes 2`` processes both exit 0, close together, and
    print nothing."""
    args = sync_args("start", 2, run_id, "--redis", server.url, "--delay", "0.05")
    pair = [background(*args, "--timeout", "20") for _ in range(2)]
    wait_all(pair, 30)
    for command in pair:
        assert command.process.returncode == 0, command.stderr
        assert command.stdout == without_warnings(command.stderr) == ""
    finished = [c.finished_at for c in pair]
    assert None not in finished
    assert abs(finished[0] - finished[1]) < 0.5


@pytest.mark.timeout(60)
def test_sync_takes_the_url_from_the_environment(
    server: EmbeddedServer, run_id: str, background: Callable[..., Background]
) -> None:
    """Without ``--redis``, ``sync`` uses ``$PYPROCSYNC_REDIS_URL`` (here one process runs
    the console script); both exit 0 at the release instant: not before the later one
    started plus the 1 s delay, and close together."""
    args = sync_args("env", 2, run_id, "--delay", "1.0", "--timeout", "20")
    pair = [
        background(*args, url_env=server.url),
        background(*args, url_env=server.url, console=True),
    ]
    wait_all(pair, 30)
    for command in pair:
        assert command.process.returncode == 0, command.stderr
    later_start = max(c.started_at for c in pair)
    finished = [c.finished_at for c in pair]
    assert None not in finished
    assert min(finished) >= later_start + 1.0
    assert abs(finished[0] - finished[1]) < 0.5


@pytest.mark.timeout(60)
def test_sync_timeout_exits_3(server: EmbeddedServer, run_id: str) -> None:
    """A lone participant of a 2-node round with ``--timeout 0.5`` exits 3 (timeout)
    after about half a second, with one line saying it gave up."""
    started = time.monotonic()
    done = run(*sync_args("lonely", 2, run_id, "--redis", server.url, "--timeout", "0.5"))
    elapsed = time.monotonic() - started
    assert done.returncode == ExitCode.TIMEOUT, done.stderr
    assert_one_line_error(done.stderr, "'lonely'", "0.5")
    assert elapsed >= 0.5


@pytest.mark.timeout(60)
def test_sync_broken_round_exits_5(server: EmbeddedServer, run_id: str) -> None:
    """After a participant timed out (exit 3), the round is broken: a later arrival on
    the same name and run exits 5 (broken) at once, not after its own timeout."""
    first = run(*sync_args("fragile", 2, run_id, "--redis", server.url, "--timeout", "0.5"))
    assert first.returncode == ExitCode.TIMEOUT, first.stderr
    started = time.monotonic()
    later = run(*sync_args("fragile", 2, run_id, "--redis", server.url, "--timeout", "20"))
    assert later.returncode == ExitCode.BROKEN, later.stderr
    assert_one_line_error(later.stderr, "'fragile'", "broken", "timeout")
    assert time.monotonic() - started < 15


@pytest.mark.timeout(60)
def test_sync_nodes_mismatch_exits_5_for_both(
    server: EmbeddedServer,
    run_id: str,
    client: redis.Redis,
    background: Callable[..., Background],
) -> None:
    """Participants that disagree on ``--nodes`` both exit 5: the later one with the
    ParameterMismatchError (mapped to "broken"), the waiting one because its round broke
    (reason "mismatch"), long before its timeout."""
    first = background(*sync_args("pick", 2, run_id, "--redis", server.url, "--timeout", "20"))
    wait_until(lambda: waiting_members(client, run_id, "pick"), 15, "the first arrival")
    second = run(*sync_args("pick", 3, run_id, "--redis", server.url, "--timeout", "20"))
    assert second.returncode == ExitCode.BROKEN, second.stderr
    assert_one_line_error(second.stderr, "nodes=2", "nodes=3")
    assert first.wait(15) == ExitCode.BROKEN, first.stderr
    assert_one_line_error(first.stderr, "broken", "mismatch")


@pytest.mark.timeout(60)
def test_sync_too_late_exits_4(
    server: EmbeddedServer,
    run_id: str,
    client: redis.Redis,
    background: Callable[..., Background],
) -> None:
    """A participant that learns the release instant only after it passed exits 4 (too
    late). Made deterministic by stopping the waiting process (SIGSTOP) while the other
    participant arrives and is released, and resuming it 0.5 s later."""
    args = sync_args("late", 2, run_id, "--redis", server.url, "--delay", "0.05")
    waiter = background(*args, "--timeout", "20")
    wait_until(lambda: waiting_members(client, run_id, "late"), 15, "the first arrival")
    os.kill(waiter.pid, signal.SIGSTOP)
    try:
        last = run(*args, "--timeout", "20")
        assert last.returncode == 0, last.stderr
        time.sleep(0.5)  # it stays stopped well past the release instant
    finally:
        os.kill(waiter.pid, signal.SIGCONT)
    assert waiter.wait(15) == ExitCode.TOO_LATE, waiter.stderr
    assert_one_line_error(waiter.stderr, "'late'", "increase the delay")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "url", [UNREACHABLE, "redis://:hunter2-secret@127.0.0.1:1/0"], ids=["plain", "password"]
)
def test_sync_unreachable_server_exits_6(url: str) -> None:
    """An unreachable server (``$PYPROCSYNC_REDIS_URL``, which may carry the password)
    makes ``sync`` exit 6 (connection) promptly, with one line naming the URL and never
    its password."""
    started = time.monotonic()
    done = run("sync", "x", "--nodes", "2", "--timeout", "20", url_env=url)
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    line = assert_one_line_error(done.stderr, "127.0.0.1:1")
    assert "hunter2" not in done.stderr + done.stdout
    if "@" in url:
        assert "***" in line
    assert time.monotonic() - started < 15


@pytest.mark.timeout(60)
def test_sync_ctrl_c_exits_130_and_withdraws(
    server: EmbeddedServer,
    run_id: str,
    client: redis.Redis,
    background: Callable[..., Background],
) -> None:
    """Ctrl-C (SIGINT) on a waiting ``sync`` exits 130 with a one-line note and no
    traceback, and withdraws its arrival: the round is again empty, not broken."""
    waiter = background(*sync_args("cancel", 2, run_id, "--redis", server.url))
    wait_until(lambda: waiting_members(client, run_id, "cancel"), 15, "the arrival")
    # Let it take in the reply of its arrival and wait (an interruption before that is
    # the case of test_interrupt_as_the_arrival_returns_withdraws_it).
    time.sleep(0.3)  # no outside sign tells that it read the reply
    os.kill(waiter.pid, signal.SIGINT)
    assert waiter.wait(15) == ExitCode.INTERRUPTED, waiter.stderr
    assert "Traceback" not in waiter.stderr
    assert without_warnings(waiter.stderr).strip() == "pyprocsync: interrupted"
    [status] = read_status(client, run_id)
    assert (status.event, status.arrived, status.waiting) == ("cancel", 0, ())
    assert status.state != "broken"


def interrupt_after_first_script(node: ProcSync) -> Callable[[], bool]:
    """Make ``node`` raise KeyboardInterrupt once, right after its first script ran on the
    server and its reply was read (as Ctrl-C does when it lands while the script's reply
    is on its way). Returns a function telling whether that happened."""
    call = node._call
    fired: list[bool] = []

    def interrupted(op: Any) -> object:
        reply = call(op)
        if not fired:
            fired.append(True)
            raise KeyboardInterrupt
        return reply

    node._call = interrupted  # type: ignore[method-assign]
    return lambda: bool(fired)


@pytest.mark.timeout(60)
def test_interrupt_as_the_arrival_returns_withdraws_it(
    client: redis.Redis, run_id: str, make_sync: Callable[..., ProcSync]
) -> None:
    """Ctrl-C that lands while the reply of the arrival is on its way (the arrival is
    counted in Redis, the participant has not yet started waiting) must withdraw the
    arrival too, as ``sync`` documents ("interrupted before the round is released, its
    arrival is withdrawn"). The SIGINT test above can hit this window; here the
    KeyboardInterrupt is raised right after the first script call of ``sync`` (the
    arrival), deterministically. Then a single other participant of the 2-node round
    must time out, not be released together with the participant that is gone."""
    node = make_sync(0.01, node_id="interrupted")
    fired = interrupt_after_first_script(node)
    with pytest.raises(KeyboardInterrupt):
        node.sync("window", 2, 10)
    assert fired(), "sync ran no script"
    with pytest.raises(TimeOutError):
        make_sync(0.01).sync("window", 2, 0.5)
    [status] = read_status(client, run_id)
    assert (status.event, status.generation, status.state) == ("window", 0, "broken")
    assert (status.arrived, status.expected) == (1, 2)  # the one that timed out


# -- option defaults, --timeout inf, URL errors -----------------------------------------------


@pytest.mark.timeout(60)
def test_sync_timeout_inf_means_no_limit(server: EmbeddedServer, run_id: str) -> None:
    """``sync --timeout inf`` is accepted, as the library accepts ``timeout=inf``: the
    round is released normally (exit 0)."""
    done = run(
        *sync_args("x", 1, run_id, "--redis", server.url, "--delay", "0", "--timeout", "inf")
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == without_warnings(done.stderr) == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["sync x --nodes 1", "status", "reset x", "clock"])
def test_run_defaults_to_the_empty_run_id(
    fresh_server: Callable[..., EmbeddedServer], command: str
) -> None:
    """``--run`` defaults to ``""`` (the library's default) for ``sync``, ``status`` and
    ``reset``: a round of a library participant in run ``""`` is seen and reset by
    commands given no ``--run`` (a server of the test's own: nobody else uses run "")."""
    own = fresh_server()
    with ProcSync.from_url(own.url, delay=0.0) as node:
        node.sync("x", 1, 10)
        done = run(*command.split(), "--redis", own.url)
        assert done.returncode == 0, done.stderr
        if command == "status":
            assert status_rows(done.stdout)["x"][:3] == ["1", "0/?", "released"]
        elif command.startswith("reset"):
            assert done.stdout.strip() == "1"
        assert node.sync("x", 1, 10).generation == (2 if command.startswith("sync") else 1)


# -- reset ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_reset_breaks_the_waiting_round_and_prints_the_next_generation(
    server: EmbeddedServer, run_id: str, client: redis.Redis, background: Callable[..., Background]
) -> None:
    """``reset NAME --run RUN`` while a ``sync`` waits: the waiter exits 5 (broken), the
    command prints the generation the next arrival joins and exits 0, and the next
    rounds run; resetting the idle point prints the same generation."""
    waiter = background(*sync_args("gate", 2, run_id, "--redis", server.url, "--timeout", "30"))
    wait_until(lambda: waiting_members(client, run_id, "gate"), 15, "the waiting process")
    done = run("reset", "gate", "--run", run_id, "--redis", server.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "1\n"
    assert without_warnings(done.stderr) == ""
    assert waiter.wait(15) == ExitCode.BROKEN
    assert "reset" in waiter.stderr
    shown = status_rows(run("status", "--run", run_id, "--redis", server.url).stdout)
    assert shown["gate"][:3] == ["1", "0/?", "idle"]
    again = run("reset", "gate", "--run", run_id, "--redis", server.url)
    assert again.stdout == "1\n", again.stderr
    pair = [
        background(*sync_args("gate", 2, run_id, "--redis", server.url, "--delay", "0.05"))
        for _ in range(2)
    ]
    wait_all(pair, 30)
    assert [c.process.returncode for c in pair] == [0, 0], [c.stderr for c in pair]


@pytest.mark.timeout(60)
def test_reset_makes_a_timed_out_round_usable(server: EmbeddedServer, run_id: str) -> None:
    """The shell script of the issue: after a timeout the point answers exit 5 until it
    is reset; ``reset`` exits 0 and the next ``sync`` succeeds at once."""
    args = sync_args("loaded", 2, run_id, "--redis", server.url, "--delay", "0")
    assert run(*args, "--timeout", "0.3").returncode == ExitCode.TIMEOUT
    assert run(*args, "--timeout", "5").returncode == ExitCode.BROKEN
    done = run("reset", "loaded", "--run", run_id, "--redis", server.url)
    assert (done.returncode, done.stdout) == (0, "1\n"), done.stderr
    solo = sync_args("loaded", 1, run_id, "--redis", server.url, "--delay", "0", "--timeout", "5")
    assert run(*solo).returncode == 0


@pytest.mark.timeout(60)
def test_reset_unreachable_server_exits_6() -> None:
    """``reset`` against an unreachable server exits 6 with one line naming the URL."""
    done = run("reset", "x", "--redis", UNREACHABLE)
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    assert_one_line_error(done.stderr, UNREACHABLE)

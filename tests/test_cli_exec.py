"""``pyprocsync sync ... -- COMMAND`` and the end of ``pyprocsync sync`` at the instant,
run for real (issue 17): processes of the command against the session server.

COMMAND becomes the process (same pid, its exit status and signals pass through), runs
only if the round was released, and never before the release instant; a COMMAND that
cannot be found fails before arriving. With at least
:data:`~pyprocsync.tools.handoff.HANDOFF_MIN_NS` left the wait happens in the hand-off
interpreter (delay 0.3 s), with less in the command's own process (delay 0.05 s): both
paths are run. Then the library seam the command is built on,
:func:`~pyprocsync.shells.blocking.sync_until_instant`, in-process. Durations asserted are
generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from cli_support import Background, run, sync_args, wait_all
from support import assert_one_line_error, run_command, wait_until, without_warnings

from pyprocsync import ProcSync, ProcSyncError, SyncResult, TimeOutError
from pyprocsync.core.keys import EventKeys
from pyprocsync.core.ops import AtInstant
from pyprocsync.core.rounds import Released, parse_outcome
from pyprocsync.shells.blocking import sync_until_instant
from pyprocsync.tools import cli, handoff
from pyprocsync.tools.cli import ExitCode
from pyprocsync.tools.credentials import PASSWORD_ENV, URL_ENV
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.status import read_status

#: A COMMAND that prints its pid and its wall clock when it starts.
STAMP = [sys.executable, "-c", "import os, time; print(os.getpid(), time.time_ns())"]

#: Lead times that wait in the hand-off interpreter and in the command's own process.
DELAYS = pytest.mark.parametrize("delay", ["0.3", "0.05"], ids=["hand-off", "in-process"])


def release_ns(client: redis.Redis, run_id: str, name: str) -> int:
    """The stored release instant of the first round of ``name``, epoch ns."""
    stored = client.hget(EventKeys.of("pyprocsync", run_id, name).state, "o0")
    assert stored is not None, f"round {name!r} has no outcome"
    outcome = parse_outcome(stored.decode())
    assert isinstance(outcome, Released), outcome
    return outcome.at_us * 1000


@pytest.mark.timeout(90)
@DELAYS
def test_commands_run_together_in_the_same_process_after_the_instant(
    server: EmbeddedServer,
    run_id: str,
    client: redis.Redis,
    background: Callable[..., Background],
    delay: str,
) -> None:
    """Three ``sync ... -- COMMAND`` processes: each exits 0 with COMMAND's output, which
    was printed by the process the test started (same pid), not before the release
    instant, and the three within half a second of each other."""
    args = sync_args("go", 3, run_id, "--redis", server.url, "--delay", delay, "--timeout", "30")
    trio = [background(*args, "--", *STAMP) for _ in range(3)]
    wait_all(trio, 60)
    at_ns = release_ns(client, run_id, "go")
    started = []
    for command in trio:
        assert command.process.returncode == 0, command.stderr
        assert without_warnings(command.stderr) == ""
        pid, now_ns = (int(word) for word in command.stdout.split())
        assert pid == command.pid
        assert now_ns >= at_ns
        started.append(now_ns)
    assert max(started) - min(started) < 0.5e9


@pytest.mark.timeout(60)
@DELAYS
@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 7", 7), ("exit 0", 0), ("kill -TERM $$", -signal.SIGTERM)],
    ids=["exit-7", "exit-0", "sigterm"],
)
def test_exit_status_and_signals_pass_through(
    server: EmbeddedServer, run_id: str, delay: str, script: str, status: int
) -> None:
    """COMMAND's exit status is the process's status; a COMMAND killed by a signal shows
    as killed by that signal to the parent."""
    args = sync_args("status", 1, run_id, "--redis", server.url, "--delay", delay)
    done = run(*args, "--", "sh", "-c", script)
    assert done.returncode == status, done.stderr
    assert without_warnings(done.stderr) == ""


def signal_mask(status: str, field: str) -> int:
    """The mask ``field`` (``SigIgn``, ``SigBlk``...) of a ``/proc/PID/status`` text."""
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    return int(line.split()[1], 16)


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
@DELAYS
def test_command_gets_the_signals_a_shell_child_has(
    server: EmbeddedServer, run_id: str, delay: str
) -> None:
    """COMMAND does not inherit the SIGPIPE and SIGXFSZ that Python ignores (a pipeline
    reader that goes away stops it, as it would a shell's child), nor the SIGINT the
    hand-off blocks while it starts."""
    args = sync_args("signals", 1, run_id, "--redis", server.url, "--delay", delay)
    done = run(*args, "--", "cat", "/proc/self/status")
    assert done.returncode == 0, done.stderr
    ignored, blocked = (signal_mask(done.stdout, field) for field in ("SigIgn", "SigBlk"))
    for number in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (number - 1)), done.stdout
    assert not blocked & (1 << (signal.SIGINT - 1)), done.stdout


@pytest.mark.timeout(60)
def test_arguments_after_the_separator_belong_to_the_command(
    server: EmbeddedServer, run_id: str
) -> None:
    """Words after ``--`` go to COMMAND untouched, also those that look like options of
    ``sync``; the options of ``sync`` may come in any order after NAME."""
    args = ["sync", "words", "--redis", server.url, "--delay", "0.2", "--nodes", "1"]
    code = "import sys; print(sys.argv[1:])"
    done = run(*args, "--run", run_id, "--", sys.executable, "-c", code, "--nodes", "--", "x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['--nodes', '--', 'x']"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["sh", "-c", "true"], "unrecognized arguments"),
        (["--"], "nothing after --"),
    ],
    ids=["command-without-separator", "separator-without-command"],
)
def test_command_line_mistakes_are_usage_errors(
    server: EmbeddedServer, run_id: str, client: redis.Redis, extra: list[str], needle: str
) -> None:
    """A COMMAND needs ``--`` before it, and ``--`` needs a COMMAND after it: otherwise
    exit 2 with one error line, without arriving."""
    done = run(*sync_args("typo", 1, run_id, "--redis", server.url), *extra)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Traceback" not in done.stderr
    assert needle in done.stderr.strip().splitlines()[-1], done.stderr
    assert read_status(client, run_id) == []


@pytest.mark.timeout(60)
def test_name_after_the_separator_is_not_a_name(server: EmbeddedServer, run_id: str) -> None:
    """Everything after ``--`` is COMMAND: a NAME put there is missing (exit 2)."""
    done = run("sync", "--nodes", "1", "--redis", server.url, "--run", run_id, "--", "late")
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "name" in done.stderr.strip().splitlines()[-1], done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["not-found", "not-executable"])
def test_unusable_command_fails_before_arriving(
    server: EmbeddedServer, run_id: str, client: redis.Redis, tmp_path: Path, kind: str
) -> None:
    """A COMMAND that is not found exits 127, a file that cannot be executed 126, each
    with one line naming it, at once and without arriving (a typo breaks no round)."""
    if kind == "not-found":
        name, code, needle = "no-such-command-pyprocsync", ExitCode.NOT_FOUND, "not found"
    else:
        path = tmp_path / "plain.txt"
        path.write_text("not a program\n")
        name, code, needle = str(path), ExitCode.NOT_EXECUTABLE, "not an executable"
    args = sync_args("typo", 2, run_id, "--redis", server.url, "--timeout", "20")
    started = time.monotonic()
    done = run(*args, "--", name)
    assert done.returncode == code, done.stderr
    assert_one_line_error(done.stderr, name, needle)
    assert time.monotonic() - started < 15
    assert read_status(client, run_id) == []


@pytest.mark.timeout(60)
@DELAYS
def test_command_that_fails_to_exec_at_the_instant(
    server: EmbeddedServer, run_id: str, tmp_path: Path, delay: str
) -> None:
    """An executable file in no format the kernel runs passes the check before arriving;
    its exec at the instant fails: exit 126 with one line giving the reason."""
    path = tmp_path / "garbage"
    path.write_bytes(b"\x00\x01 not a program\n")
    path.chmod(0o755)
    done = run(
        *sync_args("bad", 1, run_id, "--redis", server.url, "--delay", delay), "--", str(path)
    )
    assert done.returncode == ExitCode.NOT_EXECUTABLE, done.stderr
    assert_one_line_error(done.stderr, str(path), "cannot execute")


@pytest.mark.timeout(60)
def test_command_does_not_run_on_timeout_or_broken_round(
    server: EmbeddedServer, run_id: str, tmp_path: Path
) -> None:
    """A participant that times out exits 3, a later one finding the round broken exits
    5: neither runs its COMMAND."""
    marker = tmp_path / "ran"
    command = ["--", "sh", "-c", f"touch {shlex.quote(str(marker))}"]
    args = sync_args("lonely", 2, run_id, "--redis", server.url)
    first = run(*args, "--timeout", "0.5", *command)
    assert first.returncode == ExitCode.TIMEOUT, first.stderr
    later = run(*args, "--timeout", "20", *command)
    assert later.returncode == ExitCode.BROKEN, later.stderr
    assert not marker.exists()


@pytest.mark.timeout(60)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_ctrl_c_while_waiting_for_the_instant(
    server: EmbeddedServer, run_id: str, tmp_path: Path, background: Callable[..., Background]
) -> None:
    """Ctrl-C after the release but before the instant (the wait in the hand-off
    interpreter) exits 130 with the usual note; COMMAND does not run. SIGINT is sent as
    soon as the hand-off's interpreter shows, while it may still be starting."""
    marker = tmp_path / "ran"
    args = sync_args("slow", 1, run_id, "--redis", server.url, "--delay", "30")
    waiter = background(*args, "--", "sh", "-c", f"touch {shlex.quote(str(marker))}")
    cmdline = Path(f"/proc/{waiter.pid}/cmdline")
    wait_until(lambda: b"handoff.py" in cmdline.read_bytes(), 20, "the hand-off")
    os.kill(waiter.pid, signal.SIGINT)
    assert waiter.wait(15) == ExitCode.INTERRUPTED, waiter.stderr
    assert without_warnings(waiter.stderr).strip() == "pyprocsync: interrupted"
    assert not marker.exists()


@pytest.mark.timeout(60)
def test_handoff_runs_without_pyprocsync() -> None:
    """The hand-off file runs in an interpreter without ``site`` (so without pyprocsync
    installed) and, given an instant already past and no COMMAND, exits 0."""
    argv = handoff.handoff_argv(0, 0, False, None, [])
    assert argv is not None
    assert argv[1:3] == ["-I", "-S"]
    done = run_command(argv, env={})
    assert (done.returncode, without_warnings(done.stderr)) == (0, "")


@pytest.mark.parametrize("missing", ["frozen", "executable"])
def test_no_handoff_without_an_interpreter(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    """A frozen application's program, or no known interpreter, cannot run the hand-off
    file: there is no hand-off command line (the wait stays in the first process)."""
    if missing == "frozen":
        monkeypatch.setattr(sys, "frozen", True, raising=False)
    else:
        monkeypatch.setattr(sys, "executable", "")
    assert handoff.handoff_argv(0, 0, False, "/bin/true", ["true"]) is None


# -- the library seam -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("redis://:pw@h:6379/0", False),
        ("redis://h:6379/0?password=pw", False),
        ("redis://h/0", True),
    ],
)
def test_command_does_not_inherit_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str, kept: bool
) -> None:
    """What the hand-off and COMMAND inherit holds no password: ``$PYPROCSYNC_PASSWORD``
    goes, and ``$PYPROCSYNC_REDIS_URL`` goes when it holds one (else it stays)."""
    monkeypatch.setenv(PASSWORD_ENV, "hunter2")
    monkeypatch.setenv(URL_ENV, url)
    cli._forget_secrets()
    assert PASSWORD_ENV not in os.environ
    assert os.environ.get(URL_ENV) == (url if kept else None)


def listener_ended(node: ProcSync) -> bool:
    """Whether the thread of ``node``'s listener has ended (or never started)."""
    thread = node._listener._thread
    return thread is None or not thread.is_alive()


@pytest.mark.timeout(60)
def test_sync_until_instant_leaves_the_wait_and_nothing_else(
    server: EmbeddedServer, run_id: str
) -> None:
    """With a lead time, the result is due at the instant: the node is closed, its
    listener thread has ended, and the wait's target is the release instant; finishing
    it gives the round's result. Without a lead time the result comes at once. (The
    lead is long so that a loaded machine ends the thread within it: it ends at once
    when the machine is not.)"""
    node = ProcSync.from_url(server.url, run_id, 3.0)
    due = sync_until_instant(node, "seam", 1)
    assert isinstance(due, AtInstant)
    assert listener_ended(node)
    with pytest.raises(ProcSyncError, match="closed"):
        node.sync("seam", 1)
    assert time.time_ns() < due.wait.at_ns  # the wait was left to the caller
    result = due.finish()  # finished before the instant: late_by comes out negative
    assert isinstance(result, SyncResult)
    assert (result.event, result.nodes) == ("seam", 1)
    assert result.late_by < 0
    assert due.wait.at_ns == round(result.release_at * 1e6) * 1000

    instant = sync_until_instant(ProcSync.from_url(server.url, run_id, 0), "now", 1)
    assert isinstance(instant, SyncResult)
    assert instant.event == "now"


@pytest.mark.timeout(60)
def test_sync_until_instant_closes_the_node_when_it_raises(
    server: EmbeddedServer, run_id: str
) -> None:
    """A timeout propagates as from ``sync``, and the node is closed all the same."""
    node = ProcSync.from_url(server.url, run_id, 0.1)
    with pytest.raises(TimeOutError):
        sync_until_instant(node, "alone", 2, 0.3)
    with pytest.raises(ProcSyncError, match="closed"):
        node.sync("alone", 1)
    wait_until(lambda: listener_ended(node), 10, "the listener thread to end")

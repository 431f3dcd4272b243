"""The ``pyprocsync`` command, run for real: ``python -m pyprocsync ...`` (and once the
console script) as subprocesses, against real servers.

Each test pins one documented behaviour of the command line (issue 3, sections "CLI" and
"Bad input"): help, bad input (exit 2, one line, no traceback), the exit codes of
``sync``, the foreground ``server``, ``status``, ``bench`` and its cleanup after success
and Ctrl-C. Beside them, in-process tests of what the commands are built on:
``read_status``, ``format_table``, the statistics, and the interruption of ``sync`` at
the moment its arrival is counted. Every subprocess has a hard timeout; the durations
asserted are generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from support import (
    assert_one_line_error,
    children,
    command_line,
    default_sigint,
    event_keys,
    ignores_sigint,
    join,
    kill_group,
    listening,
    process_group,
    run_command,
    server_pids,
    start_thread,
    wait_gone,
    wait_until,
    waiting_members,
    watch_args,
)

import pyprocsync
from pyprocsync import ProcSync, ProtocolError, TimeOutError, TooLateError
from pyprocsync.tools.bench import BenchConfig, _figures, _NodeRecord, _warm_up, format_table
from pyprocsync.tools.cli import URL_ENV, ExitCode
from pyprocsync.tools.credentials import PASSWORD_ENV, url_problem
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.stats import percentile, summary
from pyprocsync.tools.status import EventStatus, MemberStatus, format_status, read_status

#: The console script installed next to the interpreter running the tests.
CONSOLE_SCRIPT = Path(sys.executable).with_name("pyprocsync")
#: Nothing listens on port 1: connections are refused at once.
UNREACHABLE = "redis://127.0.0.1:1/0"
#: Hard limit for one short command (start-up, parse, one round trip).
QUICK = 30.0
COMMANDS = ("bench", "sync", "server", "status", "reset", "clock")


# -- helpers ---------------------------------------------------------------------------------


def argv(*args: str, console: bool = False) -> list[str]:
    """The command line of ``pyprocsync args``: ``python -m`` or the console script."""
    head = [str(CONSOLE_SCRIPT)] if console else [sys.executable, "-m", "pyprocsync"]
    return [*head, *args]


def environment(url: str | None = None) -> dict[str, str]:
    """This process's environment, with ``$PYPROCSYNC_REDIS_URL`` set to ``url`` or unset
    (and no ``$PYPROCSYNC_PASSWORD``)."""
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, PASSWORD_ENV)}
    if url is not None:
        env[URL_ENV] = url
    return env


def run(
    *args: str, timeout: float = QUICK, url_env: str | None = None, console: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``pyprocsync args`` to its end (killed after ``timeout`` s, failing the test)."""
    return run_command(argv(*args, console=console), env=environment(url_env), timeout=timeout)


def assert_usage_error(stderr: str, command: str | None, *needles: str) -> str:
    """``stderr`` is argparse's usage block and then one error line holding every needle.

    No traceback; the usage lines all belong to the usage block of ``command``.
    """
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    prog = "pyprocsync" if command is None else f"pyprocsync {command}"
    assert lines[0].startswith(f"usage: {prog} "), stderr
    assert all(line.startswith(" ") for line in lines[1:-1]), stderr
    assert lines[-1].startswith(f"{prog}: error: "), stderr
    for needle in needles:
        assert needle in lines[-1], stderr
    return lines[-1]


class Background:
    """A ``pyprocsync`` command running in the background; output goes to files.

    ``session=True`` starts it in a new session (its own process group, which the test
    can signal as a terminal's Ctrl-C does). SIGINT has its default disposition in it.
    """

    def __init__(
        self,
        directory: Path,
        *args: str,
        url_env: str | None = None,
        console: bool = False,
        session: bool = False,
    ) -> None:
        number = len(list(directory.glob("bg*.out")))
        self.stdout_path = directory / f"bg{number}.out"
        self.stderr_path = directory / f"bg{number}.err"
        self.session = session
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                argv(*args, console=console),
                stdout=out,
                stderr=err,
                env=environment(url_env),
                start_new_session=session,
                preexec_fn=default_sigint,  # noqa: PLW1509  # only resets one signal
            )
        self.started_at = time.monotonic()
        self.finished_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def poll(self) -> int | None:
        code = self.process.poll()
        if code is not None and self.finished_at is None:
            self.finished_at = time.monotonic()
        return code

    def wait(self, timeout: float) -> int:
        """Wait for the exit status; kill the command and fail after ``timeout`` s."""
        wait_all([self], timeout)
        return self.process.returncode

    def kill(self) -> None:
        """Kill the command (and its group, if it has one of its own); reap it."""
        if self.session:
            kill_group(self.pid)
        elif self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def wait_all(commands: Sequence[Background], timeout: float) -> None:
    """Wait for ``commands`` to exit, noting when each did (polled every millisecond).

    After ``timeout`` s every command is killed and the test fails.
    """
    deadline = time.monotonic() + timeout
    while any(command.poll() is None for command in commands):
        if time.monotonic() > deadline:
            for command in commands:
                command.kill()
            details = "\n".join(f"{c.process.args}: {c.stderr}" for c in commands)
            pytest.fail(f"commands still running after {timeout} s\n{details}")
        time.sleep(0.001)


@pytest.fixture
def background(tmp_path: Path) -> Iterator[Callable[..., Background]]:
    """Factory of :class:`Background` commands; none outlives the test."""
    started: list[Background] = []

    def start(*args: str, **options: Any) -> Background:
        command = Background(tmp_path, *args, **options)
        started.append(command)
        return command

    yield start
    for command in started:
        if command.process.poll() is None:
            os.kill(command.pid, signal.SIGCONT)  # a stopped process cannot die of SIGTERM
        command.kill()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_bindable(port: int) -> bool:
    """Whether a new listener could bind 127.0.0.1:``port`` (TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def server_child(command: Background, timeout: float = 15.0) -> int:
    """The valkey/redis-server child of ``command`` (waits until it exists)."""
    found: list[int] = []

    def look() -> bool:
        found[:] = sorted(children(command.pid) & server_pids())
        return bool(found) or command.poll() is not None

    wait_until(look, timeout, "the server child process")
    assert found, f"no server child; exit {command.poll()}: {command.stderr}"
    return found[0]


def status_rows(stdout: str) -> dict[str, list[str]]:
    """The event table of ``pyprocsync status`` as {event: [generation, arrived/expected,
    state, age, waited, waiting...]} (event names in these tests hold no spaces; the
    indented ``missing:`` lines and the member table are left out)."""
    lines = stdout.strip().split("\n\n")[0].splitlines()
    assert lines[0].split() == [
        "event",
        "generation",
        "arrived",
        "state",
        "age",
        "s",
        "waited",
        "s",
        "waiting",
    ]
    return {line.split()[0]: line.split()[1:] for line in lines[1:] if not line[0].isspace()}


# -- help and version -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_top_level_help_lists_every_command() -> None:
    """``pyprocsync --help`` exits 0 and names every command."""
    done = run("--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: pyprocsync ")
    for command in COMMANDS:
        assert command in done.stdout
    assert done.stderr == ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("bench", ["--redis", "--nodes", "--rounds", "--delay", "--think", "--json", "--plot"]),
        ("sync", ["--nodes", "--run", "--timeout", "--delay", "--redis"]),
        ("server", ["--bind", "--port", "--password-file", "--ask-password"]),
        ("status", ["--run", "--watch", "--interval", "--redis", "--password-file"]),
        ("reset", ["--run", "--redis", "--password-file", "--ask-password"]),
        ("clock", ["--samples", "--max-offset", "--redis", "--password-file"]),
    ],
)
def test_subcommand_help(command: str, options: list[str]) -> None:
    """``pyprocsync COMMAND --help`` exits 0 with that command's usage and its options
    (and ``sync --help`` documents the exit codes); ``--password`` is not offered."""
    done = run(command, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: pyprocsync {command} ")
    for option in options:
        assert option in done.stdout
    assert "--password " not in done.stdout
    assert "PYPROCSYNC_PASSWORD" in done.stdout
    assert URL_ENV in done.stdout or command == "server"
    if command == "sync":
        text = " ".join(done.stdout.split())
        for code in ("2 usage", "3 timeout", "4 too late", "5 broken", "6 connection"):
            assert code in text
    assert done.stderr == ""


@pytest.mark.timeout(60)
def test_version_from_module_and_console_script() -> None:
    """``--version`` prints ``pyprocsync <version>`` and exits 0, both through
    ``python -m pyprocsync`` and through the installed console script."""
    assert CONSOLE_SCRIPT.exists(), f"no console script at {CONSOLE_SCRIPT}"
    for console in (False, True):
        done = run("--version", console=console)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"pyprocsync {pyprocsync.__version__}"


# -- bad input ------------------------------------------------------------------------------

#: ``sync`` and ``bench`` cases name an unreachable server: if a bad value were accepted,
#: the command would fail with exit 6 at once instead of hanging.
BAD_INPUT = [
    # argparse reports unknown arguments of a subcommand with the top-level usage.
    (["sync", "x", "--nodes", "1", "--redis", UNREACHABLE, "--bogus"], None, "--bogus"),
    (["bench", "--redis", UNREACHABLE, "--bogus"], None, "--bogus"),
    (["--bogus", "status", "--run", "r"], None, "--bogus"),
    (["sync", "x", "--nodes", "0", "--redis", UNREACHABLE], "sync", "--nodes"),
    (["sync", "x", "--nodes", "two", "--redis", UNREACHABLE], "sync", "--nodes"),
    (["bench", "--nodes", "0", "--redis", UNREACHABLE], "bench", "--nodes"),
    (["bench", "--rounds", "x", "--redis", UNREACHABLE], "bench", "--rounds"),
    (["sync", "x", "--nodes", "1", "--delay", "-1", "--redis", UNREACHABLE], "sync", "--delay"),
    (["sync", "x", "--nodes", "1", "--delay", "nan", "--redis", UNREACHABLE], "sync", "--delay"),
    (["sync", "x", "--nodes", "1", "--delay", "inf", "--redis", UNREACHABLE], "sync", "--delay"),
    (["sync", "x", "--nodes", "1", "--timeout", "0", "--redis", UNREACHABLE], "sync", "--timeout"),
    (
        ["sync", "x", "--nodes", "1", "--timeout", "nan", "--redis", UNREACHABLE],
        "sync",
        "--timeout",
    ),
    (
        ["sync", "x", "--nodes", "1", "--timeout", "-inf", "--redis", UNREACHABLE],
        "sync",
        "--timeout",
    ),
    (["bench", "--think", "-0.5", "--redis", UNREACHABLE], "bench", "--think"),
    (["server", "--port", "x"], "server", "--port"),
    (["server", "--port", "-1"], "server", "--port"),
    (["sync", "--nodes", "2", "--redis", UNREACHABLE], "sync", "name"),
    (["status", "--watch", "--interval", "0", "--redis", UNREACHABLE], "status", "--interval"),
    (["status", "--watch", "--interval", "0.01", "--redis", UNREACHABLE], "status", "--interval"),
    (["reset", "--redis", UNREACHABLE], "reset", "name"),
    (["status", "--password-file", "f", "--ask-password"], "status", "--ask-password"),
    (["frobnicate"], None, "frobnicate"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "command", "names"), BAD_INPUT, ids=[" ".join(case[0]) for case in BAD_INPUT]
)
def test_bad_input_is_a_usage_error(args: list[str], command: str | None, names: str) -> None:
    """Unknown flags, missing arguments and bad numbers exit 2 with one error line naming
    the offending option or value, after the usage, without a traceback."""
    done = run(*args)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert_usage_error(done.stderr, command, names)
    assert done.stdout == ""


@pytest.mark.timeout(60)
def test_port_out_of_range_is_a_usage_error() -> None:
    """``server --port 70000`` is a bad number like ``--port -1``: exit 2 with an error
    naming ``--port``, not an attempt to start a server that fails with an opaque
    message (the issue: bad numbers give "a one-line error naming the problem")."""
    before = server_pids()
    done = run("server", "--port", "70000")
    assert "Traceback" not in done.stderr
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "--port" in done.stderr.strip().splitlines()[-1], done.stderr
    assert server_pids() <= before


# -- sync -----------------------------------------------------------------------------------


def sync_args(name: str, nodes: int, run_id: str, *options: str) -> list[str]:
    return ["sync", name, "--nodes", str(nodes), "--run", run_id, *options]


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
        assert command.stdout == command.stderr == ""
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
@pytest.mark.parametrize("command", ["sync", "status"])
def test_no_server_given_is_a_usage_error(command: str) -> None:
    """``sync`` and ``status`` without ``--redis`` or ``$PYPROCSYNC_REDIS_URL`` exit 2 with
    one line naming both ways to give a server."""
    args = ["sync", "x", "--nodes", "1"] if command == "sync" else ["status", "--run", "r"]
    done = run(*args)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert_one_line_error(done.stderr, "--redis", URL_ENV)


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
        time.sleep(0.5)
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
    time.sleep(0.3)
    os.kill(waiter.pid, signal.SIGINT)
    assert waiter.wait(15) == ExitCode.INTERRUPTED, waiter.stderr
    assert "Traceback" not in waiter.stderr
    assert waiter.stderr.strip() == "pyprocsync: interrupted"
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


# -- server ---------------------------------------------------------------------------------


def wait_listening(command: Background, port: int) -> None:
    """Wait until the foreground server announced itself and accepts connections."""
    wait_until(
        lambda: ("listening" in command.stdout and listening(port)) or command.poll() is not None,
        15,
        "the server to listen",
    )
    assert command.poll() is None, f"server exited {command.poll()}: {command.stderr}"


@pytest.mark.timeout(60)
def test_server_runs_in_foreground_until_ctrl_c(background: Callable[..., Background]) -> None:
    """``pyprocsync server --port P`` serves clients on P; SIGINT stops it cleanly: exit
    130, no traceback, its server process gone and the port free again."""
    port = free_port()
    command = background("server", "--port", str(port))
    wait_listening(command, port)
    assert f"127.0.0.1:{port}" in command.stdout
    assert "only this machine can connect" in command.stdout
    child = server_child(command)
    with redis.Redis(port=port, socket_timeout=5) as probe:
        assert probe.ping()
    os.kill(command.pid, signal.SIGINT)
    assert command.wait(20) == ExitCode.INTERRUPTED, command.stderr
    assert "Traceback" not in command.stderr
    assert command.stderr.strip() == "pyprocsync: interrupted"
    assert not wait_gone({child}), "the server process outlived the command"
    assert not listening(port)
    assert port_bindable(port)


@pytest.mark.timeout(60)
def test_server_refuses_public_bind_without_password() -> None:
    """``server --bind 0.0.0.0`` without a password exits 2 with one line naming the
    ways to give one, and starts nothing."""
    port = free_port()
    before = server_pids()
    done = run("server", "--bind", "0.0.0.0", "--port", str(port))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert_one_line_error(
        done.stderr, "0.0.0.0", "$PYPROCSYNC_PASSWORD", "--password-file", "--ask-password"
    )
    assert not listening(port)
    assert server_pids() <= before


@pytest.mark.timeout(60)
def test_server_port_in_use_exits_6(server: EmbeddedServer) -> None:
    """``server --port P`` with P taken (by the session server) exits 6 with one line
    naming the port, no traceback, leaves no server behind and the other one intact."""
    before = server_pids()
    done = run("server", "--port", str(server.port))
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    assert_one_line_error(done.stderr, str(server.port))
    assert not wait_gone(server_pids() - before)
    with server.client(socket_timeout=5) as probe:
        assert probe.ping()


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
    ``pyprocsync sync`` process waits, with that process in the waiting column), age."""
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
    after = status_rows(run("status", "--run", run_id, "--redis", server.url).stdout)
    assert after["filling"][:3] == ["1", "0/?", "released"]


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
        ProcSync(client, run_id, 0.01),
        ProcSync(client, f"{run_id}x", 0.01),
        ProcSync(client, f"{run_id}-2", 0.01),
        ProcSync(client, f"{run_id}:x", 0.01),
        ProcSync(client, run_id, 0.01, prefix="other"),
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


# -- bench ----------------------------------------------------------------------------------

PERCENTILES = {"p50", "p90", "p99", "max"}


def check_figures(figures: dict[str, Any], nodes: int, rounds: int, delay: float) -> None:
    """The ``--json`` figures: the keys issue 3 requires, and sane values."""
    assert {"nodes", "rounds", "delay", "think", "server", "sync", "limit"} <= set(figures)
    assert "raw" not in figures
    assert (figures["nodes"], figures["rounds"]) == (nodes, rounds)
    assert figures["delay"] == pytest.approx(delay)
    assert figures["think"] == pytest.approx(0.002)
    assert isinstance(figures["server"], str)
    assert figures["server"]
    sync, limit = figures["sync"], figures["limit"]
    assert {"spread_us", "late_us", "barriers_per_s", "too_late", "errors"} <= set(sync)
    assert {"spread_us", "late_us"} <= set(limit)
    for part in (sync, limit):
        for name in ("spread_us", "late_us"):
            values = part[name]
            assert set(values) == PERCENTILES
            assert all(math.isfinite(v) for v in values.values()), values
            assert values["p50"] <= values["p90"] <= values["p99"] <= values["max"]
        assert part["spread_us"]["p50"] >= 0
    assert sync["errors"] == 0
    assert sync.get("completed_rounds", rounds) == rounds
    assert sync["barriers_per_s"] > 0
    assert isinstance(sync["too_late"], int)
    assert 0 <= sync["too_late"] <= nodes * rounds


@pytest.mark.timeout(90)
def test_bench_json_and_quiet(server: EmbeddedServer, tmp_path: Path) -> None:
    """``bench --redis URL --nodes 2 --rounds 20 --json FILE --quiet`` exits 0, prints
    nothing, and writes the figures with the required keys for all 20 rounds."""
    out = tmp_path / "bench.json"
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--rounds", "20", "--delay", "0.005",
        "--json", str(out), "--quiet", timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    figures = json.loads(out.read_text())
    check_figures(figures, 2, 20, 0.005)
    assert "127.0.0.1" in figures["server"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ([], {"names": "distinct", "threads": 1, "asyncio": False, "fresh": 0}),
        (["--names", "same"], {"names": "same", "threads": 1, "asyncio": False, "fresh": 0}),
        (["--threads", "3"], {"names": "distinct", "threads": 3, "asyncio": False, "fresh": 0}),
        (
            ["--asyncio", "--threads", "2"],
            {"names": "distinct", "threads": 2, "asyncio": True, "fresh": 0},
        ),
    ],
    ids=["distinct", "same", "threads", "asyncio"],
)
def test_bench_patterns(
    server: EmbeddedServer, tmp_path: Path, options: list[str], pattern: dict[str, Any]
) -> None:
    """Each pattern runs every participant through every round and records itself in the
    JSON; the library's ``late_by`` is reported beside the caller's own reading, and the
    caller reads after ``late_by`` was taken (the gap is never negative)."""
    out = tmp_path / "bench.json"
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--rounds", "12", "--delay", "0.02",
        "--json", str(out), "--quiet", *options, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    check_figures(figures, 2, 12, 0.02)
    participants = 2 * pattern["threads"]
    assert figures["pattern"] == {**pattern, "participants": participants}
    sync = figures["sync"]
    assert sync["gap_us"]["p50"] >= 0
    assert sync["reported_late_us"]["p50"] <= sync["late_us"]["p50"]


@pytest.mark.timeout(120)
def test_bench_fresh_processes(server: EmbeddedServer, tmp_path: Path) -> None:
    """``--fresh 2``: two starts of two new processes, one first sync each; the figures
    cover both starts and count the starts within 200 µs; ``--fresh`` with threads is a
    usage error."""
    out = tmp_path / "bench.json"
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--fresh", "2", "--delay", "0.05",
        "--json", str(out), timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 starts of fresh processes" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["pattern"]["fresh"] == 2
    assert figures["sync"]["completed_rounds"] == 2
    assert 0 <= figures["sync"]["spread_within_200us"] <= 2
    refused = run("bench", "--redis", server.url, "--fresh", "2", "--threads", "2")
    assert refused.returncode == ExitCode.USAGE
    assert_one_line_error(refused.stderr, "--fresh")


@pytest.mark.timeout(90)
def test_bench_prints_the_table(server: EmbeddedServer) -> None:
    """Without ``--quiet``, ``bench`` prints the table: both measurements, both phases,
    and the count of completed rounds."""
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--rounds", "5", "--delay", "0.005",
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert table.startswith("pyprocsync bench: 2 nodes x 5 rounds, delay 0.005 s")
    for text in ("spread of return instants", "lateness", "limit (no Redis)", "sync / limit"):
        assert text in table
    assert "rounds completed: 5/5" in table
    assert "errors: 0" in table


def check_nothing_left(group: int, servers_before: set[int]) -> None:
    """No process of the command's group is alive, nor any server started meanwhile."""
    assert not wait_gone(process_group(group)), [command_line(p) for p in process_group(group)]
    assert not wait_gone(server_pids() - servers_before), "a server process was left running"


@pytest.mark.timeout(90)
def test_bench_with_embedded_server_leaves_nothing_running(
    background: Callable[..., Background],
) -> None:
    """``bench`` without ``--redis`` and without ``$PYPROCSYNC_REDIS_URL`` starts a
    private server, exits 0 and leaves no server nor worker process behind."""
    servers_before = server_pids()
    command = background("bench", "--nodes", "2", "--rounds", "10", session=True)
    assert command.wait(60) == 0, command.stderr
    assert "(embedded)" in command.stdout
    assert "rounds completed: 10/10" in command.stdout
    check_nothing_left(command.pid, servers_before)


@pytest.mark.timeout(90)
def test_bench_ctrl_c_exits_130_and_leaves_nothing_running(
    background: Callable[..., Background],
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a long
    bench with an embedded server exits 130 without a traceback, and no worker or server
    process remains."""
    servers_before = server_pids()
    command = background("bench", "--nodes", "2", "--rounds", "5000", session=True)
    workers: list[int] = []

    def running() -> bool:
        # Workers ignore SIGINT once they run the benchmark (the parent decides).
        group = process_group(command.pid)
        workers[:] = [p for p in group if "spawn_main" in command_line(p) and ignores_sigint(p)]
        return (len(workers) >= 2 and bool(group & server_pids())) or command.poll() is not None

    wait_until(running, 30, "the benchmark workers and server")
    assert command.poll() is None, command.stderr
    time.sleep(0.3)
    os.killpg(command.pid, signal.SIGINT)
    assert command.wait(30) == ExitCode.INTERRUPTED, command.stderr
    assert "Traceback" not in command.stderr
    assert "pyprocsync: interrupted" in command.stderr
    check_nothing_left(command.pid, servers_before)


@pytest.mark.timeout(90)
def test_bench_plot(server: EmbeddedServer, tmp_path: Path) -> None:
    """``bench --plot FILE.png``: without matplotlib, exit 2 at once with one line naming
    matplotlib and how to install it (nothing written); with it, a non-empty PNG."""
    png = tmp_path / "bench.png"
    args = ["bench", "--redis", server.url, "--nodes", "2", "--rounds", "5", "--plot", str(png)]
    done = run(*args, "--quiet", timeout=60)
    if importlib.util.find_spec("matplotlib") is None:
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert_one_line_error(done.stderr, "matplotlib", "pyprocsync[plot]")
        assert not png.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert png.read_bytes().startswith(b"\x89PNG")
        assert png.stat().st_size > 1000


@pytest.mark.timeout(60)
def test_bench_unreachable_server_exits_6() -> None:
    """``bench --redis URL`` with nothing listening exits 6 with one line, before it
    starts any worker."""
    done = run("bench", "--redis", UNREACHABLE, "--nodes", "2", "--rounds", "5")
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    assert_one_line_error(done.stderr, UNREACHABLE, "--redis")


def bench_record(rank: int, limit: list[float], sync: list[float], *errors: str) -> _NodeRecord:
    return _NodeRecord(rank, limit, sync, [1e6 + 10_000 * i for i in range(len(sync))], [*errors])


def test_bench_figures_of_a_worker_that_failed_in_the_warm_up() -> None:
    """A worker that failed before measuring anything (its warm-up raised) leaves the
    figures empty (NaN) and its error reported; nothing raises and the table renders."""
    config = BenchConfig(url="redis://unused", nodes=2, rounds=3)
    records = [bench_record(0, [1.0, 2.0, 3.0], []), bench_record(1, [], [], "TimeOutError: x")]
    figures = _figures(config, records)
    sync, limit = figures["sync"], figures["limit"]
    assert (sync["errors"], sync["completed_rounds"], sync["error_messages"]) == (
        1,
        0,
        ["TimeOutError: x"],
    )
    assert all(math.isnan(v) for v in [*sync["spread_us"].values(), *limit["spread_us"].values()])
    assert "nan" in format_table({**figures, "server": "s"})


def test_bench_figures_cover_the_rounds_every_worker_completed() -> None:
    """When one worker stopped after two rounds of each phase, spreads and lateness are
    computed over those two rounds, pairing each round with the same round."""
    config = BenchConfig(url="redis://unused", nodes=2, rounds=3)
    records = [
        bench_record(0, [1.0, 2.0, 50.0], [1.0, 4.0, 50.0]),
        bench_record(1, [3.0, 2.5], [2.0, 1.0], "round 2: TimeOutError: y"),
    ]
    figures = _figures(config, records)
    assert figures["raw"]["limit_spread_us"] == [2.0, 0.5]
    assert figures["raw"]["sync_spread_us"] == [1.0, 3.0]
    assert sorted(figures["raw"]["sync_late_us"]) == [1.0, 1.0, 2.0, 4.0]
    assert (figures["sync"]["completed_rounds"], figures["sync"]["errors"]) == (2, 1)


class WarmUpTooLate:
    """A node whose warm-up round is learned too late."""

    def __init__(self, release_at: float | None) -> None:
        self.release_at = release_at

    def sync(self, *_args: object) -> None:
        raise TooLateError("late", late_by=0.5, release_at=self.release_at)


def test_bench_warm_up_learned_too_late_still_gives_the_instant() -> None:
    """The warm-up only agrees on an instant to count the limit phase from: learned too
    late it serves all the same (every worker has it); without one it raises."""
    config = BenchConfig(url="redis://unused")
    assert _warm_up(WarmUpTooLate(1234.5), config) == 1234.5  # type: ignore[arg-type]
    with pytest.raises(TooLateError):
        _warm_up(WarmUpTooLate(None), config)  # type: ignore[arg-type]


# -- format_table and statistics --------------------------------------------------------------


def figures_for_table() -> dict[str, Any]:
    quartet = {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0}
    return {
        "nodes": 2,
        "rounds": 3,
        "delay": 0.01,
        "think": 0.002,
        "server": "valkey 8.1 (embedded)",
        "sync": {
            "spread_us": quartet,
            "late_us": {"p50": 10.0, "p90": 20.0, "p99": 30.0, "max": 40.0},
            "barriers_per_s": 123.4,
            "too_late": 1,
            "late_over_1ms": 5,
            "errors": 1,
            "completed_rounds": 2,
            "error_messages": ["round 2: TimeOutError: gave up"],
        },
        "limit": {
            "spread_us": {"p50": 0.5, "p90": 1.0, "p99": 0.0, "max": 8.0},
            "late_us": quartet,
        },
    }


def test_format_table() -> None:
    """``format_table`` shows the configuration, each phase's percentiles with one
    decimal, sync/limit ratios ("-" where the limit is 0), the totals and the errors."""
    lines = format_table(figures_for_table()).splitlines()
    assert lines[0] == (
        "pyprocsync bench: 2 nodes x 3 rounds, delay 0.01 s, think 0.002 s, "
        "server valkey 8.1 (embedded)"
    )
    rows = {}
    for line in lines:
        parts = line.rsplit(maxsplit=4)
        if len(parts) == 5 and parts[0].strip() in ("sync", "limit (no Redis)", "sync / limit"):
            rows.setdefault(parts[0].strip(), []).append(parts[1:])
    assert rows["sync"] == [["1.0", "2.0", "3.0", "4.0"], ["10.0", "20.0", "30.0", "40.0"]]
    assert rows["limit (no Redis)"] == [["0.5", "1.0", "0.0", "8.0"], ["1.0", "2.0", "3.0", "4.0"]]
    assert rows["sync / limit"] == [["2.00", "2.00", "-", "0.50"], ["10.00"] * 4]
    assert lines[-2] == (
        "barriers/s: 123   too late (TooLateError): 1   returned > 1 ms late: 5   "
        "errors: 1   rounds completed: 2/3"
    )
    assert lines[-1] == "  error: round 2: TimeOutError: gave up"


def test_percentile_nearest_rank() -> None:
    """``percentile`` takes the nearest rank, ceil(p/100 * n), of sorted data: never an
    interpolated value; p=0 is the first, p=100 the last."""
    data = list(range(1, 11))
    assert [percentile(data, p) for p in (0, 10, 50, 51, 90, 99, 100)] == [1, 1, 5, 6, 9, 10, 10]
    quarter = [10.0, 20.0, 30.0, 40.0]
    assert [percentile(quarter, p) for p in (25, 26, 50, 75, 76)] == [10.0, 20.0, 20.0, 30.0, 40.0]
    assert percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summary() -> None:
    """``summary`` sorts any iterable and gives exactly p50/p90/p99/max by nearest rank;
    no values give NaN for each."""
    assert summary(float(v) for v in range(100, 0, -1)) == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
        "max": 100.0,
    }
    assert summary([5, 1, 4, 2, 3]) == {"p50": 3, "p90": 5, "p99": 5, "max": 5}
    empty = summary([])
    assert set(empty) == PERCENTILES
    assert all(math.isnan(v) for v in empty.values())


# -- option defaults, --timeout inf, URL errors -----------------------------------------------


@pytest.mark.timeout(60)
def test_sync_timeout_inf_means_no_limit(server: EmbeddedServer, run_id: str) -> None:
    """``sync --timeout inf`` is accepted, as the library accepts ``timeout=inf``: the
    round is released normally (exit 0)."""
    done = run(
        *sync_args("x", 1, run_id, "--redis", server.url, "--delay", "0", "--timeout", "inf")
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == done.stderr == ""


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


BAD_URLS = [
    ("redis://127.0.0.1:notaport/0", "port 'notaport' is not a number"),
    ("redis://127.0.0.1:70000/0", "port 70000 is out of range"),
    ("http://127.0.0.1:6379/0", "scheme 'http' is not one of"),
    ("redis://127.0.0.1:6379/abc", "database 'abc' is not a number"),
    ("redis://[::1:6379/0", "IPv6"),
    ("redis://:6379/0", "no host name"),
    ("unix://", "socket's path"),
    ("redis://127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("url", "reason"), BAD_URLS, ids=[case[0] for case in BAD_URLS])
@pytest.mark.parametrize("command", ["sync x --nodes 1", "status", "reset x", "clock", "bench"])
def test_bad_url_names_what_is_wrong(command: str, url: str, reason: str) -> None:
    """A URL that cannot be used is a usage error (exit 2, one line) that says what is
    wrong with it, for ``--redis`` and for ``$PYPROCSYNC_REDIS_URL`` alike."""
    for origin, done in (
        ("--redis URL", run(*command.split(), "--redis", url)),
        (f"${URL_ENV}", run(*command.split(), url_env=url)),
    ):
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert_one_line_error(done.stderr, f"bad {origin}: ", reason)


def test_url_problem_accepts_what_redis_py_accepts() -> None:
    """``url_problem`` finds nothing wrong with the URL forms the documentation shows."""
    for url in (
        "redis://127.0.0.1:6379/0",
        "redis://sync-host",
        "rediss://cell@redis.example:6380/0?ssl_cert_reqs=required",
        "redis://[::1]:6379/2",
        "unix:///run/redis.sock?db=1",
        "redis://:s3cret@host:1/0",
    ):
        assert url_problem(url) is None, url


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
    assert done.stderr == ""
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

"""Helpers of the ``pyprocsync`` command tests (``from cli_support import ...``).

The commands run for real, as ``python -m pyprocsync ...`` (or the console script)
subprocesses: :func:`run` to their end, :class:`Background` in the background (the
``background`` fixture of ``conftest.py`` makes them and kills what outlives the test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from support import (
    default_sigint,
    kill_group,
    run_command,
)

from pyprocsync.tools.cli import URL_ENV
from pyprocsync.tools.credentials import PASSWORD_ENV

#: The console script installed next to the interpreter running the tests.
CONSOLE_SCRIPT = Path(sys.executable).with_name("pyprocsync")


#: Nothing listens on port 1: connections are refused at once.
UNREACHABLE = "redis://127.0.0.1:1/0"


#: Hard limit for one short command (start-up, parse, one round trip).
QUICK = 30.0


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


def status_rows(stdout: str) -> dict[str, list[str]]:
    """The event table of ``pyprocsync status`` as {event: [generation, arrived/expected,
    state, age, waited, waiting...]} (event names in these tests hold no spaces; the
    indented ``missing:`` lines, the last released round and the member table are left
    out)."""
    lines = stdout.strip().split("\n\n")[0].splitlines()
    lines = [line for line in lines if not line.startswith("last released round:")]
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


# -- sync -----------------------------------------------------------------------------------


def sync_args(name: str, nodes: int, run_id: str, *options: str) -> list[str]:
    return ["sync", name, "--nodes", str(nodes), "--run", run_id, *options]

"""Passwords never show for the embedded server: its redacted URL, its command line
(the password is taken off it, typed at a prompt or read from a file), the command
lines of ``status --watch``, and any password starts a server whose URL connects.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from secrets_support import (
    SECRET,
    assert_no_secret,
    check_command_error,
    cli,
    command_env,
    exception_texts,
    forbidden,
    password_file,
    plain_url,
)
from support import (
    children,
    command_line,
    listening,
    run_command,
    wait_until,
    watch_args,
)
from tls_support import free_port

from pyprocsync.tools.cli import URL_ENV, ExitCode, redact
from pyprocsync.tools.credentials import PASSWORD_ENV, host_address
from pyprocsync.tools.server import EmbeddedServer

# -- the server's own URL --------------------------------------------------------------------

SPECIAL_PASSWORDS = [
    pytest.param("s3cret/Pa55-XYZ", id="slash"),
    pytest.param("s3cret#Pa55-XYZ", id="hash"),
    pytest.param("s3cret?Pa55-XYZ", id="question-mark"),
    pytest.param("s3cret@Pa55-XYZ", id="at"),
    pytest.param("s3cret:Pa55-XYZ", id="colon"),
    pytest.param("s3cret%Pa55-XYZ", id="percent"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("password", SPECIAL_PASSWORDS)
def test_redacted_server_url_hides_any_password(password: str) -> None:
    """``redact(EmbeddedServer(password=...).url)``, which ``pyprocsync server`` prints,
    hides passwords with characters that are special in URLs too."""
    shown = redact(EmbeddedServer(password=password).url)
    assert_no_secret({"redacted url": shown}, forbidden(password))


class Command:
    """A ``pyprocsync`` command in the background, its output in files; stopped with
    SIGINT (then killed) by :meth:`stop`."""

    def __init__(self, directory: Path, args: list[str], env: dict[str, str], stdin: Any) -> None:
        self.out_path, self.err_path = directory / "command.out", directory / "command.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.process = subprocess.Popen(
                cli(*args), stdin=stdin, stdout=out, stderr=err, env=env, start_new_session=True
            )

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def wait_output(self, text: str, what: str) -> None:
        wait_until(lambda: text in self.stdout or self.process.poll() is not None, 15, what)
        assert text in self.stdout, f"exit {self.process.poll()}: {self.stderr}"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture
def command(tmp_path: Path) -> Iterator[Callable[..., Command]]:
    """Factory of background :class:`Command` s; every one is stopped at teardown."""
    started: list[Command] = []

    def start(*args: str, env: dict[str, str] | None = None, stdin: Any = None) -> Command:
        started.append(Command(tmp_path, list(args), env or command_env(), stdin))
        return started[-1]

    yield start
    for each in started:
        each.stop()


def assert_not_on_command_lines(pids: set[int], password: str) -> None:
    """What ``ps`` shows of ``pids`` (``/proc/PID/cmdline``) holds no piece of ``password``."""
    assert pids
    assert_no_secret({f"cmdline of {pid}": command_line(pid) for pid in pids}, forbidden(password))


def type_password_at_prompt(command: Command, terminal: int, password: str) -> None:
    """Answer the prompt of ``--ask-password`` on the terminal whose master is ``terminal``."""
    wait_until(
        lambda: "password:" in command.stderr or command.process.poll() is not None,
        15,
        "the password prompt",
    )
    os.write(terminal, password.encode() + b"\n")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", ["variable", "file", "prompt"])
@pytest.mark.parametrize("password", [SECRET, "s3cret/Pa55-XYZ"], ids=["plain", "slash"])
def test_cli_server_takes_the_password_off_the_command_line(
    command: Callable[..., Command], tmp_path: Path, via: str, password: str
) -> None:
    """``pyprocsync server --bind 0.0.0.0`` with the password from ``$PYPROCSYNC_PASSWORD``,
    ``--password-file`` or the ``--ask-password`` prompt (on a terminal): the server
    requires it; neither the command's nor the server process's command line (what
    ``ps`` shows) holds it; the command prints, with ``***`` for the password, a URL
    with this host's address for the other machines and how to give the password
    there, and never the password itself."""
    port = free_port()
    args = ["server", "--bind", "0.0.0.0", "--port", str(port)]  # password set
    if via == "variable":
        running = command(*args, env=command_env(password=password))
    elif via == "file":
        running = command(*args, "--password-file", password_file(tmp_path, password))
    else:
        terminal, answer_side = os.openpty()
        try:
            running = command(*args, "--ask-password", stdin=answer_side)
            type_password_at_prompt(running, terminal, password)
        finally:
            os.close(answer_side)
    running.wait_output("listening", "the server's announcement")
    pids = {running.process.pid} | children(running.process.pid)
    assert_not_on_command_lines(pids, password)
    with redis.Redis(port=port, password=password, socket_timeout=5) as member:
        assert member.ping()
    with (
        # No retries: redis-py retries a refused authentication (a ConnectionError) with
        # backoff, 4 s in all, by default.
        redis.Redis(port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0)) as anonymous,
        pytest.raises(redis.AuthenticationError),
    ):
        anonymous.ping()
    host = host_address("0.0.0.0")  # the wildcard the server was bound to
    assert host != "0.0.0.0"
    assert f"redis://:***@{host}:{port}/0" in running.stdout
    assert f"{URL_ENV}=redis://{host}:{port}/0" in running.stdout
    assert PASSWORD_ENV in running.stdout
    assert running.stop() == ExitCode.INTERRUPTED
    if via == "prompt":
        os.close(terminal)
    assert_no_secret({"stdout": running.stdout, "stderr": running.stderr}, forbidden(password))


@pytest.mark.timeout(60)
def test_cli_ask_password_without_a_terminal_is_refused() -> None:
    """``--ask-password`` with standard input not a terminal: exit 2, one line naming the
    other two ways, nothing started."""
    port = free_port()
    done = subprocess.run(
        cli("server", "--port", str(port), "--ask-password"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        env=command_env(),
        check=False,
    )
    line = check_command_error(done, ExitCode.USAGE)
    assert PASSWORD_ENV in line
    assert "--password-file" in line
    assert not listening(port)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("content", "needle"), [(None, "No such file"), ("", "empty"), ("\n" + SECRET, "empty")]
)
def test_cli_bad_password_file_is_a_usage_error(
    tmp_path: Path, content: str | None, needle: str
) -> None:
    """A ``--password-file`` that does not exist or whose first line is empty: exit 2,
    one line naming the file and why."""
    path = tmp_path / "password"
    if content is not None:
        path.write_text(content)
    done = run_command(cli("status", "--password-file", str(path)), env=command_env(plain_url(1)))
    line = check_command_error(done, ExitCode.USAGE)
    assert str(path) in line
    assert needle in line


@pytest.mark.timeout(60)
def test_cli_watching_status_shows_no_password_on_its_command_line(
    own_server: EmbeddedServer, command: Callable[..., Command], run_id: str
) -> None:
    """A long-running client command (``status --watch``) with the password from
    ``$PYPROCSYNC_PASSWORD`` reaches the server, and ``ps`` shows no password on its
    command line; nor does its output."""
    running = command(
        *watch_args(run_id, plain_url(own_server.port)), env=command_env(password=SECRET)
    )
    running.wait_output(f"no events of run {run_id!r}", "the first refresh")
    assert_not_on_command_lines({running.process.pid}, SECRET)
    assert running.stop() == ExitCode.INTERRUPTED
    assert_no_secret({"stdout": running.stdout, "stderr": running.stderr})


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "password",
    [
        *SPECIAL_PASSWORDS,
        pytest.param("s3cret Pa55 XYZ", id="spaces"),  # quotes fail the same way
    ],
)
def test_server_with_any_password_starts_and_its_url_connects(password: str) -> None:
    """What ``pyprocsync server --password`` builds on: an EmbeddedServer with a password
    of characters that are special in URLs or in the server's configuration starts, and
    its own ``url`` (and ``client()``) authenticate with it; a failure to start names
    no password."""
    instance = EmbeddedServer(password=password)
    try:
        instance.start()
    except Exception as exc:
        assert_no_secret(exception_texts(exc), forbidden(password))
        raise
    try:
        with instance.client(socket_timeout=5) as client:
            assert client.ping()
        with redis.Redis(port=instance.port, password=password, socket_timeout=5) as client:
            assert client.ping()
    finally:
        instance.stop()

"""Passwords never show: not in exceptions, not in logs, not in the command's output.

Every password here contains ``Pa55``, and none of its pieces (``s3cret``, ``Pa55``,
...) may appear anywhere a user or a log collector could see it: an exception's
``str()``, ``repr()``, ``args``, attributes, its ``__cause__``/``__context__`` chain and
formatted traceback; every log record (root logger and ``pyprocsync`` at DEBUG, from
every thread); whatever reached the process's stdout and stderr; ``repr()`` of the
objects; and the stdout and stderr of ``pyprocsync`` commands.

The failures provoked, against real servers: a wrong password; the right one, then the
server stopped; a port nobody listens on; the server dropping every connection (and
changing its password) while a participant waits. Each for ``ProcSync.sync``,
``Event.wait`` and ``Barrier.wait``, blocking and asyncio; and a participant that
recovers from dropped connections logs no password either. The command line: every
command with a wrong password or nobody listening (``--redis`` and
``$PYPROCSYNC_REDIS_URL``), ``sync`` losing its server, ``bench`` with a password, a
password given as a query argument or with characters special in URLs; and the URL of
``pyprocsync server`` (``EmbeddedServer.url``, redacted) with such passwords. The plain
cases of ``server --password`` and of ``sync`` with an unreachable
``redis://:password@`` URL are in ``test_cli.py``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from support import (
    LONG,
    arun,
    assert_one_line_error,
    children,
    command_line,
    join,
    listening,
    run_command,
    start_thread,
    wait_until,
    waiting_members,
    watch_args,
)
from tls_support import free_port

import pyprocsync.asyncio as aps
from pyprocsync import Barrier, ConnectionLostError, Event, ProcSync
from pyprocsync.tools.cli import URL_ENV, ExitCode, redact
from pyprocsync.tools.credentials import PASSWORD_ENV, host_address
from pyprocsync.tools.server import EmbeddedServer

#: The password the URLs under test carry (and, but for one case, the server's).
SECRET = "s3cret-Pa55-XYZ"
#: The server's password when the URL carries a wrong one.
SERVER_SECRET = "srv0cret-Pa55-QRS"
#: The password a server switches to while a participant waits.
NEW_SECRET = "n3wcret-Pa55-ABC"
#: How long a failing call may take: failures must come promptly, not at the timeout.
PROMPT = 5.0
#: The timeout of the calls that are to fail (far beyond PROMPT).
CALL_TIMEOUT = 20.0


def forbidden(*passwords: str) -> set[str]:
    """The strings that must never show: each password and its pieces of 4+ letters."""
    found = set(passwords)
    for password in passwords:
        found.update(piece for piece in re.split(r"[^A-Za-z0-9]+", password) if len(piece) >= 4)
    return found


FORBIDDEN = forbidden(SECRET, SERVER_SECRET, NEW_SECRET)


def assert_no_secret(texts: dict[str, str], passwords: set[str] = FORBIDDEN) -> None:
    """No text holds a password or a piece of one; the failure names where it leaked."""
    leaks = [
        f"{where}: {piece!r} in {text[:2000]!r}"
        for where, text in texts.items()
        for piece in passwords
        if piece in text
    ]
    assert not leaks, "password leaked:\n" + "\n".join(leaks)


def exception_texts(exc: BaseException) -> dict[str, str]:
    """Everything an exception shows, down its ``__cause__``/``__context__`` chain."""
    texts = {"traceback": "".join(traceback.format_exception(exc))}
    pending: list[BaseException | None] = [exc]
    seen: set[int] = set()
    depth = 0
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        name = f"{depth}:{type(current).__name__}"
        depth += 1
        texts[f"{name} str"] = str(current)
        texts[f"{name} repr"] = repr(current)
        texts[f"{name} args"] = repr(current.args)
        texts[f"{name} attributes"] = repr(getattr(current, "__dict__", {}))
        texts[f"{name} notes"] = repr(getattr(current, "__notes__", []))
        pending += [current.__cause__, current.__context__]
    return texts


class Observer:
    """Collects what a user could see: log records and the process's output."""

    def __init__(self, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]):
        self.caplog = caplog
        self.capfd = capfd
        caplog.set_level(logging.DEBUG)
        caplog.set_level(logging.DEBUG, logger="pyprocsync")

    def texts(self) -> dict[str, str]:
        formatter = logging.Formatter()
        texts: dict[str, str] = {"caplog": self.caplog.text}
        for number, record in enumerate(self.caplog.records):
            where = f"log {number} ({record.name})"
            texts[f"{where} message"] = record.getMessage()
            texts[f"{where} args"] = repr(record.args)
            if record.exc_info:
                texts[f"{where} exc_info"] = formatter.formatException(record.exc_info)
            texts[f"{where} stack"] = record.stack_info or ""
        out, err = self.capfd.readouterr()
        texts["stdout"], texts["stderr"] = out, err
        return texts

    def check(self, exc: BaseException | None, *shown: str) -> None:
        """Fail if the exception, the logs, the output or ``shown`` hold a password."""
        texts = self.texts()
        if exc is not None:
            texts.update(exception_texts(exc))
        texts.update({f"shown {i}": text for i, text in enumerate(shown)})
        assert_no_secret(texts)


@pytest.fixture
def observer(caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> Observer:
    """Logs at DEBUG and the process's output, collected for a leak check."""
    return Observer(caplog, capfd)


@pytest.fixture(scope="module")
def locked_server() -> Iterator[EmbeddedServer]:
    """A server with the password ``SERVER_SECRET``, for the wrong-password cases."""
    with EmbeddedServer(password=SERVER_SECRET) as instance:
        yield instance


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A server of this test's own with the password ``SECRET`` (stopped at teardown)."""
    with EmbeddedServer(password=SECRET) as instance:
        yield instance


def url_of(port: int, password: str = SECRET) -> str:
    return f"redis://:{password}@127.0.0.1:{port}/0"


# -- one participant, blocking or asyncio ----------------------------------------------------

KINDS = ["sync", "event", "barrier"]
APIS = ["blocking", "asyncio"]


def make_blocking(kind: str, url: str, run_id: str) -> Any:
    """A participant of ``kind`` with its own client for ``url``, registered as a member
    (its registration is renewed, and may fail, in the background)."""
    options: dict[str, Any] = {"run_id": run_id, "liveness": 1.0, "member": True}
    if kind == "sync":
        return ProcSync.from_url(url, run_id, 0.05, liveness=1.0, member=True)
    if kind == "event":
        return Event.from_url(url, "flag", delay=0.05, **options)
    return Barrier.from_url(url, "gate", 2, **options)


def make_async(kind: str, url: str, run_id: str) -> Any:
    """:func:`make_blocking` for asyncio."""
    options: dict[str, Any] = {"run_id": run_id, "liveness": 1.0, "member": True}
    if kind == "sync":
        return aps.ProcSync.from_url(url, run_id, 0.05, liveness=1.0, member=True)
    if kind == "event":
        return aps.Event.from_url(url, "flag", delay=0.05, **options)
    return aps.Barrier.from_url(url, "gate", 2, **options)


def warm_up(kind: str, participant: Any) -> Any:
    """A call that succeeds while the server is fine (connections, scripts loaded)."""
    if kind == "sync":
        return participant.sync("warm-up", 1, LONG)
    if kind == "event":
        return participant.is_set()
    return participant.n_waiting() if callable(participant.n_waiting) else participant.n_waiting


def wait_call(kind: str, participant: Any) -> Any:
    """The call under test: wait for others (who never come) or for a set."""
    if kind == "sync":
        return participant.sync("point", 2, CALL_TIMEOUT)
    return participant.wait(CALL_TIMEOUT)


def attempt(
    api: str,
    kind: str,
    url: str,
    run_id: str,
    *,
    warm: bool = False,
    after_warm_up: Callable[[], object] | None = None,
    waiting: Callable[[], bool] | None = None,
    while_waiting: Callable[[], object] | None = None,
) -> tuple[BaseException | None, float, list[str]]:
    """Run one participant's call, disturbed as asked; return what it raised (None if it
    returned), the seconds the call took, and ``repr()`` of the participant.

    ``after_warm_up`` runs after a successful warm-up call (``warm``), before the call;
    ``while_waiting`` runs once the call waits (``waiting`` is true).
    """
    how: dict[str, Any] = {
        "url": url,
        "run_id": run_id,
        "warm": warm,
        "after_warm_up": after_warm_up,
        "waiting": waiting,
        "while_waiting": while_waiting,
    }
    if api == "blocking":
        return _attempt_blocking(kind, **how)
    return arun(lambda: _attempt_async(kind, **how), timeout=LONG)


def _attempt_blocking(
    kind: str,
    *,
    url: str,
    run_id: str,
    warm: bool,
    after_warm_up: Callable[[], object] | None,
    waiting: Callable[[], bool] | None,
    while_waiting: Callable[[], object] | None,
) -> tuple[BaseException | None, float, list[str]]:
    participant = make_blocking(kind, url, run_id)
    try:
        if warm:
            warm_up(kind, participant)
        if after_warm_up is not None:
            after_warm_up()
        started = time.monotonic()
        thread, outcome = start_thread(lambda: wait_call(kind, participant))
        if while_waiting is not None:
            wait_until(lambda: waiting is None or waiting() or not thread.is_alive(), 10, "a wait")
            while_waiting()
        join([thread], LONG)
        assert outcome.finished_at is not None
        return outcome.error, outcome.finished_at - started, [repr(participant)]
    finally:
        participant.close()


async def _attempt_async(
    kind: str,
    *,
    url: str,
    run_id: str,
    warm: bool,
    after_warm_up: Callable[[], object] | None,
    waiting: Callable[[], bool] | None,
    while_waiting: Callable[[], object] | None,
) -> tuple[BaseException | None, float, list[str]]:
    participant = make_async(kind, url, run_id)
    try:
        if warm:
            result = warm_up(kind, participant)
            if isinstance(result, Awaitable):
                await result
        if after_warm_up is not None:
            await asyncio.to_thread(after_warm_up)
        started = time.monotonic()
        call = asyncio.ensure_future(wait_call(kind, participant))
        if while_waiting is not None:
            deadline = time.monotonic() + 10
            while not (waiting is None or waiting() or call.done()):
                assert time.monotonic() < deadline, "the call never waited"
                await asyncio.sleep(0.005)
            await asyncio.to_thread(while_waiting)
        try:
            await call
        except Exception as exc:
            return exc, time.monotonic() - started, [repr(participant)]
        return None, time.monotonic() - started, [repr(participant)]
    finally:
        await participant.aclose()


def check_failure(
    observer: Observer, outcome: tuple[BaseException | None, float, list[str]]
) -> BaseException:
    """The call failed promptly with a connection error, and nothing shows a password."""
    error, took, shown = outcome
    assert error is not None, "the call returned instead of failing"
    observer.check(error, *shown)
    assert isinstance(error, redis.exceptions.ConnectionError), repr(error)
    assert took < PROMPT, f"took {took:.1f} s to fail"
    return error


# -- the library -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_wrong_password(
    locked_server: EmbeddedServer, run_id: str, observer: Observer, api: str, kind: str
) -> None:
    """A URL with a wrong password: ConnectionLostError caused by redis-py's
    AuthenticationError, neither naming a password, and nothing else shows one."""
    url = url_of(locked_server.port)
    error = check_failure(observer, attempt(api, kind, url, run_id))
    assert isinstance(error, ConnectionLostError), repr(error)
    causes = []
    while error is not None:
        causes.append(error)
        error = error.__cause__
    assert any(isinstance(c, redis.exceptions.AuthenticationError) for c in causes), causes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_server_stopped(
    own_server: EmbeddedServer, run_id: str, observer: Observer, api: str, kind: str
) -> None:
    """The right password; after a successful call the server stops: the next call
    fails (the participant's membership renewals fail in the background meanwhile),
    and no message or log record names the password."""
    outcome = attempt(
        api, kind, own_server.url, run_id, warm=True, after_warm_up=lambda: stop(own_server)
    )
    assert isinstance(check_failure(observer, outcome), ConnectionLostError)


def stop(server: EmbeddedServer) -> None:
    """Stop ``server`` and give the background renewals (every 0.2 s) time to fail."""
    server.stop()
    time.sleep(0.5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_nobody_listens(run_id: str, observer: Observer, api: str, kind: str) -> None:
    """A URL with a password to a port nobody listens on."""
    check_failure(observer, attempt(api, kind, url_of(free_port()), run_id))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("api", APIS)
def test_connections_dropped_while_waiting(
    own_server: EmbeddedServer, run_id: str, observer: Observer, api: str, kind: str
) -> None:
    """While the call waits, the server changes its password and drops every client
    connection (CLIENT KILL), so the participant can neither go on nor reconnect: it
    raises ConnectionLostError, and no message or log record names either password."""
    admin = own_server.client(socket_timeout=5)

    def drop_everyone() -> None:
        admin.config_set("requirepass", NEW_SECRET)
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.client_kill_filter(_type="pubsub")

    try:
        outcome = attempt(
            api,
            kind,
            own_server.url,
            run_id,
            waiting=lambda: bool(admin.pubsub_channels()),
            while_waiting=drop_everyone,
        )
    finally:
        admin.close()
    assert isinstance(check_failure(observer, outcome), ConnectionLostError)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("api", APIS)
def test_connections_dropped_and_recovered(
    own_server: EmbeddedServer, run_id: str, observer: Observer, api: str
) -> None:
    """The server drops every connection of a waiting participant, which reconnects
    (same password) and is released with a later arrival: the recovery logs no
    password either."""
    admin = own_server.client(socket_timeout=5)
    other = ProcSync.from_url(own_server.url, run_id, 0.05)

    def drop_then_arrive() -> None:
        admin.client_kill_filter(_type="normal", skipme=True)
        admin.client_kill_filter(_type="pubsub")
        time.sleep(0.3)
        other.sync("point", 2, LONG)

    try:
        error, _took, shown = attempt(
            api,
            "sync",
            own_server.url,
            run_id,
            waiting=lambda: bool(waiting_members(admin, run_id, "point")),
            while_waiting=drop_then_arrive,
        )
    finally:
        admin.close()
        other.close()
    observer.check(error, *shown)
    assert error is None, (
        f"the {api} participant did not recover from the dropped connections: {error!r}"
    )


# -- the command line ------------------------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyprocsync", *args]


def command_env(url: str | None = None, password: str | None = None) -> dict[str, str]:
    """This environment, with ``$PYPROCSYNC_REDIS_URL`` set to ``url`` and
    ``$PYPROCSYNC_PASSWORD`` to ``password``, or unset."""
    env = {k: v for k, v in os.environ.items() if k not in (URL_ENV, PASSWORD_ENV)}
    if url is not None:
        env[URL_ENV] = url
    if password is not None:
        env[PASSWORD_ENV] = password
    return env


def command_args(command: str) -> list[str]:
    """A command's arguments besides ``--redis`` (a run id no other test uses)."""
    run = f"secrets-{uuid.uuid4().hex}"
    return {
        "sync": ["sync", "point", "--nodes", "2", "--run", run, "--timeout", "20"],
        "status": ["status", "--run", run],
        "reset": ["reset", "point", "--run", run],
        "clock": ["clock", "--samples", "3"],
        "bench": ["bench", "--rounds", "2", "--nodes", "2", "--quiet"],
    }[command]


def check_command_error(done: subprocess.CompletedProcess[str], code: ExitCode) -> str:
    """One ``pyprocsync: error:`` line, exit ``code``, no password in any output."""
    assert_no_secret({"stdout": done.stdout, "stderr": done.stderr})
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    return assert_one_line_error(done.stderr)


def password_file(directory: Path, password: str = SECRET) -> str:
    """A file holding ``password`` on its first line, for ``--password-file``."""
    path = directory / "password"
    path.write_text(password + "\n", encoding="utf-8")
    return str(path)


def plain_url(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def with_password_from(
    via: str, argv: list[str], port: int, directory: Path
) -> tuple[list[str], dict[str, str]]:
    """``argv`` and its environment with the password ``SECRET`` for the server on
    ``port`` given ``via`` the URL variable, the password variable or a password file."""
    if via == "url variable":
        return argv, command_env(url_of(port))
    if via == "password variable":
        return [*argv, "--redis", plain_url(port)], command_env(password=SECRET)
    return [*argv, "--redis", plain_url(port), "--password-file", password_file(directory)], (
        command_env()
    )


PASSWORD_SOURCES = ["url variable", "password variable", "password file"]
COMMANDS = ["sync", "status", "reset", "clock", "bench"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", PASSWORD_SOURCES)
@pytest.mark.parametrize("command", COMMANDS)
def test_cli_wrong_password(
    locked_server: EmbeddedServer, command: str, via: str, tmp_path: Path
) -> None:
    """Every command with a wrong password (in ``$PYPROCSYNC_REDIS_URL``,
    ``$PYPROCSYNC_PASSWORD`` or ``--password-file``): exit 6, one error line showing
    the URL with ``***``, no password."""
    argv, env = with_password_from(via, cli(*command_args(command)), locked_server.port, tmp_path)
    line = check_command_error(run_command(argv, env=env), ExitCode.CONNECTION)
    assert f":***@127.0.0.1:{locked_server.port}" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["status", "reset", "clock", "bench"])
def test_cli_nobody_listens(command: str) -> None:
    """``status``, ``reset``, ``clock`` and ``bench`` with a password to a port nobody
    listens on: exit 6, one line, no password (``sync``: see test_cli.py)."""
    port = free_port()
    argv = cli(*command_args(command), "--redis", plain_url(port))
    done = run_command(argv, env=command_env(password=SECRET))
    line = check_command_error(done, ExitCode.CONNECTION)
    assert f":***@127.0.0.1:{port}" in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    "url",
    [
        pytest.param(f"redis://:{SECRET}@127.0.0.1:1/0", id="before-at"),
        pytest.param(f"redis://cell:{SECRET}@127.0.0.1:1/0", id="user-and-password"),
        pytest.param(f"redis://127.0.0.1:1/0?password={SECRET}", id="query"),
    ],
)
def test_cli_password_in_redis_option_is_refused(command: str, url: str) -> None:
    """A ``--redis`` URL holding a password (which ``ps`` would show) is refused before
    anything is sent: exit 2, one line pointing to the three ways to give it, no
    password."""
    done = run_command(cli(*command_args(command), "--redis", url), env=command_env())
    check_command_error(done, ExitCode.USAGE)
    line = done.stderr.strip()
    for pointer in (PASSWORD_ENV, "--password-file", "--ask-password", URL_ENV):
        assert pointer in line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["server", *COMMANDS])
@pytest.mark.parametrize("form", ["separate", "equals", "bare"])
def test_cli_password_option_is_refused(command: str, form: str) -> None:
    """``--password VALUE`` (or ``--password=VALUE``, or a bare ``--password``) is
    refused by every command with one line pointing to the three ways to give a
    password; the value is never echoed and nothing starts."""
    given = {
        "separate": ["--password", SECRET],
        "equals": [f"--password={SECRET}"],
        "bare": ["--password"],
    }[form]
    port = free_port()
    args = ["server", "--port", str(port)] if command == "server" else command_args(command)
    done = run_command(cli(*args, *given), env=command_env(plain_url(1)))
    check_command_error(done, ExitCode.USAGE)
    for pointer in (PASSWORD_ENV, "--password-file", "--ask-password"):
        assert pointer in done.stderr
    assert not listening(port)


@pytest.mark.timeout(60)
def test_cli_sync_server_stops_while_waiting(own_server: EmbeddedServer, run_id: str) -> None:
    """``sync`` with the right password waits; the server stops: exit 6, one line, no
    password."""
    argv = cli("sync", "point", "--nodes", "2", "--run", run_id, "--timeout", "20")
    waiter = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(own_server.url),
    )
    try:
        with own_server.client(socket_timeout=5) as admin:
            wait_until(
                lambda: waiting_members(admin, run_id, "point") or waiter.poll() is not None, 15
            )
        own_server.stop()
        out, err = waiter.communicate(timeout=20)
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.communicate()
    check_command_error(
        subprocess.CompletedProcess(argv, waiter.returncode, out, err), ExitCode.CONNECTION
    )


@pytest.mark.timeout(60)
def test_cli_bench_with_password(own_server: EmbeddedServer, tmp_path: Path) -> None:
    """A benchmark against a server with a password succeeds; neither its table, its
    progress on stderr nor its JSON figures name the password."""
    figures = tmp_path / "figures.json"
    argv = cli("bench", "--rounds", "2", "--nodes", "2", "--json", str(figures))
    done = run_command(argv, env=command_env(own_server.url))
    assert done.returncode == ExitCode.OK, done.stderr
    assert_no_secret({"stdout": done.stdout, "stderr": done.stderr, "json": figures.read_text()})


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["sync", "status", "reset", "clock"])
def test_cli_password_in_query_is_not_shown(command: str) -> None:
    """redis-py also takes the password as a query argument (``?password=...``, as
    with every connection option); in ``$PYPROCSYNC_REDIS_URL`` it is used, and the
    error line must not show it either."""
    url = f"redis://127.0.0.1:{free_port()}/0?password={SECRET}"
    done = run_command(cli(*command_args(command)), env=command_env(url))
    check_command_error(done, ExitCode.CONNECTION)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("separator", ["/", "?", "#"])
def test_cli_unencoded_separator_in_password_is_not_shown(separator: str) -> None:
    """A password typed into the URL as it is, with a ``/``, ``?`` or ``#`` that should
    have been percent-encoded: the URL does not split as meant, and the usage error
    must not quote the part of the password that landed in the port or the path."""
    url = f"redis://:s3cret{separator}Pa55-XYZ@127.0.0.1:6379/0"
    done = run_command(cli(*command_args("sync")), env=command_env(url))
    line = check_command_error(done, ExitCode.USAGE)
    assert "percent-encode" in line


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
        redis.Redis(port=port, socket_timeout=5) as anonymous,
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

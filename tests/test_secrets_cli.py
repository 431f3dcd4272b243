"""Passwords never show in what the ``pyprocsync`` commands print or raise: a wrong
password, nobody listening, a password in ``--redis`` or an option (refused), in the
query string or with an unencoded separator, and a server that stops while ``sync``
waits.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest
from secrets_support import (
    SECRET,
    assert_no_secret,
    check_command_error,
    cli,
    command_env,
    password_file,
    plain_url,
    url_of,
)
from support import (
    listening,
    run_command,
    wait_until,
    waiting_members,
)
from tls_support import free_port

from pyprocsync.tools.cli import URL_ENV, ExitCode
from pyprocsync.tools.credentials import PASSWORD_ENV
from pyprocsync.tools.server import EmbeddedServer


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
    assert "refused the credentials" in line, line


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

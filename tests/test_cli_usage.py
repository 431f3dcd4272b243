"""``pyprocsync`` usage: help, version and bad input, run for real as subprocesses.

Bad input is a usage error: exit status 2, one line naming what is wrong, no traceback
(issue 3, "Bad input"); a URL problem names what is wrong with the URL.
"""

from __future__ import annotations

import pytest
from cli_support import CONSOLE_SCRIPT, UNREACHABLE, run
from support import (
    assert_one_line_error,
    server_pids,
)

import pyprocsync
from pyprocsync.tools.cli import URL_ENV, ExitCode
from pyprocsync.tools.credentials import url_problem

COMMANDS = ("bench", "sync", "server", "status", "reset", "clock")


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["sync", "status"])
def test_no_server_given_is_a_usage_error(command: str) -> None:
    """``sync`` and ``status`` without ``--redis`` or ``$PYPROCSYNC_REDIS_URL`` exit 2 with
    one line naming both ways to give a server."""
    args = ["sync", "x", "--nodes", "1"] if command == "sync" else ["status", "--run", "r"]
    done = run(*args)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert_one_line_error(done.stderr, "--redis", URL_ENV)


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

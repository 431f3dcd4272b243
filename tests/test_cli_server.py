"""``pyprocsync server``: the foreground server, its refusals and its exit codes."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable

import pytest
import redis
from cli_support import Background, run
from support import (
    assert_one_line_error,
    children,
    listening,
    server_pids,
    wait_gone,
    wait_until,
)

from pyprocsync.tools.cli import ExitCode
from pyprocsync.tools.server import EmbeddedServer


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

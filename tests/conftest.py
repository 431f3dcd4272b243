"""Fixtures: real servers, an isolated namespace per test, and multi-process participants.

* ``server`` (session): one embedded valkey server shared by every test; tests stay apart
  through ``run_id``, which is unique per test.
* ``fresh_server``: a factory for servers of a test's own (to stop or restart them).
* ``client`` / ``decoded_client``: redis-py clients of ``server``; ``admin``: one per module.
* ``make_sync`` / ``make_event`` / ``make_barrier``: ProcSync, Event and Barrier instances
  bound to the test's ``run_id``, closed at teardown.
* ``background``: starts ``pyprocsync`` commands in the background (``cli_support.py``);
  none outlives the test.
* ``world``: a fake world (``clock_support.FakeWorld``) that pyprocsync's clock readings
  and ``time.sleep`` follow.
* ``locked_server`` (module) / ``own_server``: servers with a password (``secrets_support``).
* ``fake_clock``: the fake clock of the I/O-free flow tests (``protocol_support``).
* ``short_limits``: short connection limits of the listeners (``contract_support``).
* ``participants``: runs ``tests/participant.py`` participants as subprocesses, with a
  hard deadline after which every child is killed and the test fails (``runner.py``).

Helper functions and classes are in ``support.py``.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cli_support import Background
from clock_support import FakeWorld
from contract_support import CONNECT_LIMIT, REPLY_LIMIT
from protocol_support import FakeClock
from report_guard import pytest_runtest_makereport  # noqa: F401  # a hook of the suite
from runner import Participants
from secrets_support import SECRET, SERVER_SECRET
from support import ACL_PASSWORD, make_client

from pyprocsync import Barrier, Event, ProcSync, clock
from pyprocsync.core import limits
from pyprocsync.tools.server import EmbeddedServer


@pytest.fixture(scope="session")
def server() -> Iterator[EmbeddedServer]:
    """One embedded valkey server for the whole session, on a free port."""
    instance = EmbeddedServer().start()
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def fresh_server() -> Iterator[Callable[..., EmbeddedServer]]:
    """Factory: ``fresh_server(port=0)`` starts a server of this test's own.

    Every server it started is stopped at teardown (stopping twice is harmless).
    """
    started: list[EmbeddedServer] = []

    def start(port: int = 0) -> EmbeddedServer:
        instance = EmbeddedServer(port=port).start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


@pytest.fixture
def run_id(request: pytest.FixtureRequest) -> str:
    """A run id no other test uses: a random hex string plus the test's name."""
    return f"{uuid.uuid4().hex}-{request.node.name}"


@pytest.fixture
def client(server: EmbeddedServer) -> Iterator[redis.Redis]:
    """A bytes client of the session server."""
    instance = make_client(server)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def admin(server: EmbeddedServer) -> Iterator[redis.Redis]:
    """A bytes client of the session server shared by a module's tests (hypothesis
    examples cannot use function-scoped fixtures), to look at what they stored."""
    client = redis.Redis(host=server.bind, port=server.port)
    yield client
    client.close()


@pytest.fixture
def decoded_client(server: EmbeddedServer) -> Iterator[redis.Redis]:
    """A ``decode_responses=True`` client of the session server."""
    instance = make_client(server, decode_responses=True)
    yield instance
    instance.close()


@pytest.fixture
def make_user(client: redis.Redis) -> Iterator[Callable[[str], str]]:
    """Factory: ``make_user(rule) -> name`` makes an ACL user of the session server with
    ``rule`` (password ``support.ACL_PASSWORD``); every user it made is deleted at
    teardown."""
    users: list[str] = []

    def make(rule: str) -> str:
        name = f"u{uuid.uuid4().hex[:10]}"
        client.execute_command("ACL", "SETUSER", name, "on", f">{ACL_PASSWORD}", *rule.split())
        users.append(name)
        return name

    yield make
    for name in users:
        client.execute_command("ACL", "DELUSER", name)


@pytest.fixture
def make_sync(client: redis.Redis, run_id: str) -> Iterator[Callable[..., ProcSync]]:
    """Factory of ProcSync instances in this test's run; all are closed at teardown.

    ``make_sync(delay=0.05, client=None, **options)``; the client defaults to ``client``.
    Unless a test says ``on_late``, its instances proceed when they learn of an instant
    late: on a loaded machine a scheduling stall longer than a test's short lead time is
    no failure of what the test checks (tests about lateness pass ``on_late="raise"``).
    """
    made: list[ProcSync] = []

    def make(delay: float = 0.05, *, client: redis.Redis | None = None, **options: Any) -> ProcSync:
        options.setdefault("on_late", "proceed")
        instance = ProcSync(client if client is not None else default, run_id, delay, **options)
        made.append(instance)
        return instance

    default = client
    yield make
    for instance in made:
        instance.close()


@pytest.fixture
def make_event(client: redis.Redis, run_id: str) -> Iterator[Callable[..., Event]]:
    """Factory of Events in this test's run (``make_event(name, **options)``); all are
    closed at teardown."""
    made: list[Event] = []

    def make(name: str, **options: Any) -> Event:
        event = Event(client, name, run_id=run_id, **options)
        made.append(event)
        return event

    yield make
    for event in made:
        event.close()


@pytest.fixture
def make_barrier(client: redis.Redis, run_id: str) -> Iterator[Callable[..., Barrier]]:
    """Factory of Barriers in this test's run (``make_barrier(name, parties, ...)``,
    default ``delay=0.01``); all are closed at teardown."""
    made: list[Barrier] = []

    def make(name: str, parties: int, *args: Any, **options: Any) -> Barrier:
        options.setdefault("delay", 0.01)
        barrier = Barrier(client, name, parties, *args, run_id=run_id, **options)
        made.append(barrier)
        return barrier

    yield make
    for barrier in made:
        barrier.close()


@pytest.fixture
def participants(server: EmbeddedServer, run_id: str, tmp_path: Path) -> Iterator[Participants]:
    """Runs participant subprocesses against the session server in this test's run."""
    runner = Participants(server.url, run_id, tmp_path)
    yield runner
    runner.kill_all()


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


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> FakeWorld:
    """A fake world: pyprocsync's clock readings and ``time.sleep`` follow it."""
    fake = FakeWorld()
    monkeypatch.setattr(clock, "monotonic_ns", fake.monotonic_ns)
    monkeypatch.setattr(clock, "monotonic", fake.monotonic)
    monkeypatch.setattr(clock, "time_ns", fake.time_ns)
    monkeypatch.setattr(clock, "kernel_clock", fake.kernel_clock)
    monkeypatch.setattr(time, "sleep", fake.sleep)
    return fake


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


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A fake clock (``protocol_support.FakeClock``) that pyprocsync's clock readings
    follow; the kernel says nothing of it (no clock bound)."""
    fake = FakeClock()
    monkeypatch.setattr(clock, "monotonic", lambda: fake.mono)
    monkeypatch.setattr(clock, "time_ns", lambda: fake.wall_ns)
    monkeypatch.setattr(clock, "kernel_clock", lambda: None)
    return fake


@pytest.fixture
def short_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection limits short enough for a quick test of calls without a timeout
    (``contract_support.CONNECT_LIMIT`` and ``REPLY_LIMIT``)."""
    monkeypatch.setattr(limits, "CONNECT_TIMEOUT", CONNECT_LIMIT)
    monkeypatch.setattr(limits, "REPLY_TIMEOUT", REPLY_LIMIT)

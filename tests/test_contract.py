"""The timeout contract under faults, for every primitive in both shells.

``timeout`` bounds a whole call, from entry to return (connecting, the handshake,
loading the scripts, subscribing, every command): a wait whose server does not answer
raises ``TimeOutError`` at ``timeout`` plus at most ``CALL_TIMEOUT_FLOOR``; a server
that cannot be reached gives ``ConnectionLostError`` naming the server and the event;
a call without a timeout still ends in a typed error after the connection limits
(``CONNECT_TIMEOUT``, ``REPLY_TIMEOUT``, made short here).

The faults are real: a TCP listener that accepts and never answers, a refused port, a
server stopped with SIGSTOP before the first call or during a wait, and every
connection dropped by the server after a first call. Bounds are generous (a busy
2-core machine): ``timeout + SLACK``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from contract_support import CONNECT_LIMIT, REPLY_LIMIT, SHELLS, SLACK, client_of, settled
from netproxy import NetProxy
from support import arun, make_client, wait_until

import pyprocsync
import pyprocsync.asyncio
from pyprocsync import (
    BrokenBarrierError,
    ConnectionLostError,
    ProcSyncError,
    TimeOutError,
)
from pyprocsync.core.keys import EventKeys, FlagKeys
from pyprocsync.tools.server import EmbeddedServer

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("short_limits")]

#: The waits' timeout, seconds.
TIMEOUT = 0.6


WAITS = ["sync", "event_wait", "barrier_wait"]


PRIMITIVES = [*WAITS, "event_set", "event_clear", "reset"]


@pytest.fixture
def pausable(fresh_server: Callable[..., EmbeddedServer]) -> EmbeddedServer:
    """A server of the test's own, to be stopped (SIGSTOP) and resumed."""
    return fresh_server()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port whose listener accepts connections and never answers."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()


def refused_port() -> int:
    """A loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def paused(server: EmbeddedServer) -> Iterator[None]:
    """SIGSTOP ``server`` for the block; SIGCONT it whatever happens."""
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def build(shell: str, primitive: str, client: Any, run_id: str) -> Any:
    """The object whose method is under test."""
    module: Any = pyprocsync if shell == "blocking" else pyprocsync.asyncio
    if primitive.startswith("event"):
        return module.Event(client, "ev", run_id=run_id)
    if primitive == "barrier_wait":
        return module.Barrier(client, "ev", 2, run_id=run_id, delay=0)
    return module.ProcSync(client, run_id, 0)


def invoke(instance: Any, primitive: str, timeout: float | None) -> Any:
    """Call (or, asyncio, start) the method under test."""
    if primitive == "sync":
        return instance.sync("ev", 2, timeout)
    if primitive in WAITS:
        return instance.wait(timeout)
    if primitive == "reset":
        return instance.reset("ev")
    return getattr(instance, primitive.removeprefix("event_"))()


def warm_up(instance: Any) -> Any:
    """A first call that changes nothing (it loads the scripts, opens connections)."""
    if isinstance(instance, (pyprocsync.Event, pyprocsync.asyncio.Event)):
        return instance.is_set()
    if isinstance(instance, (pyprocsync.Barrier, pyprocsync.asyncio.Barrier)):
        return instance.reset()
    return instance.reset("ev")


async def close(instance: Any, client: Any) -> None:
    await settled(instance.close())
    await settled(client.aclose() if isinstance(client, aioredis.Redis) else client.close())


def attempt(
    shell: str,
    primitive: str,
    port: int,
    timeout: float | None = TIMEOUT,
    *,
    during: Callable[[], None] | None = None,
    run_id: str = "",
) -> tuple[object, float]:
    """Run the call against ``127.0.0.1:port`` in a new client, in run ``run_id``
    (default: a new one); return its result (or the exception it raised) and how long
    it took. ``during`` runs (in another thread) while the call runs."""
    helper = None if during is None else threading.Thread(target=during)

    async def main() -> tuple[object, float]:
        client = client_of(shell, "127.0.0.1", port)
        instance = build(shell, primitive, client, run_id or uuid.uuid4().hex)
        started = time.monotonic()
        if helper is not None:
            helper.start()
        try:
            result: object = await settled(invoke(instance, primitive, timeout))
        except ProcSyncError as exc:
            result = exc
        took = time.monotonic() - started
        await close(instance, client)
        return result, took

    outcome, took = arun(main, timeout=30)
    if helper is not None:
        helper.join()
    return outcome, took


def assert_timed_out(outcome: object, took: float, primitive: str) -> None:
    """A wait gave up with TimeOutError (a Barrier's is also a BrokenBarrierError) by
    its timeout plus the floor, with room for a loaded machine."""
    assert isinstance(outcome, TimeOutError), repr(outcome)
    if primitive == "barrier_wait":
        assert isinstance(outcome, BrokenBarrierError)
    assert TIMEOUT - 0.05 <= took <= TIMEOUT + SLACK, took


def assert_lost(outcome: object, took: float, bound: float, port: int) -> None:
    """A typed ConnectionLostError naming the server and the event, within ``bound``."""
    assert isinstance(outcome, ConnectionLostError), repr(outcome)
    assert isinstance(outcome, ConnectionError)
    assert f"127.0.0.1:{port}" in str(outcome)
    assert outcome.event == "ev"
    assert "'ev'" in str(outcome)
    assert took <= bound, took


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("shell", SHELLS)
def test_silent_server(shell: str, primitive: str, silent_port: int) -> None:
    """A port that accepts and never answers: a wait raises TimeOutError at its timeout
    (its first connection's handshake included); a call without a timeout raises
    ConnectionLostError once the connect limit passed."""
    outcome, took = attempt(shell, primitive, silent_port)
    if primitive in WAITS:
        assert_timed_out(outcome, took, primitive)
    else:
        assert_lost(outcome, took, CONNECT_LIMIT + SLACK, silent_port)


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("shell", SHELLS)
def test_refused_port(shell: str, primitive: str) -> None:
    """Nobody listens: ConnectionLostError at once (no retries), naming the server and
    the event, never redis-py's own exception."""
    port = refused_port()
    outcome, took = attempt(shell, primitive, port)
    assert_lost(outcome, took, SLACK, port)


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("shell", SHELLS)
def test_server_paused_before_the_first_call(
    shell: str, primitive: str, pausable: EmbeddedServer
) -> None:
    """A stopped server accepts connections (the kernel does) but answers nothing: the
    same as a silent port."""
    with paused(pausable):
        outcome, took = attempt(shell, primitive, pausable.port)
    if primitive in WAITS:
        assert_timed_out(outcome, took, primitive)
    else:
        assert_lost(outcome, took, CONNECT_LIMIT + SLACK, pausable.port)


def channel_of(primitive: str, run_id: str) -> str:
    if primitive == "event_wait":
        return FlagKeys.of("pyprocsync", run_id, "ev").channel
    return EventKeys.of("pyprocsync", run_id, "ev").channel


def stop_once_waiting(server: EmbeddedServer, primitive: str, run_id: str) -> Callable[[], None]:
    """What stops ``server`` once the wait in ``run_id`` has subscribed (its scripts
    are loaded, its connections open)."""

    def stop() -> None:
        admin = make_client(server)
        channel = channel_of(primitive, run_id)
        wait_until(lambda: admin.pubsub_numsub(channel)[0][1] > 0, 10, "the subscription")
        admin.close()
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)

    return stop


@pytest.mark.parametrize("primitive", WAITS)
@pytest.mark.parametrize("shell", SHELLS)
def test_server_paused_during_a_wait(shell: str, primitive: str, pausable: EmbeddedServer) -> None:
    """The server stops while the wait waits (subscribed, arrival counted): TimeOutError
    at the timeout plus the floor, not after a socket timeout of redis-py's."""
    run_id = uuid.uuid4().hex
    with contextlib.ExitStack() as resume:
        resume.callback(os.kill, pausable.process.pid if pausable.process else 0, signal.SIGCONT)
        stop = stop_once_waiting(pausable, primitive, run_id)
        outcome, took = attempt(shell, primitive, pausable.port, 2.0, during=stop, run_id=run_id)
    assert isinstance(outcome, TimeOutError), repr(outcome)
    assert 2.0 - 0.05 <= took <= 2.0 + SLACK, took


@pytest.mark.parametrize("primitive", ["sync", "event_wait"])
@pytest.mark.parametrize("shell", SHELLS)
def test_no_timeout_and_a_server_that_stops_answering(
    shell: str, primitive: str, pausable: EmbeddedServer
) -> None:
    """``timeout=None`` and a server that stops during the wait: a typed error
    (ConnectionLostError) after the reply limit, never an endless wait."""
    run_id = uuid.uuid4().hex
    with contextlib.ExitStack() as resume:
        resume.callback(os.kill, pausable.process.pid if pausable.process else 0, signal.SIGCONT)
        stop = stop_once_waiting(pausable, primitive, run_id)
        outcome, took = attempt(shell, primitive, pausable.port, None, during=stop, run_id=run_id)
    assert isinstance(outcome, ConnectionLostError), repr(outcome)
    # Stopped within a second or so; a heartbeat (1 s) to the next check, then the limit.
    assert took <= 1.0 + REPLY_LIMIT + 2 * SLACK, took


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("shell", SHELLS)
def test_connections_dropped_after_the_first_call(
    shell: str, primitive: str, server: EmbeddedServer
) -> None:
    """Every connection is closed by the server between two calls of one instance: the
    second call connects again and behaves as on a healthy server (a wait alone gives
    up at its timeout, the other calls return)."""
    admin = make_client(server)
    mine = admin.client_id()
    run_id = uuid.uuid4().hex

    def drop_all() -> None:
        for entry in admin.client_list():
            if int(entry["id"]) != mine:
                admin.client_kill_filter(_id=int(entry["id"]))

    def second_call(started: float, outcome: object) -> None:
        took = time.monotonic() - started
        if primitive == "event_wait":  # nobody sets it: False at the timeout
            assert outcome is False, repr(outcome)
            assert TIMEOUT - 0.05 <= took <= TIMEOUT + SLACK, took
        elif primitive in WAITS:
            assert_timed_out(outcome, took, primitive)
        else:
            assert not isinstance(outcome, BaseException), repr(outcome)
            assert took <= SLACK, took

    async def main() -> None:
        client = client_of(shell, server.bind, server.port)
        instance = build(shell, primitive, client, run_id)
        await settled(warm_up(instance))
        await asyncio.to_thread(drop_all)  # the loop runs meanwhile: it sees the drops
        started = time.monotonic()
        try:
            result: object = await settled(invoke(instance, primitive, TIMEOUT))
        except ProcSyncError as exc:
            result = exc
        second_call(started, result)
        await close(instance, client)

    arun(main, timeout=30)


@pytest.mark.parametrize("primitive", WAITS)
@pytest.mark.parametrize("shell", SHELLS)
def test_no_timeout_and_a_subscription_never_confirmed(
    shell: str, primitive: str, server: EmbeddedServer
) -> None:
    """``timeout=None``, and the link stalls after the SUBSCRIBE went out on a pub/sub
    connection that was open and working: its confirmation never comes (the race of
    issue 21, made deterministic: a server stopped after registering a subscription and
    before its reply left). The listener gives that connection up after the reply limit,
    the wait subscribes on a new one, whose handshake does not get through either, and
    the call raises ConnectionLostError: never an endless wait for the confirmation."""
    run_id = uuid.uuid4().hex
    module: Any = pyprocsync if shell == "blocking" else pyprocsync.asyncio
    with NetProxy(server.bind, server.port) as link:

        async def main() -> tuple[object, float]:
            client = client_of(shell, "127.0.0.1", link.port)
            instance = build(shell, primitive, client, run_id)
            warm = module.Event(client, "warm", run_id=run_id)
            await settled(warm_up(instance))  # scripts loaded, command connection open
            # A wait that times out leaves its channel subscribed: the pub/sub
            # connection is open and has answered.
            assert await settled(warm.wait(0.2)) is False
            link.pause()
            started = time.monotonic()
            try:
                result: object = await settled(invoke(instance, primitive, None))
            except ProcSyncError as exc:
                result = exc
            took = time.monotonic() - started
            link.resume()
            await settled(warm.close())
            await close(instance, client)
            return result, took

        outcome, took = arun(main, timeout=30)
    assert isinstance(outcome, ConnectionLostError), repr(outcome)
    assert outcome.event == "ev"
    assert took <= REPLY_LIMIT + CONNECT_LIMIT + 2 * SLACK, took

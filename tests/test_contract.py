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
import inspect
import math
import os
import random
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from support import arun, await_until, make_client, wait_until

import pyprocsync
import pyprocsync.asyncio
from pyprocsync import (
    BrokenBarrierError,
    ConnectionLostError,
    ProcSyncError,
    TimeOutError,
)
from pyprocsync.core.keys import EventKeys, FlagKeys
from pyprocsync.shells import listeners
from pyprocsync.tools.server import EmbeddedServer

#: The waits' timeout, seconds.
TIMEOUT = 0.6
#: Room for a loaded machine on top of the contract's bound.
SLACK = 1.5
#: The connection limits while these tests run (calls without a timeout), seconds.
CONNECT_LIMIT = 1.0
REPLY_LIMIT = 1.2

WAITS = ["sync", "event_wait", "barrier_wait"]
PRIMITIVES = [*WAITS, "event_set", "event_clear", "reset"]
SHELLS = ["blocking", "asyncio"]

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def short_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection limits short enough for a quick test of calls without a timeout."""
    monkeypatch.setattr(listeners, "CONNECT_TIMEOUT", CONNECT_LIMIT)
    monkeypatch.setattr(listeners, "REPLY_TIMEOUT", REPLY_LIMIT)


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


async def settled(value: Any) -> Any:
    """``value``, awaited if it is awaitable (an asyncio call; a blocking one has
    returned already)."""
    return await value if inspect.isawaitable(value) else value


def client_of(shell: str, host: str, port: int) -> Any:
    """A new client of ``host:port`` for ``shell``."""
    return (redis.Redis if shell == "blocking" else aioredis.Redis)(host=host, port=port)


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


# -- polls: wait(0) and negative timeouts, as threading -------------------------------------


def threading_outcomes() -> dict[str, object]:
    """What threading's Event and Barrier do with the polls under test."""
    event = threading.Event()
    outcomes: dict[str, object] = {f"clear {t}": event.wait(t) for t in (0, -1, -math.inf)}
    event.set()
    outcomes.update({f"set {t}": event.wait(t) for t in (0, -1, -math.inf)})
    alone = threading.Barrier(1)
    outcomes["parties=1"] = alone.wait(0)
    pair = threading.Barrier(2)
    try:
        pair.wait(0)
    except threading.BrokenBarrierError:
        outcomes["parties=2"] = "broken"
    outcomes["broken after"] = pair.broken
    return outcomes


@pytest.mark.parametrize("shell", SHELLS)
def test_polls_behave_as_threading(shell: str, server: EmbeddedServer, run_id: str) -> None:
    """``Event.wait(t)`` with t <= 0 returns the flag at once; ``Barrier.wait(0)`` of a
    barrier it does not fill breaks it (BrokenBarrierError, also a TimeOutError), of
    one it fills passes: exactly threading's outcomes. A poll leaves no subscription."""
    expected = threading_outcomes()
    module: Any = pyprocsync if shell == "blocking" else pyprocsync.asyncio
    admin = make_client(server)

    async def main(client: Any) -> dict[str, object]:
        got: dict[str, object] = {}
        event = module.Event(client, "poll", run_id=run_id)
        for t in (0, -1, -math.inf):
            started = time.monotonic()
            got[f"clear {t}"] = await settled(event.wait(t))
            assert time.monotonic() - started < SLACK
        assert admin.pubsub_numsub(FlagKeys.of("pyprocsync", run_id, "poll").channel)[0][1] == 0
        await settled(event.set())
        for t in (0, -1, -math.inf):
            got[f"set {t}"] = await settled(event.wait(t))
        alone = module.Barrier(client, "alone", 1, run_id=run_id, delay=0)
        got["parties=1"] = await settled(alone.wait(0))
        pair = module.Barrier(client, "pair", 2, run_id=run_id, delay=0)
        with pytest.raises(BrokenBarrierError) as broken:
            await settled(pair.wait(0))
        assert isinstance(broken.value, TimeOutError)
        got["parties=2"] = "broken"
        got["broken after"] = await settled(pair.broken if shell == "blocking" else pair.broken())
        for instance in (event, alone, pair):
            await settled(instance.close())
        return got

    async def run() -> dict[str, object]:
        client = client_of(shell, server.bind, server.port)
        try:
            return await main(client)
        finally:
            await settled(client.aclose() if shell == "asyncio" else client.close())

    got = arun(run)
    assert got == expected


@pytest.mark.parametrize("shell", SHELLS)
def test_a_poll_that_fills_the_barrier_releases_it(
    shell: str, server: EmbeddedServer, run_id: str
) -> None:
    """``Barrier.wait(0)`` by the last of its parties releases the round (threading:
    the same); the waiting party gets the other index."""

    def blocking() -> list[int]:
        with redis.Redis(host=server.bind, port=server.port) as client:
            first = pyprocsync.Barrier(client, "fill", 2, run_id=run_id, delay=0)
            last = pyprocsync.Barrier(client, "fill", 2, run_id=run_id, delay=0)
            waiting: list[int] = []
            thread = threading.Thread(target=lambda: waiting.append(first.wait(30)))
            thread.start()
            wait_until(lambda: last.n_waiting == 1, 10, "the first party")
            indices = [last.wait(0)]
            thread.join()
            first.close()
            last.close()
            return indices + waiting

    async def asynchronous() -> list[int]:
        client = aioredis.Redis(host=server.bind, port=server.port)
        first = pyprocsync.asyncio.Barrier(client, "fill", 2, run_id=run_id, delay=0)
        last = pyprocsync.asyncio.Barrier(client, "fill", 2, run_id=run_id, delay=0)
        waiting = asyncio.ensure_future(first.wait(30))

        async def first_waits() -> bool:
            return await last.n_waiting() == 1

        await await_until(first_waits, 10, "the first party")
        indices = [await last.wait(0), await waiting]
        await first.aclose()
        await last.aclose()
        await client.aclose()
        return indices

    indices = blocking() if shell == "blocking" else arun(asynchronous)
    assert sorted(indices) == [0, 1]


# -- cancellation always cancels (asyncio) --------------------------------------------------

#: Cancellations in the stress test.
CANCELLATIONS = 500


@pytest.mark.timeout(120)
def test_cancellation_stress(server: EmbeddedServer, run_id: str) -> None:
    """500 waits of ``sync``, ``Event.wait`` and ``Barrier.wait`` cancelled at random
    points (before the subscription, with ARRIVE in flight, after the announcement,
    inside the final spin: a partner arrives, or sets, half of the time, and the
    release instant is 3 ms after it): every cancelled task ends with CancelledError
    (none hangs); no arrival stays counted; after closing, no subscription is left."""
    rng = random.Random(12)
    admin = make_client(server)

    async def main() -> dict[str, int]:
        client = aioredis.Redis(host=server.bind, port=server.port)
        mine, partner = (pyprocsync.asyncio.ProcSync(client, run_id, 0.003) for _ in range(2))
        event = pyprocsync.asyncio.Event(client, "e", run_id=run_id, delay=0.003)
        barriers = [
            pyprocsync.asyncio.Barrier(client, "b", 2, run_id=run_id, delay=0.003) for _ in range(2)
        ]
        reader = pyprocsync.asyncio.Barrier(client, "s", 2, run_id=run_id)
        counts = {"cancelled": 0, "finished first": 0}
        for _ in range(CANCELLATIONS):
            kind = rng.choice(["sync", "event", "barrier"])
            with_partner = rng.random() < 0.5
            if kind == "sync":
                task = asyncio.ensure_future(mine.sync("s", 2, 5))
                other = partner.sync("s", 2, 5) if with_partner else None
            elif kind == "barrier":
                task = asyncio.ensure_future(barriers[0].wait(5))
                other = barriers[1].wait(5) if with_partner else None
            else:
                await event.clear()
                task = asyncio.ensure_future(event.wait(5))
                other = event.set() if with_partner else None
            helper = None if other is None else asyncio.ensure_future(other)
            await asyncio.sleep(rng.uniform(0, 0.004))  # cancel at a random point of the call
            requested = task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, f"a cancelled {kind} hangs"
            if requested:
                assert task.cancelled(), f"{kind}: {task!r}"
                counts["cancelled"] += 1
            else:
                counts["finished first"] += 1
            if helper is not None:  # a partner left waiting alone is cancelled too
                helper.cancel()
                await asyncio.wait({helper}, timeout=5)
                assert helper.done(), "a cancelled partner hangs"
                if not helper.cancelled():
                    helper.exception()  # retrieved (a partner may time out or be broken)
            if kind != "event":
                name = "s" if kind == "sync" else "b"
                state = reader if name == "s" else barriers[0]
                assert await state.n_waiting() == 0, f"an arrival of {name!r} leaked"
                if await state.broken():
                    await state.reset()
        for instance in (mine, partner, event, *barriers, reader):
            await instance.aclose()
        await client.aclose()
        return counts

    counts = arun(main, timeout=100)
    assert counts["cancelled"] > CANCELLATIONS // 2, counts
    channels = [
        EventKeys.of("pyprocsync", run_id, "s").channel,
        EventKeys.of("pyprocsync", run_id, "b").channel,
        FlagKeys.of("pyprocsync", run_id, "e").channel,
    ]
    wait_until(
        lambda: all(count == 0 for _, count in admin.pubsub_numsub(*channels)),
        10,
        "the subscriptions to go",
    )
    assert admin.pubsub_channels(f"*{run_id}*") == []

"""Server-clock mode against the real server (issue 5): rounds, Events and Barriers
released on the server's clock, mixed modes (the last arrival's decides), TIME failures,
and the system-clock mode's warning before the first arrival.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aioredis
from clock_support import CLOCK_LOGGER, MS, clock_records, stored_outcome
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import (
    arun,
    in_threads,
    make_client,
    start_thread,
    wait_until,
    waiting_members,
)

import pyprocsync.asyncio as aio
from pyprocsync import (
    Barrier,
    ConnectionLostError,
    Event,
    ProcSync,
    SyncResult,
    clock,
)
from pyprocsync.core.keys import FlagKeys
from pyprocsync.tools.server import EmbeddedServer


def server_instant_us(result: SyncResult) -> float:
    """The release instant on the server's clock, µs, as this participant saw it."""
    assert result.clock_offset is not None
    return (result.release_at + result.clock_offset) * 1e6


@pytest.mark.timeout(60)
def test_server_clock_rounds_release_everyone_together(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Three instances with ``clock="server"``, three rounds: per round one generation,
    indices 0..2, the lead 0.05 s; the stored outcome is ``R <g> <µs> 50000 s`` (marked
    as server time); every participant's ``release_at + clock_offset`` is that instant
    (within 3 µs of rounding); ``clock_offset`` is small on one machine and
    ``clock_uncertainty`` positive; they return within 20 ms of each other."""
    nodes = [make_sync(0.05, clock="server") for _ in range(3)]
    for generation in range(3):
        outcomes = in_threads(*(lambda n=n: n.sync("go", 3, 20) for n in nodes), timeout=30)
        results: list[SyncResult] = [o.result() for o in outcomes]
        assert {r.generation for r in results} == {generation}
        assert sorted(r.index for r in results) == [0, 1, 2]
        kind, gen, at_us, lead_us, basis = stored_outcome(client, run_id, "go", generation).split()
        assert (kind, int(gen), int(lead_us), basis) == ("R", generation, 50_000, "s")
        for result in results:
            assert result.delay == pytest.approx(0.05)
            assert result.clock_offset is not None
            assert result.clock_uncertainty is not None
            assert abs(result.clock_offset) < 0.005
            assert 0 < result.clock_uncertainty < 0.5
            assert abs(server_instant_us(result) - int(at_us)) <= 3
            assert -0.001 <= result.late_by < 0.05
        finished = [o.finished_at for o in outcomes if o.finished_at is not None]
        assert max(finished) - min(finished) < 0.02


@pytest.mark.timeout(60)
def test_system_clock_results_have_no_clock_fields(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """In the default mode the outcome carries no server-time mark and both clock fields
    of SyncResult are None."""
    a, b = make_sync(0.05), make_sync(0.05)
    outcomes = in_threads(lambda: a.sync("go", 2, 20), lambda: b.sync("go", 2, 20))
    results = [o.result() for o in outcomes]
    assert all(r.clock_offset is None and r.clock_uncertainty is None for r in results)
    assert len(stored_outcome(client, run_id, "go", 0).split()) == 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("first", "last"), [("system", "server"), ("server", "system")])
def test_the_last_arrivals_mode_decides(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str, first: str, last: str
) -> None:
    """Mixed modes: the instant's basis is the last arrival's mode, and the first
    participant follows it whatever its own setting (server-time instant: both report a
    clock offset; wall-clock instant: neither does)."""
    early, late = make_sync(0.05, clock=first), make_sync(0.05, clock=last)
    thread, waiting = start_thread(lambda: early.sync("mix", 2, 20))
    wait_until(lambda: waiting_members(client, run_id, "mix"), what="the first arrival")
    closing = late.sync("mix", 2, 20)
    thread.join(20)
    results = [waiting.result(), closing]
    on_server = last == "server"
    assert all((r.clock_offset is not None) is on_server for r in results)
    assert stored_outcome(client, run_id, "mix", 0).endswith(" s") is on_server


@pytest.mark.timeout(60)
def test_event_with_server_clock_and_delay(client: redis.Redis, run_id: str) -> None:
    """``Event(clock="server", delay=0.05)``: the set is stored as ``S 1 <µs> 50000 s``
    (server time); a waiter woken by it returns True, no earlier than the lead after the
    set began (2 ms slack for the estimate's uncertainty)."""
    setter = Event(client, "flag", run_id=run_id, delay=0.05, clock="server")
    waiter = Event(client, "flag", run_id=run_id, delay=0.05, clock="server")
    channel = FlagKeys.of("pyprocsync", run_id, "flag").channel
    try:
        thread, woken = start_thread(lambda: waiter.wait(20))
        wait_until(lambda: client.pubsub_numsub(channel)[0][1] > 0, what="the waiter")
        set_at = time.monotonic()
        setter.set()
        thread.join(20)
        assert woken.result() is True
        assert woken.finished_at is not None
        assert woken.finished_at - set_at >= 0.05 - 0.002
        stored = client.hget(FlagKeys.of("pyprocsync", run_id, "flag").state, "o")
        assert stored is not None
        kind, sets, _at, lead, basis = stored.decode().split()
        assert (kind, sets, lead, basis) == ("S", "1", "50000", "s")
    finally:
        setter.close()
        waiter.close()


@pytest.mark.timeout(60)
def test_barrier_with_server_clock(client: redis.Redis, run_id: str) -> None:
    """``Barrier(clock="server")`` with an action: indices 0 and 1, the action once, the
    release instant on the server's clock (stored outcome marked ``s``), both parties
    back within 20 ms of each other."""
    ran: list[int] = []
    barriers = [
        Barrier(client, "bar", 2, lambda: ran.append(1), run_id=run_id, delay=0.05, clock="server")
        for _ in range(2)
    ]
    try:
        outcomes = in_threads(*(lambda b=b: b.wait(20) for b in barriers), timeout=30)
        assert sorted(o.result() for o in outcomes) == [0, 1]
        assert ran == [1]
        assert stored_outcome(client, run_id, "bar", 0).endswith(" 50000 s")
        finished = [o.finished_at for o in outcomes if o.finished_at is not None]
        assert max(finished) - min(finished) < 0.02
    finally:
        for barrier in barriers:
            barrier.close()


@pytest.mark.timeout(60)
def test_asyncio_server_clock_round(server: EmbeddedServer, run_id: str) -> None:
    """The asyncio ProcSync takes the same option: two tasks, ``clock="server"``, one
    round: both results carry the clock fields and agree on the server-time instant."""

    async def body() -> list[SyncResult]:
        client = aioredis.Redis(host=server.bind, port=server.port)
        nodes = [aio.ProcSync(client, run_id, 0.05, clock="server") for _ in range(2)]
        try:
            return list(
                await asyncio.wait_for(asyncio.gather(*(n.sync("go", 2, 20) for n in nodes)), 30)
            )
        finally:
            for node in nodes:
                await node.aclose()
            await client.aclose()

    results = arun(body)
    assert all(r.clock_offset is not None for r in results)
    instants = [server_instant_us(r) for r in results]
    assert max(instants) - min(instants) <= 3


@pytest.mark.timeout(60)
def test_server_mode_time_failure_is_connection_lost(
    fresh_server: Callable[..., EmbeddedServer], run_id: str
) -> None:
    """Server-clock mode, the server gone after a first round: the next call's clock
    estimate (the previous one is stale) cannot be taken and the call raises
    ConnectionLostError, not redis-py's exception, carrying the call's context like
    every ProcSyncError (``event`` and ``run_id``; no generation: nothing was counted)."""
    instance = fresh_server()
    client = make_client(instance, retry=Retry(NoBackoff(), 0))
    node = ProcSync(client, run_id, 0.01, clock="server", clock_refresh=0.05, on_late="proceed")
    try:
        assert node.sync("solo", 1, 10).clock_offset is not None
        instance.stop()
        time.sleep(0.1)  # the estimate (clock_refresh 0.05 s) ages: the next sync reads TIME
        with pytest.raises(ConnectionLostError, match="TIME") as caught:
            node.sync("solo", 1, 10)
        assert caught.value.generation is None
        assert (caught.value.event, caught.value.run_id) == ("solo", run_id)
    finally:
        node.close()
        client.close()


@pytest.mark.timeout(60)
def test_system_mode_warns_before_the_first_arrival(
    make_sync: Callable[..., ProcSync],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """System-clock mode on a host whose clock (as pyprocsync reads it) is 250 ms ahead
    of the server's: an instance with ``delay=0.05`` warns once, at its first ``sync``,
    not at later ones; with ``delay="auto"`` it compares with ``auto_floor`` and warns
    too; ``delay=0`` and ``clock="server"`` make no check."""
    caplog.set_level(logging.WARNING, logger=CLOCK_LOGGER)
    real = time.time_ns
    monkeypatch.setattr(clock, "time_ns", lambda: real() + 250 * MS)

    def warnings_after(node: ProcSync, calls: int) -> int:
        caplog.clear()
        for _ in range(calls):
            node.sync("alone", 1, 10)
        return len(clock_records(caplog, logging.WARNING))

    assert warnings_after(make_sync(0.05), 3) == 1
    assert "ahead of" in clock_records(caplog, logging.WARNING)[0].getMessage()
    assert warnings_after(make_sync("auto", auto_floor=0.002, on_late="proceed"), 2) == 1
    assert warnings_after(make_sync(0), 2) == 0
    assert warnings_after(make_sync(0.05, clock="server"), 2) == 0

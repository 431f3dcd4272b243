"""Every primitive, blocking and asyncio, on fakeredis: threads (or tasks) of this
process sharing one ``FakeServer``, through the plugin's ``pyprocsync_fake`` fixture.

This is the supported way to test a control script without a server (see
docs/testing.rst); the integration tests stay on real servers. Rounds run in loops with
the lead times users pick (0.3 s, 0.05 s), and participants must learn of releases
promptly: before the listener stopped trusting a fake connection's ``fileno()``, a
made-up descriptor number made it see messages only at its 1 s idle wake, so every
round but the first was learned hundreds of milliseconds late. The loops let a
participant that learns late proceed (``on_late="proceed"``), since a busy machine may
hold one thread back for longer than the lead time now and then, and allow one late
round per loop (see :func:`check_prompt`).
Timing bounds are generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from typing import TypeVar

import fakeredis
import fakeredis.aioredis
import pytest
from primitive_support import async_ready_counter, await_counter, ready_counter, wait_counter
from support import LONG, PROMPT, arun, in_threads, join, start_thread, wait_until

import pyprocsync.asyncio
from pyprocsync import (
    Barrier,
    BrokenBarrierError,
    ConnectionLostError,
    ProcSync,
    SyncResult,
    TimeOutError,
)
from pyprocsync.tools.pytest_plugin import FakeCell
from pyprocsync.tools.status import read_members, read_status

T = TypeVar("T")

#: Participants and rounds of the loops.
NODES = 3
ROUNDS = 5

#: How long after the release instant a participant may return. The defect it guards
#: against made participants learn of a release ~700 ms late.
LATE_BOUND = 0.1

#: Late rounds allowed in a loop of :data:`ROUNDS`: a busy machine may hold a thread
#: back now and then. (The defect made three or four of five rounds late.)
LATE_ROUNDS = 1

#: How far apart participants' conversions of one server-clock instant may be: each
#: estimates its offset to fakeredis's TIME (this host's clock) on its own.
SERVER_CLOCK_SPREAD = 0.01


def check_rounds(per_node: list[list[SyncResult]], instants_apart: float = 0.0) -> None:
    """``per_node[i]`` are participant i's results of consecutive rounds: per round one
    generation (0, 1, ...), one release instant (its conversions to this host's clock
    at most ``instants_apart`` apart: with ``clock="server"`` each participant converts
    with its own offset estimate), indices 0 .. n-1, and rounds learned promptly (see
    :func:`check_prompt`)."""
    for generation, results in enumerate(zip(*per_node, strict=True)):
        assert {r.generation for r in results} == {generation}
        instants = [r.release_at for r in results]
        assert max(instants) - min(instants) <= instants_apart, results
        assert sorted(r.index for r in results) == list(range(len(results)))
    check_prompt([max(r.late_by for r in results) for results in zip(*per_node, strict=True)])


def check_prompt(lateness: list[float], bound: float = LATE_BOUND) -> None:
    """``lateness`` has one figure per round (its latest participant's): at most
    :data:`LATE_ROUNDS` of them may exceed ``bound``."""
    assert sum(late > bound for late in lateness) <= LATE_ROUNDS, lateness


@pytest.fixture
def idle_descriptor(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Make every fake connection's ``fileno()`` name an idle socket of this process.

    fakeredis numbers its connections from a counter; whatever real descriptor bears
    that number (an idle socket, a closed one, a busy one) is what ``select()`` would
    watch. Pinning it to an idle socket makes the worst case certain.
    """
    idle, peer = socket.socketpair()
    probe = fakeredis.FakeRedis().connection_pool.get_connection()
    monkeypatch.setattr(type(probe.get_socket()), "fileno", lambda self: idle.fileno())
    probe.disconnect()
    yield idle.fileno()
    idle.close()
    peer.close()


# -- ProcSync ---------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.3, 0.05])
@pytest.mark.parametrize("shared_client", [True, False], ids=["shared", "own-clients"])
def test_rounds_in_threads(
    pyprocsync_fake: FakeCell, idle_descriptor: int, delay: float, shared_client: bool
) -> None:
    """Three threads pass five rounds of one event together, whether they share one
    client (one listener) or each has its own, even when the fake connections' made-up
    descriptor numbers name an idle socket."""
    syncs = [
        pyprocsync_fake.procsync("run", delay, on_late="proceed")
        if shared_client
        else ProcSync(pyprocsync_fake.client(), "run", delay, on_late="proceed")
        for _ in range(NODES)
    ]

    def participant(sync: ProcSync) -> list[SyncResult]:
        try:
            return [sync.sync("step", NODES, LONG) for _ in range(ROUNDS)]
        finally:
            sync.close()

    outcomes = in_threads(*(lambda s=s: participant(s) for s in syncs), timeout=LONG)
    check_rounds([outcome.result() for outcome in outcomes])


def test_decoded_client_and_server_clock(pyprocsync_fake: FakeCell) -> None:
    """A ``decode_responses=True`` client works, and ``clock="server"`` agrees the
    instant on fakeredis's TIME (this host's clock: the offset is about zero)."""
    pyprocsync_fake.client(decode_responses=True)  # the shared client of the factories
    syncs = [
        pyprocsync_fake.procsync("run", 0.05, clock="server", on_late="proceed")
        for _ in range(NODES)
    ]
    outcomes = in_threads(
        *(lambda s=s: [s.sync("c", NODES, LONG) for _ in range(3)] for s in syncs)
    )
    per_node = [outcome.result() for outcome in outcomes]
    check_rounds(per_node, instants_apart=SERVER_CLOCK_SPREAD)
    for result in per_node[0]:
        assert result.clock_offset is not None
        assert abs(result.clock_offset) < PROMPT


def test_auto_delay_with_a_floor(pyprocsync_fake: FakeCell) -> None:
    """``delay="auto"`` works on fakeredis; with the floor docs/testing.rst advises for
    threads, every round is led by at least that floor and nobody is late."""
    syncs = [
        pyprocsync_fake.procsync("run", "auto", auto_floor=0.02, on_late="proceed")
        for _ in range(NODES)
    ]
    outcomes = in_threads(
        *(lambda s=s: [s.sync("a", NODES, LONG) for _ in range(3)] for s in syncs)
    )
    per_node = [outcome.result() for outcome in outcomes]
    check_rounds(per_node)
    assert min(r.delay for r in per_node[0]) >= 0.02


def test_timeout_breaks_the_round_until_reset(pyprocsync_fake: FakeCell) -> None:
    """A timeout breaks the round: a later arrival raises BrokenBarrierError("timeout")
    until reset(), which returns the next generation; then the event works again."""
    first, second = pyprocsync_fake.procsync("run", 0.05), pyprocsync_fake.procsync("run", 0.05)
    with pytest.raises(TimeOutError):
        first.sync("t", 2, 0.2)
    with pytest.raises(BrokenBarrierError) as broken:
        second.sync("t", 2, LONG)
    assert broken.value.reason == "timeout"
    assert first.reset("t") == 1
    outcomes = in_threads(lambda: first.sync("t", 2, LONG), lambda: second.sync("t", 2, LONG))
    assert {outcome.result().generation for outcome in outcomes} == {1}


def test_reset_wakes_a_waiter_and_status_shows_it(pyprocsync_fake: FakeCell) -> None:
    """read_status shows a waiting participant; reset() wakes it with
    BrokenBarrierError("reset") promptly."""
    client = pyprocsync_fake.client()
    waiter = pyprocsync_fake.procsync("run", 0.05, node_id="w")
    thread, outcome = start_thread(lambda: waiter.sync("r", 2, LONG))

    def filling() -> bool:
        return [(s.event, s.state, s.waiting) for s in read_status(client, "run")] == [
            ("r", "filling", ("w",))
        ]

    wait_until(filling, PROMPT * 5, "the waiter in read_status")
    assert pyprocsync_fake.procsync("run").reset("r") == 1
    join([thread], PROMPT)
    assert isinstance(outcome.error, BrokenBarrierError)
    assert outcome.error.reason == "reset"


def test_members_and_liveness(pyprocsync_fake: FakeCell) -> None:
    """Members are listed; one whose registration lapses (it stops renewing) breaks the
    round of a member waiting for it with BrokenBarrierError("lost"), well before the
    waiter's timeout: leases expire on fakeredis as on a server."""
    client = pyprocsync_fake.client()
    waiting = pyprocsync_fake.procsync("run", 0.05, member=True, node_id="a", liveness=0.5)
    lapsing = pyprocsync_fake.procsync("run", 0.05, member=True, node_id="b", liveness=0.5)
    lapsing.reset("warm")  # registers "b"
    waiting.reset("warm")  # registers "a"
    assert [(m.node_id, m.live) for m in read_members(client, "run")] == [
        ("a", True),
        ("b", True),
    ]
    assert lapsing._membership is not None
    lapsing._membership._stopped.set()  # "b" stops renewing, like a killed process
    started = time.monotonic()
    with pytest.raises(BrokenBarrierError) as broken:
        waiting.sync("r", 2, LONG)
    assert broken.value.reason == "lost"
    assert broken.value.missing == ("b",)
    assert time.monotonic() - started < 0.5 + PROMPT


def test_server_outage_raises_connection_lost(pyprocsync_fake: FakeCell) -> None:
    """``server.connected = False`` (the outage docs/testing.rst offers) makes a waiting
    participant raise ConnectionLostError promptly; a new call raises it at once."""
    waiter = pyprocsync_fake.procsync("run", 0.05)
    client = pyprocsync_fake.client()
    thread, outcome = start_thread(lambda: waiter.sync("down", 2, LONG))
    wait_until(lambda: [s.arrived for s in read_status(client, "run")] == [1], PROMPT * 5)
    pyprocsync_fake.server.connected = False
    join([thread], PROMPT * 5)
    assert isinstance(outcome.error, ConnectionLostError), outcome.error
    with pytest.raises(ConnectionLostError):
        waiter.sync("other", 1, LONG)


# -- Event and Barrier ------------------------------------------------------------------


@pytest.mark.parametrize("delay", [0.3, 0.05])
def test_event_rounds_in_threads(
    pyprocsync_fake: FakeCell, idle_descriptor: int, delay: float
) -> None:
    """Five rounds: waiters in threads wait, one sets, every waiter returns True within
    ``delay`` and :data:`LATE_BOUND` of the set (see :func:`check_prompt`); the flag is
    cleared before the next round."""
    client = pyprocsync_fake.client()
    options = {"run_id": "run", "delay": delay, "on_late": "proceed"}
    setter = pyprocsync_fake.event("flag", **options)
    lags = []
    for number in range(ROUNDS):
        ready = f"ready-{number}"
        waiters = [pyprocsync_fake.event("flag", **options) for _ in range(2)]
        for waiter in waiters:
            ready_counter(waiter, client, ready)
        started = [start_thread(lambda w=w: w.wait(LONG)) for w in waiters]
        wait_counter(client, ready, len(waiters))
        set_at = time.monotonic()
        setter.set()
        join([thread for thread, _ in started], LONG)
        assert [outcome.result() for _, outcome in started] == [True, True]
        lags.append(max(outcome.finished_at for _, outcome in started) - set_at)
        assert setter.is_set()
        setter.clear()
        assert not setter.is_set()
    check_prompt(lags, delay + LATE_BOUND)


@pytest.mark.parametrize("delay", [0.3, 0.05])
def test_barrier_rounds_in_threads(
    pyprocsync_fake: FakeCell, idle_descriptor: int, delay: float
) -> None:
    """Five rounds of a three-party barrier: distinct indices, the action once per
    round, rounds at most ``delay`` and :data:`LATE_BOUND` apart (see
    :func:`check_prompt`); abort() breaks it, reset() mends it."""
    actions: list[int] = []
    lock = threading.Lock()

    def action() -> None:
        with lock:
            actions.append(1)

    barriers = [
        pyprocsync_fake.barrier("b", NODES, action, run_id="run", delay=delay, on_late="proceed")
        for _ in range(NODES)
    ]
    outcomes = in_threads(
        *(lambda b=b: [(b.wait(LONG), time.monotonic()) for _ in range(ROUNDS)] for b in barriers),
        timeout=LONG,
    )
    ends = []
    for passed in zip(*(outcome.result() for outcome in outcomes), strict=True):
        assert sorted(index for index, _ in passed) == list(range(NODES))
        ends.append(max(at for _, at in passed))
    assert len(actions) == ROUNDS
    gaps = [later - earlier for earlier, later in itertools.pairwise(ends)]
    check_prompt(gaps, delay + LATE_BOUND)
    barrier: Barrier = barriers[0]
    assert barrier.n_waiting == 0
    barrier.abort()
    assert barrier.broken
    with pytest.raises(BrokenBarrierError):
        barriers[1].wait(LONG)
    barrier.reset()
    assert not barrier.broken


# -- asyncio ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("delay", "clock", "instants_apart"),
    [(0.3, "system", 0.0), (0.05, "system", 0.0), (0.05, "server", SERVER_CLOCK_SPREAD)],
)
def test_async_rounds_in_tasks(
    pyprocsync_fake: FakeCell,
    idle_descriptor: int,
    delay: float,
    clock: str,
    instants_apart: float,
) -> None:
    """Three tasks pass five rounds together with pyprocsync.asyncio.ProcSync on
    ``fakeredis.aioredis.FakeRedis``, also with ``clock="server"`` (the asyncio
    listener awaits the connection's reads and never looks at its descriptor)."""

    async def body() -> list[list[SyncResult]]:
        async with fakeredis.aioredis.FakeRedis(server=pyprocsync_fake.server) as client:

            async def participant() -> list[SyncResult]:
                async with pyprocsync.asyncio.ProcSync(
                    client, "run", delay, clock=clock, on_late="proceed"
                ) as sync:
                    return [await sync.sync("step", NODES, LONG) for _ in range(ROUNDS)]

            return list(await asyncio.gather(*(participant() for _ in range(NODES))))

    check_rounds(arun(body), instants_apart)


def test_async_event_and_barrier(pyprocsync_fake: FakeCell) -> None:
    """asyncio Event: a waiting task returns True when another sets; asyncio Barrier:
    three tasks pass three rounds with distinct indices, and reset() works."""

    async def body() -> None:
        async with fakeredis.aioredis.FakeRedis(server=pyprocsync_fake.server) as client:
            events = [pyprocsync.asyncio.Event(client, "e", run_id="run") for _ in range(2)]
            barriers = [
                pyprocsync.asyncio.Barrier(client, "b", NODES, run_id="run", delay=0.05)
                for _ in range(NODES)
            ]
            try:
                async_ready_counter(events[0], client, "ready")
                waiting = asyncio.create_task(events[0].wait(LONG))
                await await_counter(client, "ready", 1)
                await events[1].set()
                assert await waiting is True
                assert await events[0].is_set()

                async def rounds(barrier: pyprocsync.asyncio.Barrier) -> list[int]:
                    return [await barrier.wait(LONG) for _ in range(3)]

                per_task = await asyncio.gather(*(rounds(b) for b in barriers))
                for indices in zip(*per_task, strict=True):
                    assert sorted(indices) == list(range(NODES))
                await barriers[0].reset()
                assert not await barriers[0].broken()
            finally:
                for made in [*events, *barriers]:
                    await made.aclose()

    arun(body)


def test_blocking_threads_and_a_task_in_one_round(pyprocsync_fake: FakeCell) -> None:
    """Blocking participants in threads and an asyncio task, on one FakeServer, pass
    rounds together."""
    syncs = [pyprocsync_fake.procsync("run", 0.05) for _ in range(2)]
    threads = [start_thread(lambda s=s: [s.sync("mix", 3, LONG) for _ in range(3)]) for s in syncs]

    async def body() -> list[SyncResult]:
        async with (
            fakeredis.aioredis.FakeRedis(server=pyprocsync_fake.server) as client,
            pyprocsync.asyncio.ProcSync(client, "run", 0.05) as sync,
        ):
            return [await sync.sync("mix", 3, LONG) for _ in range(3)]

    mine = arun(body)
    join([thread for thread, _ in threads], LONG)
    check_rounds([mine, *(outcome.result() for _, outcome in threads)])


def test_fake_cell_closes_what_it_made(pyprocsync_fake: FakeCell) -> None:
    """FakeCell.close() closes the objects it made: later calls raise."""
    sync = pyprocsync_fake.procsync("run", 0.05)
    assert sync.sync("alone", 1, LONG).index == 0
    pyprocsync_fake.close()
    with pytest.raises(pyprocsync.ProcSyncError):
        sync.sync("alone", 1, LONG)

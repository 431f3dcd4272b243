"""``pyprocsync.asyncio`` (``ProcSync``, ``Event``, ``Barrier`` on ``redis.asyncio``
clients) on a real server: the core semantics of the blocking classes in compact form,
and processes mixing both flavours in one round.

Each test runs its coroutine with :func:`support.arun` (a fresh event loop, a
``redis.asyncio`` client of the session server and a hard deadline); pytest-asyncio is
not needed. Timing bounds are generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time

import pytest
import redis
import redis.asyncio as aioredis
from asyncio_support import _equals, check_round, closing
from primitive_support import async_ready_counter, await_counter, wait_counter
from runner import Participants, check_rounds
from support import LATE_BOUND, LONG, PROMPT, arun, async_client, await_until, spawn

from pyprocsync import (
    BrokenBarrierError,
    SyncResult,
    TimeOutError,
)
from pyprocsync.asyncio import Barrier, Event, ProcSync
from pyprocsync.tools.server import EmbeddedServer

# -- ProcSync ------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_sync_rounds_with_tasks(server: EmbeddedServer, run_id: str) -> None:
    """Three tasks (one instance each), three rounds, ``delay=0.1``: per round one
    generation, one instant, indices 0..2; each task returns at the instant (not before
    it, 1 ms tolerance) with a small ``late_by``: the release wait is precise."""

    async def body(client: aioredis.Redis) -> None:
        syncs = [ProcSync(client, run_id, 0.1) for _ in range(3)]

        async def one(sync: ProcSync) -> tuple[SyncResult, float]:
            result = await sync.sync("start", 3, 10)
            return result, time.time()

        try:
            for generation in range(3):
                pairs = await asyncio.gather(*(one(s) for s in syncs))
                check_round([r for r, _ in pairs], 3, generation)
                for result, returned in pairs:
                    assert result.delay == pytest.approx(0.1)
                    assert result.release_at - 0.001 <= returned < result.release_at + PROMPT
                    assert -0.001 <= result.late_by < LATE_BOUND
        finally:
            await closing(*syncs)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_one_instance_serves_many_tasks(server: EmbeddedServer, run_id: str) -> None:
    """One instance used by four tasks at once on two events (two tasks each), ten
    rounds: every task is one participant; rounds agree per event."""

    async def body(client: aioredis.Redis) -> None:
        async with ProcSync(client, run_id, 0.02, on_late="proceed") as shared:

            async def loop(event: str) -> list[SyncResult]:
                return [await shared.sync(event, 2, 10) for _ in range(10)]

            left_a, left_b, right_a, right_b = await asyncio.gather(
                loop("left"), loop("left"), loop("right"), loop("right")
            )
        for group in ((left_a, left_b), (right_a, right_b)):
            for generation, results in enumerate(zip(*group, strict=True)):
                check_round(list(results), 2, generation)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_waiting_does_not_block_the_loop(server: EmbeddedServer, run_id: str) -> None:
    """While a task waits (sync, Event.wait, Barrier.wait, 0.5 s each until it times
    out), another task of the same loop keeps running."""

    async def body(client: aioredis.Redis) -> None:
        async with (
            ProcSync(client, run_id, 0.01, on_late="proceed") as sync,
            Event(client, "e", run_id=run_id) as event,
            Barrier(client, "b", 2, run_id=run_id) as barrier,
        ):
            waits = [
                lambda: sync.sync("s", 2, 0.5),
                lambda: event.wait(0.5),
                lambda: barrier.wait(0.5),
            ]
            for wait in waits:
                ticks = 0

                async def ticker() -> None:
                    nonlocal ticks
                    while True:
                        await asyncio.sleep(0.01)  # the ticker's period
                        ticks += 1

                task = spawn(ticker())
                with contextlib.suppress(TimeOutError, BrokenBarrierError):
                    await wait()
                task.cancel()
                assert ticks >= 10

    arun(body, async_client(server))


@pytest.mark.timeout(90)
def test_processes_mix_blocking_and_asyncio_in_one_round(participants: Participants) -> None:
    """Two blocking and two asyncio processes sync one name for 20 rounds (delay 30 ms):
    per round one generation, one instant, indices 0..3; everyone returns at the
    instant with a small ``late_by``."""
    nodes = [
        participants.launch(
            "sync", "mix", parties=4, rounds=20, delay=0.03, timeout=20, flavour=flavour
        )
        for flavour in ("blocking", "asyncio", "blocking", "asyncio")
    ]
    participants.wait(nodes, timeout=80)
    for group in check_rounds(nodes, rounds=20, count=4):
        for record in group:
            assert record["returned_ns"] / 1e9 >= record["release_at"] - 0.001
            assert -0.001 <= record["late_by"] < LATE_BOUND


@pytest.mark.timeout(90)
def test_processes_mix_blocking_and_asyncio_barriers(
    participants: Participants, client: redis.Redis, run_id: str
) -> None:
    """Two blocking and two asyncio processes (``async def`` action there) pass one
    Barrier 30 times (delay 5 ms, ``on_late="proceed"``): indices 0..3 per round; the
    action ran exactly once per round and ended before anyone of its round returned."""
    actions = f"{run_id}:actions"
    nodes = [
        participants.launch(
            "barrier", "mixb", parties=4, rounds=30, delay=0.005, on_late="proceed",
            timeout=20, action="record", action_key=actions, flavour=flavour,
        )
        for flavour in ("blocking", "asyncio", "blocking", "asyncio")
    ]  # fmt: skip
    participants.wait(nodes, timeout=80)
    per_node = [node.results() for node in nodes]
    recorded = [json.loads(entry) for entry in client.lrange(actions, 0, -1)]
    client.delete(actions)
    assert len(recorded) == 30
    for number, group in enumerate(zip(*per_node, strict=True)):
        assert sorted(r["index"] for r in group) == [0, 1, 2, 3], (number, group)
        assert min(r["returned_ns"] for r in group) >= recorded[number]["ns"]


# -- Event ----------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_event_set_clear_wait_timeout(server: EmbeddedServer, run_id: str) -> None:
    """Two tasks waiting when ``set()`` is followed at once by ``clear()`` both return
    True; the flag then reads cleared; ``wait`` on it returns False at its timeout; once
    set, ``wait`` returns True at once and ``is_set`` is True for any instance."""

    async def body(client: aioredis.Redis) -> None:
        ready = f"{run_id}:ready"
        waiters = [Event(client, "ev", run_id=run_id) for _ in range(2)]
        setter = Event(client, "ev", run_id=run_id)
        try:
            for waiter in waiters:
                async_ready_counter(waiter, client, ready)
            tasks = [spawn(w.wait(LONG)) for w in waiters]
            await await_counter(client, ready, 2)
            await asyncio.sleep(0.1)  # a window in which no waiter may return
            assert not any(task.done() for task in tasks)
            await setter.set()
            await setter.clear()
            assert await asyncio.gather(*tasks) == [True, True]
            assert await setter.is_set() is False
            began = time.monotonic()
            assert await setter.wait(0.3) is False
            assert 0.3 <= time.monotonic() - began < 0.3 + PROMPT
            await setter.set()
            began = time.monotonic()
            assert await waiters[0].wait(LONG) is True
            assert time.monotonic() - began < PROMPT
            assert await waiters[1].is_set() is True
        finally:
            await closing(setter, *waiters)

    arun(body, async_client(server))


@pytest.mark.timeout(60)
def test_event_set_then_clear_wakes_processes_of_both_flavours(
    participants: Participants, client: redis.Redis, server: EmbeddedServer, run_id: str
) -> None:
    """Two asyncio and one blocking waiting process: an asyncio ``set()`` followed at once
    by ``clear()`` wakes them all (True)."""
    ready = f"{run_id}:ready"
    nodes = [
        participants.launch("event-wait", "cross", flavour=f, ready_key=ready, timeout=LONG)
        for f in ("asyncio", "asyncio", "blocking")
    ]
    wait_counter(client, ready, 3)

    async def body(aclient: aioredis.Redis) -> None:
        async with Event(aclient, "cross", run_id=run_id) as event:
            await event.set()
            await event.clear()

    arun(body, async_client(server))
    for record in participants.finish(nodes, timeout=30):
        assert record["ok"] is True, record
        assert record["value"] is True


@pytest.mark.timeout(30)
def test_event_delay_releases_waiters_together(server: EmbeddedServer, run_id: str) -> None:
    """``delay=0.2``: three waiting tasks return at set time + delay (not before it, 1 ms
    tolerance), within a spread far below the delay."""

    async def body(client: aioredis.Redis) -> None:
        ready = f"{run_id}:ready"
        waiters = [Event(client, "tick", run_id=run_id) for _ in range(3)]
        setter = Event(client, "tick", run_id=run_id, delay=0.2)

        async def wait(event: Event) -> tuple[bool, float]:
            value = await event.wait(LONG)
            return value, time.time()

        try:
            for waiter in waiters:
                async_ready_counter(waiter, client, ready)
            tasks = [spawn(wait(w)) for w in waiters]
            await await_counter(client, ready, 3)
            before = time.time()
            await setter.set()
            after = time.time()
            pairs = await asyncio.gather(*tasks)
        finally:
            await closing(setter, *waiters)
        assert all(value is True for value, _ in pairs)
        returned = [instant for _, instant in pairs]
        assert min(returned) >= before + 0.2 - 0.001
        assert max(returned) < after + 0.2 + PROMPT
        assert max(returned) - min(returned) < 0.05

    arun(body, async_client(server))


# -- Barrier --------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["plain", "async"])
def test_barrier_indices_and_action(server: EmbeddedServer, run_id: str, kind: str) -> None:
    """Three tasks, ten rounds: indices 0..2 per round; the action (a plain function, or
    an ``async def`` one that awaits before it records) runs exactly once per round and
    ends before anyone of its round returns."""

    async def body(client: aioredis.Redis) -> None:
        ended: list[float] = []

        def plain() -> None:
            ended.append(time.time())

        async def coroutine() -> None:
            await asyncio.sleep(0.02)  # an action that takes a while
            ended.append(time.time())

        action = plain if kind == "plain" else coroutine
        barriers = [
            Barrier(client, "b", 3, action, run_id=run_id, delay=0.01, on_late="proceed")
            for _ in range(3)
        ]

        async def wait(barrier: Barrier) -> tuple[int, float]:
            index = await barrier.wait(10)
            return index, time.time()

        try:
            for number in range(10):
                pairs = await asyncio.gather(*(wait(b) for b in barriers))
                assert sorted(index for index, _ in pairs) == [0, 1, 2]
                assert len(ended) == number + 1
                assert min(instant for _, instant in pairs) >= ended[-1]
        finally:
            await closing(*barriers)

    arun(body, async_client(server))


class ActionError(Exception):
    """What the failing action raises."""


@pytest.mark.timeout(30)
def test_barrier_failing_async_action(server: EmbeddedServer, run_id: str) -> None:
    """An ``async def`` action raises in the last arrival: it gets that exception, the
    two others BrokenBarrierError(reason="action"); the barrier is broken until reset."""

    async def body(client: aioredis.Redis) -> None:
        async def fail() -> None:
            await asyncio.sleep(0)  # the action yields to the loop once before it fails
            raise ActionError("boom")

        barriers = [Barrier(client, "f", 3, fail, run_id=run_id) for _ in range(3)]
        try:
            waiting = [spawn(b.wait(LONG)) for b in barriers[:2]]
            await await_until(lambda: _equals(barriers[2].n_waiting(), 2), 10, "two waiters")
            with pytest.raises(ActionError):
                await barriers[2].wait(LONG)
            for outcome in await asyncio.gather(*waiting, return_exceptions=True):
                assert isinstance(outcome, BrokenBarrierError), outcome
                assert outcome.reason == "action"
            assert await barriers[0].broken() is True
            await barriers[0].reset()
            assert await barriers[0].broken() is False
        finally:
            await closing(*barriers)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_barrier_abort_reset_and_shared_state(server: EmbeddedServer, run_id: str) -> None:
    """Two tasks wait (``n_waiting()`` reads 2 from another instance); ``abort()`` breaks
    them (reason "abort"), ``broken()`` is True and later waits raise at once;
    ``reset()`` makes it usable; waiters of the next round woken by ``reset()`` raise
    reason "reset"; then a full round passes."""

    async def body(client: aioredis.Redis) -> None:
        barriers = [
            Barrier(client, "ar", 3, run_id=run_id, delay=0.01, on_late="proceed") for _ in range(3)
        ]
        observer = barriers[2]
        try:
            for reason in ("abort", "reset"):
                assert await observer.n_waiting() == 0
                assert await observer.broken() is False
                waiting = [spawn(b.wait(LONG)) for b in barriers[:2]]
                await await_until(lambda: _equals(observer.n_waiting(), 2), 10, "two waiters")
                began = time.monotonic()
                await (observer.abort() if reason == "abort" else observer.reset())
                outcomes = await asyncio.gather(*waiting, return_exceptions=True)
                assert time.monotonic() - began < PROMPT
                for outcome in outcomes:
                    assert isinstance(outcome, BrokenBarrierError), outcome
                    assert outcome.reason == reason
                if reason == "abort":
                    assert await observer.broken() is True
                    assert await observer.n_waiting() == 0
                    with pytest.raises(BrokenBarrierError):
                        await barriers[0].wait(LONG)
                    await observer.reset()
            indices = await asyncio.gather(*(b.wait(LONG) for b in barriers))
            assert sorted(indices) == [0, 1, 2]
        finally:
            await closing(*barriers)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_barrier_timeout_breaks_every_waiter(server: EmbeddedServer, run_id: str) -> None:
    """Of three parties, one task waits with the barrier's default timeout (0.3 s) and one
    with 30 s: the first raises BrokenBarrierError(reason="timeout") (a
    threading.BrokenBarrierError) after its timeout, the other the same error promptly."""

    async def body(client: aioredis.Redis) -> None:
        impatient = Barrier(client, "t", 3, timeout=0.3, run_id=run_id)
        patient = Barrier(client, "t", 3, run_id=run_id)
        try:
            waiting = spawn(patient.wait(LONG))
            await await_until(lambda: _equals(impatient.n_waiting(), 1), 10, "the patient waiter")
            began = time.monotonic()
            with pytest.raises(threading.BrokenBarrierError) as info:
                await impatient.wait()
            assert 0.3 <= time.monotonic() - began < 0.3 + PROMPT
            assert isinstance(info.value, BrokenBarrierError)
            assert info.value.reason == "timeout"
            (outcome,) = await asyncio.gather(waiting, return_exceptions=True)
            assert isinstance(outcome, BrokenBarrierError), outcome
            assert outcome.reason == "timeout"
            assert time.monotonic() - began < 0.3 + PROMPT
            assert await patient.broken() is True
        finally:
            await closing(impatient, patient)

    arun(body, async_client(server))

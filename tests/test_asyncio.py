"""``pyprocsync.asyncio`` (``ProcSync``, ``Event``, ``Barrier`` on ``redis.asyncio``
clients) on a real server: the core semantics of the blocking classes in compact form,
processes mixing both flavours in one round, cancellation, and lifecycle.

Each test runs its coroutine with :func:`support.arun` (a fresh event loop, a
``redis.asyncio`` client of the session server and a hard deadline); pytest-asyncio is
not needed. Timing bounds are generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from netproxy import Delay, NetProxy
from primitive_support import async_ready_counter, await_counter, flag_keys, wait_counter
from runner import Participants, check_rounds
from support import (
    LONG,
    PROMPT,
    arun,
    async_client,
    cancel_spawned,
    event_keys,
    make_client,
    spawn,
    wait_until,
)

import pyprocsync
import pyprocsync.asyncio
from pyprocsync import (
    ArgumentTypeError,
    BrokenBarrierError,
    InvalidArgumentError,
    ProcSyncError,
    SyncResult,
    TimeOutError,
    clock,
)
from pyprocsync.asyncio import Barrier, Event, ProcSync
from pyprocsync.tools.server import EmbeddedServer

#: Bound on ``late_by`` with delay > 0: the release is awaited precisely; 50 ms leaves
#: room for a loaded 2-core machine (this is not a precision test).
LATE_BOUND = 0.05


def check_round(results: list[SyncResult], nodes: int, generation: int) -> None:
    """One round's results: same generation and instant; indices 0..nodes-1."""
    assert len(results) == nodes
    assert {r.generation for r in results} == {generation}
    assert len({r.release_at for r in results}) == 1
    assert sorted(r.index for r in results) == list(range(nodes))


async def until(predicate: Any, what: str, timeout: float = 10) -> None:
    """Await ``predicate()`` (a coroutine function) until it is true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def _equals(awaitable: Any, expected: object) -> bool:
    """Whether ``awaitable`` gives ``expected`` (for :func:`until`)."""
    return await awaitable == expected


async def _numsub(client: aioredis.Redis, channel: str) -> bool:
    """Whether anyone is subscribed to ``channel``."""
    ((_, count),) = await client.pubsub_numsub(channel)
    return count > 0


async def closing(*instances: Any) -> None:
    """Cancel the spawned tasks still running, then close ``instances``."""
    await cancel_spawned()
    for instance in instances:
        await instance.aclose()


@contextlib.contextmanager
def release_waits() -> Iterator[set[asyncio.Task[Any]]]:
    """The tasks that started waiting for a release instant while in the block (every
    asyncio call waits through :func:`pyprocsync.clock.async_sleep_until_ns`)."""
    entered: set[asyncio.Task[Any]] = set()
    original = clock.async_sleep_until_ns

    async def watching(*args: Any, **kwargs: Any) -> int:
        task = asyncio.current_task()
        if task is not None:
            entered.add(task)
        return await original(*args, **kwargs)

    clock.async_sleep_until_ns = watching  # type: ignore[assignment]
    try:
        yield entered
    finally:
        clock.async_sleep_until_ns = original  # type: ignore[assignment]


async def _entered(tasks: set[asyncio.Task[Any]], task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` is in ``tasks`` (for :func:`until`)."""
    return task in tasks


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
        async with ProcSync(client, run_id, 0.02) as shared:

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
            ProcSync(client, run_id, 0.01) as sync,
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
                        await asyncio.sleep(0.01)
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
            await asyncio.sleep(0.1)
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
            await asyncio.sleep(0.02)
            ended.append(time.time())

        action = plain if kind == "plain" else coroutine
        barriers = [Barrier(client, "b", 3, action, run_id=run_id, delay=0.01) for _ in range(3)]

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
            await asyncio.sleep(0)
            raise ActionError("boom")

        barriers = [Barrier(client, "f", 3, fail, run_id=run_id) for _ in range(3)]
        try:
            waiting = [spawn(b.wait(LONG)) for b in barriers[:2]]
            await until(lambda: _equals(barriers[2].n_waiting(), 2), "two waiters")
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
        barriers = [Barrier(client, "ar", 3, run_id=run_id, delay=0.01) for _ in range(3)]
        observer = barriers[2]
        try:
            for reason in ("abort", "reset"):
                assert await observer.n_waiting() == 0
                assert await observer.broken() is False
                waiting = [spawn(b.wait(LONG)) for b in barriers[:2]]
                await until(lambda: _equals(observer.n_waiting(), 2), "two waiters")
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
            await until(lambda: _equals(impatient.n_waiting(), 1), "the patient waiter")
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


# -- cancellation ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_cancelled_sync_withdraws_its_arrival(server: EmbeddedServer, run_id: str) -> None:
    """Of a round of 3, two tasks wait and one of them is cancelled: its arrival is
    withdrawn at once (one arrival, one lease left), so one more arrival does NOT
    release the round, and a further one does, with indices 0..2. The instance whose
    task was cancelled works in the next round."""

    async def body(client: aioredis.Redis) -> None:
        keys = event_keys(run_id, "cx")
        syncs = [ProcSync(client, run_id, 0.02) for _ in range(4)]
        a, b, c, d = syncs
        try:
            first = spawn(a.sync("cx", 3, LONG))
            cancelled = spawn(b.sync("cx", 3, LONG))
            await until(lambda: _equals(client.zcard(keys.leases), 2), "two waiters")
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert await client.hget(keys.state, "n") == b"1"
            assert await client.zcard(keys.leases) == 1
            third = spawn(c.sync("cx", 3, LONG))
            await until(lambda: _equals(client.zcard(keys.leases), 2), "the third")
            await asyncio.sleep(0.3)
            assert not first.done(), "released with a cancelled participant"
            assert not third.done(), "released with a cancelled participant"
            last = await d.sync("cx", 3, LONG)
            check_round([await first, await third, last], 3, 0)
            again = await asyncio.gather(*(s.sync("cx", 3, LONG) for s in (a, b, c)))
            check_round(list(again), 3, 1)
        finally:
            await closing(*syncs)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_cancel_while_the_arrival_reply_is_in_flight_withdraws_it(
    server: EmbeddedServer, run_id: str
) -> None:
    """A participant reaches Redis over a slow link (replies take 0.15 s). Its task is
    cancelled right after its ARRIVE script ran on the server, before the reply came
    back: it has not been released, so its arrival must be withdrawn like any other
    cancelled one (within a couple of seconds, long before its 5 s lease would lapse
    and break the round for everyone as "lost"). A third arrival then must not release
    the round of 3; a fourth does, with indices 0..2."""

    async def body(client: aioredis.Redis) -> None:
        keys = event_keys(run_id, "far")
        with NetProxy(server.bind, server.port, down=Delay(0.15)) as link:
            far_client = aioredis.Redis(host="127.0.0.1", port=link.port)
            far = ProcSync(far_client, run_id, 0.02)
            near = [ProcSync(client, run_id, 0.02) for _ in range(3)]
            try:
                assert await far.reset("far") == 0  # scripts loaded: the next call arrives
                first = spawn(near[0].sync("far", 3, LONG))
                await until(lambda: _equals(client.zcard(keys.leases), 1), "the first")
                cancelled = spawn(far.sync("far", 3, LONG))
                await until(lambda: _equals(client.zcard(keys.leases), 2), "the far arrival")
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                await until(
                    lambda: _equals(client.zcard(keys.leases), 1),
                    "the cancelled arrival to be withdrawn",
                    timeout=PROMPT,
                )
                assert await client.hget(keys.state, "n") == b"1"
                third = spawn(near[1].sync("far", 3, LONG))
                await until(lambda: _equals(client.zcard(keys.leases), 2), "the third")
                await asyncio.sleep(0.3)
                assert not first.done(), "released with a cancelled participant"
                assert not third.done(), "released with a cancelled participant"
                last = await near[2].sync("far", 3, LONG)
                check_round([await first, await third, last], 3, 0)
            finally:
                await closing(far, *near)
                await far_client.aclose()

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_cancel_of_the_last_arrival_before_its_action_withdraws_it(
    server: EmbeddedServer, run_id: str
) -> None:
    """Barrier of 2 with an action; the second participant reaches Redis over a slow link
    (replies take 0.15 s). Its ARRIVE completes the round and makes it the action's
    runner, but its task is cancelled before the reply came back: the action never ran
    and no release was announced, so the arrival must be withdrawn (the round back to
    one waiter, not broken, within a couple of seconds; not left "full with an action
    running" until the runner's 5 s lease lapses and the round breaks as "lost"). A
    new participant then completes the round: indices {0, 1}, its action ran once."""

    async def body(client: aioredis.Redis) -> None:
        keys = event_keys(run_id, "act")
        ran: list[str] = []

        def action(who: str) -> Callable[[], None]:
            return lambda: ran.append(who)

        with NetProxy(server.bind, server.port, down=Delay(0.15)) as link:
            far_client = aioredis.Redis(host="127.0.0.1", port=link.port)
            far = Barrier(far_client, "act", 2, action("far"), run_id=run_id, delay=0.01)
            near = Barrier(client, "act", 2, action("near"), run_id=run_id, delay=0.01)
            late = Barrier(client, "act", 2, action("late"), run_id=run_id, delay=0.01)
            try:
                assert await far.n_waiting() == 0  # scripts loaded: the next call arrives
                first = spawn(near.wait(LONG))
                await until(lambda: _equals(late.n_waiting(), 1), "the first waiter")
                cancelled = spawn(far.wait(LONG))
                await until(lambda: client.hexists(keys.state, "a"), "the far arrival")
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                await until(
                    lambda: _equals(late.n_waiting(), 1),
                    "the cancelled arrival to be withdrawn",
                    timeout=PROMPT,
                )
                assert await late.broken() is False
                assert not first.done()
                last = await late.wait(LONG)
                assert sorted([await first, last]) == [0, 1]
                assert ran == ["late"]
            finally:
                await closing(far, near, late)
                await far_client.aclose()

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_cancelled_barrier_wait_withdraws_its_arrival(server: EmbeddedServer, run_id: str) -> None:
    """The same for ``Barrier.wait``: the cancelled waiter's slot is not counted (the
    round needs three live participants) and its index is handed out again, so the
    round still gets indices 0..2; the action runs once."""

    async def body(client: aioredis.Redis) -> None:
        ran: list[int] = []
        barriers = [
            Barrier(client, "cb", 3, lambda: ran.append(1), run_id=run_id, delay=0.01)
            for _ in range(4)
        ]
        observer = barriers[3]
        try:
            first = spawn(barriers[0].wait(LONG))
            await until(lambda: _equals(observer.n_waiting(), 1), "the first waiter")
            cancelled = spawn(barriers[1].wait(LONG))
            await until(lambda: _equals(observer.n_waiting(), 2), "the second waiter")
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert await observer.n_waiting() == 1
            assert await observer.broken() is False
            third = spawn(barriers[2].wait(LONG))
            await until(lambda: _equals(observer.n_waiting(), 2), "the third")
            await asyncio.sleep(0.3)
            assert not first.done()
            assert not third.done()
            last = await observer.wait(LONG)
            assert sorted([await first, await third, last]) == [0, 1, 2]
            assert ran == [1]
        finally:
            await closing(*barriers)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_cancel_during_the_release_wait_leaves_the_round_released(
    server: EmbeddedServer, run_id: str
) -> None:
    """``delay=1``: a task cancelled while it waits for the announced release instant
    raises CancelledError; the round stays released: its partner returns normally at
    the instant, the stored outcome is the release, and the next round (same instances)
    is generation 1."""

    async def body(client: aioredis.Redis) -> None:
        keys = event_keys(run_id, "rel")
        a, b = ProcSync(client, run_id, 1.0), ProcSync(client, run_id, 1.0)
        try:
            with release_waits() as entered:
                waiting = spawn(a.sync("rel", 2, LONG))
                await until(lambda: _equals(client.zcard(keys.leases), 1), "the waiter")
                partner = spawn(b.sync("rel", 2, LONG))
                await until(lambda: _entered(entered, waiting), "the release wait")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            result = await partner
            assert (result.generation, result.delay) == (0, 1.0)
            assert -0.001 <= result.late_by < LATE_BOUND
            assert (await client.hget(keys.state, "o0")).startswith(b"R 0 ")
            assert await client.hget(keys.state, "g") == b"1"
            async with ProcSync(client, run_id, 0.01) as c, ProcSync(client, run_id, 0.01) as d:
                again = await asyncio.gather(c.sync("rel", 2, LONG), d.sync("rel", 2, LONG))
            check_round(list(again), 2, 1)
        finally:
            await closing(a, b)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_cancel_barrier_during_the_release_wait(server: EmbeddedServer, run_id: str) -> None:
    """The same for ``Barrier.wait``: cancelled after the release was announced, the
    others return normally and the barrier is not broken."""

    async def body(client: aioredis.Redis) -> None:
        a = Barrier(client, "relb", 2, run_id=run_id, delay=1.0)
        b = Barrier(client, "relb", 2, run_id=run_id, delay=1.0)
        try:
            with release_waits() as entered:
                waiting = spawn(a.wait(LONG))
                await until(lambda: _equals(b.n_waiting(), 1), "the waiter")
                partner = spawn(b.wait(LONG))
                await until(lambda: _entered(entered, waiting), "the release wait")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert await partner in (0, 1)
            assert await b.broken() is False
            assert await b.n_waiting() == 0
        finally:
            await closing(a, b)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_cancel_during_the_action_breaks_the_round(server: EmbeddedServer, run_id: str) -> None:
    """The last arrival's task is cancelled while its ``async def`` action runs: the
    action is abandoned like one that raised: the other waiter raises
    BrokenBarrierError(reason="action") promptly (no hang until a lease lapses)."""

    async def body(client: aioredis.Redis) -> None:
        acting = asyncio.Event()

        async def slow() -> None:
            acting.set()
            await asyncio.sleep(LONG)

        barriers = [Barrier(client, "ca", 2, slow, run_id=run_id) for _ in range(2)]
        try:
            first = spawn(barriers[0].wait(LONG))
            await until(lambda: _equals(barriers[1].n_waiting(), 1), "the first waiter")
            actor = spawn(barriers[1].wait(LONG))
            await asyncio.wait_for(acting.wait(), 10)
            began = time.monotonic()
            actor.cancel()
            with pytest.raises(asyncio.CancelledError):
                await actor
            (outcome,) = await asyncio.gather(first, return_exceptions=True)
            assert isinstance(outcome, BrokenBarrierError), outcome
            assert outcome.reason == "action"
            assert time.monotonic() - began < PROMPT
        finally:
            await closing(*barriers)

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_cancelled_event_wait(server: EmbeddedServer, run_id: str) -> None:
    """Cancelling a task in ``Event.wait`` raises CancelledError and changes nothing: the
    same instance waits again afterwards (False at its timeout, True once set)."""

    async def body(client: aioredis.Redis) -> None:
        async with Event(client, "cw", run_id=run_id) as event:
            task = spawn(event.wait(LONG))
            await until(
                lambda: _numsub(client, flag_keys(run_id, "cw").channel), "the subscription"
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await event.is_set() is False
            assert await event.wait(0.1) is False
            await event.set()
            assert await event.wait(LONG) is True

    arun(body, async_client(server))


# -- lifecycle, validation ------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_from_url_async_with_and_aclose(server: EmbeddedServer, run_id: str) -> None:
    """``from_url`` of each class owns its client: it works inside ``async with``;
    leaving the block closes every connection it opened (the server's client count
    returns to its baseline); later calls raise ProcSyncError; ``aclose`` and ``close``
    again are harmless."""
    admin = make_client(server)
    baseline = len(admin.client_list())

    async def body(_: aioredis.Redis) -> list[Any]:
        async with ProcSync.from_url(server.url, run_id, 0.01) as sync:
            assert (await sync.sync("u", 1, 5)).generation == 0
            assert (await sync.sync("u", 1, 5)).generation == 1
        async with Event.from_url(server.url, "u", run_id=run_id) as event:
            await event.set()
            assert await event.wait(5) is True
        async with Barrier.from_url(server.url, "bu", 1, run_id=run_id, delay=0) as barrier:
            assert await barrier.wait(5) == 0
        return [sync, event, barrier]

    try:
        closed = arun(body, async_client(server))
        wait_until(lambda: len(admin.client_list()) <= baseline, 5, "connections to close")

        async def after(_: aioredis.Redis) -> None:
            sync, event, barrier = closed
            with pytest.raises(ProcSyncError):
                await sync.sync("u", 1, 5)
            with pytest.raises(ProcSyncError):
                await event.is_set()
            with pytest.raises(ProcSyncError):
                await barrier.wait(5)
            for instance in closed:
                await instance.aclose()
                await instance.close()

        arun(after, async_client(server))
    finally:
        admin.close()


@pytest.mark.timeout(30)
def test_aclose_leaves_the_callers_client_usable(server: EmbeddedServer, run_id: str) -> None:
    """With the caller's client, ``aclose`` closes only the instance's own connections."""

    async def body(client: aioredis.Redis) -> None:
        sync = ProcSync(client, run_id, 0)
        await asyncio.gather(*(sync.sync("own", 2, 10) for _ in range(2)))
        await sync.aclose()
        assert await client.ping()
        with pytest.raises(ProcSyncError):
            await sync.reset("own")

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_aclose_while_a_call_waits(server: EmbeddedServer, run_id: str) -> None:
    """A call in progress in another task when ``aclose()`` runs still finishes (with its
    partner's instant); new calls raise ProcSyncError."""

    async def body(client: aioredis.Redis) -> None:
        sync = ProcSync(client, run_id, 0.01)
        async with ProcSync(client, run_id, 0.01) as partner:
            waiting = spawn(sync.sync("closing", 2, LONG))
            keys = event_keys(run_id, "closing")
            await until(lambda: _equals(client.zcard(keys.leases), 1), "the waiter")
            await sync.aclose()
            with pytest.raises(ProcSyncError):
                await sync.sync("other", 1, 5)
            result = await partner.sync("closing", 2, LONG)
            assert (await waiting).release_at == result.release_at

    arun(body, async_client(server))


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_from_url_validates_before_connecting(flavour: str) -> None:
    """``from_url`` with an invalid argument raises InvalidArgumentError (and leaves no
    unclosed client behind: warnings are errors in this suite)."""
    module: Any = pyprocsync if flavour == "blocking" else pyprocsync.asyncio
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(InvalidArgumentError):
        module.ProcSync.from_url(url, "r", -1)
    with pytest.raises(InvalidArgumentError):
        module.Event.from_url(url, "")
    with pytest.raises(InvalidArgumentError):
        module.Barrier.from_url(url, "b", 0)


def test_validation_before_any_io() -> None:
    """Invalid arguments raise before any I/O (the client reaches no server): in the
    constructors, and in the awaited calls."""

    async def body() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
        try:
            with pytest.raises(InvalidArgumentError):
                ProcSync(client, "r", -1)
            with pytest.raises(InvalidArgumentError):
                Event(client, "")
            with pytest.raises(InvalidArgumentError):
                Barrier(client, "b", 0)
            with pytest.raises(ArgumentTypeError):
                Barrier(client, "b", True)
            with pytest.raises(ArgumentTypeError):
                Barrier(client, "b", 2, action="x")  # type: ignore[arg-type]
            sync = ProcSync(client, "r", 0)
            for call in (
                lambda: sync.sync("", 1),
                lambda: sync.sync("e", 0),
                lambda: sync.sync("e", 1, 0),
                lambda: sync.sync("e", 1, math.nan),
                lambda: sync.reset(""),
                lambda: Event(client, "e").wait(math.nan),
                lambda: Barrier(client, "b", 2).wait(math.nan),
            ):
                with pytest.raises(InvalidArgumentError):
                    await call()
        finally:
            await client.aclose()

    arun(body, timeout=20)

"""Cancelling a task of ``pyprocsync.asyncio`` at every step of a round, on a real server.

Before the release a cancelled call withdraws its arrival (also while the arrival's
reply is in flight and before the last arrival's action); during the release wait it
leaves the round released; during a Barrier action it breaks the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from asyncio_support import _equals, check_round, closing
from netproxy import Delay, NetProxy
from primitive_support import flag_keys
from support import LATE_BOUND, LONG, PROMPT, arun, async_client, await_until, event_keys, spawn

from pyprocsync import (
    BrokenBarrierError,
    clock,
)
from pyprocsync.asyncio import Barrier, Event, ProcSync
from pyprocsync.tools.server import EmbeddedServer


async def _numsub(client: aioredis.Redis, channel: str) -> bool:
    """Whether anyone is subscribed to ``channel``."""
    ((_, count),) = await client.pubsub_numsub(channel)
    return count > 0


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


# -- cancellation ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_cancelled_sync_withdraws_its_arrival(server: EmbeddedServer, run_id: str) -> None:
    """Of a round of 3, two tasks wait and one of them is cancelled: its arrival is
    withdrawn at once (one arrival, one lease left), so one more arrival does NOT
    release the round, and a further one does, with indices 0..2. The instance whose
    task was cancelled works in the next round."""

    async def body(client: aioredis.Redis) -> None:
        keys = event_keys(run_id, "cx")
        syncs = [ProcSync(client, run_id, 0.02, on_late="proceed") for _ in range(4)]
        a, b, c, d = syncs
        try:
            first = spawn(a.sync("cx", 3, LONG))
            cancelled = spawn(b.sync("cx", 3, LONG))
            await await_until(lambda: _equals(client.zcard(keys.leases), 2), 10, "two waiters")
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert await client.hget(keys.state, "n") == b"1"
            assert await client.zcard(keys.leases) == 1
            third = spawn(c.sync("cx", 3, LONG))
            await await_until(lambda: _equals(client.zcard(keys.leases), 2), 10, "the third")
            await asyncio.sleep(0.3)  # a window in which nobody may be released
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
            far = ProcSync(far_client, run_id, 0.02, on_late="proceed")
            near = [ProcSync(client, run_id, 0.02, on_late="proceed") for _ in range(3)]
            try:
                assert await far.reset("far") == 0  # scripts loaded: the next call arrives
                first = spawn(near[0].sync("far", 3, LONG))
                await await_until(lambda: _equals(client.zcard(keys.leases), 1), 10, "the first")
                cancelled = spawn(far.sync("far", 3, LONG))
                await await_until(
                    lambda: _equals(client.zcard(keys.leases), 2), 10, "the far arrival"
                )
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                await await_until(
                    lambda: _equals(client.zcard(keys.leases), 1),
                    PROMPT,
                    "the cancelled arrival to be withdrawn",
                )
                assert await client.hget(keys.state, "n") == b"1"
                third = spawn(near[1].sync("far", 3, LONG))
                await await_until(lambda: _equals(client.zcard(keys.leases), 2), 10, "the third")
                await asyncio.sleep(0.3)  # a window in which nobody may be released
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
                await await_until(lambda: _equals(late.n_waiting(), 1), 10, "the first waiter")
                cancelled = spawn(far.wait(LONG))
                await await_until(lambda: client.hexists(keys.state, "a"), 10, "the far arrival")
                cancelled.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await cancelled
                await await_until(
                    lambda: _equals(late.n_waiting(), 1),
                    PROMPT,
                    "the cancelled arrival to be withdrawn",
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
            await await_until(lambda: _equals(observer.n_waiting(), 1), 10, "the first waiter")
            cancelled = spawn(barriers[1].wait(LONG))
            await await_until(lambda: _equals(observer.n_waiting(), 2), 10, "the second waiter")
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            assert await observer.n_waiting() == 1
            assert await observer.broken() is False
            third = spawn(barriers[2].wait(LONG))
            await await_until(lambda: _equals(observer.n_waiting(), 2), 10, "the third")
            await asyncio.sleep(0.3)  # a window in which nobody may be released
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
                await await_until(lambda: _equals(client.zcard(keys.leases), 1), 10, "the waiter")
                partner = spawn(b.sync("rel", 2, LONG))
                await await_until(lambda: _entered(entered, waiting), 10, "the release wait")
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            result = await partner
            assert (result.generation, result.delay) == (0, 1.0)
            assert -0.001 <= result.late_by < LATE_BOUND
            assert (await client.hget(keys.state, "o0")).startswith(b"R 0 ")
            assert await client.hget(keys.state, "g") == b"1"
            async with (
                ProcSync(client, run_id, 0.01, on_late="proceed") as c,
                ProcSync(client, run_id, 0.01, on_late="proceed") as d,
            ):
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
                await await_until(lambda: _equals(b.n_waiting(), 1), 10, "the waiter")
                partner = spawn(b.wait(LONG))
                await await_until(lambda: _entered(entered, waiting), 10, "the release wait")
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
            await asyncio.sleep(LONG)  # the action runs until it is cancelled

        barriers = [Barrier(client, "ca", 2, slow, run_id=run_id) for _ in range(2)]
        try:
            first = spawn(barriers[0].wait(LONG))
            await await_until(lambda: _equals(barriers[1].n_waiting(), 1), 10, "the first waiter")
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
            await await_until(
                lambda: _numsub(client, flag_keys(run_id, "cw").channel), 10, "the subscription"
            )
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await event.is_set() is False
            assert await event.wait(0.1) is False
            await event.set()
            assert await event.wait(LONG) is True

    arun(body, async_client(server))

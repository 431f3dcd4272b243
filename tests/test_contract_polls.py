"""The timeout contract at its edges, for every primitive in both shells: polls
(``wait(0)`` and negative timeouts) behave exactly as threading's, and a cancelled
asyncio wait always ends in ``CancelledError`` at any point of the call, leaving no
arrival counted and no subscription.

They run with the short connection limits of ``test_contract.py`` (the
``short_limits`` fixture).
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
import time
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from contract_support import SHELLS, SLACK, client_of, settled
from support import arun, await_until, make_client, wait_until

import pyprocsync
import pyprocsync.asyncio
from pyprocsync import (
    BrokenBarrierError,
    TimeOutError,
)
from pyprocsync.core.keys import EventKeys, FlagKeys
from pyprocsync.tools.server import EmbeddedServer

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("short_limits")]

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
        mine, partner = (
            pyprocsync.asyncio.ProcSync(client, run_id, 0.003, on_late="proceed") for _ in range(2)
        )
        event = pyprocsync.asyncio.Event(client, "e", run_id=run_id, delay=0.003, on_late="proceed")
        barriers = [
            pyprocsync.asyncio.Barrier(
                client, "b", 2, run_id=run_id, delay=0.003, on_late="proceed"
            )
            for _ in range(2)
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

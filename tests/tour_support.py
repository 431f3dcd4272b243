"""A tour of the public API of both shells, for the tests that no warning reaches users
(``from tour_support import assert_tour_is_silent``).

Issue 21: redis-py 8.2 warned in every asyncio program that used pyprocsync (a
synchronous retry policy handed to an asyncio pool), and a user whose own tests run with
warnings as errors got failures from pyprocsync. The tour runs ``sync`` (system and
server clock, a fixed and an automatic lead), ``reset``, Event and Barrier in every
method, ``from_url`` and ``close``/``aclose``, in the blocking shell (participants in
threads) and the asyncio one (participants in tasks), against one deployment: a plain
server, a TLS one, a cluster.
"""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

from support import LONG, arun, in_threads, join, start_thread

import pyprocsync
import pyprocsync.asyncio as aps


def _instances(shell: Any, url: str, run_id: str, cluster: bool) -> tuple[list[Any], ...]:
    """Two ProcSync (system clock and a fixed lead; server clock and ``"auto"``), two
    Events and two Barriers of ``shell`` (``pyprocsync`` or ``pyprocsync.asyncio``),
    each with a client of its own. They proceed when they learn of an instant late: the
    subject is warnings, not how late a loaded machine learns a short lead."""
    common = {"cluster": cluster, "on_late": "proceed"}
    nodes = [
        shell.ProcSync.from_url(url, run_id, 0.02, **common),
        shell.ProcSync.from_url(url, run_id, "auto", clock="server", **common),
    ]
    events = [shell.Event.from_url(url, "flag", run_id=run_id, **common) for _ in "ab"]
    barriers = [
        shell.Barrier.from_url(url, "gate", 2, run_id=run_id, delay=0.02, **common) for _ in "ab"
    ]
    return nodes, events, barriers


def _blocking_tour(url: str, run_id: str, cluster: bool) -> None:
    nodes, events, barriers = _instances(pyprocsync, url, run_id, cluster)
    try:
        for outcome in in_threads(
            *(lambda n=n: [n.sync(f"point-{i}", 2, LONG) for i in range(2)] for n in nodes),
            timeout=LONG,
        ):
            outcome.result()
        nodes[0].reset("point-0")
        setter, waiter = events
        thread, waited = start_thread(lambda: waiter.wait(LONG))
        setter.set()
        join([thread], LONG)
        assert waited.result() is True
        assert waiter.is_set()
        setter.clear()
        assert not waiter.wait(0.05)
        for outcome in in_threads(*(lambda b=b: b.wait(LONG) for b in barriers), timeout=LONG):
            outcome.result()
        assert barriers[0].n_waiting == 0
        assert not barriers[0].broken
        barriers[0].abort()
        barriers[0].reset()
    finally:
        for closable in (*nodes, *events, *barriers):
            closable.close()


async def _asyncio_tour(url: str, run_id: str, cluster: bool) -> None:
    nodes, events, barriers = _instances(aps, url, run_id, cluster)
    try:

        async def rounds(node: Any) -> None:
            for i in range(2):
                await node.sync(f"point-{i}", 2, LONG)

        await asyncio.gather(*(rounds(n) for n in nodes))
        await nodes[0].reset("point-0")
        setter, waiter = events
        waiting = asyncio.ensure_future(waiter.wait(LONG))
        await asyncio.sleep(0.05)
        await setter.set()
        assert await waiting is True
        assert await waiter.is_set()
        await setter.clear()
        assert not await waiter.wait(0.05)
        await asyncio.gather(*(b.wait(LONG) for b in barriers))
        assert await barriers[0].n_waiting() == 0
        assert not await barriers[0].broken()
        await barriers[0].abort()
        await barriers[0].reset()
    finally:
        for closable in (*nodes, *events, *barriers):
            await closable.aclose()


def assert_tour_is_silent(url: str, run_id: str, *, cluster: bool = False) -> None:
    """Run the tour of both shells against ``url``; fail naming every warning emitted.

    Every warning is recorded (``simplefilter("always")``), from any thread: the
    listener's thread included, where an "error" filter would end that thread instead
    of reaching the test.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _blocking_tour(url, f"{run_id}-blocking", cluster)
        arun(lambda: _asyncio_tour(url, f"{run_id}-asyncio", cluster), timeout=LONG)
    emitted: list[Any] = [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
    ]
    assert not emitted, "\n".join(emitted)

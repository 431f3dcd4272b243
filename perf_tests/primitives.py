"""Event and Barrier across processes: wake-up latency and round rate, with a local reference.

Two measurements, each with ``--nodes`` real processes against one server:

* **Event**: one process sets an ``Event`` (``delay=0``) while the others wait in
  ``wait()``; the figure is the time from just before ``set()`` until the last waiter
  returned (wall clock, one machine; each waiter reads it on the line after ``wait()``
  returns), per set: p50/p90/p99/max. The reference is ``multiprocessing.Event``
  (local only, no network, no Redis), with the same processes and loop, measured in the
  same run. The waiters get ready for the next set through a local
  ``multiprocessing.Barrier`` (not measured).
* **Barrier**: every process calls ``Barrier.wait()`` ``--rounds`` times in a loop
  (``delay=0``, no action), blocking and asyncio flavours; the figure is rounds per
  second. The reference is ``multiprocessing.Barrier`` (local only, no network, no
  Redis) with the same processes and loop, measured in the same run.

Usage::

    python perf_tests/primitives.py [--redis URL] [--nodes 4] [--sets 300] [--rounds 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import _common
import redis
import redis.asyncio as aioredis

import pyprocsync
import pyprocsync.asyncio
from pyprocsync.tools.stats import summary


@contextlib.contextmanager
def _event(url: str, shared: Any) -> Iterator[Any]:
    """pyprocsync's Event ``go`` of run ``shared`` (a str), or ``shared`` itself: a
    ``multiprocessing.Event``, the local reference (same ``set``/``wait``/``clear``)."""
    if not isinstance(shared, str):
        yield shared
        return
    client = redis.Redis.from_url(url)
    try:
        with pyprocsync.Event(client, "go", run_id=shared) as event:
            yield event
    finally:
        client.close()


def _event_waiter(url: str, shared: Any, sets: int, ready: Any, out: Any) -> None:
    with _event(url, shared) as event:
        for _ in range(sets):
            ready.wait()
            woke = event.wait(30)
            returned = time.time_ns()  # the caller's next line
            out.put(returned if woke else None)


def _event_setter(url: str, shared: Any, sets: int, ready: Any, out: Any) -> list[float]:
    latencies = []
    with _event(url, shared) as event:
        for _ in range(sets):
            ready.wait()
            time.sleep(0.002)  # let every waiter block in wait()
            before = time.time_ns()
            event.set()
            returned = [out.get(timeout=30) for _ in range(ready.parties - 1)]
            if None in returned:
                raise _common.Failure("an Event waiter timed out")
            latencies.append((max(returned) - before) / 1e3)
            event.clear()  # before the waiters pass `ready` again
    return latencies


def event_latency(url: str, nodes: int, sets: int, local: bool = False) -> dict[str, float]:
    """``nodes - 1`` processes wait, this one sets: µs from set() to the last return.

    :param local: measure ``multiprocessing.Event`` (the reference) instead.
    """
    context = multiprocessing.get_context("spawn")
    ready, out = context.Barrier(nodes), context.Queue()
    shared: Any = context.Event() if local else uuid.uuid4().hex
    workers = [
        context.Process(target=_event_waiter, args=(url, shared, sets, ready, out), daemon=True)
        for _ in range(nodes - 1)
    ]
    try:
        for worker in workers:
            worker.start()
        return summary(_event_setter(url, shared, sets, ready, out))
    finally:
        _stop(workers)


def _barrier_loop(url: str, run: str, nodes: int, rounds: int, start: Any) -> None:
    client = redis.Redis.from_url(url)
    with pyprocsync.Barrier(client, "loop", nodes, run_id=run, delay=0) as barrier:
        barrier.wait(30)  # warm-up (connections, scripts)
        start.wait()
        for _ in range(rounds):
            barrier.wait(30)
    client.close()


def _async_barrier_loop(url: str, run: str, nodes: int, rounds: int, start: Any) -> None:
    async def loop() -> None:
        client = aioredis.Redis.from_url(url)
        async with pyprocsync.asyncio.Barrier(client, "loop", nodes, run_id=run, delay=0) as b:
            await b.wait(30)
            start.wait()  # a local barrier: blocks the loop briefly, before timing starts
            for _ in range(rounds):
                await b.wait(30)
        await client.aclose()

    asyncio.run(loop())


def _local_barrier_loop(_url: str, barrier: Any, _nodes: int, rounds: int, start: Any) -> None:
    start.wait()
    for _ in range(rounds):
        barrier.wait(30)


def rounds_per_second(
    target: Callable[..., None], url: str, nodes: int, rounds: int, local: bool = False
) -> float:
    """Run ``target`` in ``nodes`` processes; rounds per second between start and finish."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(nodes + 1)
    shared: Any = context.Barrier(nodes) if local else uuid.uuid4().hex
    workers = [
        context.Process(target=target, args=(url, shared, nodes, rounds, start), daemon=True)
        for _ in range(nodes)
    ]
    try:
        for worker in workers:
            worker.start()
        start.wait(60)
        began = time.monotonic()
        for worker in workers:
            worker.join(120)
        elapsed = time.monotonic() - began
        if any(worker.exitcode != 0 for worker in workers):
            raise _common.Failure("a barrier worker failed")
        return rounds / elapsed
    finally:
        _stop(workers)


def _stop(workers: list[Any]) -> None:
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
        worker.join(5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", metavar="URL", help="server (default: an embedded one)")
    parser.add_argument("--nodes", type=int, default=4, help="processes (default 4)")
    parser.add_argument("--sets", type=int, default=300, help="Event sets (default 300)")
    parser.add_argument("--rounds", type=int, default=1000, help="Barrier rounds (default 1000)")
    args = parser.parse_args()
    if args.nodes < 2 or args.sets < 1 or args.rounds < 1:
        raise _common.Failure("--nodes must be >= 2, --sets and --rounds >= 1", 2)
    with _common.redis_server(args.redis) as (url, _embedded):
        print(f"primitives: {args.nodes} processes, pyprocsync {pyprocsync.__version__}")
        print(_common.machine_line(_common.machine()))
        events = {
            "pyprocsync.Event": event_latency(url, args.nodes, args.sets),
            "multiprocessing.Event (local reference)": event_latency(
                url, args.nodes, args.sets, local=True
            ),
        }
        rates = {
            "Barrier (blocking)": rounds_per_second(_barrier_loop, url, args.nodes, args.rounds),
            "Barrier (asyncio)": rounds_per_second(
                _async_barrier_loop, url, args.nodes, args.rounds
            ),
            "multiprocessing.Barrier (local reference)": rounds_per_second(
                _local_barrier_loop, url, args.nodes, args.rounds, local=True
            ),
        }
    print(
        f"\nEvent set() -> all {args.nodes - 1} waiters returned (us, {args.sets} sets; "
        "each waiter reads its clock on the line after wait() returns)"
    )
    print(f"  {'':<44}" + "".join(f"{p:>9}" for p in _common.PERCENTILES))
    for name, latency in events.items():
        print(f"  {name:<44}" + "".join(f"{latency[p]:>9.0f}" for p in _common.PERCENTILES))
    reference = rates["multiprocessing.Barrier (local reference)"]
    print(f"\nBarrier rounds/s ({args.rounds} rounds, delay 0):")
    for name, rate in rates.items():
        print(f"  {name:<44}{rate:>9.0f}   {rate / reference:>6.2f} x reference")
    return 0


if __name__ == "__main__":
    _common.run("primitives", main)

"""Corrupt and foreign data while participants wait (issue 7), and garbage on the channels.

Every field of an event's state and a flag's hash is corrupted while participants wait
in a round of three (two real arrivals, then a third): each must end within its timeout
with a correct result or :class:`~pyprocsync.ProtocolError`, never a round released with
fewer real arrivals than it needs, never a corruption that stalls a round without anyone
noticing. Garbage published on the event and flag channels while participants wait must
be ignored (or make them read the stored state): they return at the real instant.

``test_faults_messages.py`` holds the first corruption tests (``sync`` on a corrupt
state, one corruption while waiting); this module and ``test_corrupt_idle.py`` sweep
every field, key type and operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from corrupt_support import FLAG_CORRUPTIONS, LIVENESS, NUMBERS, OP_TIMEOUT, OUTCOMES, Corruption
from primitive_support import async_ready_counter, flag_keys, ready_counter, wait_counter
from support import (
    PROMPT,
    arun,
    async_client,
    await_until,
    event_keys,
    spawn,
    start_thread,
    wait_until,
    waiting_members,
)

import pyprocsync.asyncio as aps
from pyprocsync import (
    Barrier,
    BrokenBarrierError,
    Event,
    ParameterMismatchError,
    ProcSync,
    ProtocolError,
    SyncResult,
    TimeOutError,
)
from pyprocsync.tools.server import EmbeddedServer

# -- corruption while participants wait ---------------------------------------------------------


#: Corruptions written while two of three participants wait (the last one sweeps a key
#: type, the others every field; ``m:<member>`` is the first waiter's own index).
WAITING_CORRUPTIONS: dict[str, list[Corruption]] = {
    **{
        field: [Corruption("state", field, v) for v in NUMBERS.values()]
        for field in ("g", "n", "k", "L", "m:<member>")
    },
    "f": [Corruption("state", "f", v) for v in (b"zz", b"-1", b"1.5", b"7", b"\xff")],
    "a": [Corruption("state", "a", v) for v in (b"junk", b"\xff\x00")],
    "o-current": [Corruption("state", "o0", t.format(gen=0).encode()) for t in OUTCOMES.values()],
    "o-other": [Corruption("state", "o3", t.format(gen=3).encode()) for t in OUTCOMES.values()],
    "state-type": [Corruption("state", kind=k) for k in ("string", "list", "set", "zset")],
    "leases-type": [Corruption("leases", kind=k) for k in ("string", "list", "set", "hash")],
}


#: What a participant of a round with corrupt data may end with.
ALLOWED = (SyncResult, ProtocolError, TimeOutError, BrokenBarrierError, ParameterMismatchError)


def settle(predicate: Callable[[], bool], seconds: float) -> None:
    """Poll ``predicate`` for up to ``seconds`` (errors count as "not yet"); never fails."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, ValueError):
            if predicate():
                return
        time.sleep(0.005)


def round_of_three(
    server: EmbeddedServer, run_id: str, corruption: Corruption, event: str
) -> list[Any]:
    """The first of three participants arrives and waits; the corruption is written;
    the second arrives (and is counted or refused), then the third. A participant still
    waiting half a second after the other two are done is ended by deleting the event's
    keys (as a flush would). Returns the three outcomes: a result or an exception each."""
    keys = event_keys(run_id, event)
    client = redis.Redis(host=server.bind, port=server.port)
    nodes = [ProcSync(client, run_id, 0, liveness=LIVENESS) for _ in range(3)]
    try:
        first = start_thread(lambda: nodes[0].sync(event, 3, 4 * OP_TIMEOUT))
        wait_until(lambda: waiting_members(client, run_id, event), 5, "the first arrival")
        member = waiting_members(client, run_id, event)[0]
        corruption.apply(client, keys.state if corruption.key == "state" else keys.leases, member)
        second = start_thread(lambda: nodes[1].sync(event, 3, 2 * OP_TIMEOUT))
        settle(lambda: not second[0].is_alive() or client.zcard(keys.leases) >= 2, OP_TIMEOUT)
        third = start_thread(lambda: nodes[2].sync(event, 3, 2 * OP_TIMEOUT))
        for thread, _ in (second, third):
            thread.join(2 * OP_TIMEOUT + PROMPT)
        first[0].join(OP_TIMEOUT)  # a release reaches it about when it reaches the others
        if first[0].is_alive():
            client.delete(keys.state, keys.leases)
        first[0].join(PROMPT)
        assert not any(t.is_alive() for t, _ in (first, second, third)), "a participant hangs"
        return [outcome.error or outcome.value for _, outcome in (first, second, third)]
    finally:
        for node in nodes:
            node.close()
        client.close()


def verdict(outcomes: list[Any]) -> str:
    """What is wrong with the outcomes of a round of three, or "" if nothing."""
    strange = [o for o in outcomes if not isinstance(o, ALLOWED)]
    if strange:
        return f"unexpected {type(strange[0]).__name__}: {strange[0]!r:.200}"
    released = [o for o in outcomes if isinstance(o, SyncResult)]
    if released:
        if len(released) < 3 or len({(r.generation, r.release_at) for r in released}) != 1:
            return f"released with fewer than 3 real arrivals: {outcomes!r:.400}"
        return ""
    if not any(isinstance(o, (ProtocolError, ParameterMismatchError)) for o in outcomes):
        return f"nobody noticed the corruption and nobody was released: {outcomes!r:.400}"
    return ""


def each_at_once(
    corruptions: list[Corruption], scenario: Callable[[int, Corruption], list[Any]]
) -> dict[str, list[Any]]:
    """Run ``scenario(number, corruption)`` for every corruption at once, in threads;
    return the outcomes of each (fails the test if a scenario itself failed)."""
    results: dict[str, list[Any]] = {}
    failures: dict[str, BaseException] = {}

    def one(number: int, corruption: Corruption) -> None:
        try:
            results[corruption.id] = scenario(number, corruption)
        except BaseException as exc:
            failures[corruption.id] = exc

    threads = [
        threading.Thread(target=one, args=(n, c), daemon=True) for n, c in enumerate(corruptions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == {}
    assert len(results) == len(corruptions)
    return results


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", list(WAITING_CORRUPTIONS))
def test_corruption_while_waiting(server: EmbeddedServer, run_id: str, field: str) -> None:
    """Corrupt data written while the first of three participants waits (each value of
    the field in a round of its own, all at once): every participant ends within its
    timeout, with a ProtocolError, a refusal (timeout, broken round, mismatch) or the
    release of all three together. A round is never released without its three real
    arrivals, and never stalled silently: someone raises ProtocolError (or a mismatch),
    or all three pass."""
    results = each_at_once(
        WAITING_CORRUPTIONS[field],
        lambda number, corruption: round_of_three(server, run_id, corruption, f"w{number}"),
    )
    problems = [f"{name}: {verdict(outcomes)}" for name, outcomes in results.items()]
    assert not [p for p in problems if not p.endswith(": ")], "\n".join(problems)


def waiter_and_setter(
    server: EmbeddedServer, run_id: str, corruption: Corruption, name: str
) -> list[Any]:
    """A flag that was set and cleared; a waiter begins to wait; the corruption is
    written; another participant sets the flag. Returns the outcomes of the waiter and
    of the setter."""
    client = redis.Redis(host=server.bind, port=server.port)
    waiter, setter = (Event(client, name, run_id=run_id, liveness=LIVENESS) for _ in range(2))
    try:
        setter.set()
        setter.clear()
        key = flag_keys(run_id, name).state
        ready = f"{run_id}:ready:{name}"
        ready_counter(waiter, client, ready)
        waiting = start_thread(lambda: waiter.wait(4 * OP_TIMEOUT))
        wait_counter(client, ready, 1, 5)  # it read the flag
        corruption.apply(client, key)
        setting = start_thread(setter.set)
        for thread, _ in (setting, waiting):
            thread.join(4 * OP_TIMEOUT + PROMPT)
        assert not any(t.is_alive() for t, _ in (waiting, setting)), "a participant hangs"
        return [outcome.error or outcome.value for _, outcome in (waiting, setting)]
    finally:
        waiter.close()
        setter.close()
        client.close()


def flag_verdict(outcomes: list[Any]) -> str:
    """What is wrong with the outcomes of a waiter and a setter, or "" if nothing."""
    woken, set_ = outcomes
    if not isinstance(woken, (bool, ProtocolError)) or not isinstance(
        set_, (type(None), ProtocolError)
    ):
        return f"unexpected outcome: {outcomes!r:.300}"
    if woken is False and set_ is None:
        return "the flag was set but its waiter returned False"
    return ""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("field", ["v", "s", "o", "type"])
def test_flag_corruption_while_waiting(server: EmbeddedServer, run_id: str, field: str) -> None:
    """A flag's field (or key type) corrupted under a waiting ``Event.wait``, then
    ``set()``: the waiter is woken, or someone raises ProtocolError (a waiter may time
    out only if the set was refused); nobody hangs or raises anything else."""
    if field == "type":
        corruptions = [c for c in FLAG_CORRUPTIONS if c.kind]
    else:
        corruptions = [c for c in FLAG_CORRUPTIONS if c.field == field]
    results = each_at_once(
        corruptions,
        lambda number, corruption: waiter_and_setter(server, run_id, corruption, f"f{number}"),
    )
    problems = [f"{name}: {flag_verdict(outcomes)}" for name, outcomes in results.items()]
    assert not [p for p in problems if not p.endswith(": ")], "\n".join(problems)


# -- garbage on the channels -------------------------------------------------------------------


def garbage(generation: int, at_us: int, lead_us: int) -> list[bytes]:
    """Announcements pyprocsync never publishes, for a round in ``generation`` (or a
    flag seen ``generation`` times): junk, huge, almost valid, wrong generation, JSON
    bombs. None of them is a well-formed outcome of the current round."""
    g = generation
    texts = [
        "",
        "\x00",
        "🙂 R 0",
        "R",
        "S",
        f"R {g} x y",
        f"R {g} {at_us} {lead_us} extra",
        f"R {g} -{at_us} 0",
        f"R {g + 1} {at_us} {lead_us}",
        f"R {g + 8} {at_us} {lead_us}",
        f"B {g} time-out 1 2 []",
        f"B {g} timeout 1 2 [1e99999]",
        f"B {g} timeout 1 2 [" + "9" * 100_000 + "]",
        f"B {g} timeout 1 2 " + '{"a":' * 100_000,
        f"B {g} timeout 1 2 " + "[" * 200_000,
        "R " + "9" * 100_000 + f" {at_us} {lead_us}",
        "S",
        "S x y z",
        f"S {g + 1} {at_us}",
        f"S -1 {at_us} {lead_us}",
        f"S {g + 1} {at_us} {lead_us} x",
        f"S {g} {at_us} {lead_us}",
        f"S {g + 1} -{at_us} {lead_us}",
        "S " + "9" * 5000 + f" {at_us} {lead_us}",
        json.dumps({"R": g, "at": at_us}),
    ]
    return [b"\xff\xfe\x00\x80", b"x" * (1 << 20), *(t.encode() for t in texts)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["blocking", "asyncio"])
@pytest.mark.parametrize("kind", ["sync", "Barrier", "Event"])
def test_garbage_published_while_waiting(
    server: EmbeddedServer, client: redis.Redis, run_id: str, kind: str, mode: str
) -> None:
    """Garbage published on the channel of a waiting participant (a ``sync``, a
    ``Barrier.wait`` or an ``Event.wait``, blocking or asyncio) is ignored or makes it
    read the stored state: it keeps waiting, and when its partner arrives (or the flag
    is set) it returns at the real instant (lead 0.3 s), not late, not early."""
    classes = {
        "blocking": {"sync": ProcSync, "Barrier": Barrier, "Event": Event},
        "asyncio": {"sync": aps.ProcSync, "Barrier": aps.Barrier, "Event": aps.Event},
    }
    channel = (flag_keys if kind == "Event" else event_keys)(run_id, "g").state
    options = {"run_id": run_id, "delay": 0.3, "liveness": LIVENESS}

    def make(made_client: Any, cls: type[Any]) -> Any:
        if cls in (ProcSync, aps.ProcSync):
            return cls(made_client, **options)
        return (
            cls(made_client, "g", 2, **options)
            if kind == "Barrier"
            else cls(made_client, "g", **options)
        )

    async def body(aclient: aioredis.Redis) -> tuple[Any, float, int]:
        own = aclient if mode == "asyncio" else client
        waiter = make(own, classes[mode][kind])
        partner = make(client, classes["blocking"][kind])

        def call(method: Callable[..., Any], *args: Any) -> Any:
            return method(*args) if mode == "asyncio" else asyncio.to_thread(method, *args)

        ready = f"{run_id}:ready"
        if kind == "Event":  # an Event waiter reads the flag once it subscribed
            if mode == "asyncio":
                async_ready_counter(waiter, aclient, ready)
            else:
                ready_counter(waiter, client, ready)
        if kind == "sync":
            waiting = spawn(call(waiter.sync, "g", 2, 10))
        else:
            waiting = spawn(call(waiter.wait, 10))

        async def started() -> bool:
            if client.pubsub_numsub(channel)[0][1] < 1:
                return False
            if kind == "Event":
                return int(client.get(ready) or 0) >= 1
            return bool(waiting_members(client, run_id, "g"))

        await await_until(started, 5, "the waiter to start waiting")
        now_us = time.time_ns() // 1000
        for message in garbage(0, now_us - 10_000_000, 300_000):
            client.publish(channel, message)
        await asyncio.sleep(0.3)  # a window in which the garbage must not end the wait
        assert not waiting.done(), (
            waiting.result() if not waiting.exception() else waiting.exception()
        )
        if kind == "sync":
            theirs = await asyncio.to_thread(partner.sync, "g", 2, 10)
            at_us = round(theirs.release_at * 1e6)
        elif kind == "Barrier":
            await asyncio.to_thread(partner.wait, 10)
            at_us = stored_instant(client, event_keys(run_id, "g").state, "o0")
        else:
            await asyncio.to_thread(partner.set)
            at_us = stored_instant(client, channel, "o")
        mine = await waiting
        returned_us = time.time_ns() // 1000
        for instance in (waiter, partner):
            closing = instance.close()
            if asyncio.iscoroutine(closing):
                await closing
        return mine, returned_us, at_us

    mine, returned_us, at_us = arun(body, async_client(server))
    if kind == "sync":
        assert abs(mine.release_at * 1e6 - at_us) <= 1
        assert mine.late_by < 0.05
    else:
        assert mine in (0, 1, True), mine
    assert -1000 <= returned_us - at_us < 50_000, "returned away from the agreed instant"


def stored_instant(client: redis.Redis, key: str, field: str) -> int:
    """The release instant (µs) of the outcome stored in ``field`` of ``key``."""
    stored = client.hget(key, field)
    assert stored is not None
    return int(stored.split()[2])

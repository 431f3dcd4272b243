"""Hostile input to the calls (issue 7): names of Events and Barriers, ``nodes`` and
``parties``, the Barrier action and default timeout, and the arguments of ``sync``,
``reset`` and the waits, fuzzed.

The same property as ``test_hostile_constructor.py``: either an
:class:`~pyprocsync.InvalidArgumentError` before a single byte went to Redis, for a value
outside the documented domain, or correct behaviour on the real server (a round of one
passes, a lone participant of a larger round times out, a set flag wakes its waiter),
within ``hostile_support.BOUND`` seconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import redis
from hostile_support import (
    BOUND,
    FUZZ,
    Driver,
    Entry,
    Use,
    accepted,
    assert_keys,
    entries,
    pass_once,
)
from hostile_values import (
    BIG_NAMES,
    TEN_YEARS,
    count_ok,
    hostile,
    index,
    name_ok,
    names,
    positive_ok,
    real,
)
from hypothesis import example, given
from hypothesis import strategies as st

from pyprocsync import BrokenBarrierError, SyncResult, TimeOutError
from pyprocsync.tools.server import EmbeddedServer


def timeout_ok(value: object) -> bool:
    """A timeout of ``sync``: None or inf (no limit), or a duration."""
    return value is None or real(value) == math.inf or positive_ok(value)


def wait_timeout_ok(value: object) -> bool:
    """A timeout of ``Event.wait`` or ``Barrier.wait``, as threading takes it: None or
    inf (no limit), or any number of seconds up to ten years either way (<= 0 polls)."""
    number = real(value)
    if value is None or number is None:
        return value is None
    return math.isinf(number) or abs(number) <= TEN_YEARS


# -- names of Events and Barriers, parties, action, default timeout ---------------------------


@FUZZ
@example(value=BIG_NAMES[1], entry=Entry("Event", "blocking", "from_url"))
@example(value="*?[]{}\x00", entry=Entry("Barrier", "asyncio", "constructor"))
@given(value=st.one_of(hostile(), names()), entry=entries(("Event", "Barrier")))
def test_event_and_barrier_name(
    server: EmbeddedServer, admin: redis.Redis, value: object, entry: Entry
) -> None:
    """The ``name`` of an Event or a Barrier: any non-empty text (NUL, glob characters,
    braces, 64 KiB) works under its percent-encoded key name; anything else is refused
    before any I/O."""
    use = Use(value)  # type: ignore[arg-type]

    async def body(driver: Driver) -> None:
        await pass_once(driver, driver.build(use, delay=0), use)

    if accepted(name_ok(value), entry, server, body):
        assert_keys(admin, use, entry.kind)


async def lone(driver: Driver, call: Callable[..., Any], *args: Any) -> BaseException:
    """Run a call that must be refused for want of partners; return what it raised."""
    try:
        result = await driver(call, *args)
    except (BrokenBarrierError, TimeOutError) as exc:
        return exc
    raise AssertionError(f"a lone participant of a larger round was released: {result!r}")


def assert_lone_timeout(error: BaseException, size: int) -> None:
    """What a lone participant whose timeout expired raises: 1 of ``size`` arrived."""
    assert getattr(error, "reason", "timeout") == "timeout", error
    assert (getattr(error, "arrived", None), getattr(error, "expected", None)) == (1, size), error


SIZES = st.one_of(st.integers(1, 3), st.sampled_from([np.int64(2), np.uint8(1), 10**16, 2**62]))


@FUZZ
@example(value=np.int64(2), entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=10**16, entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=10**16, entry=Entry("Barrier", "asyncio", "constructor"))
@given(value=st.one_of(hostile(), SIZES), entry=entries(("ProcSync", "Barrier"), ("constructor",)))
def test_nodes_and_parties(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """``nodes`` of ``sync`` and a Barrier's ``parties``: an int >= 1 of any integer type
    (not bool). One passes at once; a lone participant of a larger round times out with
    1 of ``nodes`` arrived (never released, never a ProtocolError); anything else is
    refused before any I/O."""
    use = Use("size")
    size = index(value)

    async def body(driver: Driver) -> None:
        if entry.kind == "Barrier":
            barrier = driver.build(use, parties=value, delay=0)
            if size == 1:
                assert await driver(barrier.wait) == 0
            else:
                assert_lone_timeout(await lone(driver, barrier.wait, 0.2), size or 0)
            return
        instance = driver.build(use, delay=0)
        if size == 1:
            result = await driver(instance.sync, use.name, value, BOUND)
            assert isinstance(result, SyncResult), result
            assert result.nodes == 1
        else:
            error = await lone(driver, instance.sync, use.name, value, 0.2)
            assert isinstance(error, TimeOutError), error
            assert_lone_timeout(error, size or 0)

    accepted(count_ok(value), entry, server, body)


@FUZZ
@example(value=len, entry=Entry("Barrier", "asyncio", "from_url"))
@given(
    value=st.one_of(hostile(), st.sampled_from(["<plain>", "<async>", "<object>"])),
    entry=entries(("Barrier",)),
)
def test_barrier_action(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """``action``: None or a callable (in asyncio also an ``async def`` function); it
    runs exactly once in a barrier of one. A callable that raises when called without
    arguments (``len``) is an action that fails: its exception reaches the caller, as
    documented. Anything else is refused before any I/O."""
    use = Use("action")
    calls: list[str] = []

    class CallableObject:
        def __call__(self) -> None:
            calls.append("object")

    async def coroutine_function() -> None:
        calls.append("async")

    actions: dict[str, object] = {
        "<plain>": lambda: calls.append("plain"),
        "<async>": coroutine_function if entry.mode == "asyncio" else CallableObject(),
        "<object>": CallableObject(),
    }
    ours = isinstance(value, str) and value in actions
    action = actions[value] if ours else value  # type: ignore[index]
    failure: type[BaseException] | None = None
    if callable(action) and not ours:
        try:
            action()
        except Exception as exc:
            failure = type(exc)

    async def body(driver: Driver) -> None:
        barrier = driver.build(use, action=action, delay=0)
        if failure is None:
            assert await driver(barrier.wait) == 0
        else:
            with pytest.raises(failure):
                await driver(barrier.wait)

    if accepted(action is None or callable(action), entry, server, body) and ours:
        assert len(calls) == 1, calls


TIMEOUTS = st.one_of(
    st.floats(1e-12, TEN_YEARS),
    st.sampled_from(
        [
            None,
            math.inf,
            1e-9,
            0.001,
            5,
            TEN_YEARS,
            9.3e9,
            np.float64(1e10),
            10**30,
            0,
            -1,
            -math.inf,
            np.float64(-0.0),
        ]
    ),
)


def assert_passed(outcome: object, kind: str, timeout: object) -> None:
    """A call that can pass at once passed. Only a round (not a flag that is set) may
    give up first, and only with a tiny timeout (its subscription was not confirmed)."""
    if kind == "Event":
        assert outcome is True, f"Event.wait({timeout!r}) on a set flag returned {outcome!r}"
    elif isinstance(outcome, BaseException):
        number = real(timeout)
        assert isinstance(outcome, (TimeOutError, BrokenBarrierError)), outcome
        assert number is not None, outcome
        assert number < 0.5, f"timeout={timeout!r}: {outcome!r}"
    else:
        assert isinstance(outcome, SyncResult) or outcome == 0, outcome


@FUZZ
@example(value=Fraction(10**400, 7), entry=Entry("Barrier", "blocking", "constructor"))
@example(value=1e10, entry=Entry("Barrier", "blocking", "from_url"))
@given(value=st.one_of(hostile(), TIMEOUTS), entry=entries(("Barrier",)))
def test_barrier_default_timeout(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """A Barrier's default ``timeout`` (None, inf or a number > 0): a barrier of one
    passes with it; anything else is refused before any I/O."""
    use = Use("default-timeout")

    async def body(driver: Driver) -> None:
        barrier = driver.build(use, timeout=value, delay=0)
        try:
            outcome: object = await driver(barrier.wait)
        except (TimeOutError, BrokenBarrierError) as exc:
            outcome = exc
        assert_passed(outcome, "Barrier", value)

    accepted(wait_timeout_ok(value), entry, server, body)


# -- the methods -----------------------------------------------------------------------------


@FUZZ
@example(value=BIG_NAMES[3], entry=Entry("ProcSync", "asyncio", "constructor"), method="sync")
@example(value="a:b{c}*", entry=Entry("ProcSync", "blocking", "constructor"), method="reset")
@given(
    value=st.one_of(hostile(), names()),
    entry=entries(("ProcSync",), ("constructor",)),
    method=st.sampled_from(["sync", "reset"]),
)
def test_event_name_of_sync_and_reset(
    server: EmbeddedServer, admin: redis.Redis, value: object, entry: Entry, method: str
) -> None:
    """``event_name`` of ``sync`` and ``reset``: any non-empty text passes a round of one
    (keys under the percent-encoded name) or resets the (idle) event; anything else is
    refused before any I/O."""
    use = Use(value)  # type: ignore[arg-type]

    async def body(driver: Driver) -> None:
        instance = driver.build(use, delay=0)
        if method == "sync":
            await pass_once(driver, instance, use)
        else:
            assert await driver(instance.reset, value) == 0

    if accepted(name_ok(value), entry, server, body) and method == "sync":
        assert_keys(admin, use, "ProcSync")


@FUZZ
@example(value=1e10, entry=Entry("ProcSync", "blocking", "constructor"))
@example(value=TEN_YEARS, entry=Entry("Event", "blocking", "constructor"))
@example(value=1e-9, entry=Entry("Event", "asyncio", "constructor"))
@example(value=10**400, entry=Entry("ProcSync", "asyncio", "constructor"))
@given(value=st.one_of(hostile(), TIMEOUTS), entry=entries(vias=("constructor",)))
def test_timeout_of_sync_and_waits(server: EmbeddedServer, value: object, entry: Entry) -> None:
    """``timeout`` of ``ProcSync.sync`` (None, inf or a number > 0), ``Event.wait`` and
    ``Barrier.wait`` (as threading: also 0 or less, a poll): a call that can pass at
    once (a round of one, a flag that is set) passes with any such timeout, huge ones
    included; only a round with a tiny timeout may give up first. Anything else is
    refused before any I/O."""
    use = Use("timeout")

    async def body(driver: Driver) -> None:
        instance = driver.build(use, delay=0)
        try:
            if entry.kind == "ProcSync":
                outcome: object = await driver(instance.sync, use.name, 1, value)
            else:
                if entry.kind == "Event":
                    await driver(instance.set)
                    driver.recorder.clear()  # the call under test is the wait
                outcome = await driver(instance.wait, value)
        except (TimeOutError, BrokenBarrierError) as exc:
            outcome = exc
        assert_passed(outcome, entry.kind, value)

    ok = timeout_ok if entry.kind == "ProcSync" else wait_timeout_ok
    accepted(ok(value), entry, server, body)

"""``max_uncertainty`` (issue 22): with a tolerance given, no participant moves when any
participant cannot honour it; the round ends for all with ``ClockUncertaintyError``
naming the host and its bound, before any instant is agreed.

Each participant runs in a thread of its own whose kernel says what the test wants
(:func:`pyprocsync.clock.kernel_clock`, replaced per thread), against the real server.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from support import LONG, in_threads, join, start_thread

from pyprocsync import (
    BrokenBarrierError,
    ClockUncertaintyError,
    Event,
    ProcSync,
    SyncResult,
    clock,
)
from pyprocsync.core.wire import UNBOUNDED_US, parse_outcome
from pyprocsync.exceptions import ProtocolError

pytestmark = pytest.mark.timeout(60)

#: What each participant thread's kernel says, by thread name.
SYNCED_50US = clock.KernelClock(True, 50_000, 20_000)
SYNCED_500US = clock.KernelClock(True, 500_000, 200_000)
UNSYNCED = clock.KernelClock(False, 16 * 10**9, 16 * 10**9)


@pytest.fixture
def kernels(monkeypatch: pytest.MonkeyPatch) -> dict[str, clock.KernelClock]:
    """Per-thread kernel clocks: a thread named ``x`` reads ``kernels["x"]``."""
    table: dict[str, clock.KernelClock] = {}
    monkeypatch.setattr(
        clock, "kernel_clock", lambda: table.get(threading.current_thread().name, SYNCED_50US)
    )
    return table


def named(name: str, call: Callable[[], Any]) -> Callable[[], Any]:
    """``call``, run in a thread named ``name`` (its kernel clock's key)."""

    def body() -> Any:
        threading.current_thread().name = name
        return call()

    return body


@pytest.fixture
def pair(make_sync: Callable[..., ProcSync]) -> Callable[..., list[Any]]:
    """Run ``a`` and ``b`` (ProcSync with node ids a and b, their own options) through one
    round of ``point``; return each outcome (result or exception), a's first."""

    def run(a: dict[str, Any], b: dict[str, Any], *, point: str = "p") -> list[Any]:
        nodes = {name: make_sync(0.05, node_id=name, **opts) for name, opts in (("a", a), ("b", b))}
        outcomes = in_threads(
            *(named(n, lambda n=n: nodes[n].sync(point, 2, LONG)) for n in nodes), timeout=LONG
        )
        return [o.error if o.error is not None else o.value for o in outcomes]

    return run


def assert_uncertain(outcome: object, node: str, bound: float | None, tolerance: float) -> None:
    assert isinstance(outcome, ClockUncertaintyError), repr(outcome)
    assert isinstance(outcome, BrokenBarrierError)
    assert outcome.reason == "uncertain"
    assert outcome.node == node
    assert outcome.missing == (node,)
    assert outcome.bound == (None if bound is None else pytest.approx(bound))
    assert outcome.max_uncertainty == pytest.approx(tolerance)
    assert repr(node) in str(outcome)


def test_bounds_within_the_tolerance_release(
    kernels: dict[str, clock.KernelClock], pair: Callable[..., list[Any]]
) -> None:
    """Both hosts synchronised within 50 µs, a tolerance of 200 µs: released, and each
    result states its bound."""
    outcomes = pair({"max_uncertainty": 200e-6}, {"max_uncertainty": 200e-6})
    for result in outcomes:
        assert isinstance(result, SyncResult), repr(result)
        assert result.clock_uncertainty == pytest.approx(50e-6)
        assert result.clock_synchronized is True


@pytest.mark.parametrize("b_kernel", [SYNCED_500US, UNSYNCED], ids=["500us", "unsynchronised"])
def test_a_bound_beyond_the_tolerance_breaks_the_round_for_all(
    kernels: dict[str, clock.KernelClock],
    pair: Callable[..., list[Any]],
    b_kernel: clock.KernelClock,
) -> None:
    """a (50 µs) asks for 200 µs; b's clock is synchronised only within 500 µs, or not at
    all (no bound: it cannot honour any tolerance). Neither is released: both raise
    ClockUncertaintyError naming b and its bound, whoever arrived first, and b need not
    set a tolerance of its own."""
    kernels["b"] = b_kernel
    bound = b_kernel.max_error_ns / 1e9 if b_kernel.synchronized else None
    for point in ("first", "second"):
        outcomes = pair({"max_uncertainty": 200e-6}, {}, point=point)
        for outcome in outcomes:
            assert_uncertain(outcome, "b", bound, 200e-6)


def test_the_broken_round_stays_broken_until_reset(
    kernels: dict[str, clock.KernelClock], make_sync: Callable[..., ProcSync]
) -> None:
    """A round broken by an uncertain clock refuses later arrivals with the same error,
    until ``reset``: then it is usable again (here by hosts that honour the tolerance)."""
    kernels["b"] = UNSYNCED
    a = make_sync(0.05, node_id="a", max_uncertainty=200e-6)
    b = make_sync(0.05, node_id="b")
    outcomes = in_threads(
        named("a", lambda: a.sync("p", 2, LONG)), named("b", lambda: b.sync("p", 2, LONG))
    )
    assert all(isinstance(o.error, ClockUncertaintyError) for o in outcomes)
    late = in_threads(named("a", lambda: a.sync("p", 2, LONG)))[0]
    assert_uncertain(late.error, "b", None, 200e-6)
    a.reset("p")
    kernels["b"] = SYNCED_50US
    outcomes = in_threads(
        named("a", lambda: a.sync("p", 2, LONG)), named("b", lambda: b.sync("p", 2, LONG))
    )
    assert [type(o.result()) for o in outcomes] == [SyncResult, SyncResult]


def test_server_clock_bounds_count_too(make_sync: Callable[..., ProcSync]) -> None:
    """Server-clock mode: the arrival states the estimate's bound carried to the end of
    the lead; a tolerance of 1 µs, which no round trip over a socket allows, breaks the
    round, naming the host whose bound is widest."""
    nodes = [make_sync(0.05, node_id=name, clock="server", max_uncertainty=1e-6) for name in "ab"]
    outcomes = in_threads(*(lambda n=n: n.sync("p", 2, LONG) for n in nodes), timeout=LONG)
    errors = [o.error for o in outcomes]
    assert all(isinstance(e, ClockUncertaintyError) for e in errors), errors
    first = errors[0]
    assert isinstance(first, ClockUncertaintyError)
    assert first.node in ("a", "b")
    assert first.bound is not None
    assert first.bound > 1e-6
    assert {(e.node, e.bound) for e in errors if isinstance(e, ClockUncertaintyError)} == {
        (first.node, first.bound)
    }


def test_a_barrier_takes_the_tolerance_too(
    kernels: dict[str, clock.KernelClock], make_barrier: Callable[..., Any]
) -> None:
    """Barrier: the same options, the same error (a BrokenBarrierError, as threading's
    callers expect)."""
    kernels["b"] = UNSYNCED
    a = make_barrier("gate", 2, max_uncertainty=200e-6)
    b = make_barrier("gate", 2)
    outcomes = in_threads(named("a", lambda: a.wait(LONG)), named("b", lambda: b.wait(LONG)))
    for outcome in outcomes:
        assert isinstance(outcome.error, ClockUncertaintyError), repr(outcome.error)


def test_an_event_waiter_checks_its_own_clock(
    kernels: dict[str, clock.KernelClock], make_event: Callable[..., Event]
) -> None:
    """Event: each waiter checks its own bound when it learns of the set (a flag's
    waiters are not counted, so no round can break): the unsynchronised waiter with a
    tolerance raises ClockUncertaintyError and is not released; the one without a
    tolerance is released as usual. (Whether a waiter began before the set or after it
    while the flag was still set, the outcome is the same.)"""
    kernels["strict"] = UNSYNCED
    kernels["lenient"] = UNSYNCED
    strict = make_event("flag", delay=0.05, max_uncertainty=200e-6)
    lenient = make_event("flag", delay=0.05)
    setter = make_event("flag", delay=0.05)
    started = [
        start_thread(named("strict", lambda: strict.wait(LONG))),
        start_thread(named("lenient", lambda: lenient.wait(LONG))),
    ]
    setter.set()
    join([thread for thread, _ in started], LONG)
    strict_outcome, lenient_outcome = (outcome for _, outcome in started)
    assert isinstance(strict_outcome.error, ClockUncertaintyError), repr(strict_outcome.error)
    assert strict_outcome.error.bound is None
    assert strict_outcome.error.node is not None
    assert lenient_outcome.result() is True


def test_the_outcome_names_the_host_and_its_bound() -> None:
    """What ARRIVE stores and announces for an uncertain round decodes to the host, its
    bound (``None`` for the stand-in of "not known") and the tolerance; anything else in
    its place is foreign or corrupt data (ProtocolError), never a crash."""
    member = "0123456789ab:host-2"
    outcome = parse_outcome(f'B 4 uncertain 1 2 [["{member}","500","200"]]')
    assert (outcome.missing, outcome.bound_us, outcome.tolerance_us) == (("host-2",), 500, 200)
    unknown = parse_outcome(f'B 4 uncertain 1 2 [["{member}","{UNBOUNDED_US}","200"]]')
    assert unknown.bound_us is None
    for corrupt in (
        "[]",
        f'[["{member}",500,200]]',
        f'[["{member}","5e2","200"]]',
        f'[["{member}","-1","200"]]',
        f'[["{member}","{UNBOUNDED_US + 1}","200"]]',
        f'[["{member}","500"]]',
        f'[["{member}","500","200"],["{member}","500","200"]]',
        '[[1,"500","200"]]',
    ):
        with pytest.raises(ProtocolError):
            parse_outcome(f"B 4 uncertain 1 2 {corrupt}")

"""``pyprocsync.Barrier`` (blocking) on a real server: threading.Barrier semantics across
threads and processes: indices, the action, breaking (timeout, abort, failed action,
mismatch), reset, shared state, validation, lifecycle.

Timing bounds are generous semantic bounds ("promptly" = far below the waiters' own
30 s timeouts), never speed measurements.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from runner import Node, Participants
from support import (
    LONG,
    PROMPT,
    in_threads,
    join,
    start_thread,
    wait_until,
)

from pyprocsync import (
    Barrier,
    BrokenBarrierError,
    ParameterMismatchError,
    ProcSync,
)


def start_process_waiters(
    participants: Participants, observer: Barrier, count: int, **options: Any
) -> list[Node]:
    """Start ``count`` processes waiting on ``observer``'s barrier (same name and parties,
    a 30 s timeout); return once all of them wait (``n_waiting`` reads ``count``)."""
    options.setdefault("timeout", LONG)
    nodes = [
        participants.launch("barrier", observer.name, parties=observer.parties, **options)
        for _ in range(count)
    ]
    wait_until(lambda: observer.n_waiting == count, 20, f"{count} waiting processes")
    return nodes


def per_node_round(per_node: list[list[dict[str, Any]]], number: int) -> list[dict[str, Any]]:
    return [records[number] for records in per_node]


def check_broken(record: dict[str, Any], reason: str) -> None:
    assert record["ok"] is False, record
    # A round broken by a timeout raises the subclass that is also a TimeOutError.
    expected = "BrokenByTimeoutError" if reason == "timeout" else "BrokenBarrierError"
    assert record["error"] == expected, record
    assert record["attrs"]["reason"] == reason, record


# -- rounds -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_four_processes_hundred_rounds(
    participants: Participants, client: redis.Redis, run_id: str
) -> None:
    """Four processes pass one barrier 100 times (delay 5 ms; ``on_late="proceed"`` so that
    a descheduled process on a loaded machine is not an error here). Every round hands
    out the indices 0..3 exactly once; the action (which RPUSHes its end time and pid)
    ran exactly once per round, in one of the four processes, and ended before any
    participant of its round returned."""
    actions = f"{run_id}:actions"
    nodes = [
        participants.launch(
            "barrier", "loop", parties=4, rounds=100, delay=0.005, on_late="proceed",
            timeout=20, action="record", action_key=actions,
        )
        for _ in range(4)
    ]  # fmt: skip
    participants.wait(nodes, timeout=100)
    per_node = [node.results() for node in nodes]
    assert all(len(records) == 100 for records in per_node)
    recorded = [json.loads(entry) for entry in client.lrange(actions, 0, -1)]
    client.delete(actions)
    assert len(recorded) == 100
    assert {entry["pid"] for entry in recorded} <= {node.process.pid for node in nodes}
    for number, group in enumerate(zip(*per_node, strict=True)):
        assert sorted(r["index"] for r in group) == [0, 1, 2, 3], (number, group)
        assert min(r["returned_ns"] for r in group) >= recorded[number]["ns"], number
        if number:  # and after every participant of the round before returned
            previous = per_node_round(per_node, number - 1)
            assert recorded[number]["ns"] >= max(r["returned_ns"] for r in previous), number


@pytest.mark.timeout(30)
def test_threads_release_together_after_the_action(
    make_barrier: Callable[..., Barrier],
) -> None:
    """Three threads, ``delay=0.2``: the action runs once, in the last arrival (here the
    main thread); everyone returns at one instant, the action's end plus the delay (not
    before it, 1 ms tolerance), with distinct indices."""
    ran: list[tuple[threading.Thread, float]] = []

    def action() -> None:
        time.sleep(0.05)  # an action that takes a while
        ran.append((threading.current_thread(), time.time()))

    barriers = [make_barrier("together", 3, action, delay=0.2) for _ in range(3)]
    started = [start_thread(lambda b=b: (b.wait(LONG), time.time())) for b in barriers[:2]]
    wait_until(lambda: barriers[2].n_waiting == 2, 10, "two waiters")
    last = (barriers[2].wait(LONG), time.time())
    join([thread for thread, _ in started], PROMPT + 5)
    results = [outcome.result() for _, outcome in started] + [last]
    assert sorted(index for index, _ in results) == [0, 1, 2]
    ((actor, action_end),) = ran
    assert actor is threading.main_thread()
    returned = [instant for _, instant in results]
    assert min(returned) >= action_end + 0.2 - 0.001
    assert max(returned) < action_end + 0.2 + PROMPT
    assert max(returned) - min(returned) < 0.05


@pytest.mark.timeout(30)
def test_single_party_passes_alone(make_barrier: Callable[..., Barrier]) -> None:
    """``parties=1``: each wait is a round of its own, index 0, with the action each time."""
    count: list[int] = []
    barrier = make_barrier("solo", 1, lambda: count.append(1), delay=0)
    assert [barrier.wait(5) for _ in range(3)] == [0, 0, 0]
    assert len(count) == 3


@pytest.mark.timeout(30)
def test_barrier_shares_rounds_with_sync_of_the_same_name(
    make_barrier: Callable[..., Barrier], client: redis.Redis, run_id: str
) -> None:
    """As documented: a Barrier and ``ProcSync.sync`` calls of the same name and run take
    part in the same rounds."""
    barrier = make_barrier("mixed", 2)
    with ProcSync(client, run_id, 0.01, on_late="proceed") as sync:
        outcomes = in_threads(lambda: barrier.wait(10), lambda: sync.sync("mixed", 2, 10))
    index, result = (o.result() for o in outcomes)
    assert sorted([index, result.index]) == [0, 1]
    assert result.generation == 0


# -- the action ----------------------------------------------------------------------------------


class ActionError(Exception):
    """What the failing action raises in the test process."""


@pytest.mark.timeout(60)
def test_failing_action_breaks_the_round(
    participants: Participants, make_barrier: Callable[..., Barrier]
) -> None:
    """The last arrival's action raises: that participant gets the action's exception
    itself; the two processes waiting get BrokenBarrierError(reason="action") promptly;
    the barrier stays broken (later waits raise at once) until ``reset``, then works."""

    def fail() -> None:
        raise ActionError("boom")

    last = make_barrier("act", 3, fail)
    nodes = start_process_waiters(participants, last, 2, action="raise")
    began = time.time_ns()
    with pytest.raises(ActionError, match="boom"):
        last.wait(LONG)
    for record in participants.finish(nodes, timeout=30):
        check_broken(record, "action")
        assert (record["returned_ns"] - began) / 1e9 < PROMPT
    observer = make_barrier("act", 3)
    assert observer.broken is True
    assert observer.n_waiting == 0
    started = time.monotonic()
    with pytest.raises(BrokenBarrierError) as info:
        observer.wait(LONG)
    assert info.value.reason == "action"
    assert time.monotonic() - started < PROMPT
    observer.reset()
    assert observer.broken is False
    count: list[int] = []
    fixed = [make_barrier("act", 3, lambda: count.append(1)) for _ in range(3)]
    outcomes = in_threads(*(lambda b=b: b.wait(LONG) for b in fixed))
    assert sorted(o.result() for o in outcomes) == [0, 1, 2]
    assert count == [1]


@pytest.mark.timeout(30)
def test_arrival_while_the_action_runs_joins_the_next_round(
    make_barrier: Callable[..., Barrier],
) -> None:
    """``parties=2``, a slow action (0.5 s): a third participant arriving while the
    complete round's action runs is not counted in that round and breaks nothing; it
    waits for the next round, which a fourth arrival completes (running the action
    again). Each round hands out {0, 1}; the action ran exactly twice."""
    acting = threading.Event()
    ran: list[float] = []

    def slow() -> None:
        acting.set()
        time.sleep(0.5)  # an action long enough for an arrival while it runs
        ran.append(time.time())

    barriers = [make_barrier("busy", 2, slow) for _ in range(4)]
    first, first_out = start_thread(lambda: (barriers[0].wait(LONG), time.time()))
    wait_until(lambda: barriers[3].n_waiting == 1, 10, "the first waiter")
    second, second_out = start_thread(lambda: (barriers[1].wait(LONG), time.time()))
    assert acting.wait(10)
    third, third_out = start_thread(lambda: (barriers[2].wait(LONG), time.time()))
    join([first, second], PROMPT + 5)
    round_zero = [first_out.result(), second_out.result()]
    assert sorted(index for index, _ in round_zero) == [0, 1]
    time.sleep(0.3)  # a window in which the third must keep waiting
    assert third.is_alive(), third_out.error or third_out.value
    assert barriers[3].broken is False
    wait_until(lambda: barriers[3].n_waiting == 1, 10, "the third, in the next round")
    fourth = (barriers[3].wait(LONG), time.time())
    join([third], PROMPT + 5)
    round_one = [third_out.result(), fourth]
    assert sorted(index for index, _ in round_one) == [0, 1]
    assert len(ran) == 2
    assert min(instant for _, instant in round_one) >= ran[1]
    assert barriers[3].broken is False


# -- breaking ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_timeout_breaks_the_barrier_for_every_waiter(
    participants: Participants, make_barrier: Callable[..., Barrier]
) -> None:
    """Of four parties, two processes wait with 30 s and the test process with the
    barrier's default timeout (0.5 s): it raises BrokenBarrierError(reason="timeout") (a
    threading.BrokenBarrierError) after its timeout, the processes the same error
    promptly; the barrier is broken for later waits until reset."""
    impatient = make_barrier("t", 4, timeout=0.5)
    nodes = start_process_waiters(participants, impatient, 2)
    began = time.monotonic()
    with pytest.raises(threading.BrokenBarrierError) as info:
        impatient.wait()
    gave_up_ns = time.time_ns()
    assert 0.5 <= time.monotonic() - began < 0.5 + PROMPT
    assert isinstance(info.value, BrokenBarrierError)
    assert info.value.reason == "timeout"
    assert (info.value.arrived, info.value.expected) == (3, 4)
    for record in participants.finish(nodes, timeout=30):
        check_broken(record, "timeout")
        assert abs(record["returned_ns"] - gave_up_ns) / 1e9 < PROMPT
    assert impatient.broken is True
    with pytest.raises(BrokenBarrierError):
        make_barrier("t", 4).wait(LONG)
    impatient.reset()
    assert impatient.broken is False


@pytest.mark.timeout(30)
def test_wait_timeout_overrides_the_default(make_barrier: Callable[..., Barrier]) -> None:
    """``wait(timeout)`` overrides the barrier's default timeout (longer and shorter)."""
    barrier = make_barrier("override", 2, timeout=LONG)
    began = time.monotonic()
    with pytest.raises(BrokenBarrierError) as info:
        barrier.wait(0.3)
    assert info.value.reason == "timeout"
    assert 0.3 <= time.monotonic() - began < 0.3 + PROMPT
    barrier.reset()
    short = make_barrier("override", 2, timeout=0.01)
    partner = make_barrier("override", 2)
    thread, waited = start_thread(lambda: short.wait(LONG))
    time.sleep(0.3)  # far beyond the default timeout of 0.01 s
    assert thread.is_alive()
    partner.wait(LONG)
    join([thread], PROMPT + 5)
    assert waited.result() in (0, 1)


@pytest.mark.timeout(60)
def test_abort_from_a_third_process(
    participants: Participants, make_barrier: Callable[..., Barrier]
) -> None:
    """Two processes wait; the test process calls ``abort()``: both raise
    BrokenBarrierError(reason="abort") promptly; later waits (in another process and
    here) raise at once until ``reset()``; then a full round works."""
    aborter = make_barrier("ab", 3)
    nodes = start_process_waiters(participants, aborter, 2)
    aborted_ns = time.time_ns()
    aborter.abort()
    for record in participants.finish(nodes, timeout=30):
        check_broken(record, "abort")
        assert (record["returned_ns"] - aborted_ns) / 1e9 < PROMPT
    assert aborter.broken is True
    assert aborter.n_waiting == 0
    (later,) = participants.finish(
        [participants.launch("barrier", "ab", parties=3, timeout=LONG)], 30
    )
    check_broken(later, "abort")
    began = time.monotonic()
    with pytest.raises(BrokenBarrierError) as info:
        make_barrier("ab", 3).wait(LONG)
    assert info.value.reason == "abort"
    assert time.monotonic() - began < PROMPT
    aborter.abort()  # aborting a broken barrier changes nothing
    aborter.reset()
    assert aborter.broken is False
    fresh = [make_barrier("ab", 3) for _ in range(3)]
    outcomes = in_threads(*(lambda b=b: b.wait(LONG) for b in fresh))
    assert sorted(o.result() for o in outcomes) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_abort_with_nobody_waiting_breaks_later_waits(
    make_barrier: Callable[..., Barrier],
) -> None:
    """``abort()`` on an idle barrier breaks it: the next wait raises at once."""
    barrier = make_barrier("idle-abort", 2)
    barrier.abort()
    assert barrier.broken is True
    with pytest.raises(BrokenBarrierError) as info:
        barrier.wait(LONG)
    assert info.value.reason == "abort"


@pytest.mark.timeout(60)
def test_reset_from_a_third_process(
    participants: Participants, make_barrier: Callable[..., Barrier]
) -> None:
    """Two threads wait; another process calls ``reset()``: both raise
    BrokenBarrierError(reason="reset") promptly, the barrier is not broken afterwards,
    and a full round (the same instances) works."""
    barriers = [make_barrier("rs", 3) for _ in range(3)]
    started = [start_thread(lambda b=b: b.wait(LONG)) for b in barriers[:2]]
    wait_until(lambda: barriers[2].n_waiting == 2, 10, "two waiters")
    (record,) = participants.finish(
        [participants.launch("barrier-op", "rs", parties=3, op="reset")], 30
    )
    assert record["ok"] is True, record
    reset_done = time.monotonic()
    join([thread for thread, _ in started], PROMPT + 5)
    for _, outcome in started:
        assert isinstance(outcome.error, BrokenBarrierError), outcome.error or outcome.value
        assert outcome.error.reason == "reset"
        assert outcome.finished_at is not None
        assert outcome.finished_at - reset_done < PROMPT
    assert barriers[2].broken is False
    assert barriers[2].n_waiting == 0
    outcomes = in_threads(*(lambda b=b: b.wait(LONG) for b in barriers))
    assert sorted(o.result() for o in outcomes) == [0, 1, 2]


@pytest.mark.timeout(30)
def test_n_waiting_and_broken_read_the_shared_state(
    make_barrier: Callable[..., Barrier],
) -> None:
    """``n_waiting`` and ``broken``, read through an instance that never waits, follow
    the waiters of other instances: 0, 1, 2, back to 0 after the round; broken after
    ``abort`` (n_waiting then 0), not broken after ``reset``."""
    observer = make_barrier("obs", 3)
    assert (observer.n_waiting, observer.broken, observer.parties) == (0, False, 3)
    waiters = [make_barrier("obs", 3) for _ in range(3)]
    started = []
    for count in (1, 2):
        started.append(start_thread(lambda b=waiters[count - 1]: b.wait(LONG)))
        wait_until(lambda c=count: observer.n_waiting == c, 10, f"{count} waiting")
        assert observer.broken is False
    waiters[2].wait(LONG)
    join([thread for thread, _ in started], PROMPT + 5)
    assert observer.n_waiting == 0
    thread, waited = start_thread(lambda: waiters[0].wait(LONG))
    wait_until(lambda: observer.n_waiting == 1, 10, "a waiter")
    observer.abort()
    join([thread], PROMPT + 5)
    assert isinstance(waited.error, BrokenBarrierError)
    assert (observer.broken, observer.n_waiting) == (True, 0)
    observer.reset()
    assert (observer.broken, observer.n_waiting) == (False, 0)


@pytest.mark.timeout(30)
def test_parties_mismatch(make_barrier: Callable[..., Barrier]) -> None:
    """An instance with a different ``parties`` joining a round raises
    ParameterMismatchError (expected 3, given 2); the waiter raises
    BrokenBarrierError(reason="mismatch") promptly; nobody is released."""
    waiter = make_barrier("mm", 3)
    thread, waited = start_thread(lambda: waiter.wait(LONG))
    wait_until(lambda: waiter.n_waiting == 1, 10, "the waiter")
    with pytest.raises(ParameterMismatchError) as info:
        make_barrier("mm", 2).wait(LONG)
    assert (info.value.expected, info.value.given) == (3, 2)
    join([thread], PROMPT + 1)
    assert isinstance(waited.error, BrokenBarrierError), waited.error or waited.value
    assert waited.error.reason == "mismatch"
    assert waiter.broken is True

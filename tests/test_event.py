"""``pyprocsync.Event`` (blocking) on a real server: threading.Event semantics across
threads and processes, the common release instant, faults, validation, lifecycle.

"Waiting" participants are counted as waiting only once their first read of the flag
is done (``participant.announce_first_check``): a set that happens before a wait
has looked at the flag is, as in threading, a set that happened before the wait.
Timing bounds are generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from primitive_support import flag_keys, start_waiting_thread, wait_counter
from runner import Node, Participants
from support import LONG, PROMPT, event_keys, join, start_thread, wait_until

from pyprocsync import (
    Barrier,
    Event,
    ProcSync,
)


def start_waiters(
    participants: Participants, client: redis.Redis, name: str, count: int, **options: Any
) -> list[Node]:
    """Start ``count`` processes waiting on ``name``; return once every one of them is
    waiting (has read the flag)."""
    ready = f"{participants.run_id}:ready:{name}"
    nodes = [
        participants.launch("event-wait", name, ready_key=ready, timeout=LONG, **options)
        for _ in range(count)
    ]
    wait_counter(client, ready, count)
    return nodes


# -- waking -----------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_threads_wait_until_set(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Three threads wait (one Event instance each); none returns before ``set()``; each
    returns True once it happens."""
    started = [start_waiting_thread(make_event("go"), client, run_id) for _ in range(3)]
    time.sleep(0.2)  # a window in which no waiter may return
    assert all(thread.is_alive() for thread, _ in started)
    set_at = time.time()
    make_event("go").set()
    join([thread for thread, _ in started], PROMPT + 5)
    for _, outcome in started:
        value, returned = outcome.result()
        assert value is True
        assert set_at <= returned < set_at + PROMPT


@pytest.mark.timeout(60)
def test_processes_wait_until_set(
    participants: Participants, make_event: Callable[..., Event], client: redis.Redis
) -> None:
    """Three processes wait; none returns before the test process sets the flag; each
    returns True promptly once it does."""
    nodes = start_waiters(participants, client, "go", 3)
    time.sleep(0.3)  # a window in which no waiter may return
    assert all(node.process.poll() is None for node in nodes)
    set_ns = time.time_ns()
    make_event("go").set()
    for record in participants.finish(nodes, timeout=30):
        assert record["ok"] is True, record
        assert record["value"] is True
        assert 0 <= (record["returned_ns"] - set_ns) / 1e9 < PROMPT


@pytest.mark.timeout(60)
def test_set_then_clear_at_once_wakes_every_waiting_process(
    participants: Participants, make_event: Callable[..., Event], client: redis.Redis
) -> None:
    """The sets are numbered: ``set()`` immediately followed by ``clear()`` still wakes
    every process that was already waiting (all return True), and the flag reads as
    cleared afterwards."""
    nodes = start_waiters(participants, client, "blink", 3)
    event = make_event("blink")
    event.set()
    event.clear()
    assert event.is_set() is False
    for record in participants.finish(nodes, timeout=30):
        assert record["ok"] is True, record
        assert record["value"] is True
    assert event.is_set() is False


@pytest.mark.timeout(30)
def test_set_then_clear_wakes_threads_ten_times(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Set-then-clear, ten times over with two fresh waiting threads each: every waiter
    returns True every time (no set is missed however short it lasts)."""
    setter = make_event("pulse")
    for attempt in range(10):
        started = [start_waiting_thread(make_event("pulse"), client, run_id) for _ in range(2)]
        setter.set()
        setter.clear()
        join([thread for thread, _ in started], PROMPT + 5)
        assert [o.result()[0] for _, o in started] == [True, True], f"attempt {attempt}"


@pytest.mark.timeout(30)
def test_set_then_clear_before_the_wait_began_does_not_count(
    make_event: Callable[..., Event],
) -> None:
    """A set that was cleared before ``wait`` began does not wake it: wait returns False
    at its timeout."""
    event = make_event("old")
    event.set()
    event.clear()
    began = time.monotonic()
    assert make_event("old").wait(0.3) is False
    assert 0.3 <= time.monotonic() - began < 0.3 + PROMPT


@pytest.mark.timeout(30)
def test_wait_returns_false_only_on_timeout(make_event: Callable[..., Event]) -> None:
    """On a flag nobody sets, ``wait(timeout)`` returns False, not before the timeout and
    promptly after it (a float timeout, an int timeout)."""
    event = make_event("never")
    for timeout in (0.25, 1):
        began = time.monotonic()
        assert event.wait(timeout) is False
        took = time.monotonic() - began
        assert timeout <= took < timeout + PROMPT


@pytest.mark.timeout(30)
def test_wait_on_a_set_flag_returns_at_once(make_event: Callable[..., Event]) -> None:
    """``wait`` on a flag that is set returns True at once, with or without a timeout,
    from the setting instance and from others."""
    setter = make_event("up")
    setter.set()
    for event in (setter, make_event("up")):
        for timeout in (None, 5, math.inf):
            began = time.monotonic()
            assert event.wait(timeout) is True
            assert time.monotonic() - began < PROMPT


@pytest.mark.timeout(30)
def test_set_twice_and_clear_twice(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Setting a set flag and clearing a cleared one change nothing observable; a waiter
    afterwards blocks until the next set."""
    event = make_event("idem")
    event.clear()
    assert event.is_set() is False
    event.set()
    event.set()
    assert event.is_set() is True
    event.clear()
    event.clear()
    assert event.is_set() is False
    thread, waited = start_waiting_thread(make_event("idem"), client, run_id)
    time.sleep(0.2)  # a window in which the waiter may not return
    assert thread.is_alive()
    event.set()
    join([thread], PROMPT + 5)
    assert waited.result()[0] is True


@pytest.mark.timeout(60)
def test_is_set_reads_the_shared_state(
    participants: Participants, make_event: Callable[..., Event]
) -> None:
    """``is_set`` reads the flag in Redis: a set by another process is seen here, a clear
    here is seen there, and a fresh instance agrees."""
    event = make_event("shared")
    assert event.is_set() is False
    (record,) = participants.finish(
        [participants.launch("event-op", "shared", op="set")], timeout=30
    )
    assert record["ok"] is True, record
    assert event.is_set() is True
    assert make_event("shared").is_set() is True
    (record,) = participants.finish(
        [participants.launch("event-op", "shared", op="is_set")], timeout=30
    )
    assert record["value"] is True
    event.clear()
    (record,) = participants.finish(
        [participants.launch("event-op", "shared", op="is_set")], timeout=30
    )
    assert record["value"] is False


# -- the common instant (delay > 0) -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_delay_releases_the_waiters_of_one_set_together(
    participants: Participants, make_event: Callable[..., Event], client: redis.Redis
) -> None:
    """``delay=0.3``: the processes woken by one set return at one instant, the setter's
    clock plus the delay: none before it (1 ms tolerance), all within a spread far below
    the delay."""
    nodes = start_waiters(participants, client, "tick", 3)
    before_ns = time.time_ns()
    make_event("tick", delay=0.3).set()
    after_ns = time.time_ns()
    returned = []
    for record in participants.finish(nodes, timeout=30):
        assert record["ok"] is True, record
        assert record["value"] is True
        returned.append(record["returned_ns"])
    assert min(returned) >= before_ns + 0.3e9 - 1e6
    assert max(returned) <= after_ns + 0.3e9 + 0.5e9
    assert (max(returned) - min(returned)) / 1e9 < 0.05


@pytest.mark.timeout(30)
def test_delay_applies_to_threads_and_to_a_wait_while_the_instant_is_ahead(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """Threads already waiting return at set time + delay; a wait that begins while the
    flag is set and the instant is still ahead also returns at that instant, not before."""
    started = [start_waiting_thread(make_event("soon"), client, run_id) for _ in range(2)]
    before = time.time()
    make_event("soon", delay=0.5).set()
    after = time.time()
    assert make_event("soon").wait(LONG) is True
    latecomer_returned = time.time()
    join([thread for thread, _ in started], PROMPT + 5)
    assert all(outcome.result()[0] is True for _, outcome in started)
    returned = [outcome.result()[1] for _, outcome in started]
    for instant in [*returned, latecomer_returned]:
        assert before + 0.5 - 0.001 <= instant < after + 0.5 + PROMPT
    assert max(returned) - min(returned) < 0.05


@pytest.mark.timeout(30)
def test_wait_after_the_instant_passed_returns_at_once(make_event: Callable[..., Event]) -> None:
    """A wait that begins while the flag is set and its release instant is past returns
    True at once (no TooLateError: it was not waiting when the set happened)."""
    make_event("past", delay=0.1).set()
    time.sleep(0.3)  # the release instant (0.1 s after the set) passes
    late = make_event("past")
    began = time.monotonic()
    assert late.wait(LONG) is True
    assert time.monotonic() - began < 0.1


# -- isolation --------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_names_do_not_interfere(make_event: Callable[..., Event]) -> None:
    """Setting one flag wakes no waiter of another name, and is_set of that name stays
    False."""
    waiter = make_event("left")
    thread, waited = start_thread(lambda: waiter.wait(0.5))
    make_event("right").set()
    join([thread], PROMPT + 5)
    assert waited.result() is False
    assert make_event("left").is_set() is False
    assert make_event("right").is_set() is True


@pytest.mark.timeout(30)
def test_event_and_sync_point_of_the_same_name_are_apart(
    make_event: Callable[..., Event], client: redis.Redis, run_id: str
) -> None:
    """A flag and a sync point / Barrier of the same name share nothing: their rounds
    neither set the flag nor wake its waiter; setting the flag neither wakes nor breaks
    a Barrier waiter of that name, which then completes its round normally."""
    event = make_event("x")
    flag_waiter, flag_waited = start_waiting_thread(make_event("x"), client, run_id, 1.0)
    with ProcSync(client, run_id, 0) as sync:
        assert sync.sync("x", 1, 5).generation == 0
    with Barrier(client, "x", 1, run_id=run_id, delay=0) as solo:
        assert solo.wait(5) == 0
    join([flag_waiter], PROMPT + 5)
    assert flag_waited.result()[0] is False
    assert event.is_set() is False
    with (
        Barrier(client, "x", 2, run_id=run_id, delay=0) as barrier,
        Barrier(client, "x", 2, run_id=run_id, delay=0) as partner,
    ):
        thread, waited = start_thread(lambda: barrier.wait(LONG))
        wait_until(lambda: partner.n_waiting == 1, 10, "the barrier waiter")
        event.set()
        time.sleep(0.2)  # a window in which the barrier waiter may not return
        assert thread.is_alive()
        assert partner.n_waiting == 1
        assert partner.broken is False
        index = partner.wait(10)
        join([thread], PROMPT + 5)
        assert sorted([index, waited.result()]) == [0, 1]
    assert event.is_set() is True
    assert flag_keys(run_id, "x").state != event_keys(run_id, "x").state
    assert client.hget(event_keys(run_id, "x").state, "g") == b"3"

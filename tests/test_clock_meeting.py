"""Several threads (or tasks of one loop) of a process waiting for one instant:
:func:`pyprocsync.clock.sleep_until_ns` with ``shared``.

One of them watches the clock, the others are parked and let go by it at the instant;
if the watcher leaves early, the parked ones wait on their own. The tests make the
watcher's first sleep wait until every other participant is parked, so who watches and
who is parked is decided, not raced.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from support import arun

from pyprocsync import clock

PARTICIPANTS = 4
SPIN_NS = 500_000


class Watches:
    """Counts the clock watches (:func:`clock._watch_until_ns` and its asyncio twin),
    and holds the first watcher's first sleep until ``parked`` participants are parked
    in every meeting."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, parked: int) -> None:
        self.count = 0
        self.parked = parked
        real_sleep = clock._sleep
        real_watch = clock._watch_until_ns
        real_async_watch = clock._async_watch_until_ns

        def sleep(seconds: float) -> None:
            self.await_parked()
            real_sleep(seconds)

        def watch(*args: object) -> int:
            self.count += 1
            return real_watch(*args)  # type: ignore[arg-type]

        async def async_watch(*args: object) -> int:
            self.count += 1
            await self.async_await_parked()
            return await real_async_watch(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(clock, "_sleep", sleep)
        monkeypatch.setattr(clock, "_watch_until_ns", watch)
        monkeypatch.setattr(clock, "_async_watch_until_ns", async_watch)

    def _is_parked(self) -> bool:
        return all(len(m.parked) >= self.parked for m in list(clock._meetings.values()))

    def await_parked(self) -> None:
        deadline = time.monotonic() + 30
        while not self._is_parked():
            assert time.monotonic() < deadline, "the others never parked"
            time.sleep(0.001)

    async def async_await_parked(self) -> None:
        deadline = time.monotonic() + 30
        while not self._is_parked():
            assert time.monotonic() < deadline, "the others never parked"
            await asyncio.sleep(0.001)


def _in_threads(calls: list[Callable[[], int]]) -> list[int | BaseException]:
    """Run each call in a thread of its own; what each returned or raised."""
    results: list[int | BaseException] = [0] * len(calls)

    def run(index: int) -> None:
        try:
            results[index] = calls[index]()
        except BaseException as exc:  # reported to the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_threads_meeting_at_one_instant_watch_the_clock_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One watch for all, every thread returns at or after the instant with the clock
    then, every thread's ``between`` is called while they wait, and nothing of the
    meeting is left behind."""
    key = ("instant", 1)
    watches = Watches(monkeypatch, PARTICIPANTS - 1)
    looks = [0] * PARTICIPANTS
    target = time.time_ns() + 150_000_000

    def participant(index: int) -> Callable[[], int]:
        def between() -> None:
            looks[index] += 1

        return lambda: clock.sleep_until_ns(target, SPIN_NS, between=between, shared=key)

    results = _in_threads([participant(i) for i in range(PARTICIPANTS)])
    after = time.time_ns()
    assert watches.count == 1
    assert all(isinstance(r, int) and target <= r <= after for r in results)
    assert all(count >= 1 for count in looks)
    assert clock._meetings == {}
    assert clock._released == set()
    assert clock._all_run.is_set()


def test_parked_threads_wait_alone_when_the_watcher_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The watching thread's ``between`` raises: it leaves with the exception, the
    parked threads each watch the clock themselves and still return at the instant."""
    key = ("instant", 2)
    watches = Watches(monkeypatch, 3)
    target = time.time_ns() + 150_000_000

    def failing() -> None:
        raise ValueError("the watcher's look failed")

    watcher: list[int | BaseException] = []
    starter = threading.Thread(
        target=lambda: watcher.extend(
            _in_threads(
                [lambda: clock.sleep_until_ns(target, SPIN_NS, between=failing, shared=key)]
            )
        )
    )
    starter.start()  # opens the meeting, so it watches
    assert _await(lambda: bool(clock._meetings))
    others = _in_threads([lambda: clock.sleep_until_ns(target, SPIN_NS, shared=key)] * 3)
    starter.join(60)
    after = time.time_ns()
    assert isinstance(watcher[0], ValueError)
    assert all(isinstance(r, int) and target <= r <= after for r in others)
    assert watches.count == 4  # the watcher, then each parked one alone
    assert clock._meetings == {}


def _await(condition: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 30
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_distinct_instants_do_not_meet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits without ``shared``, for different instants, or for one instant converted
    to different targets (instances with different clock estimates) each watch the
    clock."""
    watches = Watches(monkeypatch, 0)
    target = time.time_ns() + 30_000_000
    results = _in_threads(
        [
            lambda: clock.sleep_until_ns(target, SPIN_NS),
            lambda: clock.sleep_until_ns(target, SPIN_NS),
            lambda: clock.sleep_until_ns(target, SPIN_NS, shared=("instant", 3)),
            lambda: clock.sleep_until_ns(target + 1000, SPIN_NS, shared=("instant", 4)),
            lambda: clock.sleep_until_ns(target + 2000, SPIN_NS, shared=("instant", 4)),
        ]
    )
    assert watches.count == 5
    assert all(isinstance(r, int) and r >= target for r in results)


def test_let_waiting_threads_run_waits_for_released_threads_a_bounded_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While threads let go at an instant have not run, a thread entering its next
    call waits for them, at most MAX_LETTING_S; it returns as soon as they have run."""
    monkeypatch.setattr(clock, "MAX_LETTING_S", 0.2)
    monkeypatch.setattr(clock, "_released", {-1})  # a thread that never runs
    monkeypatch.setattr(clock, "_all_run", threading.Event())
    started = time.monotonic()
    clock.let_waiting_threads_run()
    assert 0.2 <= time.monotonic() - started < 10
    clock._all_run.set()
    started = time.monotonic()
    clock.let_waiting_threads_run()
    assert time.monotonic() - started < 0.2


def test_tasks_of_one_loop_meeting_at_one_instant_watch_the_clock_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = ("instant", 5)
    target = time.time_ns() + 100_000_000
    looks = [0] * PARTICIPANTS

    async def main() -> list[int]:
        watches = Watches(monkeypatch, PARTICIPANTS - 1)

        def between(index: int) -> Callable[[], None]:
            return lambda: looks.__setitem__(index, looks[index] + 1)

        results = await asyncio.gather(
            *(
                clock.async_sleep_until_ns(target, SPIN_NS, between=between(i), shared=key)
                for i in range(PARTICIPANTS)
            )
        )
        assert watches.count == 1
        return results

    results = arun(main)
    after = time.time_ns()
    assert all(target <= r <= after for r in results)
    assert all(count >= 1 for count in looks)
    assert clock._meetings == {}


def test_parked_tasks_wait_alone_when_the_watcher_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = ("instant", 6)
    target = time.time_ns() + 100_000_000

    async def main() -> tuple[list[int], int]:
        watches = Watches(monkeypatch, PARTICIPANTS - 1)
        watcher = asyncio.create_task(clock.async_sleep_until_ns(target, SPIN_NS, shared=key))
        await asyncio.sleep(0)  # the watcher opens the meeting
        others = [
            asyncio.create_task(clock.async_sleep_until_ns(target, SPIN_NS, shared=key))
            for _ in range(PARTICIPANTS - 1)
        ]
        await watches.async_await_parked()
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher
        return list(await asyncio.gather(*others)), watches.count

    results, count = arun(main)
    after = time.time_ns()
    assert all(target <= r <= after for r in results)
    assert count == PARTICIPANTS
    assert clock._meetings == {}

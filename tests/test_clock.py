"""Waiting for a wall-clock instant (defect 11 of PRIOR_ART.md): :mod:`pyprocsync.clock`.

0.1.0 read the wall clock once and slept the difference, so a clock step during the wait
moved the wake-up, and the bare sleep woke late. The clock module sleeps in short steps,
each aimed anew at the wall clock, and busy-waits the last stretch.
"""

from __future__ import annotations

import threading
import time

import pytest
from support import arun

from pyprocsync import clock


def test_sleep_until_returns_at_or_after_the_target() -> None:
    """The real clock: the call returns no earlier than the target and reports the wall
    clock at return (generous upper bound: this is not a precision test)."""
    for offset_ms in (0, 1, 20, 60):
        target = time.time_ns() + offset_ms * 1_000_000
        returned = clock.sleep_until_ns(target, 500_000)
        after = time.time_ns()
        assert target <= returned <= after
        assert after - target < 200_000_000


def test_past_target_returns_at_once() -> None:
    target = time.time_ns() - 1_000_000_000
    started = time.monotonic()
    assert clock.sleep_until_ns(target, 0) >= target
    assert time.monotonic() - started < 0.5


def test_clock_functions_read_the_real_clocks() -> None:
    before = time.time_ns()
    assert before <= clock.time_ns() <= time.time_ns()
    mono = time.monotonic()
    assert mono <= clock.monotonic() <= time.monotonic()


class SteppingClock:
    """A fake wall clock: ``time.sleep`` advances it; scheduled steps jump it.

    ``steps`` maps "after this many sleeps" to a jump in nanoseconds (negative: backwards).
    Every read advances it by 1 µs, so a busy-wait terminates.
    """

    def __init__(self, start_ns: int, steps: dict[int, int] | None = None) -> None:
        self.now_ns = start_ns
        self.steps = steps or {}
        self.sleeps: list[float] = []
        self.reads = 0

    def time_ns(self) -> int:
        self.reads += 1
        self.now_ns += 1_000
        return self.now_ns

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "never asked to sleep for 0 or less"
        self.sleeps.append(seconds)
        self.now_ns += round(seconds * 1e9)
        self.now_ns += self.steps.get(len(self.sleeps), 0)


@pytest.fixture
def stepping(monkeypatch: pytest.MonkeyPatch) -> SteppingClock:
    fake = SteppingClock(10**18)
    monkeypatch.setattr(clock, "time_ns", fake.time_ns)
    monkeypatch.setattr(time, "sleep", fake.sleep)
    return fake


def test_coarse_sleeps_are_bounded(stepping: SteppingClock) -> None:
    """A long wait is cut into sleeps of at most MAX_SLEEP_NS, so a clock step is
    noticed within one of them."""
    target = stepping.now_ns + 1_000_000_000
    returned = clock.sleep_until_ns(target, 500_000)
    assert returned >= target
    assert max(stepping.sleeps) <= clock.MAX_SLEEP_NS / 1e9
    assert len(stepping.sleeps) >= 1_000_000_000 // clock.MAX_SLEEP_NS


def test_backward_step_during_the_wait_re_aims(stepping: SteppingClock) -> None:
    """The wall clock steps back 1 s during the wait (NTP): the wait goes on until the
    clock reads the target; it does not return 1 s early by that clock."""
    stepping.steps = {3: -1_000_000_000}
    target = stepping.now_ns + 200_000_000
    returned = clock.sleep_until_ns(target, 500_000)
    assert returned >= target
    assert returned - target < 5_000_000
    assert sum(stepping.sleeps) == pytest.approx(1.2, abs=0.01)


def test_forward_step_during_the_wait_re_aims(stepping: SteppingClock) -> None:
    """The wall clock jumps 10 s forward past the target: the wait ends at the next look
    at the clock instead of sleeping out the time computed before the jump."""
    stepping.steps = {2: 10_000_000_000}
    target = stepping.now_ns + 1_000_000_000
    returned = clock.sleep_until_ns(target, 500_000)
    assert returned >= target
    assert len(stepping.sleeps) == 2
    assert sum(stepping.sleeps) <= 2 * clock.MAX_SLEEP_NS / 1e9


def test_last_stretch_is_a_busy_wait(stepping: SteppingClock) -> None:
    """The last ``spin_ns`` are not slept: the sleeps stop ``spin_ns`` before the target
    and the clock is polled from there, so the return is within one read of the target."""
    target = stepping.now_ns + 10_000_000
    returned = clock.sleep_until_ns(target, 2_000_000)
    assert sum(stepping.sleeps) == pytest.approx(0.008, abs=1e-4)
    assert stepping.reads > 1_000  # ~2 ms polled in 1 µs reads
    assert target <= returned <= target + 1_000


def test_zero_spin_sleeps_to_the_target(stepping: SteppingClock) -> None:
    target = stepping.now_ns + 3_000_000
    returned = clock.sleep_until_ns(target, 0)
    assert returned >= target
    assert sum(stepping.sleeps) == pytest.approx(0.003, abs=1e-5)


async def _async_wait(target: int, spin: int) -> int:
    return await clock.async_sleep_until_ns(target, spin)


def test_async_sleep_until_returns_at_or_after_the_target() -> None:
    """The asyncio variant keeps the same guarantee."""

    target = time.time_ns() + 20_000_000
    returned = arun(lambda: _async_wait(target, 500_000))
    assert target <= returned <= time.time_ns()


def test_spin_yields_until_the_last_stretch_and_never_at_the_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The busy wait calls ``sched_yield`` after a look at the clock only while more than
    :data:`~pyprocsync.clock.PURE_SPIN_NS` remain; the last stretch and the instant
    itself give nothing away, and the reading that reached the target is returned."""
    readings: list[int] = []
    yields_at: list[int] = []
    now = [0]

    def time_ns() -> int:
        now[0] += 5_000  # every look costs 5 µs
        readings.append(now[0])
        return now[0]

    monkeypatch.setattr(clock, "time_ns", time_ns)
    monkeypatch.setattr(clock, "_yield", lambda: yields_at.append(now[0]))
    target = 200_000
    returned = clock._spin_until_ns(target)
    assert returned == readings[-1] >= target
    assert readings[-2] < target
    assert yields_at
    assert all(target - at > clock.PURE_SPIN_NS for at in yields_at)
    assert sum(1 for r in readings if target - r <= clock.PURE_SPIN_NS) >= 2


def test_a_clock_step_back_in_the_last_stretch_yields_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wall clock stepped back by a second while the wait spins its last stretch puts
    the loop back to yielding: no second of spinning without a yield."""
    values = iter([990_000, 995_000, -1_000_000, *range(-990_000, 1_000_001, 10_000)])
    yields: list[int] = []
    monkeypatch.setattr(clock, "time_ns", lambda: next(values))
    monkeypatch.setattr(clock, "_yield", lambda: yields.append(1))
    assert clock._spin_until_ns(1_000_000) >= 1_000_000
    assert len(yields) >= 190  # once per look while more than 30 µs remained


def test_threads_released_together_let_each_other_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """``let_waiting_threads_run`` releases the interpreter lock (a ``sched_yield``)
    only while another thread of the process is inside ``sleep_until_ns``."""
    yields: list[int] = []
    monkeypatch.setattr(clock, "_yield", lambda: yields.append(1))
    clock.let_waiting_threads_run()
    assert yields == []
    inside = threading.Event()
    leave = threading.Event()

    def sleeping_sleep(seconds: float) -> None:
        inside.set()
        leave.wait(10)

    monkeypatch.setattr(clock, "_sleep", sleeping_sleep)
    waiter = threading.Thread(
        target=clock.sleep_until_ns, args=(time.time_ns() + 2 * 10**8, 0), daemon=True
    )
    waiter.start()
    try:
        assert inside.wait(10)
        clock.let_waiting_threads_run()
        assert yields == [1]
    finally:
        leave.set()
        monkeypatch.setattr(clock, "_sleep", lambda seconds: None)
        waiter.join(10)
    assert not waiter.is_alive()
    clock.let_waiting_threads_run()
    assert yields == [1]


def test_warm_runs_once_in_the_last_stretch_before_the_instant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``warm`` (the code due right after the instant, run once beforehand) is called
    exactly once, when no more than :data:`~pyprocsync.clock.PURE_SPIN_NS` remain and
    before the instant is seen."""
    now = [0]

    def time_ns() -> int:
        now[0] += 3_000
        return now[0]

    calls: list[int] = []
    monkeypatch.setattr(clock, "time_ns", time_ns)
    monkeypatch.setattr(clock, "_yield", lambda: None)
    target = 300_000
    returned = clock._spin_until_ns(target, warm=lambda: calls.append(now[0]))
    assert len(calls) == 1
    assert target - clock.PURE_SPIN_NS <= calls[0] < target <= returned


def test_async_coarse_stage_ends_with_a_short_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event loop's long sleeps can fire 2 ms late (the selector and epoll each round
    up to whole milliseconds), so the coarse stage never ends with a sleep longer than
    LOOP_LAST_SLEEP_NS: a long wait is cut, its last sleep short."""
    now = [10**18]
    slept: list[int] = []

    def time_ns() -> int:
        now[0] += 1_000
        return now[0]

    async def sleep(seconds: float) -> None:
        slept.append(round(seconds * 1e9))
        now[0] += round(seconds * 1e9)

    monkeypatch.setattr(clock, "time_ns", time_ns)
    monkeypatch.setattr(clock.asyncio, "sleep", sleep)
    monkeypatch.setattr(clock, "_yield", lambda: None)
    spin = 500_000
    for lead_ms in (3, 6, 17.5, 48, 400):
        slept.clear()
        target = now[0] + round(lead_ms * 1e6)
        arun(lambda t=target: clock.async_sleep_until_ns(t, spin))
        assert slept, lead_ms
        assert slept[-1] <= clock.LOOP_LAST_SLEEP_NS, (lead_ms, slept)
        assert all(step <= clock.MAX_SLEEP_NS for step in slept)
        assert now[0] >= target  # then the spin reached the instant

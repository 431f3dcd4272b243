"""What a step of the wall clock during the wait does in each clock mode (issue 5).

The flows are driven to their end through a fake server and
:func:`pyprocsync.clock.sleep_until_ns` on a fake world whose clocks only move when
something reads or sleeps (``clock_support``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from clock_support import (
    CLOCK_LOGGER,
    EVENT,
    MONO0_NS,
    MS,
    T0_NS,
    FakeRedis,
    FakeWorld,
    clock_records,
    make_settings,
)

from pyprocsync import (
    clock,
)
from pyprocsync.core import waiter
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import SleepUntil
from pyprocsync.core.rounds import sync_flow
from pyprocsync.core.servertime import ClockState

# == 4. wall-clock steps during the wait (fake world, flows driven to their end) ==================


@pytest.mark.parametrize("step_s", [0.0, 0.1, -0.1, 10.0, -10.0])
def test_server_mode_wall_steps_do_not_move_the_release(world: FakeWorld, step_s: float) -> None:
    """Server-clock mode, lead 300 ms, server 3 s ahead of this host: the clock samples
    are taken before the participant subscribes and arrives (ARRIVE carries -1: "use the
    server's clock"), the wait is on the monotonic clock, and a step of the wall clock
    by ±0.1 s or ±10 s during it changes nothing: the participant returns 300 ms (on the
    monotonic clock) after the decision, ``late_by`` ~0; ``clock_offset`` is the
    estimate's +3 s, ``clock_uncertainty`` its bound as of the instant."""
    world.server_ahead(3_000_000_000)
    world.steps = {2: round(step_s * 1e9)}
    fake = FakeRedis(world)
    result = fake.run(
        sync_flow(make_settings(clock="server"), ClockState(), EVENT, 1, None, memory=EventMemory())
    )
    assert fake.kinds() == ["ServerTimex5", "Listen", "Receive", "Call", "SleepUntil"]
    assert fake.arrive_args[0][4] == -1
    (sleep,) = [op for op in fake.ops if isinstance(op, SleepUntil)]
    assert sleep.on_monotonic
    assert abs(fake.returned_mono - (fake.decided_mono + 300 * MS)) < 50_000
    assert 0 <= result.late_by < 50e-6
    assert result.delay == pytest.approx(0.3)
    assert result.clock_offset == pytest.approx(3.0, abs=1e-5)
    # The burst's intervals (±2 µs), plus the drift the clocks may have had until the
    # instant, 300 ms later: nothing bounds it yet but MAX_DRIFT_PPB (500 ppm).
    assert result.clock_uncertainty == pytest.approx(2e-6 + 500e-6 * 0.3, abs=2e-6)
    assert max(world.sleeps) <= clock.MAX_SLEEP_NS / 1e9


@pytest.mark.parametrize(
    ("step_s", "shift_s"),
    [(0.0, 0.0), (0.1, -0.1), (-0.1, 0.1), (-10.0, 10.0)],
)
def test_system_mode_wall_steps_move_the_release(
    world: FakeWorld, step_s: float, shift_s: float
) -> None:
    """System-clock mode, lead 300 ms: the instant is on the wall clock, so the wait
    re-aims at it: a step forward by 0.1 s makes the participant return 0.1 s early (on
    the monotonic clock), a step back 0.1 s (or 10 s) that much late. It returns when its
    wall clock shows the instant, never before, so ``late_by`` stays ~0, and even the
    10 s step back is waited out in sleeps of at most MAX_SLEEP_NS (no hang, no long
    sleep computed before the step)."""
    world.steps = {2: round(step_s * 1e9)}
    fake = FakeRedis(world)
    settings = make_settings()
    result = fake.run(
        sync_flow(
            settings, ClockState(check_system_clock=False), EVENT, 1, None, memory=EventMemory()
        )
    )
    assert fake.kinds() == ["Listen", "Receive", "Call", "SleepUntil"]
    decided_wall_us = (T0_NS + fake.decided_mono - MONO0_NS) / 1000
    assert fake.arrive_args[0][4] == pytest.approx(decided_wall_us, abs=10)
    (sleep,) = [op for op in fake.ops if isinstance(op, SleepUntil)]
    assert not sleep.on_monotonic
    elapsed_s = (fake.returned_mono - fake.decided_mono) / 1e9
    assert elapsed_s == pytest.approx(0.3 + shift_s, abs=50e-6)
    assert 0 <= result.late_by < 50e-6
    assert result.clock_offset is None
    assert max(world.sleeps) <= clock.MAX_SLEEP_NS / 1e9
    assert len(world.sleeps) <= (0.3 + max(shift_s, 0)) / (clock.MAX_SLEEP_NS / 1e9) + 3


def test_system_mode_step_past_the_instant_ends_the_wait(world: FakeWorld) -> None:
    """System-clock mode, lead 1 s, the wall clock jumps 10 s forward after the second
    sleep (0.1 s into the wait): the wait ends at the next look at the clock instead of
    sleeping out the 0.9 s that were left, and ``late_by``, measured on the wall clock at
    return, shows the step (10.1 s - 1 s = 9.1 s)."""
    world.steps = {2: 10_000_000_000}
    fake = FakeRedis(world)
    result = fake.run(
        sync_flow(
            make_settings(delay=1.0),
            ClockState(check_system_clock=False),
            EVENT,
            1,
            None,
            memory=EventMemory(),
        )
    )
    assert len(world.sleeps) == 2
    assert fake.returned_mono - fake.decided_mono <= 2 * clock.MAX_SLEEP_NS + 100_000
    assert result.late_by == pytest.approx(9.1, abs=0.001)


@pytest.mark.parametrize("step_s", [10.0, -10.0])
def test_sleep_until_on_monotonic_ignores_wall_steps(world: FakeWorld, step_s: float) -> None:
    """``clock.sleep_until_ns(..., on_monotonic=True)`` (what server-clock mode waits with)
    returns when the monotonic clock reads the target, whatever the wall clock does
    meanwhile, and reports the monotonic clock at return."""
    world.steps = {1: round(step_s * 1e9), 3: round(-step_s * 1e9 / 2)}
    target = world.mono + 400 * MS
    returned = clock.sleep_until_ns(target, 500_000, on_monotonic=True)
    assert target <= returned <= target + 5_000
    assert sum(world.sleeps) == pytest.approx(0.3995, abs=1e-4)
    assert max(world.sleeps) <= clock.MAX_SLEEP_NS / 1e9


def test_server_mode_estimate_is_carried_past_the_announcement(world: FakeWorld) -> None:
    """Server-clock mode, ``clock_refresh`` 1 s: a participant that waited 1.5 s for the
    others converts the instant with its estimate carried forward, with no round trip
    after the announcement (sampling never competes with the instant); it learned of the
    release 7 ms after the decision, which it keeps (plus the estimate's uncertainty) as
    this event's latency and reports at its next arrival (ARRIVE's 9th argument), for
    ``delay="auto"``. (Until 1.0's sampling schedule, the estimate was renewed here.)"""
    world.server_ahead(-1_500_000_000)
    fake = FakeRedis(world, others=True, wait_s=1.5, travel_s=0.007)
    state, memory = ClockState(), EventMemory()
    settings = make_settings(clock="server")
    result = fake.run(sync_flow(settings, state, EVENT, 2, None, memory=memory))
    assert fake.kinds() == ["ServerTimex5", "Listen", "Receive", "Call", "Receive", "SleepUntil"]
    # Nothing learned before the first round: the median of the first TIME round trips
    # stands for the announcement's latency.
    assert fake.arrive_args[0][8] == state.typical_round_trip_us() > 0
    assert result.clock_offset == pytest.approx(-1.5, abs=1e-5)
    assert abs(fake.returned_mono - (fake.decided_mono + 300 * MS)) < 50_000
    latency = memory.reported_us()
    assert 7000 <= latency <= 7000 + 100 + result.clock_uncertainty * 1e6

    fake2 = FakeRedis(world, others=True, generation=1)
    fake2.run(sync_flow(settings, state, EVENT, 2, None, memory=memory))
    assert fake2.arrive_args[0][8] == latency


def test_server_mode_stale_estimate_is_renewed_at_the_announcement(world: FakeWorld) -> None:
    """Server-clock mode, ``clock_refresh`` 1 s: after a wait of 15 s for the others
    (longer than STALE_REFRESHES refresh periods, and the fake server announces without
    a heartbeat in between), the estimate is stale beyond use and one back-to-back pair
    of round trips renews it after the announcement, before the wait for the instant."""
    world.server_ahead(-1_500_000_000)
    fake = FakeRedis(world, others=True, wait_s=15.0, travel_s=0.002)
    result = fake.run(
        sync_flow(make_settings(clock="server"), ClockState(), EVENT, 2, None, memory=EventMemory())
    )
    assert fake.kinds() == [
        "ServerTimex5",
        "Listen",
        "Receive",
        "Call",
        "Receive",
        "ServerTimex2",
        "SleepUntil",
    ]
    assert result.clock_offset == pytest.approx(-1.5, abs=1e-5)
    assert abs(fake.returned_mono - (fake.decided_mono + 300 * MS)) < 50_000


def test_system_instance_follows_a_server_clock_instant(world: FakeWorld) -> None:
    """An instance in system-clock mode that receives an instant on the server's clock
    (the last arrival was in server-clock mode) converts it with an estimate taken on
    demand, after the announcement, and waits on the monotonic clock."""
    world.server_ahead(800 * MS)
    fake = FakeRedis(world, others=True, server_decides=True, travel_s=0.002)
    result = fake.run(
        sync_flow(
            make_settings(),
            ClockState(check_system_clock=False),
            EVENT,
            2,
            None,
            memory=EventMemory(),
        )
    )
    assert fake.kinds() == ["Listen", "Receive", "Call", "Receive", "ServerTimex5", "SleepUntil"]
    (sleep,) = [op for op in fake.ops if isinstance(op, SleepUntil)]
    assert sleep.on_monotonic
    assert result.clock_offset == pytest.approx(0.8, abs=1e-5)
    assert abs(fake.returned_mono - (fake.decided_mono + 300 * MS)) < 50_000


# == 5. what a release reports of the clocks (issue 22) ==========================================


def release(fake: FakeRedis, clocks: ClockState | None = None, **settings: Any) -> Any:
    """Run one participant to its release with ``fake``; its result."""
    clocks = clocks or ClockState(check_system_clock=False)
    flow = sync_flow(make_settings(**settings), clocks, EVENT, 1, None, memory=EventMemory())
    return fake.run(flow)


@pytest.mark.parametrize("mode", ["server", "system"])
@pytest.mark.parametrize("step_s", [0.02, -0.1])
def test_a_step_during_the_wait_is_reported_and_logged_once(
    world: FakeWorld, mode: str, step_s: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A step of the wall clock during the wait (after the second coarse sleep) shows in
    ``SyncResult.clock_step`` and is logged once at WARNING on ``pyprocsync.clock``,
    saying whether the release moved with it (system clock) or not (server clock)."""
    caplog.set_level(logging.WARNING, logger=CLOCK_LOGGER)
    world.server_ahead(3_000_000_000)
    world.steps = {2: round(step_s * 1e9)}
    result = release(FakeRedis(world), clock=mode)
    assert result.clock_step == pytest.approx(step_s, abs=1e-4)
    (record,) = clock_records(caplog, logging.WARNING)
    assert "stepped" in record.getMessage()
    moved = "not moved" if mode == "server" else "moved with it"
    assert moved in record.getMessage()


def test_no_step_no_report(world: FakeWorld, caplog: pytest.LogCaptureFixture) -> None:
    """Without a step (the wall clock keeps pace with the monotonic one) nothing is
    reported: ``clock_step`` is 0.0 and nothing is logged."""
    caplog.set_level(logging.WARNING, logger=CLOCK_LOGGER)
    result = release(FakeRedis(world))
    assert result.clock_step == 0.0
    assert clock_records(caplog, logging.WARNING) == []


def test_system_mode_reports_the_bound_the_kernel_keeps(world: FakeWorld) -> None:
    """System-clock mode: the release's bound is the one the host's time daemon keeps
    (the kernel's ``maxerror``), and it says the clock is synchronised."""
    world.kernel = clock.KernelClock(True, 250_000, 30_000)
    result = release(FakeRedis(world))
    assert result.clock_synchronized is True
    assert result.clock_uncertainty == pytest.approx(250e-6)
    assert result.clock_offset is None


@pytest.mark.parametrize("kernel", [clock.KernelClock(False, 16 * 10**9, 16 * 10**9), None])
def test_an_unsynchronised_or_silent_kernel_gives_no_bound(
    world: FakeWorld,
    kernel: clock.KernelClock | None,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """System-clock mode on a host whose kernel says its clock is not synchronised: no
    made-up figure (``clock_uncertainty`` None, ``clock_synchronized`` False) and one
    warning per process, not one per release; a kernel that says nothing (another
    system): ``clock_synchronized`` None, no warning."""
    monkeypatch.setattr(waiter, "_told_unsynchronised", threading.Event())
    caplog.set_level(logging.WARNING, logger=CLOCK_LOGGER)
    world.kernel = kernel
    results = [release(FakeRedis(world, generation=generation)) for generation in range(2)]
    assert [r.clock_uncertainty for r in results] == [None, None]
    synchronized = None if kernel is None else False
    assert [r.clock_synchronized for r in results] == [synchronized, synchronized]
    warned = clock_records(caplog, logging.WARNING)
    assert len(warned) == (0 if kernel is None else 1)
    if warned:
        assert "not synchronised" in warned[0].getMessage()


def test_server_mode_needs_no_kernel(world: FakeWorld) -> None:
    """Server-clock mode does not rely on the kernel's view: its bound is the estimate's
    and ``clock_synchronized`` is None, even on an unsynchronised host."""
    world.kernel = clock.KernelClock(False, 16 * 10**9, 16 * 10**9)
    world.server_ahead(3_000_000_000)
    result = release(FakeRedis(world), ClockState(), clock="server")
    assert result.clock_synchronized is None
    assert 0 < result.clock_uncertainty < 1e-3

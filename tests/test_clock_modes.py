"""Clock modes and lead time (issue 5): server-clock mode, ``delay="auto"``, the clock
check, wall-clock steps, ``pyprocsync clock``, and participants whose clocks really are
skewed.

* Fake clocks, no Redis: the offset estimate (Cristian's method, the shortest round trip
  wins), ``parse_time``, the estimate's reuse and renewal, the once-per-instance
  warning of system-clock mode, and what a step of the wall clock during the wait does
  in each mode (flows driven through a fake server and :func:`pyprocsync.clock.sleep_until_ns`
  on a fake world whose clocks only move when something reads or sleeps).
* The real server: rounds, Events and Barriers in server-clock mode, mixed modes,
  automatic lead times and their decay, TIME failures.
* Real skew: participant subprocesses whose wall clock is off by +0.25 s and -0.1 s,
  through libfaketime (``LD_PRELOAD``, ``FAKETIME``, ``FAKETIME_DONT_FAKE_MONOTONIC=1``)
  where it is installed, and always through an injected clock (``tests/clock_helper.py
  --skew``). Their return instants are compared on the monotonic clock, which neither
  mechanism touches and which all processes of the machine share.
* The command line: ``pyprocsync clock``, ``bench --delay auto`` / ``--clock server``,
  ``sync --clock server`` / ``--delay auto``.

Durations asserted are generous semantic bounds, never speed measurements; every test
has a hard timeout.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import example, given
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from runner import Node, Participants, arguments
from support import (
    arun,
    assert_one_line_error,
    event_keys,
    in_threads,
    make_client,
    run_command,
    start_thread,
    wait_until,
    waiting_members,
)
from support import make_settings as support_settings

import pyprocsync.asyncio as aio
from pyprocsync import (
    ArgumentTypeError,
    Barrier,
    ConnectionLostError,
    Event,
    InvalidArgumentError,
    ProcSync,
    ProtocolError,
    SyncResult,
    clock,
)
from pyprocsync.core import params
from pyprocsync.core.keys import EventKeys, FlagKeys
from pyprocsync.core.ops import AtInstant, Call, Listen, Prepare, Receive, ServerTime, SleepUntil
from pyprocsync.core.rounds import sync_flow
from pyprocsync.core.scripts import Script
from pyprocsync.core.servertime import ClockState, parse_time
from pyprocsync.shells.blocking import drive
from pyprocsync.tools.cli import URL_ENV, ExitCode
from pyprocsync.tools.cli import main as cli_main
from pyprocsync.tools.server import EmbeddedServer

HELPER = Path(__file__).with_name("clock_helper.py")
RUN, EVENT = "run", "step"
CHANNEL = EventKeys.of("pyprocsync", RUN, EVENT).channel
T0_NS = 1_700_000_000_000_000_000  # fake wall clock at the start of a fake-clock test
MONO0_NS = 7_000_000_000_000  # fake monotonic clock then
MS = 1_000_000  # ns
CLOCK_LOGGER = "pyprocsync.clock"


# == fakes ======================================================================================


class FakeWorld:
    """This host's monotonic and wall clocks and the Redis server's clock, all fake.

    Every read advances time by 1 µs (so a busy-wait ends); ``time.sleep`` advances it by
    the duration asked; after the n-th sleep the wall clock (only it) jumps by
    ``steps[n]`` ns. The server's clock runs with the monotonic clock at a fixed offset.
    """

    def __init__(self) -> None:
        self.mono = MONO0_NS
        self.wall_minus_mono = T0_NS - MONO0_NS
        self.server_minus_mono = self.wall_minus_mono
        self.steps: dict[int, int] = {}
        self.sleeps: list[float] = []

    def server_ahead(self, ns: int) -> None:
        """Make the server's clock ``ns`` ahead of this host's wall clock (µs multiple)."""
        self.server_minus_mono = self.wall_minus_mono + ns

    def _tick(self) -> None:
        self.mono += 1000

    def monotonic_ns(self) -> int:
        self._tick()
        return self.mono

    def monotonic(self) -> float:
        self._tick()
        return self.mono / 1e9

    def time_ns(self) -> int:
        self._tick()
        return self.mono + self.wall_minus_mono

    def server_ns(self) -> int:
        return self.mono + self.server_minus_mono

    def advance(self, seconds: float) -> None:
        self.mono += round(seconds * 1e9)

    def sleep(self, seconds: float) -> None:
        assert seconds > 0, "never asked to sleep for 0 or less"
        self.sleeps.append(seconds)
        self.advance(seconds)
        self.wall_minus_mono += self.steps.get(len(self.sleeps), 0)

    def time_reply(self) -> list[bytes]:
        """What ``TIME`` answers now (the server reads its clock halfway through)."""
        self._tick()
        reply = time_reply(self.server_ns())
        self._tick()
        return reply


def time_reply(server_ns: int) -> list[bytes]:
    """A ``TIME`` reply, ``[seconds, microseconds]`` as bytes, for the instant ``server_ns``."""
    seconds, micros = divmod(server_ns // 1000, 1_000_000)
    return [str(seconds).encode(), str(micros).encode()]


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> FakeWorld:
    """A fake world: pyprocsync's clock readings and ``time.sleep`` follow it."""
    fake = FakeWorld()
    monkeypatch.setattr(clock, "monotonic_ns", fake.monotonic_ns)
    monkeypatch.setattr(clock, "monotonic", fake.monotonic)
    monkeypatch.setattr(clock, "time_ns", fake.time_ns)
    monkeypatch.setattr(time, "sleep", fake.sleep)
    return fake


def make_settings(**overrides: Any) -> params.Settings:
    # liveness 10 s: heartbeat every 2 s
    defaults = {"run_id": RUN, "delay": 0.3, "liveness": 10.0, "node_id": "node-a"}
    return support_settings(**{**defaults, **overrides})


def subscribed() -> dict[str, Any]:
    return {"type": "subscribe", "pattern": None, "channel": CHANNEL.encode(), "data": 1}


def message(data: str) -> dict[str, Any]:
    return {"type": "message", "pattern": None, "channel": CHANNEL.encode(), "data": data.encode()}


@dataclass
class FakeRedis:
    """Plays the server for one participant of ``EVENT`` on a :class:`FakeWorld`.

    With ``others`` the participant arrives first; the round is then decided by another
    participant after ``wait_s`` (on the server's clock when ``server_decides``, else on
    this host's wall clock, as a last arrival in system-clock mode on a host with the
    same clock would) and the announcement takes ``travel_s`` to arrive. Without
    ``others`` the participant arrives last and decides in its own mode. Waits for the
    release instant run the real :func:`pyprocsync.clock.sleep_until_ns`.
    """

    world: FakeWorld
    others: bool = False
    server_decides: bool = True
    lead_us: int = 300_000
    wait_s: float = 0.0
    travel_s: float = 0.0
    generation: int = 0
    ops: list[Any] = field(default_factory=list)
    arrive_args: list[tuple[Any, ...]] = field(default_factory=list)
    decided_mono: int = 0
    returned_mono: int = 0
    confirmed: bool = False

    def decide(self, arrival_us: int, lead_us: int) -> str:
        self.decided_mono = self.world.mono
        if arrival_us == -1:
            at_us = self.world.server_ns() // 1000 + lead_us
            return f"R {self.generation} {at_us} {lead_us} s"
        return f"R {self.generation} {arrival_us + lead_us} {lead_us}"

    def execute(self, op: Any) -> object:
        if isinstance(op, Prepare):  # the scripts are loaded (not among the ops compared)
            return None
        self.ops.append(op)
        if isinstance(op, ServerTime):
            return self.world.time_reply()
        if isinstance(op, Listen):
            self.confirmed = False
            return True
        if isinstance(op, Receive):
            return self.receive()
        if isinstance(op, Call):
            return self.arrive(op)
        if isinstance(op, SleepUntil):
            returned = clock.sleep_until_ns(op.at_ns, op.spin_ns, on_monotonic=op.on_monotonic)
            self.returned_mono = self.world.mono
            return returned
        raise AssertionError(f"unexpected operation {op!r}")

    def receive(self) -> dict[str, Any]:
        """The subscription's confirmation, then the announcement of the others' decision."""
        if not self.confirmed:
            self.confirmed = True
            return subscribed()
        self.world.advance(self.wait_s)
        now_us = -1 if self.server_decides else self.world.time_ns() // 1000
        announcement = self.decide(now_us, self.lead_us)
        self.world.advance(self.travel_s)
        return message(announcement)

    def run(self, flow: Any) -> Any:
        """Drive ``flow`` as a shell does, its instant included (see ``meet``)."""
        due = drive(flow, self.execute)
        if isinstance(due, AtInstant):
            self.execute(due.wait)
            return due.finish()
        return due

    def arrive(self, op: Call) -> list[Any]:
        """ARRIVE: joined (others to come), or last: decided in the caller's mode."""
        assert op.script is Script.ARRIVE, op.script
        args = op.command("sha")[3 + len(op.keys) :]  # as the shell sends them
        self.arrive_args.append(args)
        if self.others:
            return [0, self.generation, 0, b""]
        arrival_us, lead_us = args[4], args[5]
        return [0, self.generation, 0, self.decide(int(arrival_us), int(lead_us)).encode()]

    def kinds(self) -> list[str]:
        """The operations so far, by class name, consecutive repeats collapsed to ``xN``."""
        names: list[list[Any]] = []
        for op in self.ops:
            name = type(op).__name__
            if names and names[-1][0] == name:
                names[-1][1] += 1
            else:
                names.append([name, 1])
        return [name if count == 1 else f"{name}x{count}" for name, count in names]


def time_only(replies: Iterator[Any]) -> Callable[[Any], object]:
    """An executor for flows that may only read the server's clock."""

    def execute(op: Any) -> object:
        assert isinstance(op, ServerTime), op
        return next(replies)

    return execute


def clock_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == CLOCK_LOGGER and r.levelno == level]


# == 1. parse_time, ClockState (fake clocks, no Redis; the filter: test_servertime.py) ==========


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ([b"1700000000", b"123456"], 1_700_000_000_123_456_000),
        ((b"0", b"0"), 0),
        (["1700000000", "999999"], 1_700_000_000_999_999_000),
        ((1_700_000_000, 5), 1_700_000_000_000_005_000),  # what redis-py's time() returns
    ],
)
def test_parse_time_accepts_time_replies(reply: Any, expected: int) -> None:
    """``[seconds, microseconds]`` as bytes (RESP), str (decode_responses) or int
    (redis-py's ``time()``) becomes nanoseconds since the epoch."""
    assert parse_time(reply) == expected


@pytest.mark.parametrize(
    "reply",
    [
        None,
        5,
        [],
        [b"1"],
        [b"1", b"2", b"3"],
        [b"x", b"1"],
        [b"1", b"x"],
        [b"", b"0"],
        [b"1.5", b"0"],
        [b"-1", b"0"],
        [b"1", b"-1"],
        [b"1", b"1000000"],
        [None, None],
        [[1], [2]],
        {"a": 1, "b": 2},
        [b"\xff\xfe", b"0"],
        [b"1" * 5000, b"0"],
        [float("nan"), 0],
        [float("inf"), 0],
        [0, float("-inf")],
    ],
    ids=lambda reply: repr(reply)[:24],
)
def test_parse_time_rejects_garbage(reply: Any) -> None:
    """Anything but two non-negative integers with microseconds below 10**6 is a
    ProtocolError naming the reply (also non-finite numbers, which a RESP3 double could
    carry)."""
    with pytest.raises(ProtocolError, match="TIME reply"):
        parse_time(reply)


_atoms = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
_replies = st.recursive(
    _atoms,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=10,
)


@given(_replies)
@example([float("inf"), 0])
@example([b"9" * 20, b"0"])
def test_parse_time_never_raises_anything_else(reply: Any) -> None:
    """Whatever a (broken or foreign) server replies, ``parse_time`` returns a time >= 0
    or raises ProtocolError: never TypeError, OverflowError or anything else."""
    try:
        parsed = parse_time(reply)
    except ProtocolError:
        return
    assert isinstance(parsed, int)
    assert parsed >= 0


def test_fresh_reuses_a_young_estimate_and_renews_an_old_one(world: FakeWorld) -> None:
    """``ClockState.fresh``: the first call takes a burst of ``samples`` round trips; a
    call while the newest sample is younger than twice ``refresh`` makes none (the
    estimate is carried forward); once it is older, a back-to-back pair renews it, one
    round trip per ``refresh`` on average."""
    world.server_ahead(2_000_000_000)
    state = ClockState()
    assert state.estimate is None
    executor = FakeRedis(world)
    first = drive(state.fresh(1_000 * MS, 4), executor.execute)
    assert executor.kinds() == ["ServerTimex4"]
    assert state.round_trips == 4
    assert first.wall_offset_ns == pytest.approx(2_000_000_000, abs=5_000)

    world.advance(1.5)
    executor.ops.clear()
    carried = drive(state.fresh(1_000 * MS, 4), executor.execute)
    assert executor.ops == []
    assert carried.sample_age_ns >= 1_500 * MS
    assert carried.uncertainty_ns > first.uncertainty_ns  # the drift allowance grew

    world.advance(0.6)
    renewed = drive(state.fresh(1_000 * MS, 4), executor.execute)
    assert executor.kinds() == ["ServerTimex2"]
    assert state.round_trips == 6
    assert renewed.sample_age_ns < 1 * MS
    assert renewed.wall_offset_ns == pytest.approx(2_000_000_000, abs=5_000)


@pytest.mark.parametrize("server_ahead_ms", [200, -200])
def test_check_system_clock_warns_once(
    world: FakeWorld, caplog: pytest.LogCaptureFixture, server_ahead_ms: int
) -> None:
    """A host clock 200 ms off the server's, lead 50 ms: one WARNING on the logger
    ``pyprocsync.clock`` saying by how much, in which direction and that TooLateError is
    to be expected; a second check of the same instance makes no round trip and logs
    nothing (once per instance)."""
    caplog.set_level(logging.DEBUG, logger=CLOCK_LOGGER)
    world.server_ahead(server_ahead_ms * MS)
    state = ClockState()
    executor = FakeRedis(world)
    assert drive(state.check_system_clock(5, 50 * MS), executor.execute) is None
    assert executor.kinds() == ["ServerTimex5"]
    (warning,) = clock_records(caplog, logging.WARNING)
    text = warning.getMessage()
    shown = re.search(r"clock is (\d+\.\d{3}) ms", text)
    assert shown, text
    assert float(shown.group(1)) == pytest.approx(200.0, abs=0.01)
    assert ("behind" if server_ahead_ms > 0 else "ahead of") in text
    assert "TooLateError" in text
    assert "50.000 ms" in text

    executor.ops.clear()
    drive(state.check_system_clock(5, 50 * MS), executor.execute)
    assert executor.ops == []
    assert len(clock_records(caplog, logging.WARNING)) == 1


@pytest.mark.parametrize("server_ahead_ms", [0, 10, -10, -49])
def test_check_system_clock_quiet_below_the_lead(
    world: FakeWorld, caplog: pytest.LogCaptureFixture, server_ahead_ms: int
) -> None:
    """An offset smaller than the lead time logs no warning."""
    caplog.set_level(logging.DEBUG, logger=CLOCK_LOGGER)
    world.server_ahead(server_ahead_ms * MS)
    drive(ClockState().check_system_clock(5, 50 * MS), FakeRedis(world).execute)
    assert clock_records(caplog, logging.WARNING) == []


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param([b"garbage", b"0"], id="broken-reply"),
        pytest.param(RedisConnectionError("connection reset"), id="link-error"),
    ],
)
def test_check_system_clock_is_advisory(
    world: FakeWorld, caplog: pytest.LogCaptureFixture, failure: Any
) -> None:
    """A TIME reply the check cannot read, or a connection that fails during it, ends
    the check quietly: no exception, a DEBUG record on ``pyprocsync.clock``, no
    warning."""
    caplog.set_level(logging.DEBUG, logger=CLOCK_LOGGER)
    flow = ClockState().check_system_clock(5, 50 * MS)
    assert isinstance(next(flow), ServerTime)
    fail: Callable[[], object] = (
        (lambda: flow.throw(failure))
        if isinstance(failure, BaseException)
        else (lambda: flow.send(failure))
    )
    with pytest.raises(StopIteration):
        fail()
    assert clock_records(caplog, logging.WARNING) == []
    (debug,) = clock_records(caplog, logging.DEBUG)
    assert "could not compare" in debug.getMessage()


def test_check_system_clock_can_be_switched_off(world: FakeWorld) -> None:
    """``ClockState(check_system_clock=False)`` never reads the server's clock."""
    executor = FakeRedis(world)
    drive(ClockState(check_system_clock=False).check_system_clock(5, 1), executor.execute)
    assert executor.ops == []


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
    result = fake.run(sync_flow(make_settings(clock="server"), ClockState(), EVENT, 1, None))
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
    result = fake.run(sync_flow(settings, ClockState(check_system_clock=False), EVENT, 1, None))
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
        sync_flow(make_settings(delay=1.0), ClockState(check_system_clock=False), EVENT, 1, None)
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
    state = ClockState()
    settings = make_settings(clock="server")
    result = fake.run(sync_flow(settings, state, EVENT, 2, None))
    assert fake.kinds() == ["ServerTimex5", "Listen", "Receive", "Call", "Receive", "SleepUntil"]
    assert fake.arrive_args[0][8] == 0  # nothing learned before the first round
    assert result.clock_offset == pytest.approx(-1.5, abs=1e-5)
    assert abs(fake.returned_mono - (fake.decided_mono + 300 * MS)) < 50_000
    latency = state.latency_us[EVENT]
    assert 7000 <= latency <= 7000 + 100 + result.clock_uncertainty * 1e6

    fake2 = FakeRedis(world, others=True, generation=1)
    fake2.run(sync_flow(settings, state, EVENT, 2, None))
    assert fake2.arrive_args[0][8] == latency


def test_server_mode_stale_estimate_is_renewed_at_the_announcement(world: FakeWorld) -> None:
    """Server-clock mode, ``clock_refresh`` 1 s: after a wait of 15 s for the others
    (longer than STALE_REFRESHES refresh periods, and the fake server announces without
    a heartbeat in between), the estimate is stale beyond use and one back-to-back pair
    of round trips renews it after the announcement, before the wait for the instant."""
    world.server_ahead(-1_500_000_000)
    fake = FakeRedis(world, others=True, wait_s=15.0, travel_s=0.002)
    result = fake.run(sync_flow(make_settings(clock="server"), ClockState(), EVENT, 2, None))
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
        sync_flow(make_settings(), ClockState(check_system_clock=False), EVENT, 2, None)
    )
    assert fake.kinds() == ["Listen", "Receive", "Call", "Receive", "ServerTimex5", "SleepUntil"]
    (sleep,) = [op for op in fake.ops if isinstance(op, SleepUntil)]
    assert sleep.on_monotonic
    assert result.clock_offset == pytest.approx(0.8, abs=1e-5)
    assert abs(fake.returned_mono - (fake.decided_mono + 300 * MS)) < 50_000


# == 2. server-clock mode against the real server ================================================


def stored_outcome(client: redis.Redis, run_id: str, event: str, generation: int) -> str:
    raw = client.hget(event_keys(run_id, event).state, f"o{generation % 8}")
    assert raw is not None
    return raw.decode()


def server_instant_us(result: SyncResult) -> float:
    """The release instant on the server's clock, µs, as this participant saw it."""
    assert result.clock_offset is not None
    return (result.release_at + result.clock_offset) * 1e6


@pytest.mark.timeout(60)
def test_server_clock_rounds_release_everyone_together(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """Three instances with ``clock="server"``, three rounds: per round one generation,
    indices 0..2, the lead 0.05 s; the stored outcome is ``R <g> <µs> 50000 s`` (marked
    as server time); every participant's ``release_at + clock_offset`` is that instant
    (within 3 µs of rounding); ``clock_offset`` is small on one machine and
    ``clock_uncertainty`` positive; they return within 20 ms of each other."""
    nodes = [make_sync(0.05, clock="server") for _ in range(3)]
    for generation in range(3):
        outcomes = in_threads(*(lambda n=n: n.sync("go", 3, 20) for n in nodes), timeout=30)
        results: list[SyncResult] = [o.result() for o in outcomes]
        assert {r.generation for r in results} == {generation}
        assert sorted(r.index for r in results) == [0, 1, 2]
        kind, gen, at_us, lead_us, basis = stored_outcome(client, run_id, "go", generation).split()
        assert (kind, int(gen), int(lead_us), basis) == ("R", generation, 50_000, "s")
        for result in results:
            assert result.delay == pytest.approx(0.05)
            assert result.clock_offset is not None
            assert result.clock_uncertainty is not None
            assert abs(result.clock_offset) < 0.005
            assert 0 < result.clock_uncertainty < 0.5
            assert abs(server_instant_us(result) - int(at_us)) <= 3
            assert -0.001 <= result.late_by < 0.05
        finished = [o.finished_at for o in outcomes if o.finished_at is not None]
        assert max(finished) - min(finished) < 0.02


@pytest.mark.timeout(60)
def test_system_clock_results_have_no_clock_fields(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """In the default mode the outcome carries no server-time mark and both clock fields
    of SyncResult are None."""
    a, b = make_sync(0.05), make_sync(0.05)
    outcomes = in_threads(lambda: a.sync("go", 2, 20), lambda: b.sync("go", 2, 20))
    results = [o.result() for o in outcomes]
    assert all(r.clock_offset is None and r.clock_uncertainty is None for r in results)
    assert len(stored_outcome(client, run_id, "go", 0).split()) == 4


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("first", "last"), [("system", "server"), ("server", "system")])
def test_the_last_arrivals_mode_decides(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str, first: str, last: str
) -> None:
    """Mixed modes: the instant's basis is the last arrival's mode, and the first
    participant follows it whatever its own setting (server-time instant: both report a
    clock offset; wall-clock instant: neither does)."""
    early, late = make_sync(0.05, clock=first), make_sync(0.05, clock=last)
    thread, waiting = start_thread(lambda: early.sync("mix", 2, 20))
    wait_until(lambda: waiting_members(client, run_id, "mix"), what="the first arrival")
    closing = late.sync("mix", 2, 20)
    thread.join(20)
    results = [waiting.result(), closing]
    on_server = last == "server"
    assert all((r.clock_offset is not None) is on_server for r in results)
    assert stored_outcome(client, run_id, "mix", 0).endswith(" s") is on_server


@pytest.mark.timeout(60)
def test_event_with_server_clock_and_delay(client: redis.Redis, run_id: str) -> None:
    """``Event(clock="server", delay=0.05)``: the set is stored as ``S 1 <µs> 50000 s``
    (server time); a waiter woken by it returns True, no earlier than the lead after the
    set began (2 ms slack for the estimate's uncertainty)."""
    setter = Event(client, "flag", run_id=run_id, delay=0.05, clock="server")
    waiter = Event(client, "flag", run_id=run_id, delay=0.05, clock="server")
    channel = FlagKeys.of("pyprocsync", run_id, "flag").channel
    try:
        thread, woken = start_thread(lambda: waiter.wait(20))
        wait_until(lambda: client.pubsub_numsub(channel)[0][1] > 0, what="the waiter")
        set_at = time.monotonic()
        setter.set()
        thread.join(20)
        assert woken.result() is True
        assert woken.finished_at is not None
        assert woken.finished_at - set_at >= 0.05 - 0.002
        stored = client.hget(FlagKeys.of("pyprocsync", run_id, "flag").state, "o")
        assert stored is not None
        kind, sets, _at, lead, basis = stored.decode().split()
        assert (kind, sets, lead, basis) == ("S", "1", "50000", "s")
    finally:
        setter.close()
        waiter.close()


@pytest.mark.timeout(60)
def test_barrier_with_server_clock(client: redis.Redis, run_id: str) -> None:
    """``Barrier(clock="server")`` with an action: indices 0 and 1, the action once, the
    release instant on the server's clock (stored outcome marked ``s``), both parties
    back within 20 ms of each other."""
    ran: list[int] = []
    barriers = [
        Barrier(client, "bar", 2, lambda: ran.append(1), run_id=run_id, delay=0.05, clock="server")
        for _ in range(2)
    ]
    try:
        outcomes = in_threads(*(lambda b=b: b.wait(20) for b in barriers), timeout=30)
        assert sorted(o.result() for o in outcomes) == [0, 1]
        assert ran == [1]
        assert stored_outcome(client, run_id, "bar", 0).endswith(" 50000 s")
        finished = [o.finished_at for o in outcomes if o.finished_at is not None]
        assert max(finished) - min(finished) < 0.02
    finally:
        for barrier in barriers:
            barrier.close()


@pytest.mark.timeout(60)
def test_asyncio_server_clock_round(server: EmbeddedServer, run_id: str) -> None:
    """The asyncio ProcSync takes the same option: two tasks, ``clock="server"``, one
    round: both results carry the clock fields and agree on the server-time instant."""

    async def body() -> list[SyncResult]:
        client = aioredis.Redis(host=server.bind, port=server.port)
        nodes = [aio.ProcSync(client, run_id, 0.05, clock="server") for _ in range(2)]
        try:
            return list(
                await asyncio.wait_for(asyncio.gather(*(n.sync("go", 2, 20) for n in nodes)), 30)
            )
        finally:
            for node in nodes:
                await node.aclose()
            await client.aclose()

    results = arun(body)
    assert all(r.clock_offset is not None for r in results)
    instants = [server_instant_us(r) for r in results]
    assert max(instants) - min(instants) <= 3


@pytest.mark.timeout(60)
def test_server_mode_time_failure_is_connection_lost(
    fresh_server: Callable[..., EmbeddedServer], run_id: str
) -> None:
    """Server-clock mode, the server gone after a first round: the next call's clock
    estimate (the previous one is stale) cannot be taken and the call raises
    ConnectionLostError, not redis-py's exception, carrying the call's context like
    every ProcSyncError (``event`` and ``run_id``; no generation: nothing was counted)."""
    instance = fresh_server()
    client = make_client(instance, retry=Retry(NoBackoff(), 0))
    node = ProcSync(client, run_id, 0.01, clock="server", clock_refresh=0.05)
    try:
        assert node.sync("solo", 1, 10).clock_offset is not None
        instance.stop()
        time.sleep(0.1)
        with pytest.raises(ConnectionLostError, match="TIME") as caught:
            node.sync("solo", 1, 10)
        assert caught.value.generation is None
        assert (caught.value.event, caught.value.run_id) == ("solo", run_id)
    finally:
        node.close()
        client.close()


@pytest.mark.timeout(60)
def test_system_mode_warns_before_the_first_arrival(
    make_sync: Callable[..., ProcSync],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """System-clock mode on a host whose clock (as pyprocsync reads it) is 250 ms ahead
    of the server's: an instance with ``delay=0.05`` warns once, at its first ``sync``,
    not at later ones; with ``delay="auto"`` it compares with ``auto_floor`` and warns
    too; ``delay=0`` and ``clock="server"`` make no check."""
    caplog.set_level(logging.WARNING, logger=CLOCK_LOGGER)
    real = time.time_ns
    monkeypatch.setattr(clock, "time_ns", lambda: real() + 250 * MS)

    def warnings_after(node: ProcSync, calls: int) -> int:
        caplog.clear()
        for _ in range(calls):
            node.sync("alone", 1, 10)
        return len(clock_records(caplog, logging.WARNING))

    assert warnings_after(make_sync(0.05), 3) == 1
    assert "ahead of" in clock_records(caplog, logging.WARNING)[0].getMessage()
    assert warnings_after(make_sync("auto", auto_floor=0.002, on_late="proceed"), 2) == 1
    assert warnings_after(make_sync(0), 2) == 0
    assert warnings_after(make_sync(0.05, clock="server"), 2) == 0


# == 5. delay="auto" ==============================================================================


def test_settings_accept_auto_and_reject_other_strings() -> None:
    """``delay="auto"`` is stored as -1 µs (automatic); any other string, bytes or a
    different spelling is an ArgumentTypeError; the other clock options are checked."""
    base = params.Settings.create
    common: dict[str, Any] = {
        "run_id": "r",
        "liveness": 5.0,
        "retention": 60.0,
        "late_tolerance": 0.001,
        "on_late": "raise",
        "spin": 0.0005,
        "node_id": None,
        "prefix": "pyprocsync",
    }
    auto = base(delay="auto", **common)
    assert auto.auto_delay
    assert auto.delay_us == -1
    assert not base(delay=0.0, **common).auto_delay
    for bad in ("Auto", "AUTO", "fast", "", "0.1", b"auto"):
        with pytest.raises(ArgumentTypeError):
            base(delay=bad, **common)
    assert base(delay="auto", auto_floor=0.004, **common).auto_floor_us == 4000
    for key, value in (
        ("auto_floor", -0.001),
        ("clock", "ntp"),
        ("clock_samples", 0),
        ("clock_refresh", 0),
    ):
        with pytest.raises(InvalidArgumentError):
            base(delay="auto", **{key: value}, **common)


def test_procsync_and_barrier_take_auto_event_refuses_it() -> None:
    """``ProcSync(..., delay="auto").delay == "auto"`` (and its repr says so); a Barrier
    takes it; ``Event(delay="auto")``, blocking or asyncio, raises ArgumentTypeError
    before touching the client."""
    client = mock.create_autospec(redis.Redis, instance=True)
    node = ProcSync(client, "r", "auto")
    assert node.delay == "auto"
    assert "delay=auto" in repr(node)
    assert ProcSync(client, "r", 0.25).delay == 0.25
    Barrier(client, "b", 2, delay="auto")
    client.reset_mock()
    aclient = mock.create_autospec(redis.Redis, instance=True)
    for make in (
        lambda: Event(client, "e", delay="auto"),  # type: ignore[arg-type]
        lambda: aio.Event(aclient, "e", delay="auto"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ArgumentTypeError):
            make()
    assert client.method_calls == []
    assert aclient.method_calls == []


def lead_field(client: redis.Redis, run_id: str, event: str) -> int | None:
    raw = client.hget(event_keys(run_id, event).state, "L")
    return None if raw is None else int(raw)


@pytest.mark.timeout(60)
def test_auto_delay_floor_spike_and_decay(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """``delay="auto"``, ``auto_floor=0.003``, two instances:

    * the first round of a fresh point leads by exactly the floor (nothing reported);
    * every round leads by at least the floor;
    * when one participant reports a 50 ms latency at its arrival, that round leads by
      twice it (0.1 s) and the state's ``L`` then holds 50000 * 31/32;
    * with no further slow reports, each later automatically led round leads by
      ``2 * L`` while ``L`` decays by 1/32 per release: the lead shrinks round by round.
    """
    # The subject is the lead each round announces, not how late a loaded machine
    # learns it: a 3 ms lead may be learned too late there (TooLateError), so proceed.
    a, b = (make_sync("auto", auto_floor=0.003, on_late="proceed") for _ in range(2))

    def one_round() -> float:
        outcomes = in_threads(lambda: a.sync("ev", 2, 20), lambda: b.sync("ev", 2, 20))
        results = [o.result() for o in outcomes]
        assert len({r.delay for r in results}) == 1
        return results[0].delay

    assert one_round() == pytest.approx(0.003)
    for _ in range(2):
        assert one_round() >= 0.003 - 1e-9
    assert a._clocks.latency_us["ev"] < 40_000  # what it really measured: far below
    a._clocks.latency_us["ev"] = 50_000
    assert one_round() == pytest.approx(0.1)
    latency = 50_000 * 31 // 32
    assert lead_field(client, run_id, "ev") == latency
    leads = []
    for _ in range(4):
        leads.append(one_round())
        assert leads[-1] == pytest.approx(2 * latency / 1e6)
        latency = latency * 31 // 32
        assert lead_field(client, run_id, "ev") == latency
    assert leads == sorted(leads, reverse=True)
    assert leads[-1] < leads[0] < 0.1


@pytest.mark.timeout(60)
def test_auto_delay_in_server_mode_and_with_a_barrier_action(
    make_sync: Callable[..., ProcSync], client: redis.Redis, run_id: str
) -> None:
    """``delay="auto"`` also leads server-clock rounds (outcome ``R 0 <µs> 2000 s`` on a
    fresh point with ``auto_floor=0.002``) and Barrier rounds whose lead is chosen after
    the action (``RELEASE``): ``R 0 <µs> 2000``."""
    node = make_sync("auto", clock="server", auto_floor=0.002)
    assert node.sync("srv", 1, 10).delay == pytest.approx(0.002)
    assert stored_outcome(client, run_id, "srv", 0).endswith(" 2000 s")
    barriers = [
        Barrier(client, "act", 2, lambda: None, run_id=run_id, delay="auto", auto_floor=0.002)
        for _ in range(2)
    ]
    try:
        outcomes = in_threads(*(lambda b=b: b.wait(20) for b in barriers), timeout=30)
        assert sorted(o.result() for o in outcomes) == [0, 1]
    finally:
        for barrier in barriers:
            barrier.close()
    kind, _, _, lead = stored_outcome(client, run_id, "act", 0).split()
    assert (kind, lead) == ("R", "2000")


# == 3. real skew: subprocess participants with skewed wall clocks ================================


def find_libfaketime() -> str | None:
    """Path of libfaketime.so.1 (Debian package ``faketime``), or None."""
    patterns = (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
        "/usr/lib64/faketime/libfaketime.so.1",
    )
    for pattern in patterns:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    try:
        listing = subprocess.run(
            ["ldconfig", "-p"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"libfaketime\.so\.1 .*=> (\S+)", listing)
    return match.group(1) if match else None


LIBFAKETIME = find_libfaketime()
#: The mechanisms that skew a participant's clock here: the injected clock always, and
#: libfaketime where it is installed (CI installs it).
MECHANISMS = ["injected", *(["libfaketime"] if LIBFAKETIME else [])]


@dataclass
class SkewedNode(Node):
    """A ``clock_helper.py sync`` participant: its first line is the clock probe."""

    skew: float = 0.0
    probe: dict[str, Any] = field(default_factory=dict)

    def collect(self) -> None:
        super().collect()
        assert self.records, f"no output\n{self.stderr}"
        assert self.records[0].get("probe"), f"no probe line\n{self.stderr}"
        self.probe, self.records = self.records[0], self.records[1:]


class SkewRunner(Participants):
    """Starts ``tests/clock_helper.py`` participants whose wall clock is ``skew`` seconds
    off, by ``mechanism``."""

    def __init__(self, url: str, run_id: str, tmp_path: Path, mechanism: str) -> None:
        super().__init__(url, run_id, tmp_path)
        self.mechanism = mechanism

    def command(self, skew: float, *args: str) -> tuple[list[str], dict[str, str]]:
        """argv and environment of ``clock_helper.py args`` with the clock ``skew`` off."""
        env = dict(os.environ)
        argv = [sys.executable, str(HELPER), *args]
        if self.mechanism == "injected":
            argv[3:3] = ["--skew", str(skew)]
        else:
            assert LIBFAKETIME is not None
            env.update(
                LD_PRELOAD=LIBFAKETIME,
                FAKETIME=f"{skew:+}",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
                # Otherwise libfaketime shifts the timed waits of condition variables on
                # the monotonic clock too: CPython's GIL hand-over between two threads
                # (the pub/sub listener's and the caller's) then stalls for ~1 s.
                FAKETIME_FORCE_MONOTONIC_FIX="0",
            )
        return argv, env

    def start_skewed(self, skew: float, event: str, **options: Any) -> SkewedNode:
        """Start one ``clock_helper.py sync`` participant ``skew`` seconds off."""
        args = ["sync", "--url", self.url, "--run-id", self.run_id, "--event", event]
        argv, env = self.command(skew, *args, *arguments(options))
        node = self.spawn(argv, env=env, make=lambda *files: SkewedNode(*files, skew=skew))
        assert isinstance(node, SkewedNode)
        return node


@pytest.fixture(params=MECHANISMS)
def skewed(
    request: pytest.FixtureRequest, server: EmbeddedServer, run_id: str, tmp_path: Path
) -> Iterator[SkewRunner]:
    """Runs skewed participants against the session server, by each available mechanism."""
    runner = SkewRunner(server.url, run_id, tmp_path, request.param)
    yield runner
    runner.kill_all()


def wall_minus_mono_ns() -> float:
    """This (unskewed) process's wall clock minus its monotonic clock."""
    diffs = []
    for _ in range(9):
        before = time.monotonic_ns()
        wall = time.time_ns()
        diffs.append(wall - (before + time.monotonic_ns()) // 2)
    return sorted(diffs)[4]


def check_skew_in_effect(nodes: list[SkewedNode], started_mono: int) -> None:
    """Each participant's wall clock really is its skew off ours (within 5 ms), and its
    monotonic clock is ours (its probe reading lies between the start and now)."""
    reference = wall_minus_mono_ns()
    for node in nodes:
        offset = (node.probe["wall_minus_mono_ns"] - reference) / 1e9
        assert offset == pytest.approx(node.skew, abs=0.005), (node.skew, offset, node.stderr)
        assert started_mono <= node.probe["mono_ns"] <= time.monotonic_ns()


SKEW_AHEAD, SKEW_BEHIND = 0.25, -0.1
CLOCK_WARNING = "expect TooLateError"


@pytest.mark.timeout(60)
def test_skewed_clocks_server_mode_return_together(skewed: SkewRunner) -> None:
    """Two participants whose wall clocks are +0.25 s and -0.1 s off (0.35 s apart),
    ``clock="server"``, delay 0.05, three rounds: every round they return within 20 ms
    of each other on the shared monotonic clock; each reports its own offset
    (``clock_offset`` ~ -0.25 and ~+0.1 s; with the injected skew, which is exact, off
    the truth by no more than ``clock_uncertainty``) and a ``release_at`` on its own
    clock (0.35 s apart) for one server-time instant; nobody is late and nobody warns."""
    started = time.monotonic_ns()
    ahead = skewed.start_skewed(SKEW_AHEAD, "srv", clock="server", rounds=3)
    behind = skewed.start_skewed(SKEW_BEHIND, "srv", clock="server", rounds=3)
    skewed.finish(skewed.nodes, 40)
    check_skew_in_effect([ahead, behind], started)
    assert len(ahead.records) == len(behind.records) == 3
    for a, b in zip(ahead.records, behind.records, strict=True):
        assert a["ok"], a
        assert b["ok"], b
        assert a["generation"] == b["generation"]
        spread_ms = abs(a["returned_mono_ns"] - b["returned_mono_ns"]) / 1e6
        assert spread_ms < 20, spread_ms
        assert a["clock_offset"] == pytest.approx(-SKEW_AHEAD, abs=0.005)
        assert b["clock_offset"] == pytest.approx(-SKEW_BEHIND, abs=0.005)
        if skewed.mechanism == "injected":  # an exact skew: the true offset is known
            for record, skew in ((a, SKEW_AHEAD), (b, SKEW_BEHIND)):
                error = abs(record["clock_offset"] + skew)
                assert error <= record["clock_uncertainty"] + 1e-6, record
        assert a["release_at"] - b["release_at"] == pytest.approx(0.35, abs=0.005)
        instants = [r["release_at"] + r["clock_offset"] for r in (a, b)]
        assert abs(instants[0] - instants[1]) < 0.001
        assert a["late_by"] < 0.02
        assert b["late_by"] < 0.02
    assert CLOCK_WARNING not in ahead.stderr
    assert CLOCK_WARNING not in behind.stderr


def start_in_order(
    skewed: SkewRunner, client: redis.Redis, event: str, first: float, last: float
) -> tuple[SkewedNode, SkewedNode]:
    """Start a participant with clock ``first`` off, wait until its arrival is counted,
    then start the one with clock ``last`` off (so that it decides the instant)."""
    early = skewed.start_skewed(first, event, delay=0.05)
    wait_until(lambda: waiting_members(client, skewed.run_id, event), 20, "the first arrival")
    late = skewed.start_skewed(last, event, delay=0.05)
    skewed.finish(skewed.nodes, 40)
    return early, late


@pytest.mark.timeout(60)
def test_skewed_clocks_system_mode_ahead_decides(skewed: SkewRunner, client: redis.Redis) -> None:
    """System-clock mode, delay 0.05: the participant 0.1 s behind arrives first, the one
    0.25 s ahead decides the instant on its clock. Both pass without error, each on time
    by its own clock (``late_by`` ~0), but the one behind returns 0.35 s later on the
    shared monotonic clock: the spread equals the clocks' disagreement. Both warned
    before arriving that their clocks are off the server's by more than the lead."""
    started = time.monotonic_ns()
    behind, ahead = start_in_order(skewed, client, "sys-a", SKEW_BEHIND, SKEW_AHEAD)
    check_skew_in_effect([behind, ahead], started)
    (b,), (a,) = behind.records, ahead.records
    assert a["ok"], a
    assert b["ok"], b
    assert a["release_at"] == b["release_at"]
    assert a["clock_offset"] is None
    spread = (b["returned_mono_ns"] - a["returned_mono_ns"]) / 1e9
    assert spread == pytest.approx(SKEW_AHEAD - SKEW_BEHIND, abs=0.02)
    assert a["late_by"] < 0.02
    assert b["late_by"] < 0.02
    assert CLOCK_WARNING in ahead.stderr
    assert "ahead of" in ahead.stderr
    assert CLOCK_WARNING in behind.stderr
    assert "behind" in behind.stderr


@pytest.mark.timeout(60)
def test_skewed_clocks_system_mode_behind_decides(skewed: SkewRunner, client: redis.Redis) -> None:
    """System-clock mode, delay 0.05: the participant 0.25 s ahead arrives first, the one
    0.1 s behind decides. The instant is 0.05 s after the decision by the late clock,
    already 0.3 s past by the early participant's clock when it learns of it: it raises
    TooLateError with ``late_by`` ~0.3 s; the decider returns normally."""
    started = time.monotonic_ns()
    ahead, behind = start_in_order(skewed, client, "sys-b", SKEW_AHEAD, SKEW_BEHIND)
    check_skew_in_effect([ahead, behind], started)
    (a,), (b,) = ahead.records, behind.records
    assert b["ok"], b
    assert not a["ok"], a
    assert a["error"] == "TooLateError"
    assert a["attrs"]["late_by"] == pytest.approx(SKEW_AHEAD - SKEW_BEHIND - 0.05, abs=0.03)
    assert a["attrs"]["release_at"] == pytest.approx(b["release_at"], abs=1e-6)


# == 6. the command line ==========================================================================


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``pyprocsync args`` as a subprocess (killed after ``timeout``, failing the test)."""
    return run_command([sys.executable, "-m", "pyprocsync", *args], env=env, timeout=timeout)


OFFSET_LINE = re.compile(
    r"^offset \(server - this host\): ([+-]\d+\.\d{3}) ms  \+- (\d+\.\d{3}) ms "
    r"\(server (ahead|behind)\)$",
    re.MULTILINE,
)
RTT_LINE = re.compile(
    r"^round trip \(us\): p50 \d+  p90 \d+  p99 \d+  max \d+  min \d+$", re.MULTILINE
)
DRIFT_LINE = re.compile(
    r"^drift \(server - this host\): [+-]\d+\.\d{3} ppm  \+- (\d+\.\d{3}) ppm", re.MULTILINE
)


@pytest.mark.timeout(60)
def test_clock_command_reports_offset_and_round_trips(server: EmbeddedServer) -> None:
    """``pyprocsync clock --redis URL --samples 7``: exit 0; it names the server and the
    number of round trips, prints the offset with its uncertainty (> 0) and direction
    (the server runs on this machine, so the true offset is 0 and lies within the
    uncertainty), the round trips' p50/p90/p99/max/min, and the drift, not measured
    over back-to-back samples; with ``--max-offset 1`` it still exits 0. ``--every``
    spreads the samples out (the drift measurement itself is tested in
    test_servertime.py). The URL may come from the environment."""
    done = run_cli("clock", "--redis", server.url, "--samples", "7", "--max-offset", "1")
    assert done.returncode == ExitCode.OK, done.stderr
    assert f"server {server.url}: 7 TIME round trips over " in done.stdout
    match = OFFSET_LINE.search(done.stdout)
    assert match, done.stdout
    assert abs(float(match.group(1))) <= float(match.group(2)) + 0.001  # rounding
    assert float(match.group(2)) > 0
    assert RTT_LINE.search(done.stdout), done.stdout
    drift = DRIFT_LINE.search(done.stdout)
    assert drift, done.stdout
    assert "not measured" in done.stdout
    assert done.stderr == ""
    done = run_cli("clock", "--redis", server.url, "--samples", "4", "--every", "0.05")
    assert done.returncode == ExitCode.OK, done.stderr
    span = re.search(r"4 TIME round trips over (\d+\.\d{3}) s", done.stdout)
    assert span, done.stdout
    assert float(span.group(1)) >= 0.15
    assert DRIFT_LINE.search(done.stdout), done.stdout
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    env[URL_ENV] = server.url
    done = run_cli("clock", env=env)
    assert done.returncode == ExitCode.OK, done.stderr
    assert "20 TIME round trips" in done.stdout


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_clock_command_exits_7_past_max_offset(
    server: EmbeddedServer, tmp_path: Path, mechanism: str
) -> None:
    """On a host whose clock is 0.25 s ahead of the server's, ``pyprocsync clock
    --max-offset 0.1`` prints the offset (-250 ms, server behind) and exits 7 with one
    error line naming ``--max-offset``; the same host passes ``--max-offset 0.5``."""
    runner = SkewRunner(server.url, "", tmp_path, mechanism)
    for max_offset, code in (("0.1", ExitCode.CLOCK_OFF), ("0.5", ExitCode.OK)):
        argv, env = runner.command(
            SKEW_AHEAD, "cli", "--", "clock", "--redis", server.url, "--max-offset", max_offset
        )
        if mechanism == "libfaketime":  # the real command line, under libfaketime
            argv = [sys.executable, "-m", "pyprocsync", *argv[argv.index("--") + 1 :]]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            pytest.fail("pyprocsync clock still running after 30 s")
        assert done.returncode == code, done.stderr
        match = OFFSET_LINE.search(done.stdout)
        assert match, done.stdout
        assert float(match.group(1)) == pytest.approx(-250.0, abs=5.0)
        assert match.group(3) == "behind"
        if code == ExitCode.CLOCK_OFF:
            assert_one_line_error(done.stderr, "--max-offset 0.1", "ms off the server's")
        else:
            assert done.stderr == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--samples", "0"], "--samples"),
        (["--samples", "x"], "--samples"),
        (["--max-offset", "-1"], "--max-offset"),
        (["--max-offset", "nan"], "--max-offset"),
        (["--max-offset", "abc"], "--max-offset"),
        (["--bogus"], "--bogus"),
    ],
)
def test_clock_command_bad_flags_exit_2(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    """Bad ``clock`` flags are usage errors: exit 2, argparse's usage of ``pyprocsync
    clock`` and one error line naming the flag, no traceback."""
    with pytest.raises(SystemExit) as exited:
        cli_main(["clock", "--redis", "redis://127.0.0.1:1/0", *args])
    assert exited.value.code == ExitCode.USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # An unknown flag is reported by the top-level parser, a bad value by ``clock``'s.
    assert err.startswith("usage: pyprocsync" if needle == "--bogus" else "usage: pyprocsync clock")
    assert needle in err.strip().splitlines()[-1]


def test_clock_command_without_server_or_unreachable(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``--redis`` and no ``$PYPROCSYNC_REDIS_URL``: exit 2 with one error line; a
    server that refuses connections: exit 6 with one error line naming the URL."""
    monkeypatch.delenv(URL_ENV, raising=False)
    assert cli_main(["clock"]) == ExitCode.USAGE
    assert_one_line_error(capsys.readouterr().err, "--redis")
    assert cli_main(["clock", "--redis", "redis://127.0.0.1:1/0"]) == ExitCode.CONNECTION
    assert_one_line_error(capsys.readouterr().err, "127.0.0.1:1")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("clock_mode", ["system", "server"])
def test_bench_delay_auto(server: EmbeddedServer, tmp_path: Path, clock_mode: str) -> None:
    """``pyprocsync bench --nodes 2 --rounds 20 --delay auto --clock MODE --json F``:
    exit 0, the JSON says ``delay == "auto"`` and the clock, all 20 rounds completed
    without errors, and ``sync.delay_us`` summarizes the leads chosen, none below the
    default floor of 1000 µs. With ``--quiet`` nothing is printed; without it the table
    ends with the line of chosen lead times and names the server clock."""
    out = tmp_path / "bench.json"
    args = ["bench", "--redis", server.url, "--nodes", "2", "--rounds", "20", "--delay", "auto"]
    args += ["--clock", clock_mode, "--json", str(out)]
    quiet = clock_mode == "system"
    done = run_cli(*args, *(["--quiet"] if quiet else []), timeout=100)
    assert done.returncode == ExitCode.OK, done.stderr
    figures = json.loads(out.read_text())
    assert figures["delay"] == "auto"
    assert figures["config"]["clock"] == clock_mode
    sync = figures["sync"]
    assert sync["errors"] == 0, sync["error_messages"]
    assert sync["completed_rounds"] == 20
    assert set(sync["delay_us"]) == {"p50", "p90", "p99", "max"}
    assert 1000 <= sync["delay_us"]["p50"] <= sync["delay_us"]["max"]
    if quiet:
        assert done.stdout == ""
    else:
        assert "lead times chosen (delay auto, us): p50" in done.stdout
        assert "server clock" in done.stdout.splitlines()[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("options", "suffix"),
    [(["--clock", "server", "--delay", "0.05"], " 50000 s"), (["--delay", "auto"], None)],
)
def test_sync_command_clock_and_auto(
    server: EmbeddedServer,
    client: redis.Redis,
    run_id: str,
    options: list[str],
    suffix: str | None,
) -> None:
    """``pyprocsync sync NAME --nodes 2 --clock server`` and ``--delay auto``: both
    processes exit 0; the stored outcome is on the server's clock (``... 50000 s``), or
    led automatically by at least the 1 ms floor. A first round led by ``auto`` has only
    the floor and one round trip to go on, so on a loaded machine a process may learn of
    the instant after it: then it exits 4 (too late) and says so, the documented outcome
    of a lead that was too short (the round is released all the same)."""
    argv = [sys.executable, "-m", "pyprocsync", "sync", "point", "--nodes", "2"]
    argv += ["--run", run_id, "--timeout", "20", "--redis", server.url, *options]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    allowed = {ExitCode.OK} if suffix is not None else {ExitCode.OK, ExitCode.TOO_LATE}
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=40)
            assert proc.returncode in allowed, err
            assert proc.returncode == ExitCode.OK or "before this participant learned" in err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    outcome = stored_outcome(client, run_id, "point", 0)
    if suffix is not None:
        assert outcome.endswith(suffix), outcome
    else:
        assert int(outcome.split()[3]) >= 1000, outcome

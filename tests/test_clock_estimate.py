"""Reading the server's clock, on fake clocks, no Redis (issue 5): ``parse_time``, the
estimate's reuse and renewal, and the once-per-instance warning of system-clock mode.

The offset filter itself is tested in ``test_servertime.py``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from clock_support import CLOCK_LOGGER, MS, FakeRedis, FakeWorld, clock_records
from hypothesis import example, given
from hypothesis import strategies as st
from redis.exceptions import ConnectionError as RedisConnectionError

from pyprocsync import (
    ProtocolError,
)
from pyprocsync.core.ops import ServerTime
from pyprocsync.core.servertime import ClockState, parse_time
from pyprocsync.shells.blocking import drive

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
    """``ClockState.fresh``: the first call takes a burst of ``samples`` round trips;
    while the window is young a back-to-back pair renews the estimate once its newest
    sample is as old as the window spans (at least ``refresh / 8``: here at 0.125,
    0.25, 0.5, 1 and 2 s), so the rate is narrowed early; from then on, once it is
    twice ``refresh`` old. A call in between makes none: the estimate is carried
    forward, its bound growing by the drift allowance."""
    world.server_ahead(2_000_000_000)
    state = ClockState()
    assert state.estimate is None
    executor = FakeRedis(world)
    first = drive(state.fresh(1_000 * MS, 4), executor.execute)
    assert executor.kinds() == ["ServerTimex4"]
    assert state.round_trips == 4
    assert first.wall_offset_ns == pytest.approx(2_000_000_000, abs=5_000)

    world.advance(0.1)
    executor.ops.clear()
    carried = drive(state.fresh(1_000 * MS, 4), executor.execute)
    assert executor.ops == []
    assert carried.sample_age_ns >= 100 * MS
    assert carried.uncertainty_ns > first.uncertainty_ns  # the drift allowance grew

    renewals = []
    for _ in range(250):  # 5 s in steps of 20 ms
        world.advance(0.02)
        before = state.round_trips
        drive(state.fresh(1_000 * MS, 4), executor.execute)
        if state.round_trips > before:
            renewals.append(state.round_trips - before)
    assert renewals == [2] * 6  # at ~0.125, 0.25, 0.5, 1, 2 and 4 s
    renewed = state.estimate
    assert renewed is not None
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

"""Participants whose wall clocks really are skewed (issue 5), by +0.25 s and -0.1 s.

Through libfaketime (``LD_PRELOAD``, ``FAKETIME``, ``FAKETIME_DONT_FAKE_MONOTONIC=1``) where
it is installed, and always through an injected clock (``tests/clock_helper.py
--skew``). Their return instants are compared on the monotonic clock, which neither
mechanism touches and which all processes of the machine share. Durations asserted are
generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from clock_support import MECHANISMS, SKEW_AHEAD, SKEW_BEHIND, SkewedNode, SkewRunner
from support import (
    wait_until,
    waiting_members,
)

from pyprocsync.tools.server import EmbeddedServer


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


CLOCK_WARNING = "expect TooLateError"


#: Bound on how late a skewed participant returns by its own clock: generous for a loaded
#: machine, yet far below the 0.3-0.35 s a wrong clock would make it.
SKEW_LATE_BOUND = 0.1


def lag(record: dict[str, Any]) -> float:
    """How late the participant returned by its own wall clock, seconds: read on the
    line after the call, as the user's code would."""
    return float(record["returned_wall_ns"] / 1e9 - record["release_at"])


def own_instant(record: dict[str, Any]) -> float:
    """When the participant's own clock showed its ``release_at``, on the monotonic clock
    all participants share, seconds. Its monotonic reading after the return minus its
    :func:`lag` (read beside it): a scheduling stall after the return moves both readings
    alike, so what is left is where its clock put the instant."""
    return float(record["returned_mono_ns"] / 1e9 - lag(record))


@pytest.mark.timeout(60)
def test_skewed_clocks_server_mode_return_together(skewed: SkewRunner) -> None:
    """Two participants whose wall clocks are +0.25 s and -0.1 s off (0.35 s apart),
    ``clock="server"``, delay 0.05, three rounds: every round their clocks put the
    instant within 10 ms of each other on the shared monotonic clock, and each returns
    on time by its own clock; each reports its own offset
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
        assert abs(own_instant(a) - own_instant(b)) < 0.01, (a, b)
        assert a["clock_offset"] == pytest.approx(-SKEW_AHEAD, abs=0.005)
        assert b["clock_offset"] == pytest.approx(-SKEW_BEHIND, abs=0.005)
        if skewed.mechanism == "injected":  # an exact skew: the true offset is known
            for record, skew in ((a, SKEW_AHEAD), (b, SKEW_BEHIND)):
                error = abs(record["clock_offset"] + skew)
                assert error <= record["clock_uncertainty"] + 1e-6, record
        assert a["release_at"] - b["release_at"] == pytest.approx(0.35, abs=0.005)
        instants = [r["release_at"] + r["clock_offset"] for r in (a, b)]
        assert abs(instants[0] - instants[1]) < 0.001
        for record in (a, b):
            assert -0.001 <= lag(record) < SKEW_LATE_BOUND, record
            assert record["late_by"] < SKEW_LATE_BOUND, record
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
    by its own clock (``late_by`` ~0), but the one behind meets the instant 0.35 s later
    on the shared monotonic clock: the spread equals the clocks' disagreement. Both warned
    before arriving that their clocks are off the server's by more than the lead."""
    started = time.monotonic_ns()
    behind, ahead = start_in_order(skewed, client, "sys-a", SKEW_BEHIND, SKEW_AHEAD)
    check_skew_in_effect([behind, ahead], started)
    (b,), (a,) = behind.records, ahead.records
    assert a["ok"], a
    assert b["ok"], b
    assert a["release_at"] == b["release_at"]
    assert a["clock_offset"] is None
    spread = own_instant(b) - own_instant(a)
    assert spread == pytest.approx(SKEW_AHEAD - SKEW_BEHIND, abs=0.005)
    for record in (a, b):
        assert -0.001 <= lag(record) < SKEW_LATE_BOUND, record
        assert record["late_by"] < SKEW_LATE_BOUND, record
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

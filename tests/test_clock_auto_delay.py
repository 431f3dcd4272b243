"""``delay="auto"`` (issue 5): the setting, which classes take it, and the automatic lead
time against the real server (floor, spike and decay; server mode; a Barrier action).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import redis
from clock_support import stored_outcome
from support import (
    event_keys,
    in_threads,
)

import pyprocsync.asyncio as aio
from pyprocsync import (
    ArgumentTypeError,
    Barrier,
    Event,
    InvalidArgumentError,
    ProcSync,
)
from pyprocsync.core import params

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
    assert a._memory.reported_us() < 40_000  # what it really measured: far below
    a._memory.note_latency(50_000)
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
    """``delay="auto"`` also leads server-clock rounds (outcome ``R 0 <µs> 50000 s`` on a
    fresh point with ``auto_floor=0.05``) and Barrier rounds whose lead is chosen after
    the action (``RELEASE``): ``R 0 <µs> 50000``. The floor is far above any round trip
    of a loaded machine, so the lead is the floor."""
    node = make_sync("auto", clock="server", auto_floor=0.05)
    assert node.sync("srv", 1, 10).delay == pytest.approx(0.05)
    assert stored_outcome(client, run_id, "srv", 0).endswith(" 50000 s")
    barriers = [
        Barrier(
            client,
            "act",
            2,
            lambda: None,
            run_id=run_id,
            delay="auto",
            auto_floor=0.05,
            on_late="proceed",
        )
        for _ in range(2)
    ]
    try:
        outcomes = in_threads(*(lambda b=b: b.wait(20) for b in barriers), timeout=30)
        assert sorted(o.result() for o in outcomes) == [0, 1]
    finally:
        for barrier in barriers:
            barrier.close()
    kind, _, _, lead = stored_outcome(client, run_id, "act", 0).split()
    assert (kind, lead) == ("R", "50000")

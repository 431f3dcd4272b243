"""Helpers of the I/O-free flow tests (``from protocol_support import ...``).

A fake clock (the ``fake_clock`` fixture of ``conftest.py`` installs it), the server's
replies and pub/sub messages written by hand, and :class:`Stepper`, which drives a flow
one operation at a time.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

from support import make_settings as support_settings

from pyprocsync.core import params
from pyprocsync.core.keys import EventKeys
from pyprocsync.core.memory import EventMemory
from pyprocsync.core.ops import (
    CALL_TIMEOUT_FLOOR,
    AtInstant,
    Call,
    Listen,
    Prepare,
    Receive,
)
from pyprocsync.core.rounds import sync_flow
from pyprocsync.core.scripts import Script
from pyprocsync.core.servertime import ClockState

RUN, EVENT = "run", "step"


KEYS = EventKeys.of("pyprocsync", RUN, EVENT)


CHANNEL = KEYS.channel


T0_NS = 1_700_000_000_000_000_000  # fake wall clock at the start of each test


T0_US = T0_NS // 1000


def quiet_clocks() -> ClockState:
    """A clock state that skips the once-per-instance system-clock check (no TIME calls)."""
    return ClockState(check_system_clock=False)


class FakeClock:
    """Replaces :func:`pyprocsync.clock.monotonic` and :func:`~pyprocsync.clock.time_ns`.

    Time moves only when a test calls :meth:`advance`.
    """

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall_ns = T0_NS

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall_ns += round(seconds * 1e9)


def make_settings(**overrides: Any) -> params.Settings:
    return support_settings(**{"run_id": RUN, "delay": 0.0, "node_id": "node-a", **overrides})


def message(data: str | bytes, channel: str = CHANNEL, kind: str = "message") -> dict[str, Any]:
    """A pub/sub message as redis-py (bytes mode) returns it."""
    raw = data.encode() if isinstance(data, str) else data
    return {"type": kind, "pattern": None, "channel": channel.encode(), "data": raw}


def subscribed(channel: str = CHANNEL) -> dict[str, Any]:
    return {"type": "subscribe", "pattern": None, "channel": channel.encode(), "data": 1}


def released(gen: int, at_us: int, lead_us: int = 0) -> str:
    return f"R {gen} {at_us} {lead_us}"


def broken(gen: int, reason: str = "timeout", arrived: int = 1, expected: int = 2,
           missing: tuple[str, ...] = ()) -> str:  # fmt: skip
    return f"B {gen} {reason} {arrived} {expected} {json.dumps(list(missing))}"


class Stepper:
    """Drives a flow one operation at a time, the way a shell would. The flow's first
    operation, :class:`Prepare` (the scripts are loaded), is answered at once."""

    def __init__(self, flow: Generator[Any, Any, Any]) -> None:
        self.flow = flow
        self.op: Any = next(flow)
        assert isinstance(self.op, Prepare), self.op
        self.op = flow.send(None)
        self.result: Any = None
        self.done = False
        self._due: AtInstant[Any] | None = None

    def _advance(self, step: Any) -> Any:
        try:
            self.op = step()
        except StopIteration as stop:
            if isinstance(stop.value, AtInstant):  # the shell's last step: the wait
                self._due, self.op = stop.value, stop.value.wait
            else:
                self.done, self.result, self.op = True, stop.value, None
        return self.op

    def send(self, reply: Any) -> Any:
        if self._due is not None:
            self.done, self.result, self.op = True, self._due.finish(), None
            return None
        return self._advance(lambda: self.flow.send(reply))

    def throw(self, error: BaseException) -> Any:
        return self._advance(lambda: self.flow.throw(error))

    def expect_call(self, script: Script) -> tuple[Any, ...]:
        """Assert the pending operation runs ``script``; return its ARGV as the shell
        sends it (stamps filled in)."""
        assert isinstance(self.op, Call), self.op
        assert self.op.script is script, self.op.script
        assert self.op.keys == KEYS.all
        return self.op.command("sha")[3 + len(KEYS.all) :]

    def expect_listen(self, *, renew: bool = False) -> Listen:
        """Assert the pending operation subscribes to the event's channel, connecting
        within the flow's time left (at least the call floor; None without a timeout)."""
        assert isinstance(self.op, Listen), self.op
        assert (self.op.channel, self.op.renew) == (CHANNEL, renew)
        assert self.op.timeout is None or self.op.timeout >= CALL_TIMEOUT_FLOOR
        return self.op

    def expect_receive(self) -> Receive:
        assert isinstance(self.op, Receive), self.op
        return self.op


def start(settings: params.Settings | None = None, nodes: int = 2,
          timeout: float | None = None) -> Stepper:  # fmt: skip
    """A participant that subscribed (confirmation received) and is about to ARRIVE."""
    stepper = Stepper(
        sync_flow(
            settings or make_settings(), quiet_clocks(), EVENT, nodes, timeout, memory=EventMemory()
        )
    )
    stepper.expect_listen()
    stepper.send(True)
    stepper.expect_receive()
    stepper.send(subscribed())
    stepper.expect_call(Script.ARRIVE)
    return stepper


def waiting(fake: FakeClock, generation: int = 0, index: int = 0, **kwargs: Any) -> Stepper:
    """A participant that arrived (not last) and now waits for the announcement."""
    stepper = start(**kwargs)
    stepper.send([0, generation, index, b""])
    stepper.expect_receive()
    return stepper


def heartbeat_expires(stepper: Stepper, fake: FakeClock) -> None:
    """Let the pending Receive time out on the fake clock."""
    fake.advance(stepper.expect_receive().timeout or 0.0)
    stepper.send(None)

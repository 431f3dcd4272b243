"""Helpers of the clock-mode tests (``from clock_support import ...``).

A fake world whose clocks move only when something reads or sleeps (:class:`FakeWorld`)
and a fake server answering TIME and the scripts (:class:`FakeRedis`); participants whose
wall clock really is skewed (:class:`SkewRunner`, running ``tests/clock_helper.py``
through :class:`runner.Participants`), by libfaketime where it is installed and always
by an injected clock.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from runner import Node, Participants, arguments
from support import (
    event_keys,
)
from support import make_settings as support_settings

from pyprocsync import (
    clock,
)
from pyprocsync.core import params
from pyprocsync.core.keys import EventKeys
from pyprocsync.core.ops import AtInstant, Call, Listen, Prepare, Receive, ServerTime
from pyprocsync.core.scripts import Script
from pyprocsync.shells.blocking import drive

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
    The kernel says what ``kernel`` holds (a clock synchronised within 100 µs).
    """

    def __init__(self) -> None:
        self.mono = MONO0_NS
        self.wall_minus_mono = T0_NS - MONO0_NS
        self.server_minus_mono = self.wall_minus_mono
        self.steps: dict[int, int] = {}
        self.sleeps: list[float] = []
        self.kernel: clock.KernelClock | None = clock.KernelClock(True, 100_000, 50_000)

    def kernel_clock(self) -> clock.KernelClock | None:
        return self.kernel

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
            wait = due.wait
            self.ops.append(wait)
            clock.sleep_until_ns(
                wait.at_ns, wait.spin_ns, on_monotonic=wait.on_monotonic, between=due.watch
            )
            self.returned_mono = self.world.mono
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


def clock_records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == CLOCK_LOGGER and r.levelno == level]


# == 2. server-clock mode against the real server ================================================


def stored_outcome(client: redis.Redis, run_id: str, event: str, generation: int) -> str:
    raw = client.hget(event_keys(run_id, event).state, f"o{generation % 8}")
    assert raw is not None
    return raw.decode()


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


SKEW_AHEAD, SKEW_BEHIND = 0.25, -0.1

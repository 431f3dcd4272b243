"""The multi-host lab (``pyprocsync lab``, :mod:`pyprocsync.tools.lab`), and a quick
cell in it: simulated hosts with their own links and clocks, the truth on this
machine's clock (issue 22).

The quick cell runs two hosts through a LAN link each, with clocks 0.3 s apart and
drifting ±30 ppm, in both clock modes, a few dozen rounds: the semantics are checked
(no participation too late, every stated bound covers the true error, a spread far
below the lead), not the precision, which ``pyprocsync lab`` measures.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from pyprocsync import clock
from pyprocsync.tools import lab
from pyprocsync.tools.cli import main
from pyprocsync.tools.lab import Delay, Host, HostClock, Link, LinkEmulator, Scenario
from pyprocsync.tools.server import EmbeddedServer

pytestmark = pytest.mark.timeout(240)


# -- the simulated clocks ---------------------------------------------------------------------


def paired_readings() -> tuple[int, int, int]:
    """pyprocsync's wall and monotonic clocks and this machine's monotonic clock, read at
    one moment: the host's two readings between two of this machine's, the tightest of
    20 tries (a busy machine may deschedule the process between two readings), this
    machine's reading the middle of that pair."""
    tries = []
    for _ in range(20):
        before = time.monotonic_ns()
        wall, mono = clock.time_ns(), clock.monotonic_ns()
        after = time.monotonic_ns()
        tries.append((after - before, wall, mono, (before + after) // 2))
    _, wall, mono, real = min(tries)
    return wall, mono, real


def test_a_simulated_host_reads_its_own_clocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed, the host's clocks are what pyprocsync reads: the wall clock runs its
    offset ahead, both clocks gain its drift (1000 ppm: 50 µs over 50 ms), its wall
    clock is stepped once, and its kernel says what its model says."""
    for name in ("time_ns", "monotonic_ns", "monotonic", "kernel_clock"):
        monkeypatch.setattr(clock, name, getattr(clock, name))  # restored afterwards
    model = HostClock(offset_s=0.3, drift_ppm=1000, step_at_s=0.05, step_s=0.02, max_error_us=70)
    host = lab.SimulatedClocks(model)
    host.install()
    wall0, mono0, real0 = paired_readings()
    assert abs(wall0 - time.time_ns() - 300_000_000) < 1_000_000
    time.sleep(0.06)
    wall1, mono1, real1 = paired_readings()
    gained = (mono1 - mono0) - (real1 - real0)
    assert 0.0005 * (real1 - real0) <= gained <= 0.0015 * (real1 - real0)
    assert (wall1 - wall0) - (mono1 - mono0) == pytest.approx(20_000_000, abs=200_000)
    assert clock.kernel_clock() == clock.KernelClock(True, 70_000, 70_000)
    assert abs(host.last_real_ns - time.time_ns()) < 5_000_000


# -- the link emulator ---------------------------------------------------------------------------


def ping_rtt(port: int) -> float:
    """Seconds a PING takes through ``127.0.0.1:port``, after a first one on the
    connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        timings = []
        for _ in range(2):
            started = time.monotonic()
            sock.sendall(b"PING\r\n")
            assert sock.recv(64) == b"+PONG\r\n"
            timings.append(time.monotonic() - started)
    return timings[-1]


@pytest.fixture
def emulate(server: EmbeddedServer) -> Any:
    """``emulate(link)``: a :class:`LinkEmulator` to the session server, serving in a
    thread of this process; returns its port."""

    def start(link: Link) -> int:
        emulator = LinkEmulator((server.bind, server.port), link, seed=1)
        threading.Thread(target=emulator.serve, daemon=True).start()
        return emulator.port

    return start


def test_the_link_delays_each_direction(emulate: Any) -> None:
    """20 ms up and 30 ms down: a round trip takes at least 50 ms (and not much more)."""
    rtt = ping_rtt(emulate(Link(Delay(20_000), Delay(30_000))))
    assert 0.050 <= rtt < 0.5


def test_a_lost_chunk_arrives_a_retransmission_later(emulate: Any) -> None:
    """Every chunk lost (loss 1.0): each direction adds the retransmission timeout."""
    rtt = ping_rtt(emulate(Link(loss=1.0)))
    assert rtt >= 2 * lab.LOSS_RECOVERY_S


def test_a_dropped_link_resets_the_connections(server: EmbeddedServer) -> None:
    """``drop`` resets every open connection (the client sees it fail); new ones work."""
    emulator = LinkEmulator((server.bind, server.port), Link(), seed=1)
    threading.Thread(target=emulator.serve, daemon=True).start()
    with socket.create_connection(("127.0.0.1", emulator.port), timeout=10) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
        emulator.drop()
        try:
            reply = sock.recv(64)  # the reset, or the end of the stream
        except ConnectionResetError:
            reply = b""
        assert reply == b""
    assert ping_rtt(emulator.port) < 1.0


# -- the figures ---------------------------------------------------------------------------------


def released(
    truth_us: float, error_us: float, bound_us: float | None, **extra: Any
) -> dict[str, Any]:
    """A released participation, system-clock mode, instant at 1000 s (real time)."""
    late_by = 5e-6
    return {
        "outcome": "released",
        "truth_ns": 1_000_000_000_000 + truth_us * 1000,
        "release_at": 1000.0,
        "late_by": late_by,
        "clock_offset": None,
        "clock_uncertainty": None if bound_us is None else bound_us / 1e6,
        "reading_real_ns": 1_000_000_000_000 + (error_us + late_by * 1e6) * 1000,
        **extra,
    }


def test_figures_count_what_the_bounds_covered() -> None:
    """Per round the true spread of the callers' readings; each stated bound is held
    against the true error (real time of the library's reading, minus the instant,
    minus late_by); releases without a bound and steps are counted apart, too-late
    participations too, and a round someone did not pass has no spread."""
    host_a = [released(10, 3, 50), released(0, 80, 50), {"outcome": "too late", "truth_ns": 0}]
    host_b = [released(30, -20, None), released(5, 1, 50, clock_step=0.02), released(0, 0, 50)]
    figures = lab.figures([host_a, host_b], "system")
    assert figures["spread_us"]["max"] == pytest.approx(20)
    assert figures["spread_us"]["p50"] == pytest.approx(5)
    assert (figures["bounds"], figures["covered"], figures["unbounded"]) == (4, 3, 1)
    assert (figures["too_late"], figures["failed"], figures["steps"]) == (1, 0, 1)


# -- a quick cell ---------------------------------------------------------------------------------

QUICK = Scenario(
    "quick",
    "two LAN hosts, clocks 0.3 s apart and drifting ±30 ppm",
    (
        Host("a", Link(Delay(100, 20), Delay(100, 20)), HostClock(drift_ppm=-30)),
        Host("b", Link(Delay(100, 20), Delay(100, 20)), HostClock(offset_s=0.3, drift_ppm=30)),
    ),
)


@pytest.mark.slow
def test_a_quick_cell_in_server_clock_mode(server: EmbeddedServer) -> None:
    """Server-clock mode on the quick cell: every participation released, every stated
    bound covers the true error, and the hosts, 0.3 s apart on their own clocks, return
    within a few ms of each other on this machine's (generous: a loaded machine)."""
    figures = lab.run_block((server.bind, server.port), QUICK, "server", 25, 0.1)
    assert (figures["too_late"], figures["failed"]) == (0, 0)
    assert figures["bounds"] == 50
    assert figures["covered"] == 50
    assert figures["spread_us"]["p50"] < 5_000


@pytest.mark.slow
def test_a_quick_cell_in_system_clock_mode(server: EmbeddedServer) -> None:
    """System-clock mode on the same cell: the instant is on the last arriver's clock,
    0.3 s off the other's, so in every round one host learns of it too late (or
    returns 0.3 s early): what the lab is there to show."""
    figures = lab.run_block((server.bind, server.port), QUICK, "system", 10, 0.1)
    assert figures["failed"] == 0
    assert figures["too_late"] >= 5


@pytest.mark.slow
def test_the_lab_writes_the_report_of_each_block(tmp_path: Any) -> None:
    """``pyprocsync lab --report DIR`` writes, per scenario and mode, the report of its
    first block (read from the record before it expires) as text and page: every host
    recorded every round, the first ("start") included."""
    hosts = len(lab.SCENARIOS["lan-synced"].hosts)
    block = ["--scenarios", "lan-synced", "--modes", "server", "--rounds", "5", "--repeat", "1"]
    code = main(["lab", *block, "--quiet", "--report", str(tmp_path / "out")])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "lan-synced-server.html",
        "lan-synced-server.txt",
    ]
    text = (tmp_path / "out" / "lan-synced-server.txt").read_text()
    assert text.splitlines()[0].endswith(f": {6 * hosts} record entries, 6 events")
    assert "\nall events: 6 rounds, 6 released, 0 failed (" in text
    page = (tmp_path / "out" / "lan-synced-server.html").read_text()
    assert page.count("<svg ") == 2

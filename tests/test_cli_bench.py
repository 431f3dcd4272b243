"""``pyprocsync bench``: its figures, patterns, table and plot, and its cleanup.

The command runs for real (JSON and quiet output, fresh processes, an embedded server
that must not outlive it, Ctrl-C); the figures it computes (``_figures``, the warm-up,
``format_table``, the statistics) are checked in-process. The durations asserted are
generous semantic bounds, never speed measurements.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cli_support import UNREACHABLE, Background, run
from support import (
    assert_one_line_error,
    command_line,
    ignores_sigint,
    process_group,
    server_pids,
    wait_gone,
    wait_until,
)

from pyprocsync import TooLateError
from pyprocsync.tools.bench import BenchConfig, _figures, _NodeRecord, _warm_up, format_table
from pyprocsync.tools.cli import ExitCode
from pyprocsync.tools.server import EmbeddedServer
from pyprocsync.tools.stats import percentile, summary

# -- bench ----------------------------------------------------------------------------------

PERCENTILES = {"p50", "p90", "p99", "max"}


def check_figures(figures: dict[str, Any], nodes: int, rounds: int, delay: float) -> None:
    """The ``--json`` figures: the keys issue 3 requires, and sane values."""
    assert {"nodes", "rounds", "delay", "think", "server", "sync", "limit"} <= set(figures)
    assert "raw" not in figures
    assert (figures["nodes"], figures["rounds"]) == (nodes, rounds)
    assert figures["delay"] == pytest.approx(delay)
    assert figures["think"] == pytest.approx(0.002)
    assert isinstance(figures["server"], str)
    assert figures["server"]
    sync, limit = figures["sync"], figures["limit"]
    assert {"spread_us", "late_us", "barriers_per_s", "too_late", "errors"} <= set(sync)
    assert {"spread_us", "late_us"} <= set(limit)
    for part in (sync, limit):
        for name in ("spread_us", "late_us"):
            values = part[name]
            assert set(values) == PERCENTILES
            assert all(math.isfinite(v) for v in values.values()), values
            assert values["p50"] <= values["p90"] <= values["p99"] <= values["max"]
        assert part["spread_us"]["p50"] >= 0
    assert sync["errors"] == 0
    assert sync.get("completed_rounds", rounds) == rounds
    assert sync["barriers_per_s"] > 0
    assert isinstance(sync["too_late"], int)
    assert 0 <= sync["too_late"] <= nodes * rounds


@pytest.mark.timeout(90)
def test_bench_json_and_quiet(server: EmbeddedServer, tmp_path: Path) -> None:
    """``bench --redis URL --nodes 2 --rounds 20 --json FILE --quiet`` exits 0, prints
    nothing, and writes the figures with the required keys for all 20 rounds."""
    out = tmp_path / "bench.json"
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--rounds", "20", "--delay", "0.005",
        "--json", str(out), "--quiet", timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    figures = json.loads(out.read_text())
    check_figures(figures, 2, 20, 0.005)
    assert "127.0.0.1" in figures["server"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ([], {"names": "distinct", "threads": 1, "asyncio": False, "fresh": 0, "exec": False}),
        (
            ["--names", "same"],
            {"names": "same", "threads": 1, "asyncio": False, "fresh": 0, "exec": False},
        ),
        (
            ["--threads", "3"],
            {"names": "distinct", "threads": 3, "asyncio": False, "fresh": 0, "exec": False},
        ),
        (
            ["--asyncio", "--threads", "2"],
            {"names": "distinct", "threads": 2, "asyncio": True, "fresh": 0, "exec": False},
        ),
    ],
    ids=["distinct", "same", "threads", "asyncio"],
)
def test_bench_patterns(
    server: EmbeddedServer, tmp_path: Path, options: list[str], pattern: dict[str, Any]
) -> None:
    """Each pattern runs every participant through every round and records itself in the
    JSON; the library's ``late_by`` is reported beside the caller's own reading, and the
    caller reads after ``late_by`` was taken (the gap is never negative)."""
    out = tmp_path / "bench.json"
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--rounds", "12", "--delay", "0.02",
        "--json", str(out), "--quiet", *options, timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    check_figures(figures, 2, 12, 0.02)
    participants = 2 * pattern["threads"]
    assert figures["pattern"] == {**pattern, "participants": participants}
    sync = figures["sync"]
    assert sync["gap_us"]["p50"] >= 0
    assert sync["reported_late_us"]["p50"] <= sync["late_us"]["p50"]


@pytest.mark.timeout(120)
def test_bench_fresh_processes(server: EmbeddedServer, tmp_path: Path) -> None:
    """``--fresh 2``: two starts of two new processes, one first sync each; the figures
    cover both starts and count the starts within 200 µs; ``--fresh`` with threads is a
    usage error."""
    out = tmp_path / "bench.json"
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--fresh", "2", "--delay", "0.05",
        "--json", str(out), timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 starts of fresh processes" in done.stdout
    figures = json.loads(out.read_text())
    assert figures["pattern"]["fresh"] == 2
    assert figures["sync"]["completed_rounds"] == 2
    assert 0 <= figures["sync"]["spread_within_200us"] <= 2
    refused = run("bench", "--redis", server.url, "--fresh", "2", "--threads", "2")
    assert refused.returncode == ExitCode.USAGE
    assert_one_line_error(refused.stderr, "--fresh")


@pytest.mark.timeout(120)
def test_bench_exec(server: EmbeddedServer, tmp_path: Path) -> None:
    """``--exec``: rounds of new ``pyprocsync sync ... -- date +%s%N`` processes; every
    round completes, each ``date`` starts after the agreed instant (sync and limit
    alike), the table says what was read; ``--exec`` with threads is a usage error."""
    out = tmp_path / "bench.json"
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--rounds", "3", "--exec",
        "--delay", "0.3", "--json", str(out), timeout=100,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "every figure is the command's own first reading" in done.stdout
    assert "late_by" not in done.stdout
    figures = json.loads(out.read_text())
    assert figures["pattern"]["exec"] is True
    assert figures["sync"]["completed_rounds"] == 3
    assert figures["sync"]["errors"] == 0
    for phase in ("sync", "limit"):
        late = figures[phase]["late_us"]
        assert 0 < late["p50"] <= late["max"] < 1_000_000, figures
        assert 0 <= figures[phase]["spread_us"]["p50"] <= late["max"], figures
    refused = run("bench", "--redis", server.url, "--exec", "--asyncio")
    assert refused.returncode == ExitCode.USAGE
    assert_one_line_error(refused.stderr, "--exec")
    refused = run("bench", "--redis", server.url, "--exec", "--fresh", "2")
    assert refused.returncode == ExitCode.USAGE


@pytest.mark.timeout(90)
def test_bench_prints_the_table(server: EmbeddedServer) -> None:
    """Without ``--quiet``, ``bench`` prints the table: both measurements, both phases,
    and the count of completed rounds."""
    done = run(
        "bench", "--redis", server.url, "--nodes", "2", "--rounds", "5", "--delay", "0.005",
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = done.stdout
    assert table.startswith("pyprocsync bench: 2 nodes x 5 rounds, delay 0.005 s")
    for text in ("spread of return instants", "lateness", "limit (no Redis)", "sync / limit"):
        assert text in table
    assert "rounds completed: 5/5" in table
    assert "errors: 0" in table


def check_nothing_left(group: int, servers_before: set[int]) -> None:
    """No process of the command's group is alive, nor any server started meanwhile."""
    assert not wait_gone(process_group(group)), [command_line(p) for p in process_group(group)]
    assert not wait_gone(server_pids() - servers_before), "a server process was left running"


@pytest.mark.timeout(90)
def test_bench_with_embedded_server_leaves_nothing_running(
    background: Callable[..., Background],
) -> None:
    """``bench`` without ``--redis`` and without ``$PYPROCSYNC_REDIS_URL`` starts a
    private server, exits 0 and leaves no server nor worker process behind."""
    servers_before = server_pids()
    command = background("bench", "--nodes", "2", "--rounds", "10", session=True)
    assert command.wait(60) == 0, command.stderr
    assert "(embedded)" in command.stdout
    assert "rounds completed: 10/10" in command.stdout
    check_nothing_left(command.pid, servers_before)


@pytest.mark.timeout(90)
def test_bench_ctrl_c_exits_130_and_leaves_nothing_running(
    background: Callable[..., Background],
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a long
    bench with an embedded server exits 130 without a traceback, and no worker or server
    process remains."""
    servers_before = server_pids()
    command = background("bench", "--nodes", "2", "--rounds", "5000", session=True)
    workers: list[int] = []

    def running() -> bool:
        # Workers ignore SIGINT once they run the benchmark (the parent decides).
        group = process_group(command.pid)
        workers[:] = [p for p in group if "spawn_main" in command_line(p) and ignores_sigint(p)]
        return (len(workers) >= 2 and bool(group & server_pids())) or command.poll() is not None

    wait_until(running, 30, "the benchmark workers and server")
    assert command.poll() is None, command.stderr
    time.sleep(0.3)  # let the bench run some rounds before the Ctrl-C
    os.killpg(command.pid, signal.SIGINT)
    assert command.wait(30) == ExitCode.INTERRUPTED, command.stderr
    assert "Traceback" not in command.stderr
    assert "pyprocsync: interrupted" in command.stderr
    check_nothing_left(command.pid, servers_before)


@pytest.mark.timeout(90)
def test_bench_plot(server: EmbeddedServer, tmp_path: Path) -> None:
    """``bench --plot FILE.png``: without matplotlib, exit 2 at once with one line naming
    matplotlib and how to install it (nothing written); with it, a non-empty PNG."""
    png = tmp_path / "bench.png"
    args = ["bench", "--redis", server.url, "--nodes", "2", "--rounds", "5", "--plot", str(png)]
    done = run(*args, "--quiet", timeout=60)
    if importlib.util.find_spec("matplotlib") is None:
        assert done.returncode == ExitCode.USAGE, done.stderr
        assert_one_line_error(done.stderr, "matplotlib", "pip install -e '.[plot]'")
        assert not png.exists()
    else:
        assert done.returncode == 0, done.stderr
        assert png.read_bytes().startswith(b"\x89PNG")
        assert png.stat().st_size > 1000


@pytest.mark.timeout(60)
def test_bench_unreachable_server_exits_6() -> None:
    """``bench --redis URL`` with nothing listening exits 6 with one line, before it
    starts any worker."""
    done = run("bench", "--redis", UNREACHABLE, "--nodes", "2", "--rounds", "5")
    assert done.returncode == ExitCode.CONNECTION, done.stderr
    assert_one_line_error(done.stderr, UNREACHABLE, "--redis")


def bench_record(rank: int, limit: list[float], sync: list[float], *errors: str) -> _NodeRecord:
    return _NodeRecord(rank, limit, sync, [1e6 + 10_000 * i for i in range(len(sync))], [*errors])


def test_bench_figures_of_a_worker_that_failed_in_the_warm_up() -> None:
    """A worker that failed before measuring anything (its warm-up raised) leaves the
    figures empty (NaN) and its error reported; nothing raises and the table renders."""
    config = BenchConfig(url="redis://unused", nodes=2, rounds=3)
    records = [bench_record(0, [1.0, 2.0, 3.0], []), bench_record(1, [], [], "TimeOutError: x")]
    figures = _figures(config, records)
    sync, limit = figures["sync"], figures["limit"]
    assert (sync["errors"], sync["completed_rounds"], sync["error_messages"]) == (
        1,
        0,
        ["TimeOutError: x"],
    )
    assert all(math.isnan(v) for v in [*sync["spread_us"].values(), *limit["spread_us"].values()])
    assert "nan" in format_table({**figures, "server": "s"})


def test_bench_figures_cover_the_rounds_every_worker_completed() -> None:
    """When one worker stopped after two rounds of each phase, spreads and lateness are
    computed over those two rounds, pairing each round with the same round."""
    config = BenchConfig(url="redis://unused", nodes=2, rounds=3)
    records = [
        bench_record(0, [1.0, 2.0, 50.0], [1.0, 4.0, 50.0]),
        bench_record(1, [3.0, 2.5], [2.0, 1.0], "round 2: TimeOutError: y"),
    ]
    figures = _figures(config, records)
    assert figures["raw"]["limit_spread_us"] == [2.0, 0.5]
    assert figures["raw"]["sync_spread_us"] == [1.0, 3.0]
    assert sorted(figures["raw"]["sync_late_us"]) == [1.0, 1.0, 2.0, 4.0]
    assert (figures["sync"]["completed_rounds"], figures["sync"]["errors"]) == (2, 1)


class WarmUpTooLate:
    """A node whose warm-up round is learned too late."""

    def __init__(self, release_at: float | None) -> None:
        self.release_at = release_at

    def sync(self, *_args: object) -> None:
        raise TooLateError("late", late_by=0.5, release_at=self.release_at)


def test_bench_warm_up_learned_too_late_still_gives_the_instant() -> None:
    """The warm-up only agrees on an instant to count the limit phase from: learned too
    late it serves all the same (every worker has it); without one it raises."""
    config = BenchConfig(url="redis://unused")
    assert _warm_up(WarmUpTooLate(1234.5), config) == 1234.5  # type: ignore[arg-type]
    with pytest.raises(TooLateError):
        _warm_up(WarmUpTooLate(None), config)  # type: ignore[arg-type]


# -- format_table and statistics --------------------------------------------------------------


def figures_for_table() -> dict[str, Any]:
    quartet = {"p50": 1.0, "p90": 2.0, "p99": 3.0, "max": 4.0}
    return {
        "nodes": 2,
        "rounds": 3,
        "delay": 0.01,
        "think": 0.002,
        "server": "valkey 8.1 (embedded)",
        "sync": {
            "spread_us": quartet,
            "late_us": {"p50": 10.0, "p90": 20.0, "p99": 30.0, "max": 40.0},
            "barriers_per_s": 123.4,
            "too_late": 1,
            "late_over_1ms": 5,
            "errors": 1,
            "completed_rounds": 2,
            "error_messages": ["round 2: TimeOutError: gave up"],
        },
        "limit": {
            "spread_us": {"p50": 0.5, "p90": 1.0, "p99": 0.0, "max": 8.0},
            "late_us": quartet,
        },
    }


def test_format_table() -> None:
    """``format_table`` shows the configuration, each phase's percentiles with one
    decimal, sync/limit ratios ("-" where the limit is 0), the totals and the errors."""
    lines = format_table(figures_for_table()).splitlines()
    assert lines[0] == (
        "pyprocsync bench: 2 nodes x 3 rounds, delay 0.01 s, think 0.002 s, "
        "server valkey 8.1 (embedded)"
    )
    rows = {}
    for line in lines:
        parts = line.rsplit(maxsplit=4)
        if len(parts) == 5 and parts[0].strip() in ("sync", "limit (no Redis)", "sync / limit"):
            rows.setdefault(parts[0].strip(), []).append(parts[1:])
    assert rows["sync"] == [["1.0", "2.0", "3.0", "4.0"], ["10.0", "20.0", "30.0", "40.0"]]
    assert rows["limit (no Redis)"] == [["0.5", "1.0", "0.0", "8.0"], ["1.0", "2.0", "3.0", "4.0"]]
    assert rows["sync / limit"] == [["2.00", "2.00", "-", "0.50"], ["10.00"] * 4]
    assert lines[-2] == (
        "barriers/s: 123   too late (TooLateError): 1   returned > 1 ms late: 5   "
        "errors: 1   rounds completed: 2/3"
    )
    assert lines[-1] == "  error: round 2: TimeOutError: gave up"


def test_percentile_nearest_rank() -> None:
    """``percentile`` takes the nearest rank, ceil(p/100 * n), of sorted data: never an
    interpolated value; p=0 is the first, p=100 the last."""
    data = list(range(1, 11))
    assert [percentile(data, p) for p in (0, 10, 50, 51, 90, 99, 100)] == [1, 1, 5, 6, 9, 10, 10]
    quarter = [10.0, 20.0, 30.0, 40.0]
    assert [percentile(quarter, p) for p in (25, 26, 50, 75, 76)] == [10.0, 20.0, 20.0, 30.0, 40.0]
    assert percentile([7.5], 99) == 7.5
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_summary() -> None:
    """``summary`` sorts any iterable and gives exactly p50/p90/p99/max by nearest rank;
    no values give NaN for each."""
    assert summary(float(v) for v in range(100, 0, -1)) == {
        "p50": 50.0,
        "p90": 90.0,
        "p99": 99.0,
        "max": 100.0,
    }
    assert summary([5, 1, 4, 2, 3]) == {"p50": 3, "p90": 5, "p99": 5, "max": 5}
    empty = summary([])
    assert set(empty) == PERCENTILES
    assert all(math.isnan(v) for v in empty.values())

"""The clock options of the command line (issue 5): ``pyprocsync clock`` (offset, round
trips, ``--max-offset`` on a skewed host), ``bench --delay auto`` / ``--clock server`` and
``sync --clock server`` / ``--delay auto``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from clock_support import MECHANISMS, SKEW_AHEAD, SkewRunner, stored_outcome
from support import (
    assert_one_line_error,
    run_command,
)

from pyprocsync.tools.cli import URL_ENV, ExitCode
from pyprocsync.tools.cli import main as cli_main
from pyprocsync.tools.server import EmbeddedServer

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

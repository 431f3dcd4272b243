"""``pyprocsync bench --exec``: when the COMMAND of ``pyprocsync sync ... -- COMMAND``
starts, beside what process creation allows.

Each round starts ``nodes`` new processes at once:

* **sync**: ``pyprocsync sync NAME --nodes N ... -- date +%s%N``: each becomes ``date``
  at the agreed instant, which prints its wall clock as its first action. The instant
  is read from the outcome the round stored in Redis.
* **limit**: the same number of processes running the minimal interpreter that
  ``pyprocsync sync`` hands off to (``python -I -S`` with
  :mod:`pyprocsync.tools.handoff`), each waiting for an instant agreed in advance and
  then exec'ing the same ``date``: process creation, the exec and the dynamic loader
  with no Redis and no pyprocsync in the way. The instant is agreed ``delay`` ahead
  (at least :data:`MIN_LEAD_S`).

Per round, *spread* is the latest minus the earliest ``date`` reading, *late* each
reading minus the instant, as :func:`pyprocsync.tools.bench.run_bench` reports them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import redis

from pyprocsync.core.keys import EventKeys
from pyprocsync.core.wire import Released, parse_outcome, text
from pyprocsync.tools import handoff

__all__ = ["MIN_LEAD_S", "STAMP", "ExecBenchError", "released_at_ns", "run_exec_bench"]

#: The COMMAND: prints its wall clock, ns since the epoch, as its first action.
STAMP = ("date", "+%s%N")

#: The least lead of the limit phase's instants, seconds: the interpreters start in
#: tens of milliseconds. Otherwise the lead is the sync phase's ``delay``: a longer
#: sleep before the instant makes the exec after it slower (colder caches; on the
#: project's VM 2.7 ms after 0.5 s against 2.0 ms after 0.2 s).
MIN_LEAD_S = 0.1

#: Longest a round's processes may take, seconds.
_ROUND_TIMEOUT_S = 120.0


class ExecBenchError(Exception):
    """A round's process failed; the message says which and why."""


def _stamp() -> list[str]:
    found = shutil.which(STAMP[0])
    if found is None:
        raise ExecBenchError(f"{STAMP[0]} is not on PATH: the exec benchmark runs it")
    return [found, *STAMP[1:]]


def _readings(argvs: list[list[str]]) -> list[int]:
    """Start a process per command line at once; the first number each prints."""
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    readings = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=_ROUND_TIMEOUT_S)
            if process.returncode != 0 or not out.split():
                raise ExecBenchError(
                    f"{argvs[0][0]} exited {process.returncode}: {err.strip()[-300:]}"
                )
            readings.append(int(out.split()[0]))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return readings


def released_at_ns(client: redis.Redis, run_id: str, name: str) -> int:
    """The release instant of the first round of ``name`` (epoch ns), as stored;
    :class:`ExecBenchError` when that round was not released."""
    stored = client.hget(EventKeys.of("pyprocsync", run_id, name).state, "o0")
    outcome = None if stored is None else parse_outcome(text(stored))
    if not isinstance(outcome, Released):
        raise ExecBenchError(f"round {name!r} was not released: {stored!r}")
    return outcome.at_us * 1000


def run_exec_bench(
    url: str, *, nodes: int, rounds: int, delay: float | str, spin: float, run_id: str
) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Run ``rounds`` rounds of each phase, taking turns; return the readings minus
    the instant, µs, per round, and the sync rounds' instants, µs since the epoch:
    ``(sync, limit, instants)``."""
    stamp = _stamp()
    sync_rounds: list[list[float]] = []
    limit_rounds: list[list[float]] = []
    instants: list[float] = []
    spin_ns = round(spin * 1e9)
    lead_ns = round(max(MIN_LEAD_S, delay if isinstance(delay, (int, float)) else 0.0) * 1e9)
    with redis.Redis.from_url(url, socket_timeout=10) as client:
        for number in range(rounds):
            name = f"exec{number}"
            sync = [sys.executable, "-m", "pyprocsync", "sync", name, "--nodes", str(nodes)]
            sync += ["--run", run_id, "--delay", str(delay), "--timeout", "60"]
            sync += ["--redis", url, "--", *stamp]
            readings = _readings([sync] * nodes)
            at_ns = released_at_ns(client, run_id, name)
            sync_rounds.append([(r - at_ns) / 1e3 for r in readings])
            instants.append(at_ns / 1e3)
            target_ns = time.time_ns() + lead_ns
            limit = handoff.handoff_argv(target_ns, spin_ns, False, stamp[0], stamp)
            if limit is None:
                raise ExecBenchError("no interpreter to run the hand-off with")
            readings = _readings([limit] * nodes)
            limit_rounds.append([(r - target_ns) / 1e3 for r in readings])
    return sync_rounds, limit_rounds, instants

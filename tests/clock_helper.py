"""A participant whose wall clock is skewed, for the clock tests: ``python tests/clock_helper.py``.

The skew comes from outside (libfaketime: ``LD_PRELOAD``, ``FAKETIME``,
``FAKETIME_DONT_FAKE_MONOTONIC=1``) or from ``--skew SECONDS``, which replaces
:func:`pyprocsync.clock.time_ns` (the only wall-clock reading pyprocsync makes) by the
real wall clock plus the skew before anything runs. Either way the monotonic clock is
the real one, shared by every process of the machine, so the test compares the
participants' return instants on it.

``MODE`` is one of:

* ``sync``: open a :class:`~pyprocsync.ProcSync` on ``--url`` and call ``sync``
  ``--rounds`` times. The first line on stdout is a probe, ``{"probe": true,
  "wall_minus_mono_ns": ..., "mono_ns": ...}``: this process's wall clock (as
  pyprocsync reads it) minus its monotonic clock, so the test can check the skew is in
  effect. Then one JSON line per round: ``{"round": i, "ok": true, <SyncResult fields>,
  "returned_mono_ns": ..., "returned_wall_ns": ...}`` (``CLOCK_MONOTONIC`` and the
  skewed wall clock right after ``sync`` returned), or on an exception ``ok: false``
  with its class and attributes as ``participant.py`` writes them; the helper then
  stops with exit status 0, so that the test judges the outcome.
* ``cli``: run ``pyprocsync ARGS...`` (everything after ``--``) in this process, with
  the skew applied, and exit with its status.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any

from participant import error_record

from pyprocsync import clock
from pyprocsync.shells.blocking import ProcSync
from pyprocsync.tools.cli import main as cli_main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("sync", "cli"))
    parser.add_argument("--skew", type=float, default=0.0, help="seconds added to time_ns")
    parser.add_argument("--url")
    parser.add_argument("--run-id")
    parser.add_argument("--event")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--delay", default="0.05", help="seconds, or 'auto'")
    parser.add_argument("--clock", choices=("system", "server"), default="system")
    parser.add_argument("--on-late", choices=("raise", "proceed"), default="raise")
    parser.add_argument("--node-id", default=None)
    return parser.parse_args(argv)


def inject_skew(seconds: float) -> None:
    """Make pyprocsync read the wall clock ``seconds`` off (the injected-clock mechanism)."""
    if seconds:
        skew_ns = round(seconds * 1e9)
        real_time_ns = time.time_ns
        clock.time_ns = lambda: real_time_ns() + skew_ns  # type: ignore[assignment]


def monotonic_ns() -> int:
    """The real monotonic clock (libfaketime leaves it alone with DONT_FAKE_MONOTONIC)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def probe() -> dict[str, Any]:
    """This process's wall clock minus its monotonic clock, median of a few reads."""
    diffs = []
    for _ in range(9):
        before = monotonic_ns()
        wall = clock.time_ns()
        after = monotonic_ns()
        diffs.append(wall - (before + after) // 2)
    return {"probe": True, "wall_minus_mono_ns": statistics.median(diffs), "mono_ns": before}


def run_sync(args: argparse.Namespace) -> None:
    delay: Any = "auto" if args.delay == "auto" else float(args.delay)
    options: dict[str, Any] = {"on_late": args.on_late, "clock": args.clock}
    if args.node_id is not None:
        options["node_id"] = args.node_id
    print(json.dumps(probe()), flush=True)
    with ProcSync.from_url(args.url, args.run_id, delay, **options) as node:
        for number in range(args.rounds):
            try:
                result = node.sync(args.event, args.nodes, args.timeout)
            except BaseException as exc:
                record = error_record(exc)
                record.update(
                    round=number, returned_mono_ns=monotonic_ns(), returned_wall_ns=clock.time_ns()
                )
                print(json.dumps(record), flush=True)
                return
            record = {"ok": True, **dataclasses.asdict(result)}
            record.update(
                round=number, returned_mono_ns=monotonic_ns(), returned_wall_ns=clock.time_ns()
            )
            print(json.dumps(record), flush=True)


def main(argv: list[str]) -> int:
    rest: list[str] = []
    if "--" in argv:
        argv, rest = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    args = parse_args(argv)
    inject_skew(args.skew)
    if args.mode == "cli":
        return cli_main(rest)
    run_sync(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The participant patterns users have, each beside its limit reference: the figures
of the documentation's pattern table (``docs/results/patterns.json``).

Every pattern is one ``pyprocsync bench`` command (printed in the table), run
``--repeat`` times against one embedded server; the results file keeps each run's
figures (``bench --json``) and the table shows their medians:

one-per-process
    2 processes, one participant each, a new name per point, delay 50 ms.
threads
    4 threads of one process sharing one instance, one name, back to back, delay 5 ms.
threads-4x64
    64 threads in each of 4 processes, delay 50 ms, each idling 2 ms after a release
    (bench's default ``--think``): the threads released first start their next arrival
    while others of the round still wait for a core.
threads-4x64-idle
    the same, each idling 30 ms after a release: the round's wake-up alone.
tasks
    4 asyncio tasks of one loop sharing one instance, delay 20 ms.
tasks-2x16
    16 tasks in each of 2 processes, delay 20 ms.
exec
    ``pyprocsync sync ... -- date +%s%N`` in 2 new processes per round, delay 0.2 s.
auto
    4 processes back to back with ``--delay auto``, 3,000 rounds.

Example::

    python perf_tests/patterns.py --repeat 3 --json docs/results/patterns.json
"""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from _common import (
    bench_json,
    count_arg,
    machine,
    machine_line,
    median,
    ratio,
    redis_server,
    run,
    write_json,
)

PROG = "patterns"

#: Each pattern: its ``pyprocsync bench`` options (the server and ``--json`` added).
PATTERNS: dict[str, list[str]] = {
    "one-per-process": ["--nodes", "2", "--rounds", "300", "--delay", "0.05"],
    "threads": [
        "--nodes", "1", "--threads", "4", "--names", "same", "--think", "0",
        "--rounds", "1000", "--delay", "0.005",
    ],
    "threads-4x64": ["--nodes", "4", "--threads", "64", "--rounds", "20", "--delay", "0.05"],
    "threads-4x64-idle": [
        "--nodes", "4", "--threads", "64", "--rounds", "20", "--delay", "0.05", "--think", "0.03",
    ],
    "tasks": ["--nodes", "1", "--threads", "4", "--asyncio", "--rounds", "200", "--delay", "0.02"],
    "tasks-2x16": [
        "--nodes", "2", "--threads", "16", "--asyncio", "--rounds", "200", "--delay", "0.02",
    ],
    "exec": ["--nodes", "2", "--exec", "--rounds", "20", "--delay", "0.2"],
    "auto": ["--nodes", "4", "--rounds", "3000", "--think", "0", "--delay", "auto"],
}  # fmt: skip


def _main() -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", metavar="URL", help="server to use (default: embedded)")
    parser.add_argument("--repeat", type=count_arg, default=3, help="runs per pattern")
    parser.add_argument(
        "--patterns", nargs="+", choices=list(PATTERNS), default=list(PATTERNS), metavar="P"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results file")
    args = parser.parse_args()
    info = machine()
    print(machine_line(info), flush=True)
    results: dict[str, Any] = {}
    with redis_server(args.redis) as (url, _embedded):
        for name in args.patterns:
            runs = [bench_json(url, PATTERNS[name]) for _ in range(args.repeat)]
            results[name] = {"command": "pyprocsync bench " + " ".join(PATTERNS[name])}
            results[name]["runs"] = runs
            spread = [
                ratio(r["sync"]["spread_us"]["p50"], r["limit"]["spread_us"]["p50"]) for r in runs
            ]
            print(f"{name}: sync/limit spread p50 median {median(spread):.2f}", flush=True)
    if args.json:
        write_json(
            args.json,
            {
                "command": f"python perf_tests/patterns.py --repeat {args.repeat}",
                "measured": datetime.date.today().isoformat(),
                "machine": f"{info['cores']} cores ({info['cpu']}), Python {info['python']}, "
                f"pyprocsync {info['pyprocsync']}",
                "repeat": args.repeat,
                "results": results,
            },
        )
    return 0


if __name__ == "__main__":
    run(PROG, _main)

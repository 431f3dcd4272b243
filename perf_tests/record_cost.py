"""What the run's record costs: ``pyprocsync bench`` with the record on and off, taking
turns, against one server; writes ``docs/results/record.json``.

Each pair runs ``pyprocsync bench --nodes 4 --rounds 1000 --think 0 --delay 0.005``
(back to back: the throughput the record could cost most) once with the record on
(the default) and once with ``--no-record``; the order alternates from pair to pair.
The table shows, per setting, the medians across ``--repeat`` pairs of the rounds per
second and of the caller's lateness (p50, p99), and the ratio on / off.

Example::

    python perf_tests/record_cost.py --repeat 5 --json docs/results/record.json
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

PROG = "record_cost"

#: The bench options of every run (``--no-record`` added for the runs without).
OPTIONS = ["--nodes", "4", "--rounds", "1000", "--think", "0", "--delay", "0.005"]

#: The figures compared: (label, how to read one from a run's figures).
FIGURES = {
    "rounds_per_s": lambda f: f["sync"]["barriers_per_s"],
    "late_p50_us": lambda f: f["sync"]["late_us"]["p50"],
    "late_p99_us": lambda f: f["sync"]["late_us"]["p99"],
    "too_late": lambda f: f["sync"]["too_late"],
}


def _main() -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis", metavar="URL", help="server to use (default: embedded)")
    parser.add_argument("--repeat", type=count_arg, default=5, help="pairs of runs")
    parser.add_argument("--json", metavar="FILE", help="write the results file")
    args = parser.parse_args()
    info = machine()
    print(machine_line(info), flush=True)
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    with redis_server(args.redis) as (url, _embedded):
        for pair in range(args.repeat):
            order = ("on", "off") if pair % 2 == 0 else ("off", "on")
            for setting in order:
                extra = [] if setting == "on" else ["--no-record"]
                runs[setting].append(bench_json(url, OPTIONS + extra))
    medians = {
        setting: {name: median(read(f) for f in figures) for name, read in FIGURES.items()}
        for setting, figures in runs.items()
    }
    ratios = {name: ratio(medians["on"][name], medians["off"][name]) for name in FIGURES}
    for name in FIGURES:
        print(
            f"{name:<14} on {medians['on'][name]:>10.1f}  off {medians['off'][name]:>10.1f}"
            f"  on/off {ratios[name]:.3f}"
        )
    if args.json:
        write_json(
            args.json,
            {
                "command": f"python perf_tests/record_cost.py --repeat {args.repeat}",
                "bench": "pyprocsync bench " + " ".join(OPTIONS),
                "measured": datetime.date.today().isoformat(),
                "machine": f"{info['cores']} cores ({info['cpu']}), Python {info['python']}, "
                f"pyprocsync {info['pyprocsync']}",
                "repeat": args.repeat,
                "median": medians,
                "ratio": ratios,
                "runs": runs,
            },
        )
    return 0


if __name__ == "__main__":
    run(PROG, _main)

"""The benchmark matrix: ``pyprocsync bench`` over node counts and delays, repeated.

For every configuration (each ``--nodes`` value times each ``--delays`` value) it runs
:func:`pyprocsync.tools.bench.run_bench` ``--repeat`` times against one server, with the
pattern given by ``--names``, ``--threads``, ``--asyncio`` and ``--fresh`` (as
``pyprocsync bench``: a new name per sync point, one thread per process, by default).
Every figure is read in the caller, with ``time.time_ns()`` on the line after ``sync``
returns, and the limit reference the same way after its wait returns (see
:mod:`pyprocsync.tools.bench`). It takes the median across the repeats of every figure
(p50/p90/p99/max of the spread and of the lateness, for sync and for the limit
reference, of ``SyncResult.late_by`` and of the caller's lateness minus it,
barriers/s, too-late count), writes ``n{nodes}-d{delay}.json`` and ``.png`` into
``--out`` (the stem names the pattern when it is not the default: ``-same``, ``-t4``,
``-asyncio``, ``-fresh20``; the JSON records it under ``pattern``), and prints one
table with a row per configuration: sync beside the limit reference, their ratio, and
the library's report beside the caller's reading (also written to
``--out``/``summary.json``). The plotted run of a configuration is the one whose sync
spread p50 is the median one.

Without ``--redis`` one private embedded server is started for the whole matrix.

Example::

    python perf_tests/sync_precision.py --nodes 2 4 --delays 0.005 0.01 --rounds 300
    python perf_tests/sync_precision.py --nodes 2 --delays 0.05 --threads 4 --asyncio
    python perf_tests/sync_precision.py --nodes 2 4 --delays 0.05 --fresh 10
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from _common import (
    PERCENTILES,
    ExitCode,
    Failure,
    count_arg,
    fmt,
    fmt_ratio,
    machine,
    machine_line,
    median,
    median_summary,
    nan_to_none,
    ratio,
    redis_server,
    run,
    seconds_arg,
)

from pyprocsync.tools.bench import BenchConfig, plot, progress_bar, run_bench, server_label

PROG = "sync_precision"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sync_precision.py",
        description="Run pyprocsync's benchmark for every combination of --nodes and "
        "--delays, --repeat times each; report medians, write a JSON and a PNG per "
        "configuration, and print one summary table.",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="Redis server URL; default: start one private embedded server for the matrix",
    )
    parser.add_argument(
        "--nodes",
        type=count_arg,
        nargs="+",
        default=[2, 4, 8],
        metavar="N",
        help="node counts (default: 2 4 8)",
    )
    parser.add_argument(
        "--delays",
        type=seconds_arg,
        nargs="+",
        default=[0.002, 0.005, 0.01],
        metavar="SECONDS",
        help="lead times (default: 0.002 0.005 0.01)",
    )
    parser.add_argument(
        "--rounds", type=count_arg, default=300, help="rounds per run (default 300)"
    )
    parser.add_argument(
        "--think",
        type=seconds_arg,
        default=0.002,
        help="seconds each node idles after a release (default 0.002)",
    )
    parser.add_argument(
        "--spin",
        type=seconds_arg,
        default=0.0005,
        help="seconds of busy-waiting before the instant (default 0.0005)",
    )
    parser.add_argument(
        "--names",
        choices=("distinct", "same"),
        default="distinct",
        help="a new name per sync point (distinct, the default: step0, step1, ...) or one "
        "name for every round (same)",
    )
    parser.add_argument(
        "--threads",
        type=count_arg,
        default=1,
        help="participants per process, sharing one instance (default 1)",
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="participants are asyncio tasks sharing one pyprocsync.asyncio.ProcSync",
    )
    parser.add_argument(
        "--fresh",
        type=count_arg,
        metavar="STARTS",
        help="instead of rounds: STARTS times, start the processes anew and measure their "
        "first sync (one participant per process)",
    )
    parser.add_argument(
        "--repeat", type=count_arg, default=3, help="runs per configuration (default 3)"
    )
    parser.add_argument(
        "--out",
        default="bench-results",
        metavar="DIR",
        help="folder for the JSON and PNG files (default bench-results/)",
    )
    parser.add_argument("--no-plot", action="store_true", help="write no PNG files")
    return parser


def _without_raw(figures: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in figures.items() if k != "raw"}


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median across repeated runs of every figure; errors are summed, not medianed."""
    syncs = [r["sync"] for r in runs]
    limits = [r["limit"] for r in runs]
    sync = {
        "spread_us": median_summary([s["spread_us"] for s in syncs]),
        "late_us": median_summary([s["late_us"] for s in syncs]),
        "reported_late_us": median_summary([s["reported_late_us"] for s in syncs]),
        "gap_us": median_summary([s["gap_us"] for s in syncs]),
        "spread_within_200us": median(s["spread_within_200us"] for s in syncs),
        "barriers_per_s": median(s["barriers_per_s"] for s in syncs),
        "too_late": median(s["too_late"] for s in syncs),
        "too_late_total": sum(s["too_late"] for s in syncs),
        "errors": sum(s["errors"] for s in syncs),
        "completed_rounds": min(s["completed_rounds"] for s in syncs),
    }
    limit: dict[str, Any] = {
        "spread_us": median_summary([s["spread_us"] for s in limits]),
        "late_us": median_summary([s["late_us"] for s in limits]),
        "spread_within_200us": median(s["spread_within_200us"] for s in limits),
    }
    ratios = {
        key: {p: ratio(sync[key][p], limit[key][p]) for p in PERCENTILES}
        for key in ("spread_us", "late_us")
    }
    return {"sync": sync, "limit": limit, "sync_over_limit": ratios}


def _representative(runs: list[dict[str, Any]]) -> int:
    """Index of the run whose sync spread p50 is the median one (the one plotted)."""
    order = sorted(range(len(runs)), key=lambda i: runs[i]["sync"]["spread_us"]["p50"])
    return order[(len(order) - 1) // 2]


def _stem(nodes: int, delay: float, pattern: dict[str, Any]) -> str:
    """File name stem of a configuration: ``n4-d0.01``, then the pattern when it is not
    the default (``-same``, ``-t4``, ``-asyncio``, ``-fresh20``)."""
    stem = f"n{nodes}-d{delay:g}"
    if pattern["names"] != "distinct":
        stem += f"-{pattern['names']}"
    if pattern["threads"] > 1:
        stem += f"-t{pattern['threads']}"
    if pattern["asyncio"]:
        stem += "-asyncio"
    if pattern["fresh"]:
        stem += f"-fresh{pattern['fresh']}"
    return stem


def _describe(args: argparse.Namespace) -> str:
    """The pattern of the matrix, for the table's header."""
    each = "task" if args.asyncio else "thread"
    names = "a new name per sync point" if args.names == "distinct" else "one name"
    text = f"{names}, {args.threads} {each}{'s' if args.threads > 1 else ''} per process"
    if args.fresh:
        text += f", first sync of fresh processes ({args.fresh} starts)"
    return text


def _run_configuration(
    url: str, args: argparse.Namespace, nodes: int, delay: float
) -> list[dict[str, Any]]:
    runs = []
    for i in range(args.repeat):
        print(
            f"  nodes {nodes}, delay {delay:g} s: run {i + 1}/{args.repeat}",
            file=sys.stderr,
            flush=True,
        )
        config = BenchConfig(
            url=url,
            nodes=nodes,
            rounds=args.rounds,
            delay=delay,
            think=args.think,
            spin=args.spin,
            names=args.names,
            threads=args.threads,
            use_asyncio=args.asyncio,
            fresh=args.fresh or 0,
        )
        runs.append(run_bench(config, progress=progress_bar(args.fresh or args.rounds)))
    return runs


def _can_plot() -> bool:
    try:
        import matplotlib  # noqa: F401, PLC0415  # optional
    except ImportError:
        print(
            f"{PROG}: matplotlib is not installed: no plots "
            "(pip install matplotlib, or pass --no-plot)",
            file=sys.stderr,
        )
        return False
    return True


def _save(
    out: Path, result: dict[str, Any], runs: list[dict[str, Any]], plotting: bool
) -> dict[str, Any]:
    stem = _stem(result["nodes"], result["delay"], result["pattern"])
    if plotting:
        chosen = _representative(runs)
        figures = dict(runs[chosen], server=result["server"])
        plot(figures, str(out / f"{stem}.png"))
        result["plot"] = f"{stem}.png"
        result["plotted_repeat"] = chosen
    result["repeats"] = [_without_raw(r) for r in runs]
    with open(out / f"{stem}.json", "w", encoding="utf-8") as file:
        json.dump(nan_to_none(result), file, indent=2)
        file.write("\n")
    return result


def format_summary(results: list[dict[str, Any]], header: list[str]) -> str:
    """The summary table: a row per configuration, sync beside limit with their ratio."""
    groups = (
        ("spread p50 (us)", "spread_us", "p50"),
        ("spread p99 (us)", "spread_us", "p99"),
        ("late p50 (us)", "late_us", "p50"),
        ("late p99 (us)", "late_us", "p99"),
    )
    top = (
        f"{'':<13}"
        + "".join(f" | {title:^24}" for title, _, _ in groups)
        + f" | {'late_by (reported)':^24} |"
    )
    sub = (
        f"{'nodes':>5}{'delay':>8}"
        + " | {:>8}{:>9}{:>7}".format("sync", "limit", "ratio") * len(groups)
        + " | {:>8}{:>9}{:>7}".format("p50", "gap p50", "p99")
        + " |"
        + f"{'bar/s':>7}{'too late':>9}{'errors':>7}"
    )
    lines = [*header, "", top, sub, "-" * len(sub)]
    for result in results:
        sync, limit = result["sync"], result["limit"]
        row = f"{result['nodes']:>5}{result['delay']:>8g}"
        for _, key, p in groups:
            row += (
                " | "
                + fmt(sync[key][p], 8)
                + fmt(limit[key][p], 9)
                + fmt_ratio(result["sync_over_limit"][key][p], 7)
            )
        row += (
            " | "
            + fmt(sync["reported_late_us"]["p50"], 8)
            + fmt(sync["gap_us"]["p50"], 9)
            + fmt(sync["gap_us"]["p99"], 7)
        )
        row += " |" + fmt(sync["barriers_per_s"], 7, 0) + f"{sync['too_late']:>9g}"
        row += f"{sync['errors']:>7}"
        lines.append(row)
    return "\n".join(lines)


def main() -> int:
    """Run the matrix; return the exit status (1 if any sync call failed)."""
    args = _parser().parse_args()
    if args.fresh and (args.threads > 1 or args.asyncio):
        raise Failure(
            "--fresh measures one blocking participant per new process: "
            "leave out --threads and --asyncio",
            ExitCode.USAGE,
        )
    out = Path(args.out)
    plotting = not args.no_plot and _can_plot()
    info = machine()
    results = []
    with redis_server(args.redis) as (url, embedded):
        server = server_label(url, embedded)
        try:  # only once the server is there: a failed start leaves no empty folder
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Failure(f"cannot create --out folder {out}: {exc.strerror}") from None
        for nodes in args.nodes:
            for delay in args.delays:
                runs = _run_configuration(url, args, nodes, delay)
                result = {
                    "nodes": nodes,
                    "pattern": runs[0]["pattern"],
                    "rounds": args.fresh or args.rounds,
                    "delay": delay,
                    "think": args.think,
                    "spin": args.spin,
                    "repeat": args.repeat,
                    "statistic": f"median of {args.repeat} runs",
                    "server": server,
                    "machine": info,
                    **combine(runs),
                }
                results.append(_save(out, result, runs, plotting))
    unit = f"{args.fresh} starts" if args.fresh else f"{args.rounds} rounds"
    header = [
        f"sync_precision: {unit}, think {args.think:g} s, spin {args.spin:g} s, "
        f"median of {args.repeat} runs, server {server}",
        machine_line(info),
        f"pattern: {_describe(args)}",
        "every figure read in the caller: time.time_ns() on the line after sync (or the "
        "limit's wait) returns; ratio = sync / limit; limit = same participants waking at "
        "instants agreed in advance (no Redis); late_by = SyncResult.late_by, the library's "
        "report (not a measurement); gap = caller's lateness - late_by; too late = "
        "TooLateError (learned after the instant + 1 ms), per run",
    ]
    print(format_summary(results, header))
    with open(out / "summary.json", "w", encoding="utf-8") as file:
        rows = [{k: v for k, v in r.items() if k != "repeats"} for r in results]
        json.dump(nan_to_none({"header": header, "configurations": rows}), file, indent=2)
        file.write("\n")
    print(f"\nJSON{' and PNG' if plotting else ''} files in {out}/")
    errors = sum(r["sync"]["errors"] for r in results)
    if errors:
        raise Failure(f"{errors} sync calls failed (see error_messages in the JSON files)")
    return 0


if __name__ == "__main__":
    run(PROG, main)

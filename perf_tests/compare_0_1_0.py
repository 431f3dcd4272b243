"""Side by side with the original pyprocsync 0.1.0, same configuration, same server, same run.

It creates a throwaway virtual environment in a temporary folder, installs
``pyprocsync==0.1.0`` there from PyPI (with the ``redis==3.5.*`` it pins), then, for each
of ``--repeat`` rounds of measurement, runs the same configuration (nodes, rounds,
delay, think) against the same server:

1. the current pyprocsync, through :func:`pyprocsync.tools.bench.run_bench` with a new name
   per sync point (``step0``, ``step1``, ...), which also measures the limit
   reference: the same processes waking at instants agreed in advance, without Redis;
2. 0.1.0: ``--nodes`` processes of the environment's Python, each running a small
   self-contained worker that calls 0.1.0's ``ProcSync.sync`` ``--rounds`` times, on
   ``r0``, ``r1``, ... (0.1.0 cannot use an event name twice) under a fresh run id per
   measurement.

Both are measured the same way, in the caller: each participant reads
``time.time_ns()`` on the line after ``sync`` returns (or after the ``TooLateError`` it
raised was caught; it is counted and the loop goes on), and its lateness is that
reading minus the agreed instant. 0.1.0's ``sync`` does not return the instant it agreed
on, so the worker wraps the static method ``ProcSync._sleep_until(timestamp)`` with a
function that only notes ``timestamp`` and calls the original: no clock is read there,
and 0.1.0's timing is unchanged (its ``sync`` ends with that call, so one more function
return runs before the caller's line, as with ours). Each worker idles ``--think``
seconds after each round, as ours do, and like ours it files the round's figures only
after idling, so that no bookkeeping takes the CPU from nodes still waking.

Both get the same figures: spread (latest minus earliest return instant of a round),
lateness (return instant minus the agreed instant), barriers/s, returns later than
1 ms. The table shows the median across repeats of each, 0.1.0 / current, the limit
reference, and, for the current version only, its own report ``SyncResult.late_by``
and the caller's lateness minus it (what runs between the library's last clock reading
and the caller's).

The defaults are those of issue 11: 2 processes, a new name per sync point, delay
0.05 s. Example::

    python perf_tests/compare_0_1_0.py
    python perf_tests/compare_0_1_0.py --nodes 4 --rounds 300 --delay 0.01 --think 0.002
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from _common import (
    PERCENTILES,
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

from pyprocsync.tools.bench import LATE_OVER_US, BenchConfig, progress_bar, run_bench, server_label
from pyprocsync.tools.stats import summary

PROG = "compare_0_1_0"
OLD_VERSION = "0.1.0"
TIMEOUT = 30.0
#: Working folder of 0.1.0's processes, so that no pyprocsync checkout in the current
#: folder shadows the installed 0.1.0 (they also run with ``python -I``).
_NEUTRAL_CWD = tempfile.gettempdir()

#: The worker run by 0.1.0's environment. Self-contained: only the standard library,
#: redis 3.5 and pyprocsync 0.1.0. argv[1] is a JSON object with its settings.
WORKER = r"""
import ctypes
import json
import signal
import sys
import time

signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the workers
try:  # Linux: stop when the parent dies
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
except Exception:
    pass

import redis
import pyprocsync
from pyprocsync import ProcSync, ProcSyncError, TooLateError

conf = json.loads(sys.argv[1])
rounds = []  # per round: [agreed instant (float s), ns after it at return]
agreed = [None]  # the instant 0.1.0 agreed on in the latest sync call
original = ProcSync._sleep_until


def noting_sleep_until(timestamp):  # notes the instant only: the clock is read by the caller
    agreed[0] = timestamp
    return original(timestamp)


ProcSync._sleep_until = staticmethod(noting_sleep_until)


def record(returned_ns):  # filed after idling, as pyprocsync's bench does
    timestamp = agreed[0]
    if timestamp is None:
        raise RuntimeError("sync returned without waiting for an instant")
    whole = int(timestamp)
    late_ns = (returned_ns - whole * 1000000000) - (timestamp - whole) * 1e9
    rounds.append([timestamp, late_ns])


errors = []
too_late_errors = 0
client = redis.Redis.from_url(conf["url"])
node = ProcSync(client, conf["run_id"], conf["delay"])
try:
    try:
        node.sync("warm-up", conf["nodes"], conf["timeout"])
    except TooLateError:
        pass
    for i in range(conf["rounds"]):
        agreed[0] = None
        try:
            node.sync("r%d" % i, conf["nodes"], conf["timeout"])
            returned_ns = time.time_ns()  # the caller's next line
        except TooLateError:
            returned_ns = time.time_ns()  # the caller's next line once the error reached it
            too_late_errors += 1
        time.sleep(conf["think"])  # first yield the CPU to nodes still waking, then record
        record(returned_ns)
except (Exception, ProcSyncError) as exc:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    errors.append("round %d: %s: %s" % (len(rounds), type(exc).__name__, first_line))
finally:
    with open(conf["out"], "w") as out:
        json.dump(
            {
                "version": pyprocsync.__version__,
                "redis": redis.__version__,
                "rounds": rounds,
                "too_late_errors": too_late_errors,
                "errors": errors,
            },
            out,
        )
    node.close()
"""


def _positive(text: str) -> float:
    value = seconds_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0.1.0 needs a delay > 0")
    return float(value)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_0_1_0.py",
        description="Run the same benchmark with the current pyprocsync and with 0.1.0 "
        "(installed into a throwaway virtual environment), against the same server, "
        "and print both side by side with the ratios 0.1.0 / current.",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="Redis server URL; default: start a private embedded server",
    )
    parser.add_argument("--nodes", type=count_arg, default=2, help="processes (default 2)")
    parser.add_argument("--rounds", type=count_arg, default=300, help="rounds (default 300)")
    parser.add_argument(
        "--delay", type=_positive, default=0.05, help="lead time in seconds, > 0 (default 0.05)"
    )
    parser.add_argument(
        "--think",
        type=seconds_arg,
        default=0.002,
        help="seconds each node idles after a release (default 0.002)",
    )
    parser.add_argument(
        "--repeat", type=count_arg, default=3, help="measurements of each (default 3)"
    )
    parser.add_argument("--json", metavar="FILE", help="write both sets of figures to FILE")
    parser.add_argument(
        "--keep-venv",
        metavar="DIR",
        help="create (or reuse) 0.1.0's virtual environment in DIR and keep it",
    )
    return parser


# -- 0.1.0's environment ---------------------------------------------------------------


def _has_old_version(python: Path) -> bool:
    check = f"import pyprocsync, sys; sys.exit(pyprocsync.__version__ != {OLD_VERSION!r})"
    try:
        done = subprocess.run(
            [python, "-I", "-c", check], capture_output=True, check=False, cwd=_NEUTRAL_CWD
        )
        return done.returncode == 0
    except OSError:
        return False


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def prepare_venv(folder: Path) -> Path:
    """Make sure ``folder`` is a virtual environment holding pyprocsync 0.1.0; return its python."""
    python = folder / "bin" / "python"
    if python.exists() and _has_old_version(python):
        print(f"{PROG}: reusing pyprocsync {OLD_VERSION} in {folder}", file=sys.stderr)
        return python
    if folder.exists() and any(folder.iterdir()) and not (folder / "pyvenv.cfg").exists():
        raise Failure(f"{folder} exists and is not a virtual environment: pick another folder")
    print(f"{PROG}: installing pyprocsync=={OLD_VERSION} into {folder}", file=sys.stderr)
    steps = (
        [sys.executable, "-m", "venv", str(folder)],
        [str(python), "-I", "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"pyprocsync=={OLD_VERSION}"],
    )  # fmt: skip
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False, cwd=_NEUTRAL_CWD)
        if done.returncode != 0:
            raise Failure(f"{' '.join(step[-3:])} failed: {_last_line(done.stderr + done.stdout)}")
    if not _has_old_version(python):
        raise Failure(f"pyprocsync {OLD_VERSION} is not importable in {folder}")
    return python


# -- running 0.1.0 ---------------------------------------------------------------------


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait(processes: list[subprocess.Popen[bytes]], errs: list[Path], deadline: float) -> None:
    while any(p.poll() is None for p in processes):
        for rank, process in enumerate(processes):
            if process.returncode not in (None, 0):
                message = _last_line(errs[rank].read_text(errors="replace"))
                raise Failure(
                    f"0.1.0 worker {rank} exited with status {process.returncode}: {message}"
                )
        if time.monotonic() > deadline:
            raise Failure("the 0.1.0 workers stopped answering")
        time.sleep(0.1)
    for rank, process in enumerate(processes):
        if process.returncode != 0:
            message = _last_line(errs[rank].read_text(errors="replace"))
            raise Failure(f"0.1.0 worker {rank} exited with status {process.returncode}: {message}")


def run_old(
    python: Path, script: Path, url: str, args: argparse.Namespace, tag: str
) -> dict[str, Any]:
    """Run ``args.nodes`` 0.1.0 workers against ``url``; return their figures."""
    folder = script.parent
    run_id = f"compare-{uuid.uuid4().hex}"
    outs = [folder / f"{tag}-{rank}.json" for rank in range(args.nodes)]
    errs = [folder / f"{tag}-{rank}.err" for rank in range(args.nodes)]
    processes: list[subprocess.Popen[bytes]] = []
    files: list[IO[bytes]] = []
    try:
        for rank in range(args.nodes):
            conf = {
                "url": url,
                "run_id": run_id,
                "nodes": args.nodes,
                "rounds": args.rounds,
                "delay": args.delay,
                "think": args.think,
                "timeout": TIMEOUT,
                "out": str(outs[rank]),
            }
            files.append(errs[rank].open("wb"))
            processes.append(
                subprocess.Popen(
                    [str(python), "-I", str(script), json.dumps(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=files[-1],
                    cwd=_NEUTRAL_CWD,
                    start_new_session=True,  # Ctrl-C reaches the parent only; it stops them
                )
            )
        deadline = time.monotonic() + 2 * TIMEOUT + args.rounds * (args.delay + args.think + 0.05)
        _wait(processes, errs, deadline)
    finally:
        _stop(processes)
        for file in files:
            file.close()
    records = []
    for out in outs:
        with out.open(encoding="utf-8") as result:
            records.append(json.load(result))
    return old_figures(records)


def old_figures(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures of 0.1.0's workers, computed like :mod:`pyprocsync.tools.bench` computes ours."""
    errors = [error for record in records for error in record["errors"]]
    complete = min(len(record["rounds"]) for record in records)
    per_round = list(zip(*(record["rounds"][:complete] for record in records), strict=True))
    mismatched = sum(1 for nodes in per_round if len({ts for ts, _ in nodes}) != 1)
    late_us = [late / 1e3 for nodes in per_round for _, late in nodes]
    spread_us = [(max(n[1] for n in nodes) - min(n[1] for n in nodes)) / 1e3 for nodes in per_round]
    instants = [nodes[0][0] for nodes in per_round]
    span = instants[-1] - instants[0] if len(instants) > 1 else 0.0
    return {
        "spread_us": summary(spread_us),
        "late_us": summary(late_us),
        "barriers_per_s": (len(instants) - 1) / span if span > 0 else 0.0,
        "too_late": sum(record["too_late_errors"] for record in records),
        "late_over_1ms": sum(1 for late in late_us if late > LATE_OVER_US),
        "errors": len(errors) + mismatched,
        "completed_rounds": complete,
        "error_messages": errors[:10]
        + ([f"{mismatched} rounds with different instants"] if mismatched else []),
        "version": records[0]["version"],
        "redis_py": records[0]["redis"],
    }


# -- figures and table -----------------------------------------------------------------


def combine(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Median across measurements of one side (``sync`` of ours, or 0.1.0's figures)."""
    result: dict[str, Any] = {
        "spread_us": median_summary([p["spread_us"] for p in phases]),
        "late_us": median_summary([p["late_us"] for p in phases]),
        "barriers_per_s": median(p["barriers_per_s"] for p in phases),
        "too_late": median(p["too_late"] for p in phases),
        "late_over_1ms": median(p["late_over_1ms"] for p in phases),
        "errors": sum(p["errors"] for p in phases),
        "completed_rounds": min(p["completed_rounds"] for p in phases),
    }
    return result


def format_table(result: dict[str, Any], header: list[str]) -> str:
    """One table: current, 0.1.0, 0.1.0 / current, and the limit reference."""
    new, old, limit = result["current"], result["0.1.0"], result["limit"]
    lines = [
        *header,
        "",
        f"{'':<34}{'current':>10}{'0.1.0':>10}{'0.1.0/current':>15}{'limit':>10}",
    ]

    def row(label: str, a: float, b: float, lim: float = math.nan, digits: int = 1) -> None:
        lines.append(
            f"  {label:<32}{fmt(a, 10, digits)}{fmt(b, 10, digits)}"
            f"{fmt_ratio(ratio(b, a), 15)}{fmt(lim, 10, digits)}"
        )

    for title, key in (
        ("spread of return instants per round (us)", "spread_us"),
        ("lateness: return - agreed instant (us)", "late_us"),
    ):
        lines.append(title)
        for p in PERCENTILES:
            row(p, new[key][p], old[key][p], limit[key][p])
    for title, key in (
        ("current's SyncResult.late_by: its report, not a measurement (us)", "reported_late_us"),
        ("current: caller's lateness - late_by (us)", "gap_us"),
    ):
        lines.append(title)
        for p in PERCENTILES:
            row(p, result["current_report"][key][p], math.nan)
    lines.append("throughput and failures")
    row("barriers/s", new["barriers_per_s"], old["barriers_per_s"], digits=0)
    row("too late (TooLateError)", new["too_late"], old["too_late"], digits=0)
    row("returned > 1 ms late", new["late_over_1ms"], old["late_over_1ms"], digits=0)
    lines.append(f"  {'errors (all runs)':<32}{new['errors']:>10}{old['errors']:>10}")
    new_rounds = f"{new['completed_rounds']}/{result['rounds']}"
    old_rounds = f"{old['completed_rounds']}/{result['rounds']}"
    lines.append(f"  {'rounds completed (worst run)':<32}{new_rounds:>10}{old_rounds:>10}")
    return "\n".join(lines)


def _measure(python: Path, script: Path, url: str, args: argparse.Namespace) -> dict[str, Any]:
    ours, theirs = [], []
    for i in range(args.repeat):
        print(f"  run {i + 1}/{args.repeat}: current", file=sys.stderr, flush=True)
        config = BenchConfig(
            url=url,
            nodes=args.nodes,
            rounds=args.rounds,
            delay=args.delay,
            think=args.think,
            names="distinct",  # step0, step1, ...: as 0.1.0's r0, r1, ...
        )
        ours.append(run_bench(config, progress=progress_bar(args.rounds)))
        print(f"  run {i + 1}/{args.repeat}: {OLD_VERSION}", file=sys.stderr, flush=True)
        theirs.append(run_old(python, script, url, args, f"run{i}"))
    current = combine([r["sync"] for r in ours])
    old = combine(theirs)
    limit = {
        key: median_summary([r["limit"][key] for r in ours]) for key in ("spread_us", "late_us")
    }
    report = {
        key: median_summary([r["sync"][key] for r in ours])
        for key in ("reported_late_us", "gap_us")
    }
    return {
        "current": current,
        "0.1.0": old,
        "limit": limit,
        "current_report": report,
        "ratio_0_1_0_over_current": {
            key: {p: ratio(old[key][p], current[key][p]) for p in PERCENTILES}
            for key in ("spread_us", "late_us")
        }
        | {"barriers_per_s": ratio(old["barriers_per_s"], current["barriers_per_s"])},
        "repeats": {
            "current": [{k: v for k, v in r.items() if k != "raw"} for r in ours],
            "0.1.0": theirs,
        },
    }


def main() -> int:
    """Install 0.1.0, measure both, print the table; return the exit status."""
    args = _parser().parse_args()
    info = machine()
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pyprocsync-cmp-")))
        url, embedded = stack.enter_context(redis_server(args.redis))
        venv = Path(args.keep_venv).resolve() if args.keep_venv else workdir / "venv"
        python = prepare_venv(venv)
        script = workdir / "worker_0_1_0.py"
        script.write_text(WORKER, encoding="utf-8")
        server = server_label(url, embedded)
        result = {
            "nodes": args.nodes,
            "rounds": args.rounds,
            "delay": args.delay,
            "think": args.think,
            "repeat": args.repeat,
            "statistic": f"median of {args.repeat} runs",
            "server": server,
            "machine": info,
            **_measure(python, script, url, args),
        }
    old = result["repeats"]["0.1.0"][0]
    header = [
        f"compare_0_1_0: {args.nodes} nodes x {args.rounds} rounds, delay {args.delay:g} s, "
        f"think {args.think:g} s, median of {args.repeat} runs each, server {server}",
        machine_line(info),
        f"0.1.0: pyprocsync {old['version']} with redis-py {old['redis_py']} in {venv}"
        f"{'' if args.keep_venv else ' (removed)'}; limit: current's limit reference (no Redis)",
        "every figure read in the caller: time.time_ns() on the line after sync returns; "
        "current: a new name per sync point (step0, step1, ...), 0.1.0: r0, r1, ...",
    ]
    print(format_table(result, header))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(nan_to_none(result), file, indent=2)
            file.write("\n")
    errors = result["current"]["errors"] + result["0.1.0"]["errors"]
    if errors:
        messages = [
            m
            for r in result["repeats"]["current"] + result["repeats"]["0.1.0"]
            for m in r.get("error_messages", (r.get("sync") or {}).get("error_messages", []))
        ]
        raise Failure(f"{errors} sync calls failed; first: {messages[0] if messages else '?'}")
    return 0


if __name__ == "__main__":
    run(PROG, main)

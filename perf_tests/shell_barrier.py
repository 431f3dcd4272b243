"""Shell barrier: when ``pyprocsync sync`` processes end, and when the COMMAND of
``pyprocsync sync ... -- COMMAND`` starts, beside the library's in-process figure.

Every round, ``--nodes`` new processes pass a new synchronization point with lead time
``--delay``, in one of three forms, taken in turn so that all three share the run (and
the machine's load of the moment):

exit
    ``pyprocsync sync NAME --nodes N``. A thread of this script per process waits for
    it (``Popen.wait``, i.e. ``waitpid``) and reads ``time.time_ns()`` as soon as the
    wait returns: when a shell could start the next command.
exec
    ``pyprocsync sync NAME --nodes N -- STAMP``: STAMP prints its wall clock as its
    first action. It is a C program compiled now with ``cc`` (static if the C library
    allows), else ``python -S -c 'import time; print(time.time_ns())'``, which adds the
    interpreter's start-up (tens of milliseconds) and says so in the header.
library
    ``python -c``: ``with ProcSync.from_url(...) as node: node.sync(NAME, N)``, then
    ``time.time_ns()`` on the next line (the library's in-process figure), printed
    before the interpreter exits normally. The parent's wait on these processes gives
    one more row: the exit after a normal interpreter shutdown, which is how
    ``pyprocsync sync`` ended before it learned to exit at the instant.

Per round, *spread* is the latest minus the earliest reading of the N processes, and
*lateness* each reading minus the release instant, read after the round from the
outcome the round stored in Redis (microseconds since the epoch, the instant every
participant waited for). Every figure is summarised by p50 / p90 / p99 / max per run,
and the table shows the median of each across ``--repeat`` runs.

Example::

    python perf_tests/shell_barrier.py --nodes 3 --delay 0.3 --rounds 20 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import redis
from _common import (
    PERCENTILES,
    Failure,
    count_arg,
    die_with_parent,
    fmt,
    machine,
    machine_line,
    median_summary,
    redis_server,
    run,
    seconds_arg,
    write_json,
)

from pyprocsync.tools.bench import server_label
from pyprocsync.tools.exec_bench import ExecBenchError, released_at_ns
from pyprocsync.tools.stats import summary

PROG = "shell_barrier"

#: The forms of a round, in the order they take turns.
FORMS = ("exit", "exec", "library")

#: The rows of the table: (key, label); a key names the readings of one form.
ROWS = (
    ("exit", "exit: pyprocsync sync (parent's wait)"),
    ("exec", "exec: -- COMMAND's first action"),
    ("library", "library: next line after sync()"),
    ("library_exit", "library: exit after normal shutdown"),
)

#: Longest a round may take, seconds (start-up of N interpreters on a busy machine).
ROUND_TIMEOUT = 120.0

STAMP_C = r"""
#include <stdio.h>
#include <time.h>
int main(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    printf("%lld\n", (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    return 0;
}
"""

LIBRARY_WORKER = """
import sys, time
from pyprocsync import ProcSync
url, run_id, name, nodes, delay = sys.argv[1:]
with ProcSync.from_url(url, run_id, float(delay)) as node:
    node.sync(name, int(nodes), 60)
    now = time.time_ns()
    print(now)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--redis", metavar="URL", help="server (default: a private embedded one)")
    parser.add_argument("--nodes", type=count_arg, default=3, help="processes per round (3)")
    parser.add_argument("--delay", type=seconds_arg, default=0.3, help="lead time, s (0.3)")
    parser.add_argument(
        "--rounds", type=count_arg, default=20, help="rounds of each form per run (20)"
    )
    parser.add_argument("--repeat", type=count_arg, default=3, help="runs; medians shown (3)")
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON to FILE")
    return parser


def stamp_command(workdir: Path) -> tuple[list[str], str]:
    """The STAMP program and how it was made: C compiled with ``cc`` (static if it
    links), else Python without ``site``."""
    compiler = shutil.which("cc")
    if compiler is not None:
        source = workdir / "stamp.c"
        source.write_text(STAMP_C, encoding="utf-8")
        binary = workdir / "stamp"
        for flags, kind in ((["-static"], "C, static"), ([], "C, dynamic")):
            done = subprocess.run(
                [compiler, "-O2", *flags, "-o", str(binary), str(source)],
                capture_output=True,
                check=False,
                timeout=60,
            )
            if done.returncode == 0:
                return [str(binary)], kind
    code = "import time; print(time.time_ns())"
    return [sys.executable, "-S", "-c", code], "python -S (slower: interpreter start-up)"


@dataclass(frozen=True)
class Setup:
    """What every round of a measurement uses."""

    url: str
    client: redis.Redis
    nodes: int
    delay: float
    #: The command line of STAMP.
    stamp: list[str]


class Child:
    """A process of a round, its output (in files: nothing to drain while it runs),
    and the wall clock when this script saw it end."""

    def __init__(self, argv: Sequence[str], stdout: IO[bytes], stderr: IO[bytes]) -> None:
        self.stdout, self.stderr = stdout, stderr
        self.process = subprocess.Popen(
            argv,
            stdout=stdout,
            stderr=stderr,
            preexec_fn=die_with_parent,  # noqa: PLW1509  # no threads run while spawning
        )
        self.ended_ns: int | None = None
        self.thread = threading.Thread(target=self._wait, daemon=True)

    def _wait(self) -> None:
        self.process.wait()
        self.ended_ns = time.time_ns()

    def output(self) -> tuple[str, str]:
        """What the process wrote to stdout and stderr."""
        texts = []
        for file in (self.stdout, self.stderr):
            file.seek(0)
            texts.append(file.read().decode(errors="replace"))
        return texts[0], texts[1]

    def stop(self) -> None:
        """Kill the process if it still runs, and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@contextlib.contextmanager
def children(argvs: Sequence[Sequence[str]]) -> Iterator[list[Child]]:
    """Start a process per command line, each with its waiting thread; stop what is
    left and close the output files when the block ends."""
    started: list[Child] = []
    with contextlib.ExitStack() as files:
        try:
            for argv in argvs:
                out, err = (files.enter_context(tempfile.TemporaryFile()) for _ in "oe")
                started.append(Child(argv, out, err))
            for child in started:
                child.thread.start()
            yield started
        finally:
            for child in started:
                child.stop()


def command_lines(form: str, setup: Setup, run_id: str, name: str) -> list[list[str]]:
    """The command lines of a round of ``form``."""
    nodes, delay = str(setup.nodes), str(setup.delay)
    if form == "library":
        return [[sys.executable, "-c", LIBRARY_WORKER, setup.url, run_id, name, nodes, delay]]
    sync = [sys.executable, "-m", "pyprocsync", "sync", name, "--nodes", nodes, "--run", run_id]
    sync += ["--delay", delay, "--timeout", "60", "--redis", setup.url]
    return [sync + (["--", *setup.stamp] if form == "exec" else [])]


def one_round(form: str, setup: Setup, run_id: str, name: str) -> dict[str, list[int]]:
    """Run one round of ``form``; its readings minus the release instant (ns), by row."""
    with children(command_lines(form, setup, run_id, name) * setup.nodes) as started:
        deadline = time.monotonic() + ROUND_TIMEOUT
        for child in started:
            child.thread.join(max(0.0, deadline - time.monotonic()))
        outputs = [child.output() for child in started]
        for child, (_out, err) in zip(started, outputs, strict=True):
            if child.ended_ns is None or child.process.returncode != 0:
                raise Failure(f"a {form} process of {name!r} failed: {err.strip()[-500:]}")
    try:
        at_ns = released_at_ns(setup.client, run_id, name)
    except ExecBenchError as exc:
        raise Failure(str(exc)) from None
    ended = [child.ended_ns - at_ns for child in started if child.ended_ns is not None]
    if form == "exit":
        return {"exit": ended}
    printed = [int(out.split()[0]) - at_ns for out, _err in outputs]
    if form == "exec":
        return {"exec": printed}
    return {"library": printed, "library_exit": ended}


def figures(rounds: list[list[int]]) -> dict[str, dict[str, float]]:
    """Spread and lateness (µs) of the readings of a run's rounds (ns from the instant)."""
    return {
        "spread_us": summary((max(r) - min(r)) / 1e3 for r in rounds),
        "late_us": summary(v / 1e3 for r in rounds for v in r),
    }


def one_run(setup: Setup, rounds: int, label: str) -> dict[str, dict[str, dict[str, float]]]:
    """``--rounds`` rounds of each form, in turn; the figures by row."""
    run_id = f"shell-{uuid.uuid4().hex[:12]}"
    readings: dict[str, list[list[int]]] = {key: [] for key, _label in ROWS}
    for number in range(rounds * len(FORMS)):
        form = FORMS[number % len(FORMS)]
        for key, values in one_round(form, setup, run_id, f"r{number}").items():
            readings[key].append(values)
        print(f"\r  {label}: round {number + 1}/{rounds * len(FORMS)}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return {key: figures(values) for key, values in readings.items()}


def format_table(result: dict[str, Any], header: list[str]) -> str:
    """The medians of every row, spread and lateness, in µs."""
    lines = [*header, ""]
    columns = "".join(f"{p:>9}" for p in PERCENTILES)
    for kind, title in (("spread_us", "spread per round"), ("late_us", "lateness")):
        lines.append(f"{title} (us){'':<{44 - len(title) - 5}}{columns}")
        for key, label in ROWS:
            row = result["median"][key][kind]
            lines.append(f"  {label:<42}" + "".join(fmt(row[p], 9) for p in PERCENTILES))
        lines.append("")
    return "\n".join(lines).rstrip()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Compile STAMP, run ``--repeat`` runs against the server; the figures."""
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pyprocsync-sh-")))
        url, embedded = stack.enter_context(redis_server(args.redis))
        stamp, stamp_kind = stamp_command(workdir)
        setup = Setup(
            url, stack.enter_context(redis.Redis.from_url(url)), args.nodes, args.delay, stamp
        )
        labels = [f"run {i + 1}/{args.repeat}" for i in range(args.repeat)]
        runs = [one_run(setup, args.rounds, label) for label in labels]
        server = server_label(url, embedded)
    medians = {
        key: {kind: median_summary([r[key][kind] for r in runs]) for kind in runs[0][key]}
        for key, _label in ROWS
    }
    return {"stamp": stamp_kind, "server": server, "median": medians, "runs": runs}


def main() -> int:
    """Measure, print the table; return the exit status."""
    args = _parser().parse_args()
    info = machine()
    settings = {"nodes": args.nodes, "delay": args.delay, "rounds": args.rounds}
    result = {**settings, "repeat": args.repeat, "machine": info, **measure(args)}
    print(
        format_table(
            result,
            [
                f"{PROG}: {args.nodes} processes x {args.rounds} rounds per form, delay "
                f"{args.delay:g} s, median of {args.repeat} runs, server {result['server']}",
                machine_line(info),
                f"STAMP: {result['stamp']}; lateness = reading - release instant",
            ],
        )
    )
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    run(PROG, main)

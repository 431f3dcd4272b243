"""The ``pyprocsync`` command: ``bench``, ``sync``, ``server``, ``status``, ``report``,
``reset``, ``clock`` and ``lab``.

Every command but ``server`` takes ``--redis URL``, defaulting to
``$PYPROCSYNC_REDIS_URL``; ``bench`` starts a private embedded server when neither is
given. No password is taken on the command line (see :mod:`pyprocsync.tools.credentials`).
Errors print one line on stderr (``pyprocsync: error: ...``) and exit with a code of
:class:`ExitCode`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Any, NoReturn

import redis

from pyprocsync import __version__, clock
from pyprocsync.core.ops import AtInstant, SleepUntil
from pyprocsync.core.params import DEFAULTS
from pyprocsync.core.servertime import MAX_DRIFT_PPB, ClockFilter, TimeRequest
from pyprocsync.exceptions import (
    BrokenBarrierError,
    InvalidArgumentError,
    ParameterMismatchError,
    ProcSyncError,
    ProtocolError,
    TimeOutError,
    TooLateError,
)
from pyprocsync.shells import redispy
from pyprocsync.shells.blocking import ProcSync, sync_until_instant
from pyprocsync.tools import handoff
from pyprocsync.tools.bench import (
    BenchConfig,
    format_table,
    plot,
    progress_bar,
    run_bench,
    server_label,
)
from pyprocsync.tools.credentials import (
    PASSWORD_ENV,
    SOURCES,
    URL_ENV,
    CredentialError,
    add_password_options,
    host_address,
    read_password,
    redact,
    resolve_url,
    url_problem,
)
from pyprocsync.tools.lab import MODES, SCENARIOS, LabError, run_lab
from pyprocsync.tools.lab import format_table as format_lab_table
from pyprocsync.tools.report import (
    format_report,
    read_last_release,
    read_record,
    render_html,
    report_json,
    skipped_warning,
    summarize,
)
from pyprocsync.tools.server import EmbeddedServer, ServerError
from pyprocsync.tools.stats import nan_to_none, summary
from pyprocsync.tools.status import format_status, read_members, read_status

__all__ = [
    "URL_ENV",
    "CommandError",
    "ExitCode",
    "check_reachable",
    "count_arg",
    "duration_arg",
    "main",
    "redact",
    "seconds_arg",
    "timeout_arg",
]


class ExitCode(IntEnum):
    """Exit statuses of the ``pyprocsync`` command."""

    #: Success (``sync``: released at the agreed instant).
    OK = 0
    #: Any other failure (bad data in Redis, a benchmark worker failed, ...).
    FAILED = 1
    #: Bad command line (unknown flag, bad number).
    USAGE = 2
    #: ``sync``: the timeout expired before every participant arrived.
    TIMEOUT = 3
    #: ``sync``: the release instant had passed when this participant learned it.
    TOO_LATE = 4
    #: ``sync``: the round is broken (another participant timed out, disagreed or vanished).
    BROKEN = 5
    #: The Redis server could not be reached, or the embedded server could not start.
    CONNECTION = 6
    #: ``clock``: this host's clock is off the server's by more than ``--max-offset``, or
    #: its bound exceeds ``--max-uncertainty``.
    CLOCK_OFF = 7
    #: ``sync -- COMMAND``: COMMAND was found but cannot be executed (as a shell's 126).
    NOT_EXECUTABLE = handoff.NOT_EXECUTABLE
    #: ``sync -- COMMAND``: COMMAND was not found (as a shell's 127).
    NOT_FOUND = handoff.NOT_FOUND
    #: Interrupted with Ctrl-C.
    INTERRUPTED = handoff.INTERRUPTED


class CommandError(Exception):
    """A failure that ends a command with ``code`` and a one-line ``message``."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _number(
    kind: Callable[[str], Any], low: float, what: str, high: float = math.inf
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what
    return parse


#: argparse type: a whole number >= 1.
count_arg = _number(int, 1, "a whole number >= 1")


def _seconds_or_auto(text: str) -> float | str:
    return "auto" if text == "auto" else float(seconds_arg(text))


#: argparse type: a finite number of seconds >= 0.
seconds_arg = _number(float, 0.0, "a number of seconds >= 0")
_positive = _number(float, 1e-9, "a number of seconds > 0")


def timeout_arg(text: str) -> float:
    """argparse type: a number of seconds > 0, or ``inf`` (no limit, like the library)."""
    try:
        if float(text) == math.inf:
            return math.inf
    except ValueError:
        pass
    return float(_positive(text))


timeout_arg.__name__ = "a number of seconds > 0 or inf"

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6}


def duration_arg(text: str) -> float:
    """argparse type: a duration > 0 in seconds, or with a unit: ``200us``, ``0.2ms``,
    ``1s`` (``µs`` too)."""
    number, scale = text, 1.0
    for unit, factor in sorted(_UNITS.items(), key=lambda item: -len(item[0])):
        if text.endswith(unit):
            number, scale = text[: -len(unit)], factor
            break
    return float(_positive(number.strip())) * scale


duration_arg.__name__ = "a duration > 0 (seconds, or with a unit: 200us, 0.2ms)"
_port = _number(int, 0, "a port number (0-65535)", 65535)


def _redis_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--redis",
        metavar="URL",
        help=f"Redis server URL (redis://, rediss://, unix://), without a password; "
        f"default ${URL_ENV}{what}",
    )
    add_password_options(parser)


def _run_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run", default=DEFAULTS.run_id, help='run id (default: "", as in the library)'
    )


def _clock_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clock",
        choices=("system", "server"),
        default=DEFAULTS.clock,
        help=f"agree instants on each host's clock or the server's (default {DEFAULTS.clock})",
    )


def _max_uncertainty_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--max-uncertainty",
        type=duration_arg,
        metavar="DURATION",
        help=f"the widest clock bound accepted (200us, 0.5ms, 0.001): {what}",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyprocsync",
        description="Processes on different machines pass a synchronization point at one "
        "agreed instant, over Redis.",
    )
    parser.add_argument("--version", action="version", version=f"pyprocsync {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    bench = commands.add_parser(
        "bench",
        help="measure release precision with real processes, beside the machine's limit",
        description="Start NODES processes that synchronize ROUNDS times and report the "
        "spread of their return instants and how late each returned, read in the "
        "caller on the line after the call returns, beside a limit reference: the same "
        "participants waiting for instants agreed in advance, read the same way.",
    )
    _redis_option(bench, "; without either, a private embedded server is started")
    bench.add_argument("--nodes", type=count_arg, default=4, help="processes (default 4)")
    bench.add_argument("--rounds", type=count_arg, default=300, help="rounds (default 300)")
    bench.add_argument(
        "--delay",
        type=_seconds_or_auto,
        default=0.01,
        help="lead time in seconds, or 'auto' (default 0.01: the workers share this "
        "machine's clock, and a short lead keeps 300 rounds quick)",
    )
    _clock_option(bench)
    bench.add_argument(
        "--think",
        type=seconds_arg,
        default=0.002,
        help="seconds each node idles after a release (default 0.002; 0: back to back)",
    )
    bench.add_argument(
        "--spin",
        type=seconds_arg,
        default=DEFAULTS.spin,
        help=f"seconds of busy-waiting before the instant (default {DEFAULTS.spin})",
    )
    bench.add_argument(
        "--names",
        choices=("distinct", "same"),
        default="distinct",
        help="a new name per sync point (distinct, the default, as step0, step1, ...) or "
        "one name for every round (same)",
    )
    bench.add_argument(
        "--threads",
        type=count_arg,
        default=1,
        help="participants per process, sharing one instance (default 1)",
    )
    bench.add_argument(
        "--asyncio",
        action="store_true",
        help="participants are asyncio tasks sharing one pyprocsync.asyncio.ProcSync",
    )
    bench.add_argument(
        "--fresh",
        type=count_arg,
        metavar="STARTS",
        help="instead of rounds: STARTS times, start NODES new processes and measure "
        "their first sync (one participant per process)",
    )
    bench.add_argument(
        "--exec",
        action="store_true",
        dest="execs",
        help="instead of rounds of the library: rounds of NODES new processes running "
        "`pyprocsync sync ... -- date +%%s%%N`, the start of date read (the shell barrier)",
    )
    bench.add_argument(
        "--no-record",
        action="store_false",
        dest="record",
        help="the participants add nothing to the run's record (record=False)",
    )
    bench.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE")
    bench.add_argument(
        "--plot", metavar="FILE.png", help="draw histograms and a timeline (needs matplotlib)"
    )
    bench.add_argument("--quiet", action="store_true", help="print no table")

    sync = commands.add_parser(
        "sync",
        help="a barrier for shell scripts: exit 0 (or run COMMAND) at the release instant",
        usage="%(prog)s NAME --nodes N [options] [-- COMMAND [ARGS ...]]",
        description="Wait until NODES participants reached NAME, then exit 0 at the agreed "
        "instant; with '-- COMMAND [ARGS ...]', become COMMAND at that instant instead "
        "(exec: same process, COMMAND's exit status), the form for time-critical "
        "starts. Exit codes: 3 timeout, 4 too late, 5 broken round, 6 connection "
        "failure, 2 usage error, 1 other failure, 126 COMMAND not executable, "
        "127 COMMAND not found; COMMAND runs only if the round was released.",
    )
    sync.add_argument("name", help="the synchronization point")
    sync.add_argument("--nodes", type=count_arg, required=True, help="participants to wait for")
    _run_option(sync)
    sync.add_argument(
        "--timeout", type=timeout_arg, help="seconds to wait, or inf (default: forever)"
    )
    sync.add_argument(
        "--delay",
        type=_seconds_or_auto,
        default=DEFAULTS.delay,
        help=f"lead time in seconds, or 'auto' (default {DEFAULTS.delay}, ProcSync's: it covers "
        "machines whose clocks agree only roughly; lower it once `pyprocsync clock` shows "
        "them close)",
    )
    _clock_option(sync)
    _max_uncertainty_option(
        sync, "break the round for all (exit 5) when any participant's clock bound exceeds it"
    )
    _redis_option(sync, "")
    sync.set_defaults(exec_argv=None)

    server = commands.add_parser(
        "server",
        help="run the embedded server in the foreground (Ctrl-C stops it)",
        description="Run a Redis-compatible server (from the 'server' extra) in the "
        "foreground for quick multi-machine set-ups. Nothing is kept on disk.",
    )
    server.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    server.add_argument("--port", type=_port, default=6379, help="port (default 6379)")
    add_password_options(server)

    status = commands.add_parser(
        "status",
        help="show the events of a run: who arrived, who is missing, for how long",
        description="List the events of a run that the server still holds: generation, "
        "arrived / expected, state, age, how long a filling round has waited, who waits "
        "and who is missing; then the run's registered members (member=True), live or "
        "lapsed. With --watch, refresh until Ctrl-C.",
    )
    _run_option(status)
    status.add_argument(
        "--watch", action="store_true", help="refresh in place until Ctrl-C (exit 130)"
    )
    status.add_argument(
        "--interval",
        type=_number(float, 0.1, "a number of seconds >= 0.1"),
        default=1.0,
        help="seconds between refreshes with --watch (default 1.0, at least 0.1)",
    )
    _redis_option(status, "")

    reset = commands.add_parser(
        "reset",
        help="reset a synchronization point: break its current round, open the next",
        description="Break the current round of NAME if anyone waits in it (they get "
        "'broken', exit 5 in `pyprocsync sync`) and make a broken round usable again; "
        "print the generation the next arrival joins. Resetting an idle point does nothing.",
    )
    reset.add_argument("name", help="the synchronization point")
    _run_option(reset)
    _redis_option(reset, "")

    _add_clock(commands)
    _add_report(commands)
    _add_lab(commands)
    return parser


def _add_clock(commands: Any) -> None:
    """The ``clock`` command's parser."""
    clock_cmd = commands.add_parser(
        "clock",
        help="this host's clock against the server's: offset, round trips, uncertainty",
        description="Estimate this host's clock offset to the Redis server from TIME round "
        'trips, with the filter of clock="server" (every round trip bounds the offset; '
        "the estimate is the middle of what all of them allow), and the drift between "
        "the clocks when the samples are spread out (--every), and what this host's "
        "kernel says of its clock (synchronised, and within what bound). Exit 7 when the "
        "offset exceeds --max-offset, or when this host cannot honour --max-uncertainty "
        "in the --clock mode given: a check before a run (ExecStartPre= of a systemd "
        "unit, a CI step).",
    )
    _redis_option(clock_cmd, "")
    clock_cmd.add_argument(
        "--samples", type=count_arg, default=20, help="round trips to take (default 20)"
    )
    clock_cmd.add_argument(
        "--every",
        type=seconds_arg,
        default=0.0,
        help="seconds between round trips (default 0: back to back; the drift is measured "
        "only over spread-out samples)",
    )
    clock_cmd.add_argument(
        "--max-offset",
        type=seconds_arg,
        help="exit 7 when |offset| exceeds this many seconds (default: never)",
    )
    _max_uncertainty_option(
        clock_cmd,
        "exit 7 unless this host's bound is within it: with --clock system, the kernel's "
        "(synchronised, maxerror); with --clock server, the estimate's from the samples",
    )
    _clock_option(clock_cmd)


def _add_report(commands: Any) -> None:
    """The ``report`` command's parser."""
    report = commands.add_parser(
        "report",
        help="what a run's record says of its rounds: who was late, missing or failed, "
        "how far apart the participants continued",
        description="Read the record of a run (one entry per participant and round, "
        "written by the participants) and show per event: its rounds, released and "
        "failed ones with their causes, the participants missing from a round, the "
        "arrival window and who came last, and the cell bound (how far apart the "
        "participants may have continued, from their own clock bounds). Exit codes: 2 "
        "no record of the run (or of --event), 1 the key holds data pyprocsync did not "
        "write, 6 connection failure.",
    )
    _run_option(report)
    report.add_argument(
        "--event",
        action="append",
        metavar="NAME",
        help="only this event (repeat for several; default: every event)",
    )
    report.add_argument(
        "--rounds",
        type=count_arg,
        default=20,
        metavar="N",
        help="the most recent rounds (and failed rounds) per event the table shows "
        "(default 20; --json and --html hold all)",
    )
    report.add_argument(
        "--json", metavar="FILE", help="write every round as JSON to FILE ('-': stdout, no table)"
    )
    report.add_argument(
        "--html", metavar="FILE", help="write one self-contained HTML page with timelines to FILE"
    )
    _redis_option(report, "")


def _add_lab(commands: Any) -> None:
    """The ``lab`` command's parser."""
    lab = commands.add_parser(
        "lab",
        help="measure a cell of simulated hosts: their links and clocks, the truth on this "
        "machine's clock",
        description="Simulate a cell on this machine: each host a process with its own "
        "wall and monotonic clocks (offset, drift, steps) and its own link to a private "
        "embedded server (one-way delays per direction, jitter, loss). Per scenario and "
        "clock mode, print the true spread of the hosts' returns (read on this "
        "machine's clock on the line after sync returns), the TooLateError count, and "
        "how often each release's stated clock bound covered its true error.",
    )
    lab.add_argument(
        "--scenarios",
        nargs="+",
        choices=tuple(SCENARIOS),
        default=list(SCENARIOS),
        metavar="NAME",
        help=f"cells to simulate (default all: {', '.join(SCENARIOS)})",
    )
    lab.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        metavar="MODE",
        help="clock modes, each where a scenario has it: system, server, server-auto "
        "(server clock, delay='auto'); default all",
    )
    lab.add_argument("--rounds", type=count_arg, default=200, help="rounds per block (200)")
    lab.add_argument(
        "--delay", type=seconds_arg, default=0.05, help="lead time in seconds (default 0.05)"
    )
    lab.add_argument("--repeat", type=count_arg, default=3, help="repeats (default 3)")
    lab.add_argument("--json", metavar="FILE", help="write every figure as JSON to FILE")
    lab.add_argument(
        "--report",
        metavar="DIR",
        help="write the pyprocsync report of each scenario and mode's first block to DIR "
        "(SCENARIO-MODE.txt and .html)",
    )
    lab.add_argument("--quiet", action="store_true", help="print no progress and no table")


def _require_url(url: str | None) -> str:
    if not url:
        raise CommandError(ExitCode.USAGE, f"no server given: pass --redis URL or set ${URL_ENV}")
    return url


def check_reachable(url: str) -> None:
    """Raise :class:`CommandError` unless the server at ``url`` answers PING."""
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
            client.ping()
    except redis.AuthenticationError as exc:
        raise CommandError(
            ExitCode.CONNECTION,
            f"Redis at {redact(url)} refused the credentials: {exc} (check the password: "
            "--password-file, $PYPROCSYNC_PASSWORD, or the user name of the URL)",
        ) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CommandError(
            ExitCode.CONNECTION, f"cannot reach Redis at {redact(url)}: {exc} (check --redis)"
        ) from None
    except redis.RedisError as exc:
        raise CommandError(ExitCode.CONNECTION, f"Redis at {redact(url)} refused: {exc}") from None
    except ValueError:
        problem = url_problem(url) or "redis-py cannot use it"
        raise CommandError(ExitCode.USAGE, f"bad --redis URL: {problem}") from None


def _bench(args: argparse.Namespace) -> None:
    if (args.fresh or args.execs) and (args.threads > 1 or args.asyncio):
        raise CommandError(
            ExitCode.USAGE,
            "--fresh and --exec measure one participant per new process: "
            "leave out --threads and --asyncio",
        )
    if args.fresh and args.execs:
        raise CommandError(ExitCode.USAGE, "--fresh and --exec are two benchmarks: give one")
    if args.plot:
        try:
            import matplotlib  # noqa: F401, PLC0415
        except ImportError:
            raise CommandError(
                ExitCode.USAGE,
                "--plot needs matplotlib: install pyprocsync's 'plot' extra "
                "(in its repository: pip install -e '.[plot]')",
            ) from None
    embedded = None
    url = args.redis
    try:
        if url:
            check_reachable(url)
        else:
            embedded = EmbeddedServer().start()
            url = embedded.url
        config = BenchConfig(
            url=url,
            nodes=args.nodes,
            rounds=args.rounds,
            delay=args.delay,
            think=args.think,
            spin=args.spin,
            clock=args.clock,
            names=args.names,
            threads=args.threads,
            use_asyncio=args.asyncio,
            fresh=args.fresh or 0,
            execs=args.execs,
            record=args.record,
        )
        figures = run_bench(config, progress=progress_bar(args.fresh or args.rounds))
        figures["server"] = server_label(url, embedded is not None)
    finally:
        if embedded is not None:
            embedded.stop()
    if not args.quiet:
        print(format_table(figures))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump({k: v for k, v in figures.items() if k != "raw"}, out, indent=2)
            out.write("\n")
    if args.plot:
        plot(figures, args.plot)
    sync = figures["sync"]
    if sync["errors"]:
        raise CommandError(
            ExitCode.FAILED,
            f"{sync['errors']} sync calls failed; first: {sync['error_messages'][0]}",
        )


def _lab_command(args: argparse.Namespace) -> str:
    """The ``pyprocsync lab`` command line that runs what ``args`` say."""
    return shlex.join(
        [
            "pyprocsync",
            "lab",
            "--scenarios",
            *args.scenarios,
            "--modes",
            *args.modes,
            "--rounds",
            str(args.rounds),
            "--delay",
            f"{args.delay:g}",
            "--repeat",
            str(args.repeat),
        ]
    )


def _lab_reporter(
    server: EmbeddedServer, directory: str | None
) -> Callable[[str, str, int, dict[str, Any]], None]:
    """What ``lab --report DIR`` does after each block: the report of the first
    repeat's blocks, as text and page, into ``DIR``."""

    def after_block(scenario: str, mode: str, number: int, block: dict[str, Any]) -> None:
        if directory is None or number:
            return
        run_id = block["run_id"]
        with redis.Redis(server.bind, server.port) as client:
            record = read_record(client, run_id)
        report = summarize(record.outcomes)
        stem = os.path.join(directory, f"{scenario}-{mode}")
        _write(stem + ".txt", "--report", "\n".join(format_report(run_id, record, report)) + "\n")
        _write(stem + ".html", "--report", render_html(run_id, record, report))

    if directory is not None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise CommandError(
                ExitCode.FAILED, f"cannot write --report {directory}: {exc}"
            ) from None
    return after_block


def _lab(args: argparse.Namespace) -> None:
    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    with EmbeddedServer() as server:
        after_block = _lab_reporter(server, args.report)
        try:
            run = run_lab(
                (server.bind, server.port),
                args.scenarios,
                rounds=args.rounds,
                delay=args.delay,
                repeat=args.repeat,
                modes=args.modes,
                progress=progress,
                command=_lab_command(args),
                after_block=after_block,
            )
        except LabError as exc:
            raise CommandError(ExitCode.FAILED, f"the lab failed: {exc}") from None
    if not args.quiet:
        print(
            f"{args.rounds} rounds per block, delay {args.delay:g} s, {args.repeat} repeats "
            "(percentiles: medians across the repeats; counts: sums)"
        )
        print(format_lab_table(run))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(nan_to_none(run.as_dict()), out, indent=1)
            out.write("\n")


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line (default ``sys.argv[1:]``).

    For ``sync``, the words after the first ``--`` are the COMMAND to run
    (``exec_argv``; ``None`` without ``--``): argparse cannot take a list of any length
    after options, nor tell it from a misplaced NAME. They are split off before the rest
    is parsed, so ``--`` must come after NAME and every option.
    """
    words = list(sys.argv[1:] if argv is None else argv)
    exec_argv = None
    if words[:1] == ["sync"] and "--" in words:
        split = words.index("--")
        words, exec_argv = words[:split], words[split + 1 :]
    args = _parser().parse_args(words)
    if exec_argv is not None:
        args.exec_argv = exec_argv
    return args


def _executable(name: str) -> str:
    """The file to exec for COMMAND ``name``, found as a shell finds it: ``name`` itself
    if it holds a ``/``, else the first executable ``name`` in ``$PATH``.

    :raises CommandError: ``NOT_FOUND`` when there is no such file,
        ``NOT_EXECUTABLE`` when a path names a file that cannot be executed.
    """
    path = shutil.which(name)
    if path is not None:
        return path
    if "/" in name and os.path.exists(name):
        raise CommandError(ExitCode.NOT_EXECUTABLE, f"{name}: not an executable file")
    raise CommandError(ExitCode.NOT_FOUND, f"{name}: command not found")


def _await_instant(wait: SleepUntil, executable: str | None, exec_argv: list[str]) -> None:
    """Wait for the release instant, as late in the process's life as possible.

    With at least :data:`~pyprocsync.tools.handoff.HANDOFF_MIN_NS` to go, this process
    becomes the minimal interpreter of :mod:`pyprocsync.tools.handoff` (exec, same process
    id, SIGINT blocked until it can handle it), which waits and then exits or execs
    ``executable``, so that no large address space has to be taken apart at the
    instant. Otherwise (also when SIGINT was blocked already, or no interpreter can run
    the hand-off), or if that exec fails, it waits here and returns at the instant.
    """
    now = clock.monotonic_ns if wait.on_monotonic else clock.time_ns
    argv = handoff.handoff_argv(wait.at_ns, wait.spin_ns, wait.on_monotonic, executable, exec_argv)
    if argv is not None and wait.at_ns - now() >= handoff.HANDOFF_MIN_NS:
        # SIGINT stays blocked until the hand-off can turn Ctrl-C into exit 130 (a new
        # interpreter would die of it, or print a traceback, while it starts).
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        if signal.SIGINT not in previous:  # else the hand-off's unblocking would be wrong
            with contextlib.suppress(OSError):
                os.execv(argv[0], argv)  # noqa: S606  # this interpreter, on pyprocsync's file
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    handoff.wait_until_ns(wait.at_ns, wait.spin_ns, now)


def _forget_secrets() -> None:
    """Take the password out of the environment that the hand-off and COMMAND inherit:
    ``$PYPROCSYNC_PASSWORD``, and ``$PYPROCSYNC_REDIS_URL`` when it holds one."""
    os.environ.pop(PASSWORD_ENV, None)
    url = os.environ.get(URL_ENV)
    if url is not None and redact(url) != url:
        del os.environ[URL_ENV]


def _sync(args: argparse.Namespace) -> NoReturn:
    """Join the round; at its instant, end the process or become the COMMAND.

    Everything else is done before the instant (see
    :func:`~pyprocsync.shells.blocking.sync_until_instant` and :func:`_await_instant`); after
    it, only :func:`pyprocsync.tools.handoff.finish` runs.
    """
    url = _require_url(args.redis)
    exec_argv: list[str] | None = args.exec_argv
    executable = None
    if exec_argv is not None:
        if not exec_argv:
            raise CommandError(ExitCode.USAGE, "nothing after --: name the COMMAND to run")
        executable = _executable(exec_argv[0])  # before arriving: a typo breaks no round
    try:
        node = ProcSync.from_url(
            url, args.run, args.delay, clock=args.clock, max_uncertainty=args.max_uncertainty
        )
        due = sync_until_instant(node, args.name, args.nodes, args.timeout)
    except (BrokenBarrierError, ParameterMismatchError) as exc:
        # First: another participant's timeout breaks the round with an error that is
        # also a TimeOutError (BrokenByTimeoutError), and that is exit 5, not 3.
        raise CommandError(ExitCode.BROKEN, str(exc)) from None
    except TimeOutError as exc:
        raise CommandError(ExitCode.TIMEOUT, str(exc)) from None
    except TooLateError as exc:
        raise CommandError(ExitCode.TOO_LATE, str(exc)) from None
    except InvalidArgumentError as exc:
        raise CommandError(ExitCode.USAGE, str(exc)) from None
    except ValueError:  # from redis-py: a URL it cannot parse (its message may quote it)
        raise CommandError(ExitCode.USAGE, f"bad --redis URL: {redact(url)}") from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CommandError(
            ExitCode.CONNECTION, f"cannot reach Redis at {redact(url)}: {exc}"
        ) from None
    _forget_secrets()
    sys.stdout.flush()
    sys.stderr.flush()
    if isinstance(due, AtInstant):
        _await_instant(due.wait, executable, exec_argv or [])
    handoff.finish(executable, exec_argv or [])


def _is_loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def _server(args: argparse.Namespace) -> None:
    password = read_password(args)
    if not _is_loopback(args.bind) and not password:
        raise CommandError(
            ExitCode.USAGE,
            f"refusing to listen on {args.bind} without a password: give one with {SOURCES} "
            "(or bind to 127.0.0.1)",
        )
    server = EmbeddedServer(port=args.port, bind=args.bind, password=password).start()
    # SIGTERM stops the server like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: _raise_interrupt())
    try:
        print(f"pyprocsync server listening on {redact(server.url)} (Ctrl-C stops it)")
        if _is_loopback(args.bind):
            print("only this machine can connect; --bind 0.0.0.0 serves the others")
        else:
            host = host_address(args.bind)
            shown = f"[{host}]" if ":" in host else host
            print(f"other machines use: {redact(f'redis://:pw@{shown}:{server.port}/0')}")
            print(
                f"  there: export {URL_ENV}=redis://{shown}:{server.port}/0 and give the "
                f"password with {SOURCES}"
            )
        sys.stdout.flush()
        while server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        raise CommandError(ExitCode.FAILED, "the server exited on its own")
    finally:
        server.stop()


def _raise_interrupt() -> NoReturn:
    raise KeyboardInterrupt


#: Moves the cursor home and clears the terminal (ANSI).
CLEAR_SCREEN = "\x1b[H\x1b[2J"


def _status_lines(client: redis.Redis, run_id: str) -> list[str]:
    """The status of ``run_id`` with its last released round (a warning on stderr when
    its record cannot be read)."""
    try:
        last = read_last_release(client, run_id)
    except ProtocolError as exc:
        print(f"pyprocsync: warning: {exc}", file=sys.stderr, flush=True)
        last = None
    statuses = read_status(client, run_id)
    return format_status(run_id, statuses, read_members(client, run_id), last)


def _status(args: argparse.Namespace) -> None:
    url = _require_url(args.redis)
    check_reachable(url)
    with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
        if not args.watch:
            lines = _status_lines(client, args.run)
            if not lines[0].startswith("no events"):
                print("\n".join(lines))
            else:
                print(f"{lines[0]} on {redact(url)}", *lines[1:], sep="\n")
            return
        clear = CLEAR_SCREEN if sys.stdout.isatty() else ""
        while True:
            lines = _status_lines(client, args.run)
            stamp = time.strftime("%H:%M:%S")
            head = f"run {args.run!r} on {redact(url)} at {stamp}, every {args.interval:g} s"
            print(f"{clear}{head} (Ctrl-C stops)", *lines, "", sep="\n", flush=True)
            time.sleep(args.interval)


def _write(path: str, option: str, text: str) -> None:
    """Write ``text`` to ``path`` (``-``: stdout) for ``option``."""
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:
        raise CommandError(ExitCode.FAILED, f"cannot write {option} {path}: {exc}") from None


def _report(args: argparse.Namespace) -> None:
    """Print (and write) what the record of ``args.run`` says; a one-line warning for
    the entries skipped, an error for no record (``USAGE``: the run, or the events
    asked for, have none)."""
    url = _require_url(args.redis)
    check_reachable(url)
    with redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
        record = read_record(client, args.run, events=args.event)
    warning = skipped_warning(record)
    if warning:
        print(f"pyprocsync: warning: {warning}", file=sys.stderr, flush=True)
    if not record.entries:
        raise CommandError(
            ExitCode.USAGE,
            f"no record of run {args.run!r} on {redact(url)}: the run may be unknown, "
            "recording switched off (record=False), or its record expired after the "
            "run's retention",
        )
    if not record.events:
        raise CommandError(
            ExitCode.FAILED,
            f"the record of run {args.run!r} holds no entry pyprocsync wrote "
            f"({record.skipped} skipped)",
        )
    if not record.outcomes:
        asked = ", ".join(repr(name) for name in args.event)
        held = ", ".join(repr(name) for name in record.events[:10])
        more = ", ..." if len(record.events) > 10 else ""
        raise CommandError(
            ExitCode.USAGE,
            f"the record of run {args.run!r} holds no entry of --event {asked} "
            f"(it holds {held}{more})",
        )
    report = summarize(record.outcomes)
    if args.json:
        document = report_json(args.run, record, report)
        _write(args.json, "--json", json.dumps(document, indent=1, allow_nan=False) + "\n")
    if args.html:
        _write(args.html, "--html", render_html(args.run, record, report))
    if args.json != "-":
        print("\n".join(format_report(args.run, record, report, rounds=args.rounds)))


def _reset(args: argparse.Namespace) -> None:
    url = _require_url(args.redis)
    check_reachable(url)
    try:
        with ProcSync.from_url(url, args.run) as node:
            print(node.reset(args.name))
    except InvalidArgumentError as exc:
        raise CommandError(ExitCode.USAGE, str(exc)) from None
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CommandError(
            ExitCode.CONNECTION, f"cannot reach Redis at {redact(url)}: {exc}"
        ) from None


def _clock(args: argparse.Namespace) -> None:
    url = _require_url(args.redis)
    check_reachable(url)
    samples = ClockFilter(window=args.samples)
    with (
        redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client,
        redispy.taken(client.connection_pool, None) as connection,
    ):
        for number in range(args.samples):
            if number and args.every:
                time.sleep(args.every)
            request = TimeRequest()  # timed right around the I/O, as the library does
            redispy.send(connection, request.command())
            samples.add(request.sample(redispy.read_reply(connection, None)))
    estimate = samples.current()
    rtts = summary(rtt / 1e3 for rtt in estimate.rtts_ns)
    taken = samples.samples
    span_s = (taken[-1].midpoint_ns - taken[0].midpoint_ns) / 1e9
    offset_ms = estimate.wall_offset_ns / 1e6
    print(f"server {redact(url)}: {args.samples} TIME round trips over {span_s:.3f} s")
    print(
        f"offset (server - this host): {offset_ms:+.3f} ms  "
        f"+- {estimate.uncertainty_ns / 1e6:.3f} ms "
        f"({'server ahead' if offset_ms >= 0 else 'server behind'})"
    )
    print(
        "round trip (us): "
        + "  ".join(f"{p} {rtts[p]:.0f}" for p in ("p50", "p90", "p99", "max"))
        + f"  min {min(estimate.rtts_ns) / 1e3:.0f}"
    )
    drift = f"drift (server - this host): {estimate.drift_ppb / 1e3:+.3f} ppm  "
    drift += f"+- {estimate.drift_bound_ppb / 1e3:.3f} ppm"
    if estimate.drift_bound_ppb >= MAX_DRIFT_PPB:
        drift += " (not measured: spread the samples out with --every)"
    print(drift)
    if samples.discarded:
        print(f"discarded {samples.discarded} samples contradicting later ones (a clock step?)")
    kernel = clock.kernel_clock()
    print(f"kernel: {_kernel_line(kernel)}")
    if args.max_offset is not None and abs(estimate.wall_offset_ns) > args.max_offset * 1e9:
        raise CommandError(
            ExitCode.CLOCK_OFF,
            f"this host's clock is {abs(offset_ms):.3f} ms off the server's, more than "
            f"--max-offset {args.max_offset} s: synchronize the clocks (NTP/PTP) or use "
            'clock="server"',
        )
    if args.max_uncertainty is not None:
        problem = _uncertainty_problem(args.clock, kernel, estimate.uncertainty_ns, args)
        if problem:
            raise CommandError(ExitCode.CLOCK_OFF, problem)
        print(f"within --max-uncertainty {args.max_uncertainty * 1e6:.0f} us ({args.clock} clock)")


def _kernel_line(kernel: clock.KernelClock | None) -> str:
    if kernel is None:
        return "says nothing of this host's clock (not Linux, or refused)"
    if not kernel.synchronized:
        return "this host's clock is not synchronised (no time daemon keeps it)"
    return (
        f"synchronised, max error {kernel.max_error_ns / 1e6:.3f} ms "
        f"(estimated {kernel.estimated_error_ns / 1e6:.3f} ms)"
    )


def _uncertainty_problem(
    mode: str, kernel: clock.KernelClock | None, estimate_ns: int, args: argparse.Namespace
) -> str | None:
    """Why this host cannot honour ``--max-uncertainty`` in ``mode``, or None."""
    limit_ns = args.max_uncertainty * 1e9
    limit = f"--max-uncertainty {args.max_uncertainty * 1e6:.0f} us"
    if mode == "server":
        if estimate_ns > limit_ns:
            return (
                f"the clock estimate's bound is {estimate_ns / 1e3:.0f} us, more than {limit}: "
                "a quicker or steadier link to the server narrows it"
            )
        return None
    if kernel is None or not kernel.synchronized:
        said = "says nothing of" if kernel is None else "says it does not synchronise"
        return (
            f"the kernel {said} this host's clock: no bound to honour {limit} with --clock "
            "system (set up chrony or PTP, or use --clock server)"
        )
    if kernel.max_error_ns > limit_ns:
        return (
            f"the kernel's bound on this host's clock is {kernel.max_error_ns / 1e3:.0f} us, "
            f"more than {limit}"
        )
    return None


_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "bench": _bench,
    "sync": _sync,
    "server": _server,
    "status": _status,
    "report": _report,
    "reset": _reset,
    "clock": _clock,
    "lab": _lab,
}


def _dispatch(args: argparse.Namespace) -> None:
    """Run the command of ``args``, its server URL (with the password) resolved first."""
    try:
        if args.command not in ("server", "lab"):
            args.redis = resolve_url(args.redis, args)
        _COMMANDS[args.command](args)
    except CredentialError as exc:
        raise CommandError(ExitCode.USAGE, str(exc)) from None


class _WarningLine(logging.Handler):
    """Prints the library's warnings (an unsynchronised clock, a step of the wall clock,
    who a round still waits for) as ``pyprocsync: warning: ...`` lines on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        # Never raise into the code that logged (a background writer of the library):
        # stderr may be closed by then, e.g. when main() ran inside another program.
        with contextlib.suppress(OSError, ValueError):
            print(f"pyprocsync: warning: {record.getMessage()}", file=sys.stderr, flush=True)


def _show_warnings() -> None:
    """Let the command print the library's warnings (once per process)."""
    logger = logging.getLogger("pyprocsync")
    if not any(isinstance(handler, _WarningLine) for handler in logger.handlers):
        logger.addHandler(_WarningLine())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pyprocsync`` command with ``argv`` (default ``sys.argv[1:]``); return its code.

    A ``sync`` that is released does not return: it ends the process at the release
    instant (``os._exit``), or execs its COMMAND then.
    """
    args = _parse(argv)
    _show_warnings()
    try:
        _dispatch(args)
    except CommandError as failure:
        print(f"pyprocsync: error: {failure}", file=sys.stderr)
        return failure.code
    except ServerError as exc:
        print(f"pyprocsync: error: {exc}", file=sys.stderr)
        return ExitCode.CONNECTION
    except ProcSyncError as exc:
        print(f"pyprocsync: error: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except redis.RedisError as exc:
        print(f"pyprocsync: error: Redis: {exc}", file=sys.stderr)
        return ExitCode.CONNECTION
    except KeyboardInterrupt:
        print("pyprocsync: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.OK

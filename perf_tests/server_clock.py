"""Server-clock precision at the caller, beside system-clock mode in the same run.

Scenarios (``--scenarios``, all by default), each run ``--repeat`` times, and within
each repeat once in each clock mode, one block right after the other:

* ``host2``, ``host3``, ``host4``: 2, 3 and 4 processes on this host, wall clocks as
  they are (``host3`` is the reference for ``skew``);
* ``skew``: 3 processes whose wall clocks are off by 0, +0.3 s and -0.2 s (each worker
  replaces :func:`pyprocsync.clock.time_ns`, the documented patch point, by the real
  clock plus its skew; libfaketime would add stalls of its own);
* ``proxy``: 2 processes that reach the server through a TCP proxy delaying each
  direction by 200 µs ± 20 µs (:class:`DelayProxy`), with ``delay="auto"`` (and one
  name for all rounds, since ``delay="auto"`` learns a name's latency from its
  previous rounds; a round then takes a few ms, so the scenario runs ten times
  ``--rounds``, to last about as long as the others).

Every participant calls ``sync`` on a new name each round and reads the *real* clock
(``time.time_ns()``, never skewed) on the line after it returns. Per round, *spread* is
the latest minus the earliest reading. *Late* is a reading minus the instant in real
time: in server-clock mode the instant is on the server's clock, which runs on this host
unskewed, so it is ``release_at + clock_offset`` (exact to rounding, whatever the
estimate); in system-clock mode it is ``release_at`` minus the participant's own skew
(when its own clock showed the instant). ``TooLateError`` is counted per participation.

In server-clock mode each result also gives the estimate's real error: the true offset
of the server's clock to a worker's wall clock is minus its skew, so ``clock_offset +
skew`` is the error, which must lie within ``clock_uncertainty`` (the *covered* share).
The table also reports the ``TIME`` round trips per participant and second.

Example::

    python perf_tests/server_clock.py --repeat 3 --rounds 100
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing
import queue
import random
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import redis
from _common import (
    PERCENTILES,
    Failure,
    count_arg,
    die_with_parent,
    fmt,
    machine,
    machine_line,
    median,
    median_summary,
    nan_to_none,
    redis_server,
    run,
    seconds_arg,
    stop_processes,
)

from pyprocsync import ProcSync, TooLateError, clock
from pyprocsync.tools.stats import summary

PROG = "server_clock"
MODES = ("system", "server")
#: Scenario name: (wall-clock skew of each worker in seconds, through the proxy).
SCENARIOS: dict[str, tuple[tuple[float, ...], bool]] = {
    "host2": ((0.0, 0.0), False),
    "host3": ((0.0, 0.0, 0.0), False),
    "host4": ((0.0, 0.0, 0.0, 0.0), False),
    "skew": ((0.0, 0.3, -0.2), False),
    "proxy": ((0.0, 0.0), True),
}
#: The proxy's delay of each direction: latency and jitter, seconds.
PROXY_DELAY = (200e-6, 20e-6)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="server_clock.py",
        description="Measure how precisely clock='server' releases processes, read in the "
        "caller, beside clock='system' in the same run: on one host, with skewed wall "
        "clocks, and through a latency proxy.",
    )
    parser.add_argument("--redis", metavar="URL", help="server URL (default: embedded)")
    parser.add_argument("--scenarios", nargs="+", choices=tuple(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--rounds", type=count_arg, default=100, help="rounds per block")
    parser.add_argument("--repeat", type=count_arg, default=3, help="repeats (default 3)")
    parser.add_argument(
        "--delay", type=seconds_arg, default=0.05, help="lead time without the proxy (0.05)"
    )
    parser.add_argument(
        "--think", type=seconds_arg, default=0.002, help="idle after each release (0.002)"
    )
    parser.add_argument("--json", metavar="FILE", help="write every figure as JSON")
    return parser


def _worker(
    url: str, run_id: str, config: dict[str, Any], rank: int, out: Any
) -> None:  # pragma: no cover - runs in a subprocess
    """One participant: skew this process's wall clock, sync ``rounds`` times, report."""
    die_with_parent()
    skew_ns = round(config["skews"][rank] * 1e9)
    if skew_ns:
        real = time.time_ns
        clock.time_ns = lambda: real() + skew_ns  # type: ignore[assignment]
    nodes, records = len(config["skews"]), []
    client = redis.Redis.from_url(url)
    with ProcSync(client, run_id, config["delay"], clock=config["mode"], liveness=30.0) as node:
        with_warm_up = True
        while with_warm_up:  # the first round starts everyone together and warms up
            try:
                node.sync("warm-up", nodes, 60)
                with_warm_up = False
            except TooLateError:
                with_warm_up = False
        first_round_trips, started = node._clocks.round_trips, time.monotonic()
        for number in range(config["rounds"]):
            try:
                result = node.sync(config["name"] or f"p{number}", nodes, 60)
                returned = time.time_ns()
                records.append(
                    {
                        "round": number,
                        "returned_ns": returned,
                        "release_at": result.release_at,
                        "clock_offset": result.clock_offset,
                        "clock_uncertainty": result.clock_uncertainty,
                    }
                )
            except TooLateError:
                records.append({"round": number, "returned_ns": time.time_ns(), "late": True})
            time.sleep(config["think"])
        # What sampling cost after the first estimate, and the round trips it measured.
        clocks = node._clocks
        rate = (clocks.round_trips - first_round_trips) / (time.monotonic() - started)
        rtts = [sample.rtt_ns / 1e3 for sample in clocks.filter.samples]
    out.put((rank, config["skews"][rank], records, rate, rtts))


def _instant_ns(record: dict[str, Any], mode: str, skew: float) -> float:
    """The instant in real time, ns (see the module's description)."""
    if mode == "server":
        return (record["release_at"] + record["clock_offset"]) * 1e9
    return (record["release_at"] - skew) * 1e9


def _block(url: str, scenario: str, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one block (one scenario in one mode) and return its figures."""
    skews, _ = SCENARIOS[scenario]
    config = {
        "skews": skews,
        "mode": mode,
        # With delay="auto" a round takes a few ms instead of delay + think: ten times
        # the rounds make the block last about as long (the estimate's state depends on
        # time: samples are taken every 2 * clock_refresh).
        "rounds": args.rounds * (10 if SCENARIOS[scenario][1] else 1),
        "delay": "auto" if SCENARIOS[scenario][1] else args.delay,
        # delay="auto" learns a name's latency from its previous rounds: one name.
        "name": "step" if SCENARIOS[scenario][1] else None,
        "think": args.think,
    }
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    run_id = f"server-clock-{uuid.uuid4().hex[:8]}"
    workers = [
        context.Process(target=_worker, args=(url, run_id, config, rank, out), daemon=True)
        for rank in range(len(skews))
    ]
    try:
        for worker in workers:
            worker.start()
        results = [_result(out, workers) for _ in workers]
        for worker in workers:
            worker.join(10)
    finally:
        stop_processes(workers)
    return _figures(mode, results, config["rounds"])


def _result(out: Any, workers: list[Any]) -> tuple[Any, ...]:
    """The next worker's result; :class:`Failure` as soon as a worker ended without one
    (its traceback is on stderr)."""
    while True:
        try:
            return cast(tuple[Any, ...], out.get(timeout=1.0))
        except queue.Empty:
            ended = [w for w in workers if w.exitcode not in (None, 0)]
            if ended:
                raise Failure(f"a worker ended with exit code {ended[0].exitcode}") from None


def _figures(mode: str, results: list[tuple[Any, ...]], rounds: int) -> dict[str, Any]:
    spreads, lates, errors, disagreements = [], [], [], []
    covered = too_late = 0
    for number in range(rounds):
        returned, round_errors = [], []
        for _, skew, records, _, _ in results:
            record = records[number]
            returned.append(record["returned_ns"])
            if record.get("late"):
                too_late += 1
                continue
            lates.append((record["returned_ns"] - _instant_ns(record, mode, skew)) / 1e3)
            if record["clock_offset"] is not None:
                error = record["clock_offset"] + skew
                round_errors.append(error * 1e6)
                covered += abs(error) <= record["clock_uncertainty"] + 1e-6  # rounding
        spreads.append((max(returned) - min(returned)) / 1e3)
        errors += [abs(error) for error in round_errors]
        if len(round_errors) > 1:
            disagreements.append(max(round_errors) - min(round_errors))
    return {
        "mode": mode,
        "spread_us": summary(spreads),
        "late_us": summary(lates),
        "too_late": too_late,
        "estimate_error_us": summary(errors),
        "disagreement_us": summary(disagreements),
        "estimates": len(errors),
        "covered": covered,
        "round_trips_per_s": max(result[3] for result in results),
        "rtt_us": summary(rtt for result in results for rtt in result[4]),
    }


class DelayProxy:
    """A TCP proxy on ``127.0.0.1`` that delays each chunk of data, in each direction, by
    ``latency`` plus uniform jitter in ``[-jitter, jitter]`` seconds (keeping the
    order of the chunks), with threads that sleep until each chunk is due.

    ``tests/netproxy.py`` delays with an event loop, whose timers fire on a millisecond
    grid: its 200 µs would be 1 ms, with up to 1 ms of asymmetry between the directions.
    These threads sleep with a timer slack of 1 ns instead (``PR_SET_TIMERSLACK``), so
    the delays are what they are said to be, plus the machine's wake-up latency.
    """

    def __init__(self, host: str, port: int, latency: float, jitter: float) -> None:
        self.target = (host, port)
        self.latency, self.jitter = latency, jitter
        self._rng = random.Random(1)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.target)
                for sock in (client, server):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._sockets += [client, server]
                self._pipe(client, server)
                self._pipe(server, client)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            due = 0.0
            with contextlib.suppress(OSError):
                while data := source.recv(65536):
                    jitter = self._rng.uniform(-self.jitter, self.jitter)
                    due = max(due, time.monotonic() + self.latency + jitter)
                    chunks.put((due, data))
            chunks.put((due, b""))

        def deliver() -> None:
            _fine_timer_slack()
            with contextlib.suppress(OSError):
                while True:
                    due, data = chunks.get()
                    if (wait := due - time.monotonic()) > 0:
                        time.sleep(wait)
                    if not data:
                        break
                    sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        for target in (read, deliver):
            threading.Thread(target=target, daemon=True).start()


def _fine_timer_slack() -> None:
    """Let this thread's sleeps end within a nanosecond of their time (Linux), instead
    of the default 50 µs of timer slack."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1)  # PR_SET_TIMERSLACK


@contextmanager
def _through(url: str, proxied: bool) -> Iterator[str]:
    """The URL to use: ``url``, or a :class:`DelayProxy` to it."""
    if not proxied:
        yield url
        return
    parts = redis.connection.parse_url(url)
    proxy = DelayProxy(parts.get("host", "127.0.0.1"), int(parts.get("port", 6379)), *PROXY_DELAY)
    try:
        yield proxy.url
    finally:
        proxy.close()


def _table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    """One row per scenario and mode: medians across the repeats."""

    def cells(runs: list[dict[str, Any]], key: str, which: tuple[str, ...]) -> str:
        values = median_summary([r[key] for r in runs])
        return " ".join(fmt(values[p], 7) for p in which)

    three = ("p50", "p99", "max")
    lines = [
        f"{'':<15} | {'spread of returns, us':^31} | {'lateness, us':^31} | {'too':>4} | "
        f"{'|estimate error| us':^23} | {'disagreement us':^15} | {'covered':>9} | "
        f"{'TIME':>5} | {'rtt us':>6}",
        f"{'scenario mode':<15} | "
        + " ".join(f"{p:>7}" for p in PERCENTILES)
        + " | "
        + " ".join(f"{p:>7}" for p in PERCENTILES)
        + f" | {'late':>4} | "
        + " ".join(f"{p:>7}" for p in three)
        + f" | {'p50':>7} {'p99':>7} | {'':>9} | {'/s':>5} | {'p50':>6}",
    ]
    for scenario, modes in results.items():
        for mode, runs in modes.items():
            estimates = sum(r["estimates"] for r in runs)
            covered = sum(r["covered"] for r in runs)
            lines.append(
                f"{scenario + ' ' + mode:<15} | {cells(runs, 'spread_us', PERCENTILES)} | "
                f"{cells(runs, 'late_us', PERCENTILES)} | "
                f"{median(r['too_late'] for r in runs):>4.0f} | "
                f"{cells(runs, 'estimate_error_us', three)} | "
                f"{cells(runs, 'disagreement_us', ('p50', 'p99'))} | "
                f"{f'{covered}/{estimates}' if estimates else '-':>9} | "
                f"{median(r['round_trips_per_s'] for r in runs):>5.2f} | "
                f"{fmt(median(r['rtt_us']['p50'] for r in runs), 6, 0)}"
            )
    return "\n".join(lines)


def main() -> int:
    args = _parser().parse_args()
    info = machine()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with redis_server(args.redis) as (url, _embedded):
        for repeat in range(args.repeat):
            for scenario in args.scenarios:
                with _through(url, SCENARIOS[scenario][1]) as target:
                    for mode in MODES:
                        figures = _block(target, scenario, mode, args)
                        results.setdefault(scenario, {}).setdefault(mode, []).append(figures)
                        print(
                            f"repeat {repeat + 1}/{args.repeat} {scenario} {mode}: spread p50 "
                            f"{figures['spread_us']['p50']:.1f} us, too late {figures['too_late']}",
                            file=sys.stderr,
                        )
    print(machine_line(info))
    print(
        f"rounds per block {args.rounds}, repeats {args.repeat} (figures: medians across the "
        f"repeats), delay {args.delay} s (proxy: auto), think {args.think} s"
    )
    print(_table(results))
    if args.json:
        Path(args.json).write_text(
            json.dumps(nan_to_none({"machine": info, "results": results}), indent=1),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    run(PROG, main)

"""One node of the multi-machine measurement: sync ROUNDS times, store what happened in Redis.

Run it on every machine (any number of times per machine) with the same ``--run`` and
``--nodes``; then ``report.py`` prints the cross-machine figures::

    python perf_tests/node.py --redis redis://:PW@server:6379/0 --run lab-1 --nodes 3 --rounds 300
    python perf_tests/report.py --redis redis://:PW@server:6379/0 --run lab-1

Before the run the node estimates its clock's offset from the Redis server's clock
with a few ``TIME`` round trips: for each, ``offset = server_time - (t_send + t_recv) / 2``;
the sample with the lowest round-trip time (RTT) is kept, and its uncertainty is RTT / 2
(plus half a microsecond for ``TIME``'s resolution). It measures again after the run, to
show drift. Then it syncs once to wait for every node (``--wait``), and ``--rounds`` times
on a new name per round (``step0``, ``step1``, ...; ``--names same``: one name), idling
``--think`` seconds after each release. For each round it keeps the round's number, the
generation, its arrival index, the agreed instant (``release_at``) and its own return
instant: ``time.time_ns()`` read on the line after ``sync`` returned (never
``SyncResult.late_by``, the library's report of itself).

Then the limit reference, measured in the same run by the same process: it waits
``--rounds`` times, with the library's wait (:func:`pyprocsync.clock.sleep_until_ns`,
same spin), for the instants ``t0 + i * (delay + think)``, where ``t0`` is the last
round's agreed instant plus one second: instants every node knows in advance, without
Redis. It reads ``time.time_ns()`` on the line after each wait returns. Its spread across
machines is what their clocks and wake-ups allow; no synchronization over Redis can do
better.

Everything is stored as one JSON document in the hash ``pyprocsync-perf:RUN`` (field:
the node id), which expires after ``--ttl`` seconds (default one day). A run id that
already has results on the server is refused: pick a new one for every measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import socket
import sys
import time
from typing import Any

import redis
from _common import ExitCode, Failure, check_reachable, run

import pyprocsync
from pyprocsync import ProcSync, ProcSyncError, clock
from pyprocsync.tools.stats import summary

PROG = "node"
#: Prefix of the hash that holds a run's records (``pyprocsync-perf:RUN``).
KEY_PREFIX = "pyprocsync-perf:"
START_EVENT = "perf-node-start"
#: The one name of ``--names same``.
EVENT = "perf-node"
#: From the last round's instant to the limit reference's first instant, seconds.
LIMIT_LEAD_S = 1.0


def records_key(run_id: str) -> str:
    """The hash holding the records of ``run_id``: one field per node."""
    return KEY_PREFIX + run_id


def _number(kind: type, low: float, what: str) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    count = _number(int, 1, "a whole number >= 1")
    seconds = _number(float, 0.0, "a number of seconds >= 0")
    positive = _number(float, 1e-6, "a number of seconds > 0")
    parser = argparse.ArgumentParser(
        prog="node.py",
        description="One node of the multi-machine measurement: estimate this clock's "
        "offset from the Redis server, sync ROUNDS times with the other nodes, and store "
        "every return instant in Redis for report.py.",
    )
    parser.add_argument("--redis", metavar="URL", required=True, help="the shared Redis server")
    parser.add_argument("--run", required=True, help="run id, the same on every node")
    parser.add_argument("--nodes", type=count, required=True, help="how many nodes take part")
    parser.add_argument("--rounds", type=count, default=300, help="rounds (default 300)")
    parser.add_argument(
        "--delay", type=seconds, default=0.01, help="lead time in seconds (default 0.01)"
    )
    parser.add_argument(
        "--think",
        type=seconds,
        default=0.002,
        help="seconds to idle after each release (default 0.002)",
    )
    parser.add_argument(
        "--spin",
        type=seconds,
        default=0.0005,
        help="seconds of busy-waiting before the instant (default 0.0005)",
    )
    parser.add_argument(
        "--names",
        choices=("distinct", "same"),
        default="distinct",
        help="a new name per round (distinct, the default: step0, step1, ...) or one name "
        "for every round (same); the same on every node",
    )
    parser.add_argument(
        "--wait",
        type=positive,
        default=600.0,
        help="seconds to wait for every node to start (default 600)",
    )
    parser.add_argument(
        "--timeout", type=positive, default=30.0, help="seconds to wait per round (default 30)"
    )
    parser.add_argument(
        "--samples",
        type=count,
        default=20,
        help="TIME round trips for the clock offset (default 20)",
    )
    parser.add_argument(
        "--ttl",
        type=count,
        default=86400,
        help="seconds the records are kept in Redis (default 86400)",
    )
    parser.add_argument("--node-id", help="this node's name (default HOST:PID)")
    return parser


def estimate_offset(client: redis.Redis, samples: int) -> dict[str, float]:
    """Estimate ``server clock - this clock`` from the lowest-RTT of ``samples`` TIME calls.

    :returns: ``offset_us``, ``rtt_us`` of that sample, ``uncertainty_us`` (RTT / 2 +
        0.5 µs: the reply may have been read anywhere in the round trip, and ``TIME``
        has a resolution of 1 µs), and ``samples``.
    """
    client.ping()  # the connection is open before the first timed round trip
    best_rtt, best_offset = math.inf, math.nan
    for _ in range(samples):
        t_send = time.time_ns()
        seconds, micros = client.time()
        t_recv = time.time_ns()
        # TIME truncates to the microsecond: the middle of that microsecond is closest.
        server_ns = seconds * 1_000_000_000 + micros * 1000 + 500
        rtt = t_recv - t_send
        if rtt < best_rtt:
            best_rtt, best_offset = rtt, server_ns - (t_send + t_recv) / 2
        time.sleep(0.001)
    return {
        "offset_us": best_offset / 1e3,
        "rtt_us": best_rtt / 1e3,
        "uncertainty_us": best_rtt / 2e3 + 0.5,
        "samples": samples,
    }


def _sync_rounds(node: ProcSync, args: argparse.Namespace, record: dict[str, Any]) -> None:
    rounds: list[list[int]] = record["rounds"]
    node.sync(START_EVENT, args.nodes, args.wait)
    print(f"{PROG}: all {args.nodes} nodes are here, syncing", file=sys.stderr, flush=True)
    for i in range(args.rounds):
        result = node.sync(
            f"step{i}" if args.names == "distinct" else EVENT, args.nodes, args.timeout
        )
        returned_ns = time.time_ns()  # the caller's next line
        time.sleep(args.think)  # first yield the CPU to nodes still waking, then record
        release_us = round(result.release_at * 1e6)
        rounds.append([i, result.generation, result.index, release_us, returned_ns])


def _limit_rounds(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """The limit reference: wait for instants every node knows in advance (see above)."""
    limit: list[list[int]] = record["limit"]
    t0_ns = record["rounds"][-1][3] * 1000 + round(LIMIT_LEAD_S * 1e9)
    period_ns = round((args.delay + args.think) * 1e9)
    spin_ns = round(args.spin * 1e9)
    for i in range(args.rounds):
        target_ns = t0_ns + i * period_ns
        clock.sleep_until_ns(target_ns, spin_ns)
        returned_ns = time.time_ns()  # read the same way as after sync
        limit.append([i, target_ns, returned_ns])


def _store(client: redis.Redis, args: argparse.Namespace, record: dict[str, Any]) -> None:
    key = records_key(args.run)
    pipe = client.pipeline()
    pipe.hset(key, record["node_id"], json.dumps(record))
    pipe.expire(key, args.ttl)
    pipe.execute()


def _describe(record: dict[str, Any]) -> str:
    lates = [(ret - rel * 1000) / 1e3 for *_, rel, ret in record["rounds"]]
    text = f"{PROG}: {record['node_id']}: {len(lates)}/{record['rounds_planned']} rounds"
    if lates:
        late = summary(lates)
        text += (
            f"; late by own clock p50 {late['p50']:.1f} us, p99 {late['p99']:.1f} us, "
            f"max {late['max']:.1f} us"
        )
    return text


def main() -> int:
    """Measure, store, and return the exit status (non-zero when a sync failed)."""
    args = _parser().parse_args()
    check_reachable(args.redis)
    node_id = args.node_id or f"{socket.gethostname()}:{os.getpid()}"
    with redis.Redis.from_url(args.redis) as client:
        if client.exists(records_key(args.run)):
            raise Failure(
                f"run {args.run!r} already has results on this server: pick a new --run",
                ExitCode.USAGE,
            )
        record: dict[str, Any] = {
            "node_id": node_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "python": platform.python_version(),
            "pyprocsync": pyprocsync.__version__,
            "nodes": args.nodes,
            "rounds_planned": args.rounds,
            "delay": args.delay,
            "think": args.think,
            "spin": args.spin,
            "names": args.names,
            "started_at": time.time(),
            "offset_before": estimate_offset(client, args.samples),
            "rounds": [],
            "limit": [],
            "errors": [],
        }
        before = record["offset_before"]
        print(
            f"{PROG}: {node_id}: clock offset vs server {before['offset_us']:+.1f} "
            f"+- {before['uncertainty_us']:.1f} us (RTT {before['rtt_us']:.1f} us); "
            f"waiting for {args.nodes} nodes of run {args.run!r}",
            file=sys.stderr,
            flush=True,
        )
        try:
            with ProcSync(
                client, args.run, args.delay, on_late="proceed", spin=args.spin, node_id=node_id
            ) as node:
                _sync_rounds(node, args, record)
            _limit_rounds(args, record)
        except (ProcSyncError, redis.RedisError) as exc:
            record["errors"].append(
                f"after {len(record['rounds'])} rounds: {type(exc).__name__}: {exc}"
            )
        except KeyboardInterrupt:
            record["errors"].append(f"after {len(record['rounds'])} rounds: interrupted")
            raise
        finally:
            try:
                record["offset_after"] = estimate_offset(client, args.samples)
                _store(client, args, record)
            except redis.RedisError as exc:
                print(f"{PROG}: could not store the results: {exc}", file=sys.stderr)
    print(_describe(record), file=sys.stderr)
    if record["errors"]:
        raise Failure(record["errors"][0])
    print(f"{PROG}: stored under {records_key(args.run)!r}; run report.py once every node is done")
    return 0


if __name__ == "__main__":
    run(PROG, main)

"""One participant of a multi-process test, run as ``python tests/node_helper.py ...``.

It opens a :class:`~pyprocsync.ProcSync` on ``--url`` and calls ``sync`` ``--rounds`` times,
printing one JSON line per round on stdout:

* ``{"round": i, "ok": true, <SyncResult fields>, "returned_ns": ...}`` when the round
  passed; ``returned_ns`` is ``time.time_ns()`` right after ``sync`` returned.
* ``{"round": i, "ok": false, "error": "<exception class>", "attrs": {...},
  "returned_ns": ...}`` when it raised; the helper then stops (exit status 0, so that the
  test, not the helper, judges the outcome).

``--die-after-arrival`` makes the process SIGKILL itself as soon as its arrival is counted
in Redis, before it starts waiting: a crashed participant that leaves an arrival behind.
``--die-before-arrival`` makes it SIGKILL itself just before its arrival is sent (it has
subscribed, nothing is counted): a participant that crashes on its way to the point.
``--delay`` takes a number of seconds or ``auto``.
``--cluster`` connects with :meth:`redis.cluster.RedisCluster.from_url` (``--url`` names
one node of the cluster) instead of the ``redis.Redis`` of ``ProcSync.from_url``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any, Literal

from redis.cluster import RedisCluster

import pyprocsync
from pyprocsync.core.ops import Call
from pyprocsync.core.scripts import Script
from pyprocsync.shells.blocking import ProcSync

#: Exception attributes copied into the JSON record when present.
ATTRS = (
    "event",
    "run_id",
    "generation",
    "reason",
    "missing",
    "arrived",
    "expected",
    "given",
    "timeout",
    "late_by",
    "release_at",
)


def lead_time(value: str) -> float | Literal["auto"]:
    """``--delay``: seconds, or ``auto``."""
    return "auto" if value == "auto" else float(value)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--event", required=True)
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--delay", type=lead_time, default=0.05)
    parser.add_argument("--liveness", type=float, default=5.0)
    parser.add_argument("--on-late", choices=("raise", "proceed"), default="raise")
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--think", type=float, default=0.0, help="seconds idle after a round")
    parser.add_argument("--die-after-arrival", action="store_true")
    parser.add_argument("--die-before-arrival", action="store_true")
    parser.add_argument("--cluster", action="store_true", help="--url is a Redis Cluster node")
    parser.add_argument("--member", action="store_true", help="register as a run member")
    return parser.parse_args(argv)


def error_record(exc: BaseException) -> dict[str, Any]:
    attrs = {}
    for name in ATTRS:
        if hasattr(exc, name):
            value = getattr(exc, name)
            attrs[name] = list(value) if isinstance(value, tuple) else value
    return {
        "ok": False,
        "error": type(exc).__name__,
        "message": str(exc),
        "attrs": attrs,
        "is_procsync_error": isinstance(exc, pyprocsync.ProcSyncError),
    }


def install_suicide(sync: ProcSync, *, before: bool) -> None:
    """Make ``sync`` SIGKILL this process right before (or after) its ARRIVE script runs."""
    execute = sync._execute

    def execute_and_die(op: object) -> object:
        arriving = isinstance(op, Call) and op.script is Script.ARRIVE
        if arriving and before:
            os.kill(os.getpid(), signal.SIGKILL)
        reply = execute(op)  # type: ignore[arg-type]
        if arriving:
            os.kill(os.getpid(), signal.SIGKILL)
        return reply

    sync._execute = execute_and_die  # type: ignore[method-assign]


@contextlib.contextmanager
def open_sync(args: argparse.Namespace, options: dict[str, Any]) -> Iterator[ProcSync]:
    """``ProcSync.from_url``, or with ``--cluster`` a ProcSync on a cluster client (closed
    after the ProcSync)."""
    if not args.cluster:
        with ProcSync.from_url(args.url, args.run_id, args.delay, **options) as sync:
            yield sync
        return
    with (
        RedisCluster.from_url(args.url) as client,
        ProcSync(client, args.run_id, args.delay, **options) as sync,
    ):
        yield sync


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    options: dict[str, Any] = {
        "liveness": args.liveness,
        "on_late": args.on_late,
        "member": args.member,
    }
    if args.node_id is not None:
        options["node_id"] = args.node_id
    with open_sync(args, options) as sync:
        if args.die_after_arrival or args.die_before_arrival:
            install_suicide(sync, before=args.die_before_arrival)
        for i in range(args.rounds):
            try:
                result = sync.sync(args.event, args.nodes, args.timeout)
            except BaseException as exc:
                record = error_record(exc)
                record.update(round=i, returned_ns=time.time_ns())
                print(json.dumps(record), flush=True)
                return 0
            record = dataclasses.asdict(result)
            record.update(round=i, ok=True, returned_ns=time.time_ns())
            print(json.dumps(record), flush=True)
            if args.think:
                time.sleep(args.think)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""One participant of a multi-process test: ``python tests/participant.py MODE ...``.

Every kind of participant the tests run as a subprocess is one ``MODE`` of this script:

* ``sync``: call ``ProcSync.sync(--name, --parties, --timeout)`` ``--rounds`` times; each
  record holds the :class:`~pyprocsync.SyncResult` fields. ``--think`` idles that many
  seconds after each round. ``--die-after-arrival`` makes the process SIGKILL itself as
  soon as its arrival is counted in Redis, before it starts waiting (a crashed
  participant that leaves an arrival behind); ``--die-before-arrival`` just before its
  arrival is sent (it has subscribed, nothing is counted). ``--say-arrived`` prints
  ``{"arrived": true}`` once the reply to its arrival came back: from then on it waits.
* ``event-wait``: call ``Event.wait(--timeout)`` ``--rounds`` times; each record holds
  ``value`` (what ``wait`` returned). With ``--ready-key``, the process INCRs that Redis
  key once its first wait has read the flag (from then on it is "already waiting").
* ``event-op``: call ``Event.<--op>()`` once (``set``, ``clear`` or ``is_set``); the record
  holds ``value``.
* ``barrier``: call ``Barrier.wait(--timeout)`` ``--rounds`` times; each record holds
  ``index``. ``--action`` gives every participant the same action (see :func:`action`).
* ``barrier-op``: call ``Barrier.<--op>()`` once (``abort`` or ``reset``).

``--flavour asyncio`` uses the classes of :mod:`pyprocsync.asyncio` (with an ``async def``
action) instead of the blocking ones. Every record is one JSON line on stdout with
``round``, ``ok`` and ``returned_ns`` (``time.time_ns()`` right after the call returned);
a call that raised gives ``ok: false`` with the exception's class and attributes (see
:func:`error_record`), and the participant stops with exit status 0, so that the test,
not the participant, judges the outcome.

``--delay`` takes seconds or ``auto`` (left out: the library's default). ``--cluster``
(or ``--cluster True``) connects with ``RedisCluster.from_url`` of :mod:`redis.cluster`
(or of :mod:`redis.asyncio.cluster`); ``--url`` then names one node of the cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, Literal

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

import pyprocsync
import pyprocsync.asyncio as aio
from pyprocsync.core.ops import Call
from pyprocsync.core.scripts import Script

MODES = ("sync", "event-wait", "event-op", "barrier", "barrier-op")

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


class ActionFailedError(RuntimeError):
    """What ``--action raise`` raises."""


def flag(text: str) -> bool:
    """The value of ``--cluster`` when one is given: ``true`` or ``false``."""
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return text.lower() == "true"


def lead_time(value: str) -> float | Literal["auto"]:
    """``--delay``: seconds, or ``auto``."""
    return "auto" if value == "auto" else float(value)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--url", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--flavour", choices=("blocking", "asyncio"), default="blocking")
    parser.add_argument("--parties", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--delay", type=lead_time, default=None)
    parser.add_argument("--liveness", type=float, default=None)
    parser.add_argument("--on-late", choices=("raise", "proceed"), default="raise")
    parser.add_argument("--node-id", default=None)
    parser.add_argument("--member", action="store_true", help="register as a run member")
    parser.add_argument("--think", type=float, default=0.0, help="seconds idle after a round")
    parser.add_argument("--die-after-arrival", action="store_true")
    parser.add_argument("--die-before-arrival", action="store_true")
    parser.add_argument("--say-arrived", action="store_true")
    parser.add_argument("--op", default=None)
    parser.add_argument("--action", choices=("none", "record", "raise"), default="none")
    parser.add_argument("--action-key", default=None, help="Redis list the action appends to")
    parser.add_argument("--action-sleep", type=float, default=0.0)
    parser.add_argument("--ready-key", default=None)
    parser.add_argument("--cluster", type=flag, nargs="?", const=True, default=False)
    args = parser.parse_args(argv)
    watched = args.die_after_arrival or args.die_before_arrival or args.say_arrived
    if watched and (args.mode != "sync" or args.flavour != "blocking"):
        parser.error("--die-* and --say-arrived need mode sync with the blocking flavour")
    return args


def options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options every mode's object is made with."""
    chosen: dict[str, Any] = {"run_id": args.run_id, "on_late": args.on_late}
    for name in ("delay", "liveness", "node_id"):
        if getattr(args, name) is not None:
            chosen[name] = getattr(args, name)
    if args.member:
        chosen["member"] = True
    return chosen


def error_record(exc: BaseException) -> dict[str, Any]:
    """The record of a call that raised ``exc``: its class, message and attributes."""
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


def action(
    args: argparse.Namespace, client: redis.Redis | RedisCluster
) -> Callable[[], None] | None:
    """``record``: (after ``--action-sleep``) RPUSH ``{"ns": time_ns(), "pid": pid}`` to
    ``--action-key`` as the action's last step; ``raise``: raise ActionFailedError."""
    if args.action == "none":
        return None

    def run() -> None:
        time.sleep(args.action_sleep)
        if args.action == "raise":
            raise ActionFailedError("the action failed")
        client.rpush(args.action_key, json.dumps({"ns": time.time_ns(), "pid": os.getpid()}))

    return run


def async_action(
    args: argparse.Namespace, client: aioredis.Redis | AsyncRedisCluster
) -> Callable[[], Any] | None:
    """:func:`action` as an ``async def`` function."""
    if args.action == "none":
        return None

    async def run() -> None:
        await asyncio.sleep(args.action_sleep)
        if args.action == "raise":
            raise ActionFailedError("the action failed")
        await client.rpush(args.action_key, json.dumps({"ns": time.time_ns(), "pid": os.getpid()}))

    return run


def announce_first_check(shell: Any, client: Any, key: str, *, is_async: bool) -> None:
    """INCR ``key`` (kept 60 s) once ``shell`` ran its first FLAG_CHECK: the waiter waits."""
    execute = shell._execute
    done: list[bool] = []

    def first_check(op: object) -> bool:
        if isinstance(op, Call) and op.script is Script.FLAG_CHECK and not done:
            done.append(True)
            return True
        return False

    if is_async:

        async def execute_async(op: Any) -> object:
            reply = await execute(op)
            if first_check(op):
                await client.incr(key)
                await client.expire(key, 60)
            return reply

        shell._execute = execute_async
    else:

        def execute_blocking(op: Any) -> object:
            reply = execute(op)
            if first_check(op):
                client.incr(key)
                client.expire(key, 60)
            return reply

        shell._execute = execute_blocking


def watch_arrival(sync: pyprocsync.ProcSync, args: argparse.Namespace) -> None:
    """Make ``sync`` act around its ARRIVE script: SIGKILL this process right before
    (``--die-before-arrival``) or after it (``--die-after-arrival``), or print
    ``{"arrived": true}`` once its reply is in (``--say-arrived``)."""
    execute = sync._execute

    def execute_and_act(op: object) -> object:
        arriving = isinstance(op, Call) and op.script is Script.ARRIVE
        if arriving and args.die_before_arrival:
            os.kill(os.getpid(), signal.SIGKILL)
        reply = execute(op)  # type: ignore[arg-type]
        if arriving and args.die_after_arrival:
            os.kill(os.getpid(), signal.SIGKILL)
        if arriving and args.say_arrived:
            print(json.dumps({"arrived": True}), flush=True)
        return reply

    sync._execute = execute_and_act  # type: ignore[method-assign]


def emit(record: dict[str, Any], number: int) -> None:
    record.update(round=number, returned_ns=time.time_ns())
    print(json.dumps(record), flush=True)


def value_record(value: object) -> dict[str, Any]:
    if isinstance(value, pyprocsync.SyncResult):
        return {"ok": True, **dataclasses.asdict(value)}
    if isinstance(value, int) and not isinstance(value, bool):
        return {"ok": True, "index": value}
    return {"ok": True, "value": value}


def make_call(args: argparse.Namespace, client: Any, module: Any) -> tuple[Any, Any]:
    """The object the mode uses and the function one round calls."""
    is_async = module is aio
    if args.mode in ("event-wait", "event-op"):
        event = module.Event(client, args.name, **options(args))
        if args.mode == "event-op":
            return event, getattr(event, args.op)
        if args.ready_key:
            announce_first_check(event._shell, client, args.ready_key, is_async=is_async)
        return event, lambda: event.wait(args.timeout)
    if args.mode in ("barrier", "barrier-op"):
        make_action = async_action if is_async else action
        barrier = module.Barrier(
            client, args.name, args.parties, make_action(args, client), **options(args)
        )
        if args.mode == "barrier-op":
            return barrier, getattr(barrier, args.op)
        return barrier, lambda: barrier.wait(args.timeout)
    sync = module.ProcSync(client, **options(args))
    if args.die_after_arrival or args.die_before_arrival or args.say_arrived:
        watch_arrival(sync, args)
    return sync, lambda: sync.sync(args.name, args.parties, args.timeout)


def run_blocking(args: argparse.Namespace) -> None:
    client = RedisCluster.from_url(args.url) if args.cluster else redis.Redis.from_url(args.url)
    try:
        instance, call = make_call(args, client, pyprocsync)
        with instance:
            for number in range(args.rounds):
                try:
                    record = value_record(call())
                except BaseException as exc:
                    emit(error_record(exc), number)
                    return
                emit(record, number)
                if args.think:
                    time.sleep(args.think)
    finally:
        client.close()


async def run_asyncio(args: argparse.Namespace) -> None:
    client: aioredis.Redis | AsyncRedisCluster
    if args.cluster:
        client = AsyncRedisCluster.from_url(args.url)
    else:
        client = aioredis.Redis.from_url(args.url)
    try:
        instance, call = make_call(args, client, aio)
        async with instance:
            for number in range(args.rounds):
                try:
                    record = value_record(await call())
                except BaseException as exc:
                    emit(error_record(exc), number)
                    return
                emit(record, number)
                if args.think:
                    await asyncio.sleep(args.think)
    finally:
        await client.aclose()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.flavour == "asyncio":
        asyncio.run(run_asyncio(args))
    else:
        run_blocking(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``pyprocsync bench``: how precisely real processes are released, beside what the machine allows.

Every figure is read where a user reads it: in the participant's own code, with
``time.time_ns()`` on the line after the call returns (not the library's report of
itself, :attr:`SyncResult.late_by`, which the table shows beside it).

The benchmark starts ``nodes`` worker processes, each with ``threads`` participants
that share one :class:`ProcSync` (threads; with ``asyncio``: tasks of one event loop
sharing one :class:`pyprocsync.asyncio.ProcSync`). After a warm-up round they run two
phases:

* **limit**: the participants wait for the instants ``t0 + i * period``, agreed in
  advance (``t0`` derives from the warm-up round's release instant, so no Redis is
  involved), and read the clock on the line after their wait returns. In each process
  the first participant waits with the wait code the library uses
  (:func:`pyprocsync.clock.sleep_until_ns`, or its asyncio twin) and then sets a
  standard-library event (:class:`threading.Event`, :class:`asyncio.Event`) that the
  process's other participants wait on: the best a process can do to wake several of
  its threads (tasks) at once, without Redis and without pyprocsync's own hand-over.
  This is the precision the machine itself allows for waking that many participants.
* **sync**: every participant calls ``sync`` ``rounds`` times, on a new name each time
  (``names="distinct"``, as the seed's examples do: ``"step0"``, ``"step1"``, ...) or on
  one name (``names="same"``), idling ``think`` seconds after each release (on a machine
  with fewer cores than participants, one that goes straight back to work takes the
  processor from those still waking).

With ``fresh`` set, the benchmark instead starts ``fresh`` times ``nodes`` new
processes that each wait once for an instant agreed in advance (the limit) and then
make their first ``sync`` call: the first synchronization of freshly started processes.

For each round, *spread* is the latest minus the earliest reading across participants
and *late* is each reading minus the agreed instant. A participant that learns of a
release after its instant (plus ``ProcSync``'s default ``late_tolerance``) gets
:class:`~pyprocsync.TooLateError`: it counts as *too late*, its late value is its
reading when the error reached it, and it goes on with the next round. *Late over 1 ms*
counts the readings more than 1 ms after the instant for any reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis

from pyprocsync import clock
from pyprocsync.asyncio import ProcSync as AsyncProcSync
from pyprocsync.core.params import DEFAULTS
from pyprocsync.exceptions import ProcSyncError, TooLateError
from pyprocsync.results import SyncResult
from pyprocsync.shells.blocking import ProcSync
from pyprocsync.tools.exec_bench import STAMP, ExecBenchError, run_exec_bench
from pyprocsync.tools.stats import summary

__all__ = [
    "FRESH_SPREAD_US",
    "LATE_OVER_US",
    "BenchConfig",
    "BenchError",
    "die_with_parent",
    "format_table",
    "plot",
    "progress_bar",
    "run_bench",
    "server_label",
    "stop_workers",
]

P = TypeVar("P")

#: A return more than this many µs after the instant is counted as "late over 1 ms".
LATE_OVER_US = 1000.0
#: The spread, µs, that a start of fresh processes is counted against.
FRESH_SPREAD_US = 200.0
#: Seconds from launching fresh processes to the instant they first wait for.
_FRESH_LEAD_S = 4.0
_EVENT = "bench"


class BenchError(ProcSyncError):
    """The benchmark could not run to its end (a worker failed or stopped answering)."""


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run does."""

    url: str
    #: Worker processes.
    nodes: int = 4
    rounds: int = 300
    #: Seconds, or ``"auto"`` (chosen from measured latency; the figures report it).
    delay: float | str = 0.01
    think: float = 0.002
    spin: float = DEFAULTS.spin
    timeout: float = 30.0
    clock: str = "system"
    #: ``"distinct"``: a new name per sync point; ``"same"``: one name for every round.
    names: Literal["distinct", "same"] = "distinct"
    #: Participants per process, sharing one instance.
    threads: int = 1
    #: Participants are asyncio tasks (of one loop per process) instead of threads.
    use_asyncio: bool = False
    #: When > 0: that many starts of fresh processes, one first sync each (``rounds``
    #: is then unused).
    fresh: int = 0
    #: Instead of rounds of the library: rounds of ``pyprocsync sync ... -- COMMAND``
    #: in new processes (see :mod:`pyprocsync.tools.exec_bench`).
    execs: bool = False
    #: Whether the participants add their outcomes to the run's record (``record``).
    record: bool = True
    run_id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex}")

    @property
    def participants(self) -> int:
        """Participants per round: processes times threads (or tasks)."""
        return self.nodes * self.threads

    @property
    def period(self) -> float:
        """Spacing of the limit phase's instants: about one sync round."""
        lead = 0.001 if isinstance(self.delay, str) else self.delay
        return max(lead, 0.001) + self.think

    def instance(self, cls: Callable[..., P], client: Any) -> P:
        """``cls(client, ...)`` (a ProcSync, blocking or asyncio) as this run configures it:
        the instance a worker process's participants share."""
        return cls(
            client, self.run_id, self.delay, spin=self.spin, clock=self.clock, record=self.record
        )

    def event(self, round_: int) -> str:
        """The name of round ``round_``'s sync point."""
        return f"step{round_}" if self.names == "distinct" else _EVENT

    def pattern(self) -> dict[str, Any]:
        """How participants use the library, as the JSON output records it."""
        return {
            "names": self.names,
            "threads": self.threads,
            "asyncio": self.use_asyncio,
            "fresh": self.fresh,
            "exec": self.execs,
            "participants": self.participants,
        }


@dataclass
class _NodeRecord:
    """What one participant measured, per round, read in its own code: µs after the
    agreed instant (limit and sync phases), and that instant.

    A participant whose sync loop failed has fewer sync rounds than configured.
    """

    rank: int
    limit_late_us: list[float]
    sync_late_us: list[float]
    release_us: list[float]
    errors: list[str]
    too_late: int = 0
    delays_us: list[float] = field(default_factory=list)
    #: ``late_by`` as the library reported it, for the rounds it returned normally.
    reported_late_us: list[float] = field(default_factory=list)
    #: The caller's reading minus ``late_by``, µs, for the same rounds.
    gap_us: list[float] = field(default_factory=list)

    def add(self, outcome: SyncResult | TooLateError, returned_ns: int) -> None:
        """Record a round's outcome, read at ``returned_ns``."""
        if isinstance(outcome, TooLateError):
            self.add_too_late(outcome, returned_ns)
        else:
            self.add_result(outcome, returned_ns)

    def add_result(self, result: SyncResult, returned_ns: int) -> None:
        """Record a round that returned normally, read at ``returned_ns``."""
        release_ns = round(result.release_at * 1e9)
        late_us = (returned_ns - release_ns) / 1e3
        self.sync_late_us.append(late_us)
        self.release_us.append(release_ns / 1e3)
        self.delays_us.append(result.delay * 1e6)
        self.reported_late_us.append(result.late_by * 1e6)
        self.gap_us.append(late_us - result.late_by * 1e6)

    def add_too_late(self, exc: TooLateError, returned_ns: int) -> None:
        """Record a round this participant learned of too late, read at ``returned_ns``."""
        self.too_late += 1
        release_s = exc.release_at or 0.0
        self.sync_late_us.append((returned_ns - round(release_s * 1e9)) / 1e3)
        self.release_us.append(release_s * 1e6)


def die_with_parent() -> None:
    """Ask Linux to stop this worker if the benchmark process dies (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _worker(config: BenchConfig, rank: int, out: Any) -> None:
    """Body of one worker process: its participants (threads or tasks) run
    :func:`_participate` (or :func:`_aparticipate`); each one's record goes to ``out``."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    ranks = range(rank * config.threads, (rank + 1) * config.threads)
    if config.use_asyncio:
        records = asyncio.run(_async_node(config, ranks, out))
    else:
        records = _blocking_node(config, ranks, out)
    for record in records:
        out.put(("done", record))


def _blocking_node(config: BenchConfig, ranks: range, out: Any) -> list[_NodeRecord]:
    client = redis.Redis.from_url(config.url)
    node = config.instance(ProcSync, client)
    records = [_NodeRecord(rank, [], [], [], []) for rank in ranks]
    gates = [threading.Event() for _ in range(config.rounds)]  # the limit phase's
    threads = [
        threading.Thread(target=_participate, args=(node, config, record, out, gates))
        for record in records
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        node.close()
        client.close()
    return records


def _participate(
    node: ProcSync,
    config: BenchConfig,
    record: _NodeRecord,
    out: Any,
    gates: list[threading.Event],
) -> None:
    """One participant: warm up, run the limit phase, then the sync phase. In the limit
    phase the process's first participant waits for each instant and sets its gate;
    the others wait on the gate."""
    watches = record.rank % config.threads == 0
    try:
        t0_ns = round((_warm_up(node, config) + 0.5) * 1e9)
        spin_ns = round(config.spin * 1e9)
        period_ns = round(config.period * 1e9)
        for i in range(config.rounds):
            target = t0_ns + i * period_ns
            if watches:
                clock.sleep_until_ns(target, spin_ns)
                gates[i].set()
            else:
                gates[i].wait()
            returned_ns = time.time_ns()  # the caller's next line
            time.sleep(config.think)  # first give the processor to those still waking
            record.limit_late_us.append((returned_ns - target) / 1e3)
        for i in range(config.rounds):
            outcome: SyncResult | TooLateError
            try:
                outcome = node.sync(config.event(i), config.participants, config.timeout)
                returned_ns = time.time_ns()  # the caller's next line
            except TooLateError as exc:  # the round was released: go on with the next
                outcome, returned_ns = exc, time.time_ns()
            time.sleep(config.think)  # as in the limit phase, before any bookkeeping
            record.add(outcome, returned_ns)
            if record.rank == 0 and i % 10 == 0:
                out.put(("progress", i))
    except Exception as exc:  # noqa: BLE001  # reported, and ends this participant's run
        record.errors.append(f"round {len(record.sync_late_us)}: {type(exc).__name__}: {exc}")


async def _async_node(config: BenchConfig, ranks: range, out: Any) -> list[_NodeRecord]:
    client = aioredis.Redis.from_url(config.url)
    node = config.instance(AsyncProcSync, client)
    records = [_NodeRecord(rank, [], [], [], []) for rank in ranks]
    gates = [asyncio.Event() for _ in range(config.rounds)]
    try:
        await asyncio.gather(
            *(_aparticipate(node, config, record, out, gates) for record in records)
        )
    finally:
        await node.aclose()
        await client.aclose()
    return records


async def _aparticipate(
    node: AsyncProcSync,
    config: BenchConfig,
    record: _NodeRecord,
    out: Any,
    gates: list[asyncio.Event],
) -> None:
    """:func:`_participate` for a task."""
    watches = record.rank % config.threads == 0
    try:
        t0_ns = round((await _async_warm_up(node, config) + 0.5) * 1e9)
        spin_ns = round(config.spin * 1e9)
        period_ns = round(config.period * 1e9)
        for i in range(config.rounds):
            target = t0_ns + i * period_ns
            if watches:
                await clock.async_sleep_until_ns(target, spin_ns)
                gates[i].set()
            else:
                await gates[i].wait()
            returned_ns = time.time_ns()  # the caller's next line
            await asyncio.sleep(config.think)
            record.limit_late_us.append((returned_ns - target) / 1e3)
        for i in range(config.rounds):
            outcome: SyncResult | TooLateError
            try:
                outcome = await node.sync(config.event(i), config.participants, config.timeout)
                returned_ns = time.time_ns()  # the caller's next line
            except TooLateError as exc:
                outcome, returned_ns = exc, time.time_ns()
            await asyncio.sleep(config.think)
            record.add(outcome, returned_ns)
            if record.rank == 0 and i % 10 == 0:
                out.put(("progress", i))
    except Exception as exc:  # noqa: BLE001  # reported, and ends this participant's run
        record.errors.append(f"round {len(record.sync_late_us)}: {type(exc).__name__}: {exc}")


def _warm_up(node: ProcSync, config: BenchConfig) -> float:
    """The warm-up round: return its release instant (epoch s), from which the limit
    phase's instants are counted. Learned too late, it serves all the same: it is the
    same instant for every worker."""
    try:
        return node.sync("warm-up", config.participants, config.timeout).release_at
    except TooLateError as exc:
        return _instant_of(exc)


async def _async_warm_up(node: AsyncProcSync, config: BenchConfig) -> float:
    """:func:`_warm_up` for a task."""
    try:
        return (await node.sync("warm-up", config.participants, config.timeout)).release_at
    except TooLateError as exc:
        return _instant_of(exc)


def _instant_of(exc: TooLateError) -> float:
    if exc.release_at is None:
        raise exc
    return exc.release_at


def _fresh_worker(config: BenchConfig, rank: int, start: int, first_ns: int, out: Any) -> None:
    """Body of one freshly started process: wait for ``first_ns`` (the limit), then make
    this process's first ``sync`` call; read the clock after each."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    record = _NodeRecord(rank, [], [], [], [])
    client = redis.Redis.from_url(config.url)
    node = config.instance(ProcSync, client)
    try:
        clock.sleep_until_ns(first_ns, round(config.spin * 1e9))
        returned_ns = time.time_ns()  # the caller's next line
        time.sleep(config.think)  # first give the processor to those still waking
        record.limit_late_us.append((returned_ns - first_ns) / 1e3)
        outcome: SyncResult | TooLateError
        try:
            outcome = node.sync(f"start{start}", config.nodes, config.timeout)
            returned_ns = time.time_ns()  # the caller's next line
        except TooLateError as exc:
            outcome, returned_ns = exc, time.time_ns()
        time.sleep(config.think)
        record.add(outcome, returned_ns)
    except Exception as exc:  # noqa: BLE001  # reported to the parent
        record.errors.append(f"start {start}: {type(exc).__name__}: {exc}")
    finally:
        node.close()
        client.close()
        out.put(("done", record))


def _collect(
    workers: Sequence[multiprocessing.process.BaseProcess],
    out: Any,
    config: BenchConfig,
    progress: Callable[[int], None],
    expected: int,
) -> list[_NodeRecord]:
    """Gather ``expected`` participants' records from ``out``, relaying progress."""
    records: list[_NodeRecord] = []
    # Generous: warm-up, both phases, and one timeout for a stuck round.
    rounds = 1 if config.fresh else config.rounds
    deadline = time.monotonic() + 2 * config.timeout + 2 * rounds * (config.period + 0.05)
    deadline += _FRESH_LEAD_S if config.fresh else 0.0
    while len(records) < expected:
        if time.monotonic() > deadline:
            raise BenchError("the benchmark workers stopped answering")
        try:
            kind, payload = out.get(timeout=0.5)
        except queue.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead:
                raise BenchError(
                    f"a benchmark worker exited with status {dead[0].exitcode}"
                ) from None
            continue
        if kind == "progress":
            progress(payload)
        else:
            records.append(payload)
    return records


def stop_workers(workers: Sequence[multiprocessing.process.BaseProcess]) -> None:
    """Terminate the workers still running and reap them all."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(5)
        if worker.is_alive():
            worker.kill()
            worker.join()


def run_bench(
    config: BenchConfig, progress: Callable[[int], None] = lambda _round: None
) -> dict[str, Any]:
    """Run the benchmark against the server at ``config.url``; return the figures.

    :param progress: called now and then with the number of sync rounds done.
    :returns: the figures: what the ``--json`` output holds (except ``server``, which
        the caller adds) plus ``raw``, the per-round values behind the summaries.
    :raises BenchError: a worker failed to start or stopped answering.
    """
    if config.fresh:
        return _figures(config, _fresh_starts(config, progress))
    if config.execs:
        return _figures(config, _exec_rounds(config))
    return _figures(config, _launch(config, progress, _worker, ()))


def _exec_rounds(config: BenchConfig) -> list[_NodeRecord]:
    """:func:`~pyprocsync.tools.exec_bench.run_exec_bench`'s readings as one record
    per process slot of a round."""
    try:
        sync, limit, instants = run_exec_bench(
            config.url,
            nodes=config.nodes,
            rounds=config.rounds,
            delay=config.delay,
            spin=config.spin,
            run_id=config.run_id,
        )
    except ExecBenchError as exc:
        raise BenchError(str(exc)) from None
    return [
        _NodeRecord(rank, [r[rank] for r in limit], [r[rank] for r in sync], instants, [])
        for rank in range(config.nodes)
    ]


def _launch(
    config: BenchConfig,
    progress: Callable[[int], None],
    target: Callable[..., None],
    args: tuple[Any, ...],
) -> list[_NodeRecord]:
    """Run ``target(config, rank, *args, out)`` in ``nodes`` new processes; return the
    participants' records in rank order."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=target, args=(config, rank, *args, out), daemon=True)
        for rank in range(config.nodes)
    ]
    expected = config.nodes if config.fresh else config.participants
    try:
        for worker in workers:
            worker.start()
        records = _collect(workers, out, config, progress, expected)
    finally:
        stop_workers(workers)
        out.close()
    return sorted(records, key=lambda record: record.rank)


def _fresh_starts(config: BenchConfig, progress: Callable[[int], None]) -> list[_NodeRecord]:
    """``config.fresh`` starts of new processes; one record per rank holding one value
    per start."""
    merged = [_NodeRecord(rank, [], [], [], []) for rank in range(config.nodes)]
    for start in range(config.fresh):
        first_ns = time.time_ns() + round(_FRESH_LEAD_S * 1e9)
        for total, record in zip(
            merged, _launch(config, lambda _r: None, _fresh_worker, (start, first_ns)), strict=True
        ):
            for name in ("limit_late_us", "sync_late_us", "release_us", "errors", "delays_us"):
                getattr(total, name).extend(getattr(record, name))
            total.reported_late_us += record.reported_late_us
            total.gap_us += record.gap_us
            total.too_late += record.too_late
        progress(start + 1)
    return merged


def _in_common(per_worker: list[list[float]]) -> tuple[list[float], list[float]]:
    """Return every worker's lateness and the spread of each round, over the rounds
    every worker completed (a worker that failed has fewer, maybe none)."""
    common = min(len(lates) for lates in per_worker)
    rounds = [lates[:common] for lates in per_worker]
    spread = [max(lates) - min(lates) for lates in zip(*rounds, strict=True)]
    return [late for lates in rounds for late in lates], spread


def _figures(config: BenchConfig, records: list[_NodeRecord]) -> dict[str, Any]:
    errors = [error for record in records for error in record.errors]
    sync_late, sync_spread = _in_common([record.sync_late_us for record in records])
    limit_late, limit_spread = _in_common([record.limit_late_us for record in records])
    complete = len(sync_spread)
    releases = records[0].release_us[:complete]
    one_off = config.fresh or config.execs  # rounds of new processes: no rate
    span_s = (releases[-1] - releases[0]) / 1e6 if len(releases) > 1 and not one_off else 0
    return {
        "nodes": config.nodes,
        "rounds": config.fresh or config.rounds,
        "delay": config.delay,
        "think": config.think,
        "spin": config.spin,
        "pattern": config.pattern(),
        "sync": {
            "spread_us": summary(sync_spread),
            "late_us": summary(sync_late),
            "reported_late_us": summary(v for r in records for v in r.reported_late_us),
            "gap_us": summary(v for r in records for v in r.gap_us),
            "spread_within_200us": sum(1 for v in sync_spread if v <= FRESH_SPREAD_US),
            "barriers_per_s": (len(releases) - 1) / span_s if span_s > 0 else 0.0,
            "too_late": sum(record.too_late for record in records),
            "late_over_1ms": sum(1 for late in sync_late if late > LATE_OVER_US),
            "errors": len(errors),
            "completed_rounds": complete,
            "delay_us": summary(d for r in records for d in r.delays_us),
            "error_messages": errors[:10],
        },
        "limit": {
            "spread_us": summary(limit_spread),
            "late_us": summary(limit_late),
            "spread_within_200us": sum(1 for v in limit_spread if v <= FRESH_SPREAD_US),
        },
        "raw": {
            "sync_spread_us": sync_spread,
            "limit_spread_us": limit_spread,
            "sync_late_us": sync_late,
            "limit_late_us": limit_late,
        },
        "config": {k: v for k, v in asdict(config).items() if k != "url"},
    }


def _lead(figures: dict[str, Any]) -> str:
    """The lead time and clock of a run, as the table and the plot title say them."""
    delay = figures["delay"]
    lead = "auto" if isinstance(delay, str) else f"{delay} s"
    clock = figures.get("config", {}).get("clock", "system")
    return lead if clock == "system" else f"{lead} (server clock)"


def format_table(figures: dict[str, Any]) -> str:
    """Render the figures as the table ``pyprocsync bench`` prints."""
    cols = ("p50", "p90", "p99", "max")

    def row(label: str, values: dict[str, float]) -> str:
        return f"  {label:<22}" + "".join(f"{values[c]:>10.1f}" for c in cols)

    def ratio(a: dict[str, float], b: dict[str, float]) -> str:
        parts = [f"{a[c] / b[c]:>10.2f}" if b[c] else f"{'-':>10}" for c in cols]
        return f"  {'sync / limit':<22}" + "".join(parts)

    sync, limit = figures["sync"], figures["limit"]
    header = f"  {'':<22}" + "".join(f"{c:>10}" for c in cols)
    pattern = figures.get("pattern") or BenchConfig(url="").pattern()
    fresh = pattern["fresh"]
    unit = f"{fresh} starts of fresh processes" if fresh else f"{figures['rounds']} rounds"
    lines = [
        f"pyprocsync bench: {figures['nodes']} nodes x {unit}, "
        f"delay {_lead(figures)}, think {figures['think']} s, server {figures['server']}",
        f"pattern: {_describe(pattern)}; "
        + (
            "every figure is the command's own first reading"
            if pattern.get("exec")
            else "every figure read in the caller, on the line after the call returns"
        ),
        "",
        "spread of return instants per round (us)",
        header,
        row("sync", sync["spread_us"]),
        row("limit (no Redis)", limit["spread_us"]),
        ratio(sync["spread_us"], limit["spread_us"]),
        "",
        "lateness: return instant - agreed instant (us)",
        header,
        row("sync", sync["late_us"]),
        row("limit (no Redis)", limit["late_us"]),
        ratio(sync["late_us"], limit["late_us"]),
    ]
    if "reported_late_us" in sync and not pattern.get("exec"):
        lines += [
            row("late_by (reported)", sync["reported_late_us"]),
            row("caller - late_by", sync["gap_us"]),
        ]
    if fresh:
        lines.append(
            f"starts with spread <= {FRESH_SPREAD_US:.0f} us: sync "
            f"{sync['spread_within_200us']}/{fresh}, limit {limit['spread_within_200us']}/{fresh}"
        )
    rate = "-" if fresh or pattern.get("exec") else f"{sync['barriers_per_s']:.0f}"
    lines += [
        "",
        f"barriers/s: {rate}   too late (TooLateError): "
        f"{sync['too_late']}   returned > 1 ms late: {sync['late_over_1ms']}   "
        f"errors: {sync['errors']}   "
        f"rounds completed: {sync['completed_rounds']}/{figures['rounds']}",
    ]
    if figures["delay"] == "auto" and "delay_us" in sync:
        chosen = sync["delay_us"]
        lines.append(
            "lead times chosen (delay auto, us): "
            + "  ".join(f"{p} {chosen[p]:.0f}" for p in ("p50", "p90", "p99", "max"))
        )
    lines += [f"  error: {message}" for message in sync["error_messages"]]
    return "\n".join(lines)


def _describe(pattern: dict[str, Any]) -> str:
    """The pattern as one phrase, for the table."""
    if pattern.get("exec"):
        command = " ".join(STAMP)
        return (
            f"pyprocsync sync -- {command}, {pattern['participants']} new processes per round, "
            f"each reading the start of {command}; limit: they exec it at an instant agreed "
            "in advance"
        )
    each = "task" if pattern["asyncio"] else "thread"
    names = "a new name per point" if pattern["names"] == "distinct" else "one name"
    sharing = (
        f"{pattern['threads']} {each}s per process sharing one instance"
        if pattern["threads"] > 1
        else f"one {each} per process"
    )
    return f"{names}, {sharing}, {pattern['participants']} participants" + (
        ", asyncio" if pattern["asyncio"] else ""
    )


def plot(figures: dict[str, Any], path: str) -> None:
    """Draw histograms of spread and lateness (sync vs limit) and a per-round timeline.

    :raises ImportError: matplotlib is not installed.
    """
    import matplotlib  # noqa: PLC0415  # optional dependency, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    raw = figures["raw"]
    fig, (ax_spread, ax_late, ax_time) = plt.subplots(3, 1, figsize=(9, 10))
    for ax, key, title in (
        (ax_spread, "spread_us", "spread of return instants per round"),
        (ax_late, "late_us", "return instant - agreed instant"),
    ):
        # Log-spaced bins: the body is microseconds wide, the tail milliseconds.
        values = {p: [max(v, 0.1) for v in raw[f"{p}_{key}"]] for p in ("sync", "limit")}
        top = max(max(v, default=1.0) for v in values.values())
        edges = [0.1 * (top / 0.1) ** (i / 60) for i in range(61)] if top > 0.1 else 60
        for phase, data in values.items():
            ax.hist(data, bins=edges, histtype="step", linewidth=1.5, label=phase)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("µs (values below 0.1 µs drawn at 0.1)")
        ax.set_ylabel("count")
        ax.legend()
    for phase in ("sync", "limit"):
        spreads = [max(v, 0.1) for v in raw[f"{phase}_spread_us"]]
        ax_time.plot(spreads, label=phase, linewidth=0.8)
    ax_time.set_yscale("log")
    ax_time.set_title("spread per round")
    ax_time.set_xlabel("round")
    ax_time.set_ylabel("µs")
    ax_time.legend()
    fig.suptitle(
        f"pyprocsync bench: {figures['nodes']} nodes, delay {_lead(figures)}, "
        f"think {figures['think']} s"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def progress_bar(total: int) -> Callable[[int], None]:
    """Return a progress callback drawing on stderr when it is a terminal (else silent)."""
    if not sys.stderr.isatty():
        return lambda _done: None

    def draw(done: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        sys.stderr.write(f"\r  sync [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
        sys.stderr.flush()
        if done >= total:
            sys.stderr.write("\n")

    return draw


def server_label(url: str, embedded: bool) -> str:
    """Describe the server: product and version, and where it is (never the password)."""
    try:
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            info = client.info("server")
    except redis.RedisError:
        info = {}
    product = "valkey" if "valkey_version" in info else "redis"
    version = info.get("valkey_version") or info.get("redis_version") or "?"
    where = "embedded" if embedded else (urlsplit(url).hostname or urlsplit(url).scheme)
    return f"{product} {version} ({where})"

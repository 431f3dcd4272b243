"""Soak: many barriers by several processes; hangs, disagreements, key lifetimes, memory.

``--processes`` worker processes pass ``--barriers`` barriers, one after the other, against
one server (a private embedded one unless ``--redis`` is given). Each process has its
own client and its own pyprocsync objects, configured with a short ``--retention`` and
``--liveness`` and a key prefix of this run only. Without ``--mixed`` every barrier is a
``ProcSync.sync``; with ``--mixed`` the barriers cycle through ``ProcSync.sync``,
``Barrier.wait`` and an ``Event`` round (one process, in turn, sets the event and waits
on it, the others wait; it clears the event once everyone passed the next barrier).
Every call passes ``--timeout``.

What is counted, and how:

* **hangs**: each worker notes in shared memory when its current call began; the
  script checks every 0.5 s, and a call running for more than ``--hang-after`` seconds
  (well beyond its own timeout) is a hang. The run then stops cleanly: the other workers
  are told to stop, the hung one is killed, and the figures cover what was done.
* **disagreements**: every worker records, per barrier, the event, the round (the
  generation ``SyncResult`` gives for ``sync``; the barrier's number in the run for
  Barrier and Event, whose public results carry no generation), the release instant and
  its arrival index. The release instant of ``sync`` is ``SyncResult.release_at``; that
  of ``Barrier.wait`` and ``Event.wait`` is the instant pyprocsync waited for
  (:func:`_common.record_waits`), or the ``release_at`` of a ``TooLateError``. A round
  whose participants report different instants (or, for ``sync``, generations) is a
  disagreement; a round in which two participants got the same arrival index is counted
  apart.
* **keys without TTL**: a sampler thread, every ``--sample-every`` seconds, SCANs the
  run's key prefix and asks PTTL of every key; a key with no lifetime (-1) is counted
  (samples with such keys, and distinct keys).
* **keys left**: after every worker closed its objects, the script waits ``--retention``
  plus ``--grace`` seconds and counts the keys still under the prefix.
* **server memory**: the sampler reads ``used_memory`` (INFO memory) at each sample.
  Growth is the median of the last 10 % of samples minus the median of the first 10 %
  (at least one sample each), beside a least-squares slope; more than
  ``--memory-tolerance`` bytes of growth counts as a leak.
* **errors** by exception type. ``TooLateError`` (a participant learned of the release
  after its instant, a matter of lead time and machine load) is reported but harmless;
  any other error is unexpected. After an error that breaks a round, the workers meet
  (outside Redis), one resets the events, and the run goes on.
* **barriers/s**, and the **spread** (latest minus earliest return of a round, over the
  rounds every process passed) and **late** (return instant minus release instant)
  p50/p90/p99/max, per kind of barrier (:func:`pyprocsync.tools.stats.summary`). A return
  instant is ``time.time_ns()`` read by the worker on the line after the call returned
  (or after its error was caught). The workers go from one barrier to the next without
  idling and no limit reference is measured: these are figures of a loaded run, not
  precision figures (``sync_precision.py`` measures those).

The exit status is 1 when any target is missed: a hang, a disagreement, a duplicate
index, a key without TTL, a key left, an unexpected error, or memory growth.

Example::

    python perf_tests/soak.py --barriers 10000 --processes 4 --mixed --json soak.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import queue
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import redis
from _common import (
    PERCENTILES,
    Failure,
    count_arg,
    die_with_parent,
    fmt,
    last_wait,
    machine,
    machine_line,
    nan_to_none,
    record_waits,
    redis_server,
    run,
    seconds_arg,
    stop_processes,
)

from pyprocsync import Barrier, Event, ProcSync, TooLateError
from pyprocsync.tools.bench import progress_bar, server_label
from pyprocsync.tools.stats import summary

PROG = "soak"
SYNC, BARRIER, EVENT = "sync", "Barrier.wait", "Event"
#: Names of the synchronization points (the event of a kind is named after it).
NAMES = {SYNC: "soak-sync", BARRIER: "soak-barrier", EVENT: "soak-event"}
WARM_UP = "soak-warm-up"
#: Records a worker collects before it sends them to the script.
CHUNK = 500
#: Errors after which the round is not broken and the run goes on as it is.
HARMLESS = ("TooLateError",)


@dataclass(frozen=True)
class SoakConfig:
    """What one soak run does."""

    url: str
    processes: int = 4
    barriers: int = 10_000
    mixed: bool = False
    delay: float = 0.005
    timeout: float = 10.0
    hang_after: float = 30.0
    liveness: float = 1.0
    retention: float = 2.0
    run_id: str = field(default_factory=lambda: f"soak-{uuid.uuid4().hex[:12]}")

    @property
    def prefix(self) -> str:
        """Key prefix of this run only, so that SCAN sees nothing else."""
        return f"pyprocsync-{self.run_id}"

    @property
    def kinds(self) -> tuple[str, ...]:
        return (SYNC, BARRIER, EVENT) if self.mixed else (SYNC,)


class Pass(NamedTuple):
    """One participant passing (or failing) one barrier."""

    kind: str
    #: The round: the generation for ``sync``, the barrier's number in the run otherwise.
    generation: int
    #: The barrier's number in the run (the same in every worker).
    iteration: int
    rank: int
    #: Arrival index (-1: none, e.g. an Event).
    arrival: int
    #: Release instant, epoch µs (-1: unknown).
    release_us: int
    #: Wall clock read by the caller on the line after the call returned, ns.
    returned_ns: int
    #: Exception type name, "" when the call succeeded.
    error: str


class _Shared:
    """What the script and its workers share besides the result queue."""

    def __init__(self, context: Any, processes: int) -> None:
        #: Per worker: monotonic time its current call began, 0 between calls.
        self.started = context.Array("d", processes, lock=False)
        #: Per worker: its current barrier number.
        self.iteration = context.Array("q", processes, lock=False)
        #: Per worker, during a recovery: the barrier to go on with.
        self.resume_at = context.Array("q", processes, lock=False)
        self.start = context.Event()
        self.stop = context.Event()
        self.recover = context.Event()
        self.recovery = context.Barrier(processes)


class _Objects:
    """One worker's pyprocsync objects."""

    def __init__(self, config: SoakConfig, rank: int, client: redis.Redis) -> None:
        options: dict[str, Any] = {
            "liveness": config.liveness,
            "retention": config.retention,
            "prefix": config.prefix,
            "node_id": f"soak-{rank}",
        }
        self.sync = ProcSync(client, config.run_id, config.delay, **options)
        self.barrier = Barrier(
            client,
            NAMES[BARRIER],
            config.processes,
            run_id=config.run_id,
            delay=config.delay,
            **options,
        )
        self.event = Event(
            client, NAMES[EVENT], run_id=config.run_id, delay=config.delay, **options
        )

    def close(self) -> None:
        for thing in (self.sync, self.barrier, self.event):
            thing.close()


def _instant_us(error: TooLateError | None = None) -> int:
    """The instant pyprocsync waited for (or the TooLateError's), epoch µs; -1 if none."""
    if error is not None:
        return -1 if error.release_at is None else round(error.release_at * 1e6)
    note = last_wait()
    return -1 if note is None or note.on_monotonic else note.target_ns // 1000


def _step(config: SoakConfig, objects: _Objects, rank: int, i: int) -> Pass:
    """Pass barrier number ``i`` (its kind follows from ``i``)."""
    kind = config.kinds[i % len(config.kinds)]
    last_wait(forget=True)
    index, gen, release_us, error = -1, i, -1, ""
    # Each return instant is read in this caller, on the line after the call returns.
    try:
        if kind == SYNC:
            result = objects.sync.sync(NAMES[SYNC], config.processes, config.timeout)
            returned = time.time_ns()
            index, gen = result.index, result.generation
            release_us = round(result.release_at * 1e6)
        elif kind == BARRIER:
            index = objects.barrier.wait(config.timeout)
            returned = time.time_ns()
            release_us = _instant_us()
        else:
            if rank == (i // len(config.kinds)) % config.processes:
                objects.event.set()
            passed = objects.event.wait(config.timeout)
            returned = time.time_ns()
            if not passed:
                error = "EventWaitTimedOut"
            release_us = _instant_us()
    except TooLateError as exc:
        returned = time.time_ns()
        error, release_us = type(exc).__name__, _instant_us(exc)
    except Exception as exc:  # counted by type; the run goes on (see _recover)
        returned = time.time_ns()
        error = type(exc).__name__
    return Pass(kind, gen, i, rank, index, release_us, returned, error)


def _recover(config: SoakConfig, objects: _Objects, shared: _Shared, rank: int, i: int) -> int:
    """Meet the other workers (outside Redis), reset the events, agree where to go on.

    Returns the barrier number to go on with, or -1 when the run must stop (a worker
    did not come: it hung or died).
    """
    shared.resume_at[rank] = i
    try:
        shared.recovery.wait(config.hang_after)
        if rank == 0:
            objects.sync.reset(NAMES[SYNC])
            if config.mixed:
                objects.barrier.reset()
                objects.event.clear()
            shared.recover.clear()
        shared.recovery.wait(config.hang_after)
    except Exception:  # threading.BrokenBarrierError: a worker did not come; or Redis failed
        shared.recovery.abort()
        return -1
    return int(max(shared.resume_at[:]))


def _worker(config: SoakConfig, rank: int, shared: _Shared, out: Any) -> None:
    """Body of one worker process."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the script decides when to stop
    record_waits()
    client = redis.Redis.from_url(config.url)
    objects = _Objects(config, rank, client)
    records: list[Pass] = []
    clear_after = -1  # the barrier after which this worker clears the event it set
    try:
        objects.sync.sync(WARM_UP, config.processes, max(60.0, config.timeout))
        out.put(("ready", rank, None))
        shared.start.wait()
        i = 0
        while i < config.barriers and not shared.stop.is_set():
            if shared.recover.is_set():
                i = _recover(config, objects, shared, rank, i)
                if i < 0:
                    break
                continue
            shared.iteration[rank] = i
            shared.started[rank] = time.monotonic()
            record = _step(config, objects, rank, i)
            shared.started[rank] = 0.0
            records.append(record)
            if record.kind == EVENT and rank == (i // len(config.kinds)) % config.processes:
                clear_after = i + 1  # everyone has passed the event once barrier i+1 is
            elif i == clear_after:
                objects.event.clear()
            if record.error and record.error not in HARMLESS:
                shared.resume_at[rank] = i + 1
                shared.recover.set()
                i = _recover(config, objects, shared, rank, i + 1)
                if i < 0:
                    break
                continue
            if len(records) >= CHUNK:
                out.put(("records", rank, records))
                records = []
            i += 1
    except Exception as exc:  # reported; the script stops the run
        out.put(("failed", rank, f"{type(exc).__name__}: {exc}"))
    finally:
        out.put(("records", rank, records))
        objects.close()
        client.close()
        out.put(("done", rank, None))


class _Sampler(threading.Thread):
    """Every ``every`` s: keys under the prefix, their TTLs, and the server's used_memory."""

    def __init__(self, url: str, prefix: str, every: float) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.url, self.pattern, self.every = url, f"{prefix}:*", every
        self.memory: list[tuple[float, int]] = []  # (monotonic s, used_memory bytes)
        self.samples = 0
        self.max_keys = 0
        self.samples_without_ttl = 0
        self.keys_without_ttl: set[str] = set()
        self.errors: Counter[str] = Counter()
        self._halt = threading.Event()

    def run(self) -> None:
        with redis.Redis.from_url(self.url, socket_timeout=10) as client:
            while True:
                began = time.monotonic()
                try:
                    self._sample(client)
                except redis.RedisError as exc:
                    self.errors[type(exc).__name__] += 1
                if self._halt.wait(max(0.0, self.every - (time.monotonic() - began))):
                    return

    def _sample(self, client: redis.Redis) -> None:
        used = int(client.info("memory")["used_memory"])
        keys = list(client.scan_iter(match=self.pattern, count=1000))
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.pttl(key)
            ttls = pipe.execute() if keys else []
        without = [key for key, ttl in zip(keys, ttls, strict=True) if ttl == -1]
        self.memory.append((time.monotonic(), used))
        self.samples += 1
        self.max_keys = max(self.max_keys, len(keys))
        if without:
            self.samples_without_ttl += 1
            self.keys_without_ttl.update(k.decode(errors="replace") for k in without)

    def halt(self) -> None:
        self._halt.set()
        self.join(30)


def count_keys(url: str, prefix: str) -> list[str]:
    """The keys under ``prefix``."""
    with redis.Redis.from_url(url, socket_timeout=10) as client:
        return [k.decode(errors="replace") for k in client.scan_iter(f"{prefix}:*", count=1000)]


def memory_trend(samples: Sequence[tuple[float, int]]) -> dict[str, float]:
    """First/last/max of ``used_memory`` samples, the growth between the medians of the
    first and the last 10 % of them, and the least-squares slope (bytes per minute)."""
    if not samples:
        return dict.fromkeys(("first", "last", "max", "head", "tail", "growth", "slope"), math.nan)
    values = [v for _, v in samples]
    tenth = max(1, len(values) // 10)
    head, tail = statistics.median(values[:tenth]), statistics.median(values[-tenth:])
    slope = math.nan
    if len(samples) > 1:
        times = [t for t, _ in samples]
        mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
        var = sum((t - mean_t) ** 2 for t in times)
        if var > 0:
            cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
            slope = cov / var * 60
    return {
        "first": values[0],
        "last": values[-1],
        "max": max(values),
        "head": head,
        "tail": tail,
        "growth": tail - head,
        "slope": slope,
    }


def _rounds(records: Iterable[Pass]) -> dict[tuple[str, int], list[Pass]]:
    grouped: dict[tuple[str, int], list[Pass]] = defaultdict(list)
    for record in records:
        grouped[(record.kind, record.iteration)].append(record)
    return grouped


def analyse(records: list[Pass], processes: int, kinds: Sequence[str]) -> dict[str, Any]:
    """Disagreements, duplicate indices, errors, throughput, spread and lateness."""
    disagreements: list[dict[str, Any]] = []
    duplicates = 0
    spread: dict[str, list[float]] = {kind: [] for kind in kinds}
    late: dict[str, list[float]] = {kind: [] for kind in kinds}
    completed = 0
    first_ns, last_ns = math.inf, -math.inf
    for (kind, iteration), passes in sorted(_rounds(records).items(), key=lambda x: x[0][1]):
        ok = [p for p in passes if p.release_us >= 0 and (not p.error or p.error in HARMLESS)]
        instants = {p.release_us for p in ok}
        generations = {p.generation for p in passes if not p.error}
        if len(instants) > 1 or len(generations) > 1:
            disagreements.append(
                {
                    "kind": kind,
                    "iteration": iteration,
                    "rounds": sorted(generations),
                    "release_us": sorted(instants),
                }
            )
        indices = [p.arrival for p in passes if p.arrival >= 0 and not p.error]
        duplicates += len(indices) != len(set(indices))
        clean = [p for p in passes if not p.error]
        if len(clean) == processes:
            completed += 1
            returns = [p.returned_ns for p in clean]
            spread[kind].append((max(returns) - min(returns)) / 1e3)
            first_ns, last_ns = min(first_ns, *returns), max(last_ns, *returns)
        late[kind].extend(p.returned_ns / 1e3 - p.release_us for p in ok if not p.error)
    errors = Counter(p.error for p in records if p.error)
    span = (last_ns - first_ns) / 1e9 if completed > 1 else 0.0
    return {
        "barriers_completed": completed,
        "barriers_per_s": (completed - 1) / span if span > 0 and completed > 1 else math.nan,
        "disagreements": len(disagreements),
        "disagreement_examples": disagreements[:10],
        "duplicate_indices": duplicates,
        "errors": dict(errors.most_common()),
        "unexpected_errors": sum(n for e, n in errors.items() if e not in HARMLESS),
        "spread_us": {kind: summary(values) for kind, values in spread.items()},
        "late_us": {kind: summary(values) for kind, values in late.items()},
    }


@dataclass
class _Run:
    """What the script saw of its workers."""

    records: list[Pass] = field(default_factory=list)
    hangs: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    ready: set[int] = field(default_factory=set)
    done: set[int] = field(default_factory=set)
    hung: set[int] = field(default_factory=set)

    def receive(self, kind: str, rank: int, payload: Any) -> None:
        """File one message of a worker."""
        if kind == "ready":
            self.ready.add(rank)
        elif kind == "records":
            self.records.extend(payload)
        elif kind == "failed":
            self.failures.append(f"worker {rank}: {payload}")
        elif kind == "done":
            self.done.add(rank)

    def watch(
        self,
        config: SoakConfig,
        workers: Sequence[multiprocessing.process.BaseProcess],
        shared: _Shared,
    ) -> None:
        """Note workers that died, and calls running longer than ``config.hang_after``."""
        now = time.monotonic()
        for rank, worker in enumerate(workers):
            if rank in self.done or rank in self.hung:
                continue
            if worker.exitcode not in (None, 0):
                self.failures.append(f"worker {rank} exited with status {worker.exitcode}")
                self.done.add(rank)
            started = shared.started[rank]
            if started and now - started > config.hang_after:
                self.hung.add(rank)
                iteration = shared.iteration[rank]
                self.hangs.append(
                    {
                        "rank": rank,
                        "iteration": iteration,
                        "kind": config.kinds[iteration % len(config.kinds)],
                        "seconds": round(now - started, 1),
                    }
                )


def _collect(
    config: SoakConfig,
    workers: Sequence[multiprocessing.process.BaseProcess],
    shared: _Shared,
    out: Any,
    on_started: Callable[[], None],
) -> _Run:
    """Receive records, watch for hangs and dead workers, until every worker is done.

    After a hang or a failure the workers are told to stop; a hung one is left to the
    caller (which kills it).
    """
    seen = _Run()
    draw = progress_bar(config.barriers)
    began = math.nan
    stop_deadline = math.inf
    while len(seen.done | seen.hung) < len(workers):
        if time.monotonic() > stop_deadline:
            seen.failures.append("workers did not stop in time after the run was stopped")
            break
        with contextlib.suppress(queue.Empty):
            seen.receive(*out.get(timeout=0.5))
        if len(seen.ready) == len(workers) and math.isnan(began):
            on_started()
            shared.start.set()
            began = time.monotonic()
        seen.watch(config, workers, shared)
        if (seen.hangs or seen.failures) and not shared.stop.is_set():
            shared.stop.set()
            shared.start.set()  # a worker still waiting to start leaves at once
            shared.recovery.abort()
            stop_deadline = time.monotonic() + config.timeout + config.hang_after
        if not math.isnan(began):
            draw(min(shared.iteration[:]))
    draw(config.barriers)
    if not math.isnan(began):
        seen.elapsed = time.monotonic() - began
    return seen


def run_soak(config: SoakConfig, grace: float, sample_every: float) -> dict[str, Any]:
    """Run the soak against ``config.url``; return every figure."""
    context = multiprocessing.get_context("spawn")
    shared = _Shared(context, config.processes)
    out = context.Queue()
    sampler = _Sampler(config.url, config.prefix, sample_every)
    workers = [
        context.Process(target=_worker, args=(config, rank, shared, out), daemon=True)
        for rank in range(config.processes)
    ]
    try:
        for worker in workers:
            worker.start()
        seen = _collect(config, workers, shared, out, sampler.start)
    finally:
        stop_processes(workers)  # closed their objects on the way out (unless hung)
        if sampler.is_alive():
            sampler.halt()
        out.close()
    time.sleep(config.retention + grace)
    left = count_keys(config.url, config.prefix)
    figures = analyse(seen.records, config.processes, config.kinds)
    return {
        "config": {k: v for k, v in asdict(config).items() if k != "url"},
        "grace": grace,
        "sample_every": sample_every,
        "elapsed_s": seen.elapsed,
        "hangs": seen.hangs,
        "failures": seen.failures,
        "keys": {
            "samples": sampler.samples,
            "max_keys": sampler.max_keys,
            "samples_without_ttl": sampler.samples_without_ttl,
            "keys_without_ttl": sorted(sampler.keys_without_ttl)[:20],
            "distinct_keys_without_ttl": len(sampler.keys_without_ttl),
            "left_after_close": len(left),
            "left_examples": left[:20],
            "sampler_errors": dict(sampler.errors),
        },
        "memory": memory_trend(sampler.memory),
        **figures,
    }


def targets(figures: dict[str, Any], memory_tolerance: float) -> list[tuple[str, float, str, bool]]:
    """(what, value, target, met) for every target of the soak."""
    keys, memory = figures["keys"], figures["memory"]
    growth = memory["growth"]
    return [
        ("hangs", len(figures["hangs"]), "0", not figures["hangs"]),
        (
            "rounds with disagreeing release_at",
            figures["disagreements"],
            "0",
            figures["disagreements"] == 0,
        ),
        (
            "rounds with a duplicate arrival index",
            figures["duplicate_indices"],
            "0",
            figures["duplicate_indices"] == 0,
        ),
        (
            "keys without TTL (distinct)",
            keys["distinct_keys_without_ttl"],
            "0",
            keys["distinct_keys_without_ttl"] == 0 and keys["samples"] > 0,
        ),
        (
            "keys left after close + retention + grace",
            keys["left_after_close"],
            "0",
            keys["left_after_close"] == 0,
        ),
        (
            "unexpected errors (all but TooLateError)",
            figures["unexpected_errors"],
            "0",
            figures["unexpected_errors"] == 0 and not figures["failures"],
        ),
        (
            "server memory growth (KiB)",
            growth / 1024,
            f"<= {memory_tolerance / 1024:g}",
            math.isfinite(growth) and growth <= memory_tolerance,
        ),
    ]


def _mib(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value / 2**20:.2f} MiB"


def format_report(figures: dict[str, Any], memory_tolerance: float, header: list[str]) -> str:
    """The table the script prints."""
    config = figures["config"]
    lines = [*header, "", f"{'':<46}{'value':>10}{'target':>14}"]
    for what, value, target, met in targets(figures, memory_tolerance):
        shown = f"{value:+.1f}" if "memory" in what and math.isfinite(value) else f"{value:g}"
        lines.append(f"  {what:<44}{shown:>10}{target:>14}   {'PASS' if met else 'FAIL'}")
    keys, memory = figures["keys"], figures["memory"]
    lines += [
        "",
        f"barriers: {figures['barriers_completed']} of {config['barriers']} passed by every "
        f"process without an error, run time {figures['elapsed_s']:.1f} s, "
        f"{fmt(figures['barriers_per_s'], 0, 0)} barriers/s",
        "errors by type: "
        + (", ".join(f"{e} {n}" for e, n in figures["errors"].items()) or "none"),
        f"keys: {keys['samples']} samples, at most {keys['max_keys']} keys under the prefix, "
        f"{keys['samples_without_ttl']} samples with a key without TTL",
        f"server memory (used_memory, {keys['samples']} samples): first {_mib(memory['first'])}"
        f", last {_mib(memory['last'])}, max {_mib(memory['max'])}",
        f"  median of the first 10 % {_mib(memory['head'])}, of the last 10 % "
        f"{_mib(memory['tail'])}: growth {fmt(memory['growth'] / 1024, 0, 1)} KiB, "
        f"slope {fmt(memory['slope'] / 1024, 0, 1)} KiB/min",
    ]
    for hang in figures["hangs"]:
        lines.append(
            f"  hang: worker {hang['rank']} in barrier {hang['iteration']} ({hang['kind']}) "
            f"for {hang['seconds']} s"
        )
    lines += [f"  failure: {failure}" for failure in figures["failures"]]
    lines += [f"  disagreement: {d}" for d in figures["disagreement_examples"][:3]]
    lines += [f"  key without TTL: {k}" for k in keys["keys_without_ttl"][:3]]
    lines += [f"  key left: {k}" for k in keys["left_examples"][:3]]
    lines += ["", f"{'(us)':<24}" + "".join(f"{p:>10}" for p in PERCENTILES)]
    for title, key in (("spread", "spread_us"), ("late", "late_us")):
        for kind, values in figures[key].items():
            label = f"{title} {kind}"
            lines.append(f"  {label:<22}" + "".join(fmt(values[p], 10) for p in PERCENTILES))
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soak.py",
        description="Pass many barriers with several processes; count hangs, release "
        "instants the participants disagree on, keys without TTL, keys left behind, "
        "memory growth and errors. Exit 1 when any of them is not zero (memory: beyond "
        "--memory-tolerance).",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="Redis server URL; default: a private embedded server"
    )
    parser.add_argument(
        "--barriers", type=count_arg, default=10_000, help="barriers (default 10000)"
    )
    parser.add_argument("--processes", type=count_arg, default=4, help="processes (default 4)")
    parser.add_argument(
        "--mixed",
        action="store_true",
        help="cycle through ProcSync.sync, Barrier.wait and Event set/wait",
    )
    parser.add_argument(
        "--delay", type=seconds_arg, default=0.005, help="lead time, seconds (default 0.005)"
    )
    parser.add_argument(
        "--timeout", type=seconds_arg, default=10.0, help="timeout of every call (default 10)"
    )
    parser.add_argument(
        "--hang-after",
        type=seconds_arg,
        default=30.0,
        help="a call still running after this many seconds is a hang (default 30)",
    )
    parser.add_argument(
        "--liveness", type=seconds_arg, default=1.0, help="lease, seconds (default 1)"
    )
    parser.add_argument(
        "--retention",
        type=seconds_arg,
        default=2.0,
        help="key lifetime, seconds, at least twice --liveness (default 2)",
    )
    parser.add_argument(
        "--grace",
        type=seconds_arg,
        default=1.0,
        help="seconds to wait after close + retention before counting keys left (default 1)",
    )
    parser.add_argument(
        "--sample-every",
        type=seconds_arg,
        default=0.5,
        help="seconds between samples of keys and memory (default 0.5)",
    )
    parser.add_argument(
        "--memory-tolerance",
        type=count_arg,
        default=2**20,
        metavar="BYTES",
        help="memory growth counted as a leak beyond this (default 1048576)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE")
    return parser


def main() -> int:
    """Run the soak; return 1 if a target was missed."""
    args = _parser().parse_args()
    if args.timeout <= 0 or args.liveness <= 0 or args.sample_every <= 0:
        raise Failure("--timeout, --liveness and --sample-every must be > 0", 2)
    if args.retention < 2 * args.liveness:
        raise Failure("--retention must be at least twice --liveness", 2)
    if args.hang_after <= args.timeout:
        raise Failure("--hang-after must exceed --timeout (a hang outlasts the timeout)", 2)
    info = machine()
    with redis_server(args.redis) as (url, embedded):
        config = SoakConfig(
            url=url,
            processes=args.processes,
            barriers=args.barriers,
            mixed=args.mixed,
            delay=args.delay,
            timeout=args.timeout,
            hang_after=args.hang_after,
            liveness=args.liveness,
            retention=args.retention,
        )
        server = server_label(url, embedded)
        figures = run_soak(config, args.grace, args.sample_every)
    figures.update(server=server, machine=info)
    kinds = ", ".join(config.kinds)
    header = [
        f"soak: {config.processes} processes x {config.barriers} barriers ({kinds}), "
        f"delay {config.delay:g} s, timeout {config.timeout:g} s, hang after "
        f"{config.hang_after:g} s, liveness {config.liveness:g} s, retention "
        f"{config.retention:g} s, server {server}",
        machine_line(info),
    ]
    print(format_report(figures, args.memory_tolerance, header))
    met = all(ok for *_, ok in targets(figures, args.memory_tolerance))
    figures["targets_met"] = met
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(nan_to_none(figures), file, indent=2)
            file.write("\n")
    if not met:
        print(f"{PROG}: targets missed (see FAIL above)", file=sys.stderr)
    return 0 if met else 1


if __name__ == "__main__":
    run(PROG, main)

"""Scale: many participants per barrier; commands, fan-out, spread, connections, memory.

For each ``--participants`` count N, ``--processes`` worker processes (fewer if N is
smaller) run N participants between them: threads, or with ``--asyncio`` tasks of one
event loop per process. With ``--instances process`` (the default) the participants of
a process share one ``ProcSync`` and one client, as the documentation suggests for
threads; with ``--instances participant`` each has its own ``ProcSync`` (on the process's
client). Every participant syncs once on the event (warm-up: connections, scripts,
subscriptions), then ``--barriers`` K times (the measured barriers), then once more for
the probe. All instants are read on this machine's wall clock, which every process
shares.

How each figure is measured:

* **commands per participant per barrier**: every worker process counts the commands
  its clients send, by name, by wrapping redis-py's command packers (sync
  ``PythonRespSerializer.pack`` / ``HiredisRespSerializer.pack``, asyncio
  ``AbstractConnection.pack_command``: every command goes through one of them, pub/sub,
  pipelines and connection handshakes included). The counts are read when every
  participant of the process is idle before and after the K barriers; their difference,
  summed over processes, divided by N * K is the figure. ``INFO commandstats`` is read at
  the same two moments (the script's own INFO subtracted) and shown beside it; it also
  counts the commands that pyprocsync's Lua scripts run inside the server (marked ``*``;
  the set is read from the scripts' source), so its total is the server's work, not the
  round trips. For commands the scripts never run, both counts must agree.
* **fan-out**: per barrier, from the decision to the moment the last participant knew
  the release instant. ``SyncResult`` has no "learned at" field, so each participant
  notes its wall clock when pyprocsync starts waiting for the instant
  (:func:`_common.record_waits` wraps ``pyprocsync.clock.sleep_until_ns`` /
  ``async_sleep_until_ns``, which pyprocsync calls once it knows the instant and the
  call has handed back what it held, as the public method's last step); one that
  learned too late has ``TooLateError.release_at + late_by`` instead. The decision
  instant is ``release_at - delay``: the last arrival's clock when it arrived, on this
  machine the same clock. Fan-out = max over participants of (learned) - decision: the
  last arrival's ARRIVE round trip, the announcement to N subscribers and their waking.
* **spread**: per barrier, the latest minus the earliest return instant over the N
  participants: each participant's ``time.time_ns()`` read in its own code, on the
  line after ``sync`` returned (or after the error was caught). **late** is that
  reading minus the release instant; ``SyncResult.late_by`` (the library's report of
  itself, not a measurement) is shown beside it, with the caller's reading minus it.
* **limit reference**: after each barrier, the same participants (same threads or tasks,
  same processes) wait, with the same wait code and spin, for ``release_at + delay``: an
  instant every one of them knows in advance, without Redis. Its spread is what this
  machine allows for waking N participants at once; ``ratio`` = spread p50 / reference
  p50. Its instants are read the same way, on the line after the wait returned. Both
  instants are followed by idling, so that a participant that goes on does not take
  the processor from those still waking: the barrier's instant by the reference wait,
  the reference instant by ``--think`` seconds before the next ``sync``.
* **connections per process**: during the probe, N - 1 participants wait while one holds
  back (it waits for the script's signal before it syncs); the script counts each worker
  process's ESTABLISHED TCP sockets to the server's port (its ``/proc/PID/fd`` socket
  inodes matched in ``/proc/net/tcp`` and ``tcp6``) - min and max over processes -
  and ``connected_clients`` (INFO clients) for all of them.
* **memory per pending barrier**: ``used_memory`` (INFO memory) during the probe minus
  before it (everyone idle between barriers), for the one pending barrier; also per
  waiting participant.
* **too late / errors**: ``TooLateError`` counts (a participant learned of the instant
  after it: raise ``--delay``) and other errors by type.

Targets, printed PASS/FAIL (exit status 1 if one fails): at most 3 commands per
participant per barrier at every N; fan-out p50 growing no faster than linearly in N
(least-squares slope of log fan-out over log N at most 1); at the largest N every
barrier completed by every participant, with spread p50 within 1.5 x the reference p50.
Use a server nobody else uses: its command counts and memory are read globally.

Example::

    python perf_tests/scale.py --participants 4 64 256 1024 --processes 4 --barriers 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import queue
import re
import resource
import signal
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from _common import (
    Failure,
    count_arg,
    die_with_parent,
    fmt,
    fmt_ratio,
    last_wait,
    machine,
    machine_line,
    nan_to_none,
    ratio,
    record_waits,
    redis_server,
    run,
    seconds_arg,
    stop_processes,
)

import pyprocsync.asyncio as aps
from pyprocsync import ProcSync, ProcSyncError, SyncResult, TooLateError, clock
from pyprocsync.tools.bench import server_label
from pyprocsync.tools.stats import summary
from pyprocsync.tools.status import read_status

PROG = "scale"
EVENT = "scale"
PREFIX = "pyprocsync-scale"
#: Commands whose first argument names a subcommand (INFO commandstats: ``client|setinfo``).
_CONTAINERS = frozenset(
    {
        *("acl", "client", "cluster", "command", "config", "debug", "function", "latency"),
        *("memory", "module", "object", "pubsub", "script", "slowlog", "xgroup", "xinfo"),
    }
)
#: Targets.
MAX_COMMANDS = 3.0
MAX_FANOUT_SLOPE = 1.0
MAX_SPREAD_RATIO = 1.5


@dataclass(frozen=True)
class ScaleConfig:
    """One configuration: N participants doing K barriers."""

    url: str
    participants: int
    processes: int = 4
    barriers: int = 20
    delay: float = 0.5
    timeout: float = 120.0
    use_asyncio: bool = False
    instances: str = "process"
    spin: float = 0.0005
    think: float = 0.1
    run_id: str = field(default_factory=lambda: f"scale-{uuid.uuid4().hex[:12]}")

    @property
    def sizes(self) -> list[int]:
        """Participants per worker process."""
        procs = min(self.processes, self.participants)
        return [self.participants // procs + (r < self.participants % procs) for r in range(procs)]

    @property
    def phase_timeout(self) -> float:
        """Generous bound for one phase (warm-up, the K barriers, the probe)."""
        return 60.0 + self.timeout + self.barriers * (2 * self.delay + self.think + 5.0)


class Round(NamedTuple):
    """One participant in one measured barrier (instants: wall clock, ns; -1: none)."""

    barrier: int
    release_ns: int
    delay_ns: int
    returned_ns: int
    learned_ns: int
    ref_target_ns: int
    ref_returned_ns: int
    error: str
    #: ``SyncResult.late_by``, ns: the library's report of itself (its last clock
    #: reading before the call returns), shown beside the caller's ``returned_ns``.
    late_by_ns: int = -1


# -- in the worker processes ------------------------------------------------------------

_COUNTS: Counter[str] = Counter()
_COUNT_LOCK = threading.Lock()


def _word(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, (bytes, bytearray)) else str(value)


def command_name(args: Sequence[object]) -> str:
    """The name INFO commandstats uses for a command: ``evalsha``, ``client|setinfo``."""
    words = _word(args[0]).split() + [_word(a) for a in args[1:2]]
    name = words[0].lower()
    if name in _CONTAINERS and len(words) > 1:
        return f"{name}|{words[1].lower()}"
    return name


def count_commands() -> bool:
    """Count every command this process's redis-py clients send; False if not possible."""
    import redis.asyncio.connection as async_connection  # noqa: PLC0415
    import redis.connection as sync_connection  # noqa: PLC0415

    targets = [
        (getattr(sync_connection, "PythonRespSerializer", None), "pack"),
        (getattr(sync_connection, "HiredisRespSerializer", None), "pack"),
        (getattr(async_connection, "AbstractConnection", None), "pack_command"),
    ]
    if any(owner is None or not hasattr(owner, attr) for owner, attr in targets):
        return False
    for owner, attr in targets:
        original = getattr(owner, attr)

        def counting(self: object, *args: object, _original: Any = original) -> Any:
            with _COUNT_LOCK:
                _COUNTS[command_name(args)] += 1
            return _original(self, *args)

        setattr(owner, attr, counting)
    return True


def _snapshot() -> dict[str, int]:
    with _COUNT_LOCK:
        return dict(_COUNTS)


def _passed(
    config: ScaleConfig, k: int, returned: int, result: SyncResult | None, exc: Exception | None
) -> Round:
    """What a participant knows right after ``sync`` of barrier ``k`` returned or raised;
    ``returned`` is its wall clock read on the line after that (ns)."""
    if result is not None:
        note = last_wait()
        release = round(result.release_at * 1e6) * 1000
        learned = note.began_ns if note is not None else -1
        late_by = round(result.late_by * 1e9)
        delay = round(result.delay * 1e9)
        return Round(k, release, delay, returned, learned, -1, -1, "", late_by)
    if isinstance(exc, TooLateError) and exc.release_at is not None:
        release = round(exc.release_at * 1e6) * 1000
        learned = release + round((exc.late_by or 0.0) * 1e9)
        return Round(k, release, round(config.delay * 1e9), returned, learned, -1, -1, "TooLate")
    return Round(k, -1, 0, returned, -1, -1, -1, type(exc).__name__)


def _reference_target(passed: Round) -> int:
    """The reference instant after a barrier: its release + its lead, known to everyone."""
    return passed.release_ns + passed.delay_ns


def _blocking_rounds(config: ScaleConfig, node: ProcSync) -> list[Round]:
    rounds = []
    for k in range(config.barriers):
        last_wait(forget=True)
        result, error = None, None
        try:
            result = node.sync(EVENT, config.participants, config.timeout)
            returned = time.time_ns()  # the caller's next line
        except ProcSyncError as exc:
            returned = time.time_ns()
            error = exc
        passed = _passed(config, k, returned, result, error)
        if passed.release_ns < 0:  # the round broke: so does every later one
            rounds.append(passed)
            break
        target = _reference_target(passed)
        clock.sleep_until_ns(target, round(config.spin * 1e9))
        ref_returned = time.time_ns()  # read the same way, on the line after the wait
        rounds.append(passed._replace(ref_target_ns=target, ref_returned_ns=ref_returned))
        time.sleep(config.think)  # the others wake up before this one goes on
    return rounds


async def _async_rounds(config: ScaleConfig, node: aps.ProcSync) -> list[Round]:
    rounds = []
    for k in range(config.barriers):
        last_wait(forget=True)
        result, error = None, None
        try:
            result = await node.sync(EVENT, config.participants, config.timeout)
            returned = time.time_ns()  # the caller's next line
        except ProcSyncError as exc:
            returned = time.time_ns()
            error = exc
        passed = _passed(config, k, returned, result, error)
        if passed.release_ns < 0:
            rounds.append(passed)
            break
        target = _reference_target(passed)
        await clock.async_sleep_until_ns(target, round(config.spin * 1e9))
        ref_returned = time.time_ns()
        rounds.append(passed._replace(ref_target_ns=target, ref_returned_ns=ref_returned))
        await asyncio.sleep(config.think)
    return rounds


@dataclass
class _Report:
    """What one worker process sends back."""

    rounds: list[list[Round]] = field(default_factory=list)
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    probe_errors: list[str] = field(default_factory=list)
    counting: bool = False


def _options(config: ScaleConfig, node_id: str) -> dict[str, Any]:
    return {"spin": config.spin, "prefix": PREFIX, "node_id": node_id}


def _between_phases(config: ScaleConfig, report: _Report, key: str, phase: Any) -> None:
    """Every participant of this process is idle: note the counts, meet the script twice."""
    setattr(report, key, _snapshot())
    phase.wait(config.phase_timeout)  # the script reads the server
    phase.wait(config.phase_timeout)  # ... and lets everyone go on


@dataclass(frozen=True)
class _Job:
    """One worker process's share: ``count`` participants, and its links to the script.

    ``phase``: a barrier of the workers and the script, met between the phases;
    ``holdout``: set by the script when the held-back participant may join the probe.
    """

    config: ScaleConfig
    rank: int
    count: int
    phase: Any
    holdout: Any


def _thread_main(job: _Job, report: _Report) -> None:
    config, rank, count, phase, holdout = job.config, job.rank, job.count, job.phase, job.holdout
    client = redis.Redis.from_url(config.url)
    per_process = config.instances == "process"
    nodes = [
        ProcSync(client, config.run_id, config.delay, **_options(config, f"scale-{rank}-{i}"))
        for i in range(1 if per_process else count)
    ]
    steps = ["before", "after"]
    local = threading.Barrier(
        count,
        action=lambda: _between_phases(config, report, steps.pop(0), phase),
        timeout=3 * config.phase_timeout,  # the action itself meets the script twice
    )
    report.rounds = [[] for _ in range(count)]
    failures: list[str] = []

    def participant(i: int) -> None:
        node = nodes[0 if per_process else i]
        try:
            node.sync(EVENT, config.participants, config.timeout)  # warm-up
            local.wait()
            report.rounds[i] = _blocking_rounds(config, node)
            local.wait()
            if rank == 0 and i == 0:
                holdout.wait(config.phase_timeout)
            try:
                node.sync(EVENT, config.participants, config.timeout)
            except ProcSyncError as exc:
                report.probe_errors.append(type(exc).__name__)
        except BaseException as exc:
            failures.append(f"participant {i}: {type(exc).__name__}: {exc}")
            local.abort()
            phase.abort()

    threads = [
        threading.Thread(target=participant, args=(i,), name=f"participant-{i}", daemon=True)
        for i in range(count)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for node in nodes:
            node.close()
        client.close()
    if failures:
        raise Failure(failures[0])


async def _async_main(job: _Job, report: _Report) -> None:
    config, rank, count, phase, holdout = job.config, job.rank, job.count, job.phase, job.holdout
    client = aioredis.Redis.from_url(config.url)
    per_process = config.instances == "process"
    nodes = [
        aps.ProcSync(client, config.run_id, config.delay, **_options(config, f"scale-{rank}-{i}"))
        for i in range(1 if per_process else count)
    ]
    mine = [nodes[0 if per_process else i] for i in range(count)]

    async def probe(i: int, node: aps.ProcSync) -> None:
        if rank == 0 and i == 0:
            await asyncio.get_running_loop().run_in_executor(
                None, holdout.wait, config.phase_timeout
            )
        try:
            await node.sync(EVENT, config.participants, config.timeout)
        except ProcSyncError as exc:
            report.probe_errors.append(type(exc).__name__)

    try:
        await asyncio.gather(*(n.sync(EVENT, config.participants, config.timeout) for n in mine))
        # Blocking the loop here is fine: every task of it is idle.
        _between_phases(config, report, "before", phase)
        report.rounds = list(await asyncio.gather(*(_async_rounds(config, n) for n in mine)))
        _between_phases(config, report, "after", phase)
        await asyncio.gather(*(probe(i, n) for i, n in enumerate(mine)))
    finally:
        for node in nodes:
            await node.aclose()
        await client.aclose()


def _worker(job: _Job, out: Any) -> None:
    """Body of one worker process: ``job.count`` participants."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the script decides when to stop
    record_waits()
    report = _Report(counting=count_commands())
    try:
        if job.config.use_asyncio:
            asyncio.run(_async_main(job, report))
        else:
            _thread_main(job, report)
    except BaseException as exc:
        job.phase.abort()
        out.put(("failed", job.rank, f"{type(exc).__name__}: {exc}"))
        return
    out.put(("report", job.rank, report))


# -- in the script ------------------------------------------------------------------------


def script_commands() -> frozenset[str]:
    """The commands pyprocsync's Lua scripts run inside the server (lower case).

    Read from the scripts' text (``Script.source()`` with and without sharded pub/sub
    where it exists, else the raw text): every ``redis.call('NAME'`` in it.
    """
    try:
        from pyprocsync.core.scripts import Script  # noqa: PLC0415  # internal: best effort
    except ImportError:
        return frozenset()
    texts: list[str] = []
    for script in Script:
        source = getattr(script, "source", None)
        try:
            texts += [source(), source(sharded=True)] if callable(source) else [script.value]
        except TypeError:
            texts.append(str(script.value))
    pattern = re.compile(r"redis\.p?call\s*\(\s*'(\w+)'|pcall\s*\(\s*redis\.call\s*,\s*'(\w+)'")
    return frozenset((a or b).lower() for text in texts for a, b in pattern.findall(text))


def commandstats(client: redis.Redis) -> dict[str, int]:
    """INFO commandstats as ``{name: calls}``."""
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    names = set(after) | set(before)
    return {n: d for n in names if (d := after.get(n, 0) - before.get(n, 0))}


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def tcp_connections(pids: Iterable[int], port: int) -> list[int]:
    """Per pid: its ESTABLISHED TCP connections to remote port ``port`` (Linux /proc)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as lines:
                next(lines)
                for line in lines:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                        established.add(fields[9])
        except OSError:
            continue
    return [len(_socket_inodes(pid) & established) for pid in pids]


def _memory(client: redis.Redis, config: ScaleConfig) -> dict[str, float]:
    """Median of 5 readings (50 ms apart) of ``used_memory`` and ``used_memory_dataset``.

    A status read first, so that this connection's own buffers are alike in both samples.
    """
    read_status(client, config.run_id, prefix=PREFIX, retention=None)
    readings: dict[str, list[int]] = {}
    for i in range(5):
        if i:
            time.sleep(0.05)
        info = client.info("memory")
        for key in ("used_memory", "used_memory_dataset"):
            if key in info:
                readings.setdefault(key, []).append(int(info[key]))
    return {key: statistics.median(values) for key, values in readings.items()}


def _wait_for_waiters(client: redis.Redis, config: ScaleConfig) -> bool:
    """Poll until N - 1 participants wait in the probe round; False if it broke or timed out."""
    deadline = time.monotonic() + config.phase_timeout
    while time.monotonic() < deadline:
        for status in read_status(client, config.run_id, prefix=PREFIX, retention=None):
            if status.event != EVENT:
                continue
            if status.state == "broken":
                return False
            if status.state == "filling" and status.arrived >= config.participants - 1:
                return True
        time.sleep(0.05)
    return False


def _phase(
    phase: Any,
    config: ScaleConfig,
    out: Any,
    workers: Sequence[multiprocessing.process.BaseProcess],
    what: str,
) -> None:
    """Meet the workers at ``phase``; raise :class:`Failure` if one failed or died."""
    errors: list[BaseException] = []

    def meet() -> None:
        try:
            phase.wait(config.phase_timeout)
        except threading.BrokenBarrierError as exc:
            errors.append(exc)

    meeting = threading.Thread(target=meet, name=f"phase {what}", daemon=True)
    meeting.start()
    while meeting.is_alive():
        meeting.join(0.5)
        if any(w.exitcode not in (None, 0) for w in workers):
            phase.abort()  # a worker died without a word: do not wait for the timeout
    if not errors:
        return
    failures = [f"worker {r} exited with status {w.exitcode}" for r, w in enumerate(workers)]
    failures = [f for f, w in zip(failures, workers, strict=True) if w.exitcode not in (None, 0)]
    while True:
        try:
            kind, rank, payload = out.get(timeout=1)
        except queue.Empty:
            break
        if kind == "failed":
            failures.append(f"worker {rank}: {payload}")
    why = "; ".join(failures) or "timed out"
    raise Failure(f"N={config.participants}: {what}: {why}")


@dataclass
class _Probe:
    idle_memory: dict[str, float] = field(default_factory=dict)
    memory: dict[str, float] = field(default_factory=dict)
    idle_connections: list[int] = field(default_factory=list)
    connections: list[int] = field(default_factory=list)
    connected_clients: int = -1
    connected_clients_idle: int = -1
    waiting: bool = False


def run_scale(config: ScaleConfig) -> dict[str, Any]:
    """Run one configuration against ``config.url``; return its figures."""
    context = multiprocessing.get_context("spawn")
    sizes = config.sizes
    phase = context.Barrier(len(sizes) + 1)
    holdout = context.Event()
    out = context.Queue()
    workers = [
        context.Process(
            target=_worker, args=(_Job(config, rank, size, phase, holdout), out), daemon=True
        )
        for rank, size in enumerate(sizes)
    ]
    parts = urlsplit(config.url)
    port = (parts.port or 6379) if parts.scheme in ("redis", "rediss") else None
    probe = _Probe()
    reports: dict[int, _Report] = {}
    with redis.Redis.from_url(config.url, socket_timeout=30) as client:
        try:
            for worker in workers:
                worker.start()
            pids = [w.pid or 0 for w in workers]
            _phase(phase, config, out, workers, "warm-up")
            before = commandstats(client)
            _phase(phase, config, out, workers, "start")
            _phase(phase, config, out, workers, f"{config.barriers} barriers")
            after = commandstats(client)
            probe.idle_memory = _memory(client, config)
            probe.idle_connections = tcp_connections(pids, port) if port else []
            probe.connected_clients_idle = int(client.info("clients")["connected_clients"])
            _phase(phase, config, out, workers, "probe")
            probe.waiting = _wait_for_waiters(client, config)
            if probe.waiting:
                probe.memory = _memory(client, config)
                probe.connections = tcp_connections(pids, port) if port else []
                probe.connected_clients = int(client.info("clients")["connected_clients"])
            holdout.set()
            deadline = time.monotonic() + config.phase_timeout
            while len(reports) < len(workers):
                try:
                    kind, rank, payload = out.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise Failure(f"N={config.participants}: workers sent no results") from None
                if kind == "failed":
                    raise Failure(f"N={config.participants}: worker {rank}: {payload}")
                reports[rank] = payload
        finally:
            holdout.set()
            stop_processes(workers)
            out.close()
    server = _delta(after, before)
    server["info"] = server.get("info", 0) - 1  # the script's own INFO commandstats
    server = {name: calls for name, calls in server.items() if calls}
    return analyse(config, [reports[r] for r in sorted(reports)], server, probe)


def _per(count: float, config: ScaleConfig) -> float:
    return count / (config.participants * config.barriers)


def _by_barrier(rounds: Iterable[Round], barriers: int) -> list[list[Round]]:
    grouped: list[list[Round]] = [[] for _ in range(barriers)]
    for r in rounds:
        grouped[r.barrier].append(r)
    return grouped


def analyse(
    config: ScaleConfig, reports: list[_Report], server: dict[str, int], probe: _Probe
) -> dict[str, Any]:
    """Every figure of one configuration."""
    n = config.participants
    everyone = [r for report in reports for rounds in report.rounds for r in rounds]
    spread, reference, fanout, late_by_spread = [], [], [], []
    completed = 0
    for passes in _by_barrier(everyone, config.barriers):
        if len(passes) != n:
            continue
        completed += all(not p.error for p in passes)
        if all(p.release_ns >= 0 for p in passes):
            spread.append(max(p.returned_ns for p in passes) - min(p.returned_ns for p in passes))
        if all(p.late_by_ns >= 0 for p in passes):
            late_by = [p.late_by_ns for p in passes]
            late_by_spread.append((max(late_by) - min(late_by)) / 1e3)
        if all(p.ref_returned_ns >= 0 for p in passes):
            refs = [p.ref_returned_ns for p in passes]
            reference.append(max(refs) - min(refs))
        if all(p.learned_ns >= 0 for p in passes):
            decision = passes[0].release_ns - passes[0].delay_ns
            fanout.append(max(p.learned_ns for p in passes) - decision)
    errors = Counter(r.error for r in everyone if r.error)
    errors.update(e for report in reports for e in report.probe_errors)
    counting = all(report.counting for report in reports)
    client: Counter[str] = Counter()
    for report in reports:
        client.update(_delta(report.after, report.before))
    inside = script_commands()
    outside = sum(v for k, v in server.items() if k not in inside)
    spread_us = summary(s / 1e3 for s in spread)
    reference_us = summary(s / 1e3 for s in reference)
    waiting = n - 1
    memory = {
        key: probe.memory[key] - probe.idle_memory[key]
        for key in probe.memory
        if key in probe.idle_memory
    }
    return {
        "participants": n,
        "processes": len(config.sizes),
        "per_process": config.sizes,
        "barriers": config.barriers,
        "completed": completed,
        "commands": {
            "client_counted": counting,
            "per_participant_barrier": _per(sum(client.values()), config)
            if counting
            else _per(outside + server.get("time", 0) * ("time" in inside), config),
            "client": {k: _per(v, config) for k, v in client.most_common()},
            "server": {k: _per(v, config) for k, v in sorted(server.items(), key=lambda x: -x[1])},
            "server_outside_scripts": _per(outside, config),
            "server_total": _per(sum(server.values()), config),
            "inside_scripts": sorted(inside),
        },
        "fanout_us": summary(f / 1e3 for f in fanout),
        "spread_us": spread_us,
        "reference_us": reference_us,
        "spread_over_reference_p50": ratio(spread_us["p50"], reference_us["p50"]),
        "late_us": summary((p.returned_ns - p.release_ns) / 1e3 for p in everyone if not p.error),
        "late_by_us": summary(p.late_by_ns / 1e3 for p in everyone if p.late_by_ns >= 0),
        "gap_us": summary(
            (p.returned_ns - p.release_ns - p.late_by_ns) / 1e3
            for p in everyone
            if p.late_by_ns >= 0
        ),
        "spread_late_by_us": summary(late_by_spread),
        "reference_late_us": summary(
            (p.ref_returned_ns - p.ref_target_ns) / 1e3 for p in everyone if p.ref_returned_ns >= 0
        ),
        "too_late": errors.pop("TooLate", 0),
        "errors": dict(errors),
        "connections_per_process": probe.connections,
        "connections_per_process_idle": probe.idle_connections,
        "connected_clients": probe.connected_clients,
        "connected_clients_idle": probe.connected_clients_idle,
        "probe_waiting": probe.waiting,
        "memory_delta": memory,
        "memory_per_pending_barrier": memory.get("used_memory", math.nan),
        "dataset_per_pending_barrier": memory.get("used_memory_dataset", math.nan),
        "dataset_per_waiter": memory.get("used_memory_dataset", math.nan) / waiting,
        "config": {k: v for k, v in asdict(config).items() if k != "url"},
    }


def fanout_slope(results: Sequence[dict[str, Any]]) -> float:
    """Least-squares slope of log(fan-out p50) over log(N); NaN with fewer than 2 points."""
    points = [
        (math.log(r["participants"]), math.log(r["fanout_us"]["p50"]))
        for r in results
        if math.isfinite(r["fanout_us"]["p50"]) and r["fanout_us"]["p50"] > 0
    ]
    if len(points) < 2:
        return math.nan
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    var = sum((x - mean_x) ** 2 for x, _ in points)
    if var == 0:
        return math.nan
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / var


def targets(results: Sequence[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, what was measured, met) - met is None when it could not be judged."""
    per = [r["commands"]["per_participant_barrier"] for r in results]
    slope = fanout_slope(results)
    largest = max(results, key=lambda r: r["participants"])
    spread_ok = largest["spread_over_reference_p50"] <= MAX_SPREAD_RATIO
    complete = largest["completed"] == largest["barriers"] and not largest["errors"]
    complete = complete and largest["too_late"] == 0
    return [
        (
            f"commands per participant per barrier <= {MAX_COMMANDS:g} at every N",
            f"{min(per):.2f} .. {max(per):.2f}",
            all(p <= MAX_COMMANDS for p in per),
        ),
        (
            "fan-out grows no faster than linearly (log-log slope <= 1)",
            f"slope {fmt(slope, 0, 2).strip()}",
            None if math.isnan(slope) else slope <= MAX_FANOUT_SLOPE,
        ),
        (
            f"N={largest['participants']}: every barrier completed, spread p50 <= "
            f"{MAX_SPREAD_RATIO:g} x reference",
            f"{largest['completed']}/{largest['barriers']} completed, ratio "
            f"{fmt_ratio(largest['spread_over_reference_p50'], 0).strip()}",
            complete and spread_ok,
        ),
    ]


def _minmax(values: Sequence[int]) -> str:
    if not values:
        return "-"
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def format_report(results: Sequence[dict[str, Any]], header: list[str]) -> str:
    """The tables the script prints."""
    lines = [*header, ""]
    top = (
        f"{'N':>5} {'cmds/':>6} | {'fan-out (ms)':^15} | {'spread (us)':^17} | "
        f"{'reference (us)':^17} | {'ratio':>5} | {'conns/proc':>10} {'clients':>7} | "
        f"{'bytes per pending barrier':^26} | {'done':>7} {'late':>5} {'errors':>6}"
    )
    sub = (
        f"{'':>5} {'p x b':>6} | {'p50':>7} {'p99':>7} | {'p50':>8} {'p99':>8} | "
        f"{'p50':>8} {'p99':>8} | {'p50':>5} | {'waiting':>10} {'':>7} | "
        f"{'used':>8} {'dataset':>8} {'/waiter':>8} | {'':>7} {'':>5} {'':>6}"
    )
    lines += [top, sub, "-" * len(top)]
    for r in results:
        fan, spread, ref = r["fanout_us"], r["spread_us"], r["reference_us"]
        lines.append(
            f"{r['participants']:>5} {fmt(r['commands']['per_participant_barrier'], 6, 2)} | "
            f"{fmt(fan['p50'] / 1e3, 7, 2)} {fmt(fan['p99'] / 1e3, 7, 2)} | "
            f"{fmt(spread['p50'], 8)} {fmt(spread['p99'], 8)} | "
            f"{fmt(ref['p50'], 8)} {fmt(ref['p99'], 8)} | "
            f"{fmt_ratio(r['spread_over_reference_p50'], 5)} | "
            f"{_minmax(r['connections_per_process']):>10} {r['connected_clients']:>7} | "
            f"{fmt(r['memory_per_pending_barrier'], 8, 0)} "
            f"{fmt(r['dataset_per_pending_barrier'], 8, 0)} {fmt(r['dataset_per_waiter'], 8, 0)} | "
            f"{r['completed']:>3}/{r['barriers']:<3} {r['too_late']:>5} "
            f"{sum(r['errors'].values()):>6}"
        )
    lines += _lateness(results)
    lines += _breakdown(results)
    errors = [(r["participants"], e, c) for r in results for e, c in r["errors"].items()]
    if errors:
        lines += ["", "errors: " + ", ".join(f"N={n} {e} {c}" for n, e, c in errors)]
    lines += ["", "targets:"]
    for what, measured, met in targets(results):
        verdict = "n/a" if met is None else "PASS" if met else "FAIL"
        lines.append(f"  {what:<66} {measured:<24} {verdict}")
    return "\n".join(lines)


def _lateness(results: Sequence[dict[str, Any]]) -> list[str]:
    """Return instant - release instant (sync and reference, read by the caller), and
    the library's own report ``late_by`` with its spread and the caller's reading minus it."""
    lines = [
        "",
        "lateness (us): return - instant, read by the caller, for sync and the reference; "
        "late_by = SyncResult.late_by (the library's report), the spread of it per barrier, "
        "and gap = caller's lateness - late_by",
        f"{'N':>7} | {'sync p50':>9} {'p99':>8} | {'ref p50':>9} {'p99':>8} | "
        f"{'late_by p50':>11} {'p99':>8} | {'its spread p50':>14} {'p99':>8} | "
        f"{'gap p50':>9} {'p99':>8}",
    ]
    for r in results:
        cells = []
        for key in ("late_us", "reference_late_us", "late_by_us", "spread_late_by_us", "gap_us"):
            width = {"late_by_us": 11, "spread_late_by_us": 14}.get(key, 9)
            cells.append(f"{fmt(r[key]['p50'], width)} {fmt(r[key]['p99'], 8)}")
        lines.append(f"{r['participants']:>7} | " + " | ".join(cells))
    return lines


def _pair(sent: float, executed: float) -> str:
    return f"{fmt(sent, 0, 2).strip()} / {fmt(executed, 0, 2).strip()}"


def _breakdown(results: Sequence[dict[str, Any]]) -> list[str]:
    """Per command, per participant per barrier: sent (client count) and executed (server)."""
    inside = set(results[0]["commands"]["inside_scripts"])
    width = 15
    head = f"  {'command':<30}" + "".join(
        f"{'N=' + str(r['participants']):>{width}}" for r in results
    )
    lines = [
        "",
        "commands per participant per barrier: sent by the participants (client count) / "
        "executed by the server (INFO commandstats); * = also run inside pyprocsync's scripts",
        head,
    ]
    names: dict[str, None] = {}
    for r in results:
        names.update(dict.fromkeys(r["commands"]["client"]))
    for r in results:
        names.update(dict.fromkeys(r["commands"]["server"]))
    for name in names:
        label = f"{name}{' *' if name in inside else ''}"
        cells = ""
        for r in results:
            counted = r["commands"]["client_counted"]
            sent = r["commands"]["client"].get(name, 0.0) if counted else math.nan
            cells += f"{_pair(sent, r['commands']['server'].get(name, 0.0)):>{width}}"
        lines.append(f"  {label:<30}{cells}")
    totals = ""
    for r in results:
        counted = r["commands"]["client_counted"]
        sent = sum(r["commands"]["client"].values()) if counted else math.nan
        totals += f"{_pair(sent, r['commands']['server_total']):>{width}}"
    lines.append(f"  {'total':<30}{totals}")
    return lines


def _raise_fd_limit() -> None:
    """Raise this process's open-file limit to the hard limit (the server and the workers
    inherit it): a thousand participants hold a few thousand connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scale.py",
        description="For each participant count N, run N participants (threads or asyncio "
        "tasks across a few processes) through K barriers; report commands per participant "
        "per barrier, announcement fan-out, spread of return instants beside a limit "
        "reference, connections per process and memory per pending barrier.",
    )
    parser.add_argument(
        "--redis", metavar="URL", help="Redis server URL; default: a private embedded server"
    )
    parser.add_argument(
        "--participants",
        type=count_arg,
        nargs="+",
        default=[4, 64, 256, 1024],
        metavar="N",
        help="participant counts (default: 4 64 256 1024)",
    )
    parser.add_argument(
        "--processes", type=count_arg, default=4, help="worker processes (default 4)"
    )
    parser.add_argument(
        "--barriers", type=count_arg, default=20, help="measured barriers K (default 20)"
    )
    parser.add_argument(
        "--delay",
        type=seconds_arg,
        default=0.5,
        help="lead time, seconds: must cover the fan-out to N participants (default 0.5)",
    )
    parser.add_argument(
        "--timeout", type=seconds_arg, default=120.0, help="timeout of every sync (default 120)"
    )
    parser.add_argument(
        "--spin",
        type=seconds_arg,
        default=0.0005,
        help="busy-wait before each instant, sync and reference alike (default 0.0005)",
    )
    parser.add_argument(
        "--think",
        type=seconds_arg,
        default=0.1,
        help="seconds a participant idles after the reference instant before it syncs "
        "again (default 0.1; see the docstring)",
    )
    parser.add_argument(
        "--asyncio",
        action="store_true",
        help="participants are asyncio tasks (pyprocsync.asyncio), not threads",
    )
    parser.add_argument(
        "--instances",
        choices=("process", "participant"),
        default="process",
        help="one ProcSync per process, shared by its participants (default), or one each",
    )
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON to FILE")
    return parser


def main() -> int:
    """Run every configuration; return 1 if a target failed."""
    args = _parser().parse_args()
    if args.delay <= 0 or args.timeout <= 0:
        raise Failure("--delay and --timeout must be > 0", 2)
    if min(args.participants) < 2:
        raise Failure("--participants must be >= 2", 2)
    _raise_fd_limit()
    info = machine()
    results = []
    with redis_server(args.redis) as (url, embedded):
        server = server_label(url, embedded)
        for n in args.participants:
            config = ScaleConfig(
                url=url,
                participants=n,
                processes=args.processes,
                barriers=args.barriers,
                delay=args.delay,
                timeout=args.timeout,
                use_asyncio=args.asyncio,
                instances=args.instances,
                spin=args.spin,
                think=args.think,
            )
            print(f"  N={n}: {len(config.sizes)} processes ...", file=sys.stderr, flush=True)
            results.append(run_scale(config))
    kind = "asyncio tasks" if args.asyncio else "threads"
    header = [
        f"scale: {args.barriers} barriers per N, {kind} in up to {args.processes} processes, "
        f"one ProcSync per {args.instances}, delay {args.delay:g} s, server {server}",
        machine_line(info),
        "cmds/p x b = commands sent per participant per barrier; fan-out = decision -> last "
        "participant knows the instant; spread = latest - earliest return; reference = same "
        "participants waking at an instant known in advance; ratio = spread p50 / reference "
        "p50; conns/proc = TCP connections to the server per process while N-1 wait; "
        "bytes per pending barrier = used_memory (and used_memory_dataset) while N-1 wait - "
        "idle, /waiter = dataset / (N-1); late = TooLateError",
    ]
    print(format_report(results, header))
    checks = targets(results)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            document = {
                "header": header,
                "machine": info,
                "server": server,
                "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in checks],
                "configurations": results,
            }
            json.dump(nan_to_none(document), file, indent=2)
            file.write("\n")
    return 1 if any(met is False for *_, met in checks) else 0


if __name__ == "__main__":
    run(PROG, main)

"""``pyprocsync bench``: how precisely real processes are released, beside what the machine allows.

The benchmark starts ``nodes`` worker processes. After a warm-up round they run two
phases with the same wait code (:func:`pyprocsync.clock.sleep_until_ns` with the same
spin):

* **limit**: every worker waits for the instants ``t0 + i * period``, agreed in advance
  (``t0`` derives from the warm-up round's release instant, so no Redis is involved).
  This is the precision the machine itself allows for waking N processes at once.
* **sync**: every worker calls :meth:`ProcSync.sync` ``rounds`` times on one name,
  idling ``think`` seconds after each release (on a machine with fewer cores than
  nodes, a node that goes straight back to work takes the CPU from nodes still waking).

For each round, *spread* is the latest minus the earliest return instant across nodes
and *late* is each node's return instant minus the agreed instant. A node that learns
of a release after its instant (plus ``ProcSync``'s default ``late_tolerance``) gets
:class:`~pyprocsync.TooLateError`: it counts as *too late*, its late value is how late
it learned (it returned then), and it goes on with the next round. *Late over 1 ms*
counts the returns more than 1 ms after the instant for any reason (a node that learned
in time but did not get a processor at the instant, on an overloaded machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import queue
import signal
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis

from . import clock
from .exceptions import ProcSyncError, TooLateError
from .procsync import ProcSync
from .stats import summary

__all__ = [
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

#: A return more than this many µs after the instant is counted as "late over 1 ms".
LATE_OVER_US = 1000.0
_EVENT = "bench"


class BenchError(ProcSyncError):
    """The benchmark could not run to its end (a worker failed or stopped answering)."""


@dataclass(frozen=True)
class BenchConfig:
    """What one benchmark run does."""

    url: str
    nodes: int = 4
    rounds: int = 300
    #: Seconds, or ``"auto"`` (chosen from measured latency; the figures report it).
    delay: float | str = 0.01
    think: float = 0.002
    spin: float = 0.0005
    timeout: float = 30.0
    clock: str = "system"
    run_id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex}")

    @property
    def period(self) -> float:
        """Spacing of the limit phase's instants: about one sync round."""
        lead = 0.001 if isinstance(self.delay, str) else self.delay
        return max(lead, 0.001) + self.think


@dataclass
class _NodeRecord:
    """What one worker measured, per round: µs after the agreed instant, and that instant.

    A worker whose sync loop failed has fewer sync rounds than configured.
    """

    rank: int
    limit_late_us: list[float]
    sync_late_us: list[float]
    release_us: list[float]
    errors: list[str]
    too_late: int = 0
    delays_us: list[float] = field(default_factory=list)


def die_with_parent() -> None:
    """Ask Linux to stop this worker if the benchmark process dies (best effort)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _worker(config: BenchConfig, rank: int, out: Any) -> None:
    """Body of one worker process: warm up, run the limit phase, then the sync phase."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    record = _NodeRecord(rank, [], [], [], [])
    client = redis.Redis.from_url(config.url)
    node = ProcSync(
        client,
        config.run_id,
        config.delay,  # type: ignore[arg-type]  # a number or "auto", as BenchConfig says
        spin=config.spin,
        clock=config.clock,  # type: ignore[arg-type]
        node_id=f"bench-{rank}",
    )
    try:
        t0_ns = round((_warm_up(node, config) + 0.5) * 1e9)
        spin_ns = round(config.spin * 1e9)
        period_ns = round(config.period * 1e9)
        for i in range(config.rounds):
            target = t0_ns + i * period_ns
            record.limit_late_us.append((clock.sleep_until_ns(target, spin_ns) - target) / 1e3)
        for i in range(config.rounds):
            try:
                result = node.sync(_EVENT, config.nodes, config.timeout)
                late_s, release_s = result.late_by, result.release_at
                record.delays_us.append(result.delay * 1e6)
            except TooLateError as exc:  # the round was released: go on with the next
                record.too_late += 1
                late_s, release_s = exc.late_by or 0.0, exc.release_at or 0.0
            except Exception as exc:  # noqa: BLE001  # reported, and ends this node's run
                record.errors.append(f"round {i}: {type(exc).__name__}: {exc}")
                break
            time.sleep(config.think)  # first yield the CPU to nodes still waking, then record
            record.sync_late_us.append(late_s * 1e6)
            record.release_us.append(release_s * 1e6)
            if rank == 0 and i % 10 == 0:
                out.put(("progress", i))
    except Exception as exc:  # noqa: BLE001  # reported to the parent
        record.errors.append(f"{type(exc).__name__}: {exc}")
    finally:
        node.close()
        client.close()
        out.put(("done", record))


def _warm_up(node: ProcSync, config: BenchConfig) -> float:
    """The warm-up round: return its release instant (epoch s), from which the limit
    phase's instants are counted. Learned too late, it serves all the same: it is the
    same instant for every worker."""
    try:
        return node.sync("warm-up", config.nodes, config.timeout).release_at
    except TooLateError as exc:
        if exc.release_at is None:
            raise
        return exc.release_at


def _collect(
    workers: Sequence[multiprocessing.process.BaseProcess],
    out: Any,
    config: BenchConfig,
    progress: Callable[[int], None],
) -> list[_NodeRecord]:
    records: list[_NodeRecord] = []
    # Generous: warm-up, both phases, and one timeout for a stuck round.
    deadline = time.monotonic() + 2 * config.timeout + 2 * config.rounds * (config.period + 0.05)
    while len(records) < len(workers):
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
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [
        context.Process(target=_worker, args=(config, rank, out), daemon=True)
        for rank in range(config.nodes)
    ]
    try:
        for worker in workers:
            worker.start()
        records = _collect(workers, out, config, progress)
    finally:
        stop_workers(workers)
        out.close()
    return _figures(config, records)


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
    span_s = (releases[-1] - releases[0]) / 1e6 if len(releases) > 1 else 0.0
    return {
        "nodes": config.nodes,
        "rounds": config.rounds,
        "delay": config.delay,
        "think": config.think,
        "spin": config.spin,
        "sync": {
            "spread_us": summary(sync_spread),
            "late_us": summary(sync_late),
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
    lines = [
        f"pyprocsync bench: {figures['nodes']} nodes x {figures['rounds']} rounds, "
        f"delay {_lead(figures)}, think {figures['think']} s, server {figures['server']}",
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
        "",
        f"barriers/s: {sync['barriers_per_s']:.0f}   too late (TooLateError): "
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

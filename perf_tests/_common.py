"""Helpers shared by the scripts of ``perf_tests/`` (not a script itself).

Error handling, the server to measure against (given or embedded), the machine's
description, medians across repeated runs, table formatting, worker processes that die
with the script, and :func:`record_waits`, which notes when pyprocsync starts waiting
for a release instant (and which one).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

import redis

from pyprocsync import clock
from pyprocsync.exceptions import ProcSyncError
from pyprocsync.tools import cli
from pyprocsync.tools.bench import BenchError, die_with_parent
from pyprocsync.tools.bench import stop_workers as stop_processes
from pyprocsync.tools.cli import ExitCode, count_arg, redact, seconds_arg
from pyprocsync.tools.server import EmbeddedServer, ServerError
from pyprocsync.tools.stats import machine, source

__all__ = [
    "PERCENTILES",
    "ExitCode",
    "Failure",
    "WaitNote",
    "bench_json",
    "check_reachable",
    "count_arg",
    "die_with_parent",
    "fmt",
    "fmt_ratio",
    "last_wait",
    "machine",
    "machine_line",
    "median",
    "median_summary",
    "nan_to_none",
    "ratio",
    "record_waits",
    "redact",
    "redis_server",
    "run",
    "seconds_arg",
    "source",
    "stop_processes",
    "write_json",
]

PERCENTILES = ("p50", "p90", "p99", "max")


class Failure(Exception):
    """An expected failure: the script prints ``prog: error: message`` and exits ``code``."""

    def __init__(self, message: str, code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.code = code


def _interrupt(_signum: int, _frame: object) -> NoReturn:
    raise KeyboardInterrupt


def run(prog: str, body: Callable[[], int]) -> NoReturn:
    """Run ``body`` and exit with its status; expected failures print one line, no traceback.

    SIGTERM is turned into ``KeyboardInterrupt`` so that every ``finally`` (stopping
    worker processes, the embedded server, removing temporary files) runs.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        code = body()
    except Failure as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = exc.code
    except ServerError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = ExitCode.CONNECTION
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        print(f"{prog}: error: lost the Redis server: {exc}", file=sys.stderr)
        code = ExitCode.CONNECTION
    except (BenchError, ProcSyncError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = ExitCode.FAILED
    except redis.RedisError as exc:
        print(f"{prog}: error: Redis: {exc}", file=sys.stderr)
        code = ExitCode.FAILED
    except OSError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = ExitCode.FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    sys.exit(code)


def bench_json(url: str, options: list[str]) -> dict[str, Any]:
    """Run ``pyprocsync bench --redis URL --quiet OPTIONS``; its ``--json`` figures.

    :raises Failure: the command failed (its standard error in the message).
    """
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "bench.json"
        argv = [sys.executable, "-m", "pyprocsync", "bench", "--redis", url, "--quiet"]
        done = subprocess.run(
            [*argv, *options, "--json", str(out)], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise Failure(f"bench {' '.join(options)} exited {done.returncode}: {done.stderr}")
        figures: dict[str, Any] = json.loads(out.read_text())
        return figures


def check_reachable(url: str) -> None:
    """Raise :class:`Failure` unless the server at ``url`` answers PING."""
    try:
        cli.check_reachable(url)
    except cli.CommandError as exc:
        raise Failure(str(exc), exc.code) from None


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[tuple[str, bool]]:
    """Yield ``(url, embedded)``: the given server once reachable, else a private embedded one.

    The embedded server is stopped (and its directory removed) when the block ends.
    """
    if url:
        check_reachable(url)
        yield url, False
        return
    with EmbeddedServer() as server:
        yield server.url, True


def machine_line(info: dict[str, Any]) -> str:
    """One line for a table's header: what :func:`machine` returned."""
    return (
        f"machine: {info['cores']} cores, {info['cpu']}, {info['kernel']}, "
        f"Python {info['python']}, {info['date']}\npyprocsync {info['pyprocsync']}"
    )


def median(values: Iterable[float]) -> float:
    """Median of the finite ``values``; NaN when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def median_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    """Percentile by percentile median of several ``{"p50", "p90", "p99", "max"}`` dicts."""
    return {p: median(s[p] for s in summaries) for p in PERCENTILES}


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is 0 or either is NaN."""
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b


def fmt(value: float, width: int, digits: int = 1) -> str:
    """Right-aligned number, ``-`` for NaN."""
    if value is None or not math.isfinite(value):
        return f"{'-':>{width}}"
    return f"{value:>{width}.{digits}f}"


def fmt_ratio(value: float, width: int) -> str:
    """Right-aligned ratio with as many decimals as fit (2 below 10, 1 below 100, else 0)."""
    if value is None or not math.isfinite(value):
        return f"{'-':>{width}}"
    digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
    return f"{value:>{width}.{digits}f}"


def nan_to_none(value: Any) -> Any:
    """Copy of ``value`` with every NaN float replaced by ``None`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    return value


def write_json(path: str, value: Any) -> None:
    """Write ``value`` to ``path`` as indented strict JSON (NaN as ``null``)."""
    with open(path, "w", encoding="utf-8") as file:
        json.dump(nan_to_none(value), file, indent=2)
        file.write("\n")


class WaitNote(NamedTuple):
    """pyprocsync began to wait for a release instant: when, and for which instant."""

    #: This host's wall clock when the wait began (the participant knew the instant), ns.
    began_ns: int
    #: The instant waited for, ns: epoch (wall clock), or with ``on_monotonic`` a reading
    #: of the monotonic clock (server-clock mode).
    target_ns: int
    on_monotonic: bool


_LAST_WAIT: contextvars.ContextVar[WaitNote | None] = contextvars.ContextVar(
    "perf_last_wait", default=None
)


def record_waits() -> None:
    """Note every wait for a release instant of this process, for :func:`last_wait`.

    pyprocsync waits for an instant only through :func:`pyprocsync.clock.sleep_until_ns`
    (blocking classes) and :func:`pyprocsync.clock.async_sleep_until_ns` (asyncio), both
    looked up at call time, as the public method's last step (``meet``): once the
    participant knows the instant and the call has handed back what it held (a
    participant that learns of it too late raises ``TooLateError`` instead and does not
    wait). This wraps both: the wrapper reads the wall clock and notes it with the target
    in a context variable, then calls the original, so the wait itself is unchanged. The
    note says when the participant knew the instant (plus the hand-back); it is no
    precision figure, which the caller reads on its line after the call returns. A
    context variable is per thread and per asyncio task, so each participant sees its
    own note. Calling it again does nothing.
    """
    if getattr(clock.sleep_until_ns, "perf_recording", False):
        return
    blocking, asynchronous = clock.sleep_until_ns, clock.async_sleep_until_ns

    def sleep_until_ns(target_ns: int, *args: Any, **kwargs: Any) -> int:
        _LAST_WAIT.set(WaitNote(time.time_ns(), target_ns, bool(kwargs.get("on_monotonic"))))
        return blocking(target_ns, *args, **kwargs)

    async def async_sleep_until_ns(target_ns: int, *args: Any, **kwargs: Any) -> int:
        # Awaited directly (not a task of its own), so the note lands in the caller's context.
        _LAST_WAIT.set(WaitNote(time.time_ns(), target_ns, bool(kwargs.get("on_monotonic"))))
        return await asynchronous(target_ns, *args, **kwargs)

    sleep_until_ns.perf_recording = True  # type: ignore[attr-defined]
    clock.sleep_until_ns = sleep_until_ns
    clock.async_sleep_until_ns = async_sleep_until_ns


def last_wait(*, forget: bool = False) -> WaitNote | None:
    """The note of this thread's (or task's) last wait, see :func:`record_waits`.

    :param forget: clear the note, so that the next call tells whether a new wait began.
    """
    note = _LAST_WAIT.get()
    if forget:
        _LAST_WAIT.set(None)
    return note

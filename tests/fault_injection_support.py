"""Helpers of the fault-injection tests (``from fault_injection_support import ...``).

Freezing processes (SIGSTOP), reading leases, waiting for arrivals and lease renewals,
starting syncs in threads, judging the errors, and printing the measured figures
(``[figure] ...`` lines, shown by ``pytest -s``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import redis
from support import (
    Outcome,
    start_thread,
    wait_until,
    waiting_members,
)

import pyprocsync
from pyprocsync import (
    ProcSync,
)

#: The lease of the participants here, seconds: they renew it every 0.2 s.
LIVENESS = 1.0


#: Slack on "on time": a timeout is kept within this, seconds.
MARGIN = 1.0


def figure(name: str, **values: float | str) -> None:
    """Print a measured figure (seen with ``pytest -s``)."""
    shown = ", ".join(
        f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
        for key, value in values.items()
    )
    print(f"[figure] {name}: {shown}")


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP process ``pid`` for the duration of the block; SIGCONT it whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def wait_waiting(client: redis.Redis, run_id: str, event: str, count: int, timeout: float) -> None:
    """Wait until ``count`` participants wait in ``event``."""
    wait_until(
        lambda: len(waiting_members(client, run_id, event)) == count,
        timeout,
        f"{count} participants waiting in {event!r}",
    )


def start_syncs(
    syncs: Sequence[ProcSync], event: str, nodes: int, timeout: float
) -> list[tuple[threading.Thread, Outcome]]:
    """Start ``sync(event, nodes, timeout)`` of each of ``syncs`` in a thread of its own."""
    return [start_thread(partial(sync.sync, event, nodes, timeout)) for sync in syncs]


def error_class(record: dict[str, Any]) -> type[BaseException]:
    """The pyprocsync exception class a participant record names."""
    found = getattr(pyprocsync, record["error"], None)
    assert isinstance(found, type), record
    assert issubclass(found, BaseException), record
    return found


def finished_after(outcome: Outcome, began: float) -> float:
    """Seconds from ``began`` (``time.monotonic``) until ``outcome``'s call ended."""
    assert outcome.finished_at is not None
    return outcome.finished_at - began

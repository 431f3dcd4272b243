"""Helpers of the Event, Barrier and asyncio tests (``from primitive_support import ...``).

* :func:`ready_counter` tells when Event waiters (threads or tasks) have read the flag;
  :func:`start_waiting_thread` starts a thread that waits on an Event.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from participant import announce_first_check
from support import LONG, Outcome, await_until, start_thread, wait_until

from pyprocsync import Event
from pyprocsync.core.keys import FlagKeys

T = TypeVar("T")


def flag_keys(run_id: str, name: str) -> FlagKeys:
    """The Redis names of Event ``name`` in ``run_id`` under the default prefix."""
    return FlagKeys.of("pyprocsync", run_id, name)


def counter(client: redis.Redis, key: str) -> int:
    """The integer value of ``key`` (0 when missing)."""
    return int(client.get(key) or 0)


def wait_counter(client: redis.Redis, key: str, value: int, timeout: float = 20) -> None:
    """Wait until the counter ``key`` reaches ``value``; fail the test after ``timeout``."""
    wait_until(lambda: counter(client, key) >= value, timeout, f"{key} to reach {value}")


def ready_counter(event: Any, client: redis.Redis, key: str) -> None:
    """Make the blocking Event ``event`` INCR ``key`` once a wait has read the flag."""
    announce_first_check(event._shell, client, key, is_async=False)


def async_ready_counter(event: Any, client: aioredis.Redis, key: str) -> None:
    """:func:`ready_counter` for an asyncio Event."""
    announce_first_check(event._shell, client, key, is_async=True)


async def await_counter(client: aioredis.Redis, key: str, value: int, timeout: float = 10) -> None:
    """Wait (yielding to the loop) until the counter ``key`` reaches ``value``."""

    async def reached() -> bool:
        return int(await client.get(key) or 0) >= value

    await await_until(reached, timeout, f"{key} to reach {value}")


def start_waiting_thread(
    event: Event, client: redis.Redis, run_id: str, timeout: float = LONG
) -> tuple[threading.Thread, Outcome]:
    """Start ``event.wait(timeout)`` in a thread; return once it is waiting."""
    ready = f"{run_id}:ready:{uuid.uuid4().hex}"
    ready_counter(event, client, ready)
    thread, outcome = start_thread(lambda: (event.wait(timeout), time.time()))
    wait_counter(client, ready, 1)
    return thread, outcome

"""Typed server refusals (issue 12): what a caller of the public API sees when the server
refuses one of pyprocsync's commands, in both shells.

A user lacking a grant of the documented ACL rule gets
:class:`~pyprocsync.PermissionRefusedError` (a :class:`~pyprocsync.ServerRefusedError`)
naming the command, for every command pyprocsync sends itself (``SCRIPT LOAD``,
``EVALSHA``, ``SUBSCRIBE``, ``TIME``) and every command a script runs; a server out of
memory gives :class:`~pyprocsync.ServerRefusedError`. Both come within the call's
timeout, and nothing of the call is left in Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from support import user_url

import pyprocsync.asyncio as aio
from pyprocsync import (
    Barrier,
    Event,
    PermissionRefusedError,
    ProcSync,
    ServerRefusedError,
)
from pyprocsync.tools.acl import acl_rule
from pyprocsync.tools.server import EmbeddedServer

#: Each call's timeout, seconds; the refusal must come well within it.
TIMEOUT = 10.0


def sync_call(url: str, run_id: str, shell: str) -> Any:
    if shell == "blocking":
        with ProcSync.from_url(url, run_id, 0.02, on_late="proceed") as node:
            return node.sync("e", 1, TIMEOUT)

    async def twin() -> Any:
        async with aio.ProcSync.from_url(url, run_id, 0.02, on_late="proceed") as node:
            return await node.sync("e", 1, TIMEOUT)

    return asyncio.run(twin())


def event_set(url: str, run_id: str, shell: str) -> Any:
    if shell == "blocking":
        with Event.from_url(url, "f", run_id=run_id) as event:
            return event.set()

    async def twin() -> Any:
        async with aio.Event.from_url(url, "f", run_id=run_id) as event:
            return await event.set()

    return asyncio.run(twin())


def event_wait(url: str, run_id: str, shell: str, timeout: float = TIMEOUT) -> Any:
    if shell == "blocking":
        with Event.from_url(url, "f", run_id=run_id) as event:
            return event.wait(timeout)

    async def twin() -> Any:
        async with aio.Event.from_url(url, "f", run_id=run_id) as event:
            return await event.wait(timeout)

    return asyncio.run(twin())


def barrier_wait(url: str, run_id: str, shell: str) -> Any:
    if shell == "blocking":
        with Barrier.from_url(url, "b", 1, run_id=run_id) as barrier:
            return barrier.wait(TIMEOUT)

    async def twin() -> Any:
        async with aio.Barrier.from_url(url, "b", 1, run_id=run_id) as barrier:
            return await barrier.wait(TIMEOUT)

    return asyncio.run(twin())


CALLS: dict[str, Callable[[str, str, str], Any]] = {
    "sync": sync_call,
    "Event.set": event_set,
    "Event.wait": event_wait,
    "Barrier.wait": barrier_wait,
}

#: For each call, grants whose lack it meets: one command the library sends itself and
#: one a script runs.
MISSING = {
    "sync": ["script|load", "evalsha", "time", "zadd", "publish"],
    "Event.set": ["evalsha", "hset", "publish"],
    "Event.wait": ["subscribe", "pexpire"],
    "Barrier.wait": ["subscribe", "hset"],
}

SHELLS = ["blocking", "asyncio"]


def refused_call(call: str, shell: str, url: str, run_id: str) -> ServerRefusedError:
    """Run ``call`` in ``shell``; return the ServerRefusedError it raised in time."""
    started = time.monotonic()
    with pytest.raises(ServerRefusedError) as caught:
        CALLS[call](url, run_id, shell)
    assert time.monotonic() - started < TIMEOUT / 2
    error = caught.value
    assert isinstance(error.__cause__, redis.ResponseError)
    assert error.run_id == run_id
    assert error.event in ("e", "f", "b")
    assert error.reply
    assert error.reply in str(error)
    return error


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    ("call", "missing"), [(call, missing) for call, grants in MISSING.items() for missing in grants]
)
def test_missing_grant_gives_permission_refused(
    make_user: Callable[[str], str],
    server: EmbeddedServer,
    client: redis.Redis,
    run_id: str,
    *,
    call: str,
    missing: str,
    shell: str,
) -> None:
    url = user_url(server, make_user(acl_rule().replace(f" +{missing}", "")))
    error = refused_call(call, shell, url, run_id)
    assert isinstance(error, PermissionRefusedError)
    assert isinstance(error, PermissionError)
    assert missing.split("|", maxsplit=1)[0] in str(error).lower()
    assert not client.keys(f"*{run_id}*"), "the refused call left state behind"


@pytest.fixture
def full_server(fresh_server: Callable[..., EmbeddedServer]) -> Iterator[EmbeddedServer]:
    """A server of this test's own that is out of memory for writes (``maxmemory 1``,
    ``noeviction``)."""
    server = fresh_server()
    with redis.Redis.from_url(server.url) as admin:
        admin.config_set("maxmemory", 1)
        admin.config_set("maxmemory-policy", "noeviction")
    return server


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("call", ["sync", "Event.set", "Barrier.wait"])
def test_out_of_memory_gives_server_refused(
    full_server: EmbeddedServer, run_id: str, call: str, shell: str
) -> None:
    error = refused_call(call, shell, full_server.url, run_id)
    assert not isinstance(error, PermissionRefusedError)
    assert isinstance(error.__cause__, redis.exceptions.OutOfMemoryError)
    with redis.Redis.from_url(full_server.url) as admin:
        assert not admin.keys(f"*{run_id}*"), "the refused call left state behind"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shell", SHELLS)
def test_out_of_memory_lets_a_waiter_wait(full_server: EmbeddedServer, run_id: str, shell: str):
    """Waiting writes nothing but a lifetime (of a flag that exists): out of memory,
    ``Event.wait`` still waits, and times out as usual."""
    assert event_wait(full_server.url, run_id, shell, timeout=0.3) is False

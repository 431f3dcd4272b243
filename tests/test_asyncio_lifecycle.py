"""The lifecycle of ``pyprocsync.asyncio`` instances (``from_url``, ``async with``,
``aclose``, also while a call waits) and validation before any I/O.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
import redis.asyncio as aioredis
from asyncio_support import _equals
from support import (
    LONG,
    arun,
    async_client,
    await_until,
    event_keys,
    make_client,
    spawn,
    wait_until,
)

import pyprocsync
import pyprocsync.asyncio
from pyprocsync import (
    ArgumentTypeError,
    InvalidArgumentError,
    ProcSyncError,
)
from pyprocsync.asyncio import Barrier, Event, ProcSync
from pyprocsync.tools.server import EmbeddedServer

# -- lifecycle, validation ------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_from_url_async_with_and_aclose(server: EmbeddedServer, run_id: str) -> None:
    """``from_url`` of each class owns its client: it works inside ``async with``;
    leaving the block closes every connection it opened (the server's client count
    returns to its baseline); later calls raise ProcSyncError; ``aclose`` and ``close``
    again are harmless."""
    admin = make_client(server)
    baseline = len(admin.client_list())

    async def body(_: aioredis.Redis) -> list[Any]:
        async with ProcSync.from_url(server.url, run_id, 0.01, on_late="proceed") as sync:
            assert (await sync.sync("u", 1, 5)).generation == 0
            assert (await sync.sync("u", 1, 5)).generation == 1
        async with Event.from_url(server.url, "u", run_id=run_id) as event:
            await event.set()
            assert await event.wait(5) is True
        async with Barrier.from_url(server.url, "bu", 1, run_id=run_id, delay=0) as barrier:
            assert await barrier.wait(5) == 0
        return [sync, event, barrier]

    try:
        closed = arun(body, async_client(server))
        wait_until(lambda: len(admin.client_list()) <= baseline, 5, "connections to close")

        async def after(_: aioredis.Redis) -> None:
            sync, event, barrier = closed
            with pytest.raises(ProcSyncError):
                await sync.sync("u", 1, 5)
            with pytest.raises(ProcSyncError):
                await event.is_set()
            with pytest.raises(ProcSyncError):
                await barrier.wait(5)
            for instance in closed:
                await instance.aclose()
                await instance.close()

        arun(after, async_client(server))
    finally:
        admin.close()


@pytest.mark.timeout(30)
def test_aclose_leaves_the_callers_client_usable(server: EmbeddedServer, run_id: str) -> None:
    """With the caller's client, ``aclose`` closes only the instance's own connections."""

    async def body(client: aioredis.Redis) -> None:
        sync = ProcSync(client, run_id, 0)
        await asyncio.gather(*(sync.sync("own", 2, 10) for _ in range(2)))
        await sync.aclose()
        assert await client.ping()
        with pytest.raises(ProcSyncError):
            await sync.reset("own")

    arun(body, async_client(server))


@pytest.mark.timeout(30)
def test_aclose_while_a_call_waits(server: EmbeddedServer, run_id: str) -> None:
    """A call in progress in another task when ``aclose()`` runs still finishes (with its
    partner's instant); new calls raise ProcSyncError."""

    async def body(client: aioredis.Redis) -> None:
        sync = ProcSync(client, run_id, 0.01, on_late="proceed")
        async with ProcSync(client, run_id, 0.01, on_late="proceed") as partner:
            waiting = spawn(sync.sync("closing", 2, LONG))
            keys = event_keys(run_id, "closing")
            await await_until(lambda: _equals(client.zcard(keys.leases), 1), 10, "the waiter")
            await sync.aclose()
            with pytest.raises(ProcSyncError):
                await sync.sync("other", 1, 5)
            result = await partner.sync("closing", 2, LONG)
            assert (await waiting).release_at == result.release_at

    arun(body, async_client(server))


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_from_url_validates_before_connecting(flavour: str) -> None:
    """``from_url`` with an invalid argument raises InvalidArgumentError (and leaves no
    unclosed client behind: warnings are errors in this suite)."""
    module: Any = pyprocsync if flavour == "blocking" else pyprocsync.asyncio
    url = "redis://127.0.0.1:1/0"
    with pytest.raises(InvalidArgumentError):
        module.ProcSync.from_url(url, "r", -1)
    with pytest.raises(InvalidArgumentError):
        module.Event.from_url(url, "")
    with pytest.raises(InvalidArgumentError):
        module.Barrier.from_url(url, "b", 0)


def test_validation_before_any_io() -> None:
    """Invalid arguments raise before any I/O (the client reaches no server): in the
    constructors, and in the awaited calls."""

    async def body() -> None:
        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
        try:
            with pytest.raises(InvalidArgumentError):
                ProcSync(client, "r", -1)
            with pytest.raises(InvalidArgumentError):
                Event(client, "")
            with pytest.raises(InvalidArgumentError):
                Barrier(client, "b", 0)
            with pytest.raises(ArgumentTypeError):
                Barrier(client, "b", True)
            with pytest.raises(ArgumentTypeError):
                Barrier(client, "b", 2, action="x")  # type: ignore[arg-type]
            sync = ProcSync(client, "r", 0)
            for call in (
                lambda: sync.sync("", 1),
                lambda: sync.sync("e", 0),
                lambda: sync.sync("e", 1, 0),
                lambda: sync.sync("e", 1, math.nan),
                lambda: sync.reset(""),
                lambda: Event(client, "e").wait(math.nan),
                lambda: Barrier(client, "b", 2).wait(math.nan),
            ):
                with pytest.raises(InvalidArgumentError):
                    await call()
        finally:
            await client.aclose()

    arun(body, timeout=20)

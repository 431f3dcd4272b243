"""Helpers of the Event, Barrier and asyncio tests (``from primitive_support import ...``).

* :class:`HelperRunner` starts ``tests/primitive_helper.py`` participants, with the hard
  deadlines of :class:`support.NodeRunner` (whose waiting and killing it reuses).
* :func:`arun` runs a coroutine with a ``redis.asyncio`` client of the session server and
  a hard deadline; :func:`spawn` starts tasks that are cancelled when it ends.
* :func:`ready_counter` tells when Event waiters (threads or tasks) have read the flag.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aioredis
from primitive_helper import announce_first_check
from support import Node, NodeRunner, wait_for

from pyprocsync.core.keys import FlagKeys
from pyprocsync.tools.server import EmbeddedServer

PRIMITIVE_HELPER = Path(__file__).with_name("primitive_helper.py")

T = TypeVar("T")


class HelperRunner(NodeRunner):
    """Starts ``primitive_helper.py`` participants; none of them outlives the test."""

    def launch(self, mode: str, name: str, **options: Any) -> Node:
        """Start one participant; ``options`` become ``--option value`` arguments
        (``None`` and ``False`` are left out)."""
        argv = [sys.executable, str(PRIMITIVE_HELPER), mode, "--url", self.url]
        argv += ["--run-id", self.run_id, "--name", name]
        for option, value in options.items():
            if value is not None and value is not False:
                argv += ["--" + option.replace("_", "-"), str(value)]
        number = len(self.nodes)
        stdout_path = self.tmp_path / f"helper{number}.out"
        stderr_path = self.tmp_path / f"helper{number}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(argv, stdout=out, stderr=err)
        node = Node(process, stdout_path, stderr_path)
        self.nodes.append(node)
        return node

    def finish(self, nodes: list[Node], timeout: float) -> list[dict[str, Any]]:
        """Wait for ``nodes`` (hard deadline) and return the last record of each."""
        self.wait(nodes, timeout)
        for node in nodes:
            assert node.returncode == 0, f"exit status {node.returncode}\n{node.stderr}"
        return [node.last() for node in nodes]


def flag_keys(run_id: str, name: str) -> FlagKeys:
    """The Redis names of Event ``name`` in ``run_id`` under the default prefix."""
    return FlagKeys.of("pyprocsync", run_id, name)


def counter(client: redis.Redis, key: str) -> int:
    """The integer value of ``key`` (0 when missing)."""
    return int(client.get(key) or 0)


def wait_counter(client: redis.Redis, key: str, value: int, timeout: float = 20) -> None:
    """Wait until the counter ``key`` reaches ``value``; fail the test after ``timeout``."""
    wait_for(lambda: counter(client, key) >= value, timeout, f"{key} to reach {value}")


def ready_counter(event: Any, client: redis.Redis, key: str) -> None:
    """Make the blocking Event ``event`` INCR ``key`` once a wait has read the flag."""
    announce_first_check(event._shell, client, key, is_async=False)


def async_ready_counter(event: Any, client: aioredis.Redis, key: str) -> None:
    """:func:`ready_counter` for an asyncio Event."""
    announce_first_check(event._shell, client, key, is_async=True)


async def await_counter(client: aioredis.Redis, key: str, value: int, timeout: float = 10) -> None:
    """Wait (yielding to the loop) until the counter ``key`` reaches ``value``."""
    deadline = time.monotonic() + timeout
    while int(await client.get(key) or 0) < value:
        assert time.monotonic() < deadline, f"timed out waiting for {key} to reach {value}"
        await asyncio.sleep(0.005)


#: Tasks started with :func:`spawn` and not yet cancelled by :func:`cancel_spawned`.
_spawned: list[asyncio.Task[Any]] = []


def spawn(coroutine: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Start ``coroutine`` as a task that :func:`cancel_spawned` (and :func:`arun` at its
    end) cancels if it is still running: a failing test leaves nothing pending."""
    task = asyncio.create_task(coroutine)
    _spawned.append(task)
    return task


async def cancel_spawned() -> None:
    """Cancel the tasks started with :func:`spawn` that still run, and await them all."""
    tasks = list(_spawned)
    _spawned.clear()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def arun(
    server: EmbeddedServer,
    body: Callable[[aioredis.Redis], Awaitable[T]],
    timeout: float = 30,
) -> T:
    """Run ``body(client)`` in a new event loop with a ``redis.asyncio`` client of
    ``server``; fail (``TimeoutError``) when it takes longer than ``timeout`` seconds.
    Tasks it started with :func:`spawn` are cancelled before the client is closed."""

    async def main() -> T:
        client = aioredis.Redis(host=server.bind, port=server.port)
        try:
            return await asyncio.wait_for(body(client), timeout)
        finally:
            await cancel_spawned()
            await client.aclose()

    return asyncio.run(main())
